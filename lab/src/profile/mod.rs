//! CNI profiles. Each profile is one place: its plan (leases or blocks, MTU
//! rule, configuration files), its node agent and its CNI plugin. Adding a
//! profile touches only the dispatch here.

pub mod calico;
pub mod flannel;

use serde::{Deserialize, Serialize};

use crate::paths::LabPaths;
use crate::plan::{NodePlan, RouterPlan};
use crate::topology::{Profile, Topology};

/// A profile's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cni", rename_all = "lowercase")]
pub enum ProfilePlan {
    /// flannel.
    Flannel(flannel::FlannelPlan),
    /// Calico.
    Calico(calico::CalicoPlan),
}

impl ProfilePlan {
    /// A node's CNI configuration list.
    pub fn conflist(&self, node: &str) -> Option<&serde_json::Value> {
        match self {
            ProfilePlan::Flannel(f) => f.node(node).map(|n| &n.conflist),
            ProfilePlan::Calico(c) => c.node(node).map(|n| &n.conflist),
        }
    }

    /// The MTU a node's pods get.
    pub fn pod_mtu(&self, node: &str) -> Option<u32> {
        match self {
            ProfilePlan::Flannel(f) => f.node(node).map(|n| n.pod_mtu),
            ProfilePlan::Calico(c) => c.node(node).map(|n| n.pod_mtu),
        }
    }

    /// A node's pod subnet (flannel lease or Calico block).
    pub fn pod_subnet(&self, node: &str) -> Option<ipnet::Ipv4Net> {
        match self {
            ProfilePlan::Flannel(f) => f.node(node).map(|n| n.subnet),
            ProfilePlan::Calico(c) => c.node(node).map(|n| n.block),
        }
    }

    /// The name of the node agent's program.
    pub fn agent_name(&self) -> &'static str {
        match self {
            ProfilePlan::Flannel(_) => "flanneld",
            ProfilePlan::Calico(c) if c.mode == crate::topology::CalicoMode::Vxlan => "calico-felix",
            ProfilePlan::Calico(_) => "bird",
        }
    }

    /// A node's overlay device and its MTU.
    pub fn overlay(&self, node: &str) -> Option<(String, u32)> {
        match self {
            ProfilePlan::Flannel(f) => f.device.clone().zip(f.node(node).and_then(|n| n.device_mtu)),
            ProfilePlan::Calico(c) => c
                .node(node)
                .and_then(|n| n.vxlan.as_ref())
                .map(|t| (calico::VXLAN_DEVICE.to_string(), t.mtu)),
        }
    }
}

/// Plans the profile's part of a lab; a profile may give routers BGP peers.
pub fn plan(topology: &Topology, nodes: &[NodePlan], routers: &mut [RouterPlan], paths: &LabPaths) -> ProfilePlan {
    match &topology.network.profile {
        Profile::Flannel(opts) => ProfilePlan::Flannel(flannel::plan(topology, opts, nodes, paths)),
        Profile::Calico(opts) => ProfilePlan::Calico(calico::plan(topology, opts, nodes, routers, paths)),
    }
}

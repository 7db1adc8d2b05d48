//! CNI profiles. Each profile is one place: its plan (leases or blocks, MTU
//! rule, configuration files), its node agent and its CNI plugin. Adding a
//! profile touches only the dispatch here.

pub mod calico;
pub mod flannel;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::paths::LabPaths;
use crate::plan::{NodePlan, Plan, RouterPlan};
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

/// A control-plane daemon of the lab: what runs where, and the file that
/// appears when it is ready.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The node or router it serves (the key in the lab's state).
    pub owner: String,
    /// The namespace it runs in.
    pub ns: String,
    /// Its program's name: flanneld, calico-felix or bird.
    pub name: &'static str,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where its output goes.
    pub log: PathBuf,
    /// The file it writes (or the socket it opens) once ready.
    pub ready: PathBuf,
    /// A configuration file to write before it starts.
    pub config: Option<(PathBuf, String)>,
}

impl ProfilePlan {
    /// Every agent of the lab: nodes' in node order, then routers'.
    pub fn agents(&self, plan: &Plan, paths: &LabPaths) -> Vec<AgentSpec> {
        let bird = |owner: &str, ns: &str, dir: PathBuf, config: &str| AgentSpec {
            owner: owner.to_string(),
            ns: ns.to_string(),
            name: "bird",
            program: crate::bird::binary().unwrap_or_else(|| PathBuf::from("/usr/sbin/bird")),
            args: vec![
                "-f".into(),
                "-c".into(),
                dir.join("bird.conf").display().to_string(),
                "-s".into(),
                dir.join("bird.ctl").display().to_string(),
            ],
            log: dir.join("agent.log"),
            ready: dir.join("bird.ctl"),
            config: Some((dir.join("bird.conf"), config.to_string())),
        };
        let mut v = Vec::new();
        for n in &plan.nodes {
            match self {
                ProfilePlan::Flannel(f) => {
                    let Some(fnode) = f.node(&n.name) else { continue };
                    v.push(AgentSpec {
                        owner: n.name.clone(),
                        ns: n.ns.clone(),
                        name: "flanneld",
                        program: paths.bin_dir().join("flanneld"),
                        args: fnode.agent_args.clone(),
                        log: paths.agent_log(&n.name),
                        ready: paths.agent_dir(&n.name).join("subnet.env"),
                        config: None,
                    });
                }
                ProfilePlan::Calico(c) => {
                    let Some(cn) = c.node(&n.name) else { continue };
                    if let Some(b) = &cn.bird {
                        v.push(bird(&n.name, &n.ns, paths.agent_dir(&n.name), &b.config));
                    }
                    if let Some(t) = &cn.vxlan {
                        v.push(AgentSpec {
                            owner: n.name.clone(),
                            ns: n.ns.clone(),
                            name: "calico-felix",
                            program: paths.bin_dir().join("calico-felix"),
                            args: [
                                format!("--datastore-dir={}", paths.etcd_dir().display()),
                                format!("--node={}", n.name),
                                "--iface=eth0".to_string(),
                            ]
                            .into_iter()
                            .chain(cn.blocks().map(|b| format!("--block={b}")))
                            .chain([
                                format!("--tunnel-addr={}", t.address),
                                format!("--vtep-mac={}", t.mac),
                                format!("--watch-socket={}", paths.watch_socket().display()),
                            ])
                            .collect(),
                            log: paths.agent_log(&n.name),
                            ready: paths.etcd_dir().join("calico/vxlan").join(&n.name),
                            config: None,
                        });
                    }
                }
            }
        }
        for r in &plan.routers {
            if let Some(b) = &r.bird {
                v.push(bird(&r.name, &r.ns, paths.router_dir(&r.name), &b.config));
            }
        }
        v
    }

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

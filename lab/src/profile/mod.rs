//! CNI profiles. Each profile is one place: its plan (leases or blocks, MTU
//! rule, configuration files), its node agent and its CNI plugin. Adding a
//! profile touches only the dispatch here.

pub mod flannel;

use serde::{Deserialize, Serialize};

use crate::paths::LabPaths;
use crate::plan::NodePlan;
use crate::topology::{Profile, Topology};

/// A profile's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cni", rename_all = "lowercase")]
pub enum ProfilePlan {
    /// flannel.
    Flannel(flannel::FlannelPlan),
    /// Calico: planned and built by a later capability; topologies using it
    /// validate today.
    Calico,
}

/// Plans the profile's part of a lab.
pub fn plan(topology: &Topology, nodes: &[NodePlan], paths: &LabPaths) -> ProfilePlan {
    match &topology.network.profile {
        Profile::Flannel(opts) => ProfilePlan::Flannel(flannel::plan(topology, opts, nodes, paths)),
        Profile::Calico(_) => ProfilePlan::Calico,
    }
}

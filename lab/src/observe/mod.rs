//! Observation: collect the kernel's state once, then snapshot, trace, probe, graph, status.

pub mod collect;
pub mod graph;
pub mod ipset;
pub mod iptables;
pub mod probe;
pub mod snapshot;
pub mod status;
pub mod trace;

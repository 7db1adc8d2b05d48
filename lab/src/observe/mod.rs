//! Observation: collect the kernel's state once, then snapshot, trace, probe, graph, status.

pub mod collect;
pub mod snapshot;
pub mod trace;
pub mod probe;
pub mod graph;
pub mod status;
pub mod iptables;

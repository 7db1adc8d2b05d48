//! cnilab: many fake Kubernetes nodes on one Linux host, wired by the real
//! CNI plugins and a faithful control plane, with faults and snapshots.
//!
//! The flow is one direction: topology (what the user wrote) -> plan (every
//! decision, pure) -> build (the kernel work) -> snapshot (normalized text).

pub mod bird;
pub mod build;
pub mod cli;
pub mod cni;
pub mod collect;
pub mod command;
pub mod doctor;
pub mod error;
pub mod fault;
pub mod faultspec;
pub mod graph;
pub mod iptables;
pub mod lock;
pub mod names;
pub mod netns;
pub mod nl;
pub mod overlay;
pub mod paths;
pub mod plan;
pub mod pods;
pub mod probe;
pub mod profile;
pub mod progress;
pub mod retry;
pub mod runtime;
pub mod scenario;
pub mod snapshot;
pub mod spanned;
pub mod state;
pub mod status;
pub mod teardown;
pub mod tools;
pub mod topology;
pub mod trace;
pub mod watchd;

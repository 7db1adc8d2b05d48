//! cnilab: many fake Kubernetes nodes on one Linux host, wired by the real
//! CNI plugins and a faithful control plane, with faults and snapshots.
//!
//! The flow is one direction: topology (what the user wrote) -> plan (every
//! decision, pure) -> build (the kernel work) -> snapshot (normalized text).
//! The modules sit in six layers, lowest first; each imports only from its
//! own layer or lower ones (tests/layers.rs checks it, ARCHITECTURE.md
//! says where things go).

pub mod front;
pub mod kernel;
pub mod model;
pub mod observe;
pub mod ops;
pub mod profile;

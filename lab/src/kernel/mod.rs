//! The host's means: namespaces, netlink, processes and agents, CNI runtime, BIRD, locks, progress, retry.

pub mod netns;
pub mod nl;
pub mod tools;
pub mod lock;
pub mod progress;
pub mod cni;
pub mod overlay;
pub mod watchd;
pub mod bird;
pub mod runtime;
pub mod retry;

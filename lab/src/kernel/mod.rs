//! The host's means: namespaces, netlink, processes and agents, CNI runtime, BIRD, locks, progress, retry.

pub mod bird;
pub mod cni;
pub mod cni_plugin;
pub mod etcd;
pub mod lock;
pub mod netns;
pub mod nl;
pub mod overlay;
pub mod progress;
pub mod retry;
pub mod runtime;
pub mod tools;
pub mod tun;
pub mod watchd;

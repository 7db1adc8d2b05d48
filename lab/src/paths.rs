//! Names and places of everything a lab owns: its network namespaces and its
//! runtime folder. Everything cnilab makes is found again from these names
//! alone, which is what lets `down` clean up after a crash.

use std::path::{Path, PathBuf};

/// Default base folder of lab state, moved with `CNILAB_RUN_DIR`.
pub const DEFAULT_RUN_DIR: &str = "/run/cnilab";
/// Prefix of every cnilab network namespace.
pub const NS_PREFIX: &str = "cnilab.";

/// The base folder of all labs' state.
pub fn run_base() -> PathBuf {
    std::env::var_os("CNILAB_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Makes sure lab state lives in memory, as it does where /run is a tmpfs
/// (most systems; containers often put /run on their disk). Namespaces do
/// not survive a reboot, so neither should their state, and on a disk each
/// file of a lab costs an inode allocation that, after a big lab was just
/// removed, scans the recently freed ones (ext4): a 200-node lab spent a
/// third of its `up` there. When the base folder is not on a tmpfs and
/// holds nothing (nothing is hidden), a tmpfs is mounted on it, under a lock
/// so that two `up`s do not both mount. It stays mounted, as `ip netns`
/// leaves its /run/netns mount. Failing to mount is not an error.
pub fn ensure_state_in_memory() {
    use nix::fcntl::{Flock, FlockArg};
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    let base = run_base();
    if std::fs::create_dir_all(&base).is_err() {
        return;
    }
    let is_tmpfs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC);
    if is_tmpfs(&base) {
        return;
    }
    let Ok(dir) = std::fs::File::open(&base) else { return };
    // The lock is on the folder below the mount; whoever waited for it
    // finds the tmpfs by path afterwards.
    let Ok(_lock) = Flock::lock(dir, FlockArg::LockExclusive) else {
        return;
    };
    let empty = std::fs::read_dir(&base).is_ok_and(|mut d| d.next().is_none());
    if is_tmpfs(&base) || !empty {
        return;
    }
    use nix::mount::{MsFlags, mount};
    if let Err(e) = mount(
        Some("cnilab"),
        &base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    ) {
        tracing::debug!("cannot mount a tmpfs on {}: {e}", base.display());
    }
}

/// `cnilab.<lab>.`: every namespace of the lab starts with it.
pub fn lab_ns_prefix(lab: &str) -> String {
    format!("{NS_PREFIX}{lab}.")
}

/// A node's namespace.
pub fn node_ns(lab: &str, node: &str) -> String {
    format!("{NS_PREFIX}{lab}.{node}")
}

/// A pod's namespace.
pub fn pod_ns(lab: &str, node: &str, pod: &str) -> String {
    format!("{NS_PREFIX}{lab}.{node}.{pod}")
}

/// An infrastructure namespace such as the fabric (`cnilab.<lab>._fabric`).
pub fn infra_ns(lab: &str, what: &str) -> String {
    format!("{NS_PREFIX}{lab}._{what}")
}

/// The lab a namespace name belongs to, if it is a cnilab one.
pub fn lab_of_ns(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    let (lab, _) = rest.split_once('.')?;
    Some(lab)
}

/// The folders and files of one lab under the run folder.
#[derive(Debug, Clone)]
pub struct LabPaths {
    /// `/run/cnilab/<lab>`.
    pub root: PathBuf,
}

impl LabPaths {
    /// The paths of lab `lab` under `base`.
    pub fn new(base: &Path, lab: &str) -> Self {
        LabPaths { root: base.join(lab) }
    }

    /// The paths of lab `lab` under the configured run folder.
    pub fn of(lab: &str) -> Self {
        Self::new(&run_base(), lab)
    }

    /// The lab's state: plan, pods, agents, faults.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    /// The copy of the topology the lab was built from.
    pub fn topology_copy(&self) -> PathBuf {
        self.root.join("topology.toml")
    }

    /// CNI plugin and agent executables of the lab (links to cnilab itself).
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// The lab's stand-in for etcd: one file per key.
    pub fn etcd_dir(&self) -> PathBuf {
        self.root.join("etcd")
    }

    /// The socket of the lab's datastore watch service.
    pub fn watch_socket(&self) -> PathBuf {
        self.root.join("watch.sock")
    }

    /// A node's own folder: what would be its disk.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }

    /// A node's CNI configuration folder (`/etc/cni/net.d` on a real node).
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni/net.d")
    }

    /// A node's CNI state (`/var/lib/cni` on a real node): the runtime's
    /// cached results, the plugins' data folders.
    pub fn cni_state_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni/lib")
    }

    /// A node's control-plane folder (`/run/flannel` on a real node).
    pub fn agent_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent")
    }

    /// A router's own folder.
    pub fn router_dir(&self, router: &str) -> PathBuf {
        self.root.join("routers").join(router)
    }

    /// The node agent's log.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.agent_dir(node).join("agent.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_follow_the_contract() {
        assert_eq!(node_ns("demo", "worker1"), "cnilab.demo.worker1");
        assert_eq!(pod_ns("demo", "worker1", "web"), "cnilab.demo.worker1.web");
        assert_eq!(infra_ns("demo", "fabric"), "cnilab.demo._fabric");
        assert_eq!(lab_of_ns("cnilab.demo._fabric"), Some("demo"));
        assert_eq!(lab_of_ns("cnilab.de-mo.w.p"), Some("de-mo"));
        assert_eq!(lab_of_ns("other"), None);
        assert!(pod_ns("a", "b", "c").starts_with(&lab_ns_prefix("a")));
        assert!(!node_ns("ab", "x").starts_with(&lab_ns_prefix("a")));
    }
}

//! Names and places of everything a lab owns: its network namespaces and its
//! runtime folder. Everything cnilab makes is found again from these names
//! alone, which is what lets `down` clean up after a crash.

use std::path::{Component, Path, PathBuf};

/// Default base folder of lab state, moved with `CNILAB_RUN_DIR`.
pub const DEFAULT_RUN_DIR: &str = "/run/cnilab";
/// Prefix of every cnilab network namespace.
pub const NS_PREFIX: &str = "cnilab.";

/// Checks `CNILAB_RUN_DIR` before anything is made or removed under it: an
/// absolute, normalized folder other than `/`, so that `<base>/<lab>` is
/// always a folder of cnilab's own.
pub fn check_run_dir() -> Result<(), crate::model::error::Error> {
    let Some(v) = std::env::var_os("CNILAB_RUN_DIR").filter(|v| !v.is_empty()) else {
        return Ok(());
    };
    let p = PathBuf::from(&v);
    let shown = crate::model::names::excerpt(&p.to_string_lossy());
    let problem = if !p.is_absolute() {
        Some("is not an absolute path")
    } else if p
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        Some("has '.' or '..' in it")
    } else if p.parent().is_none() {
        Some("is the root folder")
    } else if v.len() > 1024 {
        Some("is longer than 1024 bytes")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(crate::model::error::Error::usage(
            format!("CNILAB_RUN_DIR \"{shown}\" {why}"),
            "set it to an absolute folder of its own, such as /run/cnilab, or unset it",
        )),
    }
}

/// Whether `path` lies strictly inside `base`, judged on the names alone
/// (no `..`, no `.`), which is what every removal checks first.
pub fn inside(base: &Path, path: &Path) -> bool {
    path != base
        && path.starts_with(base)
        && path
            .strip_prefix(base)
            .is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
}

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
    // An empty lock folder hides nothing: no lock is held in it.
    let empty_dir = |p: &Path| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none());
    let empty =
        std::fs::read_dir(&base).is_ok_and(|d| d.flatten().all(|e| e.file_name() == ".locks" && empty_dir(&e.path())));
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

/// Where `up` makes a lab's folder before renaming it into place:
/// `<run base>/.claim-<lab>-<pid>`.
pub fn claim_dir(lab: &str) -> PathBuf {
    run_base().join(format!(".claim-{lab}-{}", std::process::id()))
}

/// The claim folders of `lab` left by an `up` killed while claiming.
pub fn claim_dirs(lab: &str) -> Vec<PathBuf> {
    let prefix = format!(".claim-{lab}-");
    std::fs::read_dir(run_base())
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&prefix)
                        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The lab a namespace name belongs to, if it is a cnilab one with a valid lab name.
/// Names read back from `/run/netns` are checked like any other input.
pub fn valid_lab_of_ns(ns: &str) -> Option<&str> {
    lab_of_ns(ns).filter(|l| crate::model::names::is_valid(crate::model::names::Kind::Lab, l))
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

    /// The file that marks a folder as a lab's own: `down` removes a lab
    /// folder only when it holds this marker naming that lab.
    pub fn marker(&self) -> PathBuf {
        self.root.join(".cnilab-lab")
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

    /// The real etcd server's folder (`datastore = "etcd"`): its data and log.
    pub fn etcd_server_dir(&self) -> PathBuf {
        self.root.join("etcd-server")
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

    /// A node's control-plane folder (its agent's run folder on a real node).
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
        assert_eq!(valid_lab_of_ns("cnilab.Bad.x"), None);
    }

    #[test]
    fn inside_judges_names_not_the_disk() {
        let base = Path::new("/run/cnilab");
        assert!(inside(base, Path::new("/run/cnilab/demo")));
        assert!(!inside(base, Path::new("/run/cnilab")));
        assert!(!inside(base, Path::new("/run/cnilab/../../etc")));
        assert!(!inside(base, Path::new("/etc")));
        // What `Path::join` makes of an absolute name: the name itself.
        #[allow(clippy::join_absolute_paths)]
        let joined = base.join("/etc");
        assert!(!inside(base, &joined));
    }
}

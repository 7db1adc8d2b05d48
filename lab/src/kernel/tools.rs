//! The programs cnilab runs, where it finds them, and the Debian package
//! each comes from, for `doctor` and for messages naming what to install.

use std::path::PathBuf;

/// A program cnilab uses.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Its name.
    pub name: &'static str,
    /// The Debian package that ships it.
    pub package: &'static str,
    /// What cnilab needs it for.
    pub used_for: &'static str,
    /// Arguments that print its version.
    pub version_args: &'static [&'static str],
}

/// Every program cnilab runs.
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "ip",
        package: "iproute2",
        used_for: "exec, probes, faults",
        version_args: &["-V"],
    },
    Tool {
        name: "bridge",
        package: "iproute2",
        used_for: "looking at FDBs",
        version_args: &["-V"],
    },
    Tool {
        name: "tc",
        package: "iproute2",
        used_for: "the loss fault with netem",
        version_args: &["-V"],
    },
    Tool {
        name: "ping",
        package: "iputils-ping",
        used_for: "probes",
        version_args: &["-V"],
    },
    Tool {
        name: "ipset",
        package: "ipset",
        used_for: "felix's NetworkPolicy sets (calico, canal)",
        version_args: &["--version"],
    },
    Tool {
        name: "bird",
        package: "bird2",
        used_for: "Calico's BGP mode, BGP routers",
        version_args: &["--version"],
    },
    Tool {
        name: "birdc",
        package: "bird2",
        used_for: "talking to BIRD by hand",
        version_args: &["--version"],
    },
    Tool {
        name: "iptables",
        package: "iptables",
        used_for: "the block and loss faults",
        version_args: &["-V"],
    },
    Tool {
        name: "nft",
        package: "nftables",
        used_for: "aws-vpc's VPC source/dest check",
        version_args: &["--version"],
    },
    Tool {
        name: "etcd",
        package: "etcd-server",
        used_for: "datastore = \"etcd\"",
        version_args: &["--version"],
    },
    Tool {
        name: "etcdctl",
        package: "etcd-client",
        used_for: "looking at the lab's etcd by hand",
        version_args: &["version"],
    },
    Tool {
        name: "tcpdump",
        package: "tcpdump",
        used_for: "capture",
        version_args: &["--version"],
    },
    Tool {
        name: "dot",
        package: "graphviz",
        used_for: "graph --format svg",
        version_args: &["-V"],
    },
];

/// The CNI reference plugins cnilab chains, from containernetworking-plugins.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "portmap", "bandwidth"];

/// The folders searched for programs: `CNILAB_PATH` when set (so a test or
/// a user can hide or replace a tool), else PATH and the sbin folders.
pub fn search_path() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("CNILAB_PATH").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&p).collect();
    }
    let mut v: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let d = PathBuf::from(d);
        if !v.contains(&d) {
            v.push(d);
        }
    }
    v
}

/// The search path as text, for messages.
pub fn search_path_text() -> String {
    let dirs: Vec<String> = search_path().iter().map(|d| d.display().to_string()).collect();
    dirs.join(":")
}

/// Where a program is, if installed.
pub fn find(name: &str) -> Option<PathBuf> {
    search_path().into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The tool of a name.
pub fn tool(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The error for a missing program, naming its package.
pub fn missing(name: &str) -> crate::model::error::Error {
    let package = tool(name).map_or(name, |t| t.package);
    crate::model::error::Error::env(format!("{name} is not installed"), format!("apt-get install {package}"))
}

/// A program's path, or the error naming its package.
pub fn require(name: &str) -> Result<PathBuf, crate::model::error::Error> {
    find(name).ok_or_else(|| missing(name))
}

/// The installed version of a Debian package, if any.
pub fn package_version(package: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// What a program says its version is (first line).
pub fn version(path: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(path).args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

/// Whether CAP_NET_ADMIN and CAP_SYS_ADMIN are in the effective set.
pub fn has_root() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN)
}

/// Where the CNI reference plugins are looked for, after the lab's own.
pub const SYSTEM_CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

//! `cnilab doctor`: what this machine can do for cnilab. Privileges, the
//! kernel's link kinds and qdiscs (probed for real, in a throwaway network
//! namespace that dies with the thread that made it), the programs cnilab
//! runs with their package versions, and, for a topology, whether all it
//! needs is here, with the exact command that installs what is not.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVlan, InfoVrf, LinkAttribute, LinkInfo, LinkMessage};
use serde::Serialize;

use crate::kernel::nl::{self, Nl};
use crate::kernel::tools;
use crate::profile::Plan;

/// A kernel feature cnilab (or its users' labs) may use.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// Its name, as `ip link add type ...` or `tc qdisc add ...` spells it.
    pub name: &'static str,
    /// The module that provides it.
    pub module: &'static str,
    /// What uses it.
    pub used_for: &'static str,
}

/// Every kernel feature doctor checks, in the order shown.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "veth",
        module: "veth",
        used_for: "every node, pod and router link",
    },
    Feature {
        name: "bridge",
        module: "bridge",
        used_for: "switches, cni0",
    },
    Feature {
        name: "vxlan",
        module: "vxlan",
        used_for: "flannel vxlan, calico vxlan, fault upstream-vxlan",
    },
    Feature {
        name: "ipip",
        module: "ipip",
        used_for: "calico mode = \"ipip\", flannel backend = \"ipip\"",
    },
    Feature {
        name: "wireguard",
        module: "wireguard",
        used_for: "flannel backend = \"wireguard\"",
    },
    Feature {
        name: "gre",
        module: "ip_gre",
        used_for: "GRE overlays (not used by shipped labs)",
    },
    Feature {
        name: "vlan",
        module: "8021q",
        used_for: "VLAN-tagged fabrics (not used by shipped labs)",
    },
    Feature {
        name: "macvlan",
        module: "macvlan",
        used_for: "the macvlan CNI plugin",
    },
    Feature {
        name: "dummy",
        module: "dummy",
        used_for: "service addresses (not used by shipped labs)",
    },
    Feature {
        name: "vrf",
        module: "vrf",
        used_for: "VRF-based routers (not used by shipped labs)",
    },
    Feature {
        name: "ifb",
        module: "ifb",
        used_for: "the bandwidth CNI plugin's ingress shaping",
    },
    Feature {
        name: "tun",
        module: "tun",
        used_for: "TUN/TAP-based agents (flannel udp backend)",
    },
    Feature {
        name: "openvswitch",
        module: "openvswitch",
        used_for: "Weave Net's fastdp (without it weave runs sleeve, as Weave falls back to)",
    },
    Feature {
        name: "netem",
        module: "sch_netem",
        used_for: "fault loss (else an iptables statistic match)",
    },
    Feature {
        name: "htb",
        module: "sch_htb",
        used_for: "rate limits",
    },
    Feature {
        name: "tbf",
        module: "sch_tbf",
        used_for: "the bandwidth CNI plugin's egress shaping",
    },
    Feature {
        name: "iptables",
        module: "ip_tables/nf_tables",
        used_for: "faults block and loss, portmap",
    },
];

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Check {
    /// Present and working.
    Ok,
    /// Absent, and why.
    Missing(String),
    /// Not checked, and why.
    Unchecked(String),
}

impl Check {
    /// Whether it is present.
    pub fn ok(&self) -> bool {
        *self == Check::Ok
    }
}

/// One kernel feature's result.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    /// The feature.
    pub name: &'static str,
    /// Its module.
    pub module: &'static str,
    /// What uses it.
    pub used_for: &'static str,
    /// What the probe found.
    pub check: Check,
}

/// One program's result.
#[derive(Debug, Clone, Serialize)]
pub struct ToolReport {
    /// Its name.
    pub name: &'static str,
    /// Its Debian package.
    pub package: &'static str,
    /// What cnilab uses it for.
    pub used_for: &'static str,
    /// Where it is.
    pub path: Option<String>,
    /// The package's installed version.
    pub version: Option<String>,
}

/// What a topology needs and what of that is missing.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyReport {
    /// The file.
    pub file: String,
    /// Its network, in a line.
    pub network: String,
    /// Kernel features it needs.
    pub kernel: Vec<&'static str>,
    /// Programs it needs (CNI plugins as `cni:NAME`).
    pub tools: Vec<String>,
    /// What of the above is missing.
    pub missing: Vec<String>,
    /// What the host's settings may not hold (the lab still builds).
    pub warnings: Vec<String>,
    /// Kernel features the profile would use but does without here, and
    /// what it does then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `uname -r` and the OS.
    pub host: String,
    /// Whether cnilab runs with the capabilities it needs.
    pub root: bool,
    /// Kernel features.
    pub kernel: Vec<FeatureReport>,
    /// Programs.
    pub tools: Vec<ToolReport>,
    /// The CNI reference plugins: name and path (None when missing).
    pub cni_plugins: Vec<(String, Option<String>)>,
    /// The containernetworking-plugins package version.
    pub cni_version: Option<String>,
    /// The real flannel programs `implementation = "upstream"` runs, as
    /// found here (not needed by other labs).
    pub upstream_flannel: Vec<UpstreamProgram>,
    /// The topology's needs, when one was given.
    pub topology: Option<TopologyReport>,
    /// The packages to install for everything missing.
    pub install: Vec<&'static str>,
}

/// A real flannel program and the version it reports.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamProgram {
    /// flanneld, or the flannel CNI plugin.
    pub name: &'static str,
    /// Where it is, if found.
    pub path: Option<String>,
    /// What it says its version is.
    pub version: Option<String>,
}

/// The real flanneld and flannel CNI plugin, where `up` would find them.
fn upstream_flannel() -> Vec<UpstreamProgram> {
    let flanneld = tools::find("flanneld");
    let plugin = tools::find("flannel").or_else(|| cni_plugin("flannel"));
    vec![
        UpstreamProgram {
            name: "flanneld",
            version: flanneld.as_deref().and_then(|p| tools::version(p, &["--version"])),
            path: flanneld.map(|p| p.display().to_string()),
        },
        UpstreamProgram {
            name: "flannel (CNI plugin)",
            // Without CNI_COMMAND the plugin prints its "about" line.
            version: plugin.as_deref().and_then(|p| {
                let out = std::process::Command::new(p).env("CNI_COMMAND", "").output().ok()?;
                let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
                text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
            }),
            path: plugin.map(|p| p.display().to_string()),
        },
    ]
}

impl Report {
    /// Whether everything the topology (or, without one, any lab) needs is here.
    pub fn ready(&self) -> bool {
        self.root && self.topology.as_ref().is_none_or(|t| t.missing.is_empty()) && self.base_missing().is_empty()
    }

    /// What every lab needs and is missing.
    fn base_missing(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .cni_plugins
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| format!("cni:{n}"))
            .collect();
        for k in self.kernel.iter().filter(|k| ["veth", "bridge"].contains(&k.name)) {
            if matches!(k.check, Check::Missing(_)) {
                v.push(k.name.to_string());
            }
        }
        v
    }
}

/// What a plan needs from the machine: kernel features and programs.
pub fn needs(plan: &Plan) -> (Vec<&'static str>, Vec<String>) {
    let mut kernel = vec!["veth", "bridge"];
    let mut progs: Vec<String> = tools::CNI_PLUGINS.iter().map(|p| format!("cni:{p}")).collect();
    kernel.extend(plan.profile.kernel_features());
    progs.extend(plan.profile.programs_needed());
    if plan.etcd.is_some() {
        progs.push("etcd".into());
    }
    let bird = plan.routers.iter().any(|r| r.bird.is_some());
    if bird && !progs.iter().any(|p| p == "bird") {
        progs.push("bird".into());
    }
    (kernel, progs)
}

/// The programs of `needs` that are not installed, with the packages that ship them.
pub fn missing_programs(progs: &[String]) -> Vec<(String, &'static str)> {
    progs
        .iter()
        .filter(|p| match p.strip_prefix("cni:") {
            Some(plugin) => cni_plugin(plugin).is_none(),
            None => tools::find(p).is_none(),
        })
        .map(|p| {
            let package = match p.strip_prefix("cni:") {
                Some(_) => "containernetworking-plugins",
                None => tools::tool(p).map_or("?", |t| t.package),
            };
            (p.clone(), package)
        })
        .collect()
}

/// Where a CNI reference plugin is.
pub fn cni_plugin(name: &str) -> Option<std::path::PathBuf> {
    crate::kernel::tools::SYSTEM_CNI_DIRS
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn host_line() -> String {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| "unknown OS".into());
    let u = nix::sys::utsname::uname().ok();
    let kernel = u
        .as_ref()
        .map(|u| format!("{} {}", u.release().to_string_lossy(), u.machine().to_string_lossy()))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{os}, kernel {kernel}, {cpus} CPUs")
}

/// Neighbour entries a lab needs when every pod talks to every pod: each
/// pod knows its gateway and the pods of its node, each node its pods and
/// every other node's VTEP or address.
pub fn neighbour_entries(plan: &Plan) -> u64 {
    let nodes = plan.nodes.len() as u64;
    let pods: u64 = plan
        .nodes
        .iter()
        .map(|n| {
            let p = n.pods.len() as u64;
            p * (p + 1) + p
        })
        .sum();
    pods + nodes * nodes
}

/// A warning when the host's neighbour table cannot hold the lab: every
/// namespace shares the table capped by the host's
/// `net.ipv4.neigh.default.gc_thresh3`, and past it the kernel drops
/// entries ("neighbour table overflow"), so pings fail for no reason of the
/// lab's. cnilab only reads the host's setting; changing it is the user's call.
pub fn neighbour_warning(plan: &Plan) -> Option<String> {
    let limit: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let need = neighbour_entries(plan);
    (need > limit).then(|| {
        let room = need.next_power_of_two().max(4096) * 2;
        format!(
            "every pod talking to every pod needs about {need} neighbour entries, but the host's table holds {limit} (net.ipv4.neigh.default.gc_thresh3, shared by all namespaces): pings may fail for that reason alone; raise it with sysctl -w net.ipv4.neigh.default.gc_thresh3={room} net.ipv4.neigh.default.gc_thresh2={}",
            room / 2
        )
    })
}

/// Builds the report; `topology` is the file and its plan, when given.
pub fn report(topology: Option<(&str, &Plan)>) -> Report {
    let root = crate::kernel::tools::has_root();
    let kernel = if root {
        match std::thread::spawn(probe_kernel).join() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => unchecked(&format!("the probe failed: {e:#}")),
            Err(_) => unchecked("the probe panicked"),
        }
    } else {
        unchecked("needs root")
    };
    let tools: Vec<ToolReport> = tools::TOOLS
        .iter()
        .map(|t| {
            let path = tools::find(t.name);
            ToolReport {
                name: t.name,
                package: t.package,
                used_for: t.used_for,
                version: path.as_ref().and_then(|_| tools::package_version(t.package)),
                path: path.map(|p| p.display().to_string()),
            }
        })
        .collect();
    let cni_plugins: Vec<(String, Option<String>)> = tools::CNI_PLUGINS
        .iter()
        .map(|p| (p.to_string(), cni_plugin(p).map(|p| p.display().to_string())))
        .collect();
    let cni_version = tools::package_version("containernetworking-plugins");
    let topology = topology.map(|(file, plan)| {
        let (need_kernel, progs) = needs(plan);
        let mut missing: Vec<String> = need_kernel
            .iter()
            .filter(|k| {
                kernel
                    .iter()
                    .any(|f| f.name == **k && matches!(f.check, Check::Missing(_)))
            })
            .map(|k| k.to_string())
            .collect();
        missing.extend(missing_programs(&progs).into_iter().map(|(p, _)| p));
        if let Err(e) = plan.profile.preflight() {
            missing.push(e.to_string());
        }
        let notes = plan
            .profile
            .optional_kernel_features()
            .into_iter()
            .filter_map(|(name, without)| {
                let f = kernel.iter().find(|f| f.name == name)?;
                matches!(f.check, Check::Missing(_)).then(|| format!("{name}: missing, {without}"))
            })
            .collect();
        TopologyReport {
            notes,
            file: file.to_string(),
            network: plan.profile.describe(),
            kernel: need_kernel,
            tools: progs,
            missing,
            warnings: neighbour_warning(plan).into_iter().collect(),
        }
    });
    let mut install: BTreeSet<&'static str> = tools.iter().filter(|t| t.path.is_none()).map(|t| t.package).collect();
    if cni_plugins.iter().any(|(_, p)| p.is_none()) {
        install.insert("containernetworking-plugins");
    }
    Report {
        host: host_line(),
        root,
        kernel,
        tools,
        cni_plugins,
        cni_version,
        upstream_flannel: upstream_flannel(),
        topology,
        install: install.into_iter().collect(),
    }
}

fn unchecked(why: &str) -> Vec<FeatureReport> {
    FEATURES
        .iter()
        .map(|f| FeatureReport {
            name: f.name,
            module: f.module,
            used_for: f.used_for,
            check: Check::Unchecked(why.to_string()),
        })
        .collect()
}

/// A link of `kind` named `name`, with optional data and parent link.
fn probe_link(name: &str, kind: InfoKind, data: Option<InfoData>, parent: Option<u32>) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![LinkAttribute::IfName(name.to_string())];
    if let Some(p) = parent {
        msg.attributes.push(LinkAttribute::Link(p));
    }
    let mut info = vec![LinkInfo::Kind(kind)];
    if let Some(d) = data {
        info.push(LinkInfo::Data(d));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    RouteNetlinkMessage::NewLink(msg)
}

/// Probes every feature in a new network namespace owned by this thread.
/// Nothing needs removing: the namespace goes when the thread ends.
fn probe_kernel() -> anyhow::Result<Vec<FeatureReport>> {
    use anyhow::Context;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    let mut found = probe_links()?;
    found.push(("tun", probe_tun()));
    found.push(("openvswitch", probe_genl_family("ovs_datapath", "openvswitch")));
    // Qdiscs and iptables through their own tools, run from this thread so
    // that they start in its namespace.
    found.extend(probe_qdiscs());
    found.push(("iptables", probe_iptables()));
    Ok(FEATURES
        .iter()
        .map(|f| FeatureReport {
            name: f.name,
            module: f.module,
            used_for: f.used_for,
            check: found
                .iter()
                .find(|(n, _)| *n == f.name)
                .map_or(Check::Unchecked("not probed".into()), |(_, c)| c.clone()),
        })
        .collect())
}

/// Creates one link of each kind in the current (fresh) namespace; the
/// veth and bridge stay, as parents and qdisc targets of the later probes.
fn probe_links() -> anyhow::Result<Vec<(&'static str, Check)>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let nl = Nl::connect()?;
        let verdict = |r: Result<(), nl::NlError>, f: &Feature| match r {
            Ok(()) => Check::Ok,
            Err(e) if e.is_unsupported() => Check::Missing(format!(
                "the kernel cannot make {} links: modprobe {}",
                f.name, f.module
            )),
            Err(e) => Check::Missing(format!("creating a {} link failed: {e}", f.name)),
        };
        let feature = |n: &str| *FEATURES.iter().find(|f| f.name == n).expect("known feature");
        let mut out = Vec::new();
        let r = nl.add(probe_link("dv0", InfoKind::Veth, None, None)).await;
        out.push(("veth", verdict(r, &feature("veth"))));
        let parent = nl.index("dv0").await.ok().flatten();
        let r = nl.add(probe_link("db0", InfoKind::Bridge, None, None)).await;
        out.push(("bridge", verdict(r, &feature("bridge"))));
        let r = nl
            .add(nl::vxlan(
                "dx0",
                1,
                4789,
                Ipv4Addr::LOCALHOST,
                0,
                1450,
                [2, 0, 0, 0, 0, 1],
            ))
            .await;
        out.push(("vxlan", verdict(r, &feature("vxlan"))));
        let r = nl.add(probe_link("di0", InfoKind::IpIp, None, None)).await;
        out.push(("ipip", verdict(r, &feature("ipip"))));
        let r = nl.add(probe_link("dw0", InfoKind::Wireguard, None, None)).await;
        out.push(("wireguard", verdict(r, &feature("wireguard"))));
        let r = nl.add(probe_link("dg0", InfoKind::GreTun, None, None)).await;
        out.push(("gre", verdict(r, &feature("gre"))));
        for (name, kind, data) in [
            ("vlan", InfoKind::Vlan, Some(InfoData::Vlan(vec![InfoVlan::Id(10)]))),
            ("macvlan", InfoKind::MacVlan, None),
        ] {
            let check = match parent {
                Some(p) => verdict(nl.add(probe_link("dp0", kind, data, Some(p))).await, &feature(name)),
                None => Check::Unchecked("needs a veth as parent".into()),
            };
            if check.ok() {
                if let Ok(Some(i)) = nl.index("dp0").await {
                    let _ = nl
                        .change(RouteNetlinkMessage::DelLink(
                            rtnetlink::LinkUnspec::new_with_index(i).build(),
                        ))
                        .await;
                }
            }
            out.push((name, check));
        }
        let r = nl.add(probe_link("dd0", InfoKind::Dummy, None, None)).await;
        out.push(("dummy", verdict(r, &feature("dummy"))));
        let r = nl
            .add(probe_link(
                "dr0",
                InfoKind::Vrf,
                Some(InfoData::Vrf(vec![InfoVrf::TableId(10)])),
                None,
            ))
            .await;
        out.push(("vrf", verdict(r, &feature("vrf"))));
        let r = nl.add(probe_link("df0", InfoKind::Ifb, None, None)).await;
        out.push(("ifb", verdict(r, &feature("ifb"))));
        Ok::<_, anyhow::Error>(out)
    })
}

/// Adds each qdisc the faults use, with tc.
fn probe_qdiscs() -> Vec<(&'static str, Check)> {
    let mut found = Vec::new();
    let tc = tools::find("tc");
    for (name, dev, args) in [
        ("netem", "lo", &["netem", "delay", "1ms"][..]),
        ("htb", "dv0", &["htb", "default", "1"][..]),
        (
            "tbf",
            "db0",
            &["tbf", "rate", "1mbit", "burst", "32kb", "latency", "50ms"][..],
        ),
    ] {
        let check = match &tc {
            None => Check::Unchecked("tc is not installed (apt-get install iproute2)".into()),
            Some(tc) => {
                let out = std::process::Command::new(tc)
                    .args(["qdisc", "add", "dev", dev, "root"])
                    .args(args)
                    .output();
                match out {
                    Ok(o) if o.status.success() => Check::Ok,
                    Ok(o) => {
                        let module = FEATURES.iter().find(|f| f.name == name).map_or("", |f| f.module);
                        let why = String::from_utf8_lossy(&o.stderr);
                        let why = why.trim().trim_start_matches("Error: ").trim_end_matches('.');
                        Check::Missing(format!("{why}: modprobe {module}"))
                    }
                    Err(e) => Check::Unchecked(format!("cannot run tc: {e}")),
                }
            }
        };
        found.push((name, check));
    }
    found
}

/// Lists a chain with iptables.
fn probe_iptables() -> Check {
    match tools::find("iptables") {
        None => Check::Unchecked("iptables is not installed (apt-get install iptables)".into()),
        Some(p) => match std::process::Command::new(p).args(["-w", "-n", "-L", "INPUT"]).output() {
            Ok(o) if o.status.success() => Check::Ok,
            Ok(o) => Check::Missing(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Check::Unchecked(format!("cannot run iptables: {e}")),
        },
    }
}

/// Whether the kernel has the generic netlink family `family` (e.g.
/// `ovs_datapath`, what Weave's `odp.CreateDatapath` asks for), asked
/// of the controller (CTRL_CMD_GETFAMILY) on a raw netlink socket.
fn probe_genl_family(family: &str, module: &str) -> Check {
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    let mut name = family.as_bytes().to_vec();
    name.push(0);
    let attr_len = 4 + name.len();
    let mut msg = Vec::new();
    let total = 16 + 4 + attr_len.div_ceil(4) * 4;
    msg.extend((total as u32).to_ne_bytes());
    msg.extend(GENL_ID_CTRL.to_ne_bytes());
    msg.extend((libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend(1u32.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend([CTRL_CMD_GETFAMILY, 1, 0, 0]);
    msg.extend((attr_len as u16).to_ne_bytes());
    msg.extend(CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
    msg.extend(&name);
    msg.resize(total, 0);
    // SAFETY: a netlink socket closed below; buffers live across the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_GENERIC,
        );
        if fd < 0 {
            return Check::Unchecked(format!("generic netlink: {}", std::io::Error::last_os_error()));
        }
        let sent = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        let mut buf = [0u8; 8192];
        let n = if sent < 0 {
            -1
        } else {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 20 {
            return Check::Unchecked(format!("generic netlink: {err}"));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if ty == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Check::Missing(format!(
                    "no generic netlink family {family} ({}): the kernel needs CONFIG_OPENVSWITCH or modprobe {module}",
                    std::io::Error::from_raw_os_error(-code)
                ));
            }
        }
    }
    Check::Ok
}

/// Creates a TUN device through /dev/net/tun, as TUN users do.
fn probe_tun() -> Check {
    use std::os::fd::AsRawFd;
    let file = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(f) => f,
        Err(e) => return Check::Missing(format!("/dev/net/tun: {e}: modprobe tun")),
    };
    // struct ifreq: a 16-byte name, then the flags (IFF_TUN | IFF_NO_PI).
    let mut req = [0u8; 40];
    req[..3].copy_from_slice(b"dt0");
    req[16..18].copy_from_slice(&(0x0001u16 | 0x1000).to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is large enough to hold.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) };
    if rc == 0 {
        Check::Ok
    } else {
        Check::Missing(format!("TUNSETIFF: {}: modprobe tun", std::io::Error::last_os_error()))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "host        {}", self.host)?;
        writeln!(
            f,
            "privileges  {}",
            if self.root {
                "root (CAP_NET_ADMIN, CAP_SYS_ADMIN): ok"
            } else {
                "NOT ROOT: cnilab needs CAP_NET_ADMIN and CAP_SYS_ADMIN; run it as root or with sudo"
            }
        )?;
        writeln!(f)?;
        let mut t = crate::kernel::progress::table(&["KERNEL", "STATE", "USED FOR", "DETAIL"]);
        for k in &self.kernel {
            let (state, detail) = match &k.check {
                Check::Ok => ("ok", String::new()),
                Check::Missing(d) => ("MISSING", d.clone()),
                Check::Unchecked(d) => ("unchecked", d.clone()),
            };
            t.add_row(vec![k.name.to_string(), state.into(), k.used_for.into(), detail]);
        }
        writeln!(f, "{}", crate::kernel::progress::text(&t))?;
        writeln!(f)?;
        let mut t = crate::kernel::progress::table(&["TOOL", "PACKAGE", "VERSION", "PATH", "USED FOR"]);
        for tool in &self.tools {
            t.add_row(vec![
                tool.name.to_string(),
                tool.package.to_string(),
                tool.version.clone().unwrap_or_else(|| "-".into()),
                tool.path
                    .clone()
                    .unwrap_or_else(|| format!("MISSING: apt-get install -y {}", tool.package)),
                tool.used_for.to_string(),
            ]);
        }
        let cni_missing: Vec<&str> = self
            .cni_plugins
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        t.add_row(vec![
            "CNI plugins".to_string(),
            "containernetworking-plugins".into(),
            self.cni_version.clone().unwrap_or_else(|| "-".into()),
            if cni_missing.is_empty() {
                self.cni_plugins
                    .first()
                    .and_then(|(_, p)| p.as_deref())
                    .and_then(|p| std::path::Path::new(p).parent())
                    .map_or(String::new(), |d| d.display().to_string())
            } else {
                format!(
                    "MISSING {}: apt-get install -y containernetworking-plugins",
                    cni_missing.join(", ")
                )
            },
            tools::CNI_PLUGINS.join(", "),
        ]);
        writeln!(f, "{}", crate::kernel::progress::text(&t))?;
        writeln!(f)?;
        let mut t = crate::kernel::progress::table(&["REAL FLANNEL", "VERSION", "PATH"]);
        for p in &self.upstream_flannel {
            t.add_row(vec![
                p.name.to_string(),
                p.version.clone().unwrap_or_else(|| "-".into()),
                p.path.clone().unwrap_or_else(|| {
                    "not installed (only implementation = \"upstream\" needs it): bash .ci/flannel/build.sh".into()
                }),
            ]);
        }
        writeln!(f, "{}", crate::kernel::progress::text(&t))?;
        if let Some(topo) = &self.topology {
            writeln!(f)?;
            let needs: Vec<String> = topo
                .kernel
                .iter()
                .map(|k| k.to_string())
                .chain(topo.tools.iter().filter(|p| !p.starts_with("cni:")).cloned())
                .chain(std::iter::once("CNI plugins".to_string()))
                .collect();
            writeln!(f, "{} ({}) needs: {}", topo.file, topo.network, needs.join(", "))?;
            for w in &topo.warnings {
                writeln!(f, "  WARNING {w}")?;
            }
            for n in &topo.notes {
                writeln!(f, "  {n}")?;
            }
            if topo.missing.is_empty() {
                writeln!(f, "  all of it is here")?;
            } else {
                for m in &topo.missing {
                    let fix = match m.strip_prefix("cni:") {
                        Some(_) => "apt-get install -y containernetworking-plugins".to_string(),
                        None => match tools::tool(m) {
                            Some(t) => format!("apt-get install -y {}", t.package),
                            None => FEATURES
                                .iter()
                                .find(|f| f.name == m)
                                .map_or(String::new(), |f| format!("modprobe {}", f.module)),
                        },
                    };
                    writeln!(f, "  MISSING {m}: {fix}")?;
                }
            }
        }
        if !self.install.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "to install every missing tool: apt-get install -y {}",
                self.install.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_netlink_families_are_found_or_missing() {
        assert_eq!(probe_genl_family("nlctrl", "none"), Check::Ok);
        assert!(matches!(
            probe_genl_family("cnilab_no_such_family", "none"),
            Check::Missing(_)
        ));
    }

    fn plan(text: &str) -> Plan {
        let t = crate::profile::parse_topology(&crate::model::error::Source::new("t.toml", text)).expect("valid");
        crate::profile::plan_lab(
            &t,
            &t.name,
            &crate::model::paths::LabPaths::new(std::path::Path::new("/x"), &t.name),
        )
    }

    #[test]
    fn neighbour_entries_grow_with_pods_per_node_and_nodes() {
        // 20 nodes of 10 pods: 20 x (10 x 11 + 10) + 20 x 20.
        let big = plan("name = \"big\"\n[[node]]\nname = \"n{i}\"\ncount = 20\npods = 10\n");
        assert_eq!(neighbour_entries(&big), 2800);
        let small = plan("name = \"s\"\n[[node]]\nname = \"n{i}\"\ncount = 3\npods = 2\n");
        assert_eq!(neighbour_entries(&small), 3 * 8 + 9);
    }
}

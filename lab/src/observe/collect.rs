//! One read of the kernel: the state of a set of namespaces, collected once
//! through netlink (links with their peers and namespace ids, addresses,
//! routes of every table, neighbours, proxy entries, FDB), plus what has no
//! netlink here: sysctls, `iptables-save` and `tc qdisc` as text, BIRD's
//! view and host-local's reservations. The result, a [`Dump`], is plain
//! typed data: snapshot, trace and probe are pure functions of it, and a
//! dump recorded as JSON replays them without root (tests/replay.rs).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkLayerType, LinkMessage, VxlanDf};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric};
use netlink_packet_route::rule::{RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::Nl;

/// How many namespaces are read at once: each read holds a netlink socket
/// and its buffers, which for a thousand pods at once was most of the memory.
const READERS: usize = 16;

/// The kernel state of a set of namespaces, by namespace name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dump {
    /// Namespaces by their full name (`cnilab.<lab>.worker1`).
    pub namespaces: BTreeMap<String, NsDump>,
}

/// One namespace's state, as the kernel reported it (in its order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NsDump {
    /// Links.
    pub links: Vec<Link>,
    /// IPv4 addresses.
    pub addrs: Vec<Addr>,
    /// IPv4 routes of every table.
    pub routes: Vec<Route>,
    /// IPv4 policy routing rules (`ip rule`), in the kernel's order;
    /// empty in recordings made before rules were read, which then stand
    /// for the kernel's three default rules.
    pub rules: Vec<Rule>,
    /// ARP entries.
    pub neighbours: Vec<Neigh>,
    /// Proxy ARP entries.
    pub proxies: Vec<Neigh>,
    /// FDB entries (AF_BRIDGE neighbours) of bridges and VXLAN devices.
    pub fdb: Vec<Fdb>,
    /// The namespaces of link peers, by the id this namespace gives them
    /// (`ip netns list-id`); read for traces.
    pub nsids: BTreeMap<i32, String>,
    /// Sysctls read, by /proc/sys path (`net/ipv4/ip_forward`).
    pub sysctls: BTreeMap<String, String>,
    /// What `iptables-nft-save` and `iptables-legacy-save` print, for the
    /// kinds of tables present (empty when there are none).
    pub iptables: String,
    /// What `tc qdisc show` prints; read for traces.
    pub qdiscs: Option<String>,
    /// BGP sessions of the BIRD running here.
    pub bgp_sessions: Vec<crate::kernel::bird::Session>,
    /// BGP routes in that BIRD's table.
    pub bgp_routes: Vec<crate::kernel::bird::BgpRoute>,
    /// host-local's reservations held here.
    pub ipam: Vec<IpamFile>,
    /// The keys (with values) under the profile's prefix, where the lab's
    /// etcd runs.
    pub etcd: Vec<(String, String)>,
    /// What `ipset save` prints, where iptables rules match sets.
    pub ipsets: String,
}

/// A link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// veth, bridge, vxlan, tun, loopback, device, ...
    pub kind: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Carrier (LOWER_UP).
    pub lower_up: bool,
    /// Index of the bridge it is a port of.
    pub master: Option<u32>,
    /// MAC, when it has one of 6 bytes.
    pub mac: Option<String>,
    /// The peer's (a veth's other end) interface index.
    pub peer: Option<u32>,
    /// The id of the namespace the peer is in, when it is another one.
    pub peer_netnsid: Option<i32>,
    /// A VXLAN device's settings.
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Vxlan {
    /// VNI.
    pub id: Option<u32>,
    /// Local address.
    pub local: Option<Ipv4Addr>,
    /// Multicast group.
    pub group: Option<Ipv4Addr>,
    /// Underlay device index.
    pub dev: Option<u32>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// Learns remote MACs.
    pub learning: bool,
    /// ARP proxy.
    pub proxy: bool,
    /// Reports L2 misses.
    pub l2miss: bool,
    /// Reports L3 misses.
    pub l3miss: bool,
    /// DF set on the outer header.
    pub df_set: bool,
}

/// An IPv4 address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Addr {
    /// Interface index.
    pub index: u32,
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Scope (0 global, 253 link, 254 host).
    #[serde(default)]
    pub scope: u8,
}

/// A route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    /// Table (254 main, 255 local).
    pub table: u32,
    /// rtm_type (1 unicast, 2 local, 6 blackhole, 7 unreachable, ...).
    pub kind: u8,
    /// Destination, absent for a default route.
    pub dst: Option<Ipv4Addr>,
    /// Prefix length.
    pub dst_len: u8,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// rtm_protocol (2 kernel, 3 boot, 4 static, 12 bird, ...).
    pub protocol: u8,
    /// rtm_scope (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Preferred source.
    pub prefsrc: Option<Ipv4Addr>,
    /// Metric (priority).
    pub metric: Option<u32>,
    /// MTU metric.
    pub mtu: Option<u32>,
    /// onlink.
    pub onlink: bool,
    /// linkdown.
    pub linkdown: bool,
    /// dead.
    pub dead: bool,
}

/// A policy routing rule (`ip rule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rule {
    /// Priority (preference).
    pub priority: u32,
    /// `not`: the selectors are inverted.
    pub invert: bool,
    /// `from PREFIX`.
    pub src: Option<(Ipv4Addr, u8)>,
    /// `to PREFIX`.
    pub dst: Option<(Ipv4Addr, u8)>,
    /// `fwmark MARK/MASK`.
    pub fwmark: Option<(u32, u32)>,
    /// `iif NAME`.
    pub iif: Option<String>,
    /// `oif NAME`.
    pub oif: Option<String>,
    /// Selectors that traces do not model, as iproute2 prints them
    /// (`ipproto tcp`, `dport 53`, `suppress_prefixlength 0`, ...).
    pub other: Vec<String>,
    /// The table of `lookup`.
    pub table: u32,
    /// FR_ACT_* (1 lookup, 2 goto, 3 nop, 6 blackhole, 7 unreachable, 8 prohibit).
    pub action: u8,
    /// The priority `goto` jumps to.
    pub goto: Option<u32>,
}

/// FR_ACT_* values.
pub const FR_ACT_TO_TBL: u8 = 1;
/// Jumps to another rule.
pub const FR_ACT_GOTO: u8 = 2;
/// Does nothing.
pub const FR_ACT_NOP: u8 = 3;
/// Drops silently.
pub const FR_ACT_BLACKHOLE: u8 = 6;
/// Answers "host unreachable".
pub const FR_ACT_UNREACHABLE: u8 = 7;
/// Answers "administratively prohibited".
pub const FR_ACT_PROHIBIT: u8 = 8;

impl Rule {
    /// A rule `PRIO: from all lookup TABLE`.
    pub fn lookup(priority: u32, table: u32) -> Rule {
        Rule {
            priority,
            table,
            action: FR_ACT_TO_TBL,
            ..Default::default()
        }
    }

    /// The kernel's default rules: 0 local, 32766 main, 32767 default.
    pub fn defaults() -> Vec<Rule> {
        vec![Rule::lookup(0, 255), Rule::lookup(32766, 254), Rule::lookup(32767, 253)]
    }

    /// Whether it is one of the kernel's three default rules.
    pub fn is_default(&self) -> bool {
        Rule::defaults().contains(self)
    }

    /// The rule as `ip rule` prints it (one space after the colon).
    pub fn text(&self) -> String {
        let prefix = |(a, l): (Ipv4Addr, u8)| {
            if l == 32 { a.to_string() } else { format!("{a}/{l}") }
        };
        let mut s = format!("{}:", self.priority);
        if self.invert {
            s.push_str(" not");
        }
        match self.src {
            Some(p) => s.push_str(&format!(" from {}", prefix(p))),
            None => s.push_str(" from all"),
        }
        if let Some(p) = self.dst {
            s.push_str(&format!(" to {}", prefix(p)));
        }
        if let Some((m, mask)) = self.fwmark {
            if mask == u32::MAX {
                s.push_str(&format!(" fwmark {m:#x}"));
            } else {
                s.push_str(&format!(" fwmark {m:#x}/{mask:#x}"));
            }
        }
        if let Some(i) = &self.iif {
            s.push_str(&format!(" iif {i}"));
        }
        if let Some(o) = &self.oif {
            s.push_str(&format!(" oif {o}"));
        }
        for o in &self.other {
            s.push(' ');
            s.push_str(o);
        }
        match self.action {
            FR_ACT_TO_TBL => s.push_str(&format!(" lookup {}", table_text(self.table))),
            FR_ACT_GOTO => s.push_str(&format!(" goto {}", self.goto.map_or("none".into(), |g| g.to_string()))),
            FR_ACT_NOP => s.push_str(" nop"),
            FR_ACT_BLACKHOLE => s.push_str(" blackhole"),
            FR_ACT_UNREACHABLE => s.push_str(" unreachable"),
            FR_ACT_PROHIBIT => s.push_str(" prohibit"),
            n => s.push_str(&format!(" action {n}")),
        }
        s
    }
}

/// A table as iproute2 names it: `main`, `local`, `default` or its number.
pub fn table_text(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

/// An ARP (or proxy ARP) entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Neigh {
    /// Interface index.
    pub ifindex: u32,
    /// The IPv4 address.
    pub dst: Option<Ipv4Addr>,
    /// The MAC.
    pub lladdr: Option<String>,
    /// NUD state bits.
    pub state: u16,
}

/// An FDB entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Fdb {
    /// Interface index (a bridge port, a VXLAN device, a bridge).
    pub ifindex: u32,
    /// The MAC.
    pub mac: Option<String>,
    /// The remote VTEP.
    pub dst: Option<Ipv4Addr>,
    /// The bridge index, for a bridge's entries.
    pub master: Option<u32>,
    /// `self`: the device's own entry.
    pub own: bool,
    /// NUD state bits.
    pub state: u16,
}

/// One host-local reservation file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamFile {
    /// IPAM network name.
    pub network: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Container ID in the file.
    pub container: String,
    /// Interface in the file.
    pub ifname: String,
}

impl Dump {
    /// The dump as JSON for a recording: fields that are absent, false or
    /// empty lists are left out (reading gives them back as their defaults),
    /// which makes a recording much shorter.
    pub fn to_json(&self) -> serde_json::Value {
        fn prune(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    m.values_mut().for_each(prune);
                    m.retain(|_, x| !matches!(x, serde_json::Value::Null | serde_json::Value::Bool(false)));
                    m.retain(|_, x| x.as_array().is_none_or(|a| !a.is_empty()));
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(prune),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(self).expect("a dump serializes");
        prune(&mut v);
        v
    }
}

/// Sysctl keys a caller wants for a namespace, given its links.
pub type SysctlKeys = Arc<dyn Fn(&[Link]) -> Vec<String> + Send + Sync>;

/// What to read in one namespace.
#[derive(Clone)]
pub struct Target {
    /// The namespace.
    pub ns: String,
    /// Sysctls that must be readable (an error otherwise).
    pub sysctls: SysctlKeys,
    /// BIRD's control socket, for a node or router.
    pub bird_socket: Option<PathBuf>,
    /// host-local's state directory (`.../networks`), for a node.
    pub ipam_dir: Option<PathBuf>,
    /// The key prefix to read, where the lab's etcd runs.
    pub etcd_prefix: Option<String>,
}

impl Target {
    /// Only the kernel's state of `ns`.
    pub fn new(ns: &str) -> Target {
        Target {
            ns: ns.to_string(),
            sysctls: Arc::new(|_| Vec::new()),
            bird_socket: None,
            ipam_dir: None,
            etcd_prefix: None,
        }
    }
}

/// What a trace needs beyond a snapshot: namespace ids, qdiscs, and the
/// sysctls the kernel consults on a packet's way (read where they exist).
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Read what a trace needs too; a BIRD that does not answer leaves its
    /// tables empty instead of failing the read.
    pub trace: bool,
}

/// Sysctls a trace consults in every namespace.
const TRACE_SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/all/arp_ignore",
    "net/bridge/bridge-nf-call-iptables",
];

/// Reads `targets`, a bounded number at once.
pub async fn collect(targets: Vec<Target>, want: Want) -> Result<Dump> {
    let all: Vec<(String, NsDump)> = futures::stream::iter(targets.into_iter().map(|t| async move {
        let ns = t.ns.clone();
        collect_one(t, want).await.map(|d| (ns, d))
    }))
    .buffered(READERS)
    .try_collect()
    .await?;
    Ok(Dump {
        namespaces: all.into_iter().collect(),
    })
}

/// Reads one namespace from synchronous code: on the current runtime's
/// handle from a blocking thread, or on a runtime of its own.
pub fn collect_blocking(target: Target, want: Want) -> Result<NsDump> {
    block_on(collect_one(target, want))
}

/// Runs a future to completion from synchronous code, on a thread and
/// runtime of its own (so that it works from a blocking task, from a
/// runtime's thread, or with no runtime at all).
pub fn block_on<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f)
        })
        .join()
        .expect("collecting thread panicked")
    })
}

/// Reads one namespace.
pub async fn collect_one(t: Target, want: Want) -> Result<NsDump> {
    let handle = Netns::open(&t.ns)?;
    let nl = Nl::connect_in(&handle)?;
    let (links, addrs, routes, neigh, proxy, fdb) = futures::try_join!(
        nl.links(),
        nl.addresses(),
        nl.routes(),
        nl.neighbours(AddressFamily::Inet, false),
        nl.neighbours(AddressFamily::Inet, true),
        nl.neighbours(AddressFamily::Bridge, false),
    )
    .with_context(|| format!("reading namespace {}", t.ns))?;
    let rules = read_rules(&nl)
        .await
        .with_context(|| format!("reading the rules of {}", t.ns))?;
    let links: Vec<Link> = links.iter().map(link).collect();
    let mut d = NsDump {
        rules: rules.iter().filter_map(rule).collect(),
        links,
        addrs: addrs.iter().filter_map(addr).collect(),
        routes: routes.iter().map(route).collect(),
        neighbours: neigh.iter().map(neighbour).collect(),
        proxies: proxy.iter().map(neighbour).collect(),
        fdb: fdb.iter().map(fdb_entry).collect(),
        ..Default::default()
    };
    if want.trace {
        d.nsids = nsids(&nl, &d.links).await;
    }
    read_texts(&handle, &t, want, &mut d).await?;
    if let Some(dir) = &t.ipam_dir {
        d.ipam = read_ipam(dir);
    }
    if let Some(prefix) = &t.etcd_prefix {
        d.etcd = crate::kernel::etcd::get_prefix(&handle, &format!("{prefix}/")).await?;
    }
    Ok(d)
}

/// Sysctls, iptables, qdiscs and BIRD: what has no netlink here.
async fn read_texts(handle: &Netns, t: &Target, want: Want, d: &mut NsDump) -> Result<()> {
    let required = (t.sysctls)(&d.links);
    let mut optional: Vec<String> = Vec::new();
    if want.trace {
        optional.extend(TRACE_SYSCTLS.iter().map(|s| s.to_string()));
        for l in &d.links {
            optional.push(format!("net/ipv4/conf/{}/rp_filter", l.name));
            optional.push(format!("net/ipv4/conf/{}/proxy_arp", l.name));
        }
    }
    let (sysctls, filters) = handle.run(move || {
        let mut out = BTreeMap::new();
        for k in required {
            let v = netns::read_sysctl(&k)?;
            out.insert(k, v);
        }
        for k in optional {
            if let Ok(v) = netns::read_sysctl(&k) {
                out.insert(k, v);
            }
        }
        Ok((out, iptables_present()))
    })?;
    d.sysctls = sysctls;
    // Only namespaces that have tables pay for a process.
    if filters.nft || filters.legacy {
        let ns = Netns::open(&t.ns)?;
        d.iptables = tokio::task::spawn_blocking(move || iptables_save(&ns, filters)).await??;
    }
    // A policy engine's sets: only where its rules match some.
    if d.iptables.contains("--match-set") {
        let ns = Netns::open(&t.ns)?;
        d.ipsets = tokio::task::spawn_blocking(move || netns::run_in(&ns, "ipset", &["save"])).await??;
    }
    if want.trace {
        let ns = Netns::open(&t.ns)?;
        d.qdiscs = Some(
            tokio::task::spawn_blocking(move || {
                netns::command(&ns, "tc")
                    .args(["qdisc", "show"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default()
            })
            .await?,
        );
    }
    if let Some(sock) = t.bird_socket.clone().filter(|s| s.exists()) {
        let read = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((
                crate::kernel::bird::sessions(&sock)?,
                crate::kernel::bird::bgp_routes(&sock)?,
            ))
        })
        .await?;
        match read {
            Ok((s, r)) => (d.bgp_sessions, d.bgp_routes) = (s, r),
            Err(_) if want.trace => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The names of the namespaces the links' peers are in, by namespace id:
/// what `ip netns list-id` shows, asked of the kernel for every named namespace.
async fn nsids(nl: &Nl, links: &[Link]) -> BTreeMap<i32, String> {
    let mut wanted: Vec<i32> = links
        .iter()
        .filter_map(|l| l.peer_netnsid)
        .filter(|i| *i >= 0)
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return out;
    }
    for name in netns::list() {
        let Ok(f) = std::fs::File::open(netns::path_of(&name)) else {
            continue;
        };
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(f.as_raw_fd() as u32));
        let Ok(answer) = nl.send(RouteNetlinkMessage::GetNsId(msg), NLM_F_REQUEST).await else {
            continue;
        };
        let id = answer.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(i) => Some(*i),
                _ => None,
            }),
            _ => None,
        });
        if let Some(id) = id.filter(|i| wanted.contains(i)) {
            out.insert(id, name);
            if out.len() == wanted.len() {
                break;
            }
        }
    }
    out
}

/// host-local's reservations: one file per address holding the container
/// ID and interface, under one directory per network.
fn read_ipam(base: &std::path::Path) -> Vec<IpamFile> {
    let mut out = Vec::new();
    let Ok(nets) = std::fs::read_dir(base) else {
        return out;
    };
    for net in nets.flatten() {
        let network = net.file_name().to_string_lossy().to_string();
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let Ok(ip) = name.parse::<Ipv4Addr>() else { continue };
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let mut lines = text.lines().map(str::trim);
            out.push(IpamFile {
                network: network.clone(),
                ip,
                container: lines.next().unwrap_or("").to_string(),
                ifname: lines.next().unwrap_or("").to_string(),
            });
        }
    }
    out
}

fn kind_name(l: &LinkMessage) -> String {
    match crate::kernel::nl::link_kind(l) {
        Some(InfoKind::Veth) => "veth".into(),
        Some(InfoKind::Bridge) => "bridge".into(),
        Some(InfoKind::Vxlan) => "vxlan".into(),
        Some(InfoKind::Tun) => "tun".into(),
        Some(k) => format!("{k:?}").to_lowercase(),
        None if l.header.link_layer_type == LinkLayerType::Loopback => "loopback".into(),
        None => "device".into(),
    }
}

fn link(l: &LinkMessage) -> Link {
    let flags = l.header.flags;
    let mut out = Link {
        index: l.header.index,
        name: crate::kernel::nl::link_name(l).unwrap_or("?").to_string(),
        kind: kind_name(l),
        mtu: crate::kernel::nl::link_mtu(l),
        up: flags.contains(LinkFlags::Up),
        lower_up: flags.contains(LinkFlags::LowerUp),
        mac: crate::kernel::nl::link_mac(l).map(|m| crate::model::plan::mac_string(&m)),
        vxlan: crate::kernel::nl::vxlan_info(l).map(|v| vxlan(v)),
        ..Default::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Controller(m) => out.master = Some(*m),
            LinkAttribute::Link(i) if *i != 0 => out.peer = Some(*i),
            LinkAttribute::LinkNetNsId(i) => out.peer_netnsid = Some(*i),
            _ => {}
        }
    }
    out
}

fn vxlan(v: &[InfoVxlan]) -> Vxlan {
    let mut out = Vxlan {
        learning: true,
        ..Default::default()
    };
    for i in v {
        match i {
            InfoVxlan::Id(x) => out.id = Some(*x),
            InfoVxlan::Local(a) => out.local = Some(*a),
            InfoVxlan::Group(g) if !g.is_unspecified() => out.group = Some(*g),
            InfoVxlan::Link(d) if *d != 0 => out.dev = Some(*d),
            InfoVxlan::Port(p) => out.port = Some(*p),
            InfoVxlan::Learning(l) => out.learning = *l,
            InfoVxlan::Proxy(p) => out.proxy = *p,
            InfoVxlan::L2Miss(m) => out.l2miss = *m,
            InfoVxlan::L3Miss(m) => out.l3miss = *m,
            InfoVxlan::Df(VxlanDf::Set) => out.df_set = true,
            _ => {}
        }
    }
    out
}

fn addr(a: &AddressMessage) -> Option<Addr> {
    let ip = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
        _ => None,
    })?;
    Some(Addr {
        index: a.header.index,
        ip,
        prefix_len: a.header.prefix_len,
        scope: u8::from(a.header.scope),
    })
}

fn route(r: &RouteMessage) -> Route {
    let mut out = Route {
        table: r.header.table as u32,
        kind: u8::from(r.header.kind),
        dst_len: r.header.destination_prefix_length,
        protocol: u8::from(r.header.protocol),
        scope: u8::from(r.header.scope),
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        linkdown: r.header.flags.contains(RouteFlags::Linkdown),
        dead: r.header.flags.contains(RouteFlags::Dead),
        ..Default::default()
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => out.table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => out.dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) if out.gateway.is_none() => out.gateway = Some(*g),
            RouteAttribute::Oif(i) if out.oif.is_none() => out.oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(p)) => out.prefsrc = Some(*p),
            RouteAttribute::Priority(m) => out.metric = Some(*m),
            RouteAttribute::Metrics(ms) => {
                out.mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    out
}

/// The IPv4 rules (`ip -4 rule`), in the kernel's order (by priority).
async fn read_rules(nl: &Nl) -> Result<Vec<RuleMessage>> {
    let mut req = RuleMessage::default();
    req.header.family = AddressFamily::Inet;
    let out = nl
        .dump(RouteNetlinkMessage::GetRule(req))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(out
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRule(r) => Some(r),
            _ => None,
        })
        .collect())
}

fn rule(r: &RuleMessage) -> Option<Rule> {
    if r.header.family != AddressFamily::Inet {
        return None;
    }
    let mut out = Rule {
        table: u32::from(r.header.table),
        action: u8::from(r.header.action),
        invert: r.header.flags.contains(RuleFlags::Invert),
        ..Default::default()
    };
    let (mut mark, mut mask) = (None, None);
    if r.header.tos != 0 {
        out.other.push(format!("tos {:#x}", r.header.tos));
    }
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => out.priority = *p,
            RuleAttribute::Table(t) => out.table = *t,
            RuleAttribute::Source(IpAddr::V4(s)) => out.src = Some((*s, r.header.src_len)),
            RuleAttribute::Destination(IpAddr::V4(d)) => out.dst = Some((*d, r.header.dst_len)),
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            RuleAttribute::Iifname(n) => out.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => out.oif = Some(n.clone()),
            RuleAttribute::Goto(g) => out.goto = Some(*g),
            RuleAttribute::SuppressPrefixLen(l) if *l != u32::MAX => {
                out.other.push(format!("suppress_prefixlength {l}"))
            }
            RuleAttribute::SuppressIfGroup(g) if *g != u32::MAX => out.other.push(format!("suppress_ifgroup {g}")),
            RuleAttribute::IpProtocol(p) => out.other.push(format!("ipproto {}", u8::from(*p))),
            RuleAttribute::SourcePortRange(p) => out.other.push(format!("sport {p:?}")),
            RuleAttribute::DestinationPortRange(p) => out.other.push(format!("dport {p:?}")),
            RuleAttribute::UidRange(u) => out.other.push(format!("uidrange {u:?}")),
            RuleAttribute::L3MDev(true) => out.other.push("l3mdev".into()),
            RuleAttribute::TunId(t) if *t != 0 => out.other.push(format!("tun_id {t}")),
            _ => {}
        }
    }
    // An fwmark with no mask has the mask 0xffffffff; a mask alone means mark 0.
    if mark.is_some() || mask.is_some() {
        out.fwmark = Some((mark.unwrap_or(0), mask.unwrap_or(u32::MAX)));
    }
    // The kernel reports the source of prefix length 0 as no selector.
    out.src = out.src.filter(|(_, l)| *l != 0);
    out.dst = out.dst.filter(|(_, l)| *l != 0);
    Some(out)
}

fn lladdr(n: &NeighbourMessage) -> Option<String> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(crate::model::plan::mac_string(m)),
        _ => None,
    })
}

fn neighbour(n: &NeighbourMessage) -> Neigh {
    Neigh {
        ifindex: n.header.ifindex,
        dst: n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
            _ => None,
        }),
        lladdr: lladdr(n),
        state: u16::from(n.header.state),
    }
}

fn fdb_entry(n: &NeighbourMessage) -> Fdb {
    Fdb {
        ifindex: n.header.ifindex,
        mac: lladdr(n),
        // AF_BRIDGE entries may carry it as raw bytes.
        dst: n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        }),
        master: n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Controller(m) => Some(*m),
            _ => None,
        }),
        own: n.header.flags.contains(NeighbourFlags::Own),
        state: u16::from(n.header.state),
    }
}

/// Which kinds of IPv4 tables a namespace has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    /// nf_tables tables of family ip (what iptables-nft makes).
    pub nft: bool,
    /// x_tables tables (what iptables-legacy makes).
    pub legacy: bool,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFPROTO_IPV4: u8 = 2;

/// Whether the calling thread's namespace has IPv4 tables; to be called on
/// a thread inside that namespace. Spawning `iptables-save` everywhere
/// would cost more than the rest of a read (a process per pod).
pub fn iptables_present() -> Present {
    let legacy = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names")
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    // A kernel without nf_tables refuses the dump: then there are none.
    let nft = nft_ip_tables().unwrap_or(0) > 0;
    Present { nft, legacy }
}

/// Counts the nf_tables tables of family ip by a netlink dump.
fn nft_ip_tables() -> Result<usize> {
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    // nlmsghdr then nfgenmsg (family, version, resource id).
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    socket::send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut count = 0;
    loop {
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into()?);
            if len < 16 || at + len > n {
                anyhow::bail!("malformed netlink answer");
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(count),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into()?);
                    anyhow::ensure!(errno == 0, "nf_tables dump refused ({errno})");
                    return Ok(count);
                }
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE && buf.get(at + 16) == Some(&NFPROTO_IPV4) => {
                    count += 1;
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// What the save programs the namespace needs print, one after the other.
pub fn iptables_save(ns: &Netns, present: Present) -> Result<String> {
    let mut text = String::new();
    for (on, program) in [
        (present.nft, "iptables-nft-save"),
        (present.legacy, "iptables-legacy-save"),
    ] {
        if !on {
            continue;
        }
        let out = netns::command(ns, program)
            .output()
            .with_context(|| format!("cannot run {program} for the snapshot (apt-get install iptables)"))?;
        anyhow::ensure!(
            out.status.success(),
            "{program} failed in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(text)
}

/// rtm_type values.
pub const RTN_UNICAST: u8 = 1;
/// A local address.
pub const RTN_LOCAL: u8 = 2;
/// Drops silently.
pub const RTN_BLACKHOLE: u8 = 6;
/// Answers "host unreachable".
pub const RTN_UNREACHABLE: u8 = 7;
/// Answers "administratively prohibited".
pub const RTN_PROHIBIT: u8 = 8;
/// Continues with the next table.
pub const RTN_THROW: u8 = 9;

/// A route's destination as `ip route` prints it.
pub fn dst_text(r: &Route) -> String {
    match (r.dst, r.dst_len) {
        (_, 0) => "default".into(),
        (Some(d), 32) => d.to_string(),
        (d, l) => format!("{}/{l}", d.unwrap_or(Ipv4Addr::UNSPECIFIED)),
    }
}

/// iproute2's name of a route type.
pub fn type_name(t: u8) -> String {
    let names = [
        "none",
        "unicast",
        "local",
        "broadcast",
        "anycast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
        "xresolve",
    ];
    names.get(t as usize).map_or(t.to_string(), |n| n.to_string())
}

/// iproute2's name of a route protocol.
pub fn protocol_name(p: u8) -> String {
    match p {
        0 => "unspec".into(),
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        8 => "gated".into(),
        9 => "ra".into(),
        10 => "mrt".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        13 => "dnrouted".into(),
        14 => "xorp".into(),
        15 => "ntk".into(),
        16 => "dhcp".into(),
        18 => "keepalived".into(),
        42 => "babel".into(),
        186 => "bgp".into(),
        187 => "isis".into(),
        188 => "ospf".into(),
        189 => "rip".into(),
        192 => "eigrp".into(),
        n => n.to_string(),
    }
}

/// What a route lookup gives: the table entry and where it sends.
#[derive(Debug, Clone)]
pub struct Lookup<'a> {
    /// The table entry.
    pub route: &'a Route,
    /// The device it leaves by.
    pub dev: Option<String>,
    /// The next hop.
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would choose.
    pub prefsrc: Option<Ipv4Addr>,
    /// The rule that chose the table, when it is not a default one.
    pub rule: Option<Rule>,
    /// Rules that may apply instead (see [`NsDump::decide`]).
    pub notes: Vec<String>,
}

/// What policy routing decides for a packet.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// The table entry, or the kernel's error (as strerror words).
    pub route: Result<&'a Route, String>,
    /// The rule whose action decided.
    pub rule: Option<Rule>,
    /// Rules passed over that may apply instead, each with what it would do.
    pub notes: Vec<String>,
}

/// The netmask of a prefix length.
fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) }
}

/// Whether a rule's selectors match (`None`: it depends on what trace
/// cannot know, a mark or a selector it does not model). A packet sent
/// from here matches `iif lo`; no socket is bound to a device, so an
/// `oif` selector does not match.
fn rule_matches(r: &Rule, dst: Ipv4Addr, src: Option<Ipv4Addr>, iif: Option<&str>, mark: Option<u32>) -> Option<bool> {
    let within = |ip: Ipv4Addr, (a, l): (Ipv4Addr, u8)| (u32::from(ip) ^ u32::from(a)) & mask(l) == 0;
    let mut known = true;
    if let Some(p) = r.src {
        known &= within(src.unwrap_or(Ipv4Addr::UNSPECIFIED), p);
    }
    if let Some(p) = r.dst {
        known &= within(dst, p);
    }
    if let Some(i) = &r.iif {
        known &= iif.unwrap_or("lo") == i;
    }
    if r.oif.is_some() {
        known = false;
    }
    let mut unsure = !r.other.is_empty();
    if let Some((m, k)) = r.fwmark {
        match mark {
            Some(x) => known &= (x ^ m) & k == 0,
            None => unsure = true,
        }
    }
    if !known {
        return Some(r.invert);
    }
    if unsure {
        return None;
    }
    Some(!r.invert)
}

impl NsDump {
    /// A link by name.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// A link by index.
    pub fn link_at(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// A link's name by index.
    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.link_at(index).map(|l| l.name.as_str())
    }

    /// A sysctl that was read.
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    /// The device holding `ip` as one of its addresses.
    pub fn local(&self, ip: Ipv4Addr) -> Option<&str> {
        self.addrs
            .iter()
            .find(|a| a.ip == ip)
            .and_then(|a| self.name_of(a.index))
    }

    /// The rules in force: those read, else the kernel's default ones
    /// (a recording made before rules were read).
    pub fn rules_in_force(&self) -> Vec<Rule> {
        let mut rules = if self.rules.is_empty() {
            Rule::defaults()
        } else {
            self.rules.clone()
        };
        rules.sort_by_key(|r| r.priority);
        rules
    }

    /// The entry of `table` for `dst`: the longest prefix, then the lowest
    /// metric (a throw route too).
    pub fn table_lookup(&self, table: u32, dst: Ipv4Addr) -> Option<&Route> {
        let d = u32::from(dst);
        self.routes
            .iter()
            .filter(|r| r.table == table && !r.dead)
            .filter(|r| (d ^ r.dst.map_or(0, u32::from)) & mask(r.dst_len) == 0)
            .min_by_key(|r| (std::cmp::Reverse(r.dst_len), r.metric.unwrap_or(0)))
    }

    /// The routing table entry the kernel uses for `dst` with the default
    /// rules' inputs (no source, sent from here, mark 0).
    pub fn fib(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.decide(dst, None, None, Some(0)).route.ok()
    }

    /// What policy routing decides for a packet to `dst` from `src` (when
    /// known) that came in on `iif` (None: sent from here, which the
    /// kernel matches as `iif lo`) with the mark `mark` (None: unknown).
    /// The rules are followed in priority order as the kernel does: a
    /// rule whose selectors match does its action; a `lookup` whose table
    /// has no entry or a throw route goes on to the next rule. A rule
    /// that would match only with a mark (or another selector) trace
    /// cannot know is passed over, with a note.
    pub fn decide(&self, dst: Ipv4Addr, src: Option<Ipv4Addr>, iif: Option<&str>, mark: Option<u32>) -> Decision<'_> {
        let rules = self.rules_in_force();
        let mut notes = Vec::new();
        let mut i = 0;
        while i < rules.len() {
            let r = &rules[i];
            i += 1;
            match rule_matches(r, dst, src, iif, mark) {
                Some(false) => continue,
                None => {
                    notes.extend(self.maybe_note(r, dst));
                    continue;
                }
                Some(true) => {}
            }
            let refused = |e: &str| Decision {
                route: Err(e.to_string()),
                rule: Some(r.clone()),
                notes: notes.iter().map(|(n, _)| n.clone()).collect(),
            };
            match r.action {
                FR_ACT_TO_TBL => match self.table_lookup(r.table, dst) {
                    Some(rt) if rt.kind != RTN_THROW => {
                        // A rule that would give this same route changes nothing.
                        notes.retain(|(_, alt)| alt.is_none_or(|a| !std::ptr::eq(a, rt)));
                        return Decision {
                            route: Ok(rt),
                            rule: Some(r.clone()),
                            notes: notes.into_iter().map(|(n, _)| n).collect(),
                        };
                    }
                    _ => {}
                },
                FR_ACT_GOTO => {
                    // Only forward: the kernel refuses a goto to an earlier rule.
                    if let Some(j) = r.goto.and_then(|g| rules.iter().position(|x| x.priority == g)) {
                        i = i.max(j);
                    }
                }
                FR_ACT_BLACKHOLE => return refused("Invalid argument"),
                FR_ACT_UNREACHABLE => return refused("No route to host"),
                FR_ACT_PROHIBIT => return refused("Permission denied"),
                _ => {}
            }
        }
        Decision {
            route: Err("Network is unreachable".into()),
            rule: None,
            notes: notes.into_iter().map(|(n, _)| n).collect(),
        }
    }

    /// A note on a rule that may apply: what it would do, with the route
    /// it would give; none when it would only let the lookup go on.
    fn maybe_note(&self, r: &Rule, dst: Ipv4Addr) -> Option<(String, Option<&Route>)> {
        let when = if r.other.is_empty() {
            "iptables marked the packet (MARK or CONNMARK rules in mangle or nat set marks before routing; trace cannot know a packet's mark)".to_string()
        } else {
            format!("the packet matches `{}`, which trace does not model", r.other.join(" "))
        };
        let (then, alt) = match r.action {
            FR_ACT_TO_TBL => match self.table_lookup(r.table, dst) {
                Some(rt) if rt.kind != RTN_THROW => (format!("then the route is {}", self.route_brief(rt)), Some(rt)),
                _ => return None,
            },
            FR_ACT_BLACKHOLE | FR_ACT_UNREACHABLE | FR_ACT_PROHIBIT => {
                ("then the kernel refuses the packet".into(), None)
            }
            FR_ACT_GOTO => ("then the lookup jumps ahead".into(), None),
            _ => return None,
        };
        Some((format!("rule {} applies if {when}: {then}", r.text()), alt))
    }

    /// A route in short, as `ip route` prints it: type, destination,
    /// gateway, device, table.
    pub fn route_brief(&self, r: &Route) -> String {
        let mut s = String::new();
        if r.kind != RTN_UNICAST {
            s.push_str(&type_name(r.kind));
            s.push(' ');
        }
        s.push_str(&dst_text(r));
        if let Some(g) = r.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = r.oif.and_then(|i| self.name_of(i)) {
            s.push_str(&format!(" dev {d}"));
        }
        if r.table != 254 {
            s.push_str(&format!(" table {}", table_text(r.table)));
        }
        s
    }

    /// What `ip route get dst [from src] [iif dev]` answers: the route, or
    /// the error the kernel gives (as strerror words).
    pub fn route_get(&self, dst: Ipv4Addr, src: Option<Ipv4Addr>, iif: Option<&str>) -> Result<Lookup<'_>, String> {
        self.route_get_marked(dst, src, iif, Some(0))
    }

    /// `ip route get` for a packet whose mark is `mark` (None: unknown,
    /// see [`NsDump::decide`]).
    pub fn route_get_marked(
        &self,
        dst: Ipv4Addr,
        src: Option<Ipv4Addr>,
        iif: Option<&str>,
        mark: Option<u32>,
    ) -> Result<Lookup<'_>, String> {
        let decision = self.decide(dst, src, iif, mark);
        let r = decision.route?;
        let rule = decision.rule.filter(|r| !r.is_default());
        let notes = decision.notes;
        match r.kind {
            RTN_BLACKHOLE => return Err("Invalid argument".into()),
            RTN_UNREACHABLE => return Err("No route to host".into()),
            RTN_PROHIBIT => return Err("Permission denied".into()),
            _ => {}
        }
        if let (Some(s), Some(_)) = (src, iif) {
            // A martian source, or one of this namespace's own addresses
            // arriving from outside, fails the source validation.
            let own = self.fib(s).is_some_and(|b| b.kind == RTN_LOCAL);
            if s.is_unspecified() || s.is_loopback() || s.is_multicast() || s.is_broadcast() || own {
                return Err("Invalid argument".into());
            }
        }
        if r.kind == RTN_LOCAL {
            return Ok(Lookup {
                route: r,
                dev: Some(
                    self.links
                        .iter()
                        .find(|l| l.kind == "loopback")
                        .map_or("lo", |l| &l.name)
                        .to_string(),
                ),
                gateway: None,
                prefsrc: Some(r.prefsrc.unwrap_or(dst)),
                rule,
                notes,
            });
        }
        Ok(Lookup {
            route: r,
            dev: r.oif.and_then(|i| self.name_of(i)).map(str::to_string),
            gateway: r.gateway,
            prefsrc: r.prefsrc.or_else(|| self.select_src(r)),
            rule,
            notes,
        })
    }

    /// The source the kernel picks for a route without `src`: an address
    /// of the route's device within the route's scope, the one on the
    /// gateway's subnet first; else any non-link address of the namespace.
    fn select_src(&self, r: &Route) -> Option<Ipv4Addr> {
        let usable = |a: &&Addr| a.scope <= r.scope;
        let on_dev: Vec<&Addr> = self
            .addrs
            .iter()
            .filter(|a| Some(a.index) == r.oif)
            .filter(usable)
            .collect();
        let in_subnet = |a: &&&Addr| {
            let mask = if a.prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - a.prefix_len.min(32))
            };
            r.gateway.is_none_or(|g| (u32::from(g) ^ u32::from(a.ip)) & mask == 0)
        };
        if let Some(a) = on_dev.iter().find(in_subnet).or(on_dev.first()) {
            return Some(a.ip);
        }
        let mut devs: Vec<&Link> = self.links.iter().collect();
        devs.sort_by_key(|l| l.index);
        devs.iter().find_map(|l| {
            self.addrs
                .iter()
                .filter(|a| a.index == l.index)
                .find(|a| a.scope != 253 && a.scope <= r.scope)
                .map(|a| a.ip)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(table: u32, kind: u8, dst: &str, gw: Option<&str>, oif: u32) -> Route {
        let (d, l) = dst.split_once('/').unwrap_or((dst, "32"));
        Route {
            table,
            kind,
            dst: Some(ip(d)).filter(|_| l != "0"),
            dst_len: l.parse().unwrap(),
            gateway: gw.map(ip),
            oif: Some(oif),
            protocol: 3,
            scope: if gw.is_some() { 0 } else { 253 },
            ..Default::default()
        }
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: if index == 1 { "loopback" } else { "veth" }.into(),
            ..Default::default()
        }
    }

    /// A node: lo, eth0 172.20.0.11/24, cni0 10.244.1.1/24, a blackhole
    /// block and a default route.
    fn node() -> NsDump {
        let addr = |index, a: &str, prefix_len, scope| Addr {
            index,
            ip: ip(a),
            prefix_len,
            scope,
        };
        let mut local = route(255, RTN_LOCAL, "172.20.0.11", None, 2);
        local.prefsrc = Some(ip("172.20.0.11"));
        NsDump {
            links: vec![link(1, "lo"), link(2, "eth0"), link(3, "cni0")],
            addrs: vec![
                addr(1, "127.0.0.1", 8, 254),
                addr(2, "172.20.0.11", 24, 0),
                addr(3, "10.244.1.1", 24, 0),
            ],
            routes: vec![
                route(254, RTN_UNICAST, "0.0.0.0/0", Some("172.20.0.1"), 2),
                route(254, RTN_UNICAST, "172.20.0.0/24", None, 2),
                route(254, RTN_UNICAST, "10.244.1.0/24", None, 3),
                route(254, RTN_BLACKHOLE, "10.244.2.0/26", None, 0),
                route(254, RTN_UNICAST, "10.244.0.0/16", Some("172.20.0.12"), 2),
                local,
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_the_local_table_comes_first() {
        let d = node();
        assert_eq!(d.fib(ip("10.244.1.7")).unwrap().dst_len, 24);
        assert_eq!(d.fib(ip("10.244.3.7")).unwrap().dst_len, 16);
        assert_eq!(d.fib(ip("8.8.8.8")).unwrap().dst_len, 0);
        assert_eq!(d.fib(ip("172.20.0.11")).unwrap().table, 255);
        let r = d.route_get(ip("172.20.0.11"), None, None).unwrap();
        assert_eq!((r.dev.as_deref(), r.prefsrc), (Some("lo"), Some(ip("172.20.0.11"))));
    }

    #[test]
    fn a_lower_metric_wins_and_a_throw_goes_on_to_the_next_table() {
        let mut d = node();
        let mut worse = route(254, RTN_UNICAST, "10.244.1.0/24", None, 2);
        worse.metric = Some(100);
        d.routes.insert(0, worse);
        assert_eq!(d.fib(ip("10.244.1.7")).unwrap().oif, Some(3));
        d.routes = vec![
            route(254, RTN_THROW, "0.0.0.0/0", None, 0),
            route(253, RTN_UNICAST, "0.0.0.0/0", Some("172.20.0.1"), 2),
        ];
        assert_eq!(d.fib(ip("8.8.8.8")).unwrap().table, 253);
    }

    #[test]
    fn route_get_gives_the_kernels_errors() {
        let mut d = node();
        assert_eq!(
            d.route_get(ip("10.244.2.5"), None, None).unwrap_err(),
            "Invalid argument"
        );
        let from_outside = d.route_get(ip("10.244.1.7"), Some(ip("172.20.0.11")), Some("eth0"));
        assert_eq!(
            from_outside.unwrap_err(),
            "Invalid argument",
            "a source of its own is martian"
        );
        d.routes.retain(|r| r.dst_len != 0);
        assert_eq!(
            d.route_get(ip("8.8.8.8"), None, None).unwrap_err(),
            "Network is unreachable"
        );
    }

    #[test]
    fn the_source_is_an_address_of_the_device_on_the_gateways_subnet() {
        let mut d = node();
        let r = d.route_get(ip("10.244.3.7"), None, None).unwrap();
        assert_eq!((r.dev.as_deref(), r.gateway), (Some("eth0"), Some(ip("172.20.0.12"))));
        assert_eq!(r.prefsrc, Some(ip("172.20.0.11")));
        // A device without an address (a cali veth): any global address.
        d.links.push(link(4, "cali1"));
        d.routes.push(route(254, RTN_UNICAST, "10.244.1.9", None, 4));
        let r = d.route_get(ip("10.244.1.9"), None, None).unwrap();
        assert_eq!(r.prefsrc, Some(ip("172.20.0.11")));
    }

    /// An aws-vpc node: eth0 (primary ENI, main) and eth1 (secondary ENI,
    /// table 2), a pod on each, and the plugin's rules.
    fn aws_node() -> NsDump {
        let mut d = node();
        d.links.push(link(4, "eth1"));
        d.links.push(link(5, "eniaaa"));
        d.addrs.push(Addr {
            index: 4,
            ip: ip("10.0.1.20"),
            prefix_len: 24,
            scope: 0,
        });
        d.routes.push(route(254, RTN_UNICAST, "10.0.1.25", None, 5));
        d.routes.push(route(2, RTN_UNICAST, "0.0.0.0/0", Some("10.0.1.1"), 4));
        d.routes.push(route(2, RTN_UNICAST, "10.0.1.1", None, 4));
        let mut rules = Rule::defaults();
        rules.push(Rule {
            dst: Some((ip("10.0.1.25"), 32)),
            ..Rule::lookup(512, 254)
        });
        rules.push(Rule {
            fwmark: Some((0x80, 0x80)),
            ..Rule::lookup(1024, 254)
        });
        rules.push(Rule {
            src: Some((ip("10.0.1.25"), 32)),
            ..Rule::lookup(1536, 2)
        });
        d.rules = rules;
        d
    }

    #[test]
    fn rules_send_a_pod_of_the_second_eni_through_its_table() {
        let d = aws_node();
        // Forwarded from the pod: rule 1536, table 2, eth1.
        let r = d
            .route_get(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"))
            .unwrap();
        assert_eq!((r.dev.as_deref(), r.gateway), (Some("eth1"), Some(ip("10.0.1.1"))));
        assert_eq!(r.route.table, 2);
        assert_eq!(r.rule.unwrap().text(), "1536: from 10.0.1.25 lookup 2");
        // Another source: main, eth0, no rule named.
        let r = d
            .route_get(ip("10.244.3.7"), Some(ip("10.244.1.9")), Some("cni0"))
            .unwrap();
        assert_eq!((r.dev.as_deref(), r.rule), (Some("eth0"), None));
        // To the pod: rule 512 comes first, main.
        let r = d.route_get(ip("10.0.1.25"), None, None).unwrap();
        assert_eq!(r.dev.as_deref(), Some("eniaaa"));
        assert_eq!(r.rule.unwrap().text(), "512: from all to 10.0.1.25 lookup main");
        // No rules read: the defaults, as before.
        let mut old = d.clone();
        old.rules.clear();
        let r = old
            .route_get(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"))
            .unwrap();
        assert_eq!((r.dev.as_deref(), r.rule), (Some("eth0"), None));
    }

    #[test]
    fn a_throw_or_empty_table_goes_on_and_rule_actions_refuse() {
        let mut d = aws_node();
        // Table 2 throws 10.244.0.0/16: the lookup goes on to main.
        d.routes.push(route(2, RTN_THROW, "10.244.0.0/16", None, 0));
        let r = d
            .route_get(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"))
            .unwrap();
        assert_eq!((r.dev.as_deref(), r.route.table), (Some("eth0"), 254));
        // A table with no route for it: the same.
        d.rules.push(Rule {
            src: Some((ip("10.0.1.25"), 32)),
            ..Rule::lookup(100, 7)
        });
        let r = d
            .route_get(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"))
            .unwrap();
        assert_eq!(r.route.table, 254);
        // A prohibit rule refuses.
        d.rules.push(Rule {
            action: FR_ACT_PROHIBIT,
            dst: Some((ip("10.244.3.0"), 24)),
            ..Rule::lookup(50, 0)
        });
        assert_eq!(
            d.route_get(ip("10.244.3.7"), None, None).unwrap_err(),
            "Permission denied"
        );
        assert_eq!(d.rules.last().unwrap().text(), "50: from all to 10.244.3.0/24 prohibit");
    }

    #[test]
    fn a_mark_rule_matches_only_a_known_mark_and_is_noted_otherwise() {
        let mut d = aws_node();
        // The fwmark rule would send it by main; the mark 0x80 is known.
        let marked = d.decide(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"), Some(0x80));
        assert_eq!(marked.rule.unwrap().priority, 1024);
        assert!(marked.notes.is_empty());
        // Mark 0: not matched, no note.
        let plain = d.decide(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"), Some(0));
        assert_eq!((plain.rule.unwrap().priority, plain.notes.len()), (1536, 0));
        // Unknown: not matched, but noted with what it would do.
        let unknown = d.decide(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"), None);
        assert_eq!(unknown.route.unwrap().table, 2);
        assert_eq!(unknown.notes.len(), 1, "{:?}", unknown.notes);
        let n = &unknown.notes[0];
        assert!(
            n.starts_with("rule 1024: from all fwmark 0x80/0x80 lookup main applies if iptables marked the packet"),
            "{n}"
        );
        assert!(
            n.ends_with("then the route is 10.244.0.0/16 via 172.20.0.12 dev eth0"),
            "{n}"
        );
        // `not` inverts: mark 0 matches `not fwmark 0x80/0x80`.
        d.rules[4].invert = true;
        let inv = d.decide(ip("10.244.3.7"), Some(ip("10.0.1.25")), Some("eniaaa"), Some(0));
        assert_eq!(
            inv.rule.unwrap().text(),
            "1024: not from all fwmark 0x80/0x80 lookup main"
        );
    }
}

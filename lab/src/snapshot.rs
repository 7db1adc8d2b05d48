//! Snapshots (shared/design/snapshots.md): a lab's network state as text in
//! the spirit of iproute2, made to be read and diffed. Everything is read
//! from the kernel, then normalized: names and MACs a plugin chose at random
//! are shown by what they are (`veth(worker1/web)`, `mac(worker2/flannel.1)`),
//! nothing depends on ifindexes, timing or the lab's name, and every list
//! is sorted. Packet filtering shows as `iptables TABLE ...` lines in the
//! form iptables-save prints, normalized (snapshot/iptables.rs).

use futures::{StreamExt as _, TryStreamExt as _};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use serde::Serialize;

use crate::netns::{self, Netns};
use crate::nl::{Nl, link_name};
use crate::plan::mac_string;
use crate::state::LabState;

pub mod iptables;

/// Version of the snapshot format.
pub const FORMAT: u32 = 1;

/// A whole lab's normalized state.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Snapshot {
    /// Format version.
    pub format: u32,
    /// One line on what the lab is.
    pub lab: String,
    /// Active faults.
    pub faults: Vec<String>,
    /// Namespaces, sorted by name.
    pub namespaces: Vec<NsSnapshot>,
}

/// One namespace's state.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct NsSnapshot {
    /// Its name without `cnilab.<lab>.`: `_fabric`, `worker1`, `worker1.web`.
    pub name: String,
    /// fabric, node or pod.
    pub role: String,
    /// What it stands for: `fabric`, `node worker1`, `pod worker1/web`.
    pub title: String,
    /// Links.
    pub links: Vec<Link>,
    /// IPv4 addresses.
    pub addresses: Vec<Address>,
    /// Routes of every table.
    pub routes: Vec<Route>,
    /// Neighbours (permanent and proxy; all with `--dynamic`).
    pub neighbours: Vec<Neighbour>,
    /// FDB entries pointing at a remote (all with `--dynamic`).
    pub fdb: Vec<Fdb>,
    /// Sysctls the lab set.
    pub sysctls: Vec<Sysctl>,
    /// iptables tables that filter or rewrite anything (see snapshot/iptables.rs).
    pub iptables: Vec<iptables::Table>,
    /// Addresses held by IPAM on this node.
    pub ipam: Vec<Ipam>,
    /// BGP sessions of the BIRD running here.
    pub bgp_sessions: Vec<crate::bird::Session>,
    /// The BGP routes in that BIRD's table.
    pub bgp_routes: Vec<crate::bird::BgpRoute>,
}

/// A link.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Link {
    /// Normalized name.
    pub name: String,
    /// veth, bridge, vxlan, loopback, ...
    pub kind: String,
    /// Kind-specific settings (vxlan: id, local, dev, dstport, learning).
    pub details: Vec<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Up but without carrier.
    pub no_carrier: bool,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// MAC, only where cnilab chose it (VTEPs).
    pub address: Option<String>,
}

/// An address.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Address {
    /// Link.
    pub dev: String,
    /// `ip/len`.
    pub address: String,
}

/// A route.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Route {
    /// main, local, or the table number.
    pub table: String,
    /// The route as `ip route` prints it.
    pub text: String,
    #[serde(skip)]
    key: (u8, u32, u8),
}

/// A neighbour entry.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Neighbour {
    /// The entry as `ip neigh` prints it.
    pub text: String,
}

/// An FDB entry.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Fdb {
    /// The entry as `bridge fdb` prints it.
    pub text: String,
}

/// A sysctl.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Sysctl {
    /// sysctl(8) name.
    pub key: String,
    /// Value.
    pub value: String,
}

/// An address held by a pod.
#[derive(Debug, Serialize, Clone, schemars::JsonSchema)]
pub struct Ipam {
    /// IPAM network name.
    pub network: String,
    /// Address.
    pub ip: String,
    /// `node/pod`, or the raw container ID when unknown.
    pub holder: String,
    /// Interface.
    pub ifname: String,
}

/// Raw kernel state of one namespace.
/// How many namespaces a snapshot reads at once.
const SNAPSHOT_READERS: usize = 16;

struct Raw {
    name: String,
    bgp_sessions: Vec<crate::bird::Session>,
    bgp_routes: Vec<crate::bird::BgpRoute>,
    links: Vec<LinkMessage>,
    addrs: Vec<AddressMessage>,
    routes: Vec<RouteMessage>,
    neigh: Vec<NeighbourMessage>,
    proxy: Vec<NeighbourMessage>,
    fdb: Vec<NeighbourMessage>,
    sysctls: Vec<(String, String)>,
    iptables: Vec<iptables::Table>,
}

/// Sysctls the lab sets: forwarding on nodes and routers (see
/// build::NODE_SYSCTLS), and what a profile's plugin sets on host veths.
fn touched_sysctls(role: &str, links: &[LinkMessage]) -> Vec<String> {
    let mut keys = Vec::new();
    if role == "node" || role == "router" {
        keys.push("net/ipv4/ip_forward".to_string());
    }
    for l in links {
        if let Some(name) = link_name(l) {
            keys.extend(crate::profile::host_link_sysctls(name));
        }
    }
    keys
}

async fn collect(
    ns: &str,
    role: &str,
    bird_socket: Option<std::path::PathBuf>,
    fault_keys: Vec<String>,
    dynamic: bool,
) -> Result<Raw> {
    let handle = Netns::open(ns)?;
    let nl = Nl::connect_in(&handle)?;
    let (links, addrs, routes, neigh, proxy, fdb) = futures::try_join!(
        nl.links(),
        nl.addresses(),
        nl.routes(),
        nl.neighbours(AddressFamily::Inet, false),
        nl.neighbours(AddressFamily::Inet, true),
        nl.neighbours(AddressFamily::Bridge, false),
    )
    .with_context(|| format!("reading namespace {ns}"))?;
    let _ = dynamic;
    // Only what a snapshot shows is kept: a link's per-protocol settings and
    // statistics are most of its message, and a big lab has thousands.
    let mut links = links;
    for l in &mut links {
        l.attributes.retain(|a| {
            matches!(
                a,
                LinkAttribute::IfName(_)
                    | LinkAttribute::Mtu(_)
                    | LinkAttribute::Address(_)
                    | LinkAttribute::Controller(_)
                    | LinkAttribute::Link(_)
                    | LinkAttribute::LinkInfo(_)
            )
        });
        l.attributes.shrink_to_fit();
    }
    let mut keys = touched_sysctls(role, &links);
    for k in fault_keys {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let (sysctls, filters) = handle.run(move || {
        let sysctls = keys
            .iter()
            .map(|k| Ok((netns::sysctl_name(k), netns::read_sysctl(k)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((sysctls, iptables::present_here()))
    })?;
    // Only namespaces that have tables pay for a process.
    let iptables = if filters.nft || filters.legacy {
        tokio::task::spawn_blocking(move || iptables::read(&handle, filters)).await??
    } else {
        Vec::new()
    };
    let (bgp_sessions, bgp_routes) = match bird_socket.filter(|s| s.exists()) {
        Some(sock) => {
            tokio::task::spawn_blocking(move || -> Result<_> {
                Ok((crate::bird::sessions(&sock)?, crate::bird::bgp_routes(&sock)?))
            })
            .await??
        }
        None => (Vec::new(), Vec::new()),
    };
    Ok(Raw {
        name: ns.to_string(),
        bgp_sessions,
        bgp_routes,
        links,
        addrs,
        routes,
        neigh,
        proxy,
        fdb,
        sysctls,
        iptables,
    })
}

fn kind_name(l: &LinkMessage) -> String {
    match crate::nl::link_kind(l) {
        Some(InfoKind::Veth) => "veth".into(),
        Some(InfoKind::Bridge) => "bridge".into(),
        Some(InfoKind::Vxlan) => "vxlan".into(),
        Some(InfoKind::Tun) => "tun".into(),
        Some(k) => format!("{k:?}").to_lowercase(),
        None if l.header.link_layer_type == LinkLayerType::Loopback => "loopback".into(),
        None => "device".into(),
    }
}

/// Labels of a namespace: (short name, role, title, owner prefix for MACs).
fn labels(lab_prefix: &str, ns: &str) -> (String, String, String, String) {
    let short = ns.strip_prefix(lab_prefix).unwrap_or(ns).to_string();
    if let Some(router) = short.strip_prefix("_router-") {
        return (
            short.clone(),
            "router".into(),
            format!("router {router}"),
            router.to_string(),
        );
    }
    if let Some(what) = short.strip_prefix('_') {
        return (short.clone(), what.to_string(), what.to_string(), what.to_string());
    }
    match short.split_once('.') {
        Some((node, pod)) => (
            short.clone(),
            "pod".into(),
            format!("pod {node}/{pod}"),
            format!("{node}/{pod}"),
        ),
        None => (short.clone(), "node".into(), format!("node {short}"), short.clone()),
    }
}

/// Takes a snapshot of `namespaces` (default: the whole lab).
pub async fn take(state: &LabState, only: Option<&[String]>, dynamic: bool) -> Result<Snapshot> {
    let plan = &state.plan;
    let prefix = crate::paths::lab_ns_prefix(&plan.lab);
    // Every namespace of the lab, also those a fault made.
    let wanted: Vec<String> = netns::list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    // Every namespace is read, even when only some are shown: names and MACs
    // are normalized across the whole lab.
    let paths = state.paths();
    let fault_keys = crate::faultspec::touched_sysctls(&state.faults, &state.plan);
    // A bounded number at once: each namespace read holds a netlink socket
    // and its buffers, which for a thousand pods at once was most of the memory.
    let raws: Vec<Raw> = futures::stream::iter(wanted.iter().map(|ns| {
        let (_, role, _, owner) = labels(&prefix, ns);
        let keys = fault_keys.get(ns).cloned().unwrap_or_default();
        let socket = match role.as_str() {
            "node" => Some(paths.agent_dir(&owner).join("bird.ctl")),
            "router" => Some(paths.router_dir(&owner).join("bird.ctl")),
            _ => None,
        };
        async move { collect(ns, &role, socket, keys, dynamic).await }
    }))
    .buffered(SNAPSHOT_READERS)
    .try_collect()
    .await?;

    // veth(node/pod): a pod's eth0 names its peer's ifindex in the node.
    let mut veth_names: BTreeMap<(String, u32), String> = BTreeMap::new();
    for r in &raws {
        let (short, role, _, owner) = labels(&prefix, &r.name);
        if role != "pod" {
            continue;
        }
        let node = short.split_once('.').map(|(n, _)| n.to_string()).unwrap_or_default();
        for l in &r.links {
            if let Some(peer) = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(i) => Some(*i),
                _ => None,
            }) {
                if crate::nl::link_kind(l) == Some(&InfoKind::Veth) {
                    veth_names.insert((node.clone(), peer), format!("veth({owner})"));
                }
            }
        }
    }
    // Only the bridge plugin's random veth names are replaced; Calico's
    // cali names are derived from the pod and shown as they are.
    let name_of = |short: &str, l: &LinkMessage| -> String {
        let name = link_name(l).unwrap_or("?");
        match veth_names.get(&(short.to_string(), l.header.index)) {
            Some(n) if name.starts_with("veth") => n.clone(),
            _ => name.to_string(),
        }
    };

    // mac(owner): who in the lab has a MAC; bridges win, as they answer for it.
    let mut macs: BTreeMap<[u8; 6], (u8, String)> = BTreeMap::new();
    for r in &raws {
        let (short, _, _, owner) = labels(&prefix, &r.name);
        for l in &r.links {
            let Some(mac) = crate::nl::link_mac(l) else { continue };
            if mac == [0; 6] {
                continue;
            }
            let rank = if crate::nl::link_kind(l) == Some(&InfoKind::Bridge) {
                0
            } else {
                1
            };
            let label = format!("{owner}/{}", name_of(&short, l));
            let e = macs.entry(mac).or_insert((rank, label.clone()));
            if (rank, &label) < (e.0, &e.1) {
                *e = (rank, label);
            }
        }
    }
    let show_mac = |m: &[u8]| -> String {
        match <[u8; 6]>::try_from(m).ok().and_then(|k| macs.get(&k)) {
            Some((_, owner)) => format!("mac({owner})"),
            None => mac_string(m),
        }
    };

    let container_pods: BTreeMap<&str, String> = plan
        .pods()
        .map(|(n, p)| (p.container_id.as_str(), format!("{}/{}", n.name, p.name)))
        .collect();

    let mut out = Vec::new();
    for r in &raws {
        let (short, role, title, _) = labels(&prefix, &r.name);
        if let Some(only) = only {
            if !only.contains(&r.name) {
                continue;
            }
        }
        let names: BTreeMap<u32, String> = r.links.iter().map(|l| (l.header.index, name_of(&short, l))).collect();
        let dev = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));

        let mut links: Vec<Link> = r
            .links
            .iter()
            .map(|l| {
                let kind = kind_name(l);
                let mut details = Vec::new();
                if let Some(v) = crate::nl::vxlan_info(l) {
                    details = vxlan_details(v, &dev);
                }
                let flags = l.header.flags;
                Link {
                    name: dev(l.header.index),
                    details,
                    mtu: l
                        .attributes
                        .iter()
                        .find_map(|a| match a {
                            LinkAttribute::Mtu(m) => Some(*m),
                            _ => None,
                        })
                        .unwrap_or(0),
                    up: flags.contains(LinkFlags::Up),
                    no_carrier: flags.contains(LinkFlags::Up) && !flags.contains(LinkFlags::LowerUp),
                    master: l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Controller(m) => Some(dev(*m)),
                        _ => None,
                    }),
                    address: if kind == "vxlan" {
                        crate::nl::link_mac(l).map(|m| mac_string(&m))
                    } else {
                        None
                    },
                    kind,
                }
            })
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));

        let mut addresses: Vec<Address> = r
            .addrs
            .iter()
            .filter_map(|a| {
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })?;
                Some(Address {
                    dev: dev(a.header.index),
                    address: format!("{ip}/{}", a.header.prefix_len),
                })
            })
            .collect();
        addresses.sort_by(|a, b| (&a.dev, &a.address).cmp(&(&b.dev, &b.address)));

        let mut routes: Vec<Route> = r.routes.iter().filter_map(|rt| route(rt, &dev)).collect();
        routes.sort_by(|a, b| (a.key, &a.text).cmp(&(b.key, &b.text)));

        let mut neighbours: Vec<Neighbour> = r
            .neigh
            .iter()
            .filter(|n| dynamic || n.header.state == NeighbourState::Permanent)
            .filter_map(|n| neighbour(n, &dev, &show_mac, false))
            .chain(r.proxy.iter().filter_map(|n| neighbour(n, &dev, &show_mac, true)))
            .collect();
        neighbours.sort_by(|a, b| a.text.cmp(&b.text));
        neighbours.dedup_by(|a, b| a.text == b.text);

        let mut fdb: Vec<Fdb> = r
            .fdb
            .iter()
            .filter_map(|f| fdb_entry(f, &dev, &show_mac, dynamic))
            .collect();
        fdb.sort_by(|a, b| a.text.cmp(&b.text));
        fdb.dedup_by(|a, b| a.text == b.text);

        let sysctls = r
            .sysctls
            .iter()
            .map(|(k, v)| Sysctl {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let ipam = if role == "node" {
            read_ipam(state, &short, &container_pods)
        } else {
            Vec::new()
        };
        let mut bgp_sessions = r.bgp_sessions.clone();
        bgp_sessions.sort_by(|a, b| a.name.cmp(&b.name));
        // A session that is not up cycles through Active, Connect, OpenSent
        // with BIRD's timers; only whether it is Established is stable.
        for b in &mut bgp_sessions {
            if b.state != "Established" {
                b.state = "down".into();
            }
        }
        out.push(NsSnapshot {
            name: short,
            role,
            title,
            links,
            addresses,
            routes,
            neighbours,
            fdb,
            sysctls,
            iptables: r.iptables.clone(),
            ipam,
            bgp_sessions,
            bgp_routes: r.bgp_routes.clone(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot {
        format: FORMAT,
        lab: format!(
            "{} nodes, {} pods, {}",
            plan.nodes.len(),
            plan.pod_count(),
            crate::status::network_line(plan)
        ),
        faults: crate::faultspec::lines(&state.faults),
        namespaces: out,
    })
}

fn vxlan_details(v: &[InfoVxlan], dev: &dyn Fn(u32) -> String) -> Vec<String> {
    let mut id = None;
    let mut rest = Vec::new();
    let mut learning = true;
    for i in v {
        match i {
            InfoVxlan::Id(x) => id = Some(format!("id {x}")),
            InfoVxlan::Local(a) => rest.push((1, format!("local {a}"))),
            InfoVxlan::Group(g) if !g.is_unspecified() => rest.push((2, format!("group {g}"))),
            InfoVxlan::Link(d) if *d != 0 => rest.push((3, format!("dev {}", dev(*d)))),
            InfoVxlan::Port(p) => rest.push((4, format!("dstport {p}"))),
            InfoVxlan::Learning(l) => learning = *l,
            InfoVxlan::Proxy(true) => rest.push((6, "proxy".into())),
            InfoVxlan::L2Miss(true) => rest.push((7, "l2miss".into())),
            InfoVxlan::L3Miss(true) => rest.push((8, "l3miss".into())),
            InfoVxlan::Df(netlink_packet_route::link::VxlanDf::Set) => rest.push((9, "df set".into())),
            _ => {}
        }
    }
    rest.push((
        5,
        if learning {
            "learning".into()
        } else {
            "nolearning".into()
        },
    ));
    rest.sort();
    id.into_iter().chain(rest.into_iter().map(|(_, s)| s)).collect()
}

fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

fn route(r: &RouteMessage, dev: &dyn Fn(u32) -> String) -> Option<Route> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32);
    let mut s = String::new();
    match r.header.kind {
        RouteType::Unicast => {}
        RouteType::Local => s.push_str("local "),
        RouteType::Broadcast => s.push_str("broadcast "),
        RouteType::BlackHole => s.push_str("blackhole "),
        RouteType::Unreachable => s.push_str("unreachable "),
        RouteType::Prohibit => s.push_str("prohibit "),
        RouteType::Throw => s.push_str("throw "),
        RouteType::Multicast => s.push_str("multicast "),
        RouteType::Anycast => s.push_str("anycast "),
        other => {
            let _ = write!(s, "{other:?} ");
        }
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    });
    let plen = r.header.destination_prefix_length;
    let dst_ip = dst.unwrap_or(Ipv4Addr::UNSPECIFIED);
    match (dst, plen) {
        (_, 0) => s.push_str("default"),
        (Some(d), 32) => {
            let _ = write!(s, "{d}");
        }
        (Some(d), l) => {
            let _ = write!(s, "{d}/{l}");
        }
        (None, l) => {
            let _ = write!(s, "0.0.0.0/{l}");
        }
    }
    for a in &r.attributes {
        if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = a {
            let _ = write!(s, " via {g}");
        }
    }
    for a in &r.attributes {
        if let RouteAttribute::Oif(i) = a {
            let _ = write!(s, " dev {}", dev(*i));
        }
    }
    match r.header.protocol {
        RouteProtocol::Boot | RouteProtocol::Unspec => {}
        RouteProtocol::Kernel => s.push_str(" proto kernel"),
        RouteProtocol::Static => s.push_str(" proto static"),
        RouteProtocol::Bird => s.push_str(" proto bird"),
        RouteProtocol::Dhcp => s.push_str(" proto dhcp"),
        RouteProtocol::Bgp => s.push_str(" proto bgp"),
        other => {
            let _ = write!(s, " proto {}", u8::from(other));
        }
    }
    match r.header.scope {
        RouteScope::Universe => {}
        RouteScope::Link => s.push_str(" scope link"),
        RouteScope::Host => s.push_str(" scope host"),
        RouteScope::Site => s.push_str(" scope site"),
        RouteScope::NoWhere => s.push_str(" scope nowhere"),
        other => {
            let _ = write!(s, " scope {}", u8::from(other));
        }
    }
    for a in &r.attributes {
        match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(p)) => {
                let _ = write!(s, " src {p}");
            }
            RouteAttribute::Priority(m) => {
                let _ = write!(s, " metric {m}");
            }
            _ => {}
        }
    }
    let flags = r.header.flags;
    if flags.contains(RouteFlags::Onlink) {
        s.push_str(" onlink");
    }
    if flags.contains(RouteFlags::Linkdown) {
        s.push_str(" linkdown");
    }
    if flags.contains(RouteFlags::Dead) {
        s.push_str(" dead");
    }
    let order = match table {
        254 => 0,
        255 => 2,
        _ => 1,
    };
    Some(Route {
        table: table_name(table),
        text: s,
        key: (order, u32::from(dst_ip), plen),
    })
}

fn state_name(s: NeighbourState) -> String {
    match s {
        NeighbourState::Permanent => "PERMANENT".into(),
        NeighbourState::Noarp => "NOARP".into(),
        NeighbourState::Reachable => "REACHABLE".into(),
        NeighbourState::Stale => "STALE".into(),
        NeighbourState::Delay => "DELAY".into(),
        NeighbourState::Probe => "PROBE".into(),
        NeighbourState::Failed => "FAILED".into(),
        NeighbourState::Incomplete => "INCOMPLETE".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

fn neighbour(
    n: &NeighbourMessage,
    dev: &dyn Fn(u32) -> String,
    mac: &dyn Fn(&[u8]) -> String,
    proxy: bool,
) -> Option<Neighbour> {
    let dst = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
        _ => None,
    })?;
    if proxy {
        return Some(Neighbour {
            text: format!("proxy {dst} dev {}", dev(n.header.ifindex)),
        });
    }
    let mut s = format!("{dst} dev {}", dev(n.header.ifindex));
    if let Some(ll) = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m),
        _ => None,
    }) {
        let _ = write!(s, " lladdr {}", mac(ll));
    }
    let _ = write!(s, " {}", state_name(n.header.state));
    Some(Neighbour { text: s })
}

/// A neighbour's destination; AF_BRIDGE entries carry it as raw bytes.
pub fn neigh_dst(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn fdb_entry(
    n: &NeighbourMessage,
    dev: &dyn Fn(u32) -> String,
    mac: &dyn Fn(&[u8]) -> String,
    dynamic: bool,
) -> Option<Fdb> {
    let dst = neigh_dst(n);
    // Entries a control plane programmed point at a remote and stay; the
    // rest (learned, ageing) only with --dynamic.
    let programmed = dst.is_some() && matches!(n.header.state, NeighbourState::Permanent | NeighbourState::Noarp);
    if !programmed && !dynamic {
        return None;
    }
    let ll = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m),
        _ => None,
    })?;
    let mut s = format!("{} dev {}", mac(ll), dev(n.header.ifindex));
    if let Some(m) = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Controller(m) => Some(*m),
        _ => None,
    }) {
        let _ = write!(s, " master {}", dev(m));
    }
    if let Some(d) = dst {
        let _ = write!(s, " dst {d}");
    }
    if n.header.flags.contains(NeighbourFlags::Own) {
        s.push_str(" self");
    }
    match n.header.state {
        NeighbourState::Permanent => s.push_str(" permanent"),
        NeighbourState::Noarp => s.push_str(" static"),
        _ => {}
    }
    Some(Fdb { text: s })
}

/// host-local's reservations on a node: one file per address holding the
/// container ID and interface.
fn read_ipam(state: &LabState, node: &str, pods: &BTreeMap<&str, String>) -> Vec<Ipam> {
    let base = state.paths().cni_state_dir(node).join("networks");
    let mut out = Vec::new();
    let Ok(nets) = std::fs::read_dir(&base) else {
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
            let id = lines.next().unwrap_or("");
            let ifname = lines.next().unwrap_or("").to_string();
            out.push(Ipam {
                network: network.clone(),
                ip: ip.to_string(),
                holder: pods.get(id).cloned().unwrap_or_else(|| format!("container {id}")),
                ifname,
            });
        }
    }
    out.sort_by_key(|i| (i.network.clone(), i.ip.parse::<Ipv4Addr>().map(u32::from).unwrap_or(0)));
    out
}

impl Snapshot {
    /// The snapshot as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# cnilab snapshot, format {}: {}", self.format, self.lab);
        for f in &self.faults {
            let _ = writeln!(s, "fault {f}");
        }
        for ns in &self.namespaces {
            let _ = writeln!(s, "\n== {}", ns.title);
            for l in &ns.links {
                let _ = write!(s, "link {} {}", l.name, l.kind);
                for d in &l.details {
                    let _ = write!(s, " {d}");
                }
                let _ = write!(s, " mtu {}", l.mtu);
                if let Some(m) = &l.master {
                    let _ = write!(s, " master {m}");
                }
                s.push_str(if l.up { " up" } else { " down" });
                if l.no_carrier {
                    s.push_str(" no-carrier");
                }
                if let Some(a) = &l.address {
                    let _ = write!(s, " address {a}");
                }
                s.push('\n');
            }
            for a in &ns.addresses {
                let _ = writeln!(s, "addr {} dev {}", a.address, a.dev);
            }
            for r in &ns.routes {
                if r.table == "main" {
                    let _ = writeln!(s, "route {}", r.text);
                } else {
                    let _ = writeln!(s, "route {} table {}", r.text, r.table);
                }
            }
            for n in &ns.neighbours {
                let _ = writeln!(s, "neigh {}", n.text);
            }
            for f in &ns.fdb {
                let _ = writeln!(s, "fdb {}", f.text);
            }
            for c in &ns.sysctls {
                let _ = writeln!(s, "sysctl {} = {}", c.key, c.value);
            }
            iptables::render(&ns.iptables, &mut s);
            for i in &ns.ipam {
                let _ = writeln!(s, "ipam {} {} {} {}", i.network, i.ip, i.holder, i.ifname);
            }
            for b in &ns.bgp_sessions {
                let _ = write!(s, "bgp session {}", b.name);
                if let Some(n) = b.neighbor {
                    let _ = write!(s, " neighbor {n}");
                }
                if let Some(a) = b.asn {
                    let _ = write!(s, " as {a}");
                }
                let _ = writeln!(s, " {}", if b.state.is_empty() { "down" } else { &b.state });
            }
            for r in &ns.bgp_routes {
                let path = if r.as_path.is_empty() { "-" } else { &r.as_path };
                let _ = writeln!(
                    s,
                    "bgp route {} via {} from {} origin {} as-path {path}",
                    r.prefix, r.via, r.from, r.origin
                );
            }
        }
        s
    }
}

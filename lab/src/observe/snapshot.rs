//! Snapshots (shared/design/snapshots.md): a lab's network state as text in
//! the spirit of iproute2, made to be read and diffed. Everything is read
//! from the kernel once (collect.rs), then normalized by a pure function of
//! that dump ([`from_dump`]), which a recorded dump replays without root.
//! Names and MACs a plugin chose at random are shown by what they are
//! (`veth(worker1/web)`, `mac(worker2/<overlay device>)`), nothing depends on
//! ifindexes, timing or the lab's name, and every list is sorted. Packet filtering shows as `iptables TABLE ...` lines in the
//! form iptables-save prints, normalized (snapshot/iptables.rs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteProtocol, RouteScope, RouteType};
use serde::{Deserialize, Serialize};

use crate::kernel::netns;
use crate::observe::collect::{Dump, NsDump, Target, Want};
use crate::ops::state::LabState;

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
    /// The NetworkPolicies in force: `namespace/name (types) selects pods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
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
    /// Policy routing rules other than the kernel's three defaults, as
    /// `ip rule` prints them (`1536: from 10.0.1.25 lookup 2`), by priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
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
    pub bgp_sessions: Vec<crate::kernel::bird::Session>,
    /// The BGP routes in that BIRD's table.
    pub bgp_routes: Vec<crate::kernel::bird::BgpRoute>,
    /// The lab's etcd: each key under the profile's prefix with its value
    /// (MACs named by owner; TTLs left out).
    pub etcd: Vec<EtcdKey>,
    /// A pod's Kubernetes identity, where it has more than `default`:
    /// `x/a labels pod=a ports serve-80-tcp=80/TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The ipsets a policy engine made: `NAME TYPE: members` (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipsets: Vec<String>,
}

/// A key in the lab's etcd.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct EtcdKey {
    /// The key.
    pub key: String,
    /// Its value, MACs normalized.
    pub value: String,
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

/// A recorded lab: its state and the kernel's, as JSON (tests/dumps/):
/// enough to render its snapshot and trace its packets without root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// Format version of the recording.
    pub format: u32,
    /// The lab's state when it was recorded.
    pub state: LabState,
    /// Every namespace of the lab, with what traces need.
    pub dump: Dump,
}

impl Recorded {
    /// Reads a recording.
    pub fn load(path: &std::path::Path) -> Result<Recorded> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is no cnilab recording", path.display()))
    }
}

/// Set to a file name, a snapshot also records the lab there (see [`Recorded`]).
pub const RECORD_ENV: &str = "CNILAB_RECORD_DUMP";

/// Sysctls the lab sets: forwarding on nodes and routers (see
/// build::NODE_SYSCTLS), and what a profile's plugin sets on host veths;
/// then those the lab's faults touched here.
fn touched_sysctls(role: &str, links: &[crate::observe::collect::Link], fault_keys: &[String]) -> Vec<String> {
    let mut keys = Vec::new();
    if role == "node" || role == "router" {
        keys.push("net/ipv4/ip_forward".to_string());
    }
    for l in links {
        keys.extend(crate::profile::host_link_sysctls(&l.name));
    }
    for k in fault_keys {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys
}

/// What to read in each namespace of the lab, also those a fault made.
fn targets(state: &LabState) -> Vec<Target> {
    let prefix = crate::model::paths::lab_ns_prefix(&state.plan.lab);
    let paths = state.paths();
    let fault_keys = crate::model::faultspec::touched_sysctls(&state.faults, &state.plan);
    netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|ns| {
            let (short, role, _, owner) = labels(&prefix, &ns);
            let keys = fault_keys.get(&ns).cloned().unwrap_or_default();
            let r = role.clone();
            Target {
                bird_socket: match role.as_str() {
                    "node" => Some(paths.agent_dir(&owner).join("bird.ctl")),
                    "router" => Some(paths.router_dir(&owner).join("bird.ctl")),
                    _ => None,
                },
                ipam_dir: (role == "node").then(|| paths.cni_state_dir(&short).join("networks")),
                etcd_prefix: (role == crate::model::topology::ETCD_TARGET)
                    .then(|| state.plan.profile.etcd_prefix().map(str::to_string))
                    .flatten(),
                sysctls: std::sync::Arc::new(move |links| touched_sysctls(&r, links, &keys)),
                ns,
            }
        })
        .collect()
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

/// Takes a snapshot of `namespaces` (default: the whole lab). Every
/// namespace is read, even when only some are shown: names and MACs are
/// normalized across the whole lab.
pub async fn take(state: &LabState, only: Option<&[String]>, dynamic: bool) -> Result<Snapshot> {
    let record = std::env::var_os(RECORD_ENV);
    let dump = crate::observe::collect::collect(
        targets(state),
        Want {
            trace: record.is_some(),
        },
    )
    .await?;
    if let Some(path) = record {
        let rec = serde_json::json!({ "format": FORMAT, "state": state, "dump": dump.to_json() });
        let text = serde_json::to_string_pretty(&rec)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.to_string_lossy()))?;
    }
    Ok(from_dump(state, &dump, only, dynamic))
}

/// The names a snapshot gives what plugins chose at random.
struct Names<'d> {
    /// veth(node/pod) by (node, ifindex): a pod's eth0 names its peer's ifindex in the node.
    veths: BTreeMap<(String, u32), String>,
    /// mac(owner): who in the lab has a MAC; bridges win, as they answer for it.
    macs: BTreeMap<&'d str, (u8, String)>,
}

impl<'d> Names<'d> {
    fn new(prefix: &str, dump: &'d Dump) -> Names<'d> {
        let mut n = Names {
            veths: BTreeMap::new(),
            macs: BTreeMap::new(),
        };
        for (ns, d) in &dump.namespaces {
            let (short, role, _, owner) = labels(prefix, ns);
            if role != "pod" {
                continue;
            }
            let node = short.split_once('.').map(|(n, _)| n.to_string()).unwrap_or_default();
            for l in d.links.iter().filter(|l| l.kind == "veth") {
                if let Some(peer) = l.peer {
                    n.veths.insert((node.clone(), peer), format!("veth({owner})"));
                }
            }
        }
        for (ns, d) in &dump.namespaces {
            let (short, _, _, owner) = labels(prefix, ns);
            for l in &d.links {
                let Some(mac) = l.mac.as_deref().filter(|m| *m != "00:00:00:00:00:00") else {
                    continue;
                };
                let rank = if l.kind == "bridge" { 0 } else { 1 };
                let label = format!("{owner}/{}", n.link_name(&short, l));
                let e = n.macs.entry(mac).or_insert((rank, label.clone()));
                if (rank, &label) < (e.0, &e.1) {
                    *e = (rank, label);
                }
            }
        }
        n
    }

    /// Only the bridge plugin's random veth names are replaced; names a
    /// plugin derives from the pod are shown as they are.
    fn link_name(&self, short: &str, l: &crate::observe::collect::Link) -> String {
        match self.veths.get(&(short.to_string(), l.index)) {
            Some(n) if l.name.starts_with("veth") => n.clone(),
            _ => l.name.clone(),
        }
    }

    fn mac(&self, m: &str) -> String {
        match self.macs.get(m) {
            Some((_, owner)) => format!("mac({owner})"),
            None => m.to_string(),
        }
    }
}

/// The snapshot of a lab whose kernel state is `dump`: a pure function.
pub fn from_dump(state: &LabState, dump: &Dump, only: Option<&[String]>, dynamic: bool) -> Snapshot {
    let plan = &state.plan;
    let prefix = crate::model::paths::lab_ns_prefix(&plan.lab);
    let names = Names::new(&prefix, dump);
    let container_pods: BTreeMap<&str, String> = plan
        .pods()
        .map(|(n, p)| (p.container_id.as_str(), format!("{}/{}", n.name, p.name)))
        .collect();
    let fault_keys = crate::model::faultspec::touched_sysctls(&state.faults, plan);
    let mut out: Vec<NsSnapshot> = dump
        .namespaces
        .iter()
        .filter(|(ns, _)| only.is_none_or(|o| o.contains(ns)))
        .map(|(ns, d)| {
            let keys = fault_keys.get(ns).cloned().unwrap_or_default();
            ns_snapshot(&prefix, ns, d, &names, &keys, &container_pods, dynamic)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    for (n, p) in plan.pods() {
        let short = format!("{}.{}", n.name, p.name);
        if let Some(ns) = out.iter_mut().find(|x| x.name == short) {
            ns.identity = identity_line(&p.meta, &p.name);
        }
    }
    Snapshot {
        format: FORMAT,
        lab: format!(
            "{} nodes, {} pods, {}",
            plan.nodes.len(),
            plan.pod_count(),
            crate::observe::status::network_line(plan)
        ),
        faults: crate::model::faultspec::lines(&state.faults),
        policies: policy_lines(state),
        namespaces: out,
    }
}

/// The policies in force, each with the pods it selects.
fn policy_lines(state: &LabState) -> Vec<String> {
    crate::observe::status::policy_list(state)
        .into_iter()
        .map(|p| {
            format!(
                "{} ({}) selects {}",
                p.id,
                p.types.join(", "),
                if p.selects.is_empty() {
                    "nothing".to_string()
                } else {
                    p.selects.join(" ")
                }
            )
        })
        .collect()
}

/// A pod's identity line, where it has more than the default namespace.
fn identity_line(meta: &crate::model::identity::PodMeta, pod: &str) -> Option<String> {
    if *meta == crate::model::identity::PodMeta::default() {
        return None;
    }
    let mut s = format!("{}/{pod}", meta.namespace);
    if !meta.labels.is_empty() {
        s.push_str(&format!(" labels {}", meta.labels_text()));
    }
    if !meta.ports.is_empty() {
        let p: Vec<String> = meta
            .ports
            .iter()
            .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol.k8s()))
            .collect();
        s.push_str(&format!(" ports {}", p.join(",")));
    }
    Some(s)
}

/// `ipset save` text as one sorted line per set: `NAME TYPE: members`.
pub fn ipset_lines(save: &str) -> Vec<String> {
    let mut sets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in save.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(name), Some(kind)) => {
                sets.entry(name.to_string()).or_default().0 = kind.to_string();
            }
            (Some("add"), Some(name), Some(member)) => {
                sets.entry(name.to_string()).or_default().1.push(member.to_string());
            }
            _ => {}
        }
    }
    sets.into_iter()
        .map(|(name, (kind, mut members))| {
            members.sort();
            format!("{name} {kind}: {}", members.join(" "))
        })
        .collect()
}

/// One namespace, normalized.
fn ns_snapshot(
    prefix: &str,
    ns: &str,
    d: &NsDump,
    names: &Names,
    fault_keys: &[String],
    pods: &BTreeMap<&str, String>,
    dynamic: bool,
) -> NsSnapshot {
    let (short, role, title, _) = labels(prefix, ns);
    let by_index: BTreeMap<u32, String> = d.links.iter().map(|l| (l.index, names.link_name(&short, l))).collect();
    let dev = |i: u32| by_index.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    let mac = |m: &str| names.mac(m);

    let mut links: Vec<Link> = d.links.iter().map(|l| link(l, &dev)).collect();
    links.sort_by(|a, b| a.name.cmp(&b.name));

    let mut addresses: Vec<Address> = d
        .addrs
        .iter()
        .map(|a| Address {
            dev: dev(a.index),
            address: format!("{}/{}", a.ip, a.prefix_len),
        })
        .collect();
    addresses.sort_by(|a, b| (&a.dev, &a.address).cmp(&(&b.dev, &b.address)));

    let mut routes: Vec<Route> = d.routes.iter().map(|rt| route(rt, &dev)).collect();
    routes.sort_by(|a, b| (a.key, &a.text).cmp(&(b.key, &b.text)));

    let rename = |n: &Option<String>| {
        n.as_ref().map(|n| {
            d.links
                .iter()
                .find(|l| &l.name == n)
                .map_or(n.clone(), |l| names.link_name(&short, l))
        })
    };
    let mut rules: Vec<&crate::observe::collect::Rule> = d.rules.iter().filter(|r| !r.is_default()).collect();
    // Rules of one priority are in the order they were made: sorted here.
    rules.sort_by_key(|r| (r.priority, r.src, r.dst, r.text()));
    let rules: Vec<String> = rules
        .into_iter()
        .map(|r| {
            let mut r = r.clone();
            r.iif = rename(&r.iif);
            r.oif = rename(&r.oif);
            r.text()
        })
        .collect();

    let mut neighbours: Vec<Neighbour> = d
        .neighbours
        .iter()
        .filter(|n| dynamic || n.state == NUD_PERMANENT)
        .filter_map(|n| neighbour(n, &dev, &mac, false))
        .chain(d.proxies.iter().filter_map(|n| neighbour(n, &dev, &mac, true)))
        .collect();
    neighbours.sort_by(|a, b| a.text.cmp(&b.text));
    neighbours.dedup_by(|a, b| a.text == b.text);

    let mut fdb: Vec<Fdb> = d.fdb.iter().filter_map(|f| fdb_entry(f, &dev, &mac, dynamic)).collect();
    fdb.sort_by(|a, b| a.text.cmp(&b.text));
    fdb.dedup_by(|a, b| a.text == b.text);

    let sysctls = touched_sysctls(&role, &d.links, fault_keys)
        .into_iter()
        .filter_map(|k| {
            let value = d.sysctls.get(&k)?.clone();
            Some(Sysctl {
                key: netns::sysctl_name(&k),
                value,
            })
        })
        .collect();
    let ipam = if role == "node" { ipam(d, pods) } else { Vec::new() };
    let mut bgp_sessions = d.bgp_sessions.clone();
    bgp_sessions.sort_by(|a, b| a.name.cmp(&b.name));
    // A session that is not up cycles through Active, Connect, OpenSent
    // with BIRD's timers; only whether it is Established is stable.
    for b in &mut bgp_sessions {
        if b.state != "Established" {
            b.state = "down".into();
        }
    }
    NsSnapshot {
        name: short,
        role,
        title,
        links,
        addresses,
        routes,
        rules,
        neighbours,
        fdb,
        sysctls,
        iptables: if d.iptables.is_empty() {
            Vec::new()
        } else {
            iptables::normalize(&d.iptables)
        },
        ipam,
        bgp_sessions,
        bgp_routes: d.bgp_routes.clone(),
        etcd: d
            .etcd
            .iter()
            .map(|(k, v)| EtcdKey {
                key: k.clone(),
                value: macs_named(v, &mac),
            })
            .collect(),
        identity: None,
        ipsets: ipset_lines(&d.ipsets),
    }
}

/// Text with every MAC (`aa:bb:cc:dd:ee:ff`) in it named by `mac`.
fn macs_named(text: &str, mac: &dyn Fn(&str) -> String) -> String {
    let is_mac = |w: &[u8]| {
        w.len() == 17
            && w.iter()
                .enumerate()
                .all(|(i, c)| if i % 3 == 2 { *c == b':' } else { c.is_ascii_hexdigit() })
    };
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 17 <= b.len() && is_mac(&b[i..i + 17]) && text.is_char_boundary(i + 17) {
            out.push_str(&mac(&text[i..i + 17].to_ascii_lowercase()));
            i += 17;
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

const NUD_PERMANENT: u16 = 0x80;
const NUD_NOARP: u16 = 0x40;

fn link(l: &crate::observe::collect::Link, dev: &dyn Fn(u32) -> String) -> Link {
    Link {
        name: dev(l.index),
        kind: l.kind.clone(),
        details: l.vxlan.as_ref().map(|v| vxlan_details(v, dev)).unwrap_or_default(),
        mtu: l.mtu.unwrap_or(0),
        up: l.up,
        no_carrier: l.up && !l.lower_up,
        master: l.master.map(dev),
        address: if l.kind == "vxlan" { l.mac.clone() } else { None },
    }
}

fn vxlan_details(v: &crate::observe::collect::Vxlan, dev: &dyn Fn(u32) -> String) -> Vec<String> {
    let mut rest = Vec::new();
    if let Some(a) = v.local {
        rest.push(format!("local {a}"));
    }
    if let Some(g) = v.group {
        rest.push(format!("group {g}"));
    }
    if let Some(d) = v.dev {
        rest.push(format!("dev {}", dev(d)));
    }
    if let Some(p) = v.port {
        rest.push(format!("dstport {p}"));
    }
    rest.push(if v.learning { "learning" } else { "nolearning" }.into());
    for (on, what) in [
        (v.proxy, "proxy"),
        (v.l2miss, "l2miss"),
        (v.l3miss, "l3miss"),
        (v.df_set, "df set"),
    ] {
        if on {
            rest.push(what.into());
        }
    }
    v.id.map(|x| format!("id {x}")).into_iter().chain(rest).collect()
}

fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

fn route(r: &crate::observe::collect::Route, dev: &dyn Fn(u32) -> String) -> Route {
    let mut s = String::new();
    match RouteType::from(r.kind) {
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
    let plen = r.dst_len;
    match (r.dst, plen) {
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
    if let Some(g) = r.gateway {
        let _ = write!(s, " via {g}");
    }
    if let Some(i) = r.oif {
        let _ = write!(s, " dev {}", dev(i));
    }
    match RouteProtocol::from(r.protocol) {
        RouteProtocol::Boot | RouteProtocol::Unspec => {}
        RouteProtocol::Kernel => s.push_str(" proto kernel"),
        RouteProtocol::Static => s.push_str(" proto static"),
        RouteProtocol::Bird => s.push_str(" proto bird"),
        RouteProtocol::Dhcp => s.push_str(" proto dhcp"),
        RouteProtocol::Bgp => s.push_str(" proto bgp"),
        _ => {
            let _ = write!(s, " proto {}", r.protocol);
        }
    }
    match RouteScope::from(r.scope) {
        RouteScope::Universe => {}
        RouteScope::Link => s.push_str(" scope link"),
        RouteScope::Host => s.push_str(" scope host"),
        RouteScope::Site => s.push_str(" scope site"),
        RouteScope::NoWhere => s.push_str(" scope nowhere"),
        _ => {
            let _ = write!(s, " scope {}", r.scope);
        }
    }
    // The kernel sends the metric before the preferred source.
    if let Some(m) = r.metric {
        let _ = write!(s, " metric {m}");
    }
    if let Some(p) = r.prefsrc {
        let _ = write!(s, " src {p}");
    }
    for (on, what) in [(r.onlink, " onlink"), (r.linkdown, " linkdown"), (r.dead, " dead")] {
        if on {
            s.push_str(what);
        }
    }
    let order = match r.table {
        254 => 0,
        255 => 2,
        _ => 1,
    };
    Route {
        table: table_name(r.table),
        text: s,
        key: (order, u32::from(r.dst.unwrap_or(Ipv4Addr::UNSPECIFIED)), plen),
    }
}

fn state_name(s: u16) -> String {
    match NeighbourState::from(s) {
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
    n: &crate::observe::collect::Neigh,
    dev: &dyn Fn(u32) -> String,
    mac: &dyn Fn(&str) -> String,
    proxy: bool,
) -> Option<Neighbour> {
    let dst = n.dst?;
    if proxy {
        return Some(Neighbour {
            text: format!("proxy {dst} dev {}", dev(n.ifindex)),
        });
    }
    let mut s = format!("{dst} dev {}", dev(n.ifindex));
    if let Some(ll) = &n.lladdr {
        let _ = write!(s, " lladdr {}", mac(ll));
    }
    let _ = write!(s, " {}", state_name(n.state));
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
    n: &crate::observe::collect::Fdb,
    dev: &dyn Fn(u32) -> String,
    mac: &dyn Fn(&str) -> String,
    dynamic: bool,
) -> Option<Fdb> {
    // Entries a control plane programmed point at a remote and stay; the
    // rest (learned, ageing) only with --dynamic.
    let programmed = n.dst.is_some() && matches!(n.state, NUD_PERMANENT | NUD_NOARP);
    if !programmed && !dynamic {
        return None;
    }
    let mut s = format!("{} dev {}", mac(n.mac.as_deref()?), dev(n.ifindex));
    if let Some(m) = n.master {
        let _ = write!(s, " master {}", dev(m));
    }
    if let Some(d) = n.dst {
        let _ = write!(s, " dst {d}");
    }
    if n.own {
        s.push_str(" self");
    }
    match n.state {
        NUD_PERMANENT => s.push_str(" permanent"),
        NUD_NOARP => s.push_str(" static"),
        _ => {}
    }
    Some(Fdb { text: s })
}

/// host-local's reservations on a node, with their holders named.
fn ipam(d: &NsDump, pods: &BTreeMap<&str, String>) -> Vec<Ipam> {
    let mut out: Vec<Ipam> = d
        .ipam
        .iter()
        .map(|f| Ipam {
            network: f.network.clone(),
            ip: f.ip.to_string(),
            holder: pods
                .get(f.container.as_str())
                .cloned()
                .unwrap_or_else(|| format!("container {}", f.container)),
            ifname: f.ifname.clone(),
        })
        .collect();
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
        for p in &self.policies {
            let _ = writeln!(s, "policy {p}");
        }
        for ns in &self.namespaces {
            let _ = writeln!(s, "\n== {}", ns.title);
            if let Some(i) = &ns.identity {
                let _ = writeln!(s, "k8s {i}");
            }
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
            for r in &ns.rules {
                let _ = writeln!(s, "rule {r}");
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
            for i in &ns.ipsets {
                let _ = writeln!(s, "ipset {i}");
            }
            for i in &ns.ipam {
                let _ = writeln!(s, "ipam {} {} {} {}", i.network, i.ip, i.holder, i.ifname);
            }
            for k in &ns.etcd {
                let _ = writeln!(s, "etcd {} {}", k.key, k.value);
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

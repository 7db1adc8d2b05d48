//! `cnilab trace`: the path of one packet, hop by hop, from the lab's real
//! kernel state. Each namespace the packet visits is read once through
//! collect.rs (netlink, typed); everything after is a pure function of
//! those dumps and the lab's state, so a recorded dump replays a trace
//! without root (tests/replay.rs). In each namespace trace finds what the
//! kernel would do (the longest-prefix match of the local, main and default
//! tables, as `ip route get fibmatch` names the entry, with the kernel's
//! errors for blackhole, unreachable and prohibit routes and for a martian
//! source), reads the neighbour and FDB entries the next hop needs, follows veth
//! pairs to their other end and bridges to their egress port, encapsulates
//! where a VXLAN device sends and decapsulates where one receives, and
//! checks the packet's size against every MTU on the way. The packet is an
//! ICMP echo request of `--size` bytes (as the kernel counts it against an
//! MTU) with DF set, as `probe ping --df` sends. At every hop it crosses
//! the iptables chains the kernel would run for it (forwarded, delivered or
//! sent locally) and the reverse-path filter; where those chains decide by
//! the packet's mark (felix's NetworkPolicy chains), the hop lists every
//! rule that acted on it and the chains it crossed. A packet that arrives is
//! answered: the echo reply is traced back the same way, and only a reply
//! that comes home makes the trace "delivered".

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::kernel::netns;
use crate::model::error::{Error, Result};
use crate::model::paths;
use crate::observe::collect::{
    Dump, Neigh, NsDump, RTN_BLACKHOLE, RTN_PROHIBIT, RTN_UNREACHABLE, Route, Target, Want, dst_text, protocol_name,
    type_name,
};
use crate::observe::iptables::{self, Proto, Ruleset};
use crate::ops::state::LabState;
use crate::profile::Plan;

/// rtm_protocol of the routes BIRD writes.
const RTPROT_BIRD: u8 = 12;
/// VXLAN over IPv4 adds an inner Ethernet header (14), VXLAN (8), UDP (8), IP (20).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The most namespaces a trace visits before it calls the path a loop.
const MAX_HOPS: usize = 40;

/// One namespace the packet crosses.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Hop {
    /// Where: `worker1/pod-1`, `worker1`, `switch tor1`, `router spine`.
    pub at: String,
    /// Its namespace.
    pub ns: String,
    /// The interface it arrives on (none where it starts).
    pub dev_in: Option<String>,
    /// The interface it leaves by.
    pub dev_out: Option<String>,
    /// The MTU it must fit where it leaves.
    pub mtu: Option<u32>,
    /// The IP packet's size here (the outer packet's when encapsulated).
    pub size: u32,
    /// The addresses of the packet here (`src -> dst`, outer when encapsulated).
    pub packet: String,
    /// The table entries used, as iproute2 prints them: `rule ...` (a policy
    /// routing rule other than the defaults), `route ...`, `neigh ...`, `fdb ...`.
    pub entries: Vec<String>,
    /// What happened, in words: encapsulation, proxy ARP, forwarding.
    pub notes: Vec<String>,
    /// Why the packet dies here, if it does.
    pub drop: Option<String>,
    /// The iptables table, chain and rule (or `policy DROP`) that drops it, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netfilter: Option<Netfilter>,
}

/// Where in iptables a packet is dropped.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Netfilter {
    /// `filter`, `raw`, `mangle` or `nat`.
    pub table: String,
    /// The chain where the decision was taken.
    pub chain: String,
    /// The rule as iptables-save prints it, or `policy DROP`.
    pub rule: String,
}

/// Where the round trip ends when it does not come back.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Dropped {
    /// `request` or `reply`.
    pub direction: String,
    /// The hop's number in its direction, from 1.
    pub hop: usize,
    /// The hop's place (`worker1`, `switch tor1`).
    pub at: String,
    /// iptables table, when iptables drops it.
    pub table: Option<String>,
    /// iptables chain, when iptables drops it.
    pub chain: Option<String>,
    /// iptables rule or `policy DROP`, when iptables drops it.
    pub rule: Option<String>,
    /// Why, in words.
    pub why: String,
}

/// The whole path.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Trace {
    /// Source as written.
    pub from: String,
    /// Destination as written.
    pub to: String,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP packet size.
    pub size: u32,
    /// What the packet carries: `ICMP echo-request`, `TCP 179`, `UDP 8472`.
    pub proto: String,
    /// The request's hops.
    pub hops: Vec<Hop>,
    /// The reply's hops, from the destination back to the source (empty
    /// when the request does not arrive).
    pub reply: Vec<Hop>,
    /// Whether the request arrives and its reply comes back.
    pub delivered: bool,
    /// The hop that drops the request or the reply, if one does.
    pub dropped: Option<Dropped>,
    /// Where it ends and why, in one line.
    pub verdict: String,
}

/// A packet in flight: inner addresses, and the outer header when encapsulated.
#[derive(Debug, Clone)]
struct Packet {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    size: u32,
    /// UDP destination port, for an outer VXLAN packet.
    udp_port: Option<u16>,
    /// The packet inside, with the VNI.
    inner: Option<Box<(Packet, u32)>>,
    /// The inner frame's destination MAC, for an outer VXLAN packet.
    inner_mac: Option<String>,
    /// For an outer packet of a bridge overlay (Weave's sleeve): the
    /// address the inner frame is for, on the far bridge.
    l2_via: Option<Ipv4Addr>,
    /// The transport header iptables sees.
    proto: Proto,
    /// Whether conntrack has seen the other direction: the echo reply.
    established: bool,
}

impl Packet {
    /// The packet the destination sends back: an echo reply, or the answer to a UDP or TCP packet.
    fn reply(&self) -> Packet {
        let proto = match self.proto {
            Proto::Icmp(_) => Proto::Icmp(0),
            Proto::Udp { sport, dport } => Proto::Udp {
                sport: dport,
                dport: sport,
            },
            Proto::Tcp { sport, dport } => Proto::Tcp {
                sport: dport,
                dport: sport,
            },
        };
        Packet {
            src: self.dst,
            dst: self.src,
            size: self.size,
            udp_port: None,
            inner: None,
            inner_mac: None,
            l2_via: None,
            proto,
            established: true,
        }
    }

    fn describe(&self) -> String {
        match &self.inner {
            None => format!("{} -> {} {}", self.src, self.dst, proto_text(self.proto)),
            Some(b) if self.l2_via.is_some() => format!(
                "outer {} -> {} UDP {} [inner {} -> {}]",
                self.src,
                self.dst,
                self.udp_port.unwrap_or(0),
                b.0.src,
                b.0.dst
            ),
            Some(b) => format!(
                "outer {} -> {} UDP {} VNI {} [inner {} -> {}]",
                self.src,
                self.dst,
                self.udp_port.unwrap_or(0),
                b.1,
                b.0.src,
                b.0.dst
            ),
        }
    }
}

fn proto_text(p: Proto) -> String {
    match p {
        Proto::Icmp(8) => "ICMP echo-request".into(),
        Proto::Icmp(0) => "ICMP echo-reply".into(),
        Proto::Icmp(t) => format!("ICMP type {t}"),
        Proto::Udp { sport, dport } => format!("UDP {}", ports_text(sport, dport)),
        Proto::Tcp { sport, dport } => format!("TCP {}", ports_text(sport, dport)),
    }
}

/// `8472`, or `from 8472` for a reply, whose destination port is the request's unknown source port.
fn ports_text(sport: Option<u16>, dport: Option<u16>) -> String {
    match (sport, dport) {
        (_, Some(d)) => d.to_string(),
        (Some(s), None) => format!("from {s}"),
        (None, None) => "?".into(),
    }
}

/// What cnilab knows a namespace to be.
#[derive(Debug, Clone)]
enum Place {
    Pod {
        node: String,
        pod: String,
    },
    Node(String),
    Router(String),
    /// The uplink of a switch without a router, holding its .1.
    Uplink(String),
    Fabric,
    Leaf {
        switch: String,
    },
}

/// A namespace's collected state, read once per trace.
struct View {
    name: String,
    d: NsDump,
    /// iptables rules, parsed when first needed.
    rules: std::cell::OnceCell<Ruleset>,
}

impl View {
    fn new(name: &str, d: NsDump) -> View {
        View {
            name: name.to_string(),
            d,
            rules: Default::default(),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn link(&self, name: &str) -> Option<&crate::observe::collect::Link> {
        self.d.link(name)
    }

    fn kind(&self, name: &str) -> &str {
        self.link(name).map_or("", |l| l.kind.as_str())
    }

    fn mtu(&self, name: &str) -> Option<u32> {
        self.link(name).and_then(|l| l.mtu)
    }

    fn up(&self, name: &str) -> bool {
        self.link(name).is_some_and(|l| l.up && l.lower_up)
    }

    /// The bridge `dev` is a port of.
    fn master(&self, dev: &str) -> Option<String> {
        let m = self.link(dev)?.master?;
        self.d.name_of(m).map(str::to_string)
    }

    /// The device holding `ip` as one of its addresses.
    fn local(&self, ip: Ipv4Addr) -> Option<String> {
        self.d.local(ip).map(str::to_string)
    }

    /// Every iptables table here, with the IP sets their rules match.
    fn iptables(&self) -> &Ruleset {
        self.rules
            .get_or_init(|| Ruleset::parse_with_sets(&self.d.iptables, &self.d.ipsets))
    }

    /// Every IPv4 address of this namespace.
    fn addresses(&self) -> Vec<Ipv4Addr> {
        self.d.addrs.iter().map(|a| a.ip).collect()
    }

    /// The first address of device `dev`: what MASQUERADE puts as the source.
    fn address_of(&self, dev: &str) -> Option<Ipv4Addr> {
        let l = self.link(dev)?;
        self.d.addrs.iter().find(|a| a.index == l.index).map(|a| a.ip)
    }

    fn sysctl(&self, key: &str) -> Option<String> {
        self.d.sysctl(key).map(str::to_string)
    }

    /// A route's device name.
    fn dev_of(&self, r: &Route) -> Option<&str> {
        r.oif.and_then(|i| self.d.name_of(i))
    }
}

/// The packet's mark as this namespace's routing sees it: 0 where no
/// iptables rule sets marks (a mark does not survive the veth into
/// another namespace), else unknown.
fn mark_known(view: &View) -> Option<u32> {
    let sets = ["-j MARK", "-j CONNMARK"].iter().any(|t| view.d.iptables.contains(t));
    (!sets).then_some(0)
}

/// A route as `ip route` prints it.
fn route_text(view: &View, r: &Route) -> String {
    let mut s = String::new();
    if r.kind != crate::observe::collect::RTN_UNICAST {
        s.push_str(&type_name(r.kind));
        s.push(' ');
    }
    s.push_str(&dst_text(r));
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(d) = view.dev_of(r) {
        s.push_str(&format!(" dev {d}"));
    }
    if r.protocol != 3 {
        s.push_str(&format!(" proto {}", protocol_name(r.protocol)));
    }
    match r.scope {
        0 => {}
        200 => s.push_str(" scope site"),
        253 => s.push_str(" scope link"),
        254 => s.push_str(" scope host"),
        255 => s.push_str(" scope nowhere"),
        n => s.push_str(&format!(" scope {n}")),
    }
    if let Some(m) = r.mtu {
        s.push_str(&format!(" mtu {m}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if ![254, 255].contains(&r.table) {
        s.push_str(&format!(" table {}", crate::observe::collect::table_text(r.table)));
    }
    s
}

/// The lab's names for addresses and namespaces.
struct Lab<'a> {
    state: &'a LabState,
    plan: &'a Plan,
    owners: BTreeMap<Ipv4Addr, (String, String)>,
    /// Address rewrites by the nat table on the request, which conntrack
    /// undoes on the reply: (namespace, whether the source was rewritten,
    /// address before, address after).
    nat: std::cell::RefCell<Vec<(String, bool, Ipv4Addr, Ipv4Addr)>>,
    /// Each namespace read once: a trace visits nodes several times, both ways.
    views: std::cell::RefCell<BTreeMap<String, std::rc::Rc<View>>>,
    /// A recorded dump to read instead of the kernel.
    recorded: Option<&'a Dump>,
}

impl<'a> Lab<'a> {
    fn new(state: &'a LabState, recorded: Option<&'a Dump>) -> Lab<'a> {
        let plan = &state.plan;
        let mut owners = BTreeMap::new();
        for n in &plan.nodes {
            owners.insert(n.ip, (format!("eth0 of {}", n.name), n.ns.clone()));
            for x in &n.extra_ifaces {
                owners.insert(x.ip, (format!("{} of {}", x.ifname, n.name), n.ns.clone()));
            }
            for p in &n.pods {
                let key = format!("{}/{}", n.name, p.name);
                if let Some(ip) = state
                    .pods
                    .get(&key)
                    .and_then(|s| s.ip.as_deref())
                    .and_then(|ip| ip.split('/').next())
                    .and_then(|ip| ip.parse().ok())
                {
                    owners.insert(ip, (format!("pod {key}"), p.ns.clone()));
                }
            }
        }
        for (ip, what, ns) in plan.profile.address_owners(plan) {
            owners.insert(ip, (what, ns));
        }
        for r in &plan.routers {
            for p in &r.ports {
                owners.insert(p.ip, (format!("{} of router {}", p.ifname, r.name), r.ns.clone()));
            }
        }
        for s in &plan.switches {
            if let Some(u) = &s.uplink {
                owners.insert(u.ip, (format!("the uplink of switch {}", s.name), u.ns.clone()));
            }
        }
        Lab {
            state,
            plan,
            owners,
            nat: Default::default(),
            views: Default::default(),
            recorded,
        }
    }

    /// The namespace's links, addresses and rules, read on its first visit.
    fn view(&self, ns: &str) -> Result<std::rc::Rc<View>> {
        if let Some(v) = self.views.borrow().get(ns) {
            return Ok(v.clone());
        }
        let d = match self.recorded {
            Some(dump) => dump.namespaces.get(ns).cloned().ok_or_else(|| {
                Error::usage(
                    format!("namespace {ns} is not in the recorded dump"),
                    "record the dump again from the whole lab",
                )
            })?,
            None => {
                let mut t = Target::new(ns);
                t.bird_socket = self.bird_socket(ns);
                crate::observe::collect::collect_blocking(t, Want { trace: true })?
            }
        };
        let v = std::rc::Rc::new(View::new(ns, d));
        self.views.borrow_mut().insert(ns.to_string(), v.clone());
        Ok(v)
    }

    /// The names of the lab's namespaces.
    fn namespaces(&self) -> Vec<String> {
        match self.recorded {
            Some(d) => d.namespaces.keys().cloned().collect(),
            None => netns::list(),
        }
    }

    fn place(&self, ns: &str) -> Place {
        for n in &self.plan.nodes {
            if n.ns == ns {
                return Place::Node(n.name.clone());
            }
            if let Some(p) = n.pods.iter().find(|p| p.ns == ns) {
                return Place::Pod {
                    node: n.name.clone(),
                    pod: p.name.clone(),
                };
            }
        }
        if let Some(r) = self.plan.routers.iter().find(|r| r.ns == ns) {
            return Place::Router(r.name.clone());
        }
        if let Some(s) = self
            .plan
            .switches
            .iter()
            .find(|s| s.uplink.as_ref().is_some_and(|u| u.ns == ns))
        {
            return Place::Uplink(s.name.clone());
        }
        for sw in &self.plan.switches {
            let leaf = paths::infra_ns(&self.plan.lab, &format!("upstream-{}-", sw.name));
            if ns
                .strip_prefix(&leaf)
                .is_some_and(|i| i.chars().all(|c| c.is_ascii_digit()))
            {
                return Place::Leaf {
                    switch: sw.name.clone(),
                };
            }
        }
        Place::Fabric
    }

    fn label(&self, ns: &str, bridge: Option<&str>) -> String {
        match self.place(ns) {
            Place::Pod { node, pod } => format!("{node}/{pod}"),
            Place::Node(n) => n,
            Place::Router(r) => format!("router {r}"),
            Place::Uplink(s) => format!("uplink of switch {s}"),
            Place::Fabric => format!("switch {}", bridge.unwrap_or("?")),
            Place::Leaf { switch } => format!("switch {switch} (upstream leaf)"),
        }
    }

    /// The other end of veth `dev` in `view`: its namespace and name, by
    /// the peer's namespace id and interface index, as the kernel records them.
    /// Also returns the far end's MAC.
    fn peer(&self, view: &View, dev: &str) -> Option<(String, String, Option<String>)> {
        let l = view.link(dev)?;
        let other = l.peer?;
        // A peer in the same namespace has no namespace id, and ip names it
        // rather than giving its index: it is not followed.
        let ns = match l.peer_netnsid? {
            id if id < 0 => view.name().to_string(),
            id => view.d.nsids.get(&id)?.clone(),
        };
        let far = self.view(&ns).ok()?;
        let link = far.d.link_at(other)?;
        Some((ns, link.name.clone(), link.mac.clone()))
    }

    /// The control socket of the BIRD of the node or router in `ns`.
    fn bird_socket(&self, ns: &str) -> Option<std::path::PathBuf> {
        let owner = match self.place(ns) {
            Place::Node(n) | Place::Router(n) => n,
            _ => return None,
        };
        let paths = self.state.paths();
        let spec = self
            .plan
            .profile
            .agents(self.plan, &paths)
            .into_iter()
            .find(|a| a.owner == owner && a.name == "bird")?;
        Some(spec.ready)
    }

    /// BIRD's own entry for `prefix` in the BIRD of the node or router in `ns`.
    fn bird_route(&self, ns: &str, prefix: &str) -> Option<crate::kernel::bird::BgpRoute> {
        let view = self.view(ns).ok()?;
        view.d.bgp_routes.iter().find(|r| r.prefix == prefix).cloned()
    }

    fn owner(&self, ip: Ipv4Addr) -> Option<&(String, String)> {
        self.owners.get(&ip)
    }

    fn faults_on(&self, ns: &str) -> Vec<String> {
        let target = match self.place(ns) {
            Place::Pod { node, pod } => format!("{node}/{pod}"),
            Place::Node(n) => n,
            Place::Router(r) => r,
            _ => return Vec::new(),
        };
        self.state
            .faults
            .iter()
            .filter(|f| f.spec.on() == target)
            .map(|f| format!("active fault {}: {}", f.id, f.spec.describe()))
            .collect()
    }
}

/// Traces one packet of `size` bytes from `from` to `to`, and its reply:
/// an ICMP echo, or a UDP or TCP packet to a port.
pub fn trace(state: &LabState, from: &str, to: &str, size: u32, proto: Proto) -> Result<Trace> {
    run(state, None, from, to, size, proto)
}

/// Traces a packet through a recorded dump of the lab instead of the
/// kernel: a pure function of the state and the dump.
pub fn trace_dump(state: &LabState, dump: &Dump, from: &str, to: &str, size: u32, proto: Proto) -> Result<Trace> {
    run(state, Some(dump), from, to, size, proto)
}

fn run(state: &LabState, dump: Option<&Dump>, from: &str, to: &str, size: u32, proto: Proto) -> Result<Trace> {
    if !(28..=65535).contains(&size) {
        return Err(Error::usage(
            format!("--size {size} is not an IPv4 packet size"),
            "give the IP packet's size in bytes, 28 to 65535 (a default ping is 84)",
        ));
    }
    let src = crate::observe::probe::source(state, from)?;
    let dst = crate::observe::probe::dest(state, to)?;
    let lab = Lab::new(state, dump);
    let start = lab.view(&src.ns)?;
    let src_ip = start
        .d
        .route_get(dst.ip, None, None)
        .ok()
        .and_then(|r| r.prefsrc)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    drop(start);
    let mut t = Trace {
        from: from.to_string(),
        to: to.to_string(),
        src: src_ip,
        dst: dst.ip,
        size,
        proto: proto_text(proto),
        hops: Vec::new(),
        reply: Vec::new(),
        delivered: false,
        dropped: None,
        verdict: String::new(),
    };
    let mut pkt = Packet {
        src: src_ip,
        dst: dst.ip,
        size,
        udp_port: None,
        inner: None,
        inner_mac: None,
        l2_via: None,
        proto,
        established: false,
    };
    let there = match follow(&lab, &src.ns, &mut pkt, &mut t.hops)? {
        End::Arrived(ns) => ns,
        End::Stopped(why) => {
            t.dropped = dropped("request", &t.hops, &why);
            t.verdict = why;
            return Ok(t);
        }
    };
    let arrived = lab.label(&there, None);
    // The destination answers from the address the request reached.
    let mut back = pkt.reply();
    match follow(&lab, &there, &mut back, &mut t.reply)? {
        End::Arrived(ns) if ns == src.ns => {
            t.delivered = true;
            t.verdict = format!(
                "delivered to {arrived}, and the reply came back to {}",
                lab.label(&ns, None)
            );
            if !matches!(proto, Proto::Icmp(_)) {
                t.verdict
                    .push_str(" (the path both ways; whether a socket listens on that port is not checked)");
            }
            let maybe = t
                .hops
                .iter()
                .chain(&t.reply)
                .flat_map(|h| &h.notes)
                .filter(|n| n.starts_with("may match"))
                .count();
            if maybe > 0 {
                t.verdict.push_str(&format!(
                    "; but {maybe} iptables rule(s) on the way may match (see the notes): the packet may still be dropped"
                ));
            }
        }
        End::Arrived(ns) => {
            t.verdict = format!(
                "the request reached {arrived}, but the reply to {} went to {}, not to {}",
                back.dst,
                lab.label(&ns, None),
                lab.label(&src.ns, None)
            );
        }
        End::Stopped(why) => {
            t.dropped = dropped("reply", &t.reply, &why);
            t.verdict = format!("the request reached {arrived}, but the reply does not come back: {why}");
        }
    }
    Ok(t)
}

/// Where one direction ends.
enum End {
    /// In this namespace, which owns the destination address.
    Arrived(String),
    /// Dropped, or out of the lab, or a loop: the verdict in words.
    Stopped(String),
}

/// The drop at the last of `hops`, if that hop drops the packet.
fn dropped(direction: &str, hops: &[Hop], verdict: &str) -> Option<Dropped> {
    let h = hops.last()?;
    let why = h.drop.clone()?;
    let nf = h.netfilter.as_ref();
    Some(Dropped {
        direction: direction.to_string(),
        hop: hops.len(),
        at: h.at.clone(),
        table: nf.map(|n| n.table.clone()),
        chain: nf.map(|n| n.chain.clone()),
        rule: nf.map(|n| n.rule.clone()),
        why: if why.is_empty() { verdict.to_string() } else { why },
    })
}

/// Follows `pkt` from namespace `start`, which sends it, hop by hop.
fn follow(lab: &Lab, start: &str, pkt: &mut Packet, hops: &mut Vec<Hop>) -> Result<End> {
    let mut at = start.to_string();
    let mut dev_in: Option<String> = None;
    let mut via: Option<Ipv4Addr> = None;
    for _ in 0..MAX_HOPS {
        let view = lab.view(&at)?;
        let first = hops.last().is_none_or(|h| h.ns != at);
        let step = visit(lab, &view, dev_in.as_deref(), via, first, pkt)?;
        let hop_at = step.hop.at.clone();
        let dropped = step.hop.drop.clone();
        hops.push(step.hop);
        if let Some(why) = dropped {
            return Ok(End::Stopped(format!("dropped at {hop_at}: {why}")));
        }
        match step.next {
            Next::Delivered => return Ok(End::Arrived(at)),
            Next::Leaves(why) => return Ok(End::Stopped(why)),
            Next::Go { ns, dev, via: v } => {
                at = ns;
                dev_in = dev;
                via = v;
            }
        }
    }
    Ok(End::Stopped(format!(
        "gave up after {MAX_HOPS} hops: a forwarding loop?"
    )))
}

enum Next {
    Delivered,
    Leaves(String),
    /// On to namespace `ns`, arriving on `dev` (none: sent by `ns` itself),
    /// in a frame for the owner of `via` (the next hop's address).
    Go {
        ns: String,
        dev: Option<String>,
        via: Option<Ipv4Addr>,
    },
}

struct Step {
    hop: Hop,
    next: Next,
}

fn hop(lab: &Lab, view: &View, dev_in: Option<&str>, pkt: &Packet, bridge: Option<&str>) -> Hop {
    Hop {
        at: lab.label(view.name(), bridge),
        ns: view.name().to_string(),
        dev_in: dev_in.map(str::to_string),
        dev_out: None,
        mtu: None,
        size: pkt.size,
        packet: pkt.describe(),
        entries: Vec::new(),
        notes: lab.faults_on(view.name()),
        drop: None,
        netfilter: None,
    }
}

/// One namespace: what the kernel does with the packet there.
fn visit(
    lab: &Lab,
    view: &View,
    dev_in: Option<&str>,
    via: Option<Ipv4Addr>,
    first: bool,
    pkt: &mut Packet,
) -> Result<Step> {
    if matches!(lab.place(view.name()), Place::Fabric | Place::Leaf { .. }) {
        return switch(lab, view, dev_in.unwrap_or(""), via.unwrap_or(pkt.dst), pkt);
    }
    let mut h = hop(lab, view, dev_in, pkt, None);
    if !first {
        h.notes.clear();
    }
    if let Some(q) = netem(view, None).filter(|_| first) {
        h.entries.push(q);
        h.notes.push("netem drops or delays a share of packets here".into());
    }
    let l3_in = match dev_in {
        None => None,
        Some(i) => match arrive(lab, view, &mut h, i, via, pkt)? {
            Arrival::Ip(l3) => Some(l3),
            Arrival::Done(next) => return Ok(Step { hop: h, next }),
        },
    };
    if let Some(dev) = view.local(pkt.dst) {
        return deliver(lab, view, h, l3_in.as_deref(), &dev, pkt);
    }
    route_out(lab, view, h, l3_in, pkt)
}

/// What happens to a packet that arrives on an interface.
enum Arrival {
    /// IP takes it from this interface (the bridge, for a bridge port).
    Ip(String),
    /// It goes no further through IP here: dropped, or bridged on.
    Done(Next),
}

/// The packet comes in on `dev`: the link, the bridge it may belong to,
/// PREROUTING, conntrack's undoing of NAT for a reply, and rp_filter.
fn arrive(lab: &Lab, view: &View, h: &mut Hop, dev: &str, via: Option<Ipv4Addr>, pkt: &mut Packet) -> Result<Arrival> {
    let stop = Ok(Arrival::Done(Next::Delivered));
    if !view.up(dev) {
        h.drop = Some(format!("{dev} is down"));
        return stop;
    }
    if let Some(m) = view.mtu(dev) {
        if pkt.size > m {
            h.drop = Some(format!(
                "{} bytes arrive on {dev}, whose MTU is {m}: a veth drops what does not fit its receiving end",
                pkt.size
            ));
            return stop;
        }
    }
    let master = view.master(dev);
    let l3 = match master {
        Some(br) if via.is_some_and(|v| view.local(v).is_none()) => {
            return bridged(lab, view, h, dev, &br, via.unwrap_or(pkt.dst), pkt).map(Arrival::Done);
        }
        // A bridge port hands frames for the bridge's own MAC up to the
        // bridge, which is where IP sees them arrive.
        Some(br) => {
            h.notes.push(format!(
                "{dev} is a port of bridge {br}: the frame is for {br}'s MAC, so IP takes it from {br}"
            ));
            br
        }
        None => dev.to_string(),
    };
    if netfilter(lab, view, h, pkt, PREROUTING, Some(&l3), None, "on arrival") {
        return stop;
    }
    if pkt.established {
        unnat(lab, view, h, pkt);
    }
    if rp_filtered(view, h, pkt, &l3) {
        return stop;
    }
    Ok(Arrival::Ip(l3))
}

/// Conntrack undoes on a reply the rewrite the nat table did on its request here.
fn unnat(lab: &Lab, view: &View, h: &mut Hop, pkt: &mut Packet) {
    for (ns, source, before, after) in lab.nat.borrow().iter() {
        if ns != view.name() {
            continue;
        }
        if *source && pkt.dst == *after {
            h.notes.push(format!(
                "conntrack undoes the request's source NAT: destination {after} becomes {before} again"
            ));
            pkt.dst = *before;
        } else if !*source && pkt.src == *after {
            h.notes.push(format!(
                "conntrack undoes the request's destination NAT: source {after} becomes {before} again"
            ));
            pkt.src = *before;
        }
    }
}

/// Reverse-path filtering: with rp_filter 1 (strict) the route back to the
/// source must leave by the interface the packet came in on; with 2
/// (loose) there must be a route back at all. True when it drops.
fn rp_filtered(view: &View, h: &mut Hop, pkt: &Packet, dev: &str) -> bool {
    let read = |k: &str| {
        view.sysctl(&format!("net/ipv4/conf/{k}/rp_filter"))
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0)
    };
    let (all, here) = (read("all"), read(dev));
    let mode = all.max(here);
    if mode == 0 {
        return false;
    }
    let rule = format!("rp_filter = {mode} on {dev} (the larger of all = {all} and {dev} = {here})");
    // The kernel's reverse lookup: to the source, from the destination,
    // as if sent from here (iif lo), mark 0 (src_valid_mark is off).
    match view.d.route_get(pkt.src, Some(pkt.dst), None) {
        Err(e) => {
            h.drop = Some(format!(
                "{rule}: there is no route back to the source {} ({e})",
                pkt.src
            ));
            true
        }
        Ok(r) if mode == 1 && r.dev.as_deref() != Some(dev) => {
            h.drop = Some(format!(
                "{rule}, strict: the route back to the source {} leaves by {}, not by {dev} where the packet came in, so the kernel drops it as spoofed",
                pkt.src,
                r.dev.as_deref().unwrap_or("?")
            ));
            true
        }
        Ok(_) => {
            h.notes.push(format!(
                "{rule}: the route back to {} passes the reverse-path check",
                pkt.src
            ));
            false
        }
    }
}

/// A frame not for the bridge's own MAC: the bridge forwards it to the port
/// that leads to `via`; with br_netfilter on, iptables sees it on the way.
fn bridged(lab: &Lab, view: &View, h: &mut Hop, port: &str, br: &str, via: Ipv4Addr, pkt: &mut Packet) -> Result<Next> {
    h.notes.push(format!(
        "{port} is a port of bridge {br} and the frame is for {via}, not for {br}: the bridge forwards it"
    ));
    let owner = lab.owner(via).map(|o| o.1.clone());
    let out = bridge_ports(view, br)
        .into_iter()
        .find(|p| p != port && lab.peer(view, p).is_some_and(|(ns, ..)| Some(&ns) == owner.as_ref()));
    let overlay = lab
        .state
        .plan
        .profile
        .bridge_overlay()
        .filter(|o| o.bridge == br && o.port != port);
    let Some(out) = out else {
        if let Some(o) = overlay {
            return bridge_overlay(lab, view, h, o, via, pkt);
        }
        h.drop = Some(format!("no port of {br} leads to {via}"));
        return Ok(Next::Delivered);
    };
    h.dev_out = Some(format!("{br} port {out}"));
    h.mtu = view.mtu(&out);
    if view.sysctl("net/bridge/bridge-nf-call-iptables").as_deref() == Some("1") {
        h.notes.push(format!(
            "bridge-nf-call-iptables = 1: iptables sees the bridged packet, in and out {br}"
        ));
        let chains = [PREROUTING, FORWARD, POSTROUTING].concat();
        if netfilter(
            lab,
            view,
            h,
            pkt,
            &chains,
            Some(br),
            Some(br),
            "as the bridge forwards it",
        ) {
            return Ok(Next::Delivered);
        }
    }
    Ok(match lab.peer(view, &out) {
        Some((ns, dev, _)) => Next::Go {
            ns,
            dev: Some(dev),
            via: Some(via),
        },
        None => Next::Leaves(format!("leaves through {out}, whose other end is outside the lab")),
    })
}

/// A frame for `via`, which no port of the bridge leads to: it goes out
/// the overlay's port to the node's router, which sends it in UDP from its
/// node's address to the node that has `via` (Weave's sleeve), unless the
/// router is stopped. The outer packet then leaves through this node's own
/// stack, where iptables may drop it.
fn bridge_overlay(
    lab: &Lab,
    view: &View,
    h: &mut Hop,
    o: crate::profile::BridgeOverlay,
    via: Ipv4Addr,
    pkt: &mut Packet,
) -> Result<Next> {
    let node_of = |ns: &str| match lab.place(ns) {
        Place::Pod { node, .. } | Place::Node(node) => Some(node),
        _ => None,
    };
    let plan = &lab.state.plan;
    let here = node_of(view.name()).and_then(|n| plan.node(&n));
    let owner = lab.owner(via).cloned();
    let there = owner
        .as_ref()
        .and_then(|(_, ns)| node_of(ns))
        .and_then(|n| plan.node(&n));
    h.dev_out = Some(format!("{} port {}", o.bridge, o.port));
    h.notes.push(format!(
        "no pod port of {} leads to {via}: the frame goes out {} to {}, where {} captures it",
        o.bridge, o.port, o.router_end, o.agent
    ));
    let (Some(here), Some(there)) = (here, there) else {
        h.drop = Some(format!(
            "{} floods the frame for {via} to every peer, but no node of the lab has {via}",
            o.agent
        ));
        return Ok(Next::Delivered);
    };
    let stopped = |node: &str| {
        lab.state
            .faults
            .iter()
            .find(|f| matches!(f.spec, crate::model::faultspec::FaultSpec::AgentDown { .. }) && f.spec.on() == node)
    };
    for n in [&here.name, &there.name] {
        if let Some(f) = stopped(n) {
            h.drop = Some(format!(
                "{} on {n} is stopped (active fault {}): nothing carries the frame between {} and {}",
                o.agent, f.id, here.name, there.name
            ));
            return Ok(Next::Delivered);
        }
    }
    let outer = pkt.size + o.overhead;
    h.notes.push(format!(
        "{via} is on {}: {} sends the frame in UDP {} from {} to {}; {} + {} = {outer} bytes on the underlay",
        there.name, o.agent, o.udp_port, here.ip, there.ip, pkt.size, o.overhead
    ));
    let inner = std::mem::replace(
        pkt,
        Packet {
            src: here.ip,
            dst: there.ip,
            size: outer,
            udp_port: Some(o.udp_port),
            inner: None,
            inner_mac: None,
            l2_via: Some(via),
            proto: Proto::Udp {
                sport: Some(o.udp_port),
                dport: Some(o.udp_port),
            },
            established: false,
        },
    );
    pkt.inner = Some(Box::new((inner, 0)));
    Ok(Next::Go {
        ns: view.name().to_string(),
        dev: None,
        via: None,
    })
}

/// Addressed to this namespace: INPUT, then delivered or decapsulated.
fn deliver(lab: &Lab, view: &View, mut h: Hop, l3_in: Option<&str>, dev: &str, pkt: &mut Packet) -> Result<Step> {
    let done = |h: Hop, next: Next| Ok(Step { hop: h, next });
    if l3_in.is_some() && netfilter(lab, view, &mut h, pkt, INPUT, l3_in, None, "as it is delivered here") {
        return done(h, Next::Delivered);
    }
    let Some(port) = pkt.udp_port else {
        h.notes.push(format!("{} is the address of {dev} here", pkt.dst));
        return done(h, Next::Delivered);
    };
    if let Some(o) = lab
        .state
        .plan
        .profile
        .bridge_overlay()
        .filter(|o| o.udp_port == port && pkt.l2_via.is_some())
    {
        let via = pkt.l2_via.unwrap_or(pkt.dst);
        let (inner, _) = *pkt.inner.take().expect("outer packets carry one");
        h.notes.push(format!(
            "{} here receives UDP {port} and injects the frame for {via} into {} through {} -> {}",
            o.agent, o.bridge, o.router_end, o.port
        ));
        *pkt = inner;
        return done(
            h,
            Next::Go {
                ns: view.name().to_string(),
                dev: Some(o.port.to_string()),
                via: Some(via),
            },
        );
    }
    let vx = view
        .d
        .links
        .iter()
        .find(|l| l.kind == "vxlan" && l.vxlan.as_ref().and_then(|v| v.port) == Some(port));
    let (inner, vni) = *pkt.inner.take().expect("outer packets carry one");
    let Some(l) = vx else {
        h.drop = Some(format!(
            "nothing listens on UDP {port} here: no VXLAN device with that port"
        ));
        return done(h, Next::Delivered);
    };
    let name = l.name.clone();
    let mine = l.mac.as_deref().unwrap_or("");
    if let Some(want) = pkt.inner_mac.as_deref().filter(|m| *m != mine) {
        h.drop = Some(format!(
            "{name} decapsulates it, but the inner frame is for MAC {want} and {name} here has MAC {mine}: the sender's neighbour and FDB entries still name an old VTEP (stale until the agent resyncs), so IP discards the frame as not its own"
        ));
        return done(h, Next::Delivered);
    }
    h.notes.push(format!(
        "UDP {port} to {} is decapsulated by {name} (VNI {vni}); the inner {} -> {} enters as if {name} received it",
        pkt.dst, inner.src, inner.dst
    ));
    *pkt = inner;
    done(
        h,
        Next::Go {
            ns: view.name().to_string(),
            dev: Some(name),
            via: None,
        },
    )
}

/// Not for this namespace: forwarded (it came in on `l3_in`) or sent by it.
fn route_out(lab: &Lab, view: &View, mut h: Hop, l3_in: Option<String>, pkt: &mut Packet) -> Result<Step> {
    let done = |h: Hop, next: Next| Ok(Step { hop: h, next });
    let forwarding = l3_in.is_some();
    if forwarding && view.sysctl("net/ipv4/ip_forward").as_deref() == Some("0") {
        h.drop = Some(format!(
            "net.ipv4.ip_forward = 0 here: the kernel does not forward packets that arrive on {}",
            l3_in.as_deref().unwrap_or("")
        ));
        return done(h, Next::Delivered);
    }
    // The rules and table entry, then the kernel's full decision. The
    // source takes part in the rules (a connected socket's second lookup
    // has it too); only a forwarded packet's source is validated.
    let from = (!pkt.src.is_unspecified()).then_some(pkt.src);
    let mark = mark_known(view);
    let decision = view.d.decide(pkt.dst, from, l3_in.as_deref(), mark);
    if let Some(rule) = decision.rule.as_ref().filter(|r| !r.is_default()) {
        h.entries.push(format!("rule {}", rule.text()));
    }
    h.notes.extend(decision.notes.iter().cloned());
    let entry = match decision.route {
        Ok(e) => e,
        Err(e) => {
            h.drop = Some(match decision.rule.filter(|r| !r.is_default()) {
                Some(rule) => format!("rule {} refuses it ({e})", rule.text()),
                None => format!("no route to {} ({e})", pkt.dst),
            });
            return done(h, Next::Delivered);
        }
    };
    h.entries.push(format!("route {}", route_text(view, entry)));
    if [RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT].contains(&entry.kind) {
        let t = type_name(entry.kind);
        let why = match (entry.kind, entry.protocol) {
            (RTN_BLACKHOLE, RTPROT_BIRD) => format!(
                "the {t} route for {} matches: BIRD installs it for this node's own block, and no pod here has {}",
                dst_text(entry),
                pkt.dst
            ),
            _ => format!("the {t} route {} matches", route_text(view, entry)),
        };
        h.drop = Some(why);
        return done(h, Next::Delivered);
    }
    let checked = if forwarding { from } else { None };
    let r = match view
        .d
        .route_get_marked(pkt.dst, from, l3_in.as_deref().filter(|_| checked.is_some()), mark)
    {
        Ok(r) => r,
        Err(e) => {
            h.drop = Some(format!("the kernel refuses to route it: {e}"));
            return done(h, Next::Delivered);
        }
    };
    let Some(out) = r.dev.clone() else {
        h.drop = Some("the route names no device".into());
        return done(h, Next::Delivered);
    };
    bird_notes(lab, view, &mut h, entry, r.gateway);
    h.dev_out = Some(out.clone());
    let gw: Ipv4Addr = r.gateway.unwrap_or(pkt.dst);
    let mtu = entry.mtu.or_else(|| view.mtu(&out));
    h.mtu = mtu;
    if !view.up(&out) {
        h.drop = Some(format!("{out} is down"));
        return done(h, Next::Delivered);
    }
    if let Some(m) = mtu {
        if pkt.size > m {
            h.drop = Some(if forwarding {
                format!(
                    "{} bytes do not fit {out}'s MTU {m} and DF is set: the kernel drops it and sends ICMP \"fragmentation needed, mtu {m}\" to {}",
                    pkt.size, pkt.src
                )
            } else {
                format!(
                    "{} bytes do not fit {out}'s MTU {m}: the sender's own kernel refuses a DF packet that size (EMSGSIZE, ping says \"message too long, mtu={m}\")",
                    pkt.size
                )
            });
            return done(h, Next::Delivered);
        }
    }
    let (chains, when) = match forwarding {
        true => (FORWARD, "as it is forwarded"),
        false => (OUTPUT, "as it is sent"),
    };
    if netfilter(lab, view, &mut h, pkt, chains, l3_in.as_deref(), Some(&out), when)
        || netfilter(lab, view, &mut h, pkt, POSTROUTING, None, Some(&out), "on its way out")
    {
        return done(h, Next::Delivered);
    }
    if let Some(q) = netem(view, Some(&out)).filter(|q| q.contains("loss 100%")) {
        h.entries.push(q);
        h.drop = Some(format!("netem on {out} drops every packet it sends (loss 100%)"));
        return done(h, Next::Delivered);
    }
    if view.kind(&out) == "vxlan" {
        return encapsulate(lab, view, h, &out, gw, pkt);
    }
    if view.kind(&out) == "tun" {
        return done(h, into_tun(lab, view, &out, pkt));
    }
    link_layer(lab, view, h, &out, gw, pkt)
}

/// Sent into a TUN device: no neighbour, no wire; the kernel hands the
/// packet to the process that holds the device, whose forwarding no
/// kernel table shows, so the trace ends here and says so.
fn into_tun(lab: &Lab, view: &View, dev: &str, pkt: &Packet) -> Next {
    let how = lab
        .plan
        .profile
        .tunnel_label()
        .map_or(String::new(), |l| format!(" (here: {l})"));
    Next::Leaves(format!(
        "the trace stops at {dev} on {}: it is a TUN device, so the kernel hands {} -> {} to the userspace program that holds it{how}, and where that program sends it is in no kernel table trace reads; `cnilab capture` on the nodes' eth0 shows the wire, `cnilab probe ping` whether it arrives",
        lab.label(view.name(), None),
        pkt.src,
        pkt.dst
    ))
}

/// Where BIRD learned the route the kernel uses, for a route BIRD wrote.
fn bird_notes(lab: &Lab, view: &View, h: &mut Hop, e: &Route, gateway: Option<Ipv4Addr>) {
    {
        if e.protocol == RTPROT_BIRD {
            let prefix = &dst_text(e);
            if let Some(b) = lab.bird_route(view.name(), prefix) {
                h.entries.push(format!(
                    "bird {} via {} from session {} (origin {}, AS path [{}])",
                    b.prefix, b.via, b.from, b.origin, b.as_path
                ));
            }
            let by = gateway.map_or("a BGP peer".to_string(), |g| match lab.owner(g) {
                Some((_, ns)) => format!("{} ({g})", lab.label(ns, None)),
                None => g.to_string(),
            });
            h.notes.push(format!(
                "learned over BGP: {by} announced {prefix}, and BIRD's kernel protocol wrote the route (proto bird)"
            ));
        }
    }
}

/// The neighbour entry for `gw` on `dev` (what `ip neigh show GW dev DEV` lists first).
fn neighbour<'v>(view: &'v View, gw: Ipv4Addr, dev: &str) -> Option<&'v Neigh> {
    let index = view.link(dev)?.index;
    view.d
        .neighbours
        .iter()
        .find(|n| n.dst == Some(gw) && n.ifindex == index)
}

fn neigh_text(n: &Neigh, gw: Ipv4Addr, dev: &str) -> String {
    let state = neigh_states(n).join(",");
    match &n.lladdr {
        Some(mac) => format!("neigh {gw} dev {dev} lladdr {mac} {state}"),
        None => format!("neigh {gw} dev {dev} {state}"),
    }
}

/// Sending through a VXLAN device: the neighbour gives the remote VTEP's
/// MAC, the FDB the remote VTEP's address; the packet gets its outer header.
fn encapsulate(lab: &Lab, view: &View, mut h: Hop, dev: &str, gw: Ipv4Addr, pkt: &mut Packet) -> Result<Step> {
    let info = view.link(dev).and_then(|l| l.vxlan.clone()).unwrap_or_default();
    let vni = info.id.unwrap_or(0);
    let port = info.port.unwrap_or(4789);
    let local: Option<Ipv4Addr> = info.local;
    let Some(n) = neighbour(view, gw, dev).filter(|n| n.lladdr.is_some()) else {
        h.drop = Some(format!(
            "no neighbour entry for {gw} on {dev}: the agent writes one per remote node (flannel: per lease) and {dev} does not ARP; is the agent running?"
        ));
        return Ok(Step {
            hop: h,
            next: Next::Delivered,
        });
    };
    h.entries.push(neigh_text(n, gw, dev));
    if n.state & NUD_PERMANENT != 0 {
        h.notes.push(format!(
            "{dev} does no ARP: the agent wrote this neighbour and the FDB entry below for the remote node"
        ));
    }
    let mac = n.lladdr.clone().unwrap_or_default();
    let index = view.link(dev).map(|l| l.index);
    let entry = view
        .d
        .fdb
        .iter()
        .find(|e| Some(e.ifindex) == index && e.mac.as_deref() == Some(mac.as_str()) && e.dst.is_some());
    let Some(e) = entry else {
        h.drop = Some(format!(
            "no FDB entry for {mac} on {dev}: the kernel does not know which node has that VTEP (learning is off)"
        ));
        return Ok(Step {
            hop: h,
            next: Next::Delivered,
        });
    };
    let remote: Ipv4Addr = e.dst.unwrap_or(Ipv4Addr::UNSPECIFIED);
    h.entries.push(
        format!("fdb {mac} dev {dev} dst {remote} {}", fdb_state(e.state))
            .trim_end()
            .to_string(),
    );
    let outer = pkt.size + VXLAN_OVERHEAD;
    h.notes.push(format!(
        "encapsulated by {dev}: outer {} -> {remote} UDP dport {port} VNI {vni}; {} + {VXLAN_OVERHEAD} = {outer} bytes on the underlay",
        local.map_or("?".to_string(), |l| l.to_string()),
        pkt.size
    ));
    if let Some(o) = lab.owner(remote) {
        h.notes.push(format!("{remote} is {}", o.0));
    }
    let inner = std::mem::replace(
        pkt,
        Packet {
            src: local.unwrap_or(Ipv4Addr::UNSPECIFIED),
            dst: remote,
            size: outer,
            udp_port: Some(port),
            inner: None,
            inner_mac: Some(mac.clone()),
            l2_via: None,
            // The source port is a hash of the inner flow: rules on it "may match".
            proto: Proto::Udp {
                sport: None,
                dport: Some(port),
            },
            established: false,
        },
    );
    pkt.inner = Some(Box::new((inner, vni)));
    // The outer packet is sent by this namespace's own stack: one more
    // route lookup here, shown as its own hop.
    Ok(Step {
        hop: h,
        next: Next::Go {
            ns: view.name().to_string(),
            dev: None,
            via: None,
        },
    })
}

/// The neighbour entry for `gw` on `dev`, or the ARP it needs: true when
/// nobody will answer (then `h` says why).
fn neighbour_fails(lab: &Lab, h: &mut Hop, n: Option<&Neigh>, gw: Ipv4Addr, dev: &str) -> bool {
    let states = neigh_states;
    match n {
        // A failed entry is only the last attempt: the next packet makes the
        // kernel ask again, and an owner in the lab that answers ARP now replies.
        Some(n)
            if states(n).iter().any(|s| s == "FAILED" || s == "INCOMPLETE")
                && lab.owner(gw).is_some()
                && arp_silent(lab, gw).is_none() =>
        {
            h.entries.push(neigh_text(n, gw, dev));
            h.notes.push(format!(
                "the last ARP for {gw} went unanswered ({}), but its owner answers ARP now: the kernel asks again for this packet",
                states(n).join(",")
            ));
        }
        Some(n) if states(n).iter().any(|s| s == "FAILED" || s == "INCOMPLETE") => {
            h.entries.push(neigh_text(n, gw, dev));
            h.drop = Some(format!(
                "the neighbour entry for {gw} is {}: nobody answered ARP for it{}",
                states(n).join(","),
                arp_hint(lab, gw)
            ));
            return true;
        }
        Some(n) => h.entries.push(neigh_text(n, gw, dev)),
        None => {
            if let Some(why) = arp_silent(lab, gw) {
                h.drop = Some(format!(
                    "no neighbour entry for {gw} yet, and its ARP request goes unanswered: {why}"
                ));
                return true;
            }
            h.notes.push(format!(
                "no neighbour entry for {gw} yet: the kernel sends an ARP request first"
            ));
        }
    }
    false
}

/// Sending on an Ethernet-like device: resolve the next hop's MAC, then
/// follow the wire (a bridge port or a veth) to the namespace that gets it.
fn link_layer(lab: &Lab, view: &View, mut h: Hop, dev: &str, gw: Ipv4Addr, pkt: &mut Packet) -> Result<Step> {
    let stop = |h: Hop| {
        Ok(Step {
            hop: h,
            next: Next::Delivered,
        })
    };
    let n = neighbour(view, gw, dev);
    if neighbour_fails(lab, &mut h, n, gw, dev) {
        return stop(h);
    }
    if let Some(o) = lab.owner(gw) {
        h.notes.push(format!("next hop {gw} is {}", o.0));
    } else if view.kind(dev) == "veth" {
        // Nobody has the address: only proxy ARP on the far end answers.
        if let Some((ns, peer, mac)) = lab.peer(view, dev) {
            let far = lab.view(&ns).ok();
            let proxy = far.and_then(|f| f.sysctl(&format!("net/ipv4/conf/{peer}/proxy_arp")));
            let mac = mac.as_deref().unwrap_or("?");
            if proxy.as_deref() == Some("1") {
                h.notes.push(format!(
                    "{gw} is nobody's address: {peer} on {} has proxy_arp = 1 and answers ARP for it with its own MAC {mac} (Calico's gateway trick)",
                    lab.label(&ns, None)
                ));
            } else if n.is_none() {
                h.drop = Some(format!(
                    "{gw} is nobody's address and {peer} on {} has proxy_arp = {}: no one answers ARP for it",
                    lab.label(&ns, None),
                    proxy.unwrap_or_else(|| "?".into())
                ));
                return stop(h);
            }
        }
    }
    // The wire: a bridge sends out of the port that has the MAC; a veth to its peer.
    let mut out = dev.to_string();
    if view.kind(dev) == "bridge" {
        let mac = n.and_then(|n| n.lladdr.clone());
        let port = mac.as_deref().and_then(|m| fdb_port(view, dev, m));
        match (port, lab.owner(gw)) {
            (Some(p), _) => {
                h.entries
                    .push(format!("fdb {} dev {p} master {dev}", mac.as_deref().unwrap_or("")));
                out = p;
            }
            (None, Some((_, owner_ns))) => {
                // Not learned yet: the bridge floods; follow the port leading to the owner.
                let port = bridge_ports(view, dev)
                    .into_iter()
                    .find(|p| lab.peer(view, p).is_some_and(|(ns, ..)| &ns == owner_ns));
                let Some(p) = port else {
                    h.drop = Some(format!("no port of {dev} leads to {gw}"));
                    return stop(h);
                };
                h.notes.push(format!(
                    "{dev} has not learned that MAC yet: it floods, and {p} leads to {gw}"
                ));
                out = p;
            }
            (None, None) => {
                return Ok(Step {
                    hop: h,
                    next: Next::Leaves(format!("leaves through {dev} toward {gw}, outside the lab")),
                });
            }
        }
        if let Some(m) = view.mtu(&out) {
            if pkt.size > m {
                h.drop = Some(format!("{} bytes do not fit bridge port {out}'s MTU {m}", pkt.size));
                return stop(h);
            }
        }
    }
    match lab.peer(view, &out) {
        Some((ns, peer, _)) => {
            if out != dev {
                h.dev_out = Some(format!("{dev} port {out}"));
            }
            Ok(Step {
                hop: h,
                next: Next::Go {
                    ns,
                    dev: Some(peer),
                    via: Some(gw),
                },
            })
        }
        None => Ok(Step {
            hop: h,
            next: Next::Leaves(format!("leaves through {out}, whose other end is outside the lab")),
        }),
    }
}

const NUD_PERMANENT: u16 = 0x80;

/// A neighbour entry's states, as `ip neigh` names them: REACHABLE, STALE, FAILED...
fn neigh_states(n: &Neigh) -> Vec<String> {
    let names = [
        "INCOMPLETE",
        "REACHABLE",
        "STALE",
        "DELAY",
        "PROBE",
        "FAILED",
        "NOARP",
        "PERMANENT",
    ];
    if n.state == 0 {
        return vec!["NONE".into()];
    }
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| n.state & (1 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// An FDB entry's state as `bridge fdb` prints it.
fn fdb_state(state: u16) -> String {
    match state {
        s if s & NUD_PERMANENT != 0 => "permanent".into(),
        s if s & 0x40 != 0 => "static".into(),
        s if s & 0x04 != 0 => "stale".into(),
        s if s & 0x02 != 0 => String::new(),
        s => format!("{s:#x}"),
    }
}

/// Ports of a bridge in a view.
fn bridge_ports(view: &View, bridge: &str) -> Vec<String> {
    let Some(b) = view.link(bridge) else { return Vec::new() };
    view.d
        .links
        .iter()
        .filter(|l| l.master == Some(b.index))
        .map(|l| l.name.clone())
        .collect()
}

/// The FDB entries of `bridge`'s ports (not the bridge's own).
fn bridge_fdb<'v>(view: &'v View, bridge: &str) -> impl Iterator<Item = (&'v crate::observe::collect::Fdb, &'v str)> {
    let b = view.link(bridge).map(|l| l.index);
    view.d
        .fdb
        .iter()
        .filter(move |e| b.is_some() && e.master == b && Some(e.ifindex) != b)
        .filter_map(|e| Some((e, view.d.name_of(e.ifindex)?)))
}

/// Why a switch that checks sources (aws-vpc's VPC) drops a frame from a
/// node's port: its source address is not one the port's ENI holds, as
/// the bridge's neighbour table says.
fn source_check(lab: &Lab, view: &View, bridge: &str, port_in: &str, src: Ipv4Addr) -> Option<String> {
    let from_node = lab
        .peer(view, port_in)
        .is_some_and(|(ns, ..)| lab.plan.nodes.iter().any(|n| n.ns == ns));
    if !from_node || !lab.plan.profile.switch_checks_source() {
        return None;
    }
    let held = port_peer_mac(lab, view, port_in)
        .is_some_and(|mac| bridge_neighbour(view, bridge, src).is_some_and(|m| m == mac));
    (!held).then(|| {
        format!(
            "the VPC's source/dest check: {src} is not an address of the ENI behind port {port_in} (nftables bridge filter forward, \"VPC source/dest check\" drop)"
        )
    })
}

/// For an address no device of the plan holds, the bridge's neighbour
/// entry (answered by proxy ARP) and the port its static FDB entry puts
/// that MAC on.
fn neighbour_port(lab: &Lab, view: &View, bridge: &str, via: Ipv4Addr) -> Option<(String, String)> {
    if l2_target(lab, via).is_some() {
        return None;
    }
    let mac = bridge_neighbour(view, bridge, via)?;
    let out = fdb_port(view, bridge, &mac)?;
    Some((
        format!("neigh {via} lladdr {mac} dev {bridge} (answered by the bridge: proxy_arp)"),
        out,
    ))
}

/// The MAC the bridge's own neighbour table gives `ip` (the entries a
/// proxy_arp port is answered from).
fn bridge_neighbour(view: &View, bridge: &str, ip: Ipv4Addr) -> Option<String> {
    let b = view.link(bridge)?.index;
    view.d
        .neighbours
        .iter()
        .find(|n| n.ifindex == b && n.dst == Some(ip))
        .and_then(|n| n.lladdr.clone())
}

/// The MAC of the device at the other end of a switch port.
fn port_peer_mac(lab: &Lab, view: &View, port: &str) -> Option<String> {
    lab.peer(view, port)?.2
}

/// The bridge port an FDB entry puts `mac` on.
fn fdb_port(view: &View, bridge: &str, mac: &str) -> Option<String> {
    bridge_fdb(view, bridge)
        .find(|(e, _)| e.mac.as_deref() == Some(mac))
        .map(|(_, port)| port.to_string())
}

/// A MAC the bridge learned behind `port` (not the port's own).
fn bridge_fdb_for_port(view: &View, bridge: &str, port: &str) -> Option<String> {
    bridge_fdb(view, bridge)
        .find(|(e, p)| *p == port && e.state & NUD_PERMANENT == 0)
        .and_then(|(e, _)| e.mac.clone())
}

/// Why the owner of `ip` would not answer ARP for it, if it would not.
fn arp_silent(lab: &Lab, ip: Ipv4Addr) -> Option<String> {
    let (_, ns) = lab.owner(ip)?;
    let v = lab.view(ns).ok()?.sysctl("net/ipv4/conf/all/arp_ignore")?;
    (v == "8").then(|| {
        format!(
            "net.ipv4.conf.all.arp_ignore = 8 in {} (it answers no ARP)",
            lab.label(ns, None)
        )
    })
}

fn arp_hint(lab: &Lab, ip: Ipv4Addr) -> String {
    arp_silent(lab, ip).map_or(String::new(), |w| format!(" ({w})"))
}

/// The chains a packet crosses, in the kernel's order: arriving, delivered
/// here, forwarded, sent from here, and leaving.
const PREROUTING: &[(&str, &str)] = &[("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING")];
const INPUT: &[(&str, &str)] = &[("mangle", "INPUT"), ("filter", "INPUT"), ("nat", "INPUT")];
const FORWARD: &[(&str, &str)] = &[("mangle", "FORWARD"), ("filter", "FORWARD")];
const OUTPUT: &[(&str, &str)] = &[
    ("raw", "OUTPUT"),
    ("mangle", "OUTPUT"),
    ("nat", "OUTPUT"),
    ("filter", "OUTPUT"),
];
const POSTROUTING: &[(&str, &str)] = &[("mangle", "POSTROUTING"), ("nat", "POSTROUTING")];

/// Runs the packet through `list` here; true when one drops it, and then
/// the hop names the table, chain and rule or policy. A rule cnilab cannot
/// decide becomes a "may match" note; a nat rule rewrites the packet and is
/// remembered for the reply.
#[allow(clippy::too_many_arguments)]
fn netfilter(
    lab: &Lab,
    view: &View,
    h: &mut Hop,
    pkt: &mut Packet,
    list: &[(&str, &str)],
    iif: Option<&str>,
    oif: Option<&str>,
    when: &str,
) -> bool {
    let rules = view.iptables();
    let local = view.addresses();
    for (table, chain) in list {
        // Only a connection's first packet meets the nat table; conntrack applies its decision to the rest.
        if *table == "nat" && pkt.established {
            continue;
        }
        let p = iptables::Packet {
            src: pkt.src,
            dst: pkt.dst,
            proto: pkt.proto,
            iif,
            oif,
            established: pkt.established,
            local: &local,
        };
        let Some(v) = rules.judge(table, chain, &p) else {
            continue;
        };
        for m in &v.maybe {
            let random = if m.contains("statistic") {
                ", a random share"
            } else {
                ""
            };
            h.notes.push(format!(
                "may match (cnilab cannot decide all its matches{random}): iptables -t {m}"
            ));
        }
        let by_policy = v.rule.starts_with("policy ");
        marked_path(h, &v, chain, by_policy);
        if !v.passes {
            h.entries.push(match by_policy {
                true => format!("iptables -t {} -P {} {}", v.table, v.chain, &v.rule[7..]),
                false => format!("iptables -t {} {}", v.table, v.rule),
            });
            h.drop = Some(format!(
                "iptables drops {} {when}: table {}, chain {}, {}",
                proto_text(pkt.proto),
                v.table,
                v.chain,
                v.rule
            ));
            h.netfilter = Some(Netfilter {
                table: v.table,
                chain: v.chain,
                rule: v.rule,
            });
            return true;
        }
        if !by_policy {
            h.entries.push(format!("iptables -t {} {}", v.table, v.rule));
        }
        if let Some((source, to)) = v.nat {
            let new = to.or_else(|| oif.and_then(|o| view.address_of(o)));
            let Some(new) = new else { continue };
            let old = if source { pkt.src } else { pkt.dst };
            let side = if source { "source" } else { "destination" };
            h.notes
                .push(format!("the nat table rewrites the {side}: {old} becomes {new}"));
            lab.nat.borrow_mut().push((view.name().to_string(), source, old, new));
            if source {
                pkt.src = new;
            } else {
                pkt.dst = new;
            }
        }
    }
    false
}

/// Where a table decided by marks (a policy engine's chains: felix), the
/// rules that acted on the packet on the way, as entries (the deciding rule
/// is added after them by the caller), and the chains they are in, in
/// order, as a note. Tables that set no mark are left as they were.
fn marked_path(h: &mut Hop, v: &iptables::Verdict, builtin: &str, by_policy: bool) {
    if !v.by_marks() {
        return;
    }
    let mut steps = v.path.as_slice();
    if let Some((last, before)) = steps.split_last() {
        if !by_policy && last.rule == v.rule {
            steps = before;
        }
    }
    for s in steps {
        h.entries.push(format!("iptables -t {} {}", v.table, s.rule));
    }
    let outcome = match (v.passes, by_policy) {
        (true, false) => "accepted",
        (false, false) => "dropped",
        (true, true) => "accepted by the policy",
        (false, true) => "dropped by the policy",
    };
    h.notes.push(format!(
        "iptables {} {builtin}: the rules that acted are in {}; {outcome} in chain {} with mark {:#x}",
        v.table,
        v.chains.join(" > "),
        v.chain,
        v.mark
    ));
}

/// A netem qdisc here (on `dev`, or on any device), as `tc qdisc` prints it.
fn netem(view: &View, dev: Option<&str>) -> Option<String> {
    let all = view.d.qdiscs.as_deref().unwrap_or("");
    all.lines()
        .find(|l| l.contains("netem") && dev.is_none_or(|d| l.contains(&format!(" dev {d} "))))
        .map(|l| format!("qdisc {}", l.trim_start_matches("qdisc ").trim()))
}

/// A switch: the fabric namespace's bridge, or the leaves of an upstream
/// VXLAN fault that now carry its ports.
fn switch(lab: &Lab, view: &View, port_in: &str, via: Ipv4Addr, pkt: &mut Packet) -> Result<Step> {
    let bridge = view.master(port_in).unwrap_or_default();
    let switch_name = match lab.place(view.name()) {
        Place::Leaf { switch } => switch,
        _ => bridge.clone(),
    };
    let mut h = hop(lab, view, Some(port_in), pkt, Some(&switch_name));
    h.at = format!("switch {switch_name}");
    h.notes.extend(
        lab.state
            .faults
            .iter()
            .filter(|f| f.spec.on() == switch_name)
            .map(|f| format!("active fault {}: {}", f.id, f.spec.describe())),
    );
    let stop = |h: Hop| {
        Ok(Step {
            hop: h,
            next: Next::Delivered,
        })
    };
    if let Some(m) = view.mtu(port_in) {
        if pkt.size > m {
            h.drop = Some(format!("{} bytes arrive on port {port_in}, whose MTU is {m}", pkt.size));
            return stop(h);
        }
    }
    // A switch that checks sources (aws-vpc's VPC): the frame's source
    // address must be one its port's ENI holds, as the bridge's neighbour
    // table says.
    if let Some(why) = source_check(lab, view, &bridge, port_in, pkt.src) {
        h.drop = Some(why);
        return stop(h);
    }
    // The frame is for the MAC of the next hop the sender chose: a device
    // of the lab's plan, else (the VPC's secondary addresses) the port the
    // bridge's neighbour table and static FDB give the address to.
    if let Some((entry, out)) = neighbour_port(lab, view, &bridge, via) {
        h.entries.push(entry);
        return switch_out(lab, view, h, &out, pkt);
    }
    let target = l2_target(lab, via);
    let Some((target_label, target_ns)) = target else {
        return Ok(Step {
            hop: h,
            next: Next::Leaves(format!(
                "leaves switch {switch_name}: nothing in the lab owns {}",
                pkt.dst
            )),
        });
    };
    let local_port = bridge_ports(view, &bridge)
        .into_iter()
        .find(|p| lab.peer(view, p).is_some_and(|(ns, ..)| ns == target_ns));
    if let Some(out) = local_port {
        return switch_out(lab, view, h, &out, pkt);
    }
    // An upstream leaf: the frame crosses the upstream VXLAN to another leaf.
    let Place::Leaf { .. } = lab.place(view.name()) else {
        h.drop = Some(format!("no port of {bridge} leads to {target_label}"));
        return stop(h);
    };
    let br_index = view.link(&bridge).map(|l| l.index);
    let vx = view
        .d
        .links
        .iter()
        .find(|l| br_index.is_some() && l.master == br_index && l.kind == "vxlan");
    let Some(vx) = vx else {
        h.drop = Some(format!("no port of {bridge} leads to {target_label}"));
        return stop(h);
    };
    let vx_name = vx.name.clone();
    let info = vx.vxlan.clone().unwrap_or_default();
    let vni = info.id.unwrap_or(0);
    let local = info.local.map_or("?".to_string(), |l| l.to_string());
    let Some(other) = leaf_with_port(lab, &switch_name, target_ns) else {
        h.drop = Some(format!("no upstream leaf has a port to {target_label}"));
        return stop(h);
    };
    let other_view = lab.view(&other)?;
    let remote = other_view
        .address_of("uplink")
        .map_or("?".to_string(), |a| a.to_string());
    let uplink_mtu = view.mtu("uplink").unwrap_or(1500);
    let outer = pkt.size + VXLAN_OVERHEAD;
    h.dev_out = Some(vx_name.clone());
    h.mtu = Some(uplink_mtu.saturating_sub(VXLAN_OVERHEAD));
    h.entries.push(format!(
        "vxlan {vx_name} id {vni} local {local} remote {remote} dev uplink (MTU {uplink_mtu})"
    ));
    h.notes.push(format!(
        "the switch's ports now sit on leaves joined by an upstream VXLAN: the frame for {target_label} crosses it"
    ));
    if outer > uplink_mtu {
        h.drop = Some(format!(
            "the upstream VXLAN hop adds {VXLAN_OVERHEAD} bytes: {} + {VXLAN_OVERHEAD} = {outer} > the uplink's MTU {uplink_mtu}, with DF set on the outer header, so the switch can carry at most {} bytes; it drops the frame silently (a switch sends no ICMP)",
            pkt.size,
            uplink_mtu - VXLAN_OVERHEAD
        ));
        return stop(h);
    }
    h.notes.push(format!(
        "{} + {VXLAN_OVERHEAD} = {outer} bytes fit the uplink's MTU {uplink_mtu}",
        pkt.size
    ));
    let out = bridge_ports(&other_view, "br")
        .into_iter()
        .find(|p| lab.peer(&other_view, p).is_some_and(|(ns, ..)| ns == target_ns));
    match out {
        Some(out) => switch_out(lab, &other_view, h, &out, pkt),
        None => {
            h.drop = Some(format!("the far leaf has no port to {target_label}"));
            stop(h)
        }
    }
}

/// The upstream leaf of `switch_name` that holds the port to `target_ns`.
fn leaf_with_port(lab: &Lab, switch_name: &str, target_ns: &str) -> Option<String> {
    lab.namespaces()
        .into_iter()
        .filter(|n| matches!(lab.place(n), Place::Leaf { switch } if switch == switch_name))
        .find(|n| {
            let Ok(v) = lab.view(n) else { return false };
            v.d.links
                .iter()
                .filter(|l| l.kind == "veth" && l.name != "uplink")
                .any(|l| lab.peer(&v, &l.name).is_some_and(|(ns, ..)| ns == target_ns))
        })
}

fn switch_out(lab: &Lab, view: &View, mut h: Hop, out: &str, pkt: &Packet) -> Result<Step> {
    h.dev_out = Some(out.to_string());
    let bridge = view.master(out).unwrap_or_default();
    let bridge = bridge.as_str();
    match bridge_fdb_for_port(view, bridge, out) {
        Some(mac) => h.entries.push(format!("fdb {mac} dev {out} master {bridge} (learned)")),
        None => h.notes.push(format!(
            "{bridge} has not learned the MAC behind {out} yet: it floods, and {out} leads on"
        )),
    }
    let m = view.mtu(out);
    h.mtu = h.mtu.or(m);
    if let Some(m) = m {
        if pkt.size > m {
            h.drop = Some(format!(
                "{} bytes do not fit port {out}'s MTU {m}: a switch drops oversize frames silently",
                pkt.size
            ));
            return Ok(Step {
                hop: h,
                next: Next::Delivered,
            });
        }
    }
    if !view.up(out) {
        h.drop = Some(format!("port {out} is down"));
        return Ok(Step {
            hop: h,
            next: Next::Delivered,
        });
    }
    match lab.peer(view, out) {
        Some((ns, dev, _)) => Ok(Step {
            hop: h,
            next: Next::Go {
                ns,
                dev: Some(dev),
                via: None,
            },
        }),
        None => Ok(Step {
            hop: h,
            next: Next::Leaves(format!("leaves through port {out}")),
        }),
    }
}

/// The node or router whose interface has address `ip` on a switch.
fn l2_target<'l>(lab: &'l Lab, ip: Ipv4Addr) -> Option<(String, &'l str)> {
    if let Some(n) = lab
        .plan
        .nodes
        .iter()
        .find(|n| n.ip == ip || n.extra_ifaces.iter().any(|x| x.ip == ip))
    {
        return Some((format!("node {}", n.name), n.ns.as_str()));
    }
    if let Some((s, u)) = lab
        .plan
        .switches
        .iter()
        .find_map(|s| s.uplink.as_ref().filter(|u| u.ip == ip).map(|u| (s, u)))
    {
        return Some((format!("the uplink of switch {}", s.name), u.ns.as_str()));
    }
    lab.plan
        .routers
        .iter()
        .find(|r| r.ports.iter().any(|p| p.ip == ip))
        .map(|r| (format!("router {}", r.name), r.ns.as_str()))
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "trace {} ({}) -> {} ({}): {}-byte IP packet, {}, DF set",
            self.from, self.src, self.to, self.dst, self.size, self.proto
        )?;
        write_hops(f, &self.hops)?;
        if !self.reply.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "reply {} -> {}: the answer, back through the same lookups",
                self.dst, self.src
            )?;
            write_hops(f, &self.reply)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{}",
            if self.delivered {
                format!("OK: {}", self.verdict)
            } else {
                self.verdict.clone()
            }
        )
    }
}

fn write_hops(f: &mut fmt::Formatter<'_>, hops: &[Hop]) -> fmt::Result {
    for (i, h) in hops.iter().enumerate() {
        writeln!(f)?;
        let mut head = format!("{:>2}  {}", i + 1, h.at);
        if let Some(d) = &h.dev_in {
            if !d.is_empty() {
                head.push_str(&format!("  in {d}"));
            }
        }
        if let Some(d) = &h.dev_out {
            head.push_str(&format!("  out {d}"));
            if let Some(m) = h.mtu {
                head.push_str(&format!(" (MTU {m})"));
            }
        }
        head.push_str(&format!("  {} bytes", h.size));
        writeln!(f, "{head}")?;
        writeln!(f, "      packet  {}", h.packet)?;
        for e in &h.entries {
            let (kind, rest) = e.split_once(' ').unwrap_or((e, ""));
            writeln!(f, "      {kind:<7} {rest}")?;
        }
        for n in &h.notes {
            writeln!(f, "      note    {n}")?;
        }
        if let Some(d) = &h.drop {
            writeln!(f, "      DROP    {d}")?;
        }
    }
    Ok(())
}

/// The packet `--proto` and `--port` ask for.
pub fn proto(name: &str, port: Option<u16>) -> Result<Proto> {
    match (name, port) {
        ("icmp", None) => Ok(Proto::Icmp(8)),
        ("icmp", Some(p)) => Err(Error::usage(
            format!("--port {p} with --proto icmp: an ICMP echo has no port"),
            "drop --port, or add --proto udp or --proto tcp",
        )),
        (_, None) => Err(Error::usage(
            format!("--proto {name} needs --port"),
            format!("give the destination port, e.g. --proto {name} --port 8472"),
        )),
        ("udp", Some(d)) => Ok(Proto::Udp {
            sport: None,
            dport: Some(d),
        }),
        (_, Some(d)) => Ok(Proto::Tcp {
            sport: None,
            dport: Some(d),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_and_port_must_fit_together() {
        assert_eq!(proto("icmp", None).unwrap(), Proto::Icmp(8));
        assert_eq!(
            proto("tcp", Some(179)).unwrap(),
            Proto::Tcp {
                sport: None,
                dport: Some(179)
            }
        );
        let e = proto("udp", None).unwrap_err().to_string();
        assert!(e.contains("--proto udp needs --port"), "{e}");
        let e = proto("icmp", Some(3)).unwrap_err().to_string();
        assert!(e.contains("an ICMP echo has no port"), "{e}");
    }

    #[test]
    fn a_reply_swaps_addresses_and_ports_and_is_established() {
        let p = Packet {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            size: 84,
            udp_port: None,
            inner: None,
            inner_mac: None,
            l2_via: None,
            proto: Proto::Udp {
                sport: None,
                dport: Some(53),
            },
            established: false,
        };
        let r = p.reply();
        assert_eq!((r.src, r.dst), (p.dst, p.src));
        assert_eq!(
            r.proto,
            Proto::Udp {
                sport: Some(53),
                dport: None
            }
        );
        assert!(r.established);
        assert_eq!(proto_text(r.proto), "UDP from 53");
        let mut echo = p.clone();
        echo.proto = Proto::Icmp(8);
        assert_eq!(echo.reply().proto, Proto::Icmp(0));
    }
}

#[cfg(test)]
mod policy_tests {
    //! felix's policy chains judged along a whole trace: the calico-bgp
    //! recording of tests/dumps/, with worker2's filter table and IP sets
    //! replaced by what felix programs for an ingress policy on its pod
    //! (192.168.151.1 on cali83dbd022cd5): TCP 80 from worker1/pod-1's set,
    //! and the named port whose set holds 192.168.151.1,tcp:81.

    use super::*;
    use crate::observe::snapshot::Recorded;

    const WORKER2: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:cali-FORWARD - [0:0]
:cali-cidr-block - [0:0]
:cali-from-hep-forward - [0:0]
:cali-from-wl-dispatch - [0:0]
:cali-fw-cali83dbd022cd5 - [0:0]
:cali-pi-_gZd-p_pOD9burOpA7Sq - [0:0]
:cali-pri-kns.x - [0:0]
:cali-pro-kns.x - [0:0]
:cali-to-hep-forward - [0:0]
:cali-to-wl-dispatch - [0:0]
:cali-tw-cali83dbd022cd5 - [0:0]
-A FORWARD -j cali-FORWARD
-A FORWARD -m comment --comment "Policy explicitly accepted packet." -m mark --mark 0x10000/0x10000 -j ACCEPT
-A FORWARD -j MARK --set-xmark 0x10000/0x10000
-A cali-FORWARD -j MARK --set-xmark 0x0/0x1a0000
-A cali-FORWARD -m mark --mark 0x0/0x10000 -j cali-from-hep-forward
-A cali-FORWARD -i cali+ -j cali-from-wl-dispatch
-A cali-FORWARD -o cali+ -j cali-to-wl-dispatch
-A cali-FORWARD -j cali-to-hep-forward
-A cali-FORWARD -j cali-cidr-block
-A cali-from-wl-dispatch -i cali83dbd022cd5 -g cali-fw-cali83dbd022cd5
-A cali-from-wl-dispatch -m comment --comment "Unknown interface" -j DROP
-A cali-fw-cali83dbd022cd5 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-fw-cali83dbd022cd5 -m conntrack --ctstate INVALID -j DROP
-A cali-fw-cali83dbd022cd5 -j MARK --set-xmark 0x0/0x30000
-A cali-fw-cali83dbd022cd5 -p udp -m comment --comment "Drop VXLAN encapped packets originating in workloads" -m multiport --dports 4789 -j DROP
-A cali-fw-cali83dbd022cd5 -p ipencap -m comment --comment "Drop IPinIP encapped packets originating in workloads" -j DROP
-A cali-fw-cali83dbd022cd5 -j cali-pro-kns.x
-A cali-fw-cali83dbd022cd5 -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-fw-cali83dbd022cd5 -m comment --comment "Drop if no profiles matched" -j DROP
-A cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp -m comment --comment "Policy x/knp.default.allow-w1 ingress" -m set --match-set cali40s:lgQ0i7EXRxuqdfcSKmyEYAU src -m multiport --dports 80 -j MARK --set-xmark 0x10000/0x10000
-A cali-pi-_gZd-p_pOD9burOpA7Sq -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp -m set --match-set cali40n:UKQArH4uDYNCIrbcNCRpdTW dst,dst -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.x -m comment --comment "Profile kns.x ingress" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.x -m comment --comment "Profile kns.x egress" -j MARK --set-xmark 0x10000/0x10000
-A cali-to-wl-dispatch -o cali83dbd022cd5 -g cali-tw-cali83dbd022cd5
-A cali-to-wl-dispatch -m comment --comment "Unknown interface" -j DROP
-A cali-tw-cali83dbd022cd5 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-tw-cali83dbd022cd5 -m conntrack --ctstate INVALID -j DROP
-A cali-tw-cali83dbd022cd5 -j MARK --set-xmark 0x0/0x30000
-A cali-tw-cali83dbd022cd5 -m comment --comment "Start of tier default" -j MARK --set-xmark 0x0/0x20000
-A cali-tw-cali83dbd022cd5 -m mark --mark 0x0/0x20000 -j cali-pi-_gZd-p_pOD9burOpA7Sq
-A cali-tw-cali83dbd022cd5 -m comment --comment "Return if policy accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cali83dbd022cd5 -m comment --comment "End of tier default. Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
-A cali-tw-cali83dbd022cd5 -j cali-pri-kns.x
-A cali-tw-cali83dbd022cd5 -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cali83dbd022cd5 -m comment --comment "Drop if no profiles matched" -j DROP
COMMIT
"#;

    const WORKER2_SETS: &str = "create cali40s:lgQ0i7EXRxuqdfcSKmyEYAU hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x4f1a2b3c
add cali40s:lgQ0i7EXRxuqdfcSKmyEYAU 192.168.188.193
create cali40n:UKQArH4uDYNCIrbcNCRpdTW hash:ip,port family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x5e6f7a8b
add cali40n:UKQArH4uDYNCIrbcNCRpdTW 192.168.151.1,tcp:81
";

    fn lab() -> Recorded {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/dumps/calico-bgp.json");
        let mut rec = Recorded::load(&path).unwrap();
        let w2 = rec.dump.namespaces.get_mut("cnilab.cbgp.worker2").unwrap();
        w2.iptables = WORKER2.to_string();
        w2.ipsets = WORKER2_SETS.to_string();
        rec
    }

    fn run(rec: &Recorded, from: &str, port: u16) -> Trace {
        let proto = proto("tcp", Some(port)).unwrap();
        let t = trace_dump(&rec.state, &rec.dump, from, "worker2/pod-1", 84, proto).unwrap();
        println!("$ cnilab trace {from} worker2/pod-1 --proto tcp --port {port}\n{t}");
        t
    }

    #[test]
    fn a_denied_pair_names_the_endpoint_chain_and_the_tier_drop() {
        let t = run(&lab(), "worker3/pod-1", 80);
        assert!(!t.delivered);
        let d = t.dropped.as_ref().unwrap();
        assert_eq!((d.direction.as_str(), d.at.as_str()), ("request", "worker2"));
        assert_eq!(d.table.as_deref(), Some("filter"));
        assert_eq!(d.chain.as_deref(), Some("cali-tw-cali83dbd022cd5"));
        let rule = "-A cali-tw-cali83dbd022cd5 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP";
        assert_eq!(d.rule.as_deref(), Some(rule));
        let text = t.to_string();
        assert!(
            text.contains(&format!(
                "DROP    iptables drops TCP 80 as it is forwarded: table filter, chain cali-tw-cali83dbd022cd5, {rule}"
            )),
            "{text}"
        );
        // The way there: into the endpoint chain and through the policy chain.
        assert!(text.contains("iptables -t filter -A cali-tw-cali83dbd022cd5 -m mark --mark 0x0/0x20000 -j cali-pi-_gZd-p_pOD9burOpA7Sq"), "{text}");
        assert!(text.contains("FORWARD > cali-FORWARD > cali-to-wl-dispatch > cali-tw-cali83dbd022cd5 > cali-pi-_gZd-p_pOD9burOpA7Sq > cali-tw-cali83dbd022cd5; dropped in chain cali-tw-cali83dbd022cd5 with mark 0x0"), "{text}");
        assert!(!text.contains("may match"), "{text}");
    }

    #[test]
    fn an_allowed_pair_shows_the_policy_rule_that_marked_it_and_the_accept() {
        let rec = lab();
        let t = run(&rec, "worker1/pod-1", 80);
        assert!(t.delivered, "{t}");
        let w2 = &t.hops[3];
        assert_eq!(w2.at, "worker2");
        let marked = "iptables -t filter -A cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp -m comment --comment \"Policy x/knp.default.allow-w1 ingress\" -m set --match-set cali40s:lgQ0i7EXRxuqdfcSKmyEYAU src -m multiport --dports 80 -j MARK --set-xmark 0x10000/0x10000";
        let at = |e: &str| {
            w2.entries
                .iter()
                .position(|x| x == e)
                .unwrap_or_else(|| panic!("{e} not in {:#?}", w2.entries))
        };
        let (m, r, back, acc) = (
            at(marked),
            at("iptables -t filter -A cali-pi-_gZd-p_pOD9burOpA7Sq -m mark --mark 0x10000/0x10000 -j RETURN"),
            at(
                "iptables -t filter -A cali-tw-cali83dbd022cd5 -m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 -j RETURN",
            ),
            at(
                "iptables -t filter -A FORWARD -m comment --comment \"Policy explicitly accepted packet.\" -m mark --mark 0x10000/0x10000 -j ACCEPT",
            ),
        );
        assert!(m < r && r < back && back < acc, "{:#?}", w2.entries);
        assert!(
            w2.notes
                .iter()
                .any(|n| n.ends_with("; accepted in chain FORWARD with mark 0x10000")),
            "{:#?}",
            w2.notes
        );
        // In --json too: the entries and the note are the hop's.
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp"), "{json}");
        // The reply leaves the pod as an established connection: conntrack lets it pass.
        let r2 = &t.reply[1];
        assert_eq!(r2.at, "worker2");
        assert!(r2.entries.iter().any(|e| e.ends_with("-A cali-fw-cali83dbd022cd5 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")), "{:#?}", r2.entries);
        // The named port: from worker3, whose pod is not in the source set.
        let t = run(&rec, "worker3/pod-1", 81);
        assert!(t.delivered, "{t}");
        assert!(
            t.hops[3]
                .entries
                .iter()
                .any(|e| e.ends_with("dst,dst -j MARK --set-xmark 0x10000/0x10000"))
        );
    }
}

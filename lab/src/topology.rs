//! The topology file (shared/design/topology.md): parsing, defaults and every
//! rejection the contract lists, each with file:line:column and a fix.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, InputError, Source, excerpt};
use crate::spanned::{Errors, Sp, Table, parse_document};

type R<T> = Result<T, InputError>;

/// Lowest MTU a switch or pod may have.
pub const MTU_MIN: i64 = 576;
/// Highest MTU a switch or pod may have.
pub const MTU_MAX: i64 = 9216;
/// Where automatic node addresses start on a switch subnet (.10 up).
pub const FIRST_NODE_HOST: u32 = 10;

/// A whole lab as the user wrote it, with every default filled in and every
/// node expanded (`count`) and addressed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    /// Lab name: the `cnilab.<name>.*` namespaces and `/run/cnilab/<name>`.
    pub name: String,
    /// Seed of every generated choice.
    pub seed: u64,
    /// The cluster network.
    pub network: Network,
    /// L2 segments of the underlay.
    pub switches: Vec<Switch>,
    /// Nodes, in file order, `count` expanded.
    pub nodes: Vec<Node>,
    /// L3 hops between switches.
    pub routers: Vec<Router>,
}

/// `[network]`: one CNI profile for the whole lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// The pod CIDR (kubeadm --pod-network-cidr), or Calico's IP pool.
    pub pod_cidr: Ipv4Net,
    /// A forced pod MTU instead of the profile's computation.
    pub mtu: Option<u32>,
    /// The profile and its options.
    pub profile: Profile,
}

/// A CNI profile with its options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cni", rename_all = "lowercase")]
pub enum Profile {
    /// flannel, mirroring its net-conf.json.
    Flannel(FlannelOptions),
    /// Calico.
    Calico(CalicoOptions),
}

impl Profile {
    /// The profile's name as written in `cni = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Flannel(_) => "flannel",
            Profile::Calico(_) => "calico",
        }
    }
}

/// flannel backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlannelBackend {
    /// VXLAN overlay, `flannel.<vni>`.
    Vxlan,
    /// Plain routes via node addresses.
    HostGw,
    /// The old userspace UDP backend (Rudder).
    Udp,
}

impl FlannelBackend {
    /// The name flannel uses in its `Backend.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlannelBackend::Vxlan => "vxlan",
            FlannelBackend::HostGw => "host-gw",
            FlannelBackend::Udp => "udp",
        }
    }
}

/// `[network.flannel]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlannelOptions {
    /// vxlan (default), host-gw or udp.
    pub backend: FlannelBackend,
    /// VXLAN network identifier (default 1).
    pub vni: u32,
    /// UDP port (8472 for vxlan, 8285 for udp).
    pub port: u16,
    /// Prefix length of each node's lease.
    pub subnet_len: u8,
}

/// Calico data planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalicoMode {
    /// Plain BGP routes, no encapsulation.
    Bgp,
    /// `vxlan.calico`.
    Vxlan,
    /// `tunl0`.
    Ipip,
}

/// Calico BGP peering layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalicoMesh {
    /// Every node peers with every other.
    Full,
    /// Nodes peer with route reflectors only.
    Reflectors,
    /// Nodes peer with the router on their switch.
    Tor,
}

/// `[network.calico]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalicoOptions {
    /// bgp (default), vxlan or ipip.
    pub mode: CalicoMode,
    /// Prefix length of IPAM blocks (default 26).
    pub block_size: u8,
    /// The cluster's AS (default 64512).
    pub asn: u32,
    /// Peering layout.
    pub mesh: CalicoMesh,
    /// Route reflector nodes, with `mesh = "reflectors"`.
    pub reflectors: Vec<String>,
    /// BGP hold time in seconds (BIRD's default 240).
    pub hold_time: u32,
    /// Graceful restart time in seconds (Calico's template: 120).
    pub restart_time: u32,
}

/// `[[switch]]`: an L2 segment, a Linux bridge in the fabric namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Switch {
    /// Name, also the bridge's name.
    pub name: String,
    /// Underlay subnet of the nodes on it.
    pub subnet: Ipv4Net,
    /// MTU of the bridge and its ports.
    pub mtu: u32,
}

/// `[[node]]`, expanded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Name.
    pub name: String,
    /// The switch its eth0 is on.
    pub switch: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its pods, by name.
    pub pods: Vec<String>,
    /// How many addresses its IPAM range holds (calico), like a cloud
    /// node's pod limit; none: the whole block.
    #[serde(default)]
    pub max_pods: Option<u32>,
}

/// `[[router]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    /// Name.
    pub name: String,
    /// Switches it joins, taking .1 on each.
    pub switches: Vec<String>,
    /// Its AS when it speaks BGP.
    pub asn: Option<u32>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(
                format!("cannot read topology {}: {e}", path.display()),
                "give the path of a topology file, such as topologies/flannel-vxlan.toml",
            )
        })?;
        let src = Source::new(path.display().to_string(), text);
        Ok(parse(&src)?)
    }

    /// The switch a node is on.
    pub fn switch(&self, name: &str) -> Option<&Switch> {
        self.switches.iter().find(|s| s.name == name)
    }

    /// The router on a switch, if any.
    pub fn router_on(&self, switch: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.switches.iter().any(|s| s == switch))
    }
}

/// Parses and validates a topology from its source text. Every independent
/// mistake is reported, in file order; checks that depend on a value with a
/// mistake are skipped rather than reported as a second mistake.
pub fn parse(src: &Source) -> R<Topology> {
    let (doc, span) = parse_document(src, &src.text)?;
    let root = Table::root(src, &doc, span);
    let errs = Errors::default();
    let topology = read(&root, &errs);
    errs.finish(topology)
}

/// Most nodes a topology may have, all switches together.
pub const MAX_NODES: usize = 4096;
/// Most pods a topology may have, all nodes together.
pub const MAX_PODS: usize = 65536;

fn read(root: &Table, errs: &Errors) -> Option<Topology> {
    errs.ok(root.allow(&["name", "seed", "network", "switch", "node", "router"]));
    let name = errs.ok(root.required_string("name", "name = \"demo\""));
    let name = name.filter(|n| errs.ok(check_name(root, n, "lab name", 12)).is_some());
    let seed = errs
        .ok(root.int("seed", 0, i64::MAX, "seed = 0"))
        .map(|s| s.map_or(0, |s| s.v as u64));

    let before = errs.count();
    let switches = parse_switches(root, errs);
    let switches_ok = errs.count() == before;
    let routers = parse_routers(root, &switches, switches_ok, errs);
    let before_nodes = errs.count();
    let nodes = parse_nodes(root, &switches, switches_ok, errs);
    if nodes.is_empty() && errs.count() == before_nodes {
        errs.push(root.err(
            0..0,
            "the topology has no nodes",
            "add at least one [[node]] section, e.g. [[node]] name = \"worker{i}\" count = 2 pods = 2",
        ));
    }
    let parts_ok = errs.count() == before;
    let network = parse_network(root, &switches, &routers, &nodes, parts_ok, errs);
    if !parts_ok {
        return None;
    }
    errs.ok(check_unique_across_kinds(root, &switches, &nodes, &routers));
    let nodes = errs.ok(assign_addresses(root, &switches, &routers, nodes))?;
    if !errs.is_empty() {
        return None;
    }
    Some(Topology {
        name: name?.v,
        seed: seed?,
        network: network?,
        switches: switches.into_iter().map(|s| s.switch).collect(),
        nodes: nodes.into_iter().map(|n| n.node).collect(),
        routers: routers.into_iter().map(|r| r.router).collect(),
    })
}

/// What is quoted of a value the user wrote: at most 60 characters.
fn q(s: &str) -> String {
    excerpt(s, 60)
}

/// Names: 1-`max` chars of `[a-z0-9-]`, starting with a letter.
fn check_name(t: &Table, name: &Sp<String>, what: &str, max: usize) -> R<()> {
    let n = &name.v;
    let problem = crate::names::problem_within(n, max);
    match problem {
        None => Ok(()),
        Some(p) => Err(t.err(
            name.span.clone(),
            format!("{what} \"{}\" {p}", q(n)),
            format!(
                "use 1-{max} characters of a-z, 0-9 and '-', starting with a letter, e.g. \"{}\"",
                suggest_name(n, max)
            ),
        )),
    }
}

fn suggest_name(n: &str, max: usize) -> String {
    let mut s: String = n
        .chars()
        .take(max)
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert(0, 'n');
    }
    s.truncate(max);
    s
}

fn parse_cidr(t: &Table, key: &str, example: &str) -> R<Option<Sp<Ipv4Net>>> {
    let Some(s) = t.string(key, example)? else {
        return Ok(None);
    };
    match s.v.parse::<Ipv4Net>() {
        Ok(net) if net.network() != net.addr() => Err(t.err(
            s.span.clone(),
            format!("`{key}` = \"{}\" has host bits set", s.v),
            format!("write the network address: \"{}\"", net.trunc()),
        )),
        Ok(net) => Ok(Some(Sp::new(net, s.span))),
        Err(_) => Err(t.err(
            s.span.clone(),
            format!("`{key}` = \"{}\" is not an IPv4 CIDR", q(&s.v)),
            format!("write an IPv4 network and prefix length, e.g. {example}"),
        )),
    }
}

/// Address ranges no lab can use for pods or an underlay, and why.
const UNUSABLE: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8), which is no destination"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8), which never leaves a namespace"),
    (
        "169.254.0.0/16",
        "link-local (169.254.0.0/16), which Calico uses for its pod gateway 169.254.1.1",
    ),
    (
        "224.0.0.0/4",
        "multicast (224.0.0.0/4), which the kernel refuses as an interface address",
    ),
    (
        "240.0.0.0/4",
        "reserved (240.0.0.0/4, with the broadcast address 255.255.255.255), which the kernel does not route",
    ),
];

/// Refuses a pod CIDR or switch subnet that overlaps a range no lab can use.
fn check_usable(t: &Table, net: &Sp<Ipv4Net>, what: &str, example: &str) -> R<()> {
    for (range, why) in UNUSABLE {
        let r: Ipv4Net = range.parse().expect("valid constant");
        if r.contains(&net.v.network()) || net.v.contains(&r.network()) {
            return Err(t.err(
                net.span.clone(),
                format!("{what} {} overlaps {why}", net.v),
                format!("use a private range, e.g. {example}"),
            ));
        }
    }
    Ok(())
}

struct SwitchIn {
    switch: Switch,
    span: Range<usize>,
    subnet_span: Range<usize>,
}

fn parse_switches(root: &Table, errs: &Errors) -> Vec<SwitchIn> {
    let mut out: Vec<SwitchIn> = Vec::new();
    let written = root.has("switch");
    for t in errs.ok(root.tables("switch", "[[switch]]")).unwrap_or_default() {
        if let Some(s) = parse_switch(&t, &out, errs) {
            out.push(s);
        }
    }
    if !written {
        // One default segment keeps the smallest topology short.
        out.push(SwitchIn {
            switch: Switch {
                name: "tor1".into(),
                subnet: "172.20.0.0/24".parse().expect("valid default"),
                mtu: 1500,
            },
            span: 0..0,
            subnet_span: 0..0,
        });
    }
    out
}

fn parse_switch(t: &Table, out: &[SwitchIn], errs: &Errors) -> Option<SwitchIn> {
    let before = errs.count();
    errs.ok(t.allow(&["name", "subnet", "mtu"]));
    let name = errs.ok(t.required_string("name", "name = \"tor1\""));
    let name = name.filter(|n| errs.ok(check_name(t, n, "switch name", 15)).is_some());
    if let Some(n) = name.as_ref().filter(|n| out.iter().any(|s| s.switch.name == n.v)) {
        errs.push(t.err(
            n.span.clone(),
            format!("there are two switches named \"{}\"", n.v),
            "give each [[switch]] its own name",
        ));
    }
    let example = "subnet = \"172.20.0.0/24\"";
    let subnet = match errs.ok(parse_cidr(t, "subnet", example)) {
        Some(None) => {
            let which = name.as_ref().map_or(String::new(), |n| format!(" \"{}\"", n.v));
            errs.push(t.err(
                t.span(),
                format!("switch{which} has no `subnet`"),
                "add the underlay subnet of its nodes, e.g. subnet = \"172.20.0.0/24\"",
            ));
            None
        }
        other => other.flatten(),
    };
    let subnet = subnet.filter(|s| errs.ok(check_switch_subnet(t, s, out)).is_some());
    let mtu = errs.ok(t.int("mtu", MTU_MIN, MTU_MAX, "mtu = 1500"));
    if errs.count() > before {
        return None;
    }
    let subnet = subnet?;
    Some(SwitchIn {
        switch: Switch {
            name: name?.v,
            subnet: subnet.v,
            mtu: mtu?.map_or(1500, |m| m.v as u32),
        },
        span: t.span(),
        subnet_span: subnet.span,
    })
}

/// A switch subnet must be usable, hold its gateway (.1) and a node, and be
/// its own.
fn check_switch_subnet(t: &Table, subnet: &Sp<Ipv4Net>, out: &[SwitchIn]) -> R<()> {
    check_usable(t, subnet, "switch subnet", "172.20.0.0/24")?;
    if subnet.v.prefix_len() > 30 {
        return Err(t.err(
            subnet.span.clone(),
            format!(
                "switch subnet {} is too small: it needs a network address, the gateway .1, a node and a broadcast address",
                subnet.v
            ),
            "use a prefix of /30 or shorter, e.g. /24",
        ));
    }
    for other in out {
        if other.switch.subnet.contains(&subnet.v.network()) || subnet.v.contains(&other.switch.subnet.network()) {
            return Err(t.err(
                subnet.span.clone(),
                format!(
                    "switch subnet {} overlaps {} of switch \"{}\"",
                    subnet.v, other.switch.subnet, other.switch.name
                ),
                "give each switch a subnet of its own",
            ));
        }
    }
    Ok(())
}

struct RouterIn {
    router: Router,
    name_span: Range<usize>,
}

fn parse_routers(root: &Table, switches: &[SwitchIn], switches_ok: bool, errs: &Errors) -> Vec<RouterIn> {
    let mut out: Vec<RouterIn> = Vec::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for t in errs.ok(root.tables("router", "[[router]]")).unwrap_or_default() {
        let sw = SwitchRefs {
            switches,
            checked: switches_ok,
        };
        if let Some(r) = parse_router(&t, &out, &mut taken, &sw, errs) {
            out.push(r);
        }
    }
    out
}

/// The switches references are checked against, when they all parsed.
struct SwitchRefs<'s> {
    switches: &'s [SwitchIn],
    checked: bool,
}

impl SwitchRefs<'_> {
    /// Refuses a reference to a switch that does not exist.
    fn check(&self, t: &Table, s: &Sp<String>) -> R<()> {
        if self.checked && !self.switches.iter().any(|x| x.switch.name == s.v) {
            return Err(unknown_switch(t, s, self.switches));
        }
        Ok(())
    }
}

fn parse_router(
    t: &Table,
    out: &[RouterIn],
    taken: &mut BTreeMap<String, String>,
    refs: &SwitchRefs,
    errs: &Errors,
) -> Option<RouterIn> {
    let before = errs.count();
    errs.ok(t.allow(&["name", "switches", "asn"]));
    let name = errs.ok(t.required_string("name", "name = \"spine\""));
    let name = name.filter(|n| errs.ok(check_name(t, n, "router name", 15)).is_some());
    if let Some(n) = name.as_ref().filter(|n| out.iter().any(|r| r.router.name == n.v)) {
        errs.push(t.err(
            n.span.clone(),
            format!("there are two routers named \"{}\"", n.v),
            "give each [[router]] its own name",
        ));
    }
    let which = name.as_ref().map_or(String::new(), |n| format!(" \"{}\"", n.v));
    let mut names = Vec::new();
    match errs.ok(t.strings("switches", "switches = [\"tor1\", \"tor2\"]")) {
        Some(None) => errs.push(t.err(
            t.span(),
            format!("router{which} has no `switches`"),
            "list the switches it joins, e.g. switches = [\"tor1\", \"tor2\"]",
        )),
        Some(Some(sw)) if sw.v.is_empty() => errs.push(t.err(
            sw.span,
            format!("router{which} joins no switch"),
            "list at least one switch, e.g. switches = [\"tor1\"]",
        )),
        Some(Some(sw)) => {
            for s in &sw.v {
                if errs.ok(refs.check(t, s)).is_none() {
                    continue;
                }
                if names.contains(&s.v) {
                    errs.push(t.err(
                        s.span.clone(),
                        format!("router{which} lists switch \"{}\" twice", q(&s.v)),
                        "list each switch once",
                    ));
                } else if let Some(other) = taken.get(&s.v) {
                    errs.push(t.err(
                        s.span.clone(),
                        format!("switch \"{}\" already has router \"{other}\", which takes its .1", s.v),
                        "put one router on each switch",
                    ));
                } else {
                    names.push(s.v.clone());
                }
            }
        }
        None => {}
    }
    let asn = errs.ok(t.int("asn", 1, u32::MAX as i64, "asn = 65000"));
    if errs.count() > before {
        return None;
    }
    let name = name?;
    for s in &names {
        taken.insert(s.clone(), name.v.clone());
    }
    Some(RouterIn {
        router: Router {
            name: name.v,
            switches: names,
            asn: asn?.map(|a| a.v as u32),
        },
        name_span: name.span,
    })
}

fn unknown_switch(t: &Table, s: &Sp<String>, switches: &[SwitchIn]) -> InputError {
    let names: Vec<&str> = switches.iter().map(|x| x.switch.name.as_str()).collect();
    let fix = match crate::spanned::closest(&s.v, &names) {
        Some(near) => format!("did you mean \"{near}\"? switches: {}", names.join(", ")),
        None => format!(
            "use one of the switches: {}, or add a [[switch]] named \"{}\"",
            names.join(", "),
            suggest_name(&s.v, 15)
        ),
    };
    t.err(s.span.clone(), format!("there is no switch \"{}\"", q(&s.v)), fix)
}

struct NodeIn {
    node: Node,
    max_pods_span: Option<Range<usize>>,
    name_span: Range<usize>,
    ip_span: Option<Range<usize>>,
    /// Where its pods are written (the node's table when they are not).
    pods_span: Range<usize>,
    explicit_ip: Option<Ipv4Addr>,
}

fn parse_nodes(root: &Table, switches: &[SwitchIn], switches_ok: bool, errs: &Errors) -> Vec<NodeIn> {
    let mut out: Vec<NodeIn> = Vec::new();
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut pods = 0usize;
    let refs = SwitchRefs {
        switches,
        checked: switches_ok,
    };
    for t in errs.ok(root.tables("node", "[[node]]")).unwrap_or_default() {
        let Some(new) = parse_node(&t, &refs, errs) else {
            continue;
        };
        let first = new.first().map(|n| (n.name_span.clone(), n.pods_span.clone()));
        pods += new.iter().map(|n| n.node.pods.len()).sum::<usize>();
        if let Some((name_span, pods_span)) = first {
            if out.len() + new.len() > MAX_NODES {
                errs.push(t.err(
                    name_span,
                    format!(
                        "this makes {} nodes, more than cnilab builds ({MAX_NODES})",
                        out.len() + new.len()
                    ),
                    "use fewer or smaller `count`s",
                ));
                break;
            }
            if pods > MAX_PODS {
                errs.push(t.err(
                    pods_span,
                    format!("this makes {pods} pods, more than cnilab builds ({MAX_PODS})"),
                    "give the nodes fewer pods",
                ));
                break;
            }
        }
        for n in new {
            if !names.insert(n.node.name.clone()) {
                errs.push(t.err(
                    n.name_span.clone(),
                    format!("there are two nodes named \"{}\"", n.node.name),
                    "give each node its own name",
                ));
                continue;
            }
            out.push(n);
        }
    }
    out
}

/// One `[[node]]` table: its nodes, `count` expanded.
fn parse_node(t: &Table, refs: &SwitchRefs, errs: &Errors) -> Option<Vec<NodeIn>> {
    let before = errs.count();
    errs.ok(t.allow(&["name", "switch", "ip", "pods", "count", "max_pods"]));
    let name = errs.ok(t.required_string("name", "name = \"worker1\""));
    let count = errs.ok(t.int("count", 1, MAX_NODES as i64, "count = 3")).flatten();
    if let Some(name) = &name {
        errs.ok(check_count(t, name, count.as_ref()));
    }
    let node = name
        .as_ref()
        .map_or_else(|| "node".to_string(), |n| format!("node \"{}\"", q(&n.v)));
    let switch = match errs.ok(t.string("switch", "switch = \"tor1\"")) {
        Some(Some(s)) => errs.ok(refs.check(t, &s)).map(|_| s.v),
        Some(None) if refs.switches.len() == 1 => Some(refs.switches[0].switch.name.clone()),
        // The switches had mistakes: which one is meant is left open, and
        // nothing that depends on it is checked.
        Some(None) if !refs.checked => Some(String::new()),
        Some(None) => {
            let names: Vec<&str> = refs.switches.iter().map(|x| x.switch.name.as_str()).collect();
            let span = name.as_ref().map_or_else(|| t.span(), |n| n.span.clone());
            errs.push(t.err(
                span,
                format!("{node} names no switch, and there are {}", refs.switches.len()),
                format!("add switch = \"...\" with one of: {}", names.join(", ")),
            ));
            None
        }
        None => None,
    };
    let ip = errs.ok(parse_node_ip(t, &node, count.as_ref())).flatten();
    let pods = errs.ok(parse_pods(t));
    let max_pods = errs.ok(t.int("max_pods", 1, 65535, "max_pods = 4"));
    if errs.count() > before {
        return None;
    }
    let (name, switch, pods, max_pods) = (name?, switch?, pods?, max_pods?);
    let n = count.as_ref().map_or(1, |c| c.v);
    let mut out = Vec::new();
    for i in 1..=n {
        let expanded = Sp::new(name.v.replace("{i}", &i.to_string()), name.span.clone());
        // A bad template is one mistake, not one per node.
        errs.ok(check_name(t, &expanded, "node name", 15))?;
        out.push(NodeIn {
            node: Node {
                name: expanded.v,
                switch: switch.clone(),
                ip: Ipv4Addr::UNSPECIFIED,
                pods: pods.clone(),
                max_pods: max_pods.as_ref().map(|m| m.v as u32),
            },
            name_span: name.span.clone(),
            max_pods_span: max_pods.as_ref().map(|m| m.span.clone()),
            ip_span: ip.as_ref().map(|i| i.span.clone()),
            pods_span: t.value_span("pods").unwrap_or_else(|| t.span()),
            explicit_ip: ip.as_ref().map(|i| i.v),
        });
    }
    Some(out)
}

/// `count` goes with a templated name, and only with one.
fn check_count(t: &Table, name: &Sp<String>, count: Option<&Sp<i64>>) -> R<()> {
    match (count, name.v.contains("{i}")) {
        (Some(c), false) => Err(t.err(
            c.span.clone(),
            format!("node \"{}\" has `count` but its name has no \"{{i}}\"", q(&name.v)),
            format!(
                "put {{i}} where the number goes, e.g. name = \"{}{{i}}\"",
                suggest_name(&name.v, 12)
            ),
        )),
        (None, true) => Err(t.err(
            name.span.clone(),
            format!("node name \"{}\" has \"{{i}}\" but no `count`", q(&name.v)),
            "add count = N to make N nodes, or remove {i} from the name",
        )),
        _ => Ok(()),
    }
}

fn parse_node_ip(t: &Table, node: &str, count: Option<&Sp<i64>>) -> R<Option<Sp<Ipv4Addr>>> {
    let Some(s) = t.string("ip", "ip = \"172.20.0.10\"")? else {
        return Ok(None);
    };
    if let Some(c) = count {
        return Err(t.err(
            s.span.clone(),
            format!("{node} has both `ip` and `count = {}`", c.v),
            "addresses of counted nodes are assigned in order; remove `ip` or `count`",
        ));
    }
    let addr = s.v.parse::<Ipv4Addr>().map_err(|_| {
        t.err(
            s.span.clone(),
            format!("`ip` = \"{}\" is not an IPv4 address", q(&s.v)),
            "write an address on the node's switch subnet, e.g. ip = \"172.20.0.10\"",
        )
    })?;
    Ok(Some(Sp::new(addr, s.span)))
}

fn parse_pods(t: &Table) -> R<Vec<String>> {
    let Some(v) = t.raw("pods") else {
        return Ok(Vec::new());
    };
    if v.get_ref().is_integer() {
        let n = t.int("pods", 0, 4096, "pods = 2")?.map_or(0, |n| n.v);
        return Ok((1..=n).map(|i| format!("pod-{i}")).collect());
    }
    if !v.get_ref().is_array() {
        return Err(t.err(
            v.span(),
            "`pods` must be a number of pods or a list of pod names",
            "write pods = 2 (pods pod-1 and pod-2) or pods = [\"web\", \"db\"]",
        ));
    }
    let names = t.strings("pods", "pods = [\"web\", \"db\"]")?.expect("present");
    let errs = Errors::default();
    let mut out: Vec<String> = Vec::new();
    for n in names.v {
        if errs.ok(check_name(t, &n, "pod name", 15)).is_none() {
            continue;
        }
        if out.contains(&n.v) {
            errs.push(t.err(
                n.span,
                format!("pod name \"{}\" appears twice on this node", n.v),
                "give each pod of a node its own name",
            ));
            continue;
        }
        out.push(n.v);
    }
    errs.finish(Some(out))
}

fn parse_network(
    root: &Table,
    switches: &[SwitchIn],
    routers: &[RouterIn],
    nodes: &[NodeIn],
    parts_ok: bool,
    errs: &Errors,
) -> Option<Network> {
    // Checks against the nodes and switches run only when those parsed.
    let mut ctx = Parts {
        routers,
        nodes,
        ok: parts_ok,
        pool: true,
    };
    let Some(net) = errs.ok(root.table("network", "[network]"))? else {
        let cidr = Sp::new("10.244.0.0/16".parse().expect("valid default"), 0..0);
        if parts_ok {
            errs.ok(check_pod_cidr_overlap(root, &cidr, switches));
        }
        let opts = flannel_options(None, &cidr, &ctx, root, errs)?;
        return Some(Network {
            pod_cidr: cidr.v,
            mtu: None,
            profile: Profile::Flannel(opts),
        });
    };
    let before = errs.count();
    errs.ok(net.allow(&["cni", "pod_cidr", "mtu", "flannel", "calico"]));
    let cni = errs
        .ok(net.string("cni", "cni = \"flannel\""))?
        .unwrap_or_else(|| Sp::new("flannel".into(), net.span()));
    let profiles = ["flannel", "calico"];
    if !profiles.contains(&cni.v.as_str()) {
        let fix = match crate::spanned::closest(&cni.v, &profiles) {
            Some(near) => format!("did you mean \"{near}\"? profiles: flannel, calico"),
            None => "use one of the profiles under plugins/: flannel, calico".to_string(),
        };
        errs.push(net.err(cni.span, format!("unknown CNI profile \"{}\"", q(&cni.v)), fix));
        return None;
    }
    let calico = cni.v == "calico";
    let default_cidr = if calico { "192.168.0.0/16" } else { "10.244.0.0/16" };
    let pod_cidr = errs
        .ok(parse_cidr(&net, "pod_cidr", "pod_cidr = \"10.244.0.0/16\""))
        .map(|c| c.unwrap_or_else(|| Sp::new(default_cidr.parse().expect("valid default"), net.span())))
        .filter(|c| errs.ok(check_usable(&net, c, "pod CIDR", default_cidr)).is_some());
    if let (Some(c), true) = (&pod_cidr, parts_ok) {
        errs.ok(check_pod_cidr_overlap(&net, c, switches));
    }
    let mtu = errs.ok(net.int("mtu", MTU_MIN, MTU_MAX, "mtu = 1400"));
    // A profile's section belongs to that profile only.
    for other in profiles.iter().filter(|p| **p != cni.v) {
        if let Some(span) = net.key_span(other) {
            errs.push(net.err(
                span,
                format!("[network.{other}] does not belong to cni = \"{}\"", cni.v),
                format!("remove [network.{other}], or set cni = \"{other}\""),
            ));
        }
    }
    if !calico {
        if let Some(span) = nodes.iter().find_map(|n| n.max_pods_span.clone()) {
            errs.push(net.err(
                span,
                "max_pods limits a node's IPAM range, which only the calico profile's conflist sets; flannel's plugin always hands out the whole lease",
                "use cni = \"calico\", or a longer subnet_len to give each node fewer addresses",
            ));
        }
    }
    let key = if calico { "calico" } else { "flannel" };
    let t = errs.ok(net.table(key, &format!("[network.{key}]")))?;
    // Without a pod CIDR the profile's own keys are still checked.
    ctx.pool = pod_cidr.is_some();
    let cidr = pod_cidr.unwrap_or_else(|| Sp::new(default_cidr.parse().expect("valid default"), net.span()));
    let profile = if calico {
        Profile::Calico(calico_options(t.as_ref(), &cidr, &ctx, root, errs)?)
    } else {
        Profile::Flannel(flannel_options(t.as_ref(), &cidr, &ctx, &net, errs)?)
    };
    if errs.count() > before {
        return None;
    }
    Some(Network {
        pod_cidr: cidr.v,
        mtu: mtu?.map(|m| m.v as u32),
        profile,
    })
}

/// The parts of the topology a network is checked against, and whether
/// they all parsed (otherwise the checks against them are skipped).
struct Parts<'p> {
    routers: &'p [RouterIn],
    nodes: &'p [NodeIn],
    /// The nodes, routers and switches parsed.
    ok: bool,
    /// The pod CIDR parsed (else a default stands in, unchecked).
    pool: bool,
}

fn check_pod_cidr_overlap(t: &Table, cidr: &Sp<Ipv4Net>, switches: &[SwitchIn]) -> R<()> {
    for s in switches {
        let sw = &s.switch;
        if cidr.v.contains(&sw.subnet.network()) || sw.subnet.contains(&cidr.v.network()) {
            // Point at whichever of the two the user wrote.
            let (span, what) = if cidr.span != (0..0) {
                (
                    cidr.span.clone(),
                    format!("pod CIDR {} overlaps switch \"{}\" ({})", cidr.v, sw.name, sw.subnet),
                )
            } else {
                (
                    s.subnet_span.clone(),
                    format!(
                        "switch \"{}\" ({}) overlaps the default pod CIDR {}",
                        sw.name, sw.subnet, cidr.v
                    ),
                )
            };
            return Err(t.err(
                span,
                what,
                "pods and the underlay need separate address ranges: change pod_cidr or the switch subnet",
            ));
        }
    }
    Ok(())
}

/// The backends and modes that validate but that cnilab does not build
/// yet: one check for `validate` and `up` alike.
fn check_built(t: &Table, key: &str, value: &Sp<String>) -> R<()> {
    if key == "backend" && value.v == "udp" {
        return Err(t.err(
            value.span.clone(),
            "the flannel udp backend is not built by cnilab yet",
            "use backend = \"vxlan\" or \"host-gw\"",
        ));
    }
    Ok(())
}

/// Pods a flannel node subnet of prefix `len` holds: host-local hands out
/// every address but the network, the gateway (.1) and the broadcast.
pub fn flannel_pods_per_subnet(len: u8) -> u64 {
    (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(3)
}

/// Pods a Calico block of prefix `len` holds: host-local hands out .1 up to
/// the address before the broadcast.
pub fn calico_pods_per_block(len: u8) -> u64 {
    (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(2)
}

fn flannel_options(
    t: Option<&Table>,
    pod_cidr: &Sp<Ipv4Net>,
    parts: &Parts,
    at: &Table,
    errs: &Errors,
) -> Option<FlannelOptions> {
    let before = errs.count();
    let cidr = pod_cidr.v;
    // A node subnet is at most a /30 (network, gateway, one pod, broadcast).
    let default_len = if cidr.prefix_len() <= 22 {
        24
    } else {
        (cidr.prefix_len() + 2).min(30)
    };
    let mut opts = FlannelOptions {
        backend: FlannelBackend::Vxlan,
        vni: 1,
        port: 8472,
        subnet_len: default_len,
    };
    let mut len_span = None;
    if let Some(t) = t {
        errs.ok(t.allow(&["backend", "vni", "port", "subnet_len"]));
        if let Some(Some(b)) = errs.ok(t.string("backend", "backend = \"vxlan\"")) {
            match b.v.as_str() {
                "vxlan" => opts.backend = FlannelBackend::Vxlan,
                "host-gw" => opts.backend = FlannelBackend::HostGw,
                "udp" => opts.backend = FlannelBackend::Udp,
                _ => errs.push(t.err(
                    b.span.clone(),
                    format!("unknown flannel backend \"{}\"", q(&b.v)),
                    "use backend = \"vxlan\" or \"host-gw\" (\"udp\" is not built yet)",
                )),
            }
            errs.ok(check_built(t, "backend", &b));
        }
        if opts.backend == FlannelBackend::Udp {
            opts.port = 8285;
        }
        if let Some(Some(v)) = errs.ok(t.int("vni", 1, (1 << 24) - 1, "vni = 1")) {
            opts.vni = v.v as u32;
        }
        if let Some(Some(p)) = errs.ok(t.int("port", 1, 65535, "port = 8472")) {
            opts.port = p.v as u16;
        }
        match errs.ok(t.int("subnet_len", 1, 30, "subnet_len = 24")) {
            Some(Some(l)) => {
                opts.subnet_len = l.v as u8;
                len_span = Some(l.span);
            }
            Some(None) => {}
            None => return None,
        }
    }
    let span = len_span.unwrap_or_else(|| pod_cidr.span.clone());
    errs.ok(check_flannel_room(at, pod_cidr, &opts, span, parts));
    (errs.count() == before).then_some(opts)
}

/// The pool splits into node subnets, one per node (flannel never leases
/// the first), each holding its node's pods.
fn check_flannel_room(
    at: &Table,
    pod_cidr: &Sp<Ipv4Net>,
    opts: &FlannelOptions,
    span: Range<usize>,
    parts: &Parts,
) -> R<()> {
    let cidr = pod_cidr.v;
    if !parts.pool {
        return Ok(());
    }
    if cidr.prefix_len() >= 30 {
        return Err(at.err(
            pod_cidr.span.clone(),
            format!(
                "pod CIDR {cidr} is too small for flannel: every node needs a subnet of at least /30, and flannel never leases the first"
            ),
            "use a pod_cidr of /29 or larger, e.g. \"10.244.0.0/16\"",
        ));
    }
    if opts.subnet_len <= cidr.prefix_len() {
        return Err(at.err(
            span,
            format!(
                "subnet_len {} does not split the pod CIDR {cidr} into node subnets",
                opts.subnet_len
            ),
            format!(
                "use a subnet_len from {} to 30, e.g. {}",
                cidr.prefix_len() + 1,
                (cidr.prefix_len() + 2).clamp(24, 30)
            ),
        ));
    }
    if !parts.ok {
        return Ok(());
    }
    let nodes = parts.nodes.len();
    let room = (1u64 << (opts.subnet_len - cidr.prefix_len())) - 1;
    if (nodes as u64) > room {
        return Err(at.err(
            span,
            format!(
                "pod CIDR {cidr} with subnet_len {} leaves {room} node subnets (flannel skips the first), but there are {nodes} nodes",
                opts.subnet_len
            ),
            "use a larger pod_cidr or a longer subnet_len",
        ));
    }
    let holds = flannel_pods_per_subnet(opts.subnet_len);
    if let Some(n) = parts.nodes.iter().find(|n| n.node.pods.len() as u64 > holds) {
        let pods = n.node.pods.len() as u64;
        // The longest subnet_len that still holds them all.
        let fits = (2..=30u8)
            .rev()
            .find(|l| flannel_pods_per_subnet(*l) >= pods)
            .unwrap_or(2);
        return Err(at.err(
            n.pods_span.clone(),
            format!(
                "node \"{}\" has {pods} pods, but its flannel subnet (/{}) holds {holds} (host-local skips the network, the gateway .1 and the broadcast address)",
                n.node.name, opts.subnet_len
            ),
            if fits > cidr.prefix_len() {
                format!("give it at most {holds} pods, or use subnet_len = {fits} or shorter")
            } else {
                format!("give it at most {holds} pods, or use a larger pod_cidr and a shorter subnet_len")
            },
        ));
    }
    Ok(())
}

fn calico_options(
    t: Option<&Table>,
    cidr: &Sp<Ipv4Net>,
    parts: &Parts,
    root: &Table,
    errs: &Errors,
) -> Option<CalicoOptions> {
    let before = errs.count();
    let mut opts = CalicoOptions {
        mode: CalicoMode::Bgp,
        block_size: 26,
        asn: 64512,
        mesh: CalicoMesh::Full,
        reflectors: Vec::new(),
        hold_time: 240,
        restart_time: 120,
    };
    let mut size_span = cidr.span.clone();
    if let Some(t) = t {
        errs.ok(t.allow(&[
            "mode",
            "block_size",
            "asn",
            "mesh",
            "reflectors",
            "hold_time",
            "restart_time",
        ]));
        if let Some(Some(h)) = errs.ok(t.int("hold_time", 3, 65535, "hold_time = 240")) {
            opts.hold_time = h.v as u32;
        }
        if let Some(Some(r)) = errs.ok(t.int("restart_time", 1, 65535, "restart_time = 120")) {
            opts.restart_time = r.v as u32;
        }
        if let Some(Some(m)) = errs.ok(t.string("mode", "mode = \"bgp\"")) {
            match m.v.as_str() {
                "bgp" => opts.mode = CalicoMode::Bgp,
                "vxlan" => opts.mode = CalicoMode::Vxlan,
                "ipip" => opts.mode = CalicoMode::Ipip,
                _ => errs.push(t.err(
                    m.span,
                    format!("unknown Calico mode \"{}\"", q(&m.v)),
                    "use mode = \"bgp\", \"vxlan\" or \"ipip\"",
                )),
            }
        }
        match errs.ok(t.int("block_size", 20, 32, "block_size = 26")) {
            Some(Some(b)) => {
                opts.block_size = b.v as u8;
                size_span = b.span;
            }
            Some(None) => {}
            None => return None,
        }
        if let Some(Some(a)) = errs.ok(t.int("asn", 1, u32::MAX as i64, "asn = 64512")) {
            opts.asn = a.v as u32;
        }
        calico_mesh(t, &mut opts, parts, errs);
    }
    errs.ok(check_calico_room(root, cidr, &opts, size_span, parts));
    (errs.count() == before).then_some(opts)
}

/// `mesh` and `reflectors`, checked against the nodes and routers.
fn calico_mesh(t: &Table, opts: &mut CalicoOptions, parts: &Parts, errs: &Errors) {
    let mesh = errs.ok(t.string("mesh", "mesh = \"full\"")).flatten();
    if let Some(m) = &mesh {
        match m.v.as_str() {
            "full" => opts.mesh = CalicoMesh::Full,
            "reflectors" => opts.mesh = CalicoMesh::Reflectors,
            "tor" => opts.mesh = CalicoMesh::Tor,
            _ => {
                errs.push(t.err(
                    m.span.clone(),
                    format!("unknown mesh \"{}\"", q(&m.v)),
                    "use mesh = \"full\", \"reflectors\" or \"tor\"",
                ));
                return;
            }
        }
        if opts.mesh == CalicoMesh::Tor && parts.ok {
            errs.ok(check_tor_routers(t, m, parts.nodes, parts.routers));
        }
    }
    let Some(refl) = errs.ok(t.strings("reflectors", "reflectors = [\"master\"]")) else {
        return;
    };
    match (&refl, opts.mesh) {
        (Some(r), CalicoMesh::Reflectors) => {
            if r.v.is_empty() {
                errs.push(t.err(
                    r.span.clone(),
                    "no route reflectors listed",
                    "name at least one node, e.g. reflectors = [\"master\"]",
                ));
            }
            for name in &r.v {
                let nodes = parts.nodes;
                if parts.ok && !nodes.iter().any(|n| n.node.name == name.v) {
                    let names: Vec<&str> = nodes.iter().map(|n| n.node.name.as_str()).collect();
                    let fix = match crate::spanned::closest(&name.v, &names) {
                        Some(near) => format!("did you mean \"{near}\"?"),
                        None => format!("name one of the nodes: {}", names.join(", ")),
                    };
                    errs.push(t.err(
                        name.span.clone(),
                        format!("reflector \"{}\" is not a node", q(&name.v)),
                        fix,
                    ));
                } else if opts.reflectors.contains(&name.v) {
                    errs.push(t.err(
                        name.span.clone(),
                        format!("reflector \"{}\" is listed twice", name.v),
                        "list each reflector once",
                    ));
                } else {
                    opts.reflectors.push(name.v.clone());
                }
            }
        }
        (Some(r), _) => errs.push(t.err(
            r.span.clone(),
            "`reflectors` only applies with mesh = \"reflectors\"",
            "add mesh = \"reflectors\", or remove `reflectors`",
        )),
        (None, CalicoMesh::Reflectors) => {
            let span = mesh.map(|m| m.span).unwrap_or_else(|| t.span());
            errs.push(t.err(
                span,
                "mesh = \"reflectors\" names no reflectors",
                "add reflectors = [\"<node>\", ...]",
            ));
        }
        (None, _) => {}
    }
}

/// Blocks hold pods, the pool holds a block for every node and enough
/// blocks for all their pods: a node whose block is full takes another from
/// the pool, as Calico's IPAM does.
fn check_calico_room(
    root: &Table,
    cidr: &Sp<Ipv4Net>,
    opts: &CalicoOptions,
    size_span: Range<usize>,
    parts: &Parts,
) -> R<()> {
    if opts.block_size > 30 {
        return Err(root.err(
            size_span,
            format!(
                "block_size /{} holds no pod: host-local needs a network address, a pod address and a broadcast address",
                opts.block_size
            ),
            "use a block_size from 20 to 30, e.g. 26 (Calico's default)",
        ));
    }
    if !parts.pool {
        return Ok(());
    }
    if opts.block_size < cidr.v.prefix_len() {
        return Err(root.err(
            size_span,
            format!("block_size /{} is larger than the pool {}", opts.block_size, cidr.v),
            format!("use a block_size of /{} or longer", cidr.v.prefix_len()),
        ));
    }
    if !parts.ok {
        return Ok(());
    }
    let room = (1u64 << (32 - opts.block_size)).saturating_sub(1);
    if let Some(n) = parts
        .nodes
        .iter()
        .find(|n| n.node.max_pods.is_some_and(|m| u64::from(m) > room))
    {
        return Err(root.err(
            n.max_pods_span.clone().unwrap_or(0..0),
            format!(
                "max_pods {} is more than a /{} block holds ({room})",
                n.node.max_pods.unwrap_or(0),
                opts.block_size
            ),
            "lower max_pods, or use a shorter block_size",
        ));
    }
    let blocks = 1u64 << (opts.block_size - cidr.v.prefix_len());
    let nodes = parts.nodes.len() as u64;
    if nodes > blocks {
        return Err(root.err(
            size_span,
            format!(
                "pool {} with block_size /{} leaves {blocks} blocks, but there are {nodes} nodes",
                cidr.v, opts.block_size,
            ),
            "use a larger pod_cidr or a longer block_size",
        ));
    }
    let per_block = calico_pods_per_block(opts.block_size);
    let want = |n: &NodeIn| (n.node.pods.len() as u64).max(n.node.max_pods.map_or(0, u64::from));
    let needed: u64 = parts.nodes.iter().map(|n| want(n).div_ceil(per_block).max(1)).sum();
    if needed > blocks {
        let pods: u64 = parts.nodes.iter().map(want).sum();
        return Err(root.err(
            cidr.span.clone(),
            format!(
                "pool {} holds {blocks} blocks of /{} ({per_block} pods each), but the nodes' {pods} pods need {needed}",
                cidr.v, opts.block_size
            ),
            "use a larger pod_cidr, or give the nodes fewer pods",
        ));
    }
    Ok(())
}

/// With `mesh = "tor"` every node peers with the BGP router on its switch,
/// so each switch with nodes needs a router that has an AS.
fn check_tor_routers(t: &Table, mesh: &Sp<String>, nodes: &[NodeIn], routers: &[RouterIn]) -> R<()> {
    for n in nodes {
        match routers.iter().find(|r| r.router.switches.contains(&n.node.switch)) {
            None => {
                return Err(t.err(
                    mesh.span.clone(),
                    format!(
                        "mesh = \"tor\" needs a router on switch \"{}\" (node \"{}\" is on it), and there is none",
                        n.node.switch, n.node.name
                    ),
                    format!("add a [[router]] with switches = [\"{}\"] and an asn", n.node.switch),
                ));
            }
            Some(r) if r.router.asn.is_none() => {
                return Err(t.err(
                    r.name_span.clone(),
                    format!(
                        "router \"{}\" has no asn, but mesh = \"tor\" peers with it over BGP",
                        r.router.name
                    ),
                    "give it an AS, e.g. asn = 65000",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Node, switch and router names are all TARGETs on the command line, so
/// they must not collide across kinds either.
fn check_unique_across_kinds(root: &Table, switches: &[SwitchIn], nodes: &[NodeIn], routers: &[RouterIn]) -> R<()> {
    for n in nodes {
        let clash = switches
            .iter()
            .find(|s| s.switch.name == n.node.name)
            .map(|_| "switch")
            .or_else(|| routers.iter().find(|r| r.router.name == n.node.name).map(|_| "router"));
        if let Some(kind) = clash {
            return Err(root.err(
                n.name_span.clone(),
                format!("node \"{}\" has the name of a {kind}", n.node.name),
                "rename one of them: a TARGET such as `cnilab exec NAME` must name one thing",
            ));
        }
    }
    for r in routers {
        if switches.iter().any(|s| s.switch.name == r.router.name) {
            return Err(root.err(
                r.name_span.clone(),
                format!("router \"{}\" has the name of a switch", r.router.name),
                "rename one of them: a TARGET such as `cnilab exec NAME` must name one thing",
            ));
        }
    }
    Ok(())
}

/// A host address to suggest on a network: .10, or the last host of a
/// smaller one.
fn example_host(net: &Ipv4Net) -> Ipv4Addr {
    let hosts = (1u64 << (32 - u32::from(net.prefix_len()))).saturating_sub(2);
    host(net, FIRST_NODE_HOST.min(hosts.max(1) as u32))
}

/// The `n`th address of a network.
fn host(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Explicit addresses are checked first, then the others are handed out in
/// file order from .10 up, skipping what is taken.
fn assign_addresses(
    root: &Table,
    switches: &[SwitchIn],
    routers: &[RouterIn],
    mut nodes: Vec<NodeIn>,
) -> R<Vec<NodeIn>> {
    for s in switches {
        let sw = &s.switch;
        let mut taken: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        // .1 is every switch's gateway: its router's, or else the fabric's uplink.
        let gateway = match routers.iter().find(|r| r.router.switches.contains(&sw.name)) {
            Some(r) => format!("router \"{}\"", r.router.name),
            None => "the fabric's uplink".to_string(),
        };
        taken.insert(host(&sw.subnet, 1), gateway.clone());
        for n in nodes.iter().filter(|n| n.node.switch == sw.name) {
            let (Some(ip), Some(span)) = (n.explicit_ip, n.ip_span.clone()) else {
                continue;
            };
            if ip == host(&sw.subnet, 1) {
                return Err(root.err(
                    span,
                    format!(
                        "node \"{}\" address {ip} is the gateway (.1) of switch \"{}\", which {gateway} serves",
                        n.node.name, sw.name
                    ),
                    format!(
                        "use another host address of {}, e.g. {}",
                        sw.subnet,
                        example_host(&sw.subnet)
                    ),
                ));
            }
            if !sw.subnet.contains(&ip) || ip == sw.subnet.network() || ip == sw.subnet.broadcast() {
                let why = if sw.subnet.contains(&ip) {
                    format!(
                        "is the {} address of {}",
                        if ip == sw.subnet.network() {
                            "network"
                        } else {
                            "broadcast"
                        },
                        sw.subnet
                    )
                } else {
                    format!("is outside switch \"{}\" ({})", sw.name, sw.subnet)
                };
                return Err(root.err(
                    span,
                    format!("node \"{}\" address {ip} {why}", n.node.name),
                    format!("use a host address of {}, e.g. {}", sw.subnet, example_host(&sw.subnet)),
                ));
            }
            if let Some(owner) = taken.get(&ip) {
                return Err(root.err(
                    span,
                    format!("node \"{}\" address {ip} is already taken by {owner}", n.node.name),
                    "give each node its own address, or leave `ip` out to get one assigned",
                ));
            }
            taken.insert(ip, format!("node \"{}\"", n.node.name));
        }
        let last = u32::from(sw.subnet.broadcast()) - u32::from(sw.subnet.network()) - 1;
        let mut next = FIRST_NODE_HOST;
        let auto: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.node.switch == sw.name && n.explicit_ip.is_none())
            .map(|(i, _)| i)
            .collect();
        // Counted, not walked: a /4 switch has 2^28 addresses.
        let in_range =
            |a: &Ipv4Addr| (FIRST_NODE_HOST..=last).contains(&(u32::from(*a) - u32::from(sw.subnet.network())));
        let room = (last + 1).saturating_sub(FIRST_NODE_HOST) as usize - taken.keys().filter(|a| in_range(a)).count();
        if auto.len() > room {
            let span = if s.span == (0..0) {
                nodes[auto[room]].name_span.clone()
            } else {
                s.subnet_span.clone()
            };
            let bigger = Ipv4Net::new(sw.subnet.network(), sw.subnet.prefix_len().saturating_sub(1)).map(|n| n.trunc());
            return Err(root.err(
                span,
                format!(
                    "switch \"{}\" ({}) has room for {room} automatically addressed nodes (from .{FIRST_NODE_HOST} up), but {} nodes need one",
                    sw.name,
                    sw.subnet,
                    auto.len()
                ),
                match bigger {
                    Ok(b) => format!("use a larger subnet such as {b}, or put some nodes on another switch"),
                    Err(_) => "put some nodes on another switch".to_string(),
                },
            ));
        }
        for i in auto {
            while taken.contains_key(&host(&sw.subnet, next)) {
                next += 1;
            }
            let ip = host(&sw.subnet, next);
            taken.insert(ip, nodes[i].node.name.clone());
            nodes[i].node.ip = ip;
        }
        for n in nodes.iter_mut().filter(|n| n.node.switch == sw.name) {
            if let Some(ip) = n.explicit_ip {
                n.node.ip = ip;
            }
        }
    }
    Ok(nodes)
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;

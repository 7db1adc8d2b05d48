//! The topology file (shared/design/topology.md): parsing, defaults and every
//! rejection the contract lists, each with file:line:column and a fix.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, InputError, Source};
use crate::spanned::{Sp, Table, parse_document};

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

/// Parses and validates a topology from its source text.
pub fn parse(src: &Source) -> R<Topology> {
    let (doc, span) = parse_document(src, &src.text)?;
    let root = Table::root(src, &doc, span);
    root.allow(&["name", "seed", "network", "switch", "node", "router"])?;

    let name = root.required_string("name", "name = \"demo\"")?;
    check_name(&root, &name, "lab name", 12)?;
    let seed = root.int("seed", 0, i64::MAX, "seed = 0")?.map_or(0, |s| s.v as u64);

    let switches = parse_switches(&root)?;
    let routers = parse_routers(&root, &switches)?;
    let nodes = parse_nodes(&root, &switches)?;
    if nodes.is_empty() {
        return Err(root.err(
            0..0,
            "the topology has no nodes",
            "add at least one [[node]] section, e.g. [[node]] name = \"worker{i}\" count = 2 pods = 2",
        ));
    }
    let network = parse_network(&root, &switches, &routers, &nodes)?;
    check_unique_across_kinds(&root, &switches, &nodes, &routers)?;
    let nodes = assign_addresses(&root, &switches, &routers, nodes)?;

    Ok(Topology {
        name: name.v,
        seed,
        network,
        switches: switches.into_iter().map(|s| s.switch).collect(),
        nodes: nodes.into_iter().map(|n| n.node).collect(),
        routers: routers.into_iter().map(|r| r.router).collect(),
    })
}

/// Names: 1-`max` chars of `[a-z0-9-]`, starting with a letter.
fn check_name(t: &Table, name: &Sp<String>, what: &str, max: usize) -> R<()> {
    let n = &name.v;
    let problem = if n.is_empty() {
        Some("is empty".to_string())
    } else if n.len() > max {
        Some(format!("has {} characters, more than {max}", n.len()))
    } else if !n.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("does not start with a lowercase letter".to_string())
    } else {
        n.chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            .map(|c| format!("holds `{c}`"))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(t.err(
            name.span.clone(),
            format!("{what} \"{n}\" {p}"),
            format!(
                "use 1-{max} characters of a-z, 0-9 and '-', starting with a letter, e.g. \"{}\"",
                suggest_name(n, max)
            ),
        )),
    }
}

fn suggest_name(n: &str, max: usize) -> String {
    let mut s: String = n
        .to_ascii_lowercase()
        .chars()
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
            format!("`{key}` = \"{}\" is not an IPv4 CIDR", s.v),
            format!("write an IPv4 network and prefix length, e.g. {example}"),
        )),
    }
}

struct SwitchIn {
    switch: Switch,
    span: Range<usize>,
    subnet_span: Range<usize>,
}

fn parse_switches(root: &Table) -> R<Vec<SwitchIn>> {
    let mut out: Vec<SwitchIn> = Vec::new();
    for t in root.tables("switch", "[[switch]]")? {
        t.allow(&["name", "subnet", "mtu"])?;
        let name = t.required_string("name", "name = \"tor1\"")?;
        check_name(&t, &name, "switch name", 15)?;
        if out.iter().any(|s| s.switch.name == name.v) {
            return Err(t.err(
                name.span,
                format!("there are two switches named \"{}\"", name.v),
                "give each [[switch]] its own name",
            ));
        }
        let subnet = parse_cidr(&t, "subnet", "subnet = \"172.20.0.0/24\"")?.ok_or_else(|| {
            t.err(
                t.span(),
                format!("switch \"{}\" has no `subnet`", name.v),
                "add the underlay subnet of its nodes, e.g. subnet = \"172.20.0.0/24\"",
            )
        })?;
        if subnet.v.prefix_len() > 30 {
            return Err(t.err(
                subnet.span,
                format!("switch subnet {} is too small to hold a node", subnet.v),
                "use a prefix of /30 or shorter, e.g. /24",
            ));
        }
        for other in &out {
            if other.switch.subnet.contains(&subnet.v.network()) || subnet.v.contains(&other.switch.subnet.network()) {
                return Err(t.err(
                    subnet.span,
                    format!(
                        "switch subnet {} overlaps {} of switch \"{}\"",
                        subnet.v, other.switch.subnet, other.switch.name
                    ),
                    "give each switch a subnet of its own",
                ));
            }
        }
        let mtu = t
            .int("mtu", MTU_MIN, MTU_MAX, "mtu = 1500")?
            .map_or(1500, |m| m.v as u32);
        out.push(SwitchIn {
            switch: Switch {
                name: name.v,
                subnet: subnet.v,
                mtu,
            },
            span: t.span(),
            subnet_span: subnet.span,
        });
    }
    if out.is_empty() {
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
    Ok(out)
}

struct RouterIn {
    router: Router,
    name_span: Range<usize>,
}

fn parse_routers(root: &Table, switches: &[SwitchIn]) -> R<Vec<RouterIn>> {
    let mut out: Vec<RouterIn> = Vec::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for t in root.tables("router", "[[router]]")? {
        t.allow(&["name", "switches", "asn"])?;
        let name = t.required_string("name", "name = \"spine\"")?;
        check_name(&t, &name, "router name", 15)?;
        if out.iter().any(|r| r.router.name == name.v) {
            return Err(t.err(
                name.span,
                format!("there are two routers named \"{}\"", name.v),
                "give each [[router]] its own name",
            ));
        }
        let sw = t
            .strings("switches", "switches = [\"tor1\", \"tor2\"]")?
            .ok_or_else(|| {
                t.err(
                    t.span(),
                    format!("router \"{}\" has no `switches`", name.v),
                    "list the switches it joins, e.g. switches = [\"tor1\", \"tor2\"]",
                )
            })?;
        if sw.v.is_empty() {
            return Err(t.err(
                sw.span,
                format!("router \"{}\" joins no switch", name.v),
                "list at least one switch, e.g. switches = [\"tor1\"]",
            ));
        }
        let mut names = Vec::new();
        for s in &sw.v {
            if !switches.iter().any(|x| x.switch.name == s.v) {
                return Err(unknown_switch(&t, s, switches));
            }
            if names.contains(&s.v) {
                return Err(t.err(
                    s.span.clone(),
                    format!("router \"{}\" lists switch \"{}\" twice", name.v, s.v),
                    "list each switch once",
                ));
            }
            if let Some(other) = taken.get(&s.v) {
                return Err(t.err(
                    s.span.clone(),
                    format!("switch \"{}\" already has router \"{other}\", which takes its .1", s.v),
                    "put one router on each switch",
                ));
            }
            taken.insert(s.v.clone(), name.v.clone());
            names.push(s.v.clone());
        }
        let asn = t.int("asn", 1, u32::MAX as i64, "asn = 65000")?.map(|a| a.v as u32);
        out.push(RouterIn {
            router: Router {
                name: name.v,
                switches: names,
                asn,
            },
            name_span: name.span,
        });
    }
    Ok(out)
}

fn unknown_switch(t: &Table, s: &Sp<String>, switches: &[SwitchIn]) -> InputError {
    let names: Vec<&str> = switches.iter().map(|x| x.switch.name.as_str()).collect();
    let fix = match crate::spanned::closest(&s.v, &names) {
        Some(near) => format!("did you mean \"{near}\"? switches: {}", names.join(", ")),
        None => format!(
            "use one of the switches: {}, or add a [[switch]] named \"{}\"",
            names.join(", "),
            s.v
        ),
    };
    t.err(s.span.clone(), format!("there is no switch \"{}\"", s.v), fix)
}

struct NodeIn {
    node: Node,
    max_pods_span: Option<Range<usize>>,
    name_span: Range<usize>,
    ip_span: Option<Range<usize>>,
    explicit_ip: Option<Ipv4Addr>,
}

fn parse_nodes(root: &Table, switches: &[SwitchIn]) -> R<Vec<NodeIn>> {
    let mut out: Vec<NodeIn> = Vec::new();
    for t in root.tables("node", "[[node]]")? {
        t.allow(&["name", "switch", "ip", "pods", "count", "max_pods"])?;
        let name = t.required_string("name", "name = \"worker1\"")?;
        let count = t.int("count", 1, 4096, "count = 3")?;
        let templated = name.v.contains("{i}");
        match (&count, templated) {
            (Some(c), false) => {
                return Err(t.err(
                    c.span.clone(),
                    format!("node \"{}\" has `count` but its name has no \"{{i}}\"", name.v),
                    format!("put {{i}} where the number goes, e.g. name = \"{}{{i}}\"", name.v),
                ));
            }
            (None, true) => {
                return Err(t.err(
                    name.span.clone(),
                    format!("node name \"{}\" has \"{{i}}\" but no `count`", name.v),
                    "add count = N to make N nodes, or remove {i} from the name",
                ));
            }
            _ => {}
        }
        let switch = match t.string("switch", "switch = \"tor1\"")? {
            Some(s) => {
                if !switches.iter().any(|x| x.switch.name == s.v) {
                    return Err(unknown_switch(&t, &s, switches));
                }
                s.v
            }
            None if switches.len() == 1 => switches[0].switch.name.clone(),
            None => {
                let names: Vec<&str> = switches.iter().map(|x| x.switch.name.as_str()).collect();
                return Err(t.err(
                    name.span.clone(),
                    format!("node \"{}\" names no switch, and there are {}", name.v, switches.len()),
                    format!("add switch = \"...\" with one of: {}", names.join(", ")),
                ));
            }
        };
        let ip = match t.string("ip", "ip = \"172.20.0.10\"")? {
            None => None,
            Some(s) => {
                if let Some(c) = &count {
                    return Err(t.err(
                        s.span.clone(),
                        format!("node \"{}\" has both `ip` and `count = {}`", name.v, c.v),
                        "addresses of counted nodes are assigned in order; remove `ip` or `count`",
                    ));
                }
                let addr = s.v.parse::<Ipv4Addr>().map_err(|_| {
                    t.err(
                        s.span.clone(),
                        format!("`ip` = \"{}\" is not an IPv4 address", s.v),
                        "write an address on the node's switch subnet, e.g. ip = \"172.20.0.10\"",
                    )
                })?;
                Some(Sp::new(addr, s.span))
            }
        };
        let pods = parse_pods(&t)?;
        let max_pods = t.int("max_pods", 1, 65535, "max_pods = 4")?;
        let n = count.as_ref().map_or(1, |c| c.v);
        for i in 1..=n {
            let expanded = Sp::new(name.v.replace("{i}", &i.to_string()), name.span.clone());
            check_name(&t, &expanded, "node name", 15)?;
            if out.iter().any(|o| o.node.name == expanded.v) {
                return Err(t.err(
                    name.span.clone(),
                    format!("there are two nodes named \"{}\"", expanded.v),
                    "give each node its own name",
                ));
            }
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
                explicit_ip: ip.as_ref().map(|i| i.v),
            });
        }
    }
    Ok(out)
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
    let mut out: Vec<String> = Vec::new();
    for n in names.v {
        check_name(t, &n, "pod name", 15)?;
        if out.contains(&n.v) {
            return Err(t.err(
                n.span,
                format!("pod name \"{}\" appears twice on this node", n.v),
                "give each pod of a node its own name",
            ));
        }
        out.push(n.v);
    }
    Ok(out)
}

fn parse_network(root: &Table, switches: &[SwitchIn], routers: &[RouterIn], nodes: &[NodeIn]) -> R<Network> {
    let net = root.table("network", "[network]")?;
    let Some(net) = net else {
        let cidr: Ipv4Net = "10.244.0.0/16".parse().expect("valid default");
        check_pod_cidr_overlap(root, &Sp::new(cidr, 0..0), switches)?;
        let opts = flannel_options(None, &Sp::new(cidr, 0..0), nodes.len(), root)?;
        return Ok(Network {
            pod_cidr: cidr,
            mtu: None,
            profile: Profile::Flannel(opts),
        });
    };
    net.allow(&["cni", "pod_cidr", "mtu", "flannel", "calico"])?;
    let cni = net
        .string("cni", "cni = \"flannel\"")?
        .unwrap_or_else(|| Sp::new("flannel".into(), net.span()));
    let profiles = ["flannel", "calico"];
    if !profiles.contains(&cni.v.as_str()) {
        let fix = match crate::spanned::closest(&cni.v, &profiles) {
            Some(near) => format!("did you mean \"{near}\"? profiles: flannel, calico"),
            None => "use one of the profiles under plugins/: flannel, calico".to_string(),
        };
        return Err(net.err(cni.span, format!("unknown CNI profile \"{}\"", cni.v), fix));
    }
    let default_cidr = if cni.v == "calico" {
        "192.168.0.0/16"
    } else {
        "10.244.0.0/16"
    };
    let pod_cidr = parse_cidr(&net, "pod_cidr", "pod_cidr = \"10.244.0.0/16\"")?
        .unwrap_or_else(|| Sp::new(default_cidr.parse().expect("valid default"), net.span()));
    check_pod_cidr_overlap(&net, &pod_cidr, switches)?;
    let mtu = net.int("mtu", MTU_MIN, MTU_MAX, "mtu = 1400")?.map(|m| m.v as u32);
    // A profile's section belongs to that profile only.
    for other in profiles.iter().filter(|p| **p != cni.v) {
        if let Some(span) = net.key_span(other) {
            return Err(net.err(
                span,
                format!("[network.{other}] does not belong to cni = \"{}\"", cni.v),
                format!("remove [network.{other}], or set cni = \"{other}\""),
            ));
        }
    }
    if cni.v != "calico" {
        if let Some(span) = nodes.iter().find_map(|n| n.max_pods_span.clone()) {
            return Err(net.err(
                span,
                "max_pods limits a node's IPAM range, which only the calico profile's conflist sets; flannel's plugin always hands out the whole lease",
                "use cni = \"calico\", or a longer subnet_len to give each node fewer addresses",
            ));
        }
    }
    let profile = if cni.v == "calico" {
        let t = net.table("calico", "[network.calico]")?;
        Profile::Calico(calico_options(t.as_ref(), &pod_cidr, nodes, routers, root)?)
    } else {
        let t = net.table("flannel", "[network.flannel]")?;
        Profile::Flannel(flannel_options(t.as_ref(), &pod_cidr, nodes.len(), &net)?)
    };
    Ok(Network {
        pod_cidr: pod_cidr.v,
        mtu,
        profile,
    })
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

fn flannel_options(t: Option<&Table>, pod_cidr: &Sp<Ipv4Net>, nodes: usize, at: &Table) -> R<FlannelOptions> {
    let cidr = pod_cidr.v;
    let default_len = if cidr.prefix_len() <= 22 {
        24
    } else {
        cidr.prefix_len() + 2
    };
    let mut opts = FlannelOptions {
        backend: FlannelBackend::Vxlan,
        vni: 1,
        port: 8472,
        subnet_len: default_len,
    };
    let mut len_span = None;
    if let Some(t) = t {
        t.allow(&["backend", "vni", "port", "subnet_len"])?;
        if let Some(b) = t.string("backend", "backend = \"vxlan\"")? {
            opts.backend = match b.v.as_str() {
                "vxlan" => FlannelBackend::Vxlan,
                "host-gw" => FlannelBackend::HostGw,
                "udp" => FlannelBackend::Udp,
                _ => {
                    return Err(t.err(
                        b.span,
                        format!("unknown flannel backend \"{}\"", b.v),
                        "use backend = \"vxlan\", \"host-gw\" or \"udp\"",
                    ));
                }
            };
        }
        if opts.backend == FlannelBackend::Udp {
            opts.port = 8285;
        }
        if let Some(v) = t.int("vni", 1, (1 << 24) - 1, "vni = 1")? {
            opts.vni = v.v as u32;
        }
        if let Some(p) = t.int("port", 1, 65535, "port = 8472")? {
            opts.port = p.v as u16;
        }
        if let Some(l) = t.int("subnet_len", 1, 30, "subnet_len = 24")? {
            opts.subnet_len = l.v as u8;
            len_span = Some(l.span);
        }
    }
    let span = len_span.unwrap_or_else(|| pod_cidr.span.clone());
    if opts.subnet_len <= cidr.prefix_len() {
        return Err(at.err(
            span,
            format!(
                "subnet_len {} does not split the pod CIDR {cidr} into node subnets",
                opts.subnet_len
            ),
            format!(
                "use a subnet_len longer than /{}, e.g. {}",
                cidr.prefix_len(),
                default_len.max(cidr.prefix_len() + 1)
            ),
        ));
    }
    // flannel never leases the first subnet (SubnetMin), hence the - 1.
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
    Ok(opts)
}

fn calico_options(
    t: Option<&Table>,
    cidr: &Sp<Ipv4Net>,
    nodes: &[NodeIn],
    routers: &[RouterIn],
    root: &Table,
) -> R<CalicoOptions> {
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
        t.allow(&[
            "mode",
            "block_size",
            "asn",
            "mesh",
            "reflectors",
            "hold_time",
            "restart_time",
        ])?;
        if let Some(h) = t.int("hold_time", 3, 65535, "hold_time = 240")? {
            opts.hold_time = h.v as u32;
        }
        if let Some(r) = t.int("restart_time", 1, 65535, "restart_time = 120")? {
            opts.restart_time = r.v as u32;
        }
        if let Some(m) = t.string("mode", "mode = \"bgp\"")? {
            opts.mode = match m.v.as_str() {
                "bgp" => CalicoMode::Bgp,
                "vxlan" => CalicoMode::Vxlan,
                "ipip" => CalicoMode::Ipip,
                _ => {
                    return Err(t.err(
                        m.span,
                        format!("unknown Calico mode \"{}\"", m.v),
                        "use mode = \"bgp\", \"vxlan\" or \"ipip\"",
                    ));
                }
            };
        }
        if let Some(b) = t.int("block_size", 20, 32, "block_size = 26")? {
            opts.block_size = b.v as u8;
            size_span = b.span;
        }
        if let Some(a) = t.int("asn", 1, u32::MAX as i64, "asn = 64512")? {
            opts.asn = a.v as u32;
        }
        let mesh = t.string("mesh", "mesh = \"full\"")?;
        if let Some(m) = &mesh {
            opts.mesh = match m.v.as_str() {
                "full" => CalicoMesh::Full,
                "reflectors" => CalicoMesh::Reflectors,
                "tor" => CalicoMesh::Tor,
                _ => {
                    return Err(t.err(
                        m.span.clone(),
                        format!("unknown mesh \"{}\"", m.v),
                        "use mesh = \"full\", \"reflectors\" or \"tor\"",
                    ));
                }
            };
            if opts.mesh == CalicoMesh::Tor {
                check_tor_routers(t, m, nodes, routers)?;
            }
        }
        let refl = t.strings("reflectors", "reflectors = [\"master\"]")?;
        match (&refl, opts.mesh) {
            (Some(r), CalicoMesh::Reflectors) => {
                if r.v.is_empty() {
                    return Err(t.err(
                        r.span.clone(),
                        "no route reflectors listed",
                        "name at least one node, e.g. reflectors = [\"master\"]",
                    ));
                }
                for name in &r.v {
                    if !nodes.iter().any(|n| n.node.name == name.v) {
                        let names: Vec<&str> = nodes.iter().map(|n| n.node.name.as_str()).collect();
                        let fix = match crate::spanned::closest(&name.v, &names) {
                            Some(near) => format!("did you mean \"{near}\"?"),
                            None => format!("name one of the nodes: {}", names.join(", ")),
                        };
                        return Err(t.err(
                            name.span.clone(),
                            format!("reflector \"{}\" is not a node", name.v),
                            fix,
                        ));
                    }
                    if opts.reflectors.contains(&name.v) {
                        return Err(t.err(
                            name.span.clone(),
                            format!("reflector \"{}\" is listed twice", name.v),
                            "list each reflector once",
                        ));
                    }
                    opts.reflectors.push(name.v.clone());
                }
            }
            (Some(r), _) => {
                return Err(t.err(
                    r.span.clone(),
                    "`reflectors` only applies with mesh = \"reflectors\"",
                    "add mesh = \"reflectors\", or remove `reflectors`",
                ));
            }
            (None, CalicoMesh::Reflectors) => {
                let span = mesh.map(|m| m.span).unwrap_or_else(|| t.span());
                return Err(t.err(
                    span,
                    "mesh = \"reflectors\" names no reflectors",
                    "add reflectors = [\"<node>\", ...]",
                ));
            }
            (None, _) => {}
        }
    }
    if opts.block_size < cidr.v.prefix_len() {
        return Err(root.err(
            size_span,
            format!("block_size /{} is larger than the pool {}", opts.block_size, cidr.v),
            format!("use a block_size of /{} or longer", cidr.v.prefix_len()),
        ));
    }
    let room = (1u64 << (32 - opts.block_size)).saturating_sub(1);
    if let Some(n) = nodes
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
    if (nodes.len() as u64) > blocks {
        return Err(root.err(
            size_span,
            format!(
                "pool {} with block_size /{} leaves {blocks} blocks, but there are {} nodes",
                cidr.v,
                opts.block_size,
                nodes.len()
            ),
            "use a larger pod_cidr or a longer block_size",
        ));
    }
    Ok(opts)
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
        if let Some(r) = routers.iter().find(|r| r.router.switches.contains(&sw.name)) {
            taken.insert(host(&sw.subnet, 1), format!("router \"{}\"", r.router.name));
        }
        for n in nodes.iter().filter(|n| n.node.switch == sw.name) {
            let (Some(ip), Some(span)) = (n.explicit_ip, n.ip_span.clone()) else {
                continue;
            };
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
                    format!(
                        "use a host address of {}, e.g. {}",
                        sw.subnet,
                        host(&sw.subnet, FIRST_NODE_HOST.min(sw.subnet.hosts().count() as u32))
                    ),
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
        let room = (FIRST_NODE_HOST..=last.max(FIRST_NODE_HOST))
            .filter(|h| *h <= last && !taken.contains_key(&host(&sw.subnet, *h)))
            .count();
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

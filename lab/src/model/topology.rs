//! The topology file (shared/design/topology.md): parsing, defaults and every
//! rejection the contract lists, each with file:line:column and a fix. The
//! part of `[network]` that belongs to a CNI profile is read by that profile
//! through [`ProfileSyntax`]; the profile layer passes them all to [`parse`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::error::{Error, InputError, Source, excerpt};
use crate::model::identity::{
    AppliedPolicy, DEFAULT_NAMESPACE, Namespace, PodMeta, load_policies, parse_namespaces, parse_pod_table,
    parse_policy_patterns,
};
use crate::model::spanned::{Errors, Item, Sp, Table, parse_document};

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
    /// The lab's etcd, with `datastore = "etcd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    /// `[[namespace]]` sections: Kubernetes namespaces with labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    /// The NetworkPolicies `[network] policies` names, read at load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AppliedPolicy>,
}

/// Where the control plane keeps its state (`[network] datastore`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    /// cnilab's own store: a folder with one file per key.
    #[default]
    File,
    /// A real etcd in a namespace of its own.
    Etcd,
}

impl Datastore {
    /// As written in the topology.
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::File => "file",
            Datastore::Etcd => "etcd",
        }
    }
}

/// `[etcd]`: the lab's etcd server on the first switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Etcd {
    /// Its address on the switch (default: the switch's .2).
    pub ip: Ipv4Addr,
    /// The switch it sits on (the first one).
    pub switch: String,
}

/// The TARGET that names the lab's etcd, and so no node may be called.
pub const ETCD_TARGET: &str = "etcd";

/// `[network]`: one CNI profile for the whole lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// The pod CIDR (kubeadm --pod-network-cidr), or the profile's IP pool.
    pub pod_cidr: Ipv4Net,
    /// A forced pod MTU instead of the profile's computation.
    pub mtu: Option<u32>,
    /// The profile and its options.
    pub profile: ProfileOptions,
    /// Where the control plane keeps its state.
    #[serde(default)]
    pub datastore: Datastore,
    /// NetworkPolicy manifest patterns, relative to the topology file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// The CNI profile `cni` names, with its options as its [`ProfileSyntax`]
/// read them (saved as `{"cni": "<name>", <options>...}`); the profile
/// reads them back into its own type when it plans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileOptions {
    /// The profile's name as written in `cni = "..."`.
    pub cni: String,
    /// Its options, with every default filled in.
    #[serde(flatten)]
    pub options: Options,
}

/// A profile's options as the topology keeps them: JSON values by key, in
/// the order the profile's options type declares them (saved, and shown by
/// `validate --json`, in that order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options(pub Vec<(String, serde_json::Value)>);

impl Options {
    /// The options of a profile's options type, in its field order.
    pub fn of(options: &impl Serialize) -> serde_json::Result<Options> {
        serde_json::from_str(&serde_json::to_string(options)?)
    }
}

impl Serialize for Options {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> serde::de::Visitor<'de> for InOrder {
            type Value = Options;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of options")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Options, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    v.push(entry);
                }
                Ok(Options(v))
            }
        }
        d.deserialize_map(InOrder)
    }
}

impl ProfileOptions {
    /// The profile's name as written in `cni = "..."`.
    pub fn name(&self) -> &str {
        &self.cni
    }

    /// The options as the profile's own type, when they are that profile's.
    pub fn get<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        let object = self.options.0.iter().cloned().collect();
        serde_json::from_value(serde_json::Value::Object(object)).ok()
    }
}

/// How one CNI profile's part of `[network]` is read: the profile layer
/// gives the parser one of these per profile, the first being the default
/// when `cni` is left out.
pub trait ProfileSyntax: Sync {
    /// Its name, as in `cni = "..."` and `[network.<name>]`.
    fn name(&self) -> &'static str;

    /// The pod CIDR when `pod_cidr` is left out.
    fn default_pod_cidr(&self) -> &'static str;

    /// Checks the nodes against the profile, before its section is read.
    fn check_nodes(&self, _net: &Table, _parts: &Parts, _errs: &Errors) {}

    /// Reads `[network.<name>]` (`None` when it is not written), with every
    /// default, and checks it against the pool and the other parts. Records
    /// each mistake in `errs`; `None` when there was one.
    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options>;

    /// The `[[node]]` keys of a cloud instance (`instance_type`,
    /// `max_enis`, `ips_per_eni`) it reads; anywhere else they are an error.
    fn reads_instance_keys(&self) -> bool {
        false
    }

    /// The datastores the profile can keep its state in.
    fn datastores(&self) -> &'static [Datastore] {
        &[Datastore::File]
    }

    /// Runs another implementation of the profile than the topology says
    /// (`up --flannel upstream`), changing what that needs besides.
    fn set_implementation(&self, _t: &mut Topology, value: &str) -> Result<(), Error> {
        Err(Error::usage(
            format!(
                "cni = \"{}\" has no implementation \"{}\" to choose",
                self.name(),
                q(value)
            ),
            "leave the option out",
        ))
    }

    /// A datastore its options need (flannel's upstream implementation
    /// needs etcd), and which option asks for it.
    fn needs_datastore(&self, _options: &Options) -> Option<(Datastore, &'static str)> {
        None
    }
}

/// What a profile's options are read against.
pub struct Scope<'s> {
    /// The pod CIDR (a default, at `[network]`, when none was written).
    pub pod_cidr: &'s Sp<Ipv4Net>,
    /// The nodes and routers.
    pub parts: &'s Parts<'s>,
    /// The table errors about the pool and the nodes are reported through.
    pub at: &'s Table<'s, 's>,
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
    /// How many addresses its IPAM range holds, where the profile's
    /// conflist limits it, like a cloud node's pod limit; none: the whole
    /// block.
    #[serde(default)]
    pub max_pods: Option<u32>,
    /// Its further interfaces, eth1, eth2, ... in order: one per switch
    /// after the first of `switches = [...]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ifaces: Vec<NodeIface>,
    /// The Kubernetes identity of pods written as tables, by pod name
    /// (a pod written as a plain name is in `default`, without labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_meta: BTreeMap<String, PodMeta>,
    /// Its cloud instance type (aws-vpc: the ENI and IPv4-per-ENI limits
    /// of that type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// How many ENIs it may attach, instead of its instance type's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_enis: Option<u32>,
    /// How many IPv4 addresses each ENI holds, instead of its instance
    /// type's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips_per_eni: Option<u32>,
}

/// A node's interface after eth0 (`eth<N>` for the `N`th of `extra_ifaces`,
/// from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIface {
    /// The switch it is on.
    pub switch: String,
    /// Its address on that switch, assigned automatically.
    pub ip: Ipv4Addr,
}

impl Node {
    /// A pod's Kubernetes identity.
    pub fn meta(&self, pod: &str) -> PodMeta {
        self.pod_meta.get(pod).cloned().unwrap_or_default()
    }

    /// The node's interface names, eth0 first.
    pub fn iface_names(&self) -> Vec<String> {
        (0..=self.extra_ifaces.len()).map(|i| format!("eth{i}")).collect()
    }

    /// The switch and address of one of its interfaces, by name.
    pub fn iface(&self, name: &str) -> Option<(&str, Ipv4Addr)> {
        if name == "eth0" {
            return Some((&self.switch, self.ip));
        }
        let i: usize = name.strip_prefix("eth")?.parse().ok()?;
        if name != format!("eth{i}") {
            return None;
        }
        let x = self.extra_ifaces.get(i.checked_sub(1)?)?;
        Some((&x.switch, x.ip))
    }
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
    /// Reads and validates a topology file, its network read by one of
    /// `profiles`.
    pub fn load(path: &Path, profiles: &[&dyn ProfileSyntax]) -> Result<Topology, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(
                format!("cannot read topology {}: {e}", path.display()),
                "give the path of a topology file, such as topologies/flannel-vxlan.toml",
            )
        })?;
        let src = Source::new(path.display().to_string(), text);
        let mut t = parse(&src, profiles)?;
        if !t.network.policies.is_empty() {
            // Where each pattern is written, for the errors of its files.
            let (doc, span) = parse_document(&src, &src.text)?;
            let root = Table::root(&src, &doc, span);
            let patterns = match root.table("network", "[network]")? {
                Some(net) => parse_policy_patterns(&net)?,
                None => Vec::new(),
            };
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            t.policies = load_policies(&src, dir, &patterns, &t.namespace_names())?;
        }
        Ok(t)
    }

    /// Every Kubernetes namespace of the lab: `default`, those declared
    /// and those its pods are in, sorted.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::iter::once(DEFAULT_NAMESPACE.to_string())
            .chain(self.namespaces.iter().map(|n| n.name.clone()))
            .chain(
                self.nodes
                    .iter()
                    .flat_map(|n| n.pod_meta.values().map(|m| m.namespace.clone())),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A namespace's labels as declared.
    pub fn namespace_labels(&self, ns: &str) -> crate::model::netpol::Labels {
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| n.labels.clone())
            .unwrap_or_default()
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
/// mistake are skipped rather than reported as a second mistake. The
/// network is read by one of `profiles` (the first when `cni` is left out).
pub fn parse(src: &Source, profiles: &[&dyn ProfileSyntax]) -> R<Topology> {
    let (doc, span) = parse_document(src, &src.text)?;
    let root = Table::root(src, &doc, span);
    let errs = Errors::default();
    let topology = read(&root, profiles, &errs);
    errs.finish(topology)
}

/// Most nodes a topology may have, all switches together.
pub const MAX_NODES: usize = 4096;
/// Most pods a topology may have, all nodes together.
pub const MAX_PODS: usize = 65536;

fn read(root: &Table, profiles: &[&dyn ProfileSyntax], errs: &Errors) -> Option<Topology> {
    errs.ok(root.allow(&[
        "name",
        "seed",
        "network",
        "switch",
        "node",
        "router",
        "etcd",
        "namespace",
    ]));
    let namespaces = errs.ok(parse_namespaces(root));
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
    let network = parse_network(root, &switches, &routers, &nodes, parts_ok, profiles, errs);
    if !parts_ok {
        return None;
    }
    errs.ok(check_unique_across_kinds(root, &switches, &nodes, &routers));
    let datastore = network.as_ref().map(|n| n.datastore).unwrap_or_default();
    let etcd = parse_etcd(root, datastore, &switches, &nodes, errs);
    if !errs.is_empty() {
        return None;
    }
    let nodes = errs.ok(assign_addresses(root, &switches, &routers, nodes, etcd.as_ref()))?;
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
        etcd,
        namespaces: namespaces?,
        policies: Vec::new(),
    })
}

/// `[etcd]`, read only with `datastore = "etcd"`: the server's address on
/// the first switch, `.2` unless `ip` says otherwise. No node may take the
/// address, nor the name `etcd`, the server's TARGET.
fn parse_etcd(
    root: &Table,
    datastore: Datastore,
    switches: &[SwitchIn],
    nodes: &[NodeIn],
    errs: &Errors,
) -> Option<Etcd> {
    let table = errs.ok(root.table("etcd", "[etcd]"))?;
    if datastore != Datastore::Etcd {
        if let Some(t) = &table {
            errs.push(root.err(
                t.span(),
                "[etcd] is read only with datastore = \"etcd\"",
                "add datastore = \"etcd\" to [network], or remove [etcd]",
            ));
        }
        return None;
    }
    let sw = &switches.first()?.switch;
    let mut ip = host(&sw.subnet, 2);
    let mut ip_span = None;
    if let Some(t) = &table {
        errs.ok(t.allow(&["ip"]));
        if let Some(Some(s)) = errs.ok(t.string("ip", "ip = \"10.140.0.2\"")) {
            match s.v.parse::<Ipv4Addr>() {
                Ok(a) => {
                    ip = a;
                    ip_span = Some(s.span.clone());
                }
                Err(_) => {
                    errs.push(t.err(
                        s.span.clone(),
                        format!("[etcd] ip \"{}\" is not an IPv4 address", q(&s.v)),
                        format!(
                            "write an address of switch \"{}\" ({}), e.g. \"{}\"",
                            sw.name,
                            sw.subnet,
                            host(&sw.subnet, 2)
                        ),
                    ));
                    return None;
                }
            }
        }
    }
    let at = |span: Option<std::ops::Range<usize>>| span.unwrap_or(0..0);
    let t = table.as_ref().unwrap_or(root);
    let bad = if !sw.subnet.contains(&ip) {
        Some(format!("is outside the first switch \"{}\" ({})", sw.name, sw.subnet))
    } else if ip == sw.subnet.network() || ip == sw.subnet.broadcast() {
        Some(format!("is not a host address of {}", sw.subnet))
    } else if ip == host(&sw.subnet, 1) {
        Some(format!("is the gateway (.1) of switch \"{}\"", sw.name))
    } else {
        None
    };
    if let Some(why) = bad {
        errs.push(t.err(
            at(ip_span),
            format!("the lab's etcd at {ip} {why}"),
            format!(
                "set [etcd] ip to a free host address of {}, e.g. \"{}\"",
                sw.subnet,
                host(&sw.subnet, 2)
            ),
        ));
        return None;
    }
    for n in nodes {
        if n.node.name == ETCD_TARGET {
            errs.push(root.err(
                n.name_span.clone(),
                "a node is named \"etcd\", the TARGET of the lab's etcd",
                "rename the node: `cnilab exec etcd` must name one thing",
            ));
            return None;
        }
        if let (Some(nip), Some(span)) = (n.explicit_ip, n.ip_span.clone())
            && nip == ip
        {
            errs.push(root.err(
                span,
                format!(
                    "node \"{}\" address {ip} is taken by the lab's etcd ([etcd] ip{})",
                    n.node.name,
                    if ip_span.is_none() {
                        ", by default the first switch's .2"
                    } else {
                        ""
                    }
                ),
                "give the node another address, or set [etcd] ip = \"...\" to a free one",
            ));
            return None;
        }
    }
    Some(Etcd {
        ip,
        switch: sw.name.clone(),
    })
}

/// What is quoted of a value the user wrote: at most 60 characters.
pub fn q(s: &str) -> String {
    excerpt(s, 60)
}

/// Names: 1-`max` chars of `[a-z0-9-]`, starting with a letter.
fn check_name(t: &Table, name: &Sp<String>, what: &str, max: usize) -> R<()> {
    let n = &name.v;
    let problem = crate::model::names::problem_within(n, max);
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

/// A router as read, with where its name is written.
pub struct RouterIn {
    /// The router.
    pub router: Router,
    /// Where its name is written.
    pub name_span: Range<usize>,
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
    let fix = match crate::model::spanned::closest(&s.v, &names) {
        Some(near) => format!("did you mean \"{near}\"? switches: {}", names.join(", ")),
        None => format!(
            "use one of the switches: {}, or add a [[switch]] named \"{}\"",
            names.join(", "),
            suggest_name(&s.v, 15)
        ),
    };
    t.err(s.span.clone(), format!("there is no switch \"{}\"", q(&s.v)), fix)
}

/// A node as read (its address not yet assigned), with where its parts
/// are written.
pub struct NodeIn {
    /// The node.
    pub node: Node,
    /// Where `max_pods` is written.
    pub max_pods_span: Option<Range<usize>>,
    /// Where `instance_type`, `max_enis` and `ips_per_eni` are written.
    pub cloud_spans: [Option<Range<usize>>; 3],
    /// Where its name is written.
    pub name_span: Range<usize>,
    ip_span: Option<Range<usize>>,
    /// Where its pods are written (the node's table when they are not).
    pub pods_span: Range<usize>,
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
    errs.ok(t.allow(&[
        "name",
        "switch",
        "switches",
        "ip",
        "pods",
        "count",
        "max_pods",
        "instance_type",
        "max_enis",
        "ips_per_eni",
    ]));
    let name = errs.ok(t.required_string("name", "name = \"worker1\""));
    let count = errs.ok(t.int("count", 1, MAX_NODES as i64, "count = 3")).flatten();
    if let Some(name) = &name {
        errs.ok(check_count(t, name, count.as_ref()));
    }
    let node = name
        .as_ref()
        .map_or_else(|| "node".to_string(), |n| format!("node \"{}\"", q(&n.v)));
    let (listed, extra) = match parse_node_switches(t, refs, &node, errs) {
        Some((first, rest)) => (Some(first), Some(rest)),
        None if t.has("switches") => (None, None),
        None => (None, Some(Vec::new())),
    };
    let switch = match errs.ok(t.string("switch", "switch = \"tor1\"")) {
        _ if t.has("switches") => listed.flatten(),
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
    let instance_type = errs.ok(t.string("instance_type", "instance_type = \"m5.large\""));
    let max_enis = errs.ok(t.int("max_enis", 1, 16, "max_enis = 3"));
    let ips_per_eni = errs.ok(t.int("ips_per_eni", 2, 64, "ips_per_eni = 10"));
    if errs.count() > before {
        return None;
    }
    let (name, switch, pods, max_pods, extra) = (name?, switch?, pods?, max_pods?, extra?);
    let (instance_type, max_enis, ips_per_eni) = (instance_type?, max_enis?, ips_per_eni?);
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
                pods: pods.0.clone(),
                pod_meta: pods.1.clone(),
                max_pods: max_pods.as_ref().map(|m| m.v as u32),
                extra_ifaces: extra
                    .iter()
                    .map(|sw| NodeIface {
                        switch: sw.clone(),
                        ip: Ipv4Addr::UNSPECIFIED,
                    })
                    .collect(),
                instance_type: instance_type.as_ref().map(|x| x.v.clone()),
                max_enis: max_enis.as_ref().map(|m| m.v as u32),
                ips_per_eni: ips_per_eni.as_ref().map(|m| m.v as u32),
            },
            name_span: name.span.clone(),
            max_pods_span: max_pods.as_ref().map(|m| m.span.clone()),
            cloud_spans: [
                instance_type.as_ref().map(|x| x.span.clone()),
                max_enis.as_ref().map(|m| m.span.clone()),
                ips_per_eni.as_ref().map(|m| m.span.clone()),
            ],
            ip_span: ip.as_ref().map(|i| i.span.clone()),
            pods_span: t.value_span("pods").unwrap_or_else(|| t.span()),
            explicit_ip: ip.as_ref().map(|i| i.v),
        });
    }
    Some(out)
}

/// `switches = [...]`, the alternative to `switch`: the first is eth0's
/// switch, each further one gives the node eth1, eth2, ... `None` when it
/// is not written or has a mistake (each one recorded); the first is empty
/// when the switches had mistakes, so which one is meant is left open.
fn parse_node_switches(
    t: &Table,
    refs: &SwitchRefs,
    node: &str,
    errs: &Errors,
) -> Option<(Option<String>, Vec<String>)> {
    let before = errs.count();
    let list = errs.ok(t.strings("switches", "switches = [\"public\", \"private\"]"))??;
    if let Some(span) = t.key_span("switch") {
        errs.push(t.err(
            span,
            format!("{node} has both `switch` and `switches`"),
            "remove `switch`: the first of `switches` is eth0's switch",
        ));
    }
    if list.v.is_empty() {
        errs.push(t.err(
            list.span.clone(),
            format!("{node} lists no switch in `switches`"),
            "list at least one switch, e.g. switches = [\"public\", \"private\"], or write switch = \"...\"",
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for s in &list.v {
        if errs.ok(refs.check(t, s)).is_none() {
            continue;
        }
        if names.contains(&s.v) {
            errs.push(t.err(
                s.span.clone(),
                format!("{node} lists switch \"{}\" twice", q(&s.v)),
                "list each switch once: a node has one interface on a switch",
            ));
            continue;
        }
        names.push(s.v.clone());
    }
    if errs.count() > before {
        return None;
    }
    if !refs.checked {
        // As with `switch`: nothing that depends on it is checked.
        return Some((Some(String::new()), Vec::new()));
    }
    let mut it = names.into_iter();
    let first = it.next();
    Some((first, it.collect()))
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

/// `pods`: a number, or a list of names and tables (`{ name, namespace,
/// labels, ports }`); the identity of those written as tables.
fn parse_pods(t: &Table) -> R<(Vec<String>, BTreeMap<String, PodMeta>)> {
    let Some(v) = t.raw("pods") else {
        return Ok(Default::default());
    };
    if v.get_ref().is_integer() {
        let n = t.int("pods", 0, 4096, "pods = 2")?.map_or(0, |n| n.v);
        return Ok(((1..=n).map(|i| format!("pod-{i}")).collect(), BTreeMap::new()));
    }
    let example = "pods = [\"web\", { name = \"api\", namespace = \"prod\", labels = { app = \"api\" } }]";
    if !v.get_ref().is_array() {
        return Err(t.err(
            v.span(),
            "`pods` must be a number of pods or a list of pods",
            format!("write pods = 2 (pods pod-1 and pod-2) or {example}"),
        ));
    }
    let items = t.items("pods", "a pod", example)?.expect("present");
    let errs = Errors::default();
    let mut out: Vec<String> = Vec::new();
    let mut meta = BTreeMap::new();
    for item in items {
        let (n, m) = match item {
            Item::Str(n) => (n, None),
            Item::Table(p) => match errs.ok(parse_pod_table(&p)) {
                Some((n, m)) => (n, Some(m)),
                None => continue,
            },
        };
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
        if let Some(m) = m.filter(|m| *m != PodMeta::default()) {
            meta.insert(n.v.clone(), m);
        }
        out.push(n.v);
    }
    errs.finish(Some((out, meta)))
}

fn parse_network(
    root: &Table,
    switches: &[SwitchIn],
    routers: &[RouterIn],
    nodes: &[NodeIn],
    parts_ok: bool,
    profiles: &[&dyn ProfileSyntax],
    errs: &Errors,
) -> Option<Network> {
    // Checks against the nodes and switches run only when those parsed.
    let mut ctx = Parts {
        routers,
        nodes,
        switches: switches
            .iter()
            .map(|s| (s.switch.name.clone(), s.switch.subnet))
            .collect(),
        ok: parts_ok,
        pool: true,
    };
    let default = *profiles.first().expect("at least one profile");
    let Some(net) = errs.ok(root.table("network", "[network]"))? else {
        check_instance_keys(root, default, profiles, nodes, errs);
        return default_network(root, switches, &ctx, default, errs);
    };
    let before = errs.count();
    let names: Vec<&str> = profiles.iter().map(|p| p.name()).collect();
    let keys = [&["cni", "pod_cidr", "mtu", "datastore", "policies"][..], &names].concat();
    let policies = errs.ok(parse_policy_patterns(&net));
    errs.ok(net.allow(&keys));
    let cni = errs
        .ok(net.string("cni", &format!("cni = \"{}\"", default.name())))?
        .unwrap_or_else(|| Sp::new(default.name().into(), net.span()));
    let Some(profile) = profiles.iter().find(|p| p.name() == cni.v) else {
        let fix = match crate::model::spanned::closest(&cni.v, &names) {
            Some(near) => format!("did you mean \"{near}\"? profiles: {}", names.join(", ")),
            None => format!("use one of the profiles under plugins/: {}", names.join(", ")),
        };
        errs.push(net.err(cni.span, format!("unknown CNI profile \"{}\"", q(&cni.v)), fix));
        return None;
    };
    let default_cidr = profile.default_pod_cidr();
    let pod_cidr = errs
        .ok(parse_cidr(&net, "pod_cidr", "pod_cidr = \"10.244.0.0/16\""))
        .map(|c| c.unwrap_or_else(|| Sp::new(default_cidr.parse().expect("valid default"), net.span())))
        .filter(|c| errs.ok(check_usable(&net, c, "pod CIDR", default_cidr)).is_some());
    if let (Some(c), true) = (&pod_cidr, parts_ok) {
        errs.ok(check_pod_cidr_overlap(&net, c, switches));
    }
    let mtu = errs.ok(net.int("mtu", MTU_MIN, MTU_MAX, "mtu = 1400"));
    // A profile's section belongs to that profile only.
    for other in names.iter().filter(|p| **p != cni.v) {
        if let Some(span) = net.key_span(other) {
            errs.push(net.err(
                span,
                format!("[network.{other}] does not belong to cni = \"{}\"", cni.v),
                format!("remove [network.{other}], or set cni = \"{other}\""),
            ));
        }
    }
    profile.check_nodes(&net, &ctx, errs);
    check_instance_keys(&net, *profile, profiles, nodes, errs);
    let key = profile.name();
    let t = errs.ok(net.table(key, &format!("[network.{key}]")))?;
    // Without a pod CIDR the profile's own keys are still checked.
    ctx.pool = pod_cidr.is_some();
    let cidr = pod_cidr.unwrap_or_else(|| Sp::new(default_cidr.parse().expect("valid default"), net.span()));
    let scope = Scope {
        pod_cidr: &cidr,
        parts: &ctx,
        at: &net,
    };
    let written = errs.ok(net.string("datastore", "datastore = \"etcd\""));
    let options = profile.parse(t.as_ref(), &scope, errs)?;
    let datastore = read_datastore(&net, *profile, written?.as_ref(), &options, errs);
    if errs.count() > before {
        return None;
    }
    Some(Network {
        pod_cidr: cidr.v,
        mtu: mtu?.map(|m| m.v as u32),
        profile: ProfileOptions {
            cni: key.to_string(),
            options,
        },
        datastore: datastore?,
        policies: policies?.into_iter().map(|p| p.v).collect(),
    })
}

/// `datastore`: one the profile can use, and the one its options need.
fn read_datastore(
    net: &Table,
    profile: &dyn ProfileSyntax,
    written: Option<&Sp<String>>,
    options: &Options,
    errs: &Errors,
) -> Option<Datastore> {
    let can = profile.datastores();
    let names: Vec<&str> = can.iter().map(|d| d.as_str()).collect();
    let chosen = match written {
        None => None,
        Some(w) => {
            let d = match w.v.as_str() {
                "file" => Datastore::File,
                "etcd" => Datastore::Etcd,
                _ => {
                    errs.push(net.err(
                        w.span.clone(),
                        format!("unknown datastore \"{}\"", q(&w.v)),
                        "use datastore = \"file\" (cnilab's own store) or \"etcd\" (a real etcd)",
                    ));
                    return None;
                }
            };
            if !can.contains(&d) {
                errs.push(net.err(
                    w.span.clone(),
                    format!("cni = \"{}\" cannot keep its state in {}", profile.name(), d.as_str()),
                    format!("use datastore = \"{}\"", names.join("\" or \"")),
                ));
                return None;
            }
            Some((d, w))
        }
    };
    match (profile.needs_datastore(options), chosen) {
        (Some((need, why)), Some((d, w))) if need != d => {
            errs.push(net.err(
                w.span.clone(),
                format!("{why} needs datastore = \"{}\", not \"{}\"", need.as_str(), d.as_str()),
                format!("remove datastore, or set datastore = \"{}\"", need.as_str()),
            ));
            None
        }
        (Some((need, _)), None) => Some(need),
        (_, Some((d, _))) => Some(d),
        (None, None) => Some(Datastore::File),
    }
}

/// Without `[network]`: the default profile with all its defaults, its pod
/// CIDR checked against the switches.
fn default_network(
    root: &Table,
    switches: &[SwitchIn],
    parts: &Parts,
    profile: &dyn ProfileSyntax,
    errs: &Errors,
) -> Option<Network> {
    let cidr = Sp::new(profile.default_pod_cidr().parse().expect("valid default"), 0..0);
    if parts.ok {
        errs.ok(check_pod_cidr_overlap(root, &cidr, switches));
    }
    let scope = Scope {
        pod_cidr: &cidr,
        parts,
        at: root,
    };
    let options = profile.parse(None, &scope, errs)?;
    Some(Network {
        pod_cidr: cidr.v,
        mtu: None,
        profile: ProfileOptions {
            cni: profile.name().to_string(),
            options,
        },
        datastore: Datastore::File,
        policies: Vec::new(),
    })
}

/// `instance_type`, `max_enis` and `ips_per_eni` only where the profile
/// reads them.
fn check_instance_keys(
    net: &Table,
    profile: &dyn ProfileSyntax,
    profiles: &[&dyn ProfileSyntax],
    nodes: &[NodeIn],
    errs: &Errors,
) {
    if profile.reads_instance_keys() {
        return;
    }
    let readers: Vec<&str> = profiles
        .iter()
        .filter(|p| p.reads_instance_keys())
        .map(|p| p.name())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        for (key, span) in ["instance_type", "max_enis", "ips_per_eni"].iter().zip(&n.cloud_spans) {
            if let Some(span) = span.as_ref().filter(|s| seen.insert((*s).clone())) {
                errs.push(net.err(
                    span.clone(),
                    format!(
                        "`{key}` on a node is read only with cni = \"{}\"",
                        readers.join("\" or \"")
                    ),
                    format!(
                        "remove `{key}` (cni = \"{}\" takes its pod limit from max_pods), or set cni = \"{}\"",
                        profile.name(),
                        readers.first().copied().unwrap_or("aws-vpc")
                    ),
                ));
            }
        }
    }
}

/// The parts of the topology a network is checked against, and whether
/// they all parsed (otherwise the checks against them are skipped).
pub struct Parts<'p> {
    /// The routers.
    pub routers: &'p [RouterIn],
    /// The nodes, `count` expanded.
    pub nodes: &'p [NodeIn],
    /// The switches: (name, subnet).
    pub switches: Vec<(String, Ipv4Net)>,
    /// The nodes, routers and switches parsed.
    pub ok: bool,
    /// The pod CIDR parsed (else a default stands in, unchecked).
    pub pool: bool,
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

/// An explicitly written node address: a host address of its switch, not
/// the gateway, not taken by anything before it.
fn check_explicit_ip(
    root: &Table,
    sw: &Switch,
    gateway: &str,
    name: &str,
    ip: Ipv4Addr,
    span: Range<usize>,
    taken: &BTreeMap<Ipv4Addr, String>,
) -> R<()> {
    if ip == host(&sw.subnet, 1) {
        return Err(root.err(
            span,
            format!(
                "node \"{}\" address {ip} is the gateway (.1) of switch \"{}\", which {gateway} serves",
                name, sw.name
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
            format!("node \"{}\" address {ip} {why}", name),
            format!("use a host address of {}, e.g. {}", sw.subnet, example_host(&sw.subnet)),
        ));
    }
    if let Some(owner) = taken.get(&ip) {
        return Err(root.err(
            span,
            format!("node \"{}\" address {ip} is already taken by {owner}", name),
            "give each node its own address, or leave `ip` out to get one assigned",
        ));
    }
    Ok(())
}

/// Explicit addresses are checked first, then the others are handed out in
/// file order from .10 up, skipping what is taken.
fn assign_addresses(
    root: &Table,
    switches: &[SwitchIn],
    routers: &[RouterIn],
    mut nodes: Vec<NodeIn>,
    etcd: Option<&Etcd>,
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
        if let Some(e) = etcd.filter(|e| e.switch == sw.name) {
            taken.insert(e.ip, "the lab's etcd".to_string());
        }
        for n in nodes.iter().filter(|n| n.node.switch == sw.name) {
            let (Some(ip), Some(span)) = (n.explicit_ip, n.ip_span.clone()) else {
                continue;
            };
            check_explicit_ip(root, sw, &gateway, &n.node.name, ip, span, &taken)?;
            taken.insert(ip, format!("node \"{}\"", n.node.name));
        }
        let last = u32::from(sw.subnet.broadcast()) - u32::from(sw.subnet.network()) - 1;
        let mut next = FIRST_NODE_HOST;
        // In file order, each node's interfaces on this switch: its eth0
        // (`None`) and its further ones (`Some(k)` for eth<k+1>).
        let auto: Vec<(usize, Option<usize>)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                let eth0 = (n.node.switch == sw.name && n.explicit_ip.is_none()).then_some((i, None));
                let more = n
                    .node
                    .extra_ifaces
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.switch == sw.name)
                    .map(move |(k, _)| (i, Some(k)));
                eth0.into_iter().chain(more)
            })
            .collect();
        // Counted, not walked: a /4 switch has 2^28 addresses.
        let in_range =
            |a: &Ipv4Addr| (FIRST_NODE_HOST..=last).contains(&(u32::from(*a) - u32::from(sw.subnet.network())));
        let room = (last + 1).saturating_sub(FIRST_NODE_HOST) as usize - taken.keys().filter(|a| in_range(a)).count();
        if auto.len() > room {
            let span = if s.span == (0..0) {
                nodes[auto[room].0].name_span.clone()
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
        for (i, k) in auto {
            while taken.contains_key(&host(&sw.subnet, next)) {
                next += 1;
            }
            let ip = host(&sw.subnet, next);
            taken.insert(ip, nodes[i].node.name.clone());
            match k {
                None => nodes[i].node.ip = ip,
                Some(k) => nodes[i].node.extra_ifaces[k].ip = ip,
            }
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

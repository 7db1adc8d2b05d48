//! flannel's options, `[network.flannel]`: their types, defaults and
//! every rejection with its file:line:column, read by the topology's parser
//! through [`Syntax`].

use std::ops::Range;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::error::InputError;
use crate::model::spanned::{Errors, Sp, Table};
use crate::model::topology::{Datastore, Options, Parts, ProfileSyntax, Scope, q};

type R<T> = Result<T, InputError>;

/// How the topology's parser reads flannel's part of `[network]`.
pub struct Syntax;

impl ProfileSyntax for Syntax {
    fn name(&self) -> &'static str {
        "flannel"
    }

    fn default_pod_cidr(&self) -> &'static str {
        "10.244.0.0/16"
    }

    fn check_nodes(&self, net: &Table, parts: &Parts, errs: &Errors) {
        if let Some(span) = parts.nodes.iter().find_map(|n| n.max_pods_span.clone()) {
            errs.push(net.err(
                span,
                "max_pods limits a node's IPAM range, which only the calico profile's conflist sets; under flannel (and canal) a node's pods get its whole lease",
                "use cni = \"calico\", or a longer subnet_len to give each node fewer addresses",
            ));
        }
    }

    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options> {
        flannel_options(t, scope, errs).map(|o| crate::profile::to_options(&o))
    }

    fn set_implementation(
        &self,
        t: &mut crate::model::topology::Topology,
        value: &str,
    ) -> Result<(), crate::model::error::Error> {
        let imp = match value {
            "builtin" => Implementation::Builtin,
            "upstream" => Implementation::Upstream,
            other => {
                return Err(crate::model::error::Error::usage(
                    format!("flannel has no implementation \"{}\"", q(other)),
                    "use builtin or upstream",
                ));
            }
        };
        with_implementation(t, imp)
    }

    fn datastores(&self) -> &'static [Datastore] {
        &[Datastore::File, Datastore::Etcd]
    }

    fn needs_datastore(&self, options: &Options) -> Option<(Datastore, &'static str)> {
        let upstream = options.0.iter().any(|(k, v)| k == "implementation" && v == "upstream");
        upstream.then_some((Datastore::Etcd, "implementation = \"upstream\" (the real flanneld)"))
    }
}

/// Which flanneld and flannel CNI plugin a lab runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Implementation {
    /// cnilab's own: fast, nothing to install.
    #[default]
    Builtin,
    /// The real ones, built from flannel's releases.
    Upstream,
}

impl Implementation {
    /// As written in the topology.
    pub fn as_str(self) -> &'static str {
        match self {
            Implementation::Builtin => "builtin",
            Implementation::Upstream => "upstream",
        }
    }
}

/// `--flannel IMPL` of `up` and `run`: the topology as if its
/// `[network.flannel]` said `implementation = IMPL`. The upstream one
/// brings the etcd it needs (at the first switch's .2) when the topology
/// keeps its state in files.
pub fn with_implementation(
    t: &mut crate::model::topology::Topology,
    imp: Implementation,
) -> Result<(), crate::model::error::Error> {
    use crate::model::error::Error;
    use crate::model::topology::Etcd;
    // canal runs flannel's overlay too.
    if !matches!(t.network.profile.name(), "flannel" | "canal") {
        return Err(Error::usage(
            format!(
                "--flannel chooses flannel's implementation, but this topology has cni = \"{}\"",
                t.network.profile.name()
            ),
            "leave --flannel out for this topology",
        ));
    }
    let value = serde_json::Value::String(imp.as_str().to_string());
    let opts = &mut t.network.profile.options.0;
    match opts.iter_mut().find(|(k, _)| k == "implementation") {
        Some((_, v)) => *v = value,
        None => opts.push(("implementation".to_string(), value)),
    }
    if imp == Implementation::Upstream && t.network.datastore == Datastore::File {
        let sw = t
            .switches
            .first()
            .ok_or_else(|| Error::usage("the topology has no switch", "add a [[switch]]"))?;
        let ip = sw.subnet.hosts().nth(1).ok_or_else(|| {
            Error::usage(
                format!("switch {} has no room for etcd", sw.name),
                "use a larger subnet",
            )
        })?;
        if let Some(n) = t
            .nodes
            .iter()
            .find(|n| n.ip == ip || n.name == crate::model::topology::ETCD_TARGET)
        {
            return Err(Error::usage(
                format!(
                    "--flannel upstream needs an etcd at {ip} (the first switch's .2), but node \"{}\" is there or has its name",
                    n.name
                ),
                "add datastore = \"etcd\" to [network] and an [etcd] ip = \"...\" that is free",
            ));
        }
        t.network.datastore = Datastore::Etcd;
        t.etcd = Some(Etcd {
            ip,
            switch: sw.name.clone(),
        });
    }
    Ok(())
}

/// flannel's default etcd prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";

fn default_prefix() -> String {
    DEFAULT_ETCD_PREFIX.to_string()
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
    /// IP in IP (`flannel.ipip`): validated; `up` needs the kernel's ipip
    /// module, and cnilab does not build it yet.
    Ipip,
    /// WireGuard (`flannel-wg`): validated; `up` needs the kernel's
    /// wireguard module, and cnilab does not build it yet.
    Wireguard,
}

impl FlannelBackend {
    /// The name flannel uses in its `Backend.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlannelBackend::Vxlan => "vxlan",
            FlannelBackend::HostGw => "host-gw",
            FlannelBackend::Udp => "udp",
            FlannelBackend::Ipip => "ipip",
            FlannelBackend::Wireguard => "wireguard",
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
    /// builtin (default) or upstream.
    #[serde(default)]
    pub implementation: Implementation,
    /// Where flannel's keys live in etcd.
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// The real flanneld to run (upstream), else found on the program path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flanneld: Option<String>,
    /// The real flannel CNI plugin (upstream), else found on the program path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_plugin: Option<String>,
    /// flanneld's `--iptables-forward-rules`: FORWARD accepts the pod network.
    #[serde(default = "yes")]
    pub iptables_forward_rules: bool,
    /// flanneld's `--iface` on every node: the interface whose address is
    /// the node's public address (default eth0, the interface of the
    /// default route, which flanneld picks without --iface).
    #[serde(default = "eth0")]
    pub iface: String,
}

/// serde's default of a flag that is on unless said otherwise.
pub fn yes() -> bool {
    true
}

/// The interface flanneld picks without `--iface`: the default route's.
pub fn eth0() -> String {
    "eth0".to_string()
}

/// Pods a flannel node subnet of prefix `len` holds: host-local hands out
/// every address but the network, the gateway (.1) and the broadcast.
pub fn pods_per_subnet(len: u8) -> u64 {
    (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(3)
}

/// `[network.flannel]`, with its defaults, checked against the pool and the nodes.
pub fn flannel_options(t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<FlannelOptions> {
    let (pod_cidr, parts, at) = (scope.pod_cidr, scope.parts, scope.at);
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
        implementation: Implementation::Builtin,
        etcd_prefix: default_prefix(),
        flanneld: None,
        cni_plugin: None,
        iptables_forward_rules: true,
        iface: eth0(),
    };
    let mut len_span = None;
    if let Some(t) = t {
        errs.ok(t.allow(&[
            "backend",
            "vni",
            "port",
            "subnet_len",
            "implementation",
            "etcd_prefix",
            "flanneld",
            "cni_plugin",
            "iptables_forward_rules",
            "iface",
        ]));
        if let Some(Some(b)) = errs.ok(t.bool("iptables_forward_rules", "iptables_forward_rules = false")) {
            opts.iptables_forward_rules = b.v;
        }
        read_implementation(t, &mut opts, errs);
        read_iface(t, &mut opts, parts, errs);
        if let Some(Some(b)) = errs.ok(t.string("backend", "backend = \"vxlan\"")) {
            match b.v.as_str() {
                "vxlan" => opts.backend = FlannelBackend::Vxlan,
                "host-gw" => opts.backend = FlannelBackend::HostGw,
                "udp" => opts.backend = FlannelBackend::Udp,
                "ipip" => opts.backend = FlannelBackend::Ipip,
                "wireguard" => opts.backend = FlannelBackend::Wireguard,
                _ => errs.push(t.err(
                    b.span.clone(),
                    format!("unknown flannel backend \"{}\"", q(&b.v)),
                    "use backend = \"vxlan\", \"host-gw\" or \"udp\" (\"ipip\" and \"wireguard\" validate, but `up` needs their kernel modules and cnilab does not build them yet)",
                )),
            }
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

/// `iface`: an interface every node has (eth0, or eth<N> of a node on N
/// further switches).
fn read_iface(t: &Table, opts: &mut FlannelOptions, parts: &Parts, errs: &Errors) {
    let Some(Some(i)) = errs.ok(t.string("iface", "iface = \"eth1\"")) else {
        return;
    };
    let n = i.v.strip_prefix("eth").and_then(|d| d.parse::<usize>().ok());
    let Some(n) = n.filter(|n| i.v == format!("eth{n}")) else {
        errs.push(t.err(
            i.span.clone(),
            format!("iface \"{}\" is not an interface cnilab gives a node", q(&i.v)),
            "use iface = \"eth0\" (on the node's first switch) or \"eth1\", \"eth2\", ... (one per further switch of `switches = [...]`)",
        ));
        return;
    };
    if parts.ok {
        if let Some(lacks) = parts.nodes.iter().find(|x| x.node.extra_ifaces.len() < n) {
            errs.push(t.err(
                i.span.clone(),
                format!(
                    "iface \"{}\": node \"{}\" has no {} (it is on {} switch{})",
                    i.v,
                    lacks.node.name,
                    i.v,
                    lacks.node.extra_ifaces.len() + 1,
                    if lacks.node.extra_ifaces.is_empty() { "" } else { "es" }
                ),
                format!(
                    "give every node at least {} switches, e.g. switches = [\"public\", \"private\"], or use an interface every node has such as iface = \"eth0\"",
                    n + 1
                ),
            ));
            return;
        }
    }
    opts.iface = i.v.clone();
}

/// `implementation`, `etcd_prefix` and the two program paths.
fn read_implementation(t: &Table, opts: &mut FlannelOptions, errs: &Errors) {
    if let Some(Some(i)) = errs.ok(t.string("implementation", "implementation = \"builtin\"")) {
        match i.v.as_str() {
            "builtin" => opts.implementation = Implementation::Builtin,
            "upstream" => opts.implementation = Implementation::Upstream,
            _ => errs.push(t.err(
                i.span.clone(),
                format!("unknown flannel implementation \"{}\"", q(&i.v)),
                "use implementation = \"builtin\" (cnilab's flanneld and plugin) or \"upstream\" (the real ones)",
            )),
        }
    }
    if let Some(Some(p)) = errs.ok(t.string("etcd_prefix", "etcd_prefix = \"/coreos.com/network\"")) {
        let ok = p.v.starts_with('/')
            && p.v.len() > 1
            && p.v.len() <= 200
            && !p.v.ends_with('/')
            && !p.v.contains("//")
            && p.v.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if ok {
            opts.etcd_prefix = p.v.clone();
        } else {
            errs.push(t.err(
                p.span.clone(),
                format!("etcd_prefix \"{}\" is not a key prefix flanneld accepts here", q(&p.v)),
                "write an absolute key path of letters, digits and . _ - /, without a trailing /, e.g. \"/atomic.io/network\"",
            ));
        }
    }
    for (key, slot) in [("flanneld", &mut opts.flanneld), ("cni_plugin", &mut opts.cni_plugin)] {
        if let Some(Some(p)) = errs.ok(t.string(key, &format!("{key} = \"/usr/local/bin/{key}\""))) {
            if !p.v.starts_with('/') || p.v.contains('\0') || p.v.len() > 4096 {
                errs.push(t.err(
                    p.span.clone(),
                    format!("{key} = \"{}\" is not an absolute path", q(&p.v)),
                    format!(
                        "write the absolute path of the program, e.g. {key} = \"/usr/local/bin/{}\"",
                        if key == "flanneld" { "flanneld" } else { "flannel" }
                    ),
                ));
            } else {
                *slot = Some(p.v.clone());
            }
        }
    }
    if opts.implementation == Implementation::Builtin {
        for key in ["flanneld", "cni_plugin"] {
            if let Some(span) = t.key_span(key) {
                errs.push(t.err(
                    span,
                    format!("{key} names a real flannel program, which only implementation = \"upstream\" runs"),
                    format!("add implementation = \"upstream\", or remove {key}"),
                ));
            }
        }
    }
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
    let holds = pods_per_subnet(opts.subnet_len);
    if let Some(n) = parts.nodes.iter().find(|n| n.node.pods.len() as u64 > holds) {
        let pods = n.node.pods.len() as u64;
        // The longest subnet_len that still holds them all.
        let fits = (2..=30u8).rev().find(|l| pods_per_subnet(*l) >= pods).unwrap_or(2);
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

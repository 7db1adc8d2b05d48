//! flannel's options, `[network.flannel]`: their types, defaults and
//! every rejection with its file:line:column, read by the topology's parser
//! through [`Syntax`].

use std::ops::Range;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::error::InputError;
use crate::model::spanned::{Errors, Sp, Table};
use crate::model::topology::{Options, Parts, ProfileSyntax, Scope, q};

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
                "max_pods limits a node's IPAM range, which only the calico profile's conflist sets; flannel's plugin always hands out the whole lease",
                "use cni = \"calico\", or a longer subnet_len to give each node fewer addresses",
            ));
        }
    }

    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options> {
        flannel_options(t, scope, errs).map(|o| crate::profile::to_options(&o))
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

/// Pods a flannel node subnet of prefix `len` holds: host-local hands out
/// every address but the network, the gateway (.1) and the broadcast.
pub fn pods_per_subnet(len: u8) -> u64 {
    (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(3)
}

/// `[network.flannel]`, with its defaults, checked against the pool and the nodes.
fn flannel_options(t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<FlannelOptions> {
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
                    "use backend = \"vxlan\", \"host-gw\" or \"udp\"",
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

//! Calico's options, `[network.calico]`: their types, defaults and every
//! rejection with its file:line:column, read by the topology's parser
//! through [`Syntax`].

use std::ops::Range;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::error::InputError;
use crate::model::spanned::{Errors, Sp, Table};
use crate::model::topology::{NodeIn, Options, Parts, ProfileSyntax, RouterIn, Scope, q};

type R<T> = Result<T, InputError>;

/// How the topology's parser reads Calico's part of `[network]`.
pub struct Syntax;

impl ProfileSyntax for Syntax {
    fn name(&self) -> &'static str {
        "calico"
    }

    fn default_pod_cidr(&self) -> &'static str {
        "192.168.0.0/16"
    }

    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options> {
        calico_options(t, scope, errs).map(|o| crate::profile::to_options(&o))
    }
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

/// Pods a Calico block of prefix `len` holds: host-local hands out .1 up to
/// the address before the broadcast.
pub fn pods_per_block(len: u8) -> u64 {
    (1u64 << (32 - u32::from(len.min(32)))).saturating_sub(2)
}

/// `[network.calico]`, with its defaults, checked against the pool, the
/// nodes and the routers.
fn calico_options(t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<CalicoOptions> {
    let (cidr, parts, root) = (scope.pod_cidr, scope.parts, scope.at);
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
                    let fix = match crate::model::spanned::closest(&name.v, &names) {
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
    let per_block = pods_per_block(opts.block_size);
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

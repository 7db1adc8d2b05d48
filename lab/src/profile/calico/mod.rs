//! The Calico profile (shared/design/faithfulness.md, Calico part): IPAM
//! blocks affine to nodes, pods wired as Calico wires them (by the `calico`
//! CNI plugin of ours, with the real host-local for the block's addresses),
//! BIRD 2 configured from Calico's confd templates in BGP mode, and a
//! felix stand-in programming the VXLAN overlay in VXLAN mode.

pub mod build;
pub mod felix;
pub mod ipam;
pub mod options;
pub mod plugin;
pub mod policy;

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use anyhow::Result;
use futures::future::BoxFuture;

use crate::kernel::bird::{BirdPlan, RouterPeer, SessionPlan, ip_id, router_config};
use crate::model::paths::LabPaths;
use crate::model::plan::{NodePlan, RouterPlan, Stream, mac_string, random_mac, rng};
use crate::model::topology::Topology;
use crate::profile::{AgentSpec, Built, PodAdd, Profile, SavePlan};
use options::{CalicoMesh, CalicoMode, CalicoOptions};

/// The stock Calico CNI configuration (calico.yaml's `cni_network_config`).
pub const CONFLIST: &str = include_str!("../../../../plugins/calico/10-calico.conflist");
/// Its file name in a node's CNI configuration folder.
pub const CONFLIST_NAME: &str = "10-calico.conflist";
/// Calico's VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// Calico's VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN's overhead.
pub const VXLAN_OVERHEAD: u32 = 50;
/// IP-in-IP's overhead.
pub const IPIP_OVERHEAD: u32 = 20;
/// The route protocol felix gives the routes it programs.
pub const FELIX_PROTO: u8 = 80;
/// The cluster ID route reflector nodes get (Calico's documented example).
pub const RR_CLUSTER_ID: &str = "244.0.0.1";
/// The gateway every Calico pod routes through; the host answers for it by proxy ARP.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC of every host-side `cali` veth.
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];

/// Calico's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalicoPlan {
    /// bgp, vxlan or ipip.
    pub mode: CalicoMode,
    /// Peering layout.
    pub mesh: CalicoMesh,
    /// The cluster's AS.
    pub asn: u32,
    /// The IP pool.
    pub pool: Ipv4Net,
    /// Prefix length of blocks.
    pub block_size: u8,
    /// Per node, in node order.
    pub nodes: Vec<CalicoNode>,
}

/// Calico's decisions for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalicoNode {
    /// The node.
    pub node: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its first affine IPAM block.
    pub block: Ipv4Net,
    /// The further blocks it claimed when the first were full, in order.
    #[serde(default)]
    pub more_blocks: Vec<Ipv4Net>,
    /// The pods' MTU.
    pub pod_mtu: u32,
    /// The node's CNI configuration.
    pub conflist: Value,
    /// The VXLAN tunnel, in VXLAN mode.
    pub vxlan: Option<Tunnel>,
    /// Its BIRD, in BGP mode.
    pub bird: Option<BirdPlan>,
    /// Whether it is a route reflector.
    pub reflector: bool,
}

/// A node's VXLAN tunnel endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tunnel {
    /// `vxlan.calico`'s address: the block's first address.
    pub address: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

impl CalicoPlan {
    /// The Calico part of a node.
    pub fn node(&self, name: &str) -> Option<&CalicoNode> {
        self.nodes.iter().find(|n| n.node == name)
    }
}

impl CalicoNode {
    /// Every block affine to the node, the first first.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        std::iter::once(self.block).chain(self.more_blocks.iter().copied())
    }
}

/// The multi-call programs of Calico: its CNI plugin and the felix stand-in.
pub const PROGRAMS: &[crate::profile::Program] = &[("calico", plugin::main), ("calico-felix", felix::main)];

/// Calico in the registry of profiles.
pub const REGISTERED: crate::profile::Registered = crate::profile::Registered {
    syntax: &options::Syntax,
    plan: |topology, nodes, routers, paths| {
        crate::profile::ProfilePlan::new(plan(
            topology,
            &crate::profile::options_of(topology),
            nodes,
            routers,
            paths,
        ))
    },
    programs: PROGRAMS,
    load: crate::profile::load_as::<CalicoPlan>,
    host_link_sysctls,
};

/// The sysctls Calico's plugin sets on a host-side `cali` veth (keys only).
pub fn host_link_sysctls(ifname: &str) -> Vec<String> {
    if !ifname.starts_with("cali") {
        return Vec::new();
    }
    plugin::host_veth_sysctls(ifname).into_iter().map(|(k, _)| k).collect()
}

impl Profile for CalicoPlan {
    fn name(&self) -> &'static str {
        "calico"
    }

    fn describe(&self) -> String {
        match self.mode {
            CalicoMode::Vxlan => format!("calico vxlan (VNI {VXLAN_VNI}, port {VXLAN_PORT})"),
            mode => format!(
                "calico {} (AS {}, {})",
                format!("{mode:?}").to_lowercase(),
                self.asn,
                match self.mesh {
                    CalicoMesh::Full => "full mesh",
                    CalicoMesh::Reflectors => "route reflectors",
                    CalicoMesh::Tor => "peering with top-of-rack routers",
                }
            ),
        }
    }

    fn settings(&self, topology: &Topology) -> Vec<(String, String)> {
        let Some(c) = topology.network.profile.get::<CalicoOptions>() else {
            return Vec::new();
        };
        let mut v = vec![
            ("mode", format!("{:?}", c.mode).to_lowercase()),
            ("block_size", c.block_size.to_string()),
            ("asn", c.asn.to_string()),
            ("mesh", format!("{:?}", c.mesh).to_lowercase()),
        ];
        if !c.reflectors.is_empty() {
            v.push(("reflectors", c.reflectors.join(", ")));
        }
        v.push(("hold_time", c.hold_time.to_string()));
        v.push(("restart_time", c.restart_time.to_string()));
        v.into_iter().map(|(k, v)| (format!("network.calico.{k}"), v)).collect()
    }

    fn node_agents(&self, n: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec> {
        let Some(cn) = self.node(&n.name) else {
            return Vec::new();
        };
        let mut v = Vec::new();
        if let Some(b) = &cn.bird {
            v.push(crate::kernel::runtime::bird_agent(
                &n.name,
                &n.ns,
                paths.agent_dir(&n.name),
                &b.config,
            ));
        }
        if let Some(t) = &cn.vxlan {
            v.push(AgentSpec {
                owner: n.name.clone(),
                ns: n.ns.clone(),
                name: "calico-felix",
                program: paths.bin_dir().join("calico-felix"),
                args: [
                    format!("--datastore-dir={}", paths.etcd_dir().display()),
                    format!("--node={}", n.name),
                    "--iface=eth0".to_string(),
                ]
                .into_iter()
                .chain(cn.blocks().map(|b| format!("--block={b}")))
                .chain([
                    format!("--tunnel-addr={}", t.address),
                    format!("--vtep-mac={}", t.mac),
                    format!("--watch-socket={}", paths.watch_socket().display()),
                ])
                .collect(),
                log: paths.agent_log(&n.name),
                ready: paths.etcd_dir().join("calico/vxlan").join(&n.name),
                config: None,
            });
        }
        v
    }

    fn agent_name(&self) -> &'static str {
        if self.mode == CalicoMode::Vxlan {
            "calico-felix"
        } else {
            "bird"
        }
    }

    fn conflist(&self, node: &str) -> Option<&Value> {
        self.node(node).map(|n| &n.conflist)
    }

    fn pod_mtu(&self, node: &str) -> Option<u32> {
        self.node(node).map(|n| n.pod_mtu)
    }

    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net> {
        self.node(node).map(|n| n.block)
    }

    fn pod_subnets(&self, node: &str) -> Vec<Ipv4Net> {
        // A Calico node holds every block it claimed.
        self.node(node).map(|n| n.blocks().collect()).unwrap_or_default()
    }

    fn pod_gateway(&self) -> Option<Ipv4Addr> {
        // Calico's result carries no gateway; every pod routes via 169.254.1.1.
        Some(POD_GATEWAY)
    }

    fn overlay(&self, node: &str) -> Option<(String, u32)> {
        self.node(node)
            .and_then(|n| n.vxlan.as_ref())
            .map(|t| (VXLAN_DEVICE.to_string(), t.mtu))
    }

    fn vxlan_port(&self) -> Option<u16> {
        (self.mode == CalicoMode::Vxlan).then_some(VXLAN_PORT)
    }

    fn tunnel_label(&self) -> Option<String> {
        (self.mode == CalicoMode::Vxlan).then(|| format!("VXLAN VNI {VXLAN_VNI} UDP {VXLAN_PORT}"))
    }

    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>) {
        let Some(cnode) = self.node(node) else {
            return (Vec::new(), None);
        };
        let mut lines = Vec::new();
        if let Some(t) = &cnode.vxlan {
            lines.push(format!("{VXLAN_DEVICE} {}/32 MTU {}", t.address, t.mtu));
        }
        let blocks: Vec<String> = cnode.blocks().map(|b| b.to_string()).collect();
        lines.push(format!(
            "{} {}",
            if blocks.len() == 1 { "block" } else { "blocks" },
            blocks.join(", ")
        ));
        if cnode.bird.is_some() {
            lines.push(format!(
                "BIRD, AS {}{}",
                self.asn,
                if cnode.reflector { ", route reflector" } else { "" }
            ));
        }
        (lines, Some((format!("from {}", blocks.join(", ")), cnode.pod_mtu)))
    }

    fn node_birds(&self) -> Vec<(&str, u32, &BirdPlan)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.node.as_str(), self.asn, n.bird.as_ref()?)))
            .collect()
    }

    fn kernel_features(&self) -> Vec<&'static str> {
        match self.mode {
            CalicoMode::Vxlan => vec!["vxlan"],
            CalicoMode::Ipip => vec!["ipip"],
            CalicoMode::Bgp => Vec::new(),
        }
    }

    fn programs_needed(&self) -> Vec<String> {
        match self.mode {
            CalicoMode::Bgp => vec!["bird".to_string(), "ipset".to_string()],
            _ => vec!["ipset".to_string()],
        }
    }

    fn unbuildable(&self) -> Option<(String, String)> {
        (self.mode == CalicoMode::Ipip).then(|| {
            (
                "Calico's ipip mode needs BIRD 1's krt_tunnel, which BIRD 2 lacks; cnilab does not build it yet"
                    .to_string(),
                "use mode = \"bgp\" or \"vxlan\"".to_string(),
            )
        })
    }

    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(build::start(b, self))
    }

    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(build::converge(b, self))
    }

    fn policy_state(
        &self,
        world: &crate::model::netpol::World,
        policies: &[crate::model::netpol::NetworkPolicy],
        node: &str,
    ) -> Option<crate::profile::PolicyState> {
        Some(policy::policy_state(world, policies, node))
    }

    fn before_pod_add<'a>(&'a self, pod: PodAdd<'a>, save: SavePlan<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(build::claim_if_full(self, pod, save))
    }
}

/// Calico's first block per node (libcalico-go randomBlockGenerator): a
/// random starting block per host, then the first unclaimed block from
/// there on, wrapping around. The random start comes from the seed here.
pub fn allocate_blocks(pool: Ipv4Net, block_size: u8, count: usize, seed: u64) -> Vec<Ipv4Net> {
    ipam::plan_blocks(pool, block_size, &vec![1; count], seed)
        .into_iter()
        .map(|b| b[0])
        .collect()
}

/// The pod MTU Calico computes for a mode: the host's, minus encapsulation.
pub fn pod_mtu(mode: CalicoMode, host_mtu: u32) -> u32 {
    match mode {
        CalicoMode::Bgp => host_mtu,
        CalicoMode::Vxlan => host_mtu - VXLAN_OVERHEAD,
        CalicoMode::Ipip => host_mtu - IPIP_OVERHEAD,
    }
}

/// A BGP peer of a node, as confd renders it.
#[derive(Debug, Clone)]
struct NodePeer {
    name: String,
    ip: Ipv4Addr,
    asn: u32,
    passive: bool,
    rr_client: bool,
    allow_local_as: bool,
}

/// Calico's mesh rule: the session is one-way, the node with the greater
/// address string waits for the other. Calico compares the strings (a Go
/// template `gt`), so 172.20.0.9 is "greater" than 172.20.0.10.
fn passive_toward(me: Ipv4Addr, peer: Ipv4Addr) -> bool {
    peer.to_string() > me.to_string()
}

/// The node's bird.cfg, translated from Calico's confd templates
/// (bird.cfg.template, bird_aggr.cfg.template, bird_ipam.cfg.template) to
/// BIRD 2: channels instead of protocol-level import/export, no krt_tunnel,
/// device routes kept out of the kernel, kernel metric 0 as BIRD 1 had.
fn node_bird_config(
    ip: Ipv4Addr,
    blocks: &[Ipv4Net],
    pool: Ipv4Net,
    opts: &CalicoOptions,
    reflector: bool,
    peers: &[NodePeer],
) -> BirdPlan {
    let mut c = String::new();
    let asn = opts.asn;
    let _ = writeln!(c, "# Generated by cnilab from Calico's confd templates, for BIRD 2.");
    let _ = writeln!(c, "log stderr all;\n");
    let _ = writeln!(c, "# bird_aggr.cfg: the blocks of this host.");
    c.push_str("protocol static {\n  ipv4;\n");
    for block in blocks {
        let _ = writeln!(c, "  route {block} blackhole;");
    }
    c.push_str("}\n\n");
    let _ = writeln!(
        c,
        "# Aggregation of routes on this host; export the block, nothing beneath it."
    );
    c.push_str("function calico_aggr ()\n{\n");
    for block in blocks {
        let _ = writeln!(
            c,
            "  if ( net = {block} ) then {{ accept; }}\n  if ( net ~ {block} ) then {{ reject; }}"
        );
    }
    c.push_str("}\n\n");
    let _ = writeln!(c, "# bird_ipam.cfg: only IP pool routes go to peers.");
    let _ = writeln!(
        c,
        "filter calico_export_to_bgp_peers {{\n  calico_aggr();\n  if ( net ~ {pool} ) then {{\n    accept;\n  }}\n  reject;\n}}\n"
    );
    let _ = writeln!(
        c,
        "filter calico_kernel_programming {{\n  # BIRD 1 never exported device routes to the kernel; BIRD 2 must be told.\n  if ( source = RTS_DEVICE ) then {{ reject; }}\n  if ( net ~ {pool} ) then {{\n    accept;\n  }}\n  accept;\n}}\n"
    );
    let _ = writeln!(c, "router id {ip};\n");
    c.push_str(
        "# Configure synchronization between routing tables and kernel.\n\
         protocol kernel {\n  ipv4 {\n    import all;\n    export filter calico_kernel_programming;\n  };\n  \
         learn;             # Learn all alien routes from the kernel\n  \
         persist;           # Don't remove routes on bird shutdown\n  \
         scan time 2;       # Scan kernel routing table every 2 seconds\n  \
         graceful restart;\n  \
         merge paths on;    # Allow export multipath routes (ECMP)\n  \
         metric 0;          # BIRD 1's default; BIRD 2 would use 32\n}\n\n\
         # Watch interface up/down events.\nprotocol device {\n  scan time 2;\n}\n\n\
         protocol direct {\n  ipv4;\n  interface -\"cali*\", -\"kube-ipvs*\", \"*\";\n}\n\n",
    );
    let _ = writeln!(
        c,
        "# Template for all BGP clients\ntemplate bgp bgp_template {{\n  debug {{ states }};\n  description \"Connection to BGP peer\";\n  local as {asn};\n  multihop;\n  ipv4 {{\n    gateway recursive;\n    import all;\n    export filter calico_export_to_bgp_peers;\n    add paths on;\n  }};\n  graceful restart;\n  connect delay time 1;\n  connect retry time 3;\n  error wait time 5,60;\n}}\n"
    );
    match opts.mesh {
        CalicoMesh::Full => c.push_str("# ------------- Node-to-node mesh -------------\n"),
        _ if reflector => {
            let _ = writeln!(
                c,
                "# This node is configured as a route reflector with cluster ID {RR_CLUSTER_ID};\n# ignore node-to-node mesh setting.\n"
            );
        }
        _ => c.push_str("# Node-to-node mesh disabled\n\n# ------------- Node-specific peers -------------\n"),
    }
    let mut sessions = Vec::new();
    for p in peers {
        let _ = writeln!(c, "protocol bgp {} from bgp_template {{", p.name);
        let _ = writeln!(c, "  neighbor {} as {};", p.ip, p.asn);
        let _ = writeln!(
            c,
            "  source address {ip};  # The local address we use for the TCP connection"
        );
        if p.passive {
            let _ = writeln!(c, "  passive on; # Mesh is unidirectional, peer will connect to us.");
        }
        if p.rr_client {
            let _ = writeln!(c, "  rr client;\n  rr cluster id {RR_CLUSTER_ID};");
        }
        if p.allow_local_as {
            let _ = writeln!(
                c,
                "  allow local as 1; # numAllowedLocalASNumbers: 1 (every node shares AS {asn})"
            );
        }
        let _ = writeln!(c, "  graceful restart time {};", opts.restart_time);
        let _ = writeln!(c, "  hold time {};\n}}\n", opts.hold_time);
        sessions.push(SessionPlan {
            name: p.name.clone(),
            neighbor: p.ip,
            asn: p.asn,
        });
    }
    BirdPlan { config: c, sessions }
}

/// Whether a node is a route reflector.
fn is_reflector(opts: &CalicoOptions, name: &str) -> bool {
    opts.mesh == CalicoMesh::Reflectors && opts.reflectors.iter().any(|r| r == name)
}

/// A node's BGP peers, as confd renders them for its mesh.
fn node_peers(opts: &CalicoOptions, nodes: &[NodePlan], routers: &[RouterPlan], n: &NodePlan) -> Vec<NodePeer> {
    let me_rr = is_reflector(opts, &n.name);
    match opts.mesh {
        CalicoMesh::Full => nodes
            .iter()
            .filter(|o| o.name != n.name)
            .map(|o| NodePeer {
                name: format!("Mesh_{}", ip_id(o.ip)),
                ip: o.ip,
                asn: opts.asn,
                passive: passive_toward(n.ip, o.ip),
                rr_client: false,
                allow_local_as: false,
            })
            .collect(),
        CalicoMesh::Reflectors => nodes
            .iter()
            .filter(|o| o.name != n.name && (me_rr || is_reflector(opts, &o.name)))
            .map(|o| NodePeer {
                name: format!("Node_{}", ip_id(o.ip)),
                ip: o.ip,
                asn: opts.asn,
                passive: false,
                rr_client: me_rr && !is_reflector(opts, &o.name),
                allow_local_as: false,
            })
            .collect(),
        CalicoMesh::Tor => routers
            .iter()
            .find_map(|r| {
                let p = r.ports.iter().find(|p| p.switch == n.switch)?;
                Some((p.ip, r.asn.unwrap_or(opts.asn)))
            })
            .map(|(rip, rasn)| NodePeer {
                name: format!("Node_{}", ip_id(rip)),
                ip: rip,
                asn: rasn,
                passive: false,
                rr_client: false,
                allow_local_as: rasn != opts.asn,
            })
            .into_iter()
            .collect(),
    }
}

/// A node's BIRD in BGP mode, exporting `blocks`.
pub fn node_bird(
    opts: &CalicoOptions,
    pool: Ipv4Net,
    nodes: &[NodePlan],
    routers: &[RouterPlan],
    n: &NodePlan,
    blocks: &[Ipv4Net],
) -> Option<BirdPlan> {
    (opts.mode == CalicoMode::Bgp).then(|| {
        let peers = node_peers(opts, nodes, routers, n);
        node_bird_config(n.ip, blocks, pool, opts, is_reflector(opts, &n.name), &peers)
    })
}

/// Plans Calico for a lab, and the BGP sessions of routers with nodes in
/// `mesh = "tor"`.
pub fn plan(
    topology: &Topology,
    opts: &CalicoOptions,
    nodes: &[NodePlan],
    routers: &mut [RouterPlan],
    paths: &LabPaths,
) -> CalicoPlan {
    let pool = topology.network.pod_cidr;
    let wanted: Vec<usize> = nodes
        .iter()
        .map(|n| ipam::blocks_wanted(n.pods.len(), n.max_pods, opts.block_size))
        .collect();
    let blocks = ipam::plan_blocks(pool, opts.block_size, &wanted, topology.seed);
    let mut macs = rng(topology.seed, Stream::Macs);
    let per_node: Vec<CalicoNode> = nodes
        .iter()
        .zip(&blocks)
        .map(|(n, blocks)| {
            let pod_mtu = topology.network.mtu.unwrap_or(pod_mtu(opts.mode, n.mtu));
            let vxlan = (opts.mode == CalicoMode::Vxlan).then(|| Tunnel {
                address: blocks[0].network(),
                mac: mac_string(&random_mac(&mut macs)),
                mtu: n.mtu - VXLAN_OVERHEAD,
            });
            CalicoNode {
                node: n.name.clone(),
                ip: n.ip,
                block: blocks[0],
                more_blocks: blocks[1..].to_vec(),
                pod_mtu,
                conflist: conflist(&n.name, blocks, pod_mtu, n.max_pods, paths),
                vxlan,
                bird: node_bird(opts, pool, nodes, routers, n, blocks),
                reflector: is_reflector(opts, &n.name),
            }
        })
        .collect();
    if opts.mode == CalicoMode::Bgp && opts.mesh == CalicoMesh::Tor {
        for r in routers.iter_mut() {
            let Some(asn) = r.asn else { continue };
            let peers: Vec<RouterPeer> = r
                .ports
                .iter()
                .flat_map(|p| {
                    nodes.iter().filter(|n| n.switch == p.switch).map(move |n| RouterPeer {
                        name: format!("Peer_{}", ip_id(n.ip)),
                        local: p.ip,
                        neighbor: n.ip,
                        asn: opts.asn,
                    })
                })
                .collect();
            if !peers.is_empty() {
                let id = r.ports[0].ip;
                r.bird = Some(router_config(id, asn, &peers, Some(opts.hold_time)));
            }
        }
    }
    CalicoPlan {
        mode: opts.mode,
        mesh: opts.mesh,
        asn: opts.asn,
        pool,
        block_size: opts.block_size,
        nodes: per_node,
    }
}

/// The node's conflist: Calico's stock one with the node's name, MTU and
/// paths filled in, and IPAM by the real host-local over the node's blocks
/// (one range per block in a single range set, so host-local moves on to
/// the next block when one is full) instead of calico-ipam (which cannot be
/// installed here). Each block's first address is kept out of its range
/// (as host-local's "gateway"): Calico gives it to the tunnel device.
pub fn conflist(node: &str, blocks: &[Ipv4Net], mtu: u32, max_pods: Option<u32>, paths: &LabPaths) -> Value {
    filled_conflist(CONFLIST, node, mtu, paths, json!([ipam::ranges(blocks, max_pods)]))
}

/// A conflist of the calico plugin (Calico's, Canal's) filled in as
/// Calico's install does (node name, MTU, kubeconfig), with the node's own
/// paths and `host-local` over `ranges`.
pub fn filled_conflist(template: &str, node: &str, mtu: u32, paths: &LabPaths, ranges: Value) -> Value {
    let text = template
        .replace("__KUBERNETES_NODE_NAME__", node)
        .replace("__CNI_MTU__", &mtu.to_string())
        .replace(
            "__KUBECONFIG_FILEPATH__",
            &paths.cni_conf_dir(node).join("calico-kubeconfig").display().to_string(),
        );
    let mut v: Value = serde_json::from_str(&text).expect("a stock calico conflist is valid JSON once filled in");
    let plugin = &mut v["plugins"][0];
    plugin["log_file_path"] = json!(paths.node_dir(node).join("cni/calico.log"));
    plugin["ipam"] = json!({
        "type": "host-local",
        "ranges": ranges,
        "dataDir": paths.cni_state_dir(node).join("networks"),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::Source;
    use crate::profile::Plan;
    use std::path::Path;

    fn plan_of(text: &str) -> (Plan, CalicoPlan) {
        let t = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap();
        let p = crate::profile::plan_lab(&t, "c", &LabPaths::new(Path::new("/run/cnilab"), "c"));
        let c: CalicoPlan = p.profile.downcast::<CalicoPlan>().unwrap().clone();
        (p, c)
    }

    #[test]
    fn blocks_are_distinct_and_inside_the_pool() {
        let pool: Ipv4Net = "192.168.0.0/24".parse().unwrap();
        let b = allocate_blocks(pool, 26, 4, 1);
        let mut s: Vec<String> = b.iter().map(|n| n.to_string()).collect();
        s.sort();
        assert_eq!(
            s,
            [
                "192.168.0.0/26",
                "192.168.0.128/26",
                "192.168.0.192/26",
                "192.168.0.64/26"
            ]
        );
        assert_eq!(allocate_blocks(pool, 26, 4, 1), b);
    }

    #[test]
    fn full_mesh_is_one_way_per_pair() {
        let (_, c) = plan_of("name = \"c\"\n[network]\ncni = \"calico\"\n[[node]]\nname = \"n{i}\"\ncount = 4\n");
        let mut pairs = 0;
        for n in &c.nodes {
            let bird = n.bird.as_ref().unwrap();
            assert_eq!(bird.sessions.len(), 3);
            assert!(bird.config.contains(&format!("route {} blackhole;", n.block)));
            pairs += bird.config.matches("passive on;").count();
        }
        assert_eq!(pairs, 6, "one side of each of the 6 sessions waits");
        assert_eq!(c.nodes[0].pod_mtu, 1500);
        assert_eq!(c.nodes[0].conflist["plugins"][0]["mtu"], 1500);
        assert_eq!(c.nodes[0].conflist["plugins"][0]["ipam"]["type"], "host-local");
    }

    #[test]
    fn reflectors_peer_with_everyone_clients_with_reflectors_only() {
        let (_, c) = plan_of(
            "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nmesh = \"reflectors\"\nreflectors = [\"n1\"]\n[[node]]\nname = \"n{i}\"\ncount = 6\n",
        );
        let total: usize = c.nodes.iter().map(|n| n.bird.as_ref().unwrap().sessions.len()).sum();
        assert_eq!(total, 10, "5 sessions, seen from both ends");
        let rr = c.node("n1").unwrap().bird.as_ref().unwrap();
        assert_eq!(rr.config.matches("rr client;").count(), 5);
        assert_eq!(c.node("n2").unwrap().bird.as_ref().unwrap().sessions.len(), 1);
    }

    #[test]
    fn tor_nodes_peer_with_their_router() {
        let (p, c) = plan_of(
            "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nmesh = \"tor\"\n[[switch]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\n[[switch]]\nname = \"b\"\nsubnet = \"10.2.0.0/24\"\n[[router]]\nname = \"spine\"\nswitches = [\"a\", \"b\"]\nasn = 65000\n[[node]]\nname = \"x\"\nswitch = \"a\"\n[[node]]\nname = \"y\"\nswitch = \"b\"\n",
        );
        let x = c.node("x").unwrap().bird.as_ref().unwrap();
        assert_eq!(
            x.sessions,
            [SessionPlan {
                name: "Node_10_1_0_1".into(),
                neighbor: "10.1.0.1".parse().unwrap(),
                asn: 65000
            }]
        );
        let r = p.routers[0].bird.as_ref().unwrap();
        assert_eq!(r.sessions.len(), 2);
        assert_eq!(p.routers[0].ports[1].fabric_port, "spine.1");
    }

    #[test]
    fn vxlan_mode_has_tunnels_and_no_bird() {
        let (_, c) = plan_of(
            "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nmode = \"vxlan\"\n[[node]]\nname = \"n{i}\"\ncount = 2\n",
        );
        let n = &c.nodes[0];
        assert!(n.bird.is_none());
        let t = n.vxlan.as_ref().unwrap();
        assert_eq!(t.address, n.block.network());
        assert_eq!((t.mtu, n.pod_mtu), (1450, 1450));
    }

    #[test]
    fn claims_stop_at_the_per_host_limit_and_at_an_exhausted_pool() {
        let text = "name = \"c\"\n[network]\ncni = \"calico\"\npod_cidr = \"10.0.0.0/16\"\n[network.calico]\nblock_size = 28\n[[node]]\nname = \"n{i}\"\ncount = 2\npods = 20\n";
        let (_, mut c) = plan_of(text);
        assert_eq!(c.nodes[0].blocks().count(), 2, "20 pods in blocks of 14");
        while c.nodes[0].blocks().count() < ipam::MAX_BLOCKS_PER_HOST {
            let b = ipam::claim_next(&c, 0, 0).unwrap();
            assert!(c.nodes.iter().all(|n| n.blocks().all(|x| x != b)), "{b} given twice");
            c.nodes[0].more_blocks.push(b);
        }
        let err = ipam::claim_next(&c, 0, 0).unwrap_err();
        assert!(err.contains("limit of 20 blocks reached for this node"), "{err}");
        // A /26 pool holds four /28 blocks: two nodes of 20 pods take them all.
        let (_, c) = plan_of(&text.replace("10.0.0.0/16", "10.0.0.0/26"));
        let err = ipam::claim_next(&c, 1, 0).unwrap_err();
        assert!(err.contains("use a larger pod_cidr"), "{err}");
    }
}

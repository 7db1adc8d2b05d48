//! The Weave Net profile (docs/weave-facts.md, Weave Net v2.8.1 in
//! weave-kube mode, sleeve only since this kernel has no openvswitch): per
//! node the `weave` bridge with the port pair `vethwe-bridge` and
//! `vethwe-pcap`, the node's IPAM share split from the range by Weave's
//! `seed=` rule, the bridge exposed with the share's first address, the
//! router stand-in `weaver` (mesh TCP 6783, sleeve UDP 6783, MAC learning)
//! and the `weave-net` CNI plugin.

pub mod build;
pub mod iptables;
pub mod npc;
pub mod options;
pub mod plugin;
pub mod router;
pub mod sleeve;

use std::net::Ipv4Addr;

use anyhow::Result;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::paths::LabPaths;
use crate::model::plan::{NodePlan, Stream, mac_string, random_mac, rng};
use crate::model::topology::Topology;
use crate::profile::{AgentSpec, Built, Plan, Profile};
use options::WeaveOptions;

/// The stock weave-kube CNI configuration (the `weave` script's create_cni_config).
pub const CONFLIST: &str = include_str!("../../../../plugins/weave/10-weave.conflist");

/// The file name of the conflist in a node's CNI configuration folder.
pub const CONFLIST_NAME: &str = "10-weave.conflist";

/// The router's port: TCP for the mesh, UDP for sleeve (`mesh.Port`).
pub const PORT: u16 = 6783;

/// Sleeve's cost on an IP packet: outer IP 20, UDP 8, the sender's name
/// 6, the frame header (src, dst peer, length) 14, the inner Ethernet 14.
pub const SLEEVE_OVERHEAD: u32 = 62;

/// The router's HTTP address (launch.sh's `HTTP_ADDR`).
pub const HTTP_ADDR: &str = "127.0.0.1:6784";

/// The bridge (`WeaveBridgeName`).
pub const BRIDGE: &str = "weave";
/// The bridge's port (`BridgeIfName`).
pub const BRIDGE_PORT: &str = "vethwe-bridge";
/// Its peer, where the router captures and injects frames (`PcapIfName`).
pub const PCAP_PORT: &str = "vethwe-pcap";

/// Weave's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeavePlan {
    /// `WEAVE_MTU`: bridge, ports and pods.
    pub mtu: u32,
    /// `IPALLOC_RANGE`.
    pub range: Ipv4Net,
    /// Per node, in node order.
    pub nodes: Vec<WeaveNode>,
}

/// Weave's decisions for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeaveNode {
    /// The node (the peer's nickname).
    pub node: String,
    /// The peer name: a MAC, also the bridge's (from the lab's seed).
    pub peer: String,
    /// Its IPAM share of the range.
    pub share: Ipv4Net,
    /// The share's first address, which `weave expose` puts on the bridge.
    pub bridge_ip: Ipv4Addr,
    /// Its address on the underlay, where the other peers reach it.
    pub ip: Ipv4Addr,
    /// Arguments of its router.
    pub agent_args: Vec<String>,
}

impl WeavePlan {
    /// The Weave part of a node.
    pub fn node(&self, name: &str) -> Option<&WeaveNode> {
        self.nodes.iter().find(|n| n.node == name)
    }
}

/// Weave's `subdivide` (ipam/allocator.go ClaimForPeers with `seed=`): the
/// range halved recursively, `peers[..n/2]` taking the lower half and
/// `peers[n/2..]` the upper half; `peers` must be sorted. Returns each
/// peer's share in the order of `peers`.
pub fn shares(range: Ipv4Net, peers: usize) -> Vec<Ipv4Net> {
    fn split(net: Ipv4Net, n: usize, out: &mut Vec<Ipv4Net>) {
        if n <= 1 {
            out.extend((0..n).map(|_| net));
            return;
        }
        let len = net.prefix_len() + 1;
        let lower = Ipv4Net::new(net.network(), len).expect("valid prefix");
        let upper = Ipv4Net::new(
            Ipv4Addr::from(u32::from(net.network()) + (1u32 << (32 - u32::from(len)))),
            len,
        )
        .expect("valid prefix");
        split(lower, n / 2, out);
        split(upper, n - n / 2, out);
    }
    let mut out = Vec::with_capacity(peers);
    split(range, peers, &mut out);
    out
}

/// The addresses of `share` Weave hands out, lowest first: all of it but
/// the range's own first and last addresses (`HostRange`).
pub fn share_hosts(range: Ipv4Net, share: Ipv4Net) -> (u32, u32) {
    let lo = u32::from(share.network()).max(u32::from(range.network()) + 1);
    let hi = u32::from(share.broadcast()).min(u32::from(range.broadcast()) - 1);
    (lo, hi)
}

/// The multi-call programs of Weave: its CNI plugin and its router.
pub const PROGRAMS: &[crate::profile::Program] = &[("weave-net", plugin::main), ("weaver", router::main)];

/// Weave in the registry of profiles.
pub const REGISTERED: crate::profile::Registered = crate::profile::Registered {
    syntax: &options::Syntax,
    plan: |topology, nodes, _routers, paths| {
        crate::profile::ProfilePlan::new(plan(topology, &crate::profile::options_of(topology), nodes, paths))
    },
    programs: PROGRAMS,
    load: crate::profile::load_as::<WeavePlan>,
    host_link_sysctls: |_| Vec::new(),
};

/// Plans Weave for a lab.
pub fn plan(topology: &Topology, opts: &WeaveOptions, nodes: &[NodePlan], paths: &LabPaths) -> WeavePlan {
    let range = topology.network.pod_cidr;
    // `[network] mtu` forces the pods' MTU; under Weave the pods take the
    // bridge's, so it is WEAVE_MTU too.
    let opts = &WeaveOptions {
        mtu: topology.network.mtu.unwrap_or(opts.mtu),
    };
    let mut macs = rng(topology.seed, Stream::Macs);
    // Peer names are drawn from the seed and handed out sorted, in node
    // order, so that the shares follow the nodes (node1 the lowest).
    let mut names: Vec<String> = nodes.iter().map(|_| mac_string(&random_mac(&mut macs))).collect();
    names.sort();
    let sorted = names.clone();
    let split = shares(range, sorted.len());
    let seed = sorted.join(",");
    let per_node = nodes
        .iter()
        .zip(&names)
        .map(|(n, peer)| {
            let share = split[sorted.iter().position(|s| s == peer).expect("a sorted peer")];
            let bridge_ip = Ipv4Addr::from(share_hosts(range, share).0);
            let dir = paths.agent_dir(&n.name);
            let mut agent_args = vec![
                format!("--port={PORT}"),
                "--datapath=datapath".to_string(),
                format!("--mtu={}", opts.mtu),
                format!("--name={peer}"),
                format!("--nickname={}", n.name),
                format!("--http-addr={HTTP_ADDR}"),
                format!("--ipalloc-range={range}"),
                format!("--ipalloc-init=seed={seed}"),
                "--no-masq-local".to_string(),
                format!("--status-file={}", dir.join("status.json").display()),
                format!("--ipam-file={}", dir.join("ipam.json").display()),
            ];
            agent_args.extend(nodes.iter().filter(|o| o.name != n.name).map(|o| o.ip.to_string()));
            WeaveNode {
                node: n.name.clone(),
                peer: peer.clone(),
                share,
                bridge_ip,
                ip: n.ip,
                agent_args,
            }
        })
        .collect();
    WeavePlan {
        mtu: opts.mtu,
        range,
        nodes: per_node,
    }
}

/// The stock conflist, parsed.
fn stock_conflist() -> &'static Value {
    static C: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    C.get_or_init(|| serde_json::from_str(CONFLIST).expect("the stock conflist is valid JSON"))
}

impl Profile for WeavePlan {
    fn name(&self) -> &'static str {
        "weave"
    }

    fn describe(&self) -> String {
        format!("weave sleeve (UDP {PORT}, MTU {})", self.mtu)
    }

    fn settings(&self, _topology: &Topology) -> Vec<(String, String)> {
        [
            ("mtu", self.mtu.to_string()),
            ("ipalloc_range", self.range.to_string()),
            ("datapath", "sleeve".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("network.weave.{k}"), v))
        .collect()
    }

    fn node_agents(&self, n: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec> {
        let Some(w) = self.node(&n.name) else {
            return Vec::new();
        };
        vec![AgentSpec {
            owner: n.name.clone(),
            ns: n.ns.clone(),
            name: "weaver",
            program: paths.bin_dir().join("weaver"),
            args: w.agent_args.clone(),
            log: paths.agent_log(&n.name),
            ready: paths.agent_dir(&n.name).join("status.json"),
            config: None,
        }]
    }

    fn agent_name(&self) -> &'static str {
        "weaver"
    }

    fn conflist(&self, node: &str) -> Option<&Value> {
        self.node(node).map(|_| stock_conflist())
    }

    fn pod_mtu(&self, node: &str) -> Option<u32> {
        self.node(node).map(|_| self.mtu)
    }

    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net> {
        self.node(node).map(|n| n.share)
    }

    fn overlay(&self, node: &str) -> Option<(String, u32)> {
        self.node(node).map(|_| (BRIDGE.to_string(), self.mtu))
    }

    fn vxlan_port(&self) -> Option<u16> {
        None
    }

    fn sleeve_port(&self) -> Option<u16> {
        Some(PORT)
    }

    fn decode_sleeve(&self, payload: &[u8]) -> Option<Vec<String>> {
        sleeve::describe(
            payload,
            &self
                .nodes
                .iter()
                .map(|n| (n.peer.clone(), n.node.clone()))
                .collect::<Vec<_>>(),
        )
    }

    fn bridge_overlay(&self) -> Option<crate::profile::BridgeOverlay> {
        Some(crate::profile::BridgeOverlay {
            bridge: BRIDGE,
            port: BRIDGE_PORT,
            router_end: PCAP_PORT,
            udp_port: PORT,
            agent: "weaver",
            overhead: SLEEVE_OVERHEAD,
        })
    }

    fn overlay_peers(&self, paths: &LabPaths) -> Vec<crate::profile::OverlayPeer> {
        let mut v = Vec::new();
        for n in &self.nodes {
            let Some(s) = build::read_status(paths, &n.node) else {
                continue;
            };
            for p in &s.peers {
                v.push(crate::profile::OverlayPeer {
                    on: n.node.clone(),
                    peer: format!("{}({})", p.name, p.nickname),
                    address: p.address.clone(),
                    state: p.state.clone(),
                    connections: p.connections,
                    macs: s.macs.iter().filter(|m| m.peer == p.name).count(),
                });
            }
        }
        v
    }

    fn tunnel_label(&self) -> Option<String> {
        Some(format!("sleeve UDP {PORT}, weaver"))
    }

    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>) {
        let Some(w) = self.node(node) else {
            return (Vec::new(), None);
        };
        let lines = vec![
            format!(
                "{BRIDGE} {}/{} MTU {} (peer {})",
                w.bridge_ip,
                self.range.prefix_len(),
                self.mtu,
                w.peer
            ),
            format!("weaver: {BRIDGE_PORT} <> {PCAP_PORT}, sleeve UDP {PORT}"),
        ];
        (lines, Some((format!("from {}", w.share), self.mtu)))
    }

    fn address_owners(&self, plan: &Plan) -> Vec<(Ipv4Addr, String, String)> {
        self.nodes
            .iter()
            .filter_map(|w| {
                let n = plan.node(&w.node)?;
                Some((w.bridge_ip, format!("{BRIDGE} of {}", n.name), n.ns.clone()))
            })
            .collect()
    }

    fn kernel_features(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn optional_kernel_features(&self) -> Vec<(&'static str, &'static str)> {
        vec![(
            "openvswitch",
            "weave runs sleeve (UDP 6783) only, as Weave falls back to",
        )]
    }

    /// weave-npc's chains and sets (weave-kube runs it beside the router).
    fn policy_state(
        &self,
        world: &crate::model::netpol::World,
        policies: &[crate::model::netpol::NetworkPolicy],
        node: &str,
    ) -> Option<crate::profile::PolicyState> {
        Some(npc::policy_state(world, policies, node))
    }

    fn programs_needed(&self) -> Vec<String> {
        vec!["iptables".into(), "ipset".into()]
    }

    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(build::start(b, self))
    }

    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(build::converge(b, self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::Source;
    use std::path::Path;

    fn nets(v: &[Ipv4Net]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn shares_follow_weaves_subdivide() {
        let r: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        assert_eq!(nets(&shares(r, 1)), ["10.32.0.0/12"]);
        assert_eq!(nets(&shares(r, 2)), ["10.32.0.0/13", "10.40.0.0/13"]);
        assert_eq!(nets(&shares(r, 3)), ["10.32.0.0/13", "10.40.0.0/14", "10.44.0.0/14"]);
        assert_eq!(
            nets(&shares(r, 4)),
            ["10.32.0.0/14", "10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14"]
        );
        assert_eq!(
            nets(&shares(r, 5)),
            [
                "10.32.0.0/14",
                "10.36.0.0/14",
                "10.40.0.0/14",
                "10.44.0.0/15",
                "10.46.0.0/15"
            ]
        );
        let (lo, hi) = share_hosts(r, shares(r, 2)[1]);
        assert_eq!(
            (Ipv4Addr::from(lo), Ipv4Addr::from(hi)),
            ("10.40.0.0".parse().unwrap(), "10.47.255.254".parse().unwrap())
        );
        assert_eq!(Ipv4Addr::from(share_hosts(r, r).0), Ipv4Addr::new(10, 32, 0, 1));
    }

    #[test]
    fn plan_follows_weave_kube() {
        let text = "name = \"w\"\n[network]\ncni = \"weave\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\n[[node]]\nname = \"n{i}\"\ncount = 3\npods = 2\n";
        let t = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap();
        let paths = LabPaths::new(Path::new("/run/cnilab"), "w");
        let plan = crate::profile::plan_lab(&t, "w", &paths);
        let w: &WeavePlan = plan.profile.downcast().unwrap();
        assert_eq!((w.mtu, w.range.to_string().as_str()), (1376, "10.32.0.0/12"));
        let by_peer: Vec<&WeaveNode> = w.nodes.iter().collect();
        assert!(
            w.nodes.windows(2).all(|p| p[0].peer < p[1].peer),
            "names sorted in node order"
        );
        let got: Vec<(String, String)> = by_peer
            .iter()
            .map(|n| (n.share.to_string(), n.bridge_ip.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.32.0.0/13".into(), "10.32.0.1".into()),
                ("10.40.0.0/14".into(), "10.40.0.0".into()),
                ("10.44.0.0/14".into(), "10.44.0.0".into())
            ]
        );
        assert_eq!(w.conflist("n1").unwrap()["plugins"][0]["type"], "weave-net");
        assert!(w.nodes[0].agent_args.contains(&"--mtu=1376".to_string()));
        // Deterministic from the seed.
        let again = crate::profile::plan_lab(&t, "w", &paths);
        let w2: &WeavePlan = again.profile.downcast().unwrap();
        assert_eq!(w2.nodes[2].peer, w.nodes[2].peer);
    }

    #[test]
    fn a_range_too_small_for_the_pods_is_refused() {
        let text = "name = \"w\"\n[network]\ncni = \"weave\"\npod_cidr = \"10.32.0.0/29\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\n[[node]]\nname = \"n{i}\"\ncount = 3\npods = 2\n";
        let e = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }
}

//! The flannel profile (shared/design/faithfulness.md, flannel part): subnet
//! leases by flannel's own rule, the VXLAN agent that stands in for
//! flanneld, and the `flannel` CNI plugin that delegates to `bridge`.

pub mod agent;
pub mod build;
pub mod iptables;
pub mod options;
pub mod plugin;
pub mod store;
pub mod udp;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use anyhow::Result;
use futures::future::BoxFuture;

use crate::model::paths::LabPaths;
use crate::model::plan::{NodePlan, Stream, mac_string, random_mac, rng};
use crate::model::topology::Datastore;
use crate::model::topology::Topology;
use crate::profile::{AgentSpec, Built, Plan, Profile};
use options::{FlannelBackend, FlannelOptions, Implementation};

/// The stock kube-flannel CNI configuration, as shipped in kube-flannel.yml.
pub const CONFLIST: &str = include_str!("../../../../plugins/flannel/10-flannel.conflist");

/// The file name of the conflist in a node's CNI configuration folder.
pub const CONFLIST_NAME: &str = "10-flannel.conflist";

/// VXLAN's encapsulation overhead: outer Ethernet 14, IP 20, UDP 8, VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The UDP backend's overhead: outer IP 20 and UDP 8 around the bare packet.
pub const UDP_OVERHEAD: u32 = 28;

/// flannel's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlannelPlan {
    /// vxlan, host-gw or udp.
    pub backend: FlannelBackend,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP port of the overlay.
    pub port: u16,
    /// The whole pod network (FLANNEL_NETWORK).
    pub network: Ipv4Net,
    /// Prefix length of each lease.
    pub subnet_len: u8,
    /// builtin or upstream.
    #[serde(default)]
    pub implementation: Implementation,
    /// Where the config and the leases live.
    #[serde(default)]
    pub datastore: Datastore,
    /// The keys' prefix, e.g. `/coreos.com/network`.
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// The real flanneld the topology names (upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flanneld: Option<String>,
    /// The real flannel CNI plugin the topology names (upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_plugin: Option<String>,
    /// flanneld's `--iptables-forward-rules`.
    #[serde(default = "options::yes")]
    pub iptables_forward_rules: bool,
    /// flanneld's `--iface` on every node: its address is the node's
    /// public address (lease PublicIP, VXLAN local, host-gw next hop).
    #[serde(default = "options::eth0")]
    pub iface: String,
    /// The overlay device (`flannel.<vni>` or `flannel0`), none for host-gw.
    pub device: Option<String>,
    /// The network configuration flanneld reads (`/coreos.com/network/config`).
    pub net_config: Value,
    /// Per node, in node order.
    pub nodes: Vec<FlannelNode>,
    /// The conflist's file name in a node's CNI configuration folder.
    #[serde(default = "default_conflist_name")]
    pub conflist_name: String,
}

fn default_conflist_name() -> String {
    CONFLIST_NAME.to_string()
}

/// flannel's decisions for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlannelNode {
    /// The node.
    pub node: String,
    /// Its lease.
    pub subnet: Ipv4Net,
    /// Its VTEP MAC (flannel picks one at random; here the seed does).
    pub vtep_mac: String,
    /// MTU of the overlay device.
    pub device_mtu: Option<u32>,
    /// MTU the pods get.
    pub pod_mtu: u32,
    /// The node's CNI configuration: the stock conflist with the node's own
    /// state paths, since all nodes share one filesystem.
    pub conflist: Value,
    /// Arguments of the node's flanneld.
    pub agent_args: Vec<String>,
    /// The subnet file flanneld writes for this lease (cnilab writes it
    /// first for the real flanneld, which then reuses the lease in it).
    #[serde(default)]
    pub subnet_env: String,
}

fn default_prefix() -> String {
    options::DEFAULT_ETCD_PREFIX.to_string()
}

impl FlannelPlan {
    /// The flannel part of a node.
    pub fn node(&self, name: &str) -> Option<&FlannelNode> {
        self.nodes.iter().find(|n| n.node == name)
    }

    /// A node's public address and the MTU of its `--iface` (validated:
    /// every node has it).
    pub fn public(&self, n: &NodePlan) -> (Ipv4Addr, u32) {
        n.iface(&self.iface).unwrap_or((n.ip, n.mtu))
    }
}

/// The multi-call programs of flannel: its CNI plugin and its agent.
pub const PROGRAMS: &[crate::profile::Program] = &[("flannel", plugin::main), ("flanneld", agent::main)];

/// flannel in the registry of profiles.
pub const REGISTERED: crate::profile::Registered = crate::profile::Registered {
    syntax: &options::Syntax,
    plan: |topology, nodes, _routers, paths| {
        crate::profile::ProfilePlan::new(plan(topology, &crate::profile::options_of(topology), nodes, paths))
    },
    programs: PROGRAMS,
    load: crate::profile::load_as::<FlannelPlan>,
    host_link_sysctls: |_| Vec::new(),
};

impl Profile for FlannelPlan {
    fn name(&self) -> &'static str {
        "flannel"
    }

    fn describe(&self) -> String {
        match self.backend {
            FlannelBackend::Vxlan => format!("flannel vxlan (VNI {}, port {})", self.vni, self.port),
            FlannelBackend::Udp => format!("flannel udp (port {})", self.port),
            FlannelBackend::HostGw => "flannel host-gw".to_string(),
            FlannelBackend::Ipip => "flannel ipip".to_string(),
            FlannelBackend::Wireguard => "flannel wireguard".to_string(),
        }
    }

    fn settings(&self, _topology: &Topology) -> Vec<(String, String)> {
        [
            ("backend", self.backend.as_str().to_string()),
            ("vni", self.vni.to_string()),
            ("port", self.port.to_string()),
            ("subnet_len", self.subnet_len.to_string()),
            ("implementation", self.implementation.as_str().to_string()),
            (
                "iptables_forward_rules",
                (!self
                    .nodes
                    .iter()
                    .any(|n| n.agent_args.iter().any(|a| a == "--iptables-forward-rules=false")))
                .to_string(),
            ),
            ("etcd_prefix", self.etcd_prefix.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("network.flannel.{k}"), v))
        .collect()
    }

    fn node_agents(&self, n: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec> {
        let Some(fnode) = self.node(&n.name) else {
            return Vec::new();
        };
        vec![AgentSpec {
            owner: n.name.clone(),
            ns: n.ns.clone(),
            name: "flanneld",
            program: paths.bin_dir().join("flanneld"),
            args: fnode.agent_args.clone(),
            log: paths.agent_log(&n.name),
            ready: paths.agent_dir(&n.name).join("subnet.env"),
            // The real flanneld reuses the lease in an existing subnet file:
            // the planned one, so that its lab is the same every time.
            config: (self.implementation == Implementation::Upstream)
                .then(|| (paths.agent_dir(&n.name).join("subnet.env"), fnode.subnet_env.clone())),
        }]
    }

    fn agent_name(&self) -> &'static str {
        "flanneld"
    }

    fn preflight(&self) -> Result<(), crate::model::error::Error> {
        if self.implementation == Implementation::Upstream {
            build::upstream_programs(self)?;
        }
        Ok(())
    }

    fn etcd_prefix(&self) -> Option<&str> {
        (self.datastore == Datastore::Etcd).then_some(self.etcd_prefix.as_str())
    }

    fn conflist(&self, node: &str) -> Option<&Value> {
        self.node(node).map(|n| &n.conflist)
    }

    fn pod_mtu(&self, node: &str) -> Option<u32> {
        self.node(node).map(|n| n.pod_mtu)
    }

    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net> {
        self.node(node).map(|n| n.subnet)
    }

    fn overlay(&self, node: &str) -> Option<(String, u32)> {
        self.device.clone().zip(self.node(node).and_then(|n| n.device_mtu))
    }

    fn vxlan_port(&self) -> Option<u16> {
        (self.backend == FlannelBackend::Vxlan).then_some(self.port)
    }

    fn ip_in_udp_port(&self) -> Option<u16> {
        (self.backend == FlannelBackend::Udp).then_some(self.port)
    }

    fn tunnel_label(&self) -> Option<String> {
        match self.backend {
            FlannelBackend::Vxlan => Some(format!("VXLAN VNI {} UDP {}", self.vni, self.port)),
            FlannelBackend::Udp => Some(format!("IP in UDP {}, flanneld", self.port)),
            FlannelBackend::HostGw => None,
            FlannelBackend::Ipip => Some("IP in IP".to_string()),
            FlannelBackend::Wireguard => Some("WireGuard".to_string()),
        }
    }

    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>) {
        let Some(fnode) = self.node(node) else {
            return (Vec::new(), None);
        };
        let mut lines = Vec::new();
        if let (Some(dev), Some(mtu)) = (&self.device, fnode.device_mtu) {
            lines.push(format!("{dev} {}/32 MTU {mtu}", fnode.subnet.network()));
        }
        let gw = fnode.subnet.hosts().next().unwrap_or(fnode.subnet.network());
        lines.push(format!("cni0 {gw}/{}", fnode.subnet.prefix_len()));
        (lines, Some((format!("from {}", fnode.subnet), fnode.pod_mtu)))
    }

    fn address_owners(&self, plan: &Plan) -> Vec<(Ipv4Addr, String, String)> {
        let mut v = Vec::new();
        for fnode in &self.nodes {
            if let Some(n) = plan.node(&fnode.node) {
                if let Some(dev) = &self.device {
                    v.push((fnode.subnet.network(), format!("{dev} of {}", n.name), n.ns.clone()));
                }
                if let Some(gw) = fnode.subnet.hosts().next() {
                    v.push((gw, format!("cni0 of {}", n.name), n.ns.clone()));
                }
            }
        }
        v
    }

    fn kernel_features(&self) -> Vec<&'static str> {
        match self.backend {
            FlannelBackend::Vxlan => vec!["vxlan"],
            FlannelBackend::Udp => vec!["tun"],
            FlannelBackend::HostGw => Vec::new(),
            FlannelBackend::Ipip => vec!["ipip"],
            FlannelBackend::Wireguard => vec!["wireguard"],
        }
    }

    fn unbuildable(&self) -> Option<(String, String)> {
        matches!(self.backend, FlannelBackend::Ipip | FlannelBackend::Wireguard).then(|| {
            (
                format!(
                    "flannel's {} backend is not built by cnilab yet (neither by its flanneld nor checked against the real one)",
                    self.backend.as_str()
                ),
                "use backend = \"vxlan\", \"host-gw\" or \"udp\"".to_string(),
            )
        })
    }

    fn agent_run_files(&self, node: &str, paths: &LabPaths) -> Vec<std::path::PathBuf> {
        // flanneld's subnet file, /run/flannel/subnet.env on a real node.
        self.node(node)
            .map(|_| paths.agent_dir(node).join("subnet.env"))
            .into_iter()
            .collect()
    }

    fn planned_vtep_mac(&self, node: &str) -> Option<String> {
        (self.backend == FlannelBackend::Vxlan)
            .then(|| self.node(node).map(|n| n.vtep_mac.clone()))
            .flatten()
    }

    fn prepare_agent<'a>(
        &'a self,
        node: &'a NodePlan,
        nl: &'a crate::kernel::nl::Nl,
        mac: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(build::prepare_vtep(self, node, nl, mac))
    }

    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(build::start(b, self))
    }

    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(build::converge(b, self))
    }
}

/// flannel's lease rule: SubnetMin skips the first subnet of the network,
/// and each node takes a random one among the first 100 free subnets
/// (flannel's LocalManager.allocateSubnet); here the random pick is seeded.
pub fn allocate_leases(network: Ipv4Net, subnet_len: u8, count: usize, seed: u64) -> Vec<Ipv4Net> {
    let mut r = rng(seed, Stream::Leases);
    let size = 1u32 << (32 - subnet_len);
    let total = 1u32 << (subnet_len - network.prefix_len());
    let base = u32::from(network.network());
    let mut taken = vec![false; total as usize];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let bag: Vec<u32> = (1..total).filter(|i| !taken[*i as usize]).take(100).collect();
        assert!(!bag.is_empty(), "validation guarantees enough subnets");
        let pick = bag[r.random_range(0..bag.len())];
        taken[pick as usize] = true;
        out.push(Ipv4Net::new(Ipv4Addr::from(base + pick * size), subnet_len).expect("valid prefix"));
    }
    out
}

/// Plans flannel for a lab.
pub fn plan(topology: &Topology, opts: &FlannelOptions, nodes: &[NodePlan], paths: &LabPaths) -> FlannelPlan {
    let network = topology.network.pod_cidr;
    let leases = allocate_leases(network, opts.subnet_len, nodes.len(), topology.seed);
    let mut macs = rng(topology.seed, Stream::Macs);
    let device = match opts.backend {
        FlannelBackend::Vxlan => Some(format!("flannel.{}", opts.vni)),
        FlannelBackend::Udp => Some("flannel0".to_string()),
        FlannelBackend::HostGw => None,
        FlannelBackend::Ipip => Some("flannel.ipip".to_string()),
        FlannelBackend::Wireguard => Some("flannel-wg".to_string()),
    };
    let mut backend = json!({ "Type": opts.backend.as_str() });
    if opts.backend == FlannelBackend::Vxlan {
        backend["VNI"] = json!(opts.vni);
    }
    let default_port = if opts.backend == FlannelBackend::Udp {
        8285
    } else {
        8472
    };
    if opts.port != default_port {
        backend["Port"] = json!(opts.port);
    }
    let net_config = json!({
        "Network": network.to_string(),
        "SubnetLen": opts.subnet_len,
        "Backend": backend,
    });
    let stock: Value = serde_json::from_str(CONFLIST).expect("the stock conflist is valid JSON");
    let datastore = topology.network.datastore;
    let etcd = topology
        .etcd
        .as_ref()
        .filter(|_| datastore == Datastore::Etcd)
        .map(|e| format!("http://{}:{}", e.ip, crate::model::plan::ETCD_CLIENT_PORT));
    let per_node = nodes
        .iter()
        .zip(leases)
        .map(|(n, subnet)| {
            let mac = mac_string(&random_mac(&mut macs));
            // The node as flanneld sees it through --iface.
            let (public_ip, mtu) = n.iface(&opts.iface).unwrap_or((n.ip, n.mtu));
            let device_mtu = match opts.backend {
                FlannelBackend::Vxlan => Some(mtu - VXLAN_OVERHEAD),
                FlannelBackend::Udp => Some(mtu - UDP_OVERHEAD),
                FlannelBackend::HostGw => None,
                // flannel: IP in IP costs 20 bytes, WireGuard 80.
                FlannelBackend::Ipip => Some(mtu - 20),
                FlannelBackend::Wireguard => Some(mtu - 80),
            };
            let pod_mtu = topology.network.mtu.unwrap_or(device_mtu.unwrap_or(mtu));
            let agent_dir = paths.agent_dir(&n.name);
            let state = paths.cni_state_dir(&n.name);
            let mut conflist = stock.clone();
            let plugin = &mut conflist["plugins"][0];
            plugin["subnetFile"] = json!(agent_dir.join("subnet.env"));
            plugin["dataDir"] = json!(state.join("flannel"));
            plugin["ipam"] = json!({ "dataDir": state.join("networks") });
            if let Some(mtu) = topology.network.mtu {
                plugin["delegate"]["mtu"] = json!(mtu);
            }
            let store = match &etcd {
                Some(endpoint) => format!("--etcd-endpoints={endpoint}"),
                None => format!("--etcd-dir={}", paths.etcd_dir().display()),
            };
            let mut agent_args = vec![
                store,
                format!("--etcd-prefix={}", opts.etcd_prefix),
                format!("--iface={}", opts.iface),
                format!("--public-ip={public_ip}"),
                format!("--subnet-file={}", agent_dir.join("subnet.env").display()),
                "--ip-masq".to_string(),
            ];
            if !opts.iptables_forward_rules {
                agent_args.push("--iptables-forward-rules=false".to_string());
            }
            if opts.implementation == Implementation::Builtin {
                agent_args.extend([
                    format!("--subnet={subnet}"),
                    format!("--vtep-mac={mac}"),
                    format!("--watch-socket={}", paths.watch_socket().display()),
                ]);
            }
            let gateway = subnet.hosts().next().unwrap_or(subnet.network());
            let subnet_env = format!(
                "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
                subnet.prefix_len(),
                device_mtu.unwrap_or(mtu)
            );
            FlannelNode {
                node: n.name.clone(),
                subnet,
                vtep_mac: mac,
                device_mtu,
                pod_mtu,
                conflist,
                agent_args,
                subnet_env,
            }
        })
        .collect();
    FlannelPlan {
        backend: opts.backend,
        vni: opts.vni,
        port: opts.port,
        network,
        subnet_len: opts.subnet_len,
        implementation: opts.implementation,
        datastore,
        etcd_prefix: opts.etcd_prefix.clone(),
        flanneld: opts.flanneld.clone(),
        cni_plugin: opts.cni_plugin.clone(),
        iptables_forward_rules: opts.iptables_forward_rules,
        iface: opts.iface.clone(),
        device,
        net_config,
        nodes: per_node,
        conflist_name: CONFLIST_NAME.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::Source;
    use std::path::Path;

    #[test]
    fn leases_skip_the_first_subnet_and_never_repeat() {
        let net: Ipv4Net = "10.244.0.0/22".parse().unwrap();
        for seed in 0..50 {
            let l = allocate_leases(net, 24, 3, seed);
            let mut s: Vec<String> = l.iter().map(|n| n.to_string()).collect();
            s.sort();
            assert_eq!(s, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"], "seed {seed}");
        }
    }

    #[test]
    fn leases_pick_among_the_first_hundred_free() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let l = allocate_leases(net, 24, 200, 9);
        assert!(l.iter().all(|n| n.network() != Ipv4Addr::new(10, 244, 0, 0)));
        // The first pick is within .1 .. .100.
        assert!((1..=100).contains(&l[0].network().octets()[2]));
        assert_eq!(l, allocate_leases(net, 24, 200, 9));
        assert_ne!(l, allocate_leases(net, 24, 200, 10));
    }

    #[test]
    fn node_plan_follows_flannel() {
        let text = "name = \"d\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\nmtu = 9000\n[[node]]\nname = \"n{i}\"\ncount = 2\npods = 1\n";
        let t = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap();
        let paths = LabPaths::new(Path::new("/run/cnilab"), "d");
        let plan = crate::profile::plan_lab(&t, "d", &paths);
        let f: &FlannelPlan = plan.profile.downcast().unwrap();
        assert_eq!(f.device.as_deref(), Some("flannel.1"));
        assert_eq!(f.nodes[0].device_mtu, Some(8950));
        assert_eq!(f.nodes[0].pod_mtu, 8950);
        assert_eq!(
            f.net_config,
            json!({"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}})
        );
        let conf = &f.nodes[1].conflist;
        assert_eq!(conf["name"], "cbr0");
        assert_eq!(
            conf["plugins"][0]["subnetFile"],
            "/run/cnilab/d/nodes/n2/agent/subnet.env"
        );
        assert_eq!(
            conf["plugins"][0]["delegate"],
            json!({"hairpinMode": true, "isDefaultGateway": true})
        );
        assert_eq!(conf["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn udp_plan_follows_flannel() {
        let text = "name = \"d\"\n[network.flannel]\nbackend = \"udp\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\n[[node]]\nname = \"n{i}\"\ncount = 2\npods = 1\n";
        let t = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap();
        let paths = LabPaths::new(Path::new("/run/cnilab"), "d");
        let plan = crate::profile::plan_lab(&t, "d", &paths);
        let f: &FlannelPlan = plan.profile.downcast().unwrap();
        assert_eq!(f.device.as_deref(), Some("flannel0"));
        assert_eq!(f.port, 8285);
        assert_eq!((f.nodes[0].device_mtu, f.nodes[0].pod_mtu), (Some(1472), 1472));
        assert_eq!(
            f.net_config,
            json!({"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "udp"}})
        );
        assert_eq!(f.vxlan_port(), None);
        assert_eq!(f.ip_in_udp_port(), Some(8285));
        assert_eq!(f.kernel_features(), ["tun"]);
        assert_eq!(f.overlay("n1"), Some(("flannel0".to_string(), 1472)));
    }
}

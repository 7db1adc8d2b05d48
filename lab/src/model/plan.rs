//! The plan: every decision about a lab, made without touching the kernel.
//! Addresses, leases, MACs, names, MTUs and configuration files are all
//! chosen here from the topology and its seed, so the build only carries
//! them out and the same file always gives the same lab.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::paths;
use crate::model::topology::Topology;

/// Everything the build needs, derived from the topology alone; `P` is the
/// CNI profile's part (the profile layer names the type).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan<P> {
    /// The lab's name (the topology's, unless `up --name` chose another).
    pub lab: String,
    /// What the user wrote, with defaults.
    pub topology: Topology,
    /// The namespace holding the switches.
    pub fabric_ns: String,
    /// The switches.
    pub switches: Vec<SwitchPlan>,
    /// The nodes, in topology order.
    pub nodes: Vec<NodePlan>,
    /// The routers.
    pub routers: Vec<RouterPlan>,
    /// The CNI profile's own decisions.
    pub profile: P,
    /// The lab's etcd, with `datastore = "etcd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdPlan>,
}

/// The lab's etcd: a namespace with one port on the first switch, the
/// server listening on its address and on 127.0.0.1 (port 2379).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdPlan {
    /// Its namespace (`cnilab.<lab>._etcd`).
    pub ns: String,
    /// Its switch.
    pub switch: String,
    /// Its port in the fabric namespace (`etcd.db`: node ports have no dot).
    pub fabric_port: String,
    /// Its address on the switch.
    pub ip: Ipv4Addr,
    /// Prefix length of the switch subnet.
    pub prefix_len: u8,
    /// MTU of the switch.
    pub mtu: u32,
    /// The switch's gateway (.1), its default route.
    pub gateway: Ipv4Addr,
}

/// etcd's client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;

impl EtcdPlan {
    /// Its client URL on the switch, as nodes reach it.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", self.ip)
    }
}

/// A switch: a Linux bridge in the fabric namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchPlan {
    /// Bridge name.
    pub name: String,
    /// Underlay subnet.
    pub subnet: Ipv4Net,
    /// MTU of the bridge and of every port and node eth0 on it.
    pub mtu: u32,
    /// The network edge serving the gateway address, when no router does.
    #[serde(default)]
    pub uplink: Option<UplinkPlan>,
}

/// A switch's uplink: what a real network gives every node, a default
/// gateway. A namespace with one port on the switch holding the gateway
/// address (.1), which answers ARP and ping for it and, with forwarding
/// off, passes nothing on: traffic for elsewhere ends there, as at the edge
/// of a lab network, and never reaches the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkPlan {
    /// Its namespace (`cnilab.<lab>._uplink-<switch>`).
    pub ns: String,
    /// Its interface (named after the switch).
    pub ifname: String,
    /// Its peer in the fabric namespace.
    pub fabric_port: String,
    /// The gateway address (.1 of the switch subnet).
    pub ip: Ipv4Addr,
    /// Prefix length of the switch subnet.
    pub prefix_len: u8,
}

/// A node: a namespace with `eth0` on its switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePlan {
    /// Name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its switch.
    pub switch: String,
    /// The name of its port on the switch (in the fabric namespace).
    pub port: String,
    /// eth0's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the switch subnet.
    pub prefix_len: u8,
    /// eth0's MTU (the switch's).
    pub mtu: u32,
    /// Default route: .1 of its switch, a router's or the switch's uplink.
    pub gateway: Option<Ipv4Addr>,
    /// Its pods.
    pub pods: Vec<PodPlan>,
    /// Size of its IPAM range, when limited.
    #[serde(default)]
    pub max_pods: Option<u32>,
    /// Its interfaces after eth0 (eth1, eth2, ...), each on a switch of its
    /// own; the default route stays on eth0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ifaces: Vec<IfacePlan>,
}

/// A node's interface after eth0: a veth from its switch's bridge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfacePlan {
    /// Its name in the node (`eth1`, `eth2`, ...).
    pub ifname: String,
    /// The switch.
    pub switch: String,
    /// Its peer in the fabric namespace (`<node>.e<N>`, see [`iface_port`]).
    pub port: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of the switch subnet.
    pub prefix_len: u8,
    /// The switch's MTU.
    pub mtu: u32,
}

impl NodePlan {
    /// The address and MTU of one of its interfaces, by name.
    pub fn iface(&self, ifname: &str) -> Option<(Ipv4Addr, u32)> {
        if ifname == "eth0" {
            return Some((self.ip, self.mtu));
        }
        let x = self.extra_ifaces.iter().find(|x| x.ifname == ifname)?;
        Some((x.ip, x.mtu))
    }
}

/// The fabric-side port of eth`n` (n >= 1) of the `i`th node: `<node>.e<n>`
/// when that fits in 15 characters, else `_<i>.e<n>`. Node ports are the
/// node's name (no dot, no `_`), router ports `<base>.<digits>`, uplinks
/// `<switch>.gw` and etcd's `etcd.db`: none ends in `.e<digits>` nor
/// starts with `_`, and node names are unique, so neither form meets
/// another port.
pub fn iface_port(node: &str, i: usize, n: usize) -> String {
    let port = format!("{node}.e{n}");
    if port.len() <= 15 { port } else { format!("_{i}.e{n}") }
}

/// The gateway address of a switch subnet: its first host address, which a
/// router takes, or else the switch's uplink.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// A router: a namespace joining switches at L3, taking .1 on each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterPlan {
    /// Name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// One port per switch it joins.
    pub ports: Vec<RouterPort>,
    /// Its AS, when it speaks BGP.
    pub asn: Option<u32>,
    /// Its BIRD, when it has BGP peers.
    pub bird: Option<BirdPlan>,
}

/// A router's interface on one switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterPort {
    /// The switch.
    pub switch: String,
    /// The interface in the router's namespace (named after the switch).
    pub ifname: String,
    /// Its peer in the fabric namespace.
    pub fabric_port: String,
    /// Its address (.1 of the switch subnet).
    pub ip: Ipv4Addr,
    /// Prefix length of the switch subnet.
    pub prefix_len: u8,
    /// The switch's MTU.
    pub mtu: u32,
}

/// A pod: a namespace wired by the CNI chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodPlan {
    /// Name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// The container ID the runtime passes to the plugins.
    pub container_id: String,
    /// Interface the plugins create in it.
    pub ifname: String,
    /// Its Kubernetes identity (namespace, labels, named ports).
    #[serde(default, skip_serializing_if = "is_default_meta")]
    pub meta: crate::model::identity::PodMeta,
}

fn is_default_meta(m: &crate::model::identity::PodMeta) -> bool {
    *m == crate::model::identity::PodMeta::default()
}

/// Random streams, one per kind of choice, so that adding a choice of one
/// kind never shifts the others.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Subnet leases and IPAM blocks.
    Leases = 1,
    /// MAC addresses.
    Macs = 2,
    /// Container IDs.
    ContainerIds = 3,
}

/// A seeded random source for one kind of choice.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream as u64);
    r
}

/// A random locally administered unicast MAC, as an overlay agent makes for
/// its VTEP.
pub fn random_mac(r: &mut impl Rng) -> [u8; 6] {
    let mut mac = [0u8; 6];
    r.fill_bytes(&mut mac);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A node's further interfaces: eth1, eth2, ... on the switches it lists
/// after its first; `i` is the node's place in the topology.
fn extra_ifaces(topology: &Topology, n: &crate::model::topology::Node, i: usize) -> Vec<IfacePlan> {
    n.extra_ifaces
        .iter()
        .enumerate()
        .map(|(k, x)| {
            let s = topology.switch(&x.switch).expect("validated switch");
            IfacePlan {
                ifname: format!("eth{}", k + 1),
                switch: s.name.clone(),
                port: iface_port(&n.name, i, k + 1),
                ip: x.ip,
                prefix_len: s.subnet.prefix_len(),
                mtu: s.mtu,
            }
        })
        .collect()
}

impl<P> Plan<P> {
    /// Plans a lab named `lab` from `topology`; `profile` plans the CNI
    /// profile's part from the nodes, and may give routers BGP peers.
    pub fn new(topology: &Topology, lab: &str, profile: impl FnOnce(&[NodePlan], &mut [RouterPlan]) -> P) -> Self {
        let mut ids = rng(topology.seed, Stream::ContainerIds);
        let switches: Vec<SwitchPlan> = topology
            .switches
            .iter()
            .enumerate()
            .map(|(i, s)| SwitchPlan {
                name: s.name.clone(),
                subnet: s.subnet,
                mtu: s.mtu,
                uplink: topology.router_on(&s.name).is_none().then(|| uplink(topology, lab, i)),
            })
            .collect();
        let nodes = topology
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sw = topology.switch(&n.switch).expect("validated switch");
                let gateway = Some(gateway_of(sw.subnet));
                NodePlan {
                    name: n.name.clone(),
                    ns: paths::node_ns(lab, &n.name),
                    switch: sw.name.clone(),
                    port: n.name.clone(),
                    ip: n.ip,
                    prefix_len: sw.subnet.prefix_len(),
                    mtu: sw.mtu,
                    gateway,
                    max_pods: n.max_pods,
                    extra_ifaces: extra_ifaces(topology, n, i),
                    pods: n
                        .pods
                        .iter()
                        .map(|p| {
                            let mut id = [0u8; 32];
                            ids.fill_bytes(&mut id);
                            PodPlan {
                                name: p.clone(),
                                ns: paths::pod_ns(lab, &n.name, p),
                                container_id: id.iter().map(|b| format!("{b:02x}")).collect(),
                                ifname: "eth0".into(),
                                meta: n.meta(p),
                            }
                        })
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        let mut routers: Vec<RouterPlan> = topology
            .routers
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let short: String = r.name.chars().take(12).collect();
                let clash = topology
                    .routers
                    .iter()
                    .enumerate()
                    .any(|(oi, o)| oi != ri && o.name.chars().take(12).eq(short.chars()));
                let base = if clash { format!("r{ri}") } else { short };
                RouterPlan {
                    name: r.name.clone(),
                    ns: paths::infra_ns(lab, &format!("router-{}", r.name)),
                    ports: r
                        .switches
                        .iter()
                        .enumerate()
                        .map(|(k, sw)| {
                            let s = topology.switch(sw).expect("validated switch");
                            RouterPort {
                                switch: sw.clone(),
                                ifname: sw.clone(),
                                fabric_port: format!("{base}.{k}"),
                                ip: gateway_of(s.subnet),
                                prefix_len: s.subnet.prefix_len(),
                                mtu: s.mtu,
                            }
                        })
                        .collect(),
                    asn: r.asn,
                    bird: None,
                }
            })
            .collect();
        let profile = profile(&nodes, &mut routers);
        let etcd = topology.etcd.as_ref().map(|e| {
            let sw = topology.switch(&e.switch).expect("validated switch");
            EtcdPlan {
                ns: paths::infra_ns(lab, "etcd"),
                switch: e.switch.clone(),
                fabric_port: "etcd.db".to_string(),
                ip: e.ip,
                prefix_len: sw.subnet.prefix_len(),
                mtu: sw.mtu,
                gateway: gateway_of(sw.subnet),
            }
        });
        Plan {
            lab: lab.to_string(),
            topology: topology.clone(),
            fabric_ns: paths::infra_ns(lab, "fabric"),
            switches,
            nodes,
            routers,
            profile,
            etcd,
        }
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every pod with its node, in topology order.
    pub fn pods(&self) -> impl Iterator<Item = (&NodePlan, &PodPlan)> {
        self.nodes.iter().flat_map(|n| n.pods.iter().map(move |p| (n, p)))
    }

    /// How many pods the lab has.
    pub fn pod_count(&self) -> usize {
        self.nodes.iter().map(|n| n.pods.len()).sum()
    }

    /// A router by name.
    pub fn router(&self, name: &str) -> Option<&RouterPlan> {
        self.routers.iter().find(|r| r.name == name)
    }

    /// Every namespace of the lab, fabric, routers and uplinks first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.fabric_ns.clone()];
        v.extend(self.routers.iter().map(|r| r.ns.clone()));
        v.extend(self.switches.iter().filter_map(|s| Some(s.uplink.as_ref()?.ns.clone())));
        v.extend(self.etcd.iter().map(|e| e.ns.clone()));
        for n in &self.nodes {
            v.push(n.ns.clone());
            v.extend(n.pods.iter().map(|p| p.ns.clone()));
        }
        v
    }
}

/// The uplink of the `i`th switch. Its fabric port is `<switch>.gw` (the
/// first 12 characters, or `s<i>` when two switches share them): node
/// ports have no dot and router ports end in a digit, so it meets neither.
fn uplink(topology: &Topology, lab: &str, i: usize) -> UplinkPlan {
    let s = &topology.switches[i];
    let short: String = s.name.chars().take(12).collect();
    let clash = topology
        .switches
        .iter()
        .enumerate()
        .any(|(oi, o)| oi != i && o.name.chars().take(12).eq(short.chars()));
    let base = if clash { format!("s{i}") } else { short };
    UplinkPlan {
        ns: paths::infra_ns(lab, &format!("uplink-{}", s.name)),
        ifname: s.name.clone(),
        fabric_port: format!("{base}.gw"),
        ip: gateway_of(s.subnet),
        prefix_len: s.subnet.prefix_len(),
    }
}

/// Writes a file, creating its folder.
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

/// One BGP session a BIRD is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPlan {
    /// The protocol's name (`Mesh_172_20_0_11`, `Node_...`).
    pub name: String,
    /// The peer's address.
    pub neighbor: Ipv4Addr,
    /// The peer's AS.
    pub asn: u32,
}

/// A BIRD instance of a node or router: its configuration and sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BirdPlan {
    /// bird.conf.
    pub config: String,
    /// The BGP sessions in it.
    pub sessions: Vec<SessionPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::Source;
    use crate::model::paths::LabPaths;
    use crate::profile::plan_lab;

    fn topo(text: &str) -> Topology {
        crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap()
    }

    #[test]
    fn macs_are_locally_administered_unicast() {
        let mut r = rng(0, Stream::Macs);
        for _ in 0..64 {
            let m = random_mac(&mut r);
            assert_eq!(m[0] & 0x03, 0x02, "{}", mac_string(&m));
        }
    }

    #[test]
    fn plan_is_deterministic_and_seeded() {
        let text = "name = \"d\"\nseed = 3\n[[node]]\nname = \"n{i}\"\ncount = 3\npods = 2\n";
        let p = LabPaths::new(Path::new("/run/x"), "d");
        let a = serde_json::to_string(&plan_lab(&topo(text), "d", &p)).unwrap();
        let b = serde_json::to_string(&plan_lab(&topo(text), "d", &p)).unwrap();
        assert_eq!(a, b);
        let c = serde_json::to_string(&plan_lab(&topo(&text.replace("seed = 3", "seed = 4")), "d", &p)).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn nodes_get_namespaces_pods_and_gateways() {
        let text = "name = \"d\"\n[[switch]]\nname = \"s\"\nsubnet = \"10.0.0.0/24\"\n[[router]]\nname = \"r\"\nswitches = [\"s\"]\n[[node]]\nname = \"a\"\npods = [\"web\"]\n";
        let plan = plan_lab(&topo(text), "lab1", &LabPaths::new(Path::new("/run/x"), "lab1"));
        let n = &plan.nodes[0];
        assert_eq!(n.ns, "cnilab.lab1.a");
        assert_eq!(n.ip.to_string(), "10.0.0.10");
        assert_eq!(n.gateway.map(|g| g.to_string()).as_deref(), Some("10.0.0.1"));
        assert_eq!(n.pods[0].ns, "cnilab.lab1.a.web");
        assert_eq!(n.pods[0].container_id.len(), 64);
        assert_eq!(
            plan.namespaces(),
            [
                "cnilab.lab1._fabric",
                "cnilab.lab1._router-r",
                "cnilab.lab1.a",
                "cnilab.lab1.a.web"
            ]
        );
        assert_eq!(plan.routers[0].ports[0].fabric_port, "r.0");
    }

    #[test]
    fn further_interfaces_get_short_unique_ports() {
        assert_eq!(iface_port("node1", 0, 1), "node1.e1");
        assert_eq!(iface_port("abcdefghijkl", 3, 1), "abcdefghijkl.e1");
        assert_eq!(iface_port("abcdefghijklm", 3, 1), "_3.e1");
        assert_eq!(iface_port("abcdefghijkl", 7, 10), "_7.e10");
        let text = "name = \"d\"\n[[switch]]\nname = \"s\"\nsubnet = \"10.0.0.0/24\"\n[[switch]]\nname = \"t\"\nsubnet = \"10.0.1.0/24\"\n[[node]]\nname = \"a\"\nswitches = [\"s\", \"t\"]\n[[node]]\nname = \"long-node-name1\"\nswitches = [\"t\", \"s\"]\n";
        let plan = plan_lab(&topo(text), "lab1", &LabPaths::new(Path::new("/run/x"), "lab1"));
        let x: Vec<(String, String, String, String)> = plan
            .nodes
            .iter()
            .flat_map(|n| n.extra_ifaces.iter())
            .map(|x| (x.ifname.clone(), x.switch.clone(), x.port.clone(), x.ip.to_string()))
            .collect();
        assert_eq!(
            x,
            [
                ("eth1".into(), "t".into(), "a.e1".into(), "10.0.1.10".into()),
                ("eth1".into(), "s".into(), "_1.e1".into(), "10.0.0.11".into()),
            ]
        );
        let n = &plan.nodes[1];
        assert_eq!((n.switch.as_str(), n.ip.to_string()), ("t", "10.0.1.11".into()));
        assert_eq!(n.gateway.map(|g| g.to_string()).as_deref(), Some("10.0.1.1"));
        assert_eq!(
            n.iface("eth1").map(|(ip, _)| ip.to_string()).as_deref(),
            Some("10.0.0.11")
        );
    }

    #[test]
    fn switches_without_a_router_get_an_uplink_holding_the_gateway() {
        let text = "name = \"d\"\n[[switch]]\nname = \"s\"\nsubnet = \"10.0.0.0/24\"\n[[switch]]\nname = \"t\"\nsubnet = \"10.0.1.0/24\"\n[[router]]\nname = \"r\"\nswitches = [\"t\"]\n[[node]]\nname = \"a\"\nswitch = \"s\"\n[[node]]\nname = \"b\"\nswitch = \"t\"\n";
        let plan = plan_lab(&topo(text), "lab1", &LabPaths::new(Path::new("/run/x"), "lab1"));
        let u = plan.switches[0].uplink.as_ref().expect("s has no router");
        assert_eq!((u.ip.to_string(), u.prefix_len), ("10.0.0.1".into(), 24));
        assert_eq!(
            (u.ns.as_str(), u.fabric_port.as_str()),
            ("cnilab.lab1._uplink-s", "s.gw")
        );
        assert!(plan.switches[1].uplink.is_none(), "the router holds .1 of t");
        let gws: Vec<String> = plan.nodes.iter().map(|n| n.gateway.unwrap().to_string()).collect();
        assert_eq!(gws, ["10.0.0.1", "10.0.1.1"]);
        assert!(plan.namespaces().contains(&"cnilab.lab1._uplink-s".to_string()));
    }
}

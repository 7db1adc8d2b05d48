//! The aws-vpc profile: a stand-in for amazon-vpc-cni-k8s v1.23.0 in
//! secondary-IP mode (docs/aws-vpc-cni-facts.md). The lab's switch is the
//! VPC subnet and the `[[router]]` on it the VPC router (.1). Each node's
//! eth0 is its primary ENI; its ipamd (`aws-k8s-agent`, `ipamd.rs`) keeps
//! the warm pool, attaching further ENIs (eth1, eth2, ...: veths into the
//! subnet's bridge) and telling the VPC which ENI holds which address
//! (`vpc.rs`: the bridge answers ARP from its neighbour table, and an
//! nftables bridge table drops what an ENI sends from an address not its
//! own, EC2's source/dest check). The `aws-cni` plugin (`plugin.rs`) wires
//! pods as the real one: a /32 behind `eni<sha1>`, 169.254.1.1, rules 512
//! and 1536.

pub mod ipamd;
pub mod net;
pub mod options;
pub mod plugin;
pub mod vpc;

use std::net::Ipv4Addr;

use anyhow::Result;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::paths::LabPaths;
use crate::model::plan::{NodePlan, RouterPlan, Stream, gateway_of, iface_port, mac_string, random_mac, rng};
use crate::model::topology::Topology;
use crate::profile::{AgentSpec, Built, Plan, Profile};
use options::{AwsVpcOptions, NAME};

/// The DaemonSet's conflist, as aws-vpc-cni v1.23.0 writes it with the IPv4
/// defaults (misc/10-aws.conflist filled in by cmd/aws-vpc-cni/main.go).
pub const CONFLIST: &str = include_str!("../../../../plugins/aws-vpc/10-aws.conflist");

/// Its file name in a node's CNI configuration folder.
pub const CONFLIST_NAME: &str = "10-aws.conflist";

/// The gateway every pod routes through (helper.go: 169.254.1.<index+1>).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The program names: the CNI plugin, the chained egress plugin and ipamd.
pub const PLUGIN: &str = "aws-cni";
/// The egress plugin of the conflist.
pub const EGRESS_PLUGIN: &str = "egress-cni";
/// ipamd's binary in the aws-node image.
pub const AGENT: &str = "aws-k8s-agent";

/// An ENI as the plan foresees it: its device number, its name in the
/// node, its port on the subnet's bridge, its MAC and its addresses (the
/// primary and the secondary ones EC2 may assign it, in order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EniPlan {
    /// Device number (0 for the primary ENI).
    pub device: u32,
    /// `eth<device>`.
    pub ifname: String,
    /// Its port on the subnet's bridge.
    pub port: String,
    /// Its MAC (the primary ENI keeps the one eth0 has).
    pub mac: Option<String>,
    /// Its primary address.
    pub primary: Ipv4Addr,
    /// The secondary addresses it may be given, in order.
    pub secondaries: Vec<Ipv4Addr>,
}

impl EniPlan {
    /// Its route table: main for device 0, else device + 1
    /// (CalculateRouteTableId on network card 0).
    pub fn table(&self) -> u32 {
        if self.device == 0 { net::MAIN } else { self.device + 1 }
    }
}

/// One node's part: what its ipamd reads (`aws-node.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwsNode {
    /// The node.
    pub node: String,
    /// Its namespace.
    pub ns: String,
    /// The fabric namespace (the VPC).
    pub fabric_ns: String,
    /// The subnet's bridge.
    pub bridge: String,
    /// The VPC subnet.
    pub subnet: Ipv4Net,
    /// The VPC CIDR of the SNAT and CONNMARK rules (the subnet here).
    pub vpc_cidr: Ipv4Net,
    /// The VPC router (subnet base + 1).
    pub gateway: Ipv4Addr,
    /// The ENIs' MTU (the switch's) and the pods'.
    pub mtu: u32,
    /// Instance type.
    pub instance_type: String,
    /// ENIs it may attach.
    pub max_enis: u32,
    /// IPv4 addresses per ENI.
    pub ips_per_eni: u32,
    /// ENIs x (IPs per ENI - 1) + 2.
    pub max_pods: u32,
    /// WARM_ENI_TARGET.
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET (0: unset).
    pub warm_ip_target: u32,
    /// MINIMUM_IP_TARGET (0: unset).
    pub minimum_ip_target: u32,
    /// Every ENI it may attach, device 0 first.
    pub enis: Vec<EniPlan>,
    /// ipamd's checkpoint (ipam.json).
    pub state: std::path::PathBuf,
    /// ipamd's socket.
    pub socket: std::path::PathBuf,
    /// The node's conflist.
    pub conflist: Value,
}

/// aws-vpc's decisions for a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwsVpcPlan {
    /// `[network.aws-vpc]`.
    pub options: AwsVpcOptions,
    /// Per node, in node order.
    pub nodes: Vec<AwsNode>,
}

impl AwsVpcPlan {
    /// A node's part.
    pub fn node(&self, name: &str) -> Option<&AwsNode> {
        self.nodes.iter().find(|n| n.node == name)
    }
}

/// The multi-call programs of aws-vpc.
pub const PROGRAMS: &[crate::profile::Program] = &[
    (PLUGIN, plugin::main),
    (EGRESS_PLUGIN, plugin::egress_main),
    (AGENT, ipamd::main),
];

/// aws-vpc in the registry of profiles.
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
    load: crate::profile::load_as::<AwsVpcPlan>,
    host_link_sysctls: |_| Vec::new(),
};

/// Plans aws-vpc: each node's ENIs and their addresses, taken in order from
/// the free addresses of its subnet (EC2 keeps the first four and the
/// last), so the same file gives the same lab.
pub fn plan(
    topology: &Topology,
    opts: &AwsVpcOptions,
    nodes: &[NodePlan],
    routers: &mut [RouterPlan],
    paths: &LabPaths,
) -> AwsVpcPlan {
    let mut macs = rng(topology.seed, Stream::Macs);
    let stock: Value = serde_json::from_str(CONFLIST).expect("the stock conflist is valid JSON");
    let lab = nodes
        .first()
        .and_then(|n| crate::model::paths::lab_of_ns(&n.ns))
        .unwrap_or("lab")
        .to_string();
    let fabric_ns = crate::model::paths::infra_ns(&lab, "fabric");
    let mut taken: std::collections::BTreeSet<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
    for r in routers.iter() {
        taken.extend(r.ports.iter().map(|p| p.ip));
    }
    if let Some(e) = &topology.etcd {
        taken.insert(e.ip);
    }
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let t = topology.nodes.iter().find(|x| x.name == n.name).expect("planned node");
        let (instance_type, max_enis, ips_per_eni) = options::node_limits(t).expect("validated instance type");
        let sw = topology.switch(&n.switch).expect("validated switch");
        let subnet = sw.subnet;
        let base = u32::from(subnet.network());
        let last = u32::from(subnet.broadcast());
        let mut next = base + 4;
        let mut free = || {
            while next < last && taken.contains(&Ipv4Addr::from(next)) {
                next += 1;
            }
            assert!(next < last, "validation leaves room for every ENI");
            let ip = Ipv4Addr::from(next);
            taken.insert(ip);
            ip
        };
        let mut enis = Vec::new();
        for d in 0..max_enis {
            let primary = if d == 0 { n.ip } else { free() };
            let secondaries = (1..ips_per_eni).map(|_| free()).collect();
            let mac = random_mac(&mut macs);
            enis.push(EniPlan {
                device: d,
                ifname: format!("eth{d}"),
                port: if d == 0 {
                    n.port.clone()
                } else {
                    iface_port(&n.name, i, d as usize)
                },
                mac: (d > 0).then(|| mac_string(&mac)),
                primary,
                secondaries,
            });
        }
        let mut conflist = stock.clone();
        let mtu = n.mtu.to_string();
        let dir = paths.node_dir(&n.name);
        let agent = paths.agent_dir(&n.name);
        let socket = agent.join("ipamd.sock");
        {
            let p = &mut conflist["plugins"][0];
            p["mtu"] = json!(mtu);
            p["pluginLogFile"] = json!(dir.join("log/plugin.log"));
            // Nodes share one filesystem: each plugin is told its ipamd.
            p["ipamdSocket"] = json!(socket);
        }
        {
            let p = &mut conflist["plugins"][1];
            p["mtu"] = json!(mtu);
            p["ipam"]["dataDir"] = json!(paths.cni_state_dir(&n.name).join("v4pd/egress-v6-ipam"));
            p["pluginLogFile"] = json!(dir.join("log/egress-v6-plugin.log"));
        }
        out.push(AwsNode {
            node: n.name.clone(),
            ns: n.ns.clone(),
            fabric_ns: fabric_ns.clone(),
            bridge: n.switch.clone(),
            subnet,
            vpc_cidr: subnet,
            gateway: gateway_of(subnet),
            mtu: n.mtu,
            instance_type,
            max_enis,
            ips_per_eni,
            max_pods: options::max_pods(max_enis, ips_per_eni),
            warm_eni_target: opts.warm_eni_target,
            warm_ip_target: opts.warm_ip_target,
            minimum_ip_target: opts.minimum_ip_target,
            enis,
            state: agent.join("ipam.json"),
            socket,
            conflist,
        });
    }
    AwsVpcPlan {
        options: opts.clone(),
        nodes: out,
    }
}

impl Profile for AwsVpcPlan {
    fn switch_checks_source(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> String {
        format!(
            "aws-vpc (amazon-vpc-cni v1.23.0 stand-in: secondary IPs on ENIs, WARM_ENI_TARGET={})",
            self.options.warm_eni_target
        )
    }

    fn settings(&self, _topology: &Topology) -> Vec<(String, String)> {
        let o = &self.options;
        [
            ("warm_eni_target", o.warm_eni_target),
            ("warm_ip_target", o.warm_ip_target),
            ("minimum_ip_target", o.minimum_ip_target),
        ]
        .into_iter()
        .map(|(k, v)| (format!("network.{NAME}.{k}"), v.to_string()))
        .collect()
    }

    fn node_agents(&self, n: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec> {
        let Some(a) = self.node(&n.name) else {
            return Vec::new();
        };
        let config = paths.agent_dir(&n.name).join("aws-node.json");
        vec![AgentSpec {
            owner: n.name.clone(),
            ns: n.ns.clone(),
            name: AGENT,
            program: paths.bin_dir().join(AGENT),
            args: vec!["--config".into(), config.display().to_string()],
            log: paths.agent_log(&n.name),
            ready: a.socket.clone(),
            config: Some((config, serde_json::to_string_pretty(a).expect("serializable"))),
        }]
    }

    fn agent_name(&self) -> &'static str {
        AGENT
    }

    fn conflist(&self, node: &str) -> Option<&Value> {
        self.node(node).map(|n| &n.conflist)
    }

    fn pod_mtu(&self, node: &str) -> Option<u32> {
        self.node(node).map(|n| n.mtu)
    }

    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net> {
        self.node(node).map(|n| n.subnet)
    }

    fn pod_gateway(&self) -> Option<Ipv4Addr> {
        Some(POD_GATEWAY)
    }

    fn overlay(&self, _node: &str) -> Option<(String, u32)> {
        None
    }

    fn vxlan_port(&self) -> Option<u16> {
        None
    }

    fn tunnel_label(&self) -> Option<String> {
        None
    }

    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>) {
        let Some(a) = self.node(node) else {
            return (Vec::new(), None);
        };
        let lines = vec![format!(
            "{}: {} ENIs x {} IPv4, max pods {}",
            a.instance_type, a.max_enis, a.ips_per_eni, a.max_pods
        )];
        (lines, Some((format!("from {} (ENI secondary IPs)", a.subnet), a.mtu)))
    }

    fn address_owners(&self, plan: &Plan) -> Vec<(Ipv4Addr, String, String)> {
        let mut v = Vec::new();
        for a in &self.nodes {
            if plan.node(&a.node).is_some() {
                for e in a.enis.iter().skip(1) {
                    v.push((
                        e.primary,
                        format!("{} (ENI {}) of {}", e.ifname, e.device, a.node),
                        a.ns.clone(),
                    ));
                }
            }
        }
        v
    }

    fn kernel_features(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn programs_needed(&self) -> Vec<String> {
        vec!["iptables".to_string(), "nft".to_string(), "cni:portmap".to_string()]
    }

    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(vpc::start(b, self))
    }

    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            b.progress.finish();
            Ok(())
        })
    }

    fn node_status(&self, node: &str, _paths: &LabPaths) -> Vec<(String, String)> {
        let Some(a) = self.node(node) else {
            return Vec::new();
        };
        let state = ipamd::Checkpoint::read(&a.state).ok();
        let (enis, used, total) = match &state {
            Some(s) => (
                s.enis.iter().map(|e| e.ifname.clone()).collect::<Vec<_>>(),
                s.enis.iter().flat_map(|e| &e.ips).filter(|i| i.pod.is_some()).count(),
                s.enis.iter().map(|e| e.ips.len()).sum::<usize>(),
            ),
            None => (Vec::new(), 0, 0),
        };
        vec![
            ("instance_type".into(), a.instance_type.clone()),
            (
                "enis".into(),
                format!("{} of {} ({})", enis.len(), a.max_enis, enis.join(", ")),
            ),
            ("addresses".into(), format!("{used} used of {total}")),
            (
                "max_pods".into(),
                format!("{} = {} x ({} - 1) + 2", a.max_pods, a.max_enis, a.ips_per_eni),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::error::Source;
    use std::path::Path;

    fn lab(text: &str) -> (crate::profile::Plan, LabPaths) {
        let t = crate::profile::parse_topology(&Source::new("t.toml", text)).unwrap();
        let paths = LabPaths::new(Path::new("/run/cnilab"), "a");
        (crate::profile::plan_lab(&t, "a", &paths), paths)
    }

    const TWO: &str = "name = \"a\"\n[network]\ncni = \"aws-vpc\"\n[[switch]]\nname = \"vpc\"\nsubnet = \"10.0.1.0/24\"\nmtu = 9001\n[[router]]\nname = \"rtr\"\nswitches = [\"vpc\"]\n[[node]]\nname = \"large\"\npods = 2\n[[node]]\nname = \"nano\"\ninstance_type = \"t3.nano\"\npods = 1\n";

    #[test]
    fn enis_take_the_free_addresses_in_order() {
        let (plan, _) = lab(TWO);
        let a: &AwsVpcPlan = plan.profile.downcast().unwrap();
        let l = &a.nodes[0];
        assert_eq!((l.max_enis, l.ips_per_eni, l.max_pods), (3, 10, 29));
        assert_eq!(l.enis[0].primary, Ipv4Addr::new(10, 0, 1, 10));
        assert_eq!(l.enis[0].secondaries[0], Ipv4Addr::new(10, 0, 1, 4));
        // .10 and .11 are the nodes' eth0.
        assert_eq!(l.enis[0].secondaries[6], Ipv4Addr::new(10, 0, 1, 12));
        assert_eq!(l.enis[1].primary, Ipv4Addr::new(10, 0, 1, 15));
        assert_eq!((l.enis[1].table(), l.enis[1].port.as_str()), (2, "large.e1"));
        let n = &a.nodes[1];
        assert_eq!((n.max_enis, n.ips_per_eni, n.max_pods), (2, 2, 4));
        assert_eq!(n.conflist["plugins"][0]["mtu"], "9001");
        assert_eq!(n.conflist["plugins"][1]["enabled"], "false");
        assert_eq!(n.conflist["plugins"][2]["type"], "portmap");
    }

    #[test]
    fn instance_types_are_checked_with_a_fix() {
        let bad = TWO.replace("t3.nano", "m5.larg");
        let e = crate::profile::parse_topology(&Source::new("t.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown instance type \"m5.larg\""), "{e}");
        assert!(e.contains("did you mean m5.large? known: t2.micro, t3.nano"), "{e}");
        assert!(e.contains("t.toml:16:17"), "{e}");
        let many = TWO.replace("pods = 1", "pods = 3");
        let e = crate::profile::parse_topology(&Source::new("t.toml", &many))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 3 pods, but a t3.nano holds 2 pod addresses"), "{e}");
        let flannel = TWO.replace("cni = \"aws-vpc\"", "cni = \"flannel\"");
        let e = crate::profile::parse_topology(&Source::new("t.toml", &flannel))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`instance_type` on a node is read only with cni = \"aws-vpc\""),
            "{e}"
        );
        let norouter = TWO.replace("[[router]]\nname = \"rtr\"\nswitches = [\"vpc\"]\n", "");
        let e = crate::profile::parse_topology(&Source::new("t.toml", &norouter))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no [[router]]"), "{e}");
    }

    #[test]
    fn max_pods_follow_eni_max_pods_txt() {
        for (t, e, i) in options::INSTANCE_TYPES {
            let want = match *t {
                "t2.micro" | "t3.nano" | "t3.micro" => 4,
                "t3.small" => 11,
                "t3.medium" => 17,
                "t3.large" => 35,
                "m4.large" => 20,
                "m5.4xlarge" => 234,
                "t3.xlarge" | "m5.xlarge" | "m5.2xlarge" | "c5.xlarge" => 58,
                _ => 29,
            };
            assert_eq!(options::max_pods(*e, *i), want, "{t}");
        }
        assert_eq!(options::INSTANCE_TYPES.len(), 18);
    }
}

//! aws-vpc's options: `[network.aws-vpc]` (ipamd's warm-pool environment)
//! and the `[[node]]` keys `instance_type`, `max_enis` and `ips_per_eni`,
//! with every rejection at its file:line:column, read by the topology's
//! parser through [`Syntax`].

use serde::{Deserialize, Serialize};

use crate::model::spanned::{Errors, Table};
use crate::model::topology::{Options, Parts, ProfileSyntax, Scope, q};

/// The profile's name, as in `cni = "aws-vpc"` and `[network.aws-vpc]`.
pub const NAME: &str = "aws-vpc";

/// The instance type of a node that names none.
pub const DEFAULT_INSTANCE_TYPE: &str = "m5.large";

/// Instance types and their limits on network card 0: (type, ENIs, IPv4
/// addresses per ENI), from amazon-vpc-cni-k8s v1.23.0
/// pkg/vpc/vpc_ip_resource_limit.go (docs/aws-vpc-cni-facts.md §7).
pub const INSTANCE_TYPES: &[(&str, u32, u32)] = &[
    ("t2.micro", 2, 2),
    ("t3.nano", 2, 2),
    ("t3.micro", 2, 2),
    ("t3.small", 3, 4),
    ("t3.medium", 3, 6),
    ("t3.large", 3, 12),
    ("t3.xlarge", 4, 15),
    ("m4.large", 2, 10),
    ("m5.large", 3, 10),
    ("m5.xlarge", 4, 15),
    ("m5.2xlarge", 4, 15),
    ("m5.4xlarge", 8, 30),
    ("c5.large", 3, 10),
    ("c5.xlarge", 4, 15),
    ("r5.large", 3, 10),
    ("m6i.large", 3, 10),
    ("c6i.large", 3, 10),
    ("m7i.large", 3, 10),
];

/// The limits of an instance type: (ENIs, IPv4 addresses per ENI).
pub fn limits_of(instance_type: &str) -> Option<(u32, u32)> {
    INSTANCE_TYPES
        .iter()
        .find(|(t, _, _)| *t == instance_type)
        .map(|(_, e, i)| (*e, *i))
}

/// eni-max-pods.txt's formula: ENIs x (IPv4 per ENI - 1) + 2, the 2 being
/// the host-network pods aws-node and kube-proxy.
pub fn max_pods(enis: u32, ips_per_eni: u32) -> u32 {
    enis * (ips_per_eni - 1) + 2
}

/// The addresses ipamd can give pods: ENIs x (IPv4 per ENI - 1), the
/// primary address of each ENI being the ENI's own.
pub fn pod_addresses(enis: u32, ips_per_eni: u32) -> u32 {
    enis * (ips_per_eni - 1)
}

/// A node's limits as the topology gives them: (instance type, ENIs, IPs
/// per ENI); `None` for an unknown type.
pub fn node_limits(n: &crate::model::topology::Node) -> Option<(String, u32, u32)> {
    let ty = n
        .instance_type
        .clone()
        .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
    let (e, i) = limits_of(&ty)?;
    Some((ty, n.max_enis.unwrap_or(e), n.ips_per_eni.unwrap_or(i)))
}

/// `[network.aws-vpc]`: ipamd's environment (0 = unset, as ipamd reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwsVpcOptions {
    /// WARM_ENI_TARGET (default 1).
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET (default 0: unset).
    pub warm_ip_target: u32,
    /// MINIMUM_IP_TARGET (default 0: unset).
    pub minimum_ip_target: u32,
}

/// How the topology's parser reads aws-vpc's part of `[network]`.
pub struct Syntax;

impl ProfileSyntax for Syntax {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Pods take addresses of the VPC subnet (the switch); the pod CIDR is
    /// not used, and its default is one no lab's switch should hold.
    fn default_pod_cidr(&self) -> &'static str {
        "100.64.0.0/16"
    }

    fn reads_instance_keys(&self) -> bool {
        true
    }

    fn check_nodes(&self, net: &Table, parts: &Parts, errs: &Errors) {
        check_nodes(net, parts, errs);
    }

    fn parse(&self, t: Option<&Table>, _scope: &Scope, errs: &Errors) -> Option<Options> {
        let before = errs.count();
        let mut o = AwsVpcOptions {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
        };
        if let Some(t) = t {
            errs.ok(t.allow(&["warm_eni_target", "warm_ip_target", "minimum_ip_target"]));
            if let Some(Some(v)) = errs.ok(t.int("warm_eni_target", 0, 16, "warm_eni_target = 1")) {
                o.warm_eni_target = v.v as u32;
            }
            if let Some(Some(v)) = errs.ok(t.int("warm_ip_target", 0, 1024, "warm_ip_target = 5")) {
                o.warm_ip_target = v.v as u32;
            }
            if let Some(Some(v)) = errs.ok(t.int("minimum_ip_target", 0, 1024, "minimum_ip_target = 10")) {
                o.minimum_ip_target = v.v as u32;
            }
        }
        (errs.count() == before).then(|| crate::profile::to_options(&o))
    }
}

/// The addresses of a subnet EC2 keeps for itself: the network, .1 (the
/// VPC router), .2 (DNS), .3 (reserved) and the broadcast address.
pub const RESERVED_PER_SUBNET: u32 = 5;

/// Each node's instance type, its pods against its addresses, its switch's
/// router (the VPC router, gateway of the ENIs' tables) and room in the
/// subnet for every ENI's addresses.
fn check_nodes(net: &Table, parts: &Parts, errs: &Errors) {
    let known: Vec<&str> = INSTANCE_TYPES.iter().map(|t| t.0).collect();
    let mut need: std::collections::BTreeMap<&str, (u32, std::ops::Range<usize>)> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for n in parts.nodes {
        let node = &n.node;
        let first = seen.insert(n.name_span.clone());
        let ty = node.instance_type.as_deref().unwrap_or(DEFAULT_INSTANCE_TYPE);
        let limits = limits_of(ty).map(|(e, i)| (node.max_enis.unwrap_or(e), node.ips_per_eni.unwrap_or(i)));
        if !first {
            // The rest of a `count` group: its addresses, not its errors again.
            if let (Some((enis, ips)), Some(e)) = (limits, need.get_mut(node.switch.as_str())) {
                e.0 += enis * ips;
            }
            continue;
        }
        if let Some(span) = &n.max_pods_span {
            let now = match limits {
                Some((enis, ips)) => format!(
                    "node \"{}\" has max pods {} = {enis} x ({ips} - 1) + 2; ",
                    node.name,
                    max_pods(enis, ips)
                ),
                None => String::new(),
            };
            errs.push(net.err(
                span.clone(),
                format!("max_pods does not apply with cni = \"{NAME}\": a node's pods are limited by its ENIs"),
                format!("remove max_pods: {now}change instance_type, max_enis or ips_per_eni"),
            ));
        }
        if !node.extra_ifaces.is_empty() {
            errs.push(net.err(
                n.name_span.clone(),
                format!(
                    "node \"{}\" lists more than one switch; with cni = \"{NAME}\" ipamd attaches its further ENIs",
                    node.name
                ),
                "give the node one switch (its VPC subnet)",
            ));
        }
        if parts.ok && !node.switch.is_empty() {
            let routed = parts.routers.iter().any(|r| r.router.switches.contains(&node.switch));
            if !routed {
                errs.push(net.err(
                    n.name_span.clone(),
                    format!(
                        "switch \"{}\" of node \"{}\" has no [[router]]: the VPC router holds the subnet's gateway .1, where secondary ENIs route",
                        node.switch, node.name
                    ),
                    format!("add [[router]] with switches = [\"{}\"]", node.switch),
                ));
            }
        }
        let Some((enis, ips)) = limits else {
            let span = n.cloud_spans[0].clone().unwrap_or(n.name_span.clone());
            let fix = match crate::model::spanned::closest(ty, &known) {
                Some(near) => format!("did you mean {near}? known: {}", known.join(", ")),
                None => format!("known: {}", known.join(", ")),
            };
            errs.push(net.err(span, format!("unknown instance type \"{}\"", q(ty)), fix));
            continue;
        };
        let room = pod_addresses(enis, ips);
        if node.pods.len() as u32 > room {
            errs.push(net.err(
                n.pods_span.clone(),
                format!(
                    "node \"{}\" has {} pods, but a {ty} holds {room} pod addresses ({enis} ENIs x ({ips} - 1)): max pods {} counts aws-node and kube-proxy, so the kubelet leaves the others Pending (Too many pods)",
                    node.name,
                    node.pods.len(),
                    max_pods(enis, ips)
                ),
                format!("give it at most {room} pods, or a larger instance_type"),
            ));
        }
        if parts.ok && !node.switch.is_empty() {
            need.entry(node.switch.as_str()).or_insert((0, n.name_span.clone())).0 += enis * ips;
        }
    }
    for (sw, (count, span)) in need {
        let Some((_, subnet)) = parts.switches.iter().find(|(n, _)| n == sw) else {
            continue;
        };
        let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
        let free = size.saturating_sub(u64::from(RESERVED_PER_SUBNET));
        if u64::from(count) > free {
            errs.push(net.err(
                span,
                format!("switch \"{sw}\" ({subnet}) has {free} addresses for ENIs, but its nodes' ENIs hold {count}"),
                "give the switch a larger subnet, e.g. a /24, or the nodes fewer ENIs",
            ));
        }
    }
}

//! What the Kubernetes semantics of NetworkPolicy say of one connection.
//!
//! A connection goes from a source to a destination, each a pod of the
//! [`World`] or an address that is no pod ([`Peer::Ip`]: a host, the
//! outside), on one port and protocol. It is allowed when both of its sides
//! are:
//!
//! - **egress**, judged by the policies that select the source pod and have
//!   the `Egress` policy type (a source that is no pod is never isolated);
//! - **ingress**, judged by the policies that select the destination pod and
//!   have the `Ingress` policy type (a destination that is no pod is never
//!   isolated).
//!
//! On each side: a pod no such policy selects is not isolated and every
//! connection passes ([`Side::NotIsolated`]); a pod one or more select is
//! isolated, and a connection passes only if a rule of at least one of them
//! matches it ([`Side::Allowed`], naming those policies). Policies only add
//! allowances; none denies what another allows ([`Side::Denied`] names the
//! policies that isolate the pod).
//!
//! The pieces, as Kubernetes defines them:
//!
//! - **policyTypes**: as written when the list is non-empty; when it is unset
//!   or empty, as the API server defaults it: `Ingress` always, `Egress` only
//!   if `spec.egress` has at least one rule. A policy type that is absent
//!   makes the rules of that direction irrelevant.
//! - **podSelector** of the spec selects pods of the policy's namespace
//!   (`default` when the metadata names none); empty (`{}`) or unset, all of
//!   them.
//! - **rules**: `ingress: []` (or unset) allows nothing; a rule matches when
//!   one of its peers (`from`/`to`) and one of its ports match. A rule with
//!   no peers (unset or `[]`) matches every peer, pods and other addresses
//!   alike; a rule with no ports matches every port and protocol.
//! - **peers**: `podSelector` alone, the pods it selects in the policy's
//!   namespace; `namespaceSelector` alone, every pod of the namespaces it
//!   selects (`{}`: every namespace); both, the pods the pod selector selects
//!   in those namespaces (AND). Namespaces are judged by their labels plus
//!   `kubernetes.io/metadata.name`. Selector peers never match an address that
//!   is no pod. `ipBlock`, an address inside `cidr` and inside none of
//!   `except`; as Cyclonus models it, it applies to pod addresses too (the
//!   API leaves that to the implementation). IPv6 blocks match nothing here.
//!   A peer with none of the three (which the API rejects) matches nothing.
//! - **ports**: `protocol` defaults to TCP and must equal the connection's;
//!   no `port`, every port of that protocol; a number, that port or, with
//!   `endPort`, the range `port..=endPort`; a name, a container port of the
//!   *destination* pod with that name, that protocol and the connection's
//!   number (for ingress the selected pod, for egress the peer). A name
//!   never matches a destination that is no pod.
//! - **label selectors**: every `matchLabels` pair and every
//!   `matchExpressions` requirement must hold. `In` needs the key with one of
//!   the values; `NotIn` holds when the key is absent or its value is none of
//!   them; `Exists` needs the key; `DoesNotExist` its absence. An unknown
//!   operator (which the API rejects) holds for nothing. An empty selector
//!   selects everything.
//!
//! Traffic from a pod to itself is judged like any other (the e2e tests
//! ignore loopback; implementations differ).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use super::{Labels, NetworkPolicy, PodInfo, Proto, World, policy_name, policy_namespace};

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    /// A pod of the world.
    Pod(&'a PodInfo),
    /// An address that is no pod: a host, the outside.
    Ip(Ipv4Addr),
}

impl<'a> Peer<'a> {
    /// The pod holding `ip` if the world has one, else the bare address.
    pub fn of_ip(world: &'a World, ip: Ipv4Addr) -> Peer<'a> {
        world.pod_by_ip(ip).map_or(Peer::Ip(ip), Peer::Pod)
    }

    /// Its address.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            Peer::Pod(p) => p.ip,
            Peer::Ip(ip) => *ip,
        }
    }

    /// Its pod, if it is one.
    pub fn pod(&self) -> Option<&'a PodInfo> {
        match self {
            Peer::Pod(p) => Some(p),
            Peer::Ip(_) => None,
        }
    }
}

/// What the policies say of one side (egress or ingress) of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Side {
    /// No policy of this direction selects the pod (or the end is no pod).
    NotIsolated,
    /// Isolated, and these policies (`namespace/name`, sorted) allow it.
    Allowed {
        /// The policies with a rule matching the connection.
        by: Vec<String>,
    },
    /// Isolated by these policies (`namespace/name`, sorted), none allowing it.
    Denied {
        /// Every policy of this direction selecting the pod.
        isolated_by: Vec<String>,
    },
}

impl Side {
    /// Whether this side lets the connection through.
    pub fn allowed(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

/// What the policies say of a connection, side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The source's side.
    pub egress: Side,
    /// The destination's side.
    pub ingress: Side,
}

impl Verdict {
    /// Whether the connection goes through: both sides let it.
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

/// A direction of traffic relative to the pod a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// What the policies say of a connection from `src` to `dst` on `port`/`proto`.
pub fn evaluate(world: &World, policies: &[NetworkPolicy], src: Peer, dst: Peer, port: u16, proto: Proto) -> Verdict {
    let conn = Conn { src, dst, port, proto };
    let egress = match src {
        Peer::Pod(pod) => judge(world, policies, pod, Direction::Egress, &conn),
        Peer::Ip(_) => Side::NotIsolated,
    };
    let ingress = match dst {
        Peer::Pod(pod) => judge(world, policies, pod, Direction::Ingress, &conn),
        Peer::Ip(_) => Side::NotIsolated,
    };
    Verdict { egress, ingress }
}

/// A connection being judged.
struct Conn<'a> {
    src: Peer<'a>,
    dst: Peer<'a>,
    port: u16,
    proto: Proto,
}

/// One side: the policies of `dir` selecting `pod`, and which allow `conn`.
fn judge(world: &World, policies: &[NetworkPolicy], pod: &PodInfo, dir: Direction, conn: &Conn) -> Side {
    let mut isolating = Vec::new();
    let mut allowing = Vec::new();
    for p in policies {
        let (ingress, egress) = policy_types(p);
        let applies = match dir {
            Direction::Ingress => ingress,
            Direction::Egress => egress,
        };
        if !applies || !selects_pod(p, pod) {
            continue;
        }
        let id = format!("{}/{}", policy_namespace(p), policy_name(p));
        if policy_allows(world, p, dir, conn) {
            allowing.push(id.clone());
        }
        isolating.push(id);
    }
    allowing.sort();
    allowing.dedup();
    isolating.sort();
    isolating.dedup();
    if isolating.is_empty() {
        Side::NotIsolated
    } else if allowing.is_empty() {
        Side::Denied { isolated_by: isolating }
    } else {
        Side::Allowed { by: allowing }
    }
}

/// Whether a rule of `p` in direction `dir` matches the connection.
fn policy_allows(world: &World, p: &NetworkPolicy, dir: Direction, conn: &Conn) -> bool {
    let Some(spec) = p.spec.as_ref() else {
        return false;
    };
    let ns = policy_namespace(p);
    let matches = |peers: Option<&Vec<NetworkPolicyPeer>>, ports: Option<&Vec<NetworkPolicyPort>>, peer: Peer| {
        peers_match(world, ns, peers, peer) && ports_match(ports, conn)
    };
    match dir {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .any(|r| matches(r.from.as_ref(), r.ports.as_ref(), conn.src)),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .any(|r| matches(r.to.as_ref(), r.ports.as_ref(), conn.dst)),
    }
}

/// Whether a rule's peers (`from`/`to`) match `peer`; none (unset or empty)
/// match everything.
fn peers_match(world: &World, policy_ns: &str, peers: Option<&Vec<NetworkPolicyPeer>>, peer: Peer) -> bool {
    match peers {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|np| peer_matches(world, policy_ns, np, peer)),
    }
}

/// Whether one `NetworkPolicyPeer` of a policy in `policy_ns` matches `peer`.
pub fn peer_matches(world: &World, policy_ns: &str, np: &NetworkPolicyPeer, peer: Peer) -> bool {
    if let Some(block) = &np.ip_block {
        return ip_block_contains(block, peer.ip());
    }
    let Peer::Pod(pod) = peer else {
        return false;
    };
    match (&np.namespace_selector, &np.pod_selector) {
        (None, None) => false,
        (None, Some(ps)) => pod.namespace == policy_ns && matches_selector(ps, &pod.labels),
        (Some(nss), ps) => {
            matches_selector(nss, &world.namespace_labels(&pod.namespace))
                && ps.as_ref().is_none_or(|ps| matches_selector(ps, &pod.labels))
        }
    }
}

/// Whether `ip` is in the block's CIDR and in none of its exceptions. A CIDR
/// that is no IPv4 network (IPv6, malformed) contains nothing; an exception
/// that is none excludes nothing.
pub fn ip_block_contains(block: &IPBlock, ip: Ipv4Addr) -> bool {
    let Ok(net) = block.cidr.parse::<Ipv4Net>() else {
        return false;
    };
    net.contains(&ip)
        && !block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<Ipv4Net>().ok())
            .any(|e| e.contains(&ip))
}

/// Whether a rule's ports match the connection; none (unset or empty) match
/// everything.
fn ports_match(ports: Option<&Vec<NetworkPolicyPort>>, conn: &Conn) -> bool {
    match ports {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|np| port_matches(np, conn.dst, conn.port, conn.proto)),
    }
}

/// Whether one `NetworkPolicyPort` matches `port`/`proto` towards `dst`
/// (whose container ports resolve a named port).
pub fn port_matches(np: &NetworkPolicyPort, dst: Peer, port: u16, proto: Proto) -> bool {
    let wanted = match np.protocol.as_deref() {
        None => Some(Proto::Tcp),
        Some(s) => Proto::from_k8s(s),
    };
    if wanted != Some(proto) {
        return false;
    }
    match &np.port {
        None => true,
        Some(IntOrString::Int(first)) => {
            let last = np.end_port.unwrap_or(*first);
            (*first..=last).contains(&i32::from(port))
        }
        Some(IntOrString::String(name)) => dst.pod().is_some_and(|pod| {
            pod.ports
                .iter()
                .any(|pp| pp.name == *name && pp.protocol == proto && pp.port == port)
        }),
    }
}

/// Whether `pod` is one the policy's `podSelector` selects (in its namespace).
fn selects_pod(policy: &NetworkPolicy, pod: &PodInfo) -> bool {
    if pod.namespace != policy_namespace(policy) {
        return false;
    }
    match policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) {
        None => true,
        Some(sel) => matches_selector(sel, &pod.labels),
    }
}

/// The indexes into `world.pods` of the pods the policy's `podSelector`
/// selects: those of its namespace it matches (all of them when empty).
pub fn selects(world: &World, policy: &NetworkPolicy) -> Vec<usize> {
    world
        .pods
        .iter()
        .enumerate()
        .filter(|(_, pod)| selects_pod(policy, pod))
        .map(|(i, _)| i)
        .collect()
}

/// Whether a label selector matches `labels`: every `matchLabels` pair and
/// every `matchExpressions` requirement holds (an empty selector matches all).
pub fn matches_selector(sel: &LabelSelector, labels: &Labels) -> bool {
    sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_holds(r, labels))
}

/// Whether one `matchExpressions` requirement holds for `labels`.
fn requirement_holds(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// The directions a policy acts on, `(ingress, egress)`: its `policyTypes`
/// when non-empty; otherwise as the API server defaults them, ingress always
/// and egress when `spec.egress` has a rule.
pub fn policy_types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (
            true,
            spec.and_then(|s| s.egress.as_ref()).is_some_and(|e| !e.is_empty()),
        ),
    }
}

#[cfg(test)]
mod tests {
    //! The cases come from the Kubernetes netpol e2e tests
    //! (test/e2e/network/netpol/network_policy.go, named after their `It`),
    //! Cyclonus' matcher tests (pkg/matcher) and the Kubernetes
    //! documentation, played in the e2e world: namespaces x, y, z with pods
    //! a, b, c each, serving ports 80 and 81 on TCP, UDP and SCTP.

    use super::*;
    use crate::model::netpol::{NAMESPACE_NAME_LABEL, PodPort};
    use Proto::{Sctp, Tcp, Udp};

    const NS: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];
    /// An address that is no pod.
    const OUTSIDE: &str = "192.0.2.10";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The e2e world: x/a is 10.0.1.10, x/b 10.0.1.11, ..., z/c 10.0.3.12.
    fn world() -> World {
        let mut w = World::default();
        for (i, ns) in NS.iter().enumerate() {
            w.namespaces
                .insert(ns.to_string(), labels(&[("ns", ns), (NAMESPACE_NAME_LABEL, ns)]));
            for (j, pod) in PODS.iter().enumerate() {
                w.pods
                    .push(pod_info(ns, pod, Ipv4Addr::new(10, 0, i as u8 + 1, j as u8 + 10)));
            }
        }
        w
    }

    fn pod_info(ns: &str, pod: &str, ip: Ipv4Addr) -> PodInfo {
        let ports = [80u16, 81]
            .iter()
            .flat_map(|&port| {
                [Tcp, Udp, Sctp].map(|protocol| PodPort {
                    name: format!("serve-{port}-{}", protocol.lower()),
                    port,
                    protocol,
                })
            })
            .collect();
        PodInfo {
            node: "node-1".to_string(),
            name: pod.to_string(),
            namespace: ns.to_string(),
            labels: labels(&[("pod", pod)]),
            ip,
            ports,
            host_iface: format!("cali{ns}{pod}"),
        }
    }

    fn pod_mut<'a>(w: &'a mut World, name: &str) -> &'a mut PodInfo {
        let (ns, pod) = name.split_once('/').unwrap();
        w.pods.iter_mut().find(|p| p.namespace == ns && p.name == pod).unwrap()
    }

    /// "ns/pod" names a pod; anything else is an address.
    fn peer<'a>(w: &'a World, name: &str) -> Peer<'a> {
        match name.split_once('/') {
            Some((ns, pod)) => Peer::Pod(
                w.pods
                    .iter()
                    .find(|p| p.namespace == ns && p.name == pod)
                    .unwrap_or_else(|| panic!("no pod {name}")),
            ),
            None => Peer::Ip(name.parse().unwrap_or_else(|_| panic!("not an address: {name}"))),
        }
    }

    fn all_pods() -> Vec<String> {
        NS.iter()
            .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
            .collect()
    }

    /// A side as the cases write it: `open`, `allowed by x/p x/q`, `denied by x/p`.
    fn side_text(s: &Side) -> String {
        match s {
            Side::NotIsolated => "open".to_string(),
            Side::Allowed { by } => format!("allowed by {}", by.join(" ")),
            Side::Denied { isolated_by } => format!("denied by {}", isolated_by.join(" ")),
        }
    }

    /// One expectation of a case.
    enum Check {
        /// The whole 9x9 matrix at a port: one row per source (x/a, x/b, ...,
        /// z/c), one column per destination, `.` allowed and `X` denied (as
        /// the e2e truth tables print); other characters are ignored.
        Grid(u16, Proto, &'static str),
        /// The whole 9x9 matrix at a port, from a rule on (source, destination).
        Rule(u16, Proto, fn(&str, &str) -> bool),
        /// One connection: source, destination, port, protocol, allowed.
        One(&'static str, &'static str, u16, Proto, bool),
        /// One connection's sides, egress then ingress, as `side_text` writes them.
        Sides(&'static str, &'static str, u16, Proto, &'static str, &'static str),
    }
    use Check::{Grid, One, Rule, Sides};

    /// A table case: policies (YAML), a change to the world, expectations.
    struct Case {
        name: &'static str,
        policies: Vec<&'static str>,
        tweak: fn(&mut World),
        checks: Vec<Check>,
    }

    fn case(name: &'static str, policies: Vec<&'static str>, checks: Vec<Check>) -> Case {
        Case {
            name,
            policies,
            tweak: |_| {},
            checks,
        }
    }

    fn tweaked(name: &'static str, policies: Vec<&'static str>, tweak: fn(&mut World), checks: Vec<Check>) -> Case {
        Case {
            name,
            policies,
            tweak,
            checks,
        }
    }

    fn parse(yaml: &str) -> NetworkPolicy {
        let indent = yaml
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: Vec<&str> = yaml.lines().map(|l| l.get(indent..).unwrap_or("")).collect();
        serde_yaml::from_str(&text.join("\n")).unwrap_or_else(|e| panic!("bad policy {yaml}: {e}"))
    }

    fn parse_grid(grid: &str) -> Vec<Vec<bool>> {
        grid.lines()
            .map(|l| {
                l.chars()
                    .filter(|c| *c == '.' || *c == 'X')
                    .map(|c| c == '.')
                    .collect::<Vec<_>>()
            })
            .filter(|row| !row.is_empty())
            .collect()
    }

    /// The matrix as a grid, to show when one differs.
    fn render(w: &World, policies: &[NetworkPolicy], port: u16, proto: Proto) -> String {
        let mut out = String::from("      x   y   z\n");
        for s in all_pods() {
            out.push_str(&format!("  {} ", s.replace('/', "")));
            for (j, d) in all_pods().iter().enumerate() {
                if j % 3 == 0 {
                    out.push(' ');
                }
                let ok = evaluate(w, policies, peer(w, &s), peer(w, d), port, proto).allowed();
                out.push(if ok { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }

    /// Runs a case, returning what differs from its expectations.
    fn run(case: &Case) -> Vec<String> {
        let mut w = world();
        (case.tweak)(&mut w);
        let policies: Vec<NetworkPolicy> = case.policies.iter().map(|y| parse(y)).collect();
        let eval = |s: &str, d: &str, port, proto| evaluate(&w, &policies, peer(&w, s), peer(&w, d), port, proto);
        let mut bad = Vec::new();
        for check in &case.checks {
            match check {
                Grid(port, proto, _) | Rule(port, proto, _) => {
                    let want: Vec<Vec<bool>> = match check {
                        Grid(.., grid) => parse_grid(grid),
                        Rule(.., f) => all_pods()
                            .iter()
                            .map(|s| all_pods().iter().map(|d| f(s, d)).collect())
                            .collect(),
                        _ => unreachable!(),
                    };
                    assert_eq!(
                        (want.len(), want.iter().all(|r| r.len() == 9)),
                        (9, true),
                        "{}: grid",
                        case.name
                    );
                    let got: Vec<Vec<bool>> = all_pods()
                        .iter()
                        .map(|s| all_pods().iter().map(|d| eval(s, d, *port, *proto).allowed()).collect())
                        .collect();
                    if got != want {
                        let shown = render(&w, &policies, *port, *proto);
                        bad.push(format!("{} at {port}/{}: matrix is\n{shown}", case.name, proto.k8s()));
                    }
                }
                One(s, d, port, proto, want) => {
                    let v = eval(s, d, *port, *proto);
                    if v.allowed() != *want {
                        bad.push(format!("{}: {s} -> {d} {port}/{}: {v:?}", case.name, proto.k8s()));
                    }
                }
                Sides(s, d, port, proto, egress, ingress) => {
                    let v = eval(s, d, *port, *proto);
                    let got = (side_text(&v.egress), side_text(&v.ingress));
                    if got != (egress.to_string(), ingress.to_string()) {
                        bad.push(format!(
                            "{}: {s} -> {d} {port}/{}: sides {got:?}",
                            case.name,
                            proto.k8s()
                        ));
                    }
                }
            }
        }
        bad
    }

    #[test]
    fn cases_from_e2e_cyclonus_and_docs() {
        let cases: Vec<Case> = [
            e2e_basics(),
            e2e_selectors(),
            e2e_selectors_more(),
            e2e_ports(),
            e2e_updates(),
            e2e_egress(),
            e2e_egress_peers(),
            e2e_cidr(),
            e2e_protocols(),
            e2e_udp_sctp(),
            cyclonus_matcher(),
            cyclonus_peers(),
            docs_examples(),
            docs_selectors(),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert!(cases.len() >= 40, "{} cases", cases.len());
        let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "case names repeat");
        let bad: Vec<String> = cases.iter().flat_map(run).collect();
        assert!(bad.is_empty(), "{} failures:\n{}", bad.len(), bad.join("\n"));
    }

    const DENY_INGRESS_X: &str = "
        metadata: {name: deny-ingress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}";

    fn e2e_basics() -> Vec<Case> {
        vec![
            case(
                "e2e: should support a 'default-deny-ingress' policy",
                vec![DENY_INGRESS_X],
                vec![
                    Grid(
                        80,
                        Tcp,
                        "     x   y   z
                         xa  XXX ... ...
                         xb  XXX ... ...
                         xc  XXX ... ...
                         ya  XXX ... ...
                         yb  XXX ... ...
                         yc  XXX ... ...
                         za  XXX ... ...
                         zb  XXX ... ...
                         zc  XXX ... ...",
                    ),
                    One(OUTSIDE, "x/a", 80, Tcp, false),
                    One("x/a", OUTSIDE, 80, Tcp, true),
                    Sides("y/a", "x/b", 80, Tcp, "open", "denied by x/deny-ingress"),
                ],
            ),
            case(
                "e2e: should support a 'default-deny-all' policy",
                vec![
                    "
                    metadata: {name: deny-all, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
                ],
                vec![
                    Grid(
                        80,
                        Tcp,
                        "     x   y   z
                         xa  XXX XXX XXX
                         xb  XXX XXX XXX
                         xc  XXX XXX XXX
                         ya  XXX ... ...
                         yb  XXX ... ...
                         yc  XXX ... ...
                         za  XXX ... ...
                         zb  XXX ... ...
                         zc  XXX ... ...",
                    ),
                    One("x/a", OUTSIDE, 80, Tcp, false),
                    Sides("x/a", "y/a", 80, Tcp, "denied by x/deny-all", "open"),
                    Sides("x/a", "x/b", 80, Tcp, "denied by x/deny-all", "denied by x/deny-all"),
                ],
            ),
            case(
                "e2e: should enforce policy to allow traffic from pods within server namespace based on PodSelector",
                vec![
                    "
                    metadata: {name: x-a-allows-x-b, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
                ],
                vec![
                    Grid(
                        80,
                        Tcp,
                        "     x   y   z
                         xa  X.. ... ...
                         xb  ... ... ...
                         xc  X.. ... ...
                         ya  X.. ... ...
                         yb  X.. ... ...
                         yc  X.. ... ...
                         za  X.. ... ...
                         zb  X.. ... ...
                         zc  X.. ... ...",
                    ),
                    Sides("x/b", "x/a", 80, Tcp, "open", "allowed by x/x-a-allows-x-b"),
                    Sides("y/b", "x/a", 80, Tcp, "open", "denied by x/x-a-allows-x-b"),
                ],
            ),
            case(
                "e2e: should enforce policy to allow ingress traffic for a target",
                vec![
                    "
                    metadata: {name: deny-all, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress]}",
                    "
                    metadata: {name: allow-all-to-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]",
                ],
                vec![
                    Rule(80, Tcp, |_, d| d != "x/b" && d != "x/c"),
                    One(OUTSIDE, "x/a", 80, Tcp, false),
                    Sides("y/a", "x/a", 80, Tcp, "open", "allowed by x/allow-all-to-a"),
                    Sides("y/a", "x/b", 80, Tcp, "open", "denied by x/deny-all"),
                    Sides(OUTSIDE, "x/a", 80, Tcp, "open", "denied by x/allow-all-to-a x/deny-all"),
                ],
            ),
        ]
    }

    fn e2e_selectors() -> Vec<Case> {
        vec![
            case(
                "e2e: should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-client-a-via-ns-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/"))],
            ),
            case(
                "e2e: should enforce policy based on PodSelector with MatchExpressions",
                vec![
                    "
                    metadata: {name: x-a-allows-x-b, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s == "x/b")],
            ),
            case(
                "e2e: should enforce policy based on NamespaceSelector with MatchExpressions",
                vec![
                    "
                    metadata: {name: allow-ns-y-match-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/"))],
            ),
            case(
                "e2e: should enforce policy based on PodSelector or NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-ns-y-match-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                        - podSelector: {matchLabels: {pod: b}}",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || !s.starts_with("x/") || s == "x/b")],
            ),
            case(
                "e2e: should enforce policy based on PodSelector and NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                          podSelector: {matchLabels: {pod: b}}",
                ],
                vec![Grid(
                    80,
                    Tcp,
                    "     x   y   z
                     xa  X.. ... ...
                     xb  X.. ... ...
                     xc  X.. ... ...
                     ya  X.. ... ...
                     yb  ... ... ...
                     yc  X.. ... ...
                     za  X.. ... ...
                     zb  ... ... ...
                     zc  X.. ... ...",
                )],
            ),
            case(
                "e2e: should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
                vec![
                    "
                    metadata: {name: allow-ns-y-z-pod-b-c, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
                          podSelector:
                            matchExpressions: [{key: pod, operator: In, values: [b, c]}]",
                ],
                vec![Rule(80, Tcp, |s, d| {
                    d != "x/a" || (!s.starts_with("x/") && !s.ends_with("/a"))
                })],
            ),
        ]
    }

    fn e2e_selectors_more() -> Vec<Case> {
        vec![
            case(
                "e2e: should enforce policy to allow ingress traffic from pods in all namespaces",
                vec![
                    "
                    metadata: {name: allow-from-another-ns, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]",
                ],
                vec![
                    Rule(80, Tcp, |_, _| true),
                    Sides("z/c", "x/a", 80, Tcp, "open", "allowed by x/allow-from-another-ns"),
                ],
            ),
            case(
                "e2e: should stop enforcing policies after they are deleted",
                vec![],
                vec![Rule(80, Tcp, |_, _| true), Sides("x/a", "y/a", 80, Tcp, "open", "open")],
            ),
            case(
                "e2e: should enforce policy based on any PodSelectors",
                vec![
                    "
                    metadata: {name: allow-ns-x-pod-b-c, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s == "x/b" || s == "x/c")],
            ),
            case(
                "e2e: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s == "y/a")],
            ),
            case(
                "e2e: should deny ingress from pods on other namespaces",
                vec![
                    "
                    metadata: {name: deny-empty-policy, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                      ingress: [{from: [{podSelector: {matchLabels: {}}}]}]",
                ],
                vec![Grid(
                    80,
                    Tcp,
                    "     x   y   z
                     xa  ... ... ...
                     xb  ... ... ...
                     xc  ... ... ...
                     ya  XXX ... ...
                     yb  XXX ... ...
                     yc  XXX ... ...
                     za  XXX ... ...
                     zb  XXX ... ...
                     zc  XXX ... ...",
                )],
            ),
            tweaked(
                "e2e: should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
                vec![
                    "
                    metadata: {name: allow-client-a-via-ns-selector-for-immutable-ns-label, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]",
                ],
                // The world need not write the label: namespace_labels adds it.
                |w| w.namespaces.values_mut().for_each(|l| drop(l.remove(NAMESPACE_NAME_LABEL))),
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/"))],
            ),
            case(
                "e2e: should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
                vec![
                    "
                    metadata: {name: allow-ns-y-match-selector-for-immutable-ns-label, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector:
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| s != "x/a" || !d.starts_with("y/")),
                    One("x/a", OUTSIDE, 80, Tcp, false),
                ],
            ),
        ]
    }

    const ALLOW_81_FROM_Y: &str = "
        metadata: {name: allow-client-a-via-ns-selector, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress]
          ingress:
          - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
            ports: [{port: 81, protocol: TCP}]";

    fn e2e_ports() -> Vec<Case> {
        vec![
            case(
                "e2e: should enforce policy based on Ports",
                vec![ALLOW_81_FROM_Y],
                vec![
                    Rule(81, Tcp, |s, d| d != "x/a" || s.starts_with("y/")),
                    Rule(80, Tcp, |_, d| d != "x/a"),
                    Rule(81, Udp, |_, d| d != "x/a"),
                ],
            ),
            case(
                "e2e: should enforce multiple, stacked policies with overlapping podSelectors",
                vec![
                    ALLOW_81_FROM_Y,
                    "
                    metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                        ports: [{port: 80, protocol: TCP}]",
                ],
                vec![
                    Rule(81, Tcp, |s, d| d != "x/a" || s.starts_with("y/")),
                    Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/")),
                    Sides(
                        "y/a",
                        "x/a",
                        81,
                        Tcp,
                        "open",
                        "allowed by x/allow-client-a-via-ns-selector",
                    ),
                    Sides(
                        "x/b",
                        "x/a",
                        80,
                        Tcp,
                        "open",
                        "denied by x/allow-client-a-via-ns-selector x/allow-client-a-via-ns-selector-80",
                    ),
                ],
            ),
            case(
                "e2e: should support allow-all policy",
                vec![
                    "
                    metadata: {name: allow-all, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                ],
                vec![
                    Rule(80, Tcp, |_, _| true),
                    Rule(81, Tcp, |_, _| true),
                    One(OUTSIDE, "x/a", 80, Tcp, true),
                ],
            ),
            case(
                "e2e: should allow ingress access on one named port",
                vec![
                    "
                    metadata: {name: allow-all, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
                ],
                vec![
                    Rule(81, Tcp, |_, _| true),
                    Rule(80, Tcp, |_, d| !d.starts_with("x/")),
                    Rule(81, Udp, |_, d| !d.starts_with("x/")),
                ],
            ),
            case(
                "e2e: should allow ingress access from namespace on one named port",
                vec![
                    "
                    metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                        ports: [{port: serve-80-tcp, protocol: TCP}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/")),
                    Rule(81, Tcp, |_, d| d != "x/a"),
                ],
            ),
            case(
                "e2e: should allow egress access on one named port",
                vec![
                    "
                    metadata: {name: allow-egress, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
                ],
                vec![Rule(80, Tcp, |_, _| true), Rule(81, Tcp, |s, _| !s.starts_with("x/"))],
            ),
        ]
    }

    fn e2e_updates() -> Vec<Case> {
        const ALLOW_UPDATED_NS: &str = "
            metadata: {name: allow-client-a-via-ns-selector, namespace: x}
            spec:
              podSelector: {matchLabels: {pod: a}}
              policyTypes: [Ingress]
              ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]";
        const ALLOW_UPDATED_POD: &str = "
            metadata: {name: allow-client-a-via-pod-selector, namespace: x}
            spec:
              podSelector: {matchLabels: {pod: a}}
              policyTypes: [Ingress]
              ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]";
        const DENY_UPDATED_POD: &str = "
            metadata: {name: deny-ingress-via-label-selector, namespace: x}
            spec: {podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}";
        vec![
            case(
                "e2e: should enforce updated policy (allow all)",
                vec![
                    "
                    metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                ],
                vec![Rule(81, Tcp, |_, _| true)],
            ),
            case(
                "e2e: should enforce updated policy (mutated to deny all, policyTypes defaulted)",
                vec![
                    "
                    metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
                    spec: {podSelector: {}, ingress: []}",
                ],
                vec![Rule(81, Tcp, |_, d| !d.starts_with("x/"))],
            ),
            case(
                "e2e: should allow ingress access from updated namespace (before)",
                vec![ALLOW_UPDATED_NS],
                vec![Rule(80, Tcp, |_, d| d != "x/a")],
            ),
            tweaked(
                "e2e: should allow ingress access from updated namespace (after)",
                vec![ALLOW_UPDATED_NS],
                |w| {
                    drop(
                        w.namespaces
                            .get_mut("y")
                            .unwrap()
                            .insert("ns2".into(), "updated".into()),
                    )
                },
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/"))],
            ),
            case(
                "e2e: should allow ingress access from updated pod (before)",
                vec![ALLOW_UPDATED_POD],
                vec![Rule(80, Tcp, |_, d| d != "x/a")],
            ),
            tweaked(
                "e2e: should allow ingress access from updated pod (after)",
                vec![ALLOW_UPDATED_POD],
                |w| drop(pod_mut(w, "x/b").labels.insert("pod2".into(), "updated".into())),
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s == "x/b")],
            ),
            case(
                "e2e: should deny ingress access to updated pod (before)",
                vec![DENY_UPDATED_POD],
                vec![Rule(80, Tcp, |_, _| true)],
            ),
            tweaked(
                "e2e: should deny ingress access to updated pod (after)",
                vec![DENY_UPDATED_POD],
                |w| drop(pod_mut(w, "x/a").labels.insert("target".into(), "isolated".into())),
                vec![Rule(80, Tcp, |_, d| d != "x/a")],
            ),
        ]
    }

    fn e2e_egress() -> Vec<Case> {
        const EGRESS_80: &str = "
            metadata: {name: allow-egress-port-80, namespace: x}
            spec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}";
        const EGRESS_A: &str = "
            metadata: {name: allow-egress-for-target, namespace: x}
            spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}";
        vec![
            case(
                "e2e: should deny egress from pods based on PodSelector",
                vec![
                    "
                    metadata: {name: deny-egress-pod-a, namespace: x}
                    spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
                ],
                vec![
                    Rule(80, Tcp, |s, _| s != "x/a"),
                    One("x/a", OUTSIDE, 80, Tcp, false),
                    One(OUTSIDE, "x/a", 80, Tcp, true),
                ],
            ),
            case(
                "e2e: should deny egress from all pods in a namespace",
                vec![
                    "
                    metadata: {name: deny-egress-ns-x, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Egress]}",
                ],
                vec![Rule(80, Tcp, |s, _| !s.starts_with("x/"))],
            ),
            case(
                "e2e: should work with Ingress, Egress specified together",
                vec![
                    "
                    metadata: {name: allow-client-a-via-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress, Ingress]
                      ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
                      egress: [{ports: [{port: 80}]}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| d != "x/a" || s == "x/b"),
                    Grid(
                        81,
                        Tcp,
                        "     x   y   z
                         xa  XXX XXX XXX
                         xb  ... ... ...
                         xc  X.. ... ...
                         ya  X.. ... ...
                         yb  X.. ... ...
                         yc  X.. ... ...
                         za  X.. ... ...
                         zb  X.. ... ...
                         zc  X.. ... ...",
                    ),
                ],
            ),
            case(
                "e2e: should enforce multiple egress policies with egress allow-all policy taking precedence (port 80 only)",
                vec![EGRESS_80],
                vec![Rule(81, Tcp, |s, _| !s.starts_with("x/")), Rule(80, Tcp, |_, _| true)],
            ),
            case(
                "e2e: should enforce multiple egress policies with egress allow-all policy taking precedence (with allow-all)",
                vec![
                    EGRESS_80,
                    "
                    metadata: {name: allow-egress, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Egress], egress: [{}]}",
                ],
                vec![
                    Rule(81, Tcp, |_, _| true),
                    Sides("x/a", "y/a", 81, Tcp, "allowed by x/allow-egress", "open"),
                    Sides(
                        "x/a",
                        "y/a",
                        80,
                        Tcp,
                        "allowed by x/allow-egress x/allow-egress-port-80",
                        "open",
                    ),
                ],
            ),
            case(
                "e2e: should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector (egress allowed)",
                vec![EGRESS_A],
                vec![Rule(80, Tcp, |_, _| true)],
            ),
            case(
                "e2e: should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector (ingress denied)",
                vec![
                    EGRESS_A,
                    "
                    metadata: {name: deny-ingress-via-label-selector, namespace: x}
                    spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
                ],
                vec![
                    Rule(80, Tcp, |_, d| d != "x/a"),
                    Sides("x/a", "x/b", 80, Tcp, "allowed by x/allow-egress-for-target", "open"),
                    Sides(
                        "x/b",
                        "x/a",
                        80,
                        Tcp,
                        "open",
                        "denied by x/deny-ingress-via-label-selector",
                    ),
                ],
            ),
        ]
    }

    fn e2e_egress_peers() -> Vec<Case> {
        vec![
            case(
                "e2e: should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
                vec![
                    "
                    metadata: {name: allow-to-ns-y-pod-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}",
                    "
                    metadata: {name: allow-from-xa-on-ya-match-selector, namespace: y}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                          podSelector: {matchLabels: {pod: a}}",
                    "
                    metadata: {name: allow-from-xa-on-yb-match-selector, namespace: y}
                    spec:
                      podSelector: {matchLabels: {pod: b}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                          podSelector: {matchLabels: {pod: a}}",
                ],
                vec![
                    Grid(
                        80,
                        Tcp,
                        "     x   y   z
                         xa  XXX .XX XXX
                         xb  ... XX. ...
                         xc  ... XX. ...
                         ya  ... XX. ...
                         yb  ... XX. ...
                         yc  ... XX. ...
                         za  ... XX. ...
                         zb  ... XX. ...
                         zc  ... XX. ...",
                    ),
                    Sides(
                        "x/a",
                        "y/b",
                        80,
                        Tcp,
                        "denied by x/allow-to-ns-y-pod-a",
                        "allowed by y/allow-from-xa-on-yb-match-selector",
                    ),
                ],
            ),
            case(
                "e2e: should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-to-ns-y-pod-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}",
                ],
                vec![Rule(80, Tcp, |s, d| s != "x/a" || d == "y/a")],
            ),
        ]
    }

    fn e2e_cidr() -> Vec<Case> {
        // makeLargeCIDRForIP gives the /4 holding the pod's address.
        const EXCEPT_XB: &str = "
            metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
            spec:
              podSelector: {matchLabels: {pod: a}}
              policyTypes: [Egress]
              egress: [{to: [{ipBlock: {cidr: 0.0.0.0/4, except: [10.0.1.11/32]}}]}]";
        const ONLY_XB: &str = "
            metadata: {name: allow-client-a-via-cidr-egress-rule-2, namespace: x}
            spec:
              podSelector: {matchLabels: {pod: a}}
              policyTypes: [Egress]
              egress: [{to: [{ipBlock: {cidr: 10.0.1.11/32}}]}]";
        vec![
            case(
                "e2e: should allow egress access to server in CIDR block",
                vec![
                    "
                    metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress: [{to: [{ipBlock: {cidr: 10.0.2.11/32}}]}]",
                ],
                vec![Rule(80, Tcp, |s, d| s != "x/a" || d == "y/b")],
            ),
            case(
                "e2e: should enforce except clause while egress access to server in CIDR block",
                vec![EXCEPT_XB],
                vec![
                    Rule(80, Tcp, |s, d| !(s == "x/a" && d == "x/b")),
                    One("x/a", "10.200.0.1", 80, Tcp, true),
                    One("x/a", OUTSIDE, 80, Tcp, false),
                ],
            ),
            case(
                "e2e: should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (the /32 policy alone)",
                vec![ONLY_XB],
                vec![Rule(80, Tcp, |s, d| s != "x/a" || d == "x/b")],
            ),
            case(
                "e2e: should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (both policies)",
                vec![EXCEPT_XB, ONLY_XB],
                vec![
                    Rule(80, Tcp, |_, _| true),
                    Sides(
                        "x/a",
                        "x/b",
                        80,
                        Tcp,
                        "allowed by x/allow-client-a-via-cidr-egress-rule-2",
                        "open",
                    ),
                    Sides(
                        "x/a",
                        OUTSIDE,
                        80,
                        Tcp,
                        "denied by x/allow-client-a-via-cidr-egress-rule x/allow-client-a-via-cidr-egress-rule-2",
                        "open",
                    ),
                ],
            ),
        ]
    }

    fn e2e_protocols() -> Vec<Case> {
        vec![
            case(
                "e2e: should enforce ingress policy allowing any port traffic to a server on a specific protocol",
                vec![
                    "
                    metadata: {name: allow-ingress-by-proto, namespace: x}
                    spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP}]}]}",
                ],
                vec![
                    Rule(80, Tcp, |_, _| true),
                    Rule(80, Udp, |_, d| d != "x/a"),
                    One("y/a", "x/a", 5000, Tcp, true),
                ],
            ),
            case(
                "e2e: should enforce multiple ingress policies with ingress allow-all policy taking precedence (port 80 only)",
                vec![
                    "
                    metadata: {name: allow-ingress-port-80, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
                ],
                vec![Rule(81, Tcp, |_, d| !d.starts_with("x/")), Rule(80, Tcp, |_, _| true)],
            ),
            case(
                "e2e: should enforce multiple ingress policies with ingress allow-all policy taking precedence (with allow-all)",
                vec![
                    "
                    metadata: {name: allow-ingress-port-80, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
                    "
                    metadata: {name: allow-ingress, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                ],
                vec![
                    Rule(81, Tcp, |_, _| true),
                    Sides("y/a", "x/a", 81, Tcp, "open", "allowed by x/allow-ingress"),
                    Sides("y/a", "x/a", 80, Tcp, "open", "allowed by x/allow-ingress x/allow-ingress-port-80"),
                ],
            ),
            case(
                "e2e: should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
                vec![
                    DENY_INGRESS_X,
                    "
                    metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{ports: [{port: 81, protocol: SCTP}]}]",
                ],
                vec![
                    Rule(81, Tcp, |_, d| !d.starts_with("x/")),
                    Rule(81, Sctp, |_, d| d != "x/b" && d != "x/c"),
                ],
            ),
            case(
                "e2e: should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
                vec![
                    "
                    metadata: {name: allow-only-sctp-ingress-on-port-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{ports: [{port: 80, protocol: SCTP}]}]",
                ],
                vec![
                    Rule(81, Tcp, |_, d| d != "x/a"),
                    Rule(80, Tcp, |_, d| d != "x/a"),
                    Rule(80, Sctp, |_, _| true),
                ],
            ),
            case(
                "e2e: should not allow access by TCP when a policy specifies only UDP",
                vec![
                    "
                    metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress: [{ports: [{port: 81, protocol: UDP}]}]",
                ],
                vec![Rule(81, Tcp, |_, d| d != "x/a"), Rule(81, Udp, |_, _| true)],
            ),
        ]
    }

    fn e2e_udp_sctp() -> Vec<Case> {
        const PORT_81_FROM_Y: fn(&str, &str) -> bool = |s, d| d != "x/a" || s.starts_with("y/");
        vec![
            case(
                "e2e UDP: should support a 'default-deny-ingress' policy",
                vec![DENY_INGRESS_X],
                vec![Rule(80, Udp, |_, d| !d.starts_with("x/"))],
            ),
            case(
                "e2e UDP: should enforce policy based on Ports",
                vec![
                    "
                    metadata: {name: allow-ingress-on-port-81-ns-x, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                        ports: [{port: 81, protocol: UDP}]",
                ],
                vec![Rule(81, Udp, PORT_81_FROM_Y), Rule(81, Tcp, |_, d| d != "x/a")],
            ),
            case(
                "e2e SCTP: should support a 'default-deny-ingress' policy",
                vec![DENY_INGRESS_X],
                vec![
                    Rule(80, Sctp, |_, d| !d.starts_with("x/")),
                    Rule(80, Udp, |_, d| !d.starts_with("x/")),
                ],
            ),
            case(
                "e2e SCTP: should enforce policy based on Ports",
                vec![
                    "
                    metadata: {name: allow-ingress-on-port-81-ns-x, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
                        ports: [{port: 81, protocol: SCTP}]",
                ],
                vec![Rule(81, Sctp, PORT_81_FROM_Y), Rule(81, Udp, |_, d| d != "x/a")],
            ),
            case(
                "e2e SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
                vec![
                    "
                    metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}",
                ],
                vec![Rule(80, Sctp, |s, d| d != "x/a" || s == "y/a")],
            ),
        ]
    }

    fn cyclonus_matcher() -> Vec<Case> {
        const POLICY_207: &str = "
            apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: policy-207, namespace: x}
            spec:
              ingress:
              - ports:
                - protocol: SCTP
              podSelector: {}
              policyTypes:
              - Ingress";
        vec![
            case(
                "cyclonus: allowing a protocol should implicitly deny other protocols from pods",
                vec![POLICY_207],
                vec![One("y/a", "x/a", 103, Tcp, false), One("y/a", "x/a", 103, Sctp, true)],
            ),
            case(
                "cyclonus: allowing a protocol should implicitly deny other protocols from ips",
                vec![POLICY_207],
                vec![
                    One("1.2.3.4", "x/a", 103, Tcp, false),
                    One("1.2.3.4", "x/a", 103, Sctp, true),
                ],
            ),
            case(
                "cyclonus: policy allowing egress to ips",
                vec![
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: vary-egress-37-0-0-0-19, namespace: x}
                    spec:
                      egress:
                      - ports:
                        - port: 80
                          protocol: TCP
                        to:
                        - podSelector: {}
                        - ipBlock:
                            cidr: 192.168.242.213/24
                      - ports:
                        - port: 53
                          protocol: UDP
                      podSelector:
                        matchLabels:
                          pod: a
                      policyTypes:
                      - Egress",
                ],
                vec![
                    One("x/a", "192.168.242.249", 80, Tcp, true),
                    One("x/a", "192.168.243.1", 80, Tcp, false),
                    One("x/a", "192.168.242.249", 81, Tcp, false),
                    One("x/a", "x/c", 80, Tcp, true),
                    One("x/a", "y/b", 80, Tcp, false),
                    One("x/a", "y/b", 53, Udp, true),
                    One("x/a", "8.8.8.8", 53, Udp, true),
                    One("x/b", "y/b", 80, Tcp, true),
                ],
            ),
            case(
                "cyclonus: policy allowing ingress to named port",
                vec![
                    "
                    metadata: {name: abc, namespace: x}
                    spec:
                      ingress: [{ports: [{port: serve-81-tcp, protocol: TCP}]}]
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]",
                ],
                vec![
                    One("1.2.3.4", "x/a", 81, Tcp, true),
                    One("1.2.3.4", "x/a", 80, Tcp, false),
                    One("1.2.3.4", "x/a", 81, Udp, false),
                    One("y/c", "x/a", 81, Tcp, true),
                ],
            ),
            tweaked(
                "cyclonus: a named port resolves against the destination pod's own container ports",
                vec![
                    "
                    metadata: {name: abc, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
                ],
                // x/a serves serve-81-tcp on 8081; the others on 81.
                |w| {
                    pod_mut(w, "x/a")
                        .ports
                        .iter_mut()
                        .filter(|p| p.name == "serve-81-tcp")
                        .for_each(|p| p.port = 8081)
                },
                vec![
                    One("y/a", "x/a", 8081, Tcp, true),
                    One("y/a", "x/a", 81, Tcp, false),
                    One("y/a", "x/b", 81, Tcp, true),
                    One("y/a", "x/b", 8081, Tcp, false),
                ],
            ),
            case(
                "cyclonus: a named port never matches a destination that is no pod",
                vec![
                    "
                    metadata: {name: allow-egress, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
                ],
                vec![
                    One("x/a", "y/a", 80, Tcp, true),
                    Sides("x/a", OUTSIDE, 80, Tcp, "denied by x/allow-egress", "open"),
                ],
            ),
        ]
    }

    fn cyclonus_peers() -> Vec<Case> {
        vec![
            case(
                "cyclonus: ipBlock peers match pod addresses too",
                vec![
                    "
                    metadata: {name: from-10-0-2, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/")),
                    One("10.0.2.200", "x/a", 80, Tcp, true),
                    One(OUTSIDE, "x/a", 80, Tcp, false),
                ],
            ),
            case(
                "cyclonus: allows all ns/pods/ports, but no ips from a single peer with empty pod/ns selectors",
                vec![
                    "
                    metadata: {name: abc, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]",
                ],
                vec![Rule(81, Udp, |_, _| true), One(OUTSIDE, "x/a", 80, Tcp, false)],
            ),
            case(
                "cyclonus: allows ns/pods, but no ips from a single namespace/pod",
                vec![
                    "
                    metadata: {name: abc, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [{podSelector: {}}]}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("x/")),
                    One(OUTSIDE, "x/a", 80, Tcp, false),
                ],
            ),
            case(
                "cyclonus: allows all ips and all pods over a specific port from an empty peer slice",
                vec![
                    "
                    metadata: {name: abc, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [], ports: [{protocol: SCTP, port: 103}]}]",
                ],
                vec![
                    One("y/a", "x/a", 103, Sctp, true),
                    One(OUTSIDE, "x/a", 103, Sctp, true),
                    One("y/a", "x/a", 103, Tcp, false),
                    One("y/a", "x/a", 104, Sctp, false),
                ],
            ),
            tweaked(
                "cyclonus: missing namespace gets treated as default namespace",
                vec![
                    "
                    metadata: {name: abc}
                    spec: {podSelector: {}, ingress: [], policyTypes: [Ingress, Egress]}",
                ],
                |w| w.pods.push(pod_info("default", "d", Ipv4Addr::new(10, 0, 9, 10))),
                vec![
                    Rule(80, Tcp, |_, _| true),
                    One("x/a", "default/d", 80, Tcp, false),
                    Sides("default/d", "x/a", 80, Tcp, "denied by default/abc", "open"),
                ],
            ),
            case(
                "cyclonus: a direction's result lists the allowing and the denying policies (policies add up)",
                vec![
                    "
                    metadata: {name: from-y, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
                    "
                    metadata: {name: from-z, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]",
                ],
                vec![
                    Rule(80, Tcp, |s, d| d != "x/a" || !s.starts_with("x/")),
                    Sides("y/a", "x/a", 80, Tcp, "open", "allowed by x/from-y"),
                    Sides("z/a", "x/a", 80, Tcp, "open", "allowed by x/from-z"),
                    Sides("x/b", "x/a", 80, Tcp, "open", "denied by x/from-y x/from-z"),
                ],
            ),
        ]
    }

    fn docs_examples() -> Vec<Case> {
        vec![
            case(
                "k8s docs: the NetworkPolicy resource example (test-network-policy), played in x",
                vec![
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: test-network-policy, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress, Egress]
                      ingress:
                      - from:
                        - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
                        - namespaceSelector: {matchLabels: {ns: y}}
                        - podSelector: {matchLabels: {pod: b}}
                        ports: [{protocol: TCP, port: 6379}]
                      egress:
                      - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
                        ports: [{protocol: TCP, port: 5978}]",
                ],
                vec![
                    One("172.17.0.5", "x/a", 6379, Tcp, true),
                    One("172.17.1.5", "x/a", 6379, Tcp, false),
                    One("y/c", "x/a", 6379, Tcp, true),
                    One("x/b", "x/a", 6379, Tcp, true),
                    One("x/c", "x/a", 6379, Tcp, false),
                    One("z/b", "x/a", 6379, Tcp, false),
                    One("y/c", "x/a", 80, Tcp, false),
                    One("x/a", "10.0.0.7", 5978, Tcp, true),
                    One("x/a", "10.0.0.7", 5979, Tcp, false),
                    One("x/a", "x/b", 5978, Tcp, false),
                    One("x/b", "x/c", 80, Tcp, true),
                ],
            ),
            case(
                "k8s docs: targeting a range of ports (multi-port-egress)",
                vec![
                    "
                    metadata: {name: multi-port-egress, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to: [{ipBlock: {cidr: 10.0.2.0/24}}]
                        ports: [{protocol: TCP, port: 32000, endPort: 32768}]",
                ],
                vec![
                    One("x/a", "y/a", 32000, Tcp, true),
                    One("x/a", "y/c", 32768, Tcp, true),
                    One("x/a", "y/a", 32769, Tcp, false),
                    One("x/a", "y/a", 31999, Tcp, false),
                    One("x/a", "y/a", 32000, Udp, false),
                    One("x/a", "z/a", 32000, Tcp, false),
                    One("y/a", "x/a", 80, Tcp, true),
                ],
            ),
            case(
                "cyclonus: a numbered port with endPort matches the whole range",
                vec![
                    "
                    metadata: {name: range, namespace: x}
                    spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, endPort: 81}]}]}",
                ],
                vec![
                    Rule(80, Tcp, |_, _| true),
                    Rule(81, Tcp, |_, _| true),
                    Rule(81, Udp, |_, d| d != "x/a"),
                    One("y/a", "x/a", 79, Tcp, false),
                    One("y/a", "x/a", 82, Tcp, false),
                ],
            ),
            case(
                "k8s docs: allow all ingress traffic (allow-all-ingress) beside a default deny",
                vec![
                    DENY_INGRESS_X,
                    "
                    metadata: {name: allow-all-ingress, namespace: x}
                    spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}",
                ],
                vec![Rule(80, Tcp, |_, _| true), One(OUTSIDE, "x/b", 80, Tcp, true)],
            ),
            case(
                "k8s docs: policyTypes unset and no egress rule: the policy acts on ingress only",
                vec![
                    "
                    metadata: {name: ingress-only, namespace: x}
                    spec: {podSelector: {}, egress: []}",
                ],
                vec![Rule(80, Tcp, |_, d| !d.starts_with("x/"))],
            ),
            case(
                "k8s docs: default deny all egress traffic (policyTypes [Egress] ignores ingress rules)",
                vec![
                    "
                    metadata: {name: default-deny-egress, namespace: x}
                    spec: {podSelector: {}, policyTypes: [Egress], ingress: []}",
                ],
                vec![Rule(80, Tcp, |s, _| !s.starts_with("x/"))],
            ),
            case(
                "k8s API: policyTypes unset with an egress rule acts on both directions",
                vec![
                    "
                    metadata: {name: default-deny-all, namespace: x}
                    spec: {podSelector: {}, egress: [{to: [{podSelector: {matchLabels: {pod: none}}}]}]}",
                ],
                vec![Rule(80, Tcp, |s, d| !s.starts_with("x/") && !d.starts_with("x/"))],
            ),
        ]
    }

    fn docs_selectors() -> Vec<Case> {
        vec![
            tweaked(
                "k8s docs: label selectors — NotIn holds without the key, DoesNotExist, pod AND namespace",
                vec![
                    "
                    metadata: {name: exprs, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}]}
                          namespaceSelector: {matchExpressions: [{key: ns2, operator: DoesNotExist}]}",
                ],
                |w| {
                    w.namespaces.get_mut("z").unwrap().insert("ns2".into(), "foo".into());
                    pod_mut(w, "x/c").labels.insert("team".into(), "red".into());
                },
                vec![Rule(80, Tcp, |s, d| d != "x/a" || (s != "x/c" && !s.starts_with("z/")))],
            ),
            tweaked(
                "k8s docs: label selectors — Exists",
                vec![
                    "
                    metadata: {name: exists, namespace: x}
                    spec:
                      podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
                      ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}}]}]",
                ],
                |w| drop(w.namespaces.get_mut("z").unwrap().remove("ns")),
                vec![Rule(80, Tcp, |s, d| !d.starts_with("x/") || !s.starts_with("z/"))],
            ),
            case(
                "k8s docs: label selectors — matchLabels AND matchExpressions",
                vec![
                    "
                    metadata: {name: both, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchLabels: {ns: y}
                            matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y, z]}]",
                    "
                    metadata: {name: selects-nothing, namespace: x}
                    spec:
                      podSelector:
                        matchLabels: {pod: b}
                        matchExpressions: [{key: pod, operator: In, values: [c]}]",
                ],
                vec![Rule(80, Tcp, |s, d| d != "x/a" || s.starts_with("y/"))],
            ),
        ]
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let types = |spec: &str| policy_types(&parse(&format!("metadata: {{name: p, namespace: x}}\nspec: {spec}")));
        assert_eq!(types("{podSelector: {}}"), (true, false));
        assert_eq!(types("{podSelector: {}, egress: []}"), (true, false));
        assert_eq!(types("{podSelector: {}, egress: [{}]}"), (true, true));
        assert_eq!(types("{podSelector: {}, policyTypes: [], egress: [{}]}"), (true, true));
        assert_eq!(
            types("{podSelector: {}, policyTypes: [Egress], ingress: [{}]}"),
            (false, true)
        );
        assert_eq!(
            types("{podSelector: {}, policyTypes: [Ingress], egress: [{}]}"),
            (true, false)
        );
        assert_eq!(types("{podSelector: {}, policyTypes: [Ingress, Egress]}"), (true, true));
        assert_eq!(policy_types(&parse("metadata: {name: p}")), (true, false));
    }

    #[test]
    fn selects_pods_of_the_policy_namespace() {
        let w = world();
        let names = |yaml: &str| -> Vec<String> {
            selects(&w, &parse(yaml))
                .into_iter()
                .map(|i| format!("{}/{}", w.pods[i].namespace, w.pods[i].name))
                .collect()
        };
        assert_eq!(
            names("metadata: {name: p, namespace: y}\nspec: {podSelector: {}}"),
            ["y/a", "y/b", "y/c"]
        );
        assert_eq!(
            names("metadata: {name: p, namespace: y}\nspec: {}"),
            ["y/a", "y/b", "y/c"]
        );
        assert_eq!(
            names("metadata: {name: p, namespace: z}\nspec: {podSelector: {matchLabels: {pod: b}}}"),
            ["z/b"]
        );
        let not_a = "{matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}";
        assert_eq!(
            names(&format!(
                "metadata: {{name: p, namespace: x}}\nspec: {{podSelector: {not_a}}}"
            )),
            ["x/b", "x/c"]
        );
        assert!(names("metadata: {name: p}\nspec: {podSelector: {}}").is_empty());
        assert!(names("metadata: {name: p, namespace: w}\nspec: {podSelector: {}}").is_empty());
    }

    #[test]
    fn selector_operators() {
        let sel = |yaml: &str| -> LabelSelector { serde_yaml::from_str(yaml).unwrap() };
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        let holds = |yaml: &str| matches_selector(&sel(yaml), &l);
        assert!(holds("{}"));
        assert!(holds("{matchLabels: {}}"));
        assert!(holds("{matchLabels: {pod: a, tier: web}}"));
        assert!(!holds("{matchLabels: {pod: a, tier: db}}"));
        assert!(holds("{matchExpressions: [{key: pod, operator: In, values: [a, b]}]}"));
        assert!(!holds("{matchExpressions: [{key: team, operator: In, values: [a]}]}"));
        assert!(!holds("{matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}"));
        assert!(holds("{matchExpressions: [{key: team, operator: NotIn, values: [a]}]}"));
        assert!(holds("{matchExpressions: [{key: tier, operator: Exists}]}"));
        assert!(!holds("{matchExpressions: [{key: team, operator: Exists}]}"));
        assert!(holds("{matchExpressions: [{key: team, operator: DoesNotExist}]}"));
        assert!(!holds("{matchExpressions: [{key: tier, operator: DoesNotExist}]}"));
        assert!(!holds("{matchExpressions: [{key: pod, operator: Gt, values: ['1']}]}"));
        assert!(!holds(
            "{matchLabels: {pod: a}, matchExpressions: [{key: tier, operator: In, values: [db]}]}"
        ));
        assert!(holds(
            "{matchLabels: {pod: a}, matchExpressions: [{key: tier, operator: In, values: [web]}]}"
        ));
    }

    #[test]
    fn ip_blocks_and_peers() {
        let block = |cidr: &str, except: &[&str]| IPBlock {
            cidr: cidr.to_string(),
            except: Some(except.iter().map(|e| e.to_string()).collect()),
        };
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(ip_block_contains(&block("10.0.0.0/8", &[]), ip("10.1.2.3")));
        assert!(!ip_block_contains(
            &block("10.0.0.0/8", &["10.1.0.0/16"]),
            ip("10.1.2.3")
        ));
        assert!(ip_block_contains(&block("10.0.0.1/24", &[]), ip("10.0.0.200")));
        assert!(!ip_block_contains(&block("fd00::/8", &[]), ip("10.0.0.1")));
        assert!(!ip_block_contains(&block("garbage", &[]), ip("10.0.0.1")));
        let w = world();
        assert_eq!(Peer::of_ip(&w, ip("10.0.2.11")), peer(&w, "y/b"));
        assert_eq!(Peer::of_ip(&w, ip(OUTSIDE)), Peer::Ip(ip(OUTSIDE)));
        let v = evaluate(&w, &[parse(DENY_INGRESS_X)], peer(&w, "y/a"), peer(&w, "x/a"), 80, Tcp);
        assert!(!v.allowed());
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["egress"], "NotIsolated");
        assert_eq!(json["ingress"]["Denied"]["isolated_by"][0], "x/deny-ingress");
    }
}

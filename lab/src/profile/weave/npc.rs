//! What Weave Net's policy controller, weave-npc (v2.8.1, as weave-kube runs
//! it: `--allow-mcast`, bridge port `vethwe-bridge`, `--max-list-size
//! 1024`), programs on a node for Kubernetes NetworkPolicy: the `WEAVE-NPC`
//! chains of the filter table and the `weave-` ipsets their rules match,
//! plus the FORWARD and INPUT rules weaver keeps with NPC on. Pure: text
//! for `iptables-restore --noflush` (as `iptables-save` prints it) and for
//! `ipset restore`, byte-deterministic. The facts, with the Weave source
//! files they come from, are in docs/weave-npc-facts.md.
//!
//! weave-npc is not per node: every node gets the rules and sets of every
//! pod of the cluster (its node name is unused), so [`npc_state`] ignores
//! its `node`. The state is what a freshly started weave-npc reaches once it
//! has seen every namespace, pod and policy (namespaces and policies in the
//! order the API server lists them: by name, by namespace then name).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::netpol::eval::{matches_selector, policy_types};
use crate::model::netpol::{Labels, NetworkPolicy, PodInfo, World, policy_name, policy_namespace};
use crate::profile::PolicyState;

/// Weave's bridge (`--weave-bridge`, default `weave`).
pub const BRIDGE: &str = "weave";
/// The bridge port on which packets from other peers come and go
/// (`--bridge-port-name`, default `vethwe-bridge`).
pub const BRIDGE_PORT: &str = "vethwe-bridge";
/// The NFLOG group weave-npc's ulogd reads dropped packets from.
pub const NFLOG_GROUP: u16 = 86;
/// The mark bit egress rules set for an allowed packet (npc/constants.go).
pub const EGRESS_MARK: &str = "0x40000/0x40000";
/// What weave-npc's ipsets are named with.
pub const IPSET_PREFIX: &str = "weave-";
/// What weave-npc's chains are named with.
pub const CHAIN_PREFIX: &str = "WEAVE-NPC";
/// `--max-list-size`: the size of a namespace selector's list:set.
pub const MAX_LIST_SIZE: u32 = 1024;

/// The main (ingress) chain, which FORWARD sends traffic to the bridge to.
pub const MAIN: &str = "WEAVE-NPC";
/// Ingress default-allow per namespace.
pub const DEFAULT: &str = "WEAVE-NPC-DEFAULT";
/// Ingress policy rules.
pub const INGRESS: &str = "WEAVE-NPC-INGRESS";
/// The egress chain, which FORWARD and INPUT send traffic from the bridge to.
pub const EGRESS: &str = "WEAVE-NPC-EGRESS";
/// Egress default-allow per namespace.
pub const EGRESS_DEFAULT: &str = "WEAVE-NPC-EGRESS-DEFAULT";
/// Egress policy rules.
pub const EGRESS_CUSTOM: &str = "WEAVE-NPC-EGRESS-CUSTOM";
/// Marks a packet egress allowed.
pub const EGRESS_ACCEPT: &str = "WEAVE-NPC-EGRESS-ACCEPT";
/// Every chain weave-npc programs, sorted.
pub const CHAINS: [&str; 7] = [
    MAIN,
    DEFAULT,
    EGRESS,
    EGRESS_ACCEPT,
    EGRESS_CUSTOM,
    EGRESS_DEFAULT,
    INGRESS,
];

/// weave-npc's `shortName` alphabet (npc/shortname.go): 85 characters.
const SYMBOLS: &[u8; 85] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789(){}[]+=_$%^!*|/?.;:@#~";

/// What weave-npc programs: iptables-restore and ipset restore input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpcState {
    /// Input for `iptables-restore --noflush`: table `*filter`, the seven
    /// WEAVE-NPC chains declared (which flushes them) then filled, `COMMIT`.
    pub iptables: String,
    /// Input for `ipset restore -exist`: every set created, then each
    /// flushed and filled (members sorted).
    pub ipsets: String,
    /// Every set, sorted.
    pub sets: Vec<String>,
}

/// The rules weaver keeps at the top of FORWARD with NPC on (net/bridge.go
/// `ConfigureIPTables`, `ensureRulesAtTop`), as iptables-save prints them.
pub fn forward_rules() -> Vec<String> {
    let note = quote("NOTE: this must go before '-j KUBE-FORWARD'");
    vec![
        format!("-i {BRIDGE} -m comment --comment {note} -j {EGRESS}"),
        format!("-o {BRIDGE} -m comment --comment {note} -j {MAIN}"),
        format!("-o {BRIDGE} -m state --state NEW -j NFLOG --nflog-group {NFLOG_GROUP}"),
        format!("-o {BRIDGE} -j DROP"),
        format!("-i {BRIDGE} ! -o {BRIDGE} -j ACCEPT"),
        format!("-o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
    ]
}

/// The rule weaver appends to INPUT with NPC on (`AppendUnique`): traffic
/// from pods to the node's own addresses goes through egress policy.
pub fn input_rule() -> String {
    format!("-i {BRIDGE} -j {EGRESS}")
}

/// weave-npc's [`PolicyState`] (the same on every node): [`npc_state`],
/// weaver's FORWARD rules at the top and its INPUT rule at the end; its
/// chains start with `WEAVE-NPC` and its sets with `weave-`.
pub fn policy_state(world: &World, policies: &[NetworkPolicy], node: &str) -> PolicyState {
    let s = npc_state(world, policies, node);
    PolicyState {
        iptables: s.iptables,
        ipsets: s.ipsets,
        chains: CHAINS.iter().map(|c| c.to_string()).collect(),
        sets: s.sets,
        top: forward_rules().into_iter().map(|r| ("FORWARD", r)).collect(),
        append: vec![("INPUT", input_rule())],
        prefixes: vec![CHAIN_PREFIX, IPSET_PREFIX],
    }
}

/// weave-npc's `shortName`: the SHA-1 of `s` as a big-endian number,
/// written in base 85 with [`SYMBOLS`], least significant digit first.
pub fn short_name(s: &str) -> String {
    let mut n = sha1_smol::Sha1::from(s).digest().bytes().to_vec();
    let mut out = String::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 85) as u8;
            rem = cur % 85;
        }
        out.push(SYMBOLS[rem as usize] as char);
    }
    out
}

/// An ipset's name: `weave-` + shortName(key).
fn set_name(key: &str) -> String {
    format!("{IPSET_PREFIX}{}", short_name(key))
}

/// What `labels.Selector.String()` of Kubernetes' apimachinery (v0.18)
/// prints for a label selector: the requirements sorted (stably) by key,
/// matchLabels first, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
/// joined by `,`; the empty selector is ``.
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        reqs.push((k.clone(), format!("{k}={v}")));
    }
    for r in sel.match_expressions.iter().flatten() {
        let mut values = r.values.clone().unwrap_or_default();
        values.sort();
        let k = &r.key;
        let text = match r.operator.as_str() {
            "In" => format!("{k} in ({})", values.join(",")),
            "NotIn" => format!("{k} notin ({})", values.join(",")),
            "Exists" => k.clone(),
            _ => format!("!{k}"),
        };
        reqs.push((k.clone(), text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join(",")
}

/// How iptables-save prints a string argument (libxtables
/// `xtables_save_string`): bare when only `[A-Za-z0-9_-]`, otherwise in
/// double quotes with `"`, `\` and `'` escaped.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

// ------------------------------------------------------------------ sets --

/// What an ipset holds, from which its members follow.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    /// hash:ip: the pods of a namespace a pod selector matches.
    Pods { ns: String, sel: LabelSelector },
    /// hash:ip: the pods of every namespace the namespace selector matches
    /// that the pod selector matches.
    NamespacedPods {
        ns_sel: LabelSelector,
        pod_sel: LabelSelector,
    },
    /// list:set: the all-pods sets of the namespaces a selector matches.
    Namespaces { sel: LabelSelector },
    /// hash:ip: the pods of a namespace no policy of this direction targets.
    DefaultAllow { ns: String, ingress: bool },
    /// hash:net: an ipBlock's excepted CIDRs.
    Except { cidr: String, except: Vec<String> },
}

impl Content {
    fn kind(&self) -> &'static str {
        match self {
            Content::Namespaces { .. } => "list:set",
            Content::Except { .. } => "hash:net",
            _ => "hash:ip",
        }
    }
}

/// A selector a rule matches (npc/selector.go `selectorSpec`).
#[derive(Debug, Clone)]
struct SelSpec {
    key: String,
    set: String,
    /// The namespace of a pod selector; empty for (namespaced) namespace
    /// selectors.
    ns: String,
    content: Content,
}

impl SelSpec {
    /// `newSelectorSpec`: the key is the namespace selector's string then
    /// the pod selector's; the set is named after `<ns>:<key>`.
    fn new(pod: Option<&LabelSelector>, ns_sel: Option<&LabelSelector>, ns: &str) -> SelSpec {
        let mut key = String::new();
        if let Some(s) = ns_sel {
            key.push_str(&selector_string(s));
        }
        if let Some(s) = pod {
            key.push_str(&selector_string(s));
        }
        let content = match (pod, ns_sel) {
            (Some(p), Some(n)) => Content::NamespacedPods {
                ns_sel: n.clone(),
                pod_sel: p.clone(),
            },
            (None, Some(n)) => Content::Namespaces { sel: n.clone() },
            (p, None) => Content::Pods {
                ns: ns.to_string(),
                sel: p.cloned().unwrap_or_default(),
            },
        };
        SelSpec {
            set: set_name(&format!("{ns}:{key}")),
            key,
            ns: ns.to_string(),
            content,
        }
    }

    /// `getRuleSpec`: the set match and the rule comment's side.
    fn rule_part(&self, src: bool) -> (Vec<String>, String) {
        let dir = if src { "src" } else { "dst" };
        let m = format!("-m set --match-set {} {dir}", self.set);
        let comment = if self.ns.is_empty() {
            format!("namespaces: selector: {}", self.key)
        } else {
            format!("pods: namespace: {}, selector: {}", self.ns, self.key)
        };
        (vec![m], comment)
    }
}

/// An ipBlock peer (npc/ipblock.go `ipBlockSpec`).
#[derive(Debug, Clone)]
struct BlockSpec {
    /// The excepted CIDRs, sorted, joined by spaces; empty without any.
    key: String,
    set: String,
    cidr: String,
    net: Ipv4Net,
    except: Vec<String>,
}

impl BlockSpec {
    /// None for what iptables' IPv4 table cannot hold (an IPv6 CIDR).
    fn new(b: &IPBlock, ns: &str) -> Option<BlockSpec> {
        let net: Ipv4Net = b.cidr.parse().ok()?;
        let mut except = b.except.clone().unwrap_or_default();
        except.sort();
        let key = except.join(" ");
        let set = if key.is_empty() {
            String::new()
        } else {
            set_name(&format!("{ns}:ipblock-except:{key}"))
        };
        Some(BlockSpec {
            key,
            set,
            cidr: b.cidr.clone(),
            net: net.trunc(),
            except,
        })
    }

    fn rule_part(&self, src: bool) -> (Option<String>, Vec<String>, String) {
        let dir = if src { "src" } else { "dst" };
        if self.key.is_empty() {
            return (Some(self.net.to_string()), Vec::new(), format!("cidr: {}", self.cidr));
        }
        (
            Some(self.net.to_string()),
            vec![format!("-m set ! --match-set {} {dir}", self.set)],
            format!("cidr: {} except [{}]", self.cidr, self.key),
        )
    }
}

/// A rule's peer (`ruleHost`).
#[derive(Debug, Clone)]
enum Host {
    Sel(SelSpec),
    Block(BlockSpec),
}

impl Host {
    fn rule_part(&self, src: bool) -> (Option<String>, Vec<String>, String) {
        match self {
            Host::Sel(s) => {
                let (m, c) = s.rule_part(src);
                (None, m, c)
            }
            Host::Block(b) => b.rule_part(src),
        }
    }
}

// ----------------------------------------------------------------- rules --

/// A policy rule (npc/rule.go `ruleSpec`), as iptables-save prints its
/// matches (`-s`/`-d` first, then `-p`, the set matches, the protocol's
/// match with `--dport`, the comment).
#[derive(Debug, Clone)]
struct RuleSpec {
    egress: bool,
    /// The rule without `-A <chain>` and target; also its identity.
    text: String,
}

impl RuleSpec {
    fn new(egress: bool, proto: Option<&str>, src: Option<&Host>, dst: Option<&Host>, port: Option<&str>) -> RuleSpec {
        let mut s_net = None;
        let mut d_net = None;
        let mut matches: Vec<String> = Vec::new();
        let mut src_c = "anywhere".to_string();
        let mut dst_c = "anywhere".to_string();
        if let Some(h) = src {
            let (net, m, c) = h.rule_part(true);
            s_net = net;
            matches.extend(m);
            src_c = c;
        }
        if let Some(h) = dst {
            let (net, m, c) = h.rule_part(false);
            d_net = net;
            matches.extend(m);
            dst_c = c;
        }
        let mut parts: Vec<String> = Vec::new();
        if let Some(n) = s_net {
            parts.push(format!("-s {n}"));
        }
        if let Some(n) = d_net {
            parts.push(format!("-d {n}"));
        }
        // iptables lowercases the protocol; --dport loads its match where it
        // stands, after the set matches; the full range prints as nothing.
        let proto = proto.map(str::to_ascii_lowercase);
        if let Some(p) = &proto {
            parts.push(format!("-p {p}"));
        }
        parts.extend(matches);
        if let (Some(p), Some(port)) = (&proto, port) {
            if port == "0:65535" {
                parts.push(format!("-m {p}"));
            } else {
                parts.push(format!("-m {p} --dport {port}"));
            }
        }
        let dir = if egress { "egress" } else { "ingress" };
        parts.push(format!(
            "-m comment --comment {}",
            quote(&format!("{src_c} -> {dst_c} ({dir})"))
        ));
        RuleSpec {
            egress,
            text: parts.join(" "),
        }
    }

    /// The chain's rules (`iptRuleSpecs`): ingress accepts; egress marks
    /// then returns.
    fn rendered(&self) -> Vec<(&'static str, String)> {
        if self.egress {
            vec![
                (EGRESS_CUSTOM, format!("{} -j {EGRESS_ACCEPT}", self.text)),
                (EGRESS_CUSTOM, format!("{} -j RETURN", self.text)),
            ]
        } else {
            vec![(INGRESS, format!("{} -j ACCEPT", self.text))]
        }
    }
}

/// One policy analysed (npc/analyser.go `analysePolicy`): what it
/// provisions, in weave-npc's order (namespace selectors, pod selectors,
/// namespaced pod selectors, ipBlocks, rules).
#[derive(Debug, Default)]
struct Analysis {
    ns_selectors: Vec<SelSpec>,
    /// The target selector first, with the directions it isolates.
    pod_selectors: Vec<SelSpec>,
    target_types: (bool, bool),
    namespaced: Vec<SelSpec>,
    blocks: Vec<BlockSpec>,
    rules: Vec<RuleSpec>,
}

fn push_unique(v: &mut Vec<SelSpec>, s: SelSpec) {
    if !v.iter().any(|x| x.key == s.key) {
        v.push(s);
    }
}

/// The protocol and port strings of a rule's ports: TCP when none is
/// given, the port's number, `0:65535` without one (`endPort` is not in
/// the v0.18 API weave-npc reads, so it is not seen).
fn proto_ports(ports: &[NetworkPolicyPort]) -> Vec<(String, String)> {
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
            let port = match &p.port {
                None => "0:65535".to_string(),
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
            };
            (proto, port)
        })
        .collect()
}

/// Why weave-npc refuses a policy: "named ports in network policies is not
/// supported yet".
fn has_named_port(ports: &[NetworkPolicyPort]) -> bool {
    ports.iter().any(|p| matches!(p.port, Some(IntOrString::String(_))))
}

/// A peer's host, adding the selectors and ipBlocks it needs.
fn peer_host(a: &mut Analysis, peer: &NetworkPolicyPeer, ns: &str) -> Option<Host> {
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (Some(p), Some(n), _) => {
            let s = SelSpec::new(Some(p), Some(n), "");
            push_unique(&mut a.namespaced, s.clone());
            Some(Host::Sel(s))
        }
        (Some(p), None, _) => {
            let s = SelSpec::new(Some(p), None, ns);
            push_unique(&mut a.pod_selectors, s.clone());
            Some(Host::Sel(s))
        }
        (None, Some(n), _) => {
            let s = SelSpec::new(None, Some(n), "");
            if !a.ns_selectors.iter().any(|x| x.key == s.key) {
                a.ns_selectors.push(s.clone());
            }
            Some(Host::Sel(s))
        }
        (None, None, Some(b)) => {
            let b = BlockSpec::new(b, ns)?;
            if !b.key.is_empty() && !a.blocks.iter().any(|x| x.key == b.key) {
                a.blocks.push(b.clone());
            }
            Some(Host::Block(b))
        }
        (None, None, None) => None,
    }
}

/// `analysePolicy`; None when weave-npc rejects the policy (a named port).
fn analyse(p: &NetworkPolicy) -> Option<Analysis> {
    let ns = policy_namespace(p);
    let spec = p.spec.clone().unwrap_or_default();
    let ingress = spec.ingress.unwrap_or_default();
    let egress = spec.egress.unwrap_or_default();
    let named = ingress
        .iter()
        .any(|r| has_named_port(r.ports.as_deref().unwrap_or_default()))
        || egress
            .iter()
            .any(|r| has_named_port(r.ports.as_deref().unwrap_or_default()));
    if named {
        return None;
    }
    let mut a = Analysis {
        target_types: policy_types(p),
        ..Analysis::default()
    };
    let target = SelSpec::new(Some(&spec.pod_selector.clone().unwrap_or_default()), None, ns);
    a.pod_selectors.push(target.clone());
    let target = Host::Sel(target);
    let add = |a: &mut Analysis, r: RuleSpec| {
        if !a.rules.iter().any(|x| x.egress == r.egress && x.text == r.text) {
            a.rules.push(r);
        }
    };
    // Ingress and egress rules alike: (egress, ports, peers).
    let mut all: Vec<(bool, Vec<NetworkPolicyPort>, Vec<NetworkPolicyPeer>)> = Vec::new();
    for r in &ingress {
        all.push((
            false,
            r.ports.clone().unwrap_or_default(),
            r.from.clone().unwrap_or_default(),
        ));
    }
    for r in &egress {
        all.push((
            true,
            r.ports.clone().unwrap_or_default(),
            r.to.clone().unwrap_or_default(),
        ));
    }
    for (egress_dir, ports, peers) in all {
        let pp = proto_ports(&ports);
        let mut hosts: Vec<Option<Host>> = Vec::new();
        if peers.is_empty() {
            hosts.push(None);
        }
        for peer in &peers {
            let h = peer_host(&mut a, peer, ns);
            // An IPv6 ipBlock: iptables' IPv4 table cannot hold it.
            if h.is_none() && peer.ip_block.is_some() {
                continue;
            }
            hosts.push(h);
        }
        for h in &hosts {
            let (src, dst) = if egress_dir {
                (Some(&target), h.as_ref())
            } else {
                (h.as_ref(), Some(&target))
            };
            if pp.is_empty() {
                add(&mut a, RuleSpec::new(egress_dir, None, src, dst, None));
            } else {
                for (proto, port) in &pp {
                    add(&mut a, RuleSpec::new(egress_dir, Some(proto), src, dst, Some(port)));
                }
            }
        }
    }
    Some(a)
}

// ------------------------------------------------------------------ state --

/// A namespace as weave-npc's `ns` holds it.
struct Ns {
    name: String,
    labels: Labels,
    all_pods: String,
    ingress_allow: String,
    egress_allow: String,
}

/// Whether the controller adds its default egress drop for this policy
/// (controller.go `isEgressNetworkPolicy`, checked before the analysis, so
/// also for a policy it then rejects): Egress among its (defaulted)
/// policyTypes, or egress rules.
fn is_egress(p: &NetworkPolicy) -> bool {
    policy_types(p).1
        || p.spec
            .as_ref()
            .and_then(|s| s.egress.as_ref())
            .is_some_and(|e| !e.is_empty())
}

/// Provisions `specs` into `sets` in order (a selectorSet's `provision`):
/// false when one's set name is taken by a set of another selectorSet
/// (another content kind), where `ipset create` fails and weave-npc stops
/// provisioning the policy.
fn provision(sets: &mut BTreeMap<String, Content>, specs: impl IntoIterator<Item = (String, Content)>) -> bool {
    for (name, content) in specs {
        match sets.get(&name) {
            Some(c) if std::mem::discriminant(c) != std::mem::discriminant(&content) => return false,
            Some(_) => {}
            None => {
                sets.insert(name, content);
            }
        }
    }
    true
}

/// A policy's target in force: (namespace, pod selector, ingress, egress).
type Target = (String, LabelSelector, bool, bool);

/// What the policies provision, in order: the targets that isolate pods,
/// the rules (each once), and whether the default egress drop is there.
struct Provisioned {
    targets: Vec<Target>,
    rules: Vec<RuleSpec>,
    egress_drop: bool,
}

/// What weave-npc programs for `policies` acting on `world`; the same on
/// every node (`_node` is unused, as weave-npc's node name is).
pub fn npc_state(world: &World, policies: &[NetworkPolicy], _node: &str) -> NpcState {
    let mut pols: Vec<&NetworkPolicy> = policies.iter().collect();
    pols.sort_by_key(|p| (policy_namespace(p).to_string(), policy_name(p).to_string()));
    let nss = namespaces(world, &pols);
    let mut sets: BTreeMap<String, Content> = BTreeMap::new();
    for ns in &nss {
        // newNS: the default-allow sets and the all-pods selector's.
        for (name, content) in [
            (
                &ns.ingress_allow,
                Content::DefaultAllow {
                    ns: ns.name.clone(),
                    ingress: true,
                },
            ),
            (
                &ns.egress_allow,
                Content::DefaultAllow {
                    ns: ns.name.clone(),
                    ingress: false,
                },
            ),
            (
                &ns.all_pods,
                Content::Pods {
                    ns: ns.name.clone(),
                    sel: LabelSelector::default(),
                },
            ),
        ] {
            sets.insert(name.clone(), content);
        }
    }
    let prov = provision_policies(&pols, &mut sets);
    let mut ipsets = String::new();
    for (name, content) in &sets {
        let size = if matches!(content, Content::Namespaces { .. }) {
            format!(" size {MAX_LIST_SIZE}")
        } else {
            String::new()
        };
        let _ = writeln!(ipsets, "create {name} {}{size} comment -exist", content.kind());
    }
    for (name, content) in &sets {
        let _ = writeln!(ipsets, "flush {name}");
        for (entry, comment) in members(world, &nss, &prov.targets, content) {
            let _ = writeln!(ipsets, "add {name} {entry} comment \"{comment}\"");
        }
    }
    NpcState {
        iptables: render_chains(&nss, &prov),
        ipsets,
        sets: sets.keys().cloned().collect(),
    }
}

/// Every namespace weave-npc holds an `ns` for: the world's, its pods' and
/// the policies', by name.
fn namespaces(world: &World, pols: &[&NetworkPolicy]) -> Vec<Ns> {
    let mut names: BTreeSet<String> = world.namespaces.keys().cloned().collect();
    names.extend(world.pods.iter().map(|p| p.namespace.clone()));
    names.extend(pols.iter().map(|p| policy_namespace(p).to_string()));
    names
        .iter()
        .map(|n| Ns {
            name: n.clone(),
            labels: world.namespace_labels(n),
            all_pods: set_name(&format!("{n}:")),
            ingress_allow: set_name(&format!("ingress-default-allow:{n}")),
            egress_allow: set_name(&format!("egress-default-allow:{n}")),
        })
        .collect()
}

/// Each policy in turn as namespace.go `addNetworkPolicy` provisions it:
/// namespace selectors, pod selectors (the target with them), namespaced
/// pod selectors, ipBlocks, rules; a failed step ends the policy there.
fn provision_policies(pols: &[&NetworkPolicy], sets: &mut BTreeMap<String, Content>) -> Provisioned {
    let mut prov = Provisioned {
        targets: Vec::new(),
        rules: Vec::new(),
        egress_drop: false,
    };
    for p in pols {
        prov.egress_drop |= is_egress(p);
        let Some(a) = analyse(p) else {
            continue;
        };
        let spec = |s: &SelSpec| (s.set.clone(), s.content.clone());
        if !provision(sets, a.ns_selectors.iter().map(spec)) || !provision(sets, a.pod_selectors.iter().map(spec)) {
            continue;
        }
        if let Content::Pods { ns, sel } = &a.pod_selectors[0].content {
            prov.targets
                .push((ns.clone(), sel.clone(), a.target_types.0, a.target_types.1));
        }
        let blocks = a.blocks.iter().map(|b| {
            let content = Content::Except {
                cidr: b.cidr.clone(),
                except: b.except.clone(),
            };
            (b.set.clone(), content)
        });
        if !provision(sets, a.namespaced.iter().map(spec)) || !provision(sets, blocks) {
            continue;
        }
        for r in a.rules {
            if !prov.rules.iter().any(|x| x.egress == r.egress && x.text == r.text) {
                prov.rules.push(r);
            }
        }
    }
    prov
}

/// The seven chains: createBaseRules' (prog/weave-npc/main.go, allowMcast
/// on), the controller's default egress drop, each namespace's bypass rules
/// (namespace.go `bypassRules`), then the policies' rules.
fn render_chains(nss: &[Ns], prov: &Provisioned) -> String {
    let mut chains: BTreeMap<&str, Vec<String>> = CHAINS.iter().map(|c| (*c, Vec::new())).collect();
    let mut add = |chain: &'static str, rule: String| chains.entry(chain).or_default().push(rule);
    add(MAIN, "-m state --state RELATED,ESTABLISHED -j ACCEPT".into());
    add(MAIN, "-d 224.0.0.0/4 -j ACCEPT".into());
    add(
        MAIN,
        format!("-m physdev --physdev-out {BRIDGE_PORT} --physdev-is-bridged -j ACCEPT"),
    );
    add(MAIN, format!("-m state --state NEW -j {DEFAULT}"));
    add(MAIN, format!("-m state --state NEW -j {INGRESS}"));
    add(EGRESS_ACCEPT, format!("-j MARK --set-xmark {EGRESS_MARK}"));
    add(EGRESS, "-m state --state RELATED,ESTABLISHED -j ACCEPT".into());
    add(
        EGRESS,
        format!("-m physdev --physdev-in {BRIDGE_PORT} --physdev-is-bridged -j RETURN"),
    );
    add(EGRESS, "-m addrtype --dst-type LOCAL -j RETURN".into());
    add(EGRESS, "-d 224.0.0.0/4 -j RETURN".into());
    add(EGRESS, format!("-m state --state NEW -j {EGRESS_DEFAULT}"));
    let unmarked = format!("-m mark ! --mark {EGRESS_MARK}");
    add(EGRESS, format!("-m state --state NEW {unmarked} -j {EGRESS_CUSTOM}"));
    if prov.egress_drop {
        // controller.go AddNetworkPolicy, at the first egress policy.
        add(
            EGRESS,
            format!("-m state --state NEW {unmarked} -j NFLOG --nflog-group {NFLOG_GROUP}"),
        );
        add(EGRESS, format!("{unmarked} -j DROP"));
    }
    for ns in nss {
        let c = quote(&format!("DefaultAllow ingress isolation for namespace: {}", ns.name));
        let set = &ns.ingress_allow;
        add(
            DEFAULT,
            format!("-m set --match-set {set} dst -m comment --comment {c} -j ACCEPT"),
        );
        let c = quote(&format!("DefaultAllow egress isolation for namespace: {}", ns.name));
        let set = &ns.egress_allow;
        for target in [EGRESS_ACCEPT, "RETURN"] {
            add(
                EGRESS_DEFAULT,
                format!("-m set --match-set {set} src -m comment --comment {c} -j {target}"),
            );
        }
    }
    for r in &prov.rules {
        for (chain, rule) in r.rendered() {
            add(chain, rule);
        }
    }
    let mut out = String::from("*filter\n");
    for c in chains.keys() {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for (c, rules) in &chains {
        for r in rules {
            let _ = writeln!(out, "-A {c} {r}");
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// A set's members (entry, comment) as weave-npc adds them, sorted.
fn members(world: &World, nss: &[Ns], targets: &[Target], c: &Content) -> Vec<(String, String)> {
    let pod = |p: &PodInfo| (p.ip.to_string(), format!("namespace: {}, pod: {}", p.namespace, p.name));
    let mut pods: Vec<&PodInfo> = world.pods.iter().filter(|p| has_ip(p)).collect();
    match c {
        Content::Pods { ns, sel } => pods.retain(|p| p.namespace == *ns && matches_selector(sel, &p.labels)),
        Content::NamespacedPods { ns_sel, pod_sel } => pods.retain(|p| {
            matches_selector(ns_sel, &world.namespace_labels(&p.namespace)) && matches_selector(pod_sel, &p.labels)
        }),
        Content::DefaultAllow { ns, ingress } => pods.retain(|p| {
            p.namespace == *ns
                && !targets.iter().any(|(tns, sel, ing, eg)| {
                    tns == ns && if *ingress { *ing } else { *eg } && matches_selector(sel, &p.labels)
                })
        }),
        Content::Namespaces { sel } => {
            return nss
                .iter()
                .filter(|n| matches_selector(sel, &n.labels))
                .map(|n| (n.all_pods.clone(), format!("namespace: {}", n.name)))
                .collect();
        }
        Content::Except { cidr, except } => {
            let mut nets: Vec<Ipv4Net> = except
                .iter()
                .filter_map(|e| e.parse::<Ipv4Net>().ok())
                .map(|n| n.trunc())
                .collect();
            nets.sort();
            nets.dedup();
            return nets
                .iter()
                .map(|n| (n.to_string(), format!("excepted from {cidr}")))
                .collect();
        }
    }
    pods.sort_by_key(|p| p.ip);
    pods.dedup_by_key(|p| p.ip);
    pods.into_iter().map(pod).collect()
}

fn has_ip(p: &PodInfo) -> bool {
    p.ip != Ipv4Addr::UNSPECIFIED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::netpol::NAMESPACE_NAME_LABEL;

    /// The e2e world: namespaces x, y, z (label `ns`) with pods a, b, c
    /// (label `pod`); x/a is 10.0.1.10, ..., z/c 10.0.3.12.
    fn world() -> World {
        let mut w = World::default();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            w.namespaces.insert(
                ns.to_string(),
                [
                    ("ns".to_string(), ns.to_string()),
                    (NAMESPACE_NAME_LABEL.to_string(), ns.to_string()),
                ]
                .into(),
            );
            for (j, pod) in ["a", "b", "c"].iter().enumerate() {
                w.pods.push(PodInfo {
                    node: format!("node-{}", j + 1),
                    name: pod.to_string(),
                    namespace: ns.to_string(),
                    labels: [("pod".to_string(), pod.to_string())].into(),
                    ip: Ipv4Addr::new(10, 0, i as u8 + 1, j as u8 + 10),
                    ports: Vec::new(),
                    host_iface: String::new(),
                });
            }
        }
        w
    }

    fn np(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).expect("policy YAML")
    }

    fn manifests(file: &str) -> Vec<NetworkPolicy> {
        let path = format!("{}/../topologies/netpol/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let src = crate::model::error::Source::new(path, text);
        crate::model::netpol::load::parse_manifests(&src)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"))
            .into_iter()
            .map(|m| m.policy)
            .collect()
    }

    /// The rules of one chain, without the `-A <chain> ` head.
    fn rules(text: &str, chain: &str) -> Vec<String> {
        let head = format!("-A {chain} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&head))
            .map(str::to_string)
            .collect()
    }

    const DENY_INGRESS: &str = "
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";
    const FROM_NS_Y: &str = "
metadata: {name: x-a-from-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
";

    /// Computed with Python's hashlib and divmod by 85 (shortname.go).
    #[test]
    fn short_names_match_reference_vectors() {
        for (key, name) in [
            ("x:", "plMoi)0o:3$2dEDVZL5..%bzP"),
            ("ingress-default-allow:x", ":h$vEcQ:_vE0r{2M5|:Y3%o@x"),
            ("egress-default-allow:x", "|_l5|Q~gFOjOnY%^1V{R1uglQ"),
            (":ns=y", "ICu_GeUTkMV)eKiwgur+_vP/l"),
            ("x:pod=a", "Fi#ARirB~zaBpV8~)GdZpbG#o"),
            ("x:ipblock-except:10.244.76.0/24", "y/JfS1Uh;epj++iq|aS.J|FDf"),
            ("", "3}|vDwRlf1{+./B)XI7LLc;W9"),
            ("hello", "b^PGr#picG7yM!9(Ym*|V~tuW"),
        ] {
            assert_eq!(short_name(key), name, "shortName({key:?})");
            assert!(set_name(key).len() <= 31);
        }
    }

    /// As apimachinery v0.18's `labels.Selector.String()` prints them.
    #[test]
    fn selectors_print_as_apimachinery_does() {
        let sel = |y: &str| -> LabelSelector { serde_yaml::from_str(y).unwrap() };
        assert_eq!(selector_string(&sel("{}")), "");
        assert_eq!(
            selector_string(&sel("{matchLabels: {pod: a, app: web}}")),
            "app=web,pod=a"
        );
        assert_eq!(
            selector_string(&sel(
                "{matchLabels: {pod: a}, matchExpressions: [{key: pod, operator: In, values: [c, b]}, {key: app, operator: DoesNotExist}, {key: tier, operator: Exists}, {key: ns, operator: NotIn, values: [x]}]}"
            )),
            "!app,ns notin (x),pod=a,pod in (b,c),tier"
        );
    }

    /// Default deny of ingress in x and x/a allowed from namespace y: every
    /// chain and set exactly, as the Go code makes them (reasoned from
    /// main.go createBaseRules, namespace.go, analyser.go, rule.go).
    #[test]
    fn deny_and_allow_from_namespace_exact() {
        let s = npc_state(&world(), &[np(FROM_NS_Y), np(DENY_INGRESS)], "node-1");
        assert_eq!(s.iptables, DENY_AND_FROM_NS_IPTABLES);
        assert_eq!(s.ipsets, DENY_AND_FROM_NS_IPSETS);
        // weave-npc is not per node.
        assert_eq!(s, npc_state(&world(), &[np(DENY_INGRESS), np(FROM_NS_Y)], "node-3"));
    }

    /// The sets `ipsets` creates, and (set, entry) of every `add`.
    fn created(ipsets: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
        let names = ipsets
            .lines()
            .filter_map(|l| l.strip_prefix("create "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        let adds = ipsets
            .lines()
            .filter_map(|l| l.strip_prefix("add "))
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect();
        (names, adds)
    }

    /// Every set a rule matches and every list:set member is created, and
    /// every WEAVE-NPC chain a rule jumps to is declared.
    fn assert_consistent(s: &NpcState, what: &str) {
        let (sets, adds) = created(&s.ipsets);
        assert_eq!(sets.iter().cloned().collect::<Vec<_>>(), s.sets, "{what}");
        for l in s.iptables.lines().filter(|l| l.starts_with("-A ")) {
            let words: Vec<&str> = l.split(' ').collect();
            for (i, w) in words.iter().enumerate() {
                if *w == "--match-set" {
                    assert!(sets.contains(words[i + 1]), "{what}: {l} matches a set never created");
                }
                if *w == "-j" && words[i + 1].starts_with(CHAIN_PREFIX) {
                    assert!(CHAINS.contains(&words[i + 1]), "{what}: {l} jumps to no chain");
                }
            }
        }
        for (set, entry) in &adds {
            if entry.starts_with(IPSET_PREFIX) {
                assert!(sets.contains(entry), "{what}: {set} lists {entry}, never created");
            }
        }
        let declared: Vec<&str> = s.iptables.lines().filter_map(|l| l.strip_prefix(':')).collect();
        assert_eq!(declared.len(), CHAINS.len(), "{what}");
    }

    /// Every e2e manifest of topologies/netpol, alone and all together,
    /// over the e2e world: the rules refer only to sets that are created.
    #[test]
    fn e2e_manifests_refer_only_to_created_sets() {
        let dir = format!("{}/../topologies/netpol", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("topologies/netpol")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.ends_with(".yaml"))
            .collect();
        files.sort();
        assert!(files.len() >= 15, "{files:?}");
        let mut all = Vec::new();
        for f in &files {
            let pols = manifests(f);
            let s = npc_state(&world(), &pols, "node-1");
            assert_consistent(&s, f);
            let rule_count = rules(&s.iptables, INGRESS).len() + rules(&s.iptables, EGRESS_CUSTOM).len();
            let expect_rules = !f.starts_with("deny-") && f != "named-port.yaml";
            assert_eq!(rule_count > 0, expect_rules, "{f}:\n{}", s.iptables);
            let drop = rules(&s.iptables, EGRESS).iter().any(|r| r.ends_with("-j DROP"));
            assert_eq!(drop, pols.iter().any(is_egress), "{f}");
            all.extend(pols);
        }
        assert_consistent(&npc_state(&world(), &all, "node-1"), "all manifests");
    }

    /// weave-npc rejects a policy with a named port (analyser.go
    /// checkForNamedPorts): no rule, and its pods stay default-allowed.
    #[test]
    fn named_ports_are_rejected() {
        let s = npc_state(&world(), &manifests("named-port.yaml"), "node-1");
        assert!(rules(&s.iptables, INGRESS).is_empty(), "{}", s.iptables);
        let allow_x = set_name("ingress-default-allow:x");
        assert!(s.ipsets.contains(&format!("add {allow_x} 10.0.1.10 ")), "{}", s.ipsets);
    }

    /// endPort is not in the API weave-npc reads: only `port` counts.
    #[test]
    fn end_port_is_not_seen() {
        let s = npc_state(&world(), &manifests("end-port.yaml"), "node-1");
        let target = set_name("x:pod=a");
        assert_eq!(
            rules(&s.iptables, INGRESS),
            [
                format!(
                    "-p tcp -m set --match-set {target} dst -m tcp --dport 81 -m comment --comment \"anywhere -> pods: namespace: x, selector: pod=a (ingress)\" -j ACCEPT"
                ),
                format!(
                    "-p udp -m set --match-set {target} dst -m udp --dport 81 -m comment --comment \"anywhere -> pods: namespace: x, selector: pod=a (ingress)\" -j ACCEPT"
                ),
            ]
        );
    }

    /// An egress ipBlock with an except: the hash:net set of excepted CIDRs,
    /// matched negated, each rule as a mark and a return, and the default
    /// egress drop.
    #[test]
    fn egress_ip_block_with_except() {
        let s = npc_state(&world(), &manifests("canal-ipblock-except.yaml"), "node-1");
        let target = "weave-Fi#ARirB~zaBpV8~)GdZpbG#o";
        let except = "weave-y/JfS1Uh;epj++iq|aS.J|FDf";
        let body = format!(
            "-d 10.244.0.0/16 -m set --match-set {target} src -m set ! --match-set {except} dst -m comment --comment \"pods: namespace: x, selector: pod=a -> cidr: 10.244.0.0/16 except [10.244.76.0/24] (egress)\""
        );
        assert_eq!(
            rules(&s.iptables, EGRESS_CUSTOM),
            [
                format!("{body} -j WEAVE-NPC-EGRESS-ACCEPT"),
                format!("{body} -j RETURN")
            ]
        );
        assert!(rules(&s.iptables, INGRESS).is_empty());
        assert!(s.ipsets.contains(&format!("create {except} hash:net comment -exist\n")));
        assert!(s.ipsets.contains(&format!(
            "add {except} 10.244.76.0/24 comment \"excepted from 10.244.0.0/16\"\n"
        )));
        let egress_allow_x = set_name("egress-default-allow:x");
        let (_, adds) = created(&s.ipsets);
        let allowed: Vec<&str> = adds
            .iter()
            .filter(|(s, _)| *s == egress_allow_x)
            .map(|(_, e)| e.as_str())
            .collect();
        assert_eq!(allowed, ["10.0.1.11", "10.0.1.12"]);
        assert_eq!(
            rules(&s.iptables, EGRESS)[6..],
            [
                "-m state --state NEW -m mark ! --mark 0x40000/0x40000 -j NFLOG --nflog-group 86".to_string(),
                "-m mark ! --mark 0x40000/0x40000 -j DROP".to_string(),
            ]
        );
    }

    /// A namespace selector and the same namespace selector with an empty
    /// pod selector name the same ipset (`weave-` + shortName(":ns=y")) of
    /// two types: `ipset create` fails for the second, which weave-npc then
    /// leaves half provisioned: its target isolated, without its rules.
    #[test]
    fn clashing_set_names_stop_the_later_policy() {
        let a = np("
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
");
        let b = np("
metadata: {name: b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}}]}]
");
        let s = npc_state(&world(), &[b, a], "node-1");
        assert_consistent(&s, "clash");
        let ingress = rules(&s.iptables, INGRESS);
        assert_eq!(ingress.len(), 1, "{ingress:?}");
        assert!(ingress[0].contains("selector: pod=a (ingress)"));
        let allow_x = set_name("ingress-default-allow:x");
        let (_, adds) = created(&s.ipsets);
        let allowed: Vec<&str> = adds
            .iter()
            .filter(|(s, _)| *s == allow_x)
            .map(|(_, e)| e.as_str())
            .collect();
        assert_eq!(allowed, ["10.0.1.12"]);
    }

    fn run(program: &str, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(text) = input {
            stdin.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\ninput:\n{}",
            String::from_utf8_lossy(&out.stderr),
            input.unwrap_or("")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `state`'s restore input with the FORWARD and INPUT rules put in place
    /// as ops/policy.rs does (the top ones deleted first when `again`).
    fn restore_input(state: &PolicyState, again: bool) -> String {
        let mut extra = String::new();
        if again {
            for (c, r) in &state.top {
                extra.push_str(&format!("-D {c} {r}\n"));
            }
        }
        for (i, (c, r)) in state.top.iter().enumerate() {
            extra.push_str(&format!("-I {c} {} {r}\n", i + 1));
        }
        if !again {
            for (c, r) in &state.append {
                extra.push_str(&format!("-A {c} {r}\n"));
            }
        }
        state.iptables.replace("COMMIT\n", &format!("{extra}COMMIT\n"))
    }

    /// The generated text loads into the real iptables-restore and ipset in
    /// a scratch network namespace (gone when its thread ends), and
    /// iptables-save prints the chains back line for line, FORWARD and INPUT
    /// as weaver has them; loading again changes nothing.
    #[test]
    fn loads_into_the_kernel_and_saves_back_identically() {
        let mut pols = Vec::new();
        for f in [
            "deny-ingress-x.yaml",
            "allow-from-namespace.yaml",
            "pod-and-namespace.yaml",
            "canal-ipblock-except.yaml",
            "port-81.yaml",
            "egress-tcp-only.yaml",
            "all-namespaces.yaml",
            "ns-match-expressions.yaml",
        ] {
            pols.extend(manifests(f));
        }
        let state = policy_state(&world(), &pols, "node-1");
        let ours: Vec<&str> = state
            .iptables
            .lines()
            .filter(|l| l.starts_with(':') || l.starts_with("-A "))
            .collect();
        let (_, adds) = created(&state.ipsets);
        let our_adds: BTreeSet<String> = state
            .ipsets
            .lines()
            .filter(|l| l.starts_with("add "))
            .map(str::to_string)
            .collect();
        assert!(adds.len() > 20);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("unshare(CLONE_NEWNET): this test needs root");
                    for again in [false, true] {
                        run("ipset", &["restore", "-exist"], Some(&state.ipsets));
                        run(
                            "iptables-restore",
                            &["--noflush", "--wait"],
                            Some(&restore_input(&state, again)),
                        );
                        let save = run("iptables-save", &["-t", "filter"], None);
                        let theirs: Vec<&str> = save
                            .lines()
                            .filter(|l| l.starts_with(":WEAVE") || l.starts_with("-A WEAVE"))
                            .collect();
                        assert_eq!(theirs, ours, "{save}");
                        assert_eq!(rules(&save, "FORWARD"), forward_rules(), "{save}");
                        assert_eq!(rules(&save, "INPUT"), [input_rule()], "{save}");
                        let saved = run("ipset", &["save"], None);
                        let their_adds: BTreeSet<String> = saved
                            .lines()
                            .filter(|l| l.starts_with("add "))
                            .map(str::to_string)
                            .collect();
                        assert_eq!(their_adds, our_adds);
                        let (names, _) = created(&saved);
                        assert_eq!(names.into_iter().collect::<Vec<_>>(), state.sets);
                    }
                })
                .join()
                .expect("the scratch namespace's thread");
        });
    }

    const DENY_AND_FROM_NS_IPTABLES: &str = r#"*filter
:WEAVE-NPC - [0:0]
:WEAVE-NPC-DEFAULT - [0:0]
:WEAVE-NPC-EGRESS - [0:0]
:WEAVE-NPC-EGRESS-ACCEPT - [0:0]
:WEAVE-NPC-EGRESS-CUSTOM - [0:0]
:WEAVE-NPC-EGRESS-DEFAULT - [0:0]
:WEAVE-NPC-INGRESS - [0:0]
-A WEAVE-NPC -m state --state RELATED,ESTABLISHED -j ACCEPT
-A WEAVE-NPC -d 224.0.0.0/4 -j ACCEPT
-A WEAVE-NPC -m physdev --physdev-out vethwe-bridge --physdev-is-bridged -j ACCEPT
-A WEAVE-NPC -m state --state NEW -j WEAVE-NPC-DEFAULT
-A WEAVE-NPC -m state --state NEW -j WEAVE-NPC-INGRESS
-A WEAVE-NPC-DEFAULT -m set --match-set weave-:h$vEcQ:_vE0r{2M5|:Y3%o@x dst -m comment --comment "DefaultAllow ingress isolation for namespace: x" -j ACCEPT
-A WEAVE-NPC-DEFAULT -m set --match-set weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K dst -m comment --comment "DefaultAllow ingress isolation for namespace: y" -j ACCEPT
-A WEAVE-NPC-DEFAULT -m set --match-set weave-qsveoF=+#m3d=*%@{bj+kGCf5 dst -m comment --comment "DefaultAllow ingress isolation for namespace: z" -j ACCEPT
-A WEAVE-NPC-EGRESS -m state --state RELATED,ESTABLISHED -j ACCEPT
-A WEAVE-NPC-EGRESS -m physdev --physdev-in vethwe-bridge --physdev-is-bridged -j RETURN
-A WEAVE-NPC-EGRESS -m addrtype --dst-type LOCAL -j RETURN
-A WEAVE-NPC-EGRESS -d 224.0.0.0/4 -j RETURN
-A WEAVE-NPC-EGRESS -m state --state NEW -j WEAVE-NPC-EGRESS-DEFAULT
-A WEAVE-NPC-EGRESS -m state --state NEW -m mark ! --mark 0x40000/0x40000 -j WEAVE-NPC-EGRESS-CUSTOM
-A WEAVE-NPC-EGRESS-ACCEPT -j MARK --set-xmark 0x40000/0x40000
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-|_l5|Q~gFOjOnY%^1V{R1uglQ src -m comment --comment "DefaultAllow egress isolation for namespace: x" -j WEAVE-NPC-EGRESS-ACCEPT
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-|_l5|Q~gFOjOnY%^1V{R1uglQ src -m comment --comment "DefaultAllow egress isolation for namespace: x" -j RETURN
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-nQ9P1{4paeaXJD=P~8_U8LcbK src -m comment --comment "DefaultAllow egress isolation for namespace: y" -j WEAVE-NPC-EGRESS-ACCEPT
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-nQ9P1{4paeaXJD=P~8_U8LcbK src -m comment --comment "DefaultAllow egress isolation for namespace: y" -j RETURN
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-jY4F][II1aU#Af+7Ha:yoL$Gk src -m comment --comment "DefaultAllow egress isolation for namespace: z" -j WEAVE-NPC-EGRESS-ACCEPT
-A WEAVE-NPC-EGRESS-DEFAULT -m set --match-set weave-jY4F][II1aU#Af+7Ha:yoL$Gk src -m comment --comment "DefaultAllow egress isolation for namespace: z" -j RETURN
-A WEAVE-NPC-INGRESS -m set --match-set weave-ICu_GeUTkMV)eKiwgur+_vP/l src -m set --match-set weave-Fi#ARirB~zaBpV8~)GdZpbG#o dst -m comment --comment "namespaces: selector: ns=y -> pods: namespace: x, selector: pod=a (ingress)" -j ACCEPT
COMMIT
"#;

    const DENY_AND_FROM_NS_IPSETS: &str = r#"create weave-(~HfXKx6c9G}s*ieuYYP].UdN hash:ip comment -exist
create weave-:h$vEcQ:_vE0r{2M5|:Y3%o@x hash:ip comment -exist
create weave-Fi#ARirB~zaBpV8~)GdZpbG#o hash:ip comment -exist
create weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K hash:ip comment -exist
create weave-ICu_GeUTkMV)eKiwgur+_vP/l list:set size 1024 comment -exist
create weave-_z*Z^u|tFh;#U^v4ut#:$Mu45 hash:ip comment -exist
create weave-jY4F][II1aU#Af+7Ha:yoL$Gk hash:ip comment -exist
create weave-nQ9P1{4paeaXJD=P~8_U8LcbK hash:ip comment -exist
create weave-plMoi)0o:3$2dEDVZL5..%bzP hash:ip comment -exist
create weave-qsveoF=+#m3d=*%@{bj+kGCf5 hash:ip comment -exist
create weave-|_l5|Q~gFOjOnY%^1V{R1uglQ hash:ip comment -exist
flush weave-(~HfXKx6c9G}s*ieuYYP].UdN
add weave-(~HfXKx6c9G}s*ieuYYP].UdN 10.0.3.10 comment "namespace: z, pod: a"
add weave-(~HfXKx6c9G}s*ieuYYP].UdN 10.0.3.11 comment "namespace: z, pod: b"
add weave-(~HfXKx6c9G}s*ieuYYP].UdN 10.0.3.12 comment "namespace: z, pod: c"
flush weave-:h$vEcQ:_vE0r{2M5|:Y3%o@x
flush weave-Fi#ARirB~zaBpV8~)GdZpbG#o
add weave-Fi#ARirB~zaBpV8~)GdZpbG#o 10.0.1.10 comment "namespace: x, pod: a"
flush weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K
add weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K 10.0.2.10 comment "namespace: y, pod: a"
add weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K 10.0.2.11 comment "namespace: y, pod: b"
add weave-HNzhr7ZRm]QLZf*|Dq]ltK5:K 10.0.2.12 comment "namespace: y, pod: c"
flush weave-ICu_GeUTkMV)eKiwgur+_vP/l
add weave-ICu_GeUTkMV)eKiwgur+_vP/l weave-_z*Z^u|tFh;#U^v4ut#:$Mu45 comment "namespace: y"
flush weave-_z*Z^u|tFh;#U^v4ut#:$Mu45
add weave-_z*Z^u|tFh;#U^v4ut#:$Mu45 10.0.2.10 comment "namespace: y, pod: a"
add weave-_z*Z^u|tFh;#U^v4ut#:$Mu45 10.0.2.11 comment "namespace: y, pod: b"
add weave-_z*Z^u|tFh;#U^v4ut#:$Mu45 10.0.2.12 comment "namespace: y, pod: c"
flush weave-jY4F][II1aU#Af+7Ha:yoL$Gk
add weave-jY4F][II1aU#Af+7Ha:yoL$Gk 10.0.3.10 comment "namespace: z, pod: a"
add weave-jY4F][II1aU#Af+7Ha:yoL$Gk 10.0.3.11 comment "namespace: z, pod: b"
add weave-jY4F][II1aU#Af+7Ha:yoL$Gk 10.0.3.12 comment "namespace: z, pod: c"
flush weave-nQ9P1{4paeaXJD=P~8_U8LcbK
add weave-nQ9P1{4paeaXJD=P~8_U8LcbK 10.0.2.10 comment "namespace: y, pod: a"
add weave-nQ9P1{4paeaXJD=P~8_U8LcbK 10.0.2.11 comment "namespace: y, pod: b"
add weave-nQ9P1{4paeaXJD=P~8_U8LcbK 10.0.2.12 comment "namespace: y, pod: c"
flush weave-plMoi)0o:3$2dEDVZL5..%bzP
add weave-plMoi)0o:3$2dEDVZL5..%bzP 10.0.1.10 comment "namespace: x, pod: a"
add weave-plMoi)0o:3$2dEDVZL5..%bzP 10.0.1.11 comment "namespace: x, pod: b"
add weave-plMoi)0o:3$2dEDVZL5..%bzP 10.0.1.12 comment "namespace: x, pod: c"
flush weave-qsveoF=+#m3d=*%@{bj+kGCf5
add weave-qsveoF=+#m3d=*%@{bj+kGCf5 10.0.3.10 comment "namespace: z, pod: a"
add weave-qsveoF=+#m3d=*%@{bj+kGCf5 10.0.3.11 comment "namespace: z, pod: b"
add weave-qsveoF=+#m3d=*%@{bj+kGCf5 10.0.3.12 comment "namespace: z, pod: c"
flush weave-|_l5|Q~gFOjOnY%^1V{R1uglQ
add weave-|_l5|Q~gFOjOnY%^1V{R1uglQ 10.0.1.10 comment "namespace: x, pod: a"
add weave-|_l5|Q~gFOjOnY%^1V{R1uglQ 10.0.1.11 comment "namespace: x, pod: b"
add weave-|_l5|Q~gFOjOnY%^1V{R1uglQ 10.0.1.12 comment "namespace: x, pod: c"
"#;
}

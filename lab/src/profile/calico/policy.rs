//! What Calico's felix (v3.30.7, iptables mode, default configuration)
//! programs on one node for Kubernetes NetworkPolicy: the `cali-` chains of
//! the filter table that police workload traffic in FORWARD, and the IP sets
//! their rules match. Pure: text for `iptables-restore --noflush` and for
//! `ipset restore`, byte-deterministic. The facts, with the Calico source
//! files they come from, are in docs/felix-facts.md.
//!
//! The conversion follows Calico's: a Kubernetes policy becomes the Calico
//! policy `knp.default.<name>` in tier `default` (order 1000), its selectors
//! become Calico selector strings, normalised as Calico's parser prints them,
//! and every rule selector an IP set named after the hash of that string.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::netpol::{Labels, NetworkPolicy, PodInfo, Proto, World, policy_name, policy_namespace};
use crate::profile::PolicyState;

/// Felix's accept mark bit (the first bit of its default mark mask 0xffff0000).
pub const MARK_ACCEPT: u32 = 0x10000;
/// Felix's pass mark bit.
pub const MARK_PASS: u32 = 0x20000;
/// Felix's drop mark bit (allocated; unused by these chains).
pub const MARK_DROP: u32 = 0x40000;
/// Felix's first scratch bit ("all blocks pass" of multi-rule matches).
pub const MARK_SCRATCH0: u32 = 0x80000;
/// Felix's second scratch bit ("this block passes").
pub const MARK_SCRATCH1: u32 = 0x100000;
/// The rule felix inserts at the top of the filter table's FORWARD chain
/// (without felix's `cali:<hash>` comment); the caller inserts it once.
pub const FORWARD_JUMP: &str = "-j cali-FORWARD";
/// The rules felix appends at the end of FORWARD, in order (a packet that
/// policy accepted returns through cali-FORWARD and is accepted here).
pub const FORWARD_APPEND: [&str; 2] = [
    "-m comment --comment \"Policy explicitly accepted packet.\" -m mark --mark 0x10000/0x10000 -j ACCEPT",
    "-j MARK --set-xmark 0x10000/0x10000",
];
/// Felix's workload interface prefix (`InterfacePrefix`, default `cali`).
const IFACE_PREFIX: &str = "cali";
/// iptables' limit on chain names, which felix hashes longer names to meet.
const MAX_CHAIN_NAME: usize = 28;
/// The kernel's limit on IP set names.
const MAX_IPSET_NAME: usize = 31;
/// Felix's `MaxIpsetSize` default.
const IPSET_MAXELEM: u32 = 1048576;
/// Felix's `VXLANPort` default, whose packets from workloads it drops.
const VXLAN_PORT: u16 = 4789;
/// The tier Kubernetes policies go to.
const TIER: &str = "default";

/// What felix programs on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FelixState {
    /// Input for `iptables-restore --noflush`: table `*filter`, every cali-
    /// chain declared (which flushes it) then filled, then `COMMIT`.
    pub iptables: String,
    /// Input for `ipset restore`: each set created (`-exist`), flushed and
    /// filled, sets and members sorted.
    pub ipsets: String,
}

/// What felix programs in `node`'s namespace for its local workloads (the
/// pods of `world` on `node`, hooked at their `host_iface`) under these
/// policies. IP sets hold the matching pods of the whole world.
pub fn felix_state(world: &World, policies: &[NetworkPolicy], node: &str) -> FelixState {
    let pols = convert_policies(policies);
    let mut locals: Vec<&PodInfo> = world.pods.iter().filter(|p| p.node == node).collect();
    locals.sort_by(|a, b| a.host_iface.cmp(&b.host_iface));
    locals.dedup_by(|a, b| a.host_iface == b.host_iface);

    let mut chains: BTreeMap<String, Vec<R>> = BTreeMap::new();
    static_chains(&mut chains);
    let ifaces: Vec<String> = locals.iter().map(|p| p.host_iface.clone()).collect();
    dispatch_chains(&mut chains, &ifaces, "cali-from-wl-dispatch", "cali-fw-", true);
    dispatch_chains(&mut chains, &ifaces, "cali-to-wl-dispatch", "cali-tw-", false);

    let mut active: BTreeSet<usize> = BTreeSet::new();
    let mut profiles: BTreeSet<String> = BTreeSet::new();
    for pod in &locals {
        let labels = endpoint_labels(world, pod);
        let matching: Vec<usize> = (0..pols.len()).filter(|&i| pols[i].sel.eval(&labels)).collect();
        active.extend(matching.iter().copied());
        let ingress: Vec<usize> = matching.iter().copied().filter(|&i| pols[i].ingress).collect();
        let egress: Vec<usize> = matching.iter().copied().filter(|&i| pols[i].egress).collect();
        let profs = vec![
            format!("kns.{}", pod.namespace),
            format!("ksa.{}.default", pod.namespace),
        ];
        for (dir, pols_dir) in [(Dir::In, &ingress), (Dir::Out, &egress)] {
            let groups = group_policies(&pols, pols_dir, dir, &mut chains);
            let name = limited_id(dir.endpoint_prefix(), &pod.host_iface, MAX_CHAIN_NAME);
            let rules = endpoint_chain(dir, &groups, &profs);
            chains.insert(name, rules);
        }
        profiles.extend(profs);
    }
    let mut sets: BTreeMap<String, IpSet> = BTreeMap::new();
    for &i in &active {
        let pol = &pols[i];
        // The rule scanner activates the IP sets of both directions' rules.
        for pr in pol.in_rules.iter().chain(&pol.out_rules) {
            for s in pr.src_sets.iter().chain(&pr.dst_sets).chain(&pr.dst_named) {
                sets.insert(s.name.clone(), s.clone());
            }
        }
        if pol.ingress {
            chains.insert(pol.chain(Dir::In), policy_chain(pol, Dir::In));
        }
        if pol.egress {
            chains.insert(pol.chain(Dir::Out), policy_chain(pol, Dir::Out));
        }
    }
    for prof in &profiles {
        profile_chains(&mut chains, prof);
    }
    FelixState {
        iptables: render_iptables(&chains),
        ipsets: render_ipsets(world, &sets),
    }
}

/// Felix's [`PolicyState`] on `node`: [`felix_state`] with each pod hooked
/// at the host-side veth the calico plugin names for it, felix's jump at
/// the top of FORWARD and its two rules at the end.
pub fn policy_state(world: &World, policies: &[NetworkPolicy], node: &str) -> PolicyState {
    let mut w = world.clone();
    for p in &mut w.pods {
        p.host_iface = super::plugin::host_veth_name(&p.namespace, &p.name);
    }
    let s = felix_state(&w, policies, node);
    PolicyState {
        chains: chains(&s),
        sets: ipset_names(&s),
        iptables: s.iptables,
        ipsets: s.ipsets,
        top: vec![("FORWARD", FORWARD_JUMP.to_string())],
        append: FORWARD_APPEND.iter().map(|r| ("FORWARD", r.to_string())).collect(),
        prefixes: vec![IFACE_PREFIX],
    }
}

/// Every chain `state` declares, in its order (sorted).
pub fn chains(state: &FelixState) -> Vec<String> {
    state
        .iptables
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// Every IP set `state` creates, sorted.
pub fn ipset_names(state: &FelixState) -> Vec<String> {
    state
        .ipsets
        .lines()
        .filter_map(|l| l.strip_prefix("create "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- rules --

/// One iptables rule as `iptables-save` prints it: the basic matches first
/// (source, destination, interfaces, protocol), then felix's comments and
/// other matches in felix's order, then the target.
#[derive(Debug, Clone, Default)]
struct R {
    s: Option<String>,
    d: Option<String>,
    i: Option<String>,
    o: Option<String>,
    p: Option<String>,
    comments: Vec<String>,
    m: Vec<String>,
    j: String,
}

impl R {
    fn target(j: impl Into<String>) -> R {
        R {
            j: j.into(),
            ..R::default()
        }
    }
    fn comment(mut self, c: &str) -> R {
        self.comments.push(escape_comment(c));
        self
    }
    fn matching(mut self, m: impl Into<String>) -> R {
        self.m.push(m.into());
        self
    }
    fn render(&self, chain: &str) -> String {
        let mut parts = vec![format!("-A {chain}")];
        for (flag, v) in [
            ("-s", &self.s),
            ("-d", &self.d),
            ("-i", &self.i),
            ("-o", &self.o),
            ("-p", &self.p),
        ] {
            if let Some(v) = v {
                match v.strip_prefix('!') {
                    Some(v) => parts.push(format!("! {flag} {v}")),
                    None => parts.push(format!("{flag} {v}")),
                }
            }
        }
        parts.extend(self.comments.iter().map(|c| format!("-m comment --comment \"{c}\"")));
        parts.extend(self.m.iter().cloned());
        if !self.j.is_empty() {
            parts.push(self.j.clone());
        }
        parts.join(" ")
    }
}

/// felix's iptables renderer replaces anything but `[\w @%+=:,./-]` by `_`.
fn escape_comment(c: &str) -> String {
    c.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || " _@%+=:,./-".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

/// `-j MARK --set-mark v/m` as iptables-save prints it.
fn set_mark(value: u32, mask: u32) -> String {
    format!("-j MARK --set-xmark {}/{mask:#x}", hex0(value))
}

/// `-m mark --mark v/m` as iptables-save prints it.
fn mark_match(value: u32, mask: u32) -> String {
    format!("-m mark --mark {}/{mask:#x}", hex0(value))
}

fn hex0(v: u32) -> String {
    format!("{v:#x}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn endpoint_prefix(self) -> &'static str {
        match self {
            Dir::In => "cali-tw-",
            Dir::Out => "cali-fw-",
        }
    }
    fn policy_prefix(self) -> &'static str {
        match self {
            Dir::In => "cali-pi-",
            Dir::Out => "cali-po-",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Dir::In => "ingress",
            Dir::Out => "egress",
        }
    }
}

/// cali-FORWARD (static.go, StaticFilterForwardChains) and the host
/// endpoint and service-loop chains it jumps to, empty without host
/// endpoints and service CIDRs.
fn static_chains(chains: &mut BTreeMap<String, Vec<R>>) {
    let all_but_accept = (MARK_ACCEPT | MARK_PASS | MARK_SCRATCH0 | MARK_SCRATCH1) & !MARK_ACCEPT;
    let wl = format!("{IFACE_PREFIX}+");
    let fwd = vec![
        R::target(set_mark(0, all_but_accept)),
        R::target("-j cali-from-hep-forward").matching(mark_match(0, MARK_ACCEPT)),
        R {
            i: Some(wl.clone()),
            ..R::target("-j cali-from-wl-dispatch")
        },
        R {
            o: Some(wl),
            ..R::target("-j cali-to-wl-dispatch")
        },
        R::target("-j cali-to-hep-forward"),
        R::target("-j cali-cidr-block"),
    ];
    chains.insert("cali-FORWARD".into(), fwd);
    for empty in ["cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block"] {
        chains.insert(empty.into(), Vec::new());
    }
}

/// A workload dispatch chain (dispatch.go): interfaces sorted, binned by
/// the character after their common prefix; a bin of several gets a child
/// chain `<root>-<char>` reached by goto; each chain ends "Unknown interface".
fn dispatch_chains(chains: &mut BTreeMap<String, Vec<R>>, ifaces: &[String], root: &str, pfx: &str, inbound: bool) {
    let iface_rule = |iface: &str, target: String| {
        let r = R::target(target);
        if inbound {
            R {
                i: Some(iface.to_string()),
                ..r
            }
        } else {
            R {
                o: Some(iface.to_string()),
                ..r
            }
        }
    };
    let end = R::target("-j DROP").comment("Unknown interface");
    let common = common_prefix(ifaces);
    let mut bins: Vec<(String, Vec<&String>)> = Vec::new();
    for name in ifaces {
        let prefix = if name.len() > common.len() {
            name[..common.len() + 1].to_string()
        } else {
            common.clone()
        };
        match bins.last_mut() {
            Some((p, names)) if *p == prefix => names.push(name),
            _ => bins.push((prefix, vec![name])),
        }
    }
    let mut root_rules = Vec::new();
    for (prefix, names) in bins {
        if names.len() > 1 {
            let child = format!("{root}-{}", &prefix[common.len()..]);
            root_rules.push(iface_rule(&format!("{prefix}+"), format!("-g {child}")));
            let mut rules: Vec<R> = names
                .iter()
                .map(|n| iface_rule(n, format!("-g {}", limited_id(pfx, n, MAX_CHAIN_NAME))))
                .collect();
            rules.push(end.clone());
            chains.insert(child, rules);
        } else {
            root_rules.push(iface_rule(
                names[0],
                format!("-g {}", limited_id(pfx, names[0], MAX_CHAIN_NAME)),
            ));
        }
    }
    root_rules.push(end);
    chains.insert(root.to_string(), root_rules);
}

fn common_prefix(names: &[String]) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    let mut len = first.len();
    for n in &names[1..] {
        len = first
            .bytes()
            .zip(n.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    first[..len].to_string()
}

/// What an endpoint chain jumps to for one tier: a policy chain, or a
/// group chain standing for several consecutive policies with one selector.
struct Jump {
    chain: String,
}

/// Groups consecutive policies of one selector (endpoint_mgr.go,
/// groupPolicies); a group of more than one gets its chain `cali-gi-`/
/// `cali-go-` (endpoints.go, PolicyGroupToIptablesChains), added to `chains`.
fn group_policies(pols: &[Pol], idx: &[usize], dir: Dir, chains: &mut BTreeMap<String, Vec<R>>) -> Vec<Jump> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in idx {
        match groups.last_mut() {
            Some(g) if pols[g[0]].sel_str == pols[i].sel_str => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    let mut jumps = Vec::new();
    for g in groups {
        if g.len() == 1 {
            jumps.push(Jump {
                chain: pols[g[0]].chain(dir),
            });
            continue;
        }
        let (direction, gpfx) = match dir {
            Dir::In => ("inbound", "cali-gi-"),
            Dir::Out => ("outbound", "cali-go-"),
        };
        let mut content = String::new();
        for part in [TIER, &pols[g[0]].sel_str, direction, &g.len().to_string()] {
            content.push_str(part);
            content.push('\n');
        }
        for &i in &g {
            content.push_str(&pols[i].name);
            content.push('\n');
        }
        let uid = &b64url(&sha3_224(content.as_bytes()))[..MAX_CHAIN_NAME - gpfx.len()];
        let name = format!("{gpfx}{uid}");
        let mut rules = Vec::new();
        for (n, &i) in g.iter().enumerate() {
            if n != 0 && n % 5 == 0 {
                let verdict = format!("-m mark ! --mark 0x0/{:#x}", MARK_PASS | MARK_ACCEPT);
                rules.push(R::target("-j RETURN").comment("Return on verdict").matching(verdict));
            }
            let mut r = R::target(format!("-j {}", pols[i].chain(dir)));
            if n % 5 != 0 {
                r = r.matching(mark_match(0, MARK_PASS | MARK_ACCEPT));
            }
            rules.push(r);
        }
        chains.insert(name.clone(), rules);
        jumps.push(Jump { chain: name });
    }
    jumps
}

/// A workload endpoint chain (endpoints.go, endpointIptablesChain): conntrack,
/// clear the result bits, (egress) drop encapsulated packets, the tier's
/// policies, "End of tier" drop, the profiles, "Drop if no profiles matched".
fn endpoint_chain(dir: Dir, groups: &[Jump], profiles: &[String]) -> Vec<R> {
    let mut rules = vec![
        R::target("-j ACCEPT").matching("-m conntrack --ctstate RELATED,ESTABLISHED"),
        R::target("-j DROP").matching("-m conntrack --ctstate INVALID"),
        R::target(set_mark(0, MARK_ACCEPT | MARK_PASS)),
    ];
    if dir == Dir::Out {
        rules.push(R {
            p: Some("udp".into()),
            ..R::target("-j DROP")
                .comment("Drop VXLAN encapped packets originating in workloads")
                .matching(format!("-m multiport --dports {VXLAN_PORT}"))
        });
        rules.push(R {
            p: Some("4".into()),
            ..R::target("-j DROP").comment("Drop IPinIP encapped packets originating in workloads")
        });
    }
    if !groups.is_empty() {
        rules.push(R::target(set_mark(0, MARK_PASS)).comment(&format!("Start of tier {TIER}")));
        for g in groups {
            rules.push(R::target(format!("-j {}", g.chain)).matching(mark_match(0, MARK_PASS)));
            rules.push(
                R::target("-j RETURN")
                    .comment("Return if policy accepted")
                    .matching(mark_match(MARK_ACCEPT, MARK_ACCEPT)),
            );
        }
        rules.push(
            R::target("-j DROP")
                .comment(&format!("End of tier {TIER}. Drop if no policies passed packet"))
                .matching(mark_match(0, MARK_PASS)),
        );
    }
    let pfx = match dir {
        Dir::In => "cali-pri-",
        Dir::Out => "cali-pro-",
    };
    for prof in profiles {
        rules.push(R::target(format!("-j {}", limited_id(pfx, prof, MAX_CHAIN_NAME))));
        rules.push(
            R::target("-j RETURN")
                .comment("Return if profile accepted")
                .matching(mark_match(MARK_ACCEPT, MARK_ACCEPT)),
        );
    }
    rules.push(R::target("-j DROP").comment("Drop if no profiles matched"));
    rules
}

/// The profile chains of `kns.<ns>` (allow all both ways) and of
/// `ksa.<ns>.<sa>` (no rules: one empty rule carrying the chain comment).
fn profile_chains(chains: &mut BTreeMap<String, Vec<R>>, prof: &str) {
    for (pfx, word) in [("cali-pri-", "ingress"), ("cali-pro-", "egress")] {
        let comment = format!("Profile {prof} {word}");
        let rule = if prof.starts_with("kns.") {
            R::target(set_mark(MARK_ACCEPT, MARK_ACCEPT)).comment(&comment)
        } else {
            R::default().comment(&comment)
        };
        chains.insert(limited_id(pfx, prof, MAX_CHAIN_NAME), vec![rule]);
    }
}

/// A policy chain (policy.go, PolicyToIptablesChains): each rule rendered,
/// trailing RETURNs stripped, the chain comment on the first rule.
fn policy_chain(pol: &Pol, dir: Dir) -> Vec<R> {
    let prules = match dir {
        Dir::In => &pol.in_rules,
        Dir::Out => &pol.out_rules,
    };
    let mut rules: Vec<R> = prules.iter().flat_map(render_rule).collect();
    while rules.last().is_some_and(|r: &R| r.j == "-j RETURN") {
        rules.pop();
    }
    if rules.is_empty() {
        rules.push(R::default());
    }
    let comment = escape_comment(&format!("Policy {} {}", pol.name, dir.word()));
    rules[0].comments.push(comment);
    rules
}

/// One Calico rule as iptables rules (policy.go, ProtoRuleToIptablesRules,
/// for what Kubernetes rules use: protocol, nets and not-nets, selector IP
/// sets, destination ports and named ports, action allow).
fn render_rule(pr: &PRule) -> Vec<R> {
    let Some(nets) = filter_v4(pr) else { return Vec::new() };
    let proto = pr.proto.map(|p| p.lower().to_string());
    let mut block: Vec<R> = Vec::new();
    let mut using_blocks = false;
    let splits = split_ports(&pr.dst_ports);
    let (mut main_ports, mut main_named) = (splits.first().cloned(), pr.dst_named.first());
    if splits.len() + pr.dst_named.len() > 1 {
        block.push(R::target(set_mark(0, MARK_SCRATCH0 | MARK_SCRATCH1)));
        using_blocks = true;
        for split in &splits {
            let r = R::target(set_mark(MARK_SCRATCH0, MARK_SCRATCH0)).matching(multiport(split));
            block.push(R { p: proto.clone(), ..r });
        }
        for s in &pr.dst_named {
            let m = format!("-m set --match-set {} dst,dst", s.name);
            block.push(R::target(set_mark(MARK_SCRATCH0, MARK_SCRATCH0)).matching(m));
        }
        (main_ports, main_named) = (None, None);
    }
    let (mut not_src, mut not_dst) = (nets.not_src.first().cloned(), nets.not_dst.first().cloned());
    if nets.src.len() + nets.not_src.len() > 1 {
        start_negated_block(&mut block, &mut using_blocks);
        for n in &nets.not_src {
            block.push(R {
                s: Some(n.clone()),
                ..R::target(set_mark(0, MARK_SCRATCH0))
            });
        }
        not_src = None;
    }
    if nets.dst.len() + nets.not_dst.len() > 1 {
        start_negated_block(&mut block, &mut using_blocks);
        for n in &nets.not_dst {
            block.push(R {
                d: Some(n.clone()),
                ..R::target(set_mark(0, MARK_SCRATCH0))
            });
        }
        not_dst = None;
    }
    let mut main = R::target(set_mark(MARK_ACCEPT, MARK_ACCEPT));
    main.p = proto;
    main.s = nets.src.first().cloned().or(not_src.map(|n| format!("!{n}")));
    main.d = nets.dst.first().cloned().or(not_dst.map(|n| format!("!{n}")));
    for s in &pr.src_sets {
        main.m.push(format!("-m set --match-set {} src", s.name));
    }
    for s in &pr.dst_sets {
        main.m.push(format!("-m set --match-set {} dst", s.name));
    }
    if let Some(split) = main_ports {
        main.m.push(multiport(&split));
    }
    if let Some(s) = main_named {
        main.m.push(format!("-m set --match-set {} dst,dst", s.name));
    }
    if using_blocks {
        main.m.push(mark_match(MARK_SCRATCH0, MARK_SCRATCH0));
    }
    block.push(main);
    block.push(R::target("-j RETURN").matching(mark_match(MARK_ACCEPT, MARK_ACCEPT)));
    block
}

/// A negated CIDR block starts with "all blocks pass" set, unless a block
/// before it already computes that bit.
fn start_negated_block(block: &mut Vec<R>, using_blocks: &mut bool) {
    if !*using_blocks {
        block.push(R::target(set_mark(MARK_SCRATCH0, MARK_SCRATCH0 | MARK_SCRATCH1)));
        *using_blocks = true;
    }
}

fn multiport(split: &[(u16, u16)]) -> String {
    let ports: Vec<String> = split
        .iter()
        .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") })
        .collect();
    format!("-m multiport --dports {}", ports.join(","))
}

/// felix's SplitPortList: at most 15 multiport slots per rule, a range 2.
fn split_ports(ports: &[(u16, u16)]) -> Vec<Vec<(u16, u16)>> {
    let mut splits = Vec::new();
    let (mut split, mut slots) = (Vec::new(), 15);
    for &(a, b) in ports {
        let need = if a == b { 1 } else { 2 };
        if slots < need {
            splits.push(std::mem::take(&mut split));
            slots = 15;
        }
        split.push((a, b));
        slots -= need;
    }
    if !split.is_empty() {
        splits.push(split);
    }
    splits
}

struct V4Nets {
    src: Vec<String>,
    not_src: Vec<String>,
    dst: Vec<String>,
    not_dst: Vec<String>,
}

/// felix's FilterRuleToIPVersion for IPv4: drop the IPv6 CIDRs; the rule
/// goes if a CIDR list had only IPv6 ones, or a negated one is 0.0.0.0/0.
fn filter_v4(pr: &PRule) -> Option<V4Nets> {
    let f = |nets: &[String], negated: bool| -> Option<Vec<String>> {
        if nets.is_empty() {
            return Some(Vec::new());
        }
        let v4: Vec<String> = nets.iter().filter(|n| !n.contains(':')).cloned().collect();
        if v4.is_empty() || (negated && v4.iter().any(|n| n == "0.0.0.0/0")) {
            return None;
        }
        Some(v4)
    };
    Some(V4Nets {
        src: f(&pr.src_nets, false)?,
        not_src: f(&pr.not_src_nets, true)?,
        dst: f(&pr.dst_nets, false)?,
        not_dst: f(&pr.not_dst_nets, true)?,
    })
}

fn render_iptables(chains: &BTreeMap<String, Vec<R>>) -> String {
    let mut out = String::from("*filter\n");
    for name in chains.keys() {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for (name, rules) in chains {
        for r in rules {
            out.push_str(&r.render(name));
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn render_ipsets(world: &World, sets: &BTreeMap<String, IpSet>) -> String {
    let mut out = String::new();
    let labels: Vec<(&PodInfo, Labels)> = world.pods.iter().map(|p| (p, endpoint_labels(world, p))).collect();
    for (name, set) in sets {
        let kind = if set.named.is_some() {
            "hash:ip,port"
        } else {
            "hash:net"
        };
        let _ = writeln!(out, "create {name} {kind} family inet maxelem {IPSET_MAXELEM} -exist");
        let _ = writeln!(out, "flush {name}");
        let mut members: BTreeSet<(Ipv4Addr, u16, String)> = BTreeSet::new();
        for (pod, _) in labels.iter().filter(|(_, l)| set.sel.eval(l)) {
            match &set.named {
                None => {
                    members.insert((pod.ip, 0, format!("{}/32", pod.ip)));
                }
                Some((proto, port_name)) => {
                    for port in pod
                        .ports
                        .iter()
                        .filter(|pp| pp.name == *port_name && pp.protocol == *proto)
                    {
                        members.insert((pod.ip, port.port, format!("{},{}:{}", pod.ip, proto.lower(), port.port)));
                    }
                }
            }
        }
        for (_, _, m) in members {
            let _ = writeln!(out, "add {name} {m}");
        }
    }
    out
}

/// The labels felix matches a pod's workload endpoint with: the pod's, the
/// `projectcalico.org/` ones the conversion adds, and those its profiles
/// pass down (`pcns.` namespace labels, `pcsa.` service account labels).
fn endpoint_labels(world: &World, pod: &PodInfo) -> Labels {
    let mut l = Labels::new();
    for (k, v) in world.namespace_labels(&pod.namespace) {
        l.insert(format!("pcns.{k}"), v);
    }
    l.insert("pcns.projectcalico.org/name".into(), pod.namespace.clone());
    l.insert("pcsa.projectcalico.org/name".into(), "default".into());
    for (k, v) in &pod.labels {
        l.insert(k.clone(), v.clone());
    }
    l.insert("projectcalico.org/namespace".into(), pod.namespace.clone());
    l.insert("projectcalico.org/orchestrator".into(), "k8s".into());
    l.insert("projectcalico.org/serviceaccount".into(), "default".into());
    l
}

// ----------------------------------------------------------- conversion --

/// An IP set a rule matches: a selector's, or a named port's among the
/// endpoints a selector matches.
#[derive(Debug, Clone)]
struct IpSet {
    name: String,
    sel: Sel,
    named: Option<(Proto, String)>,
}

impl IpSet {
    fn selector(sel_str: &str) -> IpSet {
        let sel = Sel::parse(sel_str);
        let id = sel.unique_id();
        IpSet {
            name: ipset_name(&id),
            sel,
            named: None,
        }
    }
    fn named(sel_str: &str, proto: Proto, port: &str) -> IpSet {
        let sel = Sel::parse(sel_str);
        let id = make_unique_id("n", &format!("{},{},{port}", sel.unique_id(), proto.lower()));
        IpSet {
            name: ipset_name(&id),
            sel,
            named: Some((proto, port.to_string())),
        }
    }
}

/// ipset_defs.go, NameForMainIPSet: `cali40` + the ID, cut at 31.
fn ipset_name(id: &str) -> String {
    let mut n = format!("cali40{id}");
    n.truncate(MAX_IPSET_NAME);
    n
}

/// A rule as felix renders it (felix/calc, ruleToParsedRule).
#[derive(Debug, Clone, Default)]
struct PRule {
    proto: Option<Proto>,
    src_nets: Vec<String>,
    not_src_nets: Vec<String>,
    dst_nets: Vec<String>,
    not_dst_nets: Vec<String>,
    src_sets: Vec<IpSet>,
    dst_sets: Vec<IpSet>,
    dst_ports: Vec<(u16, u16)>,
    dst_named: Vec<IpSet>,
}

/// A Kubernetes policy as felix holds it.
struct Pol {
    /// `<ns>/knp.default.<name>`.
    name: String,
    sel_str: String,
    sel: Sel,
    ingress: bool,
    egress: bool,
    in_rules: Vec<PRule>,
    out_rules: Vec<PRule>,
}

impl Pol {
    fn chain(&self, dir: Dir) -> String {
        limited_id(dir.policy_prefix(), &format!("{TIER}/{}", self.name), MAX_CHAIN_NAME)
    }
}

/// The policies converted and sorted as felix sorts a tier (order, all
/// 1000, then name).
fn convert_policies(policies: &[NetworkPolicy]) -> Vec<Pol> {
    let mut pols: Vec<Pol> = policies.iter().map(convert_policy).collect();
    pols.sort_by(|a, b| a.name.cmp(&b.name));
    pols.dedup_by(|a, b| a.name == b.name);
    pols
}

/// conversion.go K8sNetworkPolicyToCalico, then the update processor's
/// v3-to-v1 (networkpolicyprocessor.go, rules.go).
fn convert_policy(np: &NetworkPolicy) -> Pol {
    let ns = policy_namespace(np).to_string();
    let spec = np.spec.clone().unwrap_or_default();
    let pod_sel = k8s_selector(Some(&spec.pod_selector.clone().unwrap_or_default()), true);
    let sel_str = Sel::parse(&format!("({pod_sel}) && projectcalico.org/namespace == '{ns}'")).render();
    // The API server's defaulting (Ingress always, Egress with egress
    // rules), which the policy carries by the time felix sees it.
    let (ingress, egress) = crate::model::netpol::eval::policy_types(np);
    let mut in_rules = Vec::new();
    for r in spec.ingress.iter().flatten() {
        in_rules.extend(k8s_rule(r.from.as_deref(), r.ports.as_deref(), &ns, Dir::In));
    }
    let mut out_rules = Vec::new();
    for r in spec.egress.iter().flatten() {
        out_rules.extend(k8s_rule(r.to.as_deref(), r.ports.as_deref(), &ns, Dir::Out));
    }
    let sel = Sel::parse(&sel_str);
    Pol {
        name: format!("{ns}/knp.default.{}", policy_name(np)),
        sel_str,
        sel,
        ingress,
        egress,
        in_rules,
        out_rules,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortSpec {
    Range(u16, u16),
    Named(String),
}

/// conversion.go k8sRuleToCalico: one rule per protocol (sorted) per peer,
/// then each made a felix rule.
fn k8s_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    ns: &str,
    dir: Dir,
) -> Vec<PRule> {
    // protocol ("" for none) -> ports (None: all ports).
    let mut by_proto: BTreeMap<String, Option<Vec<PortSpec>>> = BTreeMap::new();
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        by_proto.insert(String::new(), None);
    }
    for p in ports {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let spec = match &p.port {
            None => None,
            Some(port) => {
                let s = match port {
                    IntOrString::Int(i) => i.to_string(),
                    IntOrString::String(s) => s.clone(),
                };
                let s = match p.end_port {
                    Some(e) => format!("{s}:{e}"),
                    None => s,
                };
                match port_from_string(&s) {
                    Some(spec) => Some(spec),
                    None => return Vec::new(),
                }
            }
        };
        match (spec, by_proto.get_mut(&proto)) {
            (None, _) => {
                by_proto.insert(proto, None);
            }
            (Some(spec), Some(Some(list))) => list.push(spec),
            (Some(_), Some(None)) => {}
            (Some(spec), None) => {
                by_proto.insert(proto, Some(vec![spec]));
            }
        }
    }
    let peers: Vec<Option<&NetworkPolicyPeer>> = match peers {
        Some(ps) if !ps.is_empty() => ps.iter().map(Some).collect(),
        _ => vec![None],
    };
    let mut out = Vec::new();
    for (proto_str, specs) in by_proto {
        let proto = if proto_str.is_empty() {
            None
        } else {
            match Proto::from_k8s(&proto_str.to_ascii_uppercase()) {
                Some(p) => Some(p),
                None => continue,
            }
        };
        let specs = specs.map(simplify_ports).unwrap_or_default();
        for peer in &peers {
            out.push(felix_rule(proto, &specs, *peer, ns, dir));
        }
    }
    out
}

/// numorstring.PortFromString: `80`, `80:90` or a name.
fn port_from_string(s: &str) -> Option<PortSpec> {
    if let Some((a, b)) = s.split_once(':') {
        let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
        return (a <= b).then_some(PortSpec::Range(a, b));
    }
    match s.parse::<u16>() {
        Ok(p) => Some(PortSpec::Range(p, p)),
        Err(_) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Some(PortSpec::Named(s.to_string()))
        }
        Err(_) => None,
    }
}

/// conversion.go SimplifyPorts: named ports first, then numeric ports
/// merged into sorted ranges (unchanged when at most one numeric port).
fn simplify_ports(ports: Vec<PortSpec>) -> Vec<PortSpec> {
    if ports.len() <= 1 {
        return ports;
    }
    let mut out: Vec<PortSpec> = ports
        .iter()
        .filter(|p| matches!(p, PortSpec::Named(_)))
        .cloned()
        .collect();
    let mut nums: Vec<u32> = Vec::new();
    for p in &ports {
        if let PortSpec::Range(a, b) = p {
            nums.extend(u32::from(*a)..=u32::from(*b));
        }
    }
    if nums.len() <= 1 {
        return ports;
    }
    nums.sort_unstable();
    let mut i = 0;
    while i < nums.len() {
        let (first, mut last) = (nums[i], nums[i]);
        i += 1;
        while i < nums.len() && nums[i] <= last + 1 {
            last = nums[i];
            i += 1;
        }
        out.push(PortSpec::Range(first as u16, last as u16));
    }
    out
}

/// One Calico rule (allow) for one protocol and peer, as felix parses it:
/// the peer's selector (namespaced, rules.go getEndpointSelector) becomes
/// an IP set, named ports IP sets filtered by the destination selector.
fn felix_rule(proto: Option<Proto>, specs: &[PortSpec], peer: Option<&NetworkPolicyPeer>, ns: &str, dir: Dir) -> PRule {
    let mut nets = Vec::new();
    let mut not_nets = Vec::new();
    let mut selector = String::new();
    if let Some(peer) = peer {
        if let Some(block) = &peer.ip_block {
            nets.extend(normalise_cidr(&block.cidr));
            for e in block.except.iter().flatten() {
                not_nets.extend(normalise_cidr(e));
            }
        } else {
            let pod = k8s_selector(peer.pod_selector.as_ref(), true);
            let nsel = k8s_selector(peer.namespace_selector.as_ref(), false);
            selector = endpoint_selector(&nsel, &pod, ns);
        }
    }
    let numeric: Vec<(u16, u16)> = specs
        .iter()
        .filter_map(|s| {
            if let PortSpec::Range(a, b) = s {
                Some((*a, *b))
            } else {
                None
            }
        })
        .collect();
    let named: Vec<&String> = specs
        .iter()
        .filter_map(|s| if let PortSpec::Named(n) = s { Some(n) } else { None })
        .collect();
    let mut r = PRule {
        proto,
        dst_ports: numeric.clone(),
        ..PRule::default()
    };
    let np_proto = proto.unwrap_or(Proto::Tcp);
    let (peer_sets, dst_sel) = match dir {
        Dir::In => {
            r.src_nets = nets;
            r.not_src_nets = not_nets;
            (&mut r.src_sets, String::new())
        }
        Dir::Out => {
            r.dst_nets = nets;
            r.not_dst_nets = not_nets;
            (&mut r.dst_sets, selector.clone())
        }
    };
    let peer_has_ports = dir == Dir::Out;
    if !selector.is_empty() && (!peer_has_ports || !numeric.is_empty() || named.is_empty()) {
        peer_sets.push(IpSet::selector(&selector));
    }
    let np_sel = if dst_sel.is_empty() {
        "all()".to_string()
    } else {
        dst_sel
    };
    r.dst_named = named.iter().map(|n| IpSet::named(&np_sel, np_proto, n)).collect();
    r
}

/// cnet.ParseCIDR(...).String(): the network, masked.
fn normalise_cidr(cidr: &str) -> Option<String> {
    if cidr.contains(':') {
        return Some(cidr.to_string());
    }
    cidr.parse::<Ipv4Net>().ok().map(|n| n.trunc().to_string())
}

/// conversion.go k8sSelectorToCalico.
fn k8s_selector(s: Option<&LabelSelector>, pod: bool) -> String {
    let mut parts = Vec::new();
    if pod {
        parts.push("projectcalico.org/orchestrator == 'k8s'".to_string());
    }
    let Some(s) = s else { return parts.join(" && ") };
    let labels = s.match_labels.clone().unwrap_or_default();
    let exprs = s.match_expressions.clone().unwrap_or_default();
    if !pod && labels.is_empty() && exprs.is_empty() {
        return "all()".into();
    }
    for (k, v) in labels {
        parts.push(format!("{k} == '{v}'"));
    }
    for e in exprs {
        let values = e.values.unwrap_or_default().join("', '");
        match e.operator.as_str() {
            "In" => parts.push(format!("{} in {{ '{values}' }}", e.key)),
            "NotIn" => parts.push(format!("{} not in {{ '{values}' }}", e.key)),
            "Exists" => parts.push(format!("has({})", e.key)),
            "DoesNotExist" => parts.push(format!("! has({})", e.key)),
            _ => {}
        }
    }
    parts.join(" && ")
}

/// rules.go getEndpointSelector for a namespaced policy's peer.
fn endpoint_selector(ns_selector: &str, selector: &str, ns: &str) -> String {
    let ns_sel = if ns_selector.is_empty() {
        format!("projectcalico.org/namespace == '{ns}'")
    } else {
        let mut s = Sel::parse(ns_selector);
        s.prefix("pcns.");
        s.render().replace("all()", "has(projectcalico.org/namespace)")
    };
    if selector.is_empty() {
        if ns_selector.is_empty() {
            return String::new();
        }
        return ns_sel;
    }
    format!("({ns_sel}) && ({selector})")
}

/// hashutils.GetLengthLimitedID: prefix + suffix, or prefix + `_` + the
/// URL-safe base64 SHA-256 of the suffix cut to fit.
fn limited_id(prefix: &str, suffix: &str, max: usize) -> String {
    let total = prefix.len() + suffix.len();
    if total > max || (total == max && suffix.starts_with('_')) {
        let hash = b64url(&sha256(suffix.as_bytes()));
        return format!("{prefix}_{}", &hash[..max - 1 - prefix.len()]);
    }
    format!("{prefix}{suffix}")
}

/// libcalico-go hash.MakeUniqueID: `<prefix>:` + base64url(SHA-224(`<prefix>:<content>`)).
fn make_unique_id(prefix: &str, content: &str) -> String {
    format!("{prefix}:{}", b64url(&sha224(format!("{prefix}:{content}").as_bytes())))
}

// ------------------------------------------------------------ selectors --

/// A Calico selector, as libcalico-go's parser builds it (no flattening of
/// nested `&&`, sets sorted and deduplicated).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sel {
    All,
    Global,
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Has(String),
    Not(Box<Sel>),
    And(Vec<Sel>),
    Or(Vec<Sel>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    And,
    Or,
    Not,
    EqOp,
    NeOp,
    InOp,
    NotInOp,
    Has(String),
    All,
    Global,
    Label(String),
    Str(String),
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./-".contains(c)
}

fn tokenize(s: &str) -> Vec<Tok> {
    let b: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let rest = |i: usize| b[i..].iter().collect::<String>();
    while i < b.len() {
        let c = b[i];
        let r = rest(i);
        if c.is_whitespace() {
            i += 1;
        } else if let Some(t) = [("&&", Tok::And), ("||", Tok::Or), ("==", Tok::EqOp), ("!=", Tok::NeOp)]
            .into_iter()
            .find_map(|(p, t)| r.starts_with(p).then_some(t))
        {
            toks.push(t);
            i += 2;
        } else if let Some(t) = [
            ('(', Tok::LParen),
            (')', Tok::RParen),
            ('{', Tok::LBrace),
            ('}', Tok::RBrace),
            (',', Tok::Comma),
            ('!', Tok::Not),
        ]
        .into_iter()
        .find_map(|(p, t)| (c == p).then_some(t))
        {
            toks.push(t);
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = b[i + 1..].iter().position(|&x| x == c).map_or(b.len(), |p| i + 1 + p);
            toks.push(Tok::Str(b[i + 1..end].iter().collect()));
            i = end + 1;
        } else if r.starts_with("has(") {
            let end = b[i..].iter().position(|&x| x == ')').map_or(b.len(), |p| i + p);
            toks.push(Tok::Has(b[i + 4..end].iter().collect::<String>().trim().to_string()));
            i = end + 1;
        } else if r.starts_with("all()") || r.starts_with("global()") {
            toks.push(if r.starts_with("all()") { Tok::All } else { Tok::Global });
            i += if r.starts_with("all()") { 5 } else { 8 };
        } else {
            let start = i;
            while i < b.len() && is_label_char(b[i]) {
                i += 1;
            }
            let word: String = b[start..i.max(start + 1)].iter().collect();
            i = i.max(start + 1);
            let after = rest(i);
            if word == "in" {
                toks.push(Tok::InOp);
            } else if word == "not" && after.trim_start().starts_with("in") {
                toks.push(Tok::NotInOp);
                i += after.len() - after.trim_start().len() + 2;
            } else {
                toks.push(Tok::Label(word));
            }
        }
    }
    toks
}

impl Sel {
    /// Parses a selector this module wrote; an empty one is `all()`.
    fn parse(s: &str) -> Sel {
        let toks = tokenize(s);
        if toks.is_empty() {
            return Sel::All;
        }
        let mut pos = 0;
        Sel::parse_or(&toks, &mut pos)
    }
    fn parse_or(t: &[Tok], pos: &mut usize) -> Sel {
        let mut ops = vec![Sel::parse_and(t, pos)];
        while t.get(*pos) == Some(&Tok::Or) {
            *pos += 1;
            ops.push(Sel::parse_and(t, pos));
        }
        if ops.len() == 1 { ops.remove(0) } else { Sel::Or(ops) }
    }
    fn parse_and(t: &[Tok], pos: &mut usize) -> Sel {
        let mut ops = vec![Sel::parse_op(t, pos)];
        while t.get(*pos) == Some(&Tok::And) {
            *pos += 1;
            ops.push(Sel::parse_op(t, pos));
        }
        if ops.len() == 1 { ops.remove(0) } else { Sel::And(ops) }
    }
    fn parse_op(t: &[Tok], pos: &mut usize) -> Sel {
        let mut negated = false;
        while t.get(*pos) == Some(&Tok::Not) {
            negated = !negated;
            *pos += 1;
        }
        let tok = t.get(*pos).cloned();
        *pos += 1;
        let sel = match tok {
            Some(Tok::Has(l)) => Sel::Has(l),
            Some(Tok::All) => Sel::All,
            Some(Tok::Global) => Sel::Global,
            Some(Tok::LParen) => {
                let inner = Sel::parse_or(t, pos);
                *pos += 1; // ')'
                inner
            }
            Some(Tok::Label(l)) => {
                let op = t.get(*pos).cloned();
                *pos += 1;
                match op {
                    Some(Tok::EqOp) | Some(Tok::NeOp) => {
                        let v = match t.get(*pos) {
                            Some(Tok::Str(v)) => v.clone(),
                            _ => String::new(),
                        };
                        *pos += 1;
                        if op == Some(Tok::EqOp) {
                            Sel::Eq(l, v)
                        } else {
                            Sel::Ne(l, v)
                        }
                    }
                    _ => {
                        *pos += 1; // '{'
                        let mut vals = Vec::new();
                        while let Some(Tok::Str(v)) = t.get(*pos) {
                            vals.push(v.clone());
                            *pos += 1;
                            if t.get(*pos) == Some(&Tok::Comma) {
                                *pos += 1;
                            }
                        }
                        *pos += 1; // '}'
                        vals.sort();
                        vals.dedup();
                        if op == Some(Tok::InOp) {
                            Sel::In(l, vals)
                        } else {
                            Sel::NotIn(l, vals)
                        }
                    }
                }
            }
            _ => Sel::All,
        };
        if negated { Sel::Not(Box::new(sel)) } else { sel }
    }

    /// The parser's String(): the normalised text selector IDs hash.
    fn render(&self) -> String {
        let q = |v: &str| {
            if v.contains('"') {
                format!("'{v}'")
            } else {
                format!("\"{v}\"")
            }
        };
        let join = |ops: &[Sel], sep: &str| {
            let parts: Vec<String> = ops.iter().map(Sel::render).collect();
            format!("({})", parts.join(sep))
        };
        match self {
            Sel::All => "all()".into(),
            Sel::Global => "global()".into(),
            Sel::Eq(l, v) => format!("{l} == {}", q(v)),
            Sel::Ne(l, v) => format!("{l} != {}", q(v)),
            Sel::In(l, vs) => format!("{l} in {{{}}}", vs.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ")),
            Sel::NotIn(l, vs) => format!(
                "{l} not in {{{}}}",
                vs.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ")
            ),
            Sel::Has(l) => format!("has({l})"),
            Sel::Not(s) => format!("!{}", s.render()),
            Sel::And(ops) => join(ops, " && "),
            Sel::Or(ops) => join(ops, " || "),
        }
    }

    /// The selector's unique ID (`s:` + hash of its normalised text).
    fn unique_id(&self) -> String {
        make_unique_id("s", &self.render())
    }

    /// The parser's PrefixVisitor: every label name gets `p` in front.
    fn prefix(&mut self, p: &str) {
        match self {
            Sel::Eq(l, _) | Sel::Ne(l, _) | Sel::In(l, _) | Sel::NotIn(l, _) | Sel::Has(l) => *l = format!("{p}{l}"),
            Sel::Not(s) => s.prefix(p),
            Sel::And(ops) | Sel::Or(ops) => ops.iter_mut().for_each(|o| o.prefix(p)),
            Sel::All | Sel::Global => {}
        }
    }

    fn eval(&self, l: &Labels) -> bool {
        match self {
            Sel::All | Sel::Global => true,
            Sel::Eq(k, v) => l.get(k) == Some(v),
            Sel::Ne(k, v) => l.get(k) != Some(v),
            Sel::In(k, vs) => l.get(k).is_some_and(|v| vs.contains(v)),
            Sel::NotIn(k, vs) => l.get(k).is_none_or(|v| !vs.contains(v)),
            Sel::Has(k) => l.contains_key(k),
            Sel::Not(s) => !s.eval(l),
            Sel::And(ops) => ops.iter().all(|o| o.eval(l)),
            Sel::Or(ops) => ops.iter().any(|o| o.eval(l)),
        }
    }
}

// --------------------------------------------------------------- hashes --

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}

fn sha224(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha224::digest(data).to_vec()
}

fn sha3_224(data: &[u8]) -> Vec<u8> {
    use sha3::Digest as _;
    sha3::Sha3_224::digest(data).to_vec()
}

/// Go's base64.RawURLEncoding.
fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::netpol::PodPort;

    fn pod(node: &str, name: &str, ns: &str, app: &str, ip: [u8; 4], iface: &str) -> PodInfo {
        PodInfo {
            node: node.into(),
            name: name.into(),
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: Ipv4Addr::from(ip),
            ports: vec![PodPort {
                name: "http".into(),
                port: 8080,
                protocol: Proto::Tcp,
            }],
            host_iface: iface.into(),
        }
    }

    /// Two nodes, three pods: web and db in `prod` on n1, client in `dev` on n2.
    fn world() -> World {
        let mut w = World::default();
        w.namespaces
            .insert("prod".into(), [("team".to_string(), "a".to_string())].into());
        w.namespaces
            .insert("dev".into(), [("team".to_string(), "b".to_string())].into());
        w.pods
            .push(pod("n1", "web", "prod", "web", [192, 168, 1, 10], "cali1a2b3c4d5e6"));
        w.pods
            .push(pod("n1", "db", "prod", "db", [192, 168, 1, 11], "cali9f8e7d6c5b4"));
        w.pods.push(pod(
            "n2",
            "client",
            "dev",
            "client",
            [192, 168, 2, 20],
            "calic0ffee00001",
        ));
        w
    }

    fn np(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).expect("policy YAML")
    }

    const DENY: &str = "
metadata: {name: default-deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
";
    const ALLOW_DEV: &str = "
metadata: {name: allow-dev, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{protocol: TCP, port: 80}]
";

    const NAMED: &str = "
metadata: {name: named, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
";
    const MIXED: &str = "
metadata: {name: mixed, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: http}, {port: 5432}, {port: 9000, endPort: 9010}, {protocol: UDP, port: 53}]
";
    const BLOCK: &str = "
metadata: {name: block, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.1.2.3/16, except: [10.1.5.0/24, 10.1.6.0/24]}}]
  egress:
  - to: [{ipBlock: {cidr: 172.16.0.0/12, except: [172.16.1.0/24]}}]
    ports: [{protocol: SCTP, port: 9999}]
";
    const EGRESS: &str = "
metadata: {name: egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [db, client]}]}}]
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
";

    /// The rules of one chain of `state`, without the `-A <chain> ` head.
    fn rules(state: &FelixState, chain: &str) -> Vec<String> {
        let head = format!("-A {chain} ");
        state
            .iptables
            .lines()
            .filter_map(|l| l.strip_prefix(&head))
            .map(str::to_string)
            .collect()
    }

    /// Without policyTypes, egress rules make an egress policy, as the API
    /// server's defaulting (and the evaluator) says.
    #[test]
    fn egress_rules_without_policy_types_make_an_egress_policy() {
        let p = np("
metadata: {name: out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: b}}}]
");
        let s = felix_state(&world(), &[p], "n1");
        assert!(s.iptables.contains(":cali-po-_"), "{}", s.iptables);
        assert!(
            s.iptables.contains(":cali-pi-_"),
            "ingress is isolated too:\n{}",
            s.iptables
        );
    }

    #[test]
    fn small_world_exact() {
        let s = felix_state(&world(), &[np(DENY), np(ALLOW_DEV)], "n1");
        assert_eq!(s.iptables, SMALL_WORLD_IPTABLES);
        assert_eq!(
            s.ipsets,
            "create cali40s:usiEzEYsGPAEX1CJhwU-Der hash:net family inet maxelem 1048576 -exist\n\
             flush cali40s:usiEzEYsGPAEX1CJhwU-Der\n\
             add cali40s:usiEzEYsGPAEX1CJhwU-Der 192.168.2.20/32\n"
        );
        // Same input, same bytes; policy order in the input does not matter.
        assert_eq!(felix_state(&world(), &[np(ALLOW_DEV), np(DENY)], "n1"), s);
    }

    const SMALL_WORLD_IPTABLES: &str = "*filter\n\
:cali-FORWARD - [0:0]\n\
:cali-cidr-block - [0:0]\n\
:cali-from-hep-forward - [0:0]\n\
:cali-from-wl-dispatch - [0:0]\n\
:cali-fw-cali1a2b3c4d5e6 - [0:0]\n\
:cali-fw-cali9f8e7d6c5b4 - [0:0]\n\
:cali-pi-_0YSpo50nbXQKECFNTZj - [0:0]\n\
:cali-pi-_udKVwKQ4Qrp2uNYA2EW - [0:0]\n\
:cali-pri-kns.prod - [0:0]\n\
:cali-pri-ksa.prod.default - [0:0]\n\
:cali-pro-kns.prod - [0:0]\n\
:cali-pro-ksa.prod.default - [0:0]\n\
:cali-to-hep-forward - [0:0]\n\
:cali-to-wl-dispatch - [0:0]\n\
:cali-tw-cali1a2b3c4d5e6 - [0:0]\n\
:cali-tw-cali9f8e7d6c5b4 - [0:0]\n\
-A cali-FORWARD -j MARK --set-xmark 0x0/0x1a0000\n\
-A cali-FORWARD -m mark --mark 0x0/0x10000 -j cali-from-hep-forward\n\
-A cali-FORWARD -i cali+ -j cali-from-wl-dispatch\n\
-A cali-FORWARD -o cali+ -j cali-to-wl-dispatch\n\
-A cali-FORWARD -j cali-to-hep-forward\n\
-A cali-FORWARD -j cali-cidr-block\n\
-A cali-from-wl-dispatch -i cali1a2b3c4d5e6 -g cali-fw-cali1a2b3c4d5e6\n\
-A cali-from-wl-dispatch -i cali9f8e7d6c5b4 -g cali-fw-cali9f8e7d6c5b4\n\
-A cali-from-wl-dispatch -m comment --comment \"Unknown interface\" -j DROP\n\
-A cali-fw-cali1a2b3c4d5e6 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A cali-fw-cali1a2b3c4d5e6 -m conntrack --ctstate INVALID -j DROP\n\
-A cali-fw-cali1a2b3c4d5e6 -j MARK --set-xmark 0x0/0x30000\n\
-A cali-fw-cali1a2b3c4d5e6 -p udp -m comment --comment \"Drop VXLAN encapped packets originating in workloads\" -m multiport --dports 4789 -j DROP\n\
-A cali-fw-cali1a2b3c4d5e6 -p 4 -m comment --comment \"Drop IPinIP encapped packets originating in workloads\" -j DROP\n\
-A cali-fw-cali1a2b3c4d5e6 -j cali-pro-kns.prod\n\
-A cali-fw-cali1a2b3c4d5e6 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-fw-cali1a2b3c4d5e6 -j cali-pro-ksa.prod.default\n\
-A cali-fw-cali1a2b3c4d5e6 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-fw-cali1a2b3c4d5e6 -m comment --comment \"Drop if no profiles matched\" -j DROP\n\
-A cali-fw-cali9f8e7d6c5b4 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A cali-fw-cali9f8e7d6c5b4 -m conntrack --ctstate INVALID -j DROP\n\
-A cali-fw-cali9f8e7d6c5b4 -j MARK --set-xmark 0x0/0x30000\n\
-A cali-fw-cali9f8e7d6c5b4 -p udp -m comment --comment \"Drop VXLAN encapped packets originating in workloads\" -m multiport --dports 4789 -j DROP\n\
-A cali-fw-cali9f8e7d6c5b4 -p 4 -m comment --comment \"Drop IPinIP encapped packets originating in workloads\" -j DROP\n\
-A cali-fw-cali9f8e7d6c5b4 -j cali-pro-kns.prod\n\
-A cali-fw-cali9f8e7d6c5b4 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-fw-cali9f8e7d6c5b4 -j cali-pro-ksa.prod.default\n\
-A cali-fw-cali9f8e7d6c5b4 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-fw-cali9f8e7d6c5b4 -m comment --comment \"Drop if no profiles matched\" -j DROP\n\
-A cali-pi-_0YSpo50nbXQKECFNTZj -p tcp -m comment --comment \"Policy prod/knp.default.allow-dev ingress\" -m set --match-set cali40s:usiEzEYsGPAEX1CJhwU-Der src -m multiport --dports 80 -j MARK --set-xmark 0x10000/0x10000\n\
-A cali-pi-_udKVwKQ4Qrp2uNYA2EW -m comment --comment \"Policy prod/knp.default.default-deny ingress\"\n\
-A cali-pri-kns.prod -m comment --comment \"Profile kns.prod ingress\" -j MARK --set-xmark 0x10000/0x10000\n\
-A cali-pri-ksa.prod.default -m comment --comment \"Profile ksa.prod.default ingress\"\n\
-A cali-pro-kns.prod -m comment --comment \"Profile kns.prod egress\" -j MARK --set-xmark 0x10000/0x10000\n\
-A cali-pro-ksa.prod.default -m comment --comment \"Profile ksa.prod.default egress\"\n\
-A cali-to-wl-dispatch -o cali1a2b3c4d5e6 -g cali-tw-cali1a2b3c4d5e6\n\
-A cali-to-wl-dispatch -o cali9f8e7d6c5b4 -g cali-tw-cali9f8e7d6c5b4\n\
-A cali-to-wl-dispatch -m comment --comment \"Unknown interface\" -j DROP\n\
-A cali-tw-cali1a2b3c4d5e6 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A cali-tw-cali1a2b3c4d5e6 -m conntrack --ctstate INVALID -j DROP\n\
-A cali-tw-cali1a2b3c4d5e6 -j MARK --set-xmark 0x0/0x30000\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Start of tier default\" -j MARK --set-xmark 0x0/0x20000\n\
-A cali-tw-cali1a2b3c4d5e6 -m mark --mark 0x0/0x20000 -j cali-pi-_0YSpo50nbXQKECFNTZj\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali1a2b3c4d5e6 -m mark --mark 0x0/0x20000 -j cali-pi-_udKVwKQ4Qrp2uNYA2EW\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP\n\
-A cali-tw-cali1a2b3c4d5e6 -j cali-pri-kns.prod\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali1a2b3c4d5e6 -j cali-pri-ksa.prod.default\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Drop if no profiles matched\" -j DROP\n\
-A cali-tw-cali9f8e7d6c5b4 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A cali-tw-cali9f8e7d6c5b4 -m conntrack --ctstate INVALID -j DROP\n\
-A cali-tw-cali9f8e7d6c5b4 -j MARK --set-xmark 0x0/0x30000\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Start of tier default\" -j MARK --set-xmark 0x0/0x20000\n\
-A cali-tw-cali9f8e7d6c5b4 -m mark --mark 0x0/0x20000 -j cali-pi-_udKVwKQ4Qrp2uNYA2EW\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP\n\
-A cali-tw-cali9f8e7d6c5b4 -j cali-pri-kns.prod\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali9f8e7d6c5b4 -j cali-pri-ksa.prod.default\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN\n\
-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Drop if no profiles matched\" -j DROP\n\
COMMIT\n\
";

    #[test]
    fn named_port() {
        let s = felix_state(&world(), &[np(NAMED)], "n1");
        assert_eq!(
            rules(&s, "cali-pi-_N-DGAeDWDBlwY34VVL7"),
            ["-p tcp -m comment --comment \"Policy prod/knp.default.named ingress\" \
              -m set --match-set cali40s:lgQ0i7EXRxuqdfcSKmyEYAU src \
              -m set --match-set cali40n:cl9_Kgeu4H0OGLbhovVR3NB dst,dst -j MARK --set-xmark 0x10000/0x10000"]
        );
        // An ingress named port is matched among all endpoints (no destination selector).
        assert_eq!(
            s.ipsets,
            "create cali40n:cl9_Kgeu4H0OGLbhovVR3NB hash:ip,port family inet maxelem 1048576 -exist\n\
             flush cali40n:cl9_Kgeu4H0OGLbhovVR3NB\n\
             add cali40n:cl9_Kgeu4H0OGLbhovVR3NB 192.168.1.10,tcp:8080\n\
             add cali40n:cl9_Kgeu4H0OGLbhovVR3NB 192.168.1.11,tcp:8080\n\
             add cali40n:cl9_Kgeu4H0OGLbhovVR3NB 192.168.2.20,tcp:8080\n\
             create cali40s:lgQ0i7EXRxuqdfcSKmyEYAU hash:net family inet maxelem 1048576 -exist\n\
             flush cali40s:lgQ0i7EXRxuqdfcSKmyEYAU\n\
             add cali40s:lgQ0i7EXRxuqdfcSKmyEYAU 192.168.1.10/32\n"
        );
        // Only db is selected: web's to-chain has no tier.
        assert!(
            !s.iptables
                .contains("-A cali-tw-cali1a2b3c4d5e6 -m comment --comment \"Start of tier")
        );
        assert!(
            s.iptables
                .contains("-A cali-tw-cali9f8e7d6c5b4 -m comment --comment \"Start of tier default\"")
        );
    }

    #[test]
    fn numeric_and_named_ports_need_a_block() {
        let s = felix_state(&world(), &[np(MIXED)], "n1");
        assert_eq!(
            rules(&s, "cali-pi-_AOPKH_4zWeMtjCnt4xk"),
            [
                "-m comment --comment \"Policy prod/knp.default.mixed ingress\" -j MARK --set-xmark 0x0/0x180000",
                "-p tcp -m multiport --dports 5432,9000:9010 -j MARK --set-xmark 0x80000/0x80000",
                "-m set --match-set cali40n:cl9_Kgeu4H0OGLbhovVR3NB dst,dst -j MARK --set-xmark 0x80000/0x80000",
                "-p tcp -m mark --mark 0x80000/0x80000 -j MARK --set-xmark 0x10000/0x10000",
                "-m mark --mark 0x10000/0x10000 -j RETURN",
                "-p udp -m multiport --dports 53 -j MARK --set-xmark 0x10000/0x10000",
            ]
        );
    }

    #[test]
    fn ip_block_with_except_both_ways() {
        let s = felix_state(&world(), &[np(BLOCK)], "n1");
        assert_eq!(
            rules(&s, "cali-pi-_VPXlNUOfJK2RSRrE5nY"),
            [
                "-m comment --comment \"Policy prod/knp.default.block ingress\" -j MARK --set-xmark 0x80000/0x180000",
                "-s 10.1.5.0/24 -j MARK --set-xmark 0x0/0x80000",
                "-s 10.1.6.0/24 -j MARK --set-xmark 0x0/0x80000",
                "-s 10.1.0.0/16 -m mark --mark 0x80000/0x80000 -j MARK --set-xmark 0x10000/0x10000",
            ]
        );
        assert_eq!(
            rules(&s, "cali-po-_VPXlNUOfJK2RSRrE5nY"),
            [
                "-m comment --comment \"Policy prod/knp.default.block egress\" -j MARK --set-xmark 0x80000/0x180000",
                "-d 172.16.1.0/24 -j MARK --set-xmark 0x0/0x80000",
                "-d 172.16.0.0/12 -p sctp -m multiport --dports 9999 -m mark --mark 0x80000/0x80000 \
                 -j MARK --set-xmark 0x10000/0x10000",
            ]
        );
        assert_eq!(s.ipsets, "");
        // One except: still a block, as the positive CIDR takes the rule's only slot.
        let one = BLOCK.replace(", 10.1.6.0/24", "");
        let s = felix_state(&world(), &[np(&one)], "n1");
        assert_eq!(rules(&s, "cali-pi-_VPXlNUOfJK2RSRrE5nY").len(), 3);
    }

    #[test]
    fn egress_policy() {
        let s = felix_state(&world(), &[np(EGRESS)], "n1");
        assert_eq!(
            rules(&s, "cali-po-_xFDOu_VWRwAePmSp6A-"),
            [
                "-m comment --comment \"Policy prod/knp.default.egress egress\" \
                 -m set --match-set cali40s:Y1KrH-gpSJNorNd7BND3qny dst -j MARK --set-xmark 0x10000/0x10000",
                "-m mark --mark 0x10000/0x10000 -j RETURN",
                "-p tcp -m set --match-set cali40n:P4OhIek7nk4mtjT0JsVNX83 dst,dst -j MARK --set-xmark 0x10000/0x10000",
            ]
        );
        assert_eq!(
            s.ipsets,
            "create cali40n:P4OhIek7nk4mtjT0JsVNX83 hash:ip,port family inet maxelem 1048576 -exist\n\
             flush cali40n:P4OhIek7nk4mtjT0JsVNX83\n\
             add cali40n:P4OhIek7nk4mtjT0JsVNX83 192.168.1.11,tcp:8080\n\
             create cali40s:Y1KrH-gpSJNorNd7BND3qny hash:net family inet maxelem 1048576 -exist\n\
             flush cali40s:Y1KrH-gpSJNorNd7BND3qny\n\
             add cali40s:Y1KrH-gpSJNorNd7BND3qny 192.168.1.11/32\n\
             add cali40s:Y1KrH-gpSJNorNd7BND3qny 192.168.2.20/32\n"
        );
        let fw = rules(&s, "cali-fw-cali1a2b3c4d5e6");
        assert_eq!(
            fw[5],
            "-m comment --comment \"Start of tier default\" -j MARK --set-xmark 0x0/0x20000"
        );
        assert_eq!(fw[6], "-m mark --mark 0x0/0x20000 -j cali-po-_xFDOu_VWRwAePmSp6A-");
        assert!(!s.iptables.contains("cali-pi-"));
        assert_eq!(rules(&s, "cali-tw-cali1a2b3c4d5e6").len(), 8);
    }

    #[test]
    fn no_policies_profiles_only() {
        let s = felix_state(&world(), &[], "n2");
        assert_eq!(
            rules(&s, "cali-tw-calic0ffee00001"),
            [
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-m conntrack --ctstate INVALID -j DROP",
                "-j MARK --set-xmark 0x0/0x30000",
                "-j cali-pri-kns.dev",
                "-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN",
                "-j cali-pri-ksa.dev.default",
                "-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN",
                "-m comment --comment \"Drop if no profiles matched\" -j DROP",
            ]
        );
        assert_eq!(
            rules(&s, "cali-pro-kns.dev"),
            ["-m comment --comment \"Profile kns.dev egress\" -j MARK --set-xmark 0x10000/0x10000"]
        );
        assert_eq!(
            rules(&s, "cali-pri-ksa.dev.default"),
            ["-m comment --comment \"Profile ksa.dev.default ingress\""]
        );
        assert_eq!(s.ipsets, "");
        // Policies of other namespaces' pods only: nothing of theirs here.
        assert_eq!(felix_state(&world(), &[np(DENY), np(EGRESS)], "n2"), s);
    }

    #[test]
    fn long_profile_names_are_hashed() {
        let mut w = world();
        w.pods[2].namespace = "kube-system".into();
        let s = felix_state(&w, &[], "n2");
        assert!(chains(&s).contains(&"cali-pri-kns.kube-system".to_string()));
        assert!(chains(&s).contains(&"cali-pri-_hNSGmJYNT8uLIzxesP".to_string()));
        assert!(rules(&s, "cali-pri-_hNSGmJYNT8uLIzxesP")[0].contains("Profile ksa.kube-system.default ingress"));
    }

    #[test]
    fn same_selector_policies_share_a_group_chain() {
        let block2 = BLOCK.replace("name: block", "name: block2");
        let s = felix_state(&world(), &[np(DENY), np(&block2)], "n1");
        assert_eq!(
            rules(&s, "cali-gi-x4DncAjXbB-l1CHir94H"),
            [
                "-j cali-pi-_b6R6GALRhegRpAcKbpb",
                "-m mark --mark 0x0/0x30000 -j cali-pi-_udKVwKQ4Qrp2uNYA2EW"
            ]
        );
        let tw = rules(&s, "cali-tw-cali9f8e7d6c5b4");
        assert_eq!(tw[4], "-m mark --mark 0x0/0x20000 -j cali-gi-x4DncAjXbB-l1CHir94H");
        // Egress: block2 alone, inlined.
        assert_eq!(
            rules(&s, "cali-fw-cali9f8e7d6c5b4")[6],
            "-m mark --mark 0x0/0x20000 -j cali-po-_b6R6GALRhegRpAcKbpb"
        );
    }

    #[test]
    fn group_of_six_returns_on_verdict() {
        let pols: Vec<NetworkPolicy> = (0..6)
            .map(|i| np(&DENY.replace("default-deny", &format!("deny-{i}"))))
            .collect();
        let s = felix_state(&world(), &pols, "n1");
        let gi = chains(&s)
            .into_iter()
            .find(|c| c.starts_with("cali-gi-"))
            .expect("group chain");
        let r = rules(&s, &gi);
        assert_eq!(r.len(), 7);
        assert!(!r[0].contains("-m mark"));
        assert_eq!(
            r[5],
            "-m comment --comment \"Return on verdict\" -m mark ! --mark 0x0/0x30000 -j RETURN"
        );
        assert!(r[6].starts_with("-j cali-pi-_"));
    }

    #[test]
    fn dispatch_splits_by_prefix() {
        let mut w = World::default();
        for (i, iface) in ["cali1aaa", "cali1bbb", "cali2ccc"].iter().enumerate() {
            w.pods.push(pod(
                "n1",
                &format!("p{i}"),
                "default",
                "x",
                [10, 0, 0, i as u8 + 1],
                iface,
            ));
        }
        let s = felix_state(&w, &[], "n1");
        assert_eq!(
            rules(&s, "cali-from-wl-dispatch"),
            [
                "-i cali1+ -g cali-from-wl-dispatch-1",
                "-i cali2ccc -g cali-fw-cali2ccc",
                "-m comment --comment \"Unknown interface\" -j DROP",
            ]
        );
        assert_eq!(
            rules(&s, "cali-to-wl-dispatch-1"),
            [
                "-o cali1aaa -g cali-tw-cali1aaa",
                "-o cali1bbb -g cali-tw-cali1bbb",
                "-m comment --comment \"Unknown interface\" -j DROP",
            ]
        );
        // No local pods: the dispatch chains only drop.
        let s = felix_state(&w, &[], "n9");
        assert_eq!(
            rules(&s, "cali-to-wl-dispatch"),
            ["-m comment --comment \"Unknown interface\" -j DROP"]
        );
    }

    #[test]
    fn chains_and_ipset_names() {
        let s = felix_state(&world(), &[np(NAMED)], "n1");
        let c = chains(&s);
        assert_eq!(c.first().map(String::as_str), Some("cali-FORWARD"));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(c.len(), 15); // 6 static, 2 x 2 endpoint, 1 policy, 4 profile
        assert!(c.contains(&"cali-pi-_N-DGAeDWDBlwY34VVL7".to_string()));
        assert_eq!(
            ipset_names(&s),
            ["cali40n:cl9_Kgeu4H0OGLbhovVR3NB", "cali40s:lgQ0i7EXRxuqdfcSKmyEYAU"]
        );
        assert!(ipset_names(&felix_state(&world(), &[], "n1")).is_empty());
    }

    #[test]
    fn selectors_normalise_as_calico_prints_them() {
        let cases = [
            ("", "all()"),
            (
                "(projectcalico.org/orchestrator == 'k8s') && projectcalico.org/namespace == 'x'",
                "(projectcalico.org/orchestrator == \"k8s\" && projectcalico.org/namespace == \"x\")",
            ),
            (
                "(a == 'b' && c == 'd') && e == 'f'",
                "((a == \"b\" && c == \"d\") && e == \"f\")",
            ),
            (
                "k in { 'z', 'y', 'z' } && ! has(h) || k not in { 'q' }",
                "((k in {\"y\", \"z\"} && !has(h)) || k not in {\"q\"})",
            ),
            ("v == 'say \"hi\"'", "v == 'say \"hi\"'"),
        ];
        for (input, want) in cases {
            assert_eq!(Sel::parse(input).render(), want, "{input}");
        }
        assert_eq!(
            endpoint_selector("all()", "projectcalico.org/orchestrator == 'k8s'", "ns"),
            "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s')"
        );
        let l: Labels = [("k".to_string(), "y".to_string())].into();
        assert!(Sel::parse("k in { 'y' } && !has(h) && x != 'a'").eval(&l));
        assert!(!Sel::parse("k not in { 'y' }").eval(&l));
    }

    #[test]
    fn hashes_match_reference_vectors() {
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha224(b"abc")),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            hex(sha3_224(b"abc")),
            "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf"
        );
        assert_eq!(hex(sha3_224(&[b'a'; 200])).len(), 56);
        assert_eq!(
            hex(sha3_224(&[b'a'; 200])),
            "455e0ccfc6010738ed93a793dffd79aff36debbd1a7eb6621bd6c722"
        );
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
        assert_eq!(limited_id("cali-tw-", "cali1234", 28), "cali-tw-cali1234");
        assert_eq!(
            limited_id("cali-pri-", "ksa.default.default", 28),
            "cali-pri-ksa.default.default"
        );
        assert_eq!(
            limited_id("cali-pi-", "default/prod/knp.default.allow-dev", 28),
            "cali-pi-_0YSpo50nbXQKECFNTZj"
        );
    }

    #[test]
    fn ports_convert_as_calico_converts_them() {
        let specs = vec![
            PortSpec::Range(82, 82),
            PortSpec::Named("x".into()),
            PortSpec::Range(80, 81),
            PortSpec::Range(90, 90),
        ];
        assert_eq!(
            simplify_ports(specs),
            [
                PortSpec::Named("x".into()),
                PortSpec::Range(80, 82),
                PortSpec::Range(90, 90)
            ]
        );
        let many: Vec<(u16, u16)> = (0..9).map(|i| (1000 + 10 * i, 1001 + 10 * i)).collect();
        assert_eq!(split_ports(&many).iter().map(Vec::len).collect::<Vec<_>>(), [7, 2]);
        assert_eq!(port_from_string("80:90"), Some(PortSpec::Range(80, 90)));
        assert_eq!(port_from_string("90:80"), None);
    }
}

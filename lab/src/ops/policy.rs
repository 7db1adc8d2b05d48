//! NetworkPolicy in a running lab: the policies in force (kept in the lab's
//! state), the world they act on (pods with their identity and address),
//! and programming each node's policy engine (the profile's: felix in
//! Calico and Canal) so that the kernel holds exactly the chains and ipsets the policies
//! give: what a previous set left behind and the new set lacks is removed,
//! so removing a policy restores the state before it byte for byte.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use crate::kernel::netns::{self, Netns};
use crate::model::identity::AppliedPolicy;
use crate::model::netpol::{NetworkPolicy, PodInfo, World};
use crate::ops::state::LabState;
use crate::profile::PolicyState;

/// The world a lab's policies act on: its namespaces (declared, and those
/// of its pods) with their labels, and every pod that has an address.
pub fn world(st: &LabState) -> World {
    world_of(&st.plan, |node, pod| pod_ip(st, node, pod))
}

/// The world a plan's policies will act on, before pods have addresses
/// (0.0.0.0): what selectors select does not depend on them.
pub fn planned_world(plan: &crate::profile::Plan) -> World {
    world_of(plan, |_, _| Some(Ipv4Addr::UNSPECIFIED))
}

fn world_of(plan: &crate::profile::Plan, ip_of: impl Fn(&str, &str) -> Option<Ipv4Addr>) -> World {
    let t = &plan.topology;
    let mut w = World::default();
    for ns in t.namespace_names() {
        w.namespaces.insert(ns.clone(), t.namespace_labels(&ns));
    }
    for n in &plan.nodes {
        for p in &n.pods {
            let Some(ip) = ip_of(&n.name, &p.name) else {
                continue;
            };
            w.namespaces.entry(p.meta.namespace.clone()).or_default();
            w.pods.push(PodInfo {
                node: n.name.clone(),
                name: p.name.clone(),
                namespace: p.meta.namespace.clone(),
                labels: p.meta.labels.clone(),
                ip,
                ports: p.meta.ports.clone(),
                host_iface: String::new(),
            });
        }
    }
    w
}

/// A pod's address, from its CNI result.
pub fn pod_ip(st: &LabState, node: &str, pod: &str) -> Option<Ipv4Addr> {
    let s = st.pods.get(&format!("{node}/{pod}"))?;
    let ip = s.ip.as_deref()?;
    ip.split('/').next()?.parse().ok()
}

/// The policies in force, as the API types.
pub fn policies(st: &LabState) -> Vec<NetworkPolicy> {
    st.policies.iter().map(|p| p.policy.clone()).collect()
}

/// What programming the lab's policy engines did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Programmed {
    /// Nodes programmed.
    pub nodes: usize,
    /// Chains in all nodes.
    pub chains: usize,
    /// ipsets in all nodes.
    pub ipsets: usize,
    /// How long it took.
    pub seconds: f64,
}

/// Programs every node's policy engine for the policies in force. `None`
/// when the lab's profile enforces no policy (flannel).
pub async fn program(st: &LabState) -> Result<Option<Programmed>> {
    if !st.plan.profile.enforces_policy() {
        return Ok(None);
    }
    let started = Instant::now();
    let world = world(st);
    let policies = policies(st);
    let jobs = st.plan.nodes.iter().map(|n| {
        let state = st.plan.profile.policy_state(&world, &policies, &n.name);
        let ns = n.ns.clone();
        tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
            let Some(state) = state else {
                return Ok((0, 0));
            };
            let handle = Netns::open(&ns)?;
            program_node(&handle, &state).with_context(|| format!("cannot program the policy of {ns}"))?;
            Ok((state.chains.len(), state.sets.len()))
        })
    });
    let mut chains = 0;
    let mut ipsets = 0;
    for r in futures::future::join_all(jobs).await {
        let (c, s) = r.map_err(|e| anyhow!("a policy task failed: {e}"))??;
        chains += c;
        ipsets += s;
    }
    Ok(Some(Programmed {
        nodes: st.plan.nodes.len(),
        chains,
        ipsets,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// A rule of a chain: (chain, rule after `-A <chain> `).
type ChainRule = (String, String);

/// The chains of the filter table that `state` owns (by its prefixes), and
/// the rules of the built-in chains it keeps rules in, as `iptables-save`
/// prints them: (chain, rule after `-A <chain> `).
fn filter_now(ns: &Netns, state: &PolicyState) -> Result<(BTreeSet<String>, Vec<ChainRule>)> {
    let save = netns::run_in(ns, "iptables-save", &["-t", "filter"])?;
    let chains = save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| state.owns(c))
        .map(str::to_string)
        .collect();
    let kept: BTreeSet<&str> = state.top.iter().chain(&state.append).map(|(c, _)| *c).collect();
    let rules = save
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(c, _)| kept.contains(c))
        .map(|(c, r)| (c.to_string(), r.to_string()))
        .collect();
    Ok((chains, rules))
}

fn ipsets_of(ns: &Netns, state: &PolicyState) -> Result<BTreeSet<String>> {
    let list = netns::run_in(ns, "ipset", &["list", "-n"])?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|s| state.owns(s))
        .map(str::to_string)
        .collect())
}

/// The `iptables-restore` lines that put `state`'s rules in the built-in
/// chains where they are missing, given the rules there now: per chain, if
/// any of its top rules is missing, those present are deleted and all are
/// inserted at the top in order; appended rules are appended if missing.
fn builtin_rules(state: &PolicyState, now: &[ChainRule]) -> String {
    let has = |chain: &str, rule: &str| now.iter().any(|(c, r)| c == chain && r == rule);
    let mut out = String::new();
    let mut chains: Vec<&str> = Vec::new();
    for (c, _) in &state.top {
        if !chains.contains(c) {
            chains.push(c);
        }
    }
    for chain in chains {
        let rules: Vec<&String> = state.top.iter().filter(|(c, _)| *c == chain).map(|(_, r)| r).collect();
        if rules.iter().all(|r| has(chain, r)) {
            continue;
        }
        for r in rules.iter().filter(|r| has(chain, r)) {
            out.push_str(&format!("\n-D {chain} {r}"));
        }
        for (pos, r) in rules.iter().enumerate() {
            out.push_str(&format!("\n-I {chain} {} {r}", pos + 1));
        }
    }
    for (chain, rule) in &state.append {
        if !has(chain, rule) {
            out.push_str(&format!("\n-A {chain} {rule}"));
        }
    }
    out
}

/// Makes one node's filter table and ipsets what `state` says: sets first
/// (rules refer to them), then the chains in one `iptables-restore
/// --noflush` that also empties and deletes the engine's chains `state`
/// no longer has and puts its rules in the built-in chains where they are
/// missing ([`builtin_rules`]), and last the sets no rule uses now (all
/// flushed before any is destroyed, as a list:set may hold another).
fn program_node(ns: &Netns, state: &PolicyState) -> Result<()> {
    let (old_chains, builtin) = filter_now(ns, state)?;
    let old_sets = ipsets_of(ns, state)?;
    if !state.ipsets.is_empty() {
        netns::run_in_with_input(ns, "ipset", &["restore", "-exist"], &state.ipsets)?;
    }
    let stale: Vec<&String> = old_chains.iter().filter(|c| !state.chains.contains(c)).collect();
    let mut extra = String::new();
    for c in &stale {
        extra.push_str(&format!("\n:{c} - [0:0]"));
    }
    extra.push_str(&builtin_rules(state, &builtin));
    for c in &stale {
        extra.push_str(&format!("\n-X {c}"));
    }
    let text = state.iptables.trim_end();
    let input = match text.rfind("\nCOMMIT") {
        Some(at) => format!("{}{extra}{}\n", &text[..at], &text[at..]),
        None => format!("{text}\n"),
    };
    netns::run_in_with_input(ns, "iptables-restore", &["--noflush", "--wait"], &input)?;
    let stale_sets: Vec<&String> = old_sets.iter().filter(|s| !state.sets.contains(s)).collect();
    if !stale_sets.is_empty() {
        let mut input = String::new();
        for s in &stale_sets {
            input.push_str(&format!("flush {s}\n"));
        }
        for s in &stale_sets {
            input.push_str(&format!("destroy {s}\n"));
        }
        netns::run_in_with_input(ns, "ipset", &["restore"], &input)?;
    }
    Ok(())
}

/// Adds policies to the lab's state, replacing any of the same namespace
/// and name. Returns (added, replaced) ids.
pub fn add(st: &mut LabState, new: Vec<AppliedPolicy>) -> (Vec<String>, Vec<String>) {
    let mut added = Vec::new();
    let mut replaced = Vec::new();
    for p in new {
        let id = p.id();
        match st.policies.iter_mut().find(|q| q.id() == id) {
            Some(q) => {
                *q = p;
                replaced.push(id);
            }
            None => {
                st.policies.push(p);
                added.push(id);
            }
        }
    }
    st.policies.sort_by_key(|p| p.id());
    (added, replaced)
}

/// Which policies `rm NAME` means: `namespace/name`, or a name that only
/// one namespace has.
pub fn resolve(st: &LabState, name: &str) -> std::result::Result<String, String> {
    if st.policies.iter().any(|p| p.id() == name) {
        return Ok(name.to_string());
    }
    let matching: Vec<String> = st
        .policies
        .iter()
        .filter(|p| crate::model::netpol::policy_name(&p.policy) == name)
        .map(|p| p.id())
        .collect();
    match matching.len() {
        1 => Ok(matching[0].clone()),
        0 => Err(format!("no policy {name} in the lab")),
        _ => Err(format!(
            "policy {name} is in several namespaces: {}",
            matching.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(top: &[(&'static str, &str)], append: &[(&'static str, &str)]) -> PolicyState {
        PolicyState {
            iptables: String::new(),
            ipsets: String::new(),
            chains: Vec::new(),
            sets: Vec::new(),
            top: top.iter().map(|(c, r)| (*c, r.to_string())).collect(),
            append: append.iter().map(|(c, r)| (*c, r.to_string())).collect(),
            prefixes: vec!["x"],
        }
    }

    fn now(rules: &[(&str, &str)]) -> Vec<(String, String)> {
        rules.iter().map(|(c, r)| (c.to_string(), r.to_string())).collect()
    }

    /// Felix's one jump is inserted at the top and its rules appended, as
    /// before there were several.
    #[test]
    fn felix_jump_inserted_and_rules_appended_where_missing() {
        let s = state(
            &[("FORWARD", "-j cali-FORWARD")],
            &[("FORWARD", "-j A"), ("FORWARD", "-j B")],
        );
        assert_eq!(
            builtin_rules(&s, &now(&[("FORWARD", "-j B")])),
            "\n-I FORWARD 1 -j cali-FORWARD\n-A FORWARD -j A"
        );
        let all = now(&[("FORWARD", "-j cali-FORWARD"), ("FORWARD", "-j A"), ("FORWARD", "-j B")]);
        assert_eq!(builtin_rules(&s, &all), "");
    }

    /// Weave's ensureRulesAtTop: one missing rule of a chain moves them all
    /// back to its top in order; another chain's are left alone.
    #[test]
    fn top_rules_are_reinserted_together_in_order() {
        let s = state(
            &[
                ("FORWARD", "-j A"),
                ("FORWARD", "-j B"),
                ("FORWARD", "-j C"),
                ("INPUT", "-j D"),
            ],
            &[("INPUT", "-j E")],
        );
        let present = now(&[
            ("FORWARD", "-j X"),
            ("FORWARD", "-j B"),
            ("INPUT", "-j D"),
            ("INPUT", "-j E"),
        ]);
        assert_eq!(
            builtin_rules(&s, &present),
            "\n-D FORWARD -j B\n-I FORWARD 1 -j A\n-I FORWARD 2 -j B\n-I FORWARD 3 -j C"
        );
    }

    /// A scratch named namespace, removed when dropped.
    struct Scratch(String);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }

    /// An engine's state with a list:set holding a hash:ip set, a chain
    /// matching it, two rules at the top of FORWARD and one appended to
    /// INPUT; `with_sets` false: the same chain, empty, and no sets.
    fn engine(with_sets: bool) -> PolicyState {
        let (iptables, ipsets, sets) = if with_sets {
            (
                "*filter\n:TSTX-C - [0:0]\n-A TSTX-C -m set --match-set tstx-l src -j ACCEPT\nCOMMIT\n",
                "create tstx-a hash:ip comment -exist\ncreate tstx-l list:set size 8 comment -exist\nflush tstx-a\nadd tstx-a 10.0.0.1 comment \"a\"\nflush tstx-l\nadd tstx-l tstx-a comment \"a\"\n",
                vec!["tstx-a".to_string(), "tstx-l".to_string()],
            )
        } else {
            ("*filter\n:TSTX-C - [0:0]\nCOMMIT\n", "", Vec::new())
        };
        PolicyState {
            iptables: iptables.to_string(),
            ipsets: ipsets.to_string(),
            chains: vec!["TSTX-C".to_string()],
            sets,
            top: vec![
                (
                    "FORWARD",
                    "-i tstx0 -m comment --comment \"it\\'s first\" -j TSTX-C".to_string(),
                ),
                ("FORWARD", "-o tstx0 -j DROP".to_string()),
            ],
            append: vec![("INPUT", "-i tstx0 -j TSTX-C".to_string())],
            prefixes: vec!["TSTX-", "tstx-"],
        }
    }

    /// program_node in a scratch namespace: sets and rules go in; a state
    /// without the sets removes them though one list:set holds the other;
    /// a missing top rule puts both back at the top, in order, once each.
    #[test]
    fn program_node_in_a_scratch_namespace() {
        let name = format!("{}_unit-policy-{}", crate::model::paths::NS_PREFIX, std::process::id());
        let (ns, ()) = Netns::create(&name, || Ok(())).expect("a scratch namespace (needs root)");
        let _guard = Scratch(name);
        let forward = |ns: &Netns| -> Vec<String> {
            let (_, rules) = filter_now(ns, &engine(true)).expect("iptables-save");
            rules
                .into_iter()
                .filter(|(c, _)| c == "FORWARD")
                .map(|(_, r)| r)
                .collect()
        };
        let tops: Vec<String> = engine(true).top.into_iter().map(|(_, r)| r).collect();
        program_node(&ns, &engine(true)).expect("program");
        assert_eq!(
            ipsets_of(&ns, &engine(true)).unwrap(),
            BTreeSet::from(["tstx-a".into(), "tstx-l".into()])
        );
        assert_eq!(forward(&ns), tops);
        program_node(&ns, &engine(false)).expect("program without sets");
        assert!(ipsets_of(&ns, &engine(false)).unwrap().is_empty());
        netns::run_in(&ns, "iptables", &["-D", "FORWARD", "-o", "tstx0", "-j", "DROP"]).unwrap();
        netns::run_in(&ns, "iptables", &["-I", "FORWARD", "1", "-j", "ACCEPT"]).unwrap();
        program_node(&ns, &engine(true)).expect("program again");
        let mut want = tops.clone();
        want.push("-j ACCEPT".to_string());
        assert_eq!(forward(&ns), want);
        let (chains, rules) = filter_now(&ns, &engine(true)).unwrap();
        assert_eq!(chains, BTreeSet::from(["TSTX-C".to_string()]));
        assert_eq!(rules.iter().filter(|(c, _)| c == "INPUT").count(), 1);
    }
}

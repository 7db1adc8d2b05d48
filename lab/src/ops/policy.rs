//! NetworkPolicy in a running lab: the policies in force (kept in the lab's
//! state), the world they act on (pods with their identity and address),
//! and programming each node's policy engine (felix, where the profile has
//! one) so that the kernel holds exactly the chains and ipsets the policies
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
        let state = crate::profile::policy_state(&st.plan.profile, &world, &policies, &n.name);
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

/// The chains of the filter table whose names start with `prefix`, and the
/// rules of FORWARD, as `iptables-save` prints them.
fn filter_now(ns: &Netns, prefix: &str) -> Result<(BTreeSet<String>, Vec<String>)> {
    let save = netns::run_in(ns, "iptables-save", &["-t", "filter"])?;
    let chains = save
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_string)
        .collect();
    let forward = save
        .lines()
        .filter_map(|l| l.strip_prefix("-A FORWARD "))
        .map(str::to_string)
        .collect();
    Ok((chains, forward))
}

fn ipsets_with(ns: &Netns, prefix: &str) -> Result<BTreeSet<String>> {
    let list = netns::run_in(ns, "ipset", &["list", "-n"])?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|s| s.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Makes one node's filter table and ipsets what `state` says: sets first
/// (rules refer to them), then the chains in one `iptables-restore
/// --noflush` that also empties and deletes the engine's chains `state`
/// no longer has and puts its FORWARD rules in place where they are
/// missing (the jump at the top, the others at the end), and last the sets
/// no rule uses now.
fn program_node(ns: &Netns, state: &crate::profile::PolicyState) -> Result<()> {
    let prefix = state.prefix;
    let (old_chains, forward) = filter_now(ns, prefix)?;
    let old_sets = ipsets_with(ns, prefix)?;
    if !state.ipsets.is_empty() {
        netns::run_in_with_input(ns, "ipset", &["restore", "-exist"], &state.ipsets)?;
    }
    let stale: Vec<&String> = old_chains.iter().filter(|c| !state.chains.contains(c)).collect();
    let mut extra = String::new();
    for c in &stale {
        extra.push_str(&format!("\n:{c} - [0:0]"));
    }
    if !forward.iter().any(|r| r == state.forward_jump) {
        extra.push_str(&format!("\n-I FORWARD 1 {}", state.forward_jump));
    }
    for rule in &state.forward_append {
        if !forward.iter().any(|r| r == rule) {
            extra.push_str(&format!("\n-A FORWARD {rule}"));
        }
    }
    for c in &stale {
        extra.push_str(&format!("\n-X {c}"));
    }
    let text = state.iptables.trim_end();
    let input = match text.rfind("\nCOMMIT") {
        Some(at) => format!("{}{extra}{}\n", &text[..at], &text[at..]),
        None => format!("{text}\n"),
    };
    netns::run_in_with_input(ns, "iptables-restore", &["--noflush", "--wait"], &input)?;
    for s in old_sets.iter().filter(|s| !state.sets.contains(s)) {
        netns::run_in(ns, "ipset", &["destroy", s])?;
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

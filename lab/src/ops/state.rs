//! The state a running lab keeps under `/run/cnilab/<lab>/lab.json`, and
//! finding labs again, also those whose `up` crashed before writing it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::kernel::netns;
use crate::model::error::Error;
use crate::model::paths::{self, LabPaths};
use crate::profile::Plan;

/// Version of the state file's layout.
pub const STATE_VERSION: u32 = 1;

/// Where a lab is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `up` is running (or crashed while running).
    Building,
    /// `up` finished.
    Up,
}

/// What a pod got from its CNI chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// Its address with prefix, from the CNI result.
    pub ip: Option<String>,
    /// Its gateway, from the CNI result.
    pub gateway: Option<Ipv4Addr>,
}

/// A running lab's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Layout version.
    pub version: u32,
    /// Life phase.
    pub phase: Phase,
    /// The topology file as the user named it.
    pub topology_file: String,
    /// Every decision.
    pub plan: Plan,
    /// Pods by `node/pod`.
    pub pods: BTreeMap<String, PodState>,
    /// Agent process IDs by node or router.
    pub agents: BTreeMap<String, u32>,
    /// Active faults, in the order they were added.
    #[serde(default)]
    pub faults: Vec<crate::model::faultspec::Fault>,
    /// How many faults were ever added (their IDs count up).
    #[serde(default)]
    pub fault_seq: u32,
    /// The NetworkPolicies in force, sorted by namespace/name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::model::identity::AppliedPolicy>,
}

impl LabState {
    /// A new state for a lab about to be built.
    pub fn new(plan: Plan, topology_file: String) -> Self {
        LabState {
            version: STATE_VERSION,
            phase: Phase::Building,
            topology_file,
            plan,
            pods: BTreeMap::new(),
            agents: BTreeMap::new(),
            faults: Vec::new(),
            fault_seq: 0,
            policies: Vec::new(),
        }
    }

    /// The lab's folders.
    pub fn paths(&self) -> LabPaths {
        LabPaths::of(&self.plan.lab)
    }

    /// Loads a lab's state, `None` when it has none. What is read back is
    /// checked like input: it must be this lab's, and every namespace it
    /// names must be one of this lab's.
    pub fn load(lab: &str) -> Result<Option<LabState>> {
        crate::model::names::check(crate::model::names::Kind::Lab, lab, "lab")?;
        let path = LabPaths::of(lab).state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: LabState =
            serde_json::from_str(&text).with_context(|| format!("{} is not a cnilab state file", path.display()))?;
        state.check_owned_by(lab).with_context(|| {
            format!(
                "{} does not describe lab {lab}; remove the lab with `cnilab down {lab}`",
                path.display()
            )
        })?;
        Ok(Some(state))
    }

    /// Every name in the state belongs to lab `lab`: a state file edited or
    /// copied from another lab cannot point commands at other namespaces.
    fn check_owned_by(&self, lab: &str) -> Result<()> {
        use crate::model::names::{Kind, is_valid};
        let plan = &self.plan;
        anyhow::ensure!(
            plan.lab == lab,
            "it names lab {:?}",
            crate::model::names::excerpt(&plan.lab)
        );
        let prefix = paths::lab_ns_prefix(lab);
        let owned = |ns: &str| ns.starts_with(&prefix) && !ns.contains('/') && ns.len() < 256;
        anyhow::ensure!(owned(&plan.fabric_ns), "its fabric namespace is not the lab's");
        for n in &plan.nodes {
            anyhow::ensure!(
                is_valid(Kind::Node, &n.name) && owned(&n.ns),
                "node {:?} is not the lab's",
                n.name
            );
            for p in &n.pods {
                anyhow::ensure!(
                    is_valid(Kind::Pod, &p.name) && owned(&p.ns),
                    "pod {:?} is not the lab's",
                    p.name
                );
            }
        }
        for r in &plan.routers {
            anyhow::ensure!(
                is_valid(Kind::Router, &r.name) && owned(&r.ns),
                "router {:?} is not the lab's",
                r.name
            );
        }
        for s in &plan.switches {
            anyhow::ensure!(is_valid(Kind::Switch, &s.name), "switch {:?} is not valid", s.name);
            if let Some(u) = &s.uplink {
                anyhow::ensure!(owned(&u.ns), "the uplink of switch {:?} is not the lab's", s.name);
            }
        }
        for f in &self.faults {
            for ns in f.undo.iter().flat_map(|u| u.namespaces()) {
                anyhow::ensure!(owned(ns), "fault {:?} names a namespace that is not the lab's", f.id);
            }
        }
        Ok(())
    }

    /// Saves the state atomically.
    pub fn save(&self) -> Result<()> {
        let path = self.paths().state_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::create_dir_all(path.parent().expect("state file has a folder"))?;
        // Write, fsync, rename: a reader sees the old state or the new one,
        // never half of one, also across a crash.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
            f.sync_all()
        };
        write().with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Every lab that exists: with a state folder, or with namespaces left by a
/// crash.
pub fn labs() -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(paths::run_base()) {
        for e in dir.flatten() {
            // Only folders with a lab's name: anything else there is not ours.
            if e.path().is_dir() {
                if let Ok(name) = e.file_name().into_string() {
                    if crate::model::names::is_valid(crate::model::names::Kind::Lab, &name) {
                        found.insert(name);
                    }
                }
            }
        }
    }
    for ns in netns::list() {
        if let Some(lab) = paths::valid_lab_of_ns(&ns) {
            found.insert(lab.to_string());
        }
    }
    found.into_iter().collect()
}

/// The lab a command acts on: the one named (by argument, `--lab` or
/// `CNILAB_LAB`), else the only one running.
pub fn choose_lab(named: Option<&str>) -> Result<String, Error> {
    if let Some(n) = named {
        crate::model::names::check(
            crate::model::names::Kind::Lab,
            n,
            "from an argument, --lab or CNILAB_LAB",
        )?;
        return Ok(n.to_string());
    }
    let all = labs();
    match all.len() {
        0 => Err(Error::env("no lab is running", "start one with `cnilab up TOPOLOGY`")),
        1 => Ok(all[0].clone()),
        _ => Err(Error::usage(
            format!("{} labs are running: {}", all.len(), all.join(", ")),
            "choose one with --lab NAME or CNILAB_LAB=NAME",
        )),
    }
}

/// The state of a lab that must exist.
pub fn require(lab: &str) -> Result<LabState, Error> {
    crate::model::names::check(crate::model::names::Kind::Lab, lab, "lab")?;
    match LabState::load(lab)? {
        Some(s) => Ok(s),
        None => {
            let others = labs();
            let fix = if others.is_empty() {
                "start it with `cnilab up TOPOLOGY`".to_string()
            } else {
                format!("running labs: {}", others.join(", "))
            };
            Err(Error::env(format!("lab \"{lab}\" is not running"), fix))
        }
    }
}

/// The state of a lab whose `up` has finished: observing or changing a lab
/// that is still being built (or whose `up` crashed) would report half of it.
pub fn require_up(lab: &str) -> Result<LabState, Error> {
    let st = require(lab)?;
    if st.phase != Phase::Up {
        let who = crate::kernel::lock::holder(lab).map_or_else(
            || "its `cnilab up` did not finish".to_string(),
            |pid| format!("`cnilab up` (pid {pid}) is still building it"),
        );
        return Err(Error::env(
            format!("lab {lab} is not up: {who}"),
            format!("wait for `cnilab up` to finish, or remove the lab with `cnilab down {lab}`"),
        ));
    }
    Ok(st)
}

/// For commands that change a running lab (fault, pod): waits for the lab's
/// lock, then reads its state under it, so that what another writer just
/// recorded is in the state this command changes. A lab that turned out not
/// to exist leaves no lock file behind.
pub fn lock_and_require_up(
    lab: &str,
    patience: std::time::Duration,
) -> Result<(crate::kernel::lock::LabLock, LabState), Error> {
    let lock = crate::kernel::lock::acquire(lab, patience)?;
    match require_up(lab) {
        Ok(st) => Ok((lock, st)),
        Err(e) => {
            if !LabPaths::of(lab).root.exists() {
                lock.remove();
            }
            Err(e)
        }
    }
}

/// The namespace of a TARGET: `NODE`, `NODE/POD`, or a switch name. The
/// one resolver of the command line and scenarios: what a name means is
/// `faultspec::resolve`'s, the namespace and the error are here.
pub fn resolve_target(st: &LabState, target: &str) -> Result<String, Error> {
    use crate::model::faultspec::{Target, resolve};
    crate::model::names::check_target(target)?;
    let plan = &st.plan;
    match resolve(plan, target) {
        Some(Target::Pod(p)) => return Ok(p.ns.clone()),
        Some(Target::Node(n)) => return Ok(n.ns.clone()),
        Some(Target::Switch(_)) => return Ok(plan.fabric_ns.clone()),
        Some(Target::Router(r)) => return Ok(r.ns.clone()),
        Some(Target::Etcd(e)) => return Ok(e.ns.clone()),
        None => {}
    }
    let mut known: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    known.extend(plan.pods().map(|(n, p)| format!("{}/{}", n.name, p.name)));
    known.extend(plan.switches.iter().map(|s| s.name.clone()));
    known.extend(plan.routers.iter().map(|r| r.name.clone()));
    if plan.etcd.is_some() {
        known.push(crate::model::topology::ETCD_TARGET.to_string());
    }
    let shown: Vec<String> = known.iter().take(12).cloned().collect();
    Err(Error::usage(
        format!("lab {} has no target \"{target}\"", plan.lab),
        format!(
            "name a node, NODE/POD, switch or router: {}{}",
            shown.join(", "),
            if known.len() > shown.len() { ", ..." } else { "" }
        ),
    ))
}

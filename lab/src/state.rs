//! The state a running lab keeps under `/run/cnilab/<lab>/lab.json`, and
//! finding labs again, also those whose `up` crashed before writing it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::netns;
use crate::paths::{self, LabPaths};
use crate::plan::Plan;

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
    pub faults: Vec<crate::fault::Fault>,
    /// How many faults were ever added (their IDs count up).
    #[serde(default)]
    pub fault_seq: u32,
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
        }
    }

    /// The lab's folders.
    pub fn paths(&self) -> LabPaths {
        LabPaths::of(&self.plan.lab)
    }

    /// Loads a lab's state, `None` when it has none.
    pub fn load(lab: &str) -> Result<Option<LabState>> {
        let path = LabPaths::of(lab).state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: LabState =
            serde_json::from_str(&text).with_context(|| format!("{} is not a cnilab state file", path.display()))?;
        Ok(Some(state))
    }

    /// Saves the state atomically.
    pub fn save(&self) -> Result<()> {
        let path = self.paths().state_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::create_dir_all(path.parent().expect("state file has a folder"))?;
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
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
            if e.path().is_dir() {
                if let Ok(name) = e.file_name().into_string() {
                    found.insert(name);
                }
            }
        }
    }
    for ns in netns::list() {
        if let Some(lab) = paths::lab_of_ns(&ns) {
            found.insert(lab.to_string());
        }
    }
    found.into_iter().collect()
}

/// The lab a command acts on: the one named (by argument, `--lab` or
/// `CNILAB_LAB`), else the only one running.
pub fn choose_lab(named: Option<&str>) -> Result<String, Error> {
    if let Some(n) = named {
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

//! The verbs the command line and scenarios share: probes with their pass
//! rule, faults, pods, snapshots and commands run in a target. Each returns
//! a typed result: `cli` prints it, `scenario` checks it against an
//! expectation. Targets are resolved by [`crate::ops::state::resolve_target`]
//! alone.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::kernel::progress::Progress;
use crate::model::error::Error;
use crate::model::faultspec::{Fault, FaultSpec};
use crate::observe::probe;
use crate::ops::state::LabState;

/// A probe and its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// One ICMP echo.
    Ping {
        from: String,
        to: String,
        size: Option<u32>,
        df: bool,
    },
    /// Every pod to every pod.
    Pingall,
    /// Path MTU.
    Pmtu { from: String, to: String },
    /// Bulk TCP with a deadline.
    Tcp {
        from: String,
        to: String,
        bytes: u64,
        timeout: Duration,
    },
    /// BGP sessions, of one node or router or all.
    Bgp { on: Option<String> },
    /// `ip route get`.
    Route { from: String, to: String },
}

impl Probe {
    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Probe::Ping { from, to, size, df } => format!(
                "probe ping {from} -> {to}{}{}",
                size.map(|s| format!(" {s} bytes")).unwrap_or_default(),
                if *df { " DF" } else { "" }
            ),
            Probe::Pingall => "probe pingall".into(),
            Probe::Pmtu { from, to } => format!("probe pmtu {from} -> {to}"),
            Probe::Tcp { from, to, bytes, .. } => format!("probe tcp {from} -> {to} ({bytes} bytes)"),
            Probe::Bgp { on } => format!(
                "probe bgp{}",
                on.as_ref().map(|o| format!(" on {o}")).unwrap_or_default()
            ),
            Probe::Route { from, to } => format!("probe route {from} -> {to}"),
        }
    }
}

/// What a probe found; serialized as the probe's own result.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum ProbeResult {
    /// Of `ping`.
    Ping(probe::Ping),
    /// Of `pingall`.
    Pingall(probe::PingAll),
    /// Of `pmtu`.
    Pmtu(probe::Pmtu),
    /// Of `tcp`.
    Tcp(probe::Tcp),
    /// Of `bgp`.
    Bgp(probe::Bgp),
    /// Of `route`.
    Route(probe::RouteGet),
}

impl ProbeResult {
    /// The pass rule of each probe, for the exit code and for `expect = "ok"`.
    pub fn ok(&self) -> bool {
        match self {
            ProbeResult::Ping(p) => p.ok,
            ProbeResult::Pingall(p) => p.failed == 0,
            ProbeResult::Pmtu(p) => !p.blackhole,
            ProbeResult::Tcp(p) => !p.stalled,
            ProbeResult::Bgp(p) => p.down == 0,
            ProbeResult::Route(p) => p.dev.is_some(),
        }
    }

    /// The fields a scenario's expectation sees: the JSON, and for `bgp`
    /// the number of sessions `established`.
    pub fn fields(&self) -> Result<Value> {
        let mut v = serde_json::to_value(self)?;
        if let ProbeResult::Bgp(p) = self {
            v["established"] = json!(p.sessions.len() - p.down);
        }
        Ok(v)
    }
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeResult::Ping(p) => p.fmt(f),
            ProbeResult::Pingall(p) => p.fmt(f),
            ProbeResult::Pmtu(p) => p.fmt(f),
            ProbeResult::Tcp(p) => p.fmt(f),
            ProbeResult::Bgp(p) => p.fmt(f),
            ProbeResult::Route(p) => p.fmt(f),
        }
    }
}

/// Runs a probe (blocking: call it off the async runtime's workers).
pub fn probe(st: &LabState, p: &Probe, progress: &Progress) -> Result<ProbeResult> {
    Ok(match p {
        Probe::Ping { from, to, size, df } => ProbeResult::Ping(probe::ping(st, from, to, *size, *df)?),
        Probe::Pingall => ProbeResult::Pingall(probe::pingall_with(st, progress)?),
        Probe::Pmtu { from, to } => ProbeResult::Pmtu(probe::pmtu(st, from, to)?),
        Probe::Tcp {
            from,
            to,
            bytes,
            timeout,
        } => ProbeResult::Tcp(probe::tcp(st, from, to, *bytes, *timeout)?),
        Probe::Bgp { on } => ProbeResult::Bgp(probe::bgp(st, on.as_deref())?),
        Probe::Route { from, to } => ProbeResult::Route(probe::route(st, from, to)?),
    })
}

/// Injects a fault.
pub async fn fault_add(st: &mut LabState, spec: FaultSpec, progress: &Progress) -> Result<Fault> {
    crate::ops::fault::add(st, spec, progress).await
}

/// Which faults `fault rm` reverts.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultSel {
    /// This one (the command line's ID).
    Id(String),
    /// The newest with this id or kind (a scenario's `fault_rm`).
    Newest(String),
    /// Every fault, newest first.
    All,
}

/// Reverts the selected faults, newest first. A fault that cannot be fully
/// reverted does not stop the others; the error at the end lists every
/// failure. `removed` is called for each fault reverted completely.
pub async fn fault_rm(
    st: &mut LabState,
    which: &FaultSel,
    progress: &Progress,
    removed: &mut dyn FnMut(&Fault),
) -> Result<Vec<String>> {
    let ids: Vec<String> = match which {
        FaultSel::Id(id) => vec![id.clone()],
        FaultSel::All => st.faults.iter().rev().map(|f| f.id.clone()).collect(),
        FaultSel::Newest(w) => match st.faults.iter().rev().find(|f| f.id == *w || f.spec.kind() == w) {
            Some(f) => vec![f.id.clone()],
            None => return Err(anyhow!("no active fault matches \"{w}\"")),
        },
    };
    if let [only] = ids.as_slice() {
        let f = crate::ops::fault::remove(st, only, progress).await?;
        removed(&f);
        return Ok(ids);
    }
    let mut failures = Vec::new();
    for id in &ids {
        match crate::ops::fault::remove(st, id, progress).await {
            Ok(f) => removed(&f),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let headline = format!(
        "{} of {} faults were not completely reverted",
        failures.len(),
        ids.len()
    );
    match crate::ops::teardown::all_failures(&headline, &failures) {
        Some(e) => Err(e),
        None => Ok(ids),
    }
}

/// Adds a pod through its node's CNI chain; returns its address.
pub async fn pod_add(st: &mut LabState, pod: &str) -> Result<String> {
    crate::ops::pods::add(st, pod).await
}

/// Runs CNI DEL for a pod and removes it.
pub async fn pod_rm(st: &mut LabState, pod: &str) -> Result<()> {
    crate::ops::pods::remove(st, pod).await
}

/// The snapshot of a lab, of every namespace or of `targets`' only.
pub async fn snapshot(st: &LabState, targets: &[String], dynamic: bool) -> Result<crate::observe::snapshot::Snapshot> {
    let namespaces: Option<Vec<String>> = if targets.is_empty() {
        None
    } else {
        Some(
            targets
                .iter()
                .map(|t| crate::ops::state::resolve_target(st, t))
                .collect::<Result<_, Error>>()?,
        )
    };
    crate::observe::snapshot::take(st, namespaces.as_deref(), dynamic).await
}

/// What a command run in a target did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exec {
    /// It exited 0.
    pub ok: bool,
    /// Its exit status (-1 when killed by a signal).
    pub status: i32,
    /// Its stdout, then its stderr.
    pub output: String,
}

/// Runs `command` in a target's namespace and collects its output (blocking).
pub fn exec(st: &LabState, target: &str, command: &[String]) -> Result<Exec> {
    let ns = crate::ops::state::resolve_target(st, target)?;
    let h = crate::kernel::netns::Netns::open(&ns)?;
    let out = crate::kernel::netns::command(&h, &command[0])
        .args(&command[1..])
        .output()
        .with_context(|| format!("cannot run {}", command[0]))?;
    Ok(Exec {
        ok: out.status.success(),
        status: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

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
    /// Every pod pair on ports and protocols, next to the policies' verdict.
    Policy {
        /// Ports (none: the pods' declared ports, else 80).
        ports: Vec<u16>,
        /// Protocols (none: TCP and UDP).
        protos: Vec<crate::model::netpol::Proto>,
        /// Each probe's deadline.
        timeout: Duration,
    },
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
            Probe::Policy { ports, protos, .. } => format!(
                "probe policy{}{}",
                if ports.is_empty() {
                    String::new()
                } else {
                    format!(
                        " port {}",
                        ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
                    )
                },
                if protos.is_empty() {
                    String::new()
                } else {
                    format!(" {}", protos.iter().map(|p| p.lower()).collect::<Vec<_>>().join(","))
                }
            ),
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
    /// Of `policy`.
    Policy(probe::policy::PolicyProbe),
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
            ProbeResult::Policy(p) => p.ok(),
        }
    }

    /// The fields a scenario's expectation sees: the JSON, and for `bgp`
    /// the number of sessions `established`.
    pub fn fields(&self) -> Result<Value> {
        let mut v = serde_json::to_value(self)?;
        if let ProbeResult::Bgp(p) = self {
            v["established"] = json!(p.sessions.len() - p.down);
        }
        if let ProbeResult::Policy(p) = self {
            v["ok"] = json!(p.ok());
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
            ProbeResult::Policy(p) => p.fmt(f),
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
        Probe::Policy { ports, protos, timeout } => {
            let ports = if ports.is_empty() {
                default_policy_ports(st)
            } else {
                ports.clone()
            };
            let protos = if protos.is_empty() {
                vec![crate::model::netpol::Proto::Tcp, crate::model::netpol::Proto::Udp]
            } else {
                protos.clone()
            };
            ProbeResult::Policy(probe::policy::probe(st, &ports, &protos, *timeout)?)
        }
    })
}

/// The ports `probe policy` tries without `--port`: every port a pod
/// declares, else 80.
pub fn default_policy_ports(st: &LabState) -> Vec<u16> {
    let mut v: Vec<u16> = st
        .plan
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().flat_map(|p| p.meta.ports.iter().map(|x| x.port)))
        .collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        v.push(80);
    }
    v
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

/// Adds a pod through its node's CNI chain; returns its address. The
/// policy engine then programs its endpoint, as felix does.
pub async fn pod_add(st: &mut LabState, pod: &str) -> Result<String> {
    pod_add_as(st, pod, None).await
}

/// Adds a pod with a Kubernetes identity (namespace, labels); the policies
/// in force select it as they would in Kubernetes.
pub async fn pod_add_as(st: &mut LabState, pod: &str, meta: Option<crate::model::identity::PodMeta>) -> Result<String> {
    let ip = crate::ops::pods::add_as(st, pod, meta).await?;
    crate::ops::policy::program(st).await?;
    Ok(ip)
}

/// Runs CNI DEL for a pod and removes it.
pub async fn pod_rm(st: &mut LabState, pod: &str) -> Result<()> {
    crate::ops::pods::remove(st, pod).await?;
    crate::ops::policy::program(st).await?;
    Ok(())
}

/// What `policy apply` or `policy rm` changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyChange {
    /// Policies added (`namespace/name`).
    pub added: Vec<String>,
    /// Policies replaced by a new version.
    pub replaced: Vec<String>,
    /// Policies removed.
    pub removed: Vec<String>,
    /// Policies in force that select no pod.
    pub selects_nothing: Vec<String>,
    /// Whether the lab's CNI enforces policy.
    pub enforced: bool,
    /// What programming the nodes did, where it does.
    pub programmed: Option<crate::ops::policy::Programmed>,
}

impl PolicyChange {
    /// Lines for the terminal.
    pub fn lines(&self, cni: &str) -> Vec<String> {
        let mut v = Vec::new();
        for (what, ids) in [
            ("applied", &self.added),
            ("replaced", &self.replaced),
            ("removed", &self.removed),
        ] {
            v.extend(ids.iter().map(|id| format!("policy {id} {what}")));
        }
        if let Some(p) = &self.programmed {
            v.push(format!(
                "felix programmed {} nodes: {} chains, {} ipsets, in {:.2} s",
                p.nodes, p.chains, p.ipsets, p.seconds
            ));
        }
        if let Some(n) = enforcement_note(cni, self.enforced) {
            v.push(n);
        }
        v
    }
}

/// The one line that says a lab's CNI enforces no NetworkPolicy.
pub fn enforcement_note(cni: &str, enforced: bool) -> Option<String> {
    (!enforced).then(|| {
        format!(
            "note: {cni} enforces no NetworkPolicy: the policies are recorded and `probe policy` shows what they should do, but the kernel lets everything through (cni = \"canal\" adds Calico's felix to flannel)"
        )
    })
}

/// The warning for a policy that selects no pod.
pub fn selects_nothing_warning(id: &str) -> String {
    format!(
        "warning: policy {id} selects no pod: no pod of its namespace has the labels its podSelector asks for (see `cnilab policy ls`)"
    )
}

/// The policies in force that select no pod, with why.
pub fn selects_nothing(st: &LabState) -> Vec<String> {
    let world = crate::ops::policy::world(st);
    st.policies
        .iter()
        .filter(|p| crate::model::netpol::eval::selects(&world, &p.policy).is_empty())
        .map(|p| p.id())
        .collect()
}

/// Applies the NetworkPolicies of manifest files to a running lab.
pub async fn policy_apply(st: &mut LabState, files: &[std::path::PathBuf]) -> Result<PolicyChange> {
    let namespaces = st.plan.topology.namespace_names();
    let mut new = Vec::new();
    let mut errors: Option<crate::model::error::InputError> = None;
    for f in files {
        let shown = f.display().to_string();
        match crate::model::identity::read_manifest_file(&shown, f, &namespaces) {
            Ok(v) => new.extend(v),
            // Every mistake of every file, reported at once.
            Err(e) => match &mut errors {
                None => errors = Some(e),
                Some(first) => {
                    let more = first.more.get_or_insert_with(Default::default);
                    more.extend(e.all().cloned().map(|mut x| {
                        x.more = None;
                        x
                    }));
                }
            },
        }
    }
    if let Some(e) = errors {
        return Err(Error::from(e).into());
    }
    let (added, replaced) = crate::ops::policy::add(st, new);
    st.save()?;
    finish_policy_change(
        st,
        PolicyChange {
            added,
            replaced,
            ..Default::default()
        },
    )
    .await
}

/// Which policies `policy rm` removes.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySel {
    /// These, by `namespace/name` or a name only one namespace has.
    Names(Vec<String>),
    /// Every one.
    All,
}

/// Removes policies from a running lab.
pub async fn policy_rm(st: &mut LabState, which: &PolicySel) -> Result<PolicyChange> {
    let ids: Vec<String> = match which {
        PolicySel::All => st.policies.iter().map(|p| p.id()).collect(),
        PolicySel::Names(names) => names
            .iter()
            .map(|n| {
                crate::ops::policy::resolve(st, n).map_err(|m| {
                    let have: Vec<String> = st.policies.iter().map(|p| p.id()).collect();
                    Error::usage(
                        m,
                        if have.is_empty() {
                            "the lab has no policies; see `cnilab policy ls`".to_string()
                        } else {
                            format!("name one of: {}", have.join(", "))
                        },
                    )
                })
            })
            .collect::<Result<_, Error>>()?,
    };
    st.policies.retain(|p| !ids.contains(&p.id()));
    st.save()?;
    finish_policy_change(
        st,
        PolicyChange {
            removed: ids,
            ..Default::default()
        },
    )
    .await
}

async fn finish_policy_change(st: &LabState, mut c: PolicyChange) -> Result<PolicyChange> {
    c.enforced = st.plan.profile.enforces_policy();
    c.programmed = crate::ops::policy::program(st).await?;
    c.selects_nothing = selects_nothing(st);
    Ok(c)
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

//! Scenarios (cli.md, "Scenarios"): a topology plus steps using the same
//! verbs as the command line (probes, faults, snapshots, exec, pods), with
//! expectations retried until they hold or their step's timeout passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use toml::de::DeValue;

use crate::front::command::{FaultSel, Probe};
use crate::kernel::progress::Progress;
use crate::kernel::retry::Backoff;
use crate::model::error::{Error, InputError, Source};
use crate::model::faultspec::FaultSpec;
use crate::model::spanned::{Sp, Table, parse_document};
use crate::ops::build::UpOptions;
use crate::ops::state::LabState;

/// Default time an expectation gets to hold.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file.
    pub path: PathBuf,
    /// Its name (snapshot files are `<name>@<snapshot>.snap`).
    pub name: String,
    /// The story it tells.
    pub description: String,
    /// The topology file, resolved against the scenario's folder.
    pub topology: PathBuf,
    /// The folder of its golden snapshots: the `snapshots` key resolved
    /// against the scenario's own folder (default `snapshots/` beside it),
    /// never against the working directory.
    pub snapshots: PathBuf,
    /// The steps.
    pub steps: Vec<Step>,
    /// flannel's implementation to run, whatever the topology says
    /// (`flannel = "upstream"`; `run --flannel` wins over it).
    pub flannel: Option<String>,
}

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position.
    pub index: usize,
    /// Line of its `[[step]]`.
    pub line: usize,
    /// What it does.
    pub action: Action,
    /// What must hold, retried until `timeout`.
    pub expect: Option<Expect>,
    /// How long the expectation may take.
    pub timeout: Duration,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// A probe, as `cnilab probe` runs it.
    Probe(Probe),
    /// Inject a fault.
    Fault(FaultSpec),
    /// Revert the newest fault of a kind, a fault by id, or all.
    FaultRm(String),
    /// Compare (or with --update write) a snapshot.
    Snapshot { name: String },
    /// Run a command in a target.
    Exec { target: String, command: Vec<String> },
    /// Add a pod through the CNI chain.
    PodAdd(String, Option<crate::model::identity::PodMeta>),
    /// Remove a pod.
    PodRm(String),
    /// Apply NetworkPolicy manifests (paths relative to the scenario).
    PolicyApply(Vec<std::path::PathBuf>),
    /// Remove a policy by name, or `all`.
    PolicyRm(String),
}

/// An expectation.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The probe or command succeeds.
    Ok,
    /// It fails.
    Fail,
    /// These fields of its result have these values; `*_contains` keys
    /// look for text.
    Fields(BTreeMap<String, Value>),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Ok => write!(f, "ok"),
            Expect::Fail => write!(f, "fail"),
            Expect::Fields(m) => {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                write!(f, "{}", parts.join(", "))
            }
        }
    }
}

impl Action {
    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Action::Probe(p) => p.describe(),
            Action::Fault(f) => format!("fault {}", f.describe()),
            Action::FaultRm(w) => format!("fault rm {w}"),
            Action::Snapshot { name } => format!("snapshot {name}"),
            Action::Exec { target, command } => format!("exec {target} -- {}", command.join(" ")),
            Action::PodAdd(p, _) => format!("pod add {p}"),
            Action::PodRm(p) => format!("pod rm {p}"),
            Action::PolicyApply(files) => format!(
                "policy apply {}",
                files
                    .iter()
                    .map(|f| f
                        .file_name()
                        .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Action::PolicyRm(n) => format!("policy rm {n}"),
        }
    }
}

type R<T> = Result<T, InputError>;

fn parse_duration(t: &Table, key: &str) -> R<Option<Duration>> {
    let Some(s) = t.string(key, "timeout = \"30s\"")? else {
        return Ok(None);
    };
    let v = s.v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len()));
    let n: f64 = num.parse().map_err(|_| {
        t.err(
            s.span.clone(),
            format!("`{key}` = \"{v}\" is not a duration"),
            "write it like \"30s\", \"500ms\" or \"2m\"",
        )
    })?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => {
            return Err(t.err(
                s.span,
                format!("`{key}` = \"{v}\" has an unknown unit"),
                "use ms, s or m, e.g. \"30s\"",
            ));
        }
    };
    // Longer would panic converting, or later adding it to the clock.
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= Duration::from_secs(86_400) => Ok(Some(d)),
        _ => Err(t.err(
            s.span,
            format!("`{key}` = \"{v}\" is longer than a day"),
            "use a duration of at most a day, e.g. \"30s\"",
        )),
    }
}

fn de_to_json(v: &DeValue<'_>) -> Value {
    match v {
        DeValue::String(s) => json!(s.as_ref()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(|n| json!(n))
            .unwrap_or(Value::Null),
        DeValue::Float(f) => f.as_str().parse::<f64>().map(|n| json!(n)).unwrap_or(Value::Null),
        DeValue::Boolean(b) => json!(b),
        DeValue::Datetime(d) => json!(d.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|x| de_to_json(x.get_ref())).collect()),
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), de_to_json(v.get_ref())))
                .collect(),
        ),
    }
}

/// Keys an expectation table may hold, by step kind.
fn expect_keys(action: &Action) -> &'static [&'static str] {
    match action {
        Action::Probe(Probe::Ping { .. }) => &["ok", "error_contains"],
        Action::Probe(Probe::Pingall) => &["ok", "failed"],
        Action::Probe(Probe::Pmtu { .. }) => &["path_mtu", "interface_mtu", "blackhole", "icmp_mtu"],
        Action::Probe(Probe::Tcp { .. }) => &["stalled"],
        Action::Probe(Probe::Bgp { .. }) => &["established", "down"],
        Action::Probe(Probe::Route { .. }) => &["dev", "via", "kind"],
        Action::Exec { .. } => &["ok", "status", "contains", "not_contains"],
        Action::PodAdd(..) | Action::PodRm(_) => &["ok", "error_contains"],
        Action::Probe(Probe::Policy { .. }) => &["ok", "disagreements", "delivered", "blocked"],
        _ => &[],
    }
}

fn parse_expect(t: &Table, action: &Action) -> R<Option<Expect>> {
    let Some(v) = t.raw("expect") else { return Ok(None) };
    let span = v.span();
    if matches!(
        action,
        Action::Fault(_) | Action::FaultRm(_) | Action::Snapshot { .. } | Action::PolicyApply(_) | Action::PolicyRm(_)
    ) {
        return Err(t.err(
            span,
            format!("a {} step takes no `expect`", action.describe()),
            "remove `expect`, or check with a probe step after it",
        ));
    }
    match v.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "ok" => Ok(Some(Expect::Ok)),
            "fail" => Ok(Some(Expect::Fail)),
            "stall" if matches!(action, Action::Probe(Probe::Tcp { .. })) => {
                Ok(Some(Expect::Fields([("stalled".to_string(), json!(true))].into())))
            }
            other => Err(t.err(
                span,
                format!("unknown expectation \"{other}\""),
                "use expect = \"ok\", \"fail\" (\"stall\" for tcp), or a table of fields",
            )),
        },
        DeValue::Table(tab) => {
            let allowed = expect_keys(action);
            let mut m = BTreeMap::new();
            for (k, val) in tab.iter() {
                let key: &str = k.get_ref();
                if !allowed.contains(&key) {
                    return Err(t.err(
                        k.span(),
                        format!("`{key}` is not a field of a {} result", action.describe()),
                        format!("fields: {}", allowed.join(", ")),
                    ));
                }
                m.insert(key.to_string(), de_to_json(val.get_ref()));
            }
            Ok(Some(Expect::Fields(m)))
        }
        _ => Err(t.err(
            span,
            "`expect` must be a string or a table",
            "e.g. expect = \"ok\" or expect = { path_mtu = 1400, blackhole = true }",
        )),
    }
}

fn req(t: &Table, key: &str, example: &str) -> R<String> {
    t.string(key, example)?.map(|s| s.v).ok_or_else(|| {
        t.err(
            t.span().start..t.span().start,
            format!("this step needs `{key}`"),
            format!("add {example}"),
        )
    })
}

fn parse_step(t: &Table, index: usize, src: &Source, base: &Path) -> R<Step> {
    let line = src.error(t.span(), "", "").line;
    let kinds = [
        "probe",
        "fault",
        "fault_rm",
        "snapshot",
        "exec",
        "pod",
        "policy_apply",
        "policy_rm",
    ];
    let present: Vec<&str> = kinds.iter().copied().filter(|k| t.has(k)).collect();
    if present.len() != 1 {
        return Err(t.err(
            t.span().start..t.span().start,
            if present.is_empty() {
                "this step does nothing".to_string()
            } else {
                format!("this step has both `{}` and `{}`", present[0], present[1])
            },
            "give each [[step]] exactly one of: probe, fault, fault_rm, snapshot, exec, pod, policy_apply, policy_rm",
        ));
    }
    let probes = ["ping", "pingall", "pmtu", "tcp", "bgp", "route", "policy"];
    let action = match present[0] {
        "probe" => Action::Probe(parse_probe(t, &probes)?),
        "fault" => Action::Fault(parse_fault(t)?),
        "fault_rm" => Action::FaultRm(t.required_string("fault_rm", "fault_rm = \"mtu\"")?.v),
        "snapshot" => parse_snapshot(t)?,
        "exec" => parse_exec(t)?,
        "pod" => parse_pod(t)?,
        "policy_apply" => parse_policy_apply(t, base)?,
        "policy_rm" => Action::PolicyRm(t.required_string("policy_rm", "policy_rm = \"x/deny-all\"")?.v),
        _ => unreachable!("one kind present"),
    };
    // Every step takes these; each kind its own keys besides.
    let mut keys = vec!["expect", "timeout", "note"];
    keys.extend_from_slice(match &action {
        Action::Probe(Probe::Ping { .. }) => &["probe", "from", "to", "size", "df"],
        Action::Probe(Probe::Pingall) => &["probe"],
        Action::Probe(Probe::Pmtu { .. } | Probe::Route { .. }) => &["probe", "from", "to"],
        Action::Probe(Probe::Tcp { .. }) => &["probe", "from", "to", "bytes"],
        Action::Probe(Probe::Bgp { .. }) => &["probe", "on"],
        Action::Fault(_) => &[
            "fault", "on", "mtu", "percent", "proto", "port", "key", "value", "new_mac", "reboot",
        ],
        Action::FaultRm(_) => &["fault_rm"],
        Action::Snapshot { .. } => &["snapshot"],
        Action::Exec { .. } => &["exec", "command"],
        Action::PodAdd(..) => &["pod", "on", "namespace", "labels"],
        Action::PodRm(_) => &["pod", "on"],
        Action::Probe(Probe::Policy { .. }) => &["probe", "port", "proto"],
        Action::PolicyApply(_) => &["policy_apply"],
        Action::PolicyRm(_) => &["policy_rm"],
    });
    t.allow(&keys)?;
    let expect = parse_expect(t, &action)?;
    let timeout = parse_duration(t, "timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    Ok(Step {
        index,
        line,
        action,
        expect,
        timeout,
    })
}

/// A `probe` step's probe; `probes` are the names there are.
fn parse_probe(t: &Table, probes: &[&str]) -> R<Probe> {
    let p = t.required_string("probe", "probe = \"ping\"")?;
    let from = || req(t, "from", "from = \"worker1/pod-1\"");
    let to = || req(t, "to", "to = \"worker2/pod-1\"");
    Ok(match p.v.as_str() {
        "ping" => Probe::Ping {
            from: from()?,
            to: to()?,
            size: t.int("size", 0, 65507, "size = 1422")?.map(|s| s.v as u32),
            df: match t.raw("df") {
                None => false,
                Some(v) => v
                    .get_ref()
                    .as_bool()
                    .ok_or_else(|| t.err(v.span(), "`df` must be true or false", "write df = true"))?,
            },
        },
        "pingall" => Probe::Pingall,
        "pmtu" => Probe::Pmtu {
            from: from()?,
            to: to()?,
        },
        "tcp" => Probe::Tcp {
            from: from()?,
            to: to()?,
            bytes: t
                .int("bytes", 1, 1 << 34, "bytes = 4194304")?
                .map_or(4 << 20, |b| b.v as u64),
            timeout: Duration::from_secs(10),
        },
        "bgp" => Probe::Bgp {
            on: t.string("on", "on = \"worker1\"")?.map(|s| s.v),
        },
        "route" => Probe::Route {
            from: from()?,
            to: to()?,
        },
        "policy" => Probe::Policy {
            ports: t
                .int("port", 1, 65535, "port = 80")?
                .map(|p| p.v as u16)
                .into_iter()
                .collect(),
            protos: match t.string("proto", "proto = \"tcp\"")? {
                None => Vec::new(),
                Some(s) => match s.v.as_str() {
                    "tcp" => vec![crate::model::netpol::Proto::Tcp],
                    "udp" => vec![crate::model::netpol::Proto::Udp],
                    other => {
                        return Err(t.err(
                            s.span,
                            format!("proto \"{other}\" cannot be probed"),
                            "write proto = \"tcp\" or \"udp\", or leave it out for both",
                        ));
                    }
                },
            },
            timeout: Duration::from_millis(1500),
        },
        other => {
            let fix = match crate::model::spanned::closest(other, probes) {
                Some(n) => format!("did you mean \"{n}\"? probes: {}", probes.join(", ")),
                None => format!("probes: {}", probes.join(", ")),
            };
            return Err(t.err(p.span, format!("unknown probe \"{other}\""), fix));
        }
    })
}

/// A `fault` step's fault, with the options `cnilab fault add` takes.
fn parse_fault(t: &Table) -> R<FaultSpec> {
    let k = t.required_string("fault", "fault = \"mtu\"")?;
    let on = req(t, "on", "on = \"tor1\"")?;
    let percent = match t.raw("percent") {
        None => None,
        Some(v) => Some(
            de_to_json(v.get_ref())
                .as_f64()
                .ok_or_else(|| t.err(v.span(), "`percent` must be a number", "write percent = 20"))?,
        ),
    };
    crate::model::faultspec::fault_spec(
        &k.v,
        on,
        t.int("mtu", 68, 65535, "mtu = 1400")?.map(|v| v.v as u32),
        percent,
        t.string("proto", "proto = \"udp\"")?.map(|s| s.v),
        t.int("port", 1, 65535, "port = 8472")?.map(|v| v.v as u16),
        t.string("key", "key = \"net.ipv4.ip_forward\"")?.map(|s| s.v),
        t.string("value", "value = \"0\"")?.map(|s| s.v),
        t.raw("new_mac").and_then(|v| v.get_ref().as_bool()).unwrap_or(false),
        t.raw("reboot").and_then(|v| v.get_ref().as_bool()).unwrap_or(false),
    )
    .map_err(|e| match e {
        Error::Usage { message, fix } => t.err(k.span.clone(), message, fix),
        other => t.err(k.span.clone(), other.to_string(), "see the fault kinds in cli.md"),
    })
}

fn parse_snapshot(t: &Table) -> R<Action> {
    let n = t.required_string("snapshot", "snapshot = \"after-fault\"")?;
    if n.v.is_empty() || !n.v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(t.err(
            n.span,
            format!("snapshot name \"{}\" is not usable in a file name", n.v),
            "use letters, digits, '-' and '_'",
        ));
    }
    Ok(Action::Snapshot { name: n.v })
}

fn parse_exec(t: &Table) -> R<Action> {
    let target = t.required_string("exec", "exec = \"worker1\"")?.v;
    let command = t.strings("command", "command = [\"ip\", \"route\"]")?.ok_or_else(|| {
        t.err(
            t.span().start..t.span().start,
            "an exec step needs `command`",
            "add command = [\"ip\", \"route\"]",
        )
    })?;
    if command.v.is_empty() {
        return Err(t.err(command.span, "`command` is empty", "name the program and its arguments"));
    }
    Ok(Action::Exec {
        target,
        command: command.v.into_iter().map(|s| s.v).collect(),
    })
}

/// `policy_apply = "netpol/deny.yaml"` or a list of files, relative to the
/// scenario; each must exist.
fn parse_policy_apply(t: &Table, base: &Path) -> R<Action> {
    let example = "policy_apply = \"netpol/deny-all.yaml\"";
    let files: Vec<Sp<String>> = match t.raw("policy_apply").map(|v| v.get_ref().is_array()) {
        Some(true) => t.strings("policy_apply", example)?.map(|l| l.v).unwrap_or_default(),
        _ => vec![t.required_string("policy_apply", example)?],
    };
    let mut out = Vec::new();
    for f in files {
        let path = base.join(&f.v);
        if !path.is_file() {
            return Err(t.err(
                f.span,
                format!("manifest {} does not exist", path.display()),
                "name a NetworkPolicy YAML file relative to the scenario file",
            ));
        }
        out.push(path);
    }
    if out.is_empty() {
        return Err(t.err(t.span(), "`policy_apply` names no file", example));
    }
    Ok(Action::PolicyApply(out))
}

fn parse_pod(t: &Table) -> R<Action> {
    let what = t.required_string("pod", "pod = \"add\"")?;
    let on = req(t, "on", "on = \"worker1/pod-5\"")?;
    match what.v.as_str() {
        "add" => {
            let namespace = t.string("namespace", "namespace = \"x\"")?;
            let labels = crate::model::identity::parse_labels(t, "labels = { app = \"web\" }")?;
            let meta = (namespace.is_some() || !labels.is_empty()).then(|| crate::model::identity::PodMeta {
                namespace: namespace.map_or_else(|| "default".to_string(), |n| n.v),
                labels,
                ports: Vec::new(),
            });
            Ok(Action::PodAdd(on, meta))
        }
        "rm" => Ok(Action::PodRm(on)),
        other => Err(t.err(
            what.span,
            format!("unknown pod action \"{other}\""),
            "use pod = \"add\" or pod = \"rm\"",
        )),
    }
}

/// Reads and checks a scenario file (and its topology's existence).
pub fn load(path: &Path) -> Result<Scenario, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::usage(
            format!("cannot read scenario {}: {e}", path.display()),
            "give the path of a scenario file, such as scenarios/upstream-vxlan-mtu.toml",
        )
    })?;
    let src = Source::new(path.display().to_string(), text);
    Ok(parse(&src, path)?)
}

fn parse(src: &Source, path: &Path) -> R<Scenario> {
    let (doc, span) = parse_document(src, &src.text)?;
    let root = Table::root(src, &doc, span);
    root.allow(&["name", "topology", "description", "snapshots", "step", "flannel"])?;
    let name: Sp<String> = root.required_string("name", "name = \"upstream-vxlan-mtu\"")?;
    if name.v.is_empty()
        || !name
            .v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(root.err(
            name.span,
            format!("scenario name \"{}\" is not usable in a file name", name.v),
            "use letters, digits, '-' and '_'",
        ));
    }
    let topo = root.required_string("topology", "topology = \"../topologies/flannel-vxlan.toml\"")?;
    // Absolute, so that the same scenario finds the same files from any
    // working directory.
    let base = std::path::absolute(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .unwrap_or_else(|_| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let snapshots = base.join(
        root.string("snapshots", "snapshots = \"../snapshots\"")?
            .map_or_else(|| "snapshots".to_string(), |s| s.v),
    );
    let topology = base.join(&topo.v);
    if !topology.is_file() {
        return Err(root.err(
            topo.span,
            format!("topology {} does not exist", topology.display()),
            "give the topology's path relative to this scenario file",
        ));
    }
    let flannel = match root.string("flannel", "flannel = \"upstream\"")? {
        None => None,
        Some(f) if f.v == "builtin" || f.v == "upstream" => Some(f.v),
        Some(f) => {
            return Err(root.err(
                f.span,
                format!(
                    "flannel = \"{}\" is no flannel implementation",
                    crate::model::topology::q(&f.v)
                ),
                "use flannel = \"builtin\" or \"upstream\"",
            ));
        }
    };
    let description = root
        .string("description", "description = \"...\"")?
        .map(|s| s.v)
        .unwrap_or_default();
    let steps = root
        .tables("step", "[[step]]")?
        .iter()
        .enumerate()
        .map(|(i, t)| parse_step(t, i + 1, src, &base))
        .collect::<R<Vec<_>>>()?;
    if steps.is_empty() {
        return Err(root.err(
            0..0,
            "the scenario has no steps",
            "add [[step]] sections, e.g. [[step]] probe = \"pingall\" expect = \"ok\"",
        ));
    }
    Ok(Scenario {
        path: path.to_path_buf(),
        name: name.v,
        description,
        topology,
        snapshots,
        steps,
        flannel,
    })
}

/// How a step went.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// Passed.
    pub ok: bool,
    /// What was seen (the last attempt's result).
    pub seen: String,
    /// Why it failed.
    pub failure: Option<String>,
    /// How long it took.
    pub time: Duration,
}

/// How a scenario went.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Its name.
    pub name: String,
    /// Step by step (those after a failure are not run).
    pub steps: Vec<StepReport>,
    /// A failure outside any step (the lab did not come up).
    pub error: Option<String>,
    /// Total time.
    pub time: Duration,
}

impl ScenarioReport {
    /// Everything passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.steps.iter().all(|s| s.ok)
    }
}

/// Options of `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write snapshot files instead of comparing.
    pub update: bool,
    /// Leave the lab running.
    pub keep: bool,
    /// flannel's implementation, over the scenario's and the topology's.
    pub flannel: Option<String>,
    /// Snapshots are not compared: `flannel` brought an etcd the golden
    /// files were made without (set by `run` itself).
    pub skip_snapshots: bool,
}

/// The file a snapshot step compares with.
pub fn snapshot_file(sc: &Scenario, name: &str) -> PathBuf {
    sc.snapshots.join(format!("{}@{name}.snap", sc.name))
}

/// The content of an insta `.snap` file, without its header.
pub fn read_snap(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(rest[end + 5..].to_string())
}

fn write_snap(path: &Path, source: &str, name: &str, content: &str) -> Result<()> {
    let text = format!("---\nsource: {source}\nexpression: \"snapshot {name}\"\n---\n{content}");
    crate::model::plan::write_file(path, &text).with_context(|| format!("cannot write {}", path.display()))
}

/// A unified diff of two texts.
pub fn diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header("golden", "seen")
        .to_string()
}

/// What one attempt of a step gives: whether it succeeded, its result as
/// JSON (for expectations) and as text (for the report).
type Outcome = (bool, Value, String);

/// Runs one action once, through the verbs the command line uses.
async fn attempt(state: &mut LabState, action: &Action, progress: &Progress) -> Result<Outcome> {
    use crate::front::command;
    let st = state.clone();
    match action.clone() {
        Action::Probe(p) => {
            let r = tokio::task::spawn_blocking(move || command::probe(&st, &p, &Progress::quiet())).await??;
            Ok((r.ok(), r.fields()?, r.to_string()))
        }
        Action::Exec { target, command } => {
            let x = tokio::task::spawn_blocking(move || command::exec(&st, &target, &command)).await??;
            Ok((x.ok, serde_json::to_value(&x)?, x.output.trim_end().to_string()))
        }
        Action::Fault(spec) => {
            let f = command::fault_add(state, spec, progress).await?;
            Ok((true, json!({ "id": f.id }), format!("added {}", f.id)))
        }
        Action::FaultRm(which) => {
            let sel = if which == "all" {
                FaultSel::All
            } else {
                FaultSel::Newest(which)
            };
            let ids = command::fault_rm(state, &sel, progress, &mut |_| {}).await?;
            Ok((true, json!({ "removed": ids }), format!("removed {}", ids.join(", "))))
        }
        Action::PodAdd(p, meta) => Ok(match command::pod_add_as(state, &p, meta).await {
            Ok(ip) => (true, json!({ "ok": true, "ip": ip }), format!("added {p}: {ip}")),
            Err(e) => failed_outcome(&e),
        }),
        Action::PodRm(p) => Ok(match command::pod_rm(state, &p).await {
            Ok(()) => (true, json!({ "ok": true }), format!("removed {p}")),
            Err(e) => failed_outcome(&e),
        }),
        Action::PolicyApply(files) => {
            let c = command::policy_apply(state, &files).await?;
            Ok((
                true,
                serde_json::to_value(&c)?,
                c.lines(state.plan.profile.name()).join("; "),
            ))
        }
        Action::PolicyRm(which) => {
            let sel = if which == "all" {
                command::PolicySel::All
            } else {
                command::PolicySel::Names(vec![which])
            };
            let c = command::policy_rm(state, &sel).await?;
            Ok((
                true,
                serde_json::to_value(&c)?,
                c.lines(state.plan.profile.name()).join("; "),
            ))
        }
        Action::Snapshot { .. } => unreachable!("handled by the runner"),
    }
}

/// The outcome of a pod step whose CNI call failed: checked, not an error.
fn failed_outcome(e: &anyhow::Error) -> Outcome {
    (
        false,
        json!({ "ok": false, "error": format!("{e:#}") }),
        format!("{e:#}"),
    )
}

/// Whether a result meets an expectation; when not, why.
pub fn check(expect: &Expect, ok: bool, result: &Value) -> Result<(), String> {
    match expect {
        Expect::Ok if ok => Ok(()),
        Expect::Fail if !ok => Ok(()),
        Expect::Ok => Err("expected ok, but it failed".into()),
        Expect::Fail => Err("expected it to fail, but it succeeded".into()),
        Expect::Fields(m) => {
            let mut bad = Vec::new();
            for (k, want) in m {
                let (field, holds) = if let Some(f) = k.strip_suffix("_contains") {
                    let f = if f.is_empty() || f == "error" { "error" } else { f };
                    let have = result[f].as_str().unwrap_or("");
                    (f.to_string(), want.as_str().is_some_and(|w| have.contains(w)))
                } else if k == "contains" || k == "not_contains" {
                    let have = result["output"].as_str().unwrap_or("");
                    let has = want.as_str().is_some_and(|w| have.contains(w));
                    ("output".to_string(), if k == "contains" { has } else { !has })
                } else {
                    let have = &result[k.as_str()];
                    let same = have == want || (have.as_f64().is_some() && have.as_f64() == want.as_f64());
                    (k.clone(), same)
                };
                if !holds {
                    bad.push(format!("{k} = {want} (seen {field} = {})", result[field.as_str()]));
                }
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!("expected {}", bad.join("; ")))
            }
        }
    }
}

async fn run_step(
    sc: &Scenario,
    step: &Step,
    state: &mut LabState,
    opts: &RunOptions,
    progress: &Progress,
) -> StepReport {
    let started = Instant::now();
    let backoff = Backoff::new(step.timeout, Duration::from_millis(20), Duration::from_millis(500));
    let (ok, seen, failure) = match &step.action {
        Action::Snapshot { name } => snapshot_step(sc, name, state, opts, backoff).await,
        _ => action_step(step, state, progress, backoff).await,
    };
    StepReport {
        step: step.clone(),
        ok,
        seen,
        failure,
        time: started.elapsed(),
    }
}

/// How a step went: passed, what was seen, why it failed.
type Verdict = (bool, String, Option<String>);

/// A snapshot step: compared with its golden file until they are equal or
/// the step's time is up; with --update, written.
async fn snapshot_step(
    sc: &Scenario,
    name: &str,
    state: &LabState,
    opts: &RunOptions,
    mut backoff: Backoff,
) -> Verdict {
    let file = snapshot_file(sc, name);
    if opts.skip_snapshots && !opts.update {
        let why = "not compared: --flannel upstream added an etcd the golden file was made without";
        return (true, why.to_string(), None);
    }
    loop {
        let snap = match crate::front::command::snapshot(state, &[], false).await {
            Ok(s) => s.render(),
            Err(e) => return (false, String::new(), Some(format!("snapshot failed: {e:#}"))),
        };
        if opts.update {
            let rel = sc.path.display().to_string();
            return match write_snap(&file, &rel, name, &snap) {
                Ok(()) => (true, format!("wrote {}", file.display()), None),
                Err(e) => (false, String::new(), Some(format!("{e:#}"))),
            };
        }
        let Some(golden) = read_snap(&file) else {
            let why = format!(
                "{} does not exist; write it with `cnilab run --update {}`",
                file.display(),
                sc.path.display()
            );
            return (false, String::new(), Some(why));
        };
        if golden.trim_end() == snap.trim_end() {
            return (true, format!("equals {}", file.display()), None);
        }
        if backoff.expired() {
            let why = format!(
                "differs from {} (accept with --update):\n{}",
                file.display(),
                diff(&golden, &snap)
            );
            return (false, String::new(), Some(why));
        }
        backoff.sleep_async().await;
    }
}

/// Any other step: its action, retried until its expectation holds or its
/// time is up; an action without expectation runs once.
async fn action_step(step: &Step, state: &mut LabState, progress: &Progress, mut backoff: Backoff) -> Verdict {
    loop {
        let (ok, value, text) = match attempt(state, &step.action, progress).await {
            Ok(x) => x,
            // An action without expectation fails at once; a probe that
            // errors is retried like one that fails.
            Err(e) if step.expect.is_none() || backoff.expired() => {
                return (false, String::new(), Some(format!("{e:#}")));
            }
            Err(_) => {
                backoff.sleep_async().await;
                continue;
            }
        };
        let verdict = match &step.expect {
            None if ok => Ok(()),
            None => Err("it failed".to_string()),
            Some(e) => check(e, ok, &value),
        };
        match verdict {
            Ok(()) => return (true, text, None),
            Err(why) if backoff.expired() || step.expect.is_none() => {
                let waited = if step.expect.is_some() {
                    format!(" (retried for {} s)", step.timeout.as_secs())
                } else {
                    String::new()
                };
                return (false, text, Some(format!("{why}{waited}")));
            }
            Err(_) => backoff.sleep_async().await,
        }
    }
}

/// The lab name of scenario `name` run by process `pid`: unique per
/// scenario and process, so runs side by side do not collide.
pub fn lab_name(name: &str, pid: u32) -> String {
    let h = sha1_smol::Sha1::from(format!("{name}/{pid}")).digest().to_string();
    format!("s{}", &h[..7])
}

/// Runs one scenario: builds its lab, runs the steps until one fails, and
/// (unless `keep`) removes the lab. The lab's name is returned for cleanup
/// on interruption.
pub async fn run(
    sc: &Scenario,
    opts: &RunOptions,
    lab: &str,
    lock: &crate::kernel::lock::LabLock,
    out: &mut dyn FnMut(&str),
) -> ScenarioReport {
    let started = Instant::now();
    let progress = Progress::quiet();
    // Before any step: the lab could not be made.
    let not_up = |error: String| ScenarioReport {
        name: sc.name.clone(),
        steps: Vec::new(),
        error: Some(error),
        time: started.elapsed(),
    };
    let mut topology = match crate::profile::load_topology(&sc.topology) {
        Ok(t) => t,
        Err(e) => return not_up(e.to_string()),
    };
    let datastore = topology.network.datastore;
    // The scenario's own choice must fit its topology; a run-wide
    // --flannel leaves other profiles' scenarios as they are.
    if let Some(imp) = &sc.flannel {
        match crate::profile::set_implementation("flannel", &mut topology, imp) {
            Ok(true) => {}
            Ok(false) => return not_up("the scenario's flannel key needs a flannel topology".to_string()),
            Err(e) => return not_up(e.to_string()),
        }
    }
    if let Some(imp) = &opts.flannel
        && let Err(e) = crate::profile::set_implementation("flannel", &mut topology, imp)
    {
        return not_up(e.to_string());
    }
    let opts = &RunOptions {
        skip_snapshots: topology.network.datastore != datastore,
        ..opts.clone()
    };
    let up = UpOptions {
        name: Some(lab.to_string()),
        topology_file: sc.topology.display().to_string(),
    };
    let mut state = match crate::ops::build::claim(&topology, &up, lock) {
        Ok(s) => s,
        Err(e) => return not_up(e.to_string()),
    };
    if let Err(e) = crate::ops::build::build(&mut state, &progress).await {
        return not_up(format!("the lab did not come up: {e:#}"));
    }
    let mut steps = Vec::new();
    out(&format!("  lab {lab} up in {:.2} s", started.elapsed().as_secs_f64()));
    for step in &sc.steps {
        let r = run_step(sc, step, &mut state, opts, &progress).await;
        let mark = if r.ok { "ok" } else { "FAILED" };
        out(&format!(
            "  step {} {}: {mark} ({:.2} s)",
            step.index,
            step.action.describe(),
            r.time.as_secs_f64()
        ));
        if !r.ok {
            if let Some(e) = &step.expect {
                out(&format!("    expected: {e}"));
            }
            if !r.seen.is_empty() {
                out(&format!("    seen:     {}", r.seen.replace('\n', "\n              ")));
            }
            if let Some(f) = &r.failure {
                out(&format!("    {}", f.replace('\n', "\n    ")));
            }
        }
        let failed = !r.ok;
        steps.push(r);
        if failed {
            break;
        }
    }
    ScenarioReport {
        name: sc.name.clone(),
        steps,
        error: None,
        time: started.elapsed(),
    }
}

/// The lab names scenarios run under: `prefix` for a single scenario,
/// `prefix-1`, `prefix-2`... for several (`run --name` or `--lab`), else a
/// name of the scenario and this process, so parallel runs do not collide.
pub fn lab_names(scenarios: &[Scenario], prefix: Option<&str>) -> Result<Vec<String>, Error> {
    use crate::model::names::{Kind, check};
    let Some(p) = prefix else {
        return Ok(scenarios
            .iter()
            .map(|sc| lab_name(&sc.name, std::process::id()))
            .collect());
    };
    check(Kind::Lab, p, "from --name or --lab")?;
    if scenarios.len() == 1 {
        return Ok(vec![p.to_string()]);
    }
    let names: Vec<String> = (1..=scenarios.len()).map(|i| format!("{p}-{i}")).collect();
    for n in &names {
        check(Kind::Lab, n, "a scenario's lab, the prefix and its number").map_err(|_| {
            Error::usage(
                format!(
                    "the lab names {p}-1 .. {p}-{} are longer than {} characters",
                    scenarios.len(),
                    crate::model::names::LAB_MAX
                ),
                "give --name a shorter prefix",
            )
        })?;
    }
    Ok(names)
}

/// Scenario reports as JUnit XML.
pub fn junit(reports: &[(Scenario, ScenarioReport)]) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("cnilab");
    for (sc, r) in reports {
        let mut suite = TestSuite::new(sc.name.clone());
        suite.set_time(r.time);
        if let Some(e) = &r.error {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(e.clone());
            suite.add_test_case(TestCase::new("lab up", status));
        }
        for s in &r.steps {
            let name = format!("step {}: {}", s.step.index, s.step.action.describe());
            let status = if s.ok {
                TestCaseStatus::success()
            } else {
                let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
                st.set_message(s.failure.clone().unwrap_or_default());
                st.set_description(s.seen.clone());
                st
            };
            let mut tc = TestCase::new(name, status);
            tc.set_classname(sc.path.display().to_string());
            tc.set_time(s.time);
            suite.add_test_case(tc);
        }
        let ran = r.steps.len();
        for step in sc.steps.iter().skip(ran) {
            let mut tc = TestCase::new(
                format!("step {}: {}", step.index, step.action.describe()),
                TestCaseStatus::skipped(),
            );
            tc.set_classname(sc.path.display().to_string());
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Scenario, InputError> {
        let dir = std::env::temp_dir().join(format!("cnilab-sc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.toml"), "name = \"t\"\n[[node]]\nname = \"n\"\n").unwrap();
        let p = dir.join("s.toml");
        let src = Source::new("s.toml", text);
        parse(&src, &p)
    }

    #[test]
    fn parses_the_contract_example() {
        let s = parse_text(
            "name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nprobe = \"pingall\"\nexpect = \"ok\"\n[[step]]\nfault = \"upstream-vxlan\"\non = \"tor1\"\n[[step]]\nprobe = \"pmtu\"\nfrom = \"a/b\"\nto = \"c/d\"\nexpect = { path_mtu = 1400, blackhole = true }\ntimeout = \"30s\"\n[[step]]\nsnapshot = \"after\"\n",
        )
        .unwrap();
        assert_eq!(s.steps.len(), 4);
        assert_eq!(s.steps[2].timeout, Duration::from_secs(30));
        assert_eq!(s.steps[2].line, 9, "the line of its [[step]]");
        assert_eq!(
            s.steps[2].expect,
            Some(Expect::Fields(
                [("blackhole".into(), json!(true)), ("path_mtu".into(), json!(1400))].into()
            ))
        );
    }

    #[test]
    fn rejects_mistakes_with_their_place() {
        let e = parse_text("name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nprobe = \"pmtu\"\nfrom = \"a/b\"\nto = \"c/d\"\nexpect = { path_mtuu = 1 }\n").unwrap_err();
        assert_eq!((e.line, e.col), (7, 12), "{e}");
        let e = parse_text("name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nprobe = \"pign\"\n").unwrap_err();
        assert!(e.fix.contains("\"ping\""), "{e}");
        let e = parse_text("name = \"x\"\ntopology = \"nope.toml\"\n[[step]]\nprobe = \"pingall\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 12), "{e}");
        let e = parse_text("name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nprobe = \"pingall\"\nfault = \"mtu\"\n")
            .unwrap_err();
        assert!(e.message.contains("both"), "{e}");
        let e =
            parse_text("name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nfault = \"mtu\"\non = \"tor1\"\n").unwrap_err();
        assert!(e.message.contains("needs --mtu"), "{e}");
        let e =
            parse_text("name = \"x\"\ntopology = \"t.toml\"\n[[step]]\nprobe = \"pingall\"\ntimeout = \"3 days\"\n")
                .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn checks_expectations() {
        let r = json!({ "path_mtu": 1400, "blackhole": true, "error": "local error: message too long, mtu=1450" });
        assert!(check(&Expect::Fields([("path_mtu".into(), json!(1400))].into()), false, &r).is_ok());
        assert!(check(&Expect::Fields([("path_mtu".into(), json!(1450))].into()), false, &r).is_err());
        assert!(
            check(
                &Expect::Fields([("error_contains".into(), json!("message too long"))].into()),
                false,
                &r
            )
            .is_ok()
        );
        assert!(check(&Expect::Fail, false, &r).is_ok());
        assert!(check(&Expect::Ok, false, &r).is_err());
        let out = json!({ "output": "10.244.1.1 dev eth0 FAILED" });
        assert!(
            check(
                &Expect::Fields([("contains".into(), json!("FAILED"))].into()),
                true,
                &out
            )
            .is_ok()
        );
        assert!(
            check(
                &Expect::Fields([("not_contains".into(), json!("FAILED"))].into()),
                true,
                &out
            )
            .is_err()
        );
    }
}

//! The command line (shared/design/cli.md).

use std::ffi::CString;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::kernel::netns;
use crate::kernel::progress::Progress;
use crate::model::error::{EXIT_INPUT, Error, Result};
use crate::model::paths;
use crate::observe::status;
use crate::ops::build::{self, UpOptions};
use crate::ops::state;
use crate::ops::teardown;

/// Writes to stdout. A reader that went away (`cnilab up --json | head -1`)
/// ends the command quietly instead of panicking; the lab is already in the
/// state the command left it in.
fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(text).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Like `write_out`, for output written while a lab is being worked on
/// (`run`): a closed pipe must not stop the command before it cleans up.
fn write_out_lossy(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

macro_rules! out {
    ($($t:tt)*) => { write_out(format_args!($($t)*)) };
}

macro_rules! outln {
    () => { write_out(format_args!("\n")) };
    ($($t:tt)*) => { write_out(format_args!("{}\n", format_args!($($t)*))) };
}

/// cnilab: many fake Kubernetes nodes on one Linux host, wired by real CNI
/// plugins, with faults and snapshots.
#[derive(Parser, Debug)]
#[command(name = "cnilab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The lab to act on when several are running.
    #[arg(long, env = "CNILAB_LAB", global = true)]
    pub lab: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build a lab from a topology file; returns when every pod has its
    /// address and every expected route is in place.
    Up {
        /// The topology file.
        topology: PathBuf,
        /// Name the lab this instead of the topology's `name`.
        #[arg(long)]
        name: Option<String>,
        /// Print the resulting status as JSON.
        #[arg(long)]
        json: bool,
        /// Run this flannel instead of the topology's: builtin (cnilab's
        /// flanneld and plugin) or upstream (the real ones, over etcd).
        #[arg(long, value_name = "IMPL", value_parser = ["builtin", "upstream"])]
        flannel: Option<String>,
    },
    /// Remove a lab completely: processes, namespaces, state. Idempotent.
    Down {
        /// The lab (default: the only one).
        #[arg(value_name = "LAB")]
        which: Option<String>,
        /// Remove every lab.
        #[arg(long, conflicts_with = "which")]
        all: bool,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Nodes, pods, addresses, MTUs, control plane, faults.
    Status {
        /// The lab (default: the only one).
        #[arg(value_name = "LAB")]
        which: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node's, pod's or switch's namespace.
    Exec {
        /// NODE, NODE/POD, a switch or a router.
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, num_args = 1..)]
        cmd: Vec<String>,
    },
    /// An interactive shell inside a node's, pod's, switch's or router's
    /// namespace; its prompt names the lab and the target.
    Shell {
        /// NODE, NODE/POD, a switch or a router.
        target: String,
    },
    /// tcpdump inside a target's namespace, with VXLAN decoded.
    Capture {
        /// NODE, NODE/POD, a switch or a router.
        target: String,
        /// The interface (default: eth0 in nodes and pods, every port of a switch).
        iface: Option<String>,
        /// Stop after this many packets.
        #[arg(long, short = 'c')]
        count: Option<u32>,
        /// Write the packets to this pcap file instead of decoding them.
        #[arg(long, short = 'w')]
        write: Option<PathBuf>,
        /// A tcpdump filter, after `--` (e.g. -- udp port 8472).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// The lab's normalized network state.
    Snapshot {
        /// Only these targets (NODE, NODE/POD, switch); default: all.
        targets: Vec<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Include entries learned from traffic (ARP, bridge FDB).
        #[arg(long)]
        dynamic: bool,
    },
    /// Check the data plane: ping, pingall, pmtu, tcp, bgp.
    Probe {
        /// Which probe.
        #[command(subcommand)]
        cmd: ProbeCmd,
    },
    /// Add or remove a pod of a running lab, through its node's CNI chain.
    Pod {
        /// add or rm.
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Run scenarios: build the lab, run the steps, tear it down.
    Run {
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Write snapshot files instead of comparing with them.
        #[arg(long)]
        update: bool,
        /// Leave each lab running (and print its name).
        #[arg(long)]
        keep: bool,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Name the labs: PREFIX for one scenario, PREFIX-1, PREFIX-2... for
        /// several (default: --lab, else a name made of the scenario's and this process's).
        #[arg(long, value_name = "PREFIX")]
        name: Option<String>,
        /// Run flannel's builtin or upstream implementation, whatever the
        /// scenarios' topologies say.
        #[arg(long, value_name = "IMPL", value_parser = ["builtin", "upstream"])]
        flannel: Option<String>,
    },
    /// Apply, list and remove Kubernetes NetworkPolicies in a running lab.
    Policy {
        /// apply, ls or rm.
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Inject, list and remove faults.
    Fault {
        /// add, ls or rm.
        #[command(subcommand)]
        cmd: FaultCmd,
    },
    /// Follow one ICMP echo hop by hop through the lab's real kernel state,
    /// and its reply back: routes, neighbours, FDBs, encapsulation, MTUs,
    /// iptables, rp_filter; where and why it dies.
    Trace {
        /// NODE/POD or NODE.
        src: String,
        /// NODE/POD, NODE or an address.
        dst: String,
        /// The IP packet's size in bytes, as the kernel counts it against an MTU (DF set).
        #[arg(long, default_value_t = 84)]
        size: u32,
        /// What the packet carries: an ICMP echo, or UDP or TCP to --port.
        #[arg(long, default_value = "icmp", value_parser = ["icmp", "udp", "tcp"])]
        proto: String,
        /// The destination port, for --proto udp or tcp.
        #[arg(long)]
        port: Option<u16>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw a topology file or a running lab: switches, routers, nodes and
    /// pods with addresses and MTUs, tunnels or BGP sessions, faults.
    Graph {
        /// A topology file, or a running lab's name (default: the only lab).
        what: Option<String>,
        /// dot, mermaid or svg (svg needs Graphviz).
        #[arg(long, default_value = "dot", value_parser = ["dot", "mermaid", "svg"])]
        format: String,
        /// Write here instead of to stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// What this machine has for cnilab: privileges, kernel features, tools
    /// with versions; with a topology, exit 3 when something it needs is missing.
    Doctor {
        /// Check what this topology needs.
        topology: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a topology file and print its plan; needs no root.
    Validate {
        /// The topology file.
        topology: PathBuf,
        /// Print the whole plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `cnilab probe ...`.
#[derive(Subcommand, Debug)]
pub enum ProbeCmd {
    /// One ICMP echo; exit 0 on reply.
    Ping {
        /// NODE/POD or NODE.
        src: String,
        /// NODE/POD, NODE or an address.
        dst: String,
        /// ICMP payload bytes (the IP packet is 28 more).
        #[arg(long)]
        size: Option<u32>,
        /// Set don't-fragment.
        #[arg(long)]
        df: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every pod to every pod (a matrix up to 32 pods, then the failing pairs); exit 0 when all reply.
    Pingall {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Path MTU by DF probing, next to the interface MTU; flags a blackhole.
    Pmtu {
        /// NODE/POD or NODE.
        src: String,
        /// NODE/POD, NODE or an address.
        dst: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// A bulk TCP transfer with a deadline; flags a stall.
    Tcp {
        /// NODE/POD or NODE.
        src: String,
        /// NODE/POD or NODE.
        dst: String,
        /// Bytes to send.
        #[arg(long, default_value_t = 4 << 20)]
        bytes: u64,
        /// Seconds before giving up.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every pod pair for real (TCP connect, UDP echo) next to what the
    /// NetworkPolicies' Kubernetes semantics say; exit 1 where they disagree.
    Policy {
        /// Destination port (repeatable; default: the pods' declared ports, else 80).
        #[arg(long)]
        port: Vec<u16>,
        /// tcp or udp (repeatable; default both).
        #[arg(long, value_parser = ["tcp", "udp"])]
        proto: Vec<String>,
        /// Seconds each probe waits for an answer.
        #[arg(long, default_value_t = 1.5)]
        timeout: f64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// BGP sessions and their states; exit 0 when all are Established.
    Bgp {
        /// Only this node or router.
        target: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `cnilab policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Apply the NetworkPolicies of manifest files (YAML, one or many documents).
    Apply {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the policies in force, with the pods each selects.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove policies by name (`NAMESPACE/NAME`, or a NAME one namespace has).
    Rm {
        /// Policies to remove.
        names: Vec<String>,
        /// Remove every policy.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `cnilab pod ...`.
#[derive(Subcommand, Debug)]
pub enum PodCmd {
    /// Create NODE/POD's namespace and run CNI ADD; shows the plugin's error if it fails.
    Add {
        /// NODE/POD.
        pod: String,
        /// Its Kubernetes namespace (one the lab has; default `default`).
        #[arg(long)]
        namespace: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Run CNI DEL for NODE/POD and remove its namespace.
    Rm {
        /// NODE/POD.
        pod: String,
    },
}

fn print<T: serde::Serialize + std::fmt::Display>(v: &T, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?);
    } else {
        outln!("{v}");
    }
    Ok(())
}

/// `cnilab fault ...`.
#[derive(Subcommand, Debug)]
pub enum FaultCmd {
    /// Inject a fault; prints its id.
    Add {
        /// mtu, upstream-vxlan, arp-suppress, link-down, loss, block, sysctl, agent-down, agent-restart, rule-del.
        kind: String,
        /// The node, pod, switch or router it hits.
        #[arg(long)]
        on: String,
        /// mtu: the new MTU.
        #[arg(long)]
        mtu: Option<u32>,
        /// loss: percentage of packets dropped.
        #[arg(long)]
        percent: Option<f64>,
        /// block: udp or tcp.
        #[arg(long)]
        proto: Option<String>,
        /// block: the destination port.
        #[arg(long)]
        port: Option<u16>,
        /// sysctl: its name, as sysctl(8) writes it.
        #[arg(long)]
        key: Option<String>,
        /// sysctl: the value.
        #[arg(long)]
        value: Option<String>,
        /// agent-restart: the VTEP comes back with a new MAC.
        #[arg(long)]
        new_mac: bool,
        /// agent-down: as after a reboot, the agent's files in /run (flannel's
        /// subnet file) are gone too.
        #[arg(long)]
        reboot: bool,
        /// Print the fault as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List active faults.
    Ls {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revert a fault, or all of them.
    Rm {
        /// The fault's id (f1, f2, ...).
        id: Option<String>,
        /// Revert every fault, newest first.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_INPUT } else { 0 };
        }
    };
    match crate::model::paths::check_run_dir().and_then(|()| run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Fails with exit 3 and one line without CAP_NET_ADMIN and CAP_SYS_ADMIN.
fn require_root() -> Result<()> {
    if crate::kernel::tools::has_root() {
        return Ok(());
    }
    Err(Error::env(
        "cnilab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces; run it as root or with sudo",
        "",
    ))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `work` to its end, or until Ctrl-C or SIGTERM (then `None`: the
/// caller removes what it built).
fn interruptible<T>(rt: &tokio::runtime::Runtime, work: impl std::future::Future<Output = T>) -> Result<Option<T>> {
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(anyhow::Error::from)?;
        Ok(tokio::select! {
            r = work => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        })
    })
}

/// How long a command that changes a lab waits for another one to finish.
const WRITER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Shell { target } => shell(cli.lab, target),
        Cmd::Capture {
            target,
            iface,
            count,
            write,
            filter,
        } => capture(cli.lab, target, iface, count, write, filter),
        Cmd::Trace {
            src,
            dst,
            size,
            proto,
            port,
            json,
        } => {
            let proto = crate::observe::trace::proto(&proto, port)?;
            require_root()?;
            let lab = state::choose_lab(cli.lab.as_deref())?;
            let st = state::require_up(&lab)?;
            let t = crate::observe::trace::trace(&st, &src, &dst, size, proto)?;
            print(&t, json)?;
            Ok(if t.delivered {
                0
            } else {
                crate::model::error::EXIT_FAILED
            })
        }
        Cmd::Graph { what, format, output } => graph(cli.lab, what, format, output),
        Cmd::Doctor { topology, json } => {
            let loaded = match &topology {
                Some(path) => {
                    let t = crate::profile::load_topology(path)?;
                    let plan = crate::profile::plan_lab(&t, &t.name, &paths::LabPaths::of(&t.name));
                    Some((path.display().to_string(), plan))
                }
                None => None,
            };
            let report = crate::ops::doctor::report(loaded.as_ref().map(|(f, p)| (f.as_str(), p)));
            print(&report, json)?;
            Ok(if report.ready() {
                0
            } else {
                crate::model::error::EXIT_ENV
            })
        }
        Cmd::Validate { topology, json } => validate(topology, json),
        Cmd::Up {
            topology,
            name,
            json,
            flannel,
        } => up(topology, name, json, flannel),
        Cmd::Down { which, all, json } => down(cli.lab, which, all, json),
        Cmd::Status { which, json } => {
            require_root()?;
            let lab = state::choose_lab(which.as_deref().or(cli.lab.as_deref()))?;
            let st = state::require(&lab)?;
            let s = status::status(&st);
            if json {
                outln!("{}", serde_json::to_string_pretty(&s).map_err(anyhow::Error::from)?);
            } else {
                out!("{}", status::render(&s, &st.plan));
            }
            Ok(0)
        }
        Cmd::Exec { target, cmd } => {
            require_root()?;
            let lab = state::choose_lab(cli.lab.as_deref())?;
            let st = state::require(&lab)?;
            let ns = crate::ops::state::resolve_target(&st, &target)?;
            exec_in(&ns, &cmd)
        }
        Cmd::Run {
            scenarios,
            update,
            keep,
            junit,
            name,
            flannel,
        } => run_scenarios(cli.lab, scenarios, update, keep, junit, name, flannel),
        Cmd::Probe { cmd } => probe(cli.lab, cmd),
        Cmd::Pod { cmd } => pod(cli.lab, cmd),
        Cmd::Fault { cmd } => fault(cli.lab, cmd),
        Cmd::Policy { cmd } => policy(cli.lab, cmd),
        Cmd::Snapshot { targets, json, dynamic } => snapshot(cli.lab, targets, json, dynamic),
    }
}

/// `cnilab shell`: an interactive shell whose prompt names the lab and target.
fn shell(lab: Option<String>, target: String) -> Result<i32> {
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let st = state::require(&lab)?;
    let ns = crate::ops::state::resolve_target(&st, &target)?;
    let shell = ["/bin/bash", "/usr/bin/bash", "/bin/sh"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("/bin/sh");
    // SAFETY: single-threaded here; nothing else reads the environment.
    unsafe {
        std::env::set_var("PS1", format!("[cnilab {lab} {target}] \\w# "));
        std::env::set_var("CNILAB_LAB", &lab);
        std::env::set_var("CNILAB_TARGET", &target);
    }
    eprintln!("entering {target} of lab {lab} (namespace {ns}); `exit` or Ctrl-D leaves");
    let mut cmd = vec![shell.to_string()];
    if shell.ends_with("bash") {
        cmd.extend(["--norc".into(), "--noprofile".into()]);
    }
    cmd.push("-i".into());
    exec_in(&ns, &cmd)
}

/// `cnilab graph`: a topology file or a running lab, drawn.
fn graph(lab: Option<String>, what: Option<String>, format: String, output: Option<PathBuf>) -> Result<i32> {
    let from_file = what
        .as_deref()
        .filter(|w| w.ends_with(".toml") || w.contains('/') || std::path::Path::new(w).is_file());
    let (plan, st) = match from_file {
        Some(file) => {
            let t = crate::profile::load_topology(std::path::Path::new(file))?;
            (
                crate::profile::plan_lab(&t, &t.name, &paths::LabPaths::of(&t.name)),
                None,
            )
        }
        None => {
            let lab = state::choose_lab(what.as_deref().or(lab.as_deref()))?;
            let st = state::require(&lab)?;
            (st.plan.clone(), Some(st))
        }
    };
    let g = crate::observe::graph::Graph::new(&plan, st.as_ref());
    let text = match format.as_str() {
        "svg" => g.svg()?,
        "mermaid" => g.mermaid(),
        _ => g.dot(),
    };
    match output {
        Some(path) => {
            std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => out!("{text}"),
    }
    Ok(0)
}

/// `cnilab validate`: the checks `up` makes on the input, and the plan.
fn validate(topology: PathBuf, json: bool) -> Result<i32> {
    let t = crate::profile::load_topology(&topology)?;
    let plan = crate::profile::plan_lab(&t, &t.name, &paths::LabPaths::of(&t.name));
    // What up would refuse on any machine; what this one lacks is doctor's.
    crate::ops::build::unbuildable_here(&plan)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan).map_err(anyhow::Error::from)?);
    } else {
        outln!(
            "{}: valid: lab {}, {} nodes, {} pods, {}{}",
            topology.display(),
            t.name,
            plan.nodes.len(),
            plan.pod_count(),
            status::network_line(&plan),
            match t.policies.len() {
                0 => String::new(),
                n => format!(", {n} NetworkPolicies"),
            }
        );
    }
    let world = crate::ops::policy::planned_world(&plan);
    for p in &t.policies {
        if crate::model::netpol::eval::selects(&world, &p.policy).is_empty() {
            eprintln!(
                "{} ({})",
                crate::front::command::selects_nothing_warning(&p.id()),
                p.file
            );
        }
    }
    if !t.policies.is_empty()
        && let Some(n) = crate::front::command::enforcement_note(plan.profile.name(), plan.profile.enforces_policy())
    {
        eprintln!("{n}");
    }
    Ok(0)
}

/// `cnilab pod ...`, under the lab's lock.
fn pod(lab: Option<String>, cmd: PodCmd) -> Result<i32> {
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let (_lock, mut st) = state::lock_and_require_up(&lab, WRITER_PATIENCE)?;
    let rt = runtime();
    match cmd {
        PodCmd::Add { pod, namespace, labels } => {
            let meta = if namespace.is_none() && labels.is_empty() {
                None
            } else {
                let mut m = crate::model::identity::PodMeta::default();
                if let Some(ns) = namespace {
                    m.namespace = ns;
                }
                for l in labels {
                    let (k, v) = l
                        .split_once('=')
                        .ok_or_else(|| Error::usage(format!("--label {l} has no '='"), "write --label KEY=VALUE"))?;
                    m.labels.insert(k.to_string(), v.to_string());
                }
                Some(m)
            };
            let ip = rt.block_on(crate::front::command::pod_add_as(&mut st, &pod, meta))?;
            outln!("pod {pod} added: {ip}");
        }
        PodCmd::Rm { pod } => {
            rt.block_on(crate::front::command::pod_rm(&mut st, &pod))?;
            outln!("pod {pod} removed");
        }
    }
    Ok(0)
}

/// `cnilab snapshot`: the normalized state of a lab that is up.
fn snapshot(lab: Option<String>, targets: Vec<String>, json: bool, dynamic: bool) -> Result<i32> {
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let st = state::require_up(&lab)?;
    let rt = runtime();
    let snap = rt.block_on(crate::front::command::snapshot(&st, &targets, dynamic))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&snap).map_err(anyhow::Error::from)?);
    } else {
        out!("{}", snap.render());
    }
    Ok(0)
}

/// `cnilab capture`: tcpdump in a target, VXLAN decoded.
fn capture(
    lab: Option<String>,
    target: String,
    iface: Option<String>,
    count: Option<u32>,
    write: Option<PathBuf>,
    filter: Vec<String>,
) -> Result<i32> {
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let st = state::require(&lab)?;
    let ns = crate::ops::state::resolve_target(&st, &target)?;
    let tcpdump = crate::kernel::tools::require("tcpdump")?;
    let switch = st.plan.switches.iter().any(|s| s.name == target);
    let iface = iface.unwrap_or_else(|| if switch { "any".into() } else { "eth0".into() });
    let mut cmd = vec![
        tcpdump.display().to_string(),
        "-n".into(),
        "-l".into(),
        "-i".into(),
        iface.clone(),
    ];
    if switch || iface == "any" {
        cmd.push("-e".into());
    }
    if let Some(c) = count {
        cmd.extend(["-c".into(), c.to_string()]);
    }
    if let Some(w) = &write {
        cmd.extend(["-w".into(), w.display().to_string()]);
    }
    // tcpdump decodes VXLAN by itself on 4789 only; another port (8472,
    // say) needs -T vxlan, as seed 001 does.
    let port = st.plan.profile.vxlan_port();
    let decoded = match port {
        Some(p) if p != 4789 => {
            cmd.extend(["-T".into(), "vxlan".into()]);
            format!(", UDP is decoded as VXLAN (port {p})")
        }
        Some(p) => format!(", VXLAN on UDP {p} is decoded"),
        None => match st.plan.profile.ip_in_udp_port() {
            Some(p) => format!(
                "; UDP {p} between nodes carries the pods' IP packets bare, which tcpdump shows as UDP only (-- -x prints them)"
            ),
            None => String::new(),
        },
    };
    cmd.extend(filter);
    // On the underlay only: a node's eth0, eth1, ... or a switch (a pod's
    // or a bridge's packets are tcpdump's to decode).
    let underlay = switch || (!target.contains('/') && iface.starts_with("eth"));
    if let (Some(p), None, true) = (st.plan.profile.sleeve_port(), &write, underlay) {
        // The profile decodes its overlay: tcpdump writes pcap to us.
        eprintln!(
            "capturing in {target} of lab {lab} on {iface}; UDP {p} between nodes carries the pods' Ethernet frames ({}), decoded below; Ctrl-C stops",
            st.plan.profile.describe()
        );
        return capture_decoded(&ns, &cmd, p, st.plan.profile.get());
    }
    eprintln!("capturing in {target} of lab {lab} on {iface}{decoded}; Ctrl-C stops");
    exec_in(&ns, &cmd)
}

/// Runs tcpdump (`cmd`) in `ns` writing pcap to a pipe, and prints every
/// packet with `profile`'s decoding of UDP `port`.
fn capture_decoded(ns: &str, cmd: &[String], port: u16, profile: &dyn crate::profile::Profile) -> Result<i32> {
    let handle = netns::Netns::open(ns)?;
    // `-w -` before the filter; packet-buffered, so lines come as packets do.
    let mut args: Vec<String> = cmd[1..].to_vec();
    let at = args.iter().position(|a| a == "-i").map_or(0, |i| i + 2);
    args.splice(at..at, ["-U".to_string(), "-w".to_string(), "-".to_string()]);
    let mut child = netns::command(&handle, &cmd[0])
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", cmd[0]))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no pipe from tcpdump"))?;
    let mut out = std::io::stdout().lock();
    let decode = |b: &[u8]| profile.decode_sleeve(b);
    if let Err(e) = crate::front::pcap::print_stream(stdout, &mut out, port, &decode) {
        eprintln!("error: reading tcpdump's packets: {e}");
    }
    let status = child.wait().map_err(anyhow::Error::from)?;
    Ok(status.code().unwrap_or(1))
}

/// `cnilab up`: claims, builds and reports a lab; removes it again on failure or interruption.
fn up(topology: PathBuf, name: Option<String>, json: bool, flannel: Option<String>) -> Result<i32> {
    require_root()?;
    if let Some(n) = &name {
        crate::model::names::check(crate::model::names::Kind::Lab, n, "from --name")?;
    }
    let mut t = crate::profile::load_topology(&topology)?;
    if let Some(imp) = flannel
        && !crate::profile::set_implementation("flannel", &mut t, &imp)?
    {
        return Err(Error::usage(
            format!(
                "--flannel chooses flannel's implementation, but this topology has cni = \"{}\"",
                t.network.profile.name()
            ),
            "leave --flannel out for this topology",
        ));
    }
    let opts = UpOptions {
        name,
        topology_file: topology.display().to_string(),
    };
    let progress = Progress::new(!json);
    let started = Instant::now();
    // Held until this command ends: `down` of this lab waits for it,
    // after asking it to stop.
    let (lock, mut state) = build::claim_locked(&t, &opts)?;
    if let Some(w) = crate::ops::doctor::neighbour_warning(&state.plan) {
        eprintln!("warning: {w}");
    }
    let lab = state.plan.lab.clone();
    let rt = runtime();
    let outcome = interruptible(&rt, build::build(&mut state, &progress))?;
    // Shutting the runtime down waits for namespace threads still at
    // work, so the teardown below sees everything they made.
    drop(rt);
    progress.finish();
    let failed = match outcome {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(Error::from(e)),
        None => {
            teardown::down(&lab)?;
            lock.remove();
            eprintln!("interrupted: lab {lab} was removed");
            return Ok(130);
        }
    };
    if let Some(e) = failed {
        match teardown::down(&lab) {
            Ok(_) => lock.remove(),
            Err(d) => eprintln!("error: removing the half-built lab {lab} failed: {d:#}"),
        }
        return Err(e);
    }
    drop(lock);
    if !state.policies.is_empty() {
        if let Some(n) =
            crate::front::command::enforcement_note(state.plan.profile.name(), state.plan.profile.enforces_policy())
        {
            eprintln!("{n}");
        }
        for id in crate::front::command::selects_nothing(&state) {
            eprintln!("{}", crate::front::command::selects_nothing_warning(&id));
        }
    }
    let st = status::status(&state);
    if json {
        outln!("{}", serde_json::to_string_pretty(&st).map_err(anyhow::Error::from)?);
    } else {
        out!(
            "{}",
            status::up_summary(&st, &state.plan, started.elapsed(), &progress.timings())
        );
    }
    Ok(0)
}

/// `cnilab down`: stops whatever still changes each lab, then removes it.
fn down(lab: Option<String>, which: Option<String>, all: bool, json: bool) -> Result<i32> {
    require_root()?;
    let labs = if all {
        state::labs()
    } else {
        match which.or(lab) {
            Some(l) => {
                crate::model::names::check(crate::model::names::Kind::Lab, &l, "lab to remove")?;
                vec![l]
            }
            None => match state::labs().as_slice() {
                [] => Vec::new(),
                [one] => vec![one.clone()],
                many => {
                    return Err(Error::usage(
                        format!("{} labs are running: {}", many.len(), many.join(", ")),
                        "name one (`cnilab down NAME`) or use --all",
                    ));
                }
            },
        }
    };
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for l in &labs {
        // One lab that cannot be removed does not keep the others.
        match down_one(l, json) {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(e),
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(anyhow::Error::from)?
        );
    } else if labs.is_empty() {
        outln!("no lab to remove");
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    let lines: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    if let Some(e) = teardown::all_failures(
        &format!("{} of {} labs were not completely removed", failures.len(), labs.len()),
        &lines,
    ) {
        return Err(e.into());
    }
    Ok(0)
}

/// Removes one lab under its lock, stopping a command still changing it.
fn down_one(l: &str, json: bool) -> Result<teardown::DownReport> {
    let started = Instant::now();
    let lock = crate::kernel::lock::acquire_stopping_holder(l, |who| {
        eprintln!("lab {l} is being changed by {who}: stopping it first");
    })?;
    let r = teardown::down_with(l, &Progress::new(!json))?;
    lock.remove();
    if !json {
        if r.namespaces == 0 && !r.state {
            outln!("lab {l}: nothing to remove");
        } else {
            outln!(
                "lab {l} is down: removed {} namespaces, stopped {} processes, in {:.2} s",
                r.namespaces,
                r.processes,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(r)
}

/// `cnilab run`: each scenario in a lab of its own, held under its lock.
fn run_scenarios(
    lab: Option<String>,
    scenarios: Vec<PathBuf>,
    update: bool,
    keep: bool,
    junit: Option<PathBuf>,
    name: Option<String>,
    flannel: Option<String>,
) -> Result<i32> {
    require_root()?;
    let loaded = scenarios
        .iter()
        .map(|p| crate::front::scenario::load(p))
        .collect::<Result<Vec<_>>>()?;
    let labs = crate::front::scenario::lab_names(&loaded, name.as_deref().or(lab.as_deref()))?;
    let opts = crate::front::scenario::RunOptions {
        update,
        keep,
        flannel,
        skip_snapshots: false,
    };
    let mut reports = Vec::new();
    for (sc, lab) in loaded.into_iter().zip(labs) {
        paths::ensure_state_in_memory();
        let lock = crate::kernel::lock::try_acquire(&lab)?.ok_or_else(|| crate::kernel::lock::busy(&lab))?;
        outln!("scenario {} ({})", sc.name, sc.path.display());
        if let Some(first) = sc.description.lines().next().filter(|l| !l.is_empty()) {
            outln!("  {first}");
        }
        let rt = runtime();
        let mut out = |l: &str| write_out_lossy(l);
        let outcome = interruptible(&rt, crate::front::scenario::run(&sc, &opts, &lab, &lock, &mut out))?;
        drop(rt);
        let Some(report) = outcome else {
            teardown::down(&lab)?;
            lock.remove();
            eprintln!("interrupted: lab {lab} was removed");
            return Ok(130);
        };
        if keep && report.error.is_none() {
            outln!("  lab {lab} kept: cnilab --lab {lab} status");
        } else {
            teardown::down(&lab)?;
            lock.remove();
        }
        match (&report.error, report.passed()) {
            (Some(e), _) => outln!("  ERROR: {e}"),
            (None, true) => outln!(
                "  PASSED {} steps in {:.1} s",
                report.steps.len(),
                report.time.as_secs_f64()
            ),
            (None, false) => outln!("  FAILED at step {}", report.steps.last().map_or(0, |s| s.step.index)),
        }
        reports.push((sc, report));
    }
    let failed = reports.iter().filter(|(_, r)| !r.passed()).count();
    if reports.len() > 1 {
        outln!("{} of {} scenarios passed", reports.len() - failed, reports.len());
    }
    if let Some(path) = junit {
        let xml = crate::front::scenario::junit(&reports)?;
        std::fs::write(&path, xml).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if failed == 0 {
        0
    } else {
        crate::model::error::EXIT_FAILED
    })
}

/// `cnilab probe ...`.
fn probe(lab: Option<String>, cmd: ProbeCmd) -> Result<i32> {
    use crate::front::command::Probe;
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let st = state::require_up(&lab)?;
    let (p, json) = match cmd {
        ProbeCmd::Ping {
            src,
            dst,
            size,
            df,
            json,
        } => (
            Probe::Ping {
                from: src,
                to: dst,
                size,
                df,
            },
            json,
        ),
        ProbeCmd::Pingall { json } => (Probe::Pingall, json),
        ProbeCmd::Pmtu { src, dst, json } => (Probe::Pmtu { from: src, to: dst }, json),
        ProbeCmd::Tcp {
            src,
            dst,
            bytes,
            timeout,
            json,
        } => (
            Probe::Tcp {
                from: src,
                to: dst,
                bytes,
                timeout: std::time::Duration::from_secs(timeout),
            },
            json,
        ),
        ProbeCmd::Bgp { target, json } => (Probe::Bgp { on: target }, json),
        ProbeCmd::Policy {
            port,
            proto,
            timeout,
            json,
        } => {
            if !(0.05..=60.0).contains(&timeout) {
                return Err(Error::usage(
                    format!("--timeout {timeout} is out of range"),
                    "give 0.05 to 60 seconds",
                ));
            }
            (
                Probe::Policy {
                    ports: port,
                    protos: proto
                        .iter()
                        .filter_map(|p| crate::model::netpol::Proto::from_k8s(&p.to_uppercase()))
                        .collect(),
                    timeout: std::time::Duration::from_secs_f64(timeout),
                },
                json,
            )
        }
    };
    let r = crate::front::command::probe(&st, &p, &Progress::new(true))?;
    print(&r, json)?;
    Ok(if r.ok() { 0 } else { crate::model::error::EXIT_FAILED })
}

/// `cnilab policy ...`, under the lab's lock.
fn policy(lab: Option<String>, cmd: PolicyCmd) -> Result<i32> {
    use crate::front::command::{PolicySel, policy_apply, policy_rm};
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    let (_lock, mut st) = state::lock_and_require_up(&lab, WRITER_PATIENCE)?;
    let rt = runtime();
    let cni = st.plan.profile.name();
    let (change, json) = match cmd {
        PolicyCmd::Apply { files, json } => (rt.block_on(policy_apply(&mut st, &files))?, json),
        PolicyCmd::Rm { names, all, json } => {
            let which = match (names.is_empty(), all) {
                (false, false) => PolicySel::Names(names),
                (true, true) => PolicySel::All,
                (false, true) => {
                    return Err(Error::usage(
                        "name policies or give --all, not both",
                        "see `cnilab policy ls`",
                    ));
                }
                (true, false) => {
                    return Err(Error::usage(
                        "policy rm needs policy names or --all",
                        "see `cnilab policy ls`",
                    ));
                }
            };
            (rt.block_on(policy_rm(&mut st, &which))?, json)
        }
        PolicyCmd::Ls { json } => {
            let ls = crate::observe::status::policy_list(&st);
            if json {
                outln!("{}", serde_json::to_string_pretty(&ls).map_err(anyhow::Error::from)?);
            } else {
                if ls.is_empty() {
                    outln!("no policies in lab {lab}");
                } else {
                    out!("{}", crate::observe::status::policy_table(&ls));
                }
                if let Some(n) = crate::front::command::enforcement_note(cni, st.plan.profile.enforces_policy()) {
                    eprintln!("{n}");
                }
            }
            return Ok(0);
        }
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&change).map_err(anyhow::Error::from)?
        );
    } else {
        for l in change.lines(cni) {
            if l.starts_with("note:") {
                eprintln!("{l}");
            } else {
                outln!("{l}");
            }
        }
    }
    for id in &change.selects_nothing {
        eprintln!("{}", crate::front::command::selects_nothing_warning(id));
    }
    Ok(0)
}

/// `cnilab fault ...`, under the lab's lock.
fn fault(lab: Option<String>, cmd: FaultCmd) -> Result<i32> {
    require_root()?;
    let lab = state::choose_lab(lab.as_deref())?;
    // Read under the lock: a fault added meanwhile by another
    // command is in the state we change, not lost.
    let (_lock, mut st) = state::lock_and_require_up(&lab, WRITER_PATIENCE)?;
    let progress = Progress::quiet();
    let rt = runtime();
    match cmd {
        FaultCmd::Add {
            kind,
            on,
            mtu,
            percent,
            proto,
            port,
            key,
            value,
            new_mac,
            reboot,
            json,
        } => {
            let spec =
                crate::model::faultspec::fault_spec(&kind, on, mtu, percent, proto, port, key, value, new_mac, reboot)?;
            let f = rt.block_on(crate::front::command::fault_add(&mut st, spec, &progress))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&f).map_err(anyhow::Error::from)?);
            } else {
                outln!("{}", f.id);
                if let Some(n) = &f.note {
                    eprintln!("note: {n}");
                }
            }
        }
        FaultCmd::Ls { json } => {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&st.faults).map_err(anyhow::Error::from)?
                );
            } else if st.faults.is_empty() {
                outln!("no faults in lab {lab}");
            } else {
                for l in crate::model::faultspec::lines(&st.faults) {
                    outln!("{l}");
                }
            }
        }
        FaultCmd::Rm { id, all } => {
            let which = match (id, all) {
                (Some(i), _) => crate::front::command::FaultSel::Id(i),
                (None, true) => crate::front::command::FaultSel::All,
                (None, false) => {
                    return Err(Error::usage(
                        "fault rm needs a fault id or --all",
                        "see `cnilab fault ls`",
                    ));
                }
            };
            let mut removed = |f: &crate::model::faultspec::Fault| outln!("removed {} {}", f.id, f.spec.describe());
            rt.block_on(crate::front::command::fault_rm(
                &mut st,
                &which,
                &progress,
                &mut removed,
            ))?;
        }
    }
    Ok(0)
}

/// Replaces this process by `cmd` inside namespace `ns`, with /sys showing
/// that namespace's devices, as `ip netns exec` does.
fn exec_in(ns: &str, cmd: &[String]) -> Result<i32> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, setns, unshare};
    let handle = netns::Netns::open(ns)?;
    setns(handle.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| anyhow::anyhow!("setns into {ns}: {e}"))?;
    // A private mount namespace so that our /sys does not leak to the host.
    if unshare(CloneFlags::CLONE_NEWNS).is_ok()
        && mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .is_ok()
        && umount2("/sys", MntFlags::MNT_DETACH).is_ok()
    {
        let _ = mount(Some(ns), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>);
    }
    let args: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::usage("a command argument holds a NUL byte", "remove it"))?;
    let err = nix::unistd::execvp(&args[0], &args).unwrap_err();
    eprintln!("error: cannot run {}: {}", cmd[0], err.desc());
    Ok(if err == nix::errno::Errno::ENOENT { 127 } else { 126 })
}

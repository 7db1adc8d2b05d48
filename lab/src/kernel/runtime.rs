//! The lab's runtime: handles on its namespaces, its agents (control-plane
//! daemons started in a namespace, each ready when a file appears) and the
//! waiting for readiness and convergence. The core build and the profiles
//! both build on it; it knows no profile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::kernel::retry::Backoff;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};

use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::Nl;
use crate::kernel::progress::Progress;
use crate::model::paths::LabPaths;
use crate::model::plan::{Plan, write_file};

/// How long agents get to write their subnet file.
const AGENT_START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the control plane gets to program every expected route.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

/// A namespace of the lab with its netlink socket.
pub struct Handle {
    /// The namespace.
    pub ns: Netns,
    /// A socket in it.
    pub nl: Nl,
}

/// What the core build made, for a profile to build on; `P` is the plan's
/// profile part.
pub struct Built<'a, P> {
    /// The plan.
    pub plan: &'a Plan<P>,
    /// The lab's folders.
    pub paths: &'a LabPaths,
    /// Progress reporting.
    pub progress: &'a Progress,
    /// Node namespaces by node name.
    pub nodes: BTreeMap<String, Handle>,
    /// Router namespaces by router name.
    pub routers: BTreeMap<String, Handle>,
}

impl<'a, P> Built<'a, P> {
    /// Handles on a running lab's nodes and routers (needs a tokio runtime).
    pub fn open(plan: &'a Plan<P>, paths: &'a LabPaths, progress: &'a Progress) -> Result<Self> {
        let open = |ns: &str| -> Result<Handle> {
            let ns = Netns::open(ns)?;
            let nl = Nl::connect_in(&ns)?;
            Ok(Handle { ns, nl })
        };
        Ok(Built {
            plan,
            paths,
            progress,
            nodes: plan
                .nodes
                .iter()
                .map(|n| Ok((n.name.clone(), open(&n.ns)?)))
                .collect::<Result<_>>()?,
            routers: plan
                .routers
                .iter()
                .map(|r| Ok((r.name.clone(), open(&r.ns)?)))
                .collect::<Result<_>>()?,
        })
    }
}

/// A control-plane daemon of the lab: what runs where, and the file that
/// appears when it is ready.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The node or router it serves (the key in the lab's state).
    pub owner: String,
    /// The namespace it runs in.
    pub ns: String,
    /// Its program's name, e.g. bird.
    pub name: &'static str,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where its output goes.
    pub log: PathBuf,
    /// The file it writes (or the socket it opens) once ready.
    pub ready: PathBuf,
    /// A configuration file to write before it starts.
    pub config: Option<(PathBuf, String)>,
}

/// A BIRD serving `owner` in namespace `ns`, its files in `dir`.
pub fn bird_agent(owner: &str, ns: &str, dir: PathBuf, config: &str) -> AgentSpec {
    AgentSpec {
        owner: owner.to_string(),
        ns: ns.to_string(),
        name: "bird",
        program: crate::kernel::bird::binary().unwrap_or_else(|| PathBuf::from("/usr/sbin/bird")),
        args: vec![
            "-f".into(),
            "-c".into(),
            dir.join("bird.conf").display().to_string(),
            "-s".into(),
            dir.join("bird.ctl").display().to_string(),
        ],
        log: dir.join("agent.log"),
        ready: dir.join("bird.ctl"),
        config: Some((dir.join("bird.conf"), config.to_string())),
    }
}

/// Whether a process is alive (a zombie is not).
pub fn alive(pid: i32) -> bool {
    // A zombie has let go of its namespaces already.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Makes `bin/<name>` links to this very executable: cnilab answers as a
/// profile's plugin or agent by the name it runs under (`profile::programs`).
pub fn link_binaries(paths: &LabPaths, names: &[&str]) -> Result<()> {
    let me = std::env::current_exe().context("cannot find the cnilab executable")?;
    let bin = paths.bin_dir();
    std::fs::create_dir_all(&bin)?;
    for n in names {
        let link = bin.join(n);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&me, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

/// Starts a daemon inside a node's namespace, detached from the terminal,
/// its output in `log`.
pub fn spawn_agent(program: &Path, args: &[String], ns: &Netns, log: &Path) -> Result<u32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(program);
    // Its own process group: a Ctrl-C at the terminal is for cnilab, not
    // for the lab's daemons. Without a pre_exec hook the spawn is a
    // posix_spawn, not a fork of this process.
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = netns::with_netns(ns.raw_fd(), || cmd.spawn())
        .context("cannot enter the namespace")?
        .with_context(|| format!("cannot start {}", program.display()))?;
    Ok(child.id())
}

/// Starts an agent in its namespace: writes its configuration, removes a
/// ready file left by an earlier run (unless it is that configuration, as
/// a subnet file the agent reads and rewrites), spawns it. Returns its PID.
pub fn start_agent(spec: &AgentSpec, ns: &Netns) -> Result<u32> {
    if let Some((path, text)) = &spec.config {
        write_file(path, text)?;
    }
    if spec.config.as_ref().is_none_or(|(path, _)| *path != spec.ready) {
        let _ = std::fs::remove_file(&spec.ready);
    }
    spawn_agent(&spec.program, &spec.args, ns, &spec.log)
}

/// Starts the given agents of the lab and waits until each is ready.
/// Returns each agent's (owner, PID), for the lab's state.
pub async fn start_agents<P: Sync>(b: &Built<'_, P>, specs: Vec<AgentSpec>) -> Result<Vec<(String, u32)>> {
    let mut ready = Vec::new();
    let mut pids = Vec::new();
    for spec in specs {
        let ns = match b.nodes.get(&spec.owner) {
            Some(h) => &h.ns,
            None => &b.routers.get(&spec.owner).context("agent of an unknown namespace")?.ns,
        };
        let pid = start_agent(&spec, ns)?;
        pids.push((spec.owner.clone(), pid));
        ready.push((spec.owner.clone(), spec.ready.clone(), pid, spec.log.clone(), spec.name));
    }
    wait_ready(&ready, b.progress).await?;
    Ok(pids)
}

/// The last lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until each agent has written its ready file, failing early with
/// its log when one exits. Items: (node, ready file, pid, log, agent name).
pub async fn wait_ready(items: &[(String, PathBuf, u32, PathBuf, &str)], progress: &Progress) -> Result<()> {
    let mut backoff = Backoff::new(
        AGENT_START_DEADLINE,
        Duration::from_millis(1),
        Duration::from_millis(50),
    );
    let mut waiting: Vec<&(String, PathBuf, u32, PathBuf, &str)> = items.iter().collect();
    loop {
        waiting.retain(|(_, file, ..)| {
            let ready = file.exists();
            if ready {
                progress.step();
            }
            !ready
        });
        if waiting.is_empty() {
            return Ok(());
        }
        for (node, _, pid, log, agent) in &waiting {
            if !alive(*pid as i32) {
                bail!(
                    "{agent} on {node} exited before it was ready; its log ({}):\n{}",
                    log.display(),
                    tail(log, 15)
                );
            }
        }
        if backoff.expired() {
            let who: Vec<String> = waiting.iter().map(|(n, _, _, _, a)| format!("{a} on {n}")).collect();
            bail!(
                "not ready within {}s: {}",
                AGENT_START_DEADLINE.as_secs(),
                who.join(", ")
            );
        }
        backoff.sleep_async().await;
    }
}

/// Polls `check` with a growing pause until it reports nothing missing or
/// the deadline passes; then fails with what is still missing.
pub async fn converge<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>>>,
{
    let mut backoff = Backoff::new(CONVERGE_DEADLINE, Duration::from_millis(2), Duration::from_millis(100));
    loop {
        let missing = check().await?;
        if missing.is_empty() {
            return Ok(());
        }
        if backoff.expired() {
            bail!(
                "{what} did not converge within {}s; still missing:\n  {}",
                CONVERGE_DEADLINE.as_secs(),
                missing.join("\n  ")
            );
        }
        backoff.sleep_async().await;
    }
}

/// The main table's routes as (destination, gateway).
pub async fn main_routes(nl: &Nl) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>)>> {
    Ok(nl
        .routes()
        .await?
        .iter()
        .filter(|r| r.header.table == 254)
        .filter_map(|r| {
            let dst = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            Some((Ipv4Net::new(dst, r.header.destination_prefix_length).ok()?, gw))
        })
        .collect())
}

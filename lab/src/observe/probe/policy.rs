//! `probe policy`: every pod pair, for real, on each port and protocol
//! (a TCP connect, a UDP echo, each with a deadline), next to what the
//! Kubernetes semantics of the policies in force say
//! ([`crate::model::netpol::eval`]), every disagreement marked with the
//! policies that decide it.
//!
//! cnilab listens in every pod for the probe's duration (a TCP listener and
//! a UDP echo per port, sockets opened inside the pod's namespace), and
//! connects from inside each source pod's namespace. A pod is not probed
//! against itself: its traffic to itself never leaves its namespace, so no
//! policy engine sees it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::kernel::netns::{Netns, with_netns};
use crate::model::netpol::eval::{Peer, Side, Verdict, evaluate};
use crate::model::netpol::{NetworkPolicy, Proto, World};
use crate::ops::state::LabState;

/// What the kernel did with one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// TCP connected; the UDP echo came back.
    Connected,
    /// Nothing came back before the deadline (dropped on the way).
    Blocked,
    /// The destination refused (a TCP reset or ICMP unreachable).
    Refused,
}

/// One pod pair on one port.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `node/pod` it comes from.
    pub from: String,
    /// `node/pod` it goes to.
    pub to: String,
    /// The destination port.
    pub port: u16,
    /// tcp or udp.
    pub proto: Proto,
    /// What the kernel did.
    pub kernel: Outcome,
    /// What the policies' Kubernetes semantics say: allowed or not.
    pub expected: bool,
    /// Whether the kernel did what the policies say.
    pub agree: bool,
    /// The evaluator's reasons, both sides.
    pub verdict: Verdict,
}

/// The whole matrix.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyProbe {
    /// Pods, in node then pod order (`node/pod`), with their namespaces.
    pub pods: Vec<String>,
    /// `namespace/name` of each pod, in the same order.
    pub identities: Vec<String>,
    /// (port, protocol) probed.
    pub ports: Vec<(u16, Proto)>,
    /// Every pair on every port.
    pub cells: Vec<Cell>,
    /// How many cells disagree.
    pub disagreements: usize,
    /// How many probes the kernel delivered.
    pub delivered: usize,
    /// How many it dropped or refused.
    pub blocked: usize,
    /// The policies in force (`namespace/name`).
    pub policies: Vec<String>,
    /// Whether the lab's CNI enforces policy.
    pub enforced: bool,
    /// The lab's CNI.
    pub cni: String,
    /// The deadline of each probe, seconds.
    pub timeout: f64,
    /// How long it took.
    pub seconds: f64,
}

impl PolicyProbe {
    /// Whether the kernel agrees with the policies everywhere.
    pub fn ok(&self) -> bool {
        self.disagreements == 0
    }
}

/// Most probes in flight at once (each holds a socket), within the open
/// file limit, which a probe raises to its hard limit first.
fn in_flight() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 256;
    };
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Room for the listeners (two per pod and port) and everything else.
    (limit.saturating_sub(1024) as usize).clamp(256, 4096)
}

/// Probes every pod pair of `state` on each of `ports` with each of
/// `protos`, each probe within `timeout`.
pub fn probe(state: &LabState, ports: &[u16], protos: &[Proto], timeout: Duration) -> Result<PolicyProbe> {
    let world = crate::ops::policy::world(state);
    let policies = crate::ops::policy::policies(state);
    let started = Instant::now();
    let pods: Vec<(String, Ipv4Addr)> = world
        .pods
        .iter()
        .map(|p| (crate::model::paths::pod_ns(&state.plan.lab, &p.node, &p.name), p.ip))
        .collect();
    let handles: Vec<Arc<Netns>> = pods
        .iter()
        .map(|(ns, _)| Netns::open(ns).map(Arc::new))
        .collect::<Result<_>>()?;
    let wanted: Vec<(u16, Proto)> = ports
        .iter()
        .flat_map(|p| protos.iter().map(move |pr| (*p, *pr)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let base = udp_ports(state, pods.len() * wanted.len());
    let outcomes = rt.block_on(run(&handles, &pods, &wanted, timeout, base))?;
    let mut cells = Vec::new();
    for ((i, j, port, proto), kernel) in outcomes {
        let (src, dst) = (&world.pods[i], &world.pods[j]);
        let verdict = evaluate(&world, &policies, Peer::Pod(src), Peer::Pod(dst), port, proto);
        let expected = verdict.allowed();
        cells.push(Cell {
            from: format!("{}/{}", src.node, src.name),
            to: format!("{}/{}", dst.node, dst.name),
            port,
            proto,
            agree: expected == (kernel == Outcome::Connected),
            kernel,
            expected,
            verdict,
        });
    }
    Ok(summarize(state, &world, &policies, wanted, cells, timeout, started))
}

fn summarize(
    state: &LabState,
    world: &World,
    policies: &[NetworkPolicy],
    ports: Vec<(u16, Proto)>,
    cells: Vec<Cell>,
    timeout: Duration,
    started: Instant,
) -> PolicyProbe {
    PolicyProbe {
        pods: world.pods.iter().map(|p| format!("{}/{}", p.node, p.name)).collect(),
        identities: world
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect(),
        ports,
        disagreements: cells.iter().filter(|c| !c.agree).count(),
        delivered: cells.iter().filter(|c| c.kernel == Outcome::Connected).count(),
        blocked: cells.iter().filter(|c| c.kernel != Outcome::Connected).count(),
        cells,
        policies: policies.iter().map(crate::model::netpol::policy_id).collect(),
        enforced: state.plan.profile.enforces_policy(),
        cni: state.plan.profile.name().to_string(),
        timeout: timeout.as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

type Key = (usize, usize, u16, Proto);

/// UDP source ports for this run's probes, fresh ones each run: a UDP
/// flow the kernel still tracks from an earlier run (conntrack keeps a
/// replied flow 120 s) would pass a policy as ESTABLISHED, so each run
/// takes the next block of a range (kept in the lab's folder) instead of
/// letting the kernel pick a port it may have used for the same pair.
fn udp_ports(state: &LabState, needed: usize) -> Option<u16> {
    const FIRST: usize = 20000;
    const LAST: usize = 60000;
    let file = state.paths().root.join("policy-probe-port");
    let next = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|p| (FIRST..LAST).contains(p))
        .unwrap_or(FIRST);
    if needed > LAST - FIRST {
        // More probes than the range: the kernel picks (0 marks that).
        return None;
    }
    let base = if next + needed > LAST { FIRST } else { next };
    let _ = std::fs::write(&file, (base + needed).to_string());
    Some(base as u16)
}

async fn run(
    handles: &[Arc<Netns>],
    pods: &[(String, Ipv4Addr)],
    wanted: &[(u16, Proto)],
    timeout: Duration,
    udp_base: Option<u16>,
) -> Result<Vec<(Key, Outcome)>> {
    let stop = tokio_util_stop();
    let mut servers = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        for &(port, proto) in wanted {
            servers.push(
                serve(h, pods[i].1, port, proto, stop.clone())
                    .with_context(|| format!("cannot listen on {} port {port} in {}", proto.lower(), pods[i].0))?,
            );
        }
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(in_flight()));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, from) in handles.iter().enumerate() {
        for (j, (_, ip)) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            for (k, &(port, proto)) in wanted.iter().enumerate() {
                let (from, limit, to) = (from.clone(), limit.clone(), SocketAddr::from((*ip, port)));
                // Distinct per destination and port; the same for every source.
                let sport = udp_base.map_or(0, |b| b + (j * wanted.len() + k) as u16);
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await?;
                    let o = match proto {
                        Proto::Udp => udp_probe(&from, to, timeout, sport).await?,
                        _ => tcp_probe(&from, to, timeout).await?,
                    };
                    Ok::<_, anyhow::Error>(((i, j, port, proto), o))
                });
            }
        }
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.map_err(|e| anyhow!("a probe task failed: {e}"))??);
    }
    let _ = stop.send(true);
    for s in servers {
        s.abort();
    }
    out.sort_by_key(|(k, _)| (k.2, k.3, k.0, k.1));
    Ok(out)
}

fn tokio_util_stop() -> tokio::sync::watch::Sender<bool> {
    tokio::sync::watch::channel(false).0
}

/// Listens in a pod: TCP accepts and closes; UDP echoes.
fn serve(
    ns: &Netns,
    ip: Ipv4Addr,
    port: u16,
    proto: Proto,
    stop: tokio::sync::watch::Sender<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut stop = stop.subscribe();
    let addr = SocketAddr::from((ip, port));
    Ok(match proto {
        Proto::Udp => {
            let std = with_netns(ns.raw_fd(), || std::net::UdpSocket::bind(addr))??;
            std.set_nonblocking(true)?;
            let sock = tokio::net::UdpSocket::from_std(std)?;
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    tokio::select! {
                        r = sock.recv_from(&mut buf) => if let Ok((n, peer)) = r {
                            let _ = sock.send_to(&buf[..n], peer).await;
                        },
                        _ = stop.changed() => return,
                    }
                }
            })
        }
        _ => {
            let std = with_netns(ns.raw_fd(), || std::net::TcpListener::bind(addr))??;
            std.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(std)?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => drop(r),
                        _ = stop.changed() => return,
                    }
                }
            })
        }
    })
}

async fn tcp_probe(from: &Netns, to: SocketAddr, timeout: Duration) -> Result<Outcome> {
    let sock = with_netns(from.raw_fd(), tokio::net::TcpSocket::new_v4)??;
    Ok(match tokio::time::timeout(timeout, sock.connect(to)).await {
        Ok(Ok(_)) => Outcome::Connected,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH)) => Outcome::Refused,
        Ok(Err(_)) | Err(_) => Outcome::Blocked,
    })
}

async fn udp_probe(from: &Netns, to: SocketAddr, timeout: Duration, sport: u16) -> Result<Outcome> {
    let std = with_netns(from.raw_fd(), || {
        std::net::UdpSocket::bind(("0.0.0.0", sport)).or_else(|_| std::net::UdpSocket::bind(("0.0.0.0", 0)))
    })??;
    std.set_nonblocking(true)?;
    let sock = tokio::net::UdpSocket::from_std(std)?;
    sock.connect(to).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 64];
    // Sent again every 250 ms until the deadline: a datagram is not
    // retransmitted, and the first may wait for a neighbour to resolve.
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = sock.send(b"cnilab policy probe").await {
            return Ok(refused_or_blocked(&e));
        }
        let wait = (deadline - tokio::time::Instant::now()).min(Duration::from_millis(250));
        match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(_)) => return Ok(Outcome::Connected),
            Ok(Err(e)) => return Ok(refused_or_blocked(&e)),
            Err(_) => {}
        }
    }
    Ok(Outcome::Blocked)
}

fn refused_or_blocked(e: &std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::ConnectionRefused
        || matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH))
    {
        Outcome::Refused
    } else {
        Outcome::Blocked
    }
}

/// Why the evaluator decided so, in a few words.
pub fn why(v: &Verdict) -> String {
    let side = |name: &str, s: &Side| match s {
        Side::NotIsolated => format!("{name} not isolated"),
        Side::Allowed { by } => format!("{name} allowed by {}", by.join(", ")),
        Side::Denied { isolated_by } => format!("{name} isolated by {}, no rule allows it", isolated_by.join(", ")),
    };
    format!("{}; {}", side("egress", &v.egress), side("ingress", &v.ingress))
}

const MATRIX_MAX: usize = 32;

impl std::fmt::Display for PolicyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index: BTreeMap<&str, usize> = self.pods.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
        let n = self.pods.len();
        for &(port, proto) in &self.ports {
            let cells: Vec<&Cell> = self
                .cells
                .iter()
                .filter(|c| c.port == port && c.proto == proto)
                .collect();
            let bad = cells.iter().filter(|c| !c.agree).count();
            writeln!(f, "{}/{port}: {} pairs, {bad} disagree", proto.lower(), cells.len())?;
            if n > MATRIX_MAX {
                continue;
            }
            let mut kernel = vec![vec!['-'; n]; n];
            let mut policy = vec![vec!['-'; n]; n];
            for c in &cells {
                let (i, j) = (index[c.from.as_str()], index[c.to.as_str()]);
                kernel[i][j] = match c.kernel {
                    Outcome::Connected => '.',
                    Outcome::Blocked => 'X',
                    Outcome::Refused => 'R',
                };
                policy[i][j] = if c.expected { '.' } else { 'X' };
            }
            let width = self.identities.iter().map(|s| s.len()).max().unwrap_or(0);
            let nums: String = (1..=n).map(|i| format!("{:>3}", i)).collect();
            writeln!(
                f,
                "  {:w$}     kernel{}   policy",
                "",
                " ".repeat((3 * n).saturating_sub(6)),
                w = width
            )?;
            writeln!(f, "  {:w$}    {nums}   {nums}", "", w = width)?;
            for i in 0..n {
                let k: String = kernel[i].iter().map(|c| format!("{c:>3}")).collect();
                let p: String = policy[i].iter().map(|c| format!("{c:>3}")).collect();
                let mark = if kernel[i].iter().zip(&policy[i]).any(|(a, b)| a != b) {
                    "  <- differs"
                } else {
                    ""
                };
                writeln!(f, "{:>3} {:w$} {k}   {p}{mark}", i + 1, self.identities[i], w = width)?;
            }
        }
        let bad: Vec<&Cell> = self.cells.iter().filter(|c| !c.agree).collect();
        let named = |p: &str| {
            index
                .get(p)
                .map_or_else(|| p.to_string(), |i| format!("{} ({p})", self.identities[*i]))
        };
        for c in bad.iter().take(40) {
            writeln!(
                f,
                "DIFFERS {} -> {} {}/{}: kernel {}, policy says {} ({})",
                named(&c.from),
                named(&c.to),
                c.proto.lower(),
                c.port,
                match c.kernel {
                    Outcome::Connected => "delivered",
                    Outcome::Blocked => "dropped (no answer before the deadline)",
                    Outcome::Refused => "refused",
                },
                if c.expected { "allowed" } else { "denied" },
                why(&c.verdict)
            )?;
        }
        if bad.len() > 40 {
            writeln!(f, "... and {} more (see --json)", bad.len() - 40)?;
        }
        write!(
            f,
            "{} probes ({} delivered, {} blocked) in {:.1} s ({} policies, deadline {:.1} s each; . delivered, X dropped, R refused, - self): ",
            self.cells.len(),
            self.delivered,
            self.blocked,
            self.seconds,
            self.policies.len(),
            self.timeout
        )?;
        if self.disagreements == 0 {
            writeln!(f, "the kernel agrees with the policies everywhere")?;
        } else {
            writeln!(
                f,
                "{} cells where the kernel disagrees with the policies",
                self.disagreements
            )?;
        }
        if !self.enforced && !self.policies.is_empty() {
            writeln!(f, "note: {} enforces no NetworkPolicy", self.cni)?;
        }
        Ok(())
    }
}

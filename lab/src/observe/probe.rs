//! Probes (cli.md): one ping, every pod to every pod, the path MTU by DF
//! probing, a bulk TCP transfer with a deadline, and the BGP sessions. Each
//! returns a result that the command line prints and scenarios check.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::kernel::retry::{self, Backoff};
use crate::model::faultspec::{self, Target};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};
use serde::Serialize;

use crate::kernel::netns::{self, Netns};
use crate::model::error::Error;
use crate::ops::state::LabState;

mod pingall;
pub mod policy;

/// A probe's source: a pod or node namespace.
#[derive(Debug, Clone)]
pub struct Source {
    /// As the user wrote it.
    pub name: String,
    /// Its namespace.
    pub ns: String,
}

/// A probe's destination.
#[derive(Debug, Clone)]
pub struct Dest {
    /// As the user wrote it.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its namespace, when it is a lab pod or node.
    pub ns: Option<String>,
}

fn pod_ip(state: &LabState, key: &str) -> Option<Ipv4Addr> {
    state.pods.get(key)?.ip.as_deref()?.split('/').next()?.parse().ok()
}

/// Resolves a SRC: `NODE/POD` or a node.
pub fn source(state: &LabState, s: &str) -> Result<Source> {
    let plan = &state.plan;
    let ns = match faultspec::resolve(plan, s) {
        Some(Target::Node(n)) => Some(n.ns.clone()),
        Some(Target::Pod(p)) => Some(p.ns.clone()),
        _ => None,
    };
    ns.map(|ns| Source {
        name: s.to_string(),
        ns,
    })
    .ok_or_else(|| {
        Error::usage(
            format!("lab {} has no pod or node \"{s}\" to probe from", plan.lab),
            "name a source as NODE/POD (e.g. worker1/pod-1) or NODE",
        )
        .into()
    })
}

/// Resolves a DST: `NODE/POD`, a node, or an address.
pub fn dest(state: &LabState, d: &str) -> Result<Dest> {
    let plan = &state.plan;
    if let Ok(ip) = d.parse::<Ipv4Addr>() {
        let ns = plan
            .pods()
            .find(|(n, p)| pod_ip(state, &format!("{}/{}", n.name, p.name)) == Some(ip))
            .map(|(_, p)| p.ns.clone())
            .or_else(|| plan.nodes.iter().find(|n| n.ip == ip).map(|n| n.ns.clone()));
        return Ok(Dest {
            name: d.to_string(),
            ip,
            ns,
        });
    }
    match faultspec::resolve(plan, d) {
        Some(Target::Pod(pod)) => {
            if let Some(ip) = pod_ip(state, d) {
                return Ok(Dest {
                    name: d.to_string(),
                    ip,
                    ns: Some(pod.ns.clone()),
                });
            }
        }
        Some(Target::Node(n)) => {
            return Ok(Dest {
                name: d.to_string(),
                ip: n.ip,
                ns: Some(n.ns.clone()),
            });
        }
        _ => {}
    }
    Err(Error::usage(
        format!("lab {} has no pod or node \"{d}\" to probe", plan.lab),
        "name a destination as NODE/POD, NODE or an IPv4 address",
    )
    .into())
}

/// The outcome of one ping.
#[derive(Debug, Clone, Serialize)]
pub struct Ping {
    /// Source.
    pub from: String,
    /// Destination as written.
    pub to: String,
    /// Destination address.
    pub ip: Ipv4Addr,
    /// ICMP payload size.
    pub size: u32,
    /// Don't-fragment set.
    pub df: bool,
    /// Whether a reply came.
    pub ok: bool,
    /// Round trip in ms.
    pub rtt_ms: Option<f64>,
    /// What ping said when no reply came (an ICMP error, a local refusal).
    pub error: Option<String>,
}

fn ping_once(
    src: &Netns,
    ip: Ipv4Addr,
    size: u32,
    df: bool,
    wait_s: u32,
) -> Result<(bool, Option<f64>, Option<String>)> {
    let mut args = vec![
        "-n".to_string(),
        "-c1".into(),
        format!("-W{wait_s}"),
        "-s".into(),
        size.to_string(),
    ];
    if df {
        args.extend(["-M".into(), "do".into()]);
    }
    args.push(ip.to_string());
    let out = netns::command(src, "ping")
        .args(&args)
        .output()
        .context("cannot run ping (apt-get install iputils-ping)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let rtt = text
        .lines()
        .find_map(|l| l.split("time=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok());
    if out.status.success() {
        return Ok((true, rtt, None));
    }
    let specific = |l: &&str| {
        l.contains("Frag needed")
            || l.contains("message too long")
            || l.contains("Unreachable")
            || l.contains("Unknown host")
    };
    let error = text
        .lines()
        .map(str::trim)
        .find(specific)
        .or_else(|| text.lines().map(str::trim).find(|l| l.starts_with("ping:")))
        .map(|l| l.trim_start_matches("ping: ").to_string());
    Ok((false, None, error))
}

/// One ICMP echo.
pub fn ping(state: &LabState, from: &str, to: &str, size: Option<u32>, df: bool) -> Result<Ping> {
    let src = source(state, from)?;
    let dst = dest(state, to)?;
    let ns = Netns::open(&src.ns)?;
    let size = size.unwrap_or(56);
    let (ok, rtt_ms, error) = ping_once(&ns, dst.ip, size, df, 2)?;
    Ok(Ping {
        from: src.name,
        to: dst.name,
        ip: dst.ip,
        size,
        df,
        ok,
        rtt_ms,
        error,
    })
}

impl std::fmt::Display for Ping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ping {} -> {} ({}) {} bytes{}: ",
            self.from,
            self.to,
            self.ip,
            self.size,
            if self.df { " DF" } else { "" }
        )?;
        match (self.ok, self.rtt_ms, &self.error) {
            (true, Some(r), _) => write!(f, "reply in {r} ms"),
            (true, None, _) => write!(f, "reply"),
            (false, _, Some(e)) => write!(f, "no reply ({e})"),
            (false, _, None) => write!(f, "no reply"),
        }
    }
}

/// A pair of pods that did not answer.
#[derive(Debug, Clone, Serialize)]
pub struct PairFailure {
    /// The pod that pinged, `node/pod`.
    pub from: String,
    /// The pod that did not answer.
    pub to: String,
    /// The source pod's address.
    pub from_ip: Ipv4Addr,
    /// The address pinged.
    pub to_ip: Ipv4Addr,
    /// Why the echo could not even be sent, when that was the case.
    pub error: Option<String>,
}

/// Every pod to every pod.
#[derive(Debug, Clone, Serialize)]
pub struct PingAll {
    /// Pods, in order.
    pub pods: Vec<String>,
    /// Whether every pair replied (what a scenario's `expect = { ok = true }` reads).
    pub ok: bool,
    /// Pairs probed (each ordered pair of distinct pods).
    pub total: usize,
    /// Pairs that did not reply after every retry.
    pub failed: usize,
    /// Pairs that needed more than one echo, answered in the end or not.
    pub retried: usize,
    /// Echoes sent per pair at most.
    pub attempts: usize,
    /// Wall time of the probe.
    pub seconds: f64,
    /// The pairs that did not reply, by source then destination.
    pub failures: Vec<PairFailure>,
    /// Why failures may not be the lab's: the host's ARP table, shared by
    /// every namespace, was full while the probe ran.
    pub warning: Option<String>,
}

/// Labs up to this many pods print the matrix; bigger ones a list.
const MATRIX_UP_TO: usize = 32;
/// Failing pairs the text lists at most (`--json` has them all).
const LIST_UP_TO: usize = 100;

/// Pings every pod from every pod, without reporting progress.
pub fn pingall(state: &LabState) -> Result<PingAll> {
    pingall_with(state, &crate::kernel::progress::Progress::quiet())
}

/// Pings every pod from every pod with many echoes in flight, each pair
/// retried twice before it counts as failed (see probe/pingall.rs).
pub fn pingall_with(state: &LabState, progress: &crate::kernel::progress::Progress) -> Result<PingAll> {
    let members: Vec<pingall::Member> = state
        .plan
        .pods()
        .filter_map(|(n, p)| {
            let name = format!("{}/{}", n.name, p.name);
            let ip = pod_ip(state, &name)?;
            Some(pingall::Member {
                name,
                ns: p.ns.clone(),
                ip,
            })
        })
        .collect();
    let started = Instant::now();
    let before = pingall::arp_table();
    let out = pingall::run(&members, progress)?;
    let warning = arp_warning(before, pingall::arp_table(), state);
    let n = members.len();
    let errors: std::collections::HashMap<usize, String> = out.errors.into_iter().collect();
    let failures: Vec<PairFailure> = (0..n * n)
        .filter(|p| !out.ok[*p])
        .map(|p| {
            let (a, b) = (&members[p / n], &members[p % n]);
            PairFailure {
                from: a.name.clone(),
                to: b.name.clone(),
                from_ip: a.ip,
                to_ip: b.ip,
                error: errors.get(&p).cloned(),
            }
        })
        .collect();
    Ok(PingAll {
        pods: members.into_iter().map(|m| m.name).collect(),
        ok: failures.is_empty(),
        total: n * n.saturating_sub(1),
        failed: failures.len(),
        retried: out.retried,
        attempts: pingall::ATTEMPTS,
        seconds: started.elapsed().as_secs_f64(),
        failures,
        warning,
    })
}

/// A warning when the host's ARP table was full during the probe. All
/// namespaces share that table and its limit (gc_thresh3, 1,024 by
/// default); when it is full the kernel drops packets that need a new
/// neighbour, so a big lab fails pairs that a real cluster, a kernel per
/// node, would not.
fn arp_warning(before: Option<(u64, u64)>, after: Option<(u64, u64)>, state: &LabState) -> Option<String> {
    let ((_, full0), (entries, full1)) = (before?, after?);
    if full1 <= full0 {
        return None;
    }
    // What the lab itself may hold at once: each pod knows its gateway and
    // the pods of its node, each node its pods and the other nodes.
    let nodes = &state.plan.nodes;
    let need: u64 = nodes
        .iter()
        .map(|n| {
            let k = n.pods.len() as u64;
            k * (k + 1) + k + nodes.len() as u64
        })
        .sum();
    let suggest = (entries + need).next_power_of_two().max(4096);
    Some(format!(
        "the host's ARP table (shared by every namespace, limit net.ipv4.neigh.default.gc_thresh3 = {}) was full \
         {} times during the probe, and packets needing a new neighbour were dropped, so failures may be the host's, \
         not the lab's; raise the limit: sysctl -w net.ipv4.neigh.default.gc_thresh3={suggest} \
         net.ipv4.neigh.default.gc_thresh2={}",
        pingall::arp_limit().map_or("?".into(), |l| l.to_string()),
        full1 - full0,
        suggest / 2
    ))
}

impl PingAll {
    fn matrix(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: std::collections::HashSet<(&str, &str)> =
            self.failures.iter().map(|x| (x.from.as_str(), x.to.as_str())).collect();
        let w = self.pods.iter().map(|p| p.len()).max().unwrap_or(3);
        let num = self.pods.len().to_string().len().max(2);
        write!(f, "{:>num$} {:w$}", "", "")?;
        for j in 0..self.pods.len() {
            write!(f, " {:>num$}", j + 1)?;
        }
        writeln!(f)?;
        for (i, p) in self.pods.iter().enumerate() {
            write!(f, "{:>num$} {p:w$}", i + 1)?;
            for (j, q) in self.pods.iter().enumerate() {
                let c = if i == j {
                    "-"
                } else if failed.contains(&(p.as_str(), q.as_str())) {
                    "X"
                } else {
                    "."
                };
                write!(f, " {c:>num$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for PingAll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pods.len() <= MATRIX_UP_TO {
            self.matrix(f)?;
        } else {
            for x in self.failures.iter().take(LIST_UP_TO) {
                write!(f, "no reply: {} ({}) -> {} ({})", x.from, x.from_ip, x.to, x.to_ip)?;
                if let Some(e) = &x.error {
                    write!(f, ": {e}")?;
                }
                writeln!(f)?;
            }
            if self.failures.len() > LIST_UP_TO {
                writeln!(
                    f,
                    "... and {} more (--json lists them all)",
                    self.failures.len() - LIST_UP_TO
                )?;
            }
        }
        write!(
            f,
            "{}/{} pairs replied in {:.1} s ({} needed a retry; up to {} echoes a pair)",
            self.total - self.failed,
            self.total,
            self.seconds,
            self.retried,
            self.attempts
        )?;
        if self.pods.len() <= MATRIX_UP_TO {
            write!(f, "; . reply, X no reply, - self; row pings column")?;
        }
        if let Some(w) = &self.warning {
            write!(f, "\nWARNING: {w}")?;
        }
        Ok(())
    }
}

/// Path MTU found by DF probing.
#[derive(Debug, Clone, Serialize)]
pub struct Pmtu {
    /// Source.
    pub from: String,
    /// Destination.
    pub to: String,
    /// MTU of the interface the route to the destination leaves by.
    pub interface_mtu: u32,
    /// Largest IP packet that got a reply with DF set.
    pub path_mtu: u32,
    /// The MTU an ICMP "fragmentation needed" announced, if one came.
    pub icmp_mtu: Option<u32>,
    /// Interface MTU above path MTU and no ICMP came: packets vanish.
    pub blackhole: bool,
}

/// MTU of the interface the route to `ip` leaves by.
fn route_mtu(src: &Netns, ip: Ipv4Addr) -> Result<u32> {
    let d = crate::observe::collect::collect_blocking(
        crate::observe::collect::Target::new(src.name()),
        Default::default(),
    )?;
    let r = d
        .route_get(ip, None, None)
        .map_err(|e| anyhow!("no route to the destination: {e}"))?;
    let dev = r.dev.context("no route to the destination")?;
    d.link(&dev).and_then(|l| l.mtu).context("interface without MTU")
}

/// Finds the largest packet (IP length) that crosses with DF set.
pub fn pmtu(state: &LabState, from: &str, to: &str) -> Result<Pmtu> {
    let src = source(state, from)?;
    let dst = dest(state, to)?;
    let ns = Netns::open(&src.ns)?;
    // Start from what the interface allows, not from what an earlier probe taught the kernel.
    let _ = ns.run(|| netns::write_sysctl("net/ipv4/route/flush", "-1"));
    let iface = route_mtu(&ns, dst.ip)?;
    let fits = |len: u32| -> Result<(bool, Option<String>)> {
        let (ok, _, err) = ping_once(&ns, dst.ip, len - 28, true, 1)?;
        Ok((ok, err))
    };
    let (ok, _) = fits(68)?;
    if !ok {
        return Err(anyhow!(
            "{} cannot reach {} ({}) at all: no path MTU to find",
            src.name,
            dst.name,
            dst.ip
        ));
    }
    let (mut lo, mut hi) = (68u32, iface);
    let mut icmp = None;
    if fits(hi)?.0 {
        lo = hi;
    } else {
        // Invariant: lo fits, hi does not.
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let (ok, err) = fits(mid)?;
            if ok {
                lo = mid;
            } else {
                hi = mid;
                if let Some(e) = err {
                    icmp = icmp.or(parse_mtu(&e));
                }
            }
        }
        let (_, err) = fits(lo + 1)?;
        if let Some(e) = err {
            icmp = icmp.or(parse_mtu(&e));
        }
    }
    Ok(Pmtu {
        from: src.name,
        to: dst.name,
        interface_mtu: iface,
        path_mtu: lo,
        icmp_mtu: icmp,
        blackhole: lo < iface && icmp.is_none(),
    })
}

/// The MTU in "Frag needed and DF set (mtu = 1400)" or "mtu=1400".
fn parse_mtu(s: &str) -> Option<u32> {
    let i = s.find("mtu")?;
    s[i + 3..]
        .trim_start_matches([' ', '=', ':'])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl std::fmt::Display for Pmtu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pmtu {} -> {}: interface MTU {}, path MTU {}",
            self.from, self.to, self.interface_mtu, self.path_mtu
        )?;
        match (self.icmp_mtu, self.blackhole) {
            (Some(m), _) => write!(f, " (ICMP fragmentation needed announced {m})"),
            (None, true) => write!(
                f,
                "; BLACKHOLE: packets of {} to {} bytes vanish without an ICMP fragmentation needed",
                self.path_mtu + 1,
                self.interface_mtu
            ),
            (None, false) => Ok(()),
        }
    }
}

/// A bulk TCP transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Tcp {
    /// Source.
    pub from: String,
    /// Destination.
    pub to: String,
    /// Bytes asked for.
    pub bytes: u64,
    /// Bytes the receiver got.
    pub received: u64,
    /// Seconds it took (or until the deadline).
    pub seconds: f64,
    /// Whether the transfer stopped making progress before it finished.
    pub stalled: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// How long without progress counts as a stall.
const STALL_AFTER: Duration = Duration::from_secs(3);

fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let handle = Netns::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(handle.fd(), CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("probe thread panicked"))?
    })
}

/// Sends `bytes` over TCP from `from` to a receiver cnilab runs in `to`,
/// within `deadline`; a transfer that makes no progress for 3 s stalls.
pub fn tcp(state: &LabState, from: &str, to: &str, bytes: u64, deadline: Duration) -> Result<Tcp> {
    let src = source(state, from)?;
    let dst = dest(state, to)?;
    let dst_ns = dst.ns.clone().ok_or_else(|| {
        Error::usage(
            format!("{to} is not a pod or node of the lab"),
            "tcp needs a pod or node to receive the data",
        )
    })?;
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<Result<u16>>();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let got = received.clone();
    let ip = dst.ip;
    let server = std::thread::spawn(move || -> Result<()> {
        in_ns(&dst_ns, || {
            let listener = TcpListener::bind((ip, 0))?;
            let _ = tx.send(Ok(listener.local_addr()?.port()));
            listener.set_nonblocking(true)?;
            let wait = Backoff::new(
                deadline + Duration::from_secs(1),
                Duration::from_millis(5),
                Duration::from_millis(5),
            );
            let until = wait.deadline();
            let accepted = retry::until(wait, || match listener.accept() {
                Ok((c, _)) => Some(Ok(c)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(e)),
            });
            let mut conn = match accepted {
                Some(c) => c?,
                None => return Err(std::io::Error::from(std::io::ErrorKind::WouldBlock).into()),
            };
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = vec![0u8; 1 << 16];
            while Instant::now() < until {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .context("the receiver did not start")??;
    let sent = in_ns(&src.ns, || -> Result<Option<String>> {
        let mut s = match TcpStream::connect_timeout(&SocketAddr::from((ip, port)), STALL_AFTER) {
            Ok(s) => s,
            Err(e) => return Ok(Some(format!("connect: {e}"))),
        };
        s.set_write_timeout(Some(STALL_AFTER))?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            if started.elapsed() > deadline {
                return Ok(Some("deadline passed".into()));
            }
            let n = chunk.len().min(left as usize);
            match s.write(&chunk[..n]) {
                Ok(w) => left -= w as u64,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(Some(format!("no progress for {} s", STALL_AFTER.as_secs())));
                }
                Err(e) => return Ok(Some(e.to_string())),
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        Ok(None)
    })?;
    // The receiver drains what is in flight, then sees the end or its deadline.
    let drained = Backoff::new(STALL_AFTER, Duration::from_millis(10), Duration::from_millis(10));
    retry::until(drained, || {
        (sent.is_some() || received.load(std::sync::atomic::Ordering::Relaxed) >= bytes).then_some(())
    });
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    // The receiver ends by itself at its deadline; nothing waits for it.
    drop(server);
    Ok(Tcp {
        from: src.name,
        to: dst.name,
        bytes,
        received: got,
        seconds: started.elapsed().as_secs_f64(),
        stalled: got < bytes,
        error: sent,
    })
}

impl std::fmt::Display for Tcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tcp {} -> {}: {} of {} bytes in {:.2} s",
            self.from, self.to, self.received, self.bytes, self.seconds
        )?;
        if self.stalled {
            write!(f, "; STALLED")?;
            if let Some(e) = &self.error {
                write!(f, " ({e})")?;
            }
        } else if self.seconds > 0.0 {
            write!(f, " ({:.0} Mbit/s)", self.received as f64 * 8.0 / self.seconds / 1e6)?;
        }
        Ok(())
    }
}

/// Where the kernel of a namespace sends packets for an address.
#[derive(Debug, Clone, Serialize)]
pub struct RouteGet {
    /// Source.
    pub from: String,
    /// Destination as written.
    pub to: String,
    /// Destination address.
    pub ip: Ipv4Addr,
    /// Outgoing interface, when routed.
    pub dev: Option<String>,
    /// Next hop, when there is one.
    pub via: Option<String>,
    /// unicast, blackhole, unreachable, ...
    pub kind: String,
}

/// `ip route get` in a pod or node.
pub fn route(state: &LabState, from: &str, to: &str) -> Result<RouteGet> {
    let src = source(state, from)?;
    let dst = dest(state, to)?;
    let d =
        crate::observe::collect::collect_blocking(crate::observe::collect::Target::new(&src.ns), Default::default())?;
    let r = d.route_get(dst.ip, None, None);
    let (dev, via) = match &r {
        Ok(l) => (l.dev.clone(), l.gateway.map(|g| g.to_string())),
        Err(_) => (None, None),
    };
    Ok(RouteGet {
        from: src.name,
        to: dst.name,
        ip: dst.ip,
        dev,
        via,
        // `ip route get` answers a blackhole with EINVAL, unreachable and
        // prohibit routes with their errors.
        kind: match r {
            Ok(l) => crate::observe::collect::type_name(l.route.kind),
            Err(e) if e.contains("Invalid argument") => "blackhole".into(),
            Err(e) if e.contains("unreachable") => "unreachable".into(),
            Err(e) if e.contains("Permission denied") => "prohibit".into(),
            Err(e) => format!("none (RTNETLINK answers: {e})"),
        },
    })
}

impl std::fmt::Display for RouteGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {} -> {} ({}): {}", self.from, self.to, self.ip, self.kind)?;
        if let Some(v) = &self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

/// BGP sessions of the lab's BIRDs.
#[derive(Debug, Clone, Serialize)]
pub struct Bgp {
    /// (node or router, session, neighbor, state).
    pub sessions: Vec<(String, String, String, String)>,
    /// How many are not Established.
    pub down: usize,
}

/// Reads every BIRD's sessions (or one node's or router's).
pub fn bgp(state: &LabState, only: Option<&str>) -> Result<Bgp> {
    let paths = state.paths();
    let mut sessions = Vec::new();
    for spec in state.plan.profile.agents(&state.plan, &paths) {
        if spec.name != "bird" || only.is_some_and(|o| o != spec.owner) {
            continue;
        }
        match crate::kernel::bird::sessions(&spec.ready) {
            Ok(list) => sessions.extend(list.into_iter().map(|s| {
                (
                    spec.owner.clone(),
                    s.name,
                    s.neighbor.map(|n| n.to_string()).unwrap_or_default(),
                    if s.state.is_empty() { "down".into() } else { s.state },
                )
            })),
            Err(_) => sessions.push((spec.owner.clone(), "-".into(), "-".into(), "BIRD not running".into())),
        }
    }
    if sessions.is_empty() {
        return Err(Error::usage(
            format!(
                "lab {} runs no BIRD{}",
                state.plan.lab,
                only.map(|o| format!(" on {o}")).unwrap_or_default()
            ),
            "BGP runs with cni = \"calico\" and mode = \"bgp\"",
        )
        .into());
    }
    let down = sessions.iter().filter(|s| s.3 != "Established").count();
    Ok(Bgp { sessions, down })
}

impl std::fmt::Display for Bgp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (who, name, n, st) in &self.sessions {
            writeln!(f, "{who:<15} {name:<22} {n:<16} {st}")?;
        }
        write!(
            f,
            "{} of {} sessions Established",
            self.sessions.len() - self.down,
            self.sessions.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mtus_from_ping_errors() {
        assert_eq!(
            parse_mtu("From 10.0.0.1 icmp_seq=1 Frag needed and DF set (mtu = 1400)"),
            Some(1400)
        );
        assert_eq!(parse_mtu("local error: message too long, mtu=1450"), Some(1450));
        assert_eq!(parse_mtu("no reply"), None);
    }
}

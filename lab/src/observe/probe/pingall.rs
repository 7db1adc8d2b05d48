//! Every pod to every pod, from inside this process: one raw ICMP socket per
//! pod, opened by a short-lived thread that entered the pod's namespace (a
//! socket stays bound to the namespace it was made in, whoever uses it
//! later), then echoes sent from one loop with many in flight and matched by
//! id, sequence and payload. A pair is retried twice before it is called
//! failed, and it is "ok" only when its echo reply came from the address it
//! was sent to, on the source pod's own socket.
//!
//! One `ping` process per pair (what this replaced) cost a fork and a
//! one-second timer per pair and gave no second chance: from about 90 pods
//! it reported pairs as failed that answered when asked again.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sockopt};

use crate::kernel::netns::Netns;
use crate::kernel::progress::Progress;

/// A pod taking part: its name, namespace and address.
pub struct Member {
    /// `node/pod`.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// How long each echo of a pair is waited for: the first, then the retries.
const WAITS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(2)];

/// Echoes a pair gets before it counts as failed.
pub const ATTEMPTS: usize = WAITS.len();

/// Echoes in flight at once. Each one sits in a veth's backlog on the way
/// (netdev_max_backlog, 1,000 per CPU, drops beyond it), so sending all at
/// once would lose echoes to the probe itself.
const WINDOW: usize = 256;

/// An echo unanswered for this long no longer holds its place in the
/// window: it is lost or slow, and a cut node must not stall the rest.
const HOLD: Duration = Duration::from_millis(100);

/// Receive buffer per socket: replies wait there while the loop sends.
const RCVBUF: usize = 1 << 20;

const ICMP_ECHO: u8 = 8;
const ICMP_ECHOREPLY: u8 = 0;
/// `ICMP_FILTER` (linux/icmp.h): the raw socket drops the types whose bit is set.
const ICMP_FILTER: libc::c_int = 1;
/// Marks the payload as ours, before the run's token.
const MAGIC: &[u8; 4] = b"cnil";
/// Payload: magic, token, source index, destination index.
const PAYLOAD: usize = 16;

/// What one pair came to.
#[derive(Clone, Copy, Default)]
struct PairState {
    /// Echoes sent so far.
    sent: u8,
    /// When the last one left, in microseconds since the start.
    at_us: u32,
    /// A reply came.
    ok: bool,
    /// Given up after the last retry.
    failed: bool,
    /// The last echo still counts against the window.
    in_window: bool,
}

/// The outcome of a run.
pub struct Outcome {
    /// `ok[src * n + dst]`, true on the diagonal.
    pub ok: Vec<bool>,
    /// Pairs that needed more than one echo.
    pub retried: usize,
    /// Why sends failed, per pair that failed with a local error.
    pub errors: Vec<(usize, String)>,
}

/// The host's ARP table, which every network namespace shares: its
/// entries now and how often it was full (`/proc/net/stat/arp_cache`).
pub fn arp_table() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/stat/arp_cache").ok()?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| head.iter().position(|h| *h == name);
    let (entries, fulls) = (col("entries")?, col("table_fulls")?);
    let mut out = (0, 0);
    // One line per CPU; entries is the table's, the rest count per CPU.
    for l in lines {
        let v: Vec<u64> = l
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
            .collect();
        out.0 = *v.get(entries)?;
        out.1 += v.get(fulls)?;
    }
    Some(out)
}

/// The ARP table's hard limit (net.ipv4.neigh.default.gc_thresh3, a
/// setting of the host that no namespace has its own of).
pub fn arp_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Makes sure this process may hold a socket per pod and then some.
fn raise_nofile(needed: u64) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= needed {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed.max(soft), hard.max(needed)).map_err(|e| {
        anyhow!(
            "pingall needs {needed} open files (a socket per pod) but the limit is {soft} and cannot be raised: {e}; \
             raise it with `ulimit -n {needed}`"
        )
    })
}

/// A raw ICMP socket made in the calling thread's namespace, receiving
/// only echo replies.
fn icmp_socket() -> Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .context("cannot open a raw ICMP socket (pingall runs as root)")?;
    let filter: u32 = !(1u32 << ICMP_ECHOREPLY);
    // SAFETY: setsockopt reads a u32 of the given size from a live value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&filter as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    Errno::result(rc).context("ICMP_FILTER")?;
    // A smaller buffer only costs retries; not being allowed more is no error.
    let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF);
    Ok(fd)
}

/// A socket in each member's namespace, made by a few threads that enter
/// the namespaces in turn and end when done.
fn open_sockets(members: &[Member]) -> Result<Vec<OwnedFd>> {
    raise_nofile(members.len() as u64 + 256)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let chunk = members.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<Vec<OwnedFd>> {
                    part.iter()
                        .map(|m| {
                            let ns = Netns::open(&m.ns)?;
                            setns(ns.fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {}", m.ns))?;
                            icmp_socket().with_context(|| format!("in pod {}", m.name))
                        })
                        .collect()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(members.len());
        for h in handles {
            out.extend(h.join().map_err(|_| anyhow!("socket thread panicked"))??);
        }
        Ok(out)
    })
}

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request from `src` to `dst`: the run's token as id, the
/// attempt as sequence, and both indices in the payload.
fn echo(token: u32, src: u32, dst: u32, attempt: u8) -> [u8; 8 + PAYLOAD] {
    let mut p = [0u8; 8 + PAYLOAD];
    p[0] = ICMP_ECHO;
    p[4..6].copy_from_slice(&(token as u16).to_be_bytes());
    p[6..8].copy_from_slice(&u16::from(attempt).to_be_bytes());
    p[8..12].copy_from_slice(MAGIC);
    p[12..16].copy_from_slice(&token.to_be_bytes());
    p[16..20].copy_from_slice(&src.to_be_bytes());
    p[20..24].copy_from_slice(&dst.to_be_bytes());
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Reads a received packet (IP header included, as raw sockets give it):
/// the replying address and the pair it answers, if it is one of ours.
fn parse_reply(pkt: &[u8], token: u32) -> Option<(Ipv4Addr, u32, u32)> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let icmp = pkt.get(ihl..)?;
    if ihl < 20 || icmp.len() < 8 + PAYLOAD || icmp[0] != ICMP_ECHOREPLY || icmp[1] != 0 {
        return None;
    }
    let word = |i: usize| u32::from_be_bytes([icmp[i], icmp[i + 1], icmp[i + 2], icmp[i + 3]]);
    if icmp[4..6] != (token as u16).to_be_bytes() || &icmp[8..12] != MAGIC || word(12) != token {
        return None;
    }
    let from = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    Some((from, word(16), word(20)))
}

/// The order of first echoes from sources `rows` (as pair indices local
/// to those rows): in each round every source sends one and no pod gets
/// more than one, so no pod or path gets a burst.
fn first_order(n: usize, rows: std::ops::Range<usize>) -> std::collections::VecDeque<u32> {
    (1..n)
        .flat_map(|k| rows.clone().map(move |i| ((i - rows.start) * n + (i + k) % n) as u32))
        .collect()
}

/// The echoes of one sender thread: the pairs whose source is in its rows.
struct Run<'a> {
    members: &'a [Member],
    socks: &'a [OwnedFd],
    /// The first source of its rows; pair `q` is source `first + q / n`.
    first: usize,
    token: u32,
    start: Instant,
    pairs: Vec<PairState>,
    to_send: std::collections::VecDeque<u32>,
    /// Echoes in send order, to take them out of the window after HOLD.
    window: std::collections::VecDeque<(u32, u8)>,
    in_window: usize,
    /// Per attempt, echoes in send order, to find those past their wait.
    waiting: [std::collections::VecDeque<(u32, u8)>; 3],
    open: usize,
    errors: Vec<(usize, String)>,
    progress: &'a Progress,
}

impl Run<'_> {
    fn now_us(&self) -> u32 {
        self.start.elapsed().as_micros() as u32
    }

    fn resolve(&mut self, p: usize, ok: bool) {
        let st = &mut self.pairs[p];
        if st.ok || st.failed {
            return;
        }
        if ok {
            st.ok = true;
        } else {
            st.failed = true;
        }
        if st.in_window {
            st.in_window = false;
            self.in_window -= 1;
        }
        self.open -= 1;
        self.progress.step();
    }

    /// Sends while the window has room; false when the kernel pushes back.
    fn send(&mut self) {
        let n = self.members.len();
        while self.in_window < WINDOW {
            let Some(p) = self.to_send.pop_front() else { return };
            let (src, dst) = (self.first + p as usize / n, p as usize % n);
            let attempt = self.pairs[p as usize].sent + 1;
            let pkt = echo(self.token, src as u32, dst as u32, attempt);
            let to = SockaddrIn::from(std::net::SocketAddrV4::new(self.members[dst].ip, 0));
            match socket::sendto(self.socks[src].as_raw_fd(), &pkt, &to, MsgFlags::empty()) {
                Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                    self.to_send.push_front(p);
                    return;
                }
                Err(e) => self.errors.push((p as usize, e.desc().to_string())),
                Ok(_) => {}
            }
            let at = self.now_us();
            let st = &mut self.pairs[p as usize];
            st.sent = attempt;
            st.at_us = at;
            st.in_window = true;
            self.in_window += 1;
            self.window.push_back((p, attempt));
            self.waiting[usize::from(attempt - 1)].push_back((p, attempt));
        }
    }

    /// Frees window places of echoes older than HOLD and retries or gives
    /// up the pairs past their wait; returns how long until the next such
    /// event.
    fn expire(&mut self) -> Duration {
        let now = self.now_us();
        let hold = HOLD.as_micros() as u32;
        let mut next = Duration::from_millis(50);
        while let Some(&(p, a)) = self.window.front() {
            let st = &mut self.pairs[p as usize];
            if st.sent == a && st.in_window && now < st.at_us + hold {
                next = next.min(Duration::from_micros(u64::from(st.at_us + hold - now)));
                break;
            }
            self.window.pop_front();
            if st.sent == a && st.in_window {
                st.in_window = false;
                self.in_window -= 1;
            }
        }
        for (i, wait) in WAITS.iter().enumerate() {
            let wait = wait.as_micros() as u32;
            while let Some(&(p, a)) = self.waiting[i].front() {
                let st = self.pairs[p as usize];
                if st.sent == a && !st.ok && now < st.at_us + wait {
                    next = next.min(Duration::from_micros(u64::from(st.at_us + wait - now)));
                    break;
                }
                self.waiting[i].pop_front();
                if st.sent == a && !st.ok && !st.failed {
                    if i + 1 < WAITS.len() {
                        self.to_send.push_back(p);
                    } else {
                        self.resolve(p as usize, false);
                    }
                }
            }
        }
        next
    }

    /// Reads every reply waiting on pod `src`'s socket.
    fn receive(&mut self, src: usize) {
        let n = self.members.len();
        let mut buf = [0u8; 512];
        loop {
            let len = match socket::recv(self.socks[src].as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let Some((from, s, d)) = parse_reply(&buf[..len], self.token) else {
                continue;
            };
            let (s, d) = (s as usize, d as usize);
            // The reply must reach the pod that asked and come from the
            // address that was asked; anything else is not an answer.
            if s == src && d < n && d != s && from == self.members[d].ip {
                self.resolve((s - self.first) * n + d, true);
            }
        }
    }
}

/// The pairs of one sender thread and its send errors (pair, error).
type Settled = (Vec<PairState>, Vec<(usize, String)>);

/// Sends and receives the echoes of sources `rows` until each pair has
/// its verdict; returns their states and send errors (pair indices local
/// to the rows).
fn drive(
    members: &[Member],
    socks: &[OwnedFd],
    rows: std::ops::Range<usize>,
    token: u32,
    progress: &Progress,
) -> Result<Settled> {
    let n = members.len();
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for i in rows.clone() {
        epoll.add(socks[i].as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let mut pairs = vec![PairState::default(); rows.len() * n];
    for i in rows.clone() {
        pairs[(i - rows.start) * n + i].ok = true;
    }
    let mut run = Run {
        members,
        socks,
        first: rows.start,
        token,
        start: Instant::now(),
        pairs,
        to_send: first_order(n, rows.clone()),
        window: Default::default(),
        in_window: 0,
        waiting: Default::default(),
        open: rows.len() * n.saturating_sub(1),
        errors: Vec::new(),
        progress,
    };
    let mut events = vec![EpollEvent::empty(); 256];
    while run.open > 0 {
        run.send();
        let next = run.expire();
        let wait = if run.in_window < WINDOW && !run.to_send.is_empty() {
            Duration::ZERO
        } else {
            next
        };
        let ready = match epoll.wait(&mut events, wait.as_millis().min(1000) as u16) {
            Ok(k) => k,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(anyhow!("epoll_wait: {e}")),
        };
        for ev in &events[..ready] {
            run.receive(ev.data() as usize);
        }
    }
    Ok((run.pairs, run.errors))
}

/// Pings every member from every member; `progress` counts settled pairs.
///
/// The sources are split between a sender thread per core: the kernel
/// carries each echo and its reply through the lab on the CPU that sent
/// it, so one thread would leave the other cores idle.
pub fn run(members: &[Member], progress: &Progress) -> Result<Outcome> {
    let n = members.len();
    let socks = open_sockets(members)?;
    let token: u32 = rand::random();
    progress.phase("pingall", n * n.saturating_sub(1));
    let threads = std::thread::available_parallelism().map_or(2, |x| x.get()).clamp(1, 8);
    let per = n.div_ceil(threads).max(1);
    let parts: Vec<std::ops::Range<usize>> = (0..n).step_by(per).map(|a| a..(a + per).min(n)).collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|rows| {
                let socks = &socks;
                s.spawn(move || drive(members, socks, rows.clone(), token, progress))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("pingall thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    progress.finish();
    let mut ok = Vec::with_capacity(n * n);
    let mut retried = 0;
    let mut errors = Vec::new();
    for (rows, (pairs, errs)) in parts.iter().zip(results) {
        let base = rows.start * n;
        retried += pairs.iter().filter(|p| p.sent > 1).count();
        errors.extend(
            errs.into_iter()
                .filter(|(q, _)| pairs[*q].failed)
                .map(|(q, e)| (base + q, e)),
        );
        ok.extend(pairs.iter().map(|p| p.ok));
    }
    errors.sort();
    errors.dedup_by_key(|(p, _)| *p);
    Ok(Outcome { ok, retried, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_carry_a_valid_checksum() {
        let p = echo(0xdead_beef, 3, 7, 1);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(p[0], ICMP_ECHO);
    }

    #[test]
    fn replies_are_matched_by_token_and_address() {
        let mut reply = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
        let mut icmp = echo(42, 3, 7, 2);
        icmp[0] = ICMP_ECHOREPLY;
        reply.extend_from_slice(&icmp);
        assert_eq!(parse_reply(&reply, 42), Some((Ipv4Addr::new(10, 0, 0, 2), 3, 7)));
        assert_eq!(parse_reply(&reply, 43), None, "another run's reply is not ours");
        let mut request = reply.clone();
        request[20] = ICMP_ECHO;
        assert_eq!(parse_reply(&request, 42), None, "a request is no reply");
        assert_eq!(parse_reply(&reply[..30], 42), None, "a truncated reply is no reply");
    }

    #[test]
    fn first_echoes_spread_over_sources_and_destinations() {
        let order: Vec<u32> = first_order(4, 0..4).into_iter().collect();
        assert_eq!(order.len(), 12);
        let (firsts, dsts): (Vec<usize>, Vec<usize>) =
            order[..4].iter().map(|p| (*p as usize / 4, *p as usize % 4)).unzip();
        assert_eq!(firsts, vec![0, 1, 2, 3]);
        assert_eq!(dsts, vec![1, 2, 3, 0]);
        assert!(order.iter().all(|p| p / 4 != p % 4), "no pod pings itself");
        let part: Vec<u32> = first_order(4, 2..4).into_iter().collect();
        assert_eq!(part.len(), 6);
        assert_eq!(
            &part[..2],
            &[3, 4],
            "rows 2 and 3 first ping 3 and 0 (local pair indices)"
        );
    }
}

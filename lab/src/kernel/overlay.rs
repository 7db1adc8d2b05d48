//! What an upstream VXLAN overlay agent does on a node, whichever profile's:
//! a VXLAN device, and for each remote VTEP a permanent neighbour, a
//! `self permanent` FDB entry and an `onlink` route, added in that order and
//! removed together. Also the folder watch the agents use as their datastore.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, InfoVxlan, LinkMessage};
use netlink_packet_route::route::RouteProtocol;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::kernel::nl::{self, Nl};
use crate::model::plan::mac_string;

/// A remote VTEP and the pod subnet behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The pod subnet (lease or block) behind it.
    pub subnet: Ipv4Net,
    /// The gateway the route points at: the peer's VTEP address.
    pub gateway: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub mac: [u8; 6],
    /// The peer's underlay address.
    pub node_ip: Ipv4Addr,
}

/// A VXLAN device to program peers on.
#[derive(Clone)]
pub struct Vtep {
    /// Socket of the node's namespace.
    pub nl: Nl,
    /// The device's index.
    pub dev: u32,
    /// Protocol of the routes (each agent marks its routes its own way).
    pub proto: RouteProtocol,
}

impl Vtep {
    fn route(&self, p: &Peer) -> RouteNetlinkMessage {
        let mut r = nl::route(p.subnet, Some(p.gateway), Some(self.dev), true);
        r.header.protocol = self.proto;
        RouteNetlinkMessage::NewRoute(r)
    }

    /// Neighbour, FDB entry, then route, as the upstream handleSubnetEvents:
    /// the route goes last, since with it in place the kernel would ARP for
    /// the gateway if the neighbour were not there yet. A failed step undoes the
    /// earlier ones.
    pub async fn add_peer(&self, p: &Peer) {
        info!(
            "adding subnet: {} PublicIP: {} VtepMAC: {}",
            p.subnet,
            p.node_ip,
            mac_string(&p.mac)
        );
        let neigh = nl::neighbour(self.dev, p.gateway, p.mac);
        if let Err(e) = self.nl.replace(RouteNetlinkMessage::NewNeighbour(neigh.clone())).await {
            error!("AddARP failed: {e}");
            return;
        }
        let fdb = nl::fdb(self.dev, p.mac, p.node_ip);
        if let Err(e) = self.nl.replace(RouteNetlinkMessage::NewNeighbour(fdb.clone())).await {
            error!("AddFDB failed: {e}");
            let _ = self.nl.change(RouteNetlinkMessage::DelNeighbour(neigh)).await;
            return;
        }
        if let Err(e) = self.nl.replace(self.route(p)).await {
            error!("failed to add route ({} -> {}): {e}", p.subnet, p.gateway);
            let _ = self.nl.change(RouteNetlinkMessage::DelNeighbour(neigh)).await;
            let _ = self.nl.change(RouteNetlinkMessage::DelNeighbour(fdb)).await;
        }
    }

    /// Removes all three, trying each whatever fails, as the upstream agent does.
    pub async fn remove_peer(&self, p: &Peer) {
        info!(
            "removing subnet: {} PublicIP: {} VtepMAC: {}",
            p.subnet,
            p.node_ip,
            mac_string(&p.mac)
        );
        let neigh = nl::neighbour(self.dev, p.gateway, p.mac);
        if let Err(e) = self.nl.change(RouteNetlinkMessage::DelNeighbour(neigh)).await {
            error!("DelARP failed: {e}");
        }
        let fdb = nl::fdb(self.dev, p.mac, p.node_ip);
        if let Err(e) = self.nl.change(RouteNetlinkMessage::DelNeighbour(fdb)).await {
            error!("DelFDB failed: {e}");
        }
        let RouteNetlinkMessage::NewRoute(r) = self.route(p) else {
            unreachable!()
        };
        if let Err(e) = self.nl.change(RouteNetlinkMessage::DelRoute(r)).await {
            error!("failed to delete route ({} -> {}): {e}", p.subnet, p.gateway);
        }
    }
}

/// The settings of a VXLAN device.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    /// Its name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Underlay address.
    pub local: Ipv4Addr,
    /// Underlay device index.
    pub dev: u32,
    /// MTU.
    pub mtu: u32,
    /// MAC to create it with.
    pub mac: [u8; 6],
}

fn is_vxlan(l: &LinkMessage) -> bool {
    nl::link_kind(l) == Some(&InfoKind::Vxlan)
}

fn incompatibility(l: &LinkMessage, s: &VxlanSpec) -> Option<String> {
    if !is_vxlan(l) {
        return Some("link type is not vxlan".into());
    }
    for i in nl::vxlan_info(l)? {
        match i {
            InfoVxlan::Id(v) if *v != s.vni => return Some(format!("vni: {v} vs {}", s.vni)),
            InfoVxlan::Port(p) if *p != s.port => return Some(format!("port: {p} vs {}", s.port)),
            InfoVxlan::Local(a) if *a != s.local => return Some(format!("vtep (external) IP: {a} vs {}", s.local)),
            InfoVxlan::Link(d) if *d != s.dev && *d != 0 => {
                return Some(format!("vtep (external) interface: {d} vs {}", s.dev));
            }
            _ => {}
        }
    }
    None
}

/// The upstream ensureLink: creates the device, or reuses a compatible one
/// (keeping its MAC), or deletes an incompatible one and recreates it.
pub async fn ensure_vxlan(nl: &Nl, s: &VxlanSpec) -> Result<LinkMessage> {
    let msg = || nl::vxlan(&s.name, s.vni, s.port, s.local, s.dev, s.mtu, s.mac);
    match nl.add(msg()).await {
        Ok(()) => {}
        Err(e) if e.is_exists() => {
            let existing = nl.link(&s.name).await?.context("device vanished")?;
            match incompatibility(&existing, s) {
                None => info!("VXLAN device {} already exists; reusing it", s.name),
                Some(why) => {
                    warn!(
                        "{} already exists with incompatible configuration: {why}; recreating device",
                        s.name
                    );
                    nl.change(RouteNetlinkMessage::DelLink(existing.clone()))
                        .await
                        .context("failed to delete interface")?;
                    nl.add(msg()).await.context("failed to create vxlan interface")?;
                }
            }
        }
        Err(e) if e.is_unsupported() => {
            bail!("the kernel has no VXLAN support ({e}): load the vxlan module (modprobe vxlan)")
        }
        Err(e) => bail!("failed to create {}: {e}", s.name),
    }
    nl.link(&s.name).await?.context("created VXLAN device not found")
}

/// The first IPv4 address of a link.
pub async fn first_address(nl: &Nl, index: u32) -> Result<Option<Ipv4Addr>> {
    Ok(nl
        .addresses()
        .await?
        .into_iter()
        .filter(|a| a.header.index == index)
        .find_map(|a| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        }))
}

/// The upstream EnsureV4AddressOnLink: exactly one address, the wanted one.
pub async fn ensure_single_address(nl: &Nl, index: u32, ip: Ipv4Addr, len: u8) -> Result<()> {
    let mut present = false;
    for a in nl.addresses().await?.into_iter().filter(|a| a.header.index == index) {
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(std::net::IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        if local == Some(ip) && a.header.prefix_len == len {
            present = true;
        } else {
            nl.change(RouteNetlinkMessage::DelAddress(a))
                .await
                .context("cannot remove a stale address")?;
        }
    }
    if !present {
        nl.add(nl::address(index, ip, len))
            .await
            .with_context(|| format!("cannot add {ip}/{len}"))?;
    }
    Ok(())
}

/// Writes a file by rename, so a watcher never reads half of it.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("path without folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A datastore folder (one file per key) watched with inotify, as the
/// agents watch etcd. Files whose names start with '.' are being written.
pub struct DirWatch {
    dir: PathBuf,
    fd: AsyncFd<InotifyFd>,
}

/// The events that mean a key changed: written, renamed into place, removed.
pub const WATCH_FLAGS: nix::sys::inotify::AddWatchFlags = nix::sys::inotify::AddWatchFlags::IN_MOVED_TO
    .union(nix::sys::inotify::AddWatchFlags::IN_CLOSE_WRITE)
    .union(nix::sys::inotify::AddWatchFlags::IN_DELETE)
    .union(nix::sys::inotify::AddWatchFlags::IN_MOVED_FROM);

impl DirWatch {
    /// Starts watching `dir` (created if missing). Watch first, then list:
    /// nothing written in between is missed.
    pub fn new(dir: &Path) -> Result<DirWatch> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(dir, WATCH_FLAGS)?;
        // SAFETY: the Inotify is owned by the AsyncFd and closed only when it drops.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.display()))?;
        Ok(DirWatch {
            dir: dir.to_path_buf(),
            fd,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every key present now.
    pub fn keys(&self) -> Vec<String> {
        list_keys(&self.dir)
    }

    /// Waits for changes; the keys that changed (all of them after an
    /// inotify queue overflow, `overflowed` true).
    pub async fn changed(&self) -> Result<(Vec<String>, bool)> {
        loop {
            let mut guard = self.fd.readable().await?;
            let events = match guard.get_inner().0.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)) {
                warn!("inotify queue overflowed: re-reading every key");
                return Ok((self.keys(), true));
            }
            let mut keys: Vec<String> = events
                .into_iter()
                .filter_map(|e| e.name?.into_string().ok())
                .filter(|k| !k.starts_with('.'))
                .collect();
            keys.sort();
            keys.dedup();
            if !keys.is_empty() {
                return Ok((keys, false));
            }
        }
    }
}

/// How an agent hears about datastore changes: from the lab's watch
/// service (`cnilab-watchd`) when it runs, else from its own inotify.
pub enum Watch {
    /// Its own inotify instance.
    Dir(DirWatch),
    /// A stream from the watch service.
    Service {
        /// The folder.
        dir: PathBuf,
        /// Lines from the service.
        reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        /// Kept open: the service stops streaming when it closes.
        _writer: tokio::net::unix::OwnedWriteHalf,
    },
}

impl Watch {
    /// Watches `dir` through the service at `socket`, or by itself when
    /// there is none. Watch first, then list: nothing written in between is missed.
    pub async fn new(dir: &Path, socket: Option<&Path>) -> Result<Watch> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let Some(socket) = socket else {
            return Ok(Watch::Dir(DirWatch::new(dir)?));
        };
        let stream = match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "no watch service at {} ({e}): watching {} with inotify",
                    socket.display(),
                    dir.display()
                );
                return Ok(Watch::Dir(DirWatch::new(dir)?));
            }
        };
        let (read, mut write) = stream.into_split();
        write.write_all(format!("WATCH {}\n", dir.display()).as_bytes()).await?;
        let mut reader = tokio::io::BufReader::new(read);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        anyhow::ensure!(line.trim() == "OK", "the watch service answered {line:?}");
        Ok(Watch::Service {
            dir: dir.to_path_buf(),
            reader,
            _writer: write,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        match self {
            Watch::Dir(d) => d.dir(),
            Watch::Service { dir, .. } => dir,
        }
    }

    /// Every key present now.
    pub fn keys(&self) -> Vec<String> {
        list_keys(self.dir())
    }

    /// Waits for changes; the keys that changed (all of them after an
    /// overflow, `overflowed` true).
    pub async fn changed(&mut self) -> Result<(Vec<String>, bool)> {
        use tokio::io::AsyncBufReadExt;
        match self {
            Watch::Dir(d) => d.changed().await,
            Watch::Service { dir, reader, .. } => {
                let mut keys = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        anyhow::bail!("the lab's watch service went away");
                    }
                    keys.push(line.trim_end().to_string());
                    // Take every change already here, then act once.
                    if !reader.buffer().contains(&b'\n') {
                        break;
                    }
                }
                if keys.iter().any(|k| k == "*") {
                    return Ok((list_keys(dir), true));
                }
                keys.sort();
                keys.dedup();
                Ok((keys, false))
            }
        }
    }
}

/// The keys in a datastore folder, without files being written.
fn list_keys(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.retain(|k| !k.starts_with('.'));
    v.sort();
    v
}

/// An agent's main loop: until SIGTERM or SIGINT, hands each batch of
/// changed keys to `on_change`, with `true` after an overflow (every key
/// present was listed; ones that vanished are not among them).
pub async fn follow(watch: &mut Watch, mut on_change: impl AsyncFnMut(Vec<String>, bool)) -> Result<()> {
    loop {
        tokio::select! {
            r = terminated() => return r,
            changed = watch.changed() => {
                let (keys, overflowed) = changed?;
                on_change(keys, overflowed).await;
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn terminated() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// Runs an agent: logging to stderr (its log file), a single-threaded
/// runtime, and the exit code from how `run` ends.
pub fn agent_main<F: std::future::Future<Output = Result<()>>>(run: F) -> ! {
    init_agent_logging();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(run) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e:#}");
            1
        }
    };
    std::process::exit(code)
}

/// Logging for agents: to stderr (the agent's log file), without colors.
fn init_agent_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

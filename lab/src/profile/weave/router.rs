//! `weaver`: cnilab's stand-in for Weave Net's router (prog/weaver), in
//! sleeve mode. At start it makes what Weave's `EnsureBridge` and `weave
//! expose` make (the `weave` bridge with the peer name as MAC,
//! `vethwe-bridge` on it and `vethwe-pcap` for the router, the MTU, the
//! share's first address on the bridge, the iptables of net/bridge.go),
//! keeps its IPAM share in a file (`--ipam-file`) and serves Weave's HTTP
//! API on 127.0.0.1:6784 (`/status`, `POST`/`DELETE /ip/<id>`) for the
//! `weave-net` plugin. Then it runs the mesh: TCP 6783 to every target with
//! mesh's handshake, UDP 6783 sleeve heartbeats and frames, and the MAC
//! cache (captured: src MAC -> ourself; received: src MAC -> sender).
//!
//! Simplified (docs/weave-facts.md, "cnilab's stand-in"): the features
//! map after the handshake is length-framed `key len u16 | key | value len
//! u16 | value` pairs, not Go gob; there is no topology or IPAM gossip (the
//! peers' shares come from `--ipalloc-init seed=...`, the full mesh is the
//! route); sleeve heartbeats go every 500 ms and a peer silent for 3 s is
//! dropped (Weave: 10 s and 60 s), reconnecting with a backoff from 250 ms
//! to 4 s (Weave: 2 s to 6 min); one frame per datagram; no PMTU probing.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::sleeve::{self, PeerName};
use super::{BRIDGE, BRIDGE_PORT, PCAP_PORT};
use crate::kernel::nl::{self, Nl};
use crate::kernel::overlay;
use crate::model::plan::mac_string;

/// How often sleeve heartbeats go, and the status file is refreshed.
const TICK: Duration = Duration::from_millis(500);
/// A peer whose heartbeats stop this long is dropped (its MACs forgotten).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The mesh's TCP heartbeat, and how long a silent connection may be.
const TCP_HEARTBEAT: Duration = Duration::from_secs(2);
const TCP_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(4);

/// mesh's protocol versions (protocol.go): min 1, max 2.
const PROTOCOL_MIN: u8 = 1;
const PROTOCOL_MAX: u8 = 2;
/// Message tags after the handshake.
const TAG_HEARTBEAT: u8 = 0;
const TAG_CONNECTION_ESTABLISHED: u8 = 1;

/// The IPAM ident of the bridge's own address (`weave expose`).
pub const EXPOSE_IDENT: &str = "weave:expose";

/// weaver's command line (the flags of the real one where they exist).
#[derive(Parser, Debug)]
#[command(
    name = "weaver",
    about = "cnilab's Weave Net router: mesh and sleeve on UDP/TCP 6783"
)]
pub struct Args {
    /// Mesh and sleeve port.
    #[arg(long, default_value_t = 6783)]
    pub port: u16,
    /// Datapath name (fastdp); this kernel has no openvswitch, so sleeve.
    #[arg(long, default_value = "")]
    pub datapath: String,
    /// MTU of the bridge, its ports and the pods.
    #[arg(long, default_value_t = 1376)]
    pub mtu: u32,
    /// The peer name (a MAC, also the bridge's).
    #[arg(long)]
    pub name: String,
    /// The peer's nickname.
    #[arg(long)]
    pub nickname: String,
    /// The HTTP API's address.
    #[arg(long, default_value = "127.0.0.1:6784")]
    pub http_addr: String,
    /// The IPAM range.
    #[arg(long)]
    pub ipalloc_range: Ipv4Net,
    /// `seed=<peer names, comma separated>`.
    #[arg(long)]
    pub ipalloc_init: String,
    /// Do not masquerade traffic to this node's own containers.
    #[arg(long)]
    pub no_masq_local: bool,
    /// Where the router's view goes (peers, connections, MACs, IPAM), as JSON.
    #[arg(long)]
    pub status_file: PathBuf,
    /// The IPAM state (the share's allocations).
    #[arg(long)]
    pub ipam_file: PathBuf,
    /// The other peers' addresses.
    pub peers: Vec<Ipv4Addr>,
}

/// The entry point: `weaver` as `argv[0]`.
pub fn main() -> ! {
    overlay::agent_main(run(Args::parse()))
}

/// The IPAM state of this peer: its share and who holds which address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ipam {
    /// The range.
    pub range: Option<Ipv4Net>,
    /// This peer's share.
    pub share: Option<Ipv4Net>,
    /// Ident (container ID or `weave:expose`) to address.
    pub owned: BTreeMap<String, Ipv4Addr>,
}

impl Ipam {
    /// The address of `ident`, allocating the lowest free one of the share.
    pub fn allocate(&mut self, ident: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.owned.get(ident) {
            return Some(*ip);
        }
        let (lo, hi) = super::share_hosts(self.range?, self.share?);
        let used: std::collections::BTreeSet<u32> = self.owned.values().map(|ip| u32::from(*ip)).collect();
        let ip = Ipv4Addr::from((lo..=hi).find(|a| !used.contains(a))?);
        self.owned.insert(ident.to_string(), ip);
        Some(ip)
    }
}

/// A peer as this router knows it.
#[derive(Debug, Default)]
struct Peer {
    nickname: String,
    ip: Option<Ipv4Addr>,
    /// Live TCP connections (writers), by connection UID.
    conns: BTreeMap<u64, Arc<Mutex<TcpStream>>>,
    /// The peer said our heartbeats reach it (tag 1).
    remote_ok: bool,
    /// We told it its heartbeats reach us.
    told: bool,
    /// When its last heartbeat came, and when its connection began.
    last_heartbeat: Option<Instant>,
    since: Option<Instant>,
}

impl Peer {
    fn established(&self) -> bool {
        !self.conns.is_empty() && self.remote_ok && self.last_heartbeat.is_some_and(|t| t.elapsed() < HEARTBEAT_TIMEOUT)
    }
}

/// Everything the threads share.
struct Router {
    me: PeerName,
    nickname: String,
    port: u16,
    mtu: u32,
    peers: Mutex<BTreeMap<PeerName, Peer>>,
    /// Per target address: what its connector is doing.
    targets: Mutex<BTreeMap<Ipv4Addr, String>>,
    macs: Mutex<HashMap<[u8; 6], PeerName>>,
    udp: UdpSocket,
    pcap: OwnedFd,
    ipam: Mutex<Ipam>,
    ipam_file: PathBuf,
    status_file: PathBuf,
    next_uid: Mutex<u64>,
}

async fn run(args: Args) -> Result<()> {
    let me = nl::parse_mac(&args.name).with_context(|| format!("bad --name {}", args.name))?;
    let seed = args
        .ipalloc_init
        .strip_prefix("seed=")
        .context("cnilab's weaver knows --ipalloc-init seed=<names> only")?;
    let mut names: Vec<String> = seed.split(',').map(str::to_string).collect();
    names.sort();
    names.dedup();
    let pos = names
        .iter()
        .position(|n| *n == args.name)
        .context("this peer is not in --ipalloc-init seed=")?;
    let share = super::shares(args.ipalloc_range, names.len())[pos];
    info!(
        "Weave 2.8.1 (cnilab) peer {}({}), range {}, share {share}, MTU {}, datapath sleeve (no openvswitch: {})",
        args.name,
        args.nickname,
        args.ipalloc_range,
        args.mtu,
        if args.datapath.is_empty() {
            "none asked"
        } else {
            "fastdp unavailable"
        }
    );

    let mut ipam: Ipam = std::fs::read_to_string(&args.ipam_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if ipam.share != Some(share) || ipam.range != Some(args.ipalloc_range) {
        ipam = Ipam {
            range: Some(args.ipalloc_range),
            share: Some(share),
            owned: BTreeMap::new(),
        };
    }
    let bridge_ip = ipam
        .allocate(EXPOSE_IDENT)
        .context("the share has no address for the bridge")?;
    overlay::write_atomic(&args.ipam_file, &serde_json::to_string_pretty(&ipam)?)?;

    let nl = Nl::connect()?;
    let bridge = ensure_bridge(&nl, me, args.mtu).await?;
    overlay::ensure_single_address(&nl, bridge, bridge_ip, args.ipalloc_range.prefix_len()).await?;
    info!("{BRIDGE} exposed at {bridge_ip}/{}", args.ipalloc_range.prefix_len());
    apply_iptables(args.ipalloc_range, share, args.no_masq_local)?;

    let pcap = open_pcap(PCAP_PORT)?;
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, args.port)).context("binding UDP 6783 (sleeve)")?;
    pmtudisc_dont(&udp)?;
    let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port)).context("binding TCP 6783 (mesh)")?;
    let http = TcpListener::bind(&args.http_addr).with_context(|| format!("binding {}", args.http_addr))?;
    let r = Arc::new(Router {
        me,
        nickname: args.nickname.clone(),
        port: args.port,
        mtu: args.mtu,
        peers: Mutex::new(BTreeMap::new()),
        targets: Mutex::new(args.peers.iter().map(|p| (*p, "connecting".to_string())).collect()),
        macs: Mutex::new(HashMap::new()),
        udp,
        pcap,
        ipam: Mutex::new(ipam),
        ipam_file: args.ipam_file.clone(),
        status_file: args.status_file.clone(),
        next_uid: Mutex::new(u64::from(std::process::id()) << 32),
    });
    spawn("accept", {
        let r = r.clone();
        move || accept(r, tcp)
    })?;
    for p in &args.peers {
        let (r, p) = (r.clone(), *p);
        spawn("connect", move || connector(r, p))?;
    }
    spawn("sleeve", {
        let r = r.clone();
        move || sleeve_in(r)
    })?;
    spawn("pcap", {
        let r = r.clone();
        move || pcap_in(r)
    })?;
    spawn("http", {
        let r = r.clone();
        move || serve_http(r, http)
    })?;
    // The status file is the agent's ready file: written once all is up.
    r.write_status();
    spawn("tick", {
        let r = r.clone();
        move || ticker(r)
    })?;
    overlay::terminated().await?;
    info!("exiting; the bridge and its addresses stay, as with weaver");
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new().name(name.into()).spawn(f)?;
    Ok(())
}

/// The bridge as net/bridge.go's bridgeImpl makes it: `weave` with the peer
/// name as MAC and the MTU, `vethwe-bridge` on it and `vethwe-pcap`, both
/// with the MTU, tx checksumming off, IPv6 RA off, the ARP cache settings
/// of net/arp.go, all up. Kept as it is when it exists (a restart).
async fn ensure_bridge(nl: &Nl, mac: PeerName, mtu: u32) -> Result<u32> {
    if nl.index(BRIDGE).await?.is_none() {
        let msg = rtnetlink::LinkBridge::new(BRIDGE)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        nl.add(RouteNetlinkMessage::NewLink(msg))
            .await
            .context("creating the weave bridge")?;
    }
    let bridge = nl.index(BRIDGE).await?.context("weave bridge vanished")?;
    if nl.index(BRIDGE_PORT).await?.is_none() {
        let own = std::fs::File::open("/proc/self/ns/net").context("own network namespace")?;
        nl.add(nl::veth_pair(
            BRIDGE_PORT,
            Some(bridge),
            PCAP_PORT,
            own.as_raw_fd(),
            mtu,
        ))
        .await
        .context("creating vethwe-bridge and vethwe-pcap")?;
    }
    for dev in [BRIDGE, BRIDGE_PORT, PCAP_PORT] {
        let _ = crate::kernel::netns::write_sysctl(&format!("net/ipv6/conf/{dev}/accept_ra"), "0");
        if let Err(e) = tx_checksum_off(dev) {
            warn!("turning tx checksumming off on {dev}: {e:#}");
        }
    }
    arp_cache(BRIDGE);
    for dev in [PCAP_PORT, BRIDGE_PORT, BRIDGE] {
        let idx = nl.index(dev).await?.with_context(|| format!("{dev} missing"))?;
        nl.change(nl::set_up(idx))
            .await
            .with_context(|| format!("setting {dev} up"))?;
    }
    Ok(bridge)
}

/// net/arp.go configureARPCache on an interface of the calling thread's namespace.
pub fn arp_cache(dev: &str) {
    for (k, v) in [
        ("base_reachable_time", "5"),
        ("delay_first_probe_time", "2"),
        ("ucast_solicit", "1"),
    ] {
        let _ = crate::kernel::netns::write_sysctl(&format!("net/ipv4/neigh/{dev}/{k}"), v);
    }
}

/// `ethtool -K <dev> tx off` (Weave's EthtoolTXOff), through SIOCETHTOOL
/// in the calling thread's namespace: with it, TSO goes too, so the
/// router sees frames no larger than the MTU.
pub fn tx_checksum_off(dev: &str) -> Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut v,
        _pad: [0; 16],
    };
    if dev.len() >= libc::IFNAMSIZ {
        bail!("interface name {dev} too long");
    }
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: a plain datagram socket, closed below; the request lives across the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            bail!("SIOCETHTOOL on {dev}: {err}");
        }
    }
    Ok(())
}

/// The ipset and iptables of net/bridge.go and expose, once (a restarted
/// router finds them in place).
fn apply_iptables(range: Ipv4Net, share: Ipv4Net, no_masq_local: bool) -> Result<()> {
    let present = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "WEAVE"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    if no_masq_local {
        pipe("ipset", &["restore"], &super::iptables::ipset_input(share))?;
    }
    pipe(
        "iptables-restore",
        &["--noflush", "--wait"],
        &super::iptables::restore_input(range, no_masq_local),
    )
}

fn pipe(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `IP_MTU_DISCOVER = IP_PMTUDISC_DONT` on the sleeve socket, as Weave
/// sets it: datagrams go without DF and the kernel fragments them.
fn pmtudisc_dont(sock: &UdpSocket) -> Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: setsockopt on a live socket with an int option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        bail!("IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// An AF_PACKET socket on `dev`, every protocol, promiscuous (as pcap).
fn open_pcap(dev: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: plain socket calls on a descriptor owned right away.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            bail!("{dev} not found");
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto));
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            bail!("binding to {dev}: {}", std::io::Error::last_os_error());
        }
        let mut mr: libc::packet_mreq = std::mem::zeroed();
        mr.mr_ifindex = index as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mr as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::packet_mreq>() as u32,
        ) < 0
        {
            bail!("promiscuous {dev}: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

impl Router {
    fn uid(&self) -> u64 {
        let mut u = self.next_uid.lock().expect("uid lock");
        *u += 1;
        *u
    }

    /// Injects a frame into the bridge through `vethwe-pcap`.
    fn inject(&self, frame: &[u8]) {
        // SAFETY: send on our bound packet socket from a live buffer.
        let n = unsafe { libc::send(self.pcap.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            warn!("injecting a frame: {}", std::io::Error::last_os_error());
        }
    }

    /// Sends a frame over sleeve to peer `to`.
    fn send_to_peer(&self, to: &PeerName, ip: Ipv4Addr, frame: &[u8]) {
        let d = sleeve::encode(&self.me, &self.me, to, frame);
        if let Err(e) = self.udp.send_to(&d, SocketAddrV4::new(ip, self.port)) {
            warn!("sleeve to {}: {e}", mac_string(to));
        }
    }

    /// Forgets a peer's connection state and MACs once it has no connection.
    fn drop_peer_if_idle(&self, name: &PeerName) {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(p) = peers.get_mut(name)
            && p.conns.is_empty()
        {
            p.remote_ok = false;
            p.told = false;
            p.last_heartbeat = None;
            p.since = None;
            drop(peers);
            let mut macs = self.macs.lock().expect("macs lock");
            let before = macs.len();
            macs.retain(|_, owner| owner != name);
            info!(
                "->[{}] connection lost; forgot {} MACs",
                mac_string(name),
                before - macs.len()
            );
        }
    }

    /// The router's view, as the status file holds it.
    fn view(&self) -> Status {
        let peers = self.peers.lock().expect("peers lock");
        let targets = self.targets.lock().expect("targets lock").clone();
        let nick = |n: &PeerName| {
            if *n == self.me {
                self.nickname.clone()
            } else {
                peers.get(n).map(|p| p.nickname.clone()).unwrap_or_default()
            }
        };
        let mut macs: Vec<MacEntry> = self
            .macs
            .lock()
            .expect("macs lock")
            .iter()
            .map(|(m, p)| MacEntry {
                mac: mac_string(m),
                peer: mac_string(p),
                nickname: nick(p),
            })
            .collect();
        macs.sort_by(|a, b| a.mac.cmp(&b.mac));
        let ipam = self.ipam.lock().expect("ipam lock");
        Status {
            name: mac_string(&self.me),
            nickname: self.nickname.clone(),
            mtu: self.mtu,
            range: ipam.range.map(|r| r.to_string()).unwrap_or_default(),
            share: ipam.share.map(|r| r.to_string()).unwrap_or_default(),
            targets: targets.into_iter().map(|(ip, s)| (ip.to_string(), s)).collect(),
            peers: peers
                .iter()
                .map(|(n, p)| PeerStatus {
                    name: mac_string(n),
                    nickname: p.nickname.clone(),
                    address: p.ip.map(|ip| format!("{ip}:{}", self.port)).unwrap_or_default(),
                    connections: p.conns.len(),
                    state: if p.established() {
                        "established".into()
                    } else if p.conns.is_empty() {
                        "disconnected".into()
                    } else {
                        "pending".into()
                    },
                })
                .collect(),
            macs,
            allocations: ipam.owned.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        }
    }

    fn write_status(&self) {
        let text = serde_json::to_string_pretty(&self.view()).unwrap_or_default();
        if let Err(e) = overlay::write_atomic(&self.status_file, &(text + "\n")) {
            warn!("writing the status file: {e:#}");
        }
    }
}

/// The router's view, written to `--status-file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// MTU.
    pub mtu: u32,
    /// IPAM range.
    pub range: String,
    /// This peer's share.
    pub share: String,
    /// Target address to what its connector does.
    pub targets: BTreeMap<String, String>,
    /// Known peers.
    pub peers: Vec<PeerStatus>,
    /// The MAC cache.
    pub macs: Vec<MacEntry>,
    /// IPAM: ident to address.
    pub allocations: BTreeMap<String, String>,
}

/// A peer in the status file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Its sleeve address.
    pub address: String,
    /// Live TCP connections.
    pub connections: usize,
    /// established, pending or disconnected.
    pub state: String,
}

/// A MAC cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacEntry {
    /// The MAC.
    pub mac: String,
    /// The peer it is at.
    pub peer: String,
    /// That peer's nickname.
    pub nickname: String,
}

fn accept(r: Arc<Router>, l: TcpListener) {
    for s in l.incoming() {
        match s {
            Ok(s) => {
                let r = r.clone();
                let _ = spawn("conn", move || {
                    if let Err(e) = connection(&r, s, None) {
                        info!("inbound connection ended: {e:#}");
                    }
                });
            }
            Err(e) => warn!("accept: {e}"),
        }
    }
}

/// Connects to a target again and again, with backoff.
fn connector(r: Arc<Router>, target: Ipv4Addr) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let addr = std::net::SocketAddr::from((target, r.port));
        let outcome = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(anyhow::Error::from)
            .and_then(|s| connection(&r, s, Some(target)));
        let (state, established) = match outcome {
            Ok(established) => ("connection ended".to_string(), established),
            Err(e) => (format!("failed: {e:#}"), false),
        };
        if established {
            backoff = BACKOFF_MIN;
        }
        r.targets
            .lock()
            .expect("targets lock")
            .insert(target, format!("{state}, retry in {}ms", backoff.as_millis()));
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        r.targets
            .lock()
            .expect("targets lock")
            .insert(target, "connecting".into());
    }
}

fn read_exact(s: &mut TcpStream, n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// One message: `u32 BE length | body`.
fn write_msg(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut m = (body.len() as u32).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    s.write_all(&m)
}

fn read_msg(s: &mut TcpStream) -> Result<Vec<u8>> {
    let len = u32::from_be_bytes(read_exact(s, 4)?.try_into().expect("4 bytes")) as usize;
    if len > 10 << 20 {
        bail!("message of {len} bytes is over mesh's 10 MiB limit");
    }
    read_exact(s, len)
}

/// The features map as cnilab frames it (mesh: gob of map[string]string).
pub fn encode_features(f: &BTreeMap<String, String>) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in f {
        for s in [k, v] {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// Reads [`encode_features`]' framing back.
pub fn decode_features(mut b: &[u8]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let take = |b: &mut &[u8]| -> Result<String> {
        if b.len() < 2 {
            bail!("truncated features");
        }
        let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let s = b.get(2..2 + n).context("truncated features")?;
        let s = String::from_utf8(s.to_vec())?;
        *b = &b[2 + n..];
        Ok(s)
    };
    while !b.is_empty() {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// A mesh connection: the handshake, then messages until it fails.
/// Returns whether it was established.
fn connection(r: &Arc<Router>, mut s: TcpStream, target: Option<Ipv4Addr>) -> Result<bool> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let remote = match s.peer_addr()? {
        std::net::SocketAddr::V4(a) => *a.ip(),
        std::net::SocketAddr::V6(_) => bail!("IPv6 peer"),
    };
    // 1. "weave", min and max version; v2 is the lower of the maxima.
    let mut hello = b"weave".to_vec();
    hello.extend([PROTOCOL_MIN, PROTOCOL_MAX]);
    s.write_all(&hello)?;
    let theirs = read_exact(&mut s, 7)?;
    if &theirs[..5] != b"weave" {
        bail!("not a weave peer (header {:?})", &theirs[..5]);
    }
    let version = PROTOCOL_MAX.min(theirs[6]);
    if version < PROTOCOL_MIN.max(theirs[5]) {
        bail!("no common protocol version");
    }
    // 2. v2: the encryption flag, 0 = plain.
    if version >= 2 {
        s.write_all(&[0])?;
        if read_exact(&mut s, 1)?[0] != 0 {
            bail!("the peer wants encryption (errExpectedNoCrypto)");
        }
    }
    // 3. The features map.
    let uid = r.uid();
    let features: BTreeMap<String, String> = [
        ("PeerNameFlavour", "mac".to_string()),
        ("Name", mac_string(&r.me)),
        ("NickName", r.nickname.clone()),
        ("ShortID", format!("{}", u16::from_be_bytes([r.me[4], r.me[5]]) & 0xfff)),
        (
            "UID",
            format!(
                "{}",
                u64::from_be_bytes([0, 0, r.me[0], r.me[1], r.me[2], r.me[3], r.me[4], r.me[5]])
            ),
        ),
        ("ConnID", uid.to_string()),
        ("Trusted", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_msg(&mut s, &encode_features(&features))?;
    let theirs = decode_features(&read_msg(&mut s)?)?;
    for k in ["PeerNameFlavour", "Name", "NickName", "UID", "ConnID"] {
        if !theirs.contains_key(k) {
            bail!("field {k} is missing from the peer's features");
        }
    }
    let name = nl::parse_mac(&theirs["Name"]).context("the peer's Name is not a MAC")?;
    if name == r.me {
        bail!("cannot connect to ourself");
    }
    let writer = Arc::new(Mutex::new(s.try_clone()?));
    {
        let mut peers = r.peers.lock().expect("peers lock");
        let p = peers.entry(name).or_default();
        p.nickname = theirs["NickName"].clone();
        p.ip = Some(target.unwrap_or(remote));
        if p.conns.is_empty() {
            p.since = Some(Instant::now());
        }
        p.conns.insert(uid, writer);
    }
    if let Some(t) = target {
        r.targets
            .lock()
            .expect("targets lock")
            .insert(t, format!("connected to {}", theirs["Name"]));
    }
    info!(
        "->[{remote}:{}|{}({})]: connection added (v{version})",
        r.port, theirs["Name"], theirs["NickName"]
    );
    s.set_read_timeout(Some(TCP_READ_TIMEOUT))?;
    let mut was_established = false;
    let outcome = loop {
        match read_msg(&mut s) {
            Ok(m) => {
                if m.first() == Some(&TAG_CONNECTION_ESTABLISHED) {
                    let mut peers = r.peers.lock().expect("peers lock");
                    if let Some(p) = peers.get_mut(&name) {
                        p.remote_ok = true;
                    }
                }
                was_established |= r
                    .peers
                    .lock()
                    .expect("peers lock")
                    .get(&name)
                    .is_some_and(Peer::established);
            }
            Err(e) => break e,
        }
    };
    {
        let mut peers = r.peers.lock().expect("peers lock");
        if let Some(p) = peers.get_mut(&name) {
            p.conns.remove(&uid);
        }
    }
    r.drop_peer_if_idle(&name);
    info!(
        "->[{remote}:{}|{}]: connection shutting down: {outcome:#}",
        r.port, theirs["Name"]
    );
    Ok(was_established)
}

/// Sleeve in: heartbeats mark the sender alive (and tell it so over TCP);
/// frames for us teach their source MAC and go into the bridge.
fn sleeve_in(r: Arc<Router>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _from) = match r.udp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                warn!("sleeve receive: {e}");
                continue;
            }
        };
        let Some(d) = sleeve::decode(&buf[..n]) else {
            continue;
        };
        let known = r
            .peers
            .lock()
            .expect("peers lock")
            .get(&d.sender)
            .is_some_and(|p| !p.conns.is_empty());
        if !known {
            continue;
        }
        for (src, dst, frame) in d.frames {
            if sleeve::heartbeat_uid(frame).is_some() {
                let writers: Vec<Arc<Mutex<TcpStream>>> = {
                    let mut peers = r.peers.lock().expect("peers lock");
                    let Some(p) = peers.get_mut(&d.sender) else { continue };
                    p.last_heartbeat = Some(Instant::now());
                    if p.told {
                        Vec::new()
                    } else {
                        p.told = true;
                        p.conns.values().cloned().collect()
                    }
                };
                for w in writers {
                    let _ = write_msg(&mut w.lock().expect("writer lock"), &[TAG_CONNECTION_ESTABLISHED]);
                }
                continue;
            }
            if dst != r.me || frame.len() < 14 {
                // Full mesh: nothing to relay through us.
                continue;
            }
            let src_mac: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
            r.macs.lock().expect("macs lock").insert(src_mac, src);
            r.inject(frame);
        }
    }
}

/// Capture: what the bridge sends to `vethwe-pcap` goes to the peer that
/// has its destination MAC, or to every established peer.
fn pcap_in(r: Arc<Router>) {
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recvfrom into a live buffer and address of the right size.
        let (n, pkttype) = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                r.pcap.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                &mut sll as *mut _ as *mut libc::sockaddr,
                &mut len,
            );
            (n, sll.sll_pkttype)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn!("capture: {e}");
            }
            continue;
        }
        if pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n as usize];
        if frame.len() < 14 {
            continue;
        }
        let dst: [u8; 6] = frame[..6].try_into().expect("6 bytes");
        let src: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        if dst == [0x01, 0x80, 0xc2, 0, 0, 0] {
            continue;
        }
        let to = {
            let mut macs = r.macs.lock().expect("macs lock");
            match macs.get(&src) {
                // Known at another peer: a frame of theirs coming back.
                Some(owner) if *owner != r.me => continue,
                _ => {
                    macs.insert(src, r.me);
                }
            }
            macs.get(&dst).copied()
        };
        let peers = r.peers.lock().expect("peers lock");
        match to {
            Some(owner) if owner == r.me => {}
            Some(owner) => {
                if let Some(ip) = peers.get(&owner).filter(|p| p.established()).and_then(|p| p.ip) {
                    r.send_to_peer(&owner, ip, frame);
                }
            }
            None => {
                for (name, p) in peers.iter().filter(|(_, p)| p.established()) {
                    if let Some(ip) = p.ip {
                        r.send_to_peer(name, ip, frame);
                    }
                }
            }
        }
    }
}

/// Heartbeats, timeouts and the status file, every [`TICK`].
fn ticker(r: Arc<Router>) {
    let mut last_tcp = Instant::now();
    let mut last = String::new();
    loop {
        std::thread::sleep(TICK);
        let tcp_beat = last_tcp.elapsed() >= TCP_HEARTBEAT;
        if tcp_beat {
            last_tcp = Instant::now();
        }
        let mut dead: Vec<(PeerName, Vec<Arc<Mutex<TcpStream>>>)> = Vec::new();
        let mut beats = Vec::new();
        let mut writers = Vec::new();
        {
            let peers = r.peers.lock().expect("peers lock");
            for (name, p) in peers.iter().filter(|(_, p)| !p.conns.is_empty()) {
                let silent = match (p.last_heartbeat, p.since) {
                    (Some(t), _) => t.elapsed() >= HEARTBEAT_TIMEOUT,
                    (None, Some(s)) => s.elapsed() >= HEARTBEAT_TIMEOUT,
                    (None, None) => false,
                };
                if silent {
                    dead.push((*name, p.conns.values().cloned().collect()));
                    continue;
                }
                if let (Some(ip), Some(uid)) = (p.ip, p.conns.keys().next()) {
                    beats.push((*name, ip, *uid));
                }
                if tcp_beat {
                    writers.extend(p.conns.values().cloned());
                }
            }
        }
        for (name, ip, uid) in beats {
            r.send_to_peer(&name, ip, &sleeve::heartbeat(uid));
        }
        for w in writers {
            let _ = write_msg(&mut w.lock().expect("writer lock"), &[TAG_HEARTBEAT]);
        }
        for (name, conns) in dead {
            info!(
                "->[{}]: no sleeve heartbeat for {:?}; closing",
                mac_string(&name),
                HEARTBEAT_TIMEOUT
            );
            for c in conns {
                let _ = c.lock().expect("writer lock").shutdown(Shutdown::Both);
            }
        }
        let view = serde_json::to_string(&r.view()).unwrap_or_default();
        if view != last {
            r.write_status();
            last = view;
        }
    }
}

/// Weave's HTTP API, the part cnilab's plugin and users need.
fn serve_http(r: Arc<Router>, l: TcpListener) {
    for s in l.incoming().flatten() {
        let r = r.clone();
        let _ = spawn("http-conn", move || {
            let _ = http_conn(&r, s);
        });
    }
}

fn http_conn(r: &Router, mut s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req).to_string();
    let mut words = text.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, body) = match (method, path) {
        ("GET", "/status") => (200, r.status_text()),
        ("GET", "/status/ipam") => (200, r.ipam_text()),
        (m, p) if p.starts_with("/ip/") => {
            let id = &p[4..];
            let mut ipam = r.ipam.lock().expect("ipam lock");
            let prefix = ipam.range.map_or(32, |x| x.prefix_len());
            match m {
                "POST" => match ipam.allocate(id) {
                    Some(ip) => {
                        let _ = overlay::write_atomic(&r.ipam_file, &serde_json::to_string_pretty(&*ipam)?);
                        (200, format!("{ip}/{prefix}"))
                    }
                    None => (503, "range is full".to_string()),
                },
                "GET" => match ipam.owned.get(id) {
                    Some(ip) => (200, format!("{ip}/{prefix}")),
                    None => (404, format!("404 page not found: no addresses for {id}")),
                },
                "DELETE" => {
                    if ipam.owned.remove(id).is_some() {
                        let _ = overlay::write_atomic(&r.ipam_file, &serde_json::to_string_pretty(&*ipam)?);
                        (204, String::new())
                    } else {
                        (404, format!("no addresses for {id}"))
                    }
                }
                _ => (405, "method not allowed".to_string()),
            }
        }
        _ => (404, "404 page not found".to_string()),
    };
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

impl Router {
    /// `weave status`, as prog/weaver/http.go's template prints it.
    fn status_text(&self) -> String {
        let v = self.view();
        let established = v.peers.iter().filter(|p| p.state == "established").count();
        let connections = v.peers.iter().filter(|p| p.connections > 0).count();
        format!(
            "\n        Version: 2.8.1 (cnilab stand-in)\n\n        Service: router\n       Protocol: weave 1..2\n           Name: {}({})\n     Encryption: disabled\n  PeerDiscovery: enabled\n        Targets: {}\n    Connections: {connections} ({established} established)\n          Peers: {}\n TrustedSubnets: none\n\n        Service: ipam\n         Status: ready\n          Range: {}\n  DefaultSubnet: {}\n",
            v.name,
            v.nickname,
            v.targets.len(),
            v.peers.len() + 1,
            v.range,
            v.range
        )
    }

    /// `weave status ipam`: this peer's line.
    fn ipam_text(&self) -> String {
        let v = self.view();
        let ipam = self.ipam.lock().expect("ipam lock");
        let (Some(range), Some(share)) = (ipam.range, ipam.share) else {
            return String::new();
        };
        let size = 1u64 << (32 - share.prefix_len());
        let total = 1u64 << (32 - range.prefix_len());
        format!(
            "{:<37} {:>8} IPs ({:04.1}% of total) ({} active)\n",
            format!("{}({})", v.name, v.nickname),
            size,
            size as f64 * 100.0 / total as f64,
            ipam.owned.len().saturating_sub(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_hands_out_the_lowest_free_address_of_the_share() {
        let range: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let mut a = Ipam {
            range: Some(range),
            share: Some("10.32.0.0/13".parse().unwrap()),
            owned: BTreeMap::new(),
        };
        assert_eq!(a.allocate(EXPOSE_IDENT), Some(Ipv4Addr::new(10, 32, 0, 1)));
        assert_eq!(a.allocate("c1"), Some(Ipv4Addr::new(10, 32, 0, 2)));
        assert_eq!(a.allocate("c2"), Some(Ipv4Addr::new(10, 32, 0, 3)));
        a.owned.remove("c1");
        assert_eq!(a.allocate("c3"), Some(Ipv4Addr::new(10, 32, 0, 2)));
        assert_eq!(a.allocate("c2"), Some(Ipv4Addr::new(10, 32, 0, 3)), "idempotent");
        let mut b = Ipam {
            range: Some(range),
            share: Some("10.40.0.0/14".parse().unwrap()),
            owned: BTreeMap::new(),
        };
        assert_eq!(b.allocate(EXPOSE_IDENT), Some(Ipv4Addr::new(10, 40, 0, 0)));
    }

    #[test]
    fn features_round_trip() {
        let f: BTreeMap<String, String> = [
            ("Name".to_string(), "aa:bb:cc:dd:ee:ff".to_string()),
            ("NickName".into(), "n1".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(decode_features(&encode_features(&f)).unwrap(), f);
        assert!(decode_features(&[0, 5, b'a']).is_err());
    }
}

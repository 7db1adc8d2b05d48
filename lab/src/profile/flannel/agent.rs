//! `flanneld`: cnilab's stand-in for flannel's daemon, faithful to its VXLAN
//! and host-gw backends. It makes flannel's objects and nothing else:
//! `flannel.<VNI>` with its `<subnet>.0/32` address, the subnet file, its
//! lease under flannel's etcd layout, and per remote lease the neighbour,
//! the FDB entry and the onlink route, in that order (or, for host-gw, the
//! route via the peer). The etcd it reads and writes is a folder with one
//! file per key; it watches that folder with inotify as flanneld watches etcd.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde_json::{Value, json};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::nl::{self, Nl};
use crate::plan::{mac_string, random_mac};

/// flanneld's command line (the flags of the real one where they exist).
#[derive(Parser, Debug)]
#[command(
    name = "flanneld",
    about = "cnilab's flanneld: flannel's VXLAN and host-gw backends over a file-backed etcd"
)]
pub struct Args {
    /// Folder standing in for etcd: one file per key.
    #[arg(long)]
    pub etcd_dir: PathBuf,
    /// etcd prefix of the network configuration.
    #[arg(long, default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// Interface used for inter-host communication.
    #[arg(long)]
    pub iface: String,
    /// IP accessible by other nodes (default: the interface's address).
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    /// The subnet this node leases (kube subnet manager: the node's podCIDR).
    #[arg(long)]
    pub subnet: Ipv4Net,
    /// MAC of the VTEP (default: random, as flannel).
    #[arg(long)]
    pub vtep_mac: Option<String>,
    /// Where to write the subnet file.
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Whether flanneld masquerades traffic leaving the pod network.
    #[arg(long)]
    pub ip_masq: bool,
}

/// The entry point: `flanneld` as argv[0], or the `flanneld` binary.
pub fn main() -> ! {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e:#}");
            1
        }
    };
    std::process::exit(code)
}

/// The network configuration at `<prefix>/config`.
#[derive(Debug, Clone)]
struct NetConfig {
    network: Ipv4Net,
    backend: String,
    vni: u32,
    port: u16,
}

fn read_config(path: &Path) -> Result<NetConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read network config {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let network = v["Network"]
        .as_str()
        .context("network config has no Network")?
        .parse()
        .context("bad Network")?;
    let backend = v["Backend"]["Type"].as_str().unwrap_or("udp").to_string();
    let vni = v["Backend"]["VNI"].as_u64().unwrap_or(1) as u32;
    let default_port = if backend == "udp" { 8285 } else { 8472 };
    let port = v["Backend"]["Port"].as_u64().map_or(default_port, |p| p as u16);
    Ok(NetConfig {
        network,
        backend,
        vni,
        port,
    })
}

/// A lease as stored in etcd.
#[derive(Debug, Clone, PartialEq)]
struct Lease {
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    backend: String,
    vtep_mac: Option<[u8; 6]>,
}

/// `10.244.1.0-24`, flannel's key for a subnet.
fn subnet_key(s: &Ipv4Net) -> String {
    format!("{}-{}", s.network(), s.prefix_len())
}

fn parse_key(key: &str) -> Option<Ipv4Net> {
    let (ip, len) = key.split_once('-')?;
    Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()
}

fn read_lease(dir: &Path, key: &str) -> Option<Lease> {
    let subnet = parse_key(key)?;
    let text = std::fs::read_to_string(dir.join(key)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some(Lease {
        subnet,
        public_ip: v["PublicIP"].as_str()?.parse().ok()?,
        backend: v["BackendType"].as_str().unwrap_or("").to_string(),
        vtep_mac: v["BackendData"]["VtepMAC"].as_str().and_then(nl::parse_mac),
    })
}

/// Writes a file by rename, so a watcher never reads half of it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
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

/// What the agent programs for the leases of others.
struct Backend {
    nl: Nl,
    kind: String,
    /// The overlay device's index (vxlan).
    dev: u32,
    /// The underlay interface's index (host-gw).
    ext: u32,
}

async fn run(args: Args) -> Result<()> {
    let prefix = args.etcd_prefix.trim_start_matches('/');
    let etcd = args.etcd_dir.join(prefix);
    let config = read_config(&etcd.join("config"))?;
    info!(
        "network {} backend {} (VNI {}, port {})",
        config.network, config.backend, config.vni, config.port
    );
    let nl = Nl::connect()?;
    let ext = nl
        .link(&args.iface)
        .await?
        .with_context(|| format!("interface {} not found", args.iface))?;
    let ext_index = ext.header.index;
    let ext_mtu = ext
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .context("interface without MTU")?;
    let public_ip = match args.public_ip {
        Some(ip) => ip,
        None => first_address(&nl, ext_index)
            .await?
            .with_context(|| format!("{} has no IPv4 address", args.iface))?,
    };
    info!("using interface {} with address {public_ip}", args.iface);

    let (backend, backend_data, mtu) = match config.backend.as_str() {
        "vxlan" => {
            let name = format!("flannel.{}", config.vni);
            let want_mac = match &args.vtep_mac {
                Some(m) => nl::parse_mac(m).with_context(|| format!("bad --vtep-mac {m}"))?,
                None => random_mac(&mut rand::rng()),
            };
            let mtu = ext_mtu - super::VXLAN_OVERHEAD;
            let link = ensure_vxlan(&nl, &name, config.vni, config.port, public_ip, ext_index, mtu, want_mac).await?;
            let index = link.header.index;
            let mac = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
                    _ => None,
                })
                .unwrap_or(want_mac);
            ensure_single_address(&nl, index, args.subnet.network(), 32).await?;
            nl.change(nl::set_up(index))
                .await
                .context("cannot set the VXLAN device up")?;
            info!("{name} ready: MAC {}, MTU {mtu}", mac_string(&mac));
            let data = json!({ "VNI": config.vni, "VtepMAC": mac_string(&mac) });
            let b = Backend {
                nl: nl.clone(),
                kind: "vxlan".into(),
                dev: index,
                ext: ext_index,
            };
            (b, Some(data), mtu)
        }
        "host-gw" => {
            let b = Backend {
                nl: nl.clone(),
                kind: "host-gw".into(),
                dev: 0,
                ext: ext_index,
            };
            (b, None, ext_mtu)
        }
        other => bail!("backend {other} is not implemented by cnilab's flanneld (vxlan and host-gw are)"),
    };

    let subnets = etcd.join("subnets");
    std::fs::create_dir_all(&subnets).with_context(|| format!("cannot create {}", subnets.display()))?;
    // Watch before reading, so no lease written in between is missed.
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        &subnets,
        AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM,
    )?;

    let mut lease = json!({ "PublicIP": public_ip.to_string(), "BackendType": config.backend });
    if let Some(d) = backend_data {
        lease["BackendData"] = d;
    }
    write_atomic(&subnets.join(subnet_key(&args.subnet)), &lease.to_string())?;
    info!("acquired lease {}", args.subnet);

    let gateway = Ipv4Addr::from(u32::from(args.subnet.network()) + 1);
    let env = format!(
        "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={}\n",
        config.network,
        args.subnet.prefix_len(),
        args.ip_masq
    );
    write_atomic(&args.subnet_file, &env)?;
    info!("wrote subnet file to {}", args.subnet_file.display());

    let mut known: BTreeMap<String, Lease> = BTreeMap::new();
    let own = subnet_key(&args.subnet);
    let initial = list_keys(&subnets);
    sync(&backend, &subnets, &own, initial, &mut known).await;
    info!("watching for new subnet leases");

    // SAFETY: the Inotify is owned by the AsyncFd and closed only when it drops.
    let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot watch leases: {e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            ready = fd.readable() => {
                let mut guard = ready?;
                let events = match guard.get_inner().0.read_events() {
                    Ok(ev) => ev,
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let overflow = events.iter().any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW));
                let keys: Vec<String> = if overflow {
                    warn!("inotify queue overflowed: re-reading every lease");
                    list_keys(&subnets).into_iter().chain(known.keys().cloned()).collect()
                } else {
                    events.into_iter().filter_map(|e| e.name?.into_string().ok()).collect()
                };
                sync(&backend, &subnets, &own, keys, &mut known).await;
            }
        }
    }
    info!("exiting; the device, routes and lease stay, as with flanneld");
    Ok(())
}

fn list_keys(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// Brings the programmed state in line with the named lease files: new or
/// changed leases are "added" (flannel's EventAdded), vanished ones removed.
/// Leases are handled concurrently, each one's steps in flannel's order.
async fn sync(b: &Backend, dir: &Path, own: &str, keys: Vec<String>, known: &mut BTreeMap<String, Lease>) {
    let mut keys: Vec<String> = keys.into_iter().filter(|k| !k.starts_with('.') && k != own).collect();
    keys.sort();
    keys.dedup();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for k in keys {
        match read_lease(dir, &k) {
            Some(l) if known.get(&k) != Some(&l) => {
                if l.backend != b.kind {
                    warn!("ignoring non-{} subnet {}: type={}", b.kind, l.subnet, l.backend);
                    continue;
                }
                known.insert(k, l.clone());
                added.push(l);
            }
            Some(_) => {}
            None => {
                if let Some(old) = known.remove(&k) {
                    removed.push(old);
                }
            }
        }
    }
    let adds = added.iter().map(|l| add_lease(b, l));
    let dels = removed.iter().map(|l| remove_lease(b, l));
    futures::future::join(futures::future::join_all(adds), futures::future::join_all(dels)).await;
}

async fn add_lease(b: &Backend, l: &Lease) {
    if b.kind == "host-gw" {
        let msg = nl::route(l.subnet, Some(l.public_ip), Some(b.ext), false);
        match b.nl.replace(RouteNetlinkMessage::NewRoute(msg)).await {
            Ok(()) => info!("added route to {} via {}", l.subnet, l.public_ip),
            Err(e) => error!("Error adding route to {} via {}: {e}", l.subnet, l.public_ip),
        }
        return;
    }
    let Some(mac) = l.vtep_mac else {
        error!("lease {} has no VtepMAC", l.subnet);
        return;
    };
    let gw = l.subnet.network();
    info!(
        "adding subnet: {} PublicIP: {} VtepMAC: {}",
        l.subnet,
        l.public_ip,
        mac_string(&mac)
    );
    if let Err(e) =
        b.nl.replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(b.dev, gw, mac)))
            .await
    {
        error!("AddARP failed: {e}");
        return;
    }
    if let Err(e) =
        b.nl.replace(RouteNetlinkMessage::NewNeighbour(nl::fdb(b.dev, mac, l.public_ip)))
            .await
    {
        error!("AddFDB failed: {e}");
        let _ =
            b.nl.change(RouteNetlinkMessage::DelNeighbour(nl::neighbour(b.dev, gw, mac)))
                .await;
        return;
    }
    // The route goes last: with it in place the kernel would ARP for the
    // gateway if the neighbour were not there yet.
    let route = nl::route(l.subnet, Some(gw), Some(b.dev), true);
    if let Err(e) = b.nl.replace(RouteNetlinkMessage::NewRoute(route)).await {
        error!("failed to add vxlanRoute ({} -> {gw}): {e}", l.subnet);
        let _ =
            b.nl.change(RouteNetlinkMessage::DelNeighbour(nl::neighbour(b.dev, gw, mac)))
                .await;
        let _ =
            b.nl.change(RouteNetlinkMessage::DelNeighbour(nl::fdb(b.dev, mac, l.public_ip)))
                .await;
    }
}

async fn remove_lease(b: &Backend, l: &Lease) {
    if b.kind == "host-gw" {
        let msg = nl::route(l.subnet, Some(l.public_ip), Some(b.ext), false);
        if let Err(e) = b.nl.change(RouteNetlinkMessage::DelRoute(msg)).await {
            error!("Error deleting route to {} via {}: {e}", l.subnet, l.public_ip);
        }
        return;
    }
    let Some(mac) = l.vtep_mac else { return };
    let gw = l.subnet.network();
    info!(
        "removing subnet: {} PublicIP: {} VtepMAC: {}",
        l.subnet,
        l.public_ip,
        mac_string(&mac)
    );
    // Try every entry, as flannel does, whatever fails.
    if let Err(e) =
        b.nl.change(RouteNetlinkMessage::DelNeighbour(nl::neighbour(b.dev, gw, mac)))
            .await
    {
        error!("DelARP failed: {e}");
    }
    if let Err(e) =
        b.nl.change(RouteNetlinkMessage::DelNeighbour(nl::fdb(b.dev, mac, l.public_ip)))
            .await
    {
        error!("DelFDB failed: {e}");
    }
    let route = nl::route(l.subnet, Some(gw), Some(b.dev), true);
    if let Err(e) = b.nl.change(RouteNetlinkMessage::DelRoute(route)).await {
        error!("failed to delete vxlanRoute ({} -> {gw}): {e}", l.subnet);
    }
}

async fn first_address(nl: &Nl, index: u32) -> Result<Option<Ipv4Addr>> {
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

fn vxlan_info(l: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(info) => info.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn is_vxlan(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(info) => info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))),
        _ => false,
    })
}

/// flannel's ensureLink: reuse a compatible existing device (keeping its
/// MAC), else delete and recreate it.
#[allow(clippy::too_many_arguments)]
async fn ensure_vxlan(
    nl: &Nl,
    name: &str,
    vni: u32,
    port: u16,
    local: Ipv4Addr,
    dev: u32,
    mtu: u32,
    mac: [u8; 6],
) -> Result<LinkMessage> {
    match nl.add(nl::vxlan(name, vni, port, local, dev, mtu, mac)).await {
        Ok(()) => {}
        Err(e) if e.is_exists() => {
            let existing = nl.link(name).await?.context("device vanished")?;
            let incompat = incompatibility(&existing, vni, port, local, dev);
            match incompat {
                None => info!("VXLAN device {name} already exists; reusing it"),
                Some(why) => {
                    warn!("{name} already exists with incompatible configuration: {why}; recreating device");
                    nl.change(RouteNetlinkMessage::DelLink(existing.clone()))
                        .await
                        .context("failed to delete interface")?;
                    nl.add(nl::vxlan(name, vni, port, local, dev, mtu, mac))
                        .await
                        .context("failed to create vxlan interface")?;
                }
            }
        }
        Err(e) if e.is_unsupported() => {
            bail!("the kernel has no VXLAN support ({e}): load the vxlan module (modprobe vxlan)")
        }
        Err(e) => bail!("failed to create {name}: {e}"),
    }
    nl.link(name).await?.context("created VXLAN device not found")
}

fn incompatibility(l: &LinkMessage, vni: u32, port: u16, local: Ipv4Addr, dev: u32) -> Option<String> {
    if !is_vxlan(l) {
        return Some("link type is not vxlan".into());
    }
    let info = vxlan_info(l)?;
    for i in info {
        match i {
            InfoVxlan::Id(v) if *v != vni => return Some(format!("vni: {v} vs {vni}")),
            InfoVxlan::Port(p) if *p != port => return Some(format!("port: {p} vs {port}")),
            InfoVxlan::Local(a) if *a != local => return Some(format!("vtep (external) IP: {a} vs {local}")),
            InfoVxlan::Link(d) if *d != dev && *d != 0 => {
                return Some(format!("vtep (external) interface: {d} vs {dev}"));
            }
            _ => {}
        }
    }
    None
}

/// flannel's EnsureV4AddressOnLink: exactly one address, the wanted one.
async fn ensure_single_address(nl: &Nl, index: u32, ip: Ipv4Addr, len: u8) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_follow_flannel() {
        let s: Ipv4Net = "10.244.17.0/24".parse().unwrap();
        assert_eq!(subnet_key(&s), "10.244.17.0-24");
        assert_eq!(parse_key("10.244.17.0-24"), Some(s));
        assert_eq!(parse_key(".10.244.17.0-24.tmp"), None);
    }
}

//! `flanneld`: cnilab's stand-in for flannel's daemon, faithful to its VXLAN
//! and host-gw backends. It makes flannel's objects and nothing else:
//! `flannel.<VNI>` with its `<subnet>.0/32` address, the subnet file, its
//! lease under flannel's etcd layout, and per remote lease the neighbour,
//! the FDB entry and the onlink route, in that order (or, for host-gw, the
//! route via the peer; for udp, `flannel0` and its userspace forwarder,
//! `udp.rs`). It keeps the config and the leases in the lab's datastore
//! (`store.rs`): a folder with one file per key, or a real etcd.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteProtocol;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::store::{Change, Store};
use crate::kernel::nl::{self, Nl};
use crate::kernel::overlay::{self, Peer, Vtep, VxlanSpec};
use crate::model::plan::{mac_string, random_mac};

/// flanneld's command line (the flags of the real one where they exist).
#[derive(Parser, Debug)]
#[command(
    name = "flanneld",
    about = "cnilab's flanneld: flannel's VXLAN and host-gw backends over a file-backed etcd"
)]
pub struct Args {
    /// Folder standing in for etcd: one file per key (the file datastore).
    #[arg(long, required_unless_present = "etcd_endpoints")]
    pub etcd_dir: Option<PathBuf>,
    /// A comma-separated list of etcd endpoints (the etcd datastore).
    #[arg(long, conflicts_with = "etcd_dir")]
    pub etcd_endpoints: Option<String>,
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
    /// Add the FORWARD rules accepting the pod network (flannel #603).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub iptables_forward_rules: bool,
    /// The lab's watch service (cnilab-watchd); without it, inotify.
    #[arg(long)]
    pub watch_socket: Option<PathBuf>,
}

/// The entry point: `flanneld` as `argv[0]`, or the `flanneld` binary.
pub fn main() -> ! {
    overlay::agent_main(run(Args::parse()))
}

/// The network configuration at `<prefix>/config`.
#[derive(Debug, Clone)]
struct NetConfig {
    network: Ipv4Net,
    backend: String,
    vni: u32,
    port: u16,
}

fn parse_config(text: &str) -> Result<NetConfig> {
    let v: Value = serde_json::from_str(text).context("is not JSON")?;
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

/// A lease from its key (`10.244.1.0-24`) and its JSON value.
fn parse_lease(key: &str, text: &str) -> Option<Lease> {
    let subnet = parse_key(key)?;
    let v: Value = serde_json::from_str(text).ok()?;
    Some(Lease {
        subnet,
        public_ip: v["PublicIP"].as_str()?.parse().ok()?,
        backend: v["BackendType"].as_str().unwrap_or("").to_string(),
        vtep_mac: v["BackendData"]["VtepMAC"].as_str().and_then(nl::parse_mac),
    })
}

/// What the agent programs for the leases of others.
enum Backend {
    Vxlan(Vtep),
    HostGw {
        nl: Nl,
        ext: u32,
    },
    /// The UDP forwarder's table: no kernel object per lease.
    Udp(super::udp::Routes),
}

impl Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw { .. } => "host-gw",
            Backend::Udp(_) => "udp",
        }
    }

    async fn add(&self, l: &Lease) {
        match self {
            Backend::Vxlan(v) => match lease_peer(l) {
                Some(p) => v.add_peer(&p).await,
                None => error!("lease {} has no VtepMAC", l.subnet),
            },
            Backend::HostGw { nl, ext } => {
                let msg = nl::route(l.subnet, Some(l.public_ip), Some(*ext), false);
                match nl.replace(RouteNetlinkMessage::NewRoute(msg)).await {
                    Ok(()) => info!("added route to {} via {}", l.subnet, l.public_ip),
                    Err(e) => error!("Error adding route to {} via {}: {e}", l.subnet, l.public_ip),
                }
            }
            Backend::Udp(routes) => {
                info!("adding subnet: {} PublicIP: {}", l.subnet, l.public_ip);
                routes.write().expect("routes lock").insert(l.subnet, l.public_ip);
            }
        }
    }

    async fn remove(&self, l: &Lease) {
        match self {
            Backend::Vxlan(v) => {
                if let Some(p) = lease_peer(l) {
                    v.remove_peer(&p).await
                }
            }
            Backend::HostGw { nl, ext } => {
                let msg = nl::route(l.subnet, Some(l.public_ip), Some(*ext), false);
                if let Err(e) = nl.change(RouteNetlinkMessage::DelRoute(msg)).await {
                    error!("Error deleting route to {} via {}: {e}", l.subnet, l.public_ip);
                }
            }
            Backend::Udp(routes) => {
                info!("removing subnet: {} PublicIP: {}", l.subnet, l.public_ip);
                routes.write().expect("routes lock").remove(&l.subnet);
            }
        }
    }
}

/// A VXLAN lease as a peer: the route's gateway is the lease's .0, which is
/// also the address of the peer's flannel.1.
fn lease_peer(l: &Lease) -> Option<Peer> {
    Some(Peer {
        subnet: l.subnet,
        gateway: l.subnet.network(),
        mac: l.vtep_mac?,
        node_ip: l.public_ip,
    })
}

async fn run(args: Args) -> Result<()> {
    let mut store = match (&args.etcd_endpoints, &args.etcd_dir) {
        (Some(eps), _) => Store::etcd(eps, &args.etcd_prefix).await?,
        (None, Some(dir)) => Store::files(dir.clone(), &args.etcd_prefix, args.watch_socket.clone()),
        (None, None) => bail!("give --etcd-endpoints or --etcd-dir"),
    };
    let config = parse_config(&store.config().await?).context("network config")?;
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
    let ext_mtu = crate::kernel::nl::link_mtu(&ext).context("interface without MTU")?;
    let public_ip = match args.public_ip {
        Some(ip) => ip,
        None => overlay::first_address(&nl, ext_index)
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
            let spec = VxlanSpec {
                name: name.clone(),
                vni: config.vni,
                port: config.port,
                local: public_ip,
                dev: ext_index,
                mtu,
                mac: want_mac,
            };
            let link = overlay::ensure_vxlan(&nl, &spec).await?;
            let index = link.header.index;
            let mac = crate::kernel::nl::link_mac(&link).unwrap_or(want_mac);
            overlay::ensure_single_address(&nl, index, args.subnet.network(), 32).await?;
            nl.change(nl::set_up(index))
                .await
                .context("cannot set the VXLAN device up")?;
            info!("{name} ready: MAC {}, MTU {mtu}", mac_string(&mac));
            let data = json!({ "VNI": config.vni, "VtepMAC": mac_string(&mac) });
            let vtep = Vtep {
                nl: nl.clone(),
                dev: index,
                proto: RouteProtocol::Boot,
            };
            (Backend::Vxlan(vtep), Some(data), mtu)
        }
        "host-gw" => (
            Backend::HostGw {
                nl: nl.clone(),
                ext: ext_index,
            },
            None,
            ext_mtu,
        ),
        "udp" => {
            let mtu = ext_mtu - super::UDP_OVERHEAD;
            let routes = udp_backend(&nl, &config, &args.subnet, public_ip, mtu).await?;
            (Backend::Udp(routes), None, mtu)
        }
        other => bail!("backend {other} is not implemented by cnilab's flanneld (vxlan, host-gw and udp are)"),
    };

    let own = subnet_key(&args.subnet);
    // flanneld's UDP backend leaves BackendType out of its lease.
    let backend_type = (config.backend != "udp").then_some(config.backend.as_str());
    store
        .acquire(&own, &lease_value(public_ip, backend_type, backend_data.as_ref()))
        .await?;
    info!("acquired lease {}", args.subnet);

    // As flanneld: masquerade rules, then forward rules, then the subnet file.
    let rules = super::iptables::restore_input(config.network, args.subnet, args.ip_masq, args.iptables_forward_rules);
    super::iptables::apply(&rules)?;
    let gateway = Ipv4Addr::from(u32::from(args.subnet.network()) + 1);
    let env = format!(
        "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={}\n",
        config.network,
        args.subnet.prefix_len(),
        args.ip_masq
    );
    overlay::write_atomic(&args.subnet_file, &env)?;
    info!("wrote subnet file to {}", args.subnet_file.display());

    let mut known: BTreeMap<String, Lease> = BTreeMap::new();
    store
        .follow(async |changes| sync(&backend, &own, changes, &mut known).await)
        .await?;
    info!("exiting; the device, routes and lease stay, as with flanneld");
    Ok(())
}

/// flanneld's UDP backend: `flannel0` (a TUN device this process holds)
/// with `<lease>.0/32`, the MTU, up, one route for the whole network through
/// it, and the forwarder between it and UDP `port` on the public address.
async fn udp_backend(
    nl: &Nl,
    config: &NetConfig,
    subnet: &Ipv4Net,
    public_ip: Ipv4Addr,
    mtu: u32,
) -> Result<super::udp::Routes> {
    use netlink_packet_route::route::RouteScope;
    let name = "flannel0";
    let tun = crate::kernel::tun::open(name)?;
    let index = nl.index(name).await?.context("created TUN device not found")?;
    overlay::ensure_single_address(nl, index, subnet.network(), 32).await?;
    nl.change(RouteNetlinkMessage::SetLink(
        rtnetlink::LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
    ))
    .await
    .with_context(|| format!("failed to set MTU {mtu} and up for {name}"))?;
    // Explicit, scope universe, as flanneld adds it.
    let mut route = nl::route(config.network, None, Some(index), false);
    route.header.scope = RouteScope::Universe;
    nl.replace(RouteNetlinkMessage::NewRoute(route))
        .await
        .with_context(|| format!("failed to add route ({} -> {name})", config.network))?;
    let sock = std::net::UdpSocket::bind((public_ip, config.port))
        .with_context(|| format!("failed to start listening on UDP socket {public_ip}:{}", config.port))?;
    let routes = super::udp::Routes::default();
    super::udp::start(tun, subnet.network(), sock, config.port, routes.clone())?;
    info!(
        "{name} ready: MTU {mtu}, forwarding over UDP {public_ip}:{}",
        config.port
    );
    Ok(routes)
}

/// A lease's value as flanneld writes it (its `LeaseAttrs` as JSON, fields
/// in its order).
fn lease_value(public_ip: Ipv4Addr, backend: Option<&str>, data: Option<&Value>) -> String {
    let mut v = format!("{{\"PublicIP\":\"{public_ip}\",\"PublicIPv6\":null");
    if let Some(b) = backend {
        v.push_str(&format!(",\"BackendType\":{}", json!(b)));
    }
    if let Some(d) = data {
        v.push_str(&format!(",\"BackendData\":{d}"));
    }
    v.push('}');
    v
}

/// Brings the programmed state in line with changed leases: new or changed
/// ones are "added" (flannel's EventAdded), vanished ones removed. Leases
/// are handled concurrently, each one's steps in flannel's order.
async fn sync(b: &Backend, own: &str, changes: Vec<Change>, known: &mut BTreeMap<String, Lease>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (k, value) in changes.into_iter().filter(|(k, _)| k != own) {
        match value.and_then(|v| parse_lease(&k, &v)) {
            Some(l) if known.get(&k) != Some(&l) => {
                // The UDP backend's leases carry no type, and it reads any.
                if l.backend != b.kind() && !matches!(b, Backend::Udp(_)) {
                    warn!("ignoring non-{} subnet {}: type={}", b.kind(), l.subnet, l.backend);
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
    let adds = added.iter().map(|l| b.add(l));
    let dels = removed.iter().map(|l| b.remove(l));
    futures::future::join(futures::future::join_all(adds), futures::future::join_all(dels)).await;
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

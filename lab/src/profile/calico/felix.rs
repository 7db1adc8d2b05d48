//! `calico-felix`: cnilab's stand-in for the part of Calico's felix that
//! runs the VXLAN overlay (Calico's VXLAN mode, no BGP): `vxlan.calico`
//! (VNI 4096, port 4789) with the node's tunnel address, a blackhole for its
//! own blocks, and for every other node the neighbour, FDB entry and onlink
//! routes to its blocks through its tunnel address, all with felix's route
//! protocol 80. Nodes publish their VTEP and blocks in the datastore folder
//! (`calico/vxlan/<node>`), as calico-node does on the Node resource and
//! IPAM on the block affinities; a block claimed later (`cnilab pod add`)
//! is added to the node's record, and felix follows.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteProtocol, RouteType};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{FELIX_PROTO, VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_VNI};
use crate::kernel::nl::{self, Nl};
use crate::kernel::overlay::{self, Peer, Vtep, VxlanSpec, Watch};

/// calico-felix's command line.
#[derive(Parser, Debug)]
#[command(
    name = "calico-felix",
    about = "cnilab's felix: Calico's VXLAN overlay over a file-backed datastore"
)]
pub struct Args {
    /// Folder standing in for the datastore.
    #[arg(long)]
    pub datastore_dir: PathBuf,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// The underlay interface.
    #[arg(long, default_value = "eth0")]
    pub iface: String,
    /// This node's IPAM blocks (repeated).
    #[arg(long = "block", required = true)]
    pub blocks: Vec<Ipv4Net>,
    /// The tunnel address (the block's first address).
    #[arg(long)]
    pub tunnel_addr: Ipv4Addr,
    /// The VTEP MAC.
    #[arg(long)]
    pub vtep_mac: String,
    /// The lab's watch service (cnilab-watchd); without it, inotify.
    #[arg(long)]
    pub watch_socket: Option<PathBuf>,
}

/// A node's VTEP as published in the datastore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VtepRecord {
    node: String,
    ip: Ipv4Addr,
    blocks: Vec<Ipv4Net>,
    vxlan_tunnel_addr: Ipv4Addr,
    vxlan_tunnel_mac_addr: String,
}

impl VtepRecord {
    fn peers(&self) -> Vec<Peer> {
        let Some(mac) = nl::parse_mac(&self.vxlan_tunnel_mac_addr) else {
            return Vec::new();
        };
        self.blocks
            .iter()
            .map(|b| Peer {
                subnet: *b,
                gateway: self.vxlan_tunnel_addr,
                mac,
                node_ip: self.ip,
            })
            .collect()
    }
}

/// A record of a node, as the datastore holds it.
pub fn record_path(datastore: &Path, node: &str) -> PathBuf {
    datastore.join("calico/vxlan").join(node)
}

/// Adds a block to a node's record (what IPAM's block affinity is to
/// felix): the node's felix blackholes it, the others route it.
pub fn publish_block(datastore: &Path, node: &str, block: Ipv4Net) -> Result<()> {
    let path = record_path(datastore, node);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut r: VtepRecord = serde_json::from_str(&text).with_context(|| format!("bad record {}", path.display()))?;
    if !r.blocks.contains(&block) {
        r.blocks.push(block);
    }
    overlay::write_atomic(&path, &serde_json::to_string(&r)?)
}

/// The blackhole of one of the node's own blocks, as felix programs it.
async fn blackhole(nl: &Nl, block: Ipv4Net) -> Result<()> {
    let mut r = nl::route(block, None, None, false);
    r.header.kind = RouteType::BlackHole;
    r.header.protocol = RouteProtocol::from(FELIX_PROTO);
    nl.replace(RouteNetlinkMessage::NewRoute(r))
        .await
        .with_context(|| format!("blackhole for the node's block {block}"))
}

/// The entry point: `calico-felix` as `argv[0]`.
pub fn main() -> ! {
    overlay::agent_main(run(Args::parse()))
}

fn read_record(dir: &Path, key: &str) -> Option<VtepRecord> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(key)).ok()?).ok()
}

async fn run(args: Args) -> Result<()> {
    let nl = Nl::connect()?;
    let ext = nl
        .link(&args.iface)
        .await?
        .with_context(|| format!("interface {} not found", args.iface))?;
    let ip = overlay::first_address(&nl, ext.header.index)
        .await?
        .with_context(|| format!("{} has no IPv4 address", args.iface))?;
    let mtu = crate::kernel::nl::link_mtu(&ext).context("interface without MTU")? - VXLAN_OVERHEAD;
    let mac = nl::parse_mac(&args.vtep_mac).with_context(|| format!("bad --vtep-mac {}", args.vtep_mac))?;
    let spec = VxlanSpec {
        name: VXLAN_DEVICE.into(),
        vni: VXLAN_VNI,
        port: VXLAN_PORT,
        local: ip,
        dev: ext.header.index,
        mtu,
        mac,
    };
    let link = overlay::ensure_vxlan(&nl, &spec).await?;
    let dev = link.header.index;
    overlay::ensure_single_address(&nl, dev, args.tunnel_addr, 32).await?;
    nl.change(nl::set_up(dev)).await.context("cannot set vxlan.calico up")?;
    for b in &args.blocks {
        blackhole(&nl, *b).await?;
    }
    let listed: Vec<String> = args.blocks.iter().map(|b| b.to_string()).collect();
    info!(
        "{VXLAN_DEVICE} ready: {} MTU {mtu}, blocks {}",
        args.tunnel_addr,
        listed.join(", ")
    );

    let mut watch = Watch::new(&args.datastore_dir.join("calico/vxlan"), args.watch_socket.as_deref()).await?;
    let me = VtepRecord {
        node: args.node.clone(),
        ip,
        blocks: args.blocks.clone(),
        vxlan_tunnel_addr: args.tunnel_addr,
        vxlan_tunnel_mac_addr: crate::model::plan::mac_string(&crate::kernel::nl::link_mac(&link).unwrap_or(mac)),
    };
    overlay::write_atomic(&watch.dir().join(&args.node), &serde_json::to_string(&me)?)?;
    let vtep = Vtep {
        nl: nl.clone(),
        dev,
        proto: RouteProtocol::from(FELIX_PROTO),
    };
    let mut known: BTreeMap<String, VtepRecord> = BTreeMap::new();
    known.insert(args.node.clone(), me);
    let dir = watch.dir().to_path_buf();
    sync(&vtep, &dir, &args.node, watch.keys(), &mut known).await;
    overlay::follow(&mut watch, async |mut keys, overflowed| {
        if overflowed {
            keys.extend(known.keys().cloned());
        }
        sync(&vtep, &dir, &args.node, keys, &mut known).await;
    })
    .await?;
    info!("exiting; the overlay stays in place");
    Ok(())
}

async fn sync(vtep: &Vtep, dir: &Path, me: &str, keys: Vec<String>, known: &mut BTreeMap<String, VtepRecord>) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for k in keys {
        if k == me {
            // Blocks claimed since the start: blackhole them, as felix does
            // for every block affine to its host.
            let mine = known.get(me).map(|r| r.blocks.clone()).unwrap_or_default();
            if let Some(r) = read_record(dir, me) {
                for b in r.blocks.iter().filter(|b| !mine.contains(b)) {
                    match blackhole(&vtep.nl, *b).await {
                        Ok(()) => info!("blackhole for the new block {b}"),
                        Err(e) => tracing::error!("{e:#}"),
                    }
                }
                known.insert(k, r);
            }
            continue;
        }
        match read_record(dir, &k) {
            Some(r) if known.get(&k) != Some(&r) => {
                if let Some(old) = known.insert(k, r.clone()) {
                    // Routes to blocks the node no longer holds go; the
                    // rest are replaced in place, with the stale FDB entry
                    // of an old MAC left as flannel leaves it.
                    removed.extend(old.peers().into_iter().filter(|p| !r.blocks.contains(&p.subnet)));
                }
                added.extend(r.peers());
            }
            Some(_) => {}
            None => {
                if let Some(old) = known.remove(&k) {
                    removed.extend(old.peers());
                }
            }
        }
    }
    futures::future::join(
        futures::future::join_all(added.iter().map(|p| vtep.add_peer(p))),
        futures::future::join_all(removed.iter().map(|p| vtep.remove_peer(p))),
    )
    .await;
}

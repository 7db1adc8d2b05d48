//! `calico-felix`: cnilab's stand-in for the part of Calico's felix that
//! runs the VXLAN overlay (Calico's VXLAN mode, no BGP): `vxlan.calico`
//! (VNI 4096, port 4789) with the node's tunnel address, a blackhole for its
//! own block, and for every other node the neighbour, FDB entry and onlink
//! route to its block through its tunnel address, all with felix's route
//! protocol 80. Nodes publish their VTEP in the datastore folder
//! (`calico/vxlan/<node>`), as calico-node does on the Node resource.

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
use crate::nl::{self, Nl};
use crate::overlay::{self, Peer, Vtep, VxlanSpec, Watch};

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
    /// This node's IPAM block.
    #[arg(long)]
    pub block: Ipv4Net,
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
    block: Ipv4Net,
    vxlan_tunnel_addr: Ipv4Addr,
    vxlan_tunnel_mac_addr: String,
}

impl VtepRecord {
    fn peer(&self) -> Option<Peer> {
        Some(Peer {
            subnet: self.block,
            gateway: self.vxlan_tunnel_addr,
            mac: nl::parse_mac(&self.vxlan_tunnel_mac_addr)?,
            node_ip: self.ip,
        })
    }
}

/// The entry point: `calico-felix` as argv[0].
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
    let mtu = overlay::link_mtu(&ext).context("interface without MTU")? - VXLAN_OVERHEAD;
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
    let mut blackhole = nl::route(args.block, None, None, false);
    blackhole.header.kind = RouteType::BlackHole;
    blackhole.header.protocol = RouteProtocol::from(FELIX_PROTO);
    nl.replace(RouteNetlinkMessage::NewRoute(blackhole))
        .await
        .context("blackhole for the node's block")?;
    info!(
        "{VXLAN_DEVICE} ready: {} MTU {mtu}, block {}",
        args.tunnel_addr, args.block
    );

    let mut watch = Watch::new(&args.datastore_dir.join("calico/vxlan"), args.watch_socket.as_deref()).await?;
    let me = VtepRecord {
        node: args.node.clone(),
        ip,
        block: args.block,
        vxlan_tunnel_addr: args.tunnel_addr,
        vxlan_tunnel_mac_addr: crate::plan::mac_string(&overlay::link_mac(&link).unwrap_or(mac)),
    };
    overlay::write_atomic(&watch.dir().join(&args.node), &serde_json::to_string(&me)?)?;
    let vtep = Vtep {
        nl: nl.clone(),
        dev,
        proto: RouteProtocol::from(FELIX_PROTO),
    };
    let mut known: BTreeMap<String, VtepRecord> = BTreeMap::new();
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
    for k in keys.into_iter().filter(|k| k != me) {
        match read_record(dir, &k) {
            Some(r) if known.get(&k) != Some(&r) => {
                if let Some(old) = known.insert(k, r.clone()) {
                    if old.block != r.block {
                        removed.extend(old.peer());
                    }
                }
                added.extend(r.peer());
            }
            Some(_) => {}
            None => {
                if let Some(old) = known.remove(&k) {
                    removed.extend(old.peer());
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

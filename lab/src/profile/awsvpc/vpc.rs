//! The VPC: the subnet's bridge in the fabric namespace stands in for EC2.
//! Which ENI holds which address (AssignPrivateIpAddresses) is a neighbour
//! entry on the bridge, answered by the bridge itself for every port with
//! the bridge port flag proxy_arp (as `cnilab fault add arp-suppress` uses
//! it), with a static FDB entry for the ENI's MAC; EC2's source/dest check
//! is an nftables table of family bridge, `cnilab_vpc`, that drops an IPv4
//! frame from an ENI's port whose source is not an address of that ENI.
//! ENIs after eth0 are veths from the node into the bridge, attached by the
//! node's ipamd (CreateNetworkInterface + AttachNetworkInterface) and set
//! up as setupENINetwork does.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::RouteProtocol;

use super::net::{self, Match};
use super::{AwsNode, AwsVpcPlan, EniPlan};
use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::{self, Nl};
use crate::model::plan::write_file;
use crate::profile::{Built, Profile as _};

/// The nftables table of the source/dest check, in the fabric namespace.
pub const NFT_TABLE: &str = "cnilab_vpc";

/// The table: the ENIs' ports, the addresses of each, and the drop rule.
pub fn nft_ruleset() -> String {
    format!(
        "table bridge {NFT_TABLE} {{\n\
  set eni_ports {{ type ifname; }}\n\
  set eni_ips {{ type ifname . ipv4_addr; }}\n\
  chain forward {{\n\
    type filter hook forward priority 0; policy accept;\n\
    ether type ip iifname @eni_ports iifname . ip saddr != @eni_ips counter drop comment \"VPC source/dest check\"\n\
  }}\n\
}}\n"
    )
}

/// The VPC as one node's ipamd reaches it.
pub struct Vpc {
    fabric: Netns,
    fnl: Nl,
    bridge: u32,
}

impl Vpc {
    /// Opens the subnet's bridge.
    pub async fn open(c: &AwsNode) -> Result<Vpc> {
        let fabric = Netns::open(&c.fabric_ns)?;
        let fnl = Nl::connect_in(&fabric)?;
        let bridge = fnl
            .index(&c.bridge)
            .await?
            .with_context(|| format!("the VPC's bridge {} is missing", c.bridge))?;
        Ok(Vpc { fabric, fnl, bridge })
    }

    fn nft(&self, args: &[&str]) -> Result<()> {
        netns::run_in(&self.fabric, "nft", args).map(drop)
    }

    /// An ENI's port: proxy ARP, its MAC static on the port, its primary
    /// address known; checked at the source.
    pub async fn register_port(&self, e: &EniPlan) -> Result<()> {
        let mac = eni_mac(e)?;
        let port = self
            .fnl
            .index(&e.port)
            .await?
            .with_context(|| format!("port {} is missing", e.port))?;
        set_proxy_arp(&self.fnl, port).await?;
        self.fnl
            .replace(RouteNetlinkMessage::NewNeighbour(nl::static_fdb(port, mac)))
            .await
            .map_err(|e| anyhow!("static FDB entry: {e}"))?;
        self.nft(&[
            "add",
            "element",
            "bridge",
            NFT_TABLE,
            "eni_ports",
            &format!("{{ \"{}\" }}", e.port),
        ])?;
        self.assign(e, &[e.primary]).await
    }

    /// The primary ENI (the node's eth0, made by the build).
    pub async fn register_primary(&self, e: &EniPlan) -> Result<()> {
        self.register_port(e).await
    }

    /// EC2 AssignPrivateIpAddresses: the VPC delivers `ips` to the ENI.
    pub async fn assign(&self, e: &EniPlan, ips: &[Ipv4Addr]) -> Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        let mac = eni_mac(e)?;
        for ip in ips {
            self.fnl
                .replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(self.bridge, *ip, mac)))
                .await
                .map_err(|err| anyhow!("VPC entry {ip} -> {}: {err}", e.port))?;
        }
        let elems: Vec<String> = ips.iter().map(|ip| format!("\"{}\" . {ip}", e.port)).collect();
        self.nft(&[
            "add",
            "element",
            "bridge",
            NFT_TABLE,
            "eni_ips",
            &format!("{{ {} }}", elems.join(", ")),
        ])
    }
}

fn eni_mac(e: &EniPlan) -> Result<[u8; 6]> {
    e.mac
        .as_deref()
        .and_then(nl::parse_mac)
        .with_context(|| format!("ENI {} has no MAC", e.ifname))
}

/// Sets the bridge port flag proxy_arp.
async fn set_proxy_arp(fnl: &Nl, port: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = port;
    msg.attributes = vec![LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::ProxyARP(true)])),
    ])];
    fnl.change(RouteNetlinkMessage::NewLink(msg))
        .await
        .map_err(|e| anyhow!("setting proxy_arp: {e}"))
}

/// CreateNetworkInterface + AttachNetworkInterface + setupENINetwork: the
/// ENI's veth (its port on the bridge), then in the node: MAC, MTU, up,
/// its primary address, table N+1 (`gw dev ethN scope link`, `default via
/// gw dev ethN`), the kernel's subnet route gone from main, rule 32765.
pub async fn attach_eni(c: &AwsNode, e: &EniPlan, nl: &Nl, vpc: &Vpc) -> Result<()> {
    let mac = eni_mac(e)?;
    let index = match nl.index(&e.ifname).await? {
        Some(i) => i,
        None => {
            let node_ns = Netns::open(&c.ns)?;
            vpc.fnl
                .add(nl::veth_pair(
                    &e.port,
                    Some(vpc.bridge),
                    &e.ifname,
                    node_ns.raw_fd(),
                    c.mtu,
                ))
                .await
                .map_err(|err| anyhow!("attaching ENI {}: {err}", e.ifname))?;
            let i = nl.index(&e.ifname).await?.context("the new ENI is missing")?;
            let mut m = LinkMessage::default();
            m.header.index = i;
            m.attributes = vec![LinkAttribute::Address(mac.to_vec())];
            nl.change(RouteNetlinkMessage::SetLink(m))
                .await
                .map_err(|err| anyhow!("ENI MAC: {err}"))?;
            i
        }
    };
    nl.change(RouteNetlinkMessage::SetLink(
        rtnetlink::LinkUnspec::new_with_index(index).mtu(c.mtu).up().build(),
    ))
    .await
    .map_err(|err| anyhow!("ENI {} up: {err}", e.ifname))?;
    match nl.add(nl::address(index, e.primary, c.subnet.prefix_len())).await {
        Ok(()) => {}
        Err(err) if err.is_exists() => {}
        Err(err) => return Err(anyhow!("ENI address: {err}")),
    }
    let table = e.table();
    let gw = c.gateway;
    nl.replace(net::route_in(ipnet::Ipv4Net::new(gw, 32)?, None, index, table))
        .await
        .map_err(|err| anyhow!("table {table}: {err}"))?;
    nl.replace(net::route_in("0.0.0.0/0".parse()?, Some(gw), index, table))
        .await
        .map_err(|err| anyhow!("table {table} default: {err}"))?;
    // The kernel's subnet route for ethN leaves main.
    let mut kernel = nl::route(c.subnet, None, Some(index), false);
    kernel.header.protocol = RouteProtocol::Unspec;
    kernel.header.scope = netlink_packet_route::route::RouteScope::Link;
    match nl.change(RouteNetlinkMessage::DelRoute(kernel)).await {
        Ok(()) => {}
        Err(err) if err.is_missing() => {}
        Err(err) => return Err(anyhow!("removing {}'s subnet route: {err}", e.ifname)),
    }
    net::add_rule(nl, net::rule(net::FROM_ENI_PRIO, Match::From(e.primary), table)).await?;
    vpc.register_port(e).await
}

/// Writes the conflists, makes the VPC's source/dest check and proxy ARP
/// on every port of the subnets, and starts each node's ipamd, which is
/// ready once its warm pool is filled.
pub async fn start(b: &Built<'_>, a: &AwsVpcPlan) -> Result<Vec<(String, u32)>> {
    let paths = b.paths;
    crate::kernel::runtime::link_binaries(paths, &[super::PLUGIN, super::EGRESS_PLUGIN, super::AGENT])?;
    for n in &a.nodes {
        write_file(
            &paths.cni_conf_dir(&n.node).join(super::CONFLIST_NAME),
            &serde_json::to_string_pretty(&n.conflist)?,
        )?;
    }
    let fabric = Netns::open(&b.plan.fabric_ns)?;
    let fnl = Nl::connect_in(&fabric)?;
    let have = netns::run_in(&fabric, "nft", &["list", "tables"]).unwrap_or_default();
    if !have.contains(NFT_TABLE) {
        netns::run_in_with_input(&fabric, "nft", &["-f", "-"], &nft_ruleset())
            .context("the VPC's source/dest check (nft)")?;
    }
    let mut bridges: Vec<&str> = a.nodes.iter().map(|n| n.bridge.as_str()).collect();
    bridges.dedup();
    let links = fnl.links().await?;
    for br in bridges {
        let Some(bi) = fnl.index(br).await? else { continue };
        // A bridge takes the lowest MAC of its ports, and a new MAC flushes
        // its neighbour table, the VPC's entries included: as each ENI
        // joins, it could. A MAC of its own keeps it.
        let mut m = LinkMessage::default();
        m.header.index = bi;
        m.attributes = vec![LinkAttribute::Address(net::mac_from(&format!("vpc/{br}")).to_vec())];
        fnl.change(RouteNetlinkMessage::SetLink(m))
            .await
            .map_err(|e| anyhow!("the VPC bridge's MAC: {e}"))?;
        for l in links.iter().filter(|l| {
            l.attributes
                .iter()
                .any(|x| matches!(x, LinkAttribute::Controller(m) if *m == bi))
        }) {
            set_proxy_arp(&fnl, l.header.index).await?;
        }
    }
    // A port with proxy_arp gets no flooded frame: the VPC knows its
    // router's address and MAC as it knows every ENI's.
    for r in &b.plan.routers {
        for p in r.ports.iter().filter(|p| a.nodes.iter().any(|n| n.bridge == p.switch)) {
            let h = b.routers.get(&r.name).context("router namespace")?;
            let link = h.nl.link(&p.ifname).await?.context("router port missing")?;
            let mac = nl::link_mac(&link).context("router port without MAC")?;
            let bridge = fnl.index(&p.switch).await?.context("bridge missing")?;
            let port = fnl
                .index(&p.fabric_port)
                .await?
                .context("router's switch port missing")?;
            fnl.replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(bridge, p.ip, mac)))
                .await
                .map_err(|e| anyhow!("VPC entry for the router: {e}"))?;
            fnl.replace(RouteNetlinkMessage::NewNeighbour(nl::static_fdb(port, mac)))
                .await
                .map_err(|e| anyhow!("static FDB entry for the router: {e}"))?;
        }
    }
    crate::kernel::runtime::start_agents(b, a.agents(b.plan, paths)).await
}

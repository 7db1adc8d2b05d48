//! The netlink objects aws-vpc's plugin and ipamd make: policy rules (the
//! routing rules of pkg/networkutils), scope-link routes in a table, and
//! the VPC's ARP and FDB entries on the subnet's bridge.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, anyhow};
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteAttribute, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::kernel::nl::{self, Nl};

/// The main table.
pub const MAIN: u32 = 254;

/// `to <podIP> lookup main` (ToContainerRulePriority).
pub const TO_CONTAINER_PRIO: u32 = 512;
/// `fwmark 0x80/0x80 lookup main` (hostRulePriority).
pub const HOST_PRIO: u32 = 1024;
/// `from <podIP> lookup <ENI table>` (FromPodRulePriority).
pub const FROM_POD_PRIO: u32 = 1536;
/// `from <ENI primary IP> lookup <ENI table>`.
pub const FROM_ENI_PRIO: u32 = 32765;
/// The connmark bit (AWS_VPC_K8S_CNI_CONNMARK).
pub const CONNMARK: u32 = 0x80;

/// What a rule matches.
#[derive(Debug, Clone, Copy)]
pub enum Match {
    /// `to <ip>/32`.
    To(Ipv4Addr),
    /// `from <ip>/32`.
    From(Ipv4Addr),
    /// `fwmark <mark>/<mask>`.
    Mark(u32),
}

/// An IPv4 rule `prio: <match> lookup <table>`.
pub fn rule(prio: u32, m: Match, table: u32) -> RuleMessage {
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.table = if table < 256 { table as u8 } else { 252 };
    r.attributes.push(RuleAttribute::Priority(prio));
    r.attributes.push(RuleAttribute::Table(table));
    match m {
        Match::To(ip) => {
            r.header.dst_len = 32;
            r.attributes.push(RuleAttribute::Destination(IpAddr::V4(ip)));
        }
        Match::From(ip) => {
            r.header.src_len = 32;
            r.attributes.push(RuleAttribute::Source(IpAddr::V4(ip)));
        }
        Match::Mark(mark) => {
            r.attributes.push(RuleAttribute::FwMark(mark));
            r.attributes.push(RuleAttribute::FwMask(mark));
        }
    }
    r
}

/// Adds a rule, once (an equal one already there is kept).
pub async fn add_rule(nl: &Nl, r: RuleMessage) -> Result<()> {
    match nl.add(RouteNetlinkMessage::NewRule(r)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(anyhow!("adding a rule: {e}")),
    }
}

/// Deletes every rule equal to `r` (netlink deletes one per request);
/// none there is no failure.
pub async fn del_rules(nl: &Nl, r: RuleMessage) -> Result<()> {
    for _ in 0..64 {
        match nl.change(RouteNetlinkMessage::DelRule(r.clone())).await {
            Ok(()) => continue,
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(anyhow!("deleting a rule: {e}")),
        }
    }
    Ok(())
}

/// A route in `table`: `dst [via gw] dev <dev>`, scope link without a
/// gateway.
pub fn route_in(dst: Ipv4Net, gw: Option<Ipv4Addr>, dev: u32, table: u32) -> RouteNetlinkMessage {
    let mut r = nl::route(dst, gw, Some(dev), false);
    if gw.is_none() {
        r.header.scope = RouteScope::Link;
    }
    if table != MAIN {
        r.header.table = if table < 256 { table as u8 } else { 252 };
        r.attributes.push(RouteAttribute::Table(table));
    }
    RouteNetlinkMessage::NewRoute(r)
}

/// The delete request of a route made by [`route_in`].
pub fn del_route(msg: RouteNetlinkMessage) -> RouteNetlinkMessage {
    match msg {
        RouteNetlinkMessage::NewRoute(r) => RouteNetlinkMessage::DelRoute(r),
        other => other,
    }
}

/// A random locally administered unicast MAC as the plugin makes one
/// (driver.go: `mac[0] = (mac[0] | 2) & 0xfe`), drawn from `key`'s SHA-1
/// so that the same pod gets the same MAC every time.
pub fn mac_from(key: &str) -> [u8; 6] {
    let d = sha1_smol::Sha1::from(key).digest().bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] | 2) & 0xfe;
    mac
}

//! The userspace forwarder of flannel's UDP backend (the old "rudder"),
//! as flanneld's proxy_amd64.c does it: an IP packet read from `flannel0`
//! goes, bare, as the payload of one UDP datagram from this node's
//! address to the node holding the lease of its destination (same port);
//! a datagram received is written into `flannel0`. Each side decrements
//! the TTL as a router would. A packet for no known lease is dropped, and
//! answered, as flanneld answers it, with ICMP net unreachable from the
//! lease's `.0` unless it is ICMP itself or a later fragment. That source
//! is flannel0's own address, so the node's kernel drops the answer as a
//! martian (unless `accept_local` is set), on real flanneld as here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tracing::{error, warn};

/// Leases of other nodes: subnet to the node's public address.
pub type Routes = Arc<RwLock<BTreeMap<Ipv4Net, Ipv4Addr>>>;

/// The node that holds the lease covering `dst`, the longest prefix winning.
pub fn next_hop(routes: &BTreeMap<Ipv4Net, Ipv4Addr>, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    routes
        .iter()
        .filter(|(net, _)| net.contains(&dst))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, ip)| *ip)
}

/// The destination of an IPv4 packet, if it is one.
pub fn destination(pkt: &[u8]) -> Option<Ipv4Addr> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]))
}

/// Decrements the TTL and fixes the header checksum; false when the TTL
/// runs out (the packet is discarded, as flanneld does, without an ICMP).
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    if pkt.len() < 20 {
        return false;
    }
    if pkt[8] <= 1 {
        return false;
    }
    pkt[8] -= 1;
    // RFC 1624: the TTL is the high byte of its 16-bit word, so the sum
    // drops by 0x0100 and the checksum (its complement) grows by as much.
    let sum = u32::from(u16::from_be_bytes([pkt[10], pkt[11]])) + 0x0100;
    let folded = (sum & 0xffff) + (sum >> 16);
    pkt[10..12].copy_from_slice(&(folded as u16).to_be_bytes());
    true
}

/// Adds up 16-bit words, ones' complement, as the Internet checksum does.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// flanneld's send_net_unreachable: for a packet to no known lease, ICMP
/// destination unreachable (net, code 0) from `tun_addr` back to its
/// source, TTL 8, carrying its IP header and first 8 bytes. None, as
/// flanneld sends none, for an ICMP packet (RFC 792: no ICMP about ICMP),
/// a fragment after the first, or a malformed header.
pub fn net_unreachable(offender: &[u8], tun_addr: Ipv4Addr) -> Option<Vec<u8>> {
    let ihl = usize::from(*offender.first()? & 0x0f) * 4;
    // flanneld refuses headers of 60 bytes (20 + MAX_IPOPTLEN) or more.
    if !(20..60).contains(&ihl) || offender.len() < ihl + 8 || offender[9] == 1 {
        return None;
    }
    if u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff != 0 {
        return None;
    }
    let len = 20 + 8 + ihl + 8;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 8;
    p[9] = 1;
    p[12..16].copy_from_slice(&tun_addr.octets());
    p[16..20].copy_from_slice(&offender[12..16]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 3;
    p[28..].copy_from_slice(&offender[..ihl + 8]);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

/// Starts the two directions on threads of their own (blocking reads on
/// the TUN file and the socket); they run until the process ends, which
/// also removes `flannel0`.
pub fn start(tun: File, tun_addr: Ipv4Addr, sock: UdpSocket, port: u16, routes: Routes) -> Result<()> {
    let tun_out = tun.try_clone().context("cannot duplicate the TUN file")?;
    let sock_in = sock.try_clone().context("cannot duplicate the UDP socket")?;
    std::thread::Builder::new()
        .name("tun-to-udp".into())
        .spawn(move || tun_to_udp(tun, tun_addr, sock, port, routes))?;
    std::thread::Builder::new()
        .name("udp-to-tun".into())
        .spawn(move || udp_to_tun(sock_in, tun_out))?;
    Ok(())
}

fn tun_to_udp(mut tun: File, tun_addr: Ipv4Addr, sock: UdpSocket, port: u16, routes: Routes) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match tun.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("reading flannel0: {e}");
                return;
            }
        };
        let pkt = &mut buf[..n];
        let Some(dst) = destination(pkt) else {
            continue;
        };
        let hop = next_hop(&routes.read().expect("routes lock"), dst);
        let Some(node) = hop else {
            if let Some(icmp) = net_unreachable(pkt, tun_addr) {
                if let Err(e) = tun.write(&icmp) {
                    warn!("writing ICMP net unreachable into flannel0: {e}");
                }
            }
            continue;
        };
        if !decrement_ttl(pkt) {
            continue;
        }
        if let Err(e) = sock.send_to(pkt, SocketAddrV4::new(node, port)) {
            warn!("sending to {node}:{port}: {e}");
        }
    }
}

fn udp_to_tun(sock: UdpSocket, mut tun: File) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("receiving on the UDP socket: {e}");
                return;
            }
        };
        let pkt = &mut buf[..n];
        if destination(pkt).is_none() || !decrement_ttl(pkt) {
            continue;
        }
        if let Err(e) = tun.write(pkt) {
            warn!("writing into flannel0: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ttl: u8) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, ttl, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn ttl_goes_down_and_the_checksum_stays_valid() {
        for ttl in [2u8, 64, 255] {
            let mut h = header(ttl);
            assert!(decrement_ttl(&mut h));
            assert_eq!(h[8], ttl - 1);
            assert_eq!(checksum(&h), 0, "ttl {ttl}");
        }
        assert!(!decrement_ttl(&mut header(1)));
    }

    #[test]
    fn a_packet_for_no_lease_gets_net_unreachable_unless_it_is_icmp() {
        let mut tcp = header(64);
        tcp[9] = 6;
        tcp[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&tcp);
        tcp[10..12].copy_from_slice(&c.to_be_bytes());
        tcp.extend([0x9c, 0x40, 0, 80, 1, 2, 3, 4, 9, 9]);
        let tun = Ipv4Addr::new(10, 244, 1, 0);
        let p = net_unreachable(&tcp, tun).expect("an answer");
        assert_eq!(p.len(), 20 + 8 + 20 + 8);
        assert_eq!((p[8], p[9], p[20], p[21]), (8, 1, 3, 0));
        assert_eq!(&p[12..16], &tun.octets());
        assert_eq!(&p[16..20], &tcp[12..16]);
        assert_eq!(&p[28..], &tcp[..28]);
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(checksum(&p[20..]), 0);
        assert_eq!(net_unreachable(&header(64), tun), None, "none for ICMP");
        tcp[6] = 0x20;
        tcp[7] = 0x10;
        assert_eq!(net_unreachable(&tcp, tun), None, "none for a later fragment");
    }

    #[test]
    fn leases_route_by_longest_prefix_and_unknown_ones_drop() {
        let mut r = BTreeMap::new();
        r.insert("10.244.2.0/24".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 12));
        r.insert("10.244.3.0/24".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 13));
        assert_eq!(
            next_hop(&r, Ipv4Addr::new(10, 244, 3, 7)),
            Some(Ipv4Addr::new(10, 0, 0, 13))
        );
        assert_eq!(next_hop(&r, Ipv4Addr::new(10, 244, 9, 7)), None);
        assert_eq!(destination(&header(64)), Some(Ipv4Addr::new(10, 244, 2, 2)));
        assert_eq!(destination(&[0x60; 40]), None);
    }
}

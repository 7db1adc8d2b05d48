//! Weave's sleeve datagrams (router/sleeve.go, unencrypted): the sender's
//! peer name, then one or more frames, each `src peer (6) | dst peer (6) |
//! length u16 BE | Ethernet frame`. A frame whose MACs and ethertype are
//! all zero is special: a heartbeat carries the connection's UID (u64 BE)
//! after those 14 bytes. cnilab's router packs one frame per datagram.

use std::net::Ipv4Addr;

use crate::model::plan::mac_string;

/// A peer name (the "mac" flavour: 6 bytes).
pub type PeerName = [u8; 6];

/// The bytes of a special frame's header: both MACs and the ethertype zero.
const SPECIAL: [u8; 14] = [0; 14];

/// One datagram carrying `frame` from `src` to `dst`, sent by `sender`.
pub fn encode(sender: &PeerName, src: &PeerName, dst: &PeerName, frame: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(6 + 14 + frame.len());
    d.extend_from_slice(sender);
    d.extend_from_slice(src);
    d.extend_from_slice(dst);
    d.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    d.extend_from_slice(frame);
    d
}

/// A heartbeat frame for connection `uid`.
pub fn heartbeat(uid: u64) -> Vec<u8> {
    let mut f = SPECIAL.to_vec();
    f.extend_from_slice(&uid.to_be_bytes());
    f
}

/// The connection UID a heartbeat frame carries.
pub fn heartbeat_uid(frame: &[u8]) -> Option<u64> {
    (frame.len() == 22 && frame[..14] == SPECIAL)
        .then(|| u64::from_be_bytes(frame[14..22].try_into().expect("8 bytes")))
}

/// A decoded datagram: the sender and its frames (src peer, dst peer, frame).
pub struct Datagram<'a> {
    /// Who sent it.
    pub sender: PeerName,
    /// Its frames.
    pub frames: Vec<(PeerName, PeerName, &'a [u8])>,
}

/// Decodes a datagram; `None` when it is malformed (a length past its end).
pub fn decode(d: &[u8]) -> Option<Datagram<'_>> {
    let sender: PeerName = d.get(..6)?.try_into().ok()?;
    let mut rest = &d[6..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let src: PeerName = rest.get(..6)?.try_into().ok()?;
        let dst: PeerName = rest.get(6..12)?.try_into().ok()?;
        let len = usize::from(u16::from_be_bytes(rest.get(12..14)?.try_into().ok()?));
        let frame = rest.get(14..14 + len)?;
        frames.push((src, dst, frame));
        rest = &rest[14 + len..];
    }
    Some(Datagram { sender, frames })
}

/// A peer as `name(nickname)`, as Weave prints peers.
fn peer_text(p: &PeerName, peers: &[(String, String)]) -> String {
    let name = mac_string(p);
    match peers.iter().find(|(n, _)| *n == name) {
        Some((_, nick)) => format!("{name}({nick})"),
        None => name,
    }
}

/// What a sleeve datagram holds, a line per frame, for `capture`: `None`
/// when the payload is not one.
pub fn describe(payload: &[u8], peers: &[(String, String)]) -> Option<Vec<String>> {
    let d = decode(payload)?;
    let mut out = vec![format!(
        "  weave sleeve from peer {}, {} frame{}",
        peer_text(&d.sender, peers),
        d.frames.len(),
        if d.frames.len() == 1 { "" } else { "s" }
    )];
    for (src, dst, f) in &d.frames {
        let inner = match heartbeat_uid(f) {
            Some(uid) => format!("heartbeat, connection UID {uid:#018x}"),
            None => ethernet(f),
        };
        out.push(format!(
            "    {} > {}: {inner}",
            peer_text(src, peers),
            peer_text(dst, peers)
        ));
    }
    Some(out)
}

/// An Ethernet frame in a line: `src MAC > dst MAC, <what it carries>`.
pub fn ethernet(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("truncated frame ({} bytes)", f.len());
    }
    let (dst, src) = (mac_string(&f[..6]), mac_string(&f[6..12]));
    let ty = u16::from_be_bytes([f[12], f[13]]);
    let p = &f[14..];
    let what = match ty {
        0x0800 => ipv4(p),
        0x0806 => arp(p),
        0x86dd => "IPv6".to_string(),
        other => format!("ethertype {other:#06x}"),
    };
    format!("{src} > {dst}, {what}, length {}", f.len())
}

fn ip_at(p: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3])
}

fn ipv4(p: &[u8]) -> String {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return "IPv4 (truncated)".to_string();
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let (src, dst) = (ip_at(p, 12), ip_at(p, 16));
    let l4 = p.get(ihl..).unwrap_or(&[]);
    let what = match p[9] {
        1 if l4.len() >= 8 => {
            let (ty, code) = (l4[0], l4[1]);
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            let seq = u16::from_be_bytes([l4[6], l4[7]]);
            match ty {
                8 => format!("ICMP echo request, id {id}, seq {seq}"),
                0 => format!("ICMP echo reply, id {id}, seq {seq}"),
                3 => format!("ICMP unreachable (code {code})"),
                _ => format!("ICMP type {ty} code {code}"),
            }
        }
        6 if l4.len() >= 4 => format!(
            "TCP {} > {}",
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]])
        ),
        17 if l4.len() >= 4 => format!(
            "UDP {} > {}",
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]])
        ),
        proto => format!("protocol {proto}"),
    };
    format!("IPv4 {src} > {dst}: {what}")
}

fn arp(p: &[u8]) -> String {
    if p.len() < 28 {
        return "ARP (truncated)".to_string();
    }
    let op = u16::from_be_bytes([p[6], p[7]]);
    let (sha, spa, tpa) = (mac_string(&p[8..14]), ip_at(p, 14), ip_at(p, 24));
    match op {
        1 => format!("ARP, Request who-has {tpa} tell {spa}"),
        2 => format!("ARP, Reply {spa} is-at {sha}"),
        _ => format!("ARP op {op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_in_weaves_layout() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut frame = vec![0xff; 6];
        frame.extend([0x0a, 0, 0, 0, 0, 1, 0x08, 0x06]);
        frame.extend([
            0, 1, 8, 0, 6, 4, 0, 1, 0x0a, 0, 0, 0, 0, 1, 10, 32, 0, 2, 0, 0, 0, 0, 0, 0, 10, 40, 0, 1,
        ]);
        let d = encode(&a, &a, &b, &frame);
        assert_eq!(&d[..6], &a);
        assert_eq!(&d[18..20], &(frame.len() as u16).to_be_bytes());
        assert_eq!(d.len(), 6 + 14 + frame.len());
        let back = decode(&d).unwrap();
        assert_eq!((back.sender, back.frames.len()), (a, 1));
        assert_eq!(back.frames[0].2, &frame[..]);
        let peers = vec![(mac_string(&a), "node1".to_string())];
        let lines = describe(&d, &peers).unwrap();
        assert_eq!(lines[0], "  weave sleeve from peer 02:00:00:00:00:01(node1), 1 frame");
        assert_eq!(
            lines[1],
            "    02:00:00:00:00:01(node1) > 02:00:00:00:00:02: 0a:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP, Request who-has 10.40.0.1 tell 10.32.0.2, length 42"
        );
        let hb = encode(&a, &a, &b, &heartbeat(7));
        assert_eq!(hb.len(), 6 + 14 + 22);
        assert_eq!(heartbeat_uid(decode(&hb).unwrap().frames[0].2), Some(7));
        assert!(decode(&d[..d.len() - 1]).is_none());
    }
}

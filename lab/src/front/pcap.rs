//! `capture` for a profile that decodes its own UDP overlay (Weave's
//! sleeve, [`Profile::sleeve_port`](crate::profile::Profile::sleeve_port)):
//! tcpdump writes pcap to a pipe (`-w -`), and each packet is printed as a
//! tcpdump-like line, the overlay's datagrams followed by what they carry.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

/// Reads a pcap stream from `input` and writes a line (or more) per
/// packet to `out`; `decode` gets the payload of every UDP datagram to or
/// from `port`.
pub fn print_stream(
    mut input: impl Read,
    out: &mut impl Write,
    port: u16,
    decode: &dyn Fn(&[u8]) -> Option<Vec<String>>,
) -> std::io::Result<()> {
    let mut header = [0u8; 24];
    if input.read_exact(&mut header).is_err() {
        return Ok(());
    }
    let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        _ => return Err(std::io::Error::other("tcpdump wrote no pcap stream")),
    };
    let u32_at = |b: &[u8], at: usize| {
        let v: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let linktype = u32_at(&header, 20);
    let mut rec = [0u8; 16];
    while input.read_exact(&mut rec).is_ok() {
        let (sec, frac, len) = (u32_at(&rec, 0), u32_at(&rec, 4), u32_at(&rec, 8) as usize);
        let mut data = vec![0u8; len];
        input.read_exact(&mut data)?;
        let micros = if nanos { frac / 1000 } else { frac };
        let t = format!(
            "{:02}:{:02}:{:02}.{micros:06}",
            (sec / 3600) % 24,
            (sec / 60) % 60,
            sec % 60
        );
        for line in describe(linktype, &data, port, decode) {
            writeln!(out, "{t} {line}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// The network-layer packet and ethertype of a captured frame.
fn network_layer(linktype: u32, d: &[u8]) -> Option<(u16, &[u8], String)> {
    match linktype {
        // Ethernet.
        1 if d.len() >= 14 => Some((
            u16::from_be_bytes([d[12], d[13]]),
            &d[14..],
            format!("{} > {}, ", mac(&d[6..12]), mac(&d[..6])),
        )),
        // Linux cooked v1 (`-i any`).
        113 if d.len() >= 16 => Some((u16::from_be_bytes([d[14], d[15]]), &d[16..], String::new())),
        // Linux cooked v2.
        276 if d.len() >= 20 => Some((u16::from_be_bytes([d[0], d[1]]), &d[20..], String::new())),
        _ => None,
    }
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// A captured packet as lines: the first like tcpdump's, then the
/// overlay's decoding.
pub fn describe(linktype: u32, d: &[u8], port: u16, decode: &dyn Fn(&[u8]) -> Option<Vec<String>>) -> Vec<String> {
    let Some((ethertype, p, macs)) = network_layer(linktype, d) else {
        return vec![format!("link type {linktype}, length {}", d.len())];
    };
    match ethertype {
        0x0800 if p.len() >= 20 => {}
        0x0806 => return vec![format!("{macs}ARP, length {}", p.len())],
        other => return vec![format!("{macs}ethertype {other:#06x}, length {}", p.len())],
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let (src, dst) = (ip(12), ip(16));
    let l4 = p.get(ihl..).unwrap_or(&[]);
    let port_of = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    match p[9] {
        17 if l4.len() >= 8 => {
            let (sp, dp) = (port_of(0), port_of(2));
            let payload = &l4[8..];
            let mut lines = vec![format!(
                "{macs}IP {src}.{sp} > {dst}.{dp}: UDP, length {}",
                payload.len()
            )];
            if sp == port || dp == port {
                match decode(payload) {
                    Some(more) => lines.extend(more),
                    None => lines.push(format!("  (not a datagram of UDP {port}'s overlay)")),
                }
            }
            lines
        }
        6 if l4.len() >= 4 => vec![format!("{macs}IP {src}.{} > {dst}.{}: TCP", port_of(0), port_of(2))],
        1 if l4.len() >= 2 => vec![format!("{macs}IP {src} > {dst}: ICMP type {} code {}", l4[0], l4[1])],
        proto => vec![format!("{macs}IP {src} > {dst}: protocol {proto}")],
    }
}

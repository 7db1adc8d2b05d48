//! BIRD 2: the configuration the lab gives nodes and routers, and a client
//! for BIRD's control socket (the protocol birdc speaks) to read sessions
//! and the BGP table.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The bird binary, if installed (see [`crate::kernel::tools::find`]).
pub fn binary() -> Option<PathBuf> {
    crate::kernel::tools::find("bird")
}

pub use crate::model::plan::{BirdPlan, SessionPlan};

/// `172_20_0_11`: the protocol-name form of an address in BIRD configs.
pub fn ip_id(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "_")
}

/// A BGP peer of a router.
#[derive(Debug, Clone)]
pub struct RouterPeer {
    /// Protocol name.
    pub name: String,
    /// Router's own address on the shared switch.
    pub local: Ipv4Addr,
    /// Peer address.
    pub neighbor: Ipv4Addr,
    /// Peer AS.
    pub asn: u32,
}

/// A router's BIRD: direct routes known, BGP routes learned from its peers
/// programmed into its kernel and passed on to every peer.
pub fn router_config(router_id: Ipv4Addr, asn: u32, peers: &[RouterPeer], hold_time: Option<u32>) -> BirdPlan {
    let mut c = String::new();
    let _ = writeln!(c, "# cnilab router: BGP speaker of its switches");
    let _ = writeln!(c, "log stderr all;");
    let _ = writeln!(c, "router id {router_id};\n");
    c.push_str(
        "protocol device {\n  scan time 2;\n}\n\nprotocol direct {\n  ipv4;\n  interface \"*\";\n}\n\n\
         protocol kernel {\n  ipv4 {\n    import none;\n    export filter { if source = RTS_DEVICE then reject; accept; };\n  };\n  \
         scan time 2;\n  metric 0;\n}\n",
    );
    let mut sessions = Vec::new();
    for p in peers {
        c.push_str(&router_session(p, asn, hold_time));
        sessions.push(SessionPlan {
            name: p.name.clone(),
            neighbor: p.neighbor,
            asn: p.asn,
        });
    }
    BirdPlan { config: c, sessions }
}

/// A router's BGP session with one peer: routes learned by BGP are passed on.
fn router_session(p: &RouterPeer, asn: u32, hold_time: Option<u32>) -> String {
    let hold = hold_time.map(|h| format!("  hold time {h};\n")).unwrap_or_default();
    // One literal per block, its braces balanced: bird.conf reads as written.
    format!(
        "\nprotocol bgp {} {{\n  local {} as {asn};\n  neighbor {} as {};\n  ipv4 {{\n    import all;\n    \
         export filter {{ if source = RTS_BGP then accept; reject; }};\n  }};\n{hold}  \
         connect delay time 1;\n  connect retry time 3;\n}}\n",
        p.name, p.local, p.neighbor, p.asn
    )
}

/// Sends one command on BIRD's control socket and returns the reply's text
/// lines, without their reply codes.
pub fn query(socket: &Path, command: &str) -> Result<Vec<String>> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("cannot reach BIRD at {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut hello = String::new();
    r.read_line(&mut hello)?;
    if !hello.starts_with("0001 ") {
        bail!("unexpected BIRD greeting: {hello:?}");
    }
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("BIRD closed the control socket mid-reply");
        }
        let line = line.trim_end_matches('\n');
        let b = line.as_bytes();
        if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
            let code: u32 = line[..4].parse().expect("digits");
            let text = &line[5..];
            if code >= 8000 {
                bail!("BIRD refused `{command}`: {text}");
            }
            if code != 0 {
                out.push(text.to_string());
            }
            if b[4] == b' ' {
                return Ok(out);
            }
        } else if let Some(rest) = line.strip_prefix(' ') {
            out.push(rest.to_string());
        } else {
            out.push(line.to_string());
        }
    }
}

/// A BGP session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Session {
    /// Protocol name.
    pub name: String,
    /// Peer address.
    pub neighbor: Option<Ipv4Addr>,
    /// Peer AS.
    pub asn: Option<u32>,
    /// BGP state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
}

/// Every BGP session of a BIRD (`show protocols all`).
pub fn sessions(socket: &Path) -> Result<Vec<Session>> {
    let lines = query(socket, "show protocols all")?;
    Ok(parse_sessions(&lines))
}

fn parse_sessions(lines: &[String]) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let mut current: Option<Session> = None;
    for l in lines {
        if !l.starts_with(' ') && !l.is_empty() {
            if let Some(s) = current.take() {
                out.push(s);
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 2 && f[1] == "BGP" {
                current = Some(Session {
                    name: f[0].to_string(),
                    neighbor: None,
                    asn: None,
                    state: String::new(),
                });
            }
            continue;
        }
        let Some(s) = current.as_mut() else { continue };
        let t = l.trim();
        if let Some(v) = t.strip_prefix("BGP state:") {
            s.state = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("Neighbor address:") {
            s.neighbor = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("Neighbor AS:") {
            s.asn = v.trim().parse().ok();
        }
    }
    out.extend(current);
    out
}

/// A route in BIRD's table that BGP brought.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BgpRoute {
    /// Prefix.
    pub prefix: String,
    /// Next hop.
    pub via: String,
    /// The session it came from.
    pub from: String,
    /// BGP.origin.
    pub origin: String,
    /// BGP.as_path.
    pub as_path: String,
}

/// BGP routes of a BIRD (`show route all`), without timestamps.
pub fn bgp_routes(socket: &Path) -> Result<Vec<BgpRoute>> {
    let lines = query(socket, "show route all")?;
    Ok(parse_routes(&lines))
}

fn parse_routes(lines: &[String]) -> Vec<BgpRoute> {
    let mut out = Vec::new();
    let mut prefix = String::new();
    let mut cur: Option<BgpRoute> = None;
    let mut is_bgp = false;
    let flush = |cur: &mut Option<BgpRoute>, is_bgp: bool, out: &mut Vec<BgpRoute>| {
        if let Some(r) = cur.take() {
            if is_bgp {
                out.push(r);
            }
        }
    };
    for l in lines {
        if l.starts_with("Table ") || l.is_empty() {
            continue;
        }
        let t = l.trim();
        let indented = l.starts_with(['\t', ' ']);
        if !indented
            || t.contains(" [")
                && (t.starts_with("unicast") || t.starts_with("blackhole") || t.starts_with("unreachable"))
        {
            flush(&mut cur, is_bgp, &mut out);
            is_bgp = false;
            let f: Vec<&str> = t.split_whitespace().collect();
            let rest = if indented {
                t
            } else {
                prefix = f.first().map(|p| p.to_string()).unwrap_or_default();
                t.get(prefix.len()..).unwrap_or("").trim()
            };
            let from = rest
                .split_once('[')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("")
                .trim_end_matches(']')
                .to_string();
            cur = Some(BgpRoute {
                prefix: prefix.clone(),
                via: String::new(),
                from,
                origin: String::new(),
                as_path: String::new(),
            });
            continue;
        }
        let Some(r) = cur.as_mut() else { continue };
        if let Some(v) = t.strip_prefix("via ") {
            r.via = v.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(v) = t.strip_prefix("Type:") {
            is_bgp = v.trim().starts_with("BGP");
        } else if let Some(v) = t.strip_prefix("BGP.origin:") {
            r.origin = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("BGP.as_path:") {
            r.as_path = v.trim().to_string();
        }
    }
    flush(&mut cur, is_bgp, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_session_block_reads_as_bird_wants_it() {
        let p = RouterPeer {
            name: "R1".into(),
            local: Ipv4Addr::new(10, 0, 0, 1),
            neighbor: Ipv4Addr::new(10, 0, 0, 2),
            asn: 65001,
        };
        let head = "\nprotocol bgp R1 {\n  local 10.0.0.1 as 65000;\n  neighbor 10.0.0.2 as 65001;\n  ipv4 {\n    \
                    import all;\n    export filter { if source = RTS_BGP then accept; reject; };\n  };\n";
        let tail = "  connect delay time 1;\n  connect retry time 3;\n}\n";
        assert_eq!(router_session(&p, 65000, None), format!("{head}{tail}"));
        assert_eq!(
            router_session(&p, 65000, Some(9)),
            format!("{head}  hold time 9;\n{tail}")
        );
        let plan = router_config(Ipv4Addr::new(10, 0, 0, 1), 65000, &[p], None);
        assert!(
            plan.config.ends_with(&format!("metric 0;\n}}\n{head}{tail}")),
            "{}",
            plan.config
        );
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn reads_sessions_from_show_protocols_all() {
        let out = lines(
            "Name       Proto      Table      State  Since         Info
kernel1    Kernel     master4    up     23:25:55.709  
Mesh_10_0_0_12 BGP        ---        up     23:25:56.689  Established   
  Description:    Connection to BGP peer
  BGP state:          Established
    Neighbor address: 10.0.0.12
    Neighbor AS:      64512
    Local AS:         64512
Node_10_0_0_13 BGP        ---        start  23:25:56.689  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 10.0.0.13
    Neighbor AS:      65000",
        );
        let s = parse_sessions(&out);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "Mesh_10_0_0_12");
        assert_eq!(s[0].state, "Established");
        assert_eq!(s[0].neighbor, Some("10.0.0.12".parse().unwrap()));
        assert_eq!(s[1].asn, Some(65000));
        assert_eq!(s[1].state, "Active");
    }

    #[test]
    fn reads_bgp_routes_without_timestamps() {
        let out = lines(
            "Table master4:
192.168.2.0/26       unicast [Mesh_10_0_0_12 23:25:56.735] * (100) [i]
\tvia 10.0.0.12 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 
\tBGP.next_hop: 10.0.0.12
                     unicast [Mesh_10_0_0_13 23:25:57.000] (100) [i]
\tvia 10.0.0.13 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65000
192.168.1.0/26       blackhole [static1 23:25:55.709] * (200)
\tType: static univ
10.0.0.0/24          unicast [direct1 23:25:55.710] * (240)
\tdev eth0
\tType: device univ",
        );
        let r = parse_routes(&out);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].prefix, "192.168.2.0/26");
        assert_eq!(r[0].via, "10.0.0.12");
        assert_eq!(r[0].from, "Mesh_10_0_0_12");
        assert_eq!(r[0].origin, "IGP");
        assert_eq!(r[1].prefix, "192.168.2.0/26");
        assert_eq!(r[1].as_path, "65000");
    }
}

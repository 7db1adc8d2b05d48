//! Packet filtering in a snapshot: each namespace's iptables tables as
//! `iptables-save` prints them, normalized so that only the rules tell.
//!
//! Shown per table that holds a rule, a user chain or a policy other than
//! ACCEPT, one line each:
//!
//! ```text
//! iptables filter :FORWARD DROP
//! iptables filter :CNI-FORWARD -
//! iptables raw -A PREROUTING -i eth0 -p udp -m udp --dport 8472 -j DROP
//! ```
//!
//! Chain declarations come first, sorted by chain, with their policy (`-`
//! for a user chain) and no counters; then the rules, grouped by chain in
//! chain order and in their own order within a chain, since that order
//! decides which rule matches. Counters, `#` lines (the save's timestamps)
//! and rule comments (`-m comment --comment ...`, which plugins fill with
//! container IDs) are dropped. Tables with nothing but empty built-in
//! chains that accept are left out, so a namespace nobody filters shows
//! nothing, and removing the last rule gives back the snapshot from before.
//!
//! Spawning `iptables-save` in every namespace would cost more than the
//! rest of a snapshot (a process per pod), so each namespace is first asked
//! cheaply, from a thread already inside it, whether it has any IPv4
//! tables: nf_tables by a netlink dump of its tables, the legacy x_tables
//! by `/proc/thread-self/net/ip_tables_names`.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use serde::Serialize;

/// One table's normalized content.
#[derive(Debug, Serialize, Clone, PartialEq, Eq, schemars::JsonSchema)]
pub struct Table {
    /// filter, nat, mangle, raw, security.
    pub name: String,
    /// (chain, policy) sorted by chain; `-` for user chains.
    pub chains: Vec<(String, String)>,
    /// Rules as `-A CHAIN ...`, grouped by chain, in order within each.
    pub rules: Vec<String>,
}

/// Which kinds of IPv4 tables a namespace has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    /// nf_tables tables of family ip (what iptables-nft makes).
    pub nft: bool,
    /// x_tables tables (what iptables-legacy makes).
    pub legacy: bool,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFPROTO_IPV4: u8 = 2;

/// Whether the calling thread's namespace has IPv4 tables; to be called
/// on a thread inside that namespace.
pub fn present_here() -> Present {
    let legacy = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names")
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    // A kernel without nf_tables refuses the dump: then there are none.
    let nft = nft_ip_tables().unwrap_or(0) > 0;
    Present { nft, legacy }
}

/// Counts the nf_tables tables of family ip by a netlink dump.
fn nft_ip_tables() -> Result<usize> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    // nlmsghdr then nfgenmsg (family, version, resource id).
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    socket::send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut count = 0;
    loop {
        let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into()?);
            if len < 16 || at + len > n {
                anyhow::bail!("malformed netlink answer");
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(count),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into()?);
                    anyhow::ensure!(errno == 0, "nf_tables dump refused ({errno})");
                    return Ok(count);
                }
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE && buf.get(at + 16) == Some(&NFPROTO_IPV4) => {
                    count += 1;
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// Runs the save programs a namespace needs and normalizes what they print.
pub fn read(ns: &crate::netns::Netns, present: Present) -> Result<Vec<Table>> {
    let mut text = String::new();
    for (on, program) in [
        (present.nft, "iptables-nft-save"),
        (present.legacy, "iptables-legacy-save"),
    ] {
        if !on {
            continue;
        }
        let out = crate::netns::command(ns, program)
            .output()
            .with_context(|| format!("cannot run {program} for the snapshot (apt-get install iptables)"))?;
        anyhow::ensure!(
            out.status.success(),
            "{program} failed in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(normalize(&text))
}

/// Splits a rule into its words, keeping quoted words whole (as written).
fn words(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || bytes[i] != b' ') {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                _ => {}
            }
            i += 1;
        }
        if i > start {
            out.push(&line[start..i.min(line.len())]);
        }
    }
    out
}

/// A rule without its comment match.
fn drop_comment(rule: &str) -> String {
    let w = words(rule);
    let mut out: Vec<&str> = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        // `-m comment` and its `--comment TEXT` go, whatever their order.
        if (w[i] == "-m" && w.get(i + 1) == Some(&"comment")) || w[i] == "--comment" {
            i += 2;
        } else {
            out.push(w[i]);
            i += 1;
        }
    }
    out.join(" ")
}

/// Normalizes `iptables-save` output (see the module's doc).
pub fn normalize(text: &str) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            tables.push(Table {
                name: name.to_string(),
                chains: Vec::new(),
                rules: Vec::new(),
            });
            continue;
        }
        let Some(t) = tables.last_mut() else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            if let (Some(chain), Some(policy)) = (it.next(), it.next()) {
                t.chains.push((chain.to_string(), policy.to_string()));
            }
        } else if line.starts_with("-A ") {
            t.rules.push(drop_comment(line));
        }
    }
    let chain_of = |r: &String| r.split_whitespace().nth(1).unwrap_or("").to_string();
    for t in &mut tables {
        t.chains.sort();
        t.chains.dedup();
        // Stable: rules keep their order within a chain.
        t.rules.sort_by_key(chain_of);
    }
    tables.retain(|t| !t.rules.is_empty() || t.chains.iter().any(|(_, p)| p != "ACCEPT"));
    // Legacy and nf_tables tables of one name are shown as one.
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    tables.dedup_by(|a, b| {
        if a.name == b.name {
            b.chains.append(&mut a.chains);
            b.rules.append(&mut a.rules);
            b.chains.sort();
            b.chains.dedup();
            true
        } else {
            false
        }
    });
    tables
}

/// The snapshot's lines for a namespace's tables.
pub fn render(tables: &[Table], out: &mut String) {
    use std::fmt::Write as _;
    for t in tables {
        for (chain, policy) in &t.chains {
            let _ = writeln!(out, "iptables {} :{chain} {policy}", t.name);
        }
        for r in &t.rules {
            let _ = writeln!(out, "iptables {} {r}", t.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Wed Dec  2 06:00:00 2026
*raw
:PREROUTING ACCEPT [12:3456]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i eth0 -p udp -m udp --dport 8472 -m comment --comment \"cnilab fault f1\" -j DROP
-A PREROUTING -i eth0 -p tcp -j ACCEPT
COMMIT
# Completed on Wed Dec  2 06:00:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"abc\\\"\" -j DNAT --to-destination 10.0.0.2:80
COMMIT
";

    #[test]
    fn counters_comments_and_empty_tables_are_dropped() {
        let mut s = String::new();
        render(&normalize(SAVE), &mut s);
        assert_eq!(
            s,
            "iptables nat :CNI-HOSTPORT-DNAT -
iptables nat :POSTROUTING ACCEPT
iptables nat :PREROUTING ACCEPT
iptables nat -A CNI-HOSTPORT-DNAT -p tcp -j DNAT --to-destination 10.0.0.2:80
iptables nat -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
iptables raw :OUTPUT ACCEPT
iptables raw :PREROUTING ACCEPT
iptables raw -A PREROUTING -i eth0 -p udp -m udp --dport 8472 -j DROP
iptables raw -A PREROUTING -i eth0 -p tcp -j ACCEPT
"
        );
    }

    #[test]
    fn a_drop_policy_alone_keeps_its_table() {
        let t = normalize("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].chains[0], ("FORWARD".to_string(), "DROP".to_string()));
    }

    #[test]
    fn nothing_but_accepting_builtins_shows_nothing() {
        assert!(normalize("*filter\n:INPUT ACCEPT [5:6]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
    }
}

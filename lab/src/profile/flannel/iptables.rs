//! The iptables rules flanneld adds (flannel's pkg/trafficmngr/iptables):
//! with `--ip-masq`, `POSTROUTING -j FLANNEL-POSTRTG` and its RETURN and
//! MASQUERADE rules; with `--iptables-forward-rules` (the default),
//! `FORWARD -j FLANNEL-FWD` accepting the pod network both ways, the fix
//! for a FORWARD policy of DROP (flannel #603/#799). Every rule is
//! appended, as flanneld does, in one `iptables-restore --noflush`.

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

/// kube-proxy's masquerade mark, which flanneld leaves alone.
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// The `iptables-restore` input for a node holding `lease` of `network`.
pub fn restore_input(network: Ipv4Net, lease: Ipv4Net, ip_masq: bool, forward: bool) -> String {
    let mut s = String::new();
    if ip_masq {
        let c = "-m comment --comment \"flanneld masq\"";
        s.push_str("*nat\n:FLANNEL-POSTRTG - [0:0]\n");
        s.push_str(&format!("-A POSTROUTING {c} -j FLANNEL-POSTRTG\n"));
        s.push_str(&format!(
            "-A FLANNEL-POSTRTG -m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN\n"
        ));
        s.push_str(&format!("-A FLANNEL-POSTRTG -s {lease} -d {network} {c} -j RETURN\n"));
        s.push_str(&format!("-A FLANNEL-POSTRTG -s {network} -d {lease} {c} -j RETURN\n"));
        s.push_str(&format!("-A FLANNEL-POSTRTG ! -s {network} -d {lease} {c} -j RETURN\n"));
        s.push_str(&format!(
            "-A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully\n"
        ));
        s.push_str(&format!(
            "-A FLANNEL-POSTRTG ! -s {network} -d {network} {c} -j MASQUERADE --random-fully\n"
        ));
        s.push_str("COMMIT\n");
    }
    if forward {
        let c = "-m comment --comment \"flanneld forward\"";
        s.push_str("*filter\n:FLANNEL-FWD - [0:0]\n");
        s.push_str(&format!("-A FORWARD {c} -j FLANNEL-FWD\n"));
        s.push_str(&format!("-A FLANNEL-FWD -s {network} {c} -j ACCEPT\n"));
        s.push_str(&format!("-A FLANNEL-FWD -d {network} {c} -j ACCEPT\n"));
        s.push_str("COMMIT\n");
    }
    s
}

/// `input` as flanneld loads it over what the tables hold (`saved`, as
/// `iptables-save` prints it): a jump already in a built-in chain is
/// deleted and appended again, so a restarted flanneld moves it to the end
/// instead of adding it twice. flannel's own chains are flushed by their
/// declaration in `input`, so their rules are simply appended.
pub fn over_existing(input: &str, saved: &str) -> String {
    const BUILT_IN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    let present: std::collections::BTreeSet<&str> = saved.lines().collect();
    let mut out = String::new();
    for line in input.lines() {
        let chain = line.strip_prefix("-A ").and_then(|r| r.split_whitespace().next());
        if chain.is_some_and(|c| BUILT_IN.contains(&c)) && present.contains(line) {
            out.push_str(&line.replacen("-A ", "-D ", 1));
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Loads `input` into this namespace's tables, keeping what is there.
pub fn apply(input: &str) -> Result<()> {
    if input.is_empty() {
        return Ok(());
    }
    let saved = crate::kernel::tools::find("iptables-save")
        .and_then(|p| std::process::Command::new(p).output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let input = &over_existing(input, &saved);
    let program = crate::kernel::tools::find("iptables-restore")
        .context("Failed to setup IPTables. iptables-restore binary was not found (apt-get install iptables)")?;
    let mut child = std::process::Command::new(&program)
        .args(["--noflush", "--wait"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_flanneld() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let lease: Ipv4Net = "10.244.5.0/24".parse().unwrap();
        let all = restore_input(net, lease, true, true);
        assert!(all.starts_with(
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n"
        ));
        assert!(all.contains(
            "-A FLANNEL-POSTRTG -s 10.244.5.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n"
        ));
        assert!(
            all.contains(
                "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n"
            )
        );
        assert_eq!(all.matches("MASQUERADE --random-fully").count(), 2);
        assert!(!restore_input(net, lease, false, true).contains("*nat"));
        assert!(restore_input(net, lease, false, false).is_empty());
    }

    #[test]
    fn a_rule_already_there_is_moved_not_doubled() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let lease: Ipv4Net = "10.244.5.0/24".parse().unwrap();
        let input = restore_input(net, lease, false, true);
        let saved = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\nCOMMIT\n";
        let out = over_existing(&input, saved);
        assert!(
            out.contains("-D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n-A FORWARD -m comment")
        );
        assert_eq!(out.matches("-D ").count(), 1);
        assert_eq!(over_existing(&input, ""), input);
    }
}

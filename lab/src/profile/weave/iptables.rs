//! The iptables and ipset Weave's router puts in a node (net/bridge.go
//! ConfigureIPTables, net/expose.go), as `iptables-restore --noflush` input,
//! with weave-kube's defaults: NPC on (`--expect-npc`), so weaver makes the
//! chains WEAVE-NPC and WEAVE-NPC-EGRESS, steers FORWARD through them with
//! the six rules of `npc::forward_rules` at the top (ensureRulesAtTop) and
//! appends `-i weave -j WEAVE-NPC-EGRESS` to INPUT after the control-port
//! rule; weave-npc (`npc.rs`, programmed by ops::policy) fills the chains.
//! Without NPC there would be `-i weave -o weave -j ACCEPT` and WEAVE-EXPOSE
//! in place of the four NPC rules.

use ipnet::Ipv4Net;


/// The ipset of the node's own IPAM ranges (`--no-masq-local`).
pub const NO_MASQ_LOCAL: &str = "weaver-no-masq-local";

/// `ipset restore` input: the no-masq-local set with the node's share.
pub fn ipset_input(share: Ipv4Net) -> String {
    format!("create {NO_MASQ_LOCAL} hash:net -exist\nadd {NO_MASQ_LOCAL} {share} -exist\n")
}

/// `iptables-restore --noflush` input for the filter and nat tables.
pub fn restore_input(range: Ipv4Net, no_masq_local: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!("*filter\n:{} - [0:0]\n:{} - [0:0]\n", super::npc::MAIN, super::npc::EGRESS));
    // ensureRulesAtTop keeps this order at the top of FORWARD.
    for (i, r) in super::npc::forward_rules().iter().enumerate() {
        s.push_str(&format!("-I FORWARD {} {r}\n", i + 1));
    }
    s.push_str("-A INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 6784 -m addrtype ! --src-type LOCAL -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment \"Block non-local access to Weave Net control port\" -j DROP\n");
    s.push_str(&format!("-A INPUT {}\n", super::npc::input_rule()));
    s.push_str("COMMIT\n*nat\n:WEAVE - [0:0]\n-A POSTROUTING -j WEAVE\n");
    if no_masq_local {
        s.push_str(&format!(
            "-A WEAVE -m set --match-set {NO_MASQ_LOCAL} dst -m comment --comment \"Prevent SNAT to locally running containers\" -j RETURN\n"
        ));
    }
    s.push_str(&format!("-A WEAVE -s {range} -d 224.0.0.0/4 -j RETURN\n"));
    s.push_str(&format!("-A WEAVE ! -s {range} -d {range} -j MASQUERADE\n"));
    s.push_str(&format!("-A WEAVE -s {range} ! -d {range} -j MASQUERADE\n"));
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_weaves() {
        let s = restore_input("10.32.0.0/12".parse().unwrap(), true);
        assert!(s.contains("-I FORWARD 4 -o weave -j DROP\n"));
        assert!(s.contains("-A INPUT -i weave -j WEAVE-NPC-EGRESS\n"));
        assert!(s.contains("-A WEAVE ! -s 10.32.0.0/12 -d 10.32.0.0/12 -j MASQUERADE\n"));
        assert!(s.contains("--match-set weaver-no-masq-local dst"));
    }
}

//! The iptables rules of a namespace as `iptables-save` prints them, and
//! what they do to one packet: the chains it crosses, rule by rule, with
//! jumps into user chains, RETURN and the chain's policy. A rule is judged
//! only on the matches cnilab can decide for the packet (protocol,
//! addresses, interfaces, ports, ICMP type, conntrack state, address type,
//! a random share of 0 or 1); a rule with any other match "may match", and
//! that is reported instead of guessed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

/// Every table of one namespace.
#[derive(Debug, Default, Clone)]
pub struct Ruleset {
    tables: BTreeMap<String, BTreeMap<String, Chain>>,
}

#[derive(Debug, Default, Clone)]
struct Chain {
    /// `ACCEPT` or `DROP` for a built-in chain; none for a user chain.
    policy: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The line as iptables-save prints it.
    text: String,
    matches: Vec<(bool, Match)>,
    target: Target,
}

#[derive(Debug, Clone)]
enum Match {
    Proto(String),
    Src(Ipv4Net),
    Dst(Ipv4Net),
    In(String),
    Out(String),
    Dport(Vec<(u16, u16)>),
    Sport(Vec<(u16, u16)>),
    IcmpType(String),
    State(Vec<String>),
    AddrType {
        dst: bool,
        kind: String,
    },
    Random(f64),
    /// Always true: a comment, or loading a protocol's match module.
    Nothing,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
    /// MASQUERADE (no address: the outgoing interface's) or SNAT.
    Snat(Option<Ipv4Addr>),
    Dnat(Option<Ipv4Addr>),
    /// No -j: the rule only counts packets.
    Other,
}

/// The transport header of the packet being judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proto {
    /// ICMP with its type (8 echo request, 0 echo reply).
    Icmp(u8),
    /// UDP; a port of None is unknown (VXLAN hashes the source port per
    /// flow; a reply goes to the request's source port).
    Udp { sport: Option<u16>, dport: Option<u16> },
    /// TCP, ports as for UDP.
    Tcp { sport: Option<u16>, dport: Option<u16> },
}

/// The packet as a chain sees it.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport header.
    pub proto: Proto,
    /// The interface it came in on (PREROUTING, INPUT, FORWARD).
    pub iif: Option<&'a str>,
    /// The interface it leaves by (FORWARD, OUTPUT, POSTROUTING).
    pub oif: Option<&'a str>,
    /// Whether conntrack has seen the other direction (a reply).
    pub established: bool,
    /// The namespace's own addresses, for `-m addrtype LOCAL`.
    pub local: &'a [Ipv4Addr],
}

/// What a table does to a packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the packet goes on.
    pub passes: bool,
    /// The table.
    pub table: String,
    /// The chain where the decision was taken (a user chain when a rule there decided).
    pub chain: String,
    /// The deciding rule as iptables-save prints it, or `policy DROP`.
    pub rule: String,
    /// Rules with matches cnilab cannot decide that would have changed the
    /// outcome, as `table chain: rule`.
    pub maybe: Vec<String>,
    /// A source or destination rewrite by the nat table, `(is_source, new address)`;
    /// None as the address means the outgoing interface's (MASQUERADE).
    #[serde(skip)]
    pub nat: Option<(bool, Option<Ipv4Addr>)>,
}

/// Splits one iptables-save line into words: iptables-save quotes a word
/// with spaces in double quotes and escapes `"` and `\` inside them.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped, mut any) = (false, false, false);
    for c in line.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn ports(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => p.parse().ok().map(|x| (x, x)),
        })
        .collect()
}

fn net(s: &str) -> Option<Ipv4Net> {
    s.parse().ok().or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

fn next<'a>(it: &mut impl Iterator<Item = &'a str>) -> String {
    it.next().unwrap_or("").to_string()
}

/// Options that take one value and match nothing cnilab needs to know about.
const HARMLESS: &[&str] = &["--comment"];

impl Rule {
    fn parse(line: &str) -> Option<(String, Rule)> {
        let w = words(line);
        let mut it = w.iter().map(String::as_str).peekable();
        if it.next()? != "-A" {
            return None;
        }
        let chain = it.next()?.to_string();
        let (mut matches, mut target, mut neg) = (Vec::new(), Target::Other, false);
        while let Some(opt) = it.next() {
            if opt == "!" {
                neg = true;
                continue;
            }
            let m = match opt {
                "-p" => Match::Proto(next(&mut it)),
                "-s" => net(&next(&mut it)).map_or(Match::Unknown, Match::Src),
                "-d" => net(&next(&mut it)).map_or(Match::Unknown, Match::Dst),
                "-i" => Match::In(next(&mut it)),
                "-o" => Match::Out(next(&mut it)),
                "--dport" | "--dports" | "--destination-port" => {
                    ports(&next(&mut it)).map_or(Match::Unknown, Match::Dport)
                }
                "--sport" | "--sports" | "--source-port" => ports(&next(&mut it)).map_or(Match::Unknown, Match::Sport),
                "--icmp-type" => Match::IcmpType(next(&mut it)),
                "--ctstate" | "--state" => Match::State(next(&mut it).split(',').map(str::to_string).collect()),
                "--dst-type" => Match::AddrType {
                    dst: true,
                    kind: next(&mut it),
                },
                "--src-type" => Match::AddrType {
                    dst: false,
                    kind: next(&mut it),
                },
                "--probability" => Match::Random(next(&mut it).parse().unwrap_or(0.5)),
                "-m" => match next(&mut it).as_str() {
                    "udp" | "tcp" | "icmp" | "comment" | "conntrack" | "state" | "addrtype" | "multiport"
                    | "statistic" => Match::Nothing,
                    _ => Match::Unknown,
                },
                "--mode" if it.peek() == Some(&"random") => {
                    it.next();
                    Match::Nothing
                }
                o if HARMLESS.contains(&o) => {
                    it.next();
                    Match::Nothing
                }
                "-j" | "-g" => {
                    let t = next(&mut it);
                    let goto = opt == "-g";
                    target = match t.as_str() {
                        "ACCEPT" => Target::Accept,
                        "DROP" => Target::Drop,
                        "REJECT" => Target::Reject,
                        "RETURN" => Target::Return,
                        "MASQUERADE" => Target::Snat(None),
                        "SNAT" | "DNAT" => {
                            let to = w
                                .iter()
                                .skip_while(|x| *x != "--to-source" && *x != "--to-destination")
                                .nth(1)
                                .and_then(|a| a.split([':', '-']).next()?.parse().ok());
                            if t == "SNAT" {
                                Target::Snat(to)
                            } else {
                                Target::Dnat(to)
                            }
                        }
                        c if goto => Target::Goto(c.into()),
                        // A user chain, or an extension (LOG, MARK, CT) when no chain has that name.
                        c => Target::Jump(c.into()),
                    };
                    // The target's own options (--reject-with, --to-source) follow; they match nothing.
                    break;
                }
                _ => {
                    // An option of a match cnilab does not decide: skip its value.
                    if it.peek().is_some_and(|v| !v.starts_with('-')) {
                        it.next();
                    }
                    Match::Unknown
                }
            };
            matches.push((std::mem::take(&mut neg), m));
        }
        Some((
            chain,
            Rule {
                text: line.to_string(),
                matches,
                target,
            },
        ))
    }
}

/// A match's answer: yes, no, or cannot tell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

fn iface(pattern: &str, name: Option<&str>) -> Tri {
    let Some(name) = name else { return Tri::No };
    let hit = match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    };
    if hit { Tri::Yes } else { Tri::No }
}

fn yes(b: bool) -> Tri {
    if b { Tri::Yes } else { Tri::No }
}

impl Match {
    fn test(&self, p: &Packet) -> Tri {
        let (sport, dport) = match p.proto {
            Proto::Udp { sport, dport } | Proto::Tcp { sport, dport } => (sport, dport),
            Proto::Icmp(_) => (None, None),
        };
        let in_ranges = |r: &[(u16, u16)], port: Option<u16>| match port {
            Some(x) => yes(r.iter().any(|(a, b)| (*a..=*b).contains(&x))),
            None => Tri::Maybe,
        };
        match self {
            Match::Proto(name) => yes(matches!(
                (name.as_str(), p.proto),
                ("all" | "0", _)
                    | ("icmp" | "1", Proto::Icmp(_))
                    | ("tcp" | "6", Proto::Tcp { .. })
                    | ("udp" | "17", Proto::Udp { .. })
            )),
            Match::Src(n) => yes(n.contains(&p.src)),
            Match::Dst(n) => yes(n.contains(&p.dst)),
            Match::In(i) => iface(i, p.iif),
            Match::Out(o) => iface(o, p.oif),
            Match::Dport(r) => match p.proto {
                Proto::Icmp(_) => Tri::No,
                _ => in_ranges(r, dport),
            },
            Match::Sport(r) => match p.proto {
                Proto::Icmp(_) => Tri::No,
                _ => in_ranges(r, sport),
            },
            Match::IcmpType(t) => match p.proto {
                Proto::Icmp(ty) => {
                    let want = match t.split('/').next().unwrap_or("") {
                        "any" => return Tri::Yes,
                        "echo-request" => 8,
                        "echo-reply" => 0,
                        n => match n.parse::<u8>() {
                            Ok(n) => n,
                            Err(_) => return Tri::Maybe,
                        },
                    };
                    yes(ty == want)
                }
                _ => Tri::No,
            },
            Match::State(states) => {
                let now = if p.established { "ESTABLISHED" } else { "NEW" };
                yes(states.iter().any(|s| s == now))
            }
            Match::AddrType { dst, kind } => {
                let a = if *dst { p.dst } else { p.src };
                match kind.as_str() {
                    "LOCAL" => yes(p.local.contains(&a)),
                    "UNICAST" => yes(!a.is_broadcast() && !a.is_multicast()),
                    _ => Tri::Maybe,
                }
            }
            Match::Random(pr) if *pr >= 1.0 => Tri::Yes,
            Match::Random(pr) if *pr <= 0.0 => Tri::No,
            Match::Random(_) => Tri::Maybe,
            Match::Nothing => Tri::Yes,
            Match::Unknown => Tri::Maybe,
        }
    }
}

impl Rule {
    fn test(&self, p: &Packet) -> Tri {
        let mut any_maybe = false;
        for (neg, m) in &self.matches {
            match (m.test(p), neg) {
                (Tri::No, false) | (Tri::Yes, true) => return Tri::No,
                (Tri::Maybe, _) => any_maybe = true,
                _ => {}
            }
        }
        if any_maybe { Tri::Maybe } else { Tri::Yes }
    }
}

/// The deepest chain of jumps followed, as the kernel's own limit keeps loops out.
const MAX_DEPTH: usize = 32;

impl Ruleset {
    /// Reads iptables-save's output.
    pub fn parse(text: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        let mut table = String::new();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(c) = l.strip_prefix(':') {
                let mut w = c.split_whitespace();
                let name = w.next().unwrap_or("").to_string();
                let policy = w.next().filter(|p| *p != "-").map(str::to_string);
                rs.tables
                    .entry(table.clone())
                    .or_default()
                    .entry(name)
                    .or_default()
                    .policy = policy;
            } else if let Some((chain, rule)) = Rule::parse(l) {
                rs.tables
                    .entry(table.clone())
                    .or_default()
                    .entry(chain)
                    .or_default()
                    .rules
                    .push(rule);
            }
        }
        rs
    }

    /// Whether there is no rule and every policy accepts: nothing to show.
    pub fn is_open(&self) -> bool {
        self.tables
            .values()
            .flat_map(|t| t.values())
            .all(|c| c.rules.is_empty() && c.policy.as_deref() != Some("DROP"))
    }

    /// Runs `p` through built-in `chain` of `table`; None when the table or
    /// chain does not exist here (the packet passes).
    pub fn judge(&self, table: &str, chain: &str, p: &Packet) -> Option<Verdict> {
        let t = self.tables.get(table)?;
        let c = t.get(chain)?;
        let mut v = Verdict {
            passes: true,
            table: table.to_string(),
            chain: chain.to_string(),
            rule: String::new(),
            maybe: Vec::new(),
            nat: None,
        };
        if !self.walk(t, table, chain, p, &mut v, 0) {
            let policy = c.policy.clone().unwrap_or_else(|| "ACCEPT".into());
            v.passes = policy != "DROP";
            v.chain = chain.to_string();
            v.rule = format!("policy {policy}");
        }
        Some(v)
    }

    /// Walks one chain; true when a rule decided (then `v` says how), false
    /// when the packet fell off its end or met RETURN.
    fn walk(
        &self,
        t: &BTreeMap<String, Chain>,
        table: &str,
        chain: &str,
        p: &Packet,
        v: &mut Verdict,
        depth: usize,
    ) -> bool {
        let Some(c) = t.get(chain).filter(|_| depth < MAX_DEPTH) else {
            return false;
        };
        for r in &c.rules {
            let hit = r.test(p);
            let consequential = match &r.target {
                Target::Other => false,
                Target::Jump(sub) => t.contains_key(sub),
                _ => true,
            };
            if hit == Tri::Maybe && consequential {
                v.maybe.push(format!("{table} {chain}: {}", r.text));
                continue;
            }
            if hit != Tri::Yes {
                continue;
            }
            let decide = |v: &mut Verdict, passes: bool| {
                v.passes = passes;
                v.chain = chain.to_string();
                v.rule = r.text.clone();
                true
            };
            match &r.target {
                Target::Accept => return decide(v, true),
                Target::Drop | Target::Reject => return decide(v, false),
                Target::Snat(a) => {
                    v.nat = Some((true, *a));
                    return decide(v, true);
                }
                Target::Dnat(a) => {
                    v.nat = Some((false, *a));
                    return decide(v, true);
                }
                Target::Return => return false,
                Target::Jump(sub) => {
                    if self.walk(t, table, sub, p, v, depth + 1) {
                        return true;
                    }
                }
                Target::Goto(sub) => return self.walk(t, table, sub, p, v, depth + 1),
                Target::Other => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -i eth0 -p udp -m udp --dport 8472 -m comment --comment "cnilab fault f1" -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -s 10.244.0.0/16 -o cni0 -j ACCEPT
-A FORWARD -m owner --uid-owner 0 -j ACCEPT
-A DOCKER-USER -d 10.99.0.0/16 -j REJECT --reject-with icmp-port-unreachable
-A DOCKER-USER -j RETURN
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:CNI-1 - [0:0]
-A POSTROUTING -s 10.244.1.2/32 -m comment --comment "name: \"cbr0\" id: \"x\"" -j CNI-1
-A CNI-1 -d 10.244.1.0/24 -m comment --comment "name: \"cbr0\"" -j ACCEPT
-A CNI-1 ! -d 224.0.0.0/4 -j MASQUERADE
COMMIT
"#;

    fn pkt<'a>(src: &str, dst: &str, proto: Proto, iif: Option<&'a str>, oif: Option<&'a str>) -> Packet<'a> {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            iif,
            oif,
            established: false,
            local: &[],
        }
    }

    #[test]
    fn words_keep_quoted_comments_whole() {
        assert_eq!(
            words(r#"-A X -m comment --comment "name: \"cbr0\" id" -j Y"#),
            ["-A", "X", "-m", "comment", "--comment", "name: \"cbr0\" id", "-j", "Y"]
        );
    }

    #[test]
    fn forward_policy_drop_names_the_policy_and_established_replies_pass() {
        let rs = Ruleset::parse(SAVE);
        let mut p = pkt("10.244.1.2", "172.20.0.1", Proto::Icmp(8), Some("cni0"), Some("eth0"));
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(!v.passes);
        assert_eq!((v.chain.as_str(), v.rule.as_str()), ("FORWARD", "policy DROP"));
        // The owner match cannot be decided for a forwarded packet: reported, not guessed.
        assert_eq!(v.maybe, ["filter FORWARD: -A FORWARD -m owner --uid-owner 0 -j ACCEPT"]);
        p.established = true;
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(v.passes);
        assert!(v.rule.contains("ESTABLISHED"), "{v:?}");
        // Into the pod network: the -o cni0 rule accepts it.
        let p = pkt(
            "10.244.2.2",
            "10.244.1.2",
            Proto::Icmp(8),
            Some("flannel.1"),
            Some("cni0"),
        );
        assert!(rs.judge("filter", "FORWARD", &p).unwrap().passes);
    }

    #[test]
    fn a_user_chain_rejects_and_its_return_goes_back() {
        let rs = Ruleset::parse(SAVE);
        let p = pkt("10.244.1.2", "10.99.1.1", Proto::Icmp(8), Some("cni0"), Some("eth0"));
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(!v.passes);
        assert_eq!(v.chain, "DOCKER-USER");
        assert!(v.rule.ends_with("-j REJECT --reject-with icmp-port-unreachable"));
    }

    #[test]
    fn udp_port_and_interface_matches() {
        let rs = Ruleset::parse(SAVE);
        let udp = Proto::Udp {
            sport: None,
            dport: Some(8472),
        };
        let v = rs.judge(
            "raw",
            "PREROUTING",
            &pkt("172.20.0.3", "172.20.0.2", udp, Some("eth0"), None),
        );
        assert!(!v.unwrap().passes);
        let other = pkt("172.20.0.3", "172.20.0.2", udp, Some("eth1"), None);
        assert!(rs.judge("raw", "PREROUTING", &other).unwrap().passes);
        let icmp = pkt("172.20.0.3", "172.20.0.2", Proto::Icmp(8), Some("eth0"), None);
        assert!(rs.judge("raw", "PREROUTING", &icmp).unwrap().passes);
        assert!(rs.judge("mangle", "PREROUTING", &icmp).is_none());
    }

    #[test]
    fn masquerade_outside_the_pod_network_only() {
        let rs = Ruleset::parse(SAVE);
        let out = pkt("10.244.1.2", "172.20.0.1", Proto::Icmp(8), None, Some("eth0"));
        let v = rs.judge("nat", "POSTROUTING", &out).unwrap();
        assert_eq!(v.nat, Some((true, None)));
        let inside = pkt("10.244.1.2", "10.244.1.3", Proto::Icmp(8), None, Some("cni0"));
        assert_eq!(rs.judge("nat", "POSTROUTING", &inside).unwrap().nat, None);
    }

    #[test]
    fn negation_goto_and_local_addresses() {
        let rs = Ruleset::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -g DOCKER\n-A PREROUTING -j DROP\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\nCOMMIT\n",
        );
        let local = ["192.168.1.5".parse().unwrap()];
        let tcp = Proto::Tcp {
            sport: None,
            dport: Some(8080),
        };
        let mut p = pkt("10.0.0.9", "192.168.1.5", tcp, Some("eth0"), None);
        p.local = &local;
        let v = rs.judge("nat", "PREROUTING", &p).unwrap();
        assert_eq!(v.nat, Some((false, Some("172.17.0.2".parse().unwrap()))));
        assert_eq!(v.chain, "DOCKER");
        // From docker0 the DNAT rule does not match, and a goto does not come back: the policy decides.
        p.iif = Some("docker0");
        let v = rs.judge("nat", "PREROUTING", &p).unwrap();
        assert_eq!((v.rule.as_str(), v.nat), ("policy ACCEPT", None));
        // Not a local address: the DROP after the goto.
        let p = pkt("10.0.0.9", "8.8.8.8", tcp, Some("eth0"), None);
        assert!(!rs.judge("nat", "PREROUTING", &p).unwrap().passes);
    }

    #[test]
    fn certain_and_random_shares() {
        let rs = Ruleset::parse(
            "*mangle\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -m statistic --mode random --probability 1.00000000000 -j DROP\n-A POSTROUTING -o eth1 -m statistic --mode random --probability 0.30000000000 -j DROP\nCOMMIT\n",
        );
        let p = pkt("1.1.1.1", "2.2.2.2", Proto::Icmp(8), None, Some("eth0"));
        assert!(!rs.judge("mangle", "POSTROUTING", &p).unwrap().passes);
        let p = pkt("1.1.1.1", "2.2.2.2", Proto::Icmp(8), None, Some("eth1"));
        let v = rs.judge("mangle", "POSTROUTING", &p).unwrap();
        assert!(v.passes);
        assert_eq!(v.maybe.len(), 1);
    }
}

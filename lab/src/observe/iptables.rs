//! The iptables rules of a namespace as `iptables-save` prints them, and
//! what they do to one packet: the chains it crosses, rule by rule, with
//! jumps into user chains, RETURN and the chain's policy. A rule is judged
//! only on the matches cnilab can decide for the packet (protocol,
//! addresses, interfaces, ports, ICMP type, conntrack state, address type,
//! a random share of 0 or 1, the packet's mark, membership of an IP set
//! whose contents are known); a rule with any other match "may match", and
//! that is reported instead of guessed. `-j MARK --set-xmark` changes the
//! mark the walk carries (from 0 at the table's built-in chain), and the
//! walk records every rule that acted on the packet: the path to the
//! verdict.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::observe::ipset::{Sets, Side};

/// Every table of one namespace.
#[derive(Debug, Default, Clone)]
pub struct Ruleset {
    tables: BTreeMap<String, BTreeMap<String, Chain>>,
    /// The namespace's IP sets; None when not known (set matches "may match").
    sets: Option<Sets>,
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
    /// `-m multiport --ports`: the source or the destination port.
    AnyPort(Vec<(u16, u16)>),
    /// `-m mark --mark value/mask`.
    Mark {
        value: u32,
        mask: u32,
    },
    /// `-m set --match-set name flags`, a flag true for `src`.
    Set {
        name: String,
        flags: Vec<bool>,
    },
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
    /// `-j MARK --set-xmark value/mask`: mark = (mark & !mask) ^ value, then on to the next rule.
    Mark {
        value: u32,
        mask: u32,
    },
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
    /// Every rule that acted on the packet on its way to the decision, in
    /// order: jumps and gotos into chains with rules, MARK, RETURN, and the
    /// deciding rule itself (none for a policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<Step>,
    /// The chains the packet entered, in order: the built-in chain, each
    /// chain with rules a jump or goto took it into, and each chain it came
    /// back to after a RETURN or the end of a chain
    /// (`FORWARD`, `cali-FORWARD`, ..., `cali-FORWARD`, `FORWARD`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chains: Vec<String>,
    /// The packet's mark when the decision was taken.
    pub mark: u32,
    /// Rules with matches cnilab cannot decide that would have changed the
    /// outcome, as `table chain: rule`.
    pub maybe: Vec<String>,
    /// A source or destination rewrite by the nat table, `(is_source, new address)`;
    /// None as the address means the outgoing interface's (MASQUERADE).
    #[serde(skip)]
    pub nat: Option<(bool, Option<Ipv4Addr>)>,
}

/// One rule that acted on the packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The chain the rule is in.
    pub chain: String,
    /// The rule as iptables-save prints it.
    pub rule: String,
    /// The packet's mark after it.
    pub mark: u32,
    /// Whether the rule sets the mark (`-j MARK`).
    pub marks: bool,
}

impl Verdict {
    /// Whether the way to the verdict went through a rule that sets the
    /// mark: policy engines (felix) decide by marks, and their path is worth
    /// showing.
    pub fn by_marks(&self) -> bool {
        self.path.iter().any(|s| s.marks)
    }
}

/// `0x10000/0x10000`, `0x10000` (mask all ones), or decimal.
fn mark_pair(s: &str) -> Option<(u32, u32)> {
    let num = |x: &str| match x.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => x.parse().ok(),
    };
    match s.split_once('/') {
        Some((v, m)) => Some((num(v)?, num(m)?)),
        None => Some((num(s)?, u32::MAX)),
    }
}

/// The target options of `-j MARK`: `--set-xmark` as iptables-save prints
/// it, or `--set-mark` (which also sets the value's bits); None for others.
fn mark_target(w: &[String]) -> Option<Target> {
    let at = w.iter().position(|x| x == "--set-xmark" || x == "--set-mark")?;
    let (value, mask) = mark_pair(w.get(at + 1)?)?;
    let mask = if w[at] == "--set-mark" { mask | value } else { mask };
    Some(Target::Mark { value, mask })
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
        // The match module the options that follow belong to (`--mark` is both mark's and connmark's).
        let mut module = String::new();
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
                "--ports" if module == "multiport" => ports(&next(&mut it)).map_or(Match::Unknown, Match::AnyPort),
                "--mark" if module == "mark" => {
                    mark_pair(&next(&mut it)).map_or(Match::Unknown, |(value, mask)| Match::Mark { value, mask })
                }
                "--match-set" if module == "set" => {
                    let name = next(&mut it);
                    let flags = next(&mut it).split(',').map(|f| f == "src").collect();
                    Match::Set { name, flags }
                }
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
                "-m" => {
                    module = next(&mut it);
                    match module.as_str() {
                        "udp" | "tcp" | "icmp" | "comment" | "conntrack" | "state" | "addrtype" | "multiport"
                        | "statistic" | "mark" | "set" => Match::Nothing,
                        _ => Match::Unknown,
                    }
                }
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
                        "MARK" if !goto => mark_target(&w).unwrap_or(Target::Jump(t.clone())),
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

/// What the walk knows beside the packet: its mark, and the IP sets.
#[derive(Debug, Clone, Copy)]
struct Look<'a> {
    mark: u32,
    /// Mark bits a rule cnilab could not decide may have changed.
    unsure: u32,
    sets: Option<&'a Sets>,
}

/// The side of the packet a set flag names, as the set looks it up.
fn side(p: &Packet, src: bool) -> Side {
    let (proto, port) = match p.proto {
        Proto::Icmp(ty) => (1, Some(u16::from(ty) << 8)),
        Proto::Tcp { sport, dport } => (6, if src { sport } else { dport }),
        Proto::Udp { sport, dport } => (17, if src { sport } else { dport }),
    };
    Side {
        addr: if src { p.src } else { p.dst },
        proto,
        port,
    }
}

impl Match {
    fn test(&self, p: &Packet, look: &Look) -> Tri {
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
            Match::AnyPort(r) => match (in_ranges(r, sport), in_ranges(r, dport)) {
                _ if matches!(p.proto, Proto::Icmp(_)) => Tri::No,
                (Tri::Yes, _) | (_, Tri::Yes) => Tri::Yes,
                (Tri::No, Tri::No) => Tri::No,
                _ => Tri::Maybe,
            },
            Match::Mark { value, mask } => {
                if (look.mark ^ value) & mask & !look.unsure != 0 {
                    Tri::No
                } else if mask & look.unsure != 0 {
                    Tri::Maybe
                } else {
                    Tri::Yes
                }
            }
            Match::Set { name, flags } => {
                let Some(sets) = look.sets else { return Tri::Maybe };
                let sides: Vec<Side> = flags.iter().map(|src| side(p, *src)).collect();
                sets.test(name, &sides).map_or(Tri::Maybe, yes)
            }
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
    fn test(&self, p: &Packet, look: &Look) -> Tri {
        let mut any_maybe = false;
        for (neg, m) in &self.matches {
            match (m.test(p, look), neg) {
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
    /// Reads iptables-save's output. The IP sets are not known: a set
    /// match "may match".
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

    /// Reads iptables-save's output and `ipset save`'s, so that
    /// `-m set --match-set` is judged against the sets' members (a set not
    /// listed still "may match").
    pub fn parse_with_sets(text: &str, ipsets: &str) -> Ruleset {
        Ruleset {
            sets: Some(Sets::parse(ipsets)),
            ..Ruleset::parse(text)
        }
    }

    /// Whether there is no rule and every policy accepts: nothing to show.
    pub fn is_open(&self) -> bool {
        self.tables
            .values()
            .flat_map(|t| t.values())
            .all(|c| c.rules.is_empty() && c.policy.as_deref() != Some("DROP"))
    }

    /// The mark bits that rules of the other built-in chains (other hooks
    /// and tables, which a packet may cross before this one) may set.
    fn marks_elsewhere(&self, table: &str, chain: &str) -> u32 {
        let mut bits = 0;
        for (tname, t) in &self.tables {
            for (cname, c) in t {
                if c.policy.is_some() && !(tname == table && cname == chain) {
                    bits |= marks_set(t, cname, &mut Vec::new());
                }
            }
        }
        bits
    }

    /// Runs `p` through built-in `chain` of `table`; None when the table or
    /// chain does not exist here (the packet passes). A packet enters a
    /// namespace with mark 0 (crossing namespaces clears it); the bits
    /// rules of other hooks may have set on the way are unknown, so a
    /// `--mark` test on them "may match".
    pub fn judge(&self, table: &str, chain: &str, p: &Packet) -> Option<Verdict> {
        let t = self.tables.get(table)?;
        let c = t.get(chain)?;
        let mut w = Walk {
            t,
            table,
            p,
            look: Look {
                mark: 0,
                unsure: self.marks_elsewhere(table, chain),
                sets: self.sets.as_ref(),
            },
            v: Verdict {
                passes: true,
                table: table.to_string(),
                chain: chain.to_string(),
                rule: String::new(),
                path: Vec::new(),
                chains: Vec::new(),
                mark: 0,
                maybe: Vec::new(),
                nat: None,
            },
        };
        if !w.chain(chain, 0) {
            let policy = c.policy.clone().unwrap_or_else(|| "ACCEPT".into());
            w.v.passes = policy != "DROP";
            w.v.chain = chain.to_string();
            w.v.rule = format!("policy {policy}");
        }
        w.v.mark = w.look.mark;
        Some(w.v)
    }
}

/// The mark bits the rules of `chain`, and of the chains it jumps or goes
/// to, may set.
fn marks_set<'c>(t: &'c BTreeMap<String, Chain>, chain: &'c str, seen: &mut Vec<&'c str>) -> u32 {
    if seen.contains(&chain) {
        return 0;
    }
    seen.push(chain);
    let Some(c) = t.get(chain) else { return 0 };
    c.rules.iter().fold(0, |bits, r| {
        bits | match &r.target {
            Target::Mark { mask, .. } => *mask,
            Target::Jump(sub) | Target::Goto(sub) => marks_set(t, sub, seen),
            _ => 0,
        }
    })
}

/// One packet's way through one table.
struct Walk<'a> {
    t: &'a BTreeMap<String, Chain>,
    table: &'a str,
    p: &'a Packet<'a>,
    look: Look<'a>,
    v: Verdict,
}

impl Walk<'_> {
    /// Walks one chain; true when a rule decided (then `v` says how), false
    /// when the packet fell off its end or met RETURN.
    fn chain(&mut self, chain: &str, depth: usize) -> bool {
        let t = self.t;
        let Some(c) = t.get(chain).filter(|_| depth < MAX_DEPTH) else {
            return false;
        };
        self.enter(chain, c);
        for r in &c.rules {
            let hit = r.test(self.p, &self.look);
            let consequential = match &r.target {
                Target::Other => false,
                Target::Jump(sub) => t.contains_key(sub),
                _ => true,
            };
            if hit == Tri::Maybe && consequential {
                self.v.maybe.push(format!("{} {chain}: {}", self.table, r.text));
                // Taken as not matching; the mark bits it (or the chains it
                // would enter) could set are no longer known.
                self.look.unsure |= match &r.target {
                    Target::Mark { mask, .. } => *mask,
                    Target::Jump(sub) | Target::Goto(sub) => marks_set(t, sub, &mut Vec::new()),
                    _ => 0,
                };
                continue;
            }
            if hit != Tri::Yes {
                continue;
            }
            if let Some(decided) = self.fire(chain, r, depth) {
                return decided;
            }
        }
        false
    }

    /// Notes that the packet is in `chain` now, unless it has no rule (nothing happens there).
    fn enter(&mut self, name: &str, c: &Chain) {
        if !c.rules.is_empty() && self.v.chains.last().is_none_or(|l| l != name) {
            self.v.chains.push(name.to_string());
        }
    }

    /// Applies a rule that matches: Some(whether a rule decided) when the
    /// chain ends here, None when the walk goes on with its next rule.
    fn fire(&mut self, chain: &str, r: &Rule, depth: usize) -> Option<bool> {
        if let Target::Mark { value, mask } = r.target {
            self.look.mark = (self.look.mark & !mask) ^ value;
            self.look.unsure &= !mask;
        }
        let shown = match &r.target {
            Target::Other => false,
            // A jump into an empty chain (or to an extension such as LOG) changes nothing.
            Target::Jump(sub) => self.t.get(sub).is_some_and(|c| !c.rules.is_empty()),
            _ => true,
        };
        if shown {
            self.v.path.push(Step {
                chain: chain.to_string(),
                rule: r.text.clone(),
                mark: self.look.mark,
                marks: matches!(r.target, Target::Mark { .. }),
            });
        }
        let mut decide = |passes: bool, nat: Option<(bool, Option<Ipv4Addr>)>| {
            self.v.passes = passes;
            self.v.chain = chain.to_string();
            self.v.rule = r.text.clone();
            self.v.nat = nat;
            Some(true)
        };
        match &r.target {
            Target::Accept => decide(true, None),
            Target::Drop | Target::Reject => decide(false, None),
            Target::Snat(a) => decide(true, Some((true, *a))),
            Target::Dnat(a) => decide(true, Some((false, *a))),
            Target::Return => Some(false),
            Target::Jump(sub) => {
                if self.chain(sub, depth + 1) {
                    return Some(true);
                }
                // Back here, after a RETURN or the end of the chain.
                self.enter(chain, &self.t[chain]);
                None
            }
            // A goto does not come back here: a RETURN there returns to this chain's caller.
            Target::Goto(sub) => Some(self.chain(sub, depth + 1)),
            Target::Mark { .. } | Target::Other => None,
        }
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

    /// A node as felix programs it (shape of iptables-save on a calico
    /// node): pod x/a (10.244.1.2) on cali456b416f2bf has an ingress policy
    /// allowing TCP 80 from the pods of set cali40s:… (10.244.1.3) and the
    /// named port `http-alt` (its TCP 81); pod y/b (10.244.1.3) on
    /// cali665e9bb24dc has no policy.
    const FELIX: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
:cali-FORWARD - [0:0]
:cali-cidr-block - [0:0]
:cali-from-hep-forward - [0:0]
:cali-from-wl-dispatch - [0:0]
:cali-fw-cali456b416f2bf - [0:0]
:cali-fw-cali665e9bb24dc - [0:0]
:cali-pi-_gZd-p_pOD9burOpA7Sq - [0:0]
:cali-pri-kns.x - [0:0]
:cali-pri-kns.y - [0:0]
:cali-pro-kns.x - [0:0]
:cali-pro-kns.y - [0:0]
:cali-to-hep-forward - [0:0]
:cali-to-wl-dispatch - [0:0]
:cali-tw-cali456b416f2bf - [0:0]
:cali-tw-cali665e9bb24dc - [0:0]
-A FORWARD -j cali-FORWARD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FORWARD -m comment --comment "Policy explicitly accepted packet." -m mark --mark 0x10000/0x10000 -j ACCEPT
-A FORWARD -j MARK --set-xmark 0x10000/0x10000
-A cali-FORWARD -j MARK --set-xmark 0x0/0x1a0000
-A cali-FORWARD -m mark --mark 0x0/0x10000 -j cali-from-hep-forward
-A cali-FORWARD -i cali+ -j cali-from-wl-dispatch
-A cali-FORWARD -o cali+ -j cali-to-wl-dispatch
-A cali-FORWARD -j cali-to-hep-forward
-A cali-FORWARD -j cali-cidr-block
-A cali-from-wl-dispatch -i cali456b416f2bf -g cali-fw-cali456b416f2bf
-A cali-from-wl-dispatch -i cali665e9bb24dc -g cali-fw-cali665e9bb24dc
-A cali-from-wl-dispatch -m comment --comment "Unknown interface" -j DROP
-A cali-fw-cali456b416f2bf -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-fw-cali456b416f2bf -m conntrack --ctstate INVALID -j DROP
-A cali-fw-cali456b416f2bf -j MARK --set-xmark 0x0/0x30000
-A cali-fw-cali456b416f2bf -p udp -m comment --comment "Drop VXLAN encapped packets originating in workloads" -m multiport --dports 4789 -j DROP
-A cali-fw-cali456b416f2bf -p ipencap -m comment --comment "Drop IPinIP encapped packets originating in workloads" -j DROP
-A cali-fw-cali456b416f2bf -j cali-pro-kns.x
-A cali-fw-cali456b416f2bf -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-fw-cali456b416f2bf -m comment --comment "Drop if no profiles matched" -j DROP
-A cali-fw-cali665e9bb24dc -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-fw-cali665e9bb24dc -m conntrack --ctstate INVALID -j DROP
-A cali-fw-cali665e9bb24dc -j MARK --set-xmark 0x0/0x30000
-A cali-fw-cali665e9bb24dc -p udp -m comment --comment "Drop VXLAN encapped packets originating in workloads" -m multiport --dports 4789 -j DROP
-A cali-fw-cali665e9bb24dc -p ipencap -m comment --comment "Drop IPinIP encapped packets originating in workloads" -j DROP
-A cali-fw-cali665e9bb24dc -j cali-pro-kns.y
-A cali-fw-cali665e9bb24dc -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-fw-cali665e9bb24dc -m comment --comment "Drop if no profiles matched" -j DROP
-A cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp -m comment --comment "Policy x/knp.default.allow-b ingress" -m set --match-set cali40s:lgQ0i7EXRxuqdfcSKmyEYAU src -m multiport --dports 80 -j MARK --set-xmark 0x10000/0x10000
-A cali-pi-_gZd-p_pOD9burOpA7Sq -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-pi-_gZd-p_pOD9burOpA7Sq -p tcp -m set --match-set cali40n:UKQArH4uDYNCIrbcNCRpdTW dst,dst -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.x -m comment --comment "Profile kns.x ingress" -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.y -m comment --comment "Profile kns.y ingress" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.x -m comment --comment "Profile kns.x egress" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.y -m comment --comment "Profile kns.y egress" -j MARK --set-xmark 0x10000/0x10000
-A cali-to-wl-dispatch -o cali456b416f2bf -g cali-tw-cali456b416f2bf
-A cali-to-wl-dispatch -o cali665e9bb24dc -g cali-tw-cali665e9bb24dc
-A cali-to-wl-dispatch -m comment --comment "Unknown interface" -j DROP
-A cali-tw-cali456b416f2bf -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-tw-cali456b416f2bf -m conntrack --ctstate INVALID -j DROP
-A cali-tw-cali456b416f2bf -j MARK --set-xmark 0x0/0x30000
-A cali-tw-cali456b416f2bf -m comment --comment "Start of tier default" -j MARK --set-xmark 0x0/0x20000
-A cali-tw-cali456b416f2bf -m mark --mark 0x0/0x20000 -j cali-pi-_gZd-p_pOD9burOpA7Sq
-A cali-tw-cali456b416f2bf -m comment --comment "Return if policy accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cali456b416f2bf -m comment --comment "End of tier default. Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
-A cali-tw-cali456b416f2bf -j cali-pri-kns.x
-A cali-tw-cali456b416f2bf -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cali456b416f2bf -m comment --comment "Drop if no profiles matched" -j DROP
-A cali-tw-cali665e9bb24dc -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-tw-cali665e9bb24dc -m conntrack --ctstate INVALID -j DROP
-A cali-tw-cali665e9bb24dc -j MARK --set-xmark 0x0/0x30000
-A cali-tw-cali665e9bb24dc -j cali-pri-kns.y
-A cali-tw-cali665e9bb24dc -m comment --comment "Return if profile accepted" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-cali665e9bb24dc -m comment --comment "Drop if no profiles matched" -j DROP
COMMIT
"#;

    const FELIX_SETS: &str = "create cali40s:lgQ0i7EXRxuqdfcSKmyEYAU hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x4f1a2b3c
add cali40s:lgQ0i7EXRxuqdfcSKmyEYAU 10.244.1.3
create cali40n:UKQArH4uDYNCIrbcNCRpdTW hash:ip,port family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x5e6f7a8b
add cali40n:UKQArH4uDYNCIrbcNCRpdTW 10.244.1.2,tcp:81
";

    const TO_A: &str = "cali456b416f2bf";
    const TO_B: &str = "cali665e9bb24dc";

    fn tcp(dport: u16) -> Proto {
        Proto::Tcp {
            sport: None,
            dport: Some(dport),
        }
    }

    /// From a pod on another node (10.244.2.5, in by the tunnel) to x/a.
    fn from_remote<'a>(proto: Proto) -> Packet<'a> {
        pkt("10.244.2.5", "10.244.1.2", proto, Some("vxlan.calico"), Some(TO_A))
    }

    #[test]
    fn felix_drops_a_pair_no_policy_allows_in_the_endpoint_chain() {
        let rs = Ruleset::parse_with_sets(FELIX, FELIX_SETS);
        let v = rs.judge("filter", "FORWARD", &from_remote(tcp(80))).unwrap();
        assert!(!v.passes);
        assert_eq!(
            (v.table.as_str(), v.chain.as_str()),
            ("filter", "cali-tw-cali456b416f2bf")
        );
        assert_eq!(
            v.rule,
            "-A cali-tw-cali456b416f2bf -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP"
        );
        assert!(v.maybe.is_empty(), "{:?}", v.maybe);
        assert!(v.by_marks());
        // It went through the policy chain, where nothing marked it.
        assert_eq!(
            v.chains,
            [
                "FORWARD",
                "cali-FORWARD",
                "cali-to-wl-dispatch",
                "cali-tw-cali456b416f2bf",
                "cali-pi-_gZd-p_pOD9burOpA7Sq",
                "cali-tw-cali456b416f2bf"
            ]
        );
        assert!(
            v.path
                .iter()
                .any(|s| s.rule.ends_with("-j cali-pi-_gZd-p_pOD9burOpA7Sq"))
        );
        assert_eq!(v.mark, 0);
    }

    #[test]
    fn felix_accepts_an_allowed_pair_by_the_policy_mark() {
        let rs = Ruleset::parse_with_sets(FELIX, FELIX_SETS);
        let p = pkt("10.244.1.3", "10.244.1.2", tcp(80), Some(TO_B), Some(TO_A));
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(v.passes, "{v:?}");
        assert_eq!(v.chain, "FORWARD");
        assert!(v.rule.contains("Policy explicitly accepted packet."), "{}", v.rule);
        assert_eq!(v.mark, 0x10000);
        assert!(v.maybe.is_empty(), "{:?}", v.maybe);
        // Egress of y/b (its profile accepts, the goto'd chain's RETURN goes back to
        // cali-FORWARD), then ingress of x/a, where the policy's rule marks it.
        assert_eq!(
            v.chains,
            [
                "FORWARD",
                "cali-FORWARD",
                "cali-from-wl-dispatch",
                "cali-fw-cali665e9bb24dc",
                "cali-pro-kns.y",
                "cali-fw-cali665e9bb24dc",
                "cali-FORWARD",
                "cali-to-wl-dispatch",
                "cali-tw-cali456b416f2bf",
                "cali-pi-_gZd-p_pOD9burOpA7Sq",
                "cali-tw-cali456b416f2bf",
                "cali-FORWARD",
                "FORWARD"
            ]
        );
        let at = |chain: &str, end: &str| {
            v.path
                .iter()
                .position(|s| s.chain == chain && s.rule.ends_with(end))
                .unwrap_or_else(|| panic!("{chain} ... {end} not in {:#?}", v.path))
        };
        let marked = at(
            "cali-pi-_gZd-p_pOD9burOpA7Sq",
            "--dports 80 -j MARK --set-xmark 0x10000/0x10000",
        );
        assert_eq!(v.path[marked].mark, 0x10000);
        assert!(v.path[marked].marks);
        let back = at(
            "cali-pi-_gZd-p_pOD9burOpA7Sq",
            "-m mark --mark 0x10000/0x10000 -j RETURN",
        );
        let returned = at("cali-tw-cali456b416f2bf", "-j RETURN");
        let accepted = at("FORWARD", "-j ACCEPT");
        assert!(marked < back && back < returned && returned < accepted);
        assert_eq!(accepted, v.path.len() - 1);
        // Jumps into empty chains changed nothing and are not on the path.
        assert!(
            !v.path
                .iter()
                .any(|s| s.rule.contains("hep-forward") || s.rule.contains("cidr-block"))
        );
    }

    #[test]
    fn felix_named_port_sets_match_address_protocol_and_port() {
        let rs = Ruleset::parse_with_sets(FELIX, FELIX_SETS);
        // 81 is x/a's named port: the dst,dst set holds 10.244.1.2,tcp:81.
        let v = rs.judge("filter", "FORWARD", &from_remote(tcp(81))).unwrap();
        assert!(v.passes, "{v:?}");
        assert!(v.path.iter().any(|s| s.rule.contains("dst,dst -j MARK")));
        // Not for UDP 81, not for TCP 82, not for ICMP.
        let udp = Proto::Udp {
            sport: None,
            dport: Some(81),
        };
        for proto in [udp, tcp(82), Proto::Icmp(8)] {
            let v = rs.judge("filter", "FORWARD", &from_remote(proto)).unwrap();
            assert!(!v.passes, "{proto:?}: {v:?}");
            assert!(v.rule.contains("Drop if no policies passed packet"));
        }
        // Negated: ! --match-set.
        let neg = Ruleset::parse_with_sets(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p tcp -m set ! --match-set cali40n:UKQArH4uDYNCIrbcNCRpdTW dst,dst -j DROP\nCOMMIT\n",
            FELIX_SETS,
        );
        assert!(neg.judge("filter", "FORWARD", &from_remote(tcp(81))).unwrap().passes);
        assert!(!neg.judge("filter", "FORWARD", &from_remote(tcp(82))).unwrap().passes);
    }

    #[test]
    fn felix_lets_established_replies_pass_and_drops_encapsulation_from_pods() {
        let rs = Ruleset::parse_with_sets(FELIX, FELIX_SETS);
        // The reply of x/a to the remote pod (whose request x/a's policy does not allow: it
        // was never sent, but conntrack decides first).
        let mut p = pkt("10.244.1.2", "10.244.2.5", tcp(80), Some(TO_A), Some("vxlan.calico"));
        p.established = true;
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(v.passes);
        assert_eq!(v.chain, "cali-fw-cali456b416f2bf");
        assert!(v.rule.ends_with("--ctstate RELATED,ESTABLISHED -j ACCEPT"));
        // Into x/a, established: accepted before any policy.
        let mut p = from_remote(tcp(80));
        p.established = true;
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        assert!(v.passes);
        assert_eq!(v.chain, "cali-tw-cali456b416f2bf");
        // A pod sending VXLAN is dropped; -p ipencap never matches UDP, TCP or ICMP.
        let vx = Proto::Udp {
            sport: None,
            dport: Some(4789),
        };
        let v = rs
            .judge(
                "filter",
                "FORWARD",
                &pkt("10.244.1.3", "10.244.2.5", vx, Some(TO_B), Some("eth0")),
            )
            .unwrap();
        assert!(!v.passes);
        assert!(v.rule.contains("Drop VXLAN encapped packets"));
        let v = rs
            .judge(
                "filter",
                "FORWARD",
                &pkt("10.244.1.3", "10.244.2.5", tcp(80), Some(TO_B), Some("eth0")),
            )
            .unwrap();
        assert!(v.passes, "{v:?}");
        assert_eq!(v.mark, 0x10000);
    }

    #[test]
    fn without_sets_a_set_match_may_match_and_so_do_the_marks_it_would_set() {
        let rs = Ruleset::parse(FELIX);
        let p = pkt("10.244.1.3", "10.244.1.2", tcp(80), Some(TO_B), Some(TO_A));
        let v = rs.judge("filter", "FORWARD", &p).unwrap();
        // Taken as not matching, and said: the set rules, and the RETURNs that test the bit they set.
        assert!(!v.passes);
        assert_eq!(v.maybe.len(), 4, "{:#?}", v.maybe);
        assert!(v.maybe[0].contains("cali40s:lgQ0i7EXRxuqdfcSKmyEYAU src"));
        assert!(v.maybe[1].ends_with("-m mark --mark 0x10000/0x10000 -j RETURN"));
        assert!(v.maybe[2].contains("dst,dst"));
        assert!(v.maybe[3].contains("Return if policy accepted"));
        // A set the dump does not list cannot be told either.
        let rs = Ruleset::parse_with_sets(FELIX, "");
        assert_eq!(rs.judge("filter", "FORWARD", &p).unwrap().maybe.len(), 4);
    }

    #[test]
    fn marks_set_xmark_set_mark_and_gotos_return_to_the_caller() {
        let rs = Ruleset::parse(
            "*mangle\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n\
             -A PREROUTING -j MARK --set-xmark 0xff/0xffffffff\n\
             -A PREROUTING -j A\n\
             -A PREROUTING -m mark --mark 0x1f/0xff -j DROP\n\
             -A PREROUTING -m mark ! --mark 0xff -j DROP\n\
             -A PREROUTING -m connmark --mark 0x3f -j DROP\n\
             -A A -g B\n\
             -A A -j DROP\n\
             -A B -j MARK --set-xmark 0xc0/0xe0\n\
             -A B -j MARK --set-mark 0x20/0x0\n\
             -A B -j RETURN\n\
             -A B -j DROP\nCOMMIT\n",
        );
        let v = rs
            .judge(
                "mangle",
                "PREROUTING",
                &pkt("1.1.1.1", "2.2.2.2", Proto::Icmp(8), Some("eth0"), None),
            )
            .unwrap();
        // 0xff, then (0xff & !0xe0) ^ 0xc0 = 0xdf, then --set-mark 0x20/0x0 sets bit 0x20 again.
        assert_eq!(v.mark, 0xff);
        assert!(v.passes, "{v:?}");
        assert_eq!(v.rule, "policy ACCEPT");
        // The RETURN in B went back to PREROUTING, past A's DROP; connmark's --mark is not judged.
        assert_eq!(v.chains, ["PREROUTING", "A", "B", "PREROUTING"]);
        assert_eq!(
            v.maybe,
            ["mangle PREROUTING: -A PREROUTING -m connmark --mark 0x3f -j DROP"]
        );
        assert_eq!(mark_pair("0x10000/0x10000"), Some((0x10000, 0x10000)));
        // A jump cnilab cannot decide into a chain that marks: the bits it may set are unknown after.
        let rs = Ruleset::parse(
            "*filter\n:FORWARD ACCEPT [0:0]\n:P - [0:0]\n:Q - [0:0]\n\
             -A FORWARD -m owner --uid-owner 0 -j P\n\
             -A FORWARD -m mark --mark 0x0/0x4 -j DROP\n\
             -A FORWARD -m mark --mark 0x0/0x1 -j DROP\n\
             -A P -g Q\n\
             -A Q -j MARK --set-xmark 0x4/0x4\nCOMMIT\n",
        );
        let v = rs
            .judge(
                "filter",
                "FORWARD",
                &pkt("1.1.1.1", "2.2.2.2", Proto::Icmp(8), Some("eth0"), None),
            )
            .unwrap();
        assert!(!v.passes);
        assert!(v.rule.contains("0x0/0x1"), "{v:?}");
        assert_eq!(v.maybe.len(), 2, "{:?}", v.maybe);
        assert_eq!(mark_pair("7"), Some((7, u32::MAX)));
    }
}

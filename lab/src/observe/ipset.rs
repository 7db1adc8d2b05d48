//! The IP sets of a namespace as `ipset save` prints them (`create NAME
//! TYPE ...`, `add NAME MEMBER ...`), and whether a packet is in one, as
//! `-m set --match-set NAME FLAGS` asks. Sets whose first dimension is an
//! address or a network (`hash:ip`, `hash:net`), optionally followed by a
//! port (`hash:ip,port`, `hash:net,port`), are judged; any other type
//! cannot be told.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Every IPv4 set of one namespace, by name.
#[derive(Debug, Default, Clone)]
pub struct Sets {
    sets: BTreeMap<String, Set>,
}

#[derive(Debug, Clone)]
struct Set {
    kind: Kind,
    members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `hash:ip`, `hash:net`: one address dimension.
    Net,
    /// `hash:ip,port`, `hash:net,port`: an address, then protocol and port.
    NetPort,
    /// An IPv6 set: never holds an IPv4 packet.
    Inet6,
    /// A type cnilab does not read.
    Other,
}

#[derive(Debug, Clone)]
struct Member {
    net: Option<Ipv4Net>,
    port: Option<PortSpec>,
    /// `nomatch`: an exception inside a wider network of the set.
    nomatch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PortSpec {
    /// An IP protocol number and a port (ICMP: type << 8 | code).
    Is(u8, u16),
    /// Written in a way cnilab does not read.
    Unknown,
}

/// One dimension of a lookup: the packet's address on the side a flag
/// names, its IP protocol number, and its port on that side (ICMP: type << 8
/// | code; None when unknown).
#[derive(Debug, Clone, Copy)]
pub struct Side {
    /// The address (`src` or `dst`).
    pub addr: Ipv4Addr,
    /// IP protocol number: 1 ICMP, 6 TCP, 17 UDP.
    pub proto: u8,
    /// The port on that side.
    pub port: Option<u16>,
}

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(TCP),
        "udp" => Some(UDP),
        "icmp" => Some(ICMP),
        "sctp" => Some(132),
        "udplite" => Some(136),
        n => n.parse().ok(),
    }
}

/// `tcp:81`, `udp:53`, `81` (TCP), `icmp:8/0`, `icmp:echo-request`.
fn port_spec(s: &str) -> PortSpec {
    let (proto, port) = s.split_once(':').unwrap_or(("tcp", s));
    let Some(p) = proto_number(proto) else {
        return PortSpec::Unknown;
    };
    let port = if p == ICMP {
        match port {
            "echo-request" => Some(8 << 8),
            "echo-reply" => Some(0),
            t => t
                .split_once('/')
                .and_then(|(a, b)| Some((a.parse::<u16>().ok()? << 8) | b.parse::<u16>().ok()?)),
        }
    } else {
        port.parse().ok()
    };
    port.map_or(PortSpec::Unknown, |x| PortSpec::Is(p, x))
}

fn kind(ty: &str, opts: &[&str]) -> Kind {
    let inet6 = opts.windows(2).any(|w| w[0] == "family" && w[1] == "inet6");
    match ty {
        _ if inet6 => Kind::Inet6,
        "hash:ip" | "hash:net" => Kind::Net,
        "hash:ip,port" | "hash:net,port" => Kind::NetPort,
        _ => Kind::Other,
    }
}

impl Member {
    fn parse(kind: Kind, w: &[&str]) -> Member {
        let entry = w.first().copied().unwrap_or("");
        let (addr, port) = match kind {
            Kind::NetPort => entry.split_once(',').map_or((entry, None), |(a, p)| (a, Some(p))),
            _ => (entry, None),
        };
        let net = addr
            .parse::<Ipv4Net>()
            .ok()
            .or_else(|| addr.parse::<Ipv4Addr>().ok().map(Ipv4Net::from));
        Member {
            net,
            port: port.map(port_spec),
            nomatch: w.contains(&"nomatch"),
        }
    }

    /// Whether this member holds the packet: Some(yes or no), None when it cannot be told.
    fn holds(&self, sides: &[Side]) -> Option<bool> {
        let net = self.net?;
        if !net.contains(&sides[0].addr) {
            return Some(false);
        }
        match (self.port, sides.get(1)) {
            (None, _) => Some(true),
            (Some(PortSpec::Unknown), _) | (Some(_), None) => None,
            (Some(PortSpec::Is(proto, port)), Some(s)) => {
                if proto != s.proto {
                    return Some(false);
                }
                // The kernel stores TCP and UDP ports; other protocols have port 0.
                let want = if matches!(proto, TCP | UDP | ICMP | 132 | 136) {
                    s.port
                } else {
                    Some(0)
                };
                want.map(|x| x == port)
            }
        }
    }
}

impl Sets {
    /// Reads `ipset save`'s output (or `ipset restore` input: `-exist` and
    /// `flush` are understood).
    pub fn parse(text: &str) -> Sets {
        let mut sets = BTreeMap::new();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["create", name, ty, opts @ ..] => {
                    sets.insert(
                        name.to_string(),
                        Set {
                            kind: kind(ty, opts),
                            members: Vec::new(),
                        },
                    );
                }
                ["add", name, rest @ ..] => {
                    if let Some(s) = sets.get_mut(*name) {
                        let m = Member::parse(s.kind, rest);
                        s.members.push(m);
                    }
                }
                ["flush", name] => {
                    if let Some(s) = sets.get_mut(*name) {
                        s.members.clear();
                    }
                }
                _ => {}
            }
        }
        Sets { sets }
    }

    /// How many sets there are.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there is no set.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Whether set `name` holds the packet whose sides the flags name (one
    /// `Side` per flag, in order): Some(yes or no), None when cnilab cannot
    /// tell (no such set, a type it does not read, a member it cannot parse
    /// that could hold it, an unknown port).
    pub fn test(&self, name: &str, sides: &[Side]) -> Option<bool> {
        let set = self.sets.get(name)?;
        let dims = match set.kind {
            Kind::Inet6 => return Some(false),
            Kind::Other => return None,
            Kind::Net => 1,
            Kind::NetPort => 2,
        };
        // The kernel refuses a lookup with fewer flags than the set has dimensions.
        if sides.len() < dims {
            return Some(false);
        }
        let sides = &sides[..dims];
        let (mut best_yes, mut best_no, mut unsure) = (None, None, false);
        for m in &set.members {
            let len = m.net.map_or(0, |n| n.prefix_len());
            match m.holds(sides) {
                Some(true) if m.nomatch => best_no = best_no.max(Some(len)),
                Some(true) => best_yes = best_yes.max(Some(len)),
                Some(false) => {}
                None => unsure = true,
            }
        }
        match (best_yes, best_no) {
            // The most specific entry decides: a nomatch as specific as the hit hides it.
            (Some(y), Some(n)) if n >= y => Some(false),
            (Some(_), _) if !unsure => Some(true),
            (None, _) if !unsure => Some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "create cali40s:abc hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1\n\
add cali40s:abc 10.244.1.2\n\
add cali40s:abc 10.244.2.0/24\n\
add cali40s:abc 10.244.2.128/25 nomatch\n\
create cali40n:def hash:ip,port family inet hashsize 1024 maxelem 1048576\n\
add cali40n:def 10.244.1.2,tcp:81\n\
add cali40n:def 10.244.1.3,udp:53\n\
create v6 hash:net family inet6\n\
add v6 fd00::/64\n\
create other hash:mac\n";

    fn side(addr: &str, proto: u8, port: Option<u16>) -> Side {
        Side {
            addr: addr.parse().unwrap(),
            proto,
            port,
        }
    }

    #[test]
    fn nets_addresses_and_exceptions() {
        let s = Sets::parse(SAVE);
        assert_eq!(s.len(), 4);
        let t = |a| s.test("cali40s:abc", &[side(a, TCP, None)]);
        assert_eq!(t("10.244.1.2"), Some(true));
        assert_eq!(t("10.244.1.3"), Some(false));
        assert_eq!(t("10.244.2.5"), Some(true));
        assert_eq!(t("10.244.2.200"), Some(false));
        assert_eq!(s.test("v6", &[side("10.0.0.1", TCP, None)]), Some(false));
        assert_eq!(s.test("other", &[side("10.0.0.1", TCP, None)]), None);
        assert_eq!(s.test("missing", &[side("10.0.0.1", TCP, None)]), None);
    }

    #[test]
    fn address_and_port_sets() {
        let s = Sets::parse(SAVE);
        let t = |a, proto, port| {
            let d = side(a, proto, port);
            s.test("cali40n:def", &[d, d])
        };
        assert_eq!(t("10.244.1.2", TCP, Some(81)), Some(true));
        assert_eq!(t("10.244.1.2", TCP, Some(80)), Some(false));
        assert_eq!(t("10.244.1.2", UDP, Some(81)), Some(false));
        assert_eq!(t("10.244.1.3", UDP, Some(53)), Some(true));
        assert_eq!(t("10.244.1.2", ICMP, Some(8 << 8)), Some(false));
        // Unknown port: the address and protocol fit, the port cannot be told.
        assert_eq!(t("10.244.1.2", TCP, None), None);
        assert_eq!(t("10.244.9.9", TCP, None), Some(false));
        // One flag for a two-dimension set: the kernel says no.
        assert_eq!(s.test("cali40n:def", &[side("10.244.1.2", TCP, Some(81))]), Some(false));
        assert_eq!(port_spec("icmp:echo-request"), PortSpec::Is(ICMP, 8 << 8));
        assert_eq!(port_spec("80"), PortSpec::Is(TCP, 80));
        assert_eq!(port_spec("gre:0"), PortSpec::Unknown);
    }
}

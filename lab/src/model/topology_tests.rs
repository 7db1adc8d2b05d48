//! Every rejection topology.md lists, each at its line and column.

use super::*;
use crate::profile::flannel::options::{FlannelBackend, FlannelOptions};

/// The topology parser with every profile's options, as cnilab runs it.
fn parse(src: &Source) -> R<Topology> {
    crate::profile::parse_topology(src)
}

/// The flannel options of a topology.
fn flannel(t: &Topology) -> FlannelOptions {
    assert_eq!(t.network.profile.name(), "flannel");
    t.network.profile.get().expect("flannel options")
}

const GOOD: &str = r#"name = "demo"
seed = 7

[network]
cni = "flannel"
pod_cidr = "10.244.0.0/16"

[network.flannel]
backend = "vxlan"

[[switch]]
name = "tor1"
subnet = "172.20.0.0/24"
mtu = 1500

[[node]]
name = "master"
ip = "172.20.0.10"
pods = ["web", "db"]

[[node]]
name = "worker{i}"
count = 3
pods = 2
"#;

fn ok(text: &str) -> Topology {
    parse(&Source::new("t.toml", text)).unwrap_or_else(|e| panic!("expected valid topology, got:\n{e}"))
}

/// Parses `text`, expects a rejection at `line:col` whose message holds `needle`.
fn rejects(text: &str, line: usize, col: usize, needle: &str) -> InputError {
    let e = parse(&Source::new("t.toml", text)).expect_err("expected a rejection");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}\n{e}",
        e.message
    );
    assert_eq!((e.line, e.col), (line, col), "wrong place:\n{e}");
    assert!(!e.fix.is_empty());
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("t.toml:{line}:{col}: ")), "{shown}");
    e
}

/// Each case: GOOD with `from` replaced by `to` is rejected at line:col
/// with a message containing the needle.
fn rejects_edits(cases: &[(&str, &str, usize, usize, &str)]) {
    for (from, to, line, col, needle) in cases {
        rejects(&replace(from, to), *line, *col, needle);
    }
}

fn replace(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

#[test]
fn good_topology_gets_defaults_and_addresses() {
    let t = ok(GOOD);
    assert_eq!(t.name, "demo");
    assert_eq!(t.seed, 7);
    let names: Vec<_> = t
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.ip.to_string(), n.pods.len()))
        .collect();
    assert_eq!(
        names,
        [
            ("master", "172.20.0.10".to_string(), 2),
            ("worker1", "172.20.0.11".to_string(), 2),
            ("worker2", "172.20.0.12".to_string(), 2),
            ("worker3", "172.20.0.13".to_string(), 2)
        ]
    );
    assert_eq!(t.nodes[1].pods, ["pod-1", "pod-2"]);
    let f = flannel(&t);
    assert_eq!(
        (f.backend, f.vni, f.port, f.subnet_len),
        (FlannelBackend::Vxlan, 1, 8472, 24)
    );
}

#[test]
fn smallest_topology_takes_every_default() {
    let t = ok("name = \"a\"\n[[node]]\nname = \"n1\"\n");
    assert_eq!(t.switches[0].name, "tor1");
    assert_eq!(t.switches[0].mtu, 1500);
    assert_eq!(t.network.pod_cidr.to_string(), "10.244.0.0/16");
    assert_eq!(t.nodes[0].ip.to_string(), "172.20.0.10");
    assert_eq!(t.seed, 0);
}

#[test]
fn subnet_len_default_follows_flannel() {
    let t =
        ok(&replace("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"10.244.0.0/23\"").replace("count = 3", "count = 2"));
    let f = flannel(&t);
    assert_eq!(f.subnet_len, 25);
    let t =
        ok(&replace("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"10.244.0.0/22\"").replace("count = 3", "count = 2"));
    let f = flannel(&t);
    assert_eq!(f.subnet_len, 24);
}

#[test]
fn explicit_addresses_are_skipped_by_automatic_ones() {
    let t = ok(&replace("ip = \"172.20.0.10\"", "ip = \"172.20.0.11\""));
    let ips: Vec<_> = t.nodes.iter().map(|n| n.ip.to_string()).collect();
    assert_eq!(ips, ["172.20.0.11", "172.20.0.10", "172.20.0.12", "172.20.0.13"]);
}

#[test]
fn rejects_unknown_keys_everywhere() {
    let e = rejects(
        &replace("mtu = 1500", "mtux = 1500"),
        14,
        1,
        "unknown key `mtux` in [[switch]]",
    );
    assert!(e.fix.contains("did you mean `mtu`"), "{}", e.fix);
    rejects_edits(&[
        ("seed = 7", "colour = 7", 2, 1, "unknown key `colour` in the top level"),
        (
            "backend = \"vxlan\"",
            "backedn = \"vxlan\"",
            9,
            1,
            "unknown key `backedn` in [network.flannel]",
        ),
        (
            "cni = \"flannel\"",
            "cni = \"flannel\"\nfoo = 1",
            6,
            1,
            "unknown key `foo` in [network]",
        ),
        (
            "count = 3",
            "count = 3\nzone = \"a\"",
            24,
            1,
            "unknown key `zone` in [[node]]",
        ),
    ]);
    rejects(
        &format!("{GOOD}\n[[router]]\nname = \"r\"\nswitches = [\"tor1\"]\nasm = 1\n"),
        29,
        1,
        "unknown key `asm` in [[router]]",
    );
}

#[test]
fn rejects_bad_toml() {
    rejects(&replace("seed = 7", "seed = = 7"), 2, 8, "not valid TOML");
}

#[test]
fn rejects_malformed_cidrs_and_addresses() {
    let cidr = "pod_cidr = \"10.244.0.0/16\"";
    rejects_edits(&[
        (cidr, "pod_cidr = \"10.244.0/16\"", 6, 12, "not an IPv4 CIDR"),
        (cidr, "pod_cidr = \"10.244.1.0/16\"", 6, 12, "host bits set"),
        (
            "subnet = \"172.20.0.0/24\"",
            "subnet = \"172.20.0.0/33\"",
            13,
            10,
            "not an IPv4 CIDR",
        ),
        (
            "ip = \"172.20.0.10\"",
            "ip = \"172.20.0.300\"",
            18,
            6,
            "not an IPv4 address",
        ),
    ]);
}

#[test]
fn rejects_pod_cidr_overlapping_the_underlay() {
    rejects_edits(&[
        (
            "pod_cidr = \"10.244.0.0/16\"",
            "pod_cidr = \"172.20.0.0/16\"",
            6,
            12,
            "overlaps switch \"tor1\"",
        ),
        (
            "subnet = \"172.20.0.0/24\"",
            "subnet = \"10.244.3.0/24\"",
            6,
            12,
            "overlaps switch \"tor1\"",
        ),
    ]);
    // Switches overlapping each other.
    let two = replace(
        "[[node]]",
        "[[switch]]\nname = \"tor2\"\nsubnet = \"172.20.0.128/25\"\n\n[[node]]",
    );
    rejects(&two, 18, 10, "overlaps 172.20.0.0/24 of switch \"tor1\"");
}

#[test]
fn rejects_pod_cidr_too_small_for_the_nodes() {
    // /22 with /24 leases: 4 subnets, the first never leased: 3 for 4 nodes.
    let e = rejects(
        &replace("pod_cidr = \"10.244.0.0/16\"", "pod_cidr = \"10.244.0.0/22\""),
        6,
        12,
        "leaves 3 node subnets",
    );
    assert!(e.message.contains("4 nodes"));
    rejects(
        &replace("backend = \"vxlan\"", "subnet_len = 16"),
        9,
        14,
        "does not split the pod CIDR",
    );
    let calico = "name = \"c\"\n[network]\ncni = \"calico\"\npod_cidr = \"192.168.0.0/24\"\n[network.calico]\nblock_size = 26\n[[node]]\nname = \"n{i}\"\ncount = 5\n";
    rejects(calico, 6, 14, "leaves 4 blocks");
}

#[test]
fn rejects_addresses_outside_or_taken() {
    let ip = "ip = \"172.20.0.10\"";
    rejects_edits(&[
        (ip, "ip = \"172.21.0.10\"", 18, 6, "outside switch \"tor1\""),
        (ip, "ip = \"172.20.0.0\"", 18, 6, "network address"),
        (ip, "ip = \"172.20.0.255\"", 18, 6, "broadcast address"),
    ]);
    let twice = replace(
        "[[node]]\nname = \"worker{i}\"",
        "[[node]]\nname = \"extra\"\nip = \"172.20.0.10\"\n\n[[node]]\nname = \"worker{i}\"",
    );
    rejects(&twice, 23, 6, "already taken by node \"master\"");
    let router = format!(
        "{}\n[[router]]\nname = \"gw\"\nswitches = [\"tor1\"]\n",
        replace("ip = \"172.20.0.10\"", "ip = \"172.20.0.1\"")
    );
    rejects(
        &router,
        18,
        6,
        "is the gateway (.1) of switch \"tor1\", which router \"gw\" serves",
    );
    // Without a router the fabric's uplink serves .1.
    let uplink = replace("ip = \"172.20.0.10\"", "ip = \"172.20.0.1\"");
    let e = rejects(&uplink, 18, 6, "which the fabric's uplink serves");
    assert!(e.fix.contains("172.20.0.10"), "{}", e.fix);
}

#[test]
fn rejects_switch_subnet_too_small() {
    let small = replace("subnet = \"172.20.0.0/24\"", "subnet = \"172.20.0.0/28\"").replace("count = 3", "count = 5");
    let e = rejects(&small, 13, 10, "room for 4 automatically addressed nodes");
    assert!(e.message.contains("5 nodes need one"), "{}", e.message);
    assert!(e.fix.contains("172.20.0.0/27"), "{}", e.fix);
    for cidr in ["172.20.0.0/31", "172.20.0.0/32"] {
        let e = rejects(
            &replace("subnet = \"172.20.0.0/24\"", &format!("subnet = \"{cidr}\"")),
            13,
            10,
            &format!("switch subnet {cidr} is too small"),
        );
        assert!(e.fix.contains("/30 or shorter"), "{}", e.fix);
    }
    // The smallest switch: its gateway .1 and one node at .2.
    ok(
        "name = \"s\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/30\"\n[[node]]\nname = \"n\"\nip = \"172.20.0.2\"\n",
    );
}

#[test]
fn rejects_duplicate_and_invalid_names() {
    rejects_edits(&[
        (
            "name = \"demo\"",
            "name = \"Demo\"",
            1,
            8,
            "lab name \"Demo\" does not start with a lowercase letter",
        ),
        ("name = \"demo\"", "name = \"a-very-long-lab\"", 1, 8, "more than 12"),
        ("name = \"master\"", "name = \"mas_ter\"", 17, 8, "holds `_`"),
        (
            "name = \"master\"",
            "name = \"worker2\"",
            22,
            8,
            "two nodes named \"worker2\"",
        ),
        (
            "pods = [\"web\", \"db\"]",
            "pods = [\"web\", \"web\"]",
            19,
            16,
            "appears twice",
        ),
        (
            "pods = [\"web\", \"db\"]",
            "pods = [\"Web\"]",
            19,
            9,
            "pod name \"Web\"",
        ),
        (
            "name = \"worker{i}\"",
            "name = \"worker-numbers-{i}\"",
            22,
            8,
            "node name \"worker-numbers-1\" has 16",
        ),
    ]);
    let two = replace(
        "[[node]]",
        "[[switch]]\nname = \"tor1\"\nsubnet = \"172.21.0.0/24\"\n\n[[node]]",
    );
    rejects(&two, 17, 8, "two switches named \"tor1\"");
    rejects(
        &replace("name = \"master\"", "name = \"tor1\""),
        17,
        8,
        "has the name of a switch",
    );
}

#[test]
fn rejects_count_without_placeholder() {
    rejects_edits(&[
        (
            "name = \"worker{i}\"",
            "name = \"worker\"",
            23,
            9,
            "has `count` but its name has no \"{i}\"",
        ),
        ("count = 3\n", "", 22, 8, "has \"{i}\" but no `count`"),
        (
            "count = 3",
            "count = 3\nip = \"172.20.0.20\"",
            24,
            6,
            "both `ip` and `count = 3`",
        ),
    ]);
}

#[test]
fn rejects_unknown_switch_router_reflector_profile() {
    let e = rejects(
        &replace("count = 3", "count = 3\nswitch = \"tor2\""),
        24,
        10,
        "no switch \"tor2\"",
    );
    assert!(e.fix.contains("\"tor1\""), "{}", e.fix);
    rejects(
        &format!("{GOOD}\n[[router]]\nname = \"r\"\nswitches = [\"spine\"]\n"),
        28,
        13,
        "no switch \"spine\"",
    );
    let e = rejects(
        &replace("cni = \"flannel\"", "cni = \"flanel\""),
        5,
        7,
        "unknown CNI profile \"flanel\"",
    );
    assert!(e.fix.contains("did you mean \"flannel\""));
    let calico = "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nmesh = \"reflectors\"\nreflectors = [\"mastr\"]\n[[node]]\nname = \"master\"\n";
    let e = rejects(calico, 6, 15, "reflector \"mastr\" is not a node");
    assert!(e.fix.contains("\"master\""));
}

#[test]
fn rejects_tor_mesh_without_a_bgp_router() {
    let base = "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nmesh = \"tor\"\n[[node]]\nname = \"n\"\n";
    rejects(base, 5, 8, "needs a router on switch \"tor1\"");
    let no_asn = format!("{base}[[router]]\nname = \"r\"\nswitches = [\"tor1\"]\n");
    rejects(&no_asn, 9, 8, "router \"r\" has no asn");
    ok(&format!("{no_asn}asn = 65000\n"));
}

#[test]
fn rejects_mtu_out_of_range() {
    rejects_edits(&[
        ("mtu = 1500", "mtu = 9300", 14, 7, "out of range"),
        ("mtu = 1500", "mtu = 500", 14, 7, "out of range"),
        (
            "cni = \"flannel\"",
            "cni = \"flannel\"\nmtu = 100",
            6,
            7,
            "out of range",
        ),
        (
            "mtu = 1500",
            "mtu = \"1500\"",
            14,
            7,
            "must be an integer, not a string",
        ),
    ]);
}

#[test]
fn rejects_options_of_another_profile() {
    rejects(
        &replace("[network.flannel]", "[network.calico]"),
        8,
        10,
        "[network.calico] does not belong to cni = \"flannel\"",
    );
    let calico = "name = \"c\"\n[network]\ncni = \"calico\"\n[network.flannel]\nvni = 2\n[[node]]\nname = \"n\"\n";
    rejects(calico, 4, 10, "[network.flannel] does not belong to cni = \"calico\"");
    let calico =
        "name = \"c\"\n[network]\ncni = \"calico\"\n[network.calico]\nreflectors = [\"n\"]\n[[node]]\nname = \"n\"\n";
    rejects(calico, 5, 14, "only applies with mesh = \"reflectors\"");
}

#[test]
fn rejects_a_lab_without_nodes() {
    rejects("name = \"a\"\n", 1, 1, "no nodes");
}

const CALICO: &str = r#"name = "c"
[network]
cni = "calico"
pod_cidr = "192.168.0.0/24"
[network.calico]
block_size = 26
[[node]]
name = "n{i}"
count = 2
pods = 3
"#;

#[test]
fn rejects_ranges_no_lab_can_use() {
    for (cidr, why) in [
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("0.0.0.0/1", "\"this network\""),
        ("127.0.0.0/16", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("128.0.0.0/1", "link-local"),
        ("255.255.255.0/24", "broadcast"),
    ] {
        let e = rejects(
            &replace("pod_cidr = \"10.244.0.0/16\"", &format!("pod_cidr = \"{cidr}\"")),
            6,
            12,
            why,
        );
        assert!(e.message.starts_with(&format!("pod CIDR {cidr} overlaps")), "{e}");
        let e = rejects(
            &replace("subnet = \"172.20.0.0/24\"", &format!("subnet = \"{cidr}\"")),
            13,
            10,
            why,
        );
        assert!(e.message.starts_with(&format!("switch subnet {cidr} overlaps")), "{e}");
        assert!(e.fix.contains("172.20.0.0/24"), "{}", e.fix);
    }
    let calico = CALICO.replace("192.168.0.0/24", "169.254.0.0/24");
    rejects(&calico, 4, 12, "169.254.1.1");
}

#[test]
fn rejects_flannel_pools_too_small_for_a_subnet() {
    for cidr in ["10.244.0.0/30", "10.244.0.0/31", "10.244.0.0/32"] {
        let e = rejects(
            &replace("pod_cidr = \"10.244.0.0/16\"", &format!("pod_cidr = \"{cidr}\"")),
            6,
            12,
            "too small for flannel",
        );
        assert!(e.fix.contains("/29 or larger"), "{}", e.fix);
    }
    // A /29 gives one /30 lease (the first is never leased) with one pod.
    let one = "name = \"f\"\n[network]\npod_cidr = \"10.244.0.0/29\"\n[[node]]\nname = \"n\"\npods = 1\n";
    let t = ok(one);
    let f = flannel(&t);
    assert_eq!(f.subnet_len, 30);
    crate::profile::plan_lab(&t, "f", &crate::model::paths::LabPaths::of("f"));
}

#[test]
fn rejects_more_pods_than_a_flannel_subnet_holds() {
    let full = replace("backend = \"vxlan\"", "subnet_len = 28");
    // A /28 holds 16 - 3 = 13 pods.
    ok(&full.replace("pods = 2\n", "pods = 13\n"));
    let e = rejects(
        &full.replace("pods = 2\n", "pods = 14\n"),
        24,
        8,
        "node \"worker1\" has 14 pods, but its flannel subnet (/28) holds 13",
    );
    assert!(e.fix.contains("subnet_len = 27"), "{}", e.fix);
    let e = rejects(
        &replace("backend = \"vxlan\"", "subnet_len = 30").replace("pods = [\"web\", \"db\"]", "pods = [\"a\", \"b\"]"),
        19,
        8,
        "node \"master\" has 2 pods, but its flannel subnet (/30) holds 1",
    );
    assert!(e.fix.contains("subnet_len = 29"), "{}", e.fix);
}

#[test]
fn rejects_calico_blocks_that_hold_no_pod() {
    for size in [31, 32] {
        let e = rejects(
            &CALICO.replace("block_size = 26", &format!("block_size = {size}")),
            6,
            14,
            &format!("block_size /{size} holds no pod"),
        );
        assert!(e.fix.contains("from 20 to 30"), "{}", e.fix);
    }
    ok(&CALICO
        .replace("block_size = 26", "block_size = 30")
        .replace("pods = 3", "pods = 2"));
}

#[test]
fn calico_pool_must_hold_every_pod_but_not_one_block() {
    // More pods than one /26 block: the node takes further blocks.
    ok(&CALICO.replace("pods = 3", "pods = 100"));
    // 2 nodes of 100 pods need 2 blocks each; a /24 holds 4 blocks of 62.
    ok(&CALICO.replace("pods = 3", "pods = 124"));
    let e = rejects(
        &CALICO.replace("pods = 3", "pods = 125"),
        4,
        12,
        "pool 192.168.0.0/24 holds 4 blocks of /26 (62 pods each), but the nodes' 250 pods need 6",
    );
    assert!(e.fix.contains("larger pod_cidr"), "{}", e.fix);
    let limited = CALICO
        .replace("pods = 3", "pods = 3\nmax_pods = 62")
        .replace("count = 2", "count = 4");
    ok(&limited);
    rejects(
        &limited.replace("count = 4", "count = 5"),
        6,
        14,
        "leaves 4 blocks, but there are 5 nodes",
    );
}

#[test]
fn the_flannel_udp_backend_validates_on_port_8285() {
    let text = replace("backend = \"vxlan\"", "backend = \"udp\"");
    let t = parse(&Source::new("t.toml", &text)).expect("udp is built");
    let o = flannel(&t);
    assert_eq!(o.backend, FlannelBackend::Udp);
    assert_eq!(o.port, 8285);
    let other = text.replace("backend = \"udp\"", "backend = \"udp\"\nport = 9000");
    let t = parse(&Source::new("t.toml", &other)).unwrap();
    assert_eq!(flannel(&t).port, 9000);
}

#[test]
fn reports_every_independent_mistake_in_file_order() {
    let text = replace("mtu = 1500", "mtux = 1500")
        .replace("pods = [\"web\", \"db\"]", "pods = [\"web\", \"d_b\"]")
        .replace("backend = \"vxlan\"", "backend = \"vxlam\"")
        .replace("seed = 7", "seed = -7\nsede = 1");
    let e = parse(&Source::new("t.toml", &text)).expect_err("four mistakes");
    let places: Vec<(usize, usize)> = e.all().map(|e| (e.line, e.col)).collect();
    assert_eq!(places, [(2, 8), (3, 1), (10, 11), (15, 1), (20, 16)], "{e}");
    let shown = e.to_string();
    for needle in [
        "t.toml:2:8: `seed` = -7 is out of range",
        "t.toml:3:1: unknown key `sede` in the top level",
        "t.toml:10:11: unknown flannel backend \"vxlam\"",
        "t.toml:15:1: unknown key `mtux` in [[switch]]",
        "t.toml:20:16: pod name \"d_b\" holds `_`",
    ] {
        assert!(shown.contains(needle), "{needle:?} not in:\n{shown}");
    }
    assert_eq!(
        shown.matches("\nfix: ").count() + usize::from(shown.starts_with("fix: ")),
        5,
        "{shown}"
    );
}

#[test]
fn skips_checks_that_depend_on_a_mistake() {
    // The switch has a mistake: the node on it is not reported as naming
    // an unknown switch, nor the topology as having no nodes.
    let text = replace("mtu = 1500", "mtu = 1500\ncolour = 1");
    let e = parse(&Source::new("t.toml", &text)).expect_err("one mistake");
    assert_eq!(e.all().count(), 1, "{e}");
    assert!(e.message.contains("unknown key `colour`"), "{e}");
}

#[test]
fn huge_values_are_quoted_short() {
    let big = "x".repeat(1 << 20);
    for text in [
        replace("name = \"demo\"", &format!("name = \"{big}\"")),
        replace("backend = \"vxlan\"", &format!("backend = \"{big}\"")),
        replace("pod_cidr = \"10.244.0.0/16\"", &format!("pod_cidr = \"{big}\"")),
        replace("mtu = 1500", &format!("{big} = 1")),
        format!("{GOOD}\n[[node]]\nname = \"{big}\"\nswitch = \"{big}\"\nip = \"{big}\"\npods = [\"{big}\"]\n"),
    ] {
        let e = parse(&Source::new("t.toml", &text)).expect_err("rejected");
        let shown = e.to_string();
        assert!(shown.len() < 4000, "{} bytes:\n{}", shown.len(), &shown[..4000]);
        assert!(shown.contains("xxx..."), "{shown}");
    }
}

#[test]
fn quoted_line_keeps_the_underline_under_the_value() {
    let long = format!("{}\n", "a".repeat(200));
    let text = replace("backend = \"vxlan\"", &format!("backend = \"vxlan\"\n# {long}port = 0"));
    let e = rejects(&text, 11, 8, "out of range");
    let shown = e.to_string();
    assert!(shown.contains("11 | port = 0\n   |        ^\n"), "{shown}");
    let wide = replace("backend = \"vxlan\"", &format!("{}backend = \"x\"", " ".repeat(100)));
    let e = rejects(&wide, 9, 111, "unknown flannel backend");
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    let quoted = lines[2].split_once("| ").unwrap().1;
    let caret = lines[3].split_once("| ").unwrap().1;
    assert!(
        quoted.starts_with("...") && quoted.ends_with("backend = \"x\""),
        "{shown}"
    );
    assert_eq!(&quoted[caret.len() - 3..caret.len()], "\"x\"", "{shown}");
}

#[test]
fn profile_keys_are_checked_without_a_pod_cidr() {
    let text = CALICO
        .replace("192.168.0.0/24", "224.0.0.0/24")
        .replace("block_size = 26", "block_size = 26\nmodee = \"bgp\"");
    let e = parse(&Source::new("t.toml", &text)).expect_err("two mistakes");
    let places: Vec<(usize, usize)> = e.all().map(|e| (e.line, e.col)).collect();
    assert_eq!(places, [(4, 12), (7, 1)], "{e}");
}

#[test]
fn profile_options_keep_their_order_through_the_saved_json() {
    let t = ok(&CALICO.replace("block_size = 26", "block_size = 26\nmesh = \"full\""));
    let json = serde_json::to_string(&t.network).unwrap();
    assert!(
        json.contains(r#""profile":{"cni":"calico","mode":"bgp","block_size":26,"asn":64512,"mesh":"full""#),
        "{json}"
    );
    let back: Network = serde_json::from_str(&json).unwrap();
    assert_eq!(back.profile.options, t.network.profile.options);
    let c: crate::profile::calico::options::CalicoOptions = back.profile.get().expect("calico options");
    assert_eq!((c.block_size, c.asn), (26, 64512));
}

const TWO_NICS: &str = r#"name = "nics"
[network.flannel]
iface = "eth1"
[[switch]]
name = "public"
subnet = "172.20.0.0/24"
[[switch]]
name = "private"
subnet = "10.10.0.0/24"
[[node]]
name = "a"
ip = "10.10.0.10"
switch = "private"
[[node]]
name = "n{i}"
count = 2
switches = ["public", "private"]
"#;

#[test]
fn further_switches_give_eth1_addressed_in_the_same_pass() {
    let t = ok(TWO_NICS.replace("iface = \"eth1\"", "").as_str());
    let n1 = &t.nodes[1];
    assert_eq!(
        (n1.switch.as_str(), n1.ip.to_string()),
        ("public", "172.20.0.10".into())
    );
    // .10 of private is node a's explicit address: skipped.
    let ips: Vec<String> = t.nodes[1..].iter().map(|n| n.extra_ifaces[0].ip.to_string()).collect();
    assert_eq!(ips, ["10.10.0.11", "10.10.0.12"]);
    assert_eq!(n1.iface("eth1"), Some(("private", "10.10.0.11".parse().unwrap())));
    assert_eq!(n1.iface("eth2"), None);
    assert!(t.nodes[0].extra_ifaces.is_empty());
}

#[test]
fn rejects_bad_switches_all_at_once() {
    let text = TWO_NICS.replace("iface = \"eth1\"", "").replace(
        "switch = \"private\"",
        "switch = \"private\"\nswitches = [\"private\"]\n[[node]]\nname = \"b\"\nswitches = []\n[[node]]\nname = \"c\"\nswitches = [\"public\", \"nope\", \"public\"]",
    );
    let e = parse(&Source::new("t.toml", &text)).expect_err("rejected");
    let all: Vec<(usize, usize, String)> = e.all().map(|e| (e.line, e.col, e.message.clone())).collect();
    let places: Vec<(usize, usize)> = all.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(places, [(13, 1), (17, 12), (20, 23), (20, 31)], "{e}");
    assert!(all[0].2.contains("both `switch` and `switches`"), "{e}");
    assert!(all[1].2.contains("lists no switch"), "{e}");
    assert!(all[2].2.contains("no switch \"nope\""), "{e}");
    assert!(all[3].2.contains("lists switch \"public\" twice"), "{e}");
}

#[test]
fn flannel_iface_must_be_on_every_node() {
    let e = rejects(TWO_NICS, 3, 9, "node \"a\" has no eth1");
    assert!(e.fix.contains("switches"), "{e}");
    rejects(&TWO_NICS.replace("eth1", "en0"), 3, 9, "is not an interface");
    let t = ok(&TWO_NICS.replace(
        "ip = \"10.10.0.10\"\nswitch = \"private\"",
        "switches = [\"private\", \"public\"]",
    ));
    assert_eq!(flannel(&t).iface, "eth1");
    assert_eq!(flannel(&ok(GOOD)).iface, "eth0");
}

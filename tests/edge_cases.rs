//! Every topology `validate` accepts at the edge of its limits also builds:
//! the smallest pools, subnets and switches, node subnets and Calico blocks
//! exactly full of pods, the longest names, the extreme seeds. Each lab is
//! brought up under a unique name, every pod must have an address of its
//! own inside the pod CIDR, and the lab is removed (also on failure).
//! Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{Lab, TempFile, cnilab, show};
use ipnet::Ipv4Net;

/// Validates `text`, brings it up, and checks that its `pods` pods got
/// distinct addresses inside `pod_cidr`.
fn builds(text: &str, pods: usize, pod_cidr: &str) {
    let topo = TempFile::toml(text);
    let v = cnilab(&["validate", topo.path.to_str().expect("utf-8 path")]);
    assert!(v.status.success(), "validate refused:\n{text}\n{}", show(&v));
    let lab = Lab::up(&topo.path);
    let got = lab.pods();
    assert_eq!(got.len(), pods, "pods of:\n{text}\n{got:?}");
    let net: Ipv4Net = pod_cidr.parse().expect("CIDR");
    let mut seen = BTreeSet::new();
    for (pod, ip) in &got {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("{pod} has address {ip:?}"));
        assert!(net.contains(&ip), "{pod}: {ip} is outside {net}");
        assert!(seen.insert(ip), "{pod}: {ip} is taken twice");
    }
}

#[test]
fn smallest_flannel_pool_one_lease_one_pod() {
    // A /29 splits into two /30s; flannel skips the first, and a /30
    // holds one pod (network, gateway .1, pod, broadcast).
    let text = "name = \"e1\"\n[network]\npod_cidr = \"10.244.0.0/29\"\n[[node]]\nname = \"n1\"\npods = 1\n";
    builds(text, 1, "10.244.0.0/29");
}

#[test]
fn flannel_node_subnets_exactly_full() {
    // /29 node subnets hold 8 - 3 = 5 pods; a /27 leaves 3 of them.
    let text = r#"name = "e2"
seed = 0
[network]
pod_cidr = "10.245.0.0/27"
[network.flannel]
backend = "host-gw"
subnet_len = 29
[[node]]
name = "n{i}"
count = 3
pods = 5
"#;
    builds(text, 15, "10.245.0.0/27");
}

#[test]
fn pool_at_the_top_of_the_private_range_and_the_largest_seed() {
    let text = r#"name = "e3"
seed = 9223372036854775807
[network]
pod_cidr = "10.255.255.240/28"
[network.flannel]
subnet_len = 30
[[node]]
name = "n{i}"
count = 3
pods = 1
"#;
    builds(text, 3, "10.255.255.240/28");
}

#[test]
fn smallest_switch_holds_its_gateway_and_one_node() {
    let text = r#"name = "e4"
[[switch]]
name = "s"
subnet = "172.31.255.252/30"
[[node]]
name = "only"
ip = "172.31.255.254"
pods = 2
"#;
    builds(text, 2, "10.244.0.0/16");
}

#[test]
fn switch_exactly_full_of_automatic_addresses() {
    // A /28: .10 to .14 are the automatic addresses, .2 is written.
    let text = r#"name = "e5"
[[switch]]
name = "tor1"
subnet = "172.22.0.0/28"
[[node]]
name = "first"
ip = "172.22.0.2"
pods = 1
[[node]]
name = "w{i}"
count = 5
pods = 1
"#;
    builds(text, 6, "10.244.0.0/16");
}

#[test]
fn longest_names() {
    let text = r#"name = "abcdefghijkl"
[[switch]]
name = "s2345678901234z"
subnet = "172.23.0.0/24"
[[node]]
name = "n2345678901234z"
pods = ["p2345678901234z", "q2345678901234z"]
[[node]]
name = "m2345678901234{i}"
count = 2
pods = 1
"#;
    builds(text, 4, "10.244.0.0/16");
}

#[test]
fn two_smallest_switches_joined_by_a_router() {
    let text = r#"name = "e7"
[network.flannel]
backend = "vxlan"
[[switch]]
name = "a"
subnet = "172.24.0.0/30"
[[switch]]
name = "b"
subnet = "172.24.0.4/30"
[[router]]
name = "r"
switches = ["a", "b"]
[[node]]
name = "na"
switch = "a"
ip = "172.24.0.2"
pods = 1
[[node]]
name = "nb"
switch = "b"
ip = "172.24.0.6"
pods = 1
"#;
    builds(text, 2, "10.244.0.0/16");
}

#[test]
fn smallest_calico_blocks_exactly_full() {
    // /30 blocks hold .1 and .2; the /28 pool has four of them.
    let text = r#"name = "e8"
seed = 1
[network]
cni = "calico"
pod_cidr = "192.168.7.0/28"
[network.calico]
block_size = 30
[[switch]]
name = "tor1"
subnet = "172.25.0.0/24"
[[router]]
name = "gw"
switches = ["tor1"]
[[node]]
name = "n{i}"
count = 2
pods = 2
"#;
    builds(text, 4, "192.168.7.0/28");
}

#[test]
fn calico_range_limited_to_max_pods_exactly_full() {
    let text = r#"name = "e9"
[network]
cni = "calico"
pod_cidr = "192.168.8.0/24"
[network.calico]
mode = "vxlan"
block_size = 29
[[switch]]
name = "tor1"
subnet = "172.26.0.0/24"
[[router]]
name = "gw"
switches = ["tor1"]
[[node]]
name = "n1"
pods = 3
max_pods = 3
[[node]]
name = "n2"
pods = 6
"#;
    builds(text, 9, "192.168.8.0/24");
}

/// `validate` and `up` refuse alike what cannot be built (exit 3 for what
/// the machine lacks); flannel's udp backend, built since issue 11, validates.
#[test]
fn validate_and_up_refuse_the_same_way() {
    let flannel = "name = \"x\"\n[network.flannel]\nbackend = \"udp\"\n[[node]]\nname = \"n\"\n";
    let topo = TempFile::toml(flannel);
    let v = cnilab(&["validate", topo.path.to_str().expect("utf-8 path")]);
    assert_eq!(v.status.code(), Some(0), "{}", show(&v));
    let calico =
        "name = \"x\"\n[network]\ncni = \"calico\"\n[network.calico]\nmode = \"ipip\"\n[[node]]\nname = \"n\"\n";
    let topo = TempFile::toml(calico);
    let v = cnilab(&["validate", topo.path.to_str().expect("utf-8 path")]);
    assert_eq!(v.status.code(), Some(3), "{}", show(&v));
    assert!(show(&v).contains("ipip") && show(&v).contains("fix: "), "{}", show(&v));
    let lab = Lab::reserve();
    let up = lab.up_output(&topo.path);
    assert_eq!(up.status.code(), Some(3), "{}", show(&up));
    assert!(show(&up).contains("ipip"), "{}", show(&up));
}

/// Three typos in three places: one run names all three, in file order,
/// and a 1 MiB value gives a short answer.
#[test]
fn validate_reports_every_mistake_briefly() {
    let text = format!(
        "name = \"x\"\n[[switch]]\nname = \"tor1\"\nsubnet = \"172.20.0.0/24\"\nmtux = 1500\n[[node]]\nname = \"n\"\npod = 2\n[network]\ncni = \"flanel\"\n[[router]]\nname = \"{}\"\nswitches = [\"tor1\"]\n",
        "r".repeat(1 << 20)
    );
    let topo = TempFile::toml(&text);
    let v = cnilab(&["validate", topo.path.to_str().expect("utf-8 path")]);
    assert_eq!(v.status.code(), Some(2), "{}", show(&v));
    let stderr = String::from_utf8_lossy(&v.stderr);
    assert!(stderr.len() < 8 * 1024, "{} bytes of errors", stderr.len());
    let path = topo.path.display().to_string();
    let places: Vec<usize> = [
        ":5:1: unknown key `mtux`",
        ":8:1: unknown key `pod`",
        ":10:7: unknown CNI profile",
        ":12:8: router name",
    ]
    .iter()
    .map(|p| {
        stderr
            .find(&format!("{path}{p}"))
            .unwrap_or_else(|| panic!("{p} not in:\n{stderr}"))
    })
    .collect();
    assert!(places.windows(2).all(|w| w[0] < w[1]), "not in file order:\n{stderr}");
}

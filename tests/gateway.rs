//! Every node has a default route, as real nodes do: via a router on its
//! switch, or else via the switch's uplink, which holds .1, answers ARP and
//! ping for it and passes nothing on. Checked with iproute2 and ping inside
//! the lab, and against the host's own namespace, which must not change.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

/// A five-node Calico BGP full mesh without a router: the shortest Calico
/// topology a user writes.
const MESH5: &str = r#"name = "mesh5"
[network]
cni = "calico"
pod_cidr = "192.168.0.0/16"
[network.calico]
mode = "bgp"
mesh = "full"
[[node]]
name = "n{i}"
count = 5
pods = 2
"#;

/// `cnilab probe pingall` until every pair replies (pingall itself does
/// not retry a pair yet).
fn probe_pingall(lab: &Lab) -> String {
    retry("cnilab probe pingall", Duration::from_secs(30), || {
        let out = lab.run(&["probe", "pingall"]);
        if out.status.success() {
            Ok(show(&out))
        } else {
            Err(show(&out))
        }
    })
}

/// The host's own links, addresses and routes.
fn host_network() -> String {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().expect("ip runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    format!(
        "{}\n{}\n{}",
        run(&["-o", "link", "show"]),
        run(&["-4", "-o", "addr", "show"]),
        run(&["route", "show", "table", "all"])
    )
}

#[test]
fn calico_mesh_without_a_router_reaches_every_pod() {
    let topo = TempFile::toml(MESH5);
    let host_before = host_network();
    let lab = Lab::up(&topo.path);
    for i in 1..=5 {
        let node = format!("n{i}");
        let r = lab.exec_json(&node, &["ip", "-j", "route", "show", "default"]);
        assert_eq!(r[0]["gateway"], "172.20.0.1", "{node}: {r}");
        assert_eq!(r[0]["dev"], "eth0", "{node}: {r}");
    }
    let out = probe_pingall(&lab);
    assert!(out.contains("90/90 pairs replied"), "{out}");
    // The status no longer warns about missing default routes.
    let status = show(&lab.run(&["status"]));
    assert!(!status.contains("no default route"), "{status}");
    assert_eq!(host_network(), host_before, "the host's namespace changed");
}

#[test]
fn the_uplink_answers_for_the_gateway_and_forwards_nothing() {
    let topo = TempFile::toml(MESH5);
    let lab = Lab::up(&topo.path);
    let ns = format!("cnilab.{}._uplink-tor1", lab.name);
    assert!(namespaces_with(&ns).contains(&ns), "no uplink namespace {ns}");
    // ARP and ping for .1 from a node.
    lab.exec_ok("n1", &["ping", "-c1", "-W2", "172.20.0.1"]);
    let neigh = lab.exec_json("n1", &["ip", "-j", "neigh", "show", "172.20.0.1"]);
    assert!(neigh[0]["lladdr"].is_string(), "no ARP entry for the gateway: {neigh}");
    // Forwarding is off there: what is not for .1 ends at the uplink.
    let forward = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .expect("ip netns exec runs");
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "0");
    let pods = lab.pods();
    let out = lab.exec(&pods[0].0, &["ping", "-c1", "-W1", "198.51.100.7"]);
    assert!(
        !out.status.success(),
        "a packet for outside the lab got a reply:\n{}",
        show(&out)
    );
    let out = lab.exec("n1", &["ping", "-c1", "-W1", "10.99.0.1"]);
    assert!(
        !out.status.success(),
        "a packet for outside the lab got a reply:\n{}",
        show(&out)
    );
    // trace agrees: .1 is delivered at the uplink, the rest dropped there.
    let trace = |dst: &str| show(&lab.run(&["trace", "n1", dst]));
    let to_gw = trace("172.20.0.1");
    assert!(to_gw.contains("delivered to uplink of switch tor1"), "{to_gw}");
    let out_of_lab = trace("198.51.100.7");
    assert!(
        out_of_lab.contains("dropped at uplink of switch tor1") && out_of_lab.contains("ip_forward = 0"),
        "{out_of_lab}"
    );
    // With a router on the switch there is no uplink: the router holds .1.
    let routed = Lab::up(&topology("calico-bgp.toml"));
    let uplinks = namespaces_with(&format!("cnilab.{}._uplink", routed.name));
    assert!(uplinks.is_empty(), "{uplinks:?}");
}

#[test]
fn the_gateway_stays_reachable_under_switch_faults() {
    let topo = TempFile::toml(MESH5);
    let lab = Lab::up(&topo.path);
    for (fault, args) in [
        ("arp-suppress", vec!["fault", "add", "arp-suppress", "--on", "tor1"]),
        ("upstream-vxlan", vec!["fault", "add", "upstream-vxlan", "--on", "tor1"]),
    ] {
        let out = lab.run(&args);
        assert!(out.status.success(), "{fault}:\n{}", show(&out));
        // Entries learned before the fault would hide it.
        lab.exec_ok("n2", &["ip", "neigh", "flush", "all"]);
        retry(&format!("ping .1 under {fault}"), Duration::from_secs(10), || {
            let out = lab.exec("n2", &["ping", "-c1", "-W1", "172.20.0.1"]);
            if out.status.success() { Ok(()) } else { Err(show(&out)) }
        });
        let out = lab.run(&["fault", "rm", "--all"]);
        assert!(out.status.success(), "{fault} rm:\n{}", show(&out));
    }
    probe_pingall(&lab);
}

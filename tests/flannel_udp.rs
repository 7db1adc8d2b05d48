//! flannel's UDP backend (seed 002's "rudder") end to end on the real
//! kernel: flannel0 held by each node's flanneld, pods at the underlay's
//! MTU - 28, the bare IP packet in UDP 8285 between node addresses, and
//! nothing left after `down`.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

const TOPOLOGY: &str = "flannel-udp.toml";

/// `probe pingall`: every pod answers every pod, on its node and across.
#[test]
fn every_pod_pings_every_other_pod() {
    let lab = Lab::up(&topology(TOPOLOGY));
    assert_eq!(lab.pods().len(), 6);
    let out = lab.run(&["probe", "pingall"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("30/30 pairs replied"), "{}", show(&out));
}

/// flannel0 and the pods get 1500 - 28 = 1472, subnet.env says so, and the
/// node has flannel's one route; a 1444-byte DF ping (1472 bytes of IP)
/// crosses nodes and a 1445-byte one is refused by the pod itself.
#[test]
fn mtu_is_1472_and_df_pings_fit_exactly() {
    mtu_and_df_pings(&[]);
}

/// The same under the real flanneld.
#[test]
fn mtu_is_1472_and_df_pings_fit_exactly_under_upstream() {
    mtu_and_df_pings(&["--flannel", "upstream"]);
}

fn mtu_and_df_pings(args: &[&str]) {
    let lab = Lab::up_with(&topology(TOPOLOGY), args);
    for node in ["master", "worker1", "worker2"] {
        assert_eq!(lab.mtu(node, "flannel0"), 1472, "{node} flannel0");
        assert_eq!(lab.mtu(node, "eth0"), 1500, "{node} eth0");
        let routes = lab.exec_ok(node, &["ip", "route", "show", "dev", "flannel0"]);
        assert_eq!(routes.trim(), "10.244.0.0/16", "{node}: {routes}");
        let env = std::fs::read_to_string(run_dir().join(&lab.name).join(format!("nodes/{node}/agent/subnet.env")))
            .expect("subnet.env");
        assert!(env.contains("FLANNEL_MTU=1472\n"), "{env}");
        assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
    }
    for (pod, _) in lab.pods() {
        assert_eq!(lab.mtu(&pod, "eth0"), 1472, "{pod} eth0");
    }
    retry("1444-byte DF ping across nodes", Duration::from_secs(10), || {
        let out = lab.run(&[
            "probe",
            "ping",
            "master/pod-1",
            "worker2/pod-2",
            "--size",
            "1444",
            "--df",
        ]);
        if out.status.success() { Ok(()) } else { Err(show(&out)) }
    });
    let out = lab.run(&[
        "probe",
        "ping",
        "master/pod-1",
        "worker2/pod-2",
        "--size",
        "1445",
        "--df",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a 1445-byte DF ping must not pass:\n{}",
        show(&out)
    );
    assert!(
        show(&out).contains("mtu=1472"),
        "the pod itself refuses it:\n{}",
        show(&out)
    );
}

/// The bytes of each packet tcpdump -x printed, from the IP header on.
fn packets(text: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("0x") {
            let Some((offset, hex)) = rest.split_once(':') else {
                continue;
            };
            if offset == "0000" {
                out.push(Vec::new());
            }
            let digits: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            let bytes = (0..digits.len() / 2).map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap());
            if let Some(p) = out.last_mut() {
                p.extend(bytes);
            }
        }
    }
    out
}

/// `capture` on a node's eth0 sees UDP 8285 from node address to node
/// address, and the payload is the pods' ICMP packet itself (IP header,
/// protocol 1, the pods' addresses), with nothing in between.
#[test]
fn capture_shows_the_pods_icmp_bare_in_udp_8285() {
    capture_bare_icmp(&[]);
}

/// The same wire under the real flanneld.
#[test]
fn capture_shows_the_pods_icmp_bare_in_udp_8285_under_upstream() {
    capture_bare_icmp(&["--flannel", "upstream"]);
}

fn capture_bare_icmp(args: &[&str]) {
    let lab = Lab::up_with(&topology(TOPOLOGY), args);
    let pods = lab.pods();
    let ip_of = |p: &str| pods.iter().find(|(k, _)| k == p).unwrap().1.clone();
    let (src_ip, dst_ip) = (ip_of("worker1/pod-1"), ip_of("worker2/pod-1"));
    let text = capture(
        &lab,
        &["worker2", "--count", "2", "--", "-x", "udp", "port", "8285"],
        || {
            lab.exec("worker1/pod-1", &["ping", "-c1", "-W1", &dst_ip]);
        },
    );
    assert!(
        text.contains("IP 172.20.0.11.8285 > 172.20.0.12.8285: UDP, length 84"),
        "{text}"
    );
    let addr = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let inner: Vec<Vec<u8>> = packets(&text)
        .into_iter()
        .filter(|p| p.len() >= 48 && p[9] == 17)
        .map(|p| p[28..].to_vec())
        .collect();
    assert!(
        inner
            .iter()
            .any(|i| i[0] == 0x45 && i[9] == 1 && i[12..16] == addr(&src_ip) && i[16..20] == addr(&dst_ip)),
        "the UDP payload is the pods' ICMP packet:\n{text}"
    );
}

/// A TCP SYN to an address no lease holds: flanneld answers ICMP net
/// unreachable into flannel0 from the lease's .0, as flanneld's proxy does,
/// and the node drops it as a martian (its source is the node's own
/// address), so the pod only times out, as under real flanneld.
#[test]
fn no_lease_gets_net_unreachable_that_the_node_drops_as_martian() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let syn = || {
        lab.exec(
            "master/pod-1",
            &["timeout", "1", "bash", "-c", "echo > /dev/tcp/10.244.200.5/80"],
        );
    };
    let text = capture(&lab, &["master", "flannel0", "--count", "2", "--", "icmp"], syn);
    let lease = lab.pods().into_iter().find(|(p, _)| p == "master/pod-1").unwrap().1;
    let pod: std::net::Ipv4Addr = lease.parse().unwrap();
    let dot0 = std::net::Ipv4Addr::from(u32::from(pod) & 0xffff_ff00);
    assert!(
        text.contains(&format!("IP {dot0} > {pod}: ICMP net 10.244.200.5 unreachable")),
        "{text}"
    );
    let text = capture(&lab, &["master/pod-1", "--count", "2", "--", "icmp", "or", "tcp"], syn);
    assert!(text.contains("Flags [S]"), "{text}");
    assert!(!text.contains("ICMP"), "the node drops it as a martian:\n{text}");
}

/// `trace` follows the packet into flannel0 and stops there, saying why,
/// without claiming a delivery it cannot see.
#[test]
fn trace_stops_at_the_tun_device_and_says_why() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let out = lab.run(&["trace", "master/pod-1", "worker2/pod-2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("trace JSON");
    assert_eq!(v["delivered"], false, "{}", show(&out));
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("flannel0") && verdict.contains("TUN device") && verdict.contains("8285"),
        "{verdict}"
    );
}

/// `down` stops every flanneld (and with it flannel0 and its forwarder)
/// and leaves nothing of the lab.
#[test]
fn down_leaves_nothing() {
    let lab = Lab::up(&topology(TOPOLOGY));
    assert_eq!(
        processes_mentioning(&format!("/{}/", lab.name)).len(),
        4,
        "three flanneld and watchd"
    );
    down_reports_and_leaves_nothing(&lab.name, "removed 11 namespaces, stopped 4 processes");
}

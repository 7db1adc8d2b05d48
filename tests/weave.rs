//! Weave Net (v2.8.1 stand-in, sleeve) end to end on the real kernel: the
//! weave bridge and its ports at MTU 1376, pods in 10.32.0.0/12 from each
//! node's IPAM share, every pod reaching every pod through weaver's UDP
//! 6783 sleeve, what `capture` decodes of it, the block and agent-down
//! faults, and nothing left after `down`, also after `kill -9`.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;

const TOPOLOGY: &str = "weave.toml";
const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn add_fault(lab: &Lab, args: &[&str]) -> String {
    let mut a = vec!["fault", "add"];
    a.extend_from_slice(args);
    let out = lab.run(&a);
    assert!(out.status.success(), "fault add {args:?}:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ping(lab: &Lab, src: &str, ip: &str) -> bool {
    lab.exec(src, &["ping", "-c1", "-W1", ip]).status.success()
}

fn ip_of(lab: &Lab, pod: &str) -> String {
    lab.pods().into_iter().find(|(p, _)| p == pod).unwrap().1
}

/// The router's view of a node (its status file).
fn status(lab: &Lab, node: &str) -> serde_json::Value {
    let p = run_dir()
        .join(&lab.name)
        .join(format!("nodes/{node}/agent/status.json"));
    serde_json::from_str(&std::fs::read_to_string(p).expect("status file")).expect("status JSON")
}

/// `probe pingall` and the test's own pings: all 30 pairs across 3 nodes.
#[test]
fn every_pod_pings_every_other_pod() {
    let lab = Lab::up(&topology(TOPOLOGY));
    assert_eq!(lab.pods().len(), 6);
    let started = Instant::now();
    let out = lab.run(&["probe", "pingall"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("30/30 pairs replied"), "{}", show(&out));
    pingall(&lab);
    eprintln!("pingall (probe and 30 pings) in {:?}", started.elapsed());
    // Each router learned the other nodes' pod MACs at their peers.
    retry(
        "node1's status shows the remote pods' MACs",
        Duration::from_secs(5),
        || {
            let s = status(&lab, "node1");
            let remote = s["macs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["nickname"] != "node1")
                .count();
            if remote >= 4 { Ok(()) } else { Err(format!("{s}")) }
        },
    );
}

/// The bridge, its two ports and every pod run at WEAVE_MTU 1376; the
/// bridge has the peer name as MAC and the share's first address /12.
#[test]
fn bridge_ports_and_pods_have_mtu_1376() {
    let lab = Lab::up(&topology(TOPOLOGY));
    for node in NODES {
        for dev in ["weave", "vethwe-bridge", "vethwe-pcap"] {
            assert_eq!(lab.mtu(node, dev), 1376, "{node} {dev}");
        }
        assert_eq!(lab.mtu(node, "eth0"), 1500, "{node} eth0");
        let s = status(&lab, node);
        let link = lab.exec_ok(node, &["ip", "-o", "link", "show", "weave"]);
        assert!(
            link.contains(&format!("link/ether {} ", s["name"].as_str().unwrap())),
            "{link}"
        );
        let master = lab.exec_ok(node, &["ip", "-o", "link", "show", "master", "weave"]);
        assert!(master.contains("vethwe-bridge@vethwe-pcap"), "{master}");
        let addr = lab.exec_ok(node, &["ip", "-o", "-4", "addr", "show", "weave"]);
        let bridge_ip = &s["allocations"]["weave:expose"];
        assert!(
            addr.contains(&format!("inet {}/12 ", bridge_ip.as_str().unwrap())),
            "{addr}"
        );
    }
    for (pod, _) in lab.pods() {
        assert_eq!(lab.mtu(&pod, "eth0"), 1376, "{pod} eth0");
        let node = pod.split('/').next().unwrap();
        let gw = status(&lab, node)["allocations"]["weave:expose"]
            .as_str()
            .unwrap()
            .to_string();
        let route = lab.exec_ok(&pod, &["ip", "route", "show", "default"]);
        assert_eq!(route.trim(), format!("default via {gw} dev eth0"), "{pod}");
    }
    // Bulk TCP crosses too: the pods' and the bridge's tx checksumming is
    // off (Weave's EthtoolTXOff), so no frame the router sees is larger
    // than the MTU.
    let out = lab.run(&["probe", "tcp", "node1/pod-1", "node3/pod-2"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("4194304 of 4194304 bytes"), "{}", show(&out));
    // The largest frame that fits: 1348 bytes of ping = 1376 bytes of IP, DF.
    retry("1348-byte DF ping across nodes", Duration::from_secs(10), || {
        let out = lab.run(&["probe", "ping", "node1/pod-1", "node3/pod-2", "--size", "1348", "--df"]);
        if out.status.success() { Ok(()) } else { Err(show(&out)) }
    });
}

/// Pod addresses: inside 10.32.0.0/12, each in its node's share, never the
/// same twice, and the same in a second lab of the same topology.
#[test]
fn addresses_are_in_the_range_disjoint_and_deterministic() {
    let a = Lab::up(&topology(TOPOLOGY));
    let b = Lab::up(&topology(TOPOLOGY));
    let range: ipnet::Ipv4Net = "10.32.0.0/12".parse().unwrap();
    let pods = a.pods();
    let mut seen = BTreeSet::new();
    for (pod, ip) in &pods {
        let ip: Ipv4Addr = ip.parse().unwrap();
        assert!(range.contains(&ip), "{pod} {ip}");
        assert!(seen.insert(ip), "{ip} twice");
        let node = pod.split('/').next().unwrap();
        let share: ipnet::Ipv4Net = status(&a, node)["share"].as_str().unwrap().parse().unwrap();
        assert!(share.contains(&ip), "{pod} {ip} outside its node's share {share}");
        let eth0 = a.exec_ok(pod, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(eth0.contains(&format!("inet {ip}/12 ")), "{eth0}");
    }
    // Weave's split of the /12 among three peers, sorted by name (the
    // names are handed out in node order), and each bridge's address.
    for (node, share, bridge) in [
        ("node1", "10.32.0.0/13", "10.32.0.1"),
        ("node2", "10.40.0.0/14", "10.40.0.0"),
        ("node3", "10.44.0.0/14", "10.44.0.0"),
    ] {
        let s = status(&a, node);
        assert_eq!(s["share"], share, "{node}");
        assert_eq!(s["allocations"]["weave:expose"], bridge, "{node}");
    }
    assert_eq!(pods, b.pods(), "same topology, same addresses");
}

/// `capture` on a node decodes UDP 6783 between node addresses: the
/// sending peer and the pods' frames inside (MACs, IPv4, ICMP).
#[test]
fn capture_decodes_the_pods_frames_in_udp_6783() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let (src, dst) = (ip_of(&lab, "node1/pod-1"), ip_of(&lab, "node3/pod-2"));
    let text = capture(
        &lab,
        &[
            "node3", "--count", "2", "--", "udp", "port", "6783", "and", "greater", "150",
        ],
        || {
            lab.exec("node1/pod-1", &["ping", "-c1", "-W1", &dst]);
        },
    );
    assert!(
        text.contains("IP 172.20.0.10.6783 > 172.20.0.12.6783: UDP, length 118"),
        "{text}"
    );
    assert!(text.contains("weave sleeve from peer "), "{text}");
    assert!(text.contains("(node1), 1 frame"), "{text}");
    assert!(
        text.contains(&format!("IPv4 {src} > {dst}: ICMP echo request")),
        "{text}"
    );
    assert!(text.contains(&format!("IPv4 {dst} > {src}: ICMP echo reply")), "{text}");
}

/// Blocking UDP 6783 on node2 cuts its pods off from the other nodes (the
/// routers drop it after the heartbeat timeout); removing the fault brings
/// them back, and the snapshot is the one from before, byte for byte.
#[test]
fn blocked_sleeve_port_breaks_cross_node_pings_and_rm_restores() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let before = lab.snapshot();
    let target = ip_of(&lab, "node2/pod-1");
    assert!(ping(&lab, "node1/pod-1", &target));
    let id = add_fault(&lab, &["block", "--on", "node2", "--proto", "udp", "--port", "6783"]);
    retry("node1 drops node2", Duration::from_secs(15), || {
        let s = status(&lab, "node1");
        let p = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["nickname"] == "node2")
            .cloned();
        match p {
            Some(p) if p["state"] == "established" => Err(format!("{p}")),
            _ => Ok(()),
        }
    });
    assert!(!ping(&lab, "node1/pod-1", &target), "blocked sleeve, no reply");
    assert!(!ping(&lab, "node3/pod-2", &ip_of(&lab, "node2/pod-2")));
    assert!(
        ping(&lab, "node2/pod-1", &ip_of(&lab, "node2/pod-2")),
        "node2's own pods still talk"
    );
    assert!(
        ping(&lab, "node1/pod-1", &ip_of(&lab, "node3/pod-1")),
        "node1 and node3 still talk"
    );
    let out = lab.run(&["fault", "rm", &id]);
    assert!(out.status.success(), "{}", show(&out));
    let started = Instant::now();
    retry("node1 reaches node2's pod again", Duration::from_secs(20), || {
        if ping(&lab, "node1/pod-1", &target) {
            Ok(())
        } else {
            Err("no reply".into())
        }
    });
    eprintln!("reachable again {:?} after fault rm", started.elapsed());
    assert_eq!(
        before,
        lab.snapshot(),
        "the snapshot after rm differs from the one before add"
    );
}

/// agent-down on node3: its pods are unreachable from the other nodes;
/// the fault's removal starts weaver again, which reconnects, and they are
/// reachable again.
#[test]
fn agent_down_cuts_the_nodes_pods_off_until_the_router_is_back() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let target = ip_of(&lab, "node3/pod-1");
    assert!(ping(&lab, "node1/pod-1", &target));
    let before = lab.snapshot();
    let id = add_fault(&lab, &["agent-down", "--on", "node3"]);
    retry("node1 loses node3", Duration::from_secs(10), || {
        if ping(&lab, "node1/pod-1", &target) {
            Err("still replies".into())
        } else {
            Ok(())
        }
    });
    assert!(!ping(&lab, "node2/pod-2", &target));
    assert!(
        ping(&lab, "node3/pod-1", &ip_of(&lab, "node3/pod-2")),
        "the bridge still joins node3's pods"
    );
    retry("node1 forgets node3's MACs", Duration::from_secs(5), || {
        let s = status(&lab, "node1");
        let forgot = s["macs"].as_array().unwrap().iter().all(|m| m["nickname"] != "node3");
        if forgot { Ok(()) } else { Err(format!("{s}")) }
    });
    let st: serde_json::Value = serde_json::from_slice(&lab.run(&["status", "--json"]).stdout).unwrap();
    let peers = st["overlay_peers"].as_array().expect("overlay_peers");
    let seen = |on: &str, nick: &str| {
        peers
            .iter()
            .find(|p| p["on"] == on && p["peer"].as_str().unwrap().ends_with(&format!("({nick})")))
            .unwrap_or_else(|| panic!("{on} -> {nick} in {st}"))["state"]
            .clone()
    };
    assert_eq!(seen("node1", "node3"), "disconnected", "{st}");
    assert_eq!(seen("node1", "node2"), "established", "{st}");
    assert_eq!(seen("node3", "node1"), "router not running", "{st}");
    let out = lab.run(&["fault", "rm", &id]);
    assert!(out.status.success(), "{}", show(&out));
    let started = Instant::now();
    retry("node3's pods reachable again", Duration::from_secs(20), || {
        if ping(&lab, "node1/pod-1", &target) && ping(&lab, "node2/pod-2", &target) {
            Ok(())
        } else {
            Err("no reply".into())
        }
    });
    eprintln!("reachable again {:?} after fault rm", started.elapsed());
    pingall(&lab);
    assert_eq!(before, lab.snapshot(), "the restarted router keeps the node as it was");
}

/// `down` stops every weaver and leaves nothing of the lab, also after
/// the routers were killed with SIGKILL.
#[test]
fn down_after_kill_9_of_the_routers_leaves_nothing() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let agents: Vec<u64> = lab.state()["agents"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(agents.len(), 3);
    assert_eq!(
        processes_mentioning(&format!("/{}/", lab.name)).len(),
        4,
        "three weavers and watchd"
    );
    for pid in agents {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let name = lab.name.clone();
    let out = cnilab(&["down", &name]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("removed 11 namespaces"), "{}", show(&out));
    assert_gone(&name);
}

/// `kill -9` of `up` once the routers run, then `down`: nothing is left.
#[test]
fn kill_9_of_up_then_down_leaves_nothing() {
    let lab = Lab::reserve();
    let mut up = std::process::Command::new(bin())
        .args(["up", topology(TOPOLOGY).to_str().unwrap(), "--name", &lab.name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = run_dir().join(&lab.name).join("nodes/node1/agent/status.json");
    retry("up starts the routers", Duration::from_secs(30), || {
        if status.exists() {
            Ok(())
        } else {
            Err("no router yet".into())
        }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = up.wait();
    let out = cnilab(&["down", &lab.name]);
    assert!(out.status.success(), "{}", show(&out));
    assert_gone(&lab.name);
}

/// `trace` follows the frame through weave, vethwe-bridge and weaver's
/// UDP 6783 to the peer's bridge and the pod; with UDP 6783 blocked on the
/// destination's node it says where the outer packet is dropped, and with
/// its router stopped, that nothing carries the frame.
#[test]
fn trace_follows_the_sleeve_and_never_claims_a_blocked_delivery() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let trace = |lab: &Lab| -> serde_json::Value {
        let out = lab.run(&["trace", "node1/pod-1", "node2/pod-2", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("trace JSON: {}", show(&out)))
    };
    let v = trace(&lab);
    assert_eq!(v["delivered"], true, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("weaver sends the frame in UDP 6783 from 172.20.0.10 to 172.20.0.11"),
        "{text}"
    );
    assert!(text.contains("outer 172.20.0.10 -> 172.20.0.11 UDP 6783"), "{text}");
    assert!(text.contains("injects the frame"), "{text}");
    let block = add_fault(&lab, &["block", "--on", "node2", "--proto", "udp", "--port", "6783"]);
    let v = trace(&lab);
    assert_eq!(v["delivered"], false, "{v}");
    assert_eq!(v["dropped"]["at"], "node2", "{v}");
    assert!(v["verdict"].as_str().unwrap().contains("UDP 6783"), "{v}");
    assert!(lab.run(&["fault", "rm", &block]).status.success());
    let down = add_fault(&lab, &["agent-down", "--on", "node2"]);
    let v = trace(&lab);
    assert_eq!(v["delivered"], false, "{v}");
    assert!(
        v["verdict"].as_str().unwrap().contains("weaver on node2 is stopped"),
        "{v}"
    );
    assert!(lab.run(&["fault", "rm", &down]).status.success());
}

/// weaver answers Weave's `/status` on 127.0.0.1:6784 in the node, as the
/// DaemonSet's readiness probe asks it.
#[test]
fn the_router_serves_status_on_6784() {
    let lab = Lab::up(&topology(TOPOLOGY));
    let get = "exec 3<>/dev/tcp/127.0.0.1/6784; printf 'GET /status HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let out = lab.exec_ok("node1", &["bash", "-c", get]);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("Protocol: weave 1..2"), "{out}");
    assert!(out.contains("(node1)"), "{out}");
    assert!(out.contains("Connections: 2 (2 established)"), "{out}");
    assert!(out.contains("Range: 10.32.0.0/12"), "{out}");
}

/// `doctor` for the Weave topology: nothing it needs is missing, and it
/// says that without openvswitch Weave runs sleeve only.
#[test]
fn doctor_says_weave_runs_sleeve_without_openvswitch() {
    let out = cnilab(&["doctor", topology(TOPOLOGY).to_str().unwrap()]);
    let text = show(&out);
    assert!(text.contains("all of it is here"), "{text}");
    let ovs = std::process::Command::new("sh")
        .args(["-c", "grep -qw openvswitch /proc/modules || test -d /sys/module/openvswitch"])
        .status()
        .is_ok_and(|s| s.success());
    if !ovs {
        assert!(
            text.contains("openvswitch: missing, weave runs sleeve (UDP 6783) only, as Weave falls back to"),
            "{text}"
        );
    }
}

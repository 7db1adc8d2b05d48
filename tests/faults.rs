//! Every fault kind of cli.md: it has its effect on the real data plane,
//! and `fault rm` restores the lab's snapshot byte for byte.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

fn ping(lab: &Lab, from: &str, to: &str, extra: &[&str]) -> bool {
    let mut args = vec!["probe", "ping", from, to];
    args.extend_from_slice(extra);
    lab.run(&args).status.success()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    retry(what, Duration::from_secs(20), || {
        if f() { Ok(()) } else { Err("not yet".into()) }
    });
}

fn add(lab: &Lab, args: &[&str]) -> String {
    let mut a = vec!["fault", "add"];
    a.extend_from_slice(args);
    let out = lab.run(&a);
    assert!(out.status.success(), "fault add {args:?}:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the fault and checks the snapshot is the one from before.
fn rm_restores(lab: &Lab, id: &str, before: &str) {
    let out = lab.run(&["fault", "rm", id]);
    assert!(out.status.success(), "fault rm {id}:\n{}", show(&out));
    let after = lab.snapshot();
    assert_eq!(before, after, "the snapshot after rm differs from the one before add");
    let ls = lab.run(&["fault", "ls"]);
    assert!(show(&ls).contains("no faults"), "{}", show(&ls));
}

#[test]
fn mtu_drops_oversize_frames_silently() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let id = add(&lab, &["mtu", "--on", "tor1", "--mtu", "1400"]);
    assert!(lab.snapshot().contains(&format!("fault {id} mtu on tor1 (mtu 1400)")));
    assert!(ping(&lab, "worker1/pod-1", "worker2/pod-1", &[]));
    assert!(!ping(
        &lab,
        "worker1/pod-1",
        "worker2/pod-1",
        &["--size", "1422", "--df"]
    ));
    let pmtu = lab.run(&["probe", "pmtu", "worker1/pod-1", "worker2/pod-1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&pmtu.stdout).unwrap();
    // 1400 - 50 of flannel's VXLAN, plus the 4 bytes of a VLAN tag that a
    // veth accepts beyond its MTU.
    assert_eq!(
        (v["path_mtu"].as_u64(), v["blackhole"].as_bool()),
        (Some(1354), Some(true)),
        "{v}"
    );
    rm_restores(&lab, &id, &before);
    assert!(ping(
        &lab,
        "worker1/pod-1",
        "worker2/pod-1",
        &["--size", "1422", "--df"]
    ));
}

#[test]
fn upstream_vxlan_leaves_1400_behind_a_blackhole() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let clean = lab.run(&["probe", "pmtu", "worker1/pod-1", "worker2/pod-1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(
        (v["interface_mtu"].as_u64(), v["path_mtu"].as_u64()),
        (Some(1450), Some(1450)),
        "{v}"
    );
    let id = add(&lab, &["upstream-vxlan", "--on", "tor1"]);
    assert!(
        lab.snapshot().contains("== upstream-tor1"),
        "the hop's namespaces show in the snapshot"
    );
    let out = lab.run(&["probe", "pmtu", "worker1/pod-1", "worker2/pod-1", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a blackhole fails the probe: {}",
        show(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["path_mtu"].as_u64(), v["blackhole"].as_bool()),
        (Some(1400), Some(true)),
        "{v}"
    );
    let tcp = lab.run(&["probe", "tcp", "worker1/pod-1", "worker2/pod-1"]);
    assert_eq!(tcp.status.code(), Some(1), "{}", show(&tcp));
    assert!(show(&tcp).contains("STALLED"), "{}", show(&tcp));
    rm_restores(&lab, &id, &before);
}

#[test]
fn arp_suppress_on_a_node_cuts_its_pods_from_their_gateway() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let id = add(&lab, &["arp-suppress", "--on", "worker1"]);
    assert!(!ping(&lab, "worker1/pod-1", "worker2/pod-1", &[]));
    assert!(
        ping(&lab, "worker1/pod-1", "worker1/pod-2", &[]),
        "same-node pods answer ARP themselves"
    );
    eventually("the gateway's neighbour entry fails", || {
        lab.exec_ok("worker1/pod-1", &["ip", "neigh", "show", "dev", "eth0"])
            .contains("FAILED")
    });
    assert!(lab.snapshot().contains("sysctl net.ipv4.conf.all.arp_ignore = 8"));
    rm_restores(&lab, &id, &before);
    eventually("traffic comes back", || {
        ping(&lab, "worker1/pod-1", "worker2/pod-1", &[])
    });
}

#[test]
fn arp_suppress_on_a_switch_answers_only_what_it_learned() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    // A host the switch's control plane never learned: a second address on worker2.
    lab.exec_ok("worker2", &["ip", "addr", "add", "172.20.0.200/24", "dev", "eth0"]);
    assert!(ping(&lab, "master", "172.20.0.200", &[]));
    let before = lab.snapshot();
    let id = add(&lab, &["arp-suppress", "--on", "tor1"]);
    assert!(
        ping(&lab, "master", "worker2", &[]),
        "nodes are answered from the switch's table"
    );
    assert!(ping(&lab, "master/pod-1", "worker2/pod-1", &[]));
    assert!(
        !ping(&lab, "master", "172.20.0.200", &[]),
        "an unlearned host goes unanswered"
    );
    rm_restores(&lab, &id, &before);
    eventually("the host answers again", || ping(&lab, "master", "172.20.0.200", &[]));
}

#[test]
fn link_down_takes_a_node_off_the_switch() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let id = add(&lab, &["link-down", "--on", "worker1"]);
    assert!(
        lab.exec_ok("worker1", &["ip", "link", "show", "eth0"])
            .contains("NO-CARRIER")
    );
    assert!(!ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
    assert!(ping(&lab, "master/pod-1", "worker2/pod-1", &[]));
    rm_restores(&lab, &id, &before);
    eventually("worker1 is back", || ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
}

#[test]
fn loss_drops_packets_with_netem_or_the_iptables_fallback() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let out = lab.run(&["fault", "add", "loss", "--on", "worker1", "--percent", "100"]);
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ls = lab.run(&["fault", "ls", "--json"]);
    let faults: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    if faults[0]["undo"]["iptables"].is_array() {
        assert!(show(&out).contains("no netem"), "the fallback is said: {}", show(&out));
    }
    assert!(!ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
    assert!(ping(&lab, "master/pod-1", "worker2/pod-1", &[]));
    rm_restores(&lab, &id, &before);
    assert!(ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
}

#[test]
fn block_drops_one_port_on_a_node() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let id = add(&lab, &["block", "--on", "worker1", "--proto", "udp", "--port", "8472"]);
    assert!(!ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
    assert!(ping(&lab, "worker1/pod-1", "worker1/pod-2", &[]));
    assert!(ping(&lab, "master", "worker1", &[]), "only UDP 8472 is blocked");
    rm_restores(&lab, &id, &before);
    assert!(ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
}

#[test]
fn sysctl_sets_and_restores_a_value() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let id = add(
        &lab,
        &[
            "sysctl",
            "--on",
            "worker1",
            "--key",
            "net.ipv4.ip_forward",
            "--value",
            "0",
        ],
    );
    assert!(
        lab.snapshot().contains("== node worker1")
            && lab.exec_ok("worker1", &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim() == "0"
    );
    assert!(!ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
    let id2 = add(
        &lab,
        &[
            "sysctl",
            "--on",
            "master/pod-1",
            "--key",
            "net.ipv4.conf.eth0.rp_filter",
            "--value",
            "1",
        ],
    );
    assert_eq!(
        lab.exec_ok("master/pod-1", &["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"])
            .trim(),
        "1"
    );
    let out = lab.run(&["fault", "rm", &id2]);
    assert!(out.status.success(), "{}", show(&out));
    rm_restores(&lab, &id, &before);
    assert!(ping(&lab, "master/pod-1", "worker1/pod-1", &[]));
}

#[test]
fn agent_down_stops_programming_and_rm_brings_it_back() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let pid = lab.state()["agents"]["worker1"].as_u64().unwrap();
    let id = add(&lab, &["agent-down", "--on", "worker1"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    let status = lab.run(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["nodes"][1]["agent"]["running"], false, "{s}");
    // A new lease reaches the running agents, not the stopped one.
    let subnets = run_dir().join(&lab.name).join("etcd/coreos.com/network/subnets");
    std::fs::write(
        subnets.join("10.244.250.0-24"),
        r#"{"PublicIP":"172.20.0.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#,
    )
    .unwrap();
    eventually("master programs the new lease", || {
        lab.exec_ok("master", &["ip", "route"]).contains("10.244.250.0/24")
    });
    assert!(!lab.exec_ok("worker1", &["ip", "route"]).contains("10.244.250.0/24"));
    std::fs::remove_file(subnets.join("10.244.250.0-24")).unwrap();
    eventually("master drops it again", || {
        !lab.exec_ok("master", &["ip", "route"]).contains("10.244.250.0/24")
    });
    rm_restores(&lab, &id, &before);
    let s: serde_json::Value = serde_json::from_slice(&lab.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(s["nodes"][1]["agent"]["running"], true, "{s}");
}

#[test]
fn agent_restart_with_a_new_mac_leaves_stale_fdb_entries() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let old_mac = lab.exec_json("worker2", &["ip", "-j", "link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let id = add(&lab, &["agent-restart", "--on", "worker2", "--new-mac"]);
    let new_mac = lab.exec_json("worker2", &["ip", "-j", "link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old_mac, new_mac);
    let fdb = lab.exec_json("master", &["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
    let macs: Vec<&str> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["dst"] == "172.20.0.12")
        .map(|f| f["mac"].as_str().unwrap())
        .collect();
    assert!(
        macs.contains(&old_mac.as_str()) && macs.contains(&new_mac.as_str()),
        "stale and new: {fdb}"
    );
    let neigh = lab.exec_json("master", &["ip", "-j", "neigh", "show", "dev", "flannel.1"]);
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["lladdr"] == new_mac.as_str()),
        "{neigh}"
    );
    assert!(ping(&lab, "master/pod-1", "worker2/pod-1", &[]));
    rm_restores(&lab, &id, &before);
}

#[test]
fn agent_down_on_calico_withdraws_the_node_blocks() {
    let lab = Lab::up(&topology("calico-bgp-timers.toml"));
    let before = lab.snapshot();
    let block = lab.state()["plan"]["profile"]["nodes"][3]["block"]
        .as_str()
        .unwrap()
        .to_string();
    let id = add(&lab, &["agent-down", "--on", "worker3"]);
    eventually("master loses worker3's block", || {
        !lab.exec_ok("master", &["ip", "route"]).contains(&block)
    });
    let bgp = lab.run(&["probe", "bgp", "master"]);
    assert_eq!(bgp.status.code(), Some(1), "{}", show(&bgp));
    rm_restores(&lab, &id, &before);
    assert!(lab.exec_ok("master", &["ip", "route"]).contains(&block));
}

#[test]
fn bad_fault_commands_exit_2() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    for (args, needle) in [
        (
            vec!["fault", "add", "mtu", "--on", "worker1", "--mtu", "1400"],
            "needs a switch",
        ),
        (vec!["fault", "add", "mtu", "--on", "tor1"], "needs --mtu"),
        (vec!["fault", "add", "flood", "--on", "tor1"], "unknown fault kind"),
        (vec!["fault", "add", "agent-restart", "--on", "nowhere"], "nowhere"),
        (vec!["fault", "rm", "f9"], "no fault f9"),
    ] {
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(show(&out).contains(needle), "{args:?}: {}", show(&out));
    }
}

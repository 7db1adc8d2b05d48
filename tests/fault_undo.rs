//! Faults keep what they changed step by step: a fault that fails half-way
//! is reverted, and `fault rm --all` and `down` go on past a step that
//! fails, then report every failure (exit 1). Each test breaks something by
//! hand in its own lab only.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;

/// MTUs of the links in the fabric enslaved to switch `tor1`, and its own.
fn switch_mtus(lab: &Lab) -> Vec<(String, u64)> {
    let links: Value = lab.exec_json("tor1", &["ip", "-j", "link", "show"]);
    let mut v: Vec<(String, u64)> = links
        .as_array()
        .expect("links")
        .iter()
        .filter(|l| l["ifname"] == "tor1" || l["master"] == "tor1")
        .map(|l| (l["ifname"].as_str().unwrap().to_string(), l["mtu"].as_u64().unwrap()))
        .collect();
    v.sort();
    v
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_fault_that_fails_half_way_is_reverted() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    // A last port that refuses MTU 1400: a VXLAN device over a 1200-byte link.
    for cmd in [
        &[
            "ip", "link", "add", "u10a", "mtu", "1200", "type", "veth", "peer", "name", "u10b",
        ][..],
        &[
            "ip", "link", "add", "u10vx", "type", "vxlan", "id", "9", "dev", "u10a", "dstport", "4789",
        ],
        &["ip", "link", "set", "u10vx", "master", "tor1"],
    ] {
        lab.exec_ok("tor1", cmd);
    }
    let mtus = switch_mtus(&lab);
    assert!(mtus.iter().filter(|(_, m)| *m != 1400).count() >= 3, "{mtus:?}");
    let before = lab.snapshot();

    let out = lab.run(&["fault", "add", "mtu", "--on", "tor1", "--mtu", "1400"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("failed half-way"), "{}", show(&out));
    assert!(stderr(&out).contains("were reverted"), "{}", show(&out));
    assert_eq!(switch_mtus(&lab), mtus, "the ports changed before the failure are back");
    assert_eq!(lab.snapshot(), before);
    assert!(show(&lab.run(&["fault", "ls"])).contains("no faults"));
}

#[test]
fn rm_all_goes_on_past_a_failed_step_and_lists_it() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let key = "/proc/sys/net/ipv4/conf/all/arp_announce";
    let announce = lab.exec_ok("worker1", &["cat", key]);
    let mtus = switch_mtus(&lab);
    let state = lab.state();
    let gone = state["plan"]["nodes"][1]["port"].as_str().expect("port").to_string();
    let f1 = lab.run(&[
        "fault",
        "add",
        "sysctl",
        "--on",
        "worker1",
        "--key",
        "net.ipv4.conf.all.arp_announce",
        "--value",
        "2",
    ]);
    assert!(f1.status.success(), "{}", show(&f1));
    let f2 = lab.run(&["fault", "add", "mtu", "--on", "tor1", "--mtu", "1400"]);
    assert!(f2.status.success(), "{}", show(&f2));

    // One undo step can no longer be done: its link is gone.
    lab.exec_ok("tor1", &["ip", "link", "del", &gone]);
    let out = lab.run(&["fault", "rm", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("set the MTU of {gone} in")), "{}", show(&out));
    assert!(err.contains(&format!("link {gone} is missing")), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed f1 sysctl"),
        "the older fault is still reverted: {}",
        show(&out)
    );
    let left: Vec<(String, u64)> = mtus.into_iter().filter(|(n, _)| *n != gone).collect();
    assert_eq!(switch_mtus(&lab), left, "every other port and the bridge are back");
    assert_eq!(lab.exec_ok("worker1", &["cat", key]), announce);
    assert!(show(&lab.run(&["fault", "ls"])).contains("no faults"));
}

#[test]
fn down_goes_on_past_a_namespace_it_cannot_remove() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    // Not a namespace but a folder where one would be: it cannot be removed as one.
    let odd = format!("/run/netns/cnilab.{}.zz", lab.name);
    std::fs::create_dir(&odd).expect("folder in /run/netns");
    let out = cnilab(&["down", &lab.name]);
    let left = namespaces_with(&format!("cnilab.{}.", lab.name));
    std::fs::remove_dir(&odd).expect("remove the folder");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains(&format!("cnilab.{}.zz", lab.name)),
        "{}",
        show(&out)
    );
    assert_eq!(
        left,
        vec![format!("cnilab.{}.zz", lab.name)],
        "everything else is removed"
    );
    let again = cnilab(&["down", &lab.name]);
    assert!(again.status.success(), "{}", show(&again));
    assert_gone(&lab.name);
}

//! Snapshots hold each namespace's iptables rules: a firewall change is a
//! snapshot diff, and removing it gives back the snapshot byte for byte.

#[path = "common/mod.rs"]
mod common;

use common::*;

/// The lines of one namespace's section (`== node worker1`).
fn section<'a>(snap: &'a str, title: &str) -> Vec<&'a str> {
    let head = format!("== {title}");
    snap.lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

#[test]
fn a_block_fault_shows_its_drop_rules_and_rm_restores_the_snapshot() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = lab.snapshot();
    let out = lab.run(&[
        "fault", "add", "block", "--on", "worker1", "--proto", "udp", "--port", "8472",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let during = lab.snapshot();
    let worker1 = section(&during, "node worker1");
    for rule in [
        "iptables raw -A PREROUTING -i eth0 -p udp -m udp --dport 8472 -j DROP",
        "iptables mangle -A POSTROUTING -o eth0 -p udp -m udp --dport 8472 -j DROP",
        "iptables raw :PREROUTING ACCEPT",
    ] {
        assert!(
            worker1.contains(&rule),
            "{rule} missing from worker1's section:\n{}",
            worker1.join("\n")
        );
    }
    assert!(
        worker1.iter().all(|l| !l.contains("[") && !l.contains("comment")),
        "no counters, no comments:\n{}",
        worker1.join("\n")
    );
    let others = |snap: &str| -> Vec<String> {
        snap.split("\n== ")
            .filter(|s| !s.starts_with("node worker1\n"))
            .flat_map(|s| s.lines())
            .filter(|l| l.starts_with("iptables "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        others(&during),
        others(&before),
        "the fault touches worker1's tables only"
    );

    let out = lab.run(&["fault", "rm", &id]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(lab.snapshot(), before, "after rm the tables left empty are not shown");
}

//! Golden snapshots: the same topology gives byte-identical snapshots, cycle
//! after cycle and lab name after lab name, equal to the file under
//! snapshots/ (reviewed with `cargo insta review`).

#[path = "common/mod.rs"]
mod common;

use common::*;

fn cycle(topology_file: &str) -> String {
    let lab = Lab::up(&topology(topology_file));
    let snap = lab.snapshot();
    drop(lab);
    snap
}

/// Two cycles of a shipped topology agree, and equal `snapshots/<name>.snap`.
fn stable_and_golden(name: &str) {
    let first = cycle(&format!("{name}.toml"));
    let second = cycle(&format!("{name}.toml"));
    assert_eq!(
        first, second,
        "two up/snapshot/down cycles of {name} must agree byte for byte"
    );
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name.to_string(), first);
    });
}

#[test]
fn flannel_vxlan() {
    stable_and_golden("flannel-vxlan");
}

#[test]
fn flannel_udp() {
    stable_and_golden("flannel-udp");
}

#[test]
fn seed_002_rudder() {
    stable_and_golden("seed-002-rudder");
}

#[test]
fn calico_bgp() {
    stable_and_golden("calico-bgp");
}

#[test]
fn calico_rr() {
    stable_and_golden("calico-rr");
}

#[test]
fn calico_tor() {
    stable_and_golden("calico-tor");
}

#[test]
fn calico_vxlan() {
    stable_and_golden("calico-vxlan");
}

#[test]
fn flannel_routed() {
    stable_and_golden("flannel-routed");
}

#[test]
fn calico_bgp_timers() {
    stable_and_golden("calico-bgp-timers");
}

#[test]
fn eks_pod_limit() {
    stable_and_golden("eks-pod-limit");
}

#[test]
fn aws_vpc() {
    stable_and_golden("aws-vpc");
}

#[test]
fn eks_pod_limit_aws() {
    stable_and_golden("eks-pod-limit-aws");
}

#[test]
fn eks_pod_limit_calico() {
    stable_and_golden("eks-pod-limit-calico");
}

/// Every topology shipped has its golden test above.
#[test]
fn every_topology_has_a_golden_snapshot() {
    for e in std::fs::read_dir(repo().join("topologies")).unwrap().flatten() {
        // topologies/netpol/ holds NetworkPolicy manifests, not topologies.
        if e.path().extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let name = e.file_name().to_string_lossy().trim_end_matches(".toml").to_string();
        assert!(
            repo().join("snapshots").join(format!("{name}.snap")).is_file(),
            "snapshots/{name}.snap is missing"
        );
    }
}

#[test]
fn flannel_host_gw() {
    stable_and_golden("flannel-host-gw");
}

#[test]
fn seed_001_etcd() {
    stable_and_golden("seed-001-etcd");
}

#[test]
fn flannel_no_forward_rules() {
    stable_and_golden("flannel-no-forward-rules");
}

#[test]
fn flannel_two_nics() {
    stable_and_golden("flannel-two-nics");
}

#[test]
fn flannel_two_nics_iface() {
    stable_and_golden("flannel-two-nics-iface");
}

#[test]
fn canal_netpol() {
    stable_and_golden("canal-netpol");
}

#[test]
fn calico_netpol() {
    stable_and_golden("calico-netpol");
}

#[test]
fn flannel_netpol() {
    stable_and_golden("flannel-netpol");
}

#[test]
fn weave() {
    stable_and_golden("weave");
}

#[test]
fn weave_netpol() {
    stable_and_golden("weave-netpol");
}

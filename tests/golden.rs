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

#[test]
fn flannel_vxlan_snapshot_is_stable_and_golden() {
    let first = cycle("flannel-vxlan.toml");
    let second = cycle("flannel-vxlan.toml");
    assert_eq!(first, second, "two up/snapshot/down cycles must agree byte for byte");
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("flannel-vxlan", first);
    });
}

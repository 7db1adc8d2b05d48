//! `down --all` removes every lab on the machine. It runs in a test binary
//! of its own, since it also removes labs other tests would be using.

#[path = "common/mod.rs"]
mod common;

use common::*;

#[test]
fn down_all_removes_every_lab() {
    let a = Lab::up(&topology("flannel-vxlan.toml"));
    let b = Lab::up(&topology("flannel-vxlan.toml"));
    let out = cnilab(&["down", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = show(&out);
    for lab in [&a, &b] {
        assert!(text.contains(&format!("lab {} is down", lab.name)), "{text}");
        assert_gone(&lab.name);
    }
    let again = cnilab(&["down", "--all"]);
    assert!(again.status.success());
    assert!(show(&again).contains("no lab to remove"), "{}", show(&again));
}

//! `down --all` removes every lab on the machine. So that it touches no lab
//! it did not make (other tests', a user's), the test runs it in a mount
//! namespace of its own, where /run/netns and the run folder are fresh:
//! every lab it can see is one it made.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;

use common::*;

#[test]
fn down_all_removes_every_lab() {
    let run = std::env::temp_dir().join(format!("cnilab-downall-{}", unique_name()));
    let (a, b) = (unique_name(), unique_name());
    let topo = topology("flannel-vxlan.toml");
    let script = format!(
        r#"set -e
mount -t tmpfs cnilab-test /run/netns
bin={bin}
$bin up {topo} --name {a} >/dev/null
$bin up {topo} --name {b} >/dev/null
echo "seen: $($bin status {a} >/dev/null && $bin status {b} >/dev/null && echo both)"
$bin down --all
echo "left: $(ls /run/netns | wc -l)"
$bin down --all
"#,
        bin = bin(),
        topo = topo.display(),
    );
    std::fs::create_dir_all("/run/netns").expect("/run/netns");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("CNILAB_RUN_DIR", &run)
        .output()
        .expect("unshare runs");
    let text = show(&out);
    let _ = std::fs::remove_dir_all(&run);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("seen: both"), "{text}");
    for lab in [&a, &b] {
        assert!(text.contains(&format!("lab {lab} is down")), "{text}");
        let procs = processes_mentioning(&format!("{}/{lab}/", run.display()));
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
    assert!(text.contains("left: 0"), "{text}");
    assert!(text.contains("no lab to remove"), "{text}");
}

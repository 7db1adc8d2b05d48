//! One writer per lab: commands that change a lab at the same time are
//! serialized by the lab's lock, so nothing is orphaned and no record is
//! lost. Each pair of commands runs many times (CNILAB_RACE_RUNS, default
//! 50) with random delays between them, to land at different points.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use rand::RngExt as _;

const TOPOLOGY: &str = r#"
name = "race"
[network]
cni = "flannel"
[[switch]]
name = "tor1"
subnet = "172.20.0.0/24"
[[node]]
name = "worker{i}"
count = 2
pods = 2
"#;

fn runs() -> usize {
    std::env::var("CNILAB_RACE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cnilab runs")
}

fn finish(c: Child) -> Output {
    c.wait_with_output().expect("cnilab ends")
}

fn jitter(max_ms: u64) {
    let ms = rand::rng().random_range(0..=max_ms);
    std::thread::sleep(Duration::from_millis(ms));
}

/// After both commands: the lab is either gone, or whole (up finished after
/// the down that found nothing); a whole lab is then removed, and nothing may
/// be left either way.
fn settle(name: &str, up: &Output) {
    if run_dir().join(name).exists() {
        assert_eq!(
            up.status.code(),
            Some(0),
            "a lab is left but its up failed:\n{}",
            show(up)
        );
        let snap = cnilab(&["--lab", name, "snapshot"]);
        assert!(snap.status.success(), "the lab left is not whole:\n{}", show(&snap));
        let d = cnilab(&["down", name]);
        assert!(d.status.success(), "{}", show(&d));
    }
    assert_gone(name);
}

#[test]
fn down_during_up_leaves_nothing() {
    let topo = TempFile::toml(TOPOLOGY);
    let path = topo.path.to_str().unwrap();
    let mut stopped = 0;
    for _ in 0..runs() {
        let lab = Lab::reserve();
        let up = spawn(&["up", path, "--name", &lab.name]);
        jitter(600);
        let down = cnilab(&["down", &lab.name]);
        assert!(down.status.success(), "down failed:\n{}", show(&down));
        let up = finish(up);
        if up.status.code() != Some(0) {
            stopped += 1;
        }
        settle(&lab.name, &up);
    }
    eprintln!("down during up: {} runs, {stopped} ups stopped by down", runs());
}

#[test]
fn two_ups_of_one_name_make_one_whole_lab() {
    let topo = TempFile::toml(TOPOLOGY);
    let path = topo.path.to_str().unwrap();
    for _ in 0..runs() {
        let lab = Lab::reserve();
        let a = spawn(&["up", path, "--name", &lab.name]);
        jitter(50);
        let b = spawn(&["up", path, "--name", &lab.name]);
        let (a, b) = (finish(a), finish(b));
        let ok: Vec<&Output> = [&a, &b].into_iter().filter(|o| o.status.success()).collect();
        assert_eq!(ok.len(), 1, "not exactly one up won:\n{}\n{}", show(&a), show(&b));
        let loser = if a.status.success() { &b } else { &a };
        assert_eq!(loser.status.code(), Some(3), "{}", show(loser));
        let why = String::from_utf8_lossy(&loser.stderr);
        assert!(
            why.contains("already exists") || why.contains("being changed"),
            "the loser does not say why: {why}"
        );
        assert_eq!(lab.pods().len(), 4, "the winner's lab is not whole");
        let snap = lab.run(&["snapshot"]);
        assert!(snap.status.success(), "{}", show(&snap));
        let d = cnilab(&["down", &lab.name]);
        assert!(d.status.success(), "{}", show(&d));
        assert_gone(&lab.name);
    }
}

#[test]
fn two_fault_adds_are_both_recorded_and_revertible() {
    let topo = TempFile::toml(TOPOLOGY);
    let lab = Lab::up(&topo.path);
    let clean = lab.snapshot();
    for i in 0..runs() {
        let add = |node: &str| {
            let mut args = vec!["--lab", &lab.name, "fault", "add", "sysctl", "--on", node];
            args.extend(["--key", "net.ipv4.ip_forward", "--value", "0"]);
            spawn(&args)
        };
        let a = add("worker1");
        jitter(20);
        let b = add("worker2");
        for o in [finish(a), finish(b)] {
            assert!(o.status.success(), "run {i}: fault add failed:\n{}", show(&o));
        }
        let ls = lab.run(&["fault", "ls", "--json"]);
        let faults: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("fault ls --json");
        assert_eq!(
            faults.as_array().map(Vec::len),
            Some(2),
            "run {i}: a fault was lost: {faults}"
        );
        let rm = lab.run(&["fault", "rm", "--all"]);
        assert!(rm.status.success(), "{}", show(&rm));
        assert_eq!(lab.snapshot(), clean, "run {i}: rm --all did not revert both faults");
    }
}

#[test]
fn fault_add_during_down_leaves_nothing() {
    let topo = TempFile::toml(TOPOLOGY);
    for _ in 0..runs() {
        let lab = Lab::up(&topo.path);
        let fault = spawn(&[
            "--lab", &lab.name, "fault", "add", "mtu", "--on", "tor1", "--mtu", "1400",
        ]);
        jitter(30);
        let down = cnilab(&["down", &lab.name]);
        assert!(down.status.success(), "down failed:\n{}", show(&down));
        let fault = finish(fault);
        assert_ne!(fault.status.code(), Some(101), "fault add panicked:\n{}", show(&fault));
        assert_gone(&lab.name);
    }
}

#[test]
fn two_downs_during_up_both_succeed_and_leave_nothing() {
    let topo = TempFile::toml(TOPOLOGY);
    let path = topo.path.to_str().unwrap();
    for _ in 0..runs().div_ceil(5) {
        let lab = Lab::reserve();
        let up = spawn(&["up", path, "--name", &lab.name]);
        jitter(600);
        let a = spawn(&["down", &lab.name]);
        let b = spawn(&["down", &lab.name]);
        for d in [finish(a), finish(b)] {
            assert!(d.status.success(), "a down failed:\n{}", show(&d));
        }
        let up = finish(up);
        settle(&lab.name, &up);
    }
}

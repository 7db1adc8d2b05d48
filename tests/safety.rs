//! Names that could escape: every command that takes a lab, node, pod,
//! switch or router name refuses traversal, empty, absolute, over-long and
//! odd names with exit 2 before anything is created, read or removed, and a
//! decoy folder next to the run folder survives all of it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A run folder of its own with decoys around it: `<root>/etc/passwd-decoy`
/// is what `../../etc` reaches from `<root>/run/cnilab`, and `decoylab` is a
/// folder with a valid lab name that cnilab did not make.
struct Decoys {
    root: PathBuf,
}

impl Decoys {
    fn new() -> Decoys {
        let root = std::env::temp_dir().join(format!("cnilab-decoy-{}", unique_name()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd-decoy"), "must survive").unwrap();
        std::fs::create_dir_all(root.join("run/cnilab/decoylab")).unwrap();
        std::fs::write(root.join("run/cnilab/decoylab/keep"), "must survive").unwrap();
        Decoys { root }
    }

    fn run_dir(&self) -> PathBuf {
        self.root.join("run/cnilab")
    }

    fn cnilab(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin())
            .args(args)
            .env("CNILAB_RUN_DIR", self.run_dir())
            .envs(env.iter().copied())
            .output()
            .expect("cnilab runs")
    }

    fn assert_intact(&self, after: &str) {
        for f in ["etc/passwd-decoy", "run/cnilab/decoylab/keep"] {
            let p = self.root.join(f);
            assert_eq!(
                std::fs::read_to_string(&p).ok().as_deref(),
                Some("must survive"),
                "{} did not survive {after}",
                p.display()
            );
        }
    }
}

impl Drop for Decoys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn bad_names(decoys: &Decoys) -> Vec<String> {
    vec![
        "../../etc".into(),
        "..".into(),
        ".".into(),
        decoys.root.join("etc").display().to_string(),
        "/".into(),
        "a/b".into(),
        "relcc.worker1".into(),
        "Upper".into(),
        "1digit".into(),
        "_x".into(),
        "with space".into(),
        "new\nline".into(),
        "x".repeat(100_000),
        "thirteenchars".into(),
        "é".into(),
    ]
}

fn assert_refused(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "{what} was not refused as input:\n{}",
        show(o)
    );
    assert!(o.stderr.len() < 2_000, "{what}: {} bytes of errors", o.stderr.len());
}

#[test]
fn bad_lab_names_are_refused_by_every_command_and_decoys_survive() {
    let d = Decoys::new();
    let topo = topology("flannel-vxlan.toml");
    let topo = topo.to_str().unwrap();
    let scenario = repo().join("scenarios/ip-forward-off.toml");
    let scenario = scenario.to_str().unwrap();
    for name in bad_names(&d) {
        let n = name.as_str();
        let shown = if n.len() > 40 { &n[..40] } else { n };
        let commands: Vec<Vec<&str>> = vec![
            vec!["down", n],
            vec!["status", n],
            vec!["graph", n],
            vec!["up", topo, "--name", n],
            vec!["run", scenario, "--name", n],
            vec!["--lab", n, "down"],
            vec!["--lab", n, "status"],
            vec!["--lab", n, "snapshot"],
            vec!["--lab", n, "exec", "worker1", "--", "true"],
            vec!["--lab", n, "probe", "pingall"],
            vec!["--lab", n, "fault", "ls"],
            vec!["--lab", n, "fault", "add", "link-down", "--on", "worker1"],
            vec!["--lab", n, "pod", "add", "worker1/x"],
            vec!["--lab", n, "trace", "worker1/pod-1", "worker2/pod-1"],
        ];
        for args in commands {
            let o = d.cnilab(&args, &[]);
            assert_refused(&o, &format!("{:?} with {shown:?}", &args[..args.len().min(3)]));
            d.assert_intact(&format!("{args:?}"));
        }
        if !n.contains('\0') {
            let o = d.cnilab(&["status"], &[("CNILAB_LAB", n)]);
            assert_refused(&o, &format!("CNILAB_LAB={shown:?}"));
            d.assert_intact("CNILAB_LAB");
        }
    }
    // A folder with a lab's name that cnilab did not make is not removed.
    let o = d.cnilab(&["down", "decoylab"], &[]);
    assert!(!o.status.success(), "down of a foreign folder succeeded:\n{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a cnilab lab folder"),
        "{}",
        show(&o)
    );
    d.assert_intact("down decoylab");
    // A crash leftover: nothing but an empty marker, removed. With anything
    // else beside the empty marker, the folder is left alone.
    let crashed = d.run_dir().join("crashedlab");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join(".cnilab-lab"), "").unwrap();
    let o = d.cnilab(&["down", "crashedlab"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(!crashed.exists(), "the crash leftover is removed");
    std::fs::write(d.run_dir().join("decoylab/.cnilab-lab"), "").unwrap();
    let o = d.cnilab(&["down", "decoylab"], &[]);
    assert!(
        !o.status.success(),
        "an empty marker beside other files is no lab:\n{}",
        show(&o)
    );
    d.assert_intact("down decoylab with an empty marker");
}

#[test]
fn a_bad_run_folder_is_refused_before_anything_is_made() {
    let d = Decoys::new();
    for dir in ["relative/run", "/", "/run/../etc", "run"] {
        let o = Command::new(bin())
            .args(["down", "demo"])
            .env("CNILAB_RUN_DIR", dir)
            .output()
            .unwrap();
        assert_refused(&o, &format!("CNILAB_RUN_DIR={dir}"));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("CNILAB_RUN_DIR"),
            "{}",
            show(&o)
        );
    }
    d.assert_intact("bad run folders");
}

#[test]
fn bad_targets_and_pod_names_are_refused_in_a_running_lab() {
    let d = Decoys::new();
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let before = namespaces_with(&format!("cnilab.{}.", lab.name));
    for target in [
        "../../etc",
        "worker1/../../x",
        "worker1/",
        "/worker1",
        "worker1/pod-1/x",
        "",
        "w\nx",
    ] {
        for args in [
            vec!["exec", target, "--", "true"],
            vec!["snapshot", target],
            vec!["pod", "add", target],
            vec!["pod", "rm", target],
            vec!["fault", "add", "link-down", "--on", target],
            vec!["trace", target, "worker2/pod-1"],
        ] {
            let o = lab.run(&args);
            assert_refused(&o, &format!("{args:?}"));
        }
    }
    let o = lab.run(&["pod", "add", &format!("worker1/{}", "p".repeat(300))]);
    assert_refused(&o, "an over-long pod name");
    assert_eq!(
        namespaces_with(&format!("cnilab.{}.", lab.name)),
        before,
        "namespaces changed"
    );
    // A neighbour's prefix is not ours: `down <lab>.worker1` names no lab.
    let o = cnilab(&["down", &format!("{}.worker1", lab.name)]);
    assert_refused(&o, "down LAB.NODE");
    assert_eq!(
        namespaces_with(&format!("cnilab.{}.", lab.name)),
        before,
        "namespaces changed"
    );
    assert!(Path::new(&d.root).join("etc/passwd-decoy").exists());
}

//! Scenarios: every shipped one passes with its golden snapshots; a failed
//! expectation exits 1 naming the step; a broken file exits 2 with its line
//! and column; Ctrl-C during a run leaves nothing behind.

#[path = "common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn scenario_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("scenarios"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_scenario_passes() {
    let files = scenario_files();
    assert!(files.len() >= 9, "{files:?}");
    let junit = std::env::temp_dir().join(format!("cnilab-junit-{}.xml", std::process::id()));
    let mut args = vec!["run".to_string(), "--junit".into(), junit.display().to_string()];
    args.extend(files.iter().cloned());
    let out = Command::new(bin()).args(&args).output().unwrap();
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{0} of {0} scenarios passed", files.len())),
        "{text}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"0\"") && xml.contains("<testsuite name=\"upstream-vxlan-mtu\""),
        "{xml}"
    );
    let _ = std::fs::remove_file(&junit);
    // Every scenario compared at least one golden snapshot.
    for f in &files {
        let name = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("name = \"").map(|n| n.trim_end_matches('"').to_string()))
            .unwrap();
        let has = std::fs::read_dir(repo().join("snapshots"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}@")));
        assert!(has, "{name} has a golden snapshot");
    }
}

#[test]
fn a_failed_expectation_exits_1_and_names_the_step() {
    let dir = std::env::temp_dir().join(format!("cnilab-sc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("failing.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"failing\"\ntopology = \"{}\"\n[[step]]\nprobe = \"pingall\"\nexpect = \"ok\"\n[[step]]\nprobe = \"ping\"\nfrom = \"master/pod-1\"\nto = \"worker1/pod-1\"\nexpect = \"fail\"\ntimeout = \"1s\"\n[[step]]\nprobe = \"pingall\"\n",
            topology("flannel-vxlan.toml").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin()).arg("run").arg(&file).output().unwrap();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("step 2 probe ping master/pod-1 -> worker1/pod-1: FAILED"),
        "{text}"
    );
    assert!(text.contains("expected: fail"), "{text}");
    assert!(text.contains("FAILED at step 2"), "{text}");
    let lab = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("lab "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_gone(&lab);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_broken_scenario_exits_2_with_its_place() {
    let dir = std::env::temp_dir().join(format!("cnilab-sc2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        format!("name = \"broken\"\ntopology = \"{}\"\n[[step]]\nprobe = \"pmtu\"\nfrom = \"a/b\"\nto = \"c/d\"\nexpect = {{ mtu = 1400 }}\n", topology("flannel-vxlan.toml").display()),
    )
    .unwrap();
    let out = Command::new(bin()).arg("run").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("error: {}:7:12:", file.display())), "{err}");
    assert!(err.contains("fix: fields: path_mtu"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_during_run_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("cnilab-sc3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("slow.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"slow\"\ntopology = \"{}\"\n[[step]]\nprobe = \"ping\"\nfrom = \"master/pod-1\"\nto = \"worker1/pod-1\"\nexpect = \"fail\"\ntimeout = \"60s\"\n",
            topology("flannel-vxlan.toml").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lab = cnilab::front::scenario::lab_name("slow", child.id());
    let prefix = format!("cnilab.{lab}.");
    retry("the scenario's lab comes up", Duration::from_secs(30), || {
        if namespaces_with(&prefix).len() >= 10 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_gone(&lab);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn goldens_are_found_beside_the_scenario_from_any_working_directory() {
    let dir = std::env::temp_dir().join(format!("cnilab-sc4-{}", unique_name()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let file = dir.join("sub/golden-here.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"golden-here\"\ntopology = \"{}\"\nsnapshots = \"../goldens\"\n[[step]]\nsnapshot = \"clean\"\n",
            topology("flannel-vxlan.toml").display()
        ),
    )
    .unwrap();
    let prefix = unique_name();
    let run = |cwd: &std::path::Path, path: &str, extra: &[&str]| {
        let out = Command::new(bin())
            .current_dir(cwd)
            .args(["run", path, "--name", &prefix])
            .args(extra)
            .output()
            .unwrap();
        assert_gone(&prefix);
        out
    };
    // Written from one folder, with the file named relative to it...
    let out = run(&dir.join("sub"), "golden-here.toml", &["--update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains(&format!("lab {prefix} up")), "{}", show(&out));
    let golden = dir.join("goldens/golden-here@clean.snap");
    assert!(golden.is_file(), "{} was not written", golden.display());
    // ...compared from two others: the same golden, never the working directory's.
    for (cwd, path) in [
        (dir.as_path(), "sub/golden-here.toml"),
        (std::path::Path::new("/"), file.to_str().unwrap()),
    ] {
        let out = run(cwd, path, &[]);
        assert!(out.status.success(), "from {}: {}", cwd.display(), show(&out));
        assert!(
            show(&out).contains(&format!("equals {}", golden.display())) || show(&out).contains("PASSED"),
            "{}",
            show(&out)
        );
    }
    std::fs::write(
        &golden,
        "---\nsource: x\nexpression: \"snapshot clean\"\n---\nsomething else\n",
    )
    .unwrap();
    let out = run(std::path::Path::new("/"), file.to_str().unwrap(), &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a changed golden was not used:\n{}",
        show(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

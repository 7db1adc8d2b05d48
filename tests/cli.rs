//! The command line's contract: invalid topologies exit 2 naming
//! file:line:column and the fix and build nothing; no root exits 3 in one line.

#[path = "common/mod.rs"]
mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

/// One broken topology per rejection topology.md lists, with the line and
/// column cnilab must name.
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "unknown key",
        "name = \"x\"\n[[node]]\nname = \"n\"\nzone = 1\n",
        ":4:1:",
    ),
    (
        "malformed CIDR",
        "name = \"x\"\n[network]\npod_cidr = \"10.244.0/16\"\n[[node]]\nname = \"n\"\n",
        ":3:12:",
    ),
    (
        "malformed address",
        "name = \"x\"\n[[node]]\nname = \"n\"\nip = \"172.20.0.x\"\n",
        ":4:6:",
    ),
    (
        "pod CIDR overlaps a switch",
        "name = \"x\"\n[network]\npod_cidr = \"172.20.0.0/16\"\n[[node]]\nname = \"n\"\n",
        ":3:12:",
    ),
    (
        "pod CIDR too small",
        "name = \"x\"\n[network]\npod_cidr = \"10.244.0.0/23\"\n[[node]]\nname = \"n{i}\"\ncount = 4\n",
        ":3:12:",
    ),
    (
        "address outside the switch",
        "name = \"x\"\n[[node]]\nname = \"n\"\nip = \"10.9.9.9\"\n",
        ":4:6:",
    ),
    (
        "address taken twice",
        "name = \"x\"\n[[node]]\nname = \"a\"\nip = \"172.20.0.10\"\n[[node]]\nname = \"b\"\nip = \"172.20.0.10\"\n",
        ":7:6:",
    ),
    (
        "switch too small",
        "name = \"x\"\n[[switch]]\nname = \"s\"\nsubnet = \"10.0.0.0/29\"\n[[node]]\nname = \"n\"\n",
        ":4:10:",
    ),
    (
        "duplicate name",
        "name = \"x\"\n[[node]]\nname = \"n\"\n[[node]]\nname = \"n\"\n",
        ":5:8:",
    ),
    ("invalid name", "name = \"X\"\n[[node]]\nname = \"n\"\n", ":1:8:"),
    (
        "count without {i}",
        "name = \"x\"\n[[node]]\nname = \"n\"\ncount = 2\n",
        ":4:9:",
    ),
    (
        "unknown switch",
        "name = \"x\"\n[[node]]\nname = \"n\"\nswitch = \"nope\"\n",
        ":4:10:",
    ),
    (
        "unknown router switch",
        "name = \"x\"\n[[router]]\nname = \"r\"\nswitches = [\"nope\"]\n[[node]]\nname = \"n\"\n",
        ":4:13:",
    ),
    (
        "unknown reflector",
        "name = \"x\"\n[network]\ncni = \"calico\"\n[network.calico]\nmesh = \"reflectors\"\nreflectors = [\"m\"]\n[[node]]\nname = \"n\"\n",
        ":6:15:",
    ),
    (
        "unknown profile",
        "name = \"x\"\n[network]\ncni = \"cilium\"\n[[node]]\nname = \"n\"\n",
        ":3:7:",
    ),
    (
        "MTU out of range",
        "name = \"x\"\n[[switch]]\nname = \"s\"\nsubnet = \"10.0.0.0/24\"\nmtu = 10000\n[[node]]\nname = \"n\"\n",
        ":5:7:",
    ),
    (
        "option of another profile",
        "name = \"x\"\n[network]\ncni = \"flannel\"\n[network.calico]\nasn = 1\n[[node]]\nname = \"n\"\n",
        ":4:10:",
    ),
];

#[test]
fn every_invalid_topology_exits_2_with_its_place_and_builds_nothing() {
    for (what, text, place) in BROKEN {
        let topo = TempFile::toml(text);
        let lab = Lab::reserve();
        let out = lab.up_output(&topo.path);
        let shown = show(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {shown}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!("error: {}{place}", topo.path.display());
        assert!(
            stderr.starts_with(&expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("\nfix: "), "{what}: no fix in:\n{stderr}");
        assert!(
            namespaces_with(&format!("cnilab.{}.", lab.name)).is_empty(),
            "{what}: built something"
        );
        assert!(!run_dir().join(&lab.name).exists(), "{what}: left state");
        // validate says the same without root.
        let v = cnilab(&["validate", topo.path.to_str().unwrap()]);
        assert_eq!(v.status.code(), Some(2), "{what}: {}", show(&v));
    }
}

#[test]
fn a_missing_topology_file_exits_2() {
    let out = cnilab(&["up", "/nonexistent/topo.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("cannot read topology /nonexistent/topo.toml"));
}

#[test]
fn bad_arguments_exit_2() {
    let out = cnilab(&["up"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = cnilab(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = cnilab(&["up", "x.toml", "--name", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn without_root_it_exits_3_with_one_line() {
    for args in [
        vec!["up".to_string(), topology("flannel-vxlan.toml").display().to_string()],
        vec!["down".to_string(), "--all".to_string()],
        vec!["status".to_string()],
    ] {
        let out = Command::new(bin()).args(&args).uid(65534).gid(65534).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains("needs root"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn validate_needs_no_root_and_prints_the_plan() {
    let out = Command::new(bin())
        .args(["validate", topology("flannel-vxlan.toml").to_str().unwrap(), "--json"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(plan["profile"]["cni"], "flannel");
}

#[test]
fn a_closed_output_pipe_ends_up_quietly() {
    let lab = Lab::reserve();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} up {} --name {} --json | head -1",
            bin(),
            topology("flannel-vxlan.toml").display(),
            lab.name
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{");
    // The lab is up and whole: the closed pipe came after the build.
    assert_eq!(lab.pods().len(), 6);
}

//! The built-in flannel proven equal to the real one: for every shipped
//! flannel topology and each backend, `up` with cnilab's flanneld and
//! plugin and with the real flanneld v0.28.9 and flannel CNI plugin (both
//! over the lab's real etcd) give byte-identical snapshots, equal to the
//! golden files; every pod pings every pod under both. Needs the real
//! flannel: `bash .ci/deps --upstream-flannel` builds it.

#[path = "common/mod.rs"]
mod common;

use common::*;

/// A shipped topology keeping its state in etcd: as written when it does
/// already, else with `datastore = "etcd"` added to its `[network]`.
fn over_etcd(name: &str) -> (TempFile, String) {
    let text = std::fs::read_to_string(topology(&format!("{name}.toml"))).expect("topology");
    if text.contains("\ndatastore = \"etcd\"") {
        return (TempFile::toml(&text), name.to_string());
    }
    assert!(text.contains("\n[network]\n"), "{name} has a [network] section");
    let text = text.replacen("\n[network]\n", "\n[network]\ndatastore = \"etcd\"\n", 1);
    (TempFile::toml(&text), format!("{name}@etcd"))
}

fn snapshot_under(file: &TempFile, implementation: &str) -> String {
    let lab = Lab::up_with(&file.path, &["--flannel", implementation]);
    pingall(&lab);
    let snap = lab.snapshot();
    drop(lab);
    snap
}

/// builtin and upstream agree byte for byte, and equal the golden file.
fn same_as_upstream(name: &str) {
    let (file, golden) = over_etcd(name);
    let builtin = snapshot_under(&file, "builtin");
    let upstream = snapshot_under(&file, "upstream");
    if builtin != upstream {
        let diff = similar::TextDiff::from_lines(&builtin, &upstream)
            .unified_diff()
            .header("builtin", "upstream")
            .to_string();
        panic!("{name}: the built-in flannel differs from the real one:\n{diff}");
    }
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(golden, builtin);
    });
}

#[test]
fn vxlan_builtin_equals_upstream() {
    same_as_upstream("flannel-vxlan");
}

#[test]
fn vxlan_routed_builtin_equals_upstream() {
    same_as_upstream("flannel-routed");
}

#[test]
fn host_gw_builtin_equals_upstream() {
    same_as_upstream("flannel-host-gw");
}

#[test]
fn udp_builtin_equals_upstream() {
    same_as_upstream("flannel-udp");
}

#[test]
fn seed_001_builtin_equals_upstream() {
    same_as_upstream("seed-001-etcd");
}

#[test]
fn seed_002_builtin_equals_upstream() {
    same_as_upstream("seed-002-rudder");
}

#[test]
fn two_nics_iface_builtin_equals_upstream() {
    same_as_upstream("flannel-two-nics-iface");
}

/// Seed 001: `etcdctl get --prefix /atomic.io/network/` in the lab's etcd
/// shows the config and one lease per node, with its PublicIP and VTEP
/// MAC, and the same keys under both implementations.
#[test]
fn seed_001_etcdctl_shows_config_and_one_lease_per_node() {
    let mut seen = Vec::new();
    for implementation in ["builtin", "upstream"] {
        let lab = Lab::up_with(&topology("seed-001-etcd.toml"), &["--flannel", implementation]);
        let text = lab.exec_ok("etcd", &["etcdctl", "get", "--prefix", "/atomic.io/network/"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "config and three leases, key and value each:\n{text}");
        assert_eq!(lines[0], "/atomic.io/network/config");
        let config: serde_json::Value = serde_json::from_str(lines[1]).expect("config JSON");
        assert_eq!(config["Network"], "10.20.0.0/16");
        assert_eq!(config["Backend"]["VNI"], 1);
        let state = lab.state();
        let mut ips: Vec<String> = Vec::new();
        for pair in lines[2..].chunks(2) {
            assert!(pair[0].starts_with("/atomic.io/network/subnets/10.20."), "{}", pair[0]);
            let lease: serde_json::Value = serde_json::from_str(pair[1]).expect("lease JSON");
            let ip = lease["PublicIP"].as_str().expect("PublicIP").to_string();
            let node = state["plan"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["ip"] == ip.as_str())
                .unwrap_or_else(|| panic!("no node has {ip}"));
            let name = node["name"].as_str().unwrap();
            // The VTEP MAC in the lease is the node's flannel.1 MAC.
            let dev = lab.exec_json(name, &["ip", "-j", "link", "show", "flannel.1"]);
            assert_eq!(lease["BackendData"]["VtepMAC"], dev[0]["address"], "{name}");
            assert_eq!(lease["BackendType"], "vxlan");
            ips.push(ip);
        }
        ips.sort();
        assert_eq!(ips, ["10.140.0.3", "10.140.0.4", "10.140.0.5"]);
        seen.push(text);
    }
    assert_eq!(seen[0], seen[1], "builtin and upstream hold the same keys");
}

/// Without the real flanneld on the program path, `up` with upstream
/// exits 3 with the `go install` lines, and leaves nothing behind.
#[test]
fn missing_flanneld_exits_3_and_leaves_nothing() {
    let lab = Lab::reserve();
    let empty = std::env::temp_dir().join(format!("cnilab-empty-{}", lab.name));
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new(bin())
        .args(["up", topology("seed-001-etcd.toml").to_str().unwrap()])
        .args(["--name", &lab.name, "--flannel", "upstream"])
        .env(
            "CNILAB_PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", empty.display()),
        )
        .output()
        .expect("cnilab runs");
    let text = show(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("flanneld"), "{text}");
    assert!(
        text.contains("go install github.com/flannel-io/flannel@v0.28.9"),
        "{text}"
    );
    assert!(
        text.contains("go install github.com/flannel-io/cni-plugin@v1.9.1-flannel1"),
        "{text}"
    );
    assert!(namespaces_with(&format!("cnilab.{}.", lab.name)).is_empty());
    assert!(!run_dir().join(&lab.name).exists());
    let _ = std::fs::remove_dir(&empty);
}

/// The field-bug scenarios over etcd pass under the real flanneld, golden
/// snapshots included (and under the builtin one in tests/scenarios.rs).
#[test]
fn field_bug_scenarios_pass_under_upstream() {
    let files = [
        "forward-drop.toml",
        "forward-drop-no-rules.toml",
        "flanneld-down.toml",
        "flannel-new-mac-etcd.toml",
        "seed-002-rudder.toml",
        "flannel-wrong-iface.toml",
        "flannel-right-iface.toml",
    ];
    let mut args = vec!["run".to_string(), "--flannel".into(), "upstream".into()];
    args.extend(
        files
            .iter()
            .map(|f| repo().join("scenarios").join(f).display().to_string()),
    );
    let out = std::process::Command::new(bin())
        .args(&args)
        .output()
        .expect("cnilab runs");
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{0} of {0} scenarios passed", files.len())),
        "{text}"
    );
    assert!(!text.contains("not compared"), "every snapshot step compared:\n{text}");
}

/// `kill -9` of `up --flannel upstream` at several points of the build
/// (state folder made, etcd's namespace made, etcd answering, the first
/// real flanneld started, up finished), then `down`: no etcd, flanneld or
/// other process of the lab, no namespace, mount, state or lock remains.
#[test]
fn kill_9_of_up_at_any_point_then_down_leaves_nothing() {
    type Point = (&'static str, fn(&str) -> bool);
    let points: [Point; 5] = [
        ("state folder made", |lab| run_dir().join(lab).exists()),
        ("etcd namespace made", |lab| {
            namespaces_with(&format!("cnilab.{lab}._etcd")).len() == 1
        }),
        ("etcd running", |lab| {
            !processes_mentioning(&format!("{}/etcd-server/data", run_dir().join(lab).display())).is_empty()
        }),
        ("a real flanneld running", |lab| {
            processes_mentioning("flanneld")
                .iter()
                .any(|p| p.contains(&format!("{}/", run_dir().join(lab).display())))
        }),
        ("up finished", |_| false),
    ];
    kill_9_of_up_at_each_point_then_down_leaves_nothing(
        &topology("seed-001-etcd.toml"),
        &["--flannel", "upstream"],
        &points,
    );
}

/// A broken etcd: the lab's etcd cannot start (its data folder is a file),
/// so `up` fails with etcd's own log, exits 1, and leaves nothing.
#[test]
fn etcd_that_cannot_start_fails_up_clearly_and_leaves_nothing() {
    let lab = Lab::reserve();
    // A stand-in "etcd" on the program path that exits at once, as a broken
    // installation would; the rest of the path is the system's.
    let dir = std::env::temp_dir().join(format!("cnilab-brokenetcd-{}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("etcd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'etcdmain: cannot open database at data/member/snap/db: permission denied' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "up",
            topology("seed-001-etcd.toml").to_str().unwrap(),
            "--name",
            &lab.name,
        ])
        .env(
            "CNILAB_PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                dir.display()
            ),
        )
        .output()
        .expect("cnilab runs");
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("etcd exited before it was ready"), "{text}");
    assert!(
        text.contains("cannot open database"),
        "etcd's own words are shown:\n{text}"
    );
    assert_gone(&lab.name);
    let _ = std::fs::remove_dir_all(&dir);
}

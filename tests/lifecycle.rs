//! A lab's life: `down` leaves nothing, also after `kill -9` or Ctrl-C of an
//! `up` half-way; two labs live side by side without touching each other.

#[path = "common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A lab large enough that `up` can be interrupted while it adds pods.
const BIG: &str = r#"name = "big"
[[node]]
name = "n{i}"
count = 16
pods = 4
"#;

#[test]
fn down_removes_namespaces_processes_and_state_and_is_idempotent() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let agents = lab.state()["agents"].as_object().unwrap().len();
    assert_eq!(agents, 3);
    assert!(
        !processes_mentioning(&format!("/{}/", lab.name)).is_empty(),
        "agents run"
    );
    // 3 nodes, 6 pods, the fabric and tor1's uplink; three flanneld and the
    // lab's datastore watch service.
    down_reports_and_leaves_nothing(&lab.name, "removed 11 namespaces, stopped 4 processes");
    let again = cnilab(&["down", &lab.name]);
    assert!(again.status.success(), "down is idempotent: {}", show(&again));
}

fn interrupted_up_leaves_nothing(signal: nix::sys::signal::Signal) {
    let topo = TempFile::toml(BIG);
    let lab = Lab::reserve();
    let mut up = Command::new(bin())
        .args(["up", topo.path.to_str().unwrap(), "--name", &lab.name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Half-way: some pods are wired (their CNI results cached), not all.
    let prefix = format!("cnilab.{}.", lab.name);
    let wired = || pods_wired(&lab.name);
    retry("up reaches its pods", Duration::from_secs(30), || {
        let pods = wired();
        if pods > 0 {
            Ok(())
        } else {
            Err(format!("{pods} pods wired"))
        }
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), signal).unwrap();
    let status = up.wait().unwrap();
    assert!(!status.success(), "up was interrupted");
    let pods = wired();
    assert!(pods < 64, "up was stopped before all 64 pods were wired ({pods})");
    if signal == nix::sys::signal::Signal::SIGKILL {
        assert!(
            !namespaces_with(&prefix).is_empty(),
            "a killed up leaves its namespaces"
        );
        let out = cnilab(&["down", &lab.name]);
        assert!(out.status.success(), "{}", show(&out));
    } else {
        assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
    }
    assert_gone(&lab.name);
}

#[test]
fn kill_9_of_up_half_way_then_down_leaves_nothing() {
    interrupted_up_leaves_nothing(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn ctrl_c_during_up_removes_what_was_built() {
    interrupted_up_leaves_nothing(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn two_labs_run_side_by_side() {
    let a = Lab::up(&topology("flannel-vxlan.toml"));
    let b = Lab::up(&topology("flannel-vxlan.toml"));
    // Same seed, same addresses, separate worlds.
    assert_eq!(a.pods(), b.pods());
    assert_eq!(a.snapshot(), b.snapshot());
    let pods = b.pods();
    let ping = |lab: &Lab| {
        retry("cross-node ping", Duration::from_secs(10), || {
            let out = lab.exec("master/pod-1", &["ping", "-c1", "-W1", &pods[5].1]);
            if out.status.success() { Ok(()) } else { Err(show(&out)) }
        })
    };
    ping(&a);
    ping(&b);
    let name = a.name.clone();
    drop(a);
    assert_gone(&name);
    ping(&b);
    assert_eq!(namespaces_with(&format!("cnilab.{}.", b.name)).len(), 11);
}

#[test]
fn up_refuses_a_lab_that_exists() {
    let a = Lab::up(&topology("flannel-vxlan.toml"));
    let out = a.up_output(&topology("flannel-vxlan.toml"));
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        show(&out).contains(&format!("lab \"{}\" already exists", a.name)),
        "{}",
        show(&out)
    );
    // The running lab is untouched.
    assert_eq!(namespaces_with(&format!("cnilab.{}.", a.name)).len(), 11);
}

/// A pod the node's IPAM range cannot hold: a topology asking for it is
/// refused by validation (exit 2, before anything is built), and a pod added
/// to the running lab fails its CNI ADD with the plugin's own words and
/// leaves nothing of itself.
#[test]
fn a_failing_cni_add_reports_the_plugin_error_and_leaves_nothing() {
    // /30 leases: network, gateway, one pod address, broadcast.
    let topo = |pods: u32| {
        TempFile::toml(&format!(
            "name = \"full\"\n[network]\npod_cidr = \"10.244.0.0/28\"\n[network.flannel]\nsubnet_len = 30\n[[node]]\nname = \"n1\"\npods = {pods}\n"
        ))
    };
    let lab = Lab::reserve();
    let out = lab.up_output(&topo(2).path);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("holds 1"), "{}", show(&out));
    assert_gone(&lab.name);

    let one = topo(1);
    let out = lab.up_output(&one.path);
    assert!(out.status.success(), "{}", show(&out));
    let before = namespaces_with(&format!("cnilab.{}.", lab.name));
    let out = lab.run(&["pod", "add", "n1/extra"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CNI ADD failed in plugin flannel: failed to delegate add"),
        "{err}"
    );
    assert!(
        err.contains("no IP addresses available in range set"),
        "host-local's own words: {err}"
    );
    assert_eq!(
        namespaces_with(&format!("cnilab.{}.", lab.name)),
        before,
        "the failed pod left something"
    );
    drop(lab);
}

/// More agents than the usual fs.inotify.max_user_instances (128): every
/// agent watches the datastore through the lab's one watch service.
#[test]
fn a_lab_with_more_agents_than_inotify_instances_converges() {
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(128);
    let nodes = limit.max(128) + 12;
    let topo = TempFile::toml(&format!("name = \"x\"\n[[node]]\nname = \"n{{i}}\"\ncount = {nodes}\n"));
    let lab = Lab::up(&topo.path);
    for node in ["n1", &format!("n{}", nodes / 2), &format!("n{nodes}")] {
        let neigh = lab.exec_json(node, &["ip", "-j", "neigh", "show", "dev", "flannel.1"]);
        assert_eq!(
            neigh.as_array().unwrap().len(),
            nodes - 1,
            "{node} knows every other node's VTEP"
        );
        let routes = lab.exec_json(node, &["ip", "-j", "route", "show", "dev", "flannel.1"]);
        assert_eq!(
            routes.as_array().unwrap().len(),
            nodes - 1,
            "{node} routes to every other lease"
        );
    }
    let watchers = processes_mentioning(&format!("{}/watch.sock", run_dir().join(&lab.name).display()));
    assert!(
        watchers.len() > nodes,
        "every agent and the service itself use the watch socket: {}",
        watchers.len()
    );
}

/// amazon-vpc-cni: `kill -9` of `up` at every point (folder, namespaces,
/// the first ipamd running, a pod wired, done), then `down`: no namespace,
/// ipamd, ENI, mount or state of the lab remains, and the VPC's tables in
/// the fabric namespace went with it.
#[test]
fn kill_9_of_an_aws_vpc_up_at_any_point_then_down_leaves_nothing() {
    kill_9_of_up_at_each_point_then_down_leaves_nothing(&topology("aws-vpc.toml"), &[], &kill_points());
}

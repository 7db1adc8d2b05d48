//! What the benchmarks share.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cnilab binary cargo built for the benchmarks.
pub fn cnilab_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cnilab")
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Waits until the kernel has freed the namespaces of the previous run:
/// creating a namespace waits for that cleanup, so it is fast again once
/// the cleanup is over. Returns how long it took.
pub fn settle() -> Duration {
    // The kernel frees deleted namespaces in batches on a work queue, holding
    // the locks that creating one needs; between batches creation is fast
    // again, so it takes several fast creations in a row to call it done.
    const IN_A_ROW: usize = 10;
    let start = Instant::now();
    let mut fast = 0;
    while fast < IN_A_ROW && start.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        let ok = Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "unshare -n true failed");
        if t.elapsed() < Duration::from_millis(10) {
            fast += 1;
        } else {
            fast = 0;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    start.elapsed()
}

/// Replaces the section under `heading` of BENCHMARKS.md with `doc` (which
/// starts with that heading), or appends it.
// scale.rs writes its table at the top of the file instead.
#[allow(dead_code)]
pub fn write_section(heading: &str, doc: &str) {
    let path = repo().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = match old.find(heading) {
        Some(i) => {
            let rest = &old[i + heading.len()..];
            let after = rest.find("\n## ").map_or("", |j| &rest[j..]);
            format!("{}{}{}", &old[..i], doc.trim_end(), after)
        }
        None => format!("{}\n\n{}", old.trim_end(), doc.trim_end()),
    };
    std::fs::write(&path, kept.trim_end().to_string() + "\n").expect("write BENCHMARKS.md");
    eprintln!("wrote {}", path.display());
}

/// A benchmark's options: `--runs N` (default 3), `--no-write`; `None`
/// for `--list` and `--help`, which cargo asks (after printing `name`).
#[allow(dead_code)]
pub fn options(name: &str) -> Option<(usize, bool)> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--help") {
        println!("{name}: bench");
        return None;
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    Some((runs, !args.iter().any(|a| a == "--no-write")))
}

/// A duration as the tables print it: `1.23 s`.
#[allow(dead_code)]
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// One timed command: wall time, peak RSS, stdout.
pub struct Run {
    pub wall: Duration,
    pub max_rss_kb: i64,
    pub stdout: String,
}

/// Runs a command, measuring its wall time and peak RSS (wait4's rusage).
pub fn timed(cmd: &mut Command) -> Run {
    let out_path = std::env::temp_dir().join(format!("cnilab-bench-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path).expect("temp file");
    let start = Instant::now();
    // Reaped by wait4 below, which also gives the rusage std does not.
    #[allow(clippy::zombie_processes)]
    let child = cmd.stdout(out).stderr(Stdio::inherit()).spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills the two out-parameters.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert!(rc > 0, "wait4 failed");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    assert!(ok, "{cmd:?} failed (status {status}):\n{stdout}");
    Run {
        wall,
        max_rss_kb: usage.ru_maxrss,
        stdout,
    }
}

/// Runs `program -n NS -batch -` (or without -n) with `script` on stdin.
pub fn batch(program: &str, ns: Option<&str>, script: &str) {
    let mut cmd = Command::new(program);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn batch");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "{program} -batch in {ns:?} failed:\n{script}");
}

/// Runs `jobs` on `workers()` threads.
pub fn parallel<T: Send>(jobs: Vec<T>, f: impl Fn(T) + Sync) {
    let queue = std::sync::Mutex::new(jobs);
    std::thread::scope(|s| {
        for _ in 0..workers() {
            s.spawn(|| {
                loop {
                    let job = queue.lock().unwrap().pop();
                    match job {
                        Some(j) => f(j),
                        None => break,
                    }
                }
            });
        }
    });
}

pub fn plan(topology: &Path) -> Value {
    let out = Command::new(cnilab_bin())
        .args(["validate", topology.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "validate failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Phase timings from `up`'s summary line.
pub fn phases(up: &str) -> BTreeMap<String, Duration> {
    let line = up.lines().find_map(|l| l.strip_prefix("phases: ")).unwrap_or("");
    line.split(", ")
        .filter_map(|p| {
            let mut w = p.split_whitespace();
            let name = w.next()?.to_string();
            let ms: u64 = w.next()?.parse().ok()?;
            Some((name, Duration::from_millis(ms)))
        })
        .collect()
}

/// The part of every baseline that does not depend on the profile, by
/// iproute2 batches: the namespaces of the fabric, nodes and routers, the
/// switches, every node's and router's veth with its address, and each
/// node's default route; then, in the same batch per node, `node_extra`'s
/// `ip` commands for the node (and its `bridge` commands in a second one).
/// Nodes are done in parallel on `workers()` threads.
pub fn baseline_core(plan: &Value, node_extra: impl Fn(&Value) -> (String, String) + Sync) {
    let nodes = plan["nodes"].as_array().unwrap();
    let routers = plan["routers"].as_array().unwrap();
    let fabric = s(&plan["fabric_ns"]);
    let mut names = vec![fabric.to_string()];
    names.extend(nodes.iter().map(|n| s(&n["ns"]).to_string()));
    names.extend(routers.iter().map(|r| s(&r["ns"]).to_string()));
    let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    batch("ip", None, &script);
    let mut fab = String::new();
    for sw in plan["switches"].as_array().unwrap() {
        fab.push_str(&format!(
            "link add {} mtu {} type bridge\nlink set {} up\n",
            s(&sw["name"]),
            sw["mtu"],
            s(&sw["name"])
        ));
    }
    for n in nodes {
        fab.push_str(&format!(
            "link add {} mtu {} type veth peer name eth0 mtu {} netns {}\nlink set {} master {} up\n",
            s(&n["port"]),
            n["mtu"],
            n["mtu"],
            s(&n["ns"]),
            s(&n["port"]),
            s(&n["switch"])
        ));
    }
    for r in routers {
        for p in r["ports"].as_array().unwrap() {
            fab.push_str(&format!(
                "link add {} mtu {} type veth peer name {} mtu {} netns {}\nlink set {} master {} up\n",
                s(&p["fabric_port"]),
                p["mtu"],
                s(&p["ifname"]),
                p["mtu"],
                s(&r["ns"]),
                s(&p["fabric_port"]),
                s(&p["switch"])
            ));
        }
    }
    batch("ip", Some(fabric), &fab);
    for r in routers {
        let mut sc = String::from("link set lo up\n");
        for p in r["ports"].as_array().unwrap() {
            sc.push_str(&format!(
                "addr add {}/{} dev {}\nlink set {} up\n",
                s(&p["ip"]),
                p["prefix_len"],
                s(&p["ifname"]),
                s(&p["ifname"])
            ));
        }
        batch("ip", Some(s(&r["ns"])), &sc);
    }
    parallel(nodes.iter().collect(), |n| {
        let mut sc = format!(
            "link set lo up\naddr add {}/{} dev eth0\nlink set eth0 up\n",
            s(&n["ip"]),
            n["prefix_len"]
        );
        if let Some(gw) = n["gateway"].as_str() {
            sc.push_str(&format!("route add default via {gw}\n"));
        }
        let (ip, bridge) = node_extra(n);
        sc.push_str(&ip);
        batch("ip", Some(s(&n["ns"])), &sc);
        if !bridge.is_empty() {
            batch("bridge", Some(s(&n["ns"])), &bridge);
        }
    });
}

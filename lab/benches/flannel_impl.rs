//! flannel's datastores and implementations at scale:
//! `cargo bench -p cnilab --bench flannel_impl` (as root, with the real
//! flannel installed: `bash .ci/deps --upstream-flannel`).
//!
//! Times `cnilab up` and `down` of flannel VXLAN labs of 10 pods a node:
//! 100 nodes with cnilab's flanneld over the file datastore and over the
//! lab's real etcd, and 50 nodes with the real flanneld and flannel CNI
//! plugin (and the builtin over etcd at 50 for comparison). Each case runs
//! three times (`-- --runs N`); figures are medians. `up`'s own phase
//! timings say what dominates. The result replaces the section
//! "flannel: datastores and implementations" of BENCHMARKS.md (`--no-write`
//! only prints it).

use std::collections::BTreeMap;

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::{cnilab_bin, options, secs, settle, write_section};

const LAB: &str = "bflannel";
/// The heading this benchmark owns in BENCHMARKS.md.
const HEADING: &str = "## flannel: datastores and implementations";

struct Case {
    nodes: usize,
    datastore: &'static str,
    implementation: &'static str,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{} nodes x 10 pods, {} flanneld, {} datastore",
            self.nodes, self.implementation, self.datastore
        )
    }

    fn topology(&self) -> String {
        format!(
            "name = \"{LAB}\"\n[network]\ncni = \"flannel\"\ndatastore = \"{}\"\n\
             [network.flannel]\nimplementation = \"{}\"\n\
             [[switch]]\nname = \"tor1\"\nsubnet = \"172.20.0.0/22\"\n\
             [[node]]\nname = \"n{{i}}\"\ncount = {}\npods = 10\n",
            self.datastore, self.implementation, self.nodes
        )
    }
}

/// `up`'s "phases:" line as phase -> time.
fn phases(out: &str) -> BTreeMap<String, Duration> {
    let mut m = BTreeMap::new();
    if let Some(line) = out.lines().find_map(|l| l.strip_prefix("phases: ")) {
        for part in line.split(", ") {
            let mut w = part.split_whitespace();
            if let (Some(name), Some(n), Some(unit)) = (w.next(), w.next(), w.next()) {
                let v: f64 = n.parse().unwrap_or(0.0);
                let d = if unit == "ms" { v / 1000.0 } else { v };
                m.insert(name.to_string(), Duration::from_secs_f64(d));
            }
        }
    }
    m
}

struct Row {
    label: String,
    up: Duration,
    down: Duration,
    phases: BTreeMap<String, Duration>,
}

fn run(case: &Case) -> Row {
    let file = std::env::temp_dir().join(format!("cnilab-bench-{LAB}.toml"));
    std::fs::write(&file, case.topology()).expect("write topology");
    settle();
    let t = Instant::now();
    let out = Command::new(cnilab_bin())
        .arg("up")
        .arg(&file)
        .output()
        .expect("cnilab up");
    let up = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "up failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    let d = Command::new(cnilab_bin())
        .args(["down", LAB])
        .output()
        .expect("cnilab down");
    let down = t.elapsed();
    assert!(d.status.success(), "down failed");
    Row {
        label: case.label(),
        up,
        down,
        phases: phases(&text),
    }
}

fn median(mut rows: Vec<Row>) -> Row {
    rows.sort_by_key(|r| r.up);
    let mid = rows.len() / 2;
    let mut downs: Vec<Duration> = rows.iter().map(|r| r.down).collect();
    downs.sort();
    let mut r = rows.swap_remove(mid);
    r.down = downs[downs.len() / 2];
    r
}

fn main() {
    let Some((runs, write)) = options("flannel_impl") else {
        return;
    };
    let _ = Command::new(cnilab_bin()).args(["down", LAB]).output();
    let cases = [
        Case {
            nodes: 100,
            datastore: "file",
            implementation: "builtin",
        },
        Case {
            nodes: 100,
            datastore: "etcd",
            implementation: "builtin",
        },
        Case {
            nodes: 50,
            datastore: "etcd",
            implementation: "builtin",
        },
        Case {
            nodes: 50,
            datastore: "etcd",
            implementation: "upstream",
        },
    ];
    let mut rows = Vec::new();
    for c in &cases {
        eprintln!("== {}", c.label());
        let r = median((0..runs).map(|_| run(c)).collect());
        eprintln!("   up {}, down {}", secs(r.up), secs(r.down));
        rows.push(r);
    }
    let names = [
        "fabric",
        "etcd",
        "nodes",
        "links",
        "agents",
        "sandboxes",
        "pods",
        "converge",
    ];
    let mut t = String::from("| lab | `up` | `down` |");
    for n in names {
        t.push_str(&format!(" {n} |"));
    }
    t.push_str("\n| --- | ---: | ---: |");
    t.push_str(&" ---: |".repeat(names.len()));
    t.push('\n');
    for r in &rows {
        t.push_str(&format!("| {} | {} | {} |", r.label, secs(r.up), secs(r.down)));
        for n in names {
            t.push_str(&format!(" {} |", r.phases.get(n).map_or("-".to_string(), |d| secs(*d))));
        }
        t.push('\n');
    }
    let file100 = rows[0].up.as_secs_f64();
    let etcd100 = rows[1].up.as_secs_f64();
    let ratio = etcd100 / file100;
    let verdict = format!(
        "- {} builtin over etcd, 100 x 10 pods: `up` {:.2} s, {:.2}x the file datastore's {:.2} s (target: within 1.3x)",
        if ratio <= 1.3 { "PASS" } else { "FAIL" },
        etcd100,
        ratio,
        file100
    );
    let doc = format!(
        "{HEADING}\n\n\
         Measured by `cargo bench -p cnilab --bench flannel_impl` (as root, with the real flannel installed by \
         `bash .ci/deps --upstream-flannel`), which rewrites this section; medians of {runs} runs. flannel VXLAN, \
         10 pods a node, one switch; the phase columns are `up`'s own timings.\n\n{t}\n{verdict}\n"
    );
    println!("{doc}");
    if write {
        write_section(HEADING, &doc);
    }
}

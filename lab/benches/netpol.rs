//! NetworkPolicy at scale: `cargo bench -p cnilab --bench netpol` (as
//! root).
//!
//! Programming: a Canal and a Calico (VXLAN) lab of 50 nodes x 10 pods in
//! three namespaces, then `cnilab policy apply` of 20 policies of every
//! kind (default deny, namespace and pod selectors, named ports, ipBlock
//! with except, egress) and `policy rm --all`: the command's wall time and
//! felix's own programming time over the 50 nodes. Probing: `probe policy`
//! over 30 pods (870 pairs), TCP and UDP on one port, with a default deny
//! and an allow in force (so part of the probes wait for their deadline).
//! Each case runs three times (`-- --runs N`); figures are medians. The
//! result replaces the section "NetworkPolicy" of BENCHMARKS.md
//! (`--no-write` only prints it).

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
use common::{cnilab_bin, options, secs, settle, write_section};

const LAB: &str = "bnetpol";
/// The heading this benchmark owns in BENCHMARKS.md.
const HEADING: &str = "## NetworkPolicy";

fn pods_list(count: usize, namespaces: usize) -> String {
    let pods: Vec<String> = (0..count)
        .map(|k| {
            format!(
                "{{ name = \"p{k}\", namespace = \"ns{}\", labels = {{ app = \"a{}\" }}, ports = [{{ name = \"http\", port = 80 }}] }}",
                k % namespaces,
                k % 5
            )
        })
        .collect();
    format!("[{}]", pods.join(", "))
}

fn topology(cni: &str, nodes: usize, pods: usize) -> String {
    let extra = if cni == "calico" {
        "[network.calico]\nmode = \"vxlan\"\n"
    } else {
        ""
    };
    let mut t = format!(
        "name = \"{LAB}\"\n[network]\ncni = \"{cni}\"\n{extra}[[switch]]\nname = \"tor1\"\nsubnet = \"172.20.0.0/22\"\n"
    );
    if cni == "calico" {
        t.push_str("[[router]]\nname = \"gw\"\nswitches = [\"tor1\"]\n");
    }
    for ns in 0..3 {
        t.push_str(&format!(
            "[[namespace]]\nname = \"ns{ns}\"\nlabels = {{ team = \"t{ns}\" }}\n"
        ));
    }
    t.push_str(&format!(
        "[[node]]\nname = \"n{{i}}\"\ncount = {nodes}\npods = {}\n",
        pods_list(pods, 3)
    ));
    t
}

/// 20 policies of every kind, in the three namespaces.
fn policies() -> String {
    let mut docs = Vec::new();
    for i in 0..20 {
        let ns = format!("ns{}", i % 3);
        let other = format!("ns{}", (i + 1) % 3);
        let app = format!("a{}", i % 5);
        let spec = match i % 6 {
            0 => "podSelector: {}\n  policyTypes: [Ingress]".to_string(),
            1 => format!(
                "podSelector: {{ matchLabels: {{ app: {app} }} }}\n  ingress:\n  - from:\n    - namespaceSelector: {{ matchLabels: {{ kubernetes.io/metadata.name: {other} }} }}"
            ),
            2 => format!(
                "podSelector: {{ matchLabels: {{ app: {app} }} }}\n  ingress:\n  - from:\n    - podSelector: {{ matchExpressions: [{{ key: app, operator: In, values: [a1, a2] }}] }}\n    ports:\n    - {{ port: 80, protocol: TCP }}"
            ),
            3 => format!(
                "podSelector: {{ matchLabels: {{ app: {app} }} }}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {{ matchLabels: {{ team: t1 }} }}\n  - ports:\n    - {{ port: 53, protocol: UDP }}"
            ),
            4 => format!(
                "podSelector: {{ matchLabels: {{ app: {app} }} }}\n  ingress:\n  - from:\n    - namespaceSelector: {{}}\n    ports:\n    - port: http"
            ),
            _ => format!(
                "podSelector: {{ matchLabels: {{ app: {app} }} }}\n  ingress:\n  - from:\n    - ipBlock: {{ cidr: 10.0.0.0/8, except: [10.244.1.0/24] }}"
            ),
        };
        docs.push(format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: p{i}, namespace: {ns} }}\nspec:\n  {spec}\n"
        ));
    }
    docs.join("---\n")
}

fn cnilab(args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let out = Command::new(cnilab_bin()).args(args).output().expect("cnilab runs");
    let took = t.elapsed();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "cnilab {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).to_string())
}

fn write_temp(name: &str, text: &str) -> String {
    let file = std::env::temp_dir().join(format!("cnilab-bench-{LAB}-{name}"));
    std::fs::write(&file, text).expect("write");
    file.display().to_string()
}

struct Programming {
    up: Duration,
    apply: Duration,
    felix: f64,
    chains: u64,
    ipsets: u64,
    rm: Duration,
}

fn programming(cni: &str) -> Programming {
    let topo = write_temp("topology.toml", &topology(cni, 50, 10));
    let pols = write_temp("policies.yaml", &policies());
    settle();
    let (up, _) = cnilab(&["up", &topo]);
    let (apply, out) = cnilab(&["--lab", LAB, "policy", "apply", &pols, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("policy apply --json");
    let (rm, _) = cnilab(&["--lab", LAB, "policy", "rm", "--all"]);
    cnilab(&["down", LAB]);
    Programming {
        up,
        apply,
        felix: v["programmed"]["seconds"].as_f64().unwrap_or(0.0),
        chains: v["programmed"]["chains"].as_u64().unwrap_or(0),
        ipsets: v["programmed"]["ipsets"].as_u64().unwrap_or(0),
        rm,
    }
}

struct Probing {
    wall: Duration,
    probes: u64,
    blocked: u64,
}

fn probing(cni: &str) -> Probing {
    let topo = write_temp("probe.toml", &topology(cni, 3, 10));
    let pols = write_temp(
        "probe.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: deny, namespace: ns0 }\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: { name: from-ns1, namespace: ns0 }\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: { matchLabels: { team: t1 } }\n",
    );
    settle();
    cnilab(&["up", &topo]);
    cnilab(&["--lab", LAB, "policy", "apply", &pols]);
    let (wall, out) = cnilab(&["--lab", LAB, "probe", "policy", "--port", "80", "--json"]);
    cnilab(&["down", LAB]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("probe policy --json");
    assert_eq!(v["disagreements"], 0, "the kernel disagrees with the policies");
    Probing {
        wall,
        probes: v["cells"].as_array().map_or(0, |c| c.len() as u64),
        blocked: v["blocked"].as_u64().unwrap_or(0),
    }
}

fn median<T>(mut v: Vec<T>, key: impl Fn(&T) -> Duration) -> T {
    v.sort_by_key(|x| key(x));
    v.swap_remove(v.len() / 2)
}

fn main() {
    let Some((runs, write)) = options("netpol") else {
        return;
    };
    let _ = Command::new(cnilab_bin()).args(["down", LAB]).output();
    let mut table = String::from(
        "| lab | `up` | `policy apply` (20 policies) | felix programming | chains, ipsets | `policy rm --all` |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut probe_table =
        String::from("| lab | pods | probes | blocked | `probe policy` |\n| --- | ---: | ---: | ---: | ---: |\n");
    for cni in ["canal", "calico"] {
        eprintln!("== {cni}: 50 nodes x 10 pods, 20 policies");
        let p = median((0..runs).map(|_| programming(cni)).collect(), |p| p.apply);
        eprintln!("   apply {}, felix {:.2} s", secs(p.apply), p.felix);
        table.push_str(&format!(
            "| {cni}, 50 nodes x 10 pods | {} | {} | {:.2} s | {}, {} | {} |\n",
            secs(p.up),
            secs(p.apply),
            p.felix,
            p.chains,
            p.ipsets,
            secs(p.rm)
        ));
        eprintln!("== {cni}: probe policy over 30 pods");
        let q = median((0..runs).map(|_| probing(cni)).collect(), |q| q.wall);
        eprintln!("   {} probes in {}", q.probes, secs(q.wall));
        probe_table.push_str(&format!(
            "| {cni}, 3 nodes x 10 pods | 30 | {} (870 pairs, TCP and UDP 80) | {} | {} |\n",
            q.probes,
            q.blocked,
            secs(q.wall)
        ));
    }
    let doc = format!(
        "{HEADING}\n\n\
         Measured by `cargo bench -p cnilab --bench netpol` (as root), which rewrites this section; medians of {runs} \
         runs. Programming: 20 policies of every kind (default deny, namespace and pod selectors with \
         matchExpressions, named ports, ipBlock with except, egress) applied at once to a lab of 50 nodes x 10 pods \
         in three namespaces; \"felix programming\" is the time to compute and load every node's chains and ipsets \
         (`iptables-restore`, `ipset restore`), part of `policy apply`'s wall time; the chains and ipsets are summed \
         over the 50 nodes. Probing: `probe policy` with a default deny and an allow from one namespace in force, \
         so the blocked probes wait for their 1.5 s deadline (they run concurrently).\n\n{table}\n{probe_table}"
    );
    println!("{doc}");
    if write {
        write_section(HEADING, &doc);
    }
}

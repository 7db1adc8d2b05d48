//! The seeds' other systems at scale: `cargo bench -p cnilab --bench cnis`
//! (as root).
//!
//! A Weave lab and an aws-vpc lab of 50 nodes x 10 pods: `cnilab up`,
//! `snapshot` and `down`, against a kernel baseline in the same run that
//! makes the same kernel objects with iproute2 batches (one per namespace,
//! on as many workers as cores) and runs no agent and no plugin: the
//! namespaces, the switch, the nodes' links, the profile's devices on each
//! node (Weave: the `weave` bridge and its `vethwe-bridge`/`vethwe-pcap`
//! pair; aws-vpc: each ENI attached, its table and rules), every pod's
//! veth, address, routes (aws-vpc: its rules and static neighbour). The
//! pods' addresses and the ENIs are those the cnilab run of the same round
//! ended with, so both build the same lab. Each case runs three times
//! (`-- --runs N`), baseline and cnilab in turn, after the kernel has freed
//! the namespaces of the run before; figures are medians (peak RSS: the
//! largest). The result replaces the section "Weave and aws-vpc" of
//! BENCHMARKS.md (`--no-write` only prints it).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/mod.rs"]
mod common;
use common::{
    baseline_core, batch, cnilab_bin, options, parallel, phases, plan, s, secs, settle, timed, write_section,
};

/// The heading this benchmark owns in BENCHMARKS.md.
const HEADING: &str = "## Weave and aws-vpc";
const LAB: &str = "bcni";
const BASE_LAB: &str = "bcnibase";
const NODES: usize = 50;
const PODS: usize = 10;

struct Case {
    label: &'static str,
    topology: fn(&str) -> String,
    /// The baseline's work beyond `baseline_core`, from the plan and the
    /// state the cnilab run ended with (its names rewritten to the
    /// baseline's lab).
    profile: fn(&Value, &Value),
}

fn weave_topology(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[network]\ncni = \"weave\"\n[[switch]]\nname = \"tor1\"\nsubnet = \"172.20.0.0/22\"\n\
         [[node]]\nname = \"n{{i}}\"\ncount = {NODES}\npods = {PODS}\n"
    )
}

/// The pods' namespaces, by one `ip -batch` in the host.
fn pod_namespaces(plan: &Value) {
    let script: String = all_pods(plan)
        .into_iter()
        .map(|(_, p)| format!("netns add {}\n", s(&p["ns"])))
        .collect();
    batch("ip", None, &script);
}

/// Every pod of the plan with its node.
fn all_pods(plan: &Value) -> Vec<(&Value, &Value)> {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["pods"].as_array().unwrap().iter().map(move |p| (n, p)))
        .collect()
}

/// A pod's address (with its prefix) as the cnilab run gave it.
fn pod_ip<'a>(state: &'a Value, node: &Value, pod: &Value) -> &'a str {
    s(&state["pods"][format!("{}/{}", s(&node["name"]), s(&pod["name"]))]["ip"])
}

/// Weave: per node the bridge, its MAC (the peer name) and address, the
/// router's port pair; per pod `vethwepl<id>` on the bridge, `eth0` with
/// IP/12 and the default route via the bridge.
fn weave_baseline(plan: &Value, state: &Value) {
    let profile = &plan["profile"];
    let mtu = &profile["mtu"];
    let prefix = s(&profile["range"]).split('/').nth(1).unwrap_or("12").to_string();
    pod_namespaces(plan);
    baseline_core(plan, |n| {
        let me = profile["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == n["name"])
            .expect("the node's weave plan");
        let mut sc = format!(
            "link add weave mtu {mtu} address {} type bridge\n\
             link add vethwe-bridge mtu {mtu} type veth peer name vethwe-pcap mtu {mtu}\n\
             link set vethwe-bridge master weave up\nlink set vethwe-pcap up\nlink set weave up\n\
             addr add {}/{prefix} dev weave\n",
            s(&me["peer"]),
            s(&me["bridge_ip"])
        );
        for p in n["pods"].as_array().unwrap() {
            let host = format!("vethwepl{}", &s(&p["container_id"])[..7]);
            sc.push_str(&format!(
                "link add {host} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}\nlink set {host} master weave up\n",
                s(&p["ns"])
            ));
        }
        (sc, String::new())
    });
    parallel(all_pods(plan), |(n, p)| {
        let gw = s(&state["pods"][format!("{}/{}", s(&n["name"]), s(&p["name"]))]["gateway"]);
        batch(
            "ip",
            Some(s(&p["ns"])),
            &format!(
                "link set lo up\naddr add {} dev eth0\nlink set eth0 up\nroute add default via {gw}\n",
                pod_ip(state, n, p)
            ),
        );
    });
}

fn aws_topology(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[network]\ncni = \"aws-vpc\"\n\
         [[switch]]\nname = \"subnet-a\"\nsubnet = \"10.0.0.0/21\"\nmtu = 9001\n\
         [[router]]\nname = \"vpc\"\nswitches = [\"subnet-a\"]\n\
         [[node]]\nname = \"n{{i}}\"\ncount = {NODES}\ninstance_type = \"m5.large\"\npods = {PODS}\n"
    )
}

/// aws-vpc: rule 1024 on every node; each ENI the cnilab run attached
/// beyond eth0 (a veth into the VPC's bridge with its MAC, address, table
/// N+1, rule 32765, the kernel's subnet route removed) and the VPC's
/// entries for every ENI address (proxy ARP on the port, a neighbour entry
/// on the bridge); per pod the `eni<hash>` veth, the pod's /32, its
/// gateway route, default route and permanent neighbour, the host route
/// and rules 512 (and 1536 on a secondary ENI). The nftables source check
/// of the VPC is left out (one table, made once).
fn aws_baseline(plan: &Value, state: &Value) {
    let profile = &plan["profile"];
    let fabric = s(&plan["fabric_ns"]).to_string();
    let nodes: Vec<&Value> = profile["nodes"].as_array().unwrap().iter().collect();
    pod_namespaces(plan);
    let node_of = |name: &str| nodes.iter().find(|n| s(&n["node"]) == name).copied().expect("aws node");
    // Which ENIs the cnilab run attached (its ipamd's checkpoint), by node.
    let attached = |name: &str| -> Vec<&Value> {
        let want: Vec<u64> = state["enis"][name]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["device"].as_u64())
            .collect();
        node_of(name)["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["device"].as_u64().is_some_and(|d| d > 0 && want.contains(&d)))
            .collect()
    };
    let mut fab = String::new();
    for n in plan["nodes"].as_array().unwrap() {
        for e in attached(s(&n["name"])) {
            fab.push_str(&format!(
                "link set {} master {} up\nlink set {} type bridge_slave proxy_arp on\n",
                s(&e["port"]),
                s(&n["switch"]),
                s(&e["port"])
            ));
        }
    }
    baseline_core(plan, |n| {
        let name = s(&n["name"]);
        let mut sc = String::from("rule add fwmark 0x80/0x80 lookup main prio 1024\n");
        for e in attached(name) {
            let dev = s(&e["ifname"]);
            let table = e["device"].as_u64().unwrap() + 1;
            sc.push_str(&format!(
                "link add {dev} mtu 9001 address {} type veth peer name {} mtu 9001 netns {fabric}\n",
                s(&e["mac"]),
                s(&e["port"])
            ));
            sc.push_str(&format!(
                "link set {dev} up\naddr add {}/{} dev {dev} noprefixroute\n\
                 route add {gw} dev {dev} scope link table {table}\nroute add default via {gw} dev {dev} table {table}\n\
                 rule add from {} lookup {table} prio 32765\n",
                s(&e["primary"]),
                n["prefix_len"],
                s(&e["primary"]),
                gw = s(&n["gateway"]),
            ));
        }
        for (k, p) in n["pods"].as_array().unwrap().iter().enumerate() {
            let ip = pod_ip(state, n, p).split('/').next().unwrap().to_string();
            let host = cnilab::profile::awsvpc::plugin::host_veth_name("eni", "default", s(&p["name"]));
            let mac = format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                n["name"].as_str().unwrap().len(),
                k / 256,
                k % 256
            );
            sc.push_str(&format!(
                "link add {host} address {mac} mtu 9001 type veth peer name eth0 mtu 9001 netns {}\nlink set {host} up\n\
                 route add {ip}/32 dev {host} scope link\nrule add to {ip} lookup main prio 512\n",
                s(&p["ns"])
            ));
            let table = state["eni_of"][&ip].as_u64().unwrap_or(254);
            if table != 254 {
                sc.push_str(&format!("rule add from {ip} lookup {table} prio 1536\n"));
            }
        }
        (sc, String::new())
    });
    batch("ip", Some(&fabric), &fab);
    let mut neigh = String::new();
    for n in plan["nodes"].as_array().unwrap() {
        for e in node_of(s(&n["name"]))["enis"].as_array().unwrap() {
            let Some(mac) = e["mac"].as_str() else { continue };
            for ip in std::iter::once(&e["primary"]).chain(e["secondaries"].as_array().unwrap()) {
                neigh.push_str(&format!(
                    "neigh replace {} lladdr {mac} dev {}\n",
                    s(ip),
                    s(&n["switch"])
                ));
            }
        }
    }
    batch("ip", Some(&fabric), &neigh);
    parallel(all_pods(plan), |(n, p)| {
        let ip = pod_ip(state, n, p).split('/').next().unwrap().to_string();
        let k = n["pods"].as_array().unwrap().iter().position(|q| q == p).unwrap();
        let mac = format!(
            "02:00:00:{:02x}:{:02x}:{:02x}",
            n["name"].as_str().unwrap().len(),
            k / 256,
            k % 256
        );
        batch(
            "ip",
            Some(s(&p["ns"])),
            &format!(
                "link set lo up\naddr add {ip}/32 dev eth0\nlink set eth0 up\nroute add 169.254.1.1 dev eth0 scope link\n\
                 route add default via 169.254.1.1 dev eth0\nneigh add 169.254.1.1 lladdr {mac} dev eth0 nud permanent\n"
            ),
        );
    });
}

const NOTES: &str = "\n- Run with the host's neighbour table raised as for the scale benchmark (net.ipv4.neigh.default.gc_thresh3 65,536): it is shared by every namespace, and Weave's full mesh of 50 routers alone needs 2,450 entries on the nodes' eth0; at the default 1,024 the kernel drops packets that need a new neighbour and the mesh does not converge within `up`'s 60 s (cnilab warns before it starts).\n\
- Weave: the time after the nodes is the 50 routers' full mesh (each connects to the 49 others over TCP 6783, then sleeve heartbeats over UDP 6783 until every pair is established) and each pod's address asked of its router over HTTP; the baseline makes the bridge, ports and pods only.\n\
- aws-vpc: each node's ipamd attaches the ENIs the warm pool asks for as the pods come (10 pods on an m5.large: eth1 and eth2, 9 addresses each), registering each address with the VPC (a neighbour entry on the subnet's bridge and an element of the nftables source check); the baseline makes the same ENIs, tables, rules and neighbours by iproute2, without the nftables table.\n";

struct Row {
    label: &'static str,
    up: Duration,
    after_nodes: Duration,
    base: Duration,
    snapshot: Duration,
    down: Duration,
    rss_kb: i64,
}

fn lab_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("cnilab-bench-cnis");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn down(lab: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new(cnilab_bin()).args(["down", lab]).output().unwrap();
    assert!(
        out.status.success(),
        "down {lab} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// The lab's saved state, with every name of `from` rewritten for `to`.
fn state_as(from: &str, to: &str) -> Value {
    let text = std::fs::read_to_string(format!("/run/cnilab/{from}/lab.json")).expect("the lab's state");
    serde_json::from_str(&text.replace(&format!("cnilab.{from}."), &format!("cnilab.{to}."))).expect("state is JSON")
}

/// The ENIs each node's ipamd attached, and the table of each pod address,
/// from the checkpoints of an aws-vpc lab (nothing for other profiles).
fn enis_of(lab: &str, state: &mut Value) {
    let nodes = PathBuf::from(format!("/run/cnilab/{lab}/nodes"));
    let mut enis = serde_json::Map::new();
    let mut table_of = serde_json::Map::new();
    for d in std::fs::read_dir(nodes).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(d.path().join("agent/ipam.json")) else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).expect("ipam.json");
        for e in v["enis"].as_array().into_iter().flatten() {
            for ip in e["ips"].as_array().into_iter().flatten() {
                if !ip["pod"].is_null() {
                    table_of.insert(s(&ip["ip"]).to_string(), e["routeTable"].clone());
                }
            }
        }
        enis.insert(d.file_name().to_string_lossy().to_string(), v["enis"].clone());
    }
    state["enis"] = Value::Object(enis);
    state["eni_of"] = Value::Object(table_of);
}

fn run_case(case: &Case) -> Row {
    let topo = lab_file(LAB, &(case.topology)(LAB));
    let up = timed(Command::new(cnilab_bin()).args(["up", topo.to_str().unwrap(), "--name", LAB]));
    let ph = phases(&up.stdout);
    let after_nodes: Duration = ["agents", "pods", "converge"].iter().filter_map(|k| ph.get(*k)).sum();
    let mut state = state_as(LAB, BASE_LAB);
    enis_of(LAB, &mut state);
    let snap = timed(Command::new(cnilab_bin()).args(["--lab", LAB, "snapshot"]));
    let down_time = down(LAB);
    settle();
    let base_topo = lab_file(BASE_LAB, &(case.topology)(BASE_LAB));
    let base_plan = plan(&base_topo);
    std::fs::create_dir_all(format!("/run/cnilab/{BASE_LAB}")).unwrap();
    std::fs::write(cnilab::model::paths::LabPaths::of(BASE_LAB).marker(), BASE_LAB).unwrap();
    let start = Instant::now();
    (case.profile)(&base_plan, &state);
    let base = start.elapsed();
    down(BASE_LAB);
    settle();
    Row {
        label: case.label,
        up: up.wall,
        after_nodes,
        base,
        snapshot: snap.wall,
        down: down_time,
        rss_kb: up.max_rss_kb.max(snap.max_rss_kb),
    }
}

fn median(mut runs: Vec<Row>) -> Row {
    runs.sort_by_key(|r| r.up);
    let rss = runs.iter().map(|r| r.rss_kb).max().unwrap_or(0);
    let mut mid = runs.swap_remove(runs.len() / 2);
    mid.rss_kb = rss;
    mid
}

fn main() {
    let Some((runs, write)) = options("cnis") else {
        return;
    };
    let cases = [
        Case {
            label: "weave (sleeve), 50 nodes x 10 pods",
            topology: weave_topology,
            profile: weave_baseline,
        },
        Case {
            label: "aws-vpc (m5.large), 50 nodes x 10 pods",
            topology: aws_topology,
            profile: aws_baseline,
        },
    ];
    let _ = down(LAB);
    let _ = down(BASE_LAB);
    settle();
    let mut rows = Vec::new();
    for case in &cases {
        let mut v = Vec::new();
        for i in 0..runs {
            let r = run_case(case);
            eprintln!(
                "{} run {}: up {} (baseline {}), snapshot {}, down {}",
                case.label,
                i + 1,
                secs(r.up),
                secs(r.base),
                secs(r.snapshot),
                secs(r.down)
            );
            v.push(r);
        }
        rows.push(median(v));
    }
    let mut doc = format!(
        "{HEADING}\n\nMeasured by `cargo bench -p cnilab --bench cnis` (as root; each row is the run with the median `up` of {runs}, peak RSS the largest of all). \
         The baseline makes the same kernel objects by iproute2 batches (namespaces, switch, nodes' links, the profile's \
         devices, every pod's veth, address and routes; aws-vpc also the ENIs, tables, rules and neighbours) and runs no \
         agent and no plugin; the addresses and ENIs are those the cnilab run ended with.\n\n\
         | lab | `up` | kernel baseline | up / baseline | agents, pods, converged | `snapshot` | `down` | peak RSS |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for r in &rows {
        doc.push_str(&format!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {:.0} MB |\n",
            r.label,
            secs(r.up),
            secs(r.base),
            r.up.as_secs_f64() / r.base.as_secs_f64().max(1e-9),
            secs(r.after_nodes),
            secs(r.snapshot),
            secs(r.down),
            r.rss_kb as f64 / 1024.0
        ));
    }
    doc.push_str(NOTES);
    println!("{doc}");
    if write {
        write_section(HEADING, &doc);
    }
}

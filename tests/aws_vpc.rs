//! cni = "aws-vpc": amazon-vpc-cni's pod limits, its ENIs, its routing
//! rules and the VPC's source/dest check (docs/aws-vpc-cni-facts.md).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// One node of `instance_type` with `pods` pods on a VPC subnet with its router.
fn one_node(instance_type: &str, pods: usize) -> TempFile {
    TempFile::toml(&format!(
        "name = \"aws\"\n[network]\ncni = \"aws-vpc\"\n[[switch]]\nname = \"subnet-a\"\nsubnet = \"10.0.1.0/24\"\nmtu = 9001\n\
[[router]]\nname = \"vpc\"\nswitches = [\"subnet-a\"]\n[[node]]\nname = \"n\"\ninstance_type = \"{instance_type}\"\npods = {pods}\n"
    ))
}

/// The node's details in `status --json`.
fn node_status(lab: &Lab, node: &str) -> Vec<(String, String)> {
    let out = lab.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()
        .clone();
    n["profile"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv[0].as_str().unwrap().to_string(), kv[1].as_str().unwrap().to_string()))
        .collect()
}

fn detail(s: &[(String, String)], key: &str) -> String {
    s.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A pod add beyond the addresses fails with amazon-vpc-cni's words, exit 1,
/// and leaves the lab as it was.
fn refused(lab: &Lab, pod: &str) {
    let before = lab.pods();
    let status_before = node_status(lab, "n");
    let out = lab.run(&["pod", "add", pod]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        show(&out).contains("add cmd: failed to assign an IP address to container"),
        "{}",
        show(&out)
    );
    assert_eq!(lab.pods(), before);
    assert_eq!(node_status(lab, "n"), status_before);
    let ns = namespaces_with(&format!("cnilab.{}.{pod}", lab.name).replace('/', "."));
    assert!(ns.is_empty(), "the refused pod's namespace is left: {ns:?}");
}

#[test]
fn an_m5_large_runs_27_pods_and_refuses_the_28th() {
    let t = one_node("m5.large", 27);
    let lab = Lab::up(&t.path);
    let pods = lab.pods();
    assert_eq!(pods.len(), 27);
    let s = node_status(&lab, "n");
    assert_eq!(detail(&s, "instance_type"), "m5.large");
    assert_eq!(detail(&s, "max_pods"), "29 = 3 x (10 - 1) + 2");
    assert_eq!(detail(&s, "enis"), "3 of 3 (eth0, eth1, eth2)");
    assert_eq!(detail(&s, "addresses"), "27 used of 27");
    // Every pod answers, from the first pod and from the VPC router.
    let (first, _) = &pods[0];
    for (p, ip) in &pods[1..] {
        retry(&format!("ping {first} -> {p}"), Duration::from_secs(10), || {
            let out = lab.exec(first, &["ping", "-c1", "-W1", ip]);
            if out.status.success() { Ok(()) } else { Err(show(&out)) }
        });
    }
    for (p, ip) in &pods {
        let out = lab.exec("vpc", &["ping", "-c1", "-W2", ip]);
        assert!(out.status.success(), "vpc -> {p}: {}", show(&out));
    }
    refused(&lab, "n/pod-28");
}

#[test]
fn a_t3_nano_runs_2_pods_and_refuses_the_3rd() {
    let t = one_node("t3.nano", 2);
    let lab = Lab::up(&t.path);
    let s = node_status(&lab, "n");
    assert_eq!(detail(&s, "max_pods"), "4 = 2 x (2 - 1) + 2");
    assert_eq!(detail(&s, "addresses"), "2 used of 2");
    pingall(&lab);
    refused(&lab, "n/pod-3");
    // The address of a pod that goes is free again.
    let out = lab.run(&["pod", "rm", "n/pod-1"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = lab.run(&["pod", "add", "n/pod-3"]);
    assert!(out.status.success(), "{}", show(&out));
    pingall(&lab);
}

#[test]
fn a_secondary_eni_pod_answers_through_its_rule_and_the_vpc_checks_sources() {
    let lab = Lab::up(&topology("aws-vpc.toml"));
    let pods: std::collections::BTreeMap<String, String> = lab.pods().into_iter().collect();
    let secondary = &pods["nano/pod-2"];
    let rules = lab.exec_ok("nano", &["ip", "rule"]);
    let eni1 = address_of(&lab, "nano", "eth1");
    let lines: Vec<&str> = rules.lines().map(str::trim).collect();
    for want in [
        format!("512:\tfrom all to {} lookup main", pods["nano/pod-1"]),
        format!("512:\tfrom all to {secondary} lookup main"),
        "1024:\tfrom all fwmark 0x80/0x80 lookup main".to_string(),
        format!("1536:\tfrom {secondary} lookup 2"),
        format!("32765:\tfrom {eni1} lookup 2"),
    ] {
        assert!(lines.contains(&want.as_str()), "missing `{want}` in:\n{rules}");
    }
    // Pod 1 sits on eth0: no rule 1536 for it.
    assert!(
        !rules.contains(&format!("from {} lookup", pods["nano/pod-1"])),
        "{rules}"
    );
    let table = lab.exec_ok("nano", &["ip", "route", "show", "table", "2"]);
    let table: Vec<&str> = table.lines().map(str::trim).collect();
    assert_eq!(table, ["default via 10.0.1.1 dev eth1", "10.0.1.1 dev eth1 scope link"]);
    let main = lab.exec_ok("nano", &["ip", "route"]);
    assert!(
        !main.contains("dev eth1"),
        "eth1's subnet route must leave main:\n{main}"
    );
    let pod_neigh = lab.exec_ok("nano/pod-2", &["ip", "neigh"]);
    assert!(
        pod_neigh.contains("169.254.1.1 dev eth0 lladdr") && pod_neigh.contains("PERMANENT"),
        "{pod_neigh}"
    );

    // The secondary ENI's pod reaches the other node's pods, the VPC router
    // and beyond it; and they reach it.
    for dst in [pods["large/pod-1"].as_str(), "10.0.1.1", "203.0.113.1", "10.0.1.10"] {
        let out = lab.run(&["probe", "ping", "nano/pod-2", dst]);
        assert!(out.status.success(), "nano/pod-2 -> {dst}: {}", show(&out));
    }
    pingall(&lab);

    // Without rule 1536 its replies leave by eth0, whose source check drops them.
    let out = lab.run(&["fault", "add", "rule-del", "--on", "nano/pod-2"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!lab.exec_ok("nano", &["ip", "rule"]).contains("1536:"));
    let out = lab.run(&["probe", "ping", "large/pod-1", "nano/pod-2"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let out = lab.run(&["fault", "rm", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    retry("large/pod-1 -> nano/pod-2 again", Duration::from_secs(10), || {
        let out = lab.run(&["probe", "ping", "large/pod-1", "nano/pod-2"]);
        if out.status.success() { Ok(()) } else { Err(show(&out)) }
    });

    // DEL takes rules 512 and 1536 and the host route away.
    let out = lab.run(&["pod", "rm", "nano/pod-2"]);
    assert!(out.status.success(), "{}", show(&out));
    let rules = lab.exec_ok("nano", &["ip", "rule"]);
    assert!(
        !rules.contains(&format!(" {secondary} ")) && !rules.contains(&format!(" {secondary}\n")),
        "{rules}"
    );
    assert!(!rules.contains("1536:"), "{rules}");
    let main = lab.exec_ok("nano", &["ip", "route"]);
    assert!(!main.contains(&format!("{secondary} dev")), "{main}");
}

#[test]
fn down_after_kill_9_leaves_nothing() {
    let lab = Lab::up(&topology("aws-vpc.toml"));
    let st = lab.state();
    for (_, pid) in st["agents"].as_object().unwrap() {
        let pid = pid.as_u64().unwrap() as i32;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let name = lab.name.clone();
    std::mem::forget(lab);
    let out = cnilab(&["down", &name]);
    assert!(out.status.success(), "{}", show(&out));
    assert_gone(&name);
}

/// The hop of `trace --json FROM TO` at node `node` on the way there.
fn node_hop(lab: &Lab, from: &str, to: &str, node: &str) -> Value {
    let out = lab.run(&["trace", from, to, "--json"]);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("trace --json: {e}: {}", show(&out)));
    t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["at"] == node)
        .cloned()
        .unwrap_or_else(|| panic!("no hop at {node} in {t:#}"))
}

#[test]
fn trace_and_snapshot_follow_the_rules_of_a_secondary_eni_pod() {
    let lab = Lab::up(&topology("aws-vpc.toml"));
    let pods: std::collections::BTreeMap<String, String> = lab.pods().into_iter().collect();
    let secondary = &pods["nano/pod-2"];
    let eni1 = address_of(&lab, "nano", "eth1");

    // The snapshot shows the plugin's rules, not the kernel's defaults.
    let snap = lab.snapshot();
    let nano = snap
        .split("\n== node nano\n")
        .nth(1)
        .unwrap()
        .split("\n== ")
        .next()
        .unwrap();
    let rules: Vec<&str> = nano.lines().filter(|l| l.starts_with("rule ")).collect();
    let want = [
        format!("rule 512: from all to {} lookup main", pods["nano/pod-1"]),
        format!("rule 512: from all to {secondary} lookup main"),
        "rule 1024: from all fwmark 0x80/0x80 lookup main".to_string(),
        format!("rule 1536: from {secondary} lookup 2"),
        format!("rule 32765: from {eni1} lookup 2"),
    ];
    let prios: Vec<u32> = rules
        .iter()
        .map(|l| l[5..].split(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(prios.is_sorted(), "rules by priority:\n{nano}");
    assert_eq!(rules.len(), 5, "{nano}");
    for w in &want {
        assert!(rules.contains(&w.as_str()), "missing `{w}` in:\n{nano}");
    }
    assert!(
        !snap.contains("lookup local") && !snap.contains("32766:"),
        "defaults shown:\n{snap}"
    );

    // Forwarded from the secondary ENI's pod: rule 1536, table 2, out of eth1;
    // rule 1024 may apply only with a mark, which trace says and does not guess.
    let hop = node_hop(&lab, "nano/pod-2", "large/pod-1", "nano");
    let entries: Vec<&str> = hop["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(hop["dev_out"], "eth1", "{hop:#}");
    assert_eq!(
        &entries[..2],
        [
            format!("rule 1536: from {secondary} lookup 2").as_str(),
            "route default via 10.0.1.1 dev eth1 table 2"
        ],
        "{hop:#}"
    );
    let notes = hop["notes"].to_string();
    assert!(
        notes.contains("rule 1024: from all fwmark 0x80/0x80 lookup main applies if iptables marked the packet"),
        "{hop:#}"
    );
    // The pod on eth0 takes main.
    let hop = node_hop(&lab, "nano/pod-1", "large/pod-1", "nano");
    assert_eq!(hop["dev_out"], "eth0", "{hop:#}");
    assert!(!hop["entries"].to_string().contains("rule "), "{hop:#}");

    // Without rule 1536 the trace shows what the kernel does: main, eth0.
    let out = lab.run(&["fault", "add", "rule-del", "--on", "nano/pod-2"]);
    assert!(out.status.success(), "{}", show(&out));
    let hop = node_hop(&lab, "nano/pod-2", "large/pod-1", "nano");
    assert_eq!(hop["dev_out"], "eth0", "{hop:#}");
    let entries = hop["entries"].to_string();
    assert!(
        !entries.contains("rule 1536") && !entries.contains("table 2"),
        "{hop:#}"
    );
    assert!(!lab.snapshot().contains("rule 1536:"));
}

/// `trace` across the VPC: the bridge answers for a secondary address with
/// its ENI's MAC, so a pod on eth1 is reached and answers; without its
/// rule 1536 the answer leaves by eth0 and the trace names the VPC's
/// source/dest check at the switch as where it is lost, not "delivered".
#[test]
fn trace_crosses_the_vpc_and_names_the_source_dest_check() {
    let lab = Lab::up(&topology("aws-vpc.toml"));
    let trace = |lab: &Lab| -> serde_json::Value {
        let out = lab.run(&["trace", "large/pod-1", "nano/pod-2", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
    };
    let v = trace(&lab);
    assert_eq!(v["delivered"], true, "{v:#}");
    assert!(v.to_string().contains("answered by the bridge: proxy_arp"), "{v:#}");
    let out = lab.run(&["fault", "add", "rule-del", "--on", "nano/pod-2"]);
    assert!(out.status.success(), "{}", show(&out));
    let v = trace(&lab);
    assert_eq!(v["delivered"], false, "{v:#}");
    let text = v.to_string();
    assert!(
        text.contains("source/dest check") && text.contains("is not an address of the ENI behind port nano"),
        "{v:#}"
    );
}

/// The IPv4 address of `dev` in a node (an ENI's primary address).
fn address_of(lab: &Lab, node: &str, dev: &str) -> String {
    let out = lab.exec_ok(node, &["ip", "-4", "-o", "addr", "show", "dev", dev]);
    let cidr = out.split_whitespace().nth(3).expect("an address");
    cidr.split('/').next().unwrap().to_string()
}

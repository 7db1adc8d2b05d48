//! `cnilab trace` against real pings: on every fault kind of cli.md that a
//! flannel VXLAN lab with a router can have, on iptables policies and rules
//! inside a node or a pod, on rp_filter and on a router with no route back,
//! trace's verdict (exit 0 or 1) equals what `probe ping` sees. One lab;
//! each fault is added and removed in turn.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SRC: &str = "worker1/pod-1";
const DST: &str = "worker2/pod-1";

/// `trace SRC DST --size SIZE --json`: whether it says delivered, and the JSON.
fn trace(lab: &Lab, dst: &str, size: u32) -> (bool, Value) {
    let out = lab.run(&["trace", SRC, dst, "--size", &size.to_string(), "--json"]);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("trace printed no JSON ({e}):\n{}", show(&out)));
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "trace exits 0 or 1:\n{}",
        show(&out)
    );
    assert_eq!(v["delivered"], code == Some(0), "exit code and JSON agree: {v:#}");
    (code == Some(0), v)
}

/// One real echo of the same IP size with DF set: whether the reply came.
fn ping(lab: &Lab, dst: &str, size: u32) -> bool {
    let payload = (size - 28).to_string();
    lab.run(&["probe", "ping", SRC, dst, "--size", &payload, "--df"])
        .status
        .success()
}

/// Trace and ping until they agree or 15 s pass (neighbour entries and
/// learned MACs settle after a fault): (trace delivered, ping replied,
/// trace, how many tries it took).
fn compare(lab: &Lab, dst: &str, size: u32) -> (bool, bool, Value, u32) {
    let until = Instant::now() + Duration::from_secs(15);
    let mut pause = Duration::from_millis(20);
    let mut tries = 0;
    loop {
        tries += 1;
        let (t, v) = trace(lab, dst, size);
        let p = ping(lab, dst, size);
        if t == p || Instant::now() >= until {
            return (t, p, v, tries);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn fault(lab: &Lab, args: &[&str]) -> String {
    let mut full = vec!["fault", "add"];
    full.extend_from_slice(args);
    let out = lab.run(&full);
    assert!(out.status.success(), "fault add {args:?}:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unfault(lab: &Lab, id: &str) {
    let out = lab.run(&["fault", "rm", id]);
    assert!(out.status.success(), "fault rm {id}:\n{}", show(&out));
}

/// What one case did: its name, the packet size, trace's and ping's verdicts.
struct Seen {
    case: String,
    size: u32,
    trace: bool,
    ping: bool,
    tries: u32,
    verdict: String,
}

#[test]
fn trace_agrees_with_ping_on_every_fault_and_names_the_iptables_drop() {
    let lab = Lab::up(&topology("flannel-routed.toml"));
    let mut seen: Vec<Seen> = Vec::new();
    let mut check = |lab: &Lab, dst: &str, case: &str, size: u32| -> Value {
        let (t, p, v, tries) = compare(lab, dst, size);
        seen.push(Seen {
            case: case.to_string(),
            size,
            trace: t,
            ping: p,
            tries,
            verdict: v["verdict"].as_str().unwrap_or("").to_string(),
        });
        v
    };
    check(&lab, DST, "no fault", 84);
    check(&lab, DST, "no fault", 1450);

    // Faults from cli.md, each reverted before the next. `loss` is 100%,
    // so that its outcome is certain.
    let kinds: &[(&[&str], &[u32])] = &[
        (&["mtu", "--on", "tor1", "--mtu", "1400"], &[1350, 1400]),
        (&["upstream-vxlan", "--on", "tor1"], &[1400, 1450]),
        (&["arp-suppress", "--on", "worker2"], &[84]),
        (&["arp-suppress", "--on", "tor1"], &[84]),
        (&["link-down", "--on", "worker2"], &[84]),
        (&["loss", "--on", "worker2", "--percent", "100"], &[84]),
        (&["block", "--on", "worker2", "--proto", "udp", "--port", "8472"], &[84]),
        (&["block", "--on", "worker1", "--proto", "tcp", "--port", "179"], &[84]),
        (
            &[
                "sysctl",
                "--on",
                "worker1",
                "--key",
                "net.ipv4.ip_forward",
                "--value",
                "0",
            ],
            &[84],
        ),
        (
            &[
                "sysctl",
                "--on",
                "worker2",
                "--key",
                "net.ipv4.conf.all.rp_filter",
                "--value",
                "1",
            ],
            &[84],
        ),
        (&["agent-down", "--on", "worker2"], &[84]),
    ];
    for (args, sizes) in kinds {
        let id = fault(&lab, args);
        for size in *sizes {
            check(&lab, DST, &args.join(" "), *size);
        }
        unfault(&lab, &id);
        if args[0] == "arp-suppress" && args[2] == "worker2" {
            // worker1's neighbour entry for worker2 is left FAILED, yet the next packet asks again.
            check(&lab, DST, "right after fault rm arp-suppress --on worker2", 84);
        }
    }

    // A TCP trace between nodes meets the TCP block that an echo passes;
    // between pods, VXLAN carries it inside UDP 8472, out of the rule's sight.
    let id = fault(&lab, &["block", "--on", "worker2", "--proto", "tcp", "--port", "179"]);
    let tcp = |src: &str, dst: &str| lab.run(&["trace", src, dst, "--proto", "tcp", "--port", "179", "--json"]);
    let out = tcp(SRC, DST);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = tcp("worker1", "worker2");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (&v["dropped"]["at"], &v["dropped"]["table"], &v["dropped"]["chain"]),
        (&Value::from("worker2"), &Value::from("raw"), &Value::from("PREROUTING")),
        "{v:#}"
    );
    assert!(trace(&lab, DST, 84).0, "an echo still crosses");
    unfault(&lab, &id);

    // Docker's FORWARD policy inside a node: flanneld's FLANNEL-FWD accepts
    // the pod network before the policy (flannel's fix for #603); without
    // it, the trace names node, table, chain and policy.
    for node in ["worker1", "worker2"] {
        lab.exec_ok(node, &["iptables", "-P", "FORWARD", "DROP"]);
        let v = check(&lab, DST, &format!("{node}: FORWARD DROP, FLANNEL-FWD present"), 84);
        assert_eq!(v["delivered"], true, "FLANNEL-FWD accepts the pod network: {v:#}");
        lab.exec_ok(node, &["iptables", "-F", "FLANNEL-FWD"]);
        let v = check(&lab, DST, &format!("{node}: iptables -P FORWARD DROP"), 84);
        let d = &v["dropped"];
        assert_eq!(
            (&d["direction"], &d["at"], &d["table"], &d["chain"], &d["rule"]),
            (
                &Value::from("request"),
                &Value::from(node),
                &Value::from("filter"),
                &Value::from("FORWARD"),
                &Value::from("policy DROP")
            ),
            "{v:#}"
        );
        let out = lab.run(&["trace", SRC, DST]);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("dropped at {node}")) && text.contains("table filter, chain FORWARD, policy DROP"),
            "{text}"
        );
        lab.exec_ok(node, &["iptables", "-P", "FORWARD", "ACCEPT"]);
        lab.exec_ok(
            node,
            &["iptables", "-A", "FLANNEL-FWD", "-s", "10.244.0.0/16", "-j", "ACCEPT"],
        );
        lab.exec_ok(
            node,
            &["iptables", "-A", "FLANNEL-FWD", "-d", "10.244.0.0/16", "-j", "ACCEPT"],
        );
    }
    // Only the reply is dropped: the request arrives, the trace still fails, on the reply's hop.
    lab.exec_ok(
        DST,
        &[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "icmp",
            "--icmp-type",
            "echo-reply",
            "-j",
            "DROP",
        ],
    );
    let v = check(&lab, DST, "pod: OUTPUT drops echo-reply", 84);
    assert_eq!(v["dropped"]["direction"], "reply", "{v:#}");
    assert_eq!(v["dropped"]["at"], DST, "{v:#}");
    assert_eq!(v["dropped"]["chain"], "OUTPUT", "{v:#}");
    lab.exec_ok(DST, &["iptables", "-F", "OUTPUT"]);
    // A conntrack match: replies (ESTABLISHED) forwarded by worker1 are
    // dropped, requests are not; inserted before flanneld's FLANNEL-FWD jump.
    lab.exec_ok(
        "worker1",
        &[
            "iptables",
            "-I",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED",
            "-j",
            "DROP",
        ],
    );
    let v = check(&lab, DST, "worker1: FORWARD drops ESTABLISHED", 84);
    assert_eq!(v["dropped"]["direction"], "reply", "{v:#}");
    lab.exec_ok("worker1", &["iptables", "-D", "FORWARD", "1"]);
    // Strict rp_filter with an asymmetric route: worker2 would answer worker1's pod
    // outside the tunnel, so the tunnelled request fails the reverse-path check.
    let src_ip = lab.pods().into_iter().find(|(k, _)| k == SRC).expect("source pod").1;
    let w1_ip = lab.state()["plan"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "worker1")
        .expect("worker1")["ip"]
        .as_str()
        .expect("node address")
        .to_string();
    let route = [format!("{src_ip}/32"), "via".into(), w1_ip];
    let mut add = vec!["ip", "route", "add"];
    add.extend(route.iter().map(String::as_str));
    lab.exec_ok("worker2", &add);
    for mode in ["1", "2"] {
        let id = fault(
            &lab,
            &[
                "sysctl",
                "--on",
                "worker2",
                "--key",
                "net.ipv4.conf.all.rp_filter",
                "--value",
                mode,
            ],
        );
        let v = check(&lab, DST, &format!("asymmetric route, rp_filter {mode}"), 84);
        if mode == "1" {
            let why = v["dropped"]["why"].as_str().unwrap_or("");
            assert!(why.contains("rp_filter = 1") && why.contains("strict"), "{v:#}");
        }
        unfault(&lab, &id);
    }
    add[2] = "del";
    lab.exec_ok("worker2", &add);

    // A pod -> router echo: flanneld's --ip-masq rules (FLANNEL-POSTRTG)
    // masquerade it, and conntrack turns the reply back to the pod.
    let st = lab.state();
    let gw_ip = st["plan"]["routers"][0]["ports"][0]["ip"]
        .as_str()
        .expect("router port")
        .to_string();
    let v = check(&lab, &gw_ip, "pod -> router, flanneld's FLANNEL-POSTRTG", 84);
    assert_eq!(v["delivered"], true, "{v:#}");
    assert!(
        v["reply"]
            .to_string()
            .contains("conntrack undoes the request's source NAT"),
        "{v:#}"
    );
    // Without them the router has no route back to the pod network, so the
    // request arrives and the reply cannot leave; with a route, it can.
    lab.exec_ok("worker1", &["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    let v = check(&lab, &gw_ip, "pod -> router, no masquerade, no route back", 84);
    assert_eq!(
        (&v["dropped"]["direction"], &v["dropped"]["at"]),
        (&Value::from("reply"), &Value::from("router gw")),
        "{v:#}"
    );
    // flannel's --ip-masq: the router answers worker1's address, and conntrack
    // turns the reply back to the pod.
    let masq = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.244.0.0/16",
        "!",
        "-d",
        "10.244.0.0/16",
        "-j",
        "MASQUERADE",
    ];
    lab.exec_ok("worker1", &masq);
    let v = check(&lab, &gw_ip, "pod -> router, MASQUERADE on worker1", 84);
    let notes = v["reply"].to_string();
    assert!(notes.contains("conntrack undoes the request's source NAT"), "{v:#}");
    lab.exec_ok("worker1", &["iptables", "-t", "nat", "-D", "POSTROUTING", "2"]);
    add[2] = "add";
    lab.exec_ok("gw", &add);
    check(&lab, &gw_ip, "pod -> router, route back via worker1", 84);
    add[2] = "del";
    lab.exec_ok("gw", &add);

    let mut table = String::new();
    for s in &seen {
        table.push_str(&format!(
            "{:<72} {:>5}  trace {:<9} ping {:<8} {} (try {})\n",
            s.case,
            s.size,
            if s.trace { "delivered" } else { "fails" },
            if s.ping { "replies" } else { "fails" },
            if s.trace == s.ping { "agree" } else { "DISAGREE" },
            s.tries
        ));
    }
    let agree = seen.iter().filter(|s| s.trace == s.ping).count();
    eprintln!("{table}{agree} of {} agree", seen.len());
    let wrong: Vec<String> = seen
        .iter()
        .filter(|s| s.trace != s.ping)
        .map(|s| format!("{} ({} bytes): {}", s.case, s.size, s.verdict))
        .collect();
    assert!(
        wrong.is_empty(),
        "trace and ping disagree:\n{}\n\n{table}",
        wrong.join("\n")
    );
    // Both outcomes occur, so the equality above is not the same answer every time.
    assert!(seen.iter().any(|s| s.ping) && seen.iter().any(|s| !s.ping), "{table}");
}

//! The Calico profile end to end with real BIRD: the full mesh, route
//! reflectors, peering with a top-of-rack router, VXLAN mode, and what
//! happens when a node's BIRD stops and starts again. Sessions are read with
//! birdc and routes with iproute2, independent of cnilab's snapshot code.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// (protocol name, state info) of the BGP sessions a node's BIRD reports.
fn sessions(lab: &Lab, who: &str, dir: &str) -> Vec<(String, String)> {
    let sock =
        run_dir()
            .join(&lab.name)
            .join(dir)
            .join(who)
            .join(if dir == "nodes" { "agent/bird.ctl" } else { "bird.ctl" });
    let out = lab.exec_ok(who, &["birdc", "-s", sock.to_str().unwrap(), "show", "protocols"]);
    out.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f.last().unwrap().to_string())
        })
        .collect()
}

/// (name, ip, block) of every node, from the lab's plan.
fn blocks(lab: &Lab) -> Vec<(String, String, String)> {
    let st = lab.state();
    st["plan"]["profile"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["ip"].as_str().unwrap().to_string(),
                n["block"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn routes(lab: &Lab, node: &str) -> Vec<Value> {
    lab.exec_json(node, &["ip", "-j", "route", "show"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn full_mesh_gives_three_sessions_each_and_bird_routes() {
    let lab = Lab::up(&topology("calico-bgp.toml"));
    let all = blocks(&lab);
    assert_eq!(all.len(), 4);
    let mut total = 0;
    for (node, _, block) in &all {
        let s = sessions(&lab, node, "nodes");
        assert_eq!(s.len(), 3, "{node}: {s:?}");
        assert!(s.iter().all(|(_, state)| state == "Established"), "{node}: {s:?}");
        total += s.len();
        let r = routes(&lab, node);
        let own = r
            .iter()
            .find(|x| x["dst"] == block.as_str())
            .unwrap_or_else(|| panic!("{node}: {r:?}"));
        assert_eq!(own["type"], "blackhole", "{node}: {own}");
        assert_eq!(own["protocol"], "bird");
        for (other, ip, b) in all.iter().filter(|(o, ..)| o != node) {
            let x = r
                .iter()
                .find(|x| x["dst"] == b.as_str())
                .unwrap_or_else(|| panic!("{node}: no route to {other}'s {b}"));
            assert_eq!(x["gateway"], ip.as_str(), "{node} -> {other}");
            assert_eq!(x["dev"], "eth0");
            assert_eq!(x["protocol"], "bird");
            assert!(x.get("metric").is_none(), "kernel metric 0 as with Calico's BIRD: {x}");
        }
        // Nothing else BIRD put in the kernel: no device routes come back.
        let bird_routes = r.iter().filter(|x| x["protocol"] == "bird").count();
        assert_eq!(bird_routes, 4, "{node}: one blackhole and three peers' blocks: {r:?}");
    }
    assert_eq!(total / 2, 6, "6 sessions in all");
    for (pod, _) in lab.pods() {
        let eth0 = &lab.exec_json(&pod, &["ip", "-j", "-4", "addr", "show", "dev", "eth0"])[0];
        assert_eq!(eth0["mtu"], 1500, "{pod}");
        assert_eq!(eth0["addr_info"][0]["prefixlen"], 32, "{pod}");
        let r = lab.exec_json(&pod, &["ip", "-j", "route", "show"]);
        let default = r.as_array().unwrap().iter().find(|x| x["dst"] == "default").unwrap();
        assert_eq!(default["gateway"], "169.254.1.1", "{pod}");
        assert!(
            r.as_array()
                .unwrap()
                .iter()
                .any(|x| x["dst"] == "169.254.1.1" && x["scope"] == "link")
        );
    }
    pingall(&lab);
}

#[test]
fn host_side_is_wired_as_calico_wires_it() {
    let lab = Lab::up(&topology("calico-bgp.toml"));
    let links = lab.exec_json("worker1", &["ip", "-j", "link", "show", "type", "veth"]);
    let cali: Vec<&Value> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().unwrap().starts_with("cali"))
        .collect();
    assert_eq!(cali.len(), 1, "{links}");
    let name = cali[0]["ifname"].as_str().unwrap();
    assert_eq!(name.len(), 15);
    assert_eq!(cali[0]["address"], "ee:ee:ee:ee:ee:ee");
    let addrs = lab.exec_json("worker1", &["ip", "-j", "-4", "addr", "show", "dev", name]);
    assert!(
        addrs[0]["addr_info"].as_array().is_none_or(|a| a.is_empty()),
        "no address on {name}"
    );
    for (key, want) in [
        (format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"), "1"),
        (format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay"), "0"),
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"), "1"),
    ] {
        assert_eq!(lab.exec_ok("worker1", &["cat", &key]).trim(), want, "{key}");
    }
    let ip = lab.pods().into_iter().find(|(p, _)| p == "worker1/pod-1").unwrap().1;
    let r = routes(&lab, "worker1");
    let to_pod = r.iter().find(|x| x["dst"] == ip.as_str()).unwrap();
    assert_eq!(
        (to_pod["dev"].as_str(), to_pod["scope"].as_str()),
        (Some(name), Some("link"))
    );
}

#[test]
fn route_reflector_needs_five_sessions_not_fifteen() {
    let lab = Lab::up(&topology("calico-rr.toml"));
    let all = blocks(&lab);
    assert_eq!(all.len(), 6);
    let rr = sessions(&lab, "master", "nodes");
    assert_eq!(rr.len(), 5, "{rr:?}");
    assert!(rr.iter().all(|(_, s)| s == "Established"));
    let master_ip = &all[0].1;
    for (node, ..) in all.iter().skip(1) {
        let s = sessions(&lab, node, "nodes");
        assert_eq!(
            s,
            [(
                format!("Node_{}", master_ip.replace('.', "_")),
                "Established".to_string()
            )],
            "{node}"
        );
        let r = routes(&lab, node);
        for (other, ip, b) in all.iter().filter(|(o, ..)| o != node) {
            let x = r
                .iter()
                .find(|x| x["dst"] == b.as_str())
                .unwrap_or_else(|| panic!("{node}: no route to {other}"));
            assert_eq!(x["gateway"], ip.as_str(), "reflected with the original next hop");
        }
    }
    pingall(&lab);
}

#[test]
fn top_of_rack_router_carries_pods_between_racks() {
    let lab = Lab::up(&topology("calico-tor.toml"));
    let spine = sessions(&lab, "spine", "routers");
    assert_eq!(spine.len(), 4, "{spine:?}");
    assert!(spine.iter().all(|(_, s)| s == "Established"));
    for node in ["a1", "a2", "b1", "b2"] {
        let s = sessions(&lab, node, "nodes");
        assert_eq!(s.len(), 1, "{node} peers only with its router: {s:?}");
    }
    // a1 reaches rack 2's blocks through the router on its switch.
    let all = blocks(&lab);
    let r = routes(&lab, "a1");
    for (other, _, b) in all.iter().filter(|(o, ..)| o.starts_with('b')) {
        let x = r
            .iter()
            .find(|x| x["dst"] == b.as_str())
            .unwrap_or_else(|| panic!("a1: no route to {other}"));
        assert_eq!(x["gateway"], "172.20.1.1", "a1 -> {other} via the router: {x}");
    }
    let pods = lab.pods();
    let (_, b1) = pods.iter().find(|(p, _)| p == "b1/pod-1").unwrap();
    let trace = lab.exec_ok("a1/pod-1", &["ping", "-c1", "-W2", "-t", "64", b1]);
    assert!(trace.contains("ttl=61"), "three routed hops (a1, spine, b1): {trace}");
    pingall(&lab);
}

#[test]
fn vxlan_mode_has_1450_pods_and_no_bird() {
    let lab = Lab::up(&topology("calico-vxlan.toml"));
    assert!(
        processes_mentioning(&format!("{}/", lab.name))
            .iter()
            .all(|p| !p.contains("bird"))
    );
    let all = blocks(&lab);
    for (node, _, block) in &all {
        let link = &lab.exec_json(node, &["ip", "-j", "-d", "link", "show", "vxlan.calico"])[0];
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["linkinfo"]["info_data"]["id"], 4096);
        assert_eq!(link["linkinfo"]["info_data"]["port"], 4789);
        let r = routes(&lab, node);
        assert!(
            r.iter().all(|x| x["protocol"] != "bird"),
            "{node}: no BIRD routes: {r:?}"
        );
        let own = r.iter().find(|x| x["dst"] == block.as_str()).unwrap();
        assert_eq!(own["type"], "blackhole");
        for (other, _, b) in all.iter().filter(|(o, ..)| o != node) {
            let x = r
                .iter()
                .find(|x| x["dst"] == b.as_str())
                .unwrap_or_else(|| panic!("{node}: no route to {other}"));
            assert_eq!(x["dev"], "vxlan.calico");
            assert_eq!(
                x["gateway"],
                b.split('/').next().unwrap(),
                "via {other}'s tunnel address"
            );
        }
    }
    for (pod, _) in lab.pods() {
        let eth0 = &lab.exec_json(&pod, &["ip", "-j", "link", "show", "eth0"])[0];
        assert_eq!(eth0["mtu"], 1450, "{pod}");
    }
    pingall(&lab);
}

/// With graceful restart, a node whose BIRD dies keeps its routes at its
/// peers for the restart time (shortened here through the topology), then
/// they are withdrawn; BIRD started again by hand brings them back.
#[test]
fn stopping_bird_withdraws_the_node_blocks_and_starting_it_restores_them() {
    let text = std::fs::read_to_string(topology("calico-bgp.toml"))
        .unwrap()
        .replace("mesh = \"full\"", "mesh = \"full\"\nrestart_time = 3\nhold_time = 9");
    let topo = TempFile::toml(&text);
    let lab = Lab::up(&topo.path);
    let st = lab.state();
    let pid = st["agents"]["worker3"].as_u64().unwrap() as i32;
    let block = blocks(&lab).into_iter().find(|(n, ..)| n == "worker3").unwrap().2;
    let has_route = |node: &str| {
        routes(&lab, node)
            .iter()
            .any(|x| x["dst"] == block.as_str() && x["protocol"] == "bird" && x.get("gateway").is_some())
    };
    assert!(has_route("master"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    for peer in ["master", "worker1", "worker2"] {
        retry(
            &format!("{peer} withdraws worker3's block"),
            Duration::from_secs(20),
            || {
                if has_route(peer) {
                    Err("route still there".into())
                } else {
                    Ok(())
                }
            },
        );
    }
    // worker3 keeps its own blackhole: BIRD's kernel protocol has `persist`.
    assert!(
        routes(&lab, "worker3")
            .iter()
            .any(|x| x["dst"] == block.as_str() && x["type"] == "blackhole")
    );

    let dir = run_dir().join(&lab.name).join("nodes/worker3/agent");
    lab.exec_ok(
        "worker3",
        &[
            "bird",
            "-c",
            dir.join("bird.conf").to_str().unwrap(),
            "-s",
            dir.join("bird.ctl").to_str().unwrap(),
        ],
    );
    for peer in ["master", "worker1", "worker2"] {
        retry(
            &format!("{peer} learns worker3's block again"),
            Duration::from_secs(20),
            || {
                if has_route(peer) {
                    Ok(())
                } else {
                    Err("no route yet".into())
                }
            },
        );
    }
    pingall(&lab);
    let name = lab.name.clone();
    drop(lab);
    assert_gone(&name);
}

#[test]
fn ipip_mode_exits_3_naming_what_is_missing() {
    let text = std::fs::read_to_string(topology("calico-bgp.toml"))
        .unwrap()
        .replace("mode = \"bgp\"", "mode = \"ipip\"");
    let topo = TempFile::toml(&text);
    let lab = Lab::reserve();
    let out = lab.up_output(&topo.path);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(show(&out).contains("ipip"), "{}", show(&out));
    assert_gone(&lab.name);
}

/// (node, blocks) from the lab's plan: the first block and those claimed after.
fn node_blocks(lab: &Lab) -> Vec<(String, Vec<String>)> {
    let st = lab.state();
    st["plan"]["profile"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let mut b = vec![n["block"].as_str().unwrap().to_string()];
            b.extend(
                n["more_blocks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x.as_str().unwrap().to_string()),
            );
            (n["node"].as_str().unwrap().to_string(), b)
        })
        .collect()
}

/// Every node routes every other node's blocks via that node, and
/// blackholes its own.
fn assert_block_routes(lab: &Lab, mode_gateway: impl Fn(&str) -> String) {
    let all = node_blocks(lab);
    for (node, _) in &all {
        let r = routes(lab, node);
        for (other, blocks) in &all {
            for b in blocks {
                let x = r
                    .iter()
                    .find(|x| x["dst"] == b.as_str())
                    .unwrap_or_else(|| panic!("{node}: no route to {other}'s block {b}: {r:?}"));
                if other == node {
                    assert_eq!(x["type"], "blackhole", "{node}: {x}");
                } else {
                    assert_eq!(
                        x["gateway"],
                        mode_gateway(other).as_str(),
                        "{node} -> {other}'s {b}: {x}"
                    );
                }
            }
        }
    }
}

const BLOCKS: &str = r#"name = "blocks"
[network]
cni = "calico"
pod_cidr = "10.244.0.0/22"
[network.calico]
mode = "MODE"
block_size = 28
[[node]]
name = "big"
pods = 20
[[node]]
name = "small{i}"
count = 2
pods = 2
"#;

fn node_ip(lab: &Lab, node: &str) -> String {
    blocks(lab).into_iter().find(|(n, ..)| n == node).unwrap().1
}

#[test]
fn a_node_with_more_pods_than_a_block_holds_takes_another_block() {
    let topo = TempFile::toml(&BLOCKS.replace("MODE", "bgp"));
    let lab = Lab::up(&topo.path);
    let all = node_blocks(&lab);
    let big = &all.iter().find(|(n, _)| n == "big").unwrap().1;
    assert_eq!(big.len(), 2, "20 pods need two /28 blocks of 14 addresses: {all:?}");
    assert!(
        all.iter().filter(|(n, _)| n != "big").all(|(_, b)| b.len() == 1),
        "{all:?}"
    );
    let pods: Vec<(String, String)> = lab.pods().into_iter().filter(|(p, _)| p.starts_with("big/")).collect();
    assert_eq!(pods.len(), 20);
    let nets: Vec<ipnet::Ipv4Net> = big.iter().map(|b| b.parse().unwrap()).collect();
    for (pod, ip) in &pods {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(nets.iter().any(|n| n.contains(&ip)), "{pod} {ip} outside {big:?}");
    }
    let in_second = pods
        .iter()
        .filter(|(_, ip)| nets[1].contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()))
        .count();
    assert_eq!(in_second, 6, "14 in the first block, 6 in the second");
    // Both blocks are exported: every other node routes them via big.
    assert_block_routes(&lab, |n| node_ip(&lab, n));
    let status = show(&lab.run(&["status"]));
    assert!(status.contains(&format!("{}, {}", big[0], big[1])), "{status}");
    pingall(&lab);
}

#[test]
fn pod_add_past_the_planned_blocks_claims_one_that_peers_learn() {
    for mode in ["bgp", "vxlan"] {
        let topo = TempFile::toml(&BLOCKS.replace("MODE", mode));
        let lab = Lab::up(&topo.path);
        // small1 holds 2 pods in a block of 14: the 15th needs a new block.
        for i in 3..=15 {
            let out = lab.run(&["pod", "add", &format!("small1/p{i}")]);
            assert!(out.status.success(), "{mode}: pod add small1/p{i}:\n{}", show(&out));
        }
        let all = node_blocks(&lab);
        let small1 = &all.iter().find(|(n, _)| n == "small1").unwrap().1;
        assert_eq!(small1.len(), 2, "{mode}: {all:?}");
        let (_, ip) = lab.pods().into_iter().find(|(p, _)| p == "small1/p15").unwrap();
        let second: ipnet::Ipv4Net = small1[1].parse().unwrap();
        assert!(
            second.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{mode}: {ip} not in {second}"
        );
        let tunnel = |n: &str| -> String {
            let st = lab.state();
            let node = st["plan"]["profile"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["node"] == n)
                .cloned()
                .unwrap();
            node["vxlan"]["address"].as_str().unwrap().to_string()
        };
        if mode == "bgp" {
            assert_block_routes(&lab, |n| node_ip(&lab, n));
        } else {
            assert_block_routes(&lab, tunnel);
        }
        retry(
            &format!("{mode}: big/pod-1 -> small1/p15"),
            Duration::from_secs(10),
            || {
                let out = lab.exec("big/pod-1", &["ping", "-c1", "-W1", &ip]);
                if out.status.success() { Ok(()) } else { Err(show(&out)) }
            },
        );
    }
}

#[test]
fn max_pods_still_bounds_a_node_with_room_for_more_blocks() {
    // max_pods limits the node's range (a cloud's pod limit): no further
    // block is claimed past it, and host-local says the node is full.
    let text = BLOCKS
        .replace("MODE", "bgp")
        .replace("pods = 20\n", "pods = 3\nmax_pods = 3\n");
    let topo = TempFile::toml(&text);
    let lab = Lab::up(&topo.path);
    let out = lab.run(&["pod", "add", "big/extra"]);
    assert!(!out.status.success(), "a pod past max_pods was added:\n{}", show(&out));
    assert!(show(&out).contains("no IP addresses available"), "{}", show(&out));
    let all = node_blocks(&lab);
    assert_eq!(all.iter().find(|(n, _)| n == "big").unwrap().1.len(), 1, "{all:?}");
}

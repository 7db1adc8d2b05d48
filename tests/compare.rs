//! Seed 003's comparison, read from live labs: the same three nodes with
//! two pods each (topologies/compare/) under flannel, Calico, Canal and
//! Weave. For each, the pods' MTU and addresses, what a pod's packet to
//! another node looks like on the wire, node1's route to node2's pods and
//! whether a default-deny NetworkPolicy is enforced. The table in the
//! README (between the `compare` markers) must be exactly what this test
//! measures; `CNILAB_UPDATE_README=1` writes it there.

#[path = "common/mod.rs"]
mod common;

use std::net::Ipv4Addr;

use common::*;
use ipnet::Ipv4Net;
use serde_json::Value;

const BEGIN: &str = "<!-- compare:begin (written by tests/compare.rs) -->";
const END: &str = "<!-- compare:end -->";

/// One row of the table, every cell read from the running lab.
struct Row {
    cni: &'static str,
    mtu: String,
    address: String,
    wire: String,
    route: String,
    policy: String,
}

/// The pod's eth0 address with its prefix length.
fn pod_address(lab: &Lab, pod: &str) -> String {
    let v = lab.exec_json(pod, &["ip", "-j", "-4", "addr", "show", "dev", "eth0"]);
    let a = &v[0]["addr_info"][0];
    format!("{}/{}", a["local"].as_str().expect("address"), a["prefixlen"])
}

/// The MAC of the node's eth0.
fn node_mac(lab: &Lab, node: &str) -> String {
    let v = lab.exec_json(node, &["ip", "-j", "link", "show", "dev", "eth0"]);
    v[0]["address"].as_str().expect("MAC").to_string()
}

/// The route of node1's main table that carries traffic to `ip`, longest
/// prefix first, as `ip route` prints it.
fn route_to(lab: &Lab, node: &str, ip: Ipv4Addr) -> String {
    let routes = lab.exec_json(node, &["ip", "-j", "-4", "route", "show", "table", "main"]);
    let best = routes
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let net: Ipv4Net = if dst == "default" {
                "0.0.0.0/0".parse().unwrap()
            } else if dst.contains('/') {
                dst.parse().ok()?
            } else {
                format!("{dst}/32").parse().ok()?
            };
            net.contains(&ip).then_some((net, dst.to_string()))
        })
        .max_by_key(|(net, _)| net.prefix_len())
        .expect("a route to the pod");
    let text = lab.exec_ok(
        node,
        &[
            "ip",
            "-4",
            "route",
            "show",
            "table",
            "main",
            "exact",
            &best.0.to_string(),
        ],
    );
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// What a ping from node1/pod-1 to node2/pod-1 looks like on node1's eth0.
/// (Frames to node2's MAC, whatever their addresses: routed packets keep
/// the pods' own; no ARP and no TCP, so no BGP or mesh control traffic.)
fn on_the_wire(lab: &Lab, from: &str, to_ip: &str, node2_mac: &str) -> String {
    let filter = format!("ether dst {node2_mac} and not arp and not tcp");
    let mut args = vec!["node1", "-c", "1", "--"];
    args.extend(filter.split(' '));
    let out = capture(lab, &args, || {
        let _ = lab.exec(from, &["ping", "-c1", "-W1", to_ip]);
    });
    let line = out
        .lines()
        .find(|l| !l.trim().is_empty())
        .expect("a captured packet")
        .to_string();
    // `IP 172.20.0.11.43122 > 172.20.0.12.8472: ...` or `IP a > b: ICMP ...`.
    // (Past the MACs, where the capture prints them.)
    let ip = line.find("IP ").map_or(line.as_str(), |i| &line[i..]);
    let after = ip.split(" > ").nth(1).expect("a packet line");
    let dst = after.split(':').next().unwrap_or_default();
    let parts: Vec<&str> = dst.split('.').collect();
    if parts.len() != 5 {
        return if line.contains("ICMP echo request") {
            "none: the pod's packet as it is (ICMP between pod addresses)".to_string()
        } else {
            format!("unrecognised: `{line}`")
        };
    }
    let port: u16 = parts[4].parse().expect("a port");
    // A VXLAN device on that port, or the process that owns the socket.
    let links = lab.exec_json("node1", &["ip", "-d", "-j", "link", "show", "type", "vxlan"]);
    if let Some(l) = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["linkinfo"]["info_data"]["port"].as_u64() == Some(u64::from(port)))
    {
        return format!(
            "VXLAN: UDP {port}, VNI {}, device `{}` (kernel)",
            l["linkinfo"]["info_data"]["id"],
            l["ifname"].as_str().unwrap_or_default()
        );
    }
    let ss = lab.exec_ok(
        "node1",
        &["ss", "-H", "-u", "-a", "-n", "-p", &format!("sport = :{port}")],
    );
    let owner = ss
        .split("((\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("an unknown process");
    format!("UDP {port} between the nodes, from `{owner}` (userspace)")
}

/// Applies the default-deny and probes every pod pair on TCP 80.
fn policy(lab: &Lab) -> String {
    let yaml = repo().join("topologies/compare/deny-ingress.yaml");
    let out = lab.run(&["policy", "apply", yaml.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let out = lab.run(&["probe", "policy", "--port", "80", "--proto", "tcp", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let blocked = v["blocked"].as_u64().expect("blocked");
    let cells = v["cells"].as_array().map(|c| c.len()).unwrap_or_default() as u64;
    let denied = v["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["expected"] == false)
        .count() as u64;
    assert_eq!(denied, cells, "the default-deny denies every pair: {v}");
    if blocked == cells {
        format!("enforced: {blocked} of {cells} pod pairs blocked")
    } else {
        format!("ignored: {blocked} of {cells} pod pairs blocked")
    }
}

fn measure(cni: &'static str) -> Row {
    let lab = Lab::up(&repo().join(format!("topologies/compare/{cni}.toml")));
    pingall(&lab);
    let mtu = lab.mtu("node1/pod-1", "eth0");
    let link = lab.mtu("node1", "eth0");
    let address = pod_address(&lab, "node2/pod-1");
    let ip: Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
    let wire = on_the_wire(&lab, "node1/pod-1", &ip.to_string(), &node_mac(&lab, "node2"));
    let route = route_to(&lab, "node1", ip);
    let policy = policy(&lab);
    Row {
        cni,
        mtu: format!("{mtu} (eth0 {link})"),
        address,
        wire,
        route: format!("`{route}`"),
        policy,
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| CNI | pod MTU (node's eth0) | node2/pod-1's address | a pod's packet to another node, on node1's eth0 | node1's route to it | default-deny NetworkPolicy |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.cni, r.mtu, r.address, r.wire, r.route, r.policy
        ));
    }
    s
}

#[test]
fn the_readme_comparison_table_is_what_the_four_labs_show() {
    let rows: Vec<Row> = ["flannel", "calico", "canal", "weave"].into_iter().map(measure).collect();
    assert!(rows.len() == 4, "every one of the four compare labs is measured");
    let table = table(&rows);
    let readme_path = repo().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no {BEGIN} ... {END} section");
    };
    let current = &readme[b + BEGIN.len()..e];
    let wanted = format!("\n{table}");
    if std::env::var_os("CNILAB_UPDATE_README").is_some() {
        let new = format!("{}{BEGIN}{wanted}{}", &readme[..b], &readme[e..]);
        std::fs::write(&readme_path, new).expect("write README.md");
        return;
    }
    assert_eq!(
        current, wanted,
        "the README's table differs from the live labs (CNILAB_UPDATE_README=1 cargo test -p cnilab --test compare rewrites it)"
    );
}

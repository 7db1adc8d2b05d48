//! The flannel VXLAN lab end to end, on the real kernel with the real CNI
//! plugins: reachability, MTUs, and each node's tables against what flannel
//! programs (shared/design/faithfulness.md).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every pod pings every other pod, on the same node and across nodes.
#[test]
fn every_pod_pings_every_other_pod() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    assert_eq!(lab.pods().len(), 6);
    pingall(&lab);
}

/// Pods and flannel.1 get 1450; a 1422-byte DF ping (1450 on the wire) crosses
/// nodes and a 1423-byte one is refused by the pod itself.
#[test]
fn mtu_is_1450_and_df_pings_fit_exactly() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    for node in ["master", "worker1", "worker2"] {
        assert_eq!(lab.mtu(node, "flannel.1"), 1450, "{node} flannel.1");
        assert_eq!(lab.mtu(node, "eth0"), 1500, "{node} eth0");
    }
    for (pod, _) in lab.pods() {
        assert_eq!(lab.mtu(&pod, "eth0"), 1450, "{pod} eth0");
    }
    let pods = lab.pods();
    let (src, _) = pods.iter().find(|(p, _)| p.starts_with("master/")).unwrap();
    let (_, dst_ip) = pods.iter().find(|(p, _)| p.starts_with("worker2/")).unwrap();
    retry("1422-byte DF ping across nodes", Duration::from_secs(10), || {
        let out = lab.exec(src, &["ping", "-c1", "-W1", "-M", "do", "-s", "1422", dst_ip]);
        if out.status.success() { Ok(()) } else { Err(show(&out)) }
    });
    let out = lab.exec(src, &["ping", "-c1", "-W1", "-M", "do", "-s", "1423", dst_ip]);
    assert!(
        !out.status.success(),
        "a 1423-byte DF ping must not pass:\n{}",
        show(&out)
    );
    let text = show(&out);
    assert!(
        text.contains("message too long, mtu=1450"),
        "the pod itself refuses it:\n{text}"
    );
}

/// What the plan says each node leases, with its VTEP MAC and address.
struct Lease {
    node: String,
    subnet: String,
    network_ip: String,
    mac: String,
    node_ip: String,
}

fn leases(lab: &Lab) -> Vec<Lease> {
    let st = lab.state();
    let plan = &st["plan"];
    let nodes = plan["nodes"].as_array().unwrap();
    plan["profile"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(nodes)
        .map(|(f, n)| {
            let subnet = f["subnet"].as_str().unwrap().to_string();
            Lease {
                node: n["name"].as_str().unwrap().to_string(),
                network_ip: subnet.split('/').next().unwrap().to_string(),
                subnet,
                mac: f["vtep_mac"].as_str().unwrap().to_string(),
                node_ip: n["ip"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// Each node holds exactly flannel's objects: flannel.1 as flannel makes it,
/// its <subnet>.0/32, and per remote lease the PERMANENT neighbour, the
/// `self permanent` FDB entry to the peer's node IP and the onlink route;
/// no route for the whole pod CIDR points at flannel.1. Read with iproute2,
/// independent of cnilab's snapshot code.
#[test]
fn node_tables_match_flannel_for_every_remote_lease() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let all = leases(&lab);
    assert_eq!(all.len(), 3);
    for me in &all {
        let n = me.node.as_str();
        let link = &lab.exec_json(n, &["ip", "-j", "-d", "link", "show", "flannel.1"])[0];
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{n}");
        assert_eq!(data["id"], 1, "{n} VNI");
        assert_eq!(data["port"], 8472, "{n} port");
        assert_eq!(data["learning"], false, "{n} nolearning");
        assert_eq!(data["local"], me.node_ip.as_str(), "{n} local");
        assert_eq!(data["link"], "eth0", "{n} dev");
        assert!(
            data.get("group").is_none() && data.get("remote").is_none(),
            "{n}: no group: {data}"
        );
        assert!(data.get("l2miss").is_none_or(|v| v == false), "{n}: no l2miss: {data}");
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["address"], me.mac.as_str(), "{n} VTEP MAC");

        let addrs = &lab.exec_json(n, &["ip", "-j", "-4", "addr", "show", "dev", "flannel.1"])[0]["addr_info"];
        let addrs: Vec<String> = addrs
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(addrs, [format!("{}/32", me.network_ip)], "{n} flannel.1 address");

        let routes = lab.exec_json(n, &["ip", "-j", "route", "show", "dev", "flannel.1"]);
        let neigh = lab.exec_json(n, &["ip", "-j", "neigh", "show", "dev", "flannel.1"]);
        let fdb = lab.exec_json(n, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
        let others: Vec<&Lease> = all.iter().filter(|l| l.node != me.node).collect();
        assert_eq!(routes.as_array().unwrap().len(), others.len(), "{n} routes: {routes}");
        assert_eq!(neigh.as_array().unwrap().len(), others.len(), "{n} neighbours: {neigh}");
        assert_eq!(fdb.as_array().unwrap().len(), others.len(), "{n} fdb: {fdb}");
        for o in others {
            let r = routes
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["dst"] == o.subnet.as_str());
            let r = r.unwrap_or_else(|| panic!("{n}: no route to {}: {routes}", o.subnet));
            assert_eq!(r["gateway"], o.network_ip.as_str(), "{n} -> {}", o.node);
            assert!(r["flags"].as_array().unwrap().iter().any(|f| f == "onlink"), "{n}: {r}");
            assert!(r.get("protocol").is_none(), "{n}: flannel's routes are proto boot: {r}");
            let e = neigh
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["dst"] == o.network_ip.as_str());
            let e = e.unwrap_or_else(|| panic!("{n}: no neighbour {}: {neigh}", o.network_ip));
            assert_eq!(e["lladdr"], o.mac.as_str());
            assert_eq!(e["state"], serde_json::json!(["PERMANENT"]));
            let f = fdb.as_array().unwrap().iter().find(|f| f["mac"] == o.mac.as_str());
            let f = f.unwrap_or_else(|| panic!("{n}: no fdb entry for {}: {fdb}", o.mac));
            assert_eq!(f["dst"], o.node_ip.as_str());
            assert_eq!(f["flags"], serde_json::json!(["self"]));
            assert_eq!(f["state"], "permanent");
        }
        let main = lab.exec_json(n, &["ip", "-j", "route", "show"]);
        assert!(
            !main.as_array().unwrap().iter().any(|r| r["dst"] == "10.244.0.0/16"),
            "{n}: no route for the whole pod CIDR: {main}"
        );
        // The subnet file flanneld wrote, as the flannel plugin reads it.
        let env =
            std::fs::read_to_string(run_dir().join(&lab.name).join(format!("nodes/{n}/agent/subnet.env"))).unwrap();
        let gw = me.network_ip.rsplit_once('.').map(|(a, _)| format!("{a}.1")).unwrap();
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        );
    }
    // flannel's SubnetMin: the first subnet of the network is never leased.
    assert!(all.iter().all(|l| l.subnet != "10.244.0.0/24"));
}

/// A lease appearing in etcd makes the agent program the neighbour, the FDB
/// entry and the route, in that order; the lease going away removes all three.
#[test]
fn a_new_lease_programs_neighbour_fdb_then_route_and_removal_undoes_them() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    // stdbuf: ip monitor's output is block-buffered on a pipe.
    let mut mon = Command::new(bin())
        .args([
            "--lab", &lab.name, "exec", "master", "--", "stdbuf", "-oL", "ip", "monitor", "neigh", "route",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = monitor_lines(mon.stdout.take().unwrap());
    let next = || -> String {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(e) => panic!("ip monitor said nothing more within 20 s ({e})"),
        }
    };
    // The monitor is listening once it reports a route we toggle for the purpose.
    retry("ip monitor starts listening", Duration::from_secs(20), || {
        lab.exec_ok("master", &["ip", "route", "replace", "192.0.2.0/24", "dev", "eth0"]);
        let heard = lines
            .recv_timeout(Duration::from_millis(200))
            .is_ok_and(|l| l.contains("192.0.2.0/24"));
        lab.exec_ok("master", &["ip", "route", "del", "192.0.2.0/24", "dev", "eth0"]);
        if heard { Ok(()) } else { Err("not yet".to_string()) }
    });

    let subnets = run_dir().join(&lab.name).join("etcd/coreos.com/network/subnets");
    let tmp = subnets.join(".new");
    std::fs::write(
        &tmp,
        r#"{"PublicIP":"172.20.0.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#,
    )
    .unwrap();
    let key = subnets.join("10.244.250.0-24");
    std::fs::rename(&tmp, &key).unwrap();
    let mut seen: Vec<String> = Vec::new();
    while !seen.last().is_some_and(|l| l.contains("10.244.250.0/24")) {
        let l = next();
        if !l.contains("192.0.2.0") {
            seen.push(l.trim().to_string());
        }
    }
    assert_eq!(
        seen,
        [
            "10.244.250.0 dev flannel.1 lladdr 02:00:00:00:00:99 PERMANENT",
            "172.20.0.99 dev flannel.1 lladdr 02:00:00:00:00:99 PERMANENT",
            "10.244.250.0/24 via 10.244.250.0 dev flannel.1 onlink",
        ],
        "neighbour, FDB entry (shown by ip monitor as a bridge neighbour), then route"
    );

    std::fs::remove_file(&key).unwrap();
    let mut deleted = Vec::new();
    while deleted.len() < 3 {
        let l = next();
        if let Some(d) = l.trim().strip_prefix("Deleted ").filter(|d| !d.contains("192.0.2.0")) {
            deleted.push(d.to_string());
        }
    }
    let _ = mon.kill();
    let _ = mon.wait();
    assert!(deleted[0].starts_with("10.244.250.0 dev flannel.1"), "{deleted:?}");
    assert_eq!(
        deleted[1], "172.20.0.99 dev flannel.1 lladdr 02:00:00:00:00:99 PERMANENT",
        "{deleted:?}"
    );
    assert_eq!(
        deleted[2], "10.244.250.0/24 via 10.244.250.0 dev flannel.1 onlink",
        "{deleted:?}"
    );
    let routes = lab.exec_json("master", &["ip", "-j", "route", "show", "dev", "flannel.1"]);
    assert_eq!(routes.as_array().unwrap().len(), 2, "{routes}");
}

/// The lines a process prints, read on a thread so a test can wait with a deadline.
fn monitor_lines(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// On a 9000-byte switch, flannel.1 and the pods get 8950, and an 8922-byte
/// DF ping crosses nodes.
#[test]
fn jumbo_switch_gives_8950() {
    let topo = TempFile::toml(
        r#"name = "jumbo"
[[switch]]
name = "tor1"
subnet = "172.20.0.0/24"
mtu = 9000
[[node]]
name = "n{i}"
count = 2
pods = 1
"#,
    );
    let lab = Lab::up(&topo.path);
    for node in ["n1", "n2"] {
        assert_eq!(lab.mtu(node, "eth0"), 9000);
        assert_eq!(lab.mtu(node, "flannel.1"), 8950);
    }
    let pods: BTreeMap<String, String> = lab.pods().into_iter().collect();
    assert_eq!(lab.mtu("n1/pod-1", "eth0"), 8950);
    assert_eq!(lab.mtu("n2/pod-1", "eth0"), 8950);
    retry("8922-byte DF ping", Duration::from_secs(10), || {
        let out = lab.exec(
            "n1/pod-1",
            &["ping", "-c1", "-W1", "-M", "do", "-s", "8922", &pods["n2/pod-1"]],
        );
        if out.status.success() { Ok(()) } else { Err(show(&out)) }
    });
}

/// `exec` runs in the target's namespace and exits with the command's status;
/// /sys shows that namespace's devices.
#[test]
fn exec_targets_nodes_pods_and_switches() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let out = lab.exec("worker1", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let devs = lab.exec_ok("worker1/pod-2", &["ls", "/sys/class/net"]);
    assert_eq!(devs.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);
    let br = lab.exec_json("tor1", &["ip", "-j", "link", "show", "type", "bridge"]);
    assert_eq!(br[0]["ifname"], "tor1");
    let out = lab.exec("nowhere", &["true"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("no target \"nowhere\""));
}

/// `status --json` names every default and every pod with its address.
#[test]
fn status_shows_defaults_nodes_and_pods() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let out = lab.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["phase"], "up");
    assert_eq!(s["settings"]["network.flannel.vni"], "1");
    assert_eq!(s["settings"]["network.flannel.port"], "8472");
    assert_eq!(s["settings"]["seed"], "0");
    assert_eq!(s["nodes"].as_array().unwrap().len(), 3);
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["agent"]["running"], true, "{n}");
        assert_eq!(n["overlay"], serde_json::json!({"device": "flannel.1", "mtu": 1450}));
    }
    for p in s["pods"].as_array().unwrap() {
        assert!(p["ip"].as_str().unwrap().starts_with("10.244."), "{p}");
        assert_eq!(p["mtu"], 1450);
    }
    let text = lab.run(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["network.flannel.subnet_len", "24"])),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["network.datastore", "file"])),
        "{text}"
    );
    assert!(text.contains("flanneld running"), "{text}");
}

/// CNI DEL, run as a runtime runs it, undoes what ADD did: the pod's veth
/// leaves the node's bridge, host-local frees the address, and the cached
/// result and flannel's saved delegate configuration are gone.
#[test]
fn cni_del_releases_the_pod() {
    use cnilab::kernel::cni::Attachment;
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let st = cnilab::ops::state::LabState::load(&lab.name).unwrap().unwrap();
    let node = st.plan.node("worker1").unwrap().clone();
    let pod = node.pods[0].clone();
    assert_eq!(st.plan.profile.name(), "flannel");
    let conflist = st.plan.profile.conflist("worker1").expect("worker1's conflist").clone();
    let ip = lab.pods().into_iter().find(|(p, _)| p == "worker1/pod-1").unwrap().1;
    let state_dir = st.paths().cni_state_dir("worker1");
    let cache = state_dir.join(format!("results/cbr0-{}-eth0", pod.container_id));
    let reservation = state_dir.join("networks/cbr0").join(&ip);
    let scratch = state_dir.join("flannel").join(&pod.container_id);
    for p in [&cache, &reservation, &scratch] {
        assert!(p.exists(), "{} exists after ADD", p.display());
    }
    let cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["result"]["ips"][0]["address"], format!("{ip}/24"));

    let ns = cnilab::kernel::netns::Netns::open(&node.ns).unwrap();
    let runtime = cnilab::ops::build::runtime_for(&st.paths(), "worker1", &ns);
    let att = Attachment::pod(
        &pod.container_id,
        cnilab::kernel::netns::path_of(&pod.ns),
        "eth0",
        "default",
        &pod.name,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(runtime.del(&conflist, &att)).expect("CNI DEL succeeds");
    for p in [&cache, &reservation, &scratch] {
        assert!(!p.exists(), "{} is gone after DEL", p.display());
    }
    let veths = lab.exec_json("worker1", &["ip", "-j", "link", "show", "type", "veth"]);
    let ports: Vec<&str> = veths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["master"].as_str())
        .collect();
    assert_eq!(ports, ["cni0"], "one pod is left on cni0: {veths}");
    let devs = lab.exec_ok("worker1/pod-1", &["ls", "/sys/class/net"]);
    assert_eq!(devs.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    // DEL of what is gone succeeds, as the spec asks.
    rt.block_on(runtime.del(&conflist, &att))
        .expect("a second DEL succeeds");
}

/// flannel's ipip and wireguard backends validate as flannel accepts them,
/// but `up` exits 3 naming the kernel module it lacks (the machines cnilab
/// is tested on have neither), and leaves nothing behind.
#[test]
fn ipip_and_wireguard_backends_exit_3_naming_the_module() {
    for backend in ["ipip", "wireguard"] {
        let file = TempFile::toml(&format!(
            "name = \"x\"\n[network.flannel]\nbackend = \"{backend}\"\n[[node]]\nname = \"n{{i}}\"\ncount = 2\n"
        ));
        let lab = Lab::reserve();
        let out = lab.up_output(&file.path);
        let text = show(&out);
        assert_eq!(out.status.code(), Some(3), "{text}");
        let doctor = cnilab(&["doctor", "--json"]);
        let report: Value = serde_json::from_slice(&doctor.stdout).expect("doctor JSON");
        let present = report["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == backend && k["check"]["state"] == "ok");
        if present {
            assert!(text.contains("not built by cnilab yet"), "{text}");
        } else {
            assert!(text.contains(&format!("modprobe {backend}")), "{text}");
        }
        assert!(namespaces_with(&format!("cnilab.{}.", lab.name)).is_empty());
    }
}

//! The learning tools: doctor, graph, trace, capture and shell.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

/// A folder of links to every program cnilab looks for except `hidden`,
/// for CNILAB_PATH: a machine without that program.
struct PathWithout {
    dir: PathBuf,
}

impl PathWithout {
    fn new(hidden: &[&str]) -> PathWithout {
        let dir = std::env::temp_dir().join(format!("cnilab-path-{}", unique_name()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for tool in [
            "ip", "bridge", "tc", "ping", "bird", "birdc", "iptables", "tcpdump", "dot",
        ] {
            if hidden.contains(&tool) {
                continue;
            }
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(tool))
                .find(|p| p.is_file());
            if let Some(p) = found {
                std::os::unix::fs::symlink(p, dir.join(tool)).expect("symlink");
            }
        }
        PathWithout { dir }
    }

    fn cnilab(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("CNILAB_PATH", &self.dir)
            .output()
            .expect("cnilab runs")
    }
}

impl Drop for PathWithout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn doctor_names_the_missing_bird2_package_and_exits_3_for_a_topology_that_needs_it() {
    let path = PathWithout::new(&["bird", "birdc"]);
    let calico = topology("calico-bgp.toml");
    let out = path.cnilab(&["doctor", calico.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        text.contains("MISSING bird: apt-get install -y bird2"),
        "{}",
        show(&out)
    );
    // The same machine serves flannel, which needs no BIRD.
    let flannel = topology("flannel-vxlan.toml");
    let out = path.cnilab(&["doctor", flannel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all of it is here"),
        "{}",
        show(&out)
    );
}

#[test]
fn up_without_bird2_exits_3_naming_the_package_and_builds_nothing() {
    let path = PathWithout::new(&["bird", "birdc"]);
    let lab = Lab::reserve();
    let calico = topology("calico-bgp.toml");
    let out = path.cnilab(&["up", calico.to_str().unwrap(), "--name", &lab.name]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bird") && err.contains("apt-get install -y bird2"),
        "{}",
        show(&out)
    );
    assert_gone(&lab.name);
}

#[test]
fn doctor_json_reports_the_kernel_features_it_probed_and_the_tool_versions() {
    let out = cnilab(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let kernel = v["kernel"].as_array().expect("kernel list");
    let state = |name: &str| {
        kernel
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["check"]["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{name} not in {kernel:?}"))
    };
    // Every lab builds veths and bridges; the probe must have made them.
    assert_eq!(state("veth"), "ok");
    assert_eq!(state("bridge"), "ok");
    // Each feature is decided one way or the other when root.
    for k in kernel {
        assert_ne!(k["check"]["state"], "unchecked", "{k}");
    }
    let ip = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ip")
        .expect("ip");
    assert!(ip["version"].as_str().is_some_and(|s| !s.is_empty()), "{ip}");
}

#[test]
fn graph_svg_renders_every_shipped_topology_and_names_every_node_and_switch() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("topologies"))
        .expect("topologies/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let f = file.to_str().unwrap();
        let plan = cnilab(&["validate", f, "--json"]);
        assert!(plan.status.success(), "{}", show(&plan));
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan json");
        let out = cnilab(&["graph", f, "--format", "svg"]);
        assert!(out.status.success(), "{f}: {}", show(&out));
        let svg = xml_text(&String::from_utf8_lossy(&out.stdout));
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f}: not an SVG:\n{svg}"
        );
        let names = |key: &str| -> Vec<String> {
            plan[key]
                .as_array()
                .unwrap_or_else(|| panic!("{f}: plan has no {key}"))
                .iter()
                .map(|v| v["name"].as_str().expect("name").to_string())
                .collect()
        };
        for n in names("nodes") {
            assert!(svg.contains(&format!(">node {n}<")), "{f}: node {n} not in the SVG");
        }
        for s in names("switches") {
            assert!(svg.contains(&format!(">switch {s}<")), "{f}: switch {s} not in the SVG");
        }
        for r in names("routers") {
            assert!(svg.contains(&format!(">router {r}<")), "{f}: router {r} not in the SVG");
        }
    }
}

#[test]
fn graph_svg_without_graphviz_exits_3_and_names_the_package() {
    let path = PathWithout::new(&["dot"]);
    let f = topology("flannel-vxlan.toml");
    let out = path.cnilab(&["graph", f.to_str().unwrap(), "--format", "svg"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("apt-get install -y graphviz"),
        "{}",
        show(&out)
    );
    // The text formats need nothing installed.
    let out = path.cnilab(&["graph", f.to_str().unwrap(), "--format", "mermaid"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("flowchart TB"));
}

/// SVG text with numeric character references (Graphviz writes `-` as
/// `&#45;`) and the basic entities decoded.
fn xml_text(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(i) = rest.find("&#") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after
            .find(';')
            .and_then(|j| after[..j].parse::<u32>().ok().map(|c| (j, c)))
        {
            Some((j, code)) => {
                out.push(char::from_u32(code).unwrap_or('?'));
                rest = &after[j + 1..];
            }
            None => {
                out.push_str("&#");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// `cnilab trace ... --json` and its exit code.
fn trace(lab: &Lab, src: &str, dst: &str, size: u32) -> (Option<i32>, serde_json::Value) {
    let out = lab.run(&["trace", src, dst, "--size", &size.to_string(), "--json"]);
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("trace printed no JSON ({e}):\n{}", show(&out)));
    (out.status.code(), v)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn has(list: &[String], needle: &str) -> bool {
    list.iter().any(|s| s.contains(needle))
}

#[test]
fn trace_on_flannel_vxlan_shows_every_hop_its_entries_and_where_big_packets_die() {
    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    let st = lab.state();
    let lease = |node: &str| -> serde_json::Value {
        st["plan"]["profile"]["flannel"]["nodes"]
            .as_array()
            .or_else(|| st["plan"]["profile"]["nodes"].as_array())
            .expect("flannel nodes in the plan")
            .iter()
            .find(|n| n["node"] == node)
            .cloned()
            .expect("lease")
    };
    let w2 = lease("worker2");
    let w1_subnet: ipnet::Ipv4Net = lease("worker1")["subnet"].as_str().unwrap().parse().unwrap();
    let w2_subnet: ipnet::Ipv4Net = w2["subnet"].as_str().unwrap().parse().unwrap();
    let w2_ip = st["plan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "worker2")
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let cni0 = w1_subnet.hosts().next().unwrap();
    // The pod's MTU as the kernel has it.
    let pod_mtu = lab.exec_json("worker1/pod-1", &["ip", "-j", "link", "show", "eth0"])[0]["mtu"]
        .as_u64()
        .unwrap();
    assert_eq!(pod_mtu, 1450);

    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 1400);
    assert_eq!(code, Some(0), "{t:#}");
    assert_eq!(t["delivered"], true);
    let hops = t["hops"].as_array().unwrap();
    let at: Vec<&str> = hops.iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert_eq!(
        at,
        [
            "worker1/pod-1",
            "worker1",
            "worker1",
            "switch tor1",
            "worker2",
            "worker2",
            "worker2/pod-1"
        ],
        "{t:#}"
    );
    // pod eth0 -> veth -> cni0: the pod's route to the gateway on cni0.
    assert_eq!(hops[0]["dev_out"], "eth0");
    assert_eq!(hops[0]["mtu"], pod_mtu);
    assert!(
        has(&strings(&hops[0]["entries"]), &format!("via {cni0} dev eth0")),
        "{:#}",
        hops[0]
    );
    assert!(has(&strings(&hops[1]["notes"]), "port of bridge cni0"), "{:#}", hops[1]);
    // route -> flannel.1 -> neighbour -> FDB, then the outer header.
    let e1 = strings(&hops[1]["entries"]);
    let vtep = w2_subnet.network();
    assert!(
        has(&e1, &format!("route {w2_subnet} via {vtep} dev flannel.1 onlink")),
        "{e1:?}"
    );
    let mac = w2["vtep_mac"].as_str().unwrap();
    assert!(
        has(&e1, &format!("neigh {vtep} dev flannel.1 lladdr {mac} PERMANENT")),
        "{e1:?}"
    );
    assert!(has(&e1, &format!("fdb {mac} dev flannel.1 dst {w2_ip}")), "{e1:?}");
    assert_eq!(hops[1]["mtu"], 1450);
    assert!(has(&strings(&hops[1]["notes"]), "1400 + 50 = 1450"), "{:#}", hops[1]);
    // The underlay: the outer packet, 50 bytes more.
    assert_eq!(hops[2]["size"], 1450);
    assert!(
        hops[2]["packet"]
            .as_str()
            .unwrap()
            .contains(&format!("-> {w2_ip} UDP 8472 VNI 1"))
    );
    assert_eq!(hops[2]["dev_out"], "eth0");
    assert_eq!(hops[3]["dev_out"], "worker2");
    assert!(
        has(&strings(&hops[4]["notes"]), "decapsulated by flannel.1"),
        "{:#}",
        hops[4]
    );
    assert_eq!(hops[5]["dev_in"], "flannel.1");
    assert!(
        hops[5]["dev_out"].as_str().unwrap().starts_with("cni0 port veth"),
        "{:#}",
        hops[5]
    );

    // 1500 bytes: the pod's own eth0 refuses it.
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 1500);
    assert_eq!(code, Some(1), "{t:#}");
    let hops = t["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 1, "{t:#}");
    let why = hops[0]["drop"].as_str().unwrap();
    assert!(why.contains("eth0") && why.contains("1450"), "{why}");

    // UDP 8472 blocked on the receiving node (flannel #423): dies there, on the rule.
    let out = lab.run(&[
        "fault", "add", "block", "--on", "worker2", "--proto", "udp", "--port", "8472",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 84);
    assert_eq!(code, Some(1), "{t:#}");
    let last = t["hops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["at"], "worker2", "{t:#}");
    assert!(
        last["drop"].as_str().unwrap().contains("drops UDP 8472 on arrival"),
        "{last:#}"
    );
    assert!(lab.run(&["fault", "rm", &id]).status.success());
    // ip_forward off on the sending node: its pods are cut off.
    let out = lab.run(&[
        "fault",
        "add",
        "sysctl",
        "--on",
        "worker1",
        "--key",
        "net.ipv4.ip_forward",
        "--value",
        "0",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 84);
    assert_eq!(code, Some(1), "{t:#}");
    let last = t["hops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["at"], "worker1", "{t:#}");
    assert!(
        last["drop"].as_str().unwrap().contains("net.ipv4.ip_forward = 0"),
        "{last:#}"
    );
    assert!(lab.run(&["fault", "rm", &id]).status.success());

    // Behind an upstream VXLAN switch, 1450 fits the pod but not the switch.
    let out = lab.run(&["fault", "add", "upstream-vxlan", "--on", "tor1"]);
    assert!(out.status.success(), "{}", show(&out));
    let upstream = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 1450);
    assert_eq!(code, Some(1), "{t:#}");
    let last = t["hops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["at"], "switch tor1", "{t:#}");
    let why = last["drop"].as_str().unwrap();
    assert!(
        why.contains("1500 + 50 = 1550") && why.contains("at most 1450"),
        "{why}"
    );
    assert!(
        t["verdict"].as_str().unwrap().starts_with("dropped at switch tor1"),
        "{t:#}"
    );
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 1400);
    assert_eq!(code, Some(0), "1400 bytes still cross: {t:#}");
    // The lab's graph marks the fault.
    let out = lab.run(&["graph"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("FAULT {upstream}: upstream-vxlan on tor1")),
        "{}",
        show(&out)
    );
}

#[test]
fn trace_on_calico_bgp_shows_the_gateway_proxy_arp_and_the_bird_route() {
    let lab = Lab::up(&topology("calico-bgp.toml"));
    let st = lab.state();
    let node = |name: &str| {
        st["plan"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap()
    };
    let w2_ip = node("worker2")["ip"].as_str().unwrap().to_string();
    let (code, t) = trace(&lab, "worker1/pod-1", "worker2/pod-1", 1500);
    assert_eq!(code, Some(0), "{t:#}");
    let hops = t["hops"].as_array().unwrap();
    let at: Vec<&str> = hops.iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert_eq!(
        at,
        ["worker1/pod-1", "worker1", "switch tor1", "worker2", "worker2/pod-1"],
        "{t:#}"
    );
    assert!(
        has(&strings(&hops[0]["entries"]), "route default via 169.254.1.1 dev eth0"),
        "{:#}",
        hops[0]
    );
    assert!(has(&strings(&hops[0]["notes"]), "proxy_arp = 1"), "{:#}", hops[0]);
    assert_eq!(hops[0]["mtu"], 1500);
    assert!(hops[1]["dev_in"].as_str().unwrap().starts_with("cali"), "{:#}", hops[1]);
    let e1 = strings(&hops[1]["entries"]);
    assert!(
        e1.iter()
            .any(|e| e.starts_with("route ") && e.contains(&format!("via {w2_ip} dev eth0 proto bird"))),
        "{e1:?}"
    );
    assert!(
        e1.iter()
            .any(|e| e.starts_with("bird ") && e.contains(&format!("via {w2_ip}"))),
        "{e1:?}"
    );
    assert!(
        hops[3]["dev_out"].as_str().unwrap().starts_with("cali"),
        "{:#}",
        hops[3]
    );
    // An address in worker2's block that no pod has dies on its blackhole.
    let block = st["plan"]["profile"]["calico"]["nodes"]
        .as_array()
        .or_else(|| st["plan"]["profile"]["nodes"].as_array())
        .unwrap()
        .iter()
        .find(|n| n["node"] == "worker2")
        .unwrap()["block"]
        .as_str()
        .unwrap()
        .parse::<ipnet::Ipv4Net>()
        .unwrap();
    let unused = block.hosts().last().unwrap().to_string();
    let (code, t) = trace(&lab, "worker1/pod-1", &unused, 84);
    assert_eq!(code, Some(1), "{t:#}");
    let last = t["hops"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["at"], "worker2");
    assert!(
        last["drop"]
            .as_str()
            .unwrap()
            .contains(&format!("blackhole route for {block}")),
        "{last:#}"
    );
}

#[test]
fn shell_prompt_names_the_lab_and_target_and_capture_decodes_flannel_vxlan() {
    use std::io::Write;
    use std::process::Stdio;

    let lab = Lab::up(&topology("flannel-vxlan.toml"));
    // shell: commands on stdin run inside the node; the prompt says where.
    let mut child = Command::new(bin())
        .args(["--lab", &lab.name, "shell", "worker1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shell starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ip -br addr show eth0\necho target=$CNILAB_TARGET\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let node_ip = lab.state()["plan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "worker1")
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stdout.contains(&format!("{node_ip}/")), "{}", show(&out));
    assert!(stdout.contains("target=worker1"), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("[cnilab {} worker1]", lab.name)),
        "{}",
        show(&out)
    );

    // capture: VXLAN on flannel's port 8472 is decoded down to the pods' ICMP.
    let pods = lab.pods();
    let (_, dst_ip) = pods.iter().find(|(k, _)| k == "worker2/pod-1").unwrap().clone();
    let text = capture(&lab, &["worker2", "--count", "2", "--", "udp", "port", "8472"], || {
        lab.exec("worker1/pod-1", &["ping", "-c1", "-W1", &dst_ip]);
    });
    assert!(text.contains("> ") && text.contains(".8472: VXLAN"), "{text}");
    assert!(text.contains("vni 1"), "{text}");
    assert!(text.contains(&format!("> {dst_ip}: ICMP echo request")), "{text}");
}

/// The README's tutorial: every line of its ```sh tutorial blocks, in
/// order, after what the README's first command does. Lines starting with
/// `! ` must fail. The labs get unique names; `--lab` and `down` follow.
#[test]
fn readme_tutorial_commands_run_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut lines = Vec::new();
    let mut inside = false;
    for l in readme.lines() {
        if l.trim() == "```sh tutorial" {
            inside = true;
        } else if inside && l.trim() == "```" {
            inside = false;
        } else if inside {
            let cmd = l.split(" #").next().unwrap_or("").trim();
            if !cmd.is_empty() && !cmd.starts_with('#') {
                lines.push(cmd.to_string());
            }
        }
    }
    assert!(lines.len() >= 20, "the tutorial has only {} commands", lines.len());
    // Unique names for the labs the tutorial makes, by their topology names.
    let lab_of = |file: &str| -> String {
        let out = cnilab(&["validate", repo().join(file).to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["lab"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut names: Vec<(String, Lab)> = vec![(lab_of("topologies/flannel-vxlan.toml"), Lab::reserve())];
    for l in &lines {
        let words: Vec<&str> = l.trim_start_matches("! ").split_whitespace().collect();
        if words.get(1) == Some(&"up") {
            names.push((lab_of(words[2]), Lab::reserve()));
        }
    }
    let map = |name: &str| -> String {
        names
            .iter()
            .find(|(n, _)| n == name)
            .map_or(name.to_string(), |(_, lab)| lab.name.clone())
    };
    let quickstart = names[0].1.name.clone();
    // What the README's first command does: up, and the status shown.
    let out = cnilab(&[
        "up",
        repo().join("topologies/flannel-vxlan.toml").to_str().unwrap(),
        "--name",
        &quickstart,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    for l in &lines {
        let fails = l.starts_with("! ");
        let words: Vec<String> = l
            .trim_start_matches("! ")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(words[0], "cnilab", "tutorial lines are cnilab commands: {l}");
        let mut args: Vec<String> = Vec::new();
        let mut i = 1;
        while i < words.len() {
            args.push(words[i].clone());
            if words[i] == "--lab" && i + 1 < words.len() {
                args.push(map(&words[i + 1]));
                i += 1;
            }
            i += 1;
        }
        let cmd = args
            .iter()
            .find(|a| !a.starts_with('-') && !names.iter().any(|(_, lab)| &lab.name == *a));
        match cmd.map(String::as_str) {
            Some("up") => {
                let file = args.iter().skip_while(|a| *a != "up").nth(1).unwrap().clone();
                args.extend(["--name".to_string(), map(&lab_of(&file))]);
            }
            Some("down") => {
                if let Some(last) = args.last_mut() {
                    *last = map(last);
                }
            }
            _ => {}
        }
        let out = Command::new(bin())
            .args(&args)
            .env("CNILAB_LAB", &quickstart)
            .current_dir(repo())
            .output()
            .expect("cnilab runs");
        if fails {
            assert!(
                !out.status.success(),
                "tutorial line `{l}` should fail:\n{}",
                show(&out)
            );
        } else {
            assert!(out.status.success(), "tutorial line `{l}` failed:\n{}", show(&out));
        }
    }
    for (_, lab) in &names {
        assert!(
            namespaces_with(&format!("cnilab.{}.", lab.name)).is_empty(),
            "the tutorial's last lines remove its labs"
        );
    }
}

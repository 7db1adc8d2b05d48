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

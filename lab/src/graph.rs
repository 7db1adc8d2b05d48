//! `cnilab graph`: a picture of a topology or a running lab. The physical
//! layer (switches, routers, nodes, pods, with addresses and MTUs) and the
//! control plane as a second layer (VXLAN tunnels or BGP sessions), with
//! active faults marked. Rendered as Graphviz DOT, Mermaid, or SVG by `dot`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::error::Error;
use crate::plan::Plan;
use crate::profile::ProfilePlan;
use crate::state::LabState;
use crate::topology::{CalicoMode, FlannelBackend};

/// Above this many nodes, a full mesh of tunnels is drawn as one hub.
const MESH_EDGES_UP_TO: usize = 12;

/// An element of the picture.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    lines: Vec<String>,
    faults: Vec<String>,
}

/// A link between two elements.
#[derive(Debug, Clone)]
struct Link {
    a: String,
    b: String,
    label: String,
    layer: Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// Cables: veths between namespaces.
    Wire,
    /// VXLAN tunnels.
    Tunnel,
    /// BGP sessions.
    Bgp,
}

/// A node with its pods, drawn as a group.
#[derive(Debug, Clone)]
struct Group {
    node: Item,
    pods: Vec<Item>,
}

/// The picture, independent of the output format.
#[derive(Debug, Clone)]
pub struct Graph {
    title: String,
    switches: Vec<Item>,
    routers: Vec<Item>,
    groups: Vec<Group>,
    hubs: Vec<Item>,
    links: Vec<Link>,
}

fn sw_id(name: &str) -> String {
    format!("switch_{name}")
}
fn node_id(name: &str) -> String {
    format!("node_{name}")
}
fn pod_id(node: &str, pod: &str) -> String {
    format!("pod_{node}_{pod}")
}
fn router_id(name: &str) -> String {
    format!("router_{name}")
}

impl Graph {
    /// The picture of a plan; `state` adds pod addresses and faults.
    pub fn new(plan: &Plan, state: Option<&LabState>) -> Graph {
        let faults_on = |target: &str| -> Vec<String> {
            state
                .map(|s| {
                    s.faults
                        .iter()
                        .filter(|f| f.spec.on() == target)
                        .map(|f| format!("FAULT {}: {}", f.id, f.spec.describe()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let switches = plan
            .switches
            .iter()
            .map(|s| Item {
                id: sw_id(&s.name),
                lines: vec![
                    format!("switch {}", s.name),
                    s.subnet.to_string(),
                    format!("MTU {}", s.mtu),
                ],
                faults: faults_on(&s.name),
            })
            .collect();
        let mut links = Vec::new();
        let routers = plan
            .routers
            .iter()
            .map(|r| {
                for p in &r.ports {
                    links.push(Link {
                        a: router_id(&r.name),
                        b: sw_id(&p.switch),
                        label: format!("{} {}/{}", p.ifname, p.ip, p.prefix_len),
                        layer: Layer::Wire,
                    });
                }
                let mut lines = vec![format!("router {}", r.name)];
                if let Some(asn) = r.asn {
                    lines.push(format!("BIRD, AS {asn}"));
                }
                Item {
                    id: router_id(&r.name),
                    lines,
                    faults: faults_on(&r.name),
                }
            })
            .collect();
        let mut groups = Vec::new();
        for n in &plan.nodes {
            let mut lines = vec![
                format!("node {}", n.name),
                format!("eth0 {}/{} MTU {}", n.ip, n.prefix_len, n.mtu),
            ];
            let mut pod_lines: Option<(String, u32)> = None;
            match &plan.profile {
                ProfilePlan::Flannel(f) => {
                    if let Some(fnode) = f.node(&n.name) {
                        if let (Some(dev), Some(mtu)) = (&f.device, fnode.device_mtu) {
                            lines.push(format!("{dev} {}/32 MTU {mtu}", fnode.subnet.network()));
                        }
                        let gw = fnode.subnet.hosts().next().unwrap_or(fnode.subnet.network());
                        lines.push(format!("cni0 {gw}/{}", fnode.subnet.prefix_len()));
                        pod_lines = Some((format!("from {}", fnode.subnet), fnode.pod_mtu));
                    }
                }
                ProfilePlan::Calico(c) => {
                    if let Some(cnode) = c.node(&n.name) {
                        if let Some(t) = &cnode.vxlan {
                            lines.push(format!("vxlan.calico {}/32 MTU {}", t.address, t.mtu));
                        }
                        let blocks: Vec<String> = cnode.blocks().map(|b| b.to_string()).collect();
                        lines.push(format!(
                            "{} {}",
                            if blocks.len() == 1 { "block" } else { "blocks" },
                            blocks.join(", ")
                        ));
                        if cnode.bird.is_some() {
                            lines.push(format!(
                                "BIRD, AS {}{}",
                                c.asn,
                                if cnode.reflector { ", route reflector" } else { "" }
                            ));
                        }
                        pod_lines = Some((format!("from {}", blocks.join(", ")), cnode.pod_mtu));
                    }
                }
            }
            links.push(Link {
                a: sw_id(&n.switch),
                b: node_id(&n.name),
                label: format!("eth0 {}", n.ip),
                layer: Layer::Wire,
            });
            let pods = n
                .pods
                .iter()
                .map(|p| {
                    let key = format!("{}/{}", n.name, p.name);
                    let addr = state
                        .and_then(|s| s.pods.get(&key))
                        .and_then(|ps| ps.ip.clone())
                        .or_else(|| pod_lines.as_ref().map(|(l, _)| l.clone()))
                        .unwrap_or_default();
                    let mtu = pod_lines.as_ref().map_or(String::new(), |(_, m)| format!(" MTU {m}"));
                    links.push(Link {
                        a: node_id(&n.name),
                        b: pod_id(&n.name, &p.name),
                        label: "veth".into(),
                        layer: Layer::Wire,
                    });
                    Item {
                        id: pod_id(&n.name, &p.name),
                        lines: vec![format!("pod {key}"), format!("{} {addr}{mtu}", p.ifname)],
                        faults: faults_on(&key),
                    }
                })
                .collect();
            groups.push(Group {
                node: Item {
                    id: node_id(&n.name),
                    lines,
                    faults: faults_on(&n.name),
                },
                pods,
            });
        }
        let mut hubs = Vec::new();
        let tunnel = match &plan.profile {
            ProfilePlan::Flannel(f) if f.backend == FlannelBackend::Vxlan => {
                Some(format!("VXLAN VNI {} UDP {}", f.vni, f.port))
            }
            ProfilePlan::Calico(c) if c.mode == CalicoMode::Vxlan => Some("VXLAN VNI 4096 UDP 4789".to_string()),
            _ => None,
        };
        if let Some(label) = tunnel {
            let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
            if names.len() <= MESH_EDGES_UP_TO {
                for (i, a) in names.iter().enumerate() {
                    for b in &names[i + 1..] {
                        links.push(Link {
                            a: node_id(a),
                            b: node_id(b),
                            label: label.clone(),
                            layer: Layer::Tunnel,
                        });
                    }
                }
            } else {
                let n = names.len();
                hubs.push(Item {
                    id: "overlay".into(),
                    lines: vec![
                        format!("{label} full mesh"),
                        format!("{n} nodes, {} tunnels", n * (n - 1) / 2),
                    ],
                    faults: Vec::new(),
                });
                for a in names {
                    links.push(Link {
                        a: node_id(a),
                        b: "overlay".into(),
                        label: String::new(),
                        layer: Layer::Tunnel,
                    });
                }
            }
        }
        links.extend(bgp_links(plan));
        Graph {
            title: format!("lab {}: {}", plan.lab, crate::status::network_line(plan)),
            switches,
            routers,
            groups,
            hubs,
            links,
        }
    }

    /// Every name the picture shows for nodes, switches and routers.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.switches.iter().map(|s| s.lines[0].clone()).collect();
        v.extend(self.routers.iter().map(|r| r.lines[0].clone()));
        v.extend(self.groups.iter().map(|g| g.node.lines[0].clone()));
        v
    }

    /// Graphviz DOT.
    pub fn dot(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "graph cnilab {{");
        let _ = writeln!(
            s,
            "  graph [label={}, labelloc=t, fontname=\"Helvetica\", rankdir=TB, newrank=true];",
            quote(&self.title)
        );
        let _ = writeln!(
            s,
            "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=rounded];"
        );
        let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=8];");
        let item = |s: &mut String, indent: &str, it: &Item, shape: &str| {
            let mut lines = it.lines.clone();
            lines.extend(it.faults.iter().cloned());
            let label = lines.iter().map(|l| escape(l)).collect::<Vec<_>>().join("\\n");
            let fault = if it.faults.is_empty() {
                String::new()
            } else {
                ", color=red, fontcolor=red, penwidth=2".to_string()
            };
            let _ = writeln!(
                s,
                "{indent}{} [label=\"{label}\", shape={shape}{fault}];",
                quote(&it.id)
            );
        };
        let _ = writeln!(s, "  subgraph cluster_fabric {{");
        let _ = writeln!(s, "    label=\"fabric\"; style=dashed; color=gray;");
        for sw in &self.switches {
            item(&mut s, "    ", sw, "box3d");
        }
        for r in &self.routers {
            item(&mut s, "    ", r, "octagon");
        }
        let _ = writeln!(s, "  }}");
        for g in &self.groups {
            let _ = writeln!(s, "  subgraph cluster_{} {{", g.node.id);
            let _ = writeln!(s, "    label=\"\"; style=rounded; color=lightgray;");
            item(&mut s, "    ", &g.node, "box");
            for p in &g.pods {
                item(&mut s, "    ", p, "ellipse");
            }
            let _ = writeln!(s, "  }}");
        }
        for h in &self.hubs {
            item(&mut s, "  ", h, "doubleoctagon");
        }
        for l in &self.links {
            let style = match l.layer {
                Layer::Wire => "".to_string(),
                Layer::Tunnel => ", style=dashed, color=blue, fontcolor=blue, constraint=false".to_string(),
                Layer::Bgp => ", style=dotted, color=darkgreen, fontcolor=darkgreen, constraint=false".to_string(),
            };
            let _ = writeln!(
                s,
                "  {} -- {} [label={}{style}];",
                quote(&l.a),
                quote(&l.b),
                quote(&l.label)
            );
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// A Mermaid flowchart (renders on GitHub and in many editors).
    pub fn mermaid(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "---\ntitle: {}\n---", self.title);
        let _ = writeln!(s, "flowchart TB");
        let item = |s: &mut String, indent: &str, it: &Item, open: &str, close: &str| {
            let mut lines = it.lines.clone();
            lines.extend(it.faults.iter().cloned());
            let label = lines
                .iter()
                .map(|l| l.replace('"', "#quot;"))
                .collect::<Vec<_>>()
                .join("<br/>");
            let _ = writeln!(s, "{indent}{}{open}\"{label}\"{close}", mid(&it.id));
        };
        let _ = writeln!(s, "  subgraph fabric");
        for sw in &self.switches {
            item(&mut s, "    ", sw, "[", "]");
        }
        for r in &self.routers {
            item(&mut s, "    ", r, "{{", "}}");
        }
        let _ = writeln!(s, "  end");
        for g in &self.groups {
            let _ = writeln!(s, "  subgraph {}_group[\" \"]", mid(&g.node.id));
            item(&mut s, "    ", &g.node, "[", "]");
            for p in &g.pods {
                item(&mut s, "    ", p, "([", "])");
            }
            let _ = writeln!(s, "  end");
        }
        for h in &self.hubs {
            item(&mut s, "  ", h, "((", "))");
        }
        for l in &self.links {
            let arrow = match l.layer {
                Layer::Wire => "---",
                Layer::Tunnel | Layer::Bgp => "-.-",
            };
            if l.label.is_empty() {
                let _ = writeln!(s, "  {} {arrow} {}", mid(&l.a), mid(&l.b));
            } else {
                let _ = writeln!(
                    s,
                    "  {} {arrow}|\"{}\"| {}",
                    mid(&l.a),
                    l.label.replace('"', "#quot;"),
                    mid(&l.b)
                );
            }
        }
        let faulty: Vec<String> = self
            .switches
            .iter()
            .chain(&self.routers)
            .chain(self.groups.iter().flat_map(|g| std::iter::once(&g.node).chain(&g.pods)))
            .filter(|i| !i.faults.is_empty())
            .map(|i| mid(&i.id))
            .collect();
        if !faulty.is_empty() {
            let _ = writeln!(s, "  classDef fault stroke:#d00,stroke-width:3px,color:#d00");
            let _ = writeln!(s, "  class {} fault", faulty.join(","));
        }
        s
    }

    /// SVG by Graphviz's `dot`.
    pub fn svg(&self) -> Result<String, Error> {
        use std::io::Write;
        let dot = crate::tools::find("dot").ok_or_else(|| {
            Error::env(
                "graph --format svg needs Graphviz's dot, which is not installed",
                "apt-get install -y graphviz, or use --format dot or --format mermaid",
            )
        })?;
        let mut child = std::process::Command::new(&dot)
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", dot.display()))?;
        let text = self.dot();
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().map_err(anyhow::Error::from)?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(anyhow::anyhow!("dot failed: {}", String::from_utf8_lossy(&out.stderr).trim()).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The BGP sessions of a plan, each pair once.
fn bgp_links(plan: &Plan) -> Vec<Link> {
    let mut owner_of: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for n in &plan.nodes {
        owner_of.insert(n.ip, node_id(&n.name));
    }
    for r in &plan.routers {
        for p in &r.ports {
            owner_of.insert(p.ip, router_id(&r.name));
        }
    }
    let mut birds: Vec<(String, u32, &crate::bird::BirdPlan)> = Vec::new();
    if let ProfilePlan::Calico(c) = &plan.profile {
        for n in &c.nodes {
            if let Some(b) = &n.bird {
                birds.push((node_id(&n.node), c.asn, b));
            }
        }
    }
    for r in &plan.routers {
        if let (Some(b), Some(asn)) = (&r.bird, r.asn) {
            birds.push((router_id(&r.name), asn, b));
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (me, my_asn, b) in birds {
        for s in &b.sessions {
            let Some(peer) = owner_of.get(&s.neighbor) else {
                continue;
            };
            let key = if me < *peer {
                (me.clone(), peer.clone())
            } else {
                (peer.clone(), me.clone())
            };
            if seen.insert(key) {
                out.push(Link {
                    a: me.clone(),
                    b: peer.clone(),
                    label: if s.asn == my_asn {
                        format!("iBGP AS {my_asn}")
                    } else {
                        format!("eBGP AS {my_asn} / {}", s.asn)
                    },
                    layer: Layer::Bgp,
                });
            }
        }
    }
    out
}

/// A DOT string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A Mermaid node id: letters, digits and underscores only.
fn mid(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::LabPaths;

    fn plan(text: &str) -> Plan {
        let t = crate::topology::parse(&crate::error::Source::new("t.toml", text)).expect("valid");
        Plan::new(&t, &t.name, &LabPaths::of(&t.name))
    }

    #[test]
    fn flannel_graph_has_every_element_and_a_tunnel_per_pair() {
        let p = plan("name = \"g\"\n[[node]]\nname = \"w{i}\"\ncount = 3\npods = 2\n");
        let g = Graph::new(&p, None);
        let dot = g.dot();
        for n in ["node w1", "node w2", "node w3", "switch tor1", "pod w1/"] {
            assert!(dot.contains(n), "{n} missing from\n{dot}");
        }
        assert_eq!(g.links.iter().filter(|l| l.layer == Layer::Tunnel).count(), 3);
        assert!(dot.contains("flannel.1 10.244."), "{dot}");
        assert!(dot.contains("MTU 1450"), "{dot}");
        let m = g.mermaid();
        assert!(m.starts_with("---\ntitle: lab g"), "{m}");
        assert!(m.contains("switch_tor1 ---|\"eth0 "), "{m}");
    }

    #[test]
    fn large_meshes_are_drawn_through_a_hub() {
        let p = plan("name = \"g\"\n[[node]]\nname = \"w{i}\"\ncount = 20\n");
        let g = Graph::new(&p, None);
        assert_eq!(g.links.iter().filter(|l| l.layer == Layer::Tunnel).count(), 20);
        assert!(g.dot().contains("20 nodes, 190 tunnels"));
    }

    #[test]
    fn calico_full_mesh_draws_each_session_once() {
        let p = plan("name = \"g\"\n[network]\ncni = \"calico\"\n[[node]]\nname = \"w{i}\"\ncount = 4\n");
        let g = Graph::new(&p, None);
        assert_eq!(g.links.iter().filter(|l| l.layer == Layer::Bgp).count(), 6);
        assert!(g.dot().contains("iBGP AS 64512"));
    }
}

//! `cnilab graph`: a picture of a topology or a running lab. The physical
//! layer (switches, routers, nodes, pods, with addresses and MTUs) and the
//! control plane as a second layer (VXLAN tunnels or BGP sessions), with
//! active faults marked. Rendered as Graphviz DOT, Mermaid, or SVG by `dot`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::error::Error;
use crate::ops::state::LabState;
use crate::profile::Plan;

/// Above this many nodes, a full mesh of tunnels is drawn as one hub.
const MESH_EDGES_UP_TO: usize = 12;
/// Above this many BGP sessions, they are summed up in each speaker's box
/// instead of drawn one by one (a 60-node full mesh has 1,770).
const BGP_EDGES_UP_TO: usize = 66;
/// The width the node rows should fit in, in points, leaving room for the
/// edges that run beside them: the picture stays under 2,000 pt, about a
/// landscape A3 page.
const PAGE_WIDTH_PT: f64 = 1_400.0;
/// Helvetica at 10 pt averages about this many points a character, with
/// the room an ellipse adds around its text.
const CHAR_PT: f64 = 6.5;
/// What a box and its cluster add to a label's width, in points.
const BOX_PT: f64 = 40.0;

/// BGP session states by speaker (element id) and neighbour address, as
/// the speakers' BIRDs report them.
pub type BgpStates = BTreeMap<(String, Ipv4Addr), String>;

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
    /// A BGP session's state in a running lab (both ends' views merged).
    state: Option<String>,
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
    /// The switch its node is on.
    switch: String,
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
    /// Per speaker (element id), a line summing up its BGP sessions, shown
    /// when there are too many sessions to draw.
    bgp_lines: BTreeMap<String, String>,
    /// Whether session states come from a running lab.
    live: bool,
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
    /// The picture of a plan; `state` (a running lab) adds pod addresses,
    /// faults and the BGP sessions' states, read from the lab's BIRDs.
    pub fn new(plan: &Plan, state: Option<&LabState>) -> Graph {
        let live = state.map(|s| live_bgp_states(plan, s));
        Graph::with_bgp_states(plan, state, live.as_ref())
    }

    /// The picture of a plan with the given BGP session states.
    pub fn with_bgp_states(plan: &Plan, state: Option<&LabState>, live: Option<&BgpStates>) -> Graph {
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
                faults: faults_on(state, &s.name),
            })
            .collect();
        let mut links = Vec::new();
        let routers: Vec<Item> = plan
            .routers
            .iter()
            .map(|r| {
                let mut lines = vec![format!("router {}", r.name)];
                for p in &r.ports {
                    let port = format!("{} {}/{}", p.ifname, p.ip, p.prefix_len);
                    lines.push(port.clone());
                    links.push(Link {
                        a: router_id(&r.name),
                        b: sw_id(&p.switch),
                        label: port,
                        layer: Layer::Wire,
                        state: None,
                    });
                }
                if let Some(asn) = r.asn {
                    lines.push(format!("BIRD, AS {asn}"));
                }
                Item {
                    id: router_id(&r.name),
                    lines,
                    faults: faults_on(state, &r.name),
                }
            })
            .collect();
        let groups: Vec<Group> = plan.nodes.iter().map(|n| group(plan, n, state, &mut links)).collect();
        let mut hubs = Vec::new();
        tunnels(plan, &mut hubs, &mut links);
        let bgp = bgp_links(plan, live);
        let bgp_lines = groups
            .iter()
            .map(|g| &g.node)
            .chain(&routers)
            .filter_map(|it| bgp_summary(&it.id, &bgp, live.is_some()).map(|l| (it.id.clone(), l)))
            .collect();
        links.extend(bgp);
        Graph {
            title: format!("lab {}: {}", plan.lab, crate::observe::status::network_line(plan)),
            switches,
            routers,
            groups,
            hubs,
            links,
            bgp_lines,
            live: live.is_some(),
        }
    }

    /// Every name the picture shows for nodes, switches and routers.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.switches.iter().map(|s| s.lines[0].clone()).collect();
        v.extend(self.routers.iter().map(|r| r.lines[0].clone()));
        v.extend(self.groups.iter().map(|g| g.node.lines[0].clone()));
        v
    }

    /// How many node groups fit side by side on a page, with pods beside
    /// their node, or below it (`stacked`).
    fn columns(&self, stacked: bool) -> usize {
        let width = |it: &Item| {
            let chars = it
                .lines
                .iter()
                .chain(&it.faults)
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            chars as f64 * CHAR_PT + BOX_PT
        };
        let widest = self
            .groups
            .iter()
            .map(|g| {
                let pods = g.pods.iter().map(width);
                let pods = if stacked { pods.fold(0.0, f64::max) } else { pods.sum() };
                width(&g.node).max(pods)
            })
            .fold(BOX_PT, f64::max);
        ((PAGE_WIDTH_PT / widest) as usize).max(1)
    }

    /// The BGP line of a speaker's box, when sessions are not drawn.
    fn extra(&self, it: &Item, bgp_edges: bool) -> Option<&String> {
        if bgp_edges { None } else { self.bgp_lines.get(&it.id) }
    }

    /// Whether BGP sessions are drawn one by one, else summed up in boxes.
    fn bgp_edges(&self, rows: bool) -> bool {
        let n = self.links.iter().filter(|l| l.layer == Layer::Bgp).count();
        !rows && n <= BGP_EDGES_UP_TO
    }

    /// Graphviz DOT. A lab whose nodes fit side by side on a page is drawn
    /// with every cable, tunnel and session (pods below their node when
    /// beside it would not fit); a larger one by switch, its nodes in rows
    /// with their pods below them, so that it stays about a page wide: cables to a switch are shown by its frame, tunnels by the
    /// overlay's box, BGP sessions by a line in each speaker's box. Edges
    /// carry no text (labels of many edges overlap): addresses are in the
    /// boxes, and only a BGP session that is not Established names its state.
    pub fn dot(&self) -> String {
        let stacked = self.groups.len() > self.columns(false);
        let rows = self.groups.len() > self.columns(true);
        let bgp_edges = self.bgp_edges(rows);
        let mut legend = vec![self.title.clone()];
        if let Some(t) = self.links.iter().find(|l| l.layer == Layer::Tunnel).filter(|_| !rows) {
            // Not every overlay is VXLAN (flannel udp forwards in userspace).
            legend.push(if t.label.starts_with("VXLAN") {
                "dashed blue: VXLAN tunnels".into()
            } else {
                format!("dashed blue: tunnels ({})", t.label)
            });
        }
        let kinds: BTreeSet<&str> = self
            .links
            .iter()
            .filter(|l| l.layer == Layer::Bgp)
            .map(|l| l.label.as_str())
            .collect();
        if bgp_edges && !kinds.is_empty() {
            let kinds = kinds.into_iter().collect::<Vec<_>>().join(", ");
            legend.push(if self.live {
                format!("dotted: BGP sessions ({kinds}), green when Established, red with the state otherwise")
            } else {
                format!("dotted: BGP sessions ({kinds})")
            });
        }
        let mut s = String::new();
        let _ = writeln!(s, "graph cnilab {{");
        let _ = writeln!(
            s,
            "  graph [label=\"{}\", labelloc=t, fontname=\"Helvetica\", rankdir=TB, newrank=true, nodesep=0.2, ranksep=0.35, forcelabels=true];",
            legend.iter().map(|l| escape(l)).collect::<Vec<_>>().join("\\n")
        );
        let _ = writeln!(
            s,
            "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=rounded];"
        );
        let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=8];");
        let _ = writeln!(s, "  subgraph cluster_fabric {{");
        let _ = writeln!(s, "    label=\"fabric\"; style=dashed; color=gray;");
        if !rows {
            for sw in &self.switches {
                dot_item(&mut s, "    ", sw, "box3d", None);
            }
        }
        for r in &self.routers {
            dot_item(&mut s, "    ", r, "octagon", self.extra(r, bgp_edges));
        }
        let _ = writeln!(s, "  }}");
        for h in &self.hubs {
            dot_item(&mut s, "  ", h, "doubleoctagon", None);
        }
        if rows {
            self.dot_rows(&mut s, bgp_edges);
        } else {
            for g in &self.groups {
                dot_group(&mut s, "  ", g, self.extra(&g.node, bgp_edges), stacked);
            }
        }
        for l in &self.links {
            let drawn = match l.layer {
                Layer::Wire => !rows || l.a.starts_with("router_") || l.a.starts_with("node_"),
                Layer::Tunnel => !rows,
                Layer::Bgp => bgp_edges,
            };
            if drawn {
                let _ = writeln!(s, "  {} -- {} [{}];", quote(&l.a), quote(&l.b), edge_style(l));
            }
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// The groups by switch, each switch's in rows of as many as fit a page,
    /// the switches one below the other; invisible edges hold the order.
    fn dot_rows(&self, s: &mut String, bgp_edges: bool) {
        let cols = self.columns(true);
        // The routers and the overlay's box above the first switch, inside
        // the page's width rather than beside it.
        let mut above: Option<String> = None;
        if let Some(first) = self.switches.first() {
            for it in self.routers.iter().chain(&self.hubs) {
                let _ = writeln!(s, "  {} -- {} [style=invis];", quote(&it.id), quote(&first.id));
            }
        }
        for sw in &self.switches {
            let name = sw.id.trim_start_matches("switch_");
            let groups: Vec<&Group> = self.groups.iter().filter(|g| g.switch == name).collect();
            let _ = writeln!(s, "  subgraph cluster_{} {{", sw.id);
            let _ = writeln!(
                s,
                "    label={}; labeljust=l; style=dashed; color=gray;",
                quote(&format!("{} nodes on switch {name}", groups.len()))
            );
            dot_item(s, "    ", sw, "box3d", None);
            for g in &groups {
                dot_group(s, "    ", g, self.extra(&g.node, bgp_edges), true);
            }
            let _ = writeln!(s, "  }}");
            if let Some(a) = above.take() {
                let _ = writeln!(s, "  {} -- {} [style=invis];", quote(&a), quote(&sw.id));
            }
            let bottom = |g: &Group| g.pods.last().map_or(g.node.id.clone(), |p| p.id.clone());
            for (i, g) in groups.iter().enumerate() {
                let top = if i < cols {
                    sw.id.clone()
                } else {
                    bottom(groups[i - cols])
                };
                let _ = writeln!(s, "  {} -- {} [style=invis];", quote(&top), quote(&g.node.id));
            }
            let last_row = groups.len().saturating_sub(1) / cols * cols;
            above = groups.get(last_row).map(|g| bottom(g)).or(Some(sw.id.clone()));
        }
    }

    /// A Mermaid flowchart (renders on GitHub and in many editors).
    pub fn mermaid(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "---\ntitle: {}\n---", self.title);
        let _ = writeln!(s, "flowchart TB");
        let bgp_edges = self.bgp_edges(false);
        let item = |s: &mut String, indent: &str, it: &Item, open: &str, close: &str| {
            let mut lines = it.lines.clone();
            if !bgp_edges {
                lines.extend(self.bgp_lines.get(&it.id).cloned());
            }
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
        for l in self.links.iter().filter(|l| bgp_edges || l.layer != Layer::Bgp) {
            let arrow = match l.layer {
                Layer::Wire => "---",
                Layer::Tunnel | Layer::Bgp => "-.-",
            };
            let label = match &l.state {
                Some(st) => format!("{}: {st}", l.label),
                None => l.label.clone(),
            };
            if label.is_empty() {
                let _ = writeln!(s, "  {} {arrow} {}", mid(&l.a), mid(&l.b));
            } else {
                let _ = writeln!(
                    s,
                    "  {} {arrow}|\"{}\"| {}",
                    mid(&l.a),
                    label.replace('"', "#quot;"),
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
        let dot = crate::kernel::tools::find("dot").ok_or_else(|| {
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

/// The faults on a target, as lines of its box.
fn faults_on(state: Option<&LabState>, target: &str) -> Vec<String> {
    state
        .map(|s| {
            s.faults
                .iter()
                .filter(|f| f.spec.on() == target)
                .map(|f| format!("FAULT {}: {}", f.id, f.spec.describe()))
                .collect()
        })
        .unwrap_or_default()
}

/// A pod's box: its name, its Kubernetes identity where it has more than
/// `default` (`x/a pod=a`), its interface and address.
fn pod_box_lines(key: &str, p: &crate::model::plan::PodPlan, addr: &str, mtu: &str) -> Vec<String> {
    let mut lines = vec![format!("pod {key}")];
    if p.meta != crate::model::identity::PodMeta::default() {
        let labels: Vec<String> = p.meta.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(
            format!("{}/{} {}", p.meta.namespace, p.name, labels.join(","))
                .trim_end()
                .to_string(),
        );
    }
    lines.push(format!("{} {addr}{mtu}", p.ifname));
    lines
}

/// A node's box with its addresses and devices, and its pods.
fn group(plan: &Plan, n: &crate::model::plan::NodePlan, state: Option<&LabState>, links: &mut Vec<Link>) -> Group {
    let mut lines = vec![
        format!("node {}", n.name),
        format!("eth0 {}/{} MTU {}", n.ip, n.prefix_len, n.mtu),
    ];
    for x in &n.extra_ifaces {
        lines.push(format!("{} {}/{} MTU {}", x.ifname, x.ip, x.prefix_len, x.mtu));
    }
    let (extra, pod_lines) = plan.profile.graph_lines(&n.name);
    lines.extend(extra);
    links.push(Link {
        a: sw_id(&n.switch),
        b: node_id(&n.name),
        label: format!("eth0 {}", n.ip),
        layer: Layer::Wire,
        state: None,
    });
    for x in &n.extra_ifaces {
        links.push(Link {
            a: sw_id(&x.switch),
            b: node_id(&n.name),
            label: format!("{} {}", x.ifname, x.ip),
            layer: Layer::Wire,
            state: None,
        });
    }
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
                state: None,
            });
            Item {
                id: pod_id(&n.name, &p.name),
                lines: pod_box_lines(&key, p, &addr, &mtu),
                faults: faults_on(state, &key),
            }
        })
        .collect();
    Group {
        node: Item {
            id: node_id(&n.name),
            lines,
            faults: faults_on(state, &n.name),
        },
        switch: n.switch.clone(),
        pods,
    }
}

/// The VXLAN tunnels between nodes: one link a pair, or through a hub for
/// large meshes.
fn tunnels(plan: &Plan, hubs: &mut Vec<Item>, links: &mut Vec<Link>) {
    let Some(label) = plan.profile.tunnel_label() else {
        return;
    };
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    let link = |a: String, b: String, label: String| Link {
        a,
        b,
        label,
        layer: Layer::Tunnel,
        state: None,
    };
    if names.len() <= MESH_EDGES_UP_TO {
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                links.push(link(node_id(a), node_id(b), label.clone()));
            }
        }
        return;
    }
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
        links.push(link(node_id(a), "overlay".into(), String::new()));
    }
}

/// The BGP session states of a running lab, from its BIRDs' control
/// sockets (as `probe bgp` reads them), by speaker and neighbour.
fn live_bgp_states(plan: &Plan, state: &LabState) -> BgpStates {
    let mut out = BgpStates::new();
    let Ok(bgp) = crate::observe::probe::bgp(state, None) else {
        return out;
    };
    for (owner, _, neighbor, st) in bgp.sessions {
        let id = if plan.router(&owner).is_some() {
            router_id(&owner)
        } else {
            node_id(&owner)
        };
        if let Ok(ip) = neighbor.parse() {
            out.insert((id, ip), st);
        }
    }
    out
}

/// One line for a speaker's box: how many of its sessions are Established.
fn bgp_summary(id: &str, bgp: &[Link], live: bool) -> Option<String> {
    let mine: Vec<&Link> = bgp.iter().filter(|l| l.a == id || l.b == id).collect();
    if mine.is_empty() {
        return None;
    }
    if !live {
        return Some(format!("{} BGP sessions", mine.len()));
    }
    let up = mine.iter().filter(|l| l.state.as_deref() == Some(ESTABLISHED)).count();
    let mut line = format!("BGP {up} of {} Established", mine.len());
    if let Some(bad) = mine.iter().find(|l| l.state.as_deref() != Some(ESTABLISHED)) {
        let peer = if bad.a == id { &bad.b } else { &bad.a };
        let peer = peer.split_once('_').map_or(peer.as_str(), |(_, n)| n);
        line.push_str(&format!(
            " (with {peer}: {})",
            bad.state.as_deref().unwrap_or("unknown")
        ));
    }
    Some(line)
}

/// BIRD's name of a working session.
const ESTABLISHED: &str = "Established";

/// A box in DOT; faults in red, `extra` as one more line.
fn dot_item(s: &mut String, indent: &str, it: &Item, shape: &str, extra: Option<&String>) {
    let mut lines = it.lines.clone();
    lines.extend(extra.cloned());
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
}

/// A node with its pods in a frame; `stacked` puts the pods one below the
/// other, which keeps the frame one box wide.
fn dot_group(s: &mut String, indent: &str, g: &Group, extra: Option<&String>, stacked: bool) {
    let _ = writeln!(s, "{indent}subgraph cluster_{} {{", g.node.id);
    let _ = writeln!(s, "{indent}  label=\"\"; style=rounded; color=lightgray;");
    dot_item(s, &format!("{indent}  "), &g.node, "box", extra);
    for p in &g.pods {
        dot_item(s, &format!("{indent}  "), p, "ellipse", None);
    }
    if stacked {
        for w in g.pods.windows(2) {
            let _ = writeln!(s, "{indent}  {} -- {} [style=invis];", quote(&w[0].id), quote(&w[1].id));
        }
    }
    let _ = writeln!(s, "{indent}}}");
}

/// How an edge looks: cables plain, tunnels dashed blue, BGP sessions
/// dotted, green or red with their state in a running lab.
fn edge_style(l: &Link) -> String {
    match (l.layer, l.state.as_deref()) {
        (Layer::Wire, _) => String::new(),
        (Layer::Tunnel, _) => "style=dashed, color=blue, constraint=false".into(),
        (Layer::Bgp, None) => "style=dotted, color=darkgreen, constraint=false".into(),
        (Layer::Bgp, Some(ESTABLISHED)) => {
            "style=dotted, color=green, penwidth=2, constraint=false, tooltip=\"Established\"".into()
        }
        (Layer::Bgp, Some(other)) => format!(
            "style=dotted, color=red, fontcolor=red, penwidth=2, constraint=false, xlabel={}",
            quote(other)
        ),
    }
}

/// The BGP sessions of a plan, each pair once; with `live` states, each
/// with its state: Established when both ends say so, else what the first
/// end that does not say so reports.
fn bgp_links(plan: &Plan, live: Option<&BgpStates>) -> Vec<Link> {
    let mut owner_of: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for n in &plan.nodes {
        owner_of.insert(n.ip, node_id(&n.name));
    }
    for r in &plan.routers {
        for p in &r.ports {
            owner_of.insert(p.ip, router_id(&r.name));
        }
    }
    let mut birds: Vec<(String, u32, &crate::model::plan::BirdPlan)> = Vec::new();
    for (node, asn, b) in plan.profile.node_birds() {
        birds.push((node_id(node), asn, b));
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
                let state = live.map(|m| {
                    let mine = m.get(&(me.clone(), s.neighbor));
                    let theirs = owner_of
                        .iter()
                        .filter(|(_, id)| **id == me)
                        .find_map(|(ip, _)| m.get(&(peer.clone(), *ip)));
                    let views: Vec<&String> = mine.into_iter().chain(theirs).collect();
                    match views.iter().find(|v| v.as_str() != ESTABLISHED) {
                        Some(bad) => bad.to_string(),
                        None if views.is_empty() => "not reported".to_string(),
                        None => ESTABLISHED.to_string(),
                    }
                });
                out.push(Link {
                    a: me.clone(),
                    b: peer.clone(),
                    label: if s.asn == my_asn {
                        format!("iBGP AS {my_asn}")
                    } else {
                        format!("eBGP AS {my_asn} / {}", s.asn)
                    },
                    layer: Layer::Bgp,
                    state,
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
    use crate::model::paths::LabPaths;

    fn plan(text: &str) -> Plan {
        let t = crate::profile::parse_topology(&crate::model::error::Source::new("t.toml", text)).expect("valid");
        crate::profile::plan_lab(&t, &t.name, &LabPaths::of(&t.name))
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

    /// Sixty nodes on three switches behind a router.
    fn sixty(cni: &str) -> Plan {
        let mut t = format!("name = \"g\"\n[network]\ncni = \"{cni}\"\n");
        for (i, sw) in ["a", "b", "c"].iter().enumerate() {
            t.push_str(&format!(
                "[[switch]]\nname = \"tor{sw}\"\nsubnet = \"172.2{i}.0.0/24\"\n"
            ));
            t.push_str(&format!(
                "[[node]]\nname = \"{sw}{{i}}\"\ncount = 20\nswitch = \"tor{sw}\"\npods = 2\n"
            ));
        }
        t.push_str("[[router]]\nname = \"spine\"\nswitches = [\"tora\", \"torb\", \"torc\"]\n");
        plan(&t)
    }

    fn svg_width(svg: &str) -> f64 {
        let at = svg.find("<svg width=\"").expect("an svg element") + 12;
        svg[at..].split("pt").next().unwrap().parse().expect("width in pt")
    }

    /// A 60-node lab fits a page (before rows it was 35,250 pt wide), with
    /// every node and pod still in the picture.
    #[test]
    fn sixty_nodes_fit_a_page() {
        for cni in ["flannel", "calico"] {
            let g = Graph::new(&sixty(cni), None);
            let svg = g.svg().expect("Graphviz's dot is installed (.ci/deps)");
            let width = svg_width(&svg);
            assert!(width < 2000.0, "{cni}: the SVG is {width} pt wide");
            for n in ["node a1", "node b20", "node c13", "pod c20/pod", "router spine"] {
                assert!(svg.contains(n), "{cni}: {n} missing");
            }
        }
        // The calico mesh's 1,770 sessions are summed up in the boxes.
        let dot = Graph::new(&sixty("calico"), None).dot();
        assert!(dot.contains("59 BGP sessions"), "{dot}");
        assert!(!dot.contains("style=dotted"), "no session drawn one by one");
    }

    /// Edges carry no text that could overlap: addresses are in the boxes.
    #[test]
    fn edges_have_no_labels() {
        let p = plan(
            "name = \"g\"\n[[router]]\nname = \"gw\"\nswitches = [\"tor1\"]\n[[node]]\nname = \"w{i}\"\ncount = 3\npods = 2\n",
        );
        let dot = Graph::new(&p, None).dot();
        let edges: Vec<&str> = dot.lines().filter(|l| l.contains(" -- ")).collect();
        assert!(edges.len() > 10, "{dot}");
        for e in edges {
            assert!(!e.contains("label="), "{e}");
        }
        assert!(
            dot.contains("eth0 172.20.0.11/24"),
            "the address moved into the node's box: {dot}"
        );
        assert!(
            dot.contains("tor1 172.20.0.1/24"),
            "and the router's port into its box: {dot}"
        );
    }

    /// In a running lab each session is green when Established, else red
    /// and named by its state, as either end reports it.
    #[test]
    fn bgp_edges_show_the_session_state() {
        let p = plan("name = \"g\"\n[network]\ncni = \"calico\"\n[[node]]\nname = \"w{i}\"\ncount = 3\n");
        let ip = |n: &str| p.node(n).unwrap().ip;
        let mut live = BgpStates::new();
        for a in ["w1", "w2", "w3"] {
            for b in ["w1", "w2", "w3"] {
                if a != b {
                    live.insert((node_id(a), ip(b)), ESTABLISHED.to_string());
                }
            }
        }
        // w3 sees its session with w1 as Active; w1 still says Established.
        live.insert((node_id("w3"), ip("w1")), "Active".to_string());
        let dot = Graph::with_bgp_states(&p, None, Some(&live)).dot();
        let bgp: Vec<&str> = dot.lines().filter(|l| l.contains("style=dotted")).collect();
        assert_eq!(bgp.len(), 3, "{dot}");
        assert_eq!(bgp.iter().filter(|l| l.contains("color=green")).count(), 2, "{dot}");
        let red: Vec<&&str> = bgp.iter().filter(|l| l.contains("color=red")).collect();
        assert_eq!(red.len(), 1, "{dot}");
        assert!(red[0].contains("xlabel=\"Active\"") && red[0].contains("node_w1") && red[0].contains("node_w3"));
        let m = Graph::with_bgp_states(&p, None, Some(&live)).mermaid();
        assert!(m.contains("iBGP AS 64512: Active"), "{m}");
        // Without a running lab, no state is claimed.
        assert!(!Graph::new(&p, None).dot().contains("color=green"));
    }
}

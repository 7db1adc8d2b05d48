//! What `up` prints when it is done and what `status` shows: the lab's
//! settings with every default, its nodes and pods with their addresses and
//! MTUs, and the control plane's state, as tables or as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kernel::progress::{table, text};
use schemars::JsonSchema;
use serde::Serialize;

use crate::kernel::netns;
use crate::ops::state::{LabState, Phase};
use crate::profile::Plan;

/// A lab's status, for people (`Display`) and programs (JSON). Every
/// element is an object with named fields, so that programs read fields by
/// name and new fields do not break them (docs/schemas/status.json).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Status {
    /// Lab name.
    pub lab: String,
    /// building or up.
    pub phase: Phase,
    /// The topology file.
    pub topology_file: String,
    /// The settings in force, defaults included.
    pub settings: BTreeMap<String, String>,
    /// Switches.
    pub switches: Vec<SwitchStatus>,
    /// Routers.
    pub routers: Vec<RouterStatus>,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Pods.
    pub pods: Vec<PodStatus>,
    /// Every control-plane agent (flanneld, calico-felix, BIRD) of nodes and routers.
    pub agents: Vec<AgentStatus>,
    /// Every BGP session of every BIRD, as BIRD reports it now; empty without BGP.
    pub bgp_sessions: Vec<BgpSessionStatus>,
    /// Active faults, oldest first.
    pub faults: Vec<FaultStatus>,
    /// The lab's etcd, with `datastore = "etcd"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
    /// The NetworkPolicies in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyStatus>,
    /// Each node router's peers (Weave), as the routers last wrote them;
    /// a stopped router's say `router not running`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlay_peers: Vec<crate::profile::OverlayPeer>,
}

/// The lab's etcd and the keys the profile keeps in it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EtcdStatus {
    /// Its namespace.
    pub namespace: String,
    /// Its client URL on the switch.
    pub endpoint: String,
    /// The server process.
    pub agent: Option<AgentStatus>,
    /// The prefix the profile's keys live under.
    pub prefix: Option<String>,
    /// Each key under it with its value, as etcd returns them now; empty
    /// when etcd does not answer.
    pub keys: Vec<EtcdKeyStatus>,
    /// Why the keys could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A key in the lab's etcd.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EtcdKeyStatus {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// One switch.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SwitchStatus {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// MTU.
    pub mtu: u32,
}

/// A router: a namespace forwarding between the switches it joins.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RouterStatus {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// One port per switch it joins.
    pub ports: Vec<RouterPortStatus>,
    /// Its AS when it speaks BGP.
    pub asn: Option<u32>,
    /// Its BIRD, when it has BGP peers.
    pub agent: Option<AgentStatus>,
    /// Whether its namespace exists.
    pub present: bool,
}

/// A router's port on a switch.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RouterPortStatus {
    /// The switch.
    pub switch: String,
    /// The interface in the router's namespace.
    pub ifname: String,
    /// Its address with prefix (the switch subnet's first host).
    pub ip: String,
    /// Its MTU.
    pub mtu: u32,
}

/// A node's overlay device.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OverlayStatus {
    /// The device, e.g. `flannel.1` or `vxlan.calico`.
    pub device: String,
    /// Its MTU.
    pub mtu: u32,
}

/// One node.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Switch.
    pub switch: String,
    /// eth0 address.
    pub ip: String,
    /// eth0 MTU.
    pub mtu: u32,
    /// Its interfaces after eth0 (`switches = [...]`), in order; left out
    /// when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ifaces: Vec<IfaceStatus>,
    /// The node's pod subnet (flannel lease) or Calico blocks, comma-separated.
    pub pod_subnet: Option<String>,
    /// The overlay device and its MTU, when the profile makes one.
    pub overlay: Option<OverlayStatus>,
    /// The control-plane agent and whether it runs.
    pub agent: Option<AgentStatus>,
    /// Whether its namespace exists.
    pub present: bool,
    /// What its profile shows of it, in the profile's order (aws-vpc:
    /// instance_type, enis, addresses, max_pods); left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<(String, String)>,
}

/// A node's interface after eth0.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IfaceStatus {
    /// Its name, e.g. `eth1`.
    pub name: String,
    /// Its switch.
    pub switch: String,
    /// Its address and prefix length.
    pub ip: String,
    /// Its MTU.
    pub mtu: u32,
}

/// A node's or router's control-plane agent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AgentStatus {
    /// The node or router it serves.
    pub owner: String,
    /// Program name: flanneld, calico-felix or bird.
    pub name: String,
    /// Process ID.
    pub pid: u32,
    /// Whether it is running.
    pub running: bool,
}

/// One BGP session of a node's or router's BIRD.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BgpSessionStatus {
    /// The node or router whose BIRD holds the session.
    pub on: String,
    /// BIRD's protocol name (`Mesh_172_20_0_11`, ...); `-` when BIRD does not answer.
    pub name: String,
    /// The peer's address; empty when BIRD does not answer.
    pub neighbor: String,
    /// The node or router that has the peer's address, if one of the lab's.
    pub peer: Option<String>,
    /// BGP state as BIRD names it (Established, Active, Connect, ...), or
    /// `down`, or `BIRD not running`.
    pub state: String,
    /// Whether the state is Established.
    pub established: bool,
}

/// An active fault.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FaultStatus {
    /// `f1`, `f2`, ... (what `fault rm` takes).
    pub id: String,
    /// The kind, as `fault add` takes it: mtu, upstream-vxlan, ...
    pub kind: String,
    /// The node, pod, switch or router it hits.
    pub on: String,
    /// The kind's options (`mtu`, `percent`, `proto`, `port`, `key`, `value`, `new_mac`).
    pub options: BTreeMap<String, serde_json::Value>,
    /// One line, as `fault ls` prints it.
    pub description: String,
    /// A note for the user, such as a fallback that was used.
    pub note: Option<String>,
}

/// One pod.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PodStatus {
    /// `node/pod`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Address from the CNI result.
    pub ip: Option<String>,
    /// Gateway from the CNI result.
    pub gateway: Option<String>,
    /// MTU the profile gives it.
    pub mtu: u32,
    /// Its Kubernetes namespace.
    pub k8s_namespace: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A policy in force, as `policy ls` and `status` show it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PolicyStatus {
    /// `namespace/name`.
    pub id: String,
    /// The manifest it came from.
    pub file: String,
    /// `Ingress`, `Egress` or both.
    pub types: Vec<String>,
    /// The pods it selects (`node/pod`).
    pub selects: Vec<String>,
}

/// The policies in force.
pub fn policy_list(state: &LabState) -> Vec<PolicyStatus> {
    let world = crate::ops::policy::world(state);
    state
        .policies
        .iter()
        .map(|p| {
            let (ing, eg) = crate::model::netpol::eval::policy_types(&p.policy);
            PolicyStatus {
                id: p.id(),
                file: p.file.clone(),
                types: [(ing, "Ingress"), (eg, "Egress")]
                    .iter()
                    .filter(|(b, _)| *b)
                    .map(|(_, t)| t.to_string())
                    .collect(),
                selects: crate::model::netpol::eval::selects(&world, &p.policy)
                    .into_iter()
                    .map(|i| format!("{}/{}", world.pods[i].node, world.pods[i].name))
                    .collect(),
            }
        })
        .collect()
}

/// The policies as a table.
pub fn policy_table(ls: &[PolicyStatus]) -> String {
    let mut t = table(&["POLICY", "TYPES", "SELECTS", "FILE"]);
    for p in ls {
        t.add_row(vec![
            p.id.clone(),
            p.types.join(", "),
            if p.selects.is_empty() {
                "NOTHING (no pod has its labels)".to_string()
            } else {
                p.selects.join(" ")
            },
            p.file.clone(),
        ]);
    }
    text(&t) + "\n"
}

/// The settings in force, with every default, as `key = value`.
pub fn settings(plan: &Plan) -> BTreeMap<String, String> {
    let t = &plan.topology;
    let mut s = BTreeMap::new();
    s.insert("name".into(), t.name.clone());
    s.insert("seed".into(), t.seed.to_string());
    s.insert("network.cni".into(), t.network.profile.name().into());
    s.insert("network.pod_cidr".into(), t.network.pod_cidr.to_string());
    s.insert(
        "network.mtu".into(),
        t.network
            .mtu
            .map_or("(profile's computation)".into(), |m| m.to_string()),
    );
    s.insert("network.datastore".into(), t.network.datastore.as_str().into());
    if let Some(e) = &t.etcd {
        s.insert("etcd.ip".into(), e.ip.to_string());
    }
    s.extend(plan.profile.settings(t));
    s
}

/// The lab's etcd: its process and the profile's keys, read now.
fn etcd_status(state: &LabState, present: &[String]) -> Option<EtcdStatus> {
    let e = state.plan.etcd.as_ref()?;
    let prefix = state.plan.profile.etcd_prefix().map(str::to_string);
    let agent = state
        .agents
        .get(crate::model::topology::ETCD_TARGET)
        .map(|pid| AgentStatus {
            owner: crate::model::topology::ETCD_TARGET.to_string(),
            name: "etcd".to_string(),
            pid: *pid,
            running: crate::kernel::runtime::alive(*pid as i32),
        });
    let read = match (&prefix, present.contains(&e.ns)) {
        (Some(p), true) => {
            let p = format!("{p}/");
            crate::observe::collect::block_on(async {
                let ns = netns::Netns::open(&e.ns)?;
                crate::kernel::etcd::get_prefix(&ns, &p).await
            })
        }
        (_, false) => Err(anyhow::anyhow!("its namespace {} is gone", e.ns)),
        (None, true) => Ok(Vec::new()),
    };
    let (keys, error) = match read {
        Ok(kvs) => (
            kvs.into_iter()
                .map(|(key, value)| EtcdKeyStatus { key, value })
                .collect(),
            None,
        ),
        Err(err) => (Vec::new(), Some(format!("{err:#}"))),
    };
    Some(EtcdStatus {
        namespace: e.ns.clone(),
        endpoint: e.endpoint(),
        agent,
        prefix,
        keys,
        error,
    })
}

/// The status of a lab from its state and what is alive now.
pub fn status(state: &LabState) -> Status {
    let plan = &state.plan;
    let present = netns::list();
    let agent = |owner: &str, name: &str| {
        state.agents.get(owner).map(|pid| AgentStatus {
            owner: owner.to_string(),
            name: name.to_string(),
            pid: *pid,
            running: crate::kernel::runtime::alive(*pid as i32),
        })
    };
    let agent_name = plan.profile.agent_name();
    let nodes: Vec<NodeStatus> = plan
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            namespace: n.ns.clone(),
            switch: n.switch.clone(),
            ip: format!("{}/{}", n.ip, n.prefix_len),
            mtu: n.mtu,
            extra_ifaces: n
                .extra_ifaces
                .iter()
                .map(|x| IfaceStatus {
                    name: x.ifname.clone(),
                    switch: x.switch.clone(),
                    ip: format!("{}/{}", x.ip, x.prefix_len),
                    mtu: x.mtu,
                })
                .collect(),
            pod_subnet: Some(plan.profile.pod_subnets(&n.name))
                .filter(|s| !s.is_empty())
                .map(|s| s.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")),
            overlay: plan
                .profile
                .overlay(&n.name)
                .map(|(device, mtu)| OverlayStatus { device, mtu }),
            agent: agent(&n.name, agent_name),
            present: present.contains(&n.ns),
            profile: plan.profile.node_status(&n.name, &state.paths()),
        })
        .collect();
    let routers: Vec<RouterStatus> = plan
        .routers
        .iter()
        .map(|r| RouterStatus {
            name: r.name.clone(),
            namespace: r.ns.clone(),
            ports: r
                .ports
                .iter()
                .map(|p| RouterPortStatus {
                    switch: p.switch.clone(),
                    ifname: p.ifname.clone(),
                    ip: format!("{}/{}", p.ip, p.prefix_len),
                    mtu: p.mtu,
                })
                .collect(),
            asn: r.asn,
            agent: r.bird.as_ref().and_then(|_| agent(&r.name, "bird")),
            present: present.contains(&r.ns),
        })
        .collect();
    let agents = nodes
        .iter()
        .filter_map(|n| n.agent.clone())
        .chain(routers.iter().filter_map(|r| r.agent.clone()))
        .collect();
    Status {
        lab: plan.lab.clone(),
        phase: state.phase,
        topology_file: state.topology_file.clone(),
        settings: settings(plan),
        switches: plan
            .switches
            .iter()
            .map(|s| SwitchStatus {
                name: s.name.clone(),
                subnet: s.subnet.to_string(),
                mtu: s.mtu,
            })
            .collect(),
        routers,
        nodes,
        pods: pods(state),
        agents,
        bgp_sessions: bgp_sessions(state),
        faults: faults(state),
        etcd: etcd_status(state, &present),
        policies: policy_list(state),
        overlay_peers: plan
            .profile
            .overlay_peers(&state.paths())
            .into_iter()
            .map(|mut p| {
                let running = state
                    .agents
                    .get(&p.on)
                    .is_some_and(|pid| crate::kernel::runtime::alive(*pid as i32));
                if !running {
                    p.state = "router not running".into();
                }
                p
            })
            .collect(),
    }
}

fn pods(state: &LabState) -> Vec<PodStatus> {
    let plan = &state.plan;
    plan.pods()
        .map(|(n, p)| {
            let key = format!("{}/{}", n.name, p.name);
            let st = state.pods.get(&key);
            PodStatus {
                namespace: p.ns.clone(),
                ip: st.and_then(|s| s.ip.clone()),
                // A profile with a fixed pod gateway gives it; else the CNI result's.
                gateway: match plan.profile.pod_gateway() {
                    Some(g) => Some(g.to_string()),
                    None => st.and_then(|s| s.gateway.map(|g| g.to_string())),
                },
                mtu: plan.profile.pod_mtu(&n.name).unwrap_or(n.mtu),
                name: key,
                k8s_namespace: p.meta.namespace.clone(),
                labels: p.meta.labels.clone(),
            }
        })
        .collect()
}

/// The BGP sessions as BIRD reports them now, through the same control
/// socket query as `probe bgp`; a lab without BIRD has none.
fn bgp_sessions(state: &LabState) -> Vec<BgpSessionStatus> {
    let plan = &state.plan;
    let has_bird = plan.routers.iter().any(|r| r.bird.is_some()) || !plan.profile.node_birds().is_empty();
    if !has_bird {
        return Vec::new();
    }
    let mut owner_of: BTreeMap<String, String> = BTreeMap::new();
    for n in &plan.nodes {
        owner_of.insert(n.ip.to_string(), n.name.clone());
        for x in &n.extra_ifaces {
            owner_of.insert(x.ip.to_string(), n.name.clone());
        }
    }
    for r in &plan.routers {
        for p in &r.ports {
            owner_of.insert(p.ip.to_string(), r.name.clone());
        }
    }
    let Ok(bgp) = crate::observe::probe::bgp(state, None) else {
        return Vec::new();
    };
    bgp.sessions
        .into_iter()
        .map(|(on, name, neighbor, state)| BgpSessionStatus {
            on,
            name,
            peer: owner_of.get(&neighbor).cloned(),
            neighbor,
            established: state == "Established",
            state,
        })
        .collect()
}

fn faults(state: &LabState) -> Vec<FaultStatus> {
    state
        .faults
        .iter()
        .map(|f| {
            let mut options = match serde_json::to_value(&f.spec) {
                Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
                _ => BTreeMap::new(),
            };
            options.remove("kind");
            options.remove("on");
            FaultStatus {
                id: f.id.clone(),
                kind: f.spec.kind().to_string(),
                on: f.spec.on().to_string(),
                options,
                description: f.spec.describe(),
                note: f.note.clone(),
            }
        })
        .collect()
}

/// A table as text, without the padding comfy-table leaves at line ends.
/// A one-line description of the network, e.g. `flannel vxlan (VNI 1, port 8472)`.
pub fn network_line(plan: &Plan) -> String {
    plan.profile.describe()
}

/// The node and pod tables.
pub fn tables(s: &Status) -> String {
    let overlay = s
        .nodes
        .iter()
        .find_map(|n| n.overlay.as_ref().map(|o| o.device.clone()));
    let mut header = vec!["NODE", "IP", "SWITCH", "POD SUBNET", "eth0 MTU"];
    let overlay_header = overlay.as_ref().map(|o| format!("{o} MTU"));
    if let Some(h) = &overlay_header {
        header.push(h);
    }
    header.push("AGENT");
    let mut nodes = table(&header);
    for n in &s.nodes {
        let mut row = vec![
            n.name.clone(),
            std::iter::once(n.ip.clone())
                .chain(n.extra_ifaces.iter().map(|x| format!("{} {}", x.name, x.ip)))
                .collect::<Vec<_>>()
                .join(", "),
            std::iter::once(n.switch.clone())
                .chain(n.extra_ifaces.iter().map(|x| x.switch.clone()))
                .collect::<Vec<_>>()
                .join(", "),
            n.pod_subnet.clone().unwrap_or_else(|| "-".into()),
            n.mtu.to_string(),
        ];
        if overlay.is_some() {
            row.push(n.overlay.as_ref().map_or("-".into(), |o| o.mtu.to_string()));
        }
        row.push(match &n.agent {
            Some(a) if a.running => format!("{} running (pid {})", a.name, a.pid),
            Some(a) => format!("{} NOT RUNNING (was pid {})", a.name, a.pid),
            None => "-".into(),
        });
        if !n.present {
            row[0] = format!("{} (namespace missing)", n.name);
        }
        nodes.add_row(row);
    }
    let mut out = text(&nodes);
    if let Some(first) = s.nodes.iter().find(|n| !n.profile.is_empty()) {
        let keys: Vec<String> = first
            .profile
            .iter()
            .map(|(k, _)| k.to_uppercase().replace('_', " "))
            .collect();
        let mut header = vec!["NODE"];
        header.extend(keys.iter().map(String::as_str));
        let mut more = table(&header);
        for n in s.nodes.iter().filter(|n| !n.profile.is_empty()) {
            let mut row = vec![n.name.clone()];
            row.extend(n.profile.iter().map(|(_, v)| v.clone()));
            more.add_row(row);
        }
        out.push_str("\n\n");
        out.push_str(&text(&more));
    }
    if !s.pods.is_empty() {
        // Namespaces and labels only where the topology gives pods some.
        let identity = s
            .pods
            .iter()
            .any(|p| p.k8s_namespace != "default" || !p.labels.is_empty());
        let mut header = vec!["POD", "IP", "GATEWAY", "MTU"];
        if identity {
            header.extend(["NAMESPACE", "LABELS"]);
        }
        let mut pods = table(&header);
        for p in &s.pods {
            let mut row = vec![
                p.name.clone(),
                p.ip.clone().unwrap_or_else(|| "(none)".into()),
                p.gateway.clone().unwrap_or_else(|| "-".into()),
                p.mtu.to_string(),
            ];
            if identity {
                row.push(p.k8s_namespace.clone());
                row.push(crate::model::identity::labels_text(&p.labels));
            }
            pods.add_row(row);
        }
        out.push_str("\n\n");
        out.push_str(&text(&pods));
    }
    out
}

/// `status` as text.
pub fn render(s: &Status, plan: &Plan) -> String {
    let mut out = format!(
        "lab {} ({}) from {}: {}\n\n",
        s.lab,
        match s.phase {
            Phase::Up => "up",
            Phase::Building => "building, or its up was interrupted",
        },
        s.topology_file,
        network_line(plan)
    );
    let mut set = table(&["SETTING", "VALUE"]);
    for (k, v) in &s.settings {
        set.add_row(vec![k.clone(), v.clone()]);
    }
    for sw in &s.switches {
        set.add_row(vec![
            format!("switch.{}", sw.name),
            format!("{} mtu {}", sw.subnet, sw.mtu),
        ]);
    }
    out.push_str(&text(&set));
    out.push_str("\n\n");
    out.push_str(&tables(s));
    if let Some(e) = &s.etcd {
        out.push_str(&etcd_text(e));
    }
    if !s.policies.is_empty() {
        out.push_str("\n\n");
        out.push_str(policy_table(&s.policies).trim_end());
    }
    if !s.overlay_peers.is_empty() {
        let mut t = table(&["ROUTER ON", "PEER", "ADDRESS", "STATE", "CONNECTIONS", "MACS"]);
        for p in &s.overlay_peers {
            t.add_row(vec![
                p.on.clone(),
                p.peer.clone(),
                p.address.clone(),
                p.state.clone(),
                p.connections.to_string(),
                p.macs.to_string(),
            ]);
        }
        out.push_str("\n\n");
        out.push_str(text(&t).trim_end());
    }
    out.push_str("\n\nfaults: ");
    out.push_str(&if s.faults.is_empty() {
        "none".to_string()
    } else {
        s.faults
            .iter()
            .map(|f| format!("{} {}", f.id, f.description))
            .collect::<Vec<_>>()
            .join(", ")
    });
    out.push('\n');
    out
}

/// The etcd part of `status`: where it runs and the keys it holds.
fn etcd_text(e: &EtcdStatus) -> String {
    let state = match &e.agent {
        Some(a) if a.running => format!("running (pid {})", a.pid),
        Some(a) => format!("NOT running (pid {} is gone)", a.pid),
        None => "not started".to_string(),
    };
    let mut out = format!("\n\netcd at {} ({}), {state}", e.endpoint, e.namespace);
    if let Some(err) = &e.error {
        out.push_str(&format!("\n  cannot read its keys: {err}"));
    } else if let Some(p) = &e.prefix {
        let mut t = table(&["KEY", "VALUE"]);
        for k in &e.keys {
            t.add_row(vec![k.key.clone(), k.value.clone()]);
        }
        out.push_str(&format!(", {} keys under {p}/\n\n", e.keys.len()));
        out.push_str(&text(&t));
    }
    out
}

/// The summary `up` prints.
pub fn up_summary(s: &Status, plan: &Plan, total: Duration, phases: &[(String, Duration)]) -> String {
    let mut out = format!(
        "lab {} is up: {} nodes, {} pods, {}, in {:.2} s\n",
        s.lab,
        s.nodes.len(),
        s.pods.len(),
        network_line(plan),
        total.as_secs_f64()
    );
    let ph: Vec<String> = phases
        .iter()
        .map(|(n, d)| format!("{n} {:.0} ms", d.as_secs_f64() * 1000.0))
        .collect();
    out.push_str(&format!("phases: {}\n\n", ph.join(", ")));
    out.push_str(&tables(s));
    out.push('\n');
    if let (Some(a), Some(b)) = (s.pods.first(), s.pods.last()) {
        if let Some(ip) = b.ip.as_ref().and_then(|i| i.split('/').next()) {
            out.push_str(&format!("\nlook around:  cnilab exec {} -- ping -c1 {ip}\n", a.name));
        }
    } else {
        out.push('\n');
    }
    out.push_str(&format!(
        "              cnilab status; cnilab snapshot; cnilab down {}\n",
        s.lab
    ));
    out
}

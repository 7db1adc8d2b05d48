//! Faults (cli.md, "Faults"): what breaks real clusters, injected into a
//! running lab, recorded in its state with what is needed to revert it, and
//! fully reverted by `rm`: the snapshot after `rm` equals the one before `add`.

use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use rtnetlink::LinkUnspec;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

use crate::build::{Handle, create_ns, start_agent, wait_ready};
use crate::error::Error;
pub use crate::faultspec::{Fault, FaultSpec, fault_spec, lines, touched_sysctls};
use crate::faultspec::{Target, resolve, sysctl_path};
use crate::netns::{self, Netns};
use crate::nl::{self, Nl, link_name};
use crate::paths;
use crate::plan::{Stream, mac_string, random_mac, rng};
use crate::profile::Plan;
use crate::progress::Progress;
use crate::state::LabState;

fn wrong_target(plan: &Plan, kind: &str, target: &str, wants: &str) -> anyhow::Error {
    let names: Vec<String> = match wants {
        "a switch" => plan.switches.iter().map(|s| s.name.clone()).collect(),
        "a node or pod" => plan
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(plan.pods().map(|(n, p)| format!("{}/{}", n.name, p.name)))
            .collect(),
        "a node or router" => plan
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(plan.routers.iter().map(|r| r.name.clone()))
            .collect(),
        _ => plan.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let shown: Vec<String> = names.iter().take(10).cloned().collect();
    Error::usage(
        format!(
            "fault {kind} needs {wants} as target, and \"{target}\" is not one in lab {}",
            plan.lab
        ),
        format!(
            "use --on with one of: {}{}",
            shown.join(", "),
            if names.len() > 10 { ", ..." } else { "" }
        ),
    )
    .into()
}

/// A lab's namespaces opened for a fault.
struct Ctx<'a> {
    plan: &'a Plan,
}

impl Ctx<'_> {
    fn open(&self, ns: &str) -> Result<Handle> {
        let ns = Netns::open(ns)?;
        let nl = Nl::connect_in(&ns)?;
        Ok(Handle { ns, nl })
    }

    fn fabric(&self) -> Result<Handle> {
        self.open(&self.plan.fabric_ns)
    }
}

fn mtu_of(l: &LinkMessage) -> u32 {
    crate::overlay::link_mtu(l).unwrap_or(0)
}

fn master_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(m) => Some(*m),
        _ => None,
    })
}

async fn set_mtu(nl: &Nl, index: u32, mtu: u32) -> Result<()> {
    nl.change(RouteNetlinkMessage::SetLink(
        LinkUnspec::new_with_index(index).mtu(mtu).build(),
    ))
    .await
    .map_err(|e| anyhow!("setting MTU {mtu}: {e}"))
}

async fn set_link(nl: &Nl, index: u32, up: bool) -> Result<()> {
    let b = LinkUnspec::new_with_index(index);
    let msg = if up { b.up().build() } else { b.down().build() };
    nl.change(RouteNetlinkMessage::SetLink(msg))
        .await
        .map_err(|e| anyhow!("setting link state: {e}"))
}

/// The bridge of a switch and its ports, in the fabric.
async fn switch_ports(fnl: &Nl, switch: &str) -> Result<(LinkMessage, Vec<LinkMessage>)> {
    let links = fnl.links().await?;
    let bridge = links
        .iter()
        .find(|l| link_name(l) == Some(switch))
        .cloned()
        .with_context(|| format!("switch {switch} is missing from the fabric"))?;
    let ports = links
        .into_iter()
        .filter(|l| master_of(l) == Some(bridge.header.index))
        .collect();
    Ok((bridge, ports))
}

/// Removes learned (not permanent) ARP entries, optionally only for `only`.
async fn flush_arp(nl: &Nl, only: Option<Ipv4Addr>) -> Result<()> {
    for n in nl.neighbours(AddressFamily::Inet, false).await? {
        if matches!(n.header.state, NeighbourState::Permanent | NeighbourState::Noarp) {
            continue;
        }
        if let Some(ip) = only {
            if crate::snapshot::neigh_dst(&n) != Some(ip) {
                continue;
            }
        }
        let _ = nl.change(RouteNetlinkMessage::DelNeighbour(n)).await;
    }
    Ok(())
}

fn iptables_rules(id: &str, proto: Option<(&str, u16)>, percent: Option<f64>) -> Vec<Vec<String>> {
    let mut m: Vec<String> = Vec::new();
    if let Some((p, port)) = proto {
        m.extend(["-p".into(), p.into(), "--dport".into(), port.to_string()]);
    }
    if let Some(pc) = percent {
        m.extend(["-m", "statistic", "--mode", "random", "--probability"].map(String::from));
        m.push(format!("{}", pc / 100.0));
    }
    let tag = [
        "-m".to_string(),
        "comment".into(),
        "--comment".into(),
        format!("cnilab fault {id}"),
    ];
    let rule = |table: &str, chain: &str, dir: &str| -> Vec<String> {
        let mut r = vec!["-t".to_string(), table.into(), chain.into(), dir.into(), "eth0".into()];
        r.extend(m.iter().cloned());
        r.extend(tag.iter().cloned());
        r.extend(["-j".into(), "DROP".into()]);
        r
    };
    // Ingress before routing, egress after it: both directions of the link.
    vec![rule("raw", "PREROUTING", "-i"), rule("mangle", "POSTROUTING", "-o")]
}

fn iptables(ns: &Netns, op: &str, rule: &[String]) -> Result<()> {
    let mut args: Vec<&str> = vec![&rule[0], &rule[1], op];
    args.extend(rule[2..].iter().map(String::as_str));
    netns::run_in(ns, "iptables", &args).map(drop).map_err(|e| {
        if e.to_string().contains("cannot run") {
            Error::env("iptables is not installed", "apt-get install iptables").into()
        } else {
            e
        }
    })
}

fn agent_owner_ns<'a>(plan: &'a Plan, on: &str, kind: &str) -> Result<&'a str> {
    match resolve(plan, on) {
        Some(Target::Node(n)) => Ok(&n.ns),
        Some(Target::Router(r)) if r.bird.is_some() => Ok(&r.ns),
        _ => Err(wrong_target(plan, kind, on, "a node or router")),
    }
}

fn stop_process(pid: u32) {
    crate::teardown::stop_processes(&[pid as i32]);
}

/// Adds a fault to a lab; returns it as recorded.
pub async fn add(state: &mut LabState, spec: FaultSpec, progress: &Progress) -> Result<Fault> {
    state.fault_seq += 1;
    let id = format!("f{}", state.fault_seq);
    let plan = state.plan.clone();
    let ctx = Ctx { plan: &plan };
    let mut note = None;
    let undo = match &spec {
        FaultSpec::Mtu { on, mtu } => {
            let Some(Target::Switch(sw)) = resolve(&plan, on) else {
                return Err(wrong_target(&plan, "mtu", on, "a switch"));
            };
            if !(68..=65535).contains(mtu) {
                return Err(Error::usage(
                    format!("--mtu {mtu} is not a valid MTU"),
                    "use a value from 68 to 65535",
                )
                .into());
            }
            let f = ctx.fabric()?;
            let (bridge, ports) = switch_ports(&f.nl, &sw.name).await?;
            let mut old = Vec::new();
            for p in &ports {
                old.push(json!([link_name(p), mtu_of(p)]));
                set_mtu(&f.nl, p.header.index, *mtu).await?;
            }
            set_mtu(&f.nl, bridge.header.index, *mtu).await?;
            json!({ "bridge": mtu_of(&bridge), "ports": old })
        }
        FaultSpec::UpstreamVxlan { on } => {
            let Some(Target::Switch(sw)) = resolve(&plan, on) else {
                return Err(wrong_target(&plan, "upstream-vxlan", on, "a switch"));
            };
            upstream_vxlan_add(&ctx, &sw.name).await?
        }
        FaultSpec::ArpSuppress { on } => match resolve(&plan, on) {
            Some(Target::Node(n)) => {
                let h = ctx.open(&n.ns)?;
                let key = "net/ipv4/conf/all/arp_ignore";
                let old = h.ns.run(|| netns::read_sysctl(key))?;
                // 8: do not reply to ARP for any local address (arp_ignore).
                h.ns.run(|| netns::write_sysctl(key, "8"))?;
                // Entries learned before would hide the effect until they expire.
                for p in &n.pods {
                    flush_arp(&ctx.open(&p.ns)?.nl, None).await?;
                }
                for o in plan.nodes.iter().filter(|o| o.switch == n.switch && o.name != n.name) {
                    flush_arp(&ctx.open(&o.ns)?.nl, Some(n.ip)).await?;
                }
                json!({ "old": old })
            }
            Some(Target::Switch(sw)) => arp_suppress_switch(&ctx, &sw.name, true, &Value::Null).await?,
            _ => return Err(wrong_target(&plan, "arp-suppress", on, "a node or switch")),
        },
        FaultSpec::LinkDown { on } => {
            let Some(Target::Node(n)) = resolve(&plan, on) else {
                return Err(wrong_target(&plan, "link-down", on, "a node"));
            };
            let f = ctx.fabric()?;
            let idx =
                f.nl.index(&n.port)
                    .await?
                    .context("the node's switch port is missing")?;
            set_link(&f.nl, idx, false).await?;
            Value::Null
        }
        FaultSpec::Loss { on, percent } => {
            let Some(Target::Node(n)) = resolve(&plan, on) else {
                return Err(wrong_target(&plan, "loss", on, "a node"));
            };
            if !(0.0..=100.0).contains(percent) {
                return Err(Error::usage(format!("--percent {percent} is not a percentage"), "use 0 to 100").into());
            }
            let h = ctx.open(&n.ns)?;
            let loss = format!("{percent}%");
            match netns::run_in(
                &h.ns,
                "tc",
                &["qdisc", "add", "dev", "eth0", "root", "netem", "loss", &loss],
            ) {
                Ok(_) => json!({ "netem": true }),
                Err(_) => {
                    note = Some("this kernel has no netem (sch_netem); the loss is an iptables statistic match".into());
                    let rules = iptables_rules(&id, None, Some(*percent));
                    for r in &rules {
                        iptables(&h.ns, "-A", r)?;
                    }
                    json!({ "iptables": rules })
                }
            }
        }
        FaultSpec::Block { on, proto, port } => {
            let Some(Target::Node(n)) = resolve(&plan, on) else {
                return Err(wrong_target(&plan, "block", on, "a node"));
            };
            if proto != "udp" && proto != "tcp" {
                return Err(Error::usage(
                    format!("--proto {proto} is not udp or tcp"),
                    "use --proto udp or --proto tcp",
                )
                .into());
            }
            let h = ctx.open(&n.ns)?;
            let rules = iptables_rules(&id, Some((proto, *port)), None);
            for r in &rules {
                iptables(&h.ns, "-A", r)?;
            }
            json!({ "iptables": rules })
        }
        FaultSpec::Sysctl { on, key, value } => {
            let ns = match resolve(&plan, on) {
                Some(Target::Node(n)) => n.ns.clone(),
                Some(Target::Pod(p)) => p.ns.clone(),
                _ => return Err(wrong_target(&plan, "sysctl", on, "a node or pod")),
            };
            let h = ctx.open(&ns)?;
            let path = sysctl_path(key);
            let old = h.ns.run(|| netns::read_sysctl(&path)).map_err(|e| {
                anyhow::Error::from(Error::usage(
                    format!("{e:#}"),
                    "name an existing sysctl, e.g. --key net.ipv4.ip_forward",
                ))
            })?;
            h.ns.run(|| netns::write_sysctl(&path, value))?;
            json!({ "old": old })
        }
        FaultSpec::AgentDown { on } => {
            agent_owner_ns(&plan, on, "agent-down")?;
            let pid = *state
                .agents
                .get(on.as_str())
                .with_context(|| format!("{on} has no agent"))?;
            stop_process(pid);
            json!({ "pid": pid })
        }
        FaultSpec::AgentRestart { on, new_mac } => {
            let ns = agent_owner_ns(&plan, on, "agent-restart")?.to_string();
            let mac = if *new_mac {
                let Some(dev) = plan.profile.overlay(on).map(|o| o.0) else {
                    return Err(Error::usage(
                        format!(
                            "--new-mac needs a VXLAN agent, and {on} runs {}",
                            plan.profile.agent_name()
                        ),
                        "leave out --new-mac, or use a VXLAN topology",
                    )
                    .into());
                };
                let mut r = rng(
                    plan.topology.seed.wrapping_add(u64::from(state.fault_seq)),
                    Stream::Macs,
                );
                let mac = mac_string(&random_mac(&mut r));
                Some((dev, mac))
            } else {
                None
            };
            restart_agent(state, &ns, on, mac.as_ref(), progress).await?;
            json!({ "new_mac": mac.map(|m| m.1) })
        }
    };
    let fault = Fault { id, spec, undo, note };
    state.faults.push(fault.clone());
    state.save()?;
    Ok(fault)
}

/// Stops an agent and starts it again (after deleting its VXLAN device and
/// with `mac` as its VTEP MAC, as a reboot with a new MAC would), then waits
/// for it and for the control plane.
async fn restart_agent(
    state: &mut LabState,
    ns: &str,
    owner: &str,
    mac: Option<&(String, String)>,
    progress: &Progress,
) -> Result<()> {
    let plan = state.plan.clone();
    let paths = state.paths();
    let mut spec = plan
        .profile
        .agents(&plan, &paths)
        .into_iter()
        .find(|a| a.owner == owner)
        .with_context(|| format!("{owner} has no agent"))?;
    if let Some(pid) = state.agents.get(owner) {
        stop_process(*pid);
    }
    let handle = Netns::open(ns)?;
    if let Some((dev, new)) = mac {
        let nl = Nl::connect_in(&handle)?;
        if let Some(idx) = nl.index(dev).await? {
            nl.change(RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(idx).build()))
                .await?;
        }
        for a in spec.args.iter_mut().filter(|a| a.starts_with("--vtep-mac=")) {
            *a = format!("--vtep-mac={new}");
        }
    }
    let pid = start_agent(&spec, &handle)?;
    state.agents.insert(owner.to_string(), pid);
    state.save()?;
    wait_ready(
        &[(owner.to_string(), spec.ready.clone(), pid, spec.log.clone(), spec.name)],
        progress,
    )
    .await?;
    crate::build::converge_running(&plan, &paths, progress).await
}

/// Removes one fault, restoring what it changed.
pub async fn remove(state: &mut LabState, id: &str, progress: &Progress) -> Result<Fault> {
    let pos = state.faults.iter().position(|f| f.id == id).ok_or_else(|| {
        let ids: Vec<String> = state
            .faults
            .iter()
            .map(|f| format!("{} ({})", f.id, f.spec.describe()))
            .collect();
        anyhow::Error::from(Error::usage(
            format!("lab {} has no fault {id}", state.plan.lab),
            if ids.is_empty() {
                "there are no faults; `cnilab fault ls` lists them".to_string()
            } else {
                format!("active faults: {}", ids.join(", "))
            },
        ))
    })?;
    let fault = state.faults[pos].clone();
    let plan = state.plan.clone();
    let ctx = Ctx { plan: &plan };
    match &fault.spec {
        FaultSpec::Mtu { .. } => {
            let f = ctx.fabric()?;
            let links = f.nl.links().await?;
            let index = |name: &str| {
                links
                    .iter()
                    .find(|l| link_name(l) == Some(name))
                    .map(|l| l.header.index)
            };
            for p in fault.undo["ports"].as_array().into_iter().flatten() {
                if let (Some(name), Some(mtu)) = (p[0].as_str(), p[1].as_u64()) {
                    if let Some(i) = index(name) {
                        set_mtu(&f.nl, i, mtu as u32).await?;
                    }
                }
            }
            if let Some(i) = index(fault.spec.on()) {
                set_mtu(&f.nl, i, fault.undo["bridge"].as_u64().unwrap_or(1500) as u32).await?;
            }
        }
        FaultSpec::UpstreamVxlan { on } => upstream_vxlan_remove(&ctx, on, &fault.undo).await?,
        FaultSpec::ArpSuppress { on } => match resolve(&plan, on) {
            Some(Target::Node(n)) => {
                let h = ctx.open(&n.ns)?;
                let old = fault.undo["old"].as_str().unwrap_or("0").to_string();
                h.ns.run(|| netns::write_sysctl("net/ipv4/conf/all/arp_ignore", &old))?;
            }
            _ => {
                arp_suppress_switch(&ctx, on, false, &fault.undo).await?;
            }
        },
        FaultSpec::LinkDown { on } => {
            let n = plan.node(on).context("node vanished from the plan")?;
            let f = ctx.fabric()?;
            let idx =
                f.nl.index(&n.port)
                    .await?
                    .context("the node's switch port is missing")?;
            set_link(&f.nl, idx, true).await?;
        }
        FaultSpec::Loss { on, .. } | FaultSpec::Block { on, .. } => {
            let n = plan.node(on).context("node vanished from the plan")?;
            let h = ctx.open(&n.ns)?;
            if fault.undo["netem"] == json!(true) {
                netns::run_in(&h.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"])?;
            }
            for r in fault.undo["iptables"].as_array().into_iter().flatten() {
                let rule: Vec<String> = serde_json::from_value(r.clone())?;
                iptables(&h.ns, "-D", &rule)?;
            }
        }
        FaultSpec::Sysctl { on, key, .. } => {
            let ns = match resolve(&plan, on) {
                Some(Target::Node(n)) => n.ns.clone(),
                Some(Target::Pod(p)) => p.ns.clone(),
                _ => bail!("target {on} vanished"),
            };
            let h = ctx.open(&ns)?;
            let old = fault.undo["old"].as_str().unwrap_or_default().to_string();
            let path = sysctl_path(key);
            h.ns.run(|| netns::write_sysctl(&path, &old))?;
        }
        FaultSpec::AgentDown { on } => {
            let ns = agent_owner_ns(&plan, on, "agent-down")?.to_string();
            restart_agent(state, &ns, on, None, progress).await?;
        }
        FaultSpec::AgentRestart { on, .. } => {
            if let Some(new_mac) = fault.undo["new_mac"].as_str() {
                let ns = agent_owner_ns(&plan, on, "agent-restart")?.to_string();
                let (dev, _) = plan.profile.overlay(on).context("no overlay")?;
                let original = plan
                    .profile
                    .agents(&plan, &state.paths())
                    .into_iter()
                    .find(|a| a.owner == *on)
                    .and_then(|a| {
                        a.args
                            .iter()
                            .find_map(|x| x.strip_prefix("--vtep-mac=").map(str::to_string))
                    })
                    .context("no original MAC")?;
                restart_agent(state, &ns, on, Some(&(dev.clone(), original)), progress).await?;
                // Resync: peers drop what they still hold for the MAC that is gone.
                let gone = nl::parse_mac(new_mac).context("bad recorded MAC")?;
                for n in plan.nodes.iter().filter(|n| n.name != *on) {
                    let h = ctx.open(&n.ns)?;
                    forget_mac(&h.nl, &dev, gone).await?;
                }
            }
        }
    }
    state.faults.remove(pos);
    state.save()?;
    Ok(fault)
}

/// Deletes FDB entries and neighbours on `dev` that point at `mac`.
async fn forget_mac(nl: &Nl, dev: &str, mac: [u8; 6]) -> Result<()> {
    let Some(idx) = nl.index(dev).await? else { return Ok(()) };
    let has_mac = |n: &NeighbourMessage| {
        n.attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(m) if m.as_slice() == mac))
    };
    for family in [AddressFamily::Bridge, AddressFamily::Inet] {
        for n in nl.neighbours(family, false).await? {
            if n.header.ifindex == idx && has_mac(&n) {
                let _ = nl.change(RouteNetlinkMessage::DelNeighbour(n)).await;
            }
        }
    }
    Ok(())
}

/// The switch answers ARP only from its own neighbour table, as an EVPN
/// switch with ARP suppression does, and floods no request: the table gets
/// the hosts a control plane would have learned (nodes and routers, with
/// static FDB entries so they never age out); anything else goes
/// unanswered. Linux's neigh_suppress port flag only acts on requests that
/// arrive from other ports (it is meant for a VXLAN uplink), so on a switch
/// where every port faces a host the ports get the bridge's proxy_arp flag,
/// which does exactly this from every port.
async fn arp_suppress_switch(ctx: &Ctx<'_>, switch: &str, on: bool, undo: &Value) -> Result<Value> {
    let f = ctx.fabric()?;
    let (bridge, ports) = switch_ports(&f.nl, switch).await?;
    for p in &ports {
        // Port options travel in IFLA_INFO_SLAVE_DATA, which only RTM_NEWLINK applies.
        let mut msg = LinkMessage::default();
        msg.header.index = p.header.index;
        msg.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![
                netlink_packet_route::link::InfoBridgePort::ProxyARP(on),
            ])),
        ])];
        f.nl.change(RouteNetlinkMessage::NewLink(msg))
            .await
            .map_err(|e| anyhow!("ARP suppression on a port of {switch}: {e}"))?;
    }
    let plan = ctx.plan;
    if !on {
        for e in undo["entries"].as_array().into_iter().flatten() {
            let ip: Ipv4Addr = e["ip"].as_str().unwrap_or_default().parse()?;
            let mac = nl::parse_mac(e["mac"].as_str().unwrap_or_default()).context("bad recorded MAC")?;
            let port = f.nl.index(e["port"].as_str().unwrap_or_default()).await?;
            let _ =
                f.nl.change(RouteNetlinkMessage::DelNeighbour(nl::neighbour(
                    bridge.header.index,
                    ip,
                    mac,
                )))
                .await;
            if let Some(port) = port {
                let _ =
                    f.nl.change(RouteNetlinkMessage::DelNeighbour(static_fdb(port, mac)))
                        .await;
            }
        }
        return Ok(Value::Null);
    }
    let mut hosts: Vec<(String, String, &str, Ipv4Addr)> = Vec::new();
    for n in plan.nodes.iter().filter(|n| n.switch == switch) {
        hosts.push((n.ns.clone(), "eth0".into(), n.port.as_str(), n.ip));
    }
    for r in &plan.routers {
        for p in r.ports.iter().filter(|p| p.switch == switch) {
            hosts.push((r.ns.clone(), p.ifname.clone(), p.fabric_port.as_str(), p.ip));
        }
    }
    // The gateway stays reachable, as an EVPN fabric's anycast gateway does.
    for u in plan
        .switches
        .iter()
        .filter(|s| s.name == switch)
        .filter_map(|s| s.uplink.as_ref())
    {
        hosts.push((u.ns.clone(), u.ifname.clone(), u.fabric_port.as_str(), u.ip));
    }
    let mut entries = Vec::new();
    for (ns, ifname, port, ip) in hosts {
        let h = ctx.open(&ns)?;
        let link = h.nl.link(&ifname).await?.context("host interface missing")?;
        let mac = crate::overlay::link_mac(&link).context("host interface without MAC")?;
        let port_idx = f.nl.index(port).await?.context("switch port missing")?;
        f.nl.replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(
            bridge.header.index,
            ip,
            mac,
        )))
        .await
        .map_err(|e| anyhow!("neighbour entry on {switch}: {e}"))?;
        f.nl.replace(RouteNetlinkMessage::NewNeighbour(static_fdb(port_idx, mac)))
            .await
            .map_err(|e| anyhow!("static FDB entry on {switch}: {e}"))?;
        flush_arp(&h.nl, None).await?;
        entries.push(json!({ "ip": ip.to_string(), "mac": mac_string(&mac), "port": port }));
    }
    Ok(json!({ "entries": entries }))
}

/// A static FDB entry of a bridge port (`bridge fdb add MAC dev PORT master static`).
fn static_fdb(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = port;
    m.header.state = NeighbourState::Noarp;
    m.header.flags = NeighbourFlags::Controller;
    m.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
    m
}

/// The upstream VXLAN hop: every port of the switch is moved behind its own
/// leaf (a namespace with a bridge and a VXLAN device), and the leaves reach
/// each other over a core bridge whose links carry 1500 bytes. A frame that
/// fits the switch's 1500 no longer fits once wrapped in 50 bytes of VXLAN
/// with DF set: it is dropped, with no ICMP for the node that sent it.
async fn upstream_vxlan_add(ctx: &Ctx<'_>, switch: &str) -> Result<Value> {
    let f = ctx.fabric()?;
    let (_, ports) = switch_ports(&f.nl, switch).await?;
    if ports.is_empty() {
        bail!("switch {switch} has no ports");
    }
    let lab = &ctx.plan.lab;
    let core_name = paths::infra_ns(lab, &format!("upstream-{switch}"));
    let (core_ns, core) = create_ns(core_name.clone(), &[]).await?;
    core.add(nl::bridge("core", 1500))
        .await
        .map_err(|e| anyhow!("core bridge: {e}"))?;
    let core_br = core.index("core").await?.context("core bridge vanished")?;
    let mut undo_ports = Vec::new();
    let mut namespaces = vec![core_name.clone()];
    let addr = |i: usize| Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);
    let mut leaves = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let leaf_name = paths::infra_ns(lab, &format!("upstream-{switch}-{i}"));
        namespaces.push(leaf_name.clone());
        let (leaf_ns, leaf) = create_ns(leaf_name.clone(), &[]).await?;
        leaf.change(nl::set_up(1)).await?;
        // The 1500-byte link from the leaf to the core.
        core.add(nl::veth_pair(
            &format!("leaf{i}"),
            Some(core_br),
            "uplink",
            leaf_ns.raw_fd(),
            1500,
        ))
        .await
        .map_err(|e| anyhow!("leaf uplink: {e}"))?;
        let up = leaf.index("uplink").await?.context("uplink missing")?;
        leaf.add(nl::address(up, addr(i), 16)).await?;
        leaf.change(nl::set_up(up)).await?;
        leaf.add(nl::bridge("br", 1500)).await?;
        let br = leaf.index("br").await?.context("leaf bridge missing")?;
        leaf.add(upstream_vtep(addr(i), i))
            .await
            .map_err(|e| anyhow!("leaf VXLAN device: {e}"))?;
        let vx = leaf.index("vx").await?.context("leaf VXLAN device missing")?;
        leaf.change(RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(vx).controller(br).up().build(),
        ))
        .await?;
        // Move the switch port (the node's or router's cable) to the leaf.
        let name = link_name(p).unwrap_or_default().to_string();
        undo_ports.push(json!({ "name": name, "mtu": mtu_of(p), "leaf": leaf_name }));
        let mv = LinkUnspec::new_with_index(p.header.index)
            .setns_by_fd(leaf_ns.raw_fd())
            .build();
        f.nl.change(RouteNetlinkMessage::SetLink(mv))
            .await
            .map_err(|e| anyhow!("moving {name} to its leaf: {e}"))?;
        let moved = leaf.index(&name).await?.context("moved port missing")?;
        leaf.change(RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(moved).controller(br).up().build(),
        ))
        .await?;
        leaves.push((leaf_ns, leaf, vx));
    }
    // Head-end replication: every leaf floods to every other.
    for (i, (_, leaf, vx)) in leaves.iter().enumerate() {
        for j in (0..leaves.len()).filter(|j| *j != i) {
            leaf.send(
                RouteNetlinkMessage::NewNeighbour(nl::fdb(*vx, [0; 6], addr(j))),
                netlink_packet_core::NLM_F_REQUEST
                    | netlink_packet_core::NLM_F_ACK
                    | netlink_packet_core::NLM_F_CREATE
                    | netlink_packet_core::NLM_F_APPEND,
            )
            .await
            .map_err(|e| anyhow!("flood entry: {e}"))?;
        }
    }
    drop(core_ns);
    Ok(json!({ "ports": undo_ports, "namespaces": namespaces }))
}

/// A leaf's VTEP: VNI 100, no lower device (so it takes 1500-byte frames),
/// learning, outer DF set so oversize packets are dropped, not fragmented.
fn upstream_vtep(local: Ipv4Addr, i: usize) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = netlink_packet_route::link::LinkFlags::Up;
    msg.header.change_mask = netlink_packet_route::link::LinkFlags::Up;
    msg.attributes = vec![
        LinkAttribute::IfName("vx".into()),
        LinkAttribute::Mtu(1500),
        // A fixed MAC per leaf keeps snapshots taken under the fault stable.
        LinkAttribute::Address(vec![0x02, 0, 0, 0xfa, (i >> 8) as u8, i as u8]),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(100),
                InfoVxlan::Local(local),
                InfoVxlan::Port(4789),
                InfoVxlan::Learning(true),
                InfoVxlan::Df(VxlanDf::Set),
            ])),
        ]),
    ];
    RouteNetlinkMessage::NewLink(msg)
}

async fn upstream_vxlan_remove(ctx: &Ctx<'_>, switch: &str, undo: &Value) -> Result<()> {
    let f = ctx.fabric()?;
    let bridge = f.nl.index(switch).await?.context("switch missing")?;
    for p in undo["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let leaf = ctx.open(p["leaf"].as_str().unwrap_or_default())?;
        let Some(idx) = leaf.nl.index(name).await? else {
            continue;
        };
        let mv = LinkUnspec::new_with_index(idx).setns_by_fd(f.ns.raw_fd()).build();
        leaf.nl
            .change(RouteNetlinkMessage::SetLink(mv))
            .await
            .map_err(|e| anyhow!("moving {name} back: {e}"))?;
        let back = f.nl.index(name).await?.context("moved port missing")?;
        set_mtu(&f.nl, back, p["mtu"].as_u64().unwrap_or(1500) as u32).await?;
        f.nl.change(RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(back).controller(bridge).up().build(),
        ))
        .await?;
    }
    // Names read back from the state: only this lab's namespaces are removed.
    let prefix = crate::paths::lab_ns_prefix(&ctx.plan.lab);
    for ns in undo["namespaces"].as_array().into_iter().flatten() {
        let ns = ns.as_str().unwrap_or_default();
        anyhow::ensure!(
            ns.starts_with(&prefix),
            "the fault's record names {ns:?}, not a namespace of this lab"
        );
        netns::delete(ns)?;
    }
    Ok(())
}

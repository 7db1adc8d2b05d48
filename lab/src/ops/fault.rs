//! Faults (cli.md, "Faults"): what breaks real clusters, injected into a
//! running lab, recorded in its state with what is needed to revert it, and
//! fully reverted by `rm`: the snapshot after `rm` equals the one before `add`.
//!
//! Each kind has one function that applies it (`mtu_add`, `loss_add`, ...)
//! and records every kernel change as an [`Undo`] step the moment it is
//! made; `revert_step` knows how to take back each kind of step. A new
//! fault kind is a [`FaultSpec`] variant, its apply function, and an `Undo`
//! variant only if it makes a kind of change no other fault makes.

use anyhow::{Context, Result, anyhow, bail};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use rtnetlink::LinkUnspec;
use std::net::Ipv4Addr;

use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::{self, Nl, link_name};
use crate::kernel::progress::Progress;
use crate::kernel::runtime::{Handle, start_agent, wait_ready};
use crate::model::error::Error;
use crate::model::faultspec::{Fault, FaultSpec, Undo};
use crate::model::faultspec::{Target, resolve, sysctl_path};
use crate::model::paths;
use crate::model::plan::{Stream, mac_string, random_mac, rng};
use crate::ops::build::create_ns;
use crate::ops::state::LabState;
use crate::profile::Plan;

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
    crate::kernel::nl::link_mtu(l).unwrap_or(0)
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
            // AF_INET entries carry their destination as an IPv4 address.
            let to_ip = |a: &NeighbourAttribute| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if *d == ip);
            if !n.attributes.iter().any(to_ip) {
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
    crate::ops::teardown::stop_processes(&[pid as i32]);
}

/// Adds a fault to a lab; returns it as recorded. Each kernel change is
/// recorded as an [`Undo`] step as it is made: when a later change fails,
/// the steps made so far are reverted (newest first) and the error returned;
/// what could not be reverted stays recorded as the fault, for `rm`.
pub async fn add(state: &mut LabState, spec: FaultSpec, progress: &Progress) -> Result<Fault> {
    state.fault_seq += 1;
    let id = format!("f{}", state.fault_seq);
    let mut undo = Vec::new();
    let note = match apply(state, &id, &spec, &mut undo, progress).await {
        Ok(note) => note,
        Err(e) if undo.is_empty() => return Err(e),
        Err(e) => {
            let failures = revert(state, &undo, progress).await;
            if failures.is_empty() {
                return Err(e.context(format!(
                    "fault {} failed half-way; the {} changes it had made were reverted",
                    spec.describe(),
                    undo.len()
                )));
            }
            let kept: Vec<Undo> = failures.iter().map(|(step, _)| step.clone()).collect();
            let fault = Fault {
                id: id.clone(),
                spec: spec.clone(),
                undo: kept,
                note: Some("recorded after a failed add: what could not be reverted".into()),
            };
            state.faults.push(fault);
            state.save()?;
            return Err(e.context(format!(
                "fault {} failed half-way, and reverting it failed too: {}; \
                 it is recorded as {id}: `cnilab fault rm {id}` tries again",
                spec.describe(),
                failures
                    .iter()
                    .map(|(_, why)| why.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    };
    let fault = Fault { id, spec, undo, note };
    state.faults.push(fault.clone());
    state.save()?;
    Ok(fault)
}

/// Makes the changes of one fault kind, recording each in `undo`; returns a
/// note for the user. One function per kind.
async fn apply(
    state: &mut LabState,
    id: &str,
    spec: &FaultSpec,
    undo: &mut Vec<Undo>,
    progress: &Progress,
) -> Result<Option<String>> {
    let plan = state.plan.clone();
    let ctx = Ctx { plan: &plan };
    match spec {
        FaultSpec::Mtu { on, mtu } => mtu_add(&ctx, on, *mtu, undo).await?,
        FaultSpec::UpstreamVxlan { on } => upstream_vxlan_add(&ctx, on, undo).await?,
        FaultSpec::ArpSuppress { on } => arp_suppress_add(&ctx, on, undo).await?,
        FaultSpec::LinkDown { on } => link_down_add(&ctx, on, undo).await?,
        FaultSpec::Loss { on, percent } => return loss_add(&ctx, id, on, *percent, undo),
        FaultSpec::Block { on, proto, port } => block_add(&ctx, id, on, proto, *port, undo)?,
        FaultSpec::Sysctl { on, key, value } => sysctl_add(&ctx, on, key, value, undo)?,
        FaultSpec::AgentDown { on, reboot } => agent_down_add(state, on, *reboot, undo)?,
        FaultSpec::AgentRestart { on, new_mac } => agent_restart_add(state, on, *new_mac, undo, progress).await?,
        FaultSpec::RuleDel { on } => rule_del_add(state, &ctx, on, undo).await?,
    }
    Ok(None)
}

/// `mtu`: the ports of a switch, then its bridge.
async fn mtu_add(ctx: &Ctx<'_>, on: &str, mtu: u32, undo: &mut Vec<Undo>) -> Result<()> {
    let plan = ctx.plan;
    let Some(Target::Switch(sw)) = resolve(plan, on) else {
        return Err(wrong_target(plan, "mtu", on, "a switch"));
    };
    if !(68..=65535).contains(&mtu) {
        return Err(Error::usage(
            format!("--mtu {mtu} is not a valid MTU"),
            "use a value from 68 to 65535",
        )
        .into());
    }
    let f = ctx.fabric()?;
    let (bridge, ports) = switch_ports(&f.nl, &sw.name).await?;
    for l in ports.iter().chain([&bridge]) {
        let link = link_name(l).unwrap_or_default().to_string();
        set_mtu(&f.nl, l.header.index, mtu)
            .await
            .with_context(|| format!("on {link} of switch {}", sw.name))?;
        undo.push(Undo::Mtu {
            ns: plan.fabric_ns.clone(),
            link,
            mtu: mtu_of(l),
        });
    }
    Ok(())
}

/// `arp-suppress`: on a node or a switch.
async fn arp_suppress_add(ctx: &Ctx<'_>, on: &str, undo: &mut Vec<Undo>) -> Result<()> {
    match resolve(ctx.plan, on) {
        Some(Target::Node(n)) => arp_suppress_node(ctx, n, undo).await,
        Some(Target::Switch(sw)) => arp_suppress_switch(ctx, &sw.name, undo).await,
        _ => Err(wrong_target(ctx.plan, "arp-suppress", on, "a node or switch")),
    }
}

/// `arp-suppress` on a node: it answers no ARP.
async fn arp_suppress_node(ctx: &Ctx<'_>, n: &crate::model::plan::NodePlan, undo: &mut Vec<Undo>) -> Result<()> {
    let h = ctx.open(&n.ns)?;
    let path = "net/ipv4/conf/all/arp_ignore";
    let old = h.ns.run(|| netns::read_sysctl(path))?;
    // 8: do not reply to ARP for any local address (arp_ignore).
    h.ns.run(|| netns::write_sysctl(path, "8"))?;
    undo.push(Undo::Sysctl {
        ns: n.ns.clone(),
        path: path.into(),
        old,
    });
    // Entries learned before would hide the effect until they expire.
    for p in &n.pods {
        flush_arp(&ctx.open(&p.ns)?.nl, None).await?;
    }
    let plan = ctx.plan;
    for o in plan.nodes.iter().filter(|o| o.switch == n.switch && o.name != n.name) {
        flush_arp(&ctx.open(&o.ns)?.nl, Some(n.ip)).await?;
    }
    Ok(())
}

/// `link-down`: the node's port on its switch.
async fn link_down_add(ctx: &Ctx<'_>, on: &str, undo: &mut Vec<Undo>) -> Result<()> {
    let plan = ctx.plan;
    let Some(Target::Node(n)) = resolve(plan, on) else {
        return Err(wrong_target(plan, "link-down", on, "a node"));
    };
    let f = ctx.fabric()?;
    let idx =
        f.nl.index(&n.port)
            .await?
            .context("the node's switch port is missing")?;
    set_link(&f.nl, idx, false).await?;
    undo.push(Undo::LinkDown {
        ns: plan.fabric_ns.clone(),
        link: n.port.clone(),
    });
    Ok(())
}

/// `loss`: netem on the node's eth0, else an iptables statistic match.
fn loss_add(ctx: &Ctx<'_>, id: &str, on: &str, percent: f64, undo: &mut Vec<Undo>) -> Result<Option<String>> {
    let plan = ctx.plan;
    let Some(Target::Node(n)) = resolve(plan, on) else {
        return Err(wrong_target(plan, "loss", on, "a node"));
    };
    if !(0.0..=100.0).contains(&percent) {
        return Err(Error::usage(format!("--percent {percent} is not a percentage"), "use 0 to 100").into());
    }
    let h = ctx.open(&n.ns)?;
    let loss = format!("{percent}%");
    if netns::run_in(
        &h.ns,
        "tc",
        &["qdisc", "add", "dev", "eth0", "root", "netem", "loss", &loss],
    )
    .is_ok()
    {
        undo.push(Undo::Netem {
            ns: n.ns.clone(),
            dev: "eth0".into(),
        });
        return Ok(None);
    }
    add_rules(&h.ns, &n.ns, iptables_rules(id, None, Some(percent)), undo)?;
    Ok(Some(
        "this kernel has no netem (sch_netem); the loss is an iptables statistic match".into(),
    ))
}

/// `block`: iptables drops a protocol and port on the node's eth0 only
/// (`-i eth0` / `-o eth0`, no wildcard), as a security group on the network
/// of eth0 would: a node's further interfaces are left alone.
fn block_add(ctx: &Ctx<'_>, id: &str, on: &str, proto: &str, port: u16, undo: &mut Vec<Undo>) -> Result<()> {
    let plan = ctx.plan;
    let Some(Target::Node(n)) = resolve(plan, on) else {
        return Err(wrong_target(plan, "block", on, "a node"));
    };
    if proto != "udp" && proto != "tcp" {
        return Err(Error::usage(
            format!("--proto {proto} is not udp or tcp"),
            "use --proto udp or --proto tcp",
        )
        .into());
    }
    let h = ctx.open(&n.ns)?;
    add_rules(&h.ns, &n.ns, iptables_rules(id, Some((proto, port)), None), undo)
}

fn add_rules(ns: &Netns, name: &str, rules: Vec<Vec<String>>, undo: &mut Vec<Undo>) -> Result<()> {
    for rule in rules {
        iptables(ns, "-A", &rule)?;
        undo.push(Undo::Iptables {
            ns: name.to_string(),
            rule,
        });
    }
    Ok(())
}

/// `sysctl`: any sysctl of a node or pod.
fn sysctl_add(ctx: &Ctx<'_>, on: &str, key: &str, value: &str, undo: &mut Vec<Undo>) -> Result<()> {
    let plan = ctx.plan;
    let ns = match resolve(plan, on) {
        Some(Target::Node(n)) => n.ns.clone(),
        Some(Target::Pod(p)) => p.ns.clone(),
        _ => return Err(wrong_target(plan, "sysctl", on, "a node or pod")),
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
    undo.push(Undo::Sysctl { ns, path, old });
    Ok(())
}

/// `agent-down`: the agent of a node or router is stopped.
fn agent_down_add(state: &LabState, on: &str, reboot: bool, undo: &mut Vec<Undo>) -> Result<()> {
    agent_owner_ns(&state.plan, on, "agent-down")?;
    let pid = *state.agents.get(on).with_context(|| format!("{on} has no agent"))?;
    stop_process(pid);
    // Restarting it brings its files back, so the one undo covers both.
    undo.push(Undo::AgentStopped { owner: on.to_string() });
    if reboot {
        for f in state.plan.profile.agent_run_files(on, &state.paths()) {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("cannot remove {}: {e}", f.display())),
            }
        }
    }
    Ok(())
}

/// `agent-restart`: with `new_mac`, its VTEP comes back with another MAC.
async fn agent_restart_add(
    state: &mut LabState,
    on: &str,
    new_mac: bool,
    undo: &mut Vec<Undo>,
    progress: &Progress,
) -> Result<()> {
    let plan = state.plan.clone();
    let ns = agent_owner_ns(&plan, on, "agent-restart")?.to_string();
    let mac = if new_mac {
        // A VTEP MAC needs a VXLAN device (flannel udp's flannel0 has no MAC).
        let vtep = plan.profile.vxlan_port().and_then(|_| plan.profile.overlay(on));
        let Some(dev) = vtep.map(|o| o.0) else {
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
        // Recorded first: restarting with the planned MAC is right however
        // far the restart got.
        undo.push(Undo::AgentMac {
            owner: on.to_string(),
            dev: dev.clone(),
            new_mac: mac.clone(),
        });
        Some((dev, mac))
    } else {
        None
    };
    restart_agent(state, &ns, on, mac.as_ref(), progress).await
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
    if let Some(node) = plan.node(owner) {
        let nl = Nl::connect_in(&handle)?;
        plan.profile
            .prepare_agent(node, &nl, mac.map(|(_, new)| new.as_str()))
            .await?;
    }
    let pid = start_agent(&spec, &handle)?;
    state.agents.insert(owner.to_string(), pid);
    state.save()?;
    wait_ready(
        &[(owner.to_string(), spec.ready.clone(), pid, spec.log.clone(), spec.name)],
        progress,
    )
    .await?;
    crate::ops::build::converge_running(&plan, &paths, progress).await
}

/// Removes one fault, reverting its steps newest first. A step that fails
/// does not stop the others: the fault is removed from the state all the
/// same, and the error lists every step that could not be reverted.
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
    let failures = revert(state, &fault.undo, progress).await;
    state.faults.remove(pos);
    state.save()?;
    if failures.is_empty() {
        return Ok(fault);
    }
    let lines: Vec<String> = failures.iter().map(|(_, why)| format!("  - {why}")).collect();
    bail!(
        "fault {} {} is removed, but {} of its {} changes could not be reverted:\n{}",
        fault.id,
        fault.spec.describe(),
        failures.len(),
        fault.undo.len(),
        lines.join("\n")
    )
}

/// Reverts `steps` newest first, going on past failures; returns the steps
/// that failed with why.
async fn revert(state: &mut LabState, steps: &[Undo], progress: &Progress) -> Vec<(Undo, String)> {
    let mut failed = Vec::new();
    for step in steps.iter().rev() {
        if let Err(e) = revert_step(state, step, progress).await {
            failed.push((step.clone(), format!("{step}: {e:#}")));
        }
    }
    failed.reverse();
    failed
}

/// Reverts one step.
async fn revert_step(state: &mut LabState, step: &Undo, progress: &Progress) -> Result<()> {
    let plan = state.plan.clone();
    let ctx = Ctx { plan: &plan };
    // Names read back from the state: only this lab's namespaces are touched.
    let prefix = crate::model::paths::lab_ns_prefix(&plan.lab);
    for ns in step.namespaces() {
        anyhow::ensure!(
            ns.starts_with(&prefix),
            "the fault's record names {ns:?}, not a namespace of this lab"
        );
    }
    match step {
        Undo::Mtu { ns, link, mtu } => {
            let h = ctx.open(ns)?;
            set_mtu(&h.nl, index_of(&h.nl, link).await?, *mtu).await
        }
        Undo::LinkDown { ns, link } => {
            let h = ctx.open(ns)?;
            set_link(&h.nl, index_of(&h.nl, link).await?, true).await
        }
        Undo::Sysctl { ns, path, old } => ctx.open(ns)?.ns.run(|| netns::write_sysctl(path, old)),
        Undo::Netem { ns, dev } => {
            netns::run_in(&ctx.open(ns)?.ns, "tc", &["qdisc", "del", "dev", dev, "root"]).map(drop)
        }
        Undo::Iptables { ns, rule } => iptables(&ctx.open(ns)?.ns, "-D", rule),
        Undo::Namespace { name } => netns::delete(name),
        Undo::PortMoved {
            ns,
            port,
            mtu,
            leaf,
            switch,
        } => port_back(&ctx, ns, port, *mtu, leaf, switch).await,
        Undo::ProxyArp { ns, port } => {
            let h = ctx.open(ns)?;
            set_proxy_arp(&h.nl, index_of(&h.nl, port).await?, false).await
        }
        Undo::ArpEntry {
            ns,
            switch,
            ip,
            mac,
            port,
        } => {
            let h = ctx.open(ns)?;
            let mac = nl::parse_mac(mac).context("bad recorded MAC")?;
            let bridge = index_of(&h.nl, switch).await?;
            // Deleting what is already gone is no failure.
            let _ =
                h.nl.change(RouteNetlinkMessage::DelNeighbour(nl::neighbour(bridge, *ip, mac)))
                    .await;
            if let Some(port) = h.nl.index(port).await? {
                let _ =
                    h.nl.change(RouteNetlinkMessage::DelNeighbour(nl::static_fdb(port, mac)))
                        .await;
            }
            Ok(())
        }
        Undo::Rule { ns, prio, from, table } => {
            let h = ctx.open(ns)?;
            match h
                .nl
                .add(RouteNetlinkMessage::NewRule(from_rule(*prio, *from, *table)))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.is_exists() => Ok(()),
                Err(e) => Err(anyhow!("adding the rule again: {e}")),
            }
        }
        Undo::AgentStopped { owner } => {
            let ns = agent_owner_ns(&plan, owner, "agent-down")?.to_string();
            restart_agent(state, &ns, owner, None, progress).await
        }
        Undo::AgentMac { owner, dev, new_mac } => agent_mac_back(state, &ctx, owner, dev, new_mac, progress).await,
    }
}

/// The index of `link`, which must exist.
async fn index_of(nl: &Nl, link: &str) -> Result<u32> {
    nl.index(link).await?.with_context(|| format!("link {link} is missing"))
}

/// Restarts an agent with its planned VTEP MAC; peers drop what they still
/// hold for the MAC that is gone.
async fn agent_mac_back(
    state: &mut LabState,
    ctx: &Ctx<'_>,
    owner: &str,
    dev: &str,
    new_mac: &str,
    progress: &Progress,
) -> Result<()> {
    let plan = ctx.plan;
    let ns = agent_owner_ns(plan, owner, "agent-restart")?.to_string();
    let original = plan
        .profile
        .planned_vtep_mac(owner)
        .or_else(|| {
            plan.profile
                .agents(plan, &state.paths())
                .into_iter()
                .find(|a| a.owner == owner)
                .and_then(|a| {
                    a.args
                        .iter()
                        .find_map(|x| x.strip_prefix("--vtep-mac=").map(str::to_string))
                })
        })
        .context("no original MAC")?;
    restart_agent(state, &ns, owner, Some(&(dev.to_string(), original)), progress).await?;
    let gone = nl::parse_mac(new_mac).context("bad recorded MAC")?;
    for n in plan.nodes.iter().filter(|n| n.name != owner) {
        let h = ctx.open(&n.ns)?;
        forget_mac(&h.nl, dev, gone).await?;
    }
    Ok(())
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
async fn arp_suppress_switch(ctx: &Ctx<'_>, switch: &str, undo: &mut Vec<Undo>) -> Result<()> {
    let plan = ctx.plan;
    let f = ctx.fabric()?;
    let (bridge, ports) = switch_ports(&f.nl, switch).await?;
    for p in &ports {
        set_proxy_arp(&f.nl, p.header.index, true)
            .await
            .with_context(|| format!("ARP suppression on a port of {switch}"))?;
        undo.push(Undo::ProxyArp {
            ns: plan.fabric_ns.clone(),
            port: link_name(p).unwrap_or_default().to_string(),
        });
    }
    for (ns, ifname, port, ip) in switch_hosts(plan, switch) {
        let h = ctx.open(&ns)?;
        let link = h.nl.link(&ifname).await?.context("host interface missing")?;
        let mac = crate::kernel::nl::link_mac(&link).context("host interface without MAC")?;
        let port_idx = f.nl.index(port).await?.context("switch port missing")?;
        // Recorded first: deleting an entry that was never made is harmless.
        undo.push(Undo::ArpEntry {
            ns: plan.fabric_ns.clone(),
            switch: switch.to_string(),
            ip,
            mac: mac_string(&mac),
            port: port.to_string(),
        });
        f.nl.replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(
            bridge.header.index,
            ip,
            mac,
        )))
        .await
        .map_err(|e| anyhow!("neighbour entry on {switch}: {e}"))?;
        f.nl.replace(RouteNetlinkMessage::NewNeighbour(nl::static_fdb(port_idx, mac)))
            .await
            .map_err(|e| anyhow!("static FDB entry on {switch}: {e}"))?;
        flush_arp(&h.nl, None).await?;
    }
    Ok(())
}

/// Sets or clears the bridge port flag proxy_arp.
async fn set_proxy_arp(nl: &Nl, port: u32, on: bool) -> Result<()> {
    // Port options travel in IFLA_INFO_SLAVE_DATA, which only RTM_NEWLINK applies.
    let mut msg = LinkMessage::default();
    msg.header.index = port;
    msg.attributes = vec![LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![
            netlink_packet_route::link::InfoBridgePort::ProxyARP(on),
        ])),
    ])];
    nl.change(RouteNetlinkMessage::NewLink(msg))
        .await
        .map_err(|e| anyhow!("setting proxy_arp: {e}"))
}

/// The hosts on a switch, as a control plane would know them: (namespace,
/// interface, switch port, address) of its nodes, routers and uplink.
fn switch_hosts<'a>(plan: &'a Plan, switch: &str) -> Vec<(String, String, &'a str, Ipv4Addr)> {
    let mut hosts: Vec<(String, String, &str, Ipv4Addr)> = Vec::new();
    for n in plan.nodes.iter().filter(|n| n.switch == switch) {
        hosts.push((n.ns.clone(), "eth0".into(), n.port.as_str(), n.ip));
    }
    for n in &plan.nodes {
        for x in n.extra_ifaces.iter().filter(|x| x.switch == switch) {
            hosts.push((n.ns.clone(), x.ifname.clone(), x.port.as_str(), x.ip));
        }
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
    hosts
}

/// The upstream VXLAN hop: every port of the switch is moved behind its own
/// leaf (a namespace with a bridge and a VXLAN device), and the leaves reach
/// each other over a core bridge whose links carry 1500 bytes. A frame that
/// fits the switch's 1500 no longer fits once wrapped in 50 bytes of VXLAN
/// with DF set: it is dropped, with no ICMP for the node that sent it.
async fn upstream_vxlan_add(ctx: &Ctx<'_>, on: &str, undo: &mut Vec<Undo>) -> Result<()> {
    let Some(Target::Switch(sw)) = resolve(ctx.plan, on) else {
        return Err(wrong_target(ctx.plan, "upstream-vxlan", on, "a switch"));
    };
    let switch = sw.name.as_str();
    let f = ctx.fabric()?;
    let (_, ports) = switch_ports(&f.nl, switch).await?;
    if ports.is_empty() {
        bail!("switch {switch} has no ports");
    }
    let lab = &ctx.plan.lab;
    let core_name = paths::infra_ns(lab, &format!("upstream-{switch}"));
    let (core_ns, core) = create_ns(core_name.clone(), &[]).await?;
    undo.push(Undo::Namespace { name: core_name });
    core.add(nl::bridge("core", 1500))
        .await
        .map_err(|e| anyhow!("core bridge: {e}"))?;
    let core_br = core.index("core").await?.context("core bridge vanished")?;
    let mut leaves = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let leaf_name = paths::infra_ns(lab, &format!("upstream-{switch}-{i}"));
        let (leaf_ns, leaf) = create_ns(leaf_name.clone(), &[]).await?;
        undo.push(Undo::Namespace {
            name: leaf_name.clone(),
        });
        let vx = upstream_leaf(&core, core_br, &leaf_ns, &leaf, i).await?;
        // Move the switch port (the node's or router's cable) to the leaf.
        let name = link_name(p).unwrap_or_default().to_string();
        let mv = LinkUnspec::new_with_index(p.header.index)
            .setns_by_fd(leaf_ns.raw_fd())
            .build();
        f.nl.change(RouteNetlinkMessage::SetLink(mv))
            .await
            .map_err(|e| anyhow!("moving {name} to its leaf: {e}"))?;
        undo.push(Undo::PortMoved {
            ns: ctx.plan.fabric_ns.clone(),
            port: name.clone(),
            mtu: mtu_of(p),
            leaf: leaf_name,
            switch: switch.to_string(),
        });
        let br = leaf.index("br").await?.context("leaf bridge missing")?;
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
                RouteNetlinkMessage::NewNeighbour(nl::fdb(*vx, [0; 6], upstream_addr(j))),
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
    Ok(())
}

/// The underlay address of leaf `i`.
fn upstream_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Wires leaf `i`: its 1500-byte uplink to the core, its bridge and VTEP;
/// returns the VTEP's index.
async fn upstream_leaf(core: &Nl, core_br: u32, leaf_ns: &Netns, leaf: &Nl, i: usize) -> Result<u32> {
    leaf.change(nl::set_up(1)).await?;
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
    leaf.add(nl::address(up, upstream_addr(i), 16)).await?;
    leaf.change(nl::set_up(up)).await?;
    leaf.add(nl::bridge("br", 1500)).await?;
    let br = leaf.index("br").await?.context("leaf bridge missing")?;
    leaf.add(upstream_vtep(upstream_addr(i), i))
        .await
        .map_err(|e| anyhow!("leaf VXLAN device: {e}"))?;
    let vx = leaf.index("vx").await?.context("leaf VXLAN device missing")?;
    leaf.change(RouteNetlinkMessage::SetLink(
        LinkUnspec::new_with_index(vx).controller(br).up().build(),
    ))
    .await?;
    Ok(vx)
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

/// Moves a switch port back from its leaf to the fabric, onto its switch's
/// bridge, with its MTU; a port already back is only set up again.
async fn port_back(ctx: &Ctx<'_>, ns: &str, port: &str, mtu: u32, leaf: &str, switch: &str) -> Result<()> {
    let f = ctx.open(ns)?;
    let bridge = index_of(&f.nl, switch).await?;
    let l = ctx.open(leaf)?;
    if let Some(idx) = l.nl.index(port).await? {
        let mv = LinkUnspec::new_with_index(idx).setns_by_fd(f.ns.raw_fd()).build();
        l.nl.change(RouteNetlinkMessage::SetLink(mv))
            .await
            .map_err(|e| anyhow!("moving {port} back: {e}"))?;
    }
    let back = index_of(&f.nl, port).await?;
    set_mtu(&f.nl, back, mtu).await?;
    f.nl.change(RouteNetlinkMessage::SetLink(
        LinkUnspec::new_with_index(back).controller(bridge).up().build(),
    ))
    .await?;
    Ok(())
}

/// An IPv4 rule `prio: from <from>/32 lookup <table>`.
fn from_rule(prio: u32, from: Ipv4Addr, table: u32) -> netlink_packet_route::rule::RuleMessage {
    use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.src_len = 32;
    r.header.table = if table < 256 { table as u8 } else { 252 };
    r.attributes = vec![
        RuleAttribute::Priority(prio),
        RuleAttribute::Table(table),
        RuleAttribute::Source(std::net::IpAddr::V4(from)),
    ];
    r
}

/// `rule-del` on NODE/POD: the node's rules `from <podIP>` go (aws-vpc's
/// rule 1536, which sends a secondary ENI's pod out of its own ENI).
async fn rule_del_add(state: &LabState, ctx: &Ctx<'_>, on: &str, undo: &mut Vec<Undo>) -> Result<()> {
    use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
    let Some(Target::Pod(_)) = resolve(ctx.plan, on) else {
        return Err(wrong_target(ctx.plan, "rule-del", on, "a pod (NODE/POD)"));
    };
    let ip: Ipv4Addr = state
        .pods
        .get(on)
        .and_then(|p| p.ip.as_deref())
        .and_then(|ip| ip.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::usage(format!("pod {on} has no address"), "add the pod first"))?;
    let node = on.split('/').next().unwrap_or_default();
    let ns = ctx.plan.node(node).context("planned node")?.ns.clone();
    let h = ctx.open(&ns)?;
    let mut req = RuleMessage::default();
    req.header.family = AddressFamily::Inet;
    let rules =
        h.nl.dump(RouteNetlinkMessage::GetRule(req))
            .await
            .map_err(|e| anyhow!("listing rules: {e}"))?;
    let mut found = 0;
    for m in rules {
        let RouteNetlinkMessage::NewRule(r) = m else { continue };
        let from = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(std::net::IpAddr::V4(s)) => Some(*s),
            _ => None,
        });
        if r.header.src_len != 32 || from != Some(ip) {
            continue;
        }
        let prio = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let prio = prio.unwrap_or(0);
        undo.push(Undo::Rule {
            ns: ns.clone(),
            prio,
            from: ip,
            table,
        });
        h.nl.change(RouteNetlinkMessage::DelRule(from_rule(prio, ip, table)))
            .await
            .map_err(|e| anyhow!("deleting rule {prio}: from {ip} lookup {table}: {e}"))?;
        found += 1;
    }
    if found == 0 {
        bail!("node {node} has no rule `from {ip}` (pods on a secondary ENI of aws-vpc have one, priority 1536)");
    }
    Ok(())
}

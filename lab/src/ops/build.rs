//! `up`: carrying out a plan. The fabric namespace with one bridge per
//! switch, a namespace per node with `eth0` born in it (both veth ends are
//! made in their namespaces by one request), the profile's agents, then each
//! pod's namespace wired by the real CNI chain. Namespaces and links are
//! made concurrently; netlink requests are pipelined on one socket per
//! namespace. Any failure tears the whole lab down again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::RouteNetlinkMessage;

use crate::kernel::cni::{self, Attachment, Runtime};
use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::{self, Nl};
use crate::kernel::progress::Progress;
use crate::kernel::runtime::{Handle, link_binaries, spawn_agent, wait_ready};
use crate::kernel::tools::SYSTEM_CNI_DIRS;
use crate::model::error::Error;
use crate::model::paths::{self, LabPaths};
use crate::model::plan::NodePlan;
use crate::model::topology::Topology;
use crate::ops::state::{LabState, Phase, PodState};
use crate::profile::Built;
use crate::profile::Plan;

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The lab's name instead of the topology's.
    pub name: Option<String>,
    /// The topology file as the user named it.
    pub topology_file: String,
}

/// Checks that the machine has what the topology needs, before anything is made.
pub fn preflight(topology: &Topology) -> Result<(), Error> {
    // Backends cnilab does not build are refused while the topology is
    // read (topology::check_built), as `validate` refuses them.
    let plan = crate::profile::plan_lab(topology, &topology.name, &LabPaths::of(&topology.name));
    let (_, programs) = crate::ops::doctor::needs(&plan);
    let missing = crate::ops::doctor::missing_programs(&programs);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|(p, _)| match p.strip_prefix("cni:") {
                Some(plugin) => format!("the CNI plugin {plugin} (looked in {})", SYSTEM_CNI_DIRS.join(", ")),
                None => format!("{p} (looked in {})", crate::kernel::tools::search_path_text()),
            })
            .collect();
        let packages: std::collections::BTreeSet<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
        return Err(Error::env(
            format!("this topology needs what is not installed: {}", names.join("; ")),
            format!(
                "apt-get install -y {} (`cnilab doctor TOPOLOGY` checks everything)",
                packages.into_iter().collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    plan.profile.preflight()
}

/// Claims a lab name: checks the machine and that no lab of that name
/// exists, then creates the lab's state folder. From here on the lab is
/// ours to remove if anything fails. The caller holds the lab's lock
/// ([`claim_lock`]), so no other command sees the lab half made.
pub fn claim(topology: &Topology, opts: &UpOptions, _held: &crate::kernel::lock::LabLock) -> Result<LabState, Error> {
    let lab = opts.name.clone().unwrap_or_else(|| topology.name.clone());
    crate::model::names::check(crate::model::names::Kind::Lab, &lab, "lab to build")?;
    preflight(topology)?;
    let paths = LabPaths::of(&lab);
    let prefix = paths::lab_ns_prefix(&lab);
    let leftovers = netns::list().into_iter().filter(|n| n.starts_with(&prefix)).count();
    if paths.root.exists() || leftovers > 0 {
        return Err(Error::env(
            format!("lab \"{lab}\" already exists"),
            format!(
                "remove it with `cnilab down {lab}`, or start this one under another name with `cnilab up --name NAME`"
            ),
        ));
    }
    netns::ensure_run_dir()?;
    let plan = crate::profile::plan_lab(topology, &lab, &paths);
    let state = LabState::new(plan, opts.topology_file.clone());
    // Made whole beside it, marker included, then renamed into place: a
    // `kill -9` at any moment leaves either no lab folder or a marked one,
    // which `down` removes (and a `.claim-` folder, which it removes too).
    let claim = paths::claim_dir(&lab);
    let _ = std::fs::remove_dir_all(&claim);
    std::fs::create_dir_all(&claim).with_context(|| format!("cannot create {}", claim.display()))?;
    let marker = claim.join(paths.marker().file_name().expect("marker has a name"));
    std::fs::write(&marker, &lab).with_context(|| format!("cannot write {}", marker.display()))?;
    std::fs::rename(&claim, &paths.root).with_context(|| format!("cannot create {}", paths.root.display()))?;
    if let Ok(text) = std::fs::read_to_string(&opts.topology_file) {
        std::fs::write(paths.topology_copy(), text).context("cannot copy the topology")?;
    }
    state.save()?;
    Ok(state)
}

/// The lock of the lab `opts` names, taken before [`claim`]: a second `up`
/// of the same name is refused at once, naming the one at work.
pub fn claim_lock(topology: &Topology, opts: &UpOptions) -> Result<crate::kernel::lock::LabLock, Error> {
    let lab = opts.name.as_deref().unwrap_or(&topology.name);
    crate::model::names::check(crate::model::names::Kind::Lab, lab, "lab to build")?;
    paths::ensure_state_in_memory();
    crate::kernel::lock::try_acquire(lab)?.ok_or_else(|| crate::kernel::lock::busy(lab))
}

/// [`claim_lock`] then [`claim`]. A claim refused before the lab's folder
/// exists (the machine lacks a program, the name is taken by namespaces
/// only) leaves no lock file behind.
pub fn claim_locked(topology: &Topology, opts: &UpOptions) -> Result<(crate::kernel::lock::LabLock, LabState), Error> {
    let lock = claim_lock(topology, opts)?;
    match claim(topology, opts, &lock) {
        Ok(state) => Ok((lock, state)),
        Err(e) => {
            let lab = opts.name.as_deref().unwrap_or(&topology.name);
            if !LabPaths::of(lab).root.exists() {
                lock.remove();
            }
            Err(e)
        }
    }
}

/// Builds a claimed lab and marks it up.
pub async fn build(state: &mut LabState, progress: &Progress) -> Result<()> {
    let paths = state.paths();
    build_all(state, &paths, progress).await?;
    state.phase = Phase::Up;
    state.save()?;
    Ok(())
}

/// Claims and builds a lab. On failure, or when the future is dropped,
/// what was built is removed. Work already handed to blocking threads can
/// still finish after that; callers that own the runtime should run
/// [`crate::ops::teardown::down`] again once it has shut down, as `cnilab up` does.
pub async fn up(topology: &Topology, opts: &UpOptions, progress: &Progress) -> Result<LabState, Error> {
    let (_lock, mut state) = claim_locked(topology, opts)?;
    let mut guard = TeardownGuard {
        lab: state.plan.lab.clone(),
        armed: true,
    };
    build(&mut state, progress).await?;
    guard.armed = false;
    Ok(state)
}

/// Removes the lab when `up` fails or its future is dropped (Ctrl-C).
struct TeardownGuard {
    lab: String,
    armed: bool,
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = crate::ops::teardown::down(&self.lab) {
                eprintln!("cnilab: cleaning up lab {} failed: {e:#}", self.lab);
            }
        }
    }
}

/// A new namespace with IPv6 off (no link-local addresses, DAD or router
/// solicitations to make snapshots vary) and the given sysctls, with a
/// netlink socket in it.
pub async fn create_ns(name: String, sysctls: &'static [(&'static str, &'static str)]) -> Result<(Netns, Nl)> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        Netns::create(&name, || {
            netns::write_sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            netns::write_sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
            for (k, v) in sysctls {
                netns::write_sysctl(k, v)?;
            }
            let _g = rt.enter();
            Nl::connect()
        })
    })
    .await?
}

/// Sysctls every node gets: a Kubernetes node forwards.
pub const NODE_SYSCTLS: &[(&str, &str)] = &[("net/ipv4/ip_forward", "1")];

/// How many namespaces or plugin runs go on at once.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

async fn build_all(state: &mut LabState, paths: &LabPaths, progress: &Progress) -> Result<()> {
    let plan = state.plan.clone();

    let uplinks = plan.switches.iter().filter(|s| s.uplink.is_some()).count();
    progress.phase("fabric", plan.switches.len() + plan.routers.len() + uplinks);
    let (fabric, fnl) = create_ns(plan.fabric_ns.clone(), &[]).await?;
    let mut bridges = BTreeMap::new();
    for s in &plan.switches {
        fnl.add(nl::bridge(&s.name, s.mtu))
            .await
            .map_err(|e| kernel_error(e, "bridge", &format!("creating switch {}", s.name)))?;
        let idx = fnl.index(&s.name).await?.context("bridge vanished")?;
        bridges.insert(s.name.clone(), idx);
        progress.step();
    }
    probe_kernel(&plan, &fnl).await?;
    let mut routers = BTreeMap::new();
    for r in &plan.routers {
        let (ns, nl) = create_ns(r.ns.clone(), NODE_SYSCTLS).await?;
        nl.change(nl::set_up(1)).await.context("router lo up")?;
        for p in &r.ports {
            fnl.add(nl::veth_pair(
                &p.fabric_port,
                Some(bridges[&p.switch]),
                &p.ifname,
                ns.raw_fd(),
                p.mtu,
            ))
            .await
            .map_err(|e| kernel_error(e, "veth", &format!("joining router {} to switch {}", r.name, p.switch)))?;
            let idx = nl.index(&p.ifname).await?.context("router port missing")?;
            nl.add(nl::address(idx, p.ip, p.prefix_len))
                .await
                .context("router address")?;
            nl.change(nl::set_up(idx)).await.context("router port up")?;
        }
        routers.insert(r.name.clone(), Handle { ns, nl });
        progress.step();
    }
    add_uplinks(&plan, &fnl, &bridges, progress).await?;
    if let Some(pid) = add_etcd(&plan, paths, &fnl, &bridges, progress).await? {
        state
            .agents
            .insert(crate::model::topology::ETCD_TARGET.to_string(), pid);
        state.save()?;
    }

    progress.phase("nodes", plan.nodes.len());
    let handles: Vec<(String, Handle)> = futures::stream::iter(plan.nodes.iter().map(|n| {
        let name = n.name.clone();
        let ns = n.ns.clone();
        async move {
            let (ns, nl) = create_ns(ns, NODE_SYSCTLS).await?;
            progress.step();
            Ok::<_, anyhow::Error>((name, Handle { ns, nl }))
        }
    }))
    .buffer_unordered(4 * parallelism())
    .try_collect()
    .await?;
    let nodes: BTreeMap<String, Handle> = handles.into_iter().collect();

    progress.phase("links", plan.nodes.len());
    futures::future::try_join_all(plan.nodes.iter().map(|n| {
        let h = &nodes[&n.name];
        let fnl = &fnl;
        let bridge = bridges[&n.switch];
        let bridges = &bridges;
        async move {
            fnl.add(nl::veth_pair(&n.port, Some(bridge), "eth0", h.ns.raw_fd(), n.mtu))
                .await
                .map_err(|e| kernel_error(e, "veth", &format!("creating eth0 of node {}", n.name)))?;
            for x in &n.extra_ifaces {
                fnl.add(nl::veth_pair(
                    &x.port,
                    Some(bridges[&x.switch]),
                    &x.ifname,
                    h.ns.raw_fd(),
                    x.mtu,
                ))
                .await
                .map_err(|e| kernel_error(e, "veth", &format!("creating {} of node {}", x.ifname, n.name)))?;
            }
            configure_node(n, &h.nl)
                .await
                .with_context(|| format!("configuring node {}", n.name))?;
            progress.step();
            Ok::<_, anyhow::Error>(())
        }
    }))
    .await?;
    start_watch_service(paths, &fabric, progress).await?;
    drop(fabric);

    let built = Built {
        plan: &plan,
        paths,
        progress,
        nodes,
        routers,
    };
    progress.phase("agents", plan.nodes.len());
    let profile = plan.profile.get();
    state.agents.extend(profile.start(&built).await?);
    state.save()?;
    add_pods(state, &built).await?;
    state.save()?;
    progress.phase("converge", plan.nodes.len());
    profile.converge(&built).await?;
    // The topology's policies, and each node's policy engine (felix
    // programs every endpoint's chains, with policies or without).
    state.policies = plan.topology.policies.clone();
    state.policies.sort_by_key(|p| p.id());
    if profile.enforces_policy() {
        progress.phase("policy", plan.nodes.len());
        crate::ops::policy::program(state).await?;
    }
    progress.finish();
    Ok(())
}

/// Sysctls of an uplink: forwarding off, so it answers for its own address
/// and passes nothing on (a new namespace starts so; written to be sure).
const UPLINK_SYSCTLS: &[(&str, &str)] = &[("net/ipv4/ip_forward", "0")];

/// Gives every switch without a router its uplink: a namespace on the
/// switch holding the gateway address, as the edge of a real network.
async fn add_uplinks(plan: &Plan, fnl: &Nl, bridges: &BTreeMap<String, u32>, progress: &Progress) -> Result<()> {
    for s in &plan.switches {
        let Some(u) = &s.uplink else { continue };
        let (ns, nl) = create_ns(u.ns.clone(), UPLINK_SYSCTLS).await?;
        nl.change(nl::set_up(1)).await.context("uplink lo up")?;
        fnl.add(nl::veth_pair(
            &u.fabric_port,
            Some(bridges[&s.name]),
            &u.ifname,
            ns.raw_fd(),
            s.mtu,
        ))
        .await
        .map_err(|e| kernel_error(e, "veth", &format!("joining the uplink of switch {}", s.name)))?;
        let idx = nl.index(&u.ifname).await?.context("uplink port missing")?;
        nl.add(nl::address(idx, u.ip, u.prefix_len))
            .await
            .with_context(|| format!("the gateway address {} of switch {}", u.ip, s.name))?;
        nl.change(nl::set_up(idx)).await.context("uplink port up")?;
        progress.step();
    }
    Ok(())
}

/// The lab's etcd (`datastore = "etcd"`): its namespace on the first
/// switch, then the real server, waited for until it answers. Returns its PID.
async fn add_etcd(
    plan: &Plan,
    paths: &LabPaths,
    fnl: &Nl,
    bridges: &BTreeMap<String, u32>,
    progress: &Progress,
) -> Result<Option<u32>> {
    let Some(e) = &plan.etcd else { return Ok(None) };
    let program = crate::kernel::tools::require("etcd")?;
    progress.phase("etcd", 1);
    let (ns, nl) = create_ns(e.ns.clone(), &[]).await?;
    nl.change(nl::set_up(1)).await.context("etcd lo up")?;
    fnl.add(nl::veth_pair(
        &e.fabric_port,
        Some(bridges[&e.switch]),
        "eth0",
        ns.raw_fd(),
        e.mtu,
    ))
    .await
    .map_err(|err| kernel_error(err, "veth", &format!("joining etcd to switch {}", e.switch)))?;
    let idx = nl.index("eth0").await?.context("etcd port missing")?;
    nl.add(nl::address(idx, e.ip, e.prefix_len))
        .await
        .with_context(|| format!("etcd's address {}", e.ip))?;
    nl.change(nl::set_up(idx)).await.context("etcd port up")?;
    nl.add(RouteNetlinkMessage::NewRoute(nl::route(
        "0.0.0.0/0".parse()?,
        Some(e.gateway),
        Some(idx),
        false,
    )))
    .await
    .context("etcd's default route")?;
    let dir = paths.etcd_server_dir();
    let pid = crate::kernel::etcd::start(e, &ns, &program, &dir.join("data"), &dir.join("etcd.log")).await?;
    progress.step();
    Ok(Some(pid))
}

/// Tries the devices the lab needs beyond veth and bridge in the fabric, so
/// a missing kernel module is reported before anything else starts.
async fn probe_kernel(plan: &Plan, fnl: &Nl) -> Result<()> {
    let features = plan.profile.kernel_features();
    if features.contains(&"vxlan") {
        let msg = nl::vxlan(
            "cnilab-probe",
            1,
            4789,
            Ipv4Addr::LOCALHOST,
            0,
            1450,
            [2, 0, 0, 0, 0, 1],
        );
        try_device(fnl, msg, "vxlan", "checking VXLAN support").await?;
    }
    if features.contains(&"ipip") {
        try_device(
            fnl,
            nl::ipip("cnilab-probe"),
            "ipip",
            "checking IP-in-IP support (Calico's ipip mode, flannel's ipip backend)",
        )
        .await?;
    }
    if features.contains(&"wireguard") {
        let mut msg = netlink_packet_route::link::LinkMessage::default();
        msg.attributes = vec![
            netlink_packet_route::link::LinkAttribute::IfName("cnilab-probe".into()),
            netlink_packet_route::link::LinkAttribute::LinkInfo(vec![netlink_packet_route::link::LinkInfo::Kind(
                netlink_packet_route::link::InfoKind::Wireguard,
            )]),
        ];
        try_device(
            fnl,
            RouteNetlinkMessage::NewLink(msg),
            "wireguard",
            "checking WireGuard support for flannel's wireguard backend",
        )
        .await?;
    }
    if features.contains(&"tun") {
        // The agent creates its TUN device in its node; here, only that it can.
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
            return Err(Error::env(
                format!("checking TUN support: cannot open /dev/net/tun ({e})"),
                "load the module: modprobe tun",
            )
            .into());
        }
    }
    unbuildable_here(plan)?;
    Ok(())
}

/// What no machine cnilab supports can build, though the topology is valid
/// (exit 3): `validate` and `up` both ask this.
pub fn unbuildable_here(plan: &Plan) -> Result<(), Error> {
    match plan.profile.unbuildable() {
        Some((message, fix)) => Err(Error::env(message, fix)),
        None => Ok(()),
    }
}

/// Waits until a running lab's control plane has converged (after a fault
/// that restarted its agents, say).
pub async fn converge_running(plan: &Plan, paths: &LabPaths, progress: &Progress) -> Result<()> {
    let built = Built::open(plan, paths, progress)?;
    plan.profile.converge(&built).await
}

/// Creates and deletes a device of a kind, reporting a missing module.
async fn try_device(fnl: &Nl, msg: RouteNetlinkMessage, kind: &str, doing: &str) -> Result<()> {
    match fnl.add(msg).await {
        Ok(()) => {
            let idx = fnl.index("cnilab-probe").await?.context("probe device vanished")?;
            let del = rtnetlink::LinkUnspec::new_with_index(idx).build();
            fnl.change(RouteNetlinkMessage::DelLink(del)).await?;
            Ok(())
        }
        Err(e) => Err(kernel_error(e, kind, doing)),
    }
}

/// A kernel refusal, with a clear word when a feature is missing.
fn kernel_error(e: nl::NlError, kind: &str, doing: &str) -> anyhow::Error {
    if e.is_unsupported() {
        return Error::env(
            format!("{doing}: the kernel cannot make {kind} devices ({e})"),
            format!("load the module: modprobe {kind}"),
        )
        .into();
    }
    anyhow!("{doing}: {e}")
}

/// A node's own network settings: lo and eth0 up, eth0's address, the
/// default route via its switch's gateway (a router or the uplink), and
/// each further interface's address, up.
async fn configure_node(n: &NodePlan, nl: &Nl) -> Result<()> {
    nl.change(nl::set_up(1)).await.context("lo up")?;
    let eth0 = nl.index("eth0").await?.context("eth0 missing")?;
    nl.add(nl::address(eth0, n.ip, n.prefix_len))
        .await
        .context("eth0 address")?;
    nl.change(nl::set_up(eth0)).await.context("eth0 up")?;
    // Further interfaces: an address and up; the default route stays on eth0.
    for x in &n.extra_ifaces {
        let idx = nl
            .index(&x.ifname)
            .await?
            .with_context(|| format!("{} missing", x.ifname))?;
        nl.add(nl::address(idx, x.ip, x.prefix_len))
            .await
            .with_context(|| format!("{} address", x.ifname))?;
        nl.change(nl::set_up(idx))
            .await
            .with_context(|| format!("{} up", x.ifname))?;
    }
    if let Some(gw) = n.gateway {
        let r = nl::route("0.0.0.0/0".parse().expect("valid"), Some(gw), Some(eth0), false);
        nl.add(RouteNetlinkMessage::NewRoute(r))
            .await
            .context("default route")?;
    }
    Ok(())
}

/// Starts the lab's datastore watch service (one inotify instance for all
/// agents) in the fabric namespace and waits for its socket.
async fn start_watch_service(paths: &LabPaths, fabric: &Netns, progress: &Progress) -> Result<()> {
    link_binaries(paths, &["cnilab-watchd"])?;
    let socket = paths.watch_socket();
    let _ = std::fs::remove_file(&socket);
    let log = paths.root.join("watchd.log");
    let args = vec!["--socket".to_string(), socket.display().to_string()];
    let pid = spawn_agent(&paths.bin_dir().join("cnilab-watchd"), &args, fabric, &log)?;
    wait_ready(&[("fabric".to_string(), socket, pid, log, "cnilab-watchd")], progress).await
}

/// The CNI runtime of a node.
pub fn runtime_for(paths: &LabPaths, node: &str, ns: &Netns) -> Runtime {
    let mut cni_path: Vec<PathBuf> = vec![paths.bin_dir()];
    cni_path.extend(SYSTEM_CNI_DIRS.iter().map(PathBuf::from));
    Runtime {
        cni_path,
        cache_dir: paths.cni_state_dir(node),
        node_ns: ns.raw_fd(),
        log: paths.node_dir(node).join("cni/plugins.log"),
    }
}

/// Creates each pod's namespace and runs the CNI ADD of its node's conflist.
/// A node's pods are added one after the other, in topology order, so that
/// host-local hands out the same addresses every time; nodes go in parallel,
/// as many at once as there are cores.
async fn add_pods(state: &mut LabState, b: &Built<'_>) -> Result<()> {
    let plan = b.plan;
    // The sandboxes first, as kubelet makes a pod's namespace before its
    // CNI ADD: many at once, since most of the cost is the kernel's.
    b.progress.phase("sandboxes", plan.pod_count());
    futures::stream::iter(plan.pods().map(|(_, p)| async move {
        let (_ns, pnl) = create_ns(p.ns.clone(), &[]).await?;
        pnl.change(nl::set_up(1)).await.context("lo up")?;
        b.progress.step();
        Ok::<_, anyhow::Error>(())
    }))
    .buffer_unordered(4 * parallelism())
    .try_collect::<Vec<()>>()
    .await?;
    b.progress.phase("pods", plan.pod_count());
    let per_node: Vec<Vec<(String, PodState)>> =
        futures::stream::iter(plan.nodes.iter().filter(|n| !n.pods.is_empty()).map(|n| {
            let rt = runtime_for(b.paths, &n.name, &b.nodes[&n.name].ns);
            let conflist = plan.profile.conflist(&n.name).expect("planned node");
            async move {
                let mut out = Vec::new();
                for p in &n.pods {
                    let att = Attachment::of(p);
                    let who = format!("{}/{}", n.name, p.name);
                    let result = rt
                        .add(conflist, &att)
                        .await
                        .with_context(|| format!("adding pod {who}"))?;
                    let (ip, gateway) = cni::require_ip(&result, &who)?;
                    b.progress.step();
                    out.push((who, PodState { ip: Some(ip), gateway }));
                }
                Ok::<_, anyhow::Error>(out)
            }
        }))
        .buffer_unordered(parallelism())
        .try_collect()
        .await?;
    state.pods.extend(per_node.into_iter().flatten());
    Ok(())
}

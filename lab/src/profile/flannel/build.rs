//! Building flannel in a lab: a flanneld per node, then waiting until every
//! node has its route to every other node's lease.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use std::path::PathBuf;

use anyhow::Context as _;

use super::FlannelPlan;
use super::options::{FlannelBackend, Implementation};
use crate::kernel::netns::Netns;
use crate::kernel::runtime::{link_binaries, main_routes, start_agents};
use crate::model::plan::write_file;
use crate::model::topology::Datastore;
use crate::profile::Profile as _;
use crate::profile::{Built, Plan};

/// Writes flannel's network configuration and the nodes' conflists, starts
/// a flanneld in each node and waits for their subnet files. Returns each
/// agent's (node, PID).
pub async fn start(b: &Built<'_>, f: &FlannelPlan) -> Result<Vec<(String, u32)>> {
    let paths = b.paths;
    match f.implementation {
        Implementation::Builtin => link_binaries(paths, &["flannel", "flanneld"])?,
        Implementation::Upstream => link_upstream(paths, f)?,
    }
    let config = f.net_config.to_string();
    match &b.plan.etcd {
        Some(e) if f.datastore == Datastore::Etcd => {
            // As the administrator's `etcdctl put <prefix>/config` would.
            let ns = Netns::open(&e.ns)?;
            crate::kernel::etcd::put(&ns, &format!("{}/config", f.etcd_prefix), &config).await?;
        }
        _ => {
            let prefix = paths.etcd_dir().join(f.etcd_prefix.trim_start_matches('/'));
            write_file(&prefix.join("config"), &config)?;
            std::fs::create_dir_all(prefix.join("subnets"))?;
        }
    }
    for fnode in &f.nodes {
        write_file(
            &paths.cni_conf_dir(&fnode.node).join(&f.conflist_name),
            &serde_json::to_string_pretty(&fnode.conflist)?,
        )?;
    }
    if f.implementation == Implementation::Builtin {
        return start_agents(b, f.agents(b.plan, paths)).await;
    }
    if f.backend == FlannelBackend::Vxlan {
        precreate_vteps(b, f).await?;
    }
    let pids = start_agents(b, f.agents(b.plan, paths)).await?;
    wait_leases(b, f, &pids).await?;
    Ok(pids)
}

/// The pinned releases `.ci/flannel/build.sh` builds, for messages.
pub const UPSTREAM_INSTALL: &str = "go install github.com/flannel-io/flannel@v0.28.9 (the binary is named flannel: install it as flanneld); go install github.com/flannel-io/cni-plugin@v1.9.1-flannel1 (named cni-plugin: install it as flannel in /opt/cni/bin); or run `bash .ci/flannel/build.sh` from cnilab's repository";

/// The real flanneld and flannel CNI plugin: the topology's paths, else
/// found on the program path (and the CNI folders, for the plugin).
pub fn upstream_programs(f: &FlannelPlan) -> Result<(PathBuf, PathBuf), crate::model::error::Error> {
    use crate::kernel::tools;
    use crate::model::error::Error;
    let named = |key: &str, p: &Option<String>| -> Result<Option<PathBuf>, Error> {
        let Some(p) = p else { return Ok(None) };
        let path = PathBuf::from(p);
        if path.is_file() {
            Ok(Some(path))
        } else {
            Err(Error::env(
                format!("[network.flannel] {key} = \"{p}\" is not a file"),
                format!("give the path of the program, or build it: {UPSTREAM_INSTALL}"),
            ))
        }
    };
    let flanneld = named("flanneld", &f.flanneld)?.or_else(|| tools::find("flanneld"));
    let plugin = named("cni_plugin", &f.cni_plugin)?.or_else(|| {
        tools::find("flannel").or_else(|| {
            tools::SYSTEM_CNI_DIRS
                .iter()
                .map(|d| std::path::Path::new(d).join("flannel"))
                .find(|p| p.is_file())
        })
    });
    match (flanneld, plugin) {
        (Some(d), Some(p)) => Ok((d, p)),
        (d, p) => {
            let mut missing = Vec::new();
            if d.is_none() {
                missing.push("flanneld".to_string());
            }
            if p.is_none() {
                missing.push(format!(
                    "the flannel CNI plugin (flannel, also looked for in {})",
                    tools::SYSTEM_CNI_DIRS.join(", ")
                ));
            }
            Err(Error::env(
                format!(
                    "implementation = \"upstream\" runs the real flannel, but {} is not installed (searched {})",
                    missing.join(" and "),
                    tools::search_path_text()
                ),
                format!(
                    "{UPSTREAM_INSTALL}; or name them with flanneld = \"...\" and cni_plugin = \"...\" in [network.flannel]"
                ),
            ))
        }
    }
}

/// `bin/flanneld` and `bin/flannel` of the lab point at the real programs,
/// so agents, faults and the CNI runtime find them where they find cnilab's.
fn link_upstream(paths: &crate::model::paths::LabPaths, f: &FlannelPlan) -> Result<()> {
    let (flanneld, plugin) = upstream_programs(f)?;
    let bin = paths.bin_dir();
    std::fs::create_dir_all(&bin)?;
    for (name, target) in [("flanneld", flanneld), ("flannel", plugin)] {
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

/// Makes each node's `flannel.<VNI>` as flanneld would, with the planned
/// MAC: the real flanneld keeps a compatible device it finds (flannel's
/// vxlan/device.go), MAC included, so the lab is the same every time.
async fn precreate_vteps(b: &Built<'_>, f: &FlannelPlan) -> Result<()> {
    futures::future::try_join_all(
        b.plan
            .nodes
            .iter()
            .map(|n| prepare_vtep(f, n, &b.nodes[&n.name].nl, None)),
    )
    .await?;
    Ok(())
}

/// For the real flanneld's VXLAN backend: the node's `flannel.<VNI>` with
/// the planned MAC (or `mac`), made before flanneld starts. Nothing for
/// cnilab's flanneld, which makes it itself, nor for other backends.
pub async fn prepare_vtep(
    f: &FlannelPlan,
    n: &crate::model::plan::NodePlan,
    nl: &crate::kernel::nl::Nl,
    mac: Option<&str>,
) -> Result<()> {
    if f.implementation != Implementation::Upstream || f.backend != FlannelBackend::Vxlan {
        return Ok(());
    }
    let fnode = f.node(&n.name).context("planned node")?;
    let mac = mac.unwrap_or(&fnode.vtep_mac);
    let dev = nl
        .index(&f.iface)
        .await?
        .with_context(|| format!("{} missing", f.iface))?;
    let (local, mtu) = f.public(n);
    let spec = crate::kernel::overlay::VxlanSpec {
        name: f.device.clone().context("vxlan has a device")?,
        vni: f.vni,
        port: f.port,
        local,
        dev,
        mtu: fnode.device_mtu.unwrap_or(mtu),
        mac: crate::kernel::nl::parse_mac(mac).with_context(|| format!("bad MAC {mac}"))?,
    };
    crate::kernel::overlay::ensure_vxlan(nl, &spec).await?;
    Ok(())
}

/// How long the real flanneld gets to take its lease.
const LEASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until every node's real flanneld holds its planned lease in etcd.
async fn wait_leases(b: &Built<'_>, f: &FlannelPlan, pids: &[(String, u32)]) -> Result<()> {
    let e = b.plan.etcd.as_ref().context("upstream flannel has an etcd")?;
    let ns = Netns::open(&e.ns)?;
    let dir = format!("{}/subnets/", f.etcd_prefix);
    let mut backoff = crate::kernel::retry::Backoff::new(
        LEASE_DEADLINE,
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(250),
    );
    loop {
        let kvs = crate::kernel::etcd::get_prefix(&ns, &dir).await?;
        let mut waiting = Vec::new();
        for (n, fnode) in b.plan.nodes.iter().zip(&f.nodes) {
            let owned: Vec<&str> = kvs
                .iter()
                .filter(|(_, v)| v.contains(&format!("\"PublicIP\":\"{}\"", f.public(n).0)))
                .map(|(k, _)| k.as_str())
                .collect();
            let want = format!("{dir}{}-{}", fnode.subnet.network(), fnode.subnet.prefix_len());
            match owned.as_slice() {
                [] => waiting.push(n.name.clone()),
                [k] if *k == want => {}
                other => anyhow::bail!(
                    "the real flanneld on {} leased {} instead of the planned {want}; the lab would not match its plan",
                    n.name,
                    other.join(", ")
                ),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        for (owner, pid) in pids {
            if !crate::kernel::runtime::alive(*pid as i32) {
                let log = b.paths.agent_log(owner);
                anyhow::bail!(
                    "flanneld on {owner} exited before it took its lease; its log ({}):\n{}",
                    log.display(),
                    crate::kernel::runtime::tail(&log, 15)
                );
            }
        }
        if backoff.expired() {
            anyhow::bail!(
                "the real flanneld took no lease in {}s on: {}",
                LEASE_DEADLINE.as_secs(),
                waiting.join(", ")
            );
        }
        backoff.sleep_async().await;
    }
}

/// What flannel programs on each node for every other node's lease:
/// (destination, gateway). The UDP backend has one route, the whole
/// network through `flannel0`, and keeps the leases in its forwarder.
pub fn expected_routes(plan: &Plan, f: &FlannelPlan) -> BTreeMap<String, Vec<(Ipv4Net, Option<Ipv4Addr>)>> {
    plan.nodes
        .iter()
        .map(|n| {
            if f.backend == FlannelBackend::Udp {
                return (n.name.clone(), vec![(f.network, None)]);
            }
            let routes = f
                .nodes
                .iter()
                .zip(&plan.nodes)
                .filter(|(_, other)| other.name != n.name)
                .map(|(fo, other)| {
                    let via = match f.backend {
                        FlannelBackend::HostGw => f.public(other).0,
                        _ => fo.subnet.network(),
                    };
                    (fo.subnet, Some(via))
                })
                .collect();
            (n.name.clone(), routes)
        })
        .collect()
}

/// Waits until every node has a route to every other node's lease.
pub async fn converge(b: &Built<'_>, f: &FlannelPlan) -> Result<()> {
    let want = expected_routes(b.plan, f);
    crate::kernel::runtime::converge("flannel", || async {
        let checks = futures::future::try_join_all(want.iter().map(|(node, routes)| async move {
            let have = main_routes(&b.nodes[node].nl).await?;
            let missing: Vec<String> = routes
                .iter()
                .filter(|(d, g)| !have.contains(&(*d, *g)))
                .map(|(d, g)| match g {
                    Some(g) => format!("{node}: no route to {d} via {g}"),
                    None => format!("{node}: no route to {d}"),
                })
                .collect();
            Ok::<_, anyhow::Error>(missing)
        }))
        .await?;
        Ok(checks.into_iter().flatten().collect())
    })
    .await?;
    b.progress.finish();
    Ok(())
}

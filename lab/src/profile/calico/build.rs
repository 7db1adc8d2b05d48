//! Building Calico in a lab: BIRD in every node (and in routers that peer
//! with nodes) in BGP mode, a felix stand-in per node in VXLAN mode; then
//! waiting until every BGP session is Established and every route is there.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

use super::options::{CalicoMode, CalicoOptions};
use super::{CONFLIST_NAME, CalicoPlan, ipam};
use crate::kernel::bird::{self, BirdPlan};
use crate::kernel::runtime::{link_binaries, main_routes, start_agents};
use crate::model::plan::write_file;
use crate::profile::Built;
use crate::profile::{PodAdd, Profile as _, ProfilePlan, SavePlan};

/// The BIRDs of a lab: (who, control socket, plan), nodes then routers.
pub fn birds(b: &Built<'_>, c: &CalicoPlan) -> Vec<(String, std::path::PathBuf, BirdPlan)> {
    let mut v: Vec<(String, std::path::PathBuf, BirdPlan)> = c
        .nodes
        .iter()
        .filter_map(|n| {
            let plan = n.bird.clone()?;
            Some((n.node.clone(), b.paths.agent_dir(&n.node).join("bird.ctl"), plan))
        })
        .collect();
    v.extend(b.plan.routers.iter().filter_map(|r| {
        let plan = r.bird.clone()?;
        Some((r.name.clone(), b.paths.router_dir(&r.name).join("bird.ctl"), plan))
    }));
    v
}

/// Writes the nodes' conflists and starts the control plane. Returns each
/// agent's (owner, PID).
pub async fn start(b: &Built<'_>, c: &CalicoPlan) -> Result<Vec<(String, u32)>> {
    let paths = b.paths;
    link_binaries(paths, &["calico", "calico-felix"])?;
    for n in &c.nodes {
        write_file(
            &paths.cni_conf_dir(&n.node).join(CONFLIST_NAME),
            &serde_json::to_string_pretty(&n.conflist)?,
        )?;
    }
    start_agents(b, c.agents(b.plan, paths)).await
}

/// Sessions not yet Established, as "who: session (state)".
pub async fn pending_sessions(list: &[(String, std::path::PathBuf, BirdPlan)]) -> Result<Vec<String>> {
    let list = list.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for (who, sock, plan) in &list {
            let seen = bird::sessions(sock).unwrap_or_default();
            for s in &plan.sessions {
                let state = seen.iter().find(|x| x.name == s.name).map(|x| x.state.clone());
                if state.as_deref() != Some("Established") {
                    missing.push(format!(
                        "{who}: BGP session {} with {} (AS {}) is {}",
                        s.name,
                        s.neighbor,
                        s.asn,
                        state.filter(|s| !s.is_empty()).unwrap_or_else(|| "not up".into())
                    ));
                }
            }
        }
        missing
    })
    .await
    .context("session check")
}

/// Waits until every session is Established and every node routes to
/// every block: its own as a blackhole, the others through the peer (BGP)
/// or its tunnel address (VXLAN).
pub async fn converge(b: &Built<'_>, c: &CalicoPlan) -> Result<()> {
    let birds = birds(b, c);
    crate::kernel::runtime::converge("Calico", || async {
        let mut missing = pending_sessions(&birds).await?;
        for n in &c.nodes {
            let have = main_routes(&b.nodes[&n.node].nl).await?;
            missing.extend(missing_routes(c, &n.node, &have));
        }
        Ok(missing)
    })
    .await?;
    b.progress.finish();
    Ok(())
}

/// The block routes `node` lacks, given its main table as (dst, gateway).
fn missing_routes(c: &CalicoPlan, node: &str, have: &[(Ipv4Net, Option<Ipv4Addr>)]) -> Vec<String> {
    let mut missing = Vec::new();
    for o in &c.nodes {
        for block in o.blocks() {
            let ok = if o.node == node {
                have.iter().any(|(d, g)| *d == block && g.is_none())
            } else if c.mode == CalicoMode::Vxlan {
                let gw = o.vxlan.as_ref().map(|t| t.address);
                have.iter().any(|(d, g)| *d == block && *g == gw)
            } else {
                have.iter().any(|(d, g)| *d == block && g.is_some())
            };
            if !ok {
                let what = if o.node == node {
                    "blackhole for its own block"
                } else {
                    "route to"
                };
                missing.push(format!("{node}: no {what} {block} (node {})", o.node));
            }
        }
    }
    missing
}

/// Before a pod is added to its node: when every address of the node's
/// blocks is in use, claims another block as Calico's IPAM does
/// (autoAssign), up to the per-host limit and within `max_pods`. The lab's
/// state (through `save`), the node's conflist and its BIRD (reconfigured)
/// or felix record (followed by every felix) learn the block, and this
/// waits until every node routes it. Nothing happens while the node has room.
pub async fn claim_if_full(c: &CalicoPlan, pod: PodAdd<'_>, save: SavePlan<'_>) -> Result<()> {
    let PodAdd {
        plan,
        paths,
        node,
        in_use,
    } = pod;
    let (Some(i), Some(n)) = (c.nodes.iter().position(|x| x.node == node), plan.node(node)) else {
        return Ok(());
    };
    if in_use < ipam::capacity(c, i, n.max_pods) || n.max_pods.is_some_and(|m| in_use >= u64::from(m)) {
        // Room left, or the node's limit reached: host-local decides, and
        // says "no IP addresses available" when full.
        return Ok(());
    }
    let block = ipam::claim_next(c, i, plan.topology.seed)
        .map_err(|why| anyhow::anyhow!("node {node} needs another IPAM block: {why}"))?;
    let Some(opts) = &plan.topology.network.profile.get::<CalicoOptions>() else {
        bail!("a Calico plan of a topology that is not Calico");
    };
    let mut c2 = c.clone();
    let cn = &mut c2.nodes[i];
    cn.more_blocks.push(block);
    let blocks: Vec<Ipv4Net> = cn.blocks().collect();
    cn.conflist = super::conflist(node, &blocks, cn.pod_mtu, n.max_pods, paths);
    cn.bird = super::node_bird(opts, c.pool, &plan.nodes, &plan.routers, n, &blocks);
    write_file(
        &paths.cni_conf_dir(node).join(CONFLIST_NAME),
        &serde_json::to_string_pretty(&cn.conflist)?,
    )?;
    if let Some(b) = &cn.bird {
        let dir = paths.agent_dir(node);
        write_file(&dir.join("bird.conf"), &b.config)?;
        let sock = dir.join("bird.ctl");
        tokio::task::spawn_blocking(move || bird::query(&sock, "configure"))
            .await?
            .with_context(|| format!("reconfiguring BIRD on {node} for the new block {block}"))?;
    }
    if cn.vxlan.is_some() {
        super::felix::publish_block(&paths.etcd_dir(), node, block)?;
    }
    save(ProfilePlan::new(c2.clone()))?;
    let progress = crate::kernel::progress::Progress::quiet();
    let built = Built::open(plan, paths, &progress)?;
    let birds = birds(&built, &c2);
    crate::kernel::runtime::converge(&format!("the new block {block} of {node}"), || async {
        let mut missing = pending_sessions(&birds).await?;
        for n in &c2.nodes {
            let have = main_routes(&built.nodes[&n.node].nl).await?;
            missing.extend(
                missing_routes(&c2, &n.node, &have)
                    .into_iter()
                    .filter(|m| m.contains(&block.to_string())),
            );
        }
        Ok(missing)
    })
    .await
}

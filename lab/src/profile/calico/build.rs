//! Building Calico in a lab: BIRD in every node (and in routers that peer
//! with nodes) in BGP mode, a felix stand-in per node in VXLAN mode; then
//! waiting until every BGP session is Established and every route is there.

use anyhow::{Context, Result};

use super::{CONFLIST_NAME, CalicoPlan};
use crate::bird::{self, BirdPlan};
use crate::build::{Built, link_binaries, start_agents};
use crate::plan::write_file;
use crate::profile::flannel::build::main_routes;
use crate::state::LabState;
use crate::topology::CalicoMode;

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

/// Writes the nodes' conflists and starts the control plane.
pub async fn start(b: &Built<'_>, state: &mut LabState, c: &CalicoPlan) -> Result<()> {
    let paths = b.paths;
    link_binaries(paths, &["calico", "calico-felix"])?;
    for n in &c.nodes {
        write_file(
            &paths.cni_conf_dir(&n.node).join(CONFLIST_NAME),
            &serde_json::to_string_pretty(&n.conflist)?,
        )?;
    }
    start_agents(b, state).await
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
    crate::build::converge("Calico", || async {
        let mut missing = pending_sessions(&birds).await?;
        for n in &c.nodes {
            let have = main_routes(&b.nodes[&n.node].nl).await?;
            for o in &c.nodes {
                let ok = if o.node == n.node {
                    have.iter().any(|(d, g)| *d == o.block && g.is_none())
                } else if c.mode == CalicoMode::Vxlan {
                    let gw = o.vxlan.as_ref().map(|t| t.address);
                    have.iter().any(|(d, g)| *d == o.block && *g == gw)
                } else {
                    have.iter().any(|(d, g)| *d == o.block && g.is_some())
                };
                if !ok {
                    let what = if o.node == n.node {
                        "blackhole for its own block"
                    } else {
                        "route to"
                    };
                    missing.push(format!("{}: no {what} {} (node {})", n.node, o.block, o.node));
                }
            }
        }
        Ok(missing)
    })
    .await?;
    b.progress.finish();
    Ok(())
}

//! Building Calico in a lab: BIRD in every node (and in routers that peer
//! with nodes) in BGP mode, a felix stand-in per node in VXLAN mode; then
//! waiting until every BGP session is Established and every route is there.

use anyhow::{Context, Result};

use super::{CONFLIST_NAME, CalicoPlan};
use crate::bird::{self, BirdPlan};
use crate::build::{Built, link_binaries, spawn_agent, wait_ready};
use crate::netns::Netns;
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

fn start_bird(ns: &Netns, dir: &std::path::Path, config: &str) -> Result<u32> {
    let conf = dir.join("bird.conf");
    write_file(&conf, config)?;
    let program = bird::binary().context("bird is not installed (apt-get install bird2)")?;
    let args = vec![
        "-f".to_string(),
        "-c".to_string(),
        conf.display().to_string(),
        "-s".to_string(),
        dir.join("bird.ctl").display().to_string(),
    ];
    spawn_agent(&program, &args, ns, &dir.join("agent.log"))
}

/// Writes the nodes' conflists and starts the control plane.
pub async fn start(b: &Built<'_>, state: &mut LabState, c: &CalicoPlan) -> Result<()> {
    let paths = b.paths;
    link_binaries(paths, &["calico", "calico-felix"])?;
    let mut ready = Vec::new();
    for n in &c.nodes {
        write_file(
            &paths.cni_conf_dir(&n.node).join(CONFLIST_NAME),
            &serde_json::to_string_pretty(&n.conflist)?,
        )?;
        let h = &b.nodes[&n.node];
        let dir = paths.agent_dir(&n.node);
        if let Some(bp) = &n.bird {
            let pid = start_bird(&h.ns, &dir, &bp.config)?;
            state.agents.insert(n.node.clone(), pid);
            ready.push((n.node.clone(), dir.join("bird.ctl"), pid, dir.join("agent.log"), "bird"));
        }
        if let Some(t) = &n.vxlan {
            let args = vec![
                format!("--datastore-dir={}", paths.etcd_dir().display()),
                format!("--node={}", n.node),
                "--iface=eth0".to_string(),
                format!("--block={}", n.block),
                format!("--tunnel-addr={}", t.address),
                format!("--vtep-mac={}", t.mac),
            ];
            let log = paths.agent_log(&n.node);
            let pid = spawn_agent(&paths.bin_dir().join("calico-felix"), &args, &h.ns, &log)?;
            state.agents.insert(n.node.clone(), pid);
            ready.push((
                n.node.clone(),
                paths.etcd_dir().join("calico/vxlan").join(&n.node),
                pid,
                log,
                "calico-felix",
            ));
        }
    }
    for r in &b.plan.routers {
        let Some(bp) = &r.bird else { continue };
        let dir = paths.router_dir(&r.name);
        let pid = start_bird(&b.routers[&r.name].ns, &dir, &bp.config)?;
        state.agents.insert(r.name.clone(), pid);
        ready.push((r.name.clone(), dir.join("bird.ctl"), pid, dir.join("agent.log"), "bird"));
    }
    wait_ready(&ready, b.progress).await
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

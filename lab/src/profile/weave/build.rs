//! Building Weave in a lab: the conflist on every node, a `weaver` per
//! node (each makes its bridge and exposes it before it says it is ready),
//! then waiting until every router has every other peer established.

use anyhow::Result;

use super::router::Status;
use super::{CONFLIST, CONFLIST_NAME, WeavePlan};
use crate::kernel::runtime::{link_binaries, start_agents};
use crate::model::plan::write_file;
use crate::profile::{Built, Profile as _};

/// Writes the nodes' conflists, starts the routers. Returns each agent's
/// (node, PID).
pub async fn start(b: &Built<'_>, w: &WeavePlan) -> Result<Vec<(String, u32)>> {
    let paths = b.paths;
    link_binaries(paths, &["weave-net", "weaver"])?;
    for n in &w.nodes {
        write_file(&paths.cni_conf_dir(&n.node).join(CONFLIST_NAME), CONFLIST)?;
    }
    start_agents(b, w.agents(b.plan, paths)).await
}

/// A node's router status, as its status file holds it.
pub fn read_status(paths: &crate::model::paths::LabPaths, node: &str) -> Option<Status> {
    let text = std::fs::read_to_string(paths.agent_dir(node).join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// What is not yet established, as "node: peer (state)".
pub fn pending(paths: &crate::model::paths::LabPaths, w: &WeavePlan) -> Vec<String> {
    let mut missing = Vec::new();
    for n in &w.nodes {
        let Some(s) = read_status(paths, &n.node) else {
            missing.push(format!("{}: no router status yet", n.node));
            continue;
        };
        for o in w.nodes.iter().filter(|o| o.node != n.node) {
            let state = s
                .peers
                .iter()
                .find(|p| p.name == o.peer)
                .map_or("unknown", |p| p.state.as_str());
            if state != "established" {
                missing.push(format!("{}: peer {}({}) is {state}", n.node, o.peer, o.node));
            }
        }
    }
    missing
}

/// Waits until every router has every other peer established.
pub async fn converge(b: &Built<'_>, w: &WeavePlan) -> Result<()> {
    crate::kernel::runtime::converge("Weave", || async { Ok(pending(b.paths, w)) }).await?;
    b.progress.finish();
    Ok(())
}

//! Building flannel in a lab: a flanneld per node, then waiting until every
//! node has its route to every other node's lease.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use super::options::FlannelBackend;
use super::{CONFLIST_NAME, FlannelPlan};
use crate::kernel::runtime::{link_binaries, main_routes, start_agents};
use crate::model::plan::write_file;
use crate::profile::Profile as _;
use crate::profile::{Built, Plan};

/// Writes flannel's network configuration and the nodes' conflists, starts
/// a flanneld in each node and waits for their subnet files. Returns each
/// agent's (node, PID).
pub async fn start(b: &Built<'_>, f: &FlannelPlan) -> Result<Vec<(String, u32)>> {
    let paths = b.paths;
    link_binaries(paths, &["flannel", "flanneld"])?;
    let prefix = paths.etcd_dir().join("coreos.com/network");
    write_file(&prefix.join("config"), &f.net_config.to_string())?;
    std::fs::create_dir_all(prefix.join("subnets"))?;
    for fnode in &f.nodes {
        write_file(
            &paths.cni_conf_dir(&fnode.node).join(CONFLIST_NAME),
            &serde_json::to_string_pretty(&fnode.conflist)?,
        )?;
    }
    start_agents(b, f.agents(b.plan, paths)).await
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
                        FlannelBackend::HostGw => other.ip,
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

//! Adding and removing a pod in a running lab, as kubelet would through the
//! node's CNI chain: a failed ADD is followed by a DEL, and the plugin's own
//! error is what the user sees.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernel::cni::{self, Attachment};
use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::{self, Nl};
use crate::model::error::Error;
use crate::model::plan::PodPlan;
use crate::ops::build::runtime_for;
use crate::ops::state::{LabState, PodState};

fn split(pod: &str) -> Result<(&str, &str)> {
    pod.split_once('/').ok_or_else(|| {
        Error::usage(
            format!("\"{pod}\" is not NODE/POD"),
            "name the pod as NODE/POD, e.g. worker1/web",
        )
        .into()
    })
}

/// A container ID for a pod added later: derived from the seed and the
/// pod's name, so the same steps give the same lab.
fn container_id(seed: u64, node: &str, pod: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{seed}/{node}/{pod}")).digest().bytes();
    let mut s = [0u8; 32];
    s[..20].copy_from_slice(&digest);
    let mut r = ChaCha8Rng::from_seed(s);
    let mut id = [0u8; 32];
    r.fill_bytes(&mut id);
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pod's identity given on the command line: a namespace the lab has,
/// valid labels.
fn check_meta(state: &LabState, m: &crate::model::identity::PodMeta) -> Result<(), Error> {
    use crate::model::identity::{is_label_key, is_label_value};
    let namespaces = state.plan.topology.namespace_names();
    if !namespaces.contains(&m.namespace) {
        return Err(Error::usage(
            format!(
                "the lab has no namespace \"{}\"",
                crate::model::names::excerpt(&m.namespace)
            ),
            format!(
                "use one of: {} (or add a [[namespace]] to the topology)",
                namespaces.join(", ")
            ),
        ));
    }
    for (k, v) in &m.labels {
        if !is_label_key(k) || !is_label_value(v) {
            return Err(Error::usage(
                format!(
                    "`{}={}` is not a valid label",
                    crate::model::names::excerpt(k),
                    crate::model::names::excerpt(v)
                ),
                "write --label KEY=VALUE: a key of letters, digits, '-', '_', '.' (with an optional DNS prefix and '/'), a value of at most 63 of them",
            ));
        }
    }
    Ok(())
}

/// Adds `node/pod`; returns its address.
pub async fn add(state: &mut LabState, pod: &str) -> Result<String> {
    add_as(state, pod, None).await
}

/// Adds `node/pod` with a Kubernetes identity (else the one the topology
/// gave it, or `default` without labels); returns its address.
pub async fn add_as(state: &mut LabState, pod: &str, meta: Option<crate::model::identity::PodMeta>) -> Result<String> {
    let (node, name) = split(pod)?;
    if let Some(m) = &meta {
        check_meta(state, m)?;
    }
    let paths = state.paths();
    let plan = state.plan.clone();
    let n = plan.node(node).ok_or_else(|| {
        Error::usage(
            format!("lab {} has no node \"{node}\"", plan.lab),
            "name an existing node",
        )
    })?;
    if state.pods.contains_key(pod) {
        return Err(Error::usage(
            format!("pod {pod} already exists"),
            format!("remove it first: cnilab pod rm {pod}"),
        )
        .into());
    }
    crate::model::names::check(crate::model::names::Kind::Pod, name, "pod to add")?;
    let p = n
        .pods
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .unwrap_or_else(|| PodPlan {
            name: name.to_string(),
            ns: crate::model::paths::pod_ns(&plan.lab, node, name),
            container_id: container_id(plan.topology.seed, node, name),
            ifname: "eth0".into(),
            meta: Default::default(),
        });
    let p = match meta {
        Some(m) => PodPlan { meta: m, ..p },
        None => p,
    };
    let node_ns = Netns::open(&n.ns)?;
    let runtime = runtime_for(&paths, node, &node_ns);
    let in_use = state
        .pods
        .iter()
        .filter(|(k, p)| k.split_once('/').is_some_and(|(nd, _)| nd == node) && p.ip.is_some())
        .count() as u64;
    let pod_add = crate::profile::PodAdd {
        plan: &plan,
        paths: &paths,
        node,
        in_use,
    };
    let mut save = |profile| {
        state.plan.profile = profile;
        state.save()
    };
    plan.profile.before_pod_add(pod_add, &mut save).await?;
    let conflist = state
        .plan
        .profile
        .conflist(node)
        .context("node without CNI configuration")?
        .clone();
    let rt = tokio::runtime::Handle::current();
    let pns = p.ns.clone();
    let (pod_ns, pnl) = tokio::task::spawn_blocking(move || {
        Netns::create(&pns, || {
            netns::write_sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            netns::write_sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
            let _g = rt.enter();
            Nl::connect()
        })
    })
    .await??;
    pnl.change(nl::set_up(1)).await.context("lo up")?;
    let att = Attachment::of(&p);
    match runtime.add(&conflist, &att).await {
        Ok(result) => {
            let (ip, gateway) = cni::require_ip(&result, pod)?;
            if let Some(node) = state.plan.nodes.iter_mut().find(|x| x.name == node) {
                if !node.pods.iter().any(|x| x.name == p.name) {
                    node.pods.push(p.clone());
                }
            }
            state.pods.insert(
                pod.to_string(),
                PodState {
                    ip: Some(ip.clone()),
                    gateway,
                },
            );
            state.save()?;
            Ok(ip)
        }
        Err(e) => {
            // As kubelet: a failed ADD is cleaned up with a DEL.
            let _ = runtime.del(&conflist, &att).await;
            drop(pod_ns);
            netns::delete(&p.ns)?;
            Err(e.context(format!("adding pod {pod}")))
        }
    }
}

/// Removes `node/pod`: CNI DEL, then its namespace.
pub async fn remove(state: &mut LabState, pod: &str) -> Result<()> {
    let (node, name) = split(pod)?;
    let paths = state.paths();
    let plan = state.plan.clone();
    let p = plan
        .node(node)
        .and_then(|n| n.pods.iter().find(|p| p.name == name))
        .filter(|_| state.pods.contains_key(pod))
        .cloned()
        .ok_or_else(|| {
            Error::usage(
                format!("lab {} has no pod {pod}", plan.lab),
                "see `cnilab status` for the pods",
            )
        })?;
    let node_ns = Netns::open(&plan.node(node).expect("checked").ns)?;
    let runtime = runtime_for(&paths, node, &node_ns);
    let conflist = plan.profile.conflist(node).context("node without CNI configuration")?;
    let att = Attachment::of(&p);
    runtime
        .del(conflist, &att)
        .await
        .with_context(|| format!("removing pod {pod}"))?;
    crate::ops::teardown::stop_processes(&crate::ops::teardown::processes_in(
        &[Netns::open(&p.ns)?.inode()?].into_iter().collect(),
    ));
    netns::delete(&p.ns)?;
    state.pods.remove(pod);
    if let Some(n) = state.plan.nodes.iter_mut().find(|x| x.name == node) {
        n.pods.retain(|x| x.name != name);
    }
    state.save()?;
    Ok(())
}

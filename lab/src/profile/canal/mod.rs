//! Canal: flannel's VXLAN overlay with pods wired by Calico's CNI plugin
//! and policy enforced by felix (Calico's canal.yaml). Each node runs
//! flanneld (cnilab's or the real one, as `[network.canal] implementation`
//! says) for its lease and the VXLAN routes; the `calico` plugin wires each
//! pod as in Calico (a `cali` veth, a /32, `default via 169.254.1.1`) with
//! host-local IPAM over the node's flannel subnet: canal.yaml's conflist
//! says `"subnet": "usePodCidr"`, which the calico plugin replaces with the
//! node's pod CIDR, and under Canal that is flannel's lease. Pods get
//! flannel's MTU, 1450 on a 1500 underlay (canal.yaml's `veth_mtu`).
//! Policy is felix's (`profile/calico/policy.rs`), as in Calico.

use std::net::Ipv4Addr;

use anyhow::Result;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::error::Error;
use crate::model::paths::LabPaths;
use crate::model::plan::NodePlan;
use crate::model::spanned::{Errors, Table};
use crate::model::topology::{Datastore, Options, Parts, ProfileSyntax, Scope, Topology};
use crate::profile::calico::POD_GATEWAY;
use crate::profile::flannel::FlannelPlan;
use crate::profile::flannel::options::{FlannelBackend, FlannelOptions};
use crate::profile::{AgentSpec, Built, Plan, Profile};

/// Canal's stock CNI configuration (canal.yaml's `cni_network_config`).
pub const CONFLIST: &str = include_str!("../../../../plugins/canal/10-canal.conflist");
/// Its file name in a node's CNI configuration folder.
pub const CONFLIST_NAME: &str = "10-canal.conflist";

/// Canal's decisions: flannel's, with Calico's conflist on every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanalPlan {
    /// The overlay, as flannel plans it; each node's conflist is Canal's.
    pub flannel: FlannelPlan,
}

/// How `[network.canal]` is read: flannel's keys, VXLAN only.
pub struct Syntax;

impl ProfileSyntax for Syntax {
    fn name(&self) -> &'static str {
        "canal"
    }

    fn default_pod_cidr(&self) -> &'static str {
        "10.244.0.0/16"
    }

    fn check_nodes(&self, net: &Table, parts: &Parts, errs: &Errors) {
        crate::profile::flannel::options::Syntax.check_nodes(net, parts, errs);
    }

    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options> {
        let o = crate::profile::flannel::options::flannel_options(t, scope, errs)?;
        if o.backend != FlannelBackend::Vxlan {
            let span = t
                .and_then(|t| t.value_span("backend"))
                .unwrap_or_else(|| scope.at.span());
            errs.push(scope.at.err(
                span,
                format!("canal runs flannel's vxlan backend, not {}", o.backend.as_str()),
                "remove `backend`, or use cni = \"flannel\" for other backends",
            ));
            return None;
        }
        Some(crate::profile::to_options(&o))
    }

    fn set_implementation(&self, t: &mut Topology, value: &str) -> Result<(), Error> {
        crate::profile::flannel::options::Syntax.set_implementation(t, value)
    }

    fn datastores(&self) -> &'static [Datastore] {
        &[Datastore::File, Datastore::Etcd]
    }

    fn needs_datastore(&self, options: &Options) -> Option<(Datastore, &'static str)> {
        crate::profile::flannel::options::Syntax.needs_datastore(options)
    }
}

/// Canal in the registry of profiles.
pub const REGISTERED: crate::profile::Registered = crate::profile::Registered {
    syntax: &Syntax,
    plan: |topology, nodes, _routers, paths| {
        crate::profile::ProfilePlan::new(plan(topology, &crate::profile::options_of(topology), nodes, paths))
    },
    programs: &[],
    load: crate::profile::load_as::<CanalPlan>,
    host_link_sysctls: crate::profile::calico::host_link_sysctls,
};

/// Plans Canal: flannel's plan, each node's conflist Canal's.
pub fn plan(topology: &Topology, opts: &FlannelOptions, nodes: &[NodePlan], paths: &LabPaths) -> CanalPlan {
    let mut f = crate::profile::flannel::plan(topology, opts, nodes, paths);
    f.conflist_name = CONFLIST_NAME.to_string();
    for n in &mut f.nodes {
        let mtu = topology.network.mtu.unwrap_or(n.pod_mtu);
        n.conflist = conflist(&n.node, n.subnet, mtu, paths);
    }
    CanalPlan { flannel: f }
}

/// A node's conflist: canal.yaml's, filled in as calico's install does,
/// with `usePodCidr` replaced by the node's flannel subnet (as the calico
/// plugin replaces it with the node's pod CIDR before calling host-local).
pub fn conflist(node: &str, subnet: Ipv4Net, mtu: u32, paths: &LabPaths) -> Value {
    let ranges = json!([[{ "subnet": subnet.to_string() }]]);
    crate::profile::calico::filled_conflist(CONFLIST, node, mtu, paths, ranges)
}

impl Profile for CanalPlan {
    fn name(&self) -> &'static str {
        "canal"
    }

    fn describe(&self) -> String {
        format!(
            "canal: flannel vxlan (VNI {}, port {}), calico plugin, felix policy",
            self.flannel.vni, self.flannel.port
        )
    }

    fn settings(&self, topology: &Topology) -> Vec<(String, String)> {
        self.flannel
            .settings(topology)
            .into_iter()
            .map(|(k, v)| (k.replacen("network.flannel.", "network.canal.", 1), v))
            .filter(|(k, _)| k != "network.canal.backend")
            .collect()
    }

    fn node_agents(&self, node: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec> {
        self.flannel.node_agents(node, paths)
    }

    fn agent_name(&self) -> &'static str {
        self.flannel.agent_name()
    }

    fn etcd_prefix(&self) -> Option<&str> {
        self.flannel.etcd_prefix()
    }

    fn conflist(&self, node: &str) -> Option<&Value> {
        self.flannel.conflist(node)
    }

    fn pod_mtu(&self, node: &str) -> Option<u32> {
        self.flannel.pod_mtu(node)
    }

    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net> {
        self.flannel.pod_subnet(node)
    }

    fn pod_gateway(&self) -> Option<Ipv4Addr> {
        Some(POD_GATEWAY)
    }

    fn overlay(&self, node: &str) -> Option<(String, u32)> {
        self.flannel.overlay(node)
    }

    fn vxlan_port(&self) -> Option<u16> {
        self.flannel.vxlan_port()
    }

    fn tunnel_label(&self) -> Option<String> {
        self.flannel.tunnel_label()
    }

    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>) {
        let (mut lines, pods) = self.flannel.graph_lines(node);
        // No cni0: pods hang off cali veths, each with a /32 route.
        lines.retain(|l| !l.starts_with("cni0 "));
        if let Some(n) = self.flannel.node(node) {
            lines.push(format!("cali veths, pods from {}", n.subnet));
        }
        lines.push("felix: NetworkPolicy".to_string());
        (lines, pods)
    }

    fn address_owners(&self, plan: &Plan) -> Vec<(Ipv4Addr, String, String)> {
        let mut v = self.flannel.address_owners(plan);
        v.retain(|(_, what, _)| !what.starts_with("cni0 "));
        v
    }

    fn kernel_features(&self) -> Vec<&'static str> {
        self.flannel.kernel_features()
    }

    fn programs_needed(&self) -> Vec<String> {
        vec!["ipset".to_string()]
    }

    fn preflight(&self) -> Result<(), Error> {
        self.flannel.preflight()
    }

    fn agent_run_files(&self, node: &str, paths: &LabPaths) -> Vec<std::path::PathBuf> {
        self.flannel.agent_run_files(node, paths)
    }

    fn planned_vtep_mac(&self, node: &str) -> Option<String> {
        self.flannel.planned_vtep_mac(node)
    }

    fn prepare_agent<'a>(
        &'a self,
        node: &'a NodePlan,
        nl: &'a crate::kernel::nl::Nl,
        mac: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        self.flannel.prepare_agent(node, nl, mac)
    }

    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>> {
        Box::pin(async move {
            crate::kernel::runtime::link_binaries(b.paths, &["calico"])?;
            self.flannel.start(b).await
        })
    }

    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>> {
        self.flannel.converge(b)
    }

    fn policy_state(
        &self,
        world: &crate::model::netpol::World,
        policies: &[crate::model::netpol::NetworkPolicy],
        node: &str,
    ) -> Option<crate::profile::PolicyState> {
        Some(crate::profile::calico::policy::policy_state(world, policies, node))
    }
}

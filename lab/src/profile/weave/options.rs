//! Weave Net's options, `[network.weave]`, read by the topology's parser
//! through [`Syntax`]. The IPAM range is `[network] pod_cidr` (weave-kube's
//! `IPALLOC_RANGE`, default `10.32.0.0/12` as in launch.sh), so it is checked
//! against the switches like every profile's pool; here it is also checked
//! to give every node a share that holds its pods.

use serde::{Deserialize, Serialize};

use crate::model::spanned::{Errors, Table};
use crate::model::topology::{Options, ProfileSyntax, Scope};

/// weave-kube's default MTU (`WEAVE_MTU`, site/kubernetes/kube-addon.md).
pub const DEFAULT_MTU: u32 = 1376;

/// How the topology's parser reads Weave's part of `[network]`.
pub struct Syntax;

impl ProfileSyntax for Syntax {
    fn name(&self) -> &'static str {
        "weave"
    }

    fn default_pod_cidr(&self) -> &'static str {
        "10.32.0.0/12"
    }

    fn parse(&self, t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<Options> {
        weave_options(t, scope, errs).map(|o| crate::profile::to_options(&o))
    }
}

/// `[network.weave]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeaveOptions {
    /// `WEAVE_MTU`: the MTU of the bridge, its ports and the pods.
    pub mtu: u32,
}

fn weave_options(t: Option<&Table>, scope: &Scope, errs: &Errors) -> Option<WeaveOptions> {
    let before = errs.count();
    let mut opts = WeaveOptions { mtu: DEFAULT_MTU };
    if let Some(t) = t {
        errs.ok(t.allow(&["mtu"]));
        if let Some(Some(m)) = errs.ok(t.int("mtu", 576, 65535, "mtu = 1376")) {
            opts.mtu = m.v as u32;
        }
    }
    let (cidr, parts) = (scope.pod_cidr, scope.parts);
    if parts.ok && parts.pool {
        // Each peer's share: the range halved until every peer has one
        // (super::shares), minus the range's first and last addresses.
        let n = parts.nodes.len().max(1);
        let halvings = usize::BITS - (n - 1).leading_zeros();
        let share_len = u32::from(cidr.v.prefix_len()) + halvings;
        let pods = parts.nodes.iter().map(|n| n.node.pods.len()).max().unwrap_or(0) as u64;
        // The bridge takes one address of the share, the range's ends are never given.
        let room = if share_len > 32 {
            0
        } else {
            (1u64 << (32 - share_len)).saturating_sub(2)
        };
        if room < pods + 1 {
            errs.push(scope.at.err(
                cidr.span.clone(),
                format!(
                    "pod_cidr {} split among {n} Weave peers gives each a /{share_len} share, too small for the bridge and {pods} pods",
                    cidr.v
                ),
                "use a larger pod_cidr, e.g. pod_cidr = \"10.32.0.0/12\" (Weave's IPALLOC_RANGE default)",
            ));
        }
    }
    (errs.count() == before).then_some(opts)
}

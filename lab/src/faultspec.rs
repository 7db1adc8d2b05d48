//! What a fault is, apart from doing it: its kinds and options as the
//! command line and scenarios give them, the record a lab's state keeps, and
//! what observation shows of active faults. The state, snapshots and status
//! read these without depending on the code that injects faults (`fault`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::profile::Plan;

/// What a fault does, with its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultSpec {
    /// Shrinks a switch's MTU and its ports'; oversize frames are dropped.
    Mtu { on: String, mtu: u32 },
    /// The switch's traffic crosses a real VXLAN hop over a 1500-byte link.
    UpstreamVxlan { on: String },
    /// A node stops answering ARP, or a switch answers ARP only from its table.
    ArpSuppress { on: String },
    /// A node's underlay link goes down.
    LinkDown { on: String },
    /// Random loss on a node's underlay link.
    Loss { on: String, percent: f64 },
    /// Drops a protocol and port on a node's underlay.
    Block { on: String, proto: String, port: u16 },
    /// Sets a sysctl in a node or pod.
    Sysctl { on: String, key: String, value: String },
    /// Stops a node's (or router's) control-plane agent.
    AgentDown { on: String },
    /// Restarts it; with `new_mac` its VTEP comes back with another MAC.
    AgentRestart { on: String, new_mac: bool },
}

impl FaultSpec {
    /// The kind as typed on the command line.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Mtu { .. } => "mtu",
            FaultSpec::UpstreamVxlan { .. } => "upstream-vxlan",
            FaultSpec::ArpSuppress { .. } => "arp-suppress",
            FaultSpec::LinkDown { .. } => "link-down",
            FaultSpec::Loss { .. } => "loss",
            FaultSpec::Block { .. } => "block",
            FaultSpec::Sysctl { .. } => "sysctl",
            FaultSpec::AgentDown { .. } => "agent-down",
            FaultSpec::AgentRestart { .. } => "agent-restart",
        }
    }

    /// The target.
    pub fn on(&self) -> &str {
        match self {
            FaultSpec::Mtu { on, .. }
            | FaultSpec::UpstreamVxlan { on }
            | FaultSpec::ArpSuppress { on }
            | FaultSpec::LinkDown { on }
            | FaultSpec::Loss { on, .. }
            | FaultSpec::Block { on, .. }
            | FaultSpec::Sysctl { on, .. }
            | FaultSpec::AgentDown { on }
            | FaultSpec::AgentRestart { on, .. } => on,
        }
    }

    /// One line: `mtu on tor1 (mtu 1400)`.
    pub fn describe(&self) -> String {
        let opts = match self {
            FaultSpec::Mtu { mtu, .. } => format!(" (mtu {mtu})"),
            FaultSpec::Loss { percent, .. } => format!(" ({percent}%)"),
            FaultSpec::Block { proto, port, .. } => format!(" ({proto} {port})"),
            FaultSpec::Sysctl { key, value, .. } => format!(" ({key} = {value})"),
            FaultSpec::AgentRestart { new_mac: true, .. } => " (new MAC)".to_string(),
            _ => String::new(),
        };
        format!("{} on {}{opts}", self.kind(), self.on())
    }
}

/// An active fault and how to revert it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// `f1`, `f2`, ...
    pub id: String,
    /// What it does.
    pub spec: FaultSpec,
    /// What was there before, for `rm`.
    #[serde(default)]
    pub undo: Value,
    /// A note for the user (a fallback that was used).
    #[serde(default)]
    pub note: Option<String>,
}

/// What a target names in a lab.
pub(crate) enum Target<'a> {
    Node(&'a crate::plan::NodePlan),
    Pod(&'a crate::plan::PodPlan),
    Switch(&'a crate::plan::SwitchPlan),
    Router(&'a crate::plan::RouterPlan),
}

pub(crate) fn resolve<'a>(plan: &'a Plan, target: &str) -> Option<Target<'a>> {
    if let Some((n, p)) = target.split_once('/') {
        let node = plan.node(n)?;
        return node.pods.iter().find(|x| x.name == p).map(Target::Pod);
    }
    plan.node(target)
        .map(Target::Node)
        .or_else(|| plan.switches.iter().find(|s| s.name == target).map(Target::Switch))
        .or_else(|| plan.router(target).map(Target::Router))
}

pub(crate) fn sysctl_path(key: &str) -> String {
    // sysctl(8) writes dots inside interface names as slashes.
    key.split('.')
        .map(|p| p.replace('/', "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The sysctls active faults touched, by namespace (as /proc/sys paths),
/// for snapshots to show.
pub fn touched_sysctls(faults: &[Fault], plan: &Plan) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for f in faults {
        let (on, key) = match &f.spec {
            FaultSpec::Sysctl { on, key, .. } => (on, sysctl_path(key)),
            FaultSpec::ArpSuppress { on } if plan.node(on).is_some() => {
                (on, "net/ipv4/conf/all/arp_ignore".to_string())
            }
            _ => continue,
        };
        let ns = match resolve(plan, on) {
            Some(Target::Node(n)) => n.ns.clone(),
            Some(Target::Pod(p)) => p.ns.clone(),
            _ => continue,
        };
        m.entry(ns).or_default().push(key);
    }
    m
}

/// Faults of a lab as lines for status and snapshots.
pub fn lines(faults: &[Fault]) -> Vec<String> {
    faults
        .iter()
        .map(|f| format!("{} {}", f.id, f.spec.describe()))
        .collect()
}
fn need<T>(v: Option<T>, kind: &str, flag: &str, example: &str) -> Result<T, crate::error::Error> {
    v.ok_or_else(|| {
        crate::error::Error::usage(
            format!("fault {kind} needs --{flag}"),
            format!("e.g. cnilab fault add {kind} {example}"),
        )
    })
}

/// The fault a command line describes.
#[allow(clippy::too_many_arguments)]
pub fn fault_spec(
    kind: &str,
    on: String,
    mtu: Option<u32>,
    percent: Option<f64>,
    proto: Option<String>,
    port: Option<u16>,
    key: Option<String>,
    value: Option<String>,
    new_mac: bool,
) -> Result<FaultSpec, crate::error::Error> {
    use FaultSpec as F;
    Ok(match kind {
        "mtu" => F::Mtu {
            mtu: need(mtu, kind, "mtu", "--on tor1 --mtu 1400")?,
            on,
        },
        "upstream-vxlan" => F::UpstreamVxlan { on },
        "arp-suppress" => F::ArpSuppress { on },
        "link-down" => F::LinkDown { on },
        "loss" => F::Loss {
            percent: need(percent, kind, "percent", "--on worker1 --percent 20")?,
            on,
        },
        "block" => F::Block {
            proto: need(proto, kind, "proto", "--on worker1 --proto udp --port 8472")?,
            port: need(port, kind, "port", "--on worker1 --proto udp --port 8472")?,
            on,
        },
        "sysctl" => F::Sysctl {
            key: need(key, kind, "key", "--on worker1 --key net.ipv4.ip_forward --value 0")?,
            value: need(value, kind, "value", "--on worker1 --key net.ipv4.ip_forward --value 0")?,
            on,
        },
        "agent-down" => F::AgentDown { on },
        "agent-restart" => F::AgentRestart { on, new_mac },
        other => {
            let kinds = [
                "mtu",
                "upstream-vxlan",
                "arp-suppress",
                "link-down",
                "loss",
                "block",
                "sysctl",
                "agent-down",
                "agent-restart",
            ];
            let fix = match crate::spanned::closest(other, &kinds) {
                Some(k) => format!("did you mean {k}? kinds: {}", kinds.join(", ")),
                None => format!("kinds: {}", kinds.join(", ")),
            };
            return Err(crate::error::Error::usage(
                format!("unknown fault kind \"{other}\""),
                fix,
            ));
        }
    })
}

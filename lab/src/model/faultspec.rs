//! What a fault is, apart from doing it: its kinds and options as the
//! command line and scenarios give them, the record a lab's state keeps, and
//! what observation shows of active faults. The state, snapshots and status
//! read these without depending on the code that injects faults (`fault`).

use serde::{Deserialize, Serialize};

use crate::model::plan::Plan;

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
    /// Stops a node's (or router's) control-plane agent; with `reboot` its
    /// files in /run (flannel's subnet file) are gone too, as after a reboot
    /// before the agent started again.
    AgentDown {
        on: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reboot: bool,
    },
    /// Restarts it; with `new_mac` its VTEP comes back with another MAC.
    AgentRestart { on: String, new_mac: bool },
    /// Deletes the node's policy routing rules that match a pod's address
    /// as source (`from <podIP>`, aws-vpc's rule 1536).
    RuleDel { on: String },
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
            FaultSpec::RuleDel { .. } => "rule-del",
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
            | FaultSpec::AgentDown { on, .. }
            | FaultSpec::AgentRestart { on, .. }
            | FaultSpec::RuleDel { on } => on,
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
            FaultSpec::AgentDown { reboot: true, .. } => " (rebooted: its /run files gone)".to_string(),
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
    /// What `rm` reverts: one step per kernel change `add` made, in the
    /// order they were made (`rm` reverts them newest first).
    #[serde(default)]
    pub undo: Vec<Undo>,
    /// A note for the user (a fallback that was used).
    #[serde(default)]
    pub note: Option<String>,
}

/// One kernel change a fault made, with what reverts it. Steps are recorded
/// as the changes are made, so a fault that failed half-way knows exactly
/// what it changed. Namespaces are named in full; [`Undo::namespaces`] lets
/// the state check they are the lab's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Undo {
    /// The MTU of `link` in `ns` was changed from `mtu`.
    Mtu { ns: String, link: String, mtu: u32 },
    /// `link` in `ns` was set down.
    LinkDown { ns: String, link: String },
    /// The sysctl at /proc/sys/`path` in `ns` held `old`.
    Sysctl { ns: String, path: String, old: String },
    /// A netem root qdisc was added on `dev` in `ns`.
    Netem { ns: String, dev: String },
    /// An iptables rule (`-t TABLE CHAIN ...`, without the `-A`) was appended in `ns`.
    Iptables { ns: String, rule: Vec<String> },
    /// Namespace `name` was created.
    Namespace { name: String },
    /// Switch port `port` (with MTU `mtu`) was moved from the fabric `ns`
    /// into namespace `leaf`, away from switch `switch`.
    PortMoved {
        ns: String,
        port: String,
        mtu: u32,
        leaf: String,
        switch: String,
    },
    /// Proxy ARP was turned on for switch port `port` in `ns`.
    ProxyArp { ns: String, port: String },
    /// A neighbour entry `ip` -> `mac` was put on the bridge of `switch`, and
    /// a static FDB entry for `mac` on its port `port`.
    ArpEntry {
        ns: String,
        switch: String,
        ip: std::net::Ipv4Addr,
        mac: String,
        port: String,
    },
    /// The rule `prio: from <from> lookup <table>` was deleted in `ns`.
    Rule {
        ns: String,
        prio: u32,
        from: std::net::Ipv4Addr,
        table: u32,
    },
    /// The agent of `owner` was stopped.
    AgentStopped { owner: String },
    /// The agent of `owner` was restarted with VTEP MAC `new_mac` on `dev`:
    /// it goes back to its planned MAC and peers forget `new_mac`.
    AgentMac {
        owner: String,
        dev: String,
        new_mac: String,
    },
}

impl Undo {
    /// The namespaces the step acts in.
    pub fn namespaces(&self) -> Vec<&str> {
        match self {
            Undo::Mtu { ns, .. }
            | Undo::LinkDown { ns, .. }
            | Undo::Sysctl { ns, .. }
            | Undo::Netem { ns, .. }
            | Undo::Iptables { ns, .. }
            | Undo::ProxyArp { ns, .. }
            | Undo::ArpEntry { ns, .. }
            | Undo::Rule { ns, .. } => vec![ns],
            Undo::Namespace { name } => vec![name],
            Undo::PortMoved { ns, leaf, .. } => vec![ns, leaf],
            Undo::AgentStopped { .. } | Undo::AgentMac { .. } => Vec::new(),
        }
    }
}

impl std::fmt::Display for Undo {
    /// What reverting the step does, for error messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undo::Mtu { ns, link, mtu } => write!(f, "set the MTU of {link} in {ns} back to {mtu}"),
            Undo::LinkDown { ns, link } => write!(f, "set {link} in {ns} up again"),
            Undo::Sysctl { ns, path, old } => write!(f, "set {path} in {ns} back to {old}"),
            Undo::Netem { ns, dev } => write!(f, "delete the netem qdisc of {dev} in {ns}"),
            Undo::Iptables { ns, rule } => write!(f, "delete the iptables rule `{}` in {ns}", rule.join(" ")),
            Undo::Namespace { name } => write!(f, "delete namespace {name}"),
            Undo::PortMoved { port, leaf, switch, .. } => {
                write!(f, "move {port} back from {leaf} to switch {switch}")
            }
            Undo::ProxyArp { ns, port } => write!(f, "turn proxy ARP off on {port} in {ns}"),
            Undo::ArpEntry { switch, ip, mac, .. } => write!(f, "delete the entry {ip} {mac} of switch {switch}"),
            Undo::Rule { ns, prio, from, table } => {
                write!(f, "add the rule {prio}: from {from} lookup {table} in {ns} again")
            }
            Undo::AgentStopped { owner } => write!(f, "start the agent of {owner} again"),
            Undo::AgentMac { owner, .. } => write!(f, "restart the agent of {owner} with its planned MAC"),
        }
    }
}

/// What a target names in a lab.
pub(crate) enum Target<'a> {
    Node(&'a crate::model::plan::NodePlan),
    Pod(&'a crate::model::plan::PodPlan),
    Switch(&'a crate::model::plan::SwitchPlan),
    Router(&'a crate::model::plan::RouterPlan),
    Etcd(&'a crate::model::plan::EtcdPlan),
}

pub(crate) fn resolve<'a, P>(plan: &'a Plan<P>, target: &str) -> Option<Target<'a>> {
    if let Some((n, p)) = target.split_once('/') {
        let node = plan.node(n)?;
        return node.pods.iter().find(|x| x.name == p).map(Target::Pod);
    }
    plan.node(target)
        .map(Target::Node)
        .or_else(|| plan.switches.iter().find(|s| s.name == target).map(Target::Switch))
        .or_else(|| plan.router(target).map(Target::Router))
        .or_else(|| {
            let e = plan
                .etcd
                .as_ref()
                .filter(|_| target == crate::model::topology::ETCD_TARGET)?;
            Some(Target::Etcd(e))
        })
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
pub fn touched_sysctls<P>(faults: &[Fault], plan: &Plan<P>) -> std::collections::BTreeMap<String, Vec<String>> {
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
fn need<T>(v: Option<T>, kind: &str, flag: &str, example: &str) -> Result<T, crate::model::error::Error> {
    v.ok_or_else(|| {
        crate::model::error::Error::usage(
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
    reboot: bool,
) -> Result<FaultSpec, crate::model::error::Error> {
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
        "agent-down" => F::AgentDown { on, reboot },
        "agent-restart" => F::AgentRestart { on, new_mac },
        "rule-del" => F::RuleDel { on },
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
                "rule-del",
            ];
            let fix = match crate::model::spanned::closest(other, &kinds) {
                Some(k) => format!("did you mean {k}? kinds: {}", kinds.join(", ")),
                None => format!("kinds: {}", kinds.join(", ")),
            };
            return Err(crate::model::error::Error::usage(
                format!("unknown fault kind \"{other}\""),
                fix,
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_steps_are_saved_tagged_and_name_their_namespaces() {
        let steps = vec![
            Undo::Mtu {
                ns: "cnilab.a._fabric".into(),
                link: "tor1-w1".into(),
                mtu: 1500,
            },
            Undo::PortMoved {
                ns: "cnilab.a._fabric".into(),
                port: "tor1-w1".into(),
                mtu: 1500,
                leaf: "cnilab.a._upstream-tor1-0".into(),
                switch: "tor1".into(),
            },
            Undo::AgentStopped { owner: "w1".into() },
        ];
        let text = serde_json::to_string(&steps).unwrap();
        assert!(text.starts_with(r#"[{"step":"mtu","ns":"cnilab.a._fabric""#), "{text}");
        assert!(text.contains(r#"{"step":"port-moved""#), "{text}");
        let back: Vec<Undo> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, steps);
        assert_eq!(steps[1].namespaces(), ["cnilab.a._fabric", "cnilab.a._upstream-tor1-0"]);
        assert!(steps[2].namespaces().is_empty());
        assert_eq!(
            steps[0].to_string(),
            "set the MTU of tor1-w1 in cnilab.a._fabric back to 1500"
        );
    }
}

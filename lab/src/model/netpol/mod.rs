//! Kubernetes NetworkPolicy, pure: the world a lab's policies act on (pods
//! with their namespace, labels, address and named ports; namespaces with
//! their labels), the policies as `networking.k8s.io/v1` objects (the
//! Kubernetes API types of `k8s-openapi`), and what their Kubernetes
//! semantics say of a connection (`eval`).

pub mod eval;
pub mod load;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

/// Labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The label Kubernetes gives every namespace (1.21 and later).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol a policy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// As Kubernetes writes it: `TCP`, `UDP`, `SCTP`.
    pub fn k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    /// As iptables writes it: `tcp`, `udp`, `sctp`.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// From Kubernetes' spelling (`TCP`); None for anything else.
    pub fn from_k8s(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// A container port of a pod, which a policy may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPort {
    /// Its name (`serve-80-tcp`), as a policy's `port: serve-80-tcp` names it.
    pub name: String,
    /// Its number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Proto,
}

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// The node it runs on.
    pub node: String,
    /// Its name.
    pub name: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: Labels,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its named container ports.
    pub ports: Vec<PodPort>,
    /// The host-side interface of its veth in the node (`cali...`), where
    /// a policy engine hooks its per-endpoint chains.
    pub host_iface: String,
}

/// What policies act on: the namespaces with their labels (each also
/// carries `kubernetes.io/metadata.name`) and every pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Namespaces by name, with their labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// Every pod, in node order then pod order.
    pub pods: Vec<PodInfo>,
}

impl World {
    /// A namespace's labels (none for one not listed).
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
        l
    }

    /// The pod holding an address.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.ip == ip)
    }
}

/// A policy's namespace (`default` when its metadata names none).
pub fn policy_namespace(p: &NetworkPolicy) -> &str {
    p.metadata.namespace.as_deref().unwrap_or("default")
}

/// A policy's name.
pub fn policy_name(p: &NetworkPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// A policy's `namespace/name`.
pub fn policy_id(p: &NetworkPolicy) -> String {
    format!("{}/{}", policy_namespace(p), policy_name(p))
}

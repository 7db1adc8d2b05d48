//! Kubernetes identity in a topology: a pod's namespace, labels and named
//! ports (`pods = [{ name = "web", namespace = "prod", labels = { app =
//! "web" } }]`), `[[namespace]]` sections with labels for namespaceSelector,
//! and `[network] policies`, the NetworkPolicy manifests a lab starts with.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{InputError, Source};
use super::netpol::load::{is_dns_label, is_port_name, parse_manifests};
pub use super::netpol::load::{is_label_key, is_label_value};
use super::netpol::{Labels, NetworkPolicy, PodPort, Proto, policy_name, policy_namespace};
use super::spanned::{Errors, Item, R, Sp, Table};

/// The namespace of a pod written as a plain name.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A pod's Kubernetes identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Its named container ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PodPort>,
}

impl PodMeta {
    /// Its labels as `k=v,k=v` (sorted by key).
    pub fn labels_text(&self) -> String {
        labels_text(&self.labels)
    }
}

/// Labels as `k=v,k=v` (sorted by key).
pub fn labels_text(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for PodMeta {
    fn default() -> Self {
        PodMeta {
            namespace: DEFAULT_NAMESPACE.into(),
            labels: Labels::new(),
            ports: Vec::new(),
        }
    }
}

/// `[[namespace]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// A policy in force, and the file it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The manifest file, as named.
    pub file: String,
    /// The policy.
    pub policy: NetworkPolicy,
}

impl AppliedPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        super::netpol::policy_id(&self.policy)
    }
}

/// `labels = { ... }` of a table, each key and value checked.
pub fn parse_labels(t: &Table, example: &str) -> R<Labels> {
    let Some(pairs) = t.string_map("labels", example)? else {
        return Ok(Labels::new());
    };
    let errs = Errors::default();
    let mut out = Labels::new();
    for (k, v) in pairs {
        if !is_label_key(&k.v) {
            errs.push(t.err(
                k.span.clone(),
                format!("`{}` is not a valid label key", super::names::excerpt(&k.v)),
                "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, e.g. app",
            ));
        }
        if !is_label_value(&v.v) {
            errs.push(t.err(
                v.span.clone(),
                format!("`{}` is not a valid label value", super::names::excerpt(&v.v)),
                "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ));
        }
        out.insert(k.v, v.v);
    }
    errs.finish(Some(out))
}

fn parse_namespace_name(t: &Table, s: &Sp<String>) -> R<()> {
    if is_dns_label(&s.v) {
        return Ok(());
    }
    Err(t.err(
        s.span.clone(),
        format!(
            "namespace \"{}\" is not a valid Kubernetes namespace name",
            super::names::excerpt(&s.v)
        ),
        "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ))
}

fn parse_ports(t: &Table) -> R<Vec<PodPort>> {
    let example = "ports = [{ name = \"http\", port = 80, protocol = \"TCP\" }]";
    let Some(items) = t.items("ports", "a port", example)? else {
        return Ok(Vec::new());
    };
    let errs = Errors::default();
    let mut out: Vec<PodPort> = Vec::new();
    for item in items {
        let Item::Table(p) = item else {
            if let Item::Str(s) = item {
                errs.push(t.err(s.span, "each port is a table", format!("write {example}")));
            }
            continue;
        };
        errs.ok(p.allow(&["name", "port", "protocol"]));
        let name = errs.ok(p.required_string("name", "name = \"http\""));
        let port = errs.ok(p.int("port", 1, 65535, "port = 80"));
        let proto = errs.ok(p.string("protocol", "protocol = \"TCP\""));
        let (Some(name), Some(port), Some(proto)) = (name, port, proto) else {
            continue;
        };
        let Some(port) = port else {
            errs.push(p.err(p.span(), "a port has no `port`", "add port = 80"));
            continue;
        };
        if !is_port_name(&name.v) {
            errs.push(p.err(
                name.span.clone(),
                format!("`{}` is not a valid port name", super::names::excerpt(&name.v)),
                "use at most 15 lowercase letters, digits and '-', with at least one letter",
            ));
            continue;
        }
        let protocol = match &proto {
            None => Proto::Tcp,
            Some(s) => match Proto::from_k8s(&s.v) {
                Some(pr) => pr,
                None => {
                    errs.push(p.err(
                        s.span.clone(),
                        format!("unknown protocol `{}`", s.v),
                        "write TCP, UDP or SCTP",
                    ));
                    continue;
                }
            },
        };
        if out.iter().any(|o| o.name == name.v) {
            errs.push(p.err(
                name.span,
                "this port name appears twice on the pod",
                "give each port its own name",
            ));
            continue;
        }
        out.push(PodPort {
            name: name.v,
            port: port.v as u16,
            protocol,
        });
    }
    errs.finish(Some(out))
}

/// A pod written as a table: its name and identity.
pub fn parse_pod_table(p: &Table) -> R<(Sp<String>, PodMeta)> {
    let errs = Errors::default();
    errs.ok(p.allow(&["name", "namespace", "labels", "ports"]));
    let name = errs.ok(p.required_string("name", "name = \"web\""));
    let namespace = errs.ok(p.string("namespace", "namespace = \"prod\""));
    if let Some(Some(ns)) = &namespace {
        errs.ok(parse_namespace_name(p, ns));
    }
    let labels = errs.ok(parse_labels(p, "labels = { app = \"web\" }"));
    let ports = errs.ok(parse_ports(p));
    let meta = match (namespace, labels, ports) {
        (Some(ns), Some(labels), Some(ports)) => Some(PodMeta {
            namespace: ns.map_or_else(|| DEFAULT_NAMESPACE.to_string(), |n| n.v),
            labels,
            ports,
        }),
        _ => None,
    };
    errs.finish(name.zip(meta))
}

/// `[[namespace]]` sections.
pub fn parse_namespaces(root: &Table) -> R<Vec<Namespace>> {
    let errs = Errors::default();
    let mut out: Vec<Namespace> = Vec::new();
    for t in root.tables("namespace", "[[namespace]]")? {
        errs.ok(t.allow(&["name", "labels"]));
        let Some(name) = errs.ok(t.required_string("name", "name = \"prod\"")) else {
            continue;
        };
        if errs.ok(parse_namespace_name(&t, &name)).is_none() {
            continue;
        }
        if out.iter().any(|n| n.name == name.v) {
            errs.push(t.err(
                name.span,
                format!("namespace \"{}\" is declared twice", name.v),
                "declare each namespace once",
            ));
            continue;
        }
        if let Some(labels) = errs.ok(parse_labels(&t, "labels = { team = \"a\" }")) {
            out.push(Namespace { name: name.v, labels });
        }
    }
    errs.finish(Some(out))
}

/// `[network] policies`: the manifest patterns as written, with their
/// places.
pub fn parse_policy_patterns(net: &Table) -> R<Vec<Sp<String>>> {
    let Some(list) = net.strings("policies", "policies = [\"netpol/*.yaml\"]")? else {
        return Ok(Vec::new());
    };
    let errs = Errors::default();
    for p in &list.v {
        if p.v.trim().is_empty() || glob::Pattern::new(&p.v).is_err() {
            errs.push(net.err(
                p.span.clone(),
                format!("`{}` is not a file pattern", super::names::excerpt(&p.v)),
                "write a path or a glob relative to the topology file, e.g. \"netpol/*.yaml\"",
            ));
        }
    }
    errs.finish(Some(list.v))
}

/// Reads the manifests that `patterns` (relative to `dir`) name, in
/// pattern order, files sorted within a pattern: every mistake of every
/// file, and a pattern that matches no file, at once. `namespaces` are the
/// ones that exist; a policy in another is refused, as the API server
/// refuses it.
pub fn load_policies(
    src: &Source,
    dir: &Path,
    patterns: &[Sp<String>],
    namespaces: &[String],
) -> Result<Vec<AppliedPolicy>, InputError> {
    let errs = Errors::default();
    let mut out = Vec::new();
    for p in patterns {
        let files = match expand(dir, &p.v) {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                errs.push(src.error(
                    p.span.clone(),
                    format!(
                        "`{}` matches no file (looked in {})",
                        super::names::excerpt(&p.v),
                        dir.display()
                    ),
                    "name manifest files relative to the topology file, e.g. \"netpol/*.yaml\"",
                ));
                continue;
            }
            Err(e) => {
                errs.push(src.error(p.span.clone(), e, "name readable manifest files"));
                continue;
            }
        };
        for (shown, path) in files {
            if let Some(v) = errs.ok(read_manifest_file(&shown, &path, namespaces)) {
                out.extend(v);
            }
        }
    }
    errs.ok(check_unique(&out).map_err(|m| {
        src.error(
            patterns[0].span.clone(),
            m,
            "give each policy of a namespace its own name",
        )
    }));
    errs.finish(Some(out))
}

fn check_unique(policies: &[AppliedPolicy]) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for p in policies {
        if let Some(first) = seen.insert(p.id(), p.file.clone()) {
            return Err(format!("policy {} is defined twice: in {first} and {}", p.id(), p.file));
        }
    }
    Ok(())
}

/// Every file a pattern names: (as shown in messages, path).
fn expand(dir: &Path, pattern: &str) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let full = if Path::new(pattern).is_absolute() {
        pattern.to_string()
    } else {
        dir.join(pattern).display().to_string()
    };
    let paths = glob::glob(&full).map_err(|e| format!("`{pattern}` is not a file pattern: {e}"))?;
    let mut out = Vec::new();
    for p in paths {
        let p = p.map_err(|e| format!("cannot read {}: {e}", e.path().display()))?;
        if p.is_file() {
            out.push((p.display().to_string(), p));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads one manifest file: every policy in it, or every mistake.
pub fn read_manifest_file(shown: &str, path: &Path, namespaces: &[String]) -> R<Vec<AppliedPolicy>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Source::new(shown, "").error(0..0, format!("cannot read {shown}: {e}"), "name a readable YAML file")
    })?;
    let src = Source::new(shown, text);
    let manifests = parse_manifests(&src)?;
    let errs = Errors::default();
    let mut out = Vec::new();
    for m in manifests {
        let ns = policy_namespace(&m.policy);
        if !namespaces.iter().any(|n| n == ns) {
            errs.push(src.error(
                m.span.clone(),
                format!(
                    "policy {ns}/{} is in namespace \"{ns}\", which the lab does not have",
                    policy_name(&m.policy)
                ),
                format!(
                    "add [[namespace]] name = \"{ns}\" to the topology, or use one of: {}",
                    namespaces.join(", ")
                ),
            ));
            continue;
        }
        out.push(AppliedPolicy {
            file: shown.to_string(),
            policy: m.policy,
        });
    }
    errs.finish(Some(out))
}

/// The span where a pod list entry is written.
pub fn item_span(item: &Item) -> Range<usize> {
    match item {
        Item::Str(s) => s.span.clone(),
        Item::Table(t) => t.span(),
    }
}

//! Reading NetworkPolicy manifests: YAML files of one or many documents,
//! each a `networking.k8s.io/v1` NetworkPolicy, into the Kubernetes API
//! types, with every mistake of a file reported at once with
//! file:line:column and a fix, as for topologies. Parsing is `serde_yaml`'s
//! into `k8s-openapi`'s types; `serde_ignored` names the fields those types
//! do not know (Kubernetes' strict field validation rejects them too), and a
//! marked `yaml-rust2` event stream says where each field was written.

use std::collections::HashMap;
use std::ops::Range;

use super::{NetworkPolicy, Proto, policy_name, policy_namespace};
use crate::model::error::{InputError, Source, excerpt as cut};
use crate::model::spanned::{Errors, R};
use ipnet::Ipv4Net;

/// One step of the way to a field: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping's key.
    Key(String),
    /// A sequence's index.
    Index(usize),
}

/// A policy read from a manifest, with where its document starts.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The policy.
    pub policy: NetworkPolicy,
    /// Byte span of its `metadata.name` value (else of its document).
    pub span: Range<usize>,
}

/// Where each field of each document was written: (document, path) →
/// (key's byte offset, value's byte offset).
#[derive(Debug, Default)]
struct Positions {
    at: HashMap<(usize, Vec<Seg>), (usize, usize)>,
    docs: Vec<usize>,
}

impl Positions {
    /// The span to point at for `path` of document `doc`: the key where it
    /// has one, else the closest written ancestor.
    fn span(&self, doc: usize, path: &[Seg], key: bool) -> Range<usize> {
        let mut p = path.to_vec();
        loop {
            if let Some(&(k, v)) = self.at.get(&(doc, p.clone())) {
                let at = if key { k } else { v };
                return at..at + 1;
            }
            if p.pop().is_none() {
                let at = self.docs.get(doc).copied().unwrap_or(0);
                return at..at + 1;
            }
        }
    }
}

enum Frame {
    Map {
        path: Vec<Seg>,
        key: Option<(String, usize)>,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
}

struct Walker<'t> {
    chars: Vec<usize>,
    text: &'t str,
    pos: Positions,
    stack: Vec<Frame>,
    doc: usize,
}

impl Walker<'_> {
    fn byte(&self, char_index: usize) -> usize {
        self.chars.get(char_index).copied().unwrap_or(self.text.len())
    }

    /// The path of the node starting now, and the offset of its key, or
    /// `None` when it is a mapping key (remembered for its value).
    fn place(&mut self, scalar: Option<&str>, at: usize) -> Option<(Vec<Seg>, usize)> {
        match self.stack.last_mut() {
            None => Some((Vec::new(), at)),
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*next));
                *next += 1;
                Some((p, at))
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some((k, kat)) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(k));
                    Some((p, kat))
                }
                None => {
                    *key = Some((scalar.unwrap_or("").to_string(), at));
                    None
                }
            },
        }
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for Walker<'_> {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::Event;
        let at = self.byte(mark.index());
        match ev {
            Event::DocumentStart => {
                self.pos.docs.push(at);
                self.doc = self.pos.docs.len() - 1;
                self.stack.clear();
            }
            Event::Scalar(s, ..) => {
                if let Some((p, k)) = self.place(Some(&s), at) {
                    self.pos.at.insert((self.doc, p), (k, at));
                }
            }
            Event::Alias(_) => {
                if let Some((p, k)) = self.place(None, at) {
                    self.pos.at.insert((self.doc, p), (k, at));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let map = matches!(ev, Event::MappingStart(..));
                let path = match self.place(None, at) {
                    Some((p, k)) => {
                        self.pos.at.insert((self.doc, p.clone()), (k, at));
                        p
                    }
                    // A collection as a key: no field path goes through it.
                    None => vec![Seg::Key("?".into())],
                };
                self.stack.push(if map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

fn positions(src: &Source) -> R<Positions> {
    let mut w = Walker {
        chars: src.text.char_indices().map(|(i, _)| i).collect(),
        text: &src.text,
        pos: Positions::default(),
        stack: Vec::new(),
        doc: 0,
    };
    let mut parser = yaml_rust2::parser::Parser::new_from_str(&src.text);
    if let Err(e) = parser.load(&mut w, true) {
        let at = w.byte(e.marker().index());
        return Err(src.error(
            at..at + 1,
            format!("this is not valid YAML: {}", e.info()),
            "correct the YAML syntax (indentation, a missing `:` or quote)",
        ));
    }
    Ok(w.pos)
}

fn path_of(p: &serde_ignored::Path) -> Vec<Seg> {
    use serde_ignored::Path;
    match p {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = path_of(parent);
            v.push(Seg::Index(*index));
            v
        }
        Path::Map { parent, key } => {
            let mut v = path_of(parent);
            v.push(Seg::Key(key.clone()));
            v
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => path_of(parent),
    }
}

fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Reads every NetworkPolicy of a manifest file. Empty documents are
/// skipped; anything else must be a valid NetworkPolicy.
pub fn parse_manifests(src: &Source) -> R<Vec<Manifest>> {
    let pos = positions(src)?;
    let errs = Errors::default();
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(&src.text).enumerate() {
        let mut unknown: Vec<Vec<Seg>> = Vec::new();
        let parsed: Result<Option<NetworkPolicy>, _> = serde_ignored::deserialize(de, |p| unknown.push(path_of(&p)));
        let policy = match parsed {
            Ok(Some(p)) => p,
            // An empty document.
            Ok(None) => continue,
            Err(e) => {
                errs.push(typed_error(src, &pos, doc, &e));
                continue;
            }
        };
        for path in &unknown {
            errs.push(src.error(
                pos.span(doc, path, true),
                format!("unknown field `{}` in a NetworkPolicy", dotted(path)),
                fix_for_unknown(path),
            ));
        }
        for e in check(&policy, &|p: &[Seg], key| pos.span(doc, p, key)) {
            errs.push(src.error(e.0, e.1, e.2));
        }
        let span = pos.span(doc, &[seg("metadata"), seg("name")], false);
        out.push(Manifest { policy, span });
    }
    if errs.is_empty() && out.is_empty() {
        errs.push(src.error(
            0..1,
            "this file holds no NetworkPolicy",
            "write a manifest with `apiVersion: networking.k8s.io/v1` and `kind: NetworkPolicy`",
        ));
    }
    errs.finish(Some(out))
}

fn fix_for_unknown(path: &[Seg]) -> String {
    let known: &[&str] = match path.iter().rev().nth(1) {
        None => &["apiVersion", "kind", "metadata", "spec"],
        Some(Seg::Key(k)) if k == "spec" => &["podSelector", "policyTypes", "ingress", "egress"],
        Some(Seg::Index(_)) => match path.iter().rev().nth(2) {
            Some(Seg::Key(k)) if k == "ingress" => &["from", "ports"],
            Some(Seg::Key(k)) if k == "egress" => &["to", "ports"],
            Some(Seg::Key(k)) if k == "from" || k == "to" => &["podSelector", "namespaceSelector", "ipBlock"],
            Some(Seg::Key(k)) if k == "ports" => &["protocol", "port", "endPort"],
            _ => &[],
        },
        Some(Seg::Key(k)) if k == "ipBlock" => &["cidr", "except"],
        Some(Seg::Key(k)) if k.ends_with("Selector") => &["matchLabels", "matchExpressions"],
        _ => &[],
    };
    let field = match path.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "",
    };
    match crate::model::spanned::closest(field, known) {
        Some(c) => format!("did you mean `{c}`? (networking.k8s.io/v1 NetworkPolicy)"),
        None if known.is_empty() => "remove it: networking.k8s.io/v1 NetworkPolicy has no such field".into(),
        None => format!("remove it; the fields here are: {}", known.join(", ")),
    }
}

/// A field of the wrong type or value, as the API types refuse it.
fn typed_error(src: &Source, pos: &Positions, doc: usize, e: &serde_yaml::Error) -> InputError {
    let msg = strip_location(&e.to_string());
    // serde_yaml names the field it was in ("spec.ingress[0].ports[0]: ...").
    let (path, what) = match msg.split_once(": ") {
        Some((p, w)) if !p.contains(' ') => (parse_dotted(p), w.to_string()),
        _ => (Vec::new(), msg.clone()),
    };
    let fix = if what.contains("apiVersion") || what.contains("kind") || msg.contains("networking.k8s.io") {
        "start the document with `apiVersion: networking.k8s.io/v1` and `kind: NetworkPolicy`"
    } else {
        "write the value as networking.k8s.io/v1 NetworkPolicy defines it (kubectl explain networkpolicy.spec)"
    };
    let span = e
        .location()
        .map(|l| l.index()..l.index() + 1)
        .unwrap_or_else(|| pos.span(doc, &path, false));
    let shown = if path.is_empty() {
        what
    } else {
        format!("`{}`: {what}", dotted(&path))
    };
    src.error(span, format!("not a valid NetworkPolicy: {shown}"), fix)
}

fn strip_location(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn parse_dotted(p: &str) -> Vec<Seg> {
    let mut v = Vec::new();
    for part in p.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            v.push(Seg::Key(key.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                v.push(Seg::Index(i));
            }
        }
    }
    v
}

type Mistake = (Range<usize>, String, String);

fn seg(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// What Kubernetes' validation refuses beyond the types: names, protocols,
/// CIDRs, ports, selectors' operators.
fn check(p: &NetworkPolicy, at: &dyn Fn(&[Seg], bool) -> Range<usize>) -> Vec<Mistake> {
    let mut out: Vec<Mistake> = Vec::new();
    let mut push = |path: Vec<Seg>, msg: String, fix: &str| out.push((at(&path, false), msg, fix.to_string()));
    let name = policy_name(p);
    if name.is_empty() {
        push(
            vec![seg("metadata")],
            "the NetworkPolicy has no `metadata.name`".into(),
            "add metadata: { name: my-policy }",
        );
    } else if !is_dns_label(name) {
        push(
            vec![seg("metadata"), seg("name")],
            format!("`{}` is not a valid policy name", excerpt(name)),
            "use lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit",
        );
    }
    let ns = policy_namespace(p);
    if !is_dns_label(ns) {
        push(
            vec![seg("metadata"), seg("namespace")],
            format!("`{}` is not a valid namespace name", excerpt(ns)),
            "use lowercase letters, digits and '-', at most 63",
        );
    }
    let Some(spec) = &p.spec else {
        push(
            Vec::new(),
            "the NetworkPolicy has no `spec`".into(),
            "add spec: { podSelector: {} }",
        );
        return out;
    };
    let base = vec![seg("spec")];
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            push(
                vec![seg("spec"), seg("policyTypes"), Seg::Index(i)],
                format!("unknown policy type `{t}`"),
                "write Ingress or Egress",
            );
        }
    }
    if let Some(sel) = &spec.pod_selector {
        check_selector(sel, &[base.clone(), vec![seg("podSelector")]].concat(), &mut push);
    }
    let dirs = [
        (
            "ingress",
            "from",
            spec.ingress.as_ref().map(|v| {
                v.iter()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect::<Vec<_>>()
            }),
        ),
        (
            "egress",
            "to",
            spec.egress
                .as_ref()
                .map(|v| v.iter().map(|r| (r.to.as_ref(), r.ports.as_ref())).collect::<Vec<_>>()),
        ),
    ];
    for (dir, peers_key, rules) in dirs {
        for (ri, (peers, ports)) in rules.into_iter().flatten().enumerate() {
            let rule = vec![seg("spec"), seg(dir), Seg::Index(ri)];
            for (pi, peer) in peers.into_iter().flatten().enumerate() {
                let at = [rule.clone(), vec![seg(peers_key), Seg::Index(pi)]].concat();
                check_peer(peer, &at, &mut push);
            }
            for (pi, port) in ports.into_iter().flatten().enumerate() {
                let at = [rule.clone(), vec![seg("ports"), Seg::Index(pi)]].concat();
                check_port(port, &at, &mut push);
            }
        }
    }
    out
}

type Push<'a> = dyn FnMut(Vec<Seg>, String, &str) + 'a;

fn check_peer(peer: &k8s_openapi::api::networking::v1::NetworkPolicyPeer, at: &[Seg], push: &mut Push) {
    let sub = |k: &str| [at.to_vec(), vec![seg(k)]].concat();
    if let Some(b) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            push(
                sub("ipBlock"),
                "a peer with `ipBlock` cannot also have a pod or namespace selector".into(),
                "make them two peers: `- ipBlock: ...` and `- podSelector: ...`",
            );
        }
        match b.cidr.parse::<Ipv4Net>() {
            Err(_) => push(
                [sub("ipBlock"), vec![seg("cidr")]].concat(),
                format!("`{}` is not an IPv4 CIDR", excerpt(&b.cidr)),
                "write a CIDR such as 10.0.0.0/8",
            ),
            Ok(cidr) => {
                for (i, e) in b.except.iter().flatten().enumerate() {
                    let ep = [sub("ipBlock"), vec![seg("except"), Seg::Index(i)]].concat();
                    match e.parse::<Ipv4Net>() {
                        Ok(x) if cidr.contains(&x) && x.prefix_len() > cidr.prefix_len() => {}
                        Ok(_) => push(
                            ep,
                            format!("except `{e}` is not strictly inside cidr `{}`", b.cidr),
                            "list only CIDRs inside the ipBlock's cidr, and smaller than it",
                        ),
                        Err(_) => push(
                            ep,
                            format!("`{e}` is not an IPv4 CIDR"),
                            "write a CIDR such as 10.0.1.0/24",
                        ),
                    }
                }
            }
        }
    } else if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        push(
            at.to_vec(),
            "this peer selects nothing: it has no podSelector, namespaceSelector or ipBlock".into(),
            "write podSelector: {} for all pods of the namespace, or remove the peer",
        );
    }
    if let Some(s) = &peer.pod_selector {
        check_selector(s, &sub("podSelector"), push);
    }
    if let Some(s) = &peer.namespace_selector {
        check_selector(s, &sub("namespaceSelector"), push);
    }
}

fn check_port(port: &k8s_openapi::api::networking::v1::NetworkPolicyPort, at: &[Seg], push: &mut Push) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let sub = |k: &str| [at.to_vec(), vec![seg(k)]].concat();
    if let Some(proto) = &port.protocol
        && Proto::from_k8s(proto).is_none()
    {
        push(
            sub("protocol"),
            format!("unknown protocol `{proto}`"),
            "write TCP, UDP or SCTP (upper case)",
        );
    }
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                push(
                    sub("port"),
                    format!("port {n} is out of range"),
                    "use a port from 1 to 65535",
                );
            }
            if let Some(e) = end
                && (e < *n || e > 65535)
            {
                push(
                    sub("endPort"),
                    format!("endPort {e} must be at least port {n} and at most 65535"),
                    "set endPort to the last port of the range",
                );
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if !is_port_name(name) {
                push(
                    sub("port"),
                    format!("`{}` is not a valid port name", excerpt(name)),
                    "a port name has at most 15 lowercase letters, digits and '-', with a letter",
                );
            }
            if end.is_some() {
                push(
                    sub("endPort"),
                    "endPort goes only with a numeric port".into(),
                    "give port as a number, or remove endPort",
                );
            }
        }
        (None, Some(_)) => push(
            sub("endPort"),
            "endPort without port".into(),
            "add the first port of the range as `port`",
        ),
        (None, None) => {}
    }
}

fn check_selector(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, at: &[Seg], push: &mut Push) {
    let fix = "a label key is letters, digits, '-', '_' and '.' (with an optional DNS prefix and '/'), a value at most 63 of them";
    for (k, v) in s.match_labels.iter().flatten() {
        let kp = [at.to_vec(), vec![seg("matchLabels"), seg(k)]].concat();
        if !is_label_key(k) {
            push(kp.clone(), format!("`{}` is not a valid label key", excerpt(k)), fix);
        }
        if !is_label_value(v) {
            push(kp, format!("`{}` is not a valid label value", excerpt(v)), fix);
        }
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let ep = [at.to_vec(), vec![seg("matchExpressions"), Seg::Index(i)]].concat();
        if !is_label_key(&e.key) {
            push(
                [ep.clone(), vec![seg("key")]].concat(),
                format!("`{}` is not a valid label key", excerpt(&e.key)),
                fix,
            );
        }
        for (j, v) in e.values.iter().flatten().enumerate() {
            if !is_label_value(v) {
                push(
                    [ep.clone(), vec![seg("values"), Seg::Index(j)]].concat(),
                    format!("`{}` is not a valid label value", excerpt(v)),
                    fix,
                );
            }
        }
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let ep = [at.to_vec(), vec![seg("matchExpressions"), Seg::Index(i)]].concat();
        let values = e.values.as_ref().map_or(0, |v| v.len());
        match e.operator.as_str() {
            "In" | "NotIn" if values == 0 => push(
                ep,
                format!("operator {} needs at least one value", e.operator),
                "add values: [...]",
            ),
            "Exists" | "DoesNotExist" if values > 0 => push(
                ep,
                format!("operator {} takes no values", e.operator),
                "remove `values`",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => push(
                [ep, vec![seg("operator")]].concat(),
                format!("unknown operator `{other}`"),
                "write In, NotIn, Exists or DoesNotExist",
            ),
        }
    }
}

fn excerpt(s: &str) -> String {
    cut(s, 60)
}

/// A DNS label (RFC 1123), as Kubernetes requires of names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A container port name (IANA service name, as Kubernetes checks it).
pub fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters of letters, digits, `-`, `_`, `.`, starting and ending
/// with a letter or digit.
pub fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// A label value: empty, or at most 63 characters of letters, digits, `-`,
/// `_`, `.`, starting and ending with a letter or digit.
pub fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_manifests(&Source::new("np.yaml", text)) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .all()
                .map(|e| format!("{}:{}: {} | {}", e.line, e.col, e.message, e.fix))
                .collect(),
        }
    }

    const GOOD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: x
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: allow-web }
spec:
  podSelector:
    matchLabels: { app: web }
  ingress:
  - from:
    - namespaceSelector: { matchLabels: { team: a } }
    ports:
    - { protocol: TCP, port: 80, endPort: 90 }
    - { port: serve-81-udp, protocol: UDP }
";

    #[test]
    fn selector_labels_are_checked() {
        let e = errors(&GOOD.replace("matchLabels: { app: web }", "matchLabels: { app: \"x' || all()\" }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("is not a valid label value"), "{e:?}");
        let e = errors(&GOOD.replace(
            "matchLabels: { team: a }",
            "matchExpressions: [{ key: \"bad key\", operator: Exists }]",
        ));
        assert!(
            e.iter().any(|x| x.contains("`bad key` is not a valid label key")),
            "{e:?}"
        );
    }

    #[test]
    fn reads_every_document() {
        let m = parse_manifests(&Source::new("np.yaml", GOOD)).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(policy_namespace(&m[0].policy), "x");
        assert_eq!(policy_namespace(&m[1].policy), "default");
        assert_eq!(policy_name(&m[1].policy), "allow-web");
    }

    #[test]
    fn unknown_fields_are_placed() {
        // Inside an unknown field nothing more is reported.
        let text = GOOD
            .replace("  ingress:\n  - from:", "  ingres:\n  - from:")
            .replace("endPort: 90", "endport: 90");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("15:3: unknown field `spec.ingres`"), "{e:?}");
        assert!(e[0].contains("did you mean `ingress`"), "{e:?}");
        let e = errors(&GOOD.replace("endPort: 90", "endport: 90"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("19:34: unknown field `spec.ingress[0].ports[0].endport`"),
            "{e:?}"
        );
        assert!(e[0].contains("did you mean `endPort`"), "{e:?}");
    }

    #[test]
    fn every_mistake_of_a_file_at_once() {
        let text = GOOD
            .replace("protocol: TCP", "protocol: tcp")
            .replace(
                "team: a } }",
                "team: a }, matchExpressions: [{ key: k, operator: Has }] }",
            )
            .replace("name: deny", "name: Deny");
        let e = errors(&text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("4:9: `Deny` is not a valid policy name"), "{e:?}");
        assert!(e.iter().any(|x| x.contains("unknown operator `Has`")), "{e:?}");
        assert!(e.iter().any(|x| x.contains("unknown protocol `tcp`")), "{e:?}");
    }

    #[test]
    fn syntax_and_type_errors_have_positions() {
        let e = errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a\n");
        assert!(e[0].contains("not valid YAML"), "{e:?}");
        let e =
            errors("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  ingress: 3\n");
        assert!(e[0].starts_with("5:") && e[0].contains("spec.ingress"), "{e:?}");
        let e = errors("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
        assert!(e[0].contains("apiVersion: networking.k8s.io/v1"), "{e:?}");
        let e = errors("# nothing\n");
        assert!(e[0].contains("no NetworkPolicy"), "{e:?}");
    }

    #[test]
    fn ip_blocks_and_ports_are_checked() {
        let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a}
spec:
  podSelector: {}
  egress:
  - to:
    - ipBlock: { cidr: 10.0.0.0/8, except: [11.0.0.0/24] }
    - ipBlock: { cidr: 10.0.0/8 }
    - {}
    ports:
    - { port: 80, endPort: 70 }
    - { port: Web_Port }
";
        let e = errors(text);
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].starts_with("8:45: except `11.0.0.0/24`"), "{e:?}");
        assert!(e[1].starts_with("9:24: `10.0.0/8` is not an IPv4 CIDR"), "{e:?}");
        assert!(e[2].contains("selects nothing"), "{e:?}");
        assert!(e[3].contains("endPort 70"), "{e:?}");
        assert!(e[4].contains("not a valid port name"), "{e:?}");
    }
}

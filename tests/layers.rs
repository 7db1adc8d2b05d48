//! The shape of lab/src: every `crate::` path goes to a module of the same
//! layer or a lower one, and no modules import each other in a circle.
//! Layers, lowest first, are the folders of lab/src (see ARCHITECTURE.md).
//! Runs without root: it reads the source as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer folders of lab/src, lowest first.
const LAYERS: [&str; 6] = ["model", "kernel", "profile", "ops", "observe", "front"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path (`observe::snapshot::iptables`) -> its file's text before
/// its unit tests.
fn modules(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
                continue;
            }
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if p.extension().is_none_or(|x| x != "rs") || stem.ends_with("_tests") {
                continue;
            }
            let rel = p.parent().unwrap().strip_prefix(root).unwrap();
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if !["mod", "lib", "main"].contains(&stem) {
                parts.push(stem.to_string());
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let body = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
            out.insert(parts.join("::"), body);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Every path a `crate::` prefix names, use-groups expanded:
/// `crate::{a::b, c::{d, e}}` gives `a::b`, `c::d`, `c::e`.
fn crate_paths(text: &str) -> Vec<String> {
    /// Reads one use-tree at `i` under `prefix`; returns where it ends.
    fn tree(s: &[u8], mut i: usize, prefix: &str, out: &mut Vec<String>) -> usize {
        let skip_ws = |mut i: usize| {
            while i < s.len() && s[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        };
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= s.len() {
                    return i;
                }
                if s[i] == b'}' {
                    return i + 1;
                }
                i = tree(s, i, prefix, out);
                i = skip_ws(i);
                if i < s.len() && s[i] == b',' {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
            i += 1;
        }
        let name = std::str::from_utf8(&s[start..i]).unwrap();
        if s[i..].starts_with(b"::") {
            return tree(s, i + 2, &format!("{prefix}{name}::"), out);
        }
        let path = if name == "self" || name.is_empty() {
            prefix.trim_end_matches("::").to_string()
        } else {
            format!("{prefix}{name}")
        };
        out.push(path);
        // Past an `as name` rename, to the item's end.
        while i < s.len() && ![b',', b'}', b';', b'\n', b'(', b')'].contains(&s[i]) {
            i += 1;
        }
        i
    }
    let mut out = Vec::new();
    let s = text.as_bytes();
    for (at, _) in text.match_indices("crate::") {
        tree(s, at + "crate::".len(), "", &mut out);
    }
    out
}

/// The longest module that a path starts with.
fn resolve<'m>(path: &str, mods: &'m BTreeMap<String, String>) -> Option<&'m str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|m| mods.get_key_value(&m).map(|(k, _)| k.as_str()))
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

/// Module -> the modules it imports (not its own ancestors).
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, body) in mods {
        let set: BTreeSet<String> = crate_paths(body)
            .iter()
            .filter_map(|p| resolve(p, mods))
            .filter(|t| !t.is_empty() && *t != m && !m.starts_with(&format!("{t}::")))
            .map(str::to_string)
            .collect();
        out.insert(m.clone(), set);
    }
    out
}

/// The strongly connected groups of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'e> {
        edges: &'e BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'e str, usize>,
        low: BTreeMap<&'e str, usize>,
        stack: Vec<&'e str>,
        on: BTreeSet<&'e str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'e>(t: &mut T<'e>, v: &'e str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                t.out.push(group);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn every_module_lives_in_a_layer_folder() {
    let mods = modules(&src());
    let strays: Vec<&String> = mods.keys().filter(|m| !m.is_empty() && layer(m).is_none()).collect();
    assert!(
        strays.is_empty(),
        "modules outside the layer folders {LAYERS:?}: {strays:?}"
    );
    for l in LAYERS {
        assert!(mods.contains_key(l), "no layer folder lab/src/{l}");
    }
}

#[test]
fn imports_go_down_the_layers_only() {
    let mods = modules(&src());
    let mut upward = Vec::new();
    for (m, targets) in edges(&mods) {
        let Some(from) = layer(&m) else { continue };
        for t in targets {
            if let Some(to) = layer(&t)
                && to > from
            {
                upward.push(format!("{m} ({}) -> {t} ({})", LAYERS[from], LAYERS[to]));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_circles() {
    let mods = modules(&src());
    let found = circles(&edges(&mods));
    assert!(
        found.is_empty(),
        "modules that import each other in a circle: {found:?}"
    );
}

#[test]
fn the_checker_sees_what_it_must() {
    // The parser: groups, nesting, renames.
    let p = crate_paths(
        "use crate::{model::plan::{Plan, NodePlan}, kernel::nl as n};\nlet x = crate::ops::state::load(1);",
    );
    assert_eq!(
        p,
        [
            "model::plan::Plan",
            "model::plan::NodePlan",
            "kernel::nl",
            "ops::state::load"
        ]
    );
    // A circle and an upward edge are found.
    let mut fake = BTreeMap::new();
    fake.insert("model::a".to_string(), "use crate::ops::b;".to_string());
    fake.insert("ops::b".to_string(), "fn f() { crate::model::a::g() }".to_string());
    let e = edges(&fake);
    assert_eq!(e["model::a"].iter().collect::<Vec<_>>(), ["ops::b"]);
    assert_eq!(circles(&e), [vec!["model::a".to_string(), "ops::b".to_string()]]);
    // The real tree has edges to check at all.
    let real = edges(&modules(&src()));
    assert!(real.values().map(BTreeSet::len).sum::<usize>() > 50);
}

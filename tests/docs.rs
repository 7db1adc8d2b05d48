//! The user docs in docs/ cover what cnilab accepts: every key the topology
//! and scenario parsers allow, every step kind, probe and fault kind, every
//! command and option of the command line and every environment variable.
//! The lists come from the source and from clap, so a new key or option
//! without docs fails here. No root needed.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The string literals of every list of string literals that starts with
/// `opener` in `src` (up to the closing `]`), e.g. the keys of
/// `.allow(&["name", "seed"])`. Brackets inside string literals (examples in
/// messages, with escaped quotes) and lists of other things are skipped.
fn lists_after(src: &str, opener: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in src.match_indices(opener) {
        let rest = &src[at + opener.len()..];
        let Some(end) = rest.find(']') else { continue };
        let body = &rest[..end];
        if !body.trim_start().starts_with('"') || body.contains('\\') {
            continue;
        }
        out.extend(body.split('"').skip(1).step_by(2).map(str::to_string));
    }
    out
}

/// Every `.rs` file under `dir`, recursively, in name order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The text of the function `name` in `src`, up to the next top-level item.
fn function<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let rest = &src[start..];
    let end = ["\nfn ", "\npub fn ", "\nasync fn ", "\npub async fn "]
        .iter()
        .filter_map(|next| rest[1..].find(next))
        .min()
        .map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

/// Words of `words` that `doc` does not show as `` `word` ``.
fn missing(doc: &str, words: &[String]) -> Vec<String> {
    let mut m: Vec<String> = words
        .iter()
        .filter(|w| !doc.contains(&format!("`{w}`")))
        .cloned()
        .collect();
    m.sort();
    m.dedup();
    m
}

#[test]
fn every_topology_key_is_in_docs_topology_md() {
    // The generic keys in topology.rs, each profile's in its folder.
    let mut keys = lists_after(&read("lab/src/model/topology.rs"), ".allow(&[");
    for file in rust_files(&repo().join("lab/src/profile")) {
        keys.extend(lists_after(&std::fs::read_to_string(&file).unwrap(), ".allow(&["));
    }
    assert!(
        keys.len() >= 25,
        "found too few keys in topology.rs and profile/: {keys:?}"
    );
    for k in ["hold_time", "restart_time", "max_pods", "subnet_len"] {
        assert!(keys.contains(&k.to_string()), "the scan misses {k}: {keys:?}");
    }
    let doc = read("docs/topology.md");
    let gone = missing(&doc, &keys);
    assert!(
        gone.is_empty(),
        "docs/topology.md does not document these keys that lab/src/model/topology.rs or lab/src/profile/ accepts: {gone:?}"
    );
}

#[test]
fn every_scenario_key_step_kind_and_probe_is_in_docs_scenarios_md() {
    let src = read("lab/src/front/scenario.rs");
    let mut words = lists_after(&src, ".allow(&[");
    // Step keys are collected per kind in parse_step (`common`, each probe's
    // keys, the fault options), expectation fields in expect_keys.
    for f in ["parse_step", "expect_keys"] {
        words.extend(lists_after(function(&src, f), "["));
    }
    for k in [
        "note",
        "new_mac",
        "fault_rm",
        "timeout",
        "pingall",
        "error_contains",
        "not_contains",
    ] {
        assert!(words.contains(&k.to_string()), "the scan misses {k}: {words:?}");
    }
    let doc = read("docs/scenarios.md");
    let gone = missing(&doc, &words);
    assert!(
        gone.is_empty(),
        "docs/scenarios.md does not document these keys, kinds or fields that lab/src/front/scenario.rs accepts: {gone:?}"
    );
}

/// Each command (with its subcommand path) has a section
/// "### `cnilab PATH`" in docs/cli.md that names each of its options.
#[test]
fn every_command_and_option_is_in_docs_cli_md() {
    let doc = read("docs/cli.md");
    let mut problems = Vec::new();
    let mut count = 0;
    let mut stack = vec![(String::new(), cnilab::front::cli::Cli::command())];
    while let Some((path, cmd)) = stack.pop() {
        for g in cmd.get_arguments().filter(|a| a.is_global_set()) {
            if let Some(l) = g.get_long() {
                if !doc.contains(&format!("--{l}")) {
                    problems.push(format!("global option --{l}"));
                }
            }
        }
        let subs: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .cloned()
            .collect();
        if !subs.is_empty() {
            for s in subs {
                let p = format!("{path} {}", s.get_name()).trim().to_string();
                stack.push((p, s));
            }
            continue;
        }
        count += 1;
        let heading = format!("### `cnilab {path}`");
        let Some(at) = doc.find(&heading) else {
            problems.push(format!("no section {heading}"));
            continue;
        };
        let rest = &doc[at + heading.len()..];
        let section = &rest[..rest.find("\n#").unwrap_or(rest.len())];
        for a in cmd.get_arguments().filter(|a| !a.is_global_set()) {
            if let Some(l) = a.get_long().filter(|l| !["help", "version"].contains(l)) {
                if !section.contains(&format!("--{l}")) {
                    problems.push(format!("cnilab {path}: --{l}"));
                }
            }
            if let Some(s) = a.get_short().filter(|s| *s != 'h') {
                if !section.contains(&format!("-{s}")) {
                    problems.push(format!("cnilab {path}: -{s}"));
                }
            }
        }
    }
    assert!(count >= 20, "found only {count} commands");
    assert!(problems.is_empty(), "docs/cli.md lacks: {problems:#?}");
}

#[test]
fn fault_kinds_exit_codes_and_environment_are_in_docs_cli_md() {
    let doc = read("docs/cli.md");
    let faults = read("lab/src/model/faultspec.rs");
    let kinds = lists_after(function(&faults, "fault_spec"), "let kinds = [");
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    let gone = missing(&doc, &kinds);
    assert!(gone.is_empty(), "docs/cli.md lacks fault kinds {gone:?}");
    for code in ["| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |"] {
        assert!(doc.contains(code), "docs/cli.md lacks exit code {code}");
    }
    // Every CNILAB_* variable the source reads or sets.
    let mut vars = Vec::new();
    for path in rust_files(&repo().join("lab/src")) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (at, _) in text.match_indices("\"CNILAB_") {
            let name: String = text[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            vars.push(name);
        }
    }
    for v in ["CNILAB_LAB", "CNILAB_RUN_DIR", "CNILAB_PATH"] {
        assert!(vars.contains(&v.to_string()), "the scan misses {v}: {vars:?}");
    }
    let gone = missing(&doc, &vars);
    assert!(gone.is_empty(), "docs/cli.md lacks environment variables {gone:?}");
}

#[test]
fn readmes_point_to_the_docs() {
    let readme = read("README.md");
    for d in ["docs/topology.md", "docs/scenarios.md", "docs/cli.md"] {
        assert!(readme.contains(d), "README.md does not link {d}");
        assert!(repo().join(d).is_file(), "{d} is missing");
    }
    assert!(read("scenarios/README.md").contains("../docs/scenarios.md"));
}

//! The JSON Schemas of `status --json`, `snapshot --json` and `trace --json`
//! in docs/schemas/: they are what the Rust output types generate, and what a
//! running lab prints validates against them.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Set to rewrite docs/schemas/ from the types instead of comparing.
const UPDATE: &str = "CNILAB_UPDATE_SCHEMAS";

/// Each schema's file name and what the types generate.
fn generated() -> Vec<(&'static str, String)> {
    let text = |s: schemars::Schema| serde_json::to_string_pretty(&s).expect("schema is JSON") + "\n";
    vec![
        (
            "status.json",
            text(schemars::schema_for!(cnilab::observe::status::Status)),
        ),
        (
            "snapshot.json",
            text(schemars::schema_for!(cnilab::observe::snapshot::Snapshot)),
        ),
        ("trace.json", text(schemars::schema_for!(cnilab::observe::trace::Trace))),
    ]
}

fn schema_dir() -> std::path::PathBuf {
    repo().join("docs").join("schemas")
}

/// A change to an output type must come with its schema, or users' tools
/// that validate against docs/schemas/ break without warning.
#[test]
fn checked_in_schemas_equal_the_generated_ones() {
    let update = std::env::var_os(UPDATE).is_some();
    let mut stale = Vec::new();
    for (file, text) in generated() {
        let path = schema_dir().join(file);
        if update {
            std::fs::create_dir_all(schema_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "these schemas differ from what the output types generate: {}\n\
         after a deliberate change to an output type, regenerate them with\n  \
         {UPDATE}=1 cargo test -p cnilab --test schema checked_in\nand commit docs/schemas/",
        stale.join(", ")
    );
}

fn validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_dir().join(file)).expect("schema checked in");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{file} is not a valid JSON Schema: {e}"))
}

fn assert_valid(file: &str, output: &std::process::Output) -> Value {
    assert!(
        output.status.success() || output.status.code() == Some(1),
        "{}",
        show(output)
    );
    let v: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", show(output)));
    let errors: Vec<String> = validator(file)
        .iter_errors(&v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "output does not validate against {file}:\n{}\n{v:#}",
        errors.join("\n")
    );
    v
}

/// Real output of a lab with routers, BIRD on nodes and a router, BGP
/// sessions and a fault validates; status shows them all as objects, and
/// graph colours the live sessions.
#[test]
fn real_output_validates_against_the_schemas() {
    let lab = Lab::up(&topology("calico-tor.toml"));
    let fault = lab.run(&["fault", "add", "loss", "--on", "a1", "--percent", "1"]);
    assert!(fault.status.success(), "{}", show(&fault));

    let s = retry(
        "every BGP session Established in status",
        Duration::from_secs(30),
        || {
            let s = assert_valid("status.json", &lab.run(&["status", "--json"]));
            let sessions = s["bgp_sessions"].as_array().cloned().unwrap_or_default();
            if sessions.len() == 8 && sessions.iter().all(|x| x["established"] == true) {
                Ok(s)
            } else {
                Err(format!("{sessions:#?}"))
            }
        },
    );
    assert_eq!(s["routers"][0]["name"], "spine", "{s:#}");
    assert_eq!(s["routers"][0]["ports"][1]["ip"], "172.20.2.1/24", "{s:#}");
    assert_eq!(s["routers"][0]["agent"]["name"], "bird", "{s:#}");
    assert_eq!(
        s["agents"].as_array().unwrap().len(),
        5,
        "4 nodes' BIRDs and the spine's: {s:#}"
    );
    let a1 = s["bgp_sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["on"] == "a1")
        .expect("a1's session");
    assert_eq!(a1["peer"], "spine", "{a1}");
    assert_eq!(s["faults"][0]["kind"], "loss", "{s:#}");
    assert_eq!(s["faults"][0]["on"], "a1", "{s:#}");
    assert_eq!(s["faults"][0]["options"]["percent"], 1.0, "{s:#}");

    // The same sessions, drawn by graph: green when Established.
    let graph = lab.run(&["graph"]);
    let dot = String::from_utf8_lossy(&graph.stdout);
    let sessions: Vec<&str> = dot.lines().filter(|l| l.contains("style=dotted")).collect();
    assert_eq!(sessions.len(), 4, "{dot}");
    assert!(sessions.iter().all(|l| l.contains("color=green")), "{dot}");

    let snap = assert_valid("snapshot.json", &lab.run(&["snapshot", "--json"]));
    assert!(!snap["namespaces"].as_array().unwrap().is_empty());
    let trace = assert_valid("trace.json", &lab.run(&["trace", "a1/pod-1", "b2/pod-1", "--json"]));
    assert!(!trace["hops"].as_array().unwrap().is_empty(), "{trace:#}");

    // b2's BIRD stopped: the spine's session with it leaves Established,
    // and graph draws that one red with the spine's state.
    let down = lab.run(&["fault", "add", "agent-down", "--on", "b2"]);
    assert!(down.status.success(), "{}", show(&down));
    retry("graph shows b2's session down", Duration::from_secs(30), || {
        let dot = String::from_utf8_lossy(&lab.run(&["graph"]).stdout).to_string();
        let sessions: Vec<&str> = dot.lines().filter(|l| l.contains("style=dotted")).collect();
        let red: Vec<&str> = sessions.iter().copied().filter(|l| l.contains("color=red")).collect();
        let green = sessions.iter().filter(|l| l.contains("color=green")).count();
        match red.as_slice() {
            [one] if one.contains("node_b2") && one.contains("xlabel=") && green == 3 => Ok(()),
            _ => Err(dot),
        }
    });
    let s = assert_valid("status.json", &lab.run(&["status", "--json"]));
    assert!(
        s["bgp_sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["established"] == false),
        "{s:#}"
    );
}

//! `probe pingall` in-process: a healthy lab passes, and a node cut off its
//! switch fails exactly the pairs that cross its link, no more, no fewer.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Four nodes with five pods each: 380 pairs, same-node and cross-node.
const TOPOLOGY: &str = "name = \"pingall\"\n\
[[node]]\nname = \"master\"\npods = 5\n\
[[node]]\nname = \"worker{i}\"\ncount = 3\npods = 5\n";

fn pingall_json(lab: &Lab) -> (Option<i32>, Value) {
    let out = lab.run(&["probe", "pingall", "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{}", show(&out)));
    (out.status.code(), v)
}

fn failing_pairs(v: &Value) -> BTreeSet<(String, String)> {
    v["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f["from"].as_str().unwrap().to_string(),
                f["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_cut_node_fails_exactly_the_pairs_across_its_link() {
    let topo = TempFile::toml(TOPOLOGY);
    let lab = Lab::up(&topo.path);
    let (code, v) = pingall_json(&lab);
    assert_eq!(v["total"], 380, "{v}");
    assert_eq!((code, &v["failed"]), (Some(0), &Value::from(0)), "a healthy lab: {v}");

    let out = lab.run(&["fault", "add", "link-down", "--on", "worker2"]);
    assert!(out.status.success(), "{}", show(&out));
    let (code, v) = pingall_json(&lab);
    assert_eq!(code, Some(1), "failing pairs make pingall exit 1");
    let on_worker2 = |p: &str| p.starts_with("worker2/");
    let pods: Vec<String> = lab.pods().into_iter().map(|(p, _)| p).collect();
    let expected: BTreeSet<(String, String)> = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a.clone(), b.clone())))
        .filter(|(a, b)| on_worker2(a) != on_worker2(b))
        .collect();
    assert_eq!(expected.len(), 2 * 5 * 15);
    assert_eq!(
        failing_pairs(&v),
        expected,
        "only pairs across worker2's link fail; its own pods still reach each other"
    );
    let addresses: BTreeSet<String> = lab.pods().into_iter().map(|(_, ip)| ip).collect();
    for f in v["failures"].as_array().unwrap() {
        assert!(
            addresses.contains(f["from_ip"].as_str().unwrap()) && addresses.contains(f["to_ip"].as_str().unwrap()),
            "{f}"
        );
    }

    let out = lab.run(&["fault", "rm", "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    retry("pingall passes once worker2 is back", Duration::from_secs(30), || {
        let (code, v) = pingall_json(&lab);
        if code == Some(0) {
            Ok(())
        } else {
            Err(format!("{} pairs fail", v["failed"]))
        }
    });
}

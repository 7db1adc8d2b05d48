//! No input makes cnilab panic: the shipped topologies and scenarios,
//! mutated (bytes flipped, lines deleted, duplicated or swapped, values
//! swapped for edge cases), go through `validate`'s code path in-process.
//! Every topology it accepts must give a plan, and every rejection must stay
//! short. CNILAB_FUZZ_CASES sets the number of cases (default 5000, under ten
//! seconds in a debug build), CNILAB_FUZZ_SEED the seed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use cnilab::model::error::Source;
use cnilab::model::paths::LabPaths;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The longest error output a rejected input may give.
const MAX_ERROR_BYTES: usize = 64 * 1024;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn shipped(dir: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .expect("shipped folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("readable"))
        .collect()
}

/// Values near every limit the formats have.
fn dictionary() -> Vec<String> {
    let mut d: Vec<String> = [
        "0",
        "1",
        "-1",
        "2",
        "3",
        "12",
        "13",
        "15",
        "16",
        "20",
        "24",
        "26",
        "29",
        "30",
        "31",
        "32",
        "33",
        "576",
        "9216",
        "9217",
        "4096",
        "4097",
        "65535",
        "65536",
        "16777215",
        "16777216",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "99999999999999999999",
        "0x10",
        "1_000",
        "1.5",
        "nan",
        "inf",
        "true",
        "1979-05-27",
        "[]",
        "{}",
        "[1, \"a\"]",
        "[[]]",
        "[\"\"]",
        "\"\"",
        "\" \"",
        "\"{i}\"",
        "\"n{i}\"",
        "\"{i}{i}\"",
        "\"worker{i}\"",
        "\"master\"",
        "\"tor1\"",
        "\"tor2\"",
        "\"spine\"",
        "\"vxlan\"",
        "\"host-gw\"",
        "\"udp\"",
        "\"bgp\"",
        "\"ipip\"",
        "\"full\"",
        "\"tor\"",
        "\"reflectors\"",
        "\"flannel\"",
        "\"calico\"",
        "\"ok\"",
        "\"fail\"",
        "\"pingall\"",
        "\"0s\"",
        "\"1ms\"",
        "\"-1s\"",
        "\"99999999999999999999s\"",
        "\"1h\"",
        "\"ünïcødé\"",
        "\"\u{1F600}\"",
        "\"a\\u0000b\"",
        "\"../../etc\"",
        "\"/etc\"",
        "\"a/b\"",
        "\"172.20.0.0\"",
        "\"172.20.0.1\"",
        "\"172.20.0.255\"",
        "\"172.20.0.10\"",
        "\"255.255.255.255\"",
        "\"0.0.0.0\"",
        "\"1.2.3\"",
        "\"10.0.0.0/33\"",
        "\"10.0.0.1/8\"",
        "[\"master\", \"master\"]",
        "[\"tor1\", \"tor1\"]",
        "{ ok = false }",
        "{ ok = true, error_contains = \"x\" }",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for len in 0..=32 {
        d.push(format!("\"10.244.0.0/{len}\""));
        d.push(format!("\"172.20.0.0/{len}\"").replace("172.20.0.0/0", "0.0.0.0/0"));
    }
    for net in [
        "0.0.0.0/0",
        "0.0.0.0/1",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "255.255.255.255/32",
        "128.0.0.0/1",
        "192.168.0.0/16",
        "10.0.0.0/8",
    ] {
        d.push(format!("\"{net}\""));
    }
    d.push(format!("\"{}\"", "x".repeat(70_000)));
    d.push(format!("\"{}\"", "é".repeat(5_000)));
    d
}

/// Whole lines that may be inserted.
const SNIPPETS: &[&str] = &[
    "[[node]]",
    "[[switch]]",
    "[[router]]",
    "[[step]]",
    "[network]",
    "[network.flannel]",
    "[network.calico]",
    "[network.foo]",
    "name = \"n{i}\"",
    "count = 4096",
    "pods = 4096",
    "pods = 64",
    "max_pods = 1",
    "ip = \"172.20.0.1\"",
    "switch = \"tor2\"",
    "switches = [\"tor1\"]",
    "subnet = \"172.21.0.0/30\"",
    "block_size = 31",
    "subnet_len = 30",
    "backend = \"udp\"",
    "mode = \"ipip\"",
    "mesh = \"tor\"",
    "reflectors = []",
    "asn = 0",
    "seed = 18446744073709551615",
    "[[node]]\nname = \"x\"",
    "[[switch]]\nname = \"tor1\"\nsubnet = \"172.20.0.0/24\"",
    "a.b.c = 1",
    "x = ",
    "[",
    "\"",
    "'''",
    "\u{feff}",
    "# comment",
    "",
];

fn mutate(text: &str, r: &mut ChaCha8Rng, dict: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for _ in 0..r.random_range(1..=4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = r.random_range(0..lines.len());
        match r.random_range(0..8) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = r.random_range(0..lines.len());
                lines.swap(i, j);
            }
            3 => lines.insert(i, SNIPPETS.choose(r).expect("snippets").to_string()),
            4 => {
                // A byte flipped, mended to UTF-8.
                let mut b = lines[i].clone().into_bytes();
                if !b.is_empty() {
                    let k = r.random_range(0..b.len());
                    b[k] = *b"\"[]={}.-/0 \\#\n\t,x\xff".choose(r).expect("bytes");
                }
                lines[i] = String::from_utf8_lossy(&b).into_owned();
            }
            5 => {
                // Another table's key, for values of the wrong kind or place.
                let keys: Vec<String> = lines
                    .iter()
                    .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
                    .collect();
                if let (Some((_, v)), Some(k)) = (lines[i].clone().split_once(" = "), keys.choose(r)) {
                    lines[i] = format!("{k} = {v}");
                }
            }
            _ => {
                if let Some((k, _)) = lines[i].clone().split_once(" = ") {
                    lines[i] = format!("{k} = {}", dict.choose(r).expect("dictionary"));
                }
            }
        }
    }
    lines.join("\n")
}

/// What a case did, for the report.
#[derive(Default)]
struct Tally {
    accepted: usize,
    rejected: usize,
    panics: Vec<(String, String)>,
}

static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn guarded(tally: &mut Tally, kind: &str, text: &str, f: impl FnOnce() -> Result<bool, String>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(true)) => tally.accepted += 1,
        Ok(Ok(false)) => tally.rejected += 1,
        Ok(Err(why)) => tally.panics.push((format!("{kind}: {why}"), text.to_string())),
        Err(_) => {
            let msg = PANIC.lock().unwrap().take().unwrap_or_default();
            tally.panics.push((format!("{kind}: panic: {msg}"), text.to_string()));
        }
    }
}

/// validate's path: parse, then the plan and its JSON, as `validate --json`.
fn check_topology(text: &str) -> Result<bool, String> {
    match cnilab::profile::parse_topology(&Source::new("fuzz.toml", text)) {
        Ok(t) => {
            let plan = cnilab::profile::plan_lab(&t, &t.name, &LabPaths::of(&t.name));
            let _ = cnilab::observe::status::network_line(&plan);
            serde_json::to_string(&plan).map_err(|e| e.to_string())?;
            Ok(true)
        }
        Err(e) => {
            let shown = e.to_string();
            if shown.len() > MAX_ERROR_BYTES {
                return Err(format!("{} bytes of errors", shown.len()));
            }
            Ok(false)
        }
    }
}

fn check_scenario(path: &Path, text: &str) -> Result<bool, String> {
    std::fs::write(path, text).map_err(|e| e.to_string())?;
    match cnilab::front::scenario::load(path) {
        Ok(_) => Ok(true),
        Err(e) => {
            let shown = e.to_string();
            if shown.len() > MAX_ERROR_BYTES {
                return Err(format!("{} bytes of errors", shown.len()));
            }
            Ok(false)
        }
    }
}

#[test]
fn mutated_topologies_and_scenarios_never_panic() {
    let cases = env_u64("CNILAB_FUZZ_CASES", 5000);
    let seed = env_u64("CNILAB_FUZZ_SEED", 9);
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        *PANIC.lock().unwrap() = Some(format!("{msg} at {at}"));
    }));
    let topologies = shipped("topologies");
    let scenarios = shipped("scenarios");
    // Scenario files name their topology relative to themselves.
    let dir = std::env::temp_dir().join(format!("cnilab-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("scenarios")).expect("temp folder");
    let _ = std::os::unix::fs::symlink(repo().join("topologies"), dir.join("topologies"));
    let scenario_path = dir.join("scenarios/fuzz.toml");
    let dict = dictionary();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let (mut topo, mut scen) = (Tally::default(), Tally::default());
    let started = Instant::now();
    let mut slowest = (std::time::Duration::ZERO, String::new());
    for case in 0..cases {
        let at = Instant::now();
        let text = if case % 4 == 3 {
            let text = mutate(scenarios.choose(&mut r).expect("scenarios"), &mut r, &dict);
            guarded(&mut scen, "scenario", &text, || check_scenario(&scenario_path, &text));
            text
        } else {
            let text = mutate(topologies.choose(&mut r).expect("topologies"), &mut r, &dict);
            guarded(&mut topo, "topology", &text, || check_topology(&text));
            text
        };
        if at.elapsed() > slowest.0 {
            slowest = (at.elapsed(), text);
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "fuzz: {cases} cases (seed {seed}) in {:.1} s: topologies {} accepted, {} rejected; scenarios {} accepted, {} rejected; {} panics or overlong errors",
        started.elapsed().as_secs_f64(),
        topo.accepted,
        topo.rejected,
        scen.accepted,
        scen.rejected,
        topo.panics.len() + scen.panics.len()
    );
    eprintln!(
        "fuzz: slowest case {:.0} ms:\n{}",
        slowest.0.as_secs_f64() * 1000.0,
        cnilab::model::error::excerpt(&slowest.1, 2000)
    );
    let failures: Vec<&(String, String)> = topo.panics.iter().chain(&scen.panics).collect();
    if let Some((why, text)) = failures.first() {
        let more: Vec<&str> = failures.iter().take(10).map(|(w, _)| w.as_str()).collect();
        panic!(
            "{} of {cases} cases failed, e.g. {why}\nfirst failing input:\n{}\nfailures:\n{}",
            failures.len(),
            cnilab::model::error::excerpt(text, 4000),
            more.join("\n")
        );
    }
    // Mutations keep some inputs valid, so the plan path is exercised too.
    assert!(
        topo.accepted > 0 && topo.rejected > 0,
        "the mutations exercise both outcomes"
    );
}

/// What fuzzing found, kept as fixed cases: flannel pools of /31 and /32
/// panicked in the lease allocation, a huge scenario timeout in Duration.
#[test]
fn inputs_that_once_panicked_are_refused() {
    for cidr in ["10.244.0.0/31", "10.244.0.0/32", "10.244.0.0/30"] {
        let text = format!("name = \"x\"\n[network]\npod_cidr = \"{cidr}\"\n[[node]]\nname = \"n\"\n");
        let e = cnilab::profile::parse_topology(&Source::new("t.toml", &text)).expect_err("refused");
        assert_eq!((e.line, e.col), (3, 12), "{e}");
        assert!(e.message.contains("too small for flannel"), "{e}");
    }
    let dir = std::env::temp_dir().join(format!("cnilab-fuzz-fixed-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("scenarios")).expect("temp folder");
    let _ = std::os::unix::fs::symlink(repo().join("topologies"), dir.join("topologies"));
    let path = dir.join("scenarios/s.toml");
    for timeout in ["99999999999999999999s", "1e400s", "86401s"] {
        let text = format!(
            "name = \"s\"\ntopology = \"../topologies/flannel-vxlan.toml\"\n[[step]]\nprobe = \"pingall\"\ntimeout = \"{timeout}\"\n"
        );
        std::fs::write(&path, text).expect("write");
        let e = cnilab::front::scenario::load(&path).expect_err("refused");
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains(":5:11: "), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every prefix length of a set of networks, as pod CIDR (both profiles,
/// with each subnet_len and block_size) and as switch subnet: no panic,
/// every accepted one plans, and none accepted lies in a range no lab can use.
#[test]
fn cidr_sweep_accepts_only_usable_ranges() {
    let unusable: Vec<ipnet::Ipv4Net> = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"]
        .iter()
        .map(|n| n.parse().expect("CIDR"))
        .collect();
    let overlaps = |c: &str| {
        let n: ipnet::Ipv4Net = c.parse().expect("CIDR");
        unusable
            .iter()
            .any(|u| u.contains(&n.network()) || n.contains(&u.network()))
    };
    let bases = [
        "0.0.0.0",
        "10.0.0.0",
        "100.64.0.0",
        "127.0.0.0",
        "169.254.0.0",
        "172.20.0.0",
        "192.168.0.0",
        "224.0.0.0",
        "240.0.0.0",
        "255.255.255.255",
    ];
    let mut accepted = 0;
    for base in bases {
        for len in 0..=32u8 {
            let Ok(net) = ipnet::Ipv4Net::new(base.parse().expect("address"), len) else {
                continue;
            };
            let cidr = net.trunc().to_string();
            let mut texts = vec![format!(
                "name = \"x\"\n[[switch]]\nname = \"s\"\nsubnet = \"{cidr}\"\n[network]\npod_cidr = \"10.244.0.0/16\"\n[[node]]\nname = \"n\"\nip = \"{}\"\npods = 1\n",
                ipnet::Ipv4Net::new(net.trunc().network(), len)
                    .expect("net")
                    .hosts()
                    .nth(1)
                    .unwrap_or(net.network())
            )];
            for sub in [len.saturating_add(1), len.saturating_add(2), 24, 30, 31, 32] {
                texts.push(format!(
                    "name = \"x\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\n[network]\npod_cidr = \"{cidr}\"\n[network.flannel]\nsubnet_len = {sub}\n[[node]]\nname = \"n{{i}}\"\ncount = 2\npods = 1\n"
                ));
                texts.push(format!(
                    "name = \"x\"\n[[switch]]\nname = \"s\"\nsubnet = \"172.20.0.0/24\"\n[network]\ncni = \"calico\"\npod_cidr = \"{cidr}\"\n[network.calico]\nblock_size = {sub}\n[[node]]\nname = \"n{{i}}\"\ncount = 2\npods = 1\n"
                ));
            }
            texts.push(format!(
                "name = \"x\"\n[network]\npod_cidr = \"{cidr}\"\n[[node]]\nname = \"n\"\npods = 1\n"
            ));
            for text in texts {
                let r = catch_unwind(|| {
                    cnilab::profile::parse_topology(&Source::new("t.toml", &text)).map(|t| {
                        cnilab::profile::plan_lab(&t, &t.name, &LabPaths::of(&t.name));
                    })
                });
                match r {
                    Err(_) => panic!("panicked on:\n{text}"),
                    Ok(Ok(())) => {
                        accepted += 1;
                        assert!(!overlaps(&cidr), "accepted {cidr}:\n{text}");
                    }
                    Ok(Err(_)) => {}
                }
            }
        }
    }
    assert!(accepted > 0);
}

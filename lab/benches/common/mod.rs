//! What the benchmarks share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The cnilab binary cargo built for the benchmarks.
pub fn cnilab_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cnilab")
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Waits until the kernel has freed the namespaces of the previous run:
/// creating a namespace waits for that cleanup, so it is fast again once
/// the cleanup is over. Returns how long it took.
pub fn settle() -> Duration {
    // The kernel frees deleted namespaces in batches on a work queue, holding
    // the locks that creating one needs; between batches creation is fast
    // again, so it takes several fast creations in a row to call it done.
    const IN_A_ROW: usize = 10;
    let start = Instant::now();
    let mut fast = 0;
    while fast < IN_A_ROW && start.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        let ok = Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "unshare -n true failed");
        if t.elapsed() < Duration::from_millis(10) {
            fast += 1;
        } else {
            fast = 0;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    start.elapsed()
}

/// Replaces the section under `heading` of BENCHMARKS.md with `doc` (which
/// starts with that heading), or appends it.
// scale.rs writes its table at the top of the file instead.
#[allow(dead_code)]
pub fn write_section(heading: &str, doc: &str) {
    let path = repo().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = match old.find(heading) {
        Some(i) => {
            let rest = &old[i + heading.len()..];
            let after = rest.find("\n## ").map_or("", |j| &rest[j..]);
            format!("{}{}{}", &old[..i], doc.trim_end(), after)
        }
        None => format!("{}\n\n{}", old.trim_end(), doc.trim_end()),
    };
    std::fs::write(&path, kept.trim_end().to_string() + "\n").expect("write BENCHMARKS.md");
    eprintln!("wrote {}", path.display());
}

/// A benchmark's options: `--runs N` (default 3), `--no-write`; `None`
/// for `--list` and `--help`, which cargo asks (after printing `name`).
#[allow(dead_code)]
pub fn options(name: &str) -> Option<(usize, bool)> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--help") {
        println!("{name}: bench");
        return None;
    }
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    Some((runs, !args.iter().any(|a| a == "--no-write")))
}

/// A duration as the tables print it: `1.23 s`.
#[allow(dead_code)]
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

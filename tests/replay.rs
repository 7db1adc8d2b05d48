//! Snapshot and trace replayed from recorded dumps, without root, without
//! a namespace: the recordings under tests/dumps/ were taken from real labs
//! (`CNILAB_RECORD_DUMP=tests/dumps/NAME.json cnilab snapshot`), and the
//! snapshot and traces they give must equal `NAME.snap` and `NAME.trace`
//! beside them. `CNILAB_BLESS=1 cargo test --test replay` writes those
//! files again after a reviewed change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cnilab::observe::snapshot::Recorded;

fn dumps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/dumps")
}

/// Compares `got` with the golden file, or writes it when blessing.
fn golden(file: &str, got: &str) {
    let path = dumps().join(file);
    if std::env::var_os("CNILAB_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if want != got {
        let diff = similar::TextDiff::from_lines(&want, got)
            .unified_diff()
            .header(file, "replayed")
            .to_string();
        panic!("{file} differs from what the dump replays (CNILAB_BLESS=1 to accept):\n{diff}");
    }
}

/// One trace: `from to [--size N] [--proto P --port N]`, as the CLI takes them.
fn trace(rec: &Recorded, args: &[&str]) -> String {
    let (from, to) = (args[0], args[1]);
    let opt = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].to_string());
    let size = opt("--size").map_or(84, |s| s.parse().unwrap());
    let port = opt("--port").map(|p| p.parse().unwrap());
    let proto = cnilab::observe::trace::proto(&opt("--proto").unwrap_or("icmp".into()), port).unwrap();
    let t = cnilab::observe::trace::trace_dump(&rec.state, &rec.dump, from, to, size, proto).unwrap();
    let mut out = format!("$ cnilab trace {}\n{t}", args.join(" "));
    let dropped = serde_json::to_string(&t.dropped).unwrap();
    let _ = writeln!(out, "dropped: {dropped}\n");
    out
}

/// Replays the dump `name`: its snapshot, and each trace of `traces`.
fn replay(name: &str, traces: &[&[&str]]) {
    let rec = Recorded::load(&dumps().join(format!("{name}.json"))).unwrap();
    let snap = cnilab::observe::snapshot::from_dump(&rec.state, &rec.dump, None, false);
    golden(&format!("{name}.snap"), &snap.render());
    let text: String = traces.iter().map(|args| trace(&rec, args)).collect();
    golden(&format!("{name}.trace"), &text);
}

#[test]
fn flannel_vxlan() {
    replay(
        "flannel-vxlan",
        &[
            &["worker1/pod-1", "worker2/pod-1"],
            &["worker1/pod-1", "master"],
            &["worker1/pod-1", "worker2/pod-1", "--size", "1500"],
            &["worker1", "worker2", "--proto", "udp", "--port", "8472"],
        ],
    );
}

#[test]
fn flannel_host_gw() {
    replay(
        "flannel-routed",
        &[
            &["worker1/pod-1", "worker2/pod-1"],
            &["worker2", "worker1/pod-1"],
            &["worker1/pod-1", "10.99.0.1"],
        ],
    );
}

#[test]
fn calico_bgp() {
    replay(
        "calico-bgp",
        &[
            &["worker1/pod-1", "worker2/pod-1"],
            &["worker3/pod-1", "master"],
            &["worker1", "worker2", "--proto", "tcp", "--port", "179"],
        ],
    );
}

/// A lab with faults: tor1's MTU lowered and UDP 8472 blocked on worker2.
#[test]
fn flannel_vxlan_faults() {
    replay(
        "flannel-vxlan-faults",
        &[
            &["worker1/pod-1", "worker2/pod-1"],
            &["worker1/pod-1", "master/pod-1", "--size", "1450"],
            &["worker1/pod-1", "master/pod-1", "--size", "1300"],
        ],
    );
}

//! Shared by the integration tests: uniquely named labs that are always
//! torn down (also when a test fails), commands inside them, and retrying
//! with a deadline instead of sleeping.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cnilab binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cnilab")
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ has a parent")
        .to_path_buf()
}

/// A shipped topology.
pub fn topology(name: &str) -> PathBuf {
    repo().join("topologies").join(name)
}

/// cnilab with arguments.
pub fn cnilab(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("cnilab runs")
}

/// Text of a command's output, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A lab name no other test or test process uses (1-12 chars, a letter first).
pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("t{:05x}{:x}", std::process::id() & 0xfffff, n)
}

/// A running lab, removed when dropped.
pub struct Lab {
    /// Its name.
    pub name: String,
}

impl Lab {
    /// Brings up `topology` under a unique name; panics with cnilab's output
    /// if that fails (the lab is still removed).
    pub fn up(topology: &Path) -> Lab {
        let lab = Lab { name: unique_name() };
        let out = lab.up_output(topology);
        assert!(
            out.status.success(),
            "cnilab up {} failed:\n{}",
            topology.display(),
            show(&out)
        );
        lab
    }

    /// Like [`Lab::up`], with more arguments for `up` (`--flannel upstream`).
    pub fn up_with(topology: &Path, args: &[&str]) -> Lab {
        let lab = Lab { name: unique_name() };
        let out = Command::new(bin())
            .arg("up")
            .arg(topology)
            .args(["--name", &lab.name])
            .args(args)
            .output()
            .expect("cnilab runs");
        assert!(
            out.status.success(),
            "cnilab up {} {args:?} failed:\n{}",
            topology.display(),
            show(&out)
        );
        lab
    }

    /// A lab name reserved for `up_output`, removed when dropped.
    pub fn reserve() -> Lab {
        Lab { name: unique_name() }
    }

    /// Runs `cnilab up` for this lab's name and returns its output.
    pub fn up_output(&self, topology: &Path) -> Output {
        Command::new(bin())
            .arg("up")
            .arg(topology)
            .args(["--name", &self.name])
            .output()
            .expect("cnilab runs")
    }

    /// cnilab with `--lab NAME` and arguments.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(["--lab", &self.name])
            .args(args)
            .output()
            .expect("cnilab runs")
    }

    /// `cnilab exec TARGET -- CMD...`.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", target, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// `exec` that must succeed; its stdout.
    pub fn exec_ok(&self, target: &str, cmd: &[&str]) -> String {
        let out = self.exec(target, cmd);
        assert!(out.status.success(), "{target}: {cmd:?} failed:\n{}", show(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// JSON printed by a command run in a target (`ip -j ...`).
    pub fn exec_json(&self, target: &str, cmd: &[&str]) -> Value {
        let text = self.exec_ok(target, cmd);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{cmd:?} in {target} printed no JSON ({e}): {text}"))
    }

    /// The text snapshot.
    pub fn snapshot(&self) -> String {
        let out = self.run(&["snapshot"]);
        assert!(out.status.success(), "snapshot failed:\n{}", show(&out));
        String::from_utf8(out.stdout).expect("utf-8 snapshot")
    }

    /// The lab's state file: plan, pods, agents.
    pub fn state(&self) -> Value {
        let path = run_dir().join(&self.name).join("lab.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("state is JSON")
    }

    /// The MTU of `dev` in a target, as its sysfs says.
    pub fn mtu(&self, target: &str, dev: &str) -> u32 {
        self.exec_ok(target, &["cat", &format!("/sys/class/net/{dev}/mtu")])
            .trim()
            .parse()
            .expect("an MTU")
    }

    /// Every pod as (`node/pod`, its IPv4 address).
    pub fn pods(&self) -> Vec<(String, String)> {
        let st = self.state();
        let mut v: Vec<(String, String)> = st["pods"]
            .as_object()
            .expect("pods")
            .iter()
            .map(|(k, p)| {
                let ip = p["ip"].as_str().expect("pod has an address");
                (k.clone(), ip.split('/').next().unwrap().to_string())
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = cnilab(&["down", &self.name]);
        if !out.status.success() {
            eprintln!("cleanup of lab {} failed:\n{}", self.name, show(&out));
        }
    }
}

/// Every pod of a lab pings every other pod (each pair retried for 10 s).
pub fn pingall(lab: &Lab) {
    let pods = lab.pods();
    for (src, _) in &pods {
        for (dst, ip) in &pods {
            if src == dst {
                continue;
            }
            retry(&format!("ping {src} -> {dst} ({ip})"), Duration::from_secs(10), || {
                let out = lab.exec(src, &["ping", "-c1", "-W1", ip]);
                if out.status.success() { Ok(()) } else { Err(show(&out)) }
            });
        }
    }
}

/// The base folder of lab state.
pub fn run_dir() -> PathBuf {
    std::env::var_os("CNILAB_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/cnilab"))
}

/// Network namespaces whose names start with `prefix`.
pub fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if !zombie && cmd.contains(needle) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

/// Asserts that nothing of lab `name` is left: namespaces, processes, state.
pub fn assert_gone(name: &str) {
    let ns = namespaces_with(&format!("cnilab.{name}."));
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let dir = run_dir().join(name);
    let procs = processes_mentioning(&format!("{}/", dir.display()));
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(!dir.exists(), "{} is left", dir.display());
    let lock = run_dir().join(".locks").join(name);
    assert!(!lock.exists(), "{} is left", lock.display());
}

/// Calls `f` until it returns Ok or `deadline` passes, with a short backoff;
/// panics with the last error.
pub fn retry<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= until => panic!("{what}: still failing after {deadline:?}: {e}"),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// A topology written to a temporary file, removed when dropped.
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `text` to a fresh temporary `.toml` file.
    pub fn toml(text: &str) -> TempFile {
        let dir = std::env::temp_dir().join("cnilab-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{}.toml", unique_name()));
        std::fs::write(&path, text).expect("write temp topology");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `cnilab capture ARGS` until its packet count is reached, calling
/// `trigger` meanwhile; its standard output.
pub fn capture(lab: &Lab, args: &[&str], trigger: impl Fn()) -> String {
    let mut cap = Command::new(bin())
        .args(["--lab", &lab.name, "capture"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capture starts");
    let stderr = cap.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.contains("listening on") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    if !listening {
        let _ = cap.kill();
        panic!("tcpdump never listened: {seen:?}");
    }
    retry("capture gets its packets", Duration::from_secs(20), || {
        trigger();
        match cap.try_wait() {
            Ok(Some(_)) => Ok(()),
            _ => Err("capture still waiting".to_string()),
        }
    });
    let out = cap.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `down NAME` succeeds, its summary says `summary` (e.g. "removed 11
/// namespaces, stopped 4 processes"), and nothing of the lab remains.
pub fn down_reports_and_leaves_nothing(name: &str, summary: &str) {
    let out = cnilab(&["down", name]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains(summary), "{}", show(&out));
    assert_gone(name);
}

/// A point of `up` to `kill -9` it at: what it is, and whether the lab
/// named so has reached it.
#[allow(dead_code)]
pub type KillPoint = (&'static str, fn(&str) -> bool);

/// For each point, `up TOPOLOGY ARGS` is killed with SIGKILL once the lab
/// reaches it (or when `up` ends, or after 60 s), then `down` must leave
/// no namespace, process, mount or state of the lab.
#[allow(dead_code)]
pub fn kill_9_of_up_at_each_point_then_down_leaves_nothing(topology: &Path, args: &[&str], points: &[KillPoint]) {
    for (what, reached) in points.iter().copied() {
        let lab = Lab::reserve();
        let mut child = std::process::Command::new(bin())
            .args(["up", topology.to_str().unwrap(), "--name", &lab.name])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cnilab runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if reached(&lab.name) || child.try_wait().expect("wait").is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        let _ = child.kill();
        let _ = child.wait();
        let out = cnilab(&["down", &lab.name]);
        assert!(out.status.success(), "{what}: down failed:\n{}", show(&out));
        assert_gone(&lab.name);
        let procs = processes_in_lab(&lab.name);
        assert!(
            procs.is_empty(),
            "{what}: processes left in the lab's namespaces: {procs:?}"
        );
        let left: Vec<String> = processes_mentioning(&format!("{}/", run_dir().join(&lab.name).display()));
        assert!(left.is_empty(), "{what}: processes left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        assert!(
            !mounts.lines().any(|l| l.contains(&format!("cnilab.{}.", lab.name))),
            "{what}: a mount of the lab is left"
        );
    }
}

#[allow(dead_code)]
/// Processes whose network namespace is one of the lab's.
pub fn processes_in_lab(name: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = namespaces_with(&format!("cnilab.{name}."))
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            && inodes.contains(&m.ino())
        {
            out.push(pid.to_string());
        }
    }
    out
}

/// How many pods of the lab have their CNI result cached (wired).
#[allow(dead_code)]
pub fn pods_wired(lab: &str) -> usize {
    let nodes = run_dir().join(lab).join("nodes");
    std::fs::read_dir(nodes)
        .map(|d| {
            d.flatten()
                .map(|n| {
                    std::fs::read_dir(n.path().join("cni/lib/results"))
                        .map(|r| r.count())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The points of any lab's `up`: its folder made, its first namespace, a
/// process of it running in one (an agent), a pod wired, `up` done.
#[allow(dead_code)]
pub fn kill_points() -> Vec<KillPoint> {
    vec![
        ("state folder made", |lab| run_dir().join(lab).exists()),
        ("a namespace made", |lab| {
            !namespaces_with(&format!("cnilab.{lab}.")).is_empty()
        }),
        ("an agent running", |lab| !processes_in_lab(lab).is_empty()),
        ("a pod wired", |lab| pods_wired(lab) > 0),
        ("up finished", |_| false),
    ]
}

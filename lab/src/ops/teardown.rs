//! `down`: removing a lab completely, from its names alone, so that it works
//! after a crash or a `kill -9` of any earlier cnilab: every process living
//! in one of the lab's namespaces is stopped, every namespace is deleted
//! (the kernel then frees all their devices in one batch), and the state
//! folder goes.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::kernel::netns;
use crate::kernel::retry::{self, Backoff};
use crate::model::paths::{self, LabPaths};

/// How long processes get to exit on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// What `down` removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DownReport {
    /// The lab.
    pub lab: String,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Processes stopped.
    pub processes: usize,
    /// Whether a state folder was removed.
    pub state: bool,
}

/// The inodes of the named namespaces: what `/proc/PID/ns/net` points at.
fn ns_inodes(names: &[String]) -> BTreeSet<u64> {
    names
        .iter()
        .filter_map(|n| std::fs::metadata(netns::path_of(n)).ok())
        .map(|m| m.ino())
        // An unmounted leftover file has the inode of an empty file, not a namespace.
        .filter(|ino| *ino != 0)
        .collect()
}

/// Processes whose network namespace is one of `inodes`.
pub fn processes_in(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| inodes.contains(&m.ino()))
                .unwrap_or(false)
        })
        .collect()
}

/// Stops processes: SIGTERM, then SIGKILL for those still there after the
/// grace time. Polls their exit with a short backoff, no fixed sleep.
pub fn stop_processes(pids: &[i32]) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let all_gone = || pids.iter().all(|p| !crate::kernel::runtime::alive(*p)).then_some(());
    let grace = Backoff::new(TERM_GRACE, Duration::from_millis(1), Duration::from_millis(50));
    if retry::until(grace, all_gone).is_some() {
        return;
    }
    for pid in pids.iter().filter(|p| crate::kernel::runtime::alive(**p)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let killed = Backoff::new(
        Duration::from_secs(2),
        Duration::from_millis(5),
        Duration::from_millis(5),
    );
    let _ = retry::until(killed, all_gone);
}

/// Removes everything of lab `lab`. Idempotent.
pub fn down(lab: &str) -> Result<DownReport> {
    down_with(lab, &crate::kernel::progress::Progress::quiet())
}

/// [`down`], reporting its phases. The name is checked before anything is
/// looked at: namespaces are matched by the exact prefix `cnilab.<lab>.`, and
/// only the lab's own folder under the run folder is removed. A namespace or
/// folder that cannot be removed does not stop the rest: everything else
/// is removed, and the error lists every failure.
pub fn down_with(lab: &str, progress: &crate::kernel::progress::Progress) -> Result<DownReport> {
    crate::model::names::check(crate::model::names::Kind::Lab, lab, "lab to remove")?;
    let prefix = paths::lab_ns_prefix(lab);
    let names: Vec<String> = netns::list().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    let inodes = ns_inodes(&names);
    let mut pids = processes_in(&inodes);
    progress.phase("stop", pids.len());
    stop_processes(&pids);
    // A process started while the others stopped (a CNI plugin's IPAM
    // child, say) is found by another look; a few rounds catch any chain.
    for _ in 0..5 {
        let late = processes_in(&inodes);
        if late.is_empty() {
            break;
        }
        stop_processes(&late);
        pids.extend(late);
    }
    progress.phase("remove", names.len());
    let mut failures = Vec::new();
    let mut removed = 0;
    for n in &names {
        match netns::delete(n) {
            Ok(()) => removed += 1,
            Err(e) => failures.push(format!("namespace {n}: {e:#}")),
        }
        progress.step();
    }
    progress.finish();
    let state = remove_state_folder(lab).unwrap_or_else(|e| {
        failures.push(format!("{e:#}"));
        false
    });
    // A lab process that outlived the looks above (its namespace is gone,
    // the process holds it) may have written into the folder just removed:
    // stop it, and remove what it wrote, since this down removed the folder.
    let late = processes_in(&inodes);
    if !late.is_empty() {
        stop_processes(&late);
        pids.extend(late);
    }
    if state {
        let root = LabPaths::of(lab).root;
        if paths::inside(&paths::run_base(), &root) && std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                failures.push(format!("{}: {e}", root.display()));
            }
        }
    }
    if let Some(e) = all_failures(&format!("lab {lab} is not completely removed"), &failures) {
        return Err(e);
    }
    Ok(DownReport {
        lab: lab.to_string(),
        namespaces: removed,
        processes: pids.len(),
        state,
    })
}

/// One error listing every failure under `headline`, or none.
pub fn all_failures(headline: &str, failures: &[String]) -> Option<anyhow::Error> {
    match failures {
        [] => None,
        [one] => Some(anyhow::anyhow!("{headline}: {one}")),
        many => Some(anyhow::anyhow!(
            "{headline}: {} failures:\n  - {}",
            many.len(),
            many.join("\n  - ")
        )),
    }
}

/// Removes `<run dir>/<lab>` when it is the lab's own: a real folder (not a
/// link) inside the run folder that holds the marker naming this lab, or an
/// empty one left by a crash. Anything else is left alone and reported.
fn remove_state_folder(lab: &str) -> Result<bool> {
    let base = paths::run_base();
    let lp = LabPaths::new(&base, lab);
    let root = &lp.root;
    anyhow::ensure!(
        paths::inside(&base, root),
        "{} is outside {}",
        root.display(),
        base.display()
    );
    for claim in paths::claim_dirs(lab) {
        // Checked like the lab's folder: inside the run base, a real folder.
        if paths::inside(&base, &claim) && std::fs::symlink_metadata(&claim).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(&claim);
        }
    }
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot look at {}", root.display())),
    };
    let marked = std::fs::read_to_string(lp.marker()).is_ok_and(|m| m.trim() == lab);
    if meta.is_dir() && marked {
        std::fs::remove_dir_all(root).with_context(|| format!("cannot remove {}", root.display()))?;
        return Ok(true);
    }
    // Left by a crash of an older cnilab between creating the marker and
    // writing it: the folder holds nothing but an empty marker.
    let only_empty_marker = std::fs::read_dir(root).is_ok_and(|d| {
        let entries: Vec<_> = d.flatten().collect();
        entries.len() == 1
            && entries[0].file_name() == lp.marker().file_name().unwrap_or_default()
            && entries[0].metadata().is_ok_and(|m| m.is_file() && m.len() == 0)
    });
    if meta.is_dir() && only_empty_marker {
        let _ = std::fs::remove_file(lp.marker());
    }
    if meta.is_dir() && std::fs::remove_dir(root).is_ok() {
        return Ok(true);
    }
    Err(anyhow::anyhow!(
        "{} is not a cnilab lab folder (no {} naming lab {lab}), so it was left alone; remove it yourself if it is yours",
        root.display(),
        lp.marker().file_name().unwrap_or_default().to_string_lossy()
    ))
}

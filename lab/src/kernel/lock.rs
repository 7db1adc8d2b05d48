//! One writer per lab. Every command that changes a lab (up, down, fault,
//! pod) holds the lab's lock, an flock on `<run dir>/.locks/<lab>`, for as
//! long as it changes it, and re-reads the lab's state once it holds it, so
//! two commands never build over each other or lose each other's records.
//! The kernel drops an flock when its holder dies, so a `kill -9` never
//! leaves a lab locked. `down` removes the lock file while holding it;
//! whoever was waiting on the old file notices and locks the new one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::kernel::retry::Backoff;
use crate::model::error::{Error, Result};
use crate::model::paths;

/// How long `down` lets a command it interrupts clean up before killing it.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// A held lab lock; released when dropped.
#[derive(Debug)]
pub struct LabLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl LabLock {
    /// Removes the lock file while still holding it: the lab is gone, and
    /// whoever waits on the old file retries on a new one.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_path(lab: &str) -> Result<PathBuf> {
    crate::model::names::check(crate::model::names::Kind::Lab, lab, "lab to lock")?;
    Ok(paths::run_base().join(".locks").join(lab))
}

/// Takes the lock if it is free; `None` when another process holds it.
pub fn try_acquire(lab: &str) -> Result<Option<LabLock>> {
    let path = lock_path(lab)?;
    let dir = path.parent().expect("lock files have a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()).into()),
        };
        // The file may have been removed by a `down` between our open and
        // our lock; then the lock guards nothing and a newer file counts.
        let same = std::fs::metadata(&path)
            .ok()
            .zip(lock.metadata().ok())
            .is_some_and(|(on_disk, ours)| on_disk.ino() == ours.ino() && on_disk.dev() == ours.dev());
        if same {
            return Ok(Some(LabLock { _lock: lock, path }));
        }
    }
}

/// The process holding a lab's lock, from the kernel's table of locks.
pub fn holder(lab: &str) -> Option<i32> {
    let meta = std::fs::metadata(lock_path(lab).ok()?).ok()?;
    let dev = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
        meta.ino()
    );
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter's
        // line has "->" after the number and is not the holder.
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&dev.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// The holder's command line, for messages.
fn describe(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmd
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .take(4)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let shown = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { short_exe(w) } else { w.clone() })
        .collect::<Vec<_>>()
        .join(" ");
    format!("pid {pid}: {}", crate::model::names::excerpt(&shown))
}

fn short_exe(w: &str) -> String {
    Path::new(w)
        .file_name()
        .map_or_else(|| w.to_string(), |n| n.to_string_lossy().into_owned())
}

/// Waits up to `patience` for the lock, then fails naming its holder.
pub fn acquire(lab: &str, patience: Duration) -> Result<LabLock> {
    let mut backoff = Backoff::new(patience, Duration::from_millis(2), Duration::from_millis(100));
    loop {
        if let Some(l) = try_acquire(lab)? {
            return Ok(l);
        }
        if backoff.expired() {
            return Err(busy(lab));
        }
        backoff.sleep();
    }
}

/// The error for a lab another command is changing.
pub fn busy(lab: &str) -> Error {
    let who = holder(lab).map_or_else(|| "another cnilab".to_string(), describe);
    Error::env(
        format!("lab {lab} is being changed by another command ({who})"),
        format!("wait for it to finish, or remove the lab with `cnilab down {lab}`"),
    )
}

/// Whether `pid` runs a cnilab binary: the only processes `down` stops for
/// holding a lock (a pid read back from the kernel's table, not trusted blindly).
fn is_cnilab(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().starts_with("cnilab")))
        .unwrap_or(false)
}

/// Whether `pid` is a `cnilab down`.
fn is_down(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == b"down"))
}

/// The lock for `down`: a command still changing the lab (an `up` still
/// building it) is asked to stop with SIGTERM, which makes `up` remove what
/// it built, and killed if it has not let go after a grace time.
pub fn acquire_stopping_holder(lab: &str, on_wait: impl Fn(&str)) -> Result<LabLock> {
    let mut told = false;
    let mut killed = false;
    // SIGTERM at once, SIGKILL after one grace time, giving up after two.
    let mut backoff = Backoff::new(STOP_GRACE * 2, Duration::from_millis(2), Duration::from_millis(50));
    let kill_at = Instant::now() + STOP_GRACE;
    loop {
        if let Some(l) = try_acquire(lab)? {
            return Ok(l);
        }
        // Another `down` of the same lab is left to finish: it does what we would.
        let stoppable = |p: &i32| is_cnilab(*p) && *p != std::process::id() as i32 && !is_down(*p);
        if let Some(pid) = holder(lab).filter(stoppable) {
            if !told {
                on_wait(&describe(pid));
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                told = true;
            } else if Instant::now() >= kill_at && !killed {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed = true;
            }
        } else if backoff.expired() {
            return Err(busy(lab));
        }
        backoff.sleep();
    }
}

//! Network namespaces, made and entered the way iproute2 does it but without
//! forking: a namespace is born on a short-lived thread by `unshare` and kept
//! by bind-mounting that thread's `/proc/thread-self/ns/net` onto
//! `/run/netns/<name>`. `setns` only ever changes a thread of our own that
//! ends right after, so no runtime thread is left in a lab namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Only cnilab's own namespaces are made or removed, and a name never
/// reaches outside /run/netns.
fn check_owned(name: &str) -> Result<()> {
    let ok = name.starts_with(crate::model::paths::NS_PREFIX) && !name.contains('/') && name.len() < 256;
    anyhow::ensure!(
        ok,
        "{:?} is not a cnilab namespace name",
        crate::model::names::excerpt(name)
    );
    Ok(())
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so that
/// namespaces bound there stay visible to other mount namespaces.
pub fn ensure_run_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR).with_context(|| format!("cannot create {NETNS_RUN_DIR}"))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("cannot bind-mount {NETNS_RUN_DIR} onto itself"))?;
            shared().with_context(|| format!("cannot make {NETNS_RUN_DIR} a shared mount"))
        }
        Err(e) => Err(anyhow!("cannot make {NETNS_RUN_DIR} a shared mount: {e}")),
    }
}

/// An open handle on a named network namespace.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the named namespace and runs `setup` inside it, on the thread
    /// that made it, before that thread ends. `setup` is where sysctls are
    /// written and netlink sockets opened, since both bind to the namespace
    /// of the calling thread.
    pub fn create<T: Send>(name: &str, setup: impl FnOnce() -> Result<T> + Send) -> Result<(Netns, T)> {
        check_owned(name)?;
        let path = path_of(name);
        let out = std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                if let Err(e) = mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                ) {
                    let _ = std::fs::remove_file(&path);
                    return Err(anyhow!("cannot bind the new namespace to {}: {e}", path.display()));
                }
                setup()
            })
            .join()
            .map_err(|_| anyhow!("namespace thread panicked"))?
        });
        let value = match out {
            Ok(v) => v,
            Err(e) => {
                // A namespace whose setup failed is removed, not left half-made.
                let _ = delete(name);
                return Err(e.context(format!("creating namespace {name}")));
            }
        };
        Ok((Netns::open(name)?, value))
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<Netns> {
        let path = path_of(name);
        let file = File::open(&path).with_context(|| format!("namespace {name} does not exist"))?;
        Ok(Netns {
            name: name.to_string(),
            file,
        })
    }

    /// Opens a namespace by path (a CNI_NETNS, a /proc/PID/ns/net).
    pub fn open_path(path: &Path) -> Result<Netns> {
        let file = File::open(path).with_context(|| format!("cannot open namespace {}", path.display()))?;
        Ok(Netns {
            name: path.display().to_string(),
            file,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file descriptor, for `setns` and `IFLA_NET_NS_FD`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The raw descriptor, for netlink attributes and `pre_exec`.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The inode that identifies the namespace (as `/proc/PID/ns/net` shows).
    pub fn inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.ino())
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                setns(self.fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {}", self.name))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace {} panicked", self.name))?
        })
    }
}

/// Removes a named namespace: the kernel frees its devices in one batch once
/// nothing holds it any more. Removing one that is gone is not an error.
pub fn delete(name: &str) -> Result<()> {
    check_owned(name)?;
    let path = path_of(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(anyhow!("cannot unmount {}: {e}", path.display())),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("cannot remove {}: {e}", path.display())),
    }
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// Writes a sysctl of the calling thread's network namespace; `key` is the
/// path under /proc/sys (`net/ipv4/ip_forward`).
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("cannot set {} to {value}", sysctl_name(key)))
}

/// Reads a sysctl of the calling thread's network namespace.
pub fn read_sysctl(key: &str) -> Result<String> {
    let path = Path::new("/proc/sys").join(key);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", sysctl_name(key)))?
        .trim()
        .to_string())
}

/// The dotted name sysctl(8) shows for a /proc/sys path: dots inside an
/// interface name become slashes (`net.ipv4.conf.eth0/100.rp_filter`).
pub fn sysctl_name(key: &str) -> String {
    key.split('/')
        .map(|p| p.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A command that will run inside `ns` (for iproute2, iptables, tc).
pub fn command(ns: &Netns, program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(program);
    let fd = ns.raw_fd();
    // SAFETY: the child only makes the setns system call before exec.
    unsafe {
        cmd.pre_exec(move || enter_in_child(fd));
    }
    cmd
}

/// Runs a program inside `ns` and fails with its stderr when it fails.
pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    run_io(ns, program, args, None)
}

/// Runs a program inside `ns` with `input` on its standard input, and
/// fails with its stderr when it fails.
pub fn run_in_with_input(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<()> {
    run_io(ns, program, args, Some(input)).map(|_| ())
}

fn run_io(ns: &Netns, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command(ns, program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if let Some(text) = input {
        // Dropped after writing, so the program sees the end of its input.
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin for {program}"))?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "{program} {} failed in {}: {}",
            args.join(" "),
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs `f` on the calling thread inside namespace `fd`, then brings the
/// thread back to the process's own namespace. Children spawned in `f`
/// start in `fd` without a `pre_exec` hook, so the spawn can use
/// posix_spawn (a vfork) instead of copying this process's page tables.
/// `f` must not block: the thread belongs to a pool.
pub fn with_netns<T>(fd: RawFd, f: impl FnOnce() -> T) -> io::Result<T> {
    static HOME: std::sync::OnceLock<io::Result<File>> = std::sync::OnceLock::new();
    // /proc/self is the main thread, which never leaves the process's namespace.
    let home = match HOME.get_or_init(|| File::open("/proc/self/ns/net")) {
        Ok(f) => f.as_raw_fd(),
        Err(e) => return Err(io::Error::new(e.kind(), format!("/proc/self/ns/net: {e}"))),
    };
    // SAFETY: plain system calls on descriptors that stay open.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let out = f();
    // SAFETY: as above.
    if unsafe { libc::setns(home, libc::CLONE_NEWNET) } != 0 {
        // A pool thread left in a lab namespace would misplace later work.
        panic!(
            "cannot return to the process's network namespace: {}",
            io::Error::last_os_error()
        );
    }
    Ok(out)
}

/// Enters namespace `fd` in a freshly forked child; for `pre_exec`.
///
/// # Safety
/// Only async-signal-safe work happens here: one `setns` system call.
pub fn enter_in_child(fd: RawFd) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor the parent keeps open.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_like_sysctl_8() {
        assert_eq!(sysctl_name("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(
            sysctl_name("net/ipv4/conf/flannel.1/rp_filter"),
            "net.ipv4.conf.flannel/1.rp_filter"
        );
    }
}

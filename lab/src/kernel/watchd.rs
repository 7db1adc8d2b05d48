//! `cnilab-watchd`: the lab's datastore watch service. The agents watch the
//! datastore folder (one file per key) as real node agents watch etcd. Each
//! inotify instance counts against fs.inotify.max_user_instances (128 on
//! most distributions), so 200 agents with one each would fail; this
//! service holds the lab's one inotify instance and streams each change to
//! the agents that asked, over a Unix socket, as etcd streams a watch.
//!
//! The protocol is lines: the agent sends `WATCH <folder>`, the service
//! answers `OK` once the watch is in place (so what the agent lists next
//! misses nothing), then one line per changed key, and `*` when the kernel's
//! event queue overflowed and every key must be read again.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{info, warn};

use crate::kernel::overlay;

pub use crate::kernel::overlay::WATCH_FLAGS;

/// cnilab-watchd's command line.
#[derive(Parser, Debug)]
#[command(name = "cnilab-watchd", about = "cnilab's datastore watch service")]
pub struct Args {
    /// The Unix socket to serve on.
    #[arg(long)]
    pub socket: PathBuf,
}

/// The entry point: `cnilab-watchd` as `argv[0]`.
pub fn main() -> ! {
    overlay::agent_main(run(Args::parse()))
}

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

type Subscribers = Arc<Mutex<BTreeMap<WatchDescriptor, Vec<UnboundedSender<Arc<str>>>>>>;

async fn run(args: Args) -> Result<()> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    // SAFETY: the Inotify is owned by the AsyncFd and closed only when it drops.
    let fd = Arc::new(unsafe { AsyncFd::register_with_interest(Fd(inotify), tokio::io::Interest::READABLE) }?);
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        UnixListener::bind(&args.socket).with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    info!("serving watches on {}", args.socket.display());
    let subs: Subscribers = Default::default();
    loop {
        tokio::select! {
            r = overlay::terminated() => { r?; break; }
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let (fd, subs) = (fd.clone(), subs.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &fd, &subs).await {
                        warn!("a watcher left: {e:#}");
                    }
                });
            }
            ready = fd.readable() => {
                let mut guard = ready?;
                match guard.get_inner().0.read_events() {
                    Ok(events) => dispatch(&subs, events),
                    Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    // The socket file stays: `down` removes the lab's folder, and removing
    // it here could race with a new lab of the same name.
    Ok(())
}

/// Sends each changed key to the watchers of its folder.
fn dispatch(subs: &Subscribers, events: Vec<nix::sys::inotify::InotifyEvent>) {
    let mut subs = subs.lock().expect("subscribers");
    for e in events {
        if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            warn!("inotify queue overflowed: every watcher re-reads every key");
            let all: Arc<str> = Arc::from("*");
            for senders in subs.values_mut() {
                senders.retain(|s| s.send(all.clone()).is_ok());
            }
            continue;
        }
        let Some(name) = e.name.and_then(|n| n.into_string().ok()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Some(senders) = subs.get_mut(&e.wd) {
            let key: Arc<str> = Arc::from(name);
            senders.retain(|s| s.send(key.clone()).is_ok());
        }
    }
}

/// One watcher: its WATCH line, then its events until it goes.
async fn serve(stream: UnixStream, fd: &AsyncFd<Fd>, subs: &Subscribers) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let line = lines.next_line().await?.context("no WATCH line")?;
    let dir = PathBuf::from(line.strip_prefix("WATCH ").context("expected WATCH <folder>")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (tx, mut rx) = unbounded_channel::<Arc<str>>();
    {
        // Under the lock, so no event of the new watch is dispatched before
        // its watcher is registered.
        let mut subs = subs.lock().expect("subscribers");
        let wd = fd.get_ref().0.add_watch(&dir, WATCH_FLAGS)?;
        subs.entry(wd).or_default().push(tx);
    }
    write.write_all(b"OK\n").await?;
    let mut batch = String::new();
    while let Some(key) = rx.recv().await {
        batch.clear();
        batch.push_str(&key);
        batch.push('\n');
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&more);
            batch.push('\n');
        }
        write.write_all(batch.as_bytes()).await?;
    }
    Ok(())
}

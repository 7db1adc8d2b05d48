//! Where cnilab's flanneld keeps flannel's keys: the file datastore (a
//! folder with one file per key, watched with inotify or cnilab-watchd) or a
//! real etcd, through its v3 API as flanneld does since v0.18: the lease a
//! real etcd lease of 24 hours, the others' leases followed with a watch.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tracing::{info, warn};

use crate::kernel::overlay::{self, Watch};

/// flannel's lease TTL: 24 hours (`subnetTTL`).
pub const LEASE_TTL: i64 = 24 * 60 * 60;

/// A change to the leases: a key (`10.244.1.0-24`) and its value, `None`
/// when it was deleted.
pub type Change = (String, Option<String>);

/// flanneld's store of the network config and the leases.
pub enum Store {
    /// The file datastore: `<dir>/<prefix>/config`, `<dir>/<prefix>/subnets/<key>`.
    Files {
        /// `<dir>/<prefix>`.
        root: PathBuf,
        /// The lab's watch service, if any.
        socket: Option<PathBuf>,
    },
    /// A real etcd.
    Etcd {
        /// The connected client (boxed: it is far larger than the files' variant).
        client: Box<Client>,
        /// The prefix, e.g. `/coreos.com/network`.
        prefix: String,
    },
}

impl Store {
    /// The file datastore under `dir`.
    pub fn files(dir: PathBuf, prefix: &str, socket: Option<PathBuf>) -> Store {
        Store::Files {
            root: dir.join(prefix.trim_start_matches('/')),
            socket,
        }
    }

    /// Connects to etcd at `endpoints` (comma-separated), retrying for a while
    /// as flanneld does when etcd is not up yet.
    pub async fn etcd(endpoints: &str, prefix: &str) -> Result<Store> {
        let eps: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        let client = Client::connect(&eps, Some(opts))
            .await
            .with_context(|| format!("cannot connect to etcd at {endpoints}"))?;
        Ok(Store::Etcd {
            client: Box::new(client),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// The network configuration's JSON, waiting for it as flanneld does
    /// ("Couldn't fetch network config") until it is written.
    pub async fn config(&mut self) -> Result<String> {
        match self {
            Store::Files { root, .. } => {
                let path = root.join("config");
                std::fs::read_to_string(&path).with_context(|| format!("cannot read network config {}", path.display()))
            }
            Store::Etcd { client, prefix } => {
                let key = format!("{prefix}/config");
                loop {
                    let r = client.get(key.as_str(), None).await;
                    match r.map(|r| r.kvs().first().map(|kv| kv.value().to_vec())) {
                        Ok(Some(v)) => return Ok(String::from_utf8_lossy(&v).into_owned()),
                        Ok(None) => warn!("Couldn't fetch network config: {key}: key not found"),
                        Err(e) => warn!("Couldn't fetch network config: {e}"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Writes this node's lease: in etcd under a real lease of 24 hours.
    pub async fn acquire(&mut self, key: &str, value: &str) -> Result<()> {
        match self {
            Store::Files { root, .. } => {
                overlay::write_atomic(&root.join("subnets").join(key), value)?;
            }
            Store::Etcd { client, prefix } => {
                let lease = client.lease_grant(LEASE_TTL, None).await.context("etcd lease grant")?;
                let k = format!("{prefix}/subnets/{key}");
                client
                    .put(k.as_str(), value, Some(PutOptions::new().with_lease(lease.id())))
                    .await
                    .with_context(|| format!("cannot write {k} to etcd"))?;
            }
        }
        Ok(())
    }

    /// Hands the leases present, then every change, to `on_change` until
    /// SIGTERM or SIGINT.
    pub async fn follow(self, mut on_change: impl AsyncFnMut(Vec<Change>)) -> Result<()> {
        match self {
            Store::Files { root, socket } => {
                let dir = root.join("subnets");
                let mut watch = Watch::new(&dir, socket.as_deref()).await?;
                on_change(read_all(&dir, watch.keys())).await;
                info!("watching for new subnet leases");
                let mut known: Vec<String> = Vec::new();
                overlay::follow(&mut watch, async |keys, overflowed| {
                    let mut keys = keys;
                    if overflowed {
                        keys.extend(known.iter().cloned());
                    }
                    known.extend(keys.iter().cloned());
                    known.sort();
                    known.dedup();
                    on_change(read_all(&dir, keys)).await;
                })
                .await
            }
            Store::Etcd { mut client, prefix } => {
                let dir = format!("{prefix}/subnets/");
                let r = client
                    .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                    .await
                    .context("cannot list leases in etcd")?;
                let rev = r.header().map_or(0, |h| h.revision());
                let present = r
                    .kvs()
                    .iter()
                    .filter_map(|kv| {
                        let key = String::from_utf8_lossy(kv.key());
                        let key = key.strip_prefix(&dir)?.to_string();
                        Some((key, Some(String::from_utf8_lossy(kv.value()).into_owned())))
                    })
                    .collect();
                on_change(present).await;
                let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
                let mut stream = client.watch(dir.as_str(), Some(opts)).await.context("etcd watch")?;
                info!("watching for new subnet leases");
                loop {
                    tokio::select! {
                        r = overlay::terminated() => return r,
                        msg = stream.message() => {
                            let Some(msg) = msg.context("etcd watch")? else {
                                anyhow::bail!("etcd closed the watch on {dir}");
                            };
                            let changes = msg
                                .events()
                                .iter()
                                .filter_map(|ev| {
                                    let kv = ev.kv()?;
                                    let key = String::from_utf8_lossy(kv.key());
                                    let key = key.strip_prefix(&dir)?.to_string();
                                    let value = (ev.event_type() == EventType::Put)
                                        .then(|| String::from_utf8_lossy(kv.value()).into_owned());
                                    Some((key, value))
                                })
                                .collect();
                            on_change(changes).await;
                        }
                    }
                }
            }
        }
    }
}

/// The named lease files with their contents (`None` for one gone).
fn read_all(dir: &std::path::Path, keys: Vec<String>) -> Vec<Change> {
    keys.into_iter()
        .map(|k| {
            let v = std::fs::read_to_string(dir.join(&k)).ok();
            (k, v)
        })
        .collect()
}

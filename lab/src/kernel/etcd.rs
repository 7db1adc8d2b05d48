//! The lab's etcd: the real server (Debian's `etcd-server`) in a namespace
//! of its own on the first switch, and the v3 client cnilab talks to it
//! with, always from inside a lab namespace (the host's has no route to it).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};

use crate::kernel::netns::Netns;
use crate::kernel::retry::Backoff;
use crate::kernel::runtime::{alive, spawn_agent, tail};
use crate::model::plan::{ETCD_CLIENT_PORT, EtcdPlan};

/// How long etcd gets to answer after it started.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The server's client URL inside its own namespace.
pub fn local_endpoint() -> String {
    format!("http://127.0.0.1:{ETCD_CLIENT_PORT}")
}

/// The server's arguments: one member, clients on its switch address and
/// on 127.0.0.1, peers only on 127.0.0.1, data under `data`.
pub fn server_args(e: &EtcdPlan, data: &Path) -> Vec<String> {
    let peer = "http://127.0.0.1:2380";
    vec![
        "--name=etcd".into(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={},{}", e.endpoint(), local_endpoint()),
        format!("--advertise-client-urls={}", e.endpoint()),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=etcd={peer}"),
        "--initial-cluster-state=new".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ]
}

/// Starts etcd in its namespace and waits until it answers. Returns its PID.
pub async fn start(e: &EtcdPlan, ns: &Netns, program: &Path, data: &Path, log: &Path) -> Result<u32> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let pid = spawn_agent(program, &server_args(e, data), ns, log)?;
    let mut backoff = Backoff::new(START_DEADLINE, Duration::from_millis(20), Duration::from_millis(200));
    loop {
        if !alive(pid as i32) {
            bail!(
                "etcd exited before it was ready; its log ({}):\n{}",
                log.display(),
                tail(log, 15)
            );
        }
        let ready = in_ns(ns, async |c: &mut Client| {
            c.status().await?;
            Ok(())
        })
        .await;
        if ready.is_ok() {
            return Ok(pid);
        }
        if backoff.expired() {
            bail!(
                "etcd did not answer on {} within {}s; its log ({}):\n{}",
                local_endpoint(),
                START_DEADLINE.as_secs(),
                log.display(),
                tail(log, 15)
            );
        }
        backoff.sleep_async().await;
    }
}

/// Connects to etcd from inside `ns` (on a thread that entered it, so every
/// socket the client opens is that namespace's) and runs `f`.
pub async fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl AsyncFnOnce(&mut Client) -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = Netns::open_path(&crate::kernel::netns::path_of(ns.name()))?;
    tokio::task::spawn_blocking(move || {
        ns.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5));
                let mut c = Client::connect([local_endpoint()], Some(opts))
                    .await
                    .with_context(|| format!("cannot reach etcd at {}", local_endpoint()))?;
                f(&mut c).await
            })
        })
    })
    .await
    .context("etcd client thread")?
}

/// Writes `key` (no lease), as an administrator's `etcdctl put` does.
pub async fn put(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let (key, value) = (key.to_string(), value.to_string());
    in_ns(ns, async move |c: &mut Client| {
        c.put(key.as_str(), value.as_str(), None::<PutOptions>)
            .await
            .with_context(|| format!("cannot write {key} to etcd"))?;
        Ok(())
    })
    .await
}

/// Every key under `prefix` with its value, in key order.
pub async fn get_prefix(ns: &Netns, prefix: &str) -> Result<Vec<(String, String)>> {
    let prefix = prefix.to_string();
    in_ns(ns, async move |c: &mut Client| {
        let r = c
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| format!("cannot read {prefix} from etcd"))?;
        let mut kvs: Vec<(String, String)> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect();
        kvs.sort();
        Ok(kvs)
    })
    .await
}

//! A CNI runtime, doing for a pod what containerd does through libcni: run
//! each plugin of a conflist with the CNI_* variables and its network
//! configuration on stdin, chain results through `prevResult`, cache the
//! result for DEL, and run DEL in reverse order. Plugins run inside the
//! node's namespace, as they would on the node itself.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::kernel::netns;

/// How long one plugin may run.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how plugins run for one node.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Folders searched for plugin binaries (CNI_PATH).
    pub cni_path: Vec<PathBuf>,
    /// The runtime's own state: cached results (libcni's `/var/lib/cni`).
    pub cache_dir: PathBuf,
    /// The node namespace plugins run in.
    pub node_ns: RawFd,
    /// Where plugins' stderr is appended.
    pub log: PathBuf,
}

/// One pod interface to set up or tear down.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Container ID (CNI_CONTAINERID).
    pub container_id: String,
    /// Path of the pod's namespace (CNI_NETNS).
    pub netns: PathBuf,
    /// Interface name (CNI_IFNAME).
    pub ifname: String,
    /// CNI_ARGS, as kubelet passes them.
    pub args: Vec<(String, String)>,
}

impl Attachment {
    /// A Kubernetes pod's attachment, with kubelet's CNI_ARGS.
    pub fn pod(container_id: &str, netns: PathBuf, ifname: &str, namespace: &str, pod: &str) -> Self {
        Attachment {
            container_id: container_id.to_string(),
            netns,
            ifname: ifname.to_string(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), pod.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
            ],
        }
    }

    /// A planned pod's attachment.
    pub fn of(p: &crate::model::plan::PodPlan) -> Self {
        Attachment::pod(
            &p.container_id,
            crate::kernel::netns::path_of(&p.ns),
            &p.ifname,
            &p.meta.namespace,
            &p.name,
        )
    }

    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// A plugin that answered with an error: the plugin's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CNI {command} failed in plugin {plugin}: {msg}")]
pub struct PluginError {
    /// ADD, DEL or CHECK.
    pub command: String,
    /// The plugin type.
    pub plugin: String,
    /// The plugin's error code.
    pub code: i64,
    /// The plugin's message, with its details.
    pub msg: String,
}

impl Runtime {
    fn cache_file(&self, network: &str, att: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{network}-{}-{}", att.container_id, att.ifname))
    }

    fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.cni_path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "CNI plugin \"{plugin}\" not found in {}",
                    self.cni_path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }

    /// The network configuration a plugin of a list receives (libcni's
    /// buildOneConfig): the plugin's object plus the list's name and version,
    /// the previous result and the runtime config of its capabilities.
    fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"] == json!(true) {
            conf["runtimeConfig"] = json!({ "portMappings": [] });
        }
        conf
    }

    /// ADD of a whole conflist; returns the final result.
    pub async fn add(&self, list: &Value, att: &Attachment) -> Result<Value> {
        let plugins = list["plugins"].as_array().context("conflist has no plugins")?;
        let mut prev: Option<Value> = None;
        for plugin in plugins {
            let conf = Self::plugin_conf(list, plugin, prev.as_ref());
            prev = Some(self.exec("ADD", &conf, att).await?);
        }
        let result = prev.context("conflist has no plugins")?;
        let cache = json!({
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": list,
            "ifName": att.ifname,
            "networkName": list["name"],
            "cniArgs": att.args.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "result": result,
        });
        let path = self.cache_file(list["name"].as_str().unwrap_or(""), att);
        crate::model::plan::write_file(&path, &serde_json::to_string(&cache)?)
            .with_context(|| format!("cannot cache the CNI result in {}", path.display()))?;
        Ok(result)
    }

    /// DEL of a whole conflist, plugins in reverse order. From CNI 0.4.0 on,
    /// each gets the cached result as `prevResult`, as libcni does.
    pub async fn del(&self, list: &Value, att: &Attachment) -> Result<()> {
        let plugins = list["plugins"].as_array().context("conflist has no plugins")?;
        let path = self.cache_file(list["name"].as_str().unwrap_or(""), att);
        let cached: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|c| c["result"].clone());
        let version = list["cniVersion"].as_str().unwrap_or("0.3.1");
        let with_prev = !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1");
        for plugin in plugins.iter().rev() {
            let prev = if with_prev { cached.as_ref() } else { None };
            let conf = Self::plugin_conf(list, plugin, prev);
            self.exec("DEL", &conf, att).await?;
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Runs one plugin once.
    async fn exec(&self, command: &str, conf: &Value, att: &Attachment) -> Result<Value> {
        let plugin = conf["type"]
            .as_str()
            .context("plugin configuration has no type")?
            .to_string();
        let bin = self.find(&plugin)?;
        let path_var = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut cmd = std::process::Command::new(&bin);
        cmd.env_clear()
            .env("PATH", path_var)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", att.cni_args())
            .env(
                "CNI_PATH",
                std::env::join_paths(&self.cni_path).context("CNI_PATH holds a ':'")?,
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = netns::with_netns(self.node_ns, || cmd.spawn())
            .context("cannot enter the node's namespace")?
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let input = serde_json::to_vec(conf)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = async move {
            // A plugin that exits before reading its stdin is not an error here.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out) = tokio::join!(writer, tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()));
        let out = out
            .map_err(|_| {
                anyhow!(
                    "CNI {command} in plugin {plugin} did not finish within {}s",
                    PLUGIN_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("waiting for plugin {plugin}"))?;
        append_log(&self.log, command, &plugin, &att.container_id, &out.stderr);
        if !out.status.success() {
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let msg = err["msg"].as_str().map(str::to_string).unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
                format!("exited with {} and no CNI error ({text})", out.status)
            });
            let details = err["details"].as_str().filter(|d| !d.is_empty());
            return Err(PluginError {
                command: command.to_string(),
                plugin,
                code: err["code"].as_i64().unwrap_or(0),
                msg: match details {
                    Some(d) => format!("{msg}; {d}"),
                    None => msg,
                },
            }
            .into());
        }
        if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "plugin {plugin} printed something that is not a CNI result: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

fn append_log(log: &Path, command: &str, plugin: &str, id: &str, stderr: &[u8]) {
    use std::io::Write;
    if stderr.is_empty() {
        return;
    }
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "== {command} {plugin} {}", &id[..id.len().min(12)]);
        let _ = f.write_all(stderr);
        let _ = writeln!(f);
    }
}

/// Runs another plugin from inside a plugin, as libcni's invoke package does
/// for a delegate or an IPAM plugin: found in CNI_PATH, the same environment
/// with CNI_COMMAND set, `conf` on stdin, stderr passed through. Returns its
/// stdout, or its error code and message (with details).
pub fn invoke(command: &str, plugin: &str, conf: &[u8]) -> Result<String, (i64, String)> {
    use std::io::Write;
    let cni_path =
        std::env::var("CNI_PATH").map_err(|_| (4, "required env variables [CNI_PATH] missing".to_string()))?;
    let bin = std::env::split_paths(&cni_path)
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| (999, format!("failed to find plugin \"{plugin}\" in path [{cni_path}]")))?;
    let mut child = std::process::Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| (999, format!("failed to run {}: {e}", bin.display())))?;
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(conf);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| (999, format!("failed to wait for {}: {e}", bin.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        return Ok(stdout);
    }
    let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let msg = v["msg"]
        .as_str()
        .unwrap_or("plugin failed without a CNI error")
        .to_string();
    let msg = match v["details"].as_str().filter(|d| !d.is_empty()) {
        Some(d) => format!("{msg}; {d}"),
        None => msg,
    };
    Err((v["code"].as_i64().unwrap_or(999), msg))
}

/// The first IPv4 address of a CNI result, with its prefix and gateway.
pub fn result_ip(result: &Value) -> Option<(String, Option<std::net::Ipv4Addr>)> {
    let ip = result["ips"]
        .as_array()?
        .iter()
        .find(|i| i["address"].as_str().is_some_and(|a| !a.contains(':')))?;
    let addr = ip["address"].as_str()?.to_string();
    let gw = ip["gateway"].as_str().and_then(|g| g.parse().ok());
    Some((addr, gw))
}

/// Fails unless a result carries an IPv4 address.
pub fn require_ip(result: &Value, what: &str) -> Result<(String, Option<std::net::Ipv4Addr>)> {
    match result_ip(result) {
        Some(x) => Ok(x),
        None => bail!("the CNI result for {what} has no IPv4 address: {result}"),
    }
}

//! The `flannel` CNI plugin, faithful to flannel-io/cni-plugin: it reads the
//! subnet file flanneld wrote, turns it into a configuration for its
//! delegate (`bridge` by default) with `host-local` IPAM, saves that
//! configuration per container for DEL, and runs the delegate.
//! Debian's containernetworking-plugins 1.1.1 no longer ship it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// CNI error codes used here (CNI spec, "Error").
const ERR_INVALID_ENV: i64 = 4;
const ERR_IO: i64 = 5;
const ERR_DECODE: i64 = 6;
const ERR_INVALID_CONF: i64 = 7;
const ERR_INTERNAL: i64 = 999;

/// A CNI error as the plugin prints it.
#[derive(Debug)]
struct CniError {
    code: i64,
    msg: String,
}

fn err(code: i64, msg: impl Into<String>) -> CniError {
    CniError { code, msg: msg.into() }
}

/// The plugin's entry point: `flannel` as `argv[0]`, or the `flannel` binary.
pub fn main() -> ! {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "0.3.1".into());
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let outcome = match command.as_str() {
        "ADD" => cmd_add(&stdin),
        "DEL" => cmd_del(&stdin),
        // flannel's CHECK is a no-op.
        "CHECK" => Ok(String::new()),
        "VERSION" => Ok(json!({
            "cniVersion": "1.0.0",
            "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
        })
        .to_string()),
        "" => Err(err(ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")),
        other => Err(err(ERR_INVALID_ENV, format!("unknown CNI_COMMAND: {other}"))),
    };
    match outcome {
        Ok(out) => {
            let mut so = std::io::stdout();
            let _ = so.write_all(out.as_bytes());
            let _ = so.flush();
            std::process::exit(0)
        }
        Err(e) => {
            println!("{}", json!({ "cniVersion": version, "code": e.code, "msg": e.msg }));
            std::process::exit(1)
        }
    }
}

/// What flanneld wrote to its subnet file.
#[derive(Debug)]
struct SubnetEnv {
    network: Ipv4Net,
    subnet: Ipv4Net,
    mtu: u32,
    ipmasq: bool,
}

fn load_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            ERR_IO,
            format!(
                "failed to load flannel 'subnet.env' file: open {}: {}. Check the flannel pod log for this node.",
                path.display(),
                io_words(&e)
            ),
        )
    })?;
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let cidr = |k: &str| -> Result<Option<Ipv4Net>, CniError> {
        match vars.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<Ipv4Net>()
                .map(Some)
                .map_err(|_| err(ERR_DECODE, format!("invalid CIDR address: {v}"))),
        }
    };
    let network = cidr("FLANNEL_NETWORK")?;
    let subnet = cidr("FLANNEL_SUBNET")?;
    let mtu = vars.get("FLANNEL_MTU").and_then(|m| m.parse::<u32>().ok());
    let ipmasq = vars.get("FLANNEL_IPMASQ").map(|v| v == "true");
    let mut missing = Vec::new();
    if network.is_none() {
        missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
    }
    if subnet.is_none() {
        missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
    }
    if mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(err(
            ERR_INVALID_CONF,
            format!("{} is missing {}", path.display(), missing.join(", ")),
        ));
    }
    Ok(SubnetEnv {
        network: network.expect("checked"),
        // FLANNEL_SUBNET holds the gateway address; the range is its network.
        subnet: subnet.expect("checked").trunc(),
        mtu: mtu.expect("checked"),
        ipmasq: ipmasq.expect("checked"),
    })
}

fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        _ => e.to_string(),
    }
}

/// flannel's netconf: its own keys plus the delegate's.
struct NetConf {
    raw: Map<String, Value>,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    delegate: Map<String, Value>,
}

fn load_netconf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: Map<String, Value> =
        serde_json::from_slice(stdin).map_err(|e| err(ERR_DECODE, format!("failed to load netconf: {e}")))?;
    let path = |k: &str, d: &str| PathBuf::from(raw.get(k).and_then(Value::as_str).unwrap_or(d));
    let delegate = match raw.get("delegate") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(err(ERR_DECODE, "failed to load netconf: 'delegate' must be an object")),
    };
    Ok(NetConf {
        subnet_file: path("subnetFile", DEFAULT_SUBNET_FILE),
        data_dir: path("dataDir", DEFAULT_DATA_DIR),
        delegate,
        raw,
    })
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name).map_err(|_| err(ERR_INVALID_ENV, format!("required env variables [{name}] missing")))
}

fn cmd_add(stdin: &[u8]) -> Result<String, CniError> {
    let mut n = load_netconf(stdin)?;
    let container_id = env("CNI_CONTAINERID")?;
    let fenv = load_subnet_env(&n.subnet_file)?;
    if n.delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(err(
            ERR_INVALID_CONF,
            "'delegate' dictionary, if present, must have (string) 'type' field",
        ));
    }
    if n.delegate.contains_key("name") {
        return Err(err(
            ERR_INVALID_CONF,
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ));
    }
    if n.delegate.contains_key("ipam") {
        return Err(err(
            ERR_INVALID_CONF,
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
        ));
    }
    if let Some(rc) = n.raw.get("runtimeConfig").filter(|v| !v.is_null()) {
        n.delegate.insert("runtimeConfig".into(), rc.clone());
    }
    let d = &mut n.delegate;
    d.insert("name".into(), n.raw.get("name").cloned().unwrap_or(Value::Null));
    d.entry("type").or_insert_with(|| json!("bridge"));
    // If flanneld is not masquerading, the bridge should.
    d.entry("ipMasq").or_insert_with(|| json!(!fenv.ipmasq));
    d.entry("mtu").or_insert_with(|| json!(fenv.mtu));
    if d["type"] == "bridge" {
        d.entry("isGateway").or_insert_with(|| json!(true));
    }
    if let Some(v) = n
        .raw
        .get("cniVersion")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        d.insert("cniVersion".into(), v.clone());
    }
    let mut ipam = match n.raw.get("ipam") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    ipam.insert("ranges".into(), json!([[{ "subnet": fenv.subnet.to_string() }]]));
    let mut routes = match ipam.get("routes") {
        Some(Value::Array(r)) => r.clone(),
        _ => Vec::new(),
    };
    routes.push(json!({ "dst": fenv.network.to_string() }));
    ipam.insert("routes".into(), Value::Array(routes));
    n.delegate.insert("ipam".into(), Value::Object(ipam));

    let conf = serde_json::to_vec(&n.delegate)
        .map_err(|e| err(ERR_INTERNAL, format!("error serializing delegate netconf: {e}")))?;
    // flannel writes the delegate configuration to stderr; the runtime logs it.
    let _ = std::io::stderr().write_all(&conf);
    save_scratch(&n.data_dir, &container_id, &conf)?;
    let plugin = n.delegate["type"].as_str().unwrap_or("bridge").to_string();
    delegate("ADD", &plugin, &conf).map_err(|e| err(ERR_INTERNAL, format!("failed to delegate add: {}", e.msg)))
}

fn cmd_del(stdin: &[u8]) -> Result<String, CniError> {
    let n = load_netconf(stdin)?;
    let container_id = env("CNI_CONTAINERID")?;
    let path = n.data_dir.join(&container_id);
    let conf = match std::fs::read(&path) {
        Ok(c) => c,
        // Per the spec, DEL of something already gone succeeds.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(err(ERR_IO, format!("failed to read {}: {e}", path.display()))),
    };
    let plugin = match serde_json::from_slice::<Value>(&conf) {
        Ok(v) => v["type"].as_str().unwrap_or("bridge").to_string(),
        Err(e) => {
            // As flannel: the interface stays in the bridge until the node reboots.
            eprintln!("failed to parse netconf: {e}");
            return Ok(String::new());
        }
    };
    delegate("DEL", &plugin, &conf)?;
    let _ = std::fs::remove_file(&path);
    Ok(String::new())
}

fn save_scratch(dir: &Path, container_id: &str, conf: &[u8]) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(ERR_IO, format!("mkdir {}: {e}", dir.display())))?;
    let path = dir.join(container_id);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(ERR_IO, format!("open {}: {e}", path.display())))?;
    f.write_all(conf)
        .map_err(|e| err(ERR_IO, format!("write {}: {e}", path.display())))
}

/// Runs the delegate plugin as libcni's invoke.Delegate* does; its result
/// is passed through.
fn delegate(command: &str, plugin: &str, conf: &[u8]) -> Result<String, CniError> {
    crate::kernel::cni::invoke(command, plugin, conf).map_err(|(code, msg)| err(code, msg))
}

/// The gateway host-local gives a subnet: its first address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env_is_read_as_flannel_reads_it() {
        let dir = std::env::temp_dir().join(format!("cnilab-plugin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("subnet.env");
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let e = load_subnet_env(&p).unwrap();
        assert_eq!(e.subnet.to_string(), "10.244.7.0/24");
        assert_eq!((e.mtu, e.ipmasq), (1450, true));
        std::fs::write(&p, "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
        let m = load_subnet_env(&p).unwrap_err().msg;
        assert!(
            m.ends_with("is missing FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
            "{m}"
        );
        let m = load_subnet_env(&dir.join("nope")).unwrap_err().msg;
        assert!(m.contains("no such file or directory"), "{m}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The `aws-cni` CNI plugin (cmd/routed-eni-cni-plugin), and the disabled
//! path of `egress-cni`. ADD asks the node's ipamd for an address
//! (AddNetwork), then wires the pod as driver.go's SetupPodNetwork: a veth
//! `eni` + 11 hex of sha1("<namespace>.<pod>") with a random locally
//! administered MAC (drawn here from the container ID, so the same lab is
//! the same every time), the pod's /32 on eth0, `169.254.1.1 dev eth0 scope
//! link`, `default via 169.254.1.1`, a PERMANENT neighbour 169.254.1.1 ->
//! the host veth's MAC; on the host `<podIP> dev eni... scope link`, rule
//! 512 `to <podIP> lookup main` and, for a pod on a secondary ENI, rule
//! 1536 `from <podIP> lookup <table>`. DEL asks ipamd to free the address
//! (DelNetwork), falling back on prevResult, and removes the rules and the
//! route.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use serde_json::{Value, json};

use super::POD_GATEWAY;
use super::ipamd::{PodKey, Reply, Request, call};
use super::net::{self, Match};
use crate::kernel::cni_plugin::{self, Failure, env};
use crate::kernel::netns::Netns;
use crate::kernel::nl::{self, Nl};

/// How long ADD waits for ipamd (a refill in flight included).
const IPAMD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The exact words of cni.go when ipamd has no address.
pub const NO_ADDRESS: &str = "add cmd: failed to assign an IP address to container";

/// The host-side veth of a pod: prefix + 11 hex digits of
/// sha1("<namespace>.<pod>") (pkg/networkutils/names.go).
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{namespace}.{pod}")).digest().to_string();
    format!("{prefix}{}", &digest[..11])
}

const VERSIONS: &str = r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#;

/// `aws-cni` as `argv[0]`.
pub fn main() -> ! {
    let req = cni_plugin::request("0.4.0");
    let outcome = match req.command.as_str() {
        "ADD" => cni_plugin::runtime().block_on(cmd_add(&req.conf)),
        "DEL" => cni_plugin::runtime()
            .block_on(cmd_del(&req.conf))
            .map(|_| String::new()),
        "CHECK" => Ok(String::new()),
        "VERSION" => Ok(VERSIONS.to_string()),
        other => Err(cni_plugin::unknown_command(other)),
    };
    cni_plugin::finish(&req.version, outcome)
}

/// `egress-cni` as `argv[0]`: with `"enabled": "false"` (IPv4 clusters) it
/// passes the previous result on at ADD and does nothing at DEL, as
/// cmd/egress-cni-plugin does; its enabled path (IPv6 egress) is not built.
pub fn egress_main() -> ! {
    let cni_plugin::Request { conf, version, .. } = cni_plugin::request("0.4.0");
    let enabled = conf["enabled"].as_str() == Some("true");
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let outcome = match command.as_str() {
        "VERSION" => Ok(VERSIONS.to_string()),
        _ if enabled => Err(Failure {
            code: 999,
            msg: "cnilab's egress-cni runs only disabled (\"enabled\": \"false\"); its IPv6 egress is not built".into(),
        }),
        "ADD" => {
            let mut prev = conf["prevResult"].clone();
            prev["cniVersion"] = json!(version);
            Ok(prev.to_string())
        }
        _ => Ok(String::new()),
    };
    cni_plugin::finish(&version, outcome)
}

fn pod_key() -> Result<PodKey, Failure> {
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let get = |k: &str| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    Ok(PodKey {
        namespace: get("K8S_POD_NAMESPACE").unwrap_or_else(|| "default".into()),
        name: get("K8S_POD_NAME").unwrap_or_default(),
        container_id: env("CNI_CONTAINERID")?,
        ifname: env("CNI_IFNAME")?,
    })
}

fn socket(conf: &Value) -> PathBuf {
    PathBuf::from(conf["ipamdSocket"].as_str().unwrap_or("/var/run/aws-node/ipamd.sock"))
}

async fn cmd_add(conf: &Value) -> Result<String, Failure> {
    let netns_path = env("CNI_NETNS")?;
    let pod = pod_key()?;
    let mtu: u32 = conf["mtu"].as_str().and_then(|m| m.parse().ok()).unwrap_or(9001);
    let prefix = conf["vethPrefix"].as_str().unwrap_or("eni").to_string();
    let sock = socket(conf);
    let req = Request {
        op: "add".into(),
        pod: pod.clone(),
    };
    let reply = call(&sock, &req, IPAMD_DEADLINE)
        .map_err(|e| anyhow!("add cmd: Error received from AddNetwork gRPC call: {e:#}"))?;
    let Some(ip) = reply.ip.filter(|_| reply.success) else {
        eprintln!("ipamd: {}", reply.error);
        return Err(Failure {
            code: 999,
            msg: NO_ADDRESS.into(),
        });
    };
    let host = host_veth_name(&prefix, &pod.namespace, &pod.name);
    match wire(&host, &netns_path, &pod, ip, reply.table, mtu).await {
        Ok(pod_mac) => Ok(result(conf, &reply, ip, &host, &netns_path, &pod, pod_mac)),
        Err(e) => {
            // The address goes back, as cni.go does on a failed setup.
            let _ = call(&sock, &Request { op: "del".into(), pod }, IPAMD_DEADLINE);
            Err(anyhow!("add command: failed to setup network: {e:#}").into())
        }
    }
}

fn result(conf: &Value, r: &Reply, ip: Ipv4Addr, host: &str, netns: &str, pod: &PodKey, mac: [u8; 6]) -> String {
    let _ = mac;
    let dummy = format!("dummy{}", &host[3..]);
    json!({
        "cniVersion": conf["cniVersion"],
        "interfaces": [
            { "name": host },
            { "name": pod.ifname, "sandbox": netns, "mac": r.table.to_string() },
            { "name": dummy, "mac": "0", "sandbox": r.device.to_string() },
        ],
        "ips": [{ "version": "4", "address": format!("{ip}/32"), "interface": 1 }],
        "dns": {},
    })
    .to_string()
}

/// driver.go's SetupPodNetwork.
async fn wire(host: &str, netns_path: &str, pod: &PodKey, ip: Ipv4Addr, table: u32, mtu: u32) -> Result<[u8; 6]> {
    let nl = Nl::connect()?;
    nl.remove_link(host).await.context("removing a stale host veth")?;
    let host_mac = net::mac_from(&format!("host/{}", pod.container_id));
    let pod_mac = net::mac_from(&format!("pod/{}", pod.container_id));
    let pod_ns = Netns::open_path(Path::new(netns_path))?;
    nl.add(
        nl::Veth {
            name: host,
            master: None,
            peer: &pod.ifname,
            peer_ns: pod_ns.raw_fd(),
            mtu,
            mac: Some(host_mac),
            peer_mac: Some(pod_mac),
            up: false,
        }
        .message(),
    )
    .await
    .map_err(|e| anyhow!("failed to create veth {host}: {e}"))?;
    let host_index = nl.index(host).await?.context("host veth vanished")?;
    nl.change(nl::set_up(host_index))
        .await
        .context("setting the host veth up")?;

    let rt = tokio::runtime::Handle::current();
    let pod_nl = pod_ns.run(move || {
        let _g = rt.enter();
        Nl::connect()
    })?;
    let idx = pod_nl.index(&pod.ifname).await?.context("pod interface missing")?;
    pod_nl.change(nl::set_up(idx)).await.context("pod eth0 up")?;
    pod_nl
        .add(net::route_in(Ipv4Net::new(POD_GATEWAY, 32)?, None, idx, net::MAIN))
        .await
        .context("route to 169.254.1.1")?;
    pod_nl
        .add(net::route_in("0.0.0.0/0".parse()?, Some(POD_GATEWAY), idx, net::MAIN))
        .await
        .context("default route")?;
    pod_nl.add(nl::address(idx, ip, 32)).await.context("pod address")?;
    pod_nl
        .replace(RouteNetlinkMessage::NewNeighbour(nl::neighbour(
            idx,
            POD_GATEWAY,
            host_mac,
        )))
        .await
        .context("neighbour 169.254.1.1")?;

    nl.add(net::route_in(Ipv4Net::new(ip, 32)?, None, host_index, net::MAIN))
        .await
        .context("host route to the pod")?;
    net::add_rule(&nl, net::rule(net::TO_CONTAINER_PRIO, Match::To(ip), net::MAIN)).await?;
    if table > 1 && table != net::MAIN {
        net::add_rule(&nl, net::rule(net::FROM_POD_PRIO, Match::From(ip), table)).await?;
    }
    Ok(pod_mac)
}

/// What the previous result says: the pod's address and its table (kept
/// in the container interface's `mac`).
fn from_prev(conf: &Value) -> Option<(Ipv4Addr, u32)> {
    let prev = &conf["prevResult"];
    let ip: Ipv4Net = prev["ips"][0]["address"].as_str()?.parse().ok()?;
    let table = prev["interfaces"][1]["mac"].as_str()?.parse().ok()?;
    Some((ip.addr(), table))
}

async fn cmd_del(conf: &Value) -> Result<(), Failure> {
    let pod = pod_key()?;
    let prefix = conf["vethPrefix"].as_str().unwrap_or("eni").to_string();
    let host = host_veth_name(&prefix, &pod.namespace, &pod.name);
    let req = Request {
        op: "del".into(),
        pod: pod.clone(),
    };
    let found = match call(&socket(conf), &req, IPAMD_DEADLINE) {
        Ok(r) if r.success => r.ip.map(|ip| (ip, r.table)),
        Ok(_) => from_prev(conf),
        Err(e) => {
            eprintln!("ipamd unreachable ({e:#}); using prevResult");
            from_prev(conf)
        }
    };
    let Some((ip, table)) = found else {
        return Ok(());
    };
    let nl = Nl::connect()?;
    net::del_rules(&nl, net::rule(net::TO_CONTAINER_PRIO, Match::To(ip), net::MAIN)).await?;
    if table > 1 && table != net::MAIN {
        net::del_rules(&nl, net::rule(net::FROM_POD_PRIO, Match::From(ip), table)).await?;
    }
    if let Some(idx) = nl.index(&host).await.map_err(|e| anyhow!("{e}"))? {
        if let Err(e) = nl
            .change(net::del_route(net::route_in(
                Ipv4Net::new(ip, 32).map_err(|e| anyhow!("{e}"))?,
                None,
                idx,
                net::MAIN,
            )))
            .await
        {
            eprintln!("host route to {ip}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_follow_names_go() {
        assert_eq!(host_veth_name("eni", "default", "web-0"), "eni0d7763386da");
        assert_eq!(host_veth_name("eni", "default", "nginx"), "enic440f455693");
    }
}

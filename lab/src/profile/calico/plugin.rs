//! The `calico` CNI plugin, wiring a pod as Calico's does: a veth whose host
//! end is `cali` + the first 11 hex digits of `sha1("<namespace>.<pod>")`,
//! MAC ee:ee:ee:ee:ee:ee and no address, with proxy ARP so the host answers
//! for 169.254.1.1; the pod's eth0 holds a /32 and routes through
//! 169.254.1.1; the host routes the pod's /32 to the veth. Addresses come
//! from the IPAM plugin of the configuration (the real host-local here).

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteScope;
use serde_json::{Value, json};

use super::{HOST_VETH_MAC, POD_GATEWAY};
use crate::kernel::cni_plugin::{self, Failure, env};
use crate::kernel::netns::{self, Netns};
use crate::kernel::nl::{self, Nl};
use crate::model::plan::mac_string;

/// Calico's host-side veth name for a workload.
pub fn host_veth_name(namespace: &str, pod: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{namespace}.{pod}")).digest().to_string();
    format!("cali{}", &digest[..11])
}

/// The host-side sysctls Calico sets on each workload veth.
pub fn host_veth_sysctls(veth: &str) -> [(String, &'static str); 4] {
    [
        (format!("net/ipv4/conf/{veth}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{veth}/proxy_delay"), "0"),
        (format!("net/ipv4/conf/{veth}/forwarding"), "1"),
        (format!("net/ipv4/conf/{veth}/route_localnet"), "1"),
    ]
}

/// The plugin's entry point: `calico` as `argv[0]`, or the `calico` binary.
pub fn main() -> ! {
    let req = cni_plugin::request("0.3.1");
    let outcome = match req.command.as_str() {
        "ADD" => cni_plugin::runtime().block_on(cmd_add(&req.conf, &req.stdin)),
        "DEL" => cni_plugin::runtime()
            .block_on(cmd_del(&req.conf, &req.stdin))
            .map(|_| String::new()),
        "CHECK" => Ok(String::new()),
        "VERSION" => {
            Ok(json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}).to_string())
        }
        other => Err(cni_plugin::unknown_command(other)),
    };
    cni_plugin::finish(&req.version, outcome)
}

/// K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS.
fn workload() -> (String, String) {
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let get = |k: &str| {
        args.split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    let id = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    (
        get("K8S_POD_NAMESPACE").unwrap_or_else(|| "default".into()),
        get("K8S_POD_NAME").unwrap_or(id),
    )
}

/// Runs the IPAM plugin of the configuration, as CNI's ipam.ExecAdd/ExecDel.
fn ipam(command: &str, conf: &Value, stdin: &[u8]) -> Result<Value, Failure> {
    let plugin = conf["ipam"]["type"].as_str().ok_or_else(|| Failure {
        code: 7,
        msg: "network configuration has no ipam type".into(),
    })?;
    let out = crate::kernel::cni::invoke(command, plugin, stdin).map_err(|(code, msg)| Failure { code, msg })?;
    Ok(serde_json::from_str(&out).unwrap_or(Value::Null))
}

async fn cmd_add(conf: &Value, stdin: &[u8]) -> Result<String, Failure> {
    let netns_path = env("CNI_NETNS")?;
    let ifname = env("CNI_IFNAME")?;
    let (namespace, pod) = workload();
    let mtu = conf["mtu"].as_u64().unwrap_or(1500) as u32;
    let result = ipam("ADD", conf, stdin)?;
    let ip: Ipv4Net = result["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|i| i["address"].as_str()?.parse::<Ipv4Net>().ok()))
        .ok_or_else(|| anyhow!("IPAM returned no IPv4 address: {result}"))?;
    let addr = ip.addr();
    match wire(&namespace, &pod, &netns_path, &ifname, addr, mtu).await {
        Ok((host, mac)) => Ok(json!({
            "cniVersion": conf["cniVersion"],
            "interfaces": [
                { "name": host, "mac": mac_string(&HOST_VETH_MAC) },
                { "name": ifname, "mac": mac_string(&mac), "sandbox": netns_path },
            ],
            "ips": [{ "version": "4", "address": format!("{addr}/32"), "interface": 1 }],
            "dns": {},
        })
        .to_string()),
        Err(e) => {
            // Calico gives the address back when the wiring fails.
            let _ = ipam("DEL", conf, stdin);
            Err(e.into())
        }
    }
}

/// The dataplane part of ADD.
async fn wire(
    namespace: &str,
    pod: &str,
    netns_path: &str,
    ifname: &str,
    addr: Ipv4Addr,
    mtu: u32,
) -> Result<(String, [u8; 6])> {
    let host = host_veth_name(namespace, pod);
    let nl = Nl::connect()?;
    // A veth left by an earlier sandbox of the same pod goes first, as in Calico.
    nl.remove_link(&host).await.context("removing a stale host veth")?;
    let pod_ns = Netns::open_path(Path::new(netns_path))?;
    nl.add(
        nl::Veth {
            name: &host,
            master: None,
            peer: ifname,
            peer_ns: pod_ns.raw_fd(),
            mtu,
            mac: Some(HOST_VETH_MAC),
            peer_mac: None,
            up: false,
        }
        .message(),
    )
    .await
    .map_err(|e| anyhow!("failed to create veth {host}: {e}"))?;
    let host_index = nl.index(&host).await?.context("host veth vanished")?;
    for (key, value) in host_veth_sysctls(&host) {
        netns::write_sysctl(&key, value)?;
    }
    nl.change(nl::set_up(host_index))
        .await
        .context("setting the host veth up")?;

    let rt = tokio::runtime::Handle::current();
    let ifname_owned = ifname.to_string();
    let pod_nl = pod_ns.run(move || {
        let _g = rt.enter();
        Nl::connect()
    })?;
    let eth = pod_nl.link(&ifname_owned).await?.context("pod interface missing")?;
    let mac = crate::kernel::nl::link_mac(&eth).unwrap_or([0; 6]);
    let idx = eth.header.index;
    pod_nl.change(nl::set_up(1)).await.context("pod lo up")?;
    pod_nl.change(nl::set_up(idx)).await.context("pod eth0 up")?;
    pod_nl.add(nl::address(idx, addr, 32)).await.context("pod address")?;
    let mut gw = nl::route(
        format!("{POD_GATEWAY}/32").parse().expect("valid"),
        None,
        Some(idx),
        false,
    );
    gw.header.scope = RouteScope::Link;
    pod_nl
        .add(RouteNetlinkMessage::NewRoute(gw))
        .await
        .context("route to 169.254.1.1")?;
    let default = nl::route("0.0.0.0/0".parse().expect("valid"), Some(POD_GATEWAY), Some(idx), false);
    pod_nl
        .add(RouteNetlinkMessage::NewRoute(default))
        .await
        .context("default route")?;

    let mut to_pod = nl::route(Ipv4Net::new(addr, 32).expect("valid"), None, Some(host_index), false);
    to_pod.header.scope = RouteScope::Link;
    nl.add(RouteNetlinkMessage::NewRoute(to_pod))
        .await
        .context("host route to the pod")?;
    Ok((host, mac))
}

async fn cmd_del(conf: &Value, stdin: &[u8]) -> Result<(), Failure> {
    let (namespace, pod) = workload();
    let host = host_veth_name(&namespace, &pod);
    ipam("DEL", conf, stdin)?;
    let nl = Nl::connect()?;
    nl.remove_link(&host)
        .await
        .map_err(|e| anyhow!("deleting {host}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_follow_calico() {
        let n = host_veth_name("default", "web");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("cali"));
        assert_eq!(
            n,
            format!(
                "cali{}",
                &sha1_smol::Sha1::from("default.web").digest().to_string()[..11]
            )
        );
    }
}

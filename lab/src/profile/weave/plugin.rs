//! The `weave-net` CNI plugin (plugin/net/cni.go), as weave-kube runs it:
//! the address from the router's IPAM over its HTTP API (`POST /ip/<id>`,
//! the whole range's prefix), the veth `vethwepl<id7>` on the `weave`
//! bridge with hairpin mode, `eth0` in the pod at the bridge's MTU with tx
//! checksumming off (sleeve), the default route via the bridge's address,
//! and the pod's multicast rules. DEL removes `eth0` and releases the
//! container's addresses (`DELETE /ip/<id>`; "no addresses" is fine).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoBridgePort, InfoPortData, InfoPortKind};
use serde_json::{Value, json};

use super::{BRIDGE, HTTP_ADDR};
use crate::kernel::cni_plugin::{self, Failure, env};
use crate::kernel::netns::Netns;
use crate::kernel::nl::{self, Nl};
use crate::model::plan::mac_string;

/// The host-side veth of a container: `vethwepl` + its ID's first 7 characters.
pub fn host_veth_name(container_id: &str) -> String {
    let id: String = container_id
        .chars()
        .take(libc::IFNAMSIZ - 1 - "vethwepl".len())
        .collect();
    format!("vethwepl{id}")
}

/// The plugin's entry point: `weave-net` as `argv[0]`.
pub fn main() -> ! {
    let req = cni_plugin::request("0.3.0");
    let outcome = match req.command.as_str() {
        "ADD" => cni_plugin::runtime().block_on(cmd_add(&req.conf)),
        "DEL" => cni_plugin::runtime().block_on(cmd_del()).map(|_| String::new()),
        "CHECK" => Ok(String::new()),
        "VERSION" => Ok(
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"]})
                .to_string(),
        ),
        other => Err(cni_plugin::unknown_command(other)),
    };
    cni_plugin::finish(&req.version, outcome)
}

/// One request to the router's HTTP API: (status, body).
fn http(method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&HTTP_ADDR.parse().expect("valid address"), Duration::from_secs(5))
        .with_context(|| format!("cannot reach the Weave router at {HTTP_ADDR}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {HTTP_ADDR}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP answer from the router")?;
    Ok((code, body.to_string()))
}

async fn cmd_add(conf: &Value) -> Result<String, Failure> {
    let id = env("CNI_CONTAINERID")?;
    let netns_path = env("CNI_NETNS")?;
    let ifname = env("CNI_IFNAME")?;
    for key in ["isGateway", "ipMasq"] {
        if conf.get(key).is_some_and(|v| v.as_bool() == Some(true)) {
            return Err(Failure {
                code: 7,
                msg: format!("{key} is not supported by weave-net"),
            });
        }
    }
    if conf["ipam"]["type"].as_str().is_some_and(|t| !t.is_empty()) {
        return Err(Failure {
            code: 7,
            msg: "cnilab's weave-net uses Weave's own IPAM only (leave ipam out)".into(),
        });
    }
    let hairpin = conf["hairpinMode"].as_bool().unwrap_or(true);
    let bridge = conf["bridge"].as_str().unwrap_or(BRIDGE).to_string();
    let (code, body) = http("POST", &format!("/ip/{id}?check-alive=true"))?;
    if code != 200 {
        return Err(anyhow!("unable to allocate IP address: {code}: {}", body.trim()).into());
    }
    let ip: Ipv4Net = body
        .trim()
        .parse()
        .map_err(|_| anyhow!("the router answered {body:?}"))?;
    match wire(&id, &netns_path, &ifname, &bridge, ip, hairpin, conf).await {
        Ok(result) => Ok(result.to_string()),
        Err(e) => {
            let _ = http("DELETE", &format!("/ip/{id}"));
            Err(e.into())
        }
    }
}

/// The bridge's IPv4 address within `net` (FindBridgeIP).
async fn bridge_ip(nl: &Nl, index: u32, net: Ipv4Net) -> Result<Option<Ipv4Addr>> {
    use netlink_packet_route::address::AddressAttribute;
    for a in nl.addresses().await? {
        if a.header.index != index {
            continue;
        }
        for attr in &a.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr
                && net.contains(ip)
            {
                return Ok(Some(*ip));
            }
        }
    }
    Ok(None)
}

async fn wire(
    id: &str,
    netns_path: &str,
    ifname: &str,
    bridge: &str,
    ip: Ipv4Net,
    hairpin: bool,
    conf: &Value,
) -> Result<Value> {
    let nl = Nl::connect()?;
    let br = nl
        .link(bridge)
        .await?
        .with_context(|| format!("bridge {bridge} not found: is the Weave router running?"))?;
    let br_index = br.header.index;
    let mtu = nl::link_mtu(&br).context("bridge without MTU")?;
    let gw = bridge_ip(&nl, br_index, ip.trunc()).await?.with_context(|| {
        format!(
            "bridge {bridge} has no address in {}: weave expose has not run",
            ip.trunc()
        )
    })?;
    let host = host_veth_name(id);
    nl.remove_link(&host).await.context("removing a stale veth")?;
    let pod_ns = Netns::open_path(Path::new(netns_path))?;
    nl.add(
        nl::Veth {
            name: &host,
            master: Some(br_index),
            peer: ifname,
            peer_ns: pod_ns.raw_fd(),
            mtu,
            mac: None,
            peer_mac: None,
            up: false,
        }
        .message(),
    )
    .await
    .map_err(|e| anyhow!("failed to create veth {host}: {e}"))?;
    let host_index = nl.index(&host).await?.context("host veth vanished")?;
    let host_mac = nl.link(&host).await?.and_then(|l| nl::link_mac(&l)).unwrap_or([0; 6]);
    if hairpin {
        let msg = rtnetlink::LinkUnspec::new_with_index(host_index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)]))
            .build();
        nl.change(RouteNetlinkMessage::SetLink(msg))
            .await
            .context("setting hairpin mode")?;
    }
    let _ = crate::kernel::netns::write_sysctl(&format!("net/ipv6/conf/{host}/accept_ra"), "0");
    nl.change(nl::set_up(host_index))
        .await
        .context("setting the host veth up")?;

    let rt = tokio::runtime::Handle::current();
    let ifname_owned = ifname.to_string();
    let pod_nl = pod_ns.run(move || {
        let _g = rt.enter();
        // Sleeve mode: the pod's end sends complete checksums (EthtoolTXOff).
        super::router::tx_checksum_off(&ifname_owned)?;
        super::router::arp_cache(&ifname_owned);
        Nl::connect()
    })?;
    let eth = pod_nl.link(ifname).await?.context("pod interface missing")?;
    let mac = nl::link_mac(&eth).unwrap_or([0; 6]);
    let idx = eth.header.index;
    pod_nl.change(nl::set_up(1)).await.context("pod lo up")?;
    pod_nl
        .add(nl::address(idx, ip.addr(), ip.prefix_len()))
        .await
        .context("pod address")?;
    pod_nl.change(nl::set_up(idx)).await.context("pod eth0 up")?;
    if !ip.contains(&gw) {
        let mut r = nl::route(Ipv4Net::new(gw, 32).expect("valid"), None, Some(idx), false);
        r.header.scope = netlink_packet_route::route::RouteScope::Link;
        pod_nl
            .add(RouteNetlinkMessage::NewRoute(r))
            .await
            .context("route to the gateway")?;
    }
    let default = nl::route("0.0.0.0/0".parse().expect("valid"), Some(gw), Some(idx), false);
    pod_nl
        .add(RouteNetlinkMessage::NewRoute(default))
        .await
        .context("default route")?;
    multicast_rules(&pod_ns, ifname, ip.trunc())?;
    if let Err(e) = nl.link(&host).await {
        bail!("host veth: {e}");
    }
    Ok(json!({
        "cniVersion": conf["cniVersion"],
        "interfaces": [
            { "name": host, "mac": mac_string(&host_mac) },
            { "name": ifname, "mac": mac_string(&mac), "sandbox": netns_path },
        ],
        "ips": [{ "version": "4", "address": ip.to_string(), "gateway": gw.to_string(), "interface": 1 }],
        "routes": [{ "dst": "0.0.0.0/0", "gw": gw.to_string() }],
        "dns": {},
    }))
}

/// The pod's INPUT rules: multicast from outside the range is dropped
/// (plugin/net/cni.go).
fn multicast_rules(pod_ns: &Netns, ifname: &str, range: Ipv4Net) -> Result<()> {
    let range = range.to_string();
    for args in [
        vec!["-w", "-A", "INPUT", "-i", ifname, "-d", "224.0.0.0/4", "-j", "DROP"],
        vec![
            "-w",
            "-I",
            "INPUT",
            "1",
            "-i",
            ifname,
            "-s",
            &range,
            "-d",
            "224.0.0.0/4",
            "-j",
            "ACCEPT",
        ],
    ] {
        crate::kernel::netns::run_in(pod_ns, "iptables", &args).context("the pod's multicast rules")?;
    }
    Ok(())
}

async fn cmd_del() -> Result<(), Failure> {
    let id = env("CNI_CONTAINERID")?;
    let ifname = env("CNI_IFNAME")?;
    if let Ok(path) = std::env::var("CNI_NETNS")
        && !path.is_empty()
        && let Ok(pod_ns) = Netns::open_path(Path::new(&path))
    {
        let rt = tokio::runtime::Handle::current();
        let pod_nl = pod_ns.run(move || {
            let _g = rt.enter();
            Nl::connect()
        })?;
        pod_nl
            .remove_link(&ifname)
            .await
            .map_err(|e| anyhow!("deleting {ifname}: {e}"))?;
    }
    let (code, body) = http("DELETE", &format!("/ip/{id}"))?;
    // "no addresses for <id>" is ignored, as Weave's plugin does.
    if code != 204 && code != 200 && !body.contains("no addresses") {
        return Err(anyhow!("releasing the addresses of {id}: {code}: {}", body.trim()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_takes_seven_characters_of_the_id() {
        assert_eq!(host_veth_name("0123456789abcdef"), "vethwepl0123456");
        assert_eq!(host_veth_name("0123456789abcdef").len(), 15);
    }
}

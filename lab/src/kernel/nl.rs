//! rtnetlink, one socket per namespace. A socket is bound to the namespace
//! of the thread that opens it, so [`Nl::connect_in`] opens it on a thread
//! that entered the namespace; afterwards it is used from any task.
//! Requests are pipelined: many can be in flight on one socket.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use anyhow::Result;
use futures::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::kernel::netns::Netns;

/// A kernel answer to a netlink request that was an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", nix::errno::Errno::from_raw(*.errno).desc())]
pub struct NlError {
    /// The positive errno.
    pub errno: i32,
}

impl NlError {
    /// The object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno == libc::EEXIST
    }

    /// The object does not exist.
    pub fn is_missing(&self) -> bool {
        self.errno == libc::ENOENT || self.errno == libc::ESRCH || self.errno == libc::ENODEV
    }

    /// The kernel does not support what was asked (a missing module).
    pub fn is_unsupported(&self) -> bool {
        self.errno == libc::EOPNOTSUPP
    }
}

/// A netlink route socket in one namespace.
#[derive(Clone, Debug)]
pub struct Nl {
    handle: rtnetlink::Handle,
    // The kernel runs one dump per socket at a time (EBUSY otherwise).
    dumping: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Nl {
    /// Opens a socket in the calling thread's namespace. Needs a tokio
    /// runtime context: the socket's connection task is spawned on it.
    pub fn connect() -> Result<Nl> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Nl {
            handle,
            dumping: Default::default(),
        })
    }

    /// Opens a socket in `ns`.
    pub fn connect_in(ns: &Netns) -> Result<Nl> {
        let rt = tokio::runtime::Handle::current();
        ns.run(move || {
            let _guard = rt.enter();
            Nl::connect()
        })
    }

    /// Sends one request and collects what the kernel answers.
    pub async fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(|_| NlError { errno: libc::EPIPE })?;
        let mut out = Vec::new();
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NlError { errno: -code.get() });
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Creates an object; fails if it exists.
    pub async fn add(&self, msg: RouteNetlinkMessage) -> Result<(), NlError> {
        self.send(msg, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map(drop)
    }

    /// Creates or replaces an object (iproute2's `replace`, netlink's `*Set`).
    pub async fn replace(&self, msg: RouteNetlinkMessage) -> Result<(), NlError> {
        self.send(msg, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
            .await
            .map(drop)
    }

    /// Changes or deletes an existing object.
    pub async fn change(&self, msg: RouteNetlinkMessage) -> Result<(), NlError> {
        self.send(msg, NLM_F_REQUEST | NLM_F_ACK).await.map(drop)
    }

    /// Dumps a table.
    pub async fn dump(&self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let _one_at_a_time = self.dumping.lock().await;
        self.send(msg, NLM_F_REQUEST | NLM_F_DUMP).await
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, NlError> {
        let out = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default())).await?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// One link by name.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NlError> {
        let msg = LinkUnspec::new_with_name(name).build();
        match self.send(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST).await {
            Ok(v) => Ok(v.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the link named `name` if there is one (one that vanished
    /// meanwhile is no error); whether there was.
    pub async fn remove_link(&self, name: &str) -> Result<bool, NlError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self
            .change(RouteNetlinkMessage::DelLink(
                rtnetlink::LinkUnspec::new_with_index(index).build(),
            ))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A link's index by name.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NlError> {
        Ok(self.link(name).await?.map(|l| l.header.index))
    }

    /// All IPv4 addresses.
    pub async fn addresses(&self) -> Result<Vec<AddressMessage>, NlError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let out = self.dump(RouteNetlinkMessage::GetAddress(req)).await?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    /// All IPv4 routes of every table.
    pub async fn routes(&self) -> Result<Vec<RouteMessage>, NlError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let out = self.dump(RouteNetlinkMessage::GetRoute(req)).await?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// Neighbour entries of a family: `Inet` for ARP, `Bridge` for FDBs.
    /// With `proxy`, the proxy ARP entries instead.
    pub async fn neighbours(&self, family: AddressFamily, proxy: bool) -> Result<Vec<NeighbourMessage>, NlError> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        if proxy {
            req.header.flags = NeighbourFlags::Proxy;
        }
        let out = self.dump(RouteNetlinkMessage::GetNeighbour(req)).await?;
        Ok(out
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }
}

/// A link's kind (veth, bridge, vxlan, ...), when it has one.
pub fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(info) => info.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// A VXLAN link's settings.
pub fn vxlan_info(l: &LinkMessage) -> Option<&Vec<netlink_packet_route::link::InfoVxlan>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(info) => info.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

/// A link's MAC.
pub fn link_mac(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
        _ => None,
    })
}

/// A link's MTU.
pub fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The name of a link message.
pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Sets a link up.
pub fn set_up(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build())
}

/// A Linux bridge, up, with STP off (the kernel default) so ports forward at once.
pub fn bridge(name: &str, mtu: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(rtnetlink::LinkBridge::new(name).mtu(mtu).up().build())
}

/// Both ends of a veth made at once, each already in its namespace: `name`
/// in the socket's namespace (on bridge `master` when given), `peer` in the
/// namespace of `peer_ns`; both get `mtu`, and `name` comes up.
pub fn veth_pair(name: &str, master: Option<u32>, peer: &str, peer_ns: RawFd, mtu: u32) -> RouteNetlinkMessage {
    Veth {
        name,
        master,
        peer,
        peer_ns,
        mtu,
        mac: None,
        peer_mac: None,
        up: true,
    }
    .message()
}

/// A veth to make in one request: `name` in the socket's namespace (on
/// bridge `master` when given, with MAC `mac` when given, up when `up`),
/// `peer` in the namespace of `peer_ns` (with `peer_mac` when given); both
/// with `mtu`. CNI plugins make a pod's pair this way.
pub struct Veth<'a> {
    /// This end's name.
    pub name: &'a str,
    /// The bridge it joins.
    pub master: Option<u32>,
    /// The other end's name.
    pub peer: &'a str,
    /// The other end's namespace.
    pub peer_ns: RawFd,
    /// Both ends' MTU.
    pub mtu: u32,
    /// This end's MAC, else the kernel's random one.
    pub mac: Option<[u8; 6]>,
    /// The other end's MAC, else the kernel's random one.
    pub peer_mac: Option<[u8; 6]>,
    /// Whether this end comes up at once.
    pub up: bool,
}

impl Veth<'_> {
    /// The request.
    pub fn message(&self) -> RouteNetlinkMessage {
        // The peer cannot be set up in the same request: veth_open refuses
        // (ENOTCONN) until the pair is linked; it is set up from its own side.
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(self.peer.to_string()),
            LinkAttribute::Mtu(self.mtu),
        ];
        if let Some(m) = self.peer_mac {
            peer_msg.attributes.push(LinkAttribute::Address(m.to_vec()));
        }
        peer_msg.attributes.push(LinkAttribute::NetNsFd(self.peer_ns));
        let mut msg = LinkMessage::default();
        if self.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes = vec![
            LinkAttribute::IfName(self.name.to_string()),
            LinkAttribute::Mtu(self.mtu),
        ];
        if let Some(m) = self.mac {
            msg.attributes.push(LinkAttribute::Address(m.to_vec()));
        }
        if let Some(m) = self.master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        RouteNetlinkMessage::NewLink(msg)
    }
}

/// A VXLAN device as the overlay agents make it: no learning, no group, no l2miss or
/// l3miss, local address and underlay device given.
pub fn vxlan(
    name: &str,
    vni: u32,
    port: u16,
    local: Ipv4Addr,
    dev: u32,
    mtu: u32,
    mac: [u8; 6],
) -> RouteNetlinkMessage {
    let msg = LinkVxlan::new(name, vni)
        .dev(dev)
        .port(port)
        .local(local)
        .learning(false)
        .mtu(mtu)
        .address(mac.to_vec())
        .build();
    RouteNetlinkMessage::NewLink(msg)
}

/// An IP-in-IP device (used to probe for the ipip module).
pub fn ipip(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::IpIp)]),
    ];
    RouteNetlinkMessage::NewLink(msg)
}

/// An IPv4 address on a link.
pub fn address(index: u32, ip: Ipv4Addr, prefix_len: u8) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewAddress(
        AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, prefix_len)
            .build(),
    )
}

/// A unicast route in the main table, `onlink` when asked.
pub fn route(dst: Ipv4Net, gateway: Option<Ipv4Addr>, dev: Option<u32>, onlink: bool) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst.network(), dst.prefix_len());
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    }
    if let Some(d) = dev {
        b = b.output_interface(d);
    }
    if onlink {
        b = b.onlink();
    }
    let mut msg = b.build();
    msg.header.kind = RouteType::Unicast;
    // vishvananda/netlink (the Go agents, the CNI plugins) sends RTPROT_BOOT, which
    // `ip route` does not print; the builder's default would be "static".
    msg.header.protocol = RouteProtocol::Boot;
    msg
}

/// A permanent ARP entry (a VXLAN agent's `AddARP`).
pub fn neighbour(index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unicast;
    m.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    m
}

/// A static FDB entry of a bridge port (`bridge fdb add MAC dev PORT master static`).
pub fn static_fdb(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = port;
    m.header.state = NeighbourState::Noarp;
    m.header.flags = NeighbourFlags::Controller;
    m.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
    m
}

/// A permanent FDB entry on a VXLAN device pointing at a remote VTEP
/// (a VXLAN agent's `AddFDB`: `<mac> dst <ip> self permanent`).
pub fn fdb(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)),
    ];
    m
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

//! Finds each local pod's interface from the pod's side of its veth, whatever the CNI's routing:
//! the node-side end of a veth names its peer's network namespace (`IFLA_LINK_NETNSID`) and the
//! peer's index there (`IFLA_LINK`), and the kernel lists the addresses of another namespace by
//! its id (`RTM_GETADDR` with `IFA_TARGET_NETNSID`). The pod's addresses are those of the peer.
//! This finds pods on a bridge (the reference bridge plugin, flannel's `cni0`, kubenet), where
//! the node has no route per pod, as well as routed ones.
//!
//! Netlink through `netlink-packet-route` (messages) and `netlink-sys` (a blocking socket): two
//! dumps per read, on the controller's own thread, need no async runtime.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The node-side end of a veth whose peer is in another namespace, with the peer's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPeer {
    pub ifindex: u32,
    pub interface: String,
    /// Global-scope addresses of the peer (no link-local ones: every veth has those).
    pub addresses: Vec<IpAddr>,
}

/// Every veth of the agent's namespace whose peer lives in another namespace, with the peer's
/// addresses (none: the peer has no address yet, or is not a pod's).
pub fn read() -> std::io::Result<Vec<VethPeer>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Strict checking: the kernel reads `IFA_TARGET_NETNSID` of an address dump only then.
    socket.set_netlink_get_strict_chk(true)?;
    let mut veths = Vec::new();
    for message in dump(
        &socket,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(link) = message
            && let Some(veth) = veth_of(&link)
        {
            veths.push(veth);
        }
    }
    // One address dump per peer namespace.
    let mut by_namespace: BTreeMap<i32, Vec<(u32, IpAddr)>> = BTreeMap::new();
    for &(_, _, nsid, _) in &veths {
        if by_namespace.contains_key(&nsid) {
            continue;
        }
        let mut request = AddressMessage::default();
        request
            .attributes
            .push(AddressAttribute::TargetNetNsId(nsid));
        let mut found = Vec::new();
        for message in dump(&socket, RouteNetlinkMessage::GetAddress(request))? {
            if let RouteNetlinkMessage::NewAddress(a) = message
                && let Some(addr) = address_of(&a)
            {
                found.push((a.header.index, addr));
            }
        }
        by_namespace.insert(nsid, found);
    }
    Ok(veths
        .into_iter()
        .map(|(ifindex, interface, nsid, peer)| VethPeer {
            ifindex,
            interface,
            addresses: by_namespace
                .get(&nsid)
                .into_iter()
                .flatten()
                .filter(|(index, _)| *index == peer)
                .map(|(_, addr)| *addr)
                .collect(),
        })
        .collect())
}

/// (index, name, the peer's namespace id, the peer's index) of a veth with its peer elsewhere.
fn veth_of(link: &LinkMessage) -> Option<(u32, String, i32, u32)> {
    let (mut name, mut nsid, mut peer, mut veth) = (None, None, None, false);
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkNetNsId(id) => nsid = Some(*id),
            LinkAttribute::Link(index) => peer = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    let nsid = nsid.filter(|id| *id >= 0)?;
    veth.then_some((link.header.index, name?, nsid, peer?))
}

/// The address of an address message: the interface's own (`IFA_LOCAL` where there is one,
/// else `IFA_ADDRESS`), if it is of global scope.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    if message.header.scope != AddressScope::Universe {
        return None;
    }
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address.filter(|a| match a {
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        IpAddr::V4(_) => true,
    })
}

/// Sends a dump request and collects its answers until `NLMSG_DONE`.
fn dump(
    socket: &Socket,
    request: RouteNetlinkMessage,
) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    packet.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut receive[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&receive[offset..size]).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(match e.code {
                        Some(code) => std::io::Error::from_raw_os_error(-code.get()),
                        None => std::io::Error::other("netlink error without a code"),
                    });
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the machine has, reading never fails and never lists a peer in this namespace.
    #[test]
    fn reading_the_node_works_without_root_and_names_real_interfaces() {
        let peers = read().expect("netlink dumps");
        for p in &peers {
            assert!(p.ifindex > 0 && !p.interface.is_empty(), "{p:?}");
        }
    }
}

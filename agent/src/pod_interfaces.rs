//! Finds the node-side interface of each local pod, two ways, whatever the CNI:
//! - from the pod's end of each veth (`veth_peers`): the addresses the peer holds in the pod's
//!   namespace are the pod's. This finds pods on a bridge (flannel's `cni0`, the bridge plugin,
//!   kubenet), where the node has no route per pod, and routed ones alike; it wins where the two
//!   disagree;
//! - from the node's routes: a pod on this node is reached through a host route (`/32` or
//!   `/128`, no gateway) on its veth, as Calico and Cilium's routed mode set them up (the only
//!   way for a veth whose peer namespace the node cannot name).
//!
//! Only veths count (the driver, as `ethtool -i` reports it): a host route on a physical
//! interface or a tunnel (a cloud's metadata address, a VPN peer) is not a pod, and the compiler
//! denies an address on a pod's interface that no known pod has.
//!
//! Routes are read from `/proc/net/route` and `/proc/net/ipv6_route` (the kernel's stable text
//! view of the routing tables, in the agent's network namespace).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::veth_peers;

/// An interface a host route points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub ifindex: u32,
    pub interface: String,
}

/// Pods' addresses on this node → the node-side interface of each (veth peers, then host
/// routes to other hosts).
pub fn read() -> std::io::Result<BTreeMap<IpAddr, PodInterface>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    let mut routes: Vec<(IpAddr, String)> = parse_ipv4(&v4)
        .into_iter()
        .map(|(addr, iface)| (IpAddr::V4(addr), iface))
        .collect();
    // IPv6 may be disabled: no file, no IPv6 routes.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        routes.extend(
            parse_ipv6(&v6)
                .into_iter()
                .map(|(addr, iface)| (IpAddr::V6(addr), iface)),
        );
    }
    // Each interface is looked up once (a pod's has an IPv4 and an IPv6 route): its index, and
    // whether it is a veth (`None`: not a pod's interface).
    let mut pods_interfaces: BTreeMap<String, Option<u32>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (addr, interface) in routes {
        let ifindex = *pods_interfaces.entry(interface.clone()).or_insert_with(|| {
            ifindex(&interface).filter(|_| driver(&interface).as_deref() == Some("veth"))
        });
        if let Some(ifindex) = ifindex {
            out.entry(addr)
                .or_insert(PodInterface { ifindex, interface });
        }
    }
    for peer in veth_peers::read()? {
        for addr in peer.addresses {
            out.insert(
                addr,
                PodInterface {
                    ifindex: peer.ifindex,
                    interface: peer.interface.clone(),
                },
            );
        }
    }
    Ok(out)
}

/// The index of `interface` in the agent's namespace (`None`: there is none).
pub fn ifindex(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The bridge `interface` is a port of, if it is one (`/sys/class/net/<interface>/master`, a
/// bridge where that device has a `bridge` directory).
pub fn bridge_of(interface: &str) -> Option<String> {
    let net = std::path::Path::new("/sys/class/net");
    let master = std::fs::read_link(net.join(interface).join("master")).ok()?;
    let name = master.file_name()?.to_str()?.to_owned();
    net.join(&name).join("bridge").is_dir().then_some(name)
}

/// The hardware (Ethernet) address of `interface` in the agent's namespace (`SIOCGIFHWADDR`).
pub fn hardware_address(interface: &str) -> Option<[u8; 6]> {
    let req = interface_ioctl(interface, libc::SIOCGIFHWADDR, |_| {})?;
    // SAFETY: the ioctl succeeded: `ifr_hwaddr` is the union's live member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Some(mac)
}

/// An interface ioctl on a throwaway datagram socket: `ifreq` named `interface`, set up further
/// by `prepare`, as the kernel left it (`None`: no such interface, or the ioctl failed).
fn interface_ioctl(
    interface: &str,
    request: libc::c_ulong,
    prepare: impl FnOnce(&mut libc::ifreq),
) -> Option<libc::ifreq> {
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a datagram socket only to carry the ioctl; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned here alone.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    prepare(&mut req);
    // SAFETY: `req` outlives the call; whatever `prepare` pointed it at is the caller's to keep
    // alive (see `driver`).
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), request, &mut req) };
    (r == 0).then_some(req)
}

/// `ETHTOOL_GDRVINFO`'s answer (`struct ethtool_drvinfo`, linux/ethtool.h).
#[repr(C)]
struct DriverInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// The driver of `interface` (`veth`, `bridge`, `e1000e`, ...), asked with the ethtool ioctl:
/// one call, where netlink's link kind would need a netlink stack.
fn driver(interface: &str) -> Option<String> {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut info: DriverInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SIOCETHTOOL with ETHTOOL_GDRVINFO fills `info`, which outlives the call.
    interface_ioctl(interface, SIOCETHTOOL, |req| {
        req.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast();
    })?;
    let end = info
        .driver
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;
/// A route of the `local` table: one of the node's own addresses (`/proc/net/ipv6_route` lists
/// every table; `/proc/net/route` only the main one).
const RTF_LOCAL: u32 = 0x8000_0000;
/// An anycast route of the `local` table (the subnet-router anycast address of each prefix of
/// a forwarding interface, `fd00:ffff::` for `fd00:ffff::/64`).
const RTF_ANYCAST: u32 = 0x0010_0000;

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`, addresses
/// as the hex of the in-memory (network order) word printed as a host-order integer.
fn parse_ipv4(text: &str) -> Vec<(Ipv4Addr, String)> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, mask) =
                (*f.first()?, word(f.get(1)?)?, f.get(3)?, word(f.get(7)?)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let host = mask == [0xff; 4] && flags & RTF_UP != 0 && flags & RTF_GATEWAY == 0;
            (host && iface != "lo").then(|| (Ipv4Addr::from(dest), iface.to_owned()))
        })
        .collect()
}

/// `/proc/net/ipv6_route`: `dest plen src splen nexthop metric refcnt use flags iface`.
fn parse_ipv6(text: &str) -> Vec<(Ipv6Addr, String)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u128::from_str_radix(f.first()?, 16).ok()?;
            let plen = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let next_hop = u128::from_str_radix(f.get(4)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let iface = *f.get(9)?;
            let dest = Ipv6Addr::from(dest);
            let host = plen == 128
                && next_hop == 0
                && flags & RTF_UP != 0
                && flags & (RTF_GATEWAY | RTF_LOCAL | RTF_ANYCAST) == 0;
            // The node's own link-local address on each veth is a local route on it; no pod has
            // a link-local or multicast address.
            let pod_address = !dest.is_unicast_link_local() && !dest.is_multicast();
            (host && pod_address && iface != "lo").then(|| (dest, iface.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_all_zero_hardware_address() {
        assert_eq!(hardware_address("lo"), Some([0; 6]));
        assert_eq!(hardware_address("no-such-interface-x"), None);
    }

    #[test]
    fn loopback_has_no_veth_driver() {
        assert_ne!(driver("lo").as_deref(), Some("veth"));
        assert_eq!(driver("no-such-interface-x"), None);
    }

    #[test]
    fn ipv4_host_routes() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            rpv1\t0A01F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            uplink\t00C8A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            uplink\t0002F40A\t02C8A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            uplink\t0B02F40A\t02C8A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_ipv4(text),
            vec![(Ipv4Addr::new(10, 244, 1, 10), "rpv1".to_owned())]
        );
    }

    /// The node's own addresses on a veth (its link-local one, as the kernel adds it to every
    /// veth, and any other) are local routes on it, not pods: they were read as pods, and the
    /// set was compiled again once the link-local address appeared, a second after start.
    #[test]
    fn ipv6_host_routes() {
        let text = "fd00000000000000000000000af4010a 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     rpv1\n\
            fd00000000000000000000000af4010a 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n\
            fd00ffff000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   uplink\n\
            fe80000000000000387105fffef70302 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     rpv1\n\
            fe80000000000000000000000000000a 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     rpv1\n\
            fd00000000000000000000000af4010b 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     rpv1\n\
            ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     rpv1\n\
            fd00ffff000000000000000000000000 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 00300001   uplink\n";
        assert_eq!(
            parse_ipv6(text),
            vec![(
                "fd00::af4:10a".parse::<Ipv6Addr>().expect("addr"),
                "rpv1".to_owned()
            )]
        );
    }
}

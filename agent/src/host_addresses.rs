//! The node's own addresses: every address of every interface in the agent's network namespace
//! (the node's), which the datapath knows as `host`. Loopback addresses never cross a pod's
//! interface, and IPv6 link-local ones name a link rather than the node (the kernel gives every
//! pod veth one), so both are left out.
//!
//! Read with `getifaddrs(3)` through `libc`, which the agent already links: a crate for one
//! call would add more than it saves.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The node's addresses, as the datapath's `host` identity holds them.
pub fn read() -> std::io::Result<BTreeSet<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocates to `list`, or fails and writes nothing.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is an element of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*at };
        // SAFETY: a non-null ifa_addr points at a sockaddr of the family it names.
        if let Some(addr) = unsafe { address_of(entry.ifa_addr) }
            && is_host_address(&addr)
        {
            out.insert(addr);
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// The address of a socket address of family `AF_INET` or `AF_INET6`.
///
/// # Safety
/// `sa` is null or points at a socket address at least as long as its family's.
unsafe fn address_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 address is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Whether an interface address is one of the node's (not loopback, not IPv6 link-local).
fn is_host_address(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && !a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_addresses_are_not_the_nodes() {
        for (addr, host) in [
            ("192.168.200.1", true),
            ("169.254.1.1", true),
            ("127.0.0.1", false),
            ("::1", false),
            ("fe80::1", false),
            ("fd00::1", true),
        ] {
            let a: IpAddr = addr.parse().expect("address");
            assert_eq!(is_host_address(&a), host, "{addr}");
        }
    }
}

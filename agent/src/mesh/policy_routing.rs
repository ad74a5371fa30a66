//! The policy routing that delivers packets the kernel marks for the proxy locally, whatever
//! their destination: a rule `fwmark MARK/MASK lookup TABLE` at a fixed priority and a route
//! `local default dev lo` in that table, for IPv4 and IPv6. Policy routing, not packet
//! filtering: no iptables or nftables.
//!
//! Netlink through `netlink-packet-route` (messages) and `netlink-sys` (a blocking socket), as in
//! `veth_peers.rs`: a handful of requests at start-up need no async runtime, and the agent runs
//! no `ip` binary (its image carries none).

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The loopback device's index, the same in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;
/// More rules at our priority than this are not the agent's doing: stop deleting.
const MAX_STALE_RULES: usize = 64;

/// Where marked packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRouting {
    pub mark: u32,
    pub mask: u32,
    /// The rule's priority (before the main table's 32766).
    pub priority: u32,
    pub table: u32,
}

const FAMILIES: [AddressFamily; 2] = [AddressFamily::Inet, AddressFamily::Inet6];

impl ProxyRouting {
    /// Installs the rule and the route for both families. A rule already in place exactly as
    /// ours is kept: a restarting agent (a hot restart above all) must not open a moment in
    /// which marked packets are not delivered to the proxy. Otherwise the rules an earlier run
    /// left at the priority are removed first, so exactly one remains. The route is replaced
    /// (atomically).
    pub fn install(&self) -> io::Result<()> {
        let socket = open()?;
        let rules = dump(
            &socket,
            RouteNetlinkMessage::GetRule(RuleMessage::default()),
        )?;
        for family in FAMILIES {
            let at_priority: Vec<&RuleMessage> = rules
                .iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewRule(rule)
                        if rule.header.family == family
                            && rule
                                .attributes
                                .contains(&RuleAttribute::Priority(self.priority)) =>
                    {
                        Some(rule)
                    }
                    _ => None,
                })
                .collect();
            let in_place = matches!(at_priority.as_slice(), [only] if self.is_ours(only));
            if !in_place {
                self.delete_rules(&socket, family)?;
                request(
                    &socket,
                    RouteNetlinkMessage::NewRule(self.rule(family)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )?;
            }
            request(
                &socket,
                RouteNetlinkMessage::NewRoute(self.route(family)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )?;
        }
        Ok(())
    }

    /// Removes the rules and routes (absent ones are no error).
    pub fn remove(&self) -> io::Result<()> {
        let socket = open()?;
        for family in FAMILIES {
            self.delete_rules(&socket, family)?;
            match request(
                &socket,
                RouteNetlinkMessage::DelRoute(self.route(family)),
                0,
            ) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Whether both families' rules and routes are in place (for the repair check).
    pub fn installed(&self) -> io::Result<bool> {
        let socket = open()?;
        let rules = dump(
            &socket,
            RouteNetlinkMessage::GetRule(RuleMessage::default()),
        )?;
        // An unspecified family dumps both families' routes of every table.
        let routes = dump(
            &socket,
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )?;
        Ok(FAMILIES.iter().all(|family| {
            let rule = rules.iter().any(|m| match m {
                RouteNetlinkMessage::NewRule(rule) => {
                    rule.header.family == *family && self.is_ours(rule)
                }
                _ => false,
            });
            let route = routes.iter().any(|m| match m {
                RouteNetlinkMessage::NewRoute(route) => {
                    route.header.address_family == *family && self.is_our_route(route)
                }
                _ => false,
            });
            rule && route
        }))
    }

    fn is_our_route(&self, route: &RouteMessage) -> bool {
        route.header.kind == RouteType::Local
            && route.header.destination_prefix_length == 0
            && route
                .attributes
                .contains(&RouteAttribute::Table(self.table))
            && route
                .attributes
                .contains(&RouteAttribute::Oif(LOOPBACK_IFINDEX))
    }

    fn is_ours(&self, rule: &RuleMessage) -> bool {
        let has = |want: &RuleAttribute| rule.attributes.iter().any(|a| a == want);
        has(&RuleAttribute::Priority(self.priority))
            && has(&RuleAttribute::FwMark(self.mark))
            && has(&RuleAttribute::FwMask(self.mask))
            && has(&RuleAttribute::Table(self.table))
    }

    /// Deletes every rule of `family` at the priority (what `ip rule del pref P` does until it
    /// fails).
    fn delete_rules(&self, socket: &Socket, family: AddressFamily) -> io::Result<()> {
        let mut by_priority = RuleMessage::default();
        by_priority.header.family = family;
        by_priority
            .attributes
            .push(RuleAttribute::Priority(self.priority));
        for _ in 0..MAX_STALE_RULES {
            match request(socket, RouteNetlinkMessage::DelRule(by_priority.clone()), 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "more than {MAX_STALE_RULES} routing rules at priority {}",
            self.priority
        )))
    }

    fn rule(&self, family: AddressFamily) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header.family = family;
        rule.header.action = RuleAction::ToTable;
        rule.attributes.extend([
            RuleAttribute::Priority(self.priority),
            RuleAttribute::FwMark(self.mark),
            RuleAttribute::FwMask(self.mask),
            // The header's table is a byte; the attribute carries the full number.
            RuleAttribute::Table(self.table),
        ]);
        rule
    }

    fn route(&self, family: AddressFamily) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = family;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Host;
        route.header.kind = RouteType::Local;
        route.attributes.extend([
            RouteAttribute::Table(self.table),
            RouteAttribute::Oif(LOOPBACK_IFINDEX),
        ]);
        route
    }
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn send(socket: &Socket, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST | flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    Ok(())
}

/// Reads answers until `on_message` says the exchange is over: `Some(result)`.
fn receive(
    socket: &Socket,
    mut on_message: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Option<io::Result<()>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&buf[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            if let Some(result) = on_message(message.payload) {
                return result;
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// One request the kernel acknowledges (`NLM_F_ACK`): its error, if any, as an `io::Error`.
fn request(socket: &Socket, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    send(socket, message, NLM_F_ACK | flags)?;
    receive(socket, |payload| match payload {
        NetlinkPayload::Error(e) => Some(match e.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        }),
        _ => None,
    })
}

/// A dump request's answers.
fn dump(socket: &Socket, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    send(socket, message, netlink_packet_core::NLM_F_DUMP)?;
    let mut out = Vec::new();
    receive(socket, |payload| match payload {
        NetlinkPayload::Done(_) => Some(Ok(())),
        NetlinkPayload::Error(e) => Some(Err(match e.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other("netlink error without a code"),
        })),
        NetlinkPayload::InnerMessage(m) => {
            out.push(m);
            None
        }
        _ => None,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages carry what `ip rule add pref P fwmark M/K lookup T` and `ip route replace
    /// local default dev lo table T` send.
    #[test]
    fn the_rule_and_route_say_what_ip_would() {
        let r = ProxyRouting {
            mark: 0x100,
            mask: 0x100,
            priority: 90,
            table: 21072,
        };
        let rule = r.rule(AddressFamily::Inet6);
        assert_eq!(rule.header.action, RuleAction::ToTable);
        assert!(r.is_ours(&rule));
        let route = r.route(AddressFamily::Inet);
        assert_eq!(route.header.kind, RouteType::Local);
        assert_eq!(route.header.destination_prefix_length, 0);
        assert!(route.attributes.contains(&RouteAttribute::Table(21072)));
        assert!(r.is_our_route(&route));
        assert!(!ProxyRouting { table: 7, ..r }.is_our_route(&route));
    }

    /// Install, check, reinstall (still one rule per family) and remove, in a network namespace
    /// of the test's own (needs root: skipped, and said so, without it).
    #[test]
    fn installs_idempotently_and_removes_in_a_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root for a network namespace");
            return;
        }
        let r = ProxyRouting {
            mark: 0x4000,
            mask: 0x4000,
            priority: 90,
            table: 21072,
        };
        let outcome = std::thread::spawn(move || -> io::Result<(bool, usize, bool)> {
            // SAFETY: unshare on this thread only (CLONE_NEWNET affects the calling thread).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // A new namespace's loopback is down (a node's never is).
            let mut up = netlink_packet_route::link::LinkMessage::default();
            up.header.index = LOOPBACK_IFINDEX;
            up.header.flags = netlink_packet_route::link::LinkFlags::Up;
            up.header.change_mask = netlink_packet_route::link::LinkFlags::Up;
            request(&open()?, RouteNetlinkMessage::SetLink(up), 0)?;
            // A stale rule at the priority (another mark): replaced by ours.
            let stale = ProxyRouting { mark: 0x1, ..r };
            request(
                &open()?,
                RouteNetlinkMessage::NewRule(stale.rule(AddressFamily::Inet)),
                NLM_F_CREATE | NLM_F_EXCL,
            )?;
            r.install()?;
            // Ours in place: kept as it is.
            r.install()?;
            let installed = r.installed()?;
            // A route someone deleted is missing from the check, and a new install repairs it.
            request(
                &open()?,
                RouteNetlinkMessage::DelRoute(r.route(AddressFamily::Inet6)),
                0,
            )?;
            let without_route = r.installed()?;
            r.install()?;
            let repaired = r.installed()?;
            let socket = open()?;
            let ours = dump(
                &socket,
                RouteNetlinkMessage::GetRule(RuleMessage::default()),
            )?
            .iter()
            .filter(|m| {
                matches!(m, RouteNetlinkMessage::NewRule(rule)
                    if rule.attributes.contains(&RuleAttribute::Priority(90)))
            })
            .inspect(|m| {
                assert!(
                    matches!(m, RouteNetlinkMessage::NewRule(rule) if r.is_ours(rule)),
                    "{m:?}"
                )
            })
            .count();
            r.remove()?;
            r.remove()?;
            Ok((
                installed && !without_route && repaired,
                ours,
                r.installed()?,
            ))
        })
        .join()
        .expect("thread");
        let (installed, ours, after) = outcome.expect("netlink in a fresh namespace");
        assert!(installed, "installed, missing its IPv6 route, repaired");
        assert_eq!(ours, 2, "one rule per family after two installs");
        assert!(!after);
    }
}

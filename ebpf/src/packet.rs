//! Packet parsing: Ethernet → IPv4 (IHL-aware) or IPv6 (extension headers walked) → the L4 ports
//! the policy needs. Every read is bounds-checked against the end of the packet; a packet that
//! ends inside a needed header, or whose fields are inconsistent, is an `Err(reason)` and the
//! caller drops it (fails closed). Nothing here reads past `end`.
//!
//! Headers are read as `network-types`' structs (the layouts the aya ecosystem shares). Two
//! things stay hand-written because the crate has no type for them: IPv6 extension headers (a
//! next header and a length in one of two units, or the fragment header's fields), and the 8
//! bytes of a transport header an ICMP error quotes (RFC 792: a quoted TCP header is cut short,
//! so no `TcpHdr` fits; TCP, UDP, UDP-Lite and SCTP all begin with the port pair).

use network_types::bitfield::BitfieldU16;
use network_types::eth::{EthHdr, EtherType};
use network_types::icmp::{Icmpv4Hdr, Icmpv6Hdr};
use network_types::ip::{IpProto, Ipv4Hdr, Ipv6Hdr};
use network_types::sctp::SctpHdr;
use network_types::tcp::TcpHdr;
use network_types::udp::UdpHdr;
use rampart_common::reason::DropReason;

/// The EtherTypes as they sit in the frame (network byte order, as `EthHdr::ether_type` reads).
const ETHERTYPE_IPV4: u16 = EtherType::Ipv4 as u16;
const ETHERTYPE_IPV6: u16 = EtherType::Ipv6 as u16;
const ETHERTYPE_ARP: u16 = EtherType::Arp as u16;

pub const IPPROTO_ICMP: u8 = IpProto::Icmp as u8;
pub const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
pub const IPPROTO_UDP: u8 = IpProto::Udp as u8;
pub const IPPROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;
const IPPROTO_SCTP: u8 = IpProto::Sctp as u8;
const IPPROTO_UDPLITE: u8 = IpProto::UdpLite as u8;
const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const IPV6_AUTHENTICATION: u8 = IpProto::Ah as u8;
const IPV6_DESTINATION_OPTIONS: u8 = IpProto::Ipv6Opts as u8;

/// The TCP flag bits, in the byte `TcpHdr` keeps after the data offset.
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// How many IPv6 extension headers are walked before giving up (`unsupported_ipv6_ext`).
const MAX_IPV6_EXT: usize = 4;

/// The packet: its directly readable bytes `[start, end)` (`ctx.data()` / `ctx.data_end()`)
/// and its whole length on the wire. For XDP they agree; for TC, `end` covers only the linear
/// part of the skb (at least the pulled headers) while `wire_len` is `skb->len`: header reads
/// are bounded by `end`, length fields are checked against `wire_len`.
pub struct Bounds {
    pub start: usize,
    pub end: usize,
    pub wire_len: usize,
}

impl Bounds {
    /// Reads a `T` at `off` bytes from the start, or `None` if it does not fit.
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let size = core::mem::size_of::<T>();
        if self.start + off + size > self.end {
            return None;
        }
        // SAFETY: [start+off, start+off+size) lies inside the packet (checked just above); the
        // read is unaligned-safe.
        Some(unsafe { core::ptr::read_unaligned((self.start + off) as *const T) })
    }

    /// The packet's length on the wire (see the type's docs).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.wire_len
    }
}

/// A flow's 5-tuple as the policy and conntrack see it. Aligned to 8 bytes so the compiler
/// knows its addresses are: filling or copying one is a few 8-byte stores, where byte-aligned
/// arrays were a call to a byte-by-byte `memset` / `memmove` (the XDP profile's top helper).
#[cfg_attr(not(feature = "previous-layout"), repr(C, align(8)))]
#[cfg_attr(feature = "previous-layout", repr(C))]
#[derive(Clone, Copy)]
pub struct Tuple {
    /// IPv4 as `::ffff:a.b.c.d`.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The parsed packet. Lives in the per-CPU scratch map (`enforce.rs`), not on the 512-byte stack.
#[repr(C)]
pub struct Flow {
    pub tuple: Tuple,
    /// For an ICMP error (`has_related`): the tuple of the packet it reports on, as it was sent.
    pub related: Tuple,
    /// The IP identification of a fragment.
    pub frag_id: u32,
    /// The port used in the policy key: the destination port, or the ICMP type.
    pub policy_port: u16,
    pub v4: u8,
    pub _pad: u8,
    // The bytes `parse` clears for every packet, together at an 8-byte boundary (with the
    // aligned tuples): two stores, not a call to a byte-by-byte `memset`.
    pub tcp_flags: u8,
    pub has_related: u8,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// The protocol a fragment is keyed by: the IPv4 protocol, or the IPv6 fragment header's
    /// next header (the same value in the first and the later fragments).
    pub frag_proto: u8,
    /// IPv6 hop limit (neighbour discovery must carry 255, MLD 1).
    pub hop_limit: u8,
}

/// Not a fragment (or an atomic IPv6 fragment: offset 0, no more fragments).
pub const FRAG_NONE: u8 = 0;
/// The first fragment: it carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; its ports come from `FRAGS_V1`.
pub const FRAG_LATER: u8 = 2;

impl Flow {
    #[inline(always)]
    pub fn closing(&self) -> bool {
        self.tuple.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    /// A TCP packet without SYN: from a flow's originator after a reply, its handshake is done.
    #[inline(always)]
    pub fn confirms(&self) -> bool {
        self.tuple.proto == IPPROTO_TCP && self.tcp_flags & TCP_SYN == 0
    }

    /// A TCP connection's first packet (SYN without ACK).
    #[inline(always)]
    pub fn opening(&self) -> bool {
        self.tuple.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

pub enum Parsed {
    /// ARP, IPv6 neighbour discovery and MLD: link plumbing that passes without policy.
    Control,
    /// An IP packet, described in the `Flow` given to [`parse`].
    Ip,
}

/// Clears what each packet sets anew: `frag_id`, `policy_port`, `v4` (and `_pad`), then
/// `tcp_flags`, `has_related`, `frag` (`FRAG_NONE`), `frag_proto`, `hop_limit` (and the tail
/// padding), as two aligned 8-byte stores; field by field, the compiler merged the bytes into a
/// call to a byte-by-byte `memset` on every packet.
#[cfg(not(feature = "previous-layout"))]
#[inline(always)]
fn clear_packet_fields(flow: &mut Flow) {
    const _: () = assert!(core::mem::offset_of!(Flow, frag_id) % 8 == 0);
    const _: () =
        assert!(core::mem::offset_of!(Flow, v4) < core::mem::offset_of!(Flow, frag_id) + 8);
    const _: () = assert!(core::mem::offset_of!(Flow, tcp_flags) % 8 == 0);
    const _: () =
        assert!(core::mem::offset_of!(Flow, tcp_flags) + 8 == core::mem::size_of::<Flow>());
    const _: () = assert!(core::mem::align_of::<Flow>() == 8 && FRAG_NONE == 0);
    // Volatile, so the two stores are not merged back into a `memset` call.
    // SAFETY: both words lie inside `flow` (asserted above: each starts at an 8-byte boundary of
    // an 8-aligned struct, the second ends at its end) and hold only integer fields and padding,
    // for which zero is valid.
    unsafe {
        core::ptr::addr_of_mut!(flow.frag_id)
            .cast::<u64>()
            .write_volatile(0);
        core::ptr::addr_of_mut!(flow.tcp_flags)
            .cast::<u64>()
            .write_volatile(0);
    }
}

/// The previous layout's build (unaligned tuples) clears them field by field.
#[cfg(feature = "previous-layout")]
#[inline(always)]
fn clear_packet_fields(flow: &mut Flow) {
    flow.has_related = 0;
    flow.tcp_flags = 0;
    flow.policy_port = 0;
    flow.frag = FRAG_NONE;
    flow.frag_id = 0;
    flow.frag_proto = 0;
    flow.hop_limit = 0;
}

/// Parses the packet into `flow`.
#[inline(always)]
pub fn parse(b: &Bounds, flow: &mut Flow) -> Result<Parsed, DropReason> {
    let eth = b.load::<EthHdr>(0).ok_or(DropReason::TRUNCATED_HEADER)?;
    clear_packet_fields(flow);
    match eth.ether_type {
        ETHERTYPE_IPV4 => parse_ipv4(b, flow),
        ETHERTYPE_IPV6 => parse_ipv6(b, flow),
        ETHERTYPE_ARP => Ok(Parsed::Control),
        _ => Err(DropReason::UNSUPPORTED_L3),
    }
}

/// `::ffff:a.b.c.d`, built as two 8-byte words: an array literal with the address's bytes was
/// built byte by byte on the stack (a `memset` call for its zeros) and then copied.
#[inline(always)]
fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    let high = u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]);
    // SAFETY: [u64; 2] and [u8; 16] have the same size, and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, high]) }
}

#[inline(always)]
fn parse_ipv4(b: &Bounds, flow: &mut Flow) -> Result<Parsed, DropReason> {
    let hdr = b
        .load::<Ipv4Hdr>(EthHdr::LEN)
        .ok_or(DropReason::TRUNCATED_HEADER)?;
    if hdr.version() != 4 {
        return Err(DropReason::INVALID_PACKET);
    }
    let ihl = usize::from(hdr.ihl());
    if ihl < Ipv4Hdr::LEN {
        return Err(DropReason::INVALID_PACKET);
    }
    let total_len = usize::from(hdr.tot_len());
    if total_len < ihl {
        return Err(DropReason::INVALID_PACKET);
    }
    if EthHdr::LEN + total_len > b.len() {
        return Err(DropReason::TRUNCATED_HEADER);
    }
    flow.tuple.saddr = v4_mapped(hdr.src_addr);
    flow.tuple.daddr = v4_mapped(hdr.dst_addr);
    flow.v4 = 1;
    if is_fragment(&hdr) {
        flow.frag_id = u32::from(hdr.id());
        flow.frag_proto = hdr.proto;
        if hdr.frag_offset() != 0 {
            flow.frag = FRAG_LATER;
            return Ok(later_fragment(flow, hdr.proto));
        }
        flow.frag = FRAG_FIRST;
    }
    parse_l4(b, EthHdr::LEN + ihl, hdr.proto, flow)
}

#[inline(always)]
fn parse_ipv6(b: &Bounds, flow: &mut Flow) -> Result<Parsed, DropReason> {
    let hdr = b
        .load::<Ipv6Hdr>(EthHdr::LEN)
        .ok_or(DropReason::TRUNCATED_HEADER)?;
    flow.tuple.daddr = hdr.dst_addr;
    flow.tuple.saddr = hdr.src_addr;
    if hdr.version() != 6 {
        return Err(DropReason::INVALID_PACKET);
    }
    if EthHdr::LEN + Ipv6Hdr::LEN + usize::from(hdr.payload_len()) > b.len() {
        return Err(DropReason::TRUNCATED_HEADER);
    }
    flow.v4 = 0;
    flow.hop_limit = hdr.hop_limit;
    let mut next = hdr.next_hdr;
    let mut off = EthHdr::LEN + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, excluding the first.
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                let ext = b.load::<[u8; 2]>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            IPV6_AUTHENTICATION => {
                let ext = b.load::<[u8; 2]>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            // Fragment header: next header, reserved, offset (13 bits) + M, identification.
            IPV6_FRAGMENT => {
                let ext = b.load::<[u8; 8]>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
                next = ext[0];
                off += 8;
                let offset_m = u16::from_be_bytes([ext[2], ext[3]]);
                if offset_m & 0xfff9 != 0 {
                    flow.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                    flow.frag_proto = next;
                    if offset_m >> 3 != 0 {
                        flow.frag = FRAG_LATER;
                        return Ok(later_fragment(flow, next));
                    }
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => return parse_l4(b, off, next, flow),
        }
    }
    match next {
        IPV6_HOP_BY_HOP
        | IPV6_ROUTING
        | IPV6_DESTINATION_OPTIONS
        | IPV6_AUTHENTICATION
        | IPV6_FRAGMENT => Err(DropReason::UNSUPPORTED_IPV6_EXT),
        _ => parse_l4(b, off, next, flow),
    }
}

#[inline(always)]
fn parse_l4(b: &Bounds, off: usize, proto: u8, flow: &mut Flow) -> Result<Parsed, DropReason> {
    flow.tuple.proto = proto;
    flow.tuple.sport = 0;
    flow.tuple.dport = 0;
    match proto {
        IPPROTO_TCP => {
            let tcp = b.load::<TcpHdr>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
            let [offset, flags] = tcp_offset_and_flags(&tcp);
            if usize::from(offset >> 4) * 4 < TcpHdr::LEN {
                return Err(DropReason::INVALID_PACKET);
            }
            flow.tuple.sport = u16::from_be_bytes(tcp.source);
            flow.tuple.dport = u16::from_be_bytes(tcp.dest);
            flow.tcp_flags = flags;
            flow.policy_port = flow.tuple.dport;
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => {
            // UDP-Lite's header has UDP's layout (RFC 3828).
            let udp = b.load::<UdpHdr>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
            flow.tuple.sport = udp.src_port();
            flow.tuple.dport = udp.dst_port();
            flow.policy_port = flow.tuple.dport;
        }
        IPPROTO_SCTP => {
            let sctp = b.load::<SctpHdr>(off).ok_or(DropReason::TRUNCATED_HEADER)?;
            flow.tuple.sport = u16::from_be_bytes(sctp.src);
            flow.tuple.dport = u16::from_be_bytes(sctp.dst);
            flow.policy_port = flow.tuple.dport;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // ICMP and ICMPv6 share the header's layout: type, code, checksum, 4 bytes of data
            // (an echo's identifier first).
            const _: () = assert!(Icmpv4Hdr::LEN == Icmpv6Hdr::LEN);
            let icmp = b
                .load::<Icmpv4Hdr>(off)
                .ok_or(DropReason::TRUNCATED_HEADER)?;
            let (kind, id) = (icmp.type_, u16::from_be_bytes([icmp.data[0], icmp.data[1]]));
            flow.policy_port = u16::from(kind);
            match icmp_class(proto, kind) {
                IcmpClass::EchoRequest => flow.tuple.sport = id,
                IcmpClass::EchoReply => flow.tuple.dport = id,
                // Link plumbing only as the RFCs send it: neighbour discovery with hop limit 255
                // (never forwarded), MLD with hop limit 1 to a multicast group. Anything else of
                // these types is judged by policy like any ICMPv6.
                IcmpClass::NeighbourDiscovery if flow.hop_limit == 255 => {
                    return Ok(Parsed::Control);
                }
                IcmpClass::Mld if flow.hop_limit == 1 && flow.tuple.daddr[0] == 0xff => {
                    return Ok(Parsed::Control);
                }
                IcmpClass::Error => {
                    if inner_tuple(b, off + Icmpv4Hdr::LEN, flow.v4 != 0, &mut flow.related) {
                        flow.has_related = 1;
                    }
                    flow.tuple.dport = u16::from_be_bytes([kind, icmp.code]);
                }
                // Conntrack tells non-echo types apart: one admitted type does not open the others.
                _ => flow.tuple.dport = u16::from_be_bytes([kind, icmp.code]),
            }
        }
        _ => {}
    }
    Ok(Parsed::Ip)
}

/// MF set or a fragment offset: part of a fragmented datagram.
#[inline(always)]
pub fn is_fragment(hdr: &Ipv4Hdr) -> bool {
    const MORE_FRAGMENTS: u8 = 0b001;
    hdr.frag_flags() & MORE_FRAGMENTS != 0 || hdr.frag_offset() != 0
}

/// The two bytes of a TCP header after the acknowledgement number: the data offset (high nibble
/// of the first) and the flags (the second: FIN, SYN, RST, PSH, ACK, URG, ECE, CWR from bit 0).
/// `TcpHdr` keeps them in a `BitfieldU16` whose accessors (bindgen's) walk the bits one at a
/// time, which the kernel program would run on every TCP packet; the bytes are read as they are.
#[inline(always)]
pub fn tcp_offset_and_flags(tcp: &TcpHdr) -> [u8; 2] {
    // SAFETY: `BitfieldU16` is `repr(C)` around one `[u8; 2]` (network-types' `bitfield.rs`):
    // the same size (checked by `transmute`) and layout, and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<BitfieldU16, [u8; 2]>(tcp._bitfield_1) }
}

/// A later fragment: the protocol is known, the ports are not (they come from `FRAGS_V1`).
#[inline(always)]
fn later_fragment(flow: &mut Flow, proto: u8) -> Parsed {
    flow.tuple.proto = proto;
    flow.tuple.sport = 0;
    flow.tuple.dport = 0;
    Parsed::Ip
}

enum IcmpClass {
    EchoRequest,
    EchoReply,
    Error,
    NeighbourDiscovery,
    Mld,
    Other,
}

#[inline(always)]
fn icmp_class(proto: u8, kind: u8) -> IcmpClass {
    if proto == IPPROTO_ICMP {
        match kind {
            8 => IcmpClass::EchoRequest,
            0 => IcmpClass::EchoReply,
            3 | 4 | 5 | 11 | 12 => IcmpClass::Error,
            _ => IcmpClass::Other,
        }
    } else {
        match kind {
            128 => IcmpClass::EchoRequest,
            129 => IcmpClass::EchoReply,
            1..=4 => IcmpClass::Error,
            130..=132 | 143 => IcmpClass::Mld,
            133..=137 => IcmpClass::NeighbourDiscovery,
            _ => IcmpClass::Other,
        }
    }
}

/// Fills `t` with the tuple of the packet an ICMP error quotes, starting at `off` (the quoted IP
/// header). `false` when the quote is too short to name the flow; the error is then judged as a
/// flow of its own.
#[inline(always)]
fn inner_tuple(b: &Bounds, off: usize, v4: bool, t: &mut Tuple) -> bool {
    let l4 = if v4 {
        let Some(hdr) = b.load::<Ipv4Hdr>(off) else {
            return false;
        };
        let ihl = usize::from(hdr.ihl());
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
            return false;
        }
        t.saddr = v4_mapped(hdr.src_addr);
        t.daddr = v4_mapped(hdr.dst_addr);
        t.proto = hdr.proto;
        off + ihl
    } else {
        let Some(hdr) = b.load::<Ipv6Hdr>(off) else {
            return false;
        };
        t.saddr = hdr.src_addr;
        t.daddr = hdr.dst_addr;
        t.proto = hdr.next_hdr;
        off + Ipv6Hdr::LEN
    };
    let Some(l4hdr) = b.load::<[u8; 8]>(l4) else {
        return false;
    };
    t.sport = 0;
    t.dport = 0;
    match t.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            t.sport = u16::from_be_bytes([l4hdr[0], l4hdr[1]]);
            t.dport = u16::from_be_bytes([l4hdr[2], l4hdr[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match icmp_class(t.proto, l4hdr[0]) {
            IcmpClass::EchoRequest => t.sport = u16::from_be_bytes([l4hdr[4], l4hdr[5]]),
            IcmpClass::EchoReply => t.dport = u16::from_be_bytes([l4hdr[4], l4hdr[5]]),
            _ => return false,
        },
        _ => {}
    }
    true
}

//! Service translation at the client pod's own interface (layouts and rules:
//! `rampart_common::service`). A pod's packet to a Service frontend has its destination rewritten
//! to one backend before anything judges it, so policy, conntrack, the mTLS redirect and flow
//! records all see the pod behind the Service, and kube-proxy's rules (which match Service
//! addresses, later, in netfilter) never see the packet. Replies get the frontend back as their
//! source on the way into the client pod, after the pod's ingress has judged them.
//!
//! Headers are read with `bpf_skb_load_bytes` and written with `bpf_skb_store_bytes` and the
//! checksum helpers (which also keep offloaded `CHECKSUM_PARTIAL` packets right). What is not
//! translated, and why: IPv4 fragments (a later fragment has no ports to translate; the datagram
//! goes on untranslated and is judged as sent), IPv6 with extension headers before the transport
//! header, ICMP (kube-proxy does not translate it either), SCTP (its CRC32c covers the ports).

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use aya_ebpf::helpers::{bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_ns};
use aya_ebpf::macros::map;
use aya_ebpf::maps::PerCpuArray;
use aya_ebpf::programs::TcContext;
use core::mem::offset_of;

use network_types::eth::{EthHdr, EtherType};
use network_types::ip::{IpProto, Ipv4Hdr, Ipv6Hdr};
use network_types::tcp::TcpHdr;
use network_types::udp::UdpHdr;
use rampart_common::service::{NAT_IDLE_NS, NatKey, NatValue, ServiceKey};

use crate::maps::{self, SVC_NAT};

const PROTO_TCP: u8 = IpProto::Tcp as u8;
const PROTO_UDP: u8 = IpProto::Udp as u8;
/// SYN and ACK in the TCP flag byte (`packet::tcp_offset_and_flags`).
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Where the IPv4 header checksum sits in the frame.
const IPV4_CHECK_AT: usize = EthHdr::LEN + offset_of!(Ipv4Hdr, check);

/// What the translation step did with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Not a translated flow: the packet is as it was.
    Untouched,
    /// Rewritten (or nothing to rewrite for a flow that is not new).
    Rewritten,
    /// A new flow to a frontend with no backend: drop it (`no_service_backend`).
    NoBackend,
    /// The packet could not be rewritten (a helper failed): drop it, never pass it half-written.
    Failed,
}

/// Working memory: keys too large for the 512-byte stack beside the decision's.
#[repr(C)]
pub struct NatScratch {
    key: NatKey,
    other: NatKey,
    value: NatValue,
    frontend: ServiceKey,
}

/// This CPU's tuple slot (for a caller that needs [`read`] outside the translation).
#[inline(always)]
pub fn scratch_key() -> Option<&'static mut NatKey> {
    // SAFETY: this CPU's slot; TC programs do not nest on a CPU.
    SVC_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut (*p).key })
}

#[map(name = "SVC_SCRATCH_V1")]
static SVC_SCRATCH: PerCpuArray<NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where the packet's translated fields are.
pub struct Layout {
    pub v4: bool,
    /// Offset of the source address; the destination follows it.
    saddr: usize,
    /// Offset of the transport header (source port, then destination port).
    l4: usize,
    /// Offset of the transport checksum.
    csum: usize,
    udp: bool,
    /// A TCP SYN without ACK: a new connection, which chooses its backend again.
    pub syn: bool,
}

/// Reads the tuple of a TCP or UDP packet into `key` (addresses, ports, protocol).
#[inline(always)]
pub fn read(ctx: &TcContext, key: &mut NatKey) -> Option<Layout> {
    let ether_type = ctx.load::<u16>(offset_of!(EthHdr, ether_type)).ok()?;
    let (v4, saddr, l4, proto) = if ether_type == EtherType::Ipv4 as u16 {
        let hdr: Ipv4Hdr = ctx.load(EthHdr::LEN).ok()?;
        let ihl = usize::from(hdr.ihl());
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
            return None;
        }
        // A fragment: not translated.
        if crate::packet::is_fragment(&hdr) {
            return None;
        }
        key.saddr = mapped(hdr.src_addr);
        key.daddr = mapped(hdr.dst_addr);
        (
            true,
            EthHdr::LEN + offset_of!(Ipv4Hdr, src_addr),
            EthHdr::LEN + ihl,
            hdr.proto,
        )
    } else if ether_type == EtherType::Ipv6 as u16 {
        let hdr: Ipv6Hdr = ctx.load(EthHdr::LEN).ok()?;
        key.saddr = hdr.src_addr;
        key.daddr = hdr.dst_addr;
        (
            false,
            EthHdr::LEN + offset_of!(Ipv6Hdr, src_addr),
            EthHdr::LEN + Ipv6Hdr::LEN,
            hdr.next_hdr,
        )
    } else {
        return None;
    };
    let (csum, udp, syn) = match proto {
        PROTO_TCP => {
            let tcp: TcpHdr = ctx.load(l4).ok()?;
            key.sport = u16::from_be_bytes(tcp.source);
            key.dport = u16::from_be_bytes(tcp.dest);
            let [_, flags] = crate::packet::tcp_offset_and_flags(&tcp);
            (
                l4 + offset_of!(TcpHdr, check),
                false,
                flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            )
        }
        PROTO_UDP => {
            let udp: UdpHdr = ctx.load(l4).ok()?;
            key.sport = udp.src_port();
            key.dport = udp.dst_port();
            (l4 + offset_of!(UdpHdr, check), true, false)
        }
        _ => return None,
    };
    key.proto = proto;
    key._pad = [0; 2];
    Some(Layout {
        v4,
        saddr,
        l4,
        csum,
        udp,
        syn,
    })
}

#[inline(always)]
fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// A packet entering the node (TC ingress: a pod's interface, `scope` `FROM_PODS`, or an uplink,
/// `FROM_OUTSIDE`), before the decision: a flow to a Service frontend of that scope gets its
/// backend as destination. `generation` is the live one.
#[inline(never)]
pub fn to_backend(ctx: &TcContext, generation: u32, scope: u8) -> Translation {
    let Some(s) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Translation::Untouched;
    };
    // SAFETY: this CPU's slot; TC programs do not nest on a CPU.
    let s = unsafe { &mut *s };
    let Some(at) = read(ctx, &mut s.key) else {
        return Translation::Untouched;
    };
    s.key.dir = NatKey::FORWARD;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(known) = SVC_NAT.get_ptr_mut(&s.key) {
        // SAFETY: a pointer from the map lookup, valid for this program run.
        let known = unsafe { &mut *known };
        if !at.syn && now.saturating_sub(known.last_seen_ns) < NAT_IDLE_NS {
            known.last_seen_ns = now;
            s.value = *known;
            return rewrite(ctx, &at, false, &s.key.daddr, s.key.dport, &s.value);
        }
    }
    s.frontend = ServiceKey {
        addr: s.key.daddr,
        port: s.key.dport,
        slot: 0,
        proto: s.key.proto,
        scope,
        _pad: [0; 2],
    };
    let Some(head) = maps::service_slot(generation, &s.frontend) else {
        return Translation::Untouched;
    };
    if head.count == 0 {
        return Translation::NoBackend;
    }
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let pick = unsafe { bpf_get_prandom_u32() } % u32::from(head.count);
    s.frontend.slot = pick as u16 + 1;
    let Some(backend) = maps::service_slot(generation, &s.frontend) else {
        return Translation::NoBackend;
    };
    s.value = NatValue {
        addr: backend.addr,
        port: backend.port,
        _pad: [0; 6],
        last_seen_ns: now,
    };
    s.other = NatKey {
        saddr: backend.addr,
        daddr: s.key.saddr,
        sport: backend.port,
        dport: s.key.sport,
        proto: s.key.proto,
        dir: NatKey::REVERSE,
        _pad: [0; 2],
    };
    let frontend = NatValue {
        addr: s.key.daddr,
        port: s.key.dport,
        _pad: [0; 6],
        last_seen_ns: now,
    };
    // Both ways or neither: a reply the client could not recognise is worse than no flow.
    if SVC_NAT.insert(&s.other, &frontend, 0).is_err()
        || SVC_NAT.insert(&s.key, &s.value, 0).is_err()
    {
        return Translation::Failed;
    }
    rewrite(ctx, &at, false, &s.key.daddr, s.key.dport, &s.value)
}

/// A packet leaving the node (TC egress: into a pod, or out of an uplink), after the decision
/// passed it: the reply of a translated flow gets its frontend back as source.
#[inline(never)]
pub fn from_backend(ctx: &TcContext) -> Translation {
    let Some(s) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Translation::Untouched;
    };
    // SAFETY: this CPU's slot; TC programs do not nest on a CPU.
    let s = unsafe { &mut *s };
    let Some(at) = read(ctx, &mut s.key) else {
        return Translation::Untouched;
    };
    s.key.dir = NatKey::REVERSE;
    // SAFETY: the value is copied out at once; hash map values stay valid for the program run.
    let Some(frontend) = (unsafe { SVC_NAT.get(&s.key) }).copied() else {
        return Translation::Untouched;
    };
    s.value = frontend;
    rewrite(ctx, &at, true, &s.key.saddr, s.key.sport, &s.value)
}

/// Writes `to` over the destination (or, `source`, the source) address and port, which are now
/// `old_addr` and `old_port`, with the IPv4 header and transport checksums updated.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    at: &Layout,
    source: bool,
    old_addr: &[u8; 16],
    old_port: u16,
    to: &NatValue,
) -> Translation {
    let mangled = if at.udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    let addr_at = if source {
        at.saddr
    } else {
        at.saddr + if at.v4 { 4 } else { 16 }
    };
    if old_addr != &to.addr {
        if at.v4 {
            let old = u32::from_ne_bytes([old_addr[12], old_addr[13], old_addr[14], old_addr[15]]);
            let new = u32::from_ne_bytes([to.addr[12], to.addr[13], to.addr[14], to.addr[15]]);
            if ctx
                .l4_csum_replace(at.csum, u64::from(old), u64::from(new), pseudo | 4)
                .is_err()
                || ctx
                    .l3_csum_replace(IPV4_CHECK_AT, u64::from(old), u64::from(new), 4)
                    .is_err()
                || ctx.store(addr_at, &new, 0).is_err()
            {
                return Translation::Failed;
            }
        } else {
            let mut old = *old_addr;
            let mut new = to.addr;
            // SAFETY: both buffers are 16 bytes on this stack frame, as the sizes say.
            let diff = unsafe {
                bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0)
            };
            if diff < 0
                || ctx
                    .l4_csum_replace(at.csum, 0, diff as u64, pseudo)
                    .is_err()
                || ctx.store(addr_at, &new, 0).is_err()
            {
                return Translation::Failed;
            }
        }
    }
    if old_port != to.port {
        let old = u64::from(old_port.to_be());
        let new = to.port.to_be();
        let port_at = if source { at.l4 } else { at.l4 + 2 };
        if ctx
            .l4_csum_replace(at.csum, old, u64::from(new), mangled | 2)
            .is_err()
            || ctx.store(port_at, &new, 0).is_err()
        {
            return Translation::Failed;
        }
    }
    Translation::Rewritten
}

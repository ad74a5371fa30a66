//! Hands a redirected connection's first packet to the local proxy's listener: a socket lookup
//! for the listener (any address, the proxy's port) and `bpf_sk_assign`. The packet keeps its
//! original addresses, so the proxy's accepted socket names the original destination. The mark
//! set beside it makes the node's policy routing deliver the packet locally (without it, a packet
//! for another address would be forwarded, and the kernel drops forwarded packets that carry a
//! socket). Later packets of the connection find the accepted socket by the normal lookup.

use aya_ebpf::bindings::{
    BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as Tuple4,
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as Tuple6,
};
use aya_ebpf::helpers::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_release, bpf_skc_lookup_tcp};
use aya_ebpf::programs::TcContext;

use crate::enforce;
use crate::maps::{CONFIG, IF_MAC};
use crate::service;

/// `PACKET_HOST` (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// A frame for the local proxy, arriving on a pod's interface `ifindex`: addressed to that
/// interface itself, for this host. On a routed veth it already is (the pod's gateway is the
/// veth); on a bridge port it may be addressed to another pod of the bridge, which the bridge
/// would switch there without the node's stack (and the proxy) ever seeing it. A bridge hands a
/// frame for one of its ports' own addresses up to the node. False if the frame could not be
/// rewritten (the caller drops it).
#[inline(never)]
pub fn to_this_host(ctx: &TcContext, ifindex: u32) -> bool {
    // SAFETY: the value is copied out at once; hash map values stay valid for the program run.
    let Some(own) = (unsafe { IF_MAC.get(&ifindex) }).copied() else {
        return true;
    };
    let at = core::mem::offset_of!(network_types::eth::EthHdr, dst_addr);
    let Ok(dst) = ctx.load::<[u8; 6]>(at) else {
        return false;
    };
    if dst == own.mac {
        return true;
    }
    ctx.store(at, &own.mac, 0).is_ok() && ctx.change_type(PACKET_HOST).is_ok()
}

#[inline(always)]
fn be32(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Assigns the packet to the proxy's listener; false if there is none.
#[inline(never)]
pub fn assign_listener(ctx: &TcContext) -> bool {
    let Some(flow) = enforce::current_flow() else {
        return false;
    };
    let t = &flow.tuple;
    assign(ctx, flow.v4 != 0, &t.saddr, &t.daddr, t.sport, t.dport)
}

/// On a bridge that holds pods' interfaces (TC ingress of the bridge device): the first packet
/// of a connection the pod's interface marked for the proxy gets the proxy's listener again. A
/// socket assigned on the bridge's port does not survive the bridge's hand-up to the node, so
/// without this a bridge CNI's pods could never reach the proxy. Later packets find the accepted
/// socket by the normal lookup. True if there was nothing to do or the listener took it.
#[inline(never)]
pub fn assign_bridged(ctx: &TcContext) -> bool {
    let Some(key) = service::scratch_key() else {
        return false;
    };
    match service::read(ctx, key) {
        Some(at) if at.syn => assign(ctx, at.v4, &key.saddr, &key.daddr, key.sport, key.dport),
        _ => true,
    }
}

/// `BPF_TCP_TIME_WAIT` (`bpf_sock.state`).
const TCP_TIME_WAIT: u32 = 6;

/// The lookup tuple of `saddr:sport` → `daddr:dport` and its size.
#[inline(always)]
fn tuple_of(
    v4: bool,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) -> (bpf_sock_tuple, u32) {
    // SAFETY: an all-zero bpf_sock_tuple is valid (plain integers).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if v4 {
        tuple.__bindgen_anon_1.ipv4 = Tuple4 {
            saddr: be32(saddr, 12),
            daddr: be32(daddr, 12),
            sport: sport.to_be(),
            dport: dport.to_be(),
        };
        core::mem::size_of::<Tuple4>()
    } else {
        tuple.__bindgen_anon_1.ipv6 = Tuple6 {
            saddr: [
                be32(saddr, 0),
                be32(saddr, 4),
                be32(saddr, 8),
                be32(saddr, 12),
            ],
            daddr: [
                be32(daddr, 0),
                be32(daddr, 4),
                be32(daddr, 8),
                be32(daddr, 12),
            ],
            sport: sport.to_be(),
            dport: dport.to_be(),
        };
        core::mem::size_of::<Tuple6>()
    };
    (tuple, size as u32)
}

/// The first packet of a redirected connection, to the proxy's listener (any address, the
/// proxy's port): `bpf_sk_lookup_tcp`, then `bpf_sk_assign`. Addresses are 16 bytes (IPv4 as
/// `::ffff:a.b.c.d`).
///
/// Unless the node still holds the previous connection of the same four-tuple in TIME_WAIT
/// (the proxy closed it first, and the client reused its port): a SYN the listener took then
/// could not be queued beside it (the kernel drops a request whose tuple is taken) and the
/// client would time out. The SYN goes to the TIME_WAIT socket instead, which answers it with an
/// ACK; the client's RST ends the TIME_WAIT and its next SYN (a second later) reaches the
/// listener. (nf_tproxy ends the TIME_WAIT itself; a program cannot.)
#[inline(always)]
fn assign(
    ctx: &TcContext,
    v4: bool,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) -> bool {
    let Some(port) = CONFIG.get(0).map(|c| c.proxy_port) else {
        return false;
    };
    if port == 0 {
        return false;
    }
    let skb = ctx.skb.skb.cast();
    let (mut exact, size) = tuple_of(v4, saddr, daddr, sport, dport);
    // SAFETY: skb is this run's context; the tuple lives on the stack for the call; the socket
    // the lookup returns is released on every path.
    unsafe {
        let sk = bpf_skc_lookup_tcp(skb, &mut exact, size, BPF_F_CURRENT_NETNS as u64, 0);
        if !sk.is_null() {
            if (*sk).state == TCP_TIME_WAIT {
                let assigned = bpf_sk_assign(skb, sk.cast(), 0);
                bpf_sk_release(sk.cast());
                return assigned == 0;
            }
            bpf_sk_release(sk.cast());
        }
    }
    let (mut tuple, size) = tuple_of(v4, saddr, daddr, sport, port);
    // SAFETY: as above.
    unsafe {
        let sk = bpf_sk_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return false;
        }
        let assigned = bpf_sk_assign(skb, sk.cast(), 0);
        bpf_sk_release(sk.cast());
        assigned == 0
    }
}

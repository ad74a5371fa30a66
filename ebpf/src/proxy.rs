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
use aya_ebpf::helpers::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_release};
use aya_ebpf::programs::TcContext;

use crate::enforce;
use crate::maps::{CONFIG, IF_MAC};

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
    let Ok(dst) = ctx.load::<[u8; 6]>(0) else {
        return false;
    };
    if dst == own.mac {
        return true;
    }
    ctx.store(0, &own.mac, 0).is_ok() && ctx.change_type(PACKET_HOST).is_ok()
}

#[inline(always)]
fn be32(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Assigns the packet to the proxy's listener; false if there is none.
#[inline(never)]
pub fn assign_listener(ctx: &TcContext) -> bool {
    let Some(port) = CONFIG.get(0).map(|c| c.proxy_port) else {
        return false;
    };
    if port == 0 {
        return false;
    }
    let Some(flow) = enforce::current_flow() else {
        return false;
    };
    let t = &flow.tuple;
    // SAFETY: an all-zero bpf_sock_tuple is valid (plain integers).
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if flow.v4 != 0 {
        tuple.__bindgen_anon_1.ipv4 = Tuple4 {
            saddr: be32(&t.saddr, 12),
            daddr: be32(&t.daddr, 12),
            sport: t.sport.to_be(),
            dport: port.to_be(),
        };
        core::mem::size_of::<Tuple4>()
    } else {
        tuple.__bindgen_anon_1.ipv6 = Tuple6 {
            saddr: [
                be32(&t.saddr, 0),
                be32(&t.saddr, 4),
                be32(&t.saddr, 8),
                be32(&t.saddr, 12),
            ],
            daddr: [
                be32(&t.daddr, 0),
                be32(&t.daddr, 4),
                be32(&t.daddr, 8),
                be32(&t.daddr, 12),
            ],
            sport: t.sport.to_be(),
            dport: port.to_be(),
        };
        core::mem::size_of::<Tuple6>()
    };
    let skb = ctx.skb.skb.cast();
    // SAFETY: skb is this run's context; the tuple lives on the stack for the call; the socket
    // the lookup returns is released on every path.
    unsafe {
        let sk = bpf_sk_lookup_tcp(skb, &mut tuple, size as u32, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return false;
        }
        let assigned = bpf_sk_assign(skb, sk.cast(), 0);
        bpf_sk_release(sk.cast());
        assigned == 0
    }
}

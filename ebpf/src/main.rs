//! Rampart's kernel programs.
//!
//! Kernel programs are thin: parse, look up, decide, count. Nothing logs on the fast path; rare
//! and slow paths log through aya-log when the agent turns a program's level up (`log.rs`). Every
//! early return says whether it fails open or closed and counts why (see `enforce.rs`).
//!
//! Programs (the function name is the program name; at most 15 characters so the kernel does not
//! truncate it), all on the node-side end of a pod's veth:
//! - `rp_xdp`: XDP, the earliest point: what the pod sends (the pod's egress).
//! - `rp_tc_ingress`: TC ingress, the same packets as skbs (the pod's egress; with XDP attached,
//!   flows XDP admitted are already tracked here).
//! - `rp_tc_egress`: TC egress: what the node delivers to the pod (the pod's ingress).
//! - `rp_tc_bridge`: TC ingress of a bridge that holds pods' interfaces: hands a connection the
//!   pod's interface marked for the proxy to the proxy's listener (see `proxy::assign_bridged`).
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference so they are not copied onto the 512-byte BPF stack"
)]

mod counters;
mod enforce;
mod events;
mod log;
mod maps;
mod packet;
mod proxy;
mod service;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_xdp_get_buff_len,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rampart_common::config::ConfigFlags;
use rampart_common::counters::Hook;
use rampart_common::kernel_log::Program;
use rampart_common::mesh::{MARK_MASK, MARK_TO_PROXY};
use rampart_common::reason::{Direction, DropReason};
use rampart_common::service::ServiceKey;

use crate::enforce::Action;
use crate::maps::CONFIG;
use crate::packet::Bounds;
use crate::service::Translation;

/// Bytes of headers the TC programs make linear before parsing (Ethernet + IPv6 + extension
/// headers + L4 + a quoted header in ICMP errors).
const TC_PULL_LEN: u32 = 192;

/// Multi-buffer aware (`xdp.frags`), so uplinks with jumbo frames or hardware GRO can carry it:
/// the headers are read from the first buffer, length checks use the whole packet.
#[xdp(frags)]
pub fn rp_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // SAFETY: ctx.ctx points to the kernel's xdp_md for this run.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let b = Bounds {
        start,
        end,
        wire_len: core::cmp::max(whole, end.saturating_sub(start)),
    };
    counters::count(Hook::XDP, b.len() as u64);
    // SAFETY: ctx.ctx points to the kernel's xdp_md for this run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // XDP cannot mark packets: a flow for the proxy passes here and TC ingress redirects it.
    match enforce::decide(Program::Xdp, &b, ifindex, Direction::EGRESS, 0, false) {
        Action::Drop => xdp_action::XDP_DROP,
        Action::Pass | Action::Redirect { .. } | Action::ToProxy => xdp_action::XDP_PASS,
    }
}

/// Benchmark baseline: passes every packet and does nothing else. Only in the benchmarks' object
/// (feature `bench-baselines`); `cargo xtask bench` measures Rampart's programs against it.
#[cfg(feature = "bench-baselines")]
#[xdp]
pub fn rp_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark baseline: drops every packet and does nothing else (benchmarks' object only).
#[cfg(feature = "bench-baselines")]
#[xdp]
pub fn rp_xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[classifier]
pub fn rp_tc_ingress(ctx: TcContext) -> i32 {
    tc(ctx, Program::TcIngress, Hook::TC_INGRESS, Direction::EGRESS)
}

#[classifier]
pub fn rp_tc_egress(ctx: TcContext) -> i32 {
    tc(ctx, Program::TcEgress, Hook::TC_EGRESS, Direction::INGRESS)
}

#[classifier]
pub fn rp_tc_bridge(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb points to the kernel's __sk_buff for this run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & MARK_MASK != MARK_TO_PROXY {
        return TC_ACT_UNSPEC;
    }
    if !proxy::assign_bridged(&ctx) {
        log::no_proxy_listener(Program::TcBridge);
        counters::dropped(
            DropReason::PROXY_UNAVAILABLE,
            Direction::EGRESS,
            u64::from(ctx.len()),
        );
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// Rampart runs first on the hook (see `datapath::attach`): a drop here is final, a pass hands
/// the packet to the next program, and a flow for the proxy ends the chain (its socket is
/// assigned; nothing after may redirect it elsewhere).
#[inline(always)]
fn tc(ctx: TcContext, program: Program, hook: Hook, dir: Direction) -> i32 {
    let len = ctx.len();
    counters::count(hook, u64::from(len));
    // SAFETY: ctx.skb.skb points to the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (generation, services) = match CONFIG.get(0) {
        Some(c) => (c.revision & 1, c.flags & ConfigFlags::SERVICES != 0),
        None => (0, false),
    };
    let pod = || maps::endpoint(generation, ifindex).endpoint_id != 0;
    // A flow to a Service enters with its backend as destination, before anything judges it
    // (see `service.rs`): everything a pod sends, and what arrives on an uplink for a Service
    // whose local backends take ingress through the proxy.
    if services && dir == Direction::EGRESS {
        let scope = if pod() {
            ServiceKey::FROM_PODS
        } else {
            ServiceKey::FROM_OUTSIDE
        };
        match service::to_backend(&ctx, generation, scope) {
            Translation::Untouched | Translation::Rewritten => {}
            Translation::NoBackend => {
                counters::dropped(DropReason::NO_SERVICE_BACKEND, dir, u64::from(len));
                return TC_ACT_SHOT;
            }
            Translation::Failed => {
                log::service_rewrite_failed(program, ifindex, false);
                counters::dropped(DropReason::INVALID_PACKET, dir, u64::from(len));
                return TC_ACT_SHOT;
            }
        }
    }
    // Headers in paged data are pulled into the linear area; if that fails the parser sees a
    // shorter packet and drops it as truncated (fail closed).
    let _ = ctx.pull_data(core::cmp::min(len, TC_PULL_LEN));
    // Length checks use the whole skb (`len`), not just its linear part: large (GSO/GRO) skbs
    // keep most of their payload in pages.
    let b = Bounds {
        start: ctx.data(),
        end: ctx.data_end(),
        wire_len: len as usize,
    };
    // SAFETY: ctx.skb.skb points to the kernel's __sk_buff for this run.
    let (mark, arrived_on) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ingress_ifindex) };
    let action = enforce::decide(program, &b, ifindex, dir, mark, arrived_on == 0);
    // Into a pod or out of an uplink: a reply of a translated flow comes from the frontend its
    // client asked for.
    if services
        && dir == Direction::INGRESS
        && action != Action::Drop
        && service::from_backend(&ctx) == Translation::Failed
    {
        log::service_rewrite_failed(program, ifindex, true);
        counters::dropped(DropReason::INVALID_PACKET, dir, u64::from(len));
        return TC_ACT_SHOT;
    }
    match action {
        // Passed on to whatever runs after Rampart on this hook (a CNI's or a monitoring
        // agent's programs, tcx or tc filters): `TC_ACT_OK` would end the hook's chain there and
        // skip them. With nothing after, the packet goes on as with `TC_ACT_OK`.
        Action::Pass => TC_ACT_UNSPEC,
        Action::Drop => TC_ACT_SHOT,
        Action::ToProxy => {
            if dir == Direction::EGRESS && pod() && !proxy::to_this_host(&ctx, ifindex) {
                log::proxy_frame_failed(program, ifindex);
                counters::dropped(DropReason::INVALID_PACKET, dir, u64::from(len));
                return TC_ACT_SHOT;
            }
            ctx.set_mark((mark & !MARK_MASK) | MARK_TO_PROXY);
            TC_ACT_OK
        }
        Action::Redirect { open } => {
            if dir == Direction::EGRESS && pod() && !proxy::to_this_host(&ctx, ifindex) {
                log::proxy_frame_failed(program, ifindex);
                counters::dropped(DropReason::INVALID_PACKET, dir, u64::from(len));
                return TC_ACT_SHOT;
            }
            ctx.set_mark((mark & !MARK_MASK) | MARK_TO_PROXY);
            if open && !proxy::assign_listener(&ctx) {
                log::no_proxy_listener(program);
                counters::dropped(DropReason::PROXY_UNAVAILABLE, dir, u64::from(len));
                return TC_ACT_SHOT;
            }
            TC_ACT_OK
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; nothing in these programs panics.
    // SAFETY: unreachable in a verified program (no panicking paths survive verification).
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

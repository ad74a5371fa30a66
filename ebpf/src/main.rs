//! Rampart's kernel programs.
//!
//! Kernel programs are thin: parse, look up, decide, count. Nothing logs on the fast path. Every
//! early return says whether it fails open or closed and counts why.
//!
//! Programs (the function name is the program name; at most 15 characters so the kernel does not
//! truncate it):
//! - `rp_xdp`: XDP, the earliest point a packet can be seen on an interface's receive path.
//! - `rp_tc_ingress` / `rp_tc_egress`: TC (tcx on kernels >= 6.6) on the same interface.
//!
//! At this stage every program counts packets and bytes into `HOOK_STATS_V1` and passes them.
#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rampart_common::counters::Hook;

#[xdp]
pub fn rp_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data());
    counters::count(Hook::XDP, len as u64);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn rp_tc_ingress(ctx: TcContext) -> i32 {
    counters::count(Hook::TC_INGRESS, u64::from(ctx.len()));
    TC_ACT_OK
}

#[classifier]
pub fn rp_tc_egress(ctx: TcContext) -> i32 {
    counters::count(Hook::TC_EGRESS, u64::from(ctx.len()));
    TC_ACT_OK
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

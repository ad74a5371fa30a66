//! Writing flow events to `EVENTS_V1` under the per-CPU rate limit (see
//! `rampart_common::event`). Never blocks, never fails the packet: an event that cannot be written
//! is counted as lost.

use rampart_common::event::{
    FlowEvent, LOST_RATE_LIMITED, LOST_RING_FULL, MAX_EVENTS_PER_SEC_PER_CPU,
};

use crate::maps::{EVENT_RATE, EVENTS, EVENTS_LOST};

const SECOND_NS: u64 = 1_000_000_000;

/// Emits `event` (already filled in map memory) if this CPU's budget allows it (`now` may be
/// the coarse clock); an event that goes out is stamped with the precise clock.
#[inline(always)]
pub fn emit(event: &mut FlowEvent, now: u64) {
    if !within_rate(now) {
        lost(LOST_RATE_LIMITED);
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    event.time_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if EVENTS.output::<FlowEvent>(event, 0).is_err() {
        lost(LOST_RING_FULL);
    }
}

#[inline(always)]
fn within_rate(now: u64) -> bool {
    let Some(rate) = EVENT_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program run.
    let rate = unsafe { &mut *rate };
    // Callers pass the coarse clock; a window start ahead of `now` (another clock, or a tick
    // read late) is the same window, never a reset.
    if now.saturating_sub(rate.window_start_ns) >= SECOND_NS {
        rate.window_start_ns = now;
        rate.emitted = 0;
    }
    if rate.emitted >= MAX_EVENTS_PER_SEC_PER_CPU {
        return false;
    }
    rate.emitted += 1;
    true
}

#[inline(always)]
fn lost(slot: u32) {
    if let Some(count) = EVENTS_LOST.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *count = (*count).wrapping_add(1) };
    }
}

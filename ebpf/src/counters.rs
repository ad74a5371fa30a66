//! The per-CPU hook counters (`HOOK_STATS_V1`, layout in `rampart_common::counters`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use rampart_common::counters::{Hook, HookCounter};

#[map(name = "HOOK_STATS_V1")]
static HOOK_STATS_V1: PerCpuArray<HookCounter> = PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// Adds one packet of `bytes` bytes to `hook`'s slot on this CPU. A missing slot (an index past
/// the array) cannot happen for the `Hook` consts; if it did, the packet is not counted and the
/// caller's verdict stands (counting never changes a verdict).
#[inline(always)]
pub fn count(hook: Hook, bytes: u64) {
    if let Some(slot) = HOOK_STATS_V1.get_ptr_mut(hook.0) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the program's run
        // and written by no other CPU.
        unsafe {
            (*slot).packets = (*slot).packets.wrapping_add(1);
            (*slot).bytes = (*slot).bytes.wrapping_add(bytes);
        }
    }
}

//! The per-CPU counters: packets/bytes per hook, per (drop reason, direction) dropped or
//! audited, and forwarded per direction.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use rampart_common::counters::{Hook, HookCounter, RULE_STATS_OVERFLOW, RuleCounter};
use rampart_common::maps::MAX_RULE_STATS;
use rampart_common::policy::Verdict;
use rampart_common::reason::{Direction, DropReason, drop_slot};

use crate::maps::{AUDIT_STATS, DROP_STATS, FWD_STATS};

#[map(name = "HOOK_STATS_V1")]
static HOOK_STATS_V1: PerCpuArray<HookCounter> = PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// Adds one packet of `bytes` bytes to `hook`'s slot on this CPU. A missing slot cannot happen
/// for valid indices; if it did, the packet is not counted and the verdict stands (counting never
/// changes a verdict).
#[inline(always)]
pub fn count(hook: Hook, bytes: u64) {
    add(&HOOK_STATS_V1, hook.0, bytes);
}

#[map(name = "RULE_STATS_V1")]
static RULE_STATS: PerCpuHashMap<u32, RuleCounter> =
    PerCpuHashMap::with_max_entries(MAX_RULE_STATS, 0);

/// Counts one decision of rule `cookie`.
#[inline(always)]
pub fn decided(cookie: u32, verdict: Verdict) {
    let mut slot = RULE_STATS.get_ptr_mut(&cookie);
    if slot.is_none() {
        let _ = RULE_STATS.insert(
            &cookie,
            &RuleCounter {
                allow: 0,
                deny: 0,
                audit: 0,
                redirect: 0,
            },
            0,
        );
        slot = RULE_STATS.get_ptr_mut(&cookie);
    }
    if slot.is_none() {
        // The map is full: count under the overflow key the agent inserted at load.
        slot = RULE_STATS.get_ptr_mut(&RULE_STATS_OVERFLOW);
    }
    let Some(slot) = slot else { return };
    // SAFETY: this CPU's value of a per-CPU hash entry, valid for the program run.
    let c = unsafe { &mut *slot };
    match verdict {
        Verdict::ALLOW => c.allow = c.allow.wrapping_add(1),
        Verdict::DENY => c.deny = c.deny.wrapping_add(1),
        Verdict::AUDIT => c.audit = c.audit.wrapping_add(1),
        _ => c.redirect = c.redirect.wrapping_add(1),
    }
}

#[inline(always)]
pub fn dropped(reason: DropReason, dir: Direction, bytes: u64) {
    add(&DROP_STATS, drop_slot(reason, dir), bytes);
}

#[inline(always)]
pub fn audited(reason: DropReason, dir: Direction, bytes: u64) {
    add(&AUDIT_STATS, drop_slot(reason, dir), bytes);
}

#[inline(always)]
pub fn forwarded(dir: Direction, bytes: u64) {
    add(&FWD_STATS, u32::from(dir.0 & 1), bytes);
}

#[inline(always)]
fn add(map: &PerCpuArray<HookCounter>, index: u32, bytes: u64) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run and written by
        // no other CPU.
        unsafe {
            (*slot).packets = (*slot).packets.wrapping_add(1);
            (*slot).bytes = (*slot).bytes.wrapping_add(bytes);
        }
    }
}

//! Per-CPU counters written by the kernel programs.
//!
//! `HOOK_STATS_V1` is a `BPF_MAP_TYPE_PERCPU_ARRAY` of [`HookCounter`] indexed by [`Hook`]. Each
//! CPU has its own slot, so the programs add without atomics; the agent sums the slots of all
//! CPUs when it reads.

/// An attach point of the datapath: the index of its slot in `HOOK_STATS_V1`.
///
/// An integer newtype rather than a Rust enum: the value is used as a map index by the kernel and
/// read back by user space, and every `u32` must be a valid value of the type.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hook(pub u32);

impl Hook {
    /// XDP on an interface: packets received from the wire (or from the pod, on a veth host end).
    pub const XDP: Hook = Hook(0);
    /// TC ingress: packets received by the interface, after XDP and GRO.
    pub const TC_INGRESS: Hook = Hook(1);
    /// TC egress: packets the interface transmits.
    pub const TC_EGRESS: Hook = Hook(2);
    /// Number of hooks: the size of `HOOK_STATS_V1`. Append new hooks before raising it.
    pub const COUNT: u32 = 3;
    /// Every hook, in index order.
    pub const ALL: [Hook; Self::COUNT as usize] = [Hook::XDP, Hook::TC_INGRESS, Hook::TC_EGRESS];

    /// The name used in metrics labels and status output.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "xdp",
            1 => "tc_ingress",
            2 => "tc_egress",
            _ => "unknown",
        }
    }
}

/// Packets and bytes seen at one hook on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<HookCounter>() == 16);
const _: () = assert!(core::mem::align_of::<HookCounter>() == 8);

impl HookCounter {
    /// Adds another CPU's slot to this one (wrapping: the kernel counters wrap too).
    pub const fn add(self, other: HookCounter) -> HookCounter {
        HookCounter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `HookCounter` is `#[repr(C)]`, made of two `u64` with no padding (asserted above), so
// every bit pattern is a valid value.
unsafe impl aya::Pod for HookCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_cover_every_index() {
        for (i, hook) in Hook::ALL.iter().enumerate() {
            assert_eq!(hook.0 as usize, i);
            assert_ne!(hook.name(), "unknown");
        }
        assert_eq!(Hook(Hook::COUNT).name(), "unknown");
    }

    #[test]
    fn counter_sum_wraps_instead_of_panicking() {
        let a = HookCounter {
            packets: u64::MAX,
            bytes: 10,
        };
        let b = HookCounter {
            packets: 2,
            bytes: 5,
        };
        assert_eq!(
            a.add(b),
            HookCounter {
                packets: 1,
                bytes: 15
            }
        );
    }
}

/// Decisions taken by one rule, per CPU, in `RULE_STATS_V1` (a per-CPU hash keyed by the rule
/// cookie, at most `maps::MAX_RULE_STATS` cookies). Counted once per decision (a new flow, or an
/// established flow re-judged after a policy change), not per packet. Cookie 0 counts the
/// decisions no rule made (the endpoint's isolation default). When the map is full, decisions of
/// further cookies are counted under [`RULE_STATS_OVERFLOW`], which the agent inserts at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    pub allow: u64,
    pub deny: u64,
    pub audit: u64,
    pub redirect: u64,
}

const _: () = assert!(core::mem::size_of::<RuleCounter>() == 32);

/// The `RULE_STATS_V1` key that collects the cookies that found the map full.
pub const RULE_STATS_OVERFLOW: u32 = u32::MAX;

impl RuleCounter {
    pub const fn add(self, o: RuleCounter) -> RuleCounter {
        RuleCounter {
            allow: self.allow.wrapping_add(o.allow),
            deny: self.deny.wrapping_add(o.deny),
            audit: self.audit.wrapping_add(o.audit),
            redirect: self.redirect.wrapping_add(o.redirect),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), four u64, no padding (asserted).
unsafe impl aya::Pod for RuleCounter {}

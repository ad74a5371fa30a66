//! Readers of what the programs count and report: hook, drop, audit and forward counters, rule
//! counters, table fill, and the flow-event ring.

use super::loader::{Datapath, DatapathError, map_err};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use rampart_common::conntrack::{CtEntry, CtKey};
use rampart_common::counters::{Hook, HookCounter, RuleCounter};
use rampart_common::event::{FlowEvent, LOST_RATE_LIMITED, LOST_RING_FULL};
use rampart_common::frag::{FragEntry, FragKey};
use rampart_common::maps;
use rampart_common::maps::HOOK_STATS;
use rampart_common::reason::{Direction, DropReason, drop_slot};

impl Datapath {
    /// Moves the counter maps out of the object into a reader that can be shared across
    /// threads. Call once.
    pub fn take_stats(&mut self) -> Result<Stats, DatapathError> {
        Ok(Stats {
            hooks: self.take_counter_array(HOOK_STATS)?,
            drops: self.take_counter_array(maps::DROP_STATS)?,
            audits: self.take_counter_array(maps::AUDIT_STATS)?,
            forwarded: self.take_counter_array(maps::FWD_STATS)?,
            rules: {
                let map = self
                    .ebpf
                    .take_map(maps::RULE_STATS)
                    .ok_or(DatapathError::MissingMap(maps::RULE_STATS))?;
                PerCpuHashMap::try_from(map).map_err(map_err(maps::RULE_STATS))?
            },
            ct: {
                let map = self
                    .ebpf
                    .take_map(maps::CT)
                    .ok_or(DatapathError::MissingMap(maps::CT))?;
                std::sync::Mutex::new(HashMap::try_from(map).map_err(map_err(maps::CT))?)
            },
            swept: Default::default(),
            frags: {
                let map = self
                    .ebpf
                    .take_map(maps::FRAGS)
                    .ok_or(DatapathError::MissingMap(maps::FRAGS))?;
                HashMap::try_from(map).map_err(map_err(maps::FRAGS))?
            },
        })
    }

    /// Moves the event ring buffer and the lost-event counters out of the object into a
    /// reader. Call once.
    pub fn take_events(&mut self) -> Result<EventReader, DatapathError> {
        let ring = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(DatapathError::MissingMap(maps::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(maps::EVENTS))?;
        let lost = self
            .ebpf
            .take_map(maps::EVENTS_LOST)
            .ok_or(DatapathError::MissingMap(maps::EVENTS_LOST))?;
        let lost = PerCpuArray::try_from(lost).map_err(map_err(maps::EVENTS_LOST))?;
        Ok(EventReader { ring, lost })
    }

    fn take_counter_array(&mut self, name: &'static str) -> Result<CounterArray, DatapathError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let array = PerCpuArray::try_from(map).map_err(map_err(name))?;
        Ok(CounterArray { name, array })
    }
}

/// Reader of the kernel's flow events (`EVENTS_V1`) and of the count of events it could not
/// write (`EVENTS_LOST_V1`).
pub struct EventReader {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

/// Events the kernel could not write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsLost {
    pub rate_limited: u64,
    pub ring_full: u64,
}

impl EventReader {
    /// Takes up to `max` events waiting in the ring, oldest first. Never blocks.
    pub fn drain(&mut self, max: usize) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.ring.next() else { break };
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the record holds at least one FlowEvent written by the kernel programs;
                // FlowEvent is plain old data, read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
        }
        out
    }

    pub fn lost(&self) -> Result<EventsLost, DatapathError> {
        let sum = |slot: u32| -> Result<u64, DatapathError> {
            let per_cpu = self
                .lost
                .get(&slot, 0)
                .map_err(map_err(maps::EVENTS_LOST))?;
            Ok(per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok(EventsLost {
            rate_limited: sum(LOST_RATE_LIMITED)?,
            ring_full: sum(LOST_RING_FULL)?,
        })
    }
}

/// One per-CPU counter array.
struct CounterArray {
    name: &'static str,
    array: PerCpuArray<MapData, HookCounter>,
}

impl CounterArray {
    /// Slot `index` summed over CPUs.
    fn sum(&self, index: u32) -> Result<HookCounter, DatapathError> {
        let per_cpu = self.array.get(&index, 0).map_err(map_err(self.name))?;
        Ok(per_cpu
            .iter()
            .fold(HookCounter::default(), |acc, c| acc.add(*c)))
    }
}

/// Readers of the kernel counters, summed over CPUs.
pub struct Stats {
    hooks: CounterArray,
    drops: CounterArray,
    audits: CounterArray,
    forwarded: CounterArray,
    rules: PerCpuHashMap<MapData, u32, RuleCounter>,
    /// Conntrack: read by the fill count, swept by `conntrack_sweep` (removal needs `&mut`).
    pub(super) ct: std::sync::Mutex<HashMap<MapData, CtKey, CtEntry>>,
    /// Entries the sweep removed: expired, and unconfirmed under pressure.
    pub(super) swept: [std::sync::atomic::AtomicU64; 2],
    frags: HashMap<MapData, FragKey, FragEntry>,
}

/// Entries of the maps the kernel fills itself (counted by walking their keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTableEntries {
    pub conntrack: usize,
    pub fragments: usize,
    pub rule_stats: usize,
}

/// A packets/bytes count for one (reason, direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCount {
    pub reason: DropReason,
    pub direction: Direction,
    pub counter: HookCounter,
}

impl Stats {
    /// Packets and bytes per hook.
    pub fn hooks(&self) -> Result<[(Hook, HookCounter); Hook::COUNT as usize], DatapathError> {
        let mut out = Hook::ALL.map(|h| (h, HookCounter::default()));
        for (hook, total) in &mut out {
            *total = self.hooks.sum(hook.0)?;
        }
        Ok(out)
    }

    /// Dropped packets by every defined reason (except `none`) and direction.
    pub fn drops(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        reason_counts(&self.drops)
    }

    /// Would-be drops that audit mode let through, by reason and direction.
    pub fn audited(&self) -> Result<Vec<ReasonCount>, DatapathError> {
        reason_counts(&self.audits)
    }

    /// Packets forwarded by policy (new flows allowed and tracked flows), by direction.
    pub fn forwarded(&self) -> Result<[(Direction, HookCounter); 2], DatapathError> {
        Ok([
            (
                Direction::INGRESS,
                self.forwarded.sum(u32::from(Direction::INGRESS.0))?,
            ),
            (
                Direction::EGRESS,
                self.forwarded.sum(u32::from(Direction::EGRESS.0))?,
            ),
        ])
    }
}

impl Stats {
    /// How full the conntrack, fragment and rule-counter maps are. Walks every key: a full
    /// conntrack table (262144 entries) takes on the order of 100 ms.
    pub fn kernel_table_entries(&self) -> Result<KernelTableEntries, DatapathError> {
        let count = |keys: &mut dyn Iterator<Item = Result<(), aya::maps::MapError>>,
                     name: &'static str|
         -> Result<usize, DatapathError> {
            let mut n = 0;
            for key in keys {
                match key {
                    Ok(()) => n += 1,
                    // An LRU entry evicted while we walk: the walk restarts from the first key in
                    // the kernel; what we counted is still a fair reading.
                    Err(aya::maps::MapError::KeyNotFound) => break,
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
            Ok(n)
        };
        Ok(KernelTableEntries {
            conntrack: {
                let ct = self
                    .ct
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                count(&mut ct.keys().map(|k| k.map(|_| ())), maps::CT)?
            },
            fragments: count(&mut self.frags.keys().map(|k| k.map(|_| ())), maps::FRAGS)?,
            rule_stats: count(
                &mut self.rules.keys().map(|k| k.map(|_| ())),
                maps::RULE_STATS,
            )?,
        })
    }

    /// Decisions per rule cookie, summed over CPUs, ordered by cookie. Cookie 0: no rule (the
    /// isolation default); `RULE_STATS_OVERFLOW`: cookies that found the map full.
    pub fn rules(&self) -> Result<Vec<(u32, RuleCounter)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.rules.iter() {
            let (cookie, per_cpu) = item.map_err(map_err(maps::RULE_STATS))?;
            out.push((
                cookie,
                per_cpu
                    .iter()
                    .fold(RuleCounter::default(), |a, c| a.add(*c)),
            ));
        }
        out.sort_by_key(|(cookie, _)| *cookie);
        Ok(out)
    }
}

fn reason_counts(array: &CounterArray) -> Result<Vec<ReasonCount>, DatapathError> {
    let mut out = Vec::new();
    for reason in DropReason::ALL
        .into_iter()
        .filter(|r| *r != DropReason::NONE)
    {
        for direction in Direction::ALL {
            let counter = array.sum(drop_slot(reason, direction))?;
            out.push(ReasonCount {
                reason,
                direction,
                counter,
            });
        }
    }
    Ok(out)
}

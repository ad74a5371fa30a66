//! Every map of the datapath (layouts and rules: `rampart_common`). Generation-indexed maps come
//! in an A and a B copy; `CONFIG_V1.active` says which one is live.

use aya_ebpf::macros::map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use rampart_common::config::DatapathConfig;
use rampart_common::conntrack::{CtEntry, CtKey};
use rampart_common::counters::HookCounter;
use rampart_common::endpoint::{EndpointInfo, InterfaceMac};
use rampart_common::event::{EVENTS_RING_BYTES, EventRate};
use rampart_common::frag::{FragEntry, FragKey};
use rampart_common::ipcache::IpcacheEntry;
use rampart_common::maps::{
    MAX_BRAKE, MAX_CT, MAX_ENDPOINTS, MAX_FRAGS, MAX_IPCACHE, MAX_MESH, MAX_POLICY, MAX_SERVICES,
};
use rampart_common::mesh::{BrakeKey, MeshEntry, MeshKey};
use rampart_common::policy::{PolicyEntry, PolicyKey};
use rampart_common::reason::DropReason;
use rampart_common::service::{NatKey, NatValue, ServiceKey, ServiceValue};

/// LPM tries must be created without preallocation.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

#[map(name = "DROP_STATS_V2")]
pub static DROP_STATS: PerCpuArray<HookCounter> =
    PerCpuArray::with_max_entries(DropReason::SLOTS * 2, 0);
#[map(name = "AUDIT_STATS_V2")]
pub static AUDIT_STATS: PerCpuArray<HookCounter> =
    PerCpuArray::with_max_entries(DropReason::SLOTS * 2, 0);
#[map(name = "FWD_STATS_V1")]
pub static FWD_STATS: PerCpuArray<HookCounter> = PerCpuArray::with_max_entries(2, 0);

#[map(name = "CONFIG_V1")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

#[map(name = "ENDPOINTS_A_V2")]
pub static ENDPOINTS_A: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map(name = "ENDPOINTS_B_V2")]
pub static ENDPOINTS_B: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map(name = "IPCACHE4_A_V1")]
pub static IPCACHE4_A: LpmTrie<[u8; 4], IpcacheEntry> =
    LpmTrie::with_max_entries(MAX_IPCACHE, NO_PREALLOC);
#[map(name = "IPCACHE4_B_V1")]
pub static IPCACHE4_B: LpmTrie<[u8; 4], IpcacheEntry> =
    LpmTrie::with_max_entries(MAX_IPCACHE, NO_PREALLOC);
#[map(name = "IPCACHE6_A_V1")]
pub static IPCACHE6_A: LpmTrie<[u8; 16], IpcacheEntry> =
    LpmTrie::with_max_entries(MAX_IPCACHE, NO_PREALLOC);
#[map(name = "IPCACHE6_B_V1")]
pub static IPCACHE6_B: LpmTrie<[u8; 16], IpcacheEntry> =
    LpmTrie::with_max_entries(MAX_IPCACHE, NO_PREALLOC);

#[map(name = "POLICY_A_V1")]
pub static POLICY_A: LpmTrie<PolicyKey, PolicyEntry> =
    LpmTrie::with_max_entries(MAX_POLICY, NO_PREALLOC);
#[map(name = "POLICY_B_V1")]
pub static POLICY_B: LpmTrie<PolicyKey, PolicyEntry> =
    LpmTrie::with_max_entries(MAX_POLICY, NO_PREALLOC);

#[map(name = "MESH_A_V2")]
pub static MESH_A: HashMap<MeshKey, MeshEntry> = HashMap::with_max_entries(MAX_MESH, 0);
#[map(name = "MESH_B_V2")]
pub static MESH_B: HashMap<MeshKey, MeshEntry> = HashMap::with_max_entries(MAX_MESH, 0);

#[map(name = "SERVICES_A_V1")]
pub static SERVICES_A: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);
#[map(name = "SERVICES_B_V1")]
pub static SERVICES_B: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// Attached interfaces' own hardware addresses (see `rampart_common::endpoint::InterfaceMac`).
#[map(name = "IF_MAC_V1")]
pub static IF_MAC: HashMap<u32, InterfaceMac> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// Translated flows, both ways (see `rampart_common::service`).
#[map(name = "SVC_NAT_V1")]
pub static SVC_NAT: LruHashMap<NatKey, NatValue> = LruHashMap::with_max_entries(MAX_CT, 0);

/// The flood brake's state: GCRA theoretical arrival time per (source, destination, port).
#[map(name = "BRAKE_V1")]
pub static BRAKE: LruHashMap<BrakeKey, u64> = LruHashMap::with_max_entries(MAX_BRAKE, 0);

// `CT_V3`, a hash that never evicts a live flow (see `rampart_common::conntrack`); the previous
// layout's build (the upgrade test's) keeps the LRU `CT_V2`.
#[cfg(not(feature = "previous-layout"))]
#[map(name = "CT_V3")]
pub static CT: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(MAX_CT, 0);
#[cfg(feature = "previous-layout")]
#[map(name = "CT_V2")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_CT, 0);

// The lookups below return plain values with a sentinel for "no entry" instead of `Option`:
// LLVM may spill the undefined payload of a `None`, and the verifier rejects reading it.

/// The endpoint behind `ifindex`; `endpoint_id == 0` if the interface is not a pod's (the agent
/// never assigns endpoint id 0).
#[map(name = "FRAGS_V1")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

#[map(name = "EVENTS_V1")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map(name = "EVENTS_LOST_V1")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
#[map(name = "EVENT_RATE_V1")]
pub static EVENT_RATE: PerCpuArray<EventRate> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn endpoint(generation: u32, ifindex: u32) -> EndpointInfo {
    // SAFETY: the value is copied out at once; hash map values stay valid for the program run.
    let hit = unsafe {
        if generation == 0 {
            ENDPOINTS_A.get(&ifindex)
        } else {
            ENDPOINTS_B.get(&ifindex)
        }
    };
    match hit {
        Some(e) => *e,
        None => EndpointInfo {
            endpoint_id: 0,
            identity: 0,
            flags: 0,
            ipv4: [0; 4],
            ipv6: [0; 16],
        },
    }
}

/// The identity of an address: the longest matching ipcache prefix, 0 (`Identity::ANY`, never
/// assigned to an address) on a miss.
#[inline(always)]
pub fn identity_of(generation: u32, addr: &[u8; 16], v4: bool) -> u32 {
    ipcache(generation, addr, v4).identity
}

/// The ipcache entry of an address; all zero on a miss.
#[inline(always)]
pub fn ipcache(generation: u32, addr: &[u8; 16], v4: bool) -> IpcacheEntry {
    let hit = if v4 {
        let key = Key::new(32, [addr[12], addr[13], addr[14], addr[15]]);
        if generation == 0 {
            IPCACHE4_A.get(&key)
        } else {
            IPCACHE4_B.get(&key)
        }
    } else {
        let key = Key::new(128, *addr);
        if generation == 0 {
            IPCACHE6_A.get(&key)
        } else {
            IPCACHE6_B.get(&key)
        }
    };
    match hit {
        Some(e) => *e,
        None => IpcacheEntry {
            identity: 0,
            endpoint_ifindex: 0,
        },
    }
}

/// The longest policy match for `key`; `verdict == 0` (`Verdict::NONE`) if nothing matches.
#[inline(always)]
pub fn policy_lookup(generation: u32, key: &PolicyKey) -> PolicyEntry {
    let key = Key::new(rampart_common::policy::PREFIX_FULL, *key);
    match if generation == 0 {
        POLICY_A.get(&key)
    } else {
        POLICY_B.get(&key)
    } {
        Some(e) => *e,
        None => PolicyEntry {
            verdict: 0,
            flags: 0,
            proxy_port: 0,
            cookie: 0,
        },
    }
}

/// The mesh entry of (identity, proto, port): mTLS flags and flood brake; all zero if none.
#[inline(always)]
pub fn mesh_entry(generation: u32, identity: u32, proto: u8, port: u16) -> MeshEntry {
    let key = MeshKey {
        identity,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; hash map values stay valid for the program run.
    let hit = unsafe {
        if generation == 0 {
            MESH_A.get(&key)
        } else {
            MESH_B.get(&key)
        }
    };
    hit.copied().unwrap_or_default()
}

/// Whether (identity, proto, port) must cross the mTLS proxy: its `MeshFlags` (0: no).
#[inline(always)]
pub fn mesh_flags(generation: u32, identity: u32, proto: u8, port: u16) -> u32 {
    mesh_entry(generation, identity, proto, port).flags
}

/// The flood brake's decision for one new connection at `now` (GCRA: at most one connection per
/// `period` on average, `tau / period + 1` at once). Admitting updates the state; refusing leaves
/// it (a refused attempt costs nothing, as in a token bucket). Two CPUs racing on one key may
/// both pass: the brake is approximate by a connection, never unbounded. A full map (the LRU
/// could not insert) admits: the brake fails open, policy has already allowed the flow.
#[inline(always)]
pub fn brake_admits(key: &BrakeKey, now: u64, period: u64, tau: u64) -> bool {
    match BRAKE.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: a pointer from the map lookup, valid for this program run.
            let current = unsafe { *tat };
            let start = if current > now { current } else { now };
            if start - now > tau {
                return false;
            }
            // SAFETY: as above.
            unsafe { *tat = start + period };
            true
        }
        None => {
            let _ = BRAKE.insert(key, &(now + period), 0);
            true
        }
    }
}

/// A frontend's slot: its header (`slot == 0`) or a backend; `None` if there is none.
#[inline(always)]
pub fn service_slot(generation: u32, key: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: the value is copied out at once; hash map values stay valid for the program run.
    let hit = unsafe {
        if generation == 0 {
            SERVICES_A.get(key)
        } else {
            SERVICES_B.get(key)
        }
    };
    hit.copied()
}

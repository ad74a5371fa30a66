//! Names and sizes of the kernel maps. The eBPF crate declares each map under exactly this name;
//! the agent looks them up by the same constant. Names are at most 15 bytes
//! (`BPF_OBJ_NAME_LEN - 1`) and end in a version: a change of layout gets a new name, so an agent
//! never reads a pinned map of another layout.
//!
//! | map | type | entries | key → value |
//! | --- | --- | --- | --- |
//! | `HOOK_STATS_V1` | per-CPU array | `Hook::COUNT` | hook → packets/bytes |
//! | `DROP_STATS_V2` | per-CPU array | 2 × `DropReason::SLOTS` | (reason, direction) → packets/bytes dropped |
//! | `AUDIT_STATS_V2` | per-CPU array | 2 × `DropReason::SLOTS` | (reason, direction) → packets/bytes audit let through |
//! | `FWD_STATS_V1` | per-CPU array | 2 | direction → packets/bytes forwarded by policy |
//! | `CONFIG_V1` | array | 1 | active generation, policy revision, flags |
//! | `ENDPOINTS_{A,B}_V2` | hash | [`MAX_ENDPOINTS`] | ifindex → endpoint (id, identity, flags, own addresses) |
//! | `IPCACHE4_{A,B}_V1` / `IPCACHE6_{A,B}_V1` | LPM trie | [`MAX_IPCACHE`] | prefix → identity |
//! | `POLICY_{A,B}_V1` | LPM trie | [`MAX_POLICY`] | (endpoint, remote, dir, proto, port prefix) → verdict |
//! | `MESH_{A,B}_V2` | hash | [`MAX_MESH`] | (identity, proto, port) → must cross the mTLS proxy; flood brake rate |
//! | `SERVICES_{A,B}_V1` | hash | [`MAX_SERVICES`] | (frontend address, port, proto, slot) → backend count, or one backend |
//! | `SVC_NAT_V1` | LRU hash | [`MAX_CT`] | translated 5-tuple, one way → the other end (see `service.rs`) |
//! | `IF_MAC_V1` | hash | [`MAX_ENDPOINTS`] | attached interface's ifindex → its hardware address (frames for the proxy, see `endpoint.rs`) |
//! | `BRAKE_V1` | LRU hash | [`MAX_BRAKE`] | (source identity, destination identity, proto, port) → the flood brake's GCRA state |
//! | `CT_V3` | hash | [`MAX_CT`] | 5-tuple + scope → flow state (`CT_V2` before: an LRU, which evicted live flows for new ones; migrated) |
//! | `FRAGS_V1` | LRU hash | [`MAX_FRAGS`] | (addresses, IP id, proto) → the first fragment's ports |
//! | `RULE_STATS_V1` | per-CPU hash | [`MAX_RULE_STATS`] | rule cookie → decisions by verdict |
//! | `EVENTS_V1` | ring buffer | 256 KiB | drop and new-flow verdict events |
//! | `EVENTS_LOST_V1` | per-CPU array | 2 | events not written: rate limited, ring full |
//! | `EVENT_RATE_V1` | per-CPU array | 1 | the event rate limit's window |
//! | `KERNEL_LOG_V1` | array | `kernel_log::Program::COUNT` | program → the level it logs at (not pinned: each agent sets its own) |
//! | `AYA_LOGS` | ring buffer | 128 KiB | the programs' log records (aya-log's own map; not pinned) |

/// Per-CPU packet/byte counters, one slot per attach point ([`crate::counters::Hook`]).
pub const HOOK_STATS: &str = "HOOK_STATS_V1";
pub const DROP_STATS: &str = "DROP_STATS_V2";
pub const AUDIT_STATS: &str = "AUDIT_STATS_V2";
pub const FWD_STATS: &str = "FWD_STATS_V1";
pub const CONFIG: &str = "CONFIG_V1";
pub const ENDPOINTS: [&str; 2] = ["ENDPOINTS_A_V2", "ENDPOINTS_B_V2"];
pub const IPCACHE4: [&str; 2] = ["IPCACHE4_A_V1", "IPCACHE4_B_V1"];
pub const IPCACHE6: [&str; 2] = ["IPCACHE6_A_V1", "IPCACHE6_B_V1"];
pub const POLICY: [&str; 2] = ["POLICY_A_V1", "POLICY_B_V1"];
pub const MESH: [&str; 2] = ["MESH_A_V2", "MESH_B_V2"];
pub const SERVICES: [&str; 2] = ["SERVICES_A_V1", "SERVICES_B_V1"];
pub const SVC_NAT: &str = "SVC_NAT_V1";
pub const IF_MAC: &str = "IF_MAC_V1";
/// Per-CPU working memory of the Service translation (pinned; never read).
pub const SVC_SCRATCH: &str = "SVC_SCRATCH_V1";
pub const BRAKE: &str = "BRAKE_V1";
#[cfg(not(feature = "previous-layout"))]
pub const CT: &str = "CT_V3";
#[cfg(feature = "previous-layout")]
pub const CT: &str = CT_PREVIOUS;
/// Conntrack of the previous layout (`CT_V2`, an LRU of the same entries): a pinned one is
/// carried into [`CT`] on upgrade.
pub const CT_PREVIOUS: &str = "CT_V2";
pub const EVENTS: &str = "EVENTS_V1";
pub const RULE_STATS: &str = "RULE_STATS_V1";
pub const EVENT_RATE: &str = "EVENT_RATE_V1";
pub const FRAGS: &str = "FRAGS_V1";
/// Per program, the level its logs are written at (see `kernel_log`). Not pinned: not in [`ALL`].
pub const KERNEL_LOG: &str = "KERNEL_LOG_V1";
/// Per-CPU working memory of the programs (pinned with the rest; its content is never read).
/// `V2`: the parsed tuple is 8-byte aligned (the previous layout's build keeps `V1`).
#[cfg(not(feature = "previous-layout"))]
pub const SCRATCH: &str = "SCRATCH_V2";
#[cfg(feature = "previous-layout")]
pub const SCRATCH: &str = "SCRATCH_V1";
pub const EVENTS_LOST: &str = "EVENTS_LOST_V1";

/// Maps of earlier layouts no object has any more: a new agent removes their pins.
#[cfg(not(feature = "previous-layout"))]
pub const RETIRED: [&str; 3] = ["DROP_STATS_V1", "AUDIT_STATS_V1", "SCRATCH_V1"];
#[cfg(feature = "previous-layout")]
pub const RETIRED: [&str; 2] = ["DROP_STATS_V1", "AUDIT_STATS_V1"];

/// Every map of the object, in the order the agent pins them.
pub const ALL: [&str; 28] = [
    HOOK_STATS,
    DROP_STATS,
    AUDIT_STATS,
    FWD_STATS,
    CONFIG,
    ENDPOINTS[0],
    ENDPOINTS[1],
    IPCACHE4[0],
    IPCACHE4[1],
    IPCACHE6[0],
    IPCACHE6[1],
    POLICY[0],
    POLICY[1],
    MESH[0],
    MESH[1],
    CT,
    EVENTS,
    EVENTS_LOST,
    EVENT_RATE,
    RULE_STATS,
    SCRATCH,
    FRAGS,
    BRAKE,
    SERVICES[0],
    SERVICES[1],
    SVC_NAT,
    SVC_SCRATCH,
    IF_MAC,
];

/// Local endpoints (pods on this node) per generation.
pub const MAX_ENDPOINTS: u32 = 4096;
/// Prefixes per address family and generation.
pub const MAX_IPCACHE: u32 = 65536;
/// Policy trie entries per generation (a port range costs up to 30 entries).
pub const MAX_POLICY: u32 = 262_144;
/// (identity, proto, port) destinations that require mTLS, per generation.
pub const MAX_MESH: u32 = 16_384;
/// Service slots (frontend headers and their backends) per generation.
pub const MAX_SERVICES: u32 = 65_536;
/// Rule cookies with their own decision counters (the cardinality cap of per-rule metrics).
pub const MAX_RULE_STATS: u32 = 16_384;
/// Fragmented datagrams in flight whose first fragment passed.
pub const MAX_FRAGS: u32 = 16_384;
/// (source identity, destination identity, port) pairs the flood brake remembers. LRU: a pair
/// evicted starts again with a full bucket.
pub const MAX_BRAKE: u32 = 65_536;
/// Tracked flows (all scopes). LRU: when full, the least recently used flow is evicted.
pub const MAX_CT: u32 = 262_144;

const fn short(name: &str) -> bool {
    name.len() <= 15
}
const _: () =
    assert!(short(HOOK_STATS) && short(DROP_STATS) && short(AUDIT_STATS) && short(FWD_STATS));
const _: () =
    assert!(short(CONFIG) && short(CT) && short(EVENTS) && short(EVENTS_LOST) && short(RULE_STATS));
const _: () =
    assert!(short(ENDPOINTS[0]) && short(IPCACHE4[0]) && short(IPCACHE6[0]) && short(POLICY[0]));
const _: () = assert!(short(MESH[0]) && short(MESH[1]) && short(BRAKE));
const _: () = assert!(short(SERVICES[0]) && short(SERVICES[1]) && short(SVC_NAT));
const _: () = assert!(short(SVC_SCRATCH) && short(IF_MAC));

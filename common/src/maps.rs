//! Names and sizes of the kernel maps. The eBPF crate declares each map under exactly this name
//! (the Rust static's identifier is the map name in the object file); the agent looks them up by
//! the same constant. Names are at most 15 bytes (`BPF_OBJ_NAME_LEN - 1`) and end in a version:
//! a change of layout gets a new name, so an agent never reads a pinned map of another layout.

/// Per-CPU packet/byte counters, one slot per attach point ([`crate::counters::Hook`]).
pub const HOOK_STATS: &str = "HOOK_STATS_V1";

const _: () = assert!(HOOK_STATS.len() <= 15);

//! `CONFIG_V1`: a one-entry array the agent writes and every program reads first.
//!
//! Policy state (endpoints, ipcache, policy) is double-buffered: generation A and B maps. The agent
//! fills the inactive generation completely, then flips `active` in one 4-byte write, so a packet
//! sees either the whole old state or the whole new one, never a mix.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// `revision & 1`, for readers of the map (0: the `_A_` maps are live; 1: the `_B_` maps).
    pub active: u32,
    /// Increases with every applied policy; conntrack entries remember it.
    pub revision: u32,
    /// [`ConfigFlags`] bits.
    pub flags: u32,
    /// Port of the local proxy's transparent listener (0: no proxy; flows that need it are not
    /// redirected, and drop at their destination).
    pub proxy_port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);

pub struct ConfigFlags;

impl ConfigFlags {
    /// Agent-wide audit mode: every would-be drop is counted and passed.
    pub const AUDIT: u32 = 1 << 0;
    /// The live generation has Service frontends (`SERVICES_{A,B}_V1`): packets are looked up
    /// for translation. Without it (a node with no Services: no Kubernetes source) the
    /// programs skip the lookups.
    pub const SERVICES: u32 = 1 << 1;
}

#[cfg(feature = "user")]
// SAFETY: repr(C), four u32, no padding (asserted).
unsafe impl aya::Pod for DatapathConfig {}

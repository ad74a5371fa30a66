//! IP fragments: `FRAGS_V1`, an LRU hash of [`FragKey`] → [`FragEntry`].
//!
//! Only the first fragment of a datagram carries the L4 header. It is judged like any packet;
//! when it passes, its ports are recorded here under (addresses, IP identification, protocol).
//! Later fragments of the same datagram look the ports up and are judged as packets of that flow
//! (so they pass exactly when the flow is allowed and tracked). A later fragment with no record
//! (its first fragment was dropped, not seen, or older than [`FRAG_LIFETIME_NS`], the kernel's
//! default reassembly timeout) is dropped as `unsupported_fragment`.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub first_seen_ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub policy_port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);

/// How long the first fragment's ports are kept (the kernel's `ipfrag_time`, 30 s).
pub const FRAG_LIFETIME_NS: u64 = 30 * 1_000_000_000;

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for FragKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for FragEntry {}

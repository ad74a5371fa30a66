//! Flow events: `EVENTS_V1`, a BPF ring buffer of [`FlowEvent`] records the programs write for
//! every drop and for every new-flow verdict (allow, audit, redirect); packets of tracked flows
//! produce none.
//!
//! The programs never wait for user space: each CPU may emit at most
//! [`MAX_EVENTS_PER_SEC_PER_CPU`] events per second (a fixed one-second window); events over that
//! rate, or that find the ring full, are not written and are counted in `EVENTS_LOST_V1`
//! (slot [`LOST_RATE_LIMITED`] or [`LOST_RING_FULL`]).

/// One event. Field meanings follow the flow: `saddr`→`daddr` as the packet travelled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` (monotonic, since boot).
    pub time_ns: u64,
    /// IPv4 as `::ffff:a.b.c.d`; zero when the packet could not be parsed that far.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `reason::Direction` of the local endpoint.
    pub direction: u8,
    /// `policy::Verdict` code.
    pub verdict: u8,
    /// `reason::DropReason` code (0 for allow).
    pub reason: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The rule that decided (0: the default of the endpoint's isolation).
    pub cookie: u32,
    pub ifindex: u32,
    pub endpoint_id: u32,
    /// Length of the packet.
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 72);

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
pub const MAX_EVENTS_PER_SEC_PER_CPU: u64 = 2000;
/// `EVENTS_LOST_V1` slots.
pub const LOST_RATE_LIMITED: u32 = 0;
pub const LOST_RING_FULL: u32 = 1;

/// Per-CPU state of the event rate limit (`EVENT_RATE_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRate {
    pub window_start_ns: u64,
    pub emitted: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (asserted).
unsafe impl aya::Pod for FlowEvent {}
#[cfg(feature = "user")]
// SAFETY: repr(C), two u64.
unsafe impl aya::Pod for EventRate {}

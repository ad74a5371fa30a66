//! Kubernetes Services, translated in the kernel at the client pod's own interface.
//!
//! `SERVICES_{A,B}_V1` (double-buffered like the policy) maps a frontend — a Service address
//! (cluster IP, external IP, load-balancer IP, or a node address with a node port), a port and a
//! protocol — to its backends. Slot 0 of a frontend holds [`ServiceValue::count`], the number of
//! backends; slots `1..=count` hold one backend each (address and port), like Cilium's service
//! map. A frontend with no backend drops its new flows (`no_service_backend`), as kube-proxy
//! rejects them.
//!
//! `SVC_NAT_V1` (LRU) remembers each translated flow both ways: [`NatKey`] with
//! [`NatKey::FORWARD`] (client → frontend) gives the backend chosen for the flow, and
//! [`NatKey::REVERSE`] (backend → client) gives the frontend the client's replies must come from.
//! A flow keeps its backend while it is active; a TCP SYN, or a flow idle for
//! [`NAT_IDLE_NS`], chooses again.
//!
//! Addresses are 16 bytes (IPv4 as `::ffff:a.b.c.d`), ports host byte order, as in conntrack.

/// A frontend's slot (`slot == 0`: its header; `1..=count`: a backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub slot: u16,
    pub proto: u8,
    /// [`ServiceKey::FROM_PODS`] or [`ServiceKey::FROM_OUTSIDE`].
    pub scope: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

impl ServiceKey {
    /// What a pod of this node sends.
    pub const FROM_PODS: u8 = 0;
    /// What arrives on an uplink.
    pub const FROM_OUTSIDE: u8 = 1;
}

/// Slot 0: `count` backends (`addr`, `port` unused); a backend slot: its address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub count: u16,
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);

/// A translated flow, one way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`NatKey::FORWARD`] or [`NatKey::REVERSE`].
    pub dir: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<NatKey>() == 40);

impl NatKey {
    /// Client → frontend: the value is the backend.
    pub const FORWARD: u8 = 0;
    /// Backend → client: the value is the frontend.
    pub const REVERSE: u8 = 1;
}

/// The other end of a translation: the address and port to write into the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns()` of the flow's last translated packet (forward entries).
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<NatValue>() == 32);

/// A translated flow idle this long chooses its backend again (a UDP client reusing its port
/// after its backend went away must not keep sending into nothing).
pub const NAT_IDLE_NS: u64 = 60_000_000_000;

#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NatKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NatValue {}

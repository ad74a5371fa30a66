//! Flows that must cross the in-agent mTLS proxy, and the packet marks that tie the kernel
//! programs to it.
//!
//! `MESH_{A,B}_V2` (double-buffered like the policy) maps (destination identity, protocol, port)
//! to [`MeshEntry`]. On a pod's egress, a new allowed flow to such a destination is redirected to
//! the local proxy (TC ingress marks it [`MARK_TO_PROXY`], which the node's policy routing
//! delivers locally, and hands its SYN to the proxy's listener). On a pod's ingress, such a flow
//! is admitted only if the local proxy sent it (its socket marks it [`MARK_FROM_PROXY`]); replies
//! of such flows are marked back to the proxy. With [`MeshFlags::INGRESS`], a flow from outside
//! the cluster arriving on an uplink is redirected to the local proxy the same way (TC ingress of
//! the uplink), instead of being dropped as plaintext.

/// Destination identity, protocol and port that require mTLS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshKey {
    pub identity: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<MeshKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshEntry {
    pub flags: u32,
    /// Rule cookie of the policy that asked for it (for events and counters).
    pub cookie: u32,
    /// Flood brake: nanoseconds per new connection a source identity may open to this
    /// destination (GCRA emission interval); 0: no brake.
    pub brake_period_ns: u64,
    /// Flood brake: the burst tolerance, `(burst - 1) * brake_period_ns`.
    pub brake_tau_ns: u64,
}

const _: () = assert!(core::mem::size_of::<MeshEntry>() == 24);

/// The flood brake's key: who opens connections to what. Its value is the GCRA theoretical
/// arrival time (`u64` nanoseconds of `bpf_ktime_get_ns`): a new connection at `now` is admitted
/// if `max(tat, now) - now <= tau`, and then `tat = max(tat, now) + period`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BrakeKey {
    pub source_identity: u32,
    pub destination_identity: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<BrakeKey>() == 12);

pub struct MeshFlags;

impl MeshFlags {
    /// Only the local proxy may deliver this flow to the pod (plaintext from anywhere else drops).
    pub const REQUIRE_MTLS: u32 = 1 << 0;
    /// Ingress: a new flow from outside the cluster (`world` or an ipBlock's identity) arriving
    /// on an uplink is redirected to the local proxy, which runs the port's L7 chain (and
    /// terminates TLS if the policy says so) before it connects to the pod.
    pub const INGRESS: u32 = 1 << 1;
}

/// The bits of `skb->mark` Rampart owns.
pub const MARK_MASK: u32 = 0x0f00_0000;
/// Set by the kernel on packets it sends to the local proxy (policy routing delivers them locally).
pub const MARK_TO_PROXY: u32 = 0x0100_0000;
/// Set by the proxy (`SO_MARK`) on its connections to local pods.
pub const MARK_FROM_PROXY: u32 = 0x0200_0000;

#[cfg(feature = "user")]
unsafe impl aya::Pod for MeshKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for MeshEntry {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BrakeKey {}

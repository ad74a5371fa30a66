//! `ENDPOINTS_A_V2` / `ENDPOINTS_B_V2`: hash of interface index → [`EndpointInfo`], one entry per
//! local pod, keyed by the ifindex of the pod's node-side veth (where the programs run). An
//! interface with no entry is not a pod (an uplink, see `enforce.rs`).

/// The local endpoint behind one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Policy keys are scoped by this id (per endpoint: named ports resolve per pod).
    pub endpoint_id: u32,
    /// The endpoint's own identity: packets it sends must come from an address the ipcache maps
    /// to this identity.
    pub identity: u32,
    /// `EndpointFlags` bits.
    pub flags: u32,
    /// The pod's IPv4 address (network order), all zero if it has none. Packets the pod sends
    /// must come from this address or `ipv6` (anti-spoofing, checked on every packet).
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address, all zero if it has none.
    pub ipv6: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 32);

/// Bits of [`EndpointInfo::flags`].
pub struct EndpointFlags;

impl EndpointFlags {
    /// Ingress is isolated: flows into the endpoint need an allow rule.
    pub const ENFORCE_INGRESS: u32 = 1 << 0;
    /// Egress is isolated: flows out of the endpoint need an allow rule.
    pub const ENFORCE_EGRESS: u32 = 1 << 1;
    /// Would-be drops of this endpoint are counted and passed.
    pub const AUDIT: u32 = 1 << 2;
    /// Ingress isolation is audited: a flow no rule allows is counted and passed, not dropped
    /// (the isolation comes only from audit-mode policies).
    pub const AUDIT_INGRESS: u32 = 1 << 3;
    /// Egress isolation is audited (as [`Self::AUDIT_INGRESS`]).
    pub const AUDIT_EGRESS: u32 = 1 << 4;
}

/// `IF_MAC_V1`: an attached interface's own hardware address, by ifindex (written when the
/// agent attaches). A frame for the local proxy gets it as destination on a pod's interface, so
/// that a bridge (whose ports' own addresses are local to it) hands the frame up to the node's
/// stack instead of switching it to another pod: on a bridge CNI, two pods of one node are on
/// one link, and a flow between them would otherwise never reach the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<InterfaceMac>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), four u32, no padding (asserted); any bit pattern is valid.
unsafe impl aya::Pod for EndpointInfo {}
#[cfg(feature = "user")]
// SAFETY: repr(C), bytes only, no padding (asserted); any bit pattern is valid.
unsafe impl aya::Pod for InterfaceMac {}

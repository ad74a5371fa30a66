//! The ipcache: longest-prefix-match tries from address prefix to [`IpcacheEntry`], one for IPv4
//! (`IPCACHE4_A_V1`/`_B_V1`, key data `[u8; 4]`) and one for IPv6 (`IPCACHE6_*`, `[u8; 16]`).
//! Keys are the address in network byte order with a prefix length (`/32` or `/128` for a pod,
//! shorter for CIDR identities). A miss means [`crate::identity::Identity::WORLD`].

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub identity: u32,
    /// For the address of a pod on this node: the ifindex of its node-side interface (its key in
    /// `ENDPOINTS`), so traffic arriving on the uplink can be judged by that pod's ingress policy
    /// at XDP. 0 for every other address.
    pub endpoint_ifindex: u32,
}

const _: () = assert!(core::mem::size_of::<IpcacheEntry>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), two u32, no padding (asserted).
unsafe impl aya::Pod for IpcacheEntry {}

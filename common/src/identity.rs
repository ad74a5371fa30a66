//! Numeric security identities. Every address the datapath sees maps to one through the
//! ipcache; policy is keyed by identity, never by address.
//!
//! | range | meaning |
//! | --- | --- |
//! | 0 | `ANY`: the wildcard in policy keys; never assigned to an address |
//! | 1..=255 | reserved identities (below) |
//! | 256..=0x00FF_FFFF | workload identities (one per distinct namespace/labels/service-account set) |
//! | 0x0100_0000.. | CIDR identities (one per ipBlock prefix) |

#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Identity(pub u32);

impl Identity {
    /// Wildcard in policy keys: "any remote identity".
    pub const ANY: Identity = Identity(0);
    /// The node itself (its addresses, including the pods' gateway).
    pub const HOST: Identity = Identity(1);
    /// Anything the ipcache does not know: outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Other nodes of the cluster (their underlay addresses).
    pub const REMOTE_NODE: Identity = Identity(3);
    /// An address on a local pod's interface that no known pod has (its Pod object has not
    /// reached the agent yet): denied both ways until it does.
    pub const UNKNOWN_POD: Identity = Identity(4);
    /// First identity for workloads.
    pub const FIRST_WORKLOAD: Identity = Identity(256);
    /// First identity for CIDR (ipBlock) prefixes.
    pub const FIRST_CIDR: Identity = Identity(0x0100_0000);
}

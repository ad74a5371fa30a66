//! The node's policy state as the kernel maps hold it: what the compiler produces and the
//! loader writes. Pure data, no I/O; `policy_map` builds the policy trie's entries.

use std::net::IpAddr;

use rampart_common::endpoint::EndpointInfo;
use rampart_common::mesh::{MeshEntry, MeshKey};
use rampart_common::service::{ServiceKey, ServiceValue};

pub mod policy_map;

use policy_map::PolicyMapEntry;

/// The complete policy state of the node, as the kernel maps hold it.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    /// Local endpoints by the ifindex of their node-side interface. Endpoint ids must not be 0.
    pub endpoints: Vec<(u32, EndpointInfo)>,
    /// Address prefixes and their identities.
    pub ipcache: Vec<IpcacheRecord>,
    pub policy: Vec<PolicyMapEntry>,
    /// Destinations that require mTLS (see `rampart_common::mesh`).
    pub mesh: Vec<(MeshKey, MeshEntry)>,
    /// Service frontends and their backends (see `rampart_common::service`).
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Port of the local proxy's transparent listener; 0: no proxy.
    pub proxy_port: u16,
    /// Agent-wide audit mode.
    pub audit: bool,
}

/// One ipcache prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcacheRecord {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub identity: u32,
    /// For a pod on this node: the ifindex of its interface (its `endpoints` key); else 0.
    pub endpoint_ifindex: u32,
}

impl IpcacheRecord {
    /// A prefix of a remote identity (another node's pod, a CIDR, a reserved identity).
    pub fn remote(addr: IpAddr, prefix_len: u8, identity: u32) -> IpcacheRecord {
        IpcacheRecord {
            addr,
            prefix_len,
            identity,
            endpoint_ifindex: 0,
        }
    }

    /// The address of a pod on this node, behind interface `ifindex`.
    pub fn local(addr: IpAddr, identity: u32, ifindex: u32) -> IpcacheRecord {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        IpcacheRecord {
            addr,
            prefix_len,
            identity,
            endpoint_ifindex: ifindex,
        }
    }
}

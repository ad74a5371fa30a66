//! What the two agents of a hot restart say to each other (see `super` for the sequence).
//! Both sides of an upgrade may be different builds: every message is plain JSON, fields added
//! later have defaults, and a field one side does not know is ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The new agent's messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FromSuccessor {
    /// First: who asks. The old agent refuses an agent of another node or pin root.
    Hello(Hello),
    /// The new agent is about to load its programs into the pinned links and write the maps:
    /// from here on the old agent's view of the kernel is stale.
    TakingKernel,
    /// The new agent accepts on every listener and its policy is in force: the old one stops
    /// accepting and drains.
    Ready,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    pub pid: u32,
    pub node_name: String,
    pub bpffs_root: String,
}

/// The old agent's messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FromPredecessor {
    /// The listeners (their descriptors came just before, in this order) and the state that
    /// carries over. The old agent has paused its policy controller.
    Offer(Offer),
    /// The old agent will not hand over (another node's agent, or one already handing over).
    Refused { reason: String },
    /// After `Ready`: the old agent stopped accepting; it drains this many connections.
    Draining { connections: u64 },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offer {
    pub version: String,
    pub pid: u32,
    /// The listeners' names, one per descriptor, in the descriptors' order.
    pub listeners: Vec<String>,
    /// `rampart policy push`'s files, by name (they live in the agent's memory only).
    #[serde(default)]
    pub pushed: BTreeMap<String, String>,
    /// The fetched JWKS, as the proxy's registry writes them (opaque here): the new agent uses
    /// them until it has fetched its own, so no token is refused for want of keys.
    #[serde(default)]
    pub jwks: serde_json::Value,
    /// The node's and its workloads' certificates with their keys (opaque here): the new agent
    /// serves with them instead of asking the CA again.
    #[serde(default)]
    pub certificates: serde_json::Value,
}

/// The listeners' names.
pub mod listener {
    pub const METRICS: &str = "metrics";
    pub const ADMIN: &str = "admin";
    pub const PROXY_V4: &str = "proxy-v4";
    pub const PROXY_V6: &str = "proxy-v6";
    pub const TUNNEL: &str = "tunnel";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_from_an_older_build_without_later_fields_still_reads() {
        let offer: FromPredecessor = serde_json::from_str(
            r#"{"offer":{"version":"0.0.9","pid":7,"listeners":["metrics"],"unknown":1}}"#,
        )
        .expect("parses");
        assert_eq!(
            offer,
            FromPredecessor::Offer(Offer {
                version: "0.0.9".into(),
                pid: 7,
                listeners: vec!["metrics".into()],
                pushed: BTreeMap::new(),
                jwks: serde_json::Value::Null,
                certificates: serde_json::Value::Null,
            })
        );
    }
}

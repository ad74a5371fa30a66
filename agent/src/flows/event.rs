//! What the proxy tells the flow log: one event per refused flow or judged HTTP request. The
//! proxy (`l7`, `mesh`) produces these; the hub (`hub.rs`) turns them into records.

use std::net::SocketAddr;
use std::sync::Arc;

use rampart_common::reason::ProxyReason;

use super::record::HttpAccess;

/// Which side of the proxy refused a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySide {
    /// The tunnel port (the destination's node).
    Inbound,
    /// A redirected flow (the source's node).
    Outbound,
}

/// A refusal of the proxy, for the flow log: what is known of the flow when it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEvent {
    pub side: ProxySide,
    /// Why it was refused (its namespace names the filter); `None` for an HTTP request every
    /// filter passed.
    pub refused: Option<ProxyReason>,
    /// An HTTP request the L7 filters judged (passed or refused).
    pub http: Option<Box<HttpAccess>>,
    /// The peer's SPIFFE ID, once the handshake showed it.
    pub peer: Option<String>,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// Where refusals go (the agent's flow hub). Called on the refusing task; must not block.
pub type ProxyEventSink = Arc<dyn Fn(&ProxyEvent) + Send + Sync>;

//! The trust domain's certificate authority as a service of its own (`rampart ca serve`), so
//! that no node holds a key that can sign for another node's workloads: nodes authenticate with
//! a bootstrap credential ([`node_tokens`]) and get what [`authority`] allows them.

pub mod authority;
pub mod client;
pub mod node_tokens;
pub mod placement;
pub mod server;

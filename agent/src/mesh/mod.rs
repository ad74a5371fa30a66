//! Workload identity between nodes: the trust domain's CA ([`ca`]), the TLS 1.3 configurations
//! that check SPIFFE IDs ([`crate::spiffe`]; [`tls`]) and the HBONE-shaped node-to-node tunnel
//! ([`tunnel`]) that carries flows policy requires to be mutually authenticated; traffic from
//! outside the cluster through the same L7 chain ([`ingress`]), with TLS terminated by SNI
//! ([`sni`]); the policy routing that delivers packets marked for the proxy locally
//! ([`policy_routing`]).

pub mod ca;
pub mod carried_certs;
pub mod certs;
pub mod ingress;
pub mod policy_routing;
pub mod runtime;
pub mod sni;
pub mod table;
pub mod tls;
pub mod tunnel;

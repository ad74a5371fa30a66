//! Workload identity between nodes: the trust domain's CA ([`ca`]), SPIFFE IDs ([`spiffe`]), the
//! TLS 1.3 configurations that check them ([`tls`]) and the HBONE-shaped node-to-node tunnel
//! ([`tunnel`]) that carries flows policy requires to be mutually authenticated.

pub mod ca;
pub mod runtime;
pub mod spiffe;
pub mod table;
pub mod tls;
pub mod tunnel;

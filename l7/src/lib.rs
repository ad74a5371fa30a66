//! The L7 decisions of Rampart's proxy, as pure functions of their inputs (token, key set, clock):
//! end-user authentication by JWT, token-bucket rate limiting, and data loss prevention. The proxy's filters wrap them;
//! the conformance suites drive them directly.

pub mod basic;
pub mod dlp;
pub mod jwt;
pub mod ratelimit;

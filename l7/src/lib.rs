//! The L7 decisions of Rampart's proxy, as pure functions of their inputs (token, key set, clock):
//! end-user authentication by JWT and token-bucket rate limiting. The proxy's filters wrap them;
//! the conformance suites drive them directly.

pub mod jwt;
pub mod ratelimit;

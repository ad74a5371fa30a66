//! The network-namespace test harness: nodes and pods as network namespaces joined by veth pairs,
//! echo servers and TCP/UDP/HTTP probes that run inside a namespace, and the agent as a real
//! process. Everything created carries a unique name prefix and is removed by a guard's `Drop`,
//! even when a test panics; [`sweep_stale`] removes what a killed run left behind.
//!
//! Used by the kernel tests in `tests/tests/`, by `cargo xtask demo`, and later by the
//! conformance runners and benchmarks. Privileged: call [`require_root`] first.

pub mod agent;
pub mod ca_service;
pub mod capture;
pub mod cmd;
pub mod deploy;
pub mod dlp_cases;
pub mod dlp_e2e;
pub mod ext_authz;
pub mod fixtures;
pub mod foreign_programs;
pub mod h2;
pub mod http_server;
pub mod https;
pub mod idp;
pub mod jwt_cases;
pub mod kube_api;
pub mod l7_e2e;
pub mod ldap;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod netpol_cases;
pub mod netpol_runner;
pub mod oidc;
pub mod packet;
pub mod probe;
pub mod ratelimit_cases;
pub mod raw_origin;
pub mod rfc7515;
pub mod server;
pub mod soak;
pub mod topology;
pub mod traffic;
pub mod waf_cases;
pub mod waf_e2e;

pub use agent::{Agent, AgentOptions};
pub use netns::{Netns, sweep_stale};
pub use probe::Outcome;
pub use server::EchoServer;
pub use topology::{Topology, TopologyBuilder};

/// Waits until `condition` gives a value, checking every 50 ms; fails the test, naming `what`,
/// if `timeout` passes first. The one way the tests wait for something to become true (never a
/// fixed sleep).
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Panics with a clear message unless the process runs as root. Privileged tests call this
/// first: they fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, veth, eBPF); run it through `cargo xtask test`, \
         which runs as root in CI"
    );
}

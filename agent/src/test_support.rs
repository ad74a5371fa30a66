//! Helpers of the agent's unit tests.

use std::time::Duration;

/// Waits until `condition` gives a value, checking every 10 ms; fails the test, naming `what`,
/// if `timeout` passes first. The unit tests' one way to wait for something (never a fixed
/// sleep); the privileged tests have the same in `rampart_tests::eventually`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

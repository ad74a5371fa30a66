//! Counters of the L7 filters: requests that passed, and denials by (filter, reason). The set of
//! reasons is closed (filter names and `RejectReason`s), so the label set is bounded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Default)]
pub struct L7Stats {
    denied: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Requests a shadow-mode rate limit would have denied.
    shadow_limited: AtomicU64,
    forwarded: AtomicU64,
}

impl L7Stats {
    pub fn deny(&self, filter: &'static str, reason: &'static str) {
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        *denied.entry((filter, reason)).or_default() += 1;
    }

    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shadow_limited(&self) {
        self.shadow_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// ((filter, reason), count) of every denial seen.
    pub fn denials(&self) -> Vec<((&'static str, &'static str), u64)> {
        let denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        denied.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    pub fn shadow_limited_total(&self) -> u64 {
        self.shadow_limited.load(Ordering::Relaxed)
    }
}

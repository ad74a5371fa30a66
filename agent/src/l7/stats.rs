//! Counters of the L7 filters: requests that passed, and denials by reason (the closed table
//! of `rampart_common::reason::ProxyReason`, so the label set is bounded).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rampart_common::reason::ProxyReason;

#[derive(Debug, Default)]
pub struct L7Stats {
    denied: Mutex<BTreeMap<ProxyReason, u64>>,
    /// WAF evaluations, and matches that block (or would, in Detect mode) by (policy, rule group,
    /// blocked).
    waf_evaluated: AtomicU64,
    waf_matched: Mutex<BTreeMap<(String, &'static str, bool), u64>>,
    waf_errors: AtomicU64,
    /// DLP matches by (direction, detector, action).
    dlp_matched: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    /// Requests a shadow-mode rate limit would have denied.
    shadow_limited: AtomicU64,
    forwarded: AtomicU64,
}

impl L7Stats {
    pub fn deny(&self, reason: ProxyReason) {
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        *denied.entry(reason).or_default() += 1;
    }

    /// Counts one WAF evaluation of `policy`'s route (`block`: the route's mode).
    pub fn waf_evaluated(&self, policy: &str, report: &super::waf::WafReport, block: bool) {
        self.waf_evaluated.fetch_add(1, Ordering::Relaxed);
        if report.engine_error {
            self.waf_errors.fetch_add(1, Ordering::Relaxed);
        }
        if report.matched_block {
            let mut matched = self
                .waf_matched
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *matched
                .entry((policy.to_owned(), report.group.name(), block))
                .or_default() += 1;
        }
    }

    /// Counts what the response rules of `policy`'s route found (`block`: the route's mode).
    pub fn waf_response(&self, policy: &str, verdict: &super::waf::ResponseVerdict, block: bool) {
        if verdict.engine_error {
            self.waf_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(group) = verdict.matched_block {
            let mut matched = self
                .waf_matched
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *matched
                .entry((policy.to_owned(), group.name(), block))
                .or_default() += 1;
        }
    }

    pub fn waf_evaluated_total(&self) -> u64 {
        self.waf_evaluated.load(Ordering::Relaxed)
    }

    pub fn waf_errors_total(&self) -> u64 {
        self.waf_errors.load(Ordering::Relaxed)
    }

    /// ((policy, rule group, blocked), count): requests the rules would block, and whether the
    /// route blocked them (Block mode) or only detected them.
    pub fn waf_matches(&self) -> Vec<((String, &'static str, bool), u64)> {
        let matched = self
            .waf_matched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        matched.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn dlp_matched(&self, direction: &'static str, detector: &str, action: &'static str) {
        let mut matched = self
            .dlp_matched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *matched
            .entry((direction, detector.to_owned(), action))
            .or_default() += 1;
    }

    /// ((direction, detector, action), count) of every DLP match.
    pub fn dlp_matches(&self) -> Vec<((&'static str, String, &'static str), u64)> {
        let matched = self
            .dlp_matched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        matched.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shadow_limited(&self) {
        self.shadow_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// ((filter, reason) labels, count) of every denial seen.
    pub fn denials(&self) -> Vec<((&'static str, &'static str), u64)> {
        let denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        denied
            .iter()
            .map(|(reason, n)| ((reason.filter(), reason.name()), *n))
            .collect()
    }

    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    pub fn shadow_limited_total(&self) -> u64 {
        self.shadow_limited.load(Ordering::Relaxed)
    }
}

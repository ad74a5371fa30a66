//! The Kubernetes source's health per watched kind: synced or not, events, relists, errors, the
//! last event's time. Read by `rampart status` and the metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

/// One kind's counters.
#[derive(Debug, Clone, Default)]
pub struct KindHealth {
    /// A first complete list has arrived.
    pub synced: bool,
    /// Objects added, changed or deleted (relisted objects included).
    pub events: u64,
    /// Complete lists (the first one and every relist after a broken or expired watch).
    pub relists: u64,
    /// Failed lists and watches (each retried with backoff).
    pub errors: u64,
    /// Objects whose current version was rejected on arrival.
    pub rejected: u64,
    pub last_event: Option<Instant>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct KubeHealth {
    /// Where the source connects (the API server's URL).
    pub server: String,
    kinds: Mutex<BTreeMap<&'static str, KindHealth>>,
    /// This agent holds the status writer's Lease.
    pub leading: AtomicBool,
    /// Statuses written, and writes that failed.
    pub status_writes: AtomicU64,
    pub status_errors: AtomicU64,
    /// The documents whose current version the last reload rejected, with the errors.
    rejected: Mutex<BTreeMap<String, Vec<String>>>,
}

impl KubeHealth {
    pub fn new(server: String, kinds: &[&'static str]) -> KubeHealth {
        KubeHealth {
            server,
            kinds: Mutex::new(kinds.iter().map(|k| (*k, KindHealth::default())).collect()),
            leading: AtomicBool::new(false),
            status_writes: AtomicU64::new(0),
            status_errors: AtomicU64::new(0),
            rejected: Mutex::default(),
        }
    }

    /// Every kind's counters.
    pub fn snapshot(&self) -> BTreeMap<&'static str, KindHealth> {
        self.lock().clone()
    }

    /// Every watched kind has had a complete list.
    pub fn synced(&self) -> bool {
        self.lock().values().all(|k| k.synced)
    }

    /// The documents rejected now (by file name), with their errors.
    pub fn rejected(&self) -> BTreeMap<String, Vec<String>> {
        self.rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_rejected(&self, rejected: BTreeMap<String, Vec<String>>) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rejected;
    }

    pub(super) fn update(&self, kind: &'static str, f: impl FnOnce(&mut KindHealth)) {
        f(self.lock().entry(kind).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, KindHealth>> {
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

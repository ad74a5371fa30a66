//! Buckets keyed by a request value (source identity, JWT subject, API-key client, a header):
//! one bucket per distinct value, created full on first sight, at most `capacity` of them. The
//! least recently used bucket is dropped first; a value that comes back after eviction gets a
//! full bucket again, which is why the cap should exceed the number of active values (evictions
//! are counted so that operators can see it happen).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, MonotonicClock};
use lru::LruCache;

use super::bucket::{BucketSpec, TokenBucket};

/// Distinct values kept per descriptor unless policy says otherwise.
pub const DEFAULT_KEYED_CAPACITY: NonZeroUsize = match NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// One bucket per value, LRU-bounded.
pub struct KeyedBuckets<C: Clock = MonotonicClock> {
    spec: BucketSpec,
    clock: C,
    buckets: Mutex<LruCache<String, Arc<TokenBucket<C>>>>,
    evictions: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for KeyedBuckets<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBuckets")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl KeyedBuckets<MonotonicClock> {
    pub fn new(spec: BucketSpec, capacity: NonZeroUsize) -> Self {
        KeyedBuckets::with_clock(spec, capacity, MonotonicClock)
    }
}

impl<C: Clock + Clone> KeyedBuckets<C> {
    pub fn with_clock(spec: BucketSpec, capacity: NonZeroUsize, clock: C) -> Self {
        KeyedBuckets {
            spec,
            clock,
            buckets: Mutex::new(LruCache::new(capacity)),
            evictions: AtomicU64::new(0),
        }
    }

    /// The bucket of `value`, created full if it is new (evicting the least recently used one
    /// when full).
    pub fn bucket(&self, value: &str) -> Arc<TokenBucket<C>> {
        // A poisoned lock only means another request panicked mid-lookup; the map is still a map.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = buckets.get(value) {
            return Arc::clone(bucket);
        }
        let bucket = Arc::new(TokenBucket::with_clock(self.spec, self.clock.clone()));
        if buckets
            .push(value.to_string(), Arc::clone(&bucket))
            .is_some()
        {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        bucket
    }

    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets dropped to stay under the cap since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn spec(&self) -> &BucketSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::ratelimit::Take;

    #[test]
    fn one_bucket_per_value_bounded_by_lru() {
        let spec = BucketSpec::new(1, 1, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let capacity = NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN);
        let keyed = KeyedBuckets::with_clock(spec, capacity, FakeRelativeClock::default());
        assert!(matches!(
            keyed.bucket("a").try_take(1),
            Take::Allowed { .. }
        ));
        assert!(matches!(keyed.bucket("a").try_take(1), Take::Denied { .. }));
        assert!(matches!(
            keyed.bucket("b").try_take(1),
            Take::Allowed { .. }
        ));
        assert_eq!(keyed.len(), 2);
        // `c` evicts `a`, the least recently used; `a` comes back full.
        assert!(matches!(
            keyed.bucket("c").try_take(1),
            Take::Allowed { .. }
        ));
        assert_eq!((keyed.len(), keyed.evictions()), (2, 1));
        assert!(matches!(
            keyed.bucket("a").try_take(1),
            Take::Allowed { .. }
        ));
    }
}

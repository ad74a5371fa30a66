//! Token-bucket rate limiting with Envoy's local rate-limit semantics, for the proxy's rate-limit
//! filter: buckets ([`TokenBucket`]), buckets per request value ([`KeyedBuckets`]), and the rule
//! for a request that several descriptors match ([`take_all`], or [`take_each`] with a cost per
//! bucket).

mod bucket;
mod keyed;

pub use bucket::{BucketSpec, MIN_FILL_INTERVAL, SpecError, Take, TokenBucket};
pub use keyed::{DEFAULT_KEYED_CAPACITY, KeyedBuckets};

use std::time::Duration;

use governor::clock::Clock;

/// The outcome for a request that matched one or more buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every bucket had the tokens; `bucket` is the one with fewest left (for
    /// `x-ratelimit-remaining`), `limit` its capacity.
    Allowed {
        bucket: String,
        remaining: u32,
        limit: u32,
    },
    /// `bucket` had too few tokens; tokens already taken from buckets consulted before it are
    /// not returned (as in Envoy).
    Denied {
        bucket: String,
        retry_after: Duration,
        limit: u32,
    },
}

/// Takes `cost` from each bucket, slowest-filling first (Envoy's order), stopping at the first
/// that denies. An empty list allows.
pub fn take_all<C: Clock + Clone>(buckets: &[(&str, &TokenBucket<C>)], cost: u32) -> Decision {
    take_in_order(buckets.iter().map(|&(name, bucket)| (name, bucket, cost)))
}

/// [`take_all`] with a cost per bucket (Envoy's per-descriptor `hits_addend`): each
/// `(name, bucket, cost)` takes its own `cost` from its bucket, in the same order and with the
/// same rule for a denial.
pub fn take_each<C: Clock + Clone>(buckets: &[(&str, &TokenBucket<C>, u32)]) -> Decision {
    take_in_order(buckets.iter().copied())
}

fn take_in_order<'a, C: Clock + Clone + 'a>(
    buckets: impl Iterator<Item = (&'a str, &'a TokenBucket<C>, u32)>,
) -> Decision {
    let mut ordered: Vec<(&str, &TokenBucket<C>, u32)> = buckets.collect();
    // Stable: buckets of equal fill rate keep the caller's order.
    ordered.sort_by(|a, b| a.1.spec().fill_rate().total_cmp(&b.1.spec().fill_rate()));
    let mut tightest: Option<(&str, u32, u32)> = None;
    for (name, bucket, cost) in ordered {
        match bucket.try_take(cost) {
            Take::Allowed { remaining } => {
                if tightest.is_none_or(|(_, least, _)| remaining < least) {
                    tightest = Some((name, remaining, bucket.spec().max_tokens));
                }
            }
            Take::Denied { retry_after } => {
                return Decision::Denied {
                    bucket: name.to_string(),
                    retry_after,
                    limit: bucket.spec().max_tokens,
                };
            }
        }
    }
    let (bucket, remaining, limit) = tightest.unwrap_or(("", u32::MAX, 0));
    Decision::Allowed {
        bucket: bucket.to_string(),
        remaining,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn bucket(
        max: u32,
        per_fill: u32,
        ms: u64,
        clock: &FakeRelativeClock,
    ) -> TokenBucket<FakeRelativeClock> {
        let spec = BucketSpec::new(max, per_fill, Duration::from_millis(ms))
            .unwrap_or_else(|e| panic!("{e}"));
        TokenBucket::with_clock(spec, clock.clone())
    }

    #[test]
    fn slowest_bucket_first_and_tokens_not_returned() {
        let clock = FakeRelativeClock::default();
        let fast = bucket(1, 10, 1000, &clock);
        let slow = bucket(5, 1, 1000, &clock);
        // fast (10/s) has 1 token, slow (1/s) has 5: slow is consulted first and pays even
        // when fast then denies.
        let both = [("fast", &fast), ("slow", &slow)];
        assert!(
            matches!(take_all(&both, 1), Decision::Allowed { ref bucket, remaining: 0, .. } if bucket == "fast")
        );
        assert!(
            matches!(take_all(&both, 1), Decision::Denied { ref bucket, .. } if bucket == "fast")
        );
        assert_eq!(
            take_all(&[("slow", &slow)], 1),
            Decision::Allowed {
                bucket: "slow".into(),
                remaining: 2,
                limit: 5
            }
        );
    }

    #[test]
    fn each_bucket_pays_its_own_cost() {
        let clock = FakeRelativeClock::default();
        let fast = bucket(6, 10, 1000, &clock);
        let slow = bucket(4, 1, 1000, &clock);
        // Given fast first, slow (1/s) is still consulted first; each takes its own cost.
        let costs = |fast_cost, slow_cost| [("fast", &fast, fast_cost), ("slow", &slow, slow_cost)];
        assert_eq!(
            take_each(&costs(3, 2)),
            Decision::Allowed {
                bucket: "slow".into(),
                remaining: 2,
                limit: 4
            }
        );
        assert_eq!(
            take_each(&costs(3, 1)),
            Decision::Allowed {
                bucket: "fast".into(),
                remaining: 0,
                limit: 6
            }
        );
        // slow pays its last token, then fast denies; slow's token is not returned.
        assert!(
            matches!(take_each(&costs(1, 1)), Decision::Denied { ref bucket, .. } if bucket == "fast")
        );
        assert!(
            matches!(take_each(&[("slow", &slow, 1)]), Decision::Denied { ref bucket, .. } if bucket == "slow")
        );
    }
}

//! One token bucket with Envoy's local rate-limit semantics: it starts full, holds at most
//! `max_tokens`, refills continuously at `tokens_per_fill` per `fill_interval` (Envoy's current
//! atomic bucket; half an interval yields half the tokens), a request takes `cost` tokens, and
//! a denied request takes nothing. The arithmetic is governor's GCRA, which is exactly this
//! bucket expressed in time; the clock is injected so the conformance suite can drive it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Envoy refuses fill timers faster than this ("fill timer must be >= 50ms").
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A validated bucket configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    /// Capacity; `0` denies every request (Envoy's current meaning).
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// Why a bucket configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("fill_interval of {0:?} is under the 50 ms minimum")]
    FillIntervalTooShort(Duration),
    #[error("tokens_per_fill must be at least 1")]
    ZeroTokensPerFill,
}

impl BucketSpec {
    pub fn new(
        max_tokens: u32,
        tokens_per_fill: u32,
        fill_interval: Duration,
    ) -> Result<BucketSpec, SpecError> {
        if fill_interval < MIN_FILL_INTERVAL {
            return Err(SpecError::FillIntervalTooShort(fill_interval));
        }
        if tokens_per_fill == 0 {
            return Err(SpecError::ZeroTokensPerFill);
        }
        Ok(BucketSpec {
            max_tokens,
            tokens_per_fill,
            fill_interval,
        })
    }

    /// Tokens per second; buckets of one request are consulted slowest first.
    pub fn fill_rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) / self.fill_interval.as_secs_f64()
    }

    fn quota(&self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.max_tokens)?;
        // Rounded down to whole nanoseconds: the refill is at most a nanosecond per token early,
        // never late.
        let per_token = self.fill_interval / self.tokens_per_fill;
        let per_token = per_token.max(Duration::from_nanos(1));
        Quota::with_period(per_token).map(|quota| quota.allow_burst(burst))
    }
}

/// The outcome of taking from one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken; whole tokens left after this request.
    Allowed { remaining: u32 },
    /// Not taken; when a request of the same cost could next pass.
    Denied { retry_after: Duration },
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// A token bucket on clock `C` (the monotonic clock in the proxy, a fake one in tests).
pub struct TokenBucket<C: Clock = MonotonicClock> {
    spec: BucketSpec,
    clock: C,
    /// `None` when `max_tokens` is 0: nothing ever passes.
    limiter: Option<Limiter<C>>,
}

impl<C: Clock> std::fmt::Debug for TokenBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl TokenBucket<MonotonicClock> {
    pub fn new(spec: BucketSpec) -> Self {
        TokenBucket::with_clock(spec, MonotonicClock)
    }
}

impl<C: Clock + Clone> TokenBucket<C> {
    /// A full bucket as of `clock`'s now.
    pub fn with_clock(spec: BucketSpec, clock: C) -> Self {
        let limiter = spec
            .quota()
            .map(|quota| RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware());
        TokenBucket {
            spec,
            clock,
            limiter,
        }
    }

    pub fn spec(&self) -> &BucketSpec {
        &self.spec
    }

    /// Takes `cost` tokens (0 counts as 1, as Envoy's `hits_addend` does) if all are there.
    pub fn try_take(&self, cost: u32) -> Take {
        let Some(limiter) = &self.limiter else {
            return Take::Denied {
                retry_after: self.spec.fill_interval,
            };
        };
        let cost = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(cost) {
            Ok(Ok(snapshot)) => Take::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            // governor's answer for `check_n` already counts all `cost` tokens.
            Ok(Err(not_until)) => Take::Denied {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
            // More than the bucket can ever hold.
            Err(_) => Take::Denied {
                retry_after: self.spec.fill_interval,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn bucket(
        max: u32,
        per_fill: u32,
        interval_ms: u64,
    ) -> (TokenBucket<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let spec = BucketSpec::new(max, per_fill, Duration::from_millis(interval_ms))
            .unwrap_or_else(|e| panic!("{e}"));
        (TokenBucket::with_clock(spec, clock.clone()), clock)
    }

    #[test]
    fn starts_full_and_refills_continuously() {
        let (bucket, clock) = bucket(2, 2, 3000);
        assert_eq!(bucket.try_take(1), Take::Allowed { remaining: 1 });
        assert_eq!(bucket.try_take(1), Take::Allowed { remaining: 0 });
        assert!(matches!(bucket.try_take(1), Take::Denied { .. }));
        clock.advance(Duration::from_millis(1500));
        assert_eq!(bucket.try_take(1), Take::Allowed { remaining: 0 });
        match bucket.try_take(1) {
            Take::Denied { retry_after } => assert_eq!(retry_after, Duration::from_millis(1500)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_denied_request_takes_nothing_and_cost_counts() {
        let (bucket, clock) = bucket(3, 1, 1000);
        assert!(matches!(bucket.try_take(4), Take::Denied { .. }));
        assert_eq!(bucket.try_take(2), Take::Allowed { remaining: 1 });
        assert!(matches!(bucket.try_take(2), Take::Denied { .. }));
        assert_eq!(bucket.try_take(1), Take::Allowed { remaining: 0 });
        clock.advance(Duration::from_secs(10));
        assert_eq!(bucket.try_take(3), Take::Allowed { remaining: 0 });
    }

    #[test]
    fn zero_capacity_denies_everything_and_bad_specs_are_refused() {
        let (bucket, _) = bucket(0, 1, 1000);
        assert!(matches!(bucket.try_take(1), Take::Denied { .. }));
        assert_eq!(
            BucketSpec::new(1, 1, Duration::from_millis(49)),
            Err(SpecError::FillIntervalTooShort(Duration::from_millis(49)))
        );
        assert_eq!(
            BucketSpec::new(1, 0, Duration::from_millis(50)),
            Err(SpecError::ZeroTokensPerFill)
        );
    }
}

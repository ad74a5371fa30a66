//! One destination's L7 policy as the proxy runs it: the validated model plus the state that
//! lives with it (rate-limit buckets). Built with each mesh table, so buckets start full when
//! the policy set changes.

use std::num::NonZeroUsize;
use std::sync::Arc;

use rampart_l7::jwt::{DEFAULT_CACHED_TOKENS, TokenCache};
use rampart_l7::ratelimit::{KeyedBuckets, TokenBucket};

use crate::policy::http::{HttpPolicyModel, RateKey};

/// Buckets of one configured rate limit.
#[derive(Debug)]
pub enum BucketState {
    /// `key: route`: one bucket for every request.
    Single(Arc<TokenBucket>),
    /// One bucket per key value.
    Keyed(KeyedBuckets),
}

#[derive(Debug)]
pub struct HttpRoute {
    /// The MeshPolicy that set these rules.
    pub policy: String,
    pub model: Arc<HttpPolicyModel>,
    /// In the order of `model.rate_limits`.
    pub buckets: Vec<BucketState>,
    /// Verified tokens, one cache per authentication provider (in the order of
    /// `model.authentication.providers`; unused by API-key providers).
    pub token_caches: Vec<TokenCache>,
}

impl HttpRoute {
    pub fn new(policy: String, model: Arc<HttpPolicyModel>) -> HttpRoute {
        let buckets = model
            .rate_limits
            .iter()
            .map(|limit| match limit.key {
                RateKey::Route => BucketState::Single(Arc::new(TokenBucket::new(limit.spec))),
                _ => BucketState::Keyed(KeyedBuckets::new(
                    limit.spec,
                    NonZeroUsize::new(limit.max_keys).unwrap_or(NonZeroUsize::MIN),
                )),
            })
            .collect();
        let providers = model
            .authentication
            .as_ref()
            .map_or(0, |authn| authn.providers.len());
        let token_caches = (0..providers)
            .map(|_| TokenCache::new(DEFAULT_CACHED_TOKENS))
            .collect();
        HttpRoute {
            policy,
            model,
            buckets,
            token_caches,
        }
    }
}

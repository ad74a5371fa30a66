//! One destination's L7 policy as the proxy runs it: the validated model plus the state that
//! lives with it (rate-limit buckets). Built with each mesh table, so buckets start full when
//! the policy set changes.

use std::num::NonZeroUsize;
use std::sync::Arc;

use rampart_l7::jwt::{DEFAULT_CACHED_TOKENS, TokenCache};
use rampart_l7::ratelimit::{KeyedBuckets, TokenBucket};

use rampart_l7::jwt::KeySet;

use super::jwks::{JwksRegistry, RemoteJwks};
use crate::policy::http::{HttpPolicyModel, JwksModel, ProviderModel, RateKey};

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
    /// Each JWT provider's keys, in the same order (`None` for API-key providers).
    pub key_sources: Vec<Option<KeySource>>,
}

/// A JWT provider's keys: fixed by the policy, or a source the agent keeps fresh.
#[derive(Debug, Clone)]
pub enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    /// The set in force (`None`: a remote set not fetched yet, or stale past its limit).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            KeySource::Static(keys) => Some(Arc::clone(keys)),
            KeySource::Remote(remote) => remote.keys(),
        }
    }
}

impl HttpRoute {
    pub fn new(policy: String, model: Arc<HttpPolicyModel>, registry: &JwksRegistry) -> HttpRoute {
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
        let key_sources = model
            .authentication
            .iter()
            .flat_map(|authn| &authn.providers)
            .map(|provider| match provider {
                ProviderModel::Jwt(jwt) => Some(match &jwt.jwks {
                    JwksModel::Inline(keys) => KeySource::Static(Arc::clone(keys)),
                    JwksModel::Remote(location) => KeySource::Remote(registry.get(location)),
                }),
                ProviderModel::ApiKeys(_) => None,
            })
            .collect();
        HttpRoute {
            policy,
            model,
            buckets,
            token_caches,
            key_sources,
        }
    }

    /// The remote JWKS sources of this route.
    pub fn remote_sources(&self) -> impl Iterator<Item = &Arc<RemoteJwks>> {
        self.key_sources.iter().filter_map(|source| match source {
            Some(KeySource::Remote(remote)) => Some(remote),
            _ => None,
        })
    }
}

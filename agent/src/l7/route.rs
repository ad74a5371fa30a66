//! One destination's L7 policy as the proxy runs it: the validated model plus the state that
//! lives with it (rate-limit buckets, JWT keys and verified tokens, verified passwords, an LDAP
//! directory's connection), and what every request
//! needs from it computed once. Built with each mesh table; a rate limit that the new policy set
//! states exactly as before (same MeshPolicy, bucket name, key and rate) keeps its buckets, so
//! pods coming and going do not refill everyone's tokens.

use std::num::NonZeroUsize;
use std::sync::Arc;

use hyper::header::HeaderName;
use rampart_l7::jwt::{DEFAULT_CACHED_TOKENS, KeySet, TokenCache};
use rampart_l7::ratelimit::{KeyedBuckets, TokenBucket};

use super::jwks::{JwksRegistry, RemoteJwks};
use super::ldap::Directory;
use super::oidc::OidcState;
use super::passwords::PasswordFile;
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
    pub buckets: Vec<Arc<BucketState>>,
    /// Per authentication provider, in the order of `model.authentication.providers`: what
    /// it keeps between requests.
    pub providers: Vec<ProviderState>,
    /// Headers the proxy sets on forwarded requests from authentication results; a client's
    /// own values of them are always dropped.
    pub upstream_headers: Vec<HeaderName>,
    /// The WAF, when the rules have one.
    pub waf: Option<super::waf::RouteWaf>,
}

/// An authentication provider's live state.
#[derive(Debug)]
pub enum ProviderState {
    /// Keys and verified tokens.
    Jwt(JwtState),
    /// API keys live in the model.
    ApiKeys,
    /// Users and the credentials that verified lately.
    Basic(Arc<PasswordFile>),
    /// The directory's connection and remembered logins.
    Ldap(Arc<Directory>),
    /// The provider's endpoints, keys and cookie key.
    Oidc(Arc<OidcState>),
}

/// A JWT provider's live state.
#[derive(Debug)]
pub struct JwtState {
    pub keys: KeySource,
    pub cache: TokenCache,
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
    /// The route of `model`; rate limits unchanged from `previous` (the same destination's
    /// route in the table being replaced) keep their buckets.
    pub fn new(
        policy: String,
        model: Arc<HttpPolicyModel>,
        registry: &JwksRegistry,
        previous: Option<&HttpRoute>,
        wafs: Option<&super::waf::WafEngines>,
    ) -> HttpRoute {
        let kept = |limit: &crate::policy::http::RateBucketModel| {
            let previous = previous.filter(|p| p.policy == policy)?;
            let i = previous.model.rate_limits.iter().position(|l| l == limit)?;
            previous.buckets.get(i).cloned()
        };
        let buckets = model
            .rate_limits
            .iter()
            .map(|limit| {
                kept(limit).unwrap_or_else(|| {
                    Arc::new(match limit.key {
                        RateKey::Route => {
                            BucketState::Single(Arc::new(TokenBucket::new(limit.spec)))
                        }
                        _ => BucketState::Keyed(KeyedBuckets::new(
                            limit.spec,
                            NonZeroUsize::new(limit.max_keys).unwrap_or(NonZeroUsize::MIN),
                        )),
                    })
                })
            })
            .collect();
        let providers = model
            .authentication
            .iter()
            .flat_map(|authn| &authn.providers);
        // A provider the policy states as before (same MeshPolicy, provider name and
        // configuration) keeps what it remembers: verified passwords, the directory's
        // connection.
        let kept_state = |name: &str| {
            let previous = previous.filter(|p| p.policy == policy)?;
            let index = previous
                .model
                .authentication
                .as_ref()?
                .providers
                .iter()
                .position(|p| p.name() == name)?;
            previous.providers.get(index)
        };
        let states = providers
            .clone()
            .map(|provider| match provider {
                ProviderModel::Jwt(jwt) => ProviderState::Jwt(JwtState {
                    keys: match &jwt.jwks {
                        JwksModel::Inline(keys) => KeySource::Static(Arc::clone(keys)),
                        JwksModel::Remote(location) => KeySource::Remote(registry.get(location)),
                    },
                    cache: TokenCache::new(DEFAULT_CACHED_TOKENS),
                }),
                ProviderModel::ApiKeys(_) => ProviderState::ApiKeys,
                ProviderModel::Basic(basic) => {
                    ProviderState::Basic(match kept_state(&basic.name) {
                        Some(ProviderState::Basic(file))
                            if file.fingerprint == basic.fingerprint =>
                        {
                            Arc::clone(file)
                        }
                        _ => Arc::new(PasswordFile::new(
                            Arc::clone(&basic.users),
                            basic.fingerprint,
                        )),
                    })
                }
                ProviderModel::Ldap(ldap) => ProviderState::Ldap(match kept_state(&ldap.name) {
                    Some(ProviderState::Ldap(directory))
                        if directory.fingerprint == ldap.fingerprint() =>
                    {
                        Arc::clone(directory)
                    }
                    _ => Arc::new(Directory::new(Arc::clone(ldap))),
                }),
                ProviderModel::Oidc(oidc) => ProviderState::Oidc(match kept_state(&oidc.name) {
                    Some(ProviderState::Oidc(state)) if state.fingerprint == oidc.fingerprint() => {
                        Arc::clone(state)
                    }
                    _ => Arc::new(OidcState::new(
                        Arc::clone(oidc),
                        registry.get(&crate::policy::http::JwksLocation::Discovery {
                            issuer: oidc.issuer.clone(),
                        }),
                    )),
                }),
            })
            .collect();
        let upstream_headers = providers
            .flat_map(|provider| provider.upstream_headers())
            .cloned()
            .collect();
        let waf = model.waf.as_ref().map(|waf| super::waf::RouteWaf {
            model: waf.clone(),
            engine: wafs.and_then(|w| w.engine(&waf.profile)),
        });
        HttpRoute {
            policy,
            model,
            buckets,
            providers: states,
            upstream_headers,
            waf,
        }
    }

    /// The remote JWKS sources of this route (JWT providers' and OIDC providers' keys).
    pub fn remote_sources(&self) -> impl Iterator<Item = &Arc<RemoteJwks>> {
        self.providers.iter().filter_map(|state| match state {
            ProviderState::Jwt(JwtState {
                keys: KeySource::Remote(remote),
                ..
            }) => Some(remote),
            ProviderState::Oidc(oidc) => Some(oidc.keys()),
            _ => None,
        })
    }
}

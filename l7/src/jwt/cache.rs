//! Verified tokens, remembered: a client sends the same token on every request until it
//! expires, and a signature check (tens of microseconds for RS256) need not be repeated for it.
//! Entries are keyed by the token's SHA-256 and hold what verification produced; a hit re-checks
//! the time claims at the current clock, so an entry never outlives its token's `exp`. Like
//! Envoy's `jwt_cache_config`, bounded and LRU. A cache belongs to one provider and one key set:
//! make a new one when either changes (a rotated-out key must not keep verifying).

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;
use sha2::Digest as _;

use super::{KeySet, Rejection, VerifiedJwt, VerifierConfig, verify_jwt};

/// Tokens kept per provider unless configured otherwise.
pub const DEFAULT_CACHED_TOKENS: usize = 1_000;

pub struct TokenCache {
    /// Token digest → (the key set that verified it, what verification produced).
    entries: Mutex<LruCache<[u8; 32], (u64, VerifiedJwt)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        TokenCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], (u64, VerifiedJwt)>> {
        // A poisoned lock means a panic elsewhere mid-update; the map itself is intact.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`verify_jwt`], skipping the signature for a token verified before. Refusals are not
    /// remembered.
    pub fn verify(
        &self,
        config: &VerifierConfig,
        keys: &KeySet,
        token: &str,
        now: u64,
    ) -> Result<VerifiedJwt, Rejection> {
        if token.len() > config.max_token_bytes {
            return verify_jwt(config, keys, token, now);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let cached = self.lock().get(&digest).cloned();
        // Only under the same key set: a key rotated out must stop verifying at once.
        if let Some((set, verified)) = cached
            && set == keys.id()
        {
            config.claims.check(&verified.claims.0, now)?;
            return Ok(verified);
        }
        let verified = verify_jwt(config, keys, token, now)?;
        self.lock().put(digest, (keys.id(), verified.clone()));
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;
    use crate::jwt::{ClaimRules, RejectReason};

    #[test]
    fn a_cached_token_still_expires() {
        let secret = [3u8; 32];
        let keys = KeySet::from_jwks(
            json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap_or_default();
        let config = VerifierConfig::new(&["HS256"], ClaimRules::default(), 8192)
            .unwrap_or_else(|e| panic!("{e}"));
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"a","exp":1000}"#)
        );
        let signature = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap_or_default();
        let token = format!("{input}.{signature}");
        let cache = TokenCache::new(8);
        assert!(cache.verify(&config, &keys, &token, 900).is_ok());
        assert_eq!(cache.len(), 1);
        assert!(cache.verify(&config, &keys, &token, 950).is_ok());
        let expired = cache
            .verify(&config, &keys, &token, 1000)
            .err()
            .map(|r| r.reason);
        assert_eq!(expired, Some(RejectReason::Expired));
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(cache.verify(&config, &keys, &forged, 900).is_err());
        assert_eq!(cache.len(), 1, "refusals are not cached");
    }
}

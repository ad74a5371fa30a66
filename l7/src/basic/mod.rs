//! HTTP Basic authentication (RFC 7617): the `Authorization: Basic` credential, users from an
//! htpasswd file ([`htpasswd`]), and a short memory of credentials that verified
//! ([`VerifiedCache`]), shared with the LDAP provider: a bcrypt check costs milliseconds of
//! CPU, an LDAP bind a round trip, and a client sends the same credential with every request.

pub mod htpasswd;

use std::num::NonZeroUsize;
use std::sync::Mutex;

use base64::Engine as _;
use sha2::Digest as _;

/// A user name and password as a client sent them (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredential({})", self.user)
    }
}

/// Why a `Basic` credential cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedCredential {
    /// Not base64.
    Encoding,
    /// Not UTF-8 (RFC 7617 §2.1: the charset is UTF-8), or control characters.
    Text,
    /// No `:` between the user and the password, or an empty user.
    Shape,
}

/// Longest credential read (the decoded `user:password`): more is malformed, never hashed.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;

/// The credential of an `Authorization` value after its `Basic ` scheme.
pub fn parse_credential(encoded: &str) -> Result<BasicCredential, MalformedCredential> {
    let encoded = encoded.trim();
    if encoded.len() > MAX_CREDENTIAL_BYTES * 4 / 3 + 4 {
        return Err(MalformedCredential::Shape);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| MalformedCredential::Encoding)?;
    let text = String::from_utf8(bytes).map_err(|_| MalformedCredential::Text)?;
    if text.chars().any(char::is_control) {
        return Err(MalformedCredential::Text);
    }
    let (user, password) = text.split_once(':').ok_or(MalformedCredential::Shape)?;
    if user.is_empty() {
        return Err(MalformedCredential::Shape);
    }
    Ok(BasicCredential {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// Credentials that verified, by a salted SHA-256 of user and password (the password itself is
/// never kept), each for at most `ttl_s` seconds, at most `capacity` of them (least recently
/// used go first). What a hit returns is what the verification established (`T`: the user's
/// groups, for LDAP).
pub struct VerifiedCache<T> {
    salt: [u8; 32],
    ttl_s: u64,
    entries: Mutex<lru::LruCache<[u8; 32], (u64, T)>>,
}

impl<T> std::fmt::Debug for VerifiedCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedCache(ttl {} s)", self.ttl_s)
    }
}

impl<T: Clone> VerifiedCache<T> {
    /// `salt` should be random per process: the keys are then useless outside it.
    pub fn new(capacity: NonZeroUsize, ttl_s: u64, salt: [u8; 32]) -> VerifiedCache<T> {
        VerifiedCache {
            salt,
            ttl_s,
            entries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    fn key(&self, credential: &BasicCredential) -> [u8; 32] {
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.salt);
        hasher.update((credential.user.len() as u64).to_be_bytes());
        hasher.update(credential.user.as_bytes());
        hasher.update(credential.password.as_bytes());
        hasher.finalize().into()
    }

    /// What `credential` verified as, if it did less than the lifetime ago.
    pub fn get(&self, credential: &BasicCredential, now_s: u64) -> Option<T> {
        let key = self.key(credential);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some((expires, value)) if *expires > now_s => Some(value.clone()),
            Some(_) => {
                entries.pop(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, credential: &BasicCredential, now_s: u64, value: T) {
        if self.ttl_s == 0 {
            return;
        }
        let key = self.key(credential);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, (now_s.saturating_add(self.ttl_s), value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(text: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn credentials_parse_as_rfc_7617_says() {
        // RFC 7617 §2's example.
        let c = parse_credential("QWxhZGRpbjpvcGVuIHNlc2FtZQ==").expect("example");
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("Aladdin", "open sesame")
        );
        let c = parse_credential(&encode("test:123£".as_bytes())).expect("utf-8");
        assert_eq!(c.password, "123£");
        let c = parse_credential(&encode(b"u:pa:ss")).expect("colon in the password");
        assert_eq!(c.password, "pa:ss");
        assert_eq!(parse_credential("%%%"), Err(MalformedCredential::Encoding));
        assert_eq!(
            parse_credential(&encode(b"\xff:x")),
            Err(MalformedCredential::Text)
        );
        assert_eq!(
            parse_credential(&encode(b"u\n:x")),
            Err(MalformedCredential::Text)
        );
        assert_eq!(
            parse_credential(&encode(b"nocolon")),
            Err(MalformedCredential::Shape)
        );
        assert_eq!(
            parse_credential(&encode(b":x")),
            Err(MalformedCredential::Shape)
        );
        let long = format!("u:{}", "x".repeat(2000));
        assert_eq!(
            parse_credential(&encode(long.as_bytes())),
            Err(MalformedCredential::Shape)
        );
    }

    #[test]
    fn the_cache_remembers_a_credential_for_its_lifetime_only() {
        let cache = VerifiedCache::new(NonZeroUsize::new(2).expect("2"), 60, [3; 32]);
        let alice = BasicCredential {
            user: "alice".into(),
            password: "pw".into(),
        };
        let wrong = BasicCredential {
            password: "pW".into(),
            ..alice.clone()
        };
        cache.insert(&alice, 100, vec!["staff"]);
        assert_eq!(cache.get(&alice, 159), Some(vec!["staff"]));
        assert_eq!(cache.get(&wrong, 101), None);
        assert_eq!(cache.get(&alice, 160), None, "expired");
        assert!(cache.is_empty(), "an expired entry is dropped");
        // A user name and password split differently is another credential.
        let shifted = BasicCredential {
            user: "alicep".into(),
            password: "w".into(),
        };
        cache.insert(&alice, 200, vec![]);
        assert_eq!(cache.get(&shifted, 201), None);
    }
}

//! Cookies that carry their own state: JSON sealed with AES-256-GCM under a key derived (HKDF-
//! SHA-256) from the policy's cookie secret and the provider's name, the cookie's purpose bound
//! in as associated data, so a login cookie never opens as a session, nor one provider's cookie
//! as another's. Every agent derives the same key from the same Secret: a cookie sealed on one
//! node opens on the other, and after a restart.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};

/// Largest cookie value opened (a browser keeps 4 KiB per cookie).
pub const MAX_SEALED_BYTES: usize = 4096;

pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

struct KeyLength;

impl ring::hkdf::KeyType for KeyLength {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// The sealer of `provider`'s cookies (`None` only if the key cannot be derived, which
    /// HKDF-SHA256 to 32 bytes never refuses).
    pub fn new(secret: &[u8], provider: &str) -> Option<Sealer> {
        let salt = Salt::new(HKDF_SHA256, b"rampart oidc cookie v1");
        let info = [provider.as_bytes()];
        let mut bytes = [0u8; 32];
        salt.extract(secret)
            .expand(&info, KeyLength)
            .and_then(|okm| okm.fill(&mut bytes))
            .ok()?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).ok()?;
        Some(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed for `purpose`, as cookie text (base64url of nonce and ciphertext).
    pub fn seal(&self, purpose: &str, value: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The value of a cookie sealed for `purpose`; `None` if it was not (changed, another
    /// key or purpose, or not ours).
    pub fn open(&self, purpose: &str, text: &str) -> Option<Vec<u8>> {
        if text.len() > MAX_SEALED_BYTES {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut sealed)
            .ok()?;
        Some(opened.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_the_same_secret_provider_and_purpose_only() {
        let sealer = Sealer::new(&[7u8; 48], "shop").unwrap_or_else(|| panic!("key"));
        let text = sealer
            .seal("session", b"{\"sub\":\"alice\"}")
            .unwrap_or_default();
        assert_eq!(
            sealer.open("session", &text).as_deref(),
            Some(&b"{\"sub\":\"alice\"}"[..])
        );
        // Another agent with the same Secret opens it.
        assert!(
            Sealer::new(&[7u8; 48], "shop").is_some_and(|s| s.open("session", &text).is_some())
        );
        assert!(sealer.open("login", &text).is_none(), "another purpose");
        assert!(
            Sealer::new(&[7u8; 48], "other").is_some_and(|s| s.open("session", &text).is_none()),
            "another provider"
        );
        assert!(
            Sealer::new(&[8u8; 48], "shop").is_some_and(|s| s.open("session", &text).is_none()),
            "another key"
        );
        // One character changed anywhere: refused.
        for i in [0, text.len() / 2, text.len() - 1] {
            let mut tampered = text.clone().into_bytes();
            tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).unwrap_or_default();
            assert!(
                sealer.open("session", &tampered).is_none(),
                "tampered at {i}"
            );
        }
        assert!(sealer.open("session", "").is_none());
        assert!(sealer.open("session", &"A".repeat(5000)).is_none());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealer.seal("session", b"x"), sealer.seal("session", b"x"));
    }
}

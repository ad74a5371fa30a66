//! Trusted verification keys, from JWK / JWKS documents (RFC 7517), and the choice of which keys
//! may verify a given token. Keys only ever come from configuration (inline, file, JWKS URL):
//! never from the token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use super::alg::JwsAlg;

/// The curves of `kty: EC` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn from_name(name: &str) -> Option<Curve> {
        match name {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }

    fn coordinate_bytes(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// What a key is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Oct,
    Rsa,
    Ec(Curve),
    Ed25519,
}

/// Why a JWK or JWKS document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a JWKS is an object with a `keys` array")]
    NotAJwks,
    #[error("a JWK is a JSON object")]
    NotAnObject,
    #[error("member `{0}` is missing or not a string")]
    Member(&'static str),
    #[error("member `{member}` is not unpadded base64url")]
    Base64 { member: &'static str },
    #[error("unsupported key type `{0}`")]
    KeyType(String),
    #[error("unsupported curve `{0}`")]
    Curve(String),
    #[error("`alg` {0:?} is not an algorithm the verifier implements")]
    Alg(String),
    #[error("`alg` {alg} does not fit a {kind:?} key")]
    AlgMismatch { alg: JwsAlg, kind: KeyKind },
    #[error("`use` is {0:?}, not \"sig\"")]
    Use(String),
    #[error("`key_ops` does not allow \"verify\"")]
    KeyOps,
    #[error("RSA modulus of {0} bits; at least 2048 are required")]
    WeakRsa(usize),
    #[error("EC coordinates of the wrong length for the curve")]
    EcLength,
    #[error("an empty symmetric key")]
    EmptySecret,
    #[error("invalid key: {0}")]
    Invalid(String),
}

/// One trusted key.
pub struct TrustedKey {
    kid: Option<String>,
    alg: Option<JwsAlg>,
    kind: KeyKind,
    material: Material,
    /// For `oct` keys: the secret's length (HMAC keys shorter than the hash never verify).
    secret_len: usize,
}

enum Material {
    Library(DecodingKey),
    /// ES512 is verified with `p521` (jsonwebtoken has no P-521).
    P521(Box<p521::ecdsa::VerifyingKey>),
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TrustedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// A key from one JWK object. Private members (`d`, `p`, ...) are ignored: only the public
    /// part is used.
    pub fn from_jwk(jwk: &Value) -> Result<TrustedKey, KeyError> {
        let jwk = jwk.as_object().ok_or(KeyError::NotAnObject)?;
        if let Some(usage) = jwk.get("use") {
            let usage = usage.as_str().ok_or(KeyError::Member("use"))?;
            if usage != "sig" {
                return Err(KeyError::Use(usage.to_string()));
            }
        }
        if let Some(ops) = jwk.get("key_ops") {
            let allows_verify = ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
            if !allows_verify {
                return Err(KeyError::KeyOps);
            }
        }
        let kid = match jwk.get("kid") {
            None => None,
            Some(kid) => Some(kid.as_str().ok_or(KeyError::Member("kid"))?.to_string()),
        };
        let alg = match jwk.get("alg") {
            None => None,
            Some(alg) => {
                let name = alg.as_str().ok_or(KeyError::Member("alg"))?;
                Some(JwsAlg::from_name(name).ok_or_else(|| KeyError::Alg(name.to_string()))?)
            }
        };
        let public = |(kind, material)| (kind, material, 0);
        let (kind, material, secret_len) = match string(jwk, "kty")? {
            "RSA" => public(rsa(jwk)?),
            "EC" => public(ec(jwk)?),
            "oct" => oct(jwk)?,
            "OKP" => public(okp(jwk)?),
            other => return Err(KeyError::KeyType(other.to_string())),
        };
        if let Some(alg) = alg
            && alg.key_kind() != kind
        {
            return Err(KeyError::AlgMismatch { alg, kind });
        }
        Ok(TrustedKey {
            kid,
            alg,
            kind,
            material,
            secret_len,
        })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// May this key verify a token signed with `alg` under key id `kid`? The key's kind must be
    /// the algorithm's, its own `alg` (if any) must be this one, and a token that names a `kid`
    /// is verified only by keys with that `kid` or with none.
    pub fn fits(&self, alg: JwsAlg, kid: Option<&str>) -> bool {
        if self.kind != alg.key_kind() || self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        match (kid, self.kid.as_deref()) {
            (Some(wanted), Some(own)) => wanted == own,
            _ => true,
        }
    }

    /// Checks `signature` over `signing_input`. Any failure, including a key the algorithm
    /// cannot use, is a plain `false`.
    pub fn verifies(&self, alg: JwsAlg, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg, None) {
            return false;
        }
        match (&self.material, alg.library()) {
            (Material::Library(key), Some(library_alg)) => {
                if self.kind == KeyKind::Oct && self.secret_len < alg.min_hmac_secret_bytes() {
                    return false;
                }
                let encoded = URL_SAFE_NO_PAD.encode(signature);
                jsonwebtoken::crypto::verify(&encoded, signing_input, key, library_alg)
                    .unwrap_or(false)
            }
            (Material::P521(key), None) => {
                use p521::ecdsa::signature::Verifier as _;
                p521::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|signature| key.verify(signing_input, &signature).is_ok())
            }
            _ => false,
        }
    }
}

fn string<'a>(jwk: &'a Map<String, Value>, member: &'static str) -> Result<&'a str, KeyError> {
    jwk.get(member)
        .and_then(Value::as_str)
        .ok_or(KeyError::Member(member))
}

fn bytes(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(string(jwk, member)?)
        .map_err(|_| KeyError::Base64 { member })
}

fn rsa(jwk: &Map<String, Value>) -> Result<(KeyKind, Material), KeyError> {
    let modulus = bytes(jwk, "n")?;
    let exponent = bytes(jwk, "e")?;
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    let bits = significant * 8;
    if bits < 2048 {
        return Err(KeyError::WeakRsa(bits));
    }
    let key = DecodingKey::from_rsa_raw_components(&modulus, &exponent);
    Ok((KeyKind::Rsa, Material::Library(key)))
}

fn ec(jwk: &Map<String, Value>) -> Result<(KeyKind, Material), KeyError> {
    let curve_name = string(jwk, "crv")?;
    let curve = Curve::from_name(curve_name).ok_or_else(|| KeyError::Curve(curve_name.into()))?;
    let x = bytes(jwk, "x")?;
    let y = bytes(jwk, "y")?;
    if x.len() != curve.coordinate_bytes() || y.len() != curve.coordinate_bytes() {
        return Err(KeyError::EcLength);
    }
    let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let material = match curve {
        Curve::P521 => Material::P521(Box::new(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|e| KeyError::Invalid(e.to_string()))?,
        )),
        // A point off the curve is not refused here (ring parses the key only when it
        // verifies): it can never verify a signature, so it fails closed as `signature`.
        Curve::P256 | Curve::P384 => Material::Library(DecodingKey::from_ec_der(&sec1)),
    };
    Ok((KeyKind::Ec(curve), material))
}

/// A symmetric key, with its length (HMAC keys shorter than the hash never verify).
fn oct(jwk: &Map<String, Value>) -> Result<(KeyKind, Material, usize), KeyError> {
    let secret = bytes(jwk, "k")?;
    if secret.is_empty() {
        return Err(KeyError::EmptySecret);
    }
    Ok((
        KeyKind::Oct,
        Material::Library(DecodingKey::from_secret(&secret)),
        secret.len(),
    ))
}

fn okp(jwk: &Map<String, Value>) -> Result<(KeyKind, Material), KeyError> {
    let curve = string(jwk, "crv")?;
    if curve != "Ed25519" {
        return Err(KeyError::Curve(curve.to_string()));
    }
    let x = bytes(jwk, "x")?;
    if x.len() != 32 {
        return Err(KeyError::Invalid(
            "Ed25519 public key is not 32 bytes".into(),
        ));
    }
    Ok((
        KeyKind::Ed25519,
        Material::Library(DecodingKey::from_ed_der(&x)),
    ))
}

/// The keys one authentication provider trusts, plus what was left out of its source and why.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<TrustedKey>,
    skipped: Vec<String>,
    /// Unique per set made in this process: what a token verified under this set is tied to.
    id: u64,
}

impl Default for KeySet {
    fn default() -> KeySet {
        KeySet::new(Vec::new())
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl KeySet {
    pub fn new(keys: Vec<TrustedKey>) -> KeySet {
        KeySet {
            keys,
            skipped: Vec::new(),
            id: next_id(),
        }
    }

    /// This set's identity (two sets with the same keys still differ).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A JWKS document. Keys the verifier cannot use (another `use`, an unknown `kty`, a weak
    /// RSA modulus) are left out and listed in [`KeySet::skipped`]; they never fail the others,
    /// as IdPs publish encryption keys next to signing keys.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, KeyError> {
        let document: Value = serde_json::from_slice(json)?;
        let entries = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeyError::NotAJwks)?;
        let mut set = KeySet::default();
        for (index, entry) in entries.iter().enumerate() {
            match TrustedKey::from_jwk(entry) {
                Ok(key) => set.keys.push(key),
                Err(error) => {
                    let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("-");
                    set.skipped
                        .push(format!("key {index} (kid {kid}): {error}"));
                }
            }
        }
        Ok(set)
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Does any key carry this `kid`?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid() == Some(kid))
    }

    /// Keys that may verify a token with this `alg` and `kid`.
    pub fn candidates(&self, alg: JwsAlg, kid: Option<&str>) -> impl Iterator<Item = &TrustedKey> {
        self.keys.iter().filter(move |key| key.fits(alg, kid))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_of_other_uses_and_kinds_are_skipped_not_fatal() {
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "a", "k": URL_SAFE_NO_PAD.encode([7u8; 32])},
            {"kty": "oct", "kid": "enc", "use": "enc", "k": "AAAA"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
            {"kty": "oct", "kid": "confused", "alg": "RS256", "k": "AAAA"},
        ]});
        let set = KeySet::from_jwks(jwks.to_string().as_bytes()).expect("a JWKS");
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped().len(), 4, "{:?}", set.skipped());
        assert!(set.has_kid("a"));
    }

    #[test]
    fn a_key_fits_only_its_own_algorithm_family_and_kid() {
        let key =
            TrustedKey::from_jwk(&json!({"kty": "oct", "kid": "a", "k": "AAAA"})).expect("oct key");
        assert!(key.fits(JwsAlg::Hs256, Some("a")));
        assert!(key.fits(JwsAlg::Hs256, None));
        assert!(!key.fits(JwsAlg::Hs256, Some("b")));
        assert!(!key.fits(JwsAlg::Rs256, Some("a")));
    }

    #[test]
    fn bad_documents_are_errors() {
        for bad in [&b"not json"[..], b"[]", b"{\"keys\": 3}"] {
            assert!(KeySet::from_jwks(bad).is_err());
        }
        let short = json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 31]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        assert!(TrustedKey::from_jwk(&short).is_err());
    }
}

//! JWT verification that holds against the classic attacks: allow-listed algorithms only (never
//! `none`), the key's kind must be the algorithm's (no HMAC keyed with an RSA key), keys never
//! come from the token (`jwk`, `jku`, `x5u`, `x5c` are refused), `crit` is honoured (no extension
//! is implemented, so any is refused), strict compact parsing with a size limit, then the
//! registered claims. Signatures are checked by `jsonwebtoken` (and `p521` for ES512, which it
//! lacks); the parsing and header rules around it are ours because that crate's `decode` is
//! lenient where this must not be (duplicate members, `crit`, key-bearing headers, non-JSON
//! payloads for bare JWS).

mod alg;
mod cache;
mod claims;
mod compact;
mod keys;
mod reject;

pub use alg::JwsAlg;
pub use cache::{DEFAULT_CACHED_TOKENS, TokenCache};
pub use claims::{ClaimRules, Claims};
pub use compact::parse_object;
pub use keys::{Curve, KeyError, KeyKind, KeySet, TrustedKey};
pub use reject::{RejectReason, Rejection};

use serde_json::Value;

/// Tokens longer than this are refused unless a provider says otherwise.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Header members that carry or point at a key: a verifier that used them would let the token
/// choose the key that verifies it.
const KEY_BEARING_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Header members that only a JWE has.
const JWE_HEADERS: [&str; 2] = ["enc", "zip"];

/// Settings of one JWT provider that do not change when its keys do.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub allowed_algs: Vec<JwsAlg>,
    pub claims: ClaimRules,
    pub max_token_bytes: usize,
}

/// Why a [`VerifierConfig`] is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("allowed algorithms: the list is empty")]
    NoAlgorithms,
    #[error("allowed algorithms: {0:?} is not one the verifier implements (`none` never is)")]
    UnknownAlgorithm(String),
    #[error("max token bytes: must be more than 0")]
    ZeroSize,
}

impl VerifierConfig {
    /// A config from algorithm names as written in policy.
    pub fn new(
        alg_names: &[impl AsRef<str>],
        claims: ClaimRules,
        max_token_bytes: usize,
    ) -> Result<VerifierConfig, ConfigError> {
        if alg_names.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        let allowed_algs = alg_names
            .iter()
            .map(|name| {
                JwsAlg::from_name(name.as_ref())
                    .ok_or_else(|| ConfigError::UnknownAlgorithm(name.as_ref().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if max_token_bytes == 0 {
            return Err(ConfigError::ZeroSize);
        }
        Ok(VerifierConfig {
            allowed_algs,
            claims,
            max_token_bytes,
        })
    }
}

/// What a verified header said, for logs and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHeader {
    pub alg: JwsAlg,
    pub kid: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJwt {
    pub header: VerifiedHeader,
    pub claims: Claims,
}

/// Verifies a JWT: signature by one of `keys`, then the claims at `now` (seconds since the
/// epoch). The payload must be a JSON object with no repeated member.
pub fn verify_jwt(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
    now: u64,
) -> Result<VerifiedJwt, Rejection> {
    let (header, payload) = verify_signature(config, keys, token)?;
    let claims = parse_object(&payload)
        .map_err(|detail| Rejection::new(RejectReason::Malformed, format!("claims: {detail}")))?;
    config.claims.check(&claims, now)?;
    Ok(VerifiedJwt {
        header,
        claims: Claims(claims),
    })
}

/// Verifies a bare JWS (any payload bytes): header rules and signature only.
pub fn verify_jws(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
) -> Result<Vec<u8>, Rejection> {
    verify_signature(config, keys, token).map(|(_, payload)| payload)
}

fn verify_signature(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
) -> Result<(VerifiedHeader, Vec<u8>), Rejection> {
    let jws = compact::parse(token, config.max_token_bytes)?;
    let header = check_header(config, &jws.header)?;
    let candidates: Vec<&TrustedKey> = keys.candidates(header.alg, header.kid.as_deref()).collect();
    if candidates.is_empty() {
        return Err(Rejection::new(
            RejectReason::KeySelection,
            match &header.kid {
                Some(_) => format!("no trusted {} key has the token's kid", header.alg),
                None => format!("no trusted key for {}", header.alg),
            },
        ));
    }
    let verified = candidates
        .into_iter()
        .any(|key| key.verifies(header.alg, jws.signing_input.as_bytes(), &jws.signature));
    if !verified {
        return Err(Rejection::new(
            RejectReason::Signature,
            format!("no trusted key verifies the {} signature", header.alg),
        ));
    }
    Ok((header, jws.payload))
}

fn check_header(
    config: &VerifierConfig,
    header: &serde_json::Map<String, Value>,
) -> Result<VerifiedHeader, Rejection> {
    let malformed = |detail: &str| Rejection::new(RejectReason::Malformed, detail);
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("header has no string `alg`"))?;
    let alg = JwsAlg::from_name(alg_name)
        .filter(|alg| config.allowed_algs.contains(alg))
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::AlgNotAllowed,
                format!("`alg` {alg_name:?} is not allowed"),
            )
        })?;
    if let Some(crit) = header.get("crit") {
        let names = crit
            .as_array()
            .filter(|names| !names.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    RejectReason::UnsupportedCrit,
                    "`crit` must be a non-empty array",
                )
            })?;
        let first = names.first().and_then(Value::as_str).unwrap_or("?");
        return Err(Rejection::new(
            RejectReason::UnsupportedCrit,
            format!("`crit` names {first:?}, an extension this verifier does not implement"),
        ));
    }
    if let Some(b64) = header.get("b64")
        && b64 != &Value::Bool(true)
    {
        return Err(Rejection::new(
            RejectReason::UnsupportedCrit,
            "unencoded payloads (`b64`) are not supported",
        ));
    }
    if let Some(name) = KEY_BEARING_HEADERS
        .iter()
        .find(|name| header.contains_key(**name))
    {
        return Err(Rejection::new(
            RejectReason::KeySelection,
            format!("header carries `{name}`: keys never come from the token"),
        ));
    }
    if JWE_HEADERS.iter().any(|name| header.contains_key(*name)) {
        return Err(malformed("an encrypted token (JWE) is not accepted"));
    }
    if let Some(cty) = header.get("cty") {
        let cty = cty
            .as_str()
            .ok_or_else(|| malformed("`cty` is not a string"))?;
        if cty.eq_ignore_ascii_case("JWT") {
            return Err(malformed("nested tokens (`cty: JWT`) are not accepted"));
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("`kid` is not a string")),
    };
    Ok(VerifiedHeader { alg, kid })
}

#[cfg(test)]
mod tests;

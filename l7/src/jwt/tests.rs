//! Verifier tests with tokens signed here (HMAC and P-521); the RFC vectors and the attack
//! corpus run through the conformance suite (`cargo xtask conformance jwt`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::json;

use super::*;

const SECRET: [u8; 32] = [42; 32];
const NOW: u64 = 1_700_000_000;

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn hs256(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap_or_default();
    format!("{input}.{signature}")
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://idp", "aud": "api", "sub": "alice", "exp": NOW + 60})
}

fn keys() -> KeySet {
    let oct = json!({"kty": "oct", "kid": "k1", "k": URL_SAFE_NO_PAD.encode(SECRET)});
    KeySet::from_jwks(json!({"keys": [oct]}).to_string().as_bytes()).unwrap_or_default()
}

fn config() -> VerifierConfig {
    let rules = ClaimRules {
        issuer: Some("https://idp".into()),
        audiences: vec!["api".into()],
        leeway_s: 0,
        required: vec!["exp".into()],
    };
    VerifierConfig::new(&["HS256", "ES512"], rules, DEFAULT_MAX_TOKEN_BYTES)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn reason(token: &str) -> Option<RejectReason> {
    verify_jwt(&config(), &keys(), token, NOW)
        .err()
        .map(|r| r.reason)
}

#[test]
fn a_good_token_yields_its_claims() {
    let token = hs256(&json!({"alg": "HS256", "kid": "k1"}), &claims(), &SECRET);
    let verified = verify_jwt(&config(), &keys(), &token, NOW).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(verified.claims.subject(), Some("alice"));
    assert_eq!(verified.header.alg, JwsAlg::Hs256);
    assert_eq!(verified.header.kid.as_deref(), Some("k1"));
}

#[test]
fn header_attacks_are_refused_for_the_right_reason() {
    let cases = [
        (json!({"alg": "none"}), RejectReason::AlgNotAllowed),
        (json!({"alg": "nOnE"}), RejectReason::AlgNotAllowed),
        (
            json!({"alg": "RS256", "kid": "k1"}),
            RejectReason::AlgNotAllowed,
        ),
        (json!({"alg": 5}), RejectReason::Malformed),
        (
            json!({"alg": "HS256", "kid": "k2"}),
            RejectReason::KeySelection,
        ),
        (json!({"alg": "HS256", "kid": 7}), RejectReason::Malformed),
        (
            json!({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}),
            RejectReason::KeySelection,
        ),
        (
            json!({"alg": "HS256", "jku": "http://evil"}),
            RejectReason::KeySelection,
        ),
        (
            json!({"alg": "HS256", "x5u": "http://evil"}),
            RejectReason::KeySelection,
        ),
        (
            json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
            RejectReason::UnsupportedCrit,
        ),
        (
            json!({"alg": "HS256", "crit": []}),
            RejectReason::UnsupportedCrit,
        ),
        (
            json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
            RejectReason::UnsupportedCrit,
        ),
        (
            json!({"alg": "HS256", "cty": "JWT"}),
            RejectReason::Malformed,
        ),
        (
            json!({"alg": "HS256", "enc": "A128GCM"}),
            RejectReason::Malformed,
        ),
    ];
    for (header, expected) in cases {
        let token = hs256(&header, &claims(), &SECRET);
        assert_eq!(reason(&token), Some(expected), "{header}");
    }
}

#[test]
fn signature_tampering_is_refused() {
    let token = hs256(&json!({"alg": "HS256"}), &claims(), &SECRET);
    let (input, _) = token.rsplit_once('.').unwrap_or_default();
    assert_eq!(reason(&format!("{input}.")), Some(RejectReason::Signature));
    let forged = hs256(&json!({"alg": "HS256"}), &claims(), &[1; 32]);
    assert_eq!(reason(&forged), Some(RejectReason::Signature));
    let mut other = claims();
    other["sub"] = json!("mallory");
    let (_, signature) = token.rsplit_once('.').unwrap_or_default();
    let swapped = format!(
        "{}.{}.{signature}",
        b64(&json!({"alg": "HS256"})),
        b64(&other)
    );
    assert_eq!(reason(&swapped), Some(RejectReason::Signature));
}

#[test]
fn short_hmac_secrets_never_verify() {
    let short = [9u8; 16];
    let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(short)});
    let keys = KeySet::from_jwks(json!({"keys": [oct]}).to_string().as_bytes()).unwrap_or_default();
    let token = hs256(&json!({"alg": "HS256"}), &claims(), &short);
    let rejection = verify_jwt(&config(), &keys, &token, NOW)
        .err()
        .map(|r| r.reason);
    assert_eq!(rejection, Some(RejectReason::Signature));
}

#[test]
fn duplicate_claims_are_malformed() {
    let header = b64(&json!({"alg": "HS256"}));
    let payload = URL_SAFE_NO_PAD
        .encode(r#"{"sub":"a","sub":"b","exp":9999999999,"iss":"https://idp","aud":"api"}"#);
    let input = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(&SECRET),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap_or_default();
    assert_eq!(
        reason(&format!("{input}.{signature}")),
        Some(RejectReason::Malformed)
    );
}

#[test]
fn es512_verifies_with_p521() {
    use p521::ecdsa::signature::Signer as _;
    let mut scalar = [0u8; 66];
    scalar[65] = 7;
    let signing = p521::ecdsa::SigningKey::from_slice(&scalar).unwrap_or_else(|e| panic!("{e}"));
    let point = p521::ecdsa::VerifyingKey::from(&signing).to_encoded_point(false);
    let (x, y) = (point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()));
    let jwk = json!({"kty": "EC", "crv": "P-521", "kid": "p",
        "x": URL_SAFE_NO_PAD.encode(x.unwrap_or_default()),
        "y": URL_SAFE_NO_PAD.encode(y.unwrap_or_default())});
    let keys = KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap_or_default();
    assert_eq!(keys.len(), 1, "{:?}", keys.skipped());
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "ES512", "kid": "p"})),
        b64(&claims())
    );
    let signature: p521::ecdsa::Signature = signing.sign(input.as_bytes());
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    assert!(verify_jwt(&config(), &keys, &token, NOW).is_ok());
    let der = signature.to_der();
    let der_token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(der.as_bytes()));
    let rejection = verify_jwt(&config(), &keys, &der_token, NOW)
        .err()
        .map(|r| r.reason);
    assert_eq!(rejection, Some(RejectReason::Signature));
}

#[test]
fn config_refuses_none_and_empty_lists() {
    let rules = ClaimRules::default();
    assert!(VerifierConfig::new(&["none"], rules.clone(), 10).is_err());
    assert!(VerifierConfig::new(&[] as &[&str], rules.clone(), 10).is_err());
    assert!(VerifierConfig::new(&["RS256"], rules, 0).is_err());
}

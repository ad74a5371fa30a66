//! `jwt_token` and `jwks_document`: the JWT verifier's front end and the JWKS reader.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rampart_l7::jwt::{self, ClaimRules, JwsAlg, KeySet, VerifierConfig};

/// Public test keys of RFC 7515 and RFC 7520 (the HMAC keys are published too): tokens of those
/// RFCs verify, so the fuzzer starts from accepted tokens as well as refused ones.
const KEYS: &[u8] = include_bytes!("jwt_keys.json");
/// A time at which RFC 7515's example tokens (`exp` 1300819380) are still valid.
pub const NOW: u64 = 1_300_819_000;

fn verifier() -> &'static (VerifierConfig, KeySet) {
    static VERIFIER: OnceLock<(VerifierConfig, KeySet)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let names: Vec<&str> = JwsAlg::ALL.iter().map(|a| a.name()).collect();
        let config =
            VerifierConfig::new(&names, ClaimRules::default(), jwt::DEFAULT_MAX_TOKEN_BYTES)
                .unwrap_or_else(|e| panic!("the fuzz verifier's settings: {e}"));
        let keys =
            KeySet::from_jwks(KEYS).unwrap_or_else(|e| panic!("the fuzz verifier's keys: {e}"));
        assert!(keys.skipped().is_empty(), "{:?}", keys.skipped());
        (config, keys)
    })
}

/// Verifies `data` as a compact token against every algorithm and the RFCs' keys. A token it
/// accepts: an allowed algorithm, the same payload as a bare JWS, and refused once its
/// signature changes.
pub fn jwt_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (config, keys) = verifier();
    let Ok(verified) = jwt::verify_jwt(config, keys, token, NOW) else {
        return;
    };
    assert!(config.allowed_algs.contains(&verified.header.alg));
    let payload = jwt::verify_jws(config, keys, token)
        .unwrap_or_else(|e| panic!("accepted as a JWT, refused as a JWS: {e:?}"));
    let mut parts = token.rsplitn(2, '.');
    let (Some(signature), Some(signed)) = (parts.next(), parts.next()) else {
        panic!("an accepted token without three parts: {token:?}");
    };
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap_or_else(|e| panic!("an accepted signature that is not base64url: {e}"));
    assert!(!bytes.is_empty(), "an accepted token without a signature");
    bytes[0] ^= 1;
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert!(
        jwt::verify_jws(config, keys, &forged).is_err(),
        "a changed signature verified"
    );
    let claims = jwt::parse_object(&payload)
        .unwrap_or_else(|e| panic!("accepted claims that are not one object: {e}"));
    assert_eq!(claims, verified.claims.0);
}

/// Reads `data` as a JWKS document; every key read answers its questions, and no junk
/// signature (the document itself) verifies under any algorithm.
pub fn jwks_document(data: &[u8]) {
    let Ok(set) = KeySet::from_jwks(data) else {
        return;
    };
    for key in set.keys() {
        let kid = key.kid().map(str::to_owned);
        let _ = key.kind();
        for alg in JwsAlg::ALL {
            let _ = key.fits(alg, kid.as_deref());
            assert!(
                !key.verifies(alg, data, data),
                "a document verified as its own signature"
            );
        }
        if let Some(kid) = &kid {
            assert!(set.has_kid(kid));
        }
    }
}

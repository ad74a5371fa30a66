//! The example IdP's tokens: `policies/mesh/backend-api-l7.yaml` trusts RFC 7515's published
//! example RSA key (Appendix A.2, [`rampart_tests::rfc7515`]), whose private half is public too,
//! so the demo can play the corporate IdP and sign RS256 tokens that policy accepts. (Nobody may
//! trust this key outside a demo: the policy file says to replace it with the IdP's JWKS.)

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The `iss`, `aud` and `kid` the example policy's provider `corp-idp` expects.
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "api://shop-backend";
const KEY_ID: &str = "example-2026";

/// A token for `sub` in `groups`, valid for ten minutes, signed with the example key.
pub fn token(sub: &str, groups: &[&str]) -> anyhow::Result<String> {
    let der = rampart_tests::rfc7515::private_der()?;
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&der);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "groups": groups,
        "iat": now, "exp": now + 600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(KEY_ID.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).context("signing the demo token")
}

/// `token` with its claims rewritten to `sub` and the signature kept: what a client that edits
/// its own token sends.
pub fn tampered(token: &str, sub: &str) -> anyhow::Result<String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("not a compact JWS");
    };
    let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
    claims["sub"] = serde_json::Value::from(sub);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    Ok(format!("{header}.{claims}.{signature}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_token_keeps_its_signature() {
        let t = token("alice", &["order-readers"]).expect("token");
        let forged = tampered(&t, "admin").expect("tampered");
        assert_eq!(t.rsplit('.').next(), forged.rsplit('.').next());
        assert_ne!(t, forged);
    }
}

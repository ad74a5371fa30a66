//! The example IdP's tokens: `policies/mesh/backend-api-l7.yaml` trusts RFC 7515's published
//! example RSA key (Appendix A.2), whose private half is public too, so the demo can play the
//! corporate IdP and sign RS256 tokens that policy accepts. (Nobody may trust this key outside
//! a demo: the policy file says to replace it with the IdP's JWKS.)

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// RFC 7515 Appendix A.2's key as PKCS#1 DER (base64): n, e and d as the RFC prints them, with
/// p, q and the CRT values derived from them; it reproduces the RFC's example signature.
const RFC7515_A2_KEY_DER: &str = concat!(
    "MIIEowIBAAKCAQEAofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd/wWJcyQoTbji9k0l8W26mPddxHmfHQp+Vaw+4qPCJ",
    "rcS2mJPMEzP1Pt0Bm4d4QlL+yRT+SFd2lZS+pCgNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb/7OMg0LOL+",
    "bSf63kpaSHSXndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh",
    "9kG4LT6/I5IhlJH7aGhyxXFvUK+DWNmoudF8NAco9/h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQID",
    "AQABAoIBABKucaRpzQorw35SbEUAVx8dYXUdZOlJcHtiWQ+dC6V8ljxAHj/PLyzTveyI5QO/xkObCyjIL303l2cfUh",
    "Pu2MFaJdjVzqACXuOrLot/eSFvxjvqVidTtAZExqFRJ9mylUVAoLvhowVWmC1On95fZCXxTUtxNEG1Xcc7m0rtzJKs",
    "45J+N/V9DP1edYH6USyPSWGp6wuA+KgHRnKKVf9GRx80JQY7nVNkL17eHoTWEwga+lwi0FEoW9Y7lDtWXYmKBWhUE+",
    "U8PGxlJf8f40493HDw1WRQ/aSLoS4QTp3rn7gYgeHEvfJdkkf0UMhlknlo53M09EFPdadQ4TlUbjqKc50CgYEA4BzE",
    "EOtIpmVdVEZNCqS7baC4crd0pqnRH/5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw/Py5PJd",
    "TJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn+nXqhJTBgIPgtldC+KDV5z+y2XDwGUcCgYEAuQPEfgmV",
    "tjL0Uyyx88GZFF1fOunH3+7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD/YwD6",
    "6t62wDmpe/HlB+TnBA+njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdcCgYAHAp9XcCSrn8wV",
    "kMVkKdb7DOX4IKjzdahm+ctDAJN4O/y7OW5FKebvUjdAIt2GuoTZ71iTG+7F0F+lP88jtjP4U4qe7VHoewl4MKOfXZ",
    "KTe+YCS1XbNvfgwJ3Ltyl1OH9hWvu2yza7q+d5PCsDzqtm27kxuvULVeya+TEdAB1ijQKBgQCH/3r6YrVH/uCWGy6b",
    "zV1nGNOdjKc9tmkfOJmN54dxdixdpozCQ6U4OxZrsj3FcOhHBsqAHvX2uuYjagqvo3cOj1TRqNocX40omfCCMx3bD1",
    "yPPf/6TI2XECva/ggqEY2mYzmIiA5LVVmc5nrybr+lssFKneeyxN2Wq93S0iJMdQKBgCGHewxzoa1r8ZMD0LETNrTo",
    "K423K377UCYqXfg5XMclbrjPbEC3YI1ZNqMtuhdBJqUnBi6tjKMF+34Xf0CUN8ncuXGO2CAYvO8PdyCixHX52ybaDj",
    "y1FtCE6yUXjoKNXKvUm7MWGsAYH6f4IegOetN5NvmUMFStCSkh7ixZLkN1",
);

/// The `iss`, `aud` and `kid` the example policy's provider `corp-idp` expects.
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "api://shop-backend";
const KEY_ID: &str = "example-2026";

/// A token for `sub` in `groups`, valid for ten minutes, signed with the example key.
pub fn token(sub: &str, groups: &[&str]) -> anyhow::Result<String> {
    let der = STANDARD
        .decode(RFC7515_A2_KEY_DER)
        .context("the example key's base64")?;
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

    /// The derived key is RFC 7515's: it reproduces Appendix A.2's signature.
    #[test]
    fn the_key_signs_as_rfc_7515_appendix_a2_says() {
        let der = STANDARD.decode(RFC7515_A2_KEY_DER).expect("base64");
        let key = jsonwebtoken::EncodingKey::from_rsa_der(&der);
        let input = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::RS256)
                .expect("signs");
        assert!(
            signature
                .starts_with("cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7")
                && signature.ends_with("p0igcN_IoypGlUPQGe77Rw"),
            "{signature}"
        );
    }

    #[test]
    fn a_tampered_token_keeps_its_signature() {
        let t = token("alice", &["order-readers"]).expect("token");
        let forged = tampered(&t, "admin").expect("tampered");
        assert_eq!(t.rsplit('.').next(), forged.rsplit('.').next());
        assert_ne!(t, forged);
    }
}

//! RFC 7515 Appendix A.2's RSA key, whose private half the RFC publishes (kept with the JWT
//! conformance cases in `tests/conformance/jwt_keys.json`): the demo signs the example IdP's
//! tokens with it (`policies/mesh/backend-api-l7.yaml` trusts its public half), and the proxy
//! benchmark its RS256 tokens.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::BigUint;
use rsa::pkcs1::EncodeRsaPrivateKey as _;

const KEYS: &str = include_str!("../conformance/jwt_keys.json");

/// The key's JWK (with its private members).
pub fn jwk() -> anyhow::Result<serde_json::Value> {
    let keys: serde_json::Value = serde_json::from_str(KEYS).context("jwt_keys.json")?;
    Ok(keys["keys"]["rfc7515-a2-rsa"]["jwk"].clone())
}

/// The private key as PKCS#1 DER (what `jsonwebtoken::EncodingKey::from_rsa_der` takes).
pub fn private_der() -> anyhow::Result<Vec<u8>> {
    let jwk = jwk()?;
    let int = |name: &str| -> anyhow::Result<BigUint> {
        let text = jwk[name]
            .as_str()
            .with_context(|| format!("jwt_keys.json: rfc7515-a2-rsa has no {name}"))?;
        Ok(BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(text)?))
    };
    let private = rsa::RsaPrivateKey::from_components(
        int("n")?,
        int("e")?,
        int("d")?,
        vec![int("p")?, int("q")?],
    )?;
    Ok(private.to_pkcs1_der()?.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    /// The key reproduces the RFC's example signature.
    #[test]
    fn the_key_signs_as_the_rfc_says() {
        let der = super::private_der().expect("key");
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
}

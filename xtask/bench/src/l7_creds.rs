//! Credentials for the proxy suite's L7 rows: an RS256 token signed with RFC 7515's published
//! example RSA key (kept with the JWT conformance cases), its JWKS, and an API key. RS256 is
//! what most IdPs sign with, so the JWT row measures a real RSA verification per request.

pub const ISSUER: &str = "https://idp.bench.test";
pub const AUDIENCE: &str = "api://bench";
pub const API_KEY: &str = "bench-key-8d2f61c0";

/// (JWKS JSON with the public key, a token valid for a day).
pub fn jwt() -> anyhow::Result<(String, String)> {
    let jwk = rampart_tests::rfc7515::jwk()?;
    let der = rampart_tests::rfc7515::private_der()?;
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("bench-1".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user",
        "exp": now + 86_400, "iat": now});
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256",
        "use": "sig", "n": jwk["n"], "e": jwk["e"]}]});
    Ok((jwks.to_string(), token))
}

/// `dora`'s bcrypt hash (cost 5, of `wonderland`, made by libxcrypt): checked once, then
/// remembered by the agent, as for a client that sends the same credential again.
pub const HTPASSWD_DORA: &str = "$2b$05$abcdefghijklmnopqrstuuA0vov2GDneHB3.8.cv9UF9g.RdvScIW";

/// The OIDC row's cookie key (the policy's `cookie-secret`).
pub const COOKIE_SECRET: &str = "bench-cookie-secret-0123456789abcdef0123";

/// An `Authorization: Basic` header line.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A day-long session of `bench-user` for the `login` provider, as a login would seal it.
pub fn oidc_session() -> anyhow::Result<String> {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "bench-user".into());
    rampart_agent::l7::oidc::sealed_session(COOKIE_SECRET.as_bytes(), "login", claims, 86_400)
        .ok_or_else(|| anyhow::anyhow!("sealing the OIDC row's session"))
}

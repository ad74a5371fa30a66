//! `oidc`: browser users logged in at an OpenID provider by the authorization code flow with
//! PKCE, state and nonce; the session lives in a cookie sealed with a key from a Secret that
//! every agent reads, so it holds across nodes and restarts with no store to share.

use std::sync::Arc;

use crate::policy::spec::compact::Spanned;
use hyper::header::HeaderName;
use rampart_l7::jwt::{ClaimRules, VerifierConfig};

use super::super::diag::{Diagnostic, Origin};
use super::super::secret::{LABEL_HINT, SecretModel};
use super::super::spec::http::OidcSpec;
use super::HttpValidator;

pub const DEFAULT_REDIRECT_PATH: &str = "/oauth2/callback";
pub const DEFAULT_LOGOUT_PATH: &str = "/oauth2/logout";
pub const DEFAULT_COOKIE: &str = "rampart_session";
pub const DEFAULT_SESSION_S: u64 = 8 * 3600;
pub const MIN_SESSION_S: u64 = 5;
pub const MAX_SESSION_S: u64 = 7 * 24 * 3600;
/// Shortest cookie key.
pub const MIN_COOKIE_SECRET: usize = 32;
/// Leeway on the ID token's times.
pub const CLOCK_SKEW_S: u64 = 60;

#[derive(Clone)]
pub struct OidcProviderModel {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub secret: (String, String),
    /// Filled from the Secret once every object is read.
    pub client_secret: String,
    pub cookie_secret: Vec<u8>,
    pub redirect_path: String,
    pub redirect_uri: Option<String>,
    pub logout_path: String,
    pub post_logout_redirect_uri: Option<String>,
    pub scopes: Vec<String>,
    pub verifier: VerifierConfig,
    pub cookie_name: String,
    pub session_s: u64,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub origin: Origin,
}

impl std::fmt::Debug for OidcProviderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProviderModel")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcProviderModel {
    /// What a provider's live state depends on.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for part in [
            self.issuer.as_bytes(),
            self.client_id.as_bytes(),
            self.client_secret.as_bytes(),
            &self.cookie_secret,
            self.cookie_name.as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }
}

fn is_path(p: &str) -> bool {
    p.starts_with('/') && !p.contains(['?', '#', ' ', '\\']) && !p.contains("//")
}

impl HttpValidator<'_> {
    pub(super) fn oidc(
        &mut self,
        name: &str,
        spec: &Spanned<OidcSpec>,
    ) -> Option<OidcProviderModel> {
        let raw = &spec.value;
        let issuer = raw.issuer.value.trim().to_owned();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer
                .parse::<hyper::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .is_none()
        {
            self.error(&raw.issuer, "oidc.issuer: an https:// (or http://) URL");
            return None;
        }
        let r = &raw.secret_ref.value;
        if !crate::dns_name::is_dns_label(&r.namespace)
            || !crate::dns_name::is_dns_subdomain(&r.name)
        {
            self.error(
                &raw.secret_ref,
                "oidc.secretRef: namespace and name of a Secret",
            );
            return None;
        }
        if raw.client_id.is_empty() {
            self.error(spec, "oidc.clientId: required");
            return None;
        }
        let redirect_path = raw
            .redirect_path
            .clone()
            .unwrap_or_else(|| DEFAULT_REDIRECT_PATH.to_owned());
        let logout_path = raw
            .logout_path
            .clone()
            .unwrap_or_else(|| DEFAULT_LOGOUT_PATH.to_owned());
        if !is_path(&redirect_path) || !is_path(&logout_path) || redirect_path == logout_path {
            self.error(
                spec,
                "oidc: redirectPath and logoutPath are two different absolute paths",
            );
            return None;
        }
        let redirect_uri = match &raw.redirect_uri {
            None => None,
            Some(u) => match u.value.parse::<hyper::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("https" | "http"))
                        && uri.path() == redirect_path =>
                {
                    Some(u.value.clone())
                }
                _ => {
                    self.error(
                        u,
                        "oidc.redirectUri: an absolute http(s) URI whose path is redirectPath",
                    );
                    return None;
                }
            },
        };
        let cookie_name = raw
            .cookie_name
            .clone()
            .unwrap_or_else(|| DEFAULT_COOKIE.to_owned());
        if cookie_name.is_empty()
            || !cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            self.error(spec, "oidc.cookieName: letters, digits, _ - .");
            return None;
        }
        let session_s = match &raw.session_seconds {
            None => DEFAULT_SESSION_S,
            Some(s) if (MIN_SESSION_S..=MAX_SESSION_S).contains(&s.value) => s.value,
            Some(s) => {
                self.error(
                    s,
                    format!("oidc.sessionSeconds: {MIN_SESSION_S} to {MAX_SESSION_S}"),
                );
                return None;
            }
        };
        let algorithms = raw
            .algorithms
            .as_ref()
            .map_or_else(|| vec!["RS256".to_owned()], |a| a.value.clone());
        let rules = ClaimRules {
            issuer: Some(issuer.clone()),
            audiences: vec![raw.client_id.clone()],
            leeway_s: CLOCK_SKEW_S,
            required: vec!["exp".into(), "iat".into(), "sub".into()],
        };
        let verifier =
            match VerifierConfig::new(&algorithms, rules, rampart_l7::jwt::DEFAULT_MAX_TOKEN_BYTES)
            {
                Ok(v) => v,
                Err(e) => {
                    match &raw.algorithms {
                        Some(at) => self.error(at, format!("oidc.algorithms: {e}")),
                        None => self.error(spec, format!("oidc: {e}")),
                    }
                    return None;
                }
            };
        let mut claims_to_headers = Vec::new();
        for pair in raw.claims_to_headers.iter().flatten() {
            match HeaderName::from_bytes(pair.value.header.value.as_bytes()) {
                Ok(header) => claims_to_headers.push((pair.value.claim.clone(), header)),
                Err(_) => self.error(&pair.value.header, "not a valid header name"),
            }
        }
        let mut scopes = vec!["openid".to_owned()];
        for scope in raw
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["profile".into(), "email".into()])
        {
            if scope.is_empty() || scope.contains(' ') {
                self.error(spec, format!("oidc.scopes: {scope:?} is not a scope"));
                return None;
            }
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Some(OidcProviderModel {
            name: name.to_owned(),
            issuer,
            client_id: raw.client_id.clone(),
            secret: (r.namespace.clone(), r.name.clone()),
            client_secret: String::new(),
            cookie_secret: Vec::new(),
            redirect_path,
            redirect_uri,
            logout_path,
            post_logout_redirect_uri: raw.post_logout_redirect_uri.clone(),
            scopes,
            verifier,
            cookie_name,
            session_s,
            claims_to_headers,
            origin: self.so.at(&raw.secret_ref),
        })
    }
}

/// Fills an `oidc` provider's secrets from its Secret.
pub fn resolve_secret(
    model: &mut Arc<OidcProviderModel>,
    secrets: &std::collections::BTreeMap<(String, String), SecretModel>,
    diags: &mut Vec<Diagnostic>,
) {
    let p = Arc::make_mut(model);
    let (ns, name) = &p.secret;
    let Some(secret) = secrets.get(&p.secret) else {
        diags.push(Diagnostic::error(
            p.origin.clone(),
            format!("oidc.secretRef: no Secret {ns}/{name} in the policy set ({LABEL_HINT})"),
        ));
        return;
    };
    match secret
        .entries
        .get("client-secret")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
    {
        Some(s) if !s.is_empty() => p.client_secret = s.to_owned(),
        _ => diags.push(Diagnostic::error(
            p.origin.clone(),
            format!("Secret {ns}/{name}: no client-secret (the client's secret at the provider)"),
        )),
    }
    match secret.entries.get("cookie-secret") {
        Some(key) if key.len() >= MIN_COOKIE_SECRET => p.cookie_secret = key.clone(),
        _ => diags.push(Diagnostic::error(
            p.origin.clone(),
            format!(
                "Secret {ns}/{name}: cookie-secret must hold at least {MIN_COOKIE_SECRET} bytes (e.g. `openssl rand -base64 48`)"
            ),
        )),
    }
}

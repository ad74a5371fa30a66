//! The `oidc` provider: browser users logged in at an OpenID provider by the authorization
//! code flow (OpenID Connect Core §3.1) with PKCE (RFC 7636, S256), `state` and `nonce`.
//!
//! - A request with a valid session cookie is authenticated as the session's user (its ID
//!   token's claims); past the ID token's expiry, the refresh token renews it (a new cookie on
//!   the response), within the session's lifetime.
//! - Without one, a browser navigation (`Sec-Fetch-Mode: navigate`, or a GET/HEAD that accepts
//!   `text/html`) is redirected (302) to the provider's authorization endpoint, with a sealed
//!   login cookie holding the state, nonce, PKCE verifier and the page asked for; anything else
//!   (an API call) is refused 401, never redirected.
//! - `redirectPath` takes the provider's answer: the state must match the login cookie (each
//!   state is taken once), the code is exchanged at the token endpoint with the client's secret
//!   (HTTP Basic) and the verifier, the ID token verified (signature by the provider's JWKS,
//!   issuer, audience = the client, times, nonce); then a session cookie, and back to the page.
//! - `logoutPath` ends the session (the cookie cleared) and sends the browser to the provider's
//!   `end_session_endpoint` when it has one.
//!
//! Sessions are cookies that carry their own state, sealed (`seal`) with a key from a Secret
//! every agent reads: any node's agent opens them, before and after a restart, with no store to
//! share or lose. Each cookie is `Secure`, `HttpOnly`, `SameSite=Lax`, with a lifetime.

mod seal;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::StatusCode;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use rampart_common::reason::AuthnReason;
use rampart_l7::jwt::Claims;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::context::{Denial, Peer};
use super::fetch;
use super::jwks::RemoteJwks;
use crate::policy::http::OidcProviderModel;

pub use seal::Sealer;

/// How long a login may take at the provider.
pub const LOGIN_TTL_S: u64 = 600;
/// How long the provider's discovery document is used before it is read again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// States taken recently (a replayed answer is refused).
pub const MAX_TAKEN_STATES: usize = 100_000;
/// Token endpoint requests in flight at once per provider (code exchanges, refreshes,
/// revocations): a flood of callbacks (each costs the provider a request) or of expired
/// sessions waits here instead of reaching the provider.
pub const MAX_TOKEN_REQUESTS: usize = 16;
/// Longest wait for one of those; past it, 503 `idp_unavailable` (the login or session is kept
/// for a retry).
pub const TOKEN_REQUEST_WAIT: Duration = Duration::from_secs(2);

const SESSION: &str = "session";
const LOGIN: &str = "login";

/// A session, as its cookie carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// Random, per login: a logout on this agent refuses the session from then on.
    sid: String,
    /// The ID token's claims.
    claims: serde_json::Map<String, serde_json::Value>,
    /// The session ends then, whatever the tokens say (seconds since the epoch).
    ends: u64,
    /// The ID token's expiry: past it, the refresh token renews the claims.
    renew: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// For the provider's logout (`id_token_hint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// A login in progress, as its cookie carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Login {
    state: String,
    nonce: String,
    verifier: String,
    /// The path (and query) asked for before the login.
    return_to: String,
    redirect_uri: String,
    ends: u64,
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: String,
    token: String,
    end_session: Option<String>,
    revocation: Option<String>,
}

/// An `oidc` provider's live state.
pub struct OidcState {
    pub model: Arc<OidcProviderModel>,
    pub fingerprint: [u8; 32],
    keys: Arc<RemoteJwks>,
    sealer: Option<Sealer>,
    endpoints: tokio::sync::Mutex<Option<(Endpoints, Instant)>>,
    taken_states: Mutex<lru::LruCache<String, u64>>,
    /// Sessions logged out here, until they would have ended.
    ended: Mutex<lru::LruCache<String, u64>>,
    /// [`MAX_TOKEN_REQUESTS`].
    token_requests: tokio::sync::Semaphore,
}

impl std::fmt::Debug for OidcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OidcState({})", self.model.issuer)
    }
}

/// What the provider made of a request.
#[derive(Debug)]
pub enum Outcome {
    /// A session: the user's claims, and a renewed cookie for the response if it was renewed.
    Authenticated {
        claims: Claims,
        set_cookie: Option<HeaderValue>,
    },
    /// No session: a browser is sent to log in (if no other provider authenticates it).
    LoginRedirect(Denial),
    /// No session and not a browser navigation.
    Absent,
    /// A session cookie that does not open, or has ended.
    Invalid,
    /// The provider's own paths (the callback, logout): their answer.
    Respond(Denial),
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// Everything but RFC 3986's unreserved characters is escaped.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, ESCAPED),
                percent_encoding::utf8_percent_encode(v, ESCAPED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    ))
    .ok()
}

fn clear_cookie(name: &str) -> Option<HeaderValue> {
    set_cookie(name, "", 0)
}

/// 503 `idp_unavailable` for a request that found the token endpoint's turns all taken.
fn busy() -> Denial {
    respond(
        AuthnReason::IdpUnavailable,
        StatusCode::SERVICE_UNAVAILABLE,
        vec![
            (header::RETRY_AFTER, HeaderValue::from_static("1")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
}

fn respond(
    reason: AuthnReason,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Denial {
    let mut denial = Denial::new(reason, status);
    denial.headers = headers;
    denial
}

/// Whether a request is a browser's page navigation (not an API call or a sub-resource).
pub fn is_navigation(parts: &Parts) -> bool {
    if let Some(mode) = parts.headers.get("sec-fetch-mode") {
        return mode.as_bytes() == b"navigate";
    }
    matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD)
        && parts
            .headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
        && parts.headers.get("x-requested-with").is_none()
}

impl OidcState {
    pub fn new(model: Arc<OidcProviderModel>, keys: Arc<RemoteJwks>) -> OidcState {
        let capacity = NonZeroUsize::new(MAX_TAKEN_STATES).unwrap_or(NonZeroUsize::MIN);
        OidcState {
            fingerprint: model.fingerprint(),
            sealer: Sealer::new(&model.cookie_secret, &model.name),
            model,
            keys,
            endpoints: tokio::sync::Mutex::new(None),
            taken_states: Mutex::new(lru::LruCache::new(capacity)),
            ended: Mutex::new(lru::LruCache::new(capacity)),
            token_requests: tokio::sync::Semaphore::new(MAX_TOKEN_REQUESTS),
        }
    }

    /// A turn at the token endpoint, or `None` when none frees up within
    /// [`TOKEN_REQUEST_WAIT`] (counted as `idp_unavailable` by the caller).
    async fn token_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let turn = tokio::time::timeout(TOKEN_REQUEST_WAIT, self.token_requests.acquire()).await;
        match turn {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                tracing::warn!(provider = %self.model.name, "oidc: token endpoint requests all busy; refused with 503");
                None
            }
        }
    }

    /// The provider's signing keys (its discovery document's `jwks_uri`).
    pub fn keys(&self) -> &Arc<RemoteJwks> {
        &self.keys
    }

    /// The cookie that carries a login in progress.
    pub fn login_cookie(&self) -> String {
        format!("{}_login", self.model.cookie_name)
    }

    /// The request as this provider sees it.
    pub async fn authenticate(&self, parts: &Parts, peer: &Peer) -> Outcome {
        let path = parts.uri.path();
        if path == self.model.redirect_path {
            return Outcome::Respond(self.callback(parts).await);
        }
        if path == self.model.logout_path {
            return Outcome::Respond(self.logout(parts).await);
        }
        match self.session(parts).await {
            Some(Ok(outcome)) => outcome,
            Some(Err(())) if !is_navigation(parts) => Outcome::Invalid,
            Some(Err(_)) | None if is_navigation(parts) => {
                Outcome::LoginRedirect(self.login_redirect(parts, peer).await)
            }
            _ => Outcome::Absent,
        }
    }

    /// The session of the request's cookie: `None` without one; `Err` when it does not open
    /// or has ended and cannot be renewed.
    async fn session(&self, parts: &Parts) -> Option<Result<Outcome, ()>> {
        let text = cookie(parts, &self.model.cookie_name)?;
        let Some(session) = self
            .sealer
            .as_ref()
            .and_then(|s| s.open(SESSION, text))
            .and_then(|bytes| serde_json::from_slice::<Session>(&bytes).ok())
        else {
            tracing::debug!(provider = %self.model.name, "oidc: a session cookie that does not open");
            return Some(Err(()));
        };
        let now = now_s();
        let logged_out = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&session.sid)
            .is_some();
        if now >= session.ends || logged_out {
            return Some(Err(()));
        }
        if now < session.renew {
            return Some(Ok(Outcome::Authenticated {
                claims: Claims(session.claims),
                set_cookie: None,
            }));
        }
        let Some(refresh_token) = session.refresh_token.clone() else {
            return Some(Err(()));
        };
        let Some(_turn) = self.token_turn().await else {
            return Some(Ok(Outcome::Respond(busy())));
        };
        match self.refresh(session, &refresh_token).await {
            Some((renewed, cookie)) => Some(Ok(Outcome::Authenticated {
                claims: Claims(renewed.claims),
                set_cookie: Some(cookie),
            })),
            None => Some(Err(())),
        }
    }

    async fn endpoints(&self) -> Result<Endpoints, String> {
        let mut cached = self.endpoints.lock().await;
        if let Some((endpoints, at)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(endpoints.clone());
        }
        let issuer = &self.model.issuer;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let fetched = fetch::get(&url).await.map_err(|e| format!("{url}: {e}"))?;
        let document: serde_json::Value =
            serde_json::from_slice(&fetched.body).map_err(|e| format!("{url}: not JSON: {e}"))?;
        if document.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
            return Err(format!("{url}: its issuer is not {issuer}"));
        }
        let text = |name: &str| {
            document
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let endpoints = Endpoints {
            authorization: text("authorization_endpoint").ok_or("no authorization_endpoint")?,
            token: text("token_endpoint").ok_or("no token_endpoint")?,
            end_session: text("end_session_endpoint"),
            revocation: text("revocation_endpoint"),
        };
        *cached = Some((endpoints.clone(), Instant::now()));
        Ok(endpoints)
    }

    fn redirect_uri(&self, parts: &Parts, peer: &Peer) -> String {
        if let Some(uri) = &self.model.redirect_uri {
            return uri.clone();
        }
        let scheme = if peer.server_name.is_some() {
            "https"
        } else {
            "http"
        };
        let host = super::context::authority(parts).unwrap_or_default();
        format!("{scheme}://{host}{}", self.model.redirect_path)
    }

    async fn login_redirect(&self, parts: &Parts, peer: &Peer) -> Denial {
        let unavailable = || {
            respond(
                AuthnReason::IdpUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                Vec::new(),
            )
        };
        let endpoints = match self.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(provider = %self.model.name, error = %e, "oidc: the provider's discovery document");
                return unavailable();
            }
        };
        let (Some(state), Some(nonce), Some(verifier), Some(sealer)) = (
            random_token(),
            random_token(),
            random_token(),
            self.sealer.as_ref(),
        ) else {
            return unavailable();
        };
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let redirect_uri = self.redirect_uri(parts, peer);
        let return_to = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        let login = Login {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier,
            return_to,
            redirect_uri: redirect_uri.clone(),
            ends: now_s() + LOGIN_TTL_S,
        };
        let Some(sealed) = serde_json::to_vec(&login)
            .ok()
            .and_then(|json| sealer.seal(LOGIN, &json))
        else {
            return unavailable();
        };
        let scope = self.model.scopes.join(" ");
        let query = form_encode(&[
            ("response_type", "code"),
            ("client_id", &self.model.client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", &scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let separator = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{separator}{query}", endpoints.authorization);
        let mut headers = Vec::new();
        headers.extend(
            HeaderValue::from_str(&location)
                .ok()
                .map(|v| (header::LOCATION, v)),
        );
        headers.extend(
            set_cookie(&self.login_cookie(), &sealed, LOGIN_TTL_S).map(|v| (header::SET_COOKIE, v)),
        );
        headers.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        respond(AuthnReason::LoginRedirect, StatusCode::FOUND, headers)
    }

    /// The provider's answer at `redirectPath`.
    async fn callback(&self, parts: &Parts) -> Denial {
        let query = parts.uri.query().unwrap_or("");
        let clear_login: Vec<(HeaderName, HeaderValue)> = clear_cookie(&self.login_cookie())
            .map(|v| (header::SET_COOKIE, v))
            .into_iter()
            .collect();
        let refuse =
            |reason: AuthnReason, status: StatusCode| respond(reason, status, clear_login.clone());
        if let Some(error) = query_value(query, "error") {
            tracing::info!(provider = %self.model.name, %error, "oidc: the provider refused the login");
            return refuse(AuthnReason::InvalidCallback, StatusCode::UNAUTHORIZED);
        }
        let (Some(code), Some(state)) = (query_value(query, "code"), query_value(query, "state"))
        else {
            return refuse(AuthnReason::InvalidCallback, StatusCode::BAD_REQUEST);
        };
        let Some(sealer) = self.sealer.as_ref() else {
            return refuse(AuthnReason::IdpUnavailable, StatusCode::SERVICE_UNAVAILABLE);
        };
        let login = cookie(parts, &self.login_cookie())
            .and_then(|text| sealer.open(LOGIN, text))
            .and_then(|bytes| serde_json::from_slice::<Login>(&bytes).ok());
        let now = now_s();
        let Some(login) = login.filter(|l| l.state == state && now < l.ends) else {
            tracing::info!(provider = %self.model.name, "oidc: an answer without its login (no cookie, another state, or late)");
            return refuse(AuthnReason::InvalidCallback, StatusCode::BAD_REQUEST);
        };
        // Before the state is taken: a login refused as busy can be answered again.
        let Some(_turn) = self.token_turn().await else {
            return busy();
        };
        {
            let mut taken = self.taken_states.lock().unwrap_or_else(|e| e.into_inner());
            if taken.put(state.clone(), now).is_some() {
                tracing::info!(provider = %self.model.name, "oidc: a state answered twice; refused");
                return refuse(AuthnReason::InvalidCallback, StatusCode::BAD_REQUEST);
            }
        }
        let endpoints = match self.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(provider = %self.model.name, error = %e, "oidc: the provider's discovery document");
                return refuse(AuthnReason::IdpUnavailable, StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let form = form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &login.redirect_uri),
            ("code_verifier", &login.verifier),
        ]);
        let tokens = match self.token_request(&endpoints.token, form).await {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::info!(provider = %self.model.name, error = %e, "oidc: the code exchange failed");
                return refuse(AuthnReason::InvalidCallback, StatusCode::UNAUTHORIZED);
            }
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return refuse(AuthnReason::InvalidCallback, StatusCode::UNAUTHORIZED);
        };
        let claims = match self.verify_id_token(&id_token, Some(&login.nonce)).await {
            Ok(claims) => claims,
            Err(reason) => return refuse(reason, StatusCode::UNAUTHORIZED),
        };
        let Some(sid) = random_token() else {
            return refuse(AuthnReason::IdpUnavailable, StatusCode::SERVICE_UNAVAILABLE);
        };
        let session = Session {
            sid,
            renew: claims
                .get("exp")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(now),
            claims: without_protocol_claims(claims),
            ends: now + self.model.session_s,
            refresh_token: tokens.refresh_token,
            id_token: Some(id_token),
        };
        let Some(cookie) = self.seal_session(&session) else {
            return refuse(AuthnReason::IdpUnavailable, StatusCode::SERVICE_UNAVAILABLE);
        };
        let mut headers = clear_login;
        headers.push((header::SET_COOKIE, cookie));
        let back = same_site_path(&login.return_to).to_owned();
        headers.extend(
            HeaderValue::from_str(&back)
                .ok()
                .map(|v| (header::LOCATION, v)),
        );
        headers.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        respond(AuthnReason::LoginCallback, StatusCode::FOUND, headers)
    }

    fn seal_session(&self, session: &Session) -> Option<HeaderValue> {
        let mut session = session.clone();
        let mut sealed = self
            .sealer
            .as_ref()?
            .seal(SESSION, &serde_json::to_vec(&session).ok()?)?;
        // A cookie a browser would drop: without the ID token (logout then names the client).
        if sealed.len() > seal::MAX_SEALED_BYTES - 200 {
            session.id_token = None;
            sealed = self
                .sealer
                .as_ref()?
                .seal(SESSION, &serde_json::to_vec(&session).ok()?)?;
        }
        if sealed.len() > seal::MAX_SEALED_BYTES - 200 {
            tracing::warn!(provider = %self.model.name, bytes = sealed.len(), "oidc: the session is too large for a cookie");
            return None;
        }
        let max_age = session.ends.saturating_sub(now_s());
        set_cookie(&self.model.cookie_name, &sealed, max_age)
    }

    async fn logout(&self, parts: &Parts) -> Denial {
        let session = cookie(parts, &self.model.cookie_name)
            .and_then(|text| self.sealer.as_ref()?.open(SESSION, text))
            .and_then(|bytes| serde_json::from_slice::<Session>(&bytes).ok());
        let mut headers: Vec<(HeaderName, HeaderValue)> = clear_cookie(&self.model.cookie_name)
            .map(|v| (header::SET_COOKIE, v))
            .into_iter()
            .collect();
        headers.push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        let endpoints = self.endpoints().await.ok();
        if let Some(session) = &session {
            self.ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(session.sid.clone(), session.ends);
            // The refresh token dies with the session (RFC 7009), so a copy of the cookie
            // elsewhere lasts no longer than its ID token.
            if let (Some(token), Some(endpoint)) = (
                &session.refresh_token,
                endpoints.as_ref().and_then(|e| e.revocation.clone()),
            ) {
                let form = form_encode(&[("token", token), ("token_type_hint", "refresh_token")]);
                // Busy: the session still ends here (the ended list); the refresh token lives
                // on at the provider until it expires.
                let revoked = match self.token_turn().await {
                    Some(_turn) => self.token_request_raw(&endpoint, form).await,
                    None => Err("token endpoint requests all busy".to_owned()),
                };
                if let Err(e) = revoked {
                    tracing::info!(provider = %self.model.name, error = %e, "oidc: revoking the refresh token");
                }
            }
        }
        let end_session = endpoints.and_then(|e| e.end_session);
        let location = match end_session {
            Some(endpoint) => {
                let mut params: Vec<(&str, &str)> = vec![("client_id", &self.model.client_id)];
                let hint = session.as_ref().and_then(|s| s.id_token.clone());
                if let Some(hint) = &hint {
                    params.push(("id_token_hint", hint));
                }
                if let Some(uri) = &self.model.post_logout_redirect_uri {
                    params.push(("post_logout_redirect_uri", uri));
                }
                let separator = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{separator}{}", form_encode(&params))
            }
            None => self
                .model
                .post_logout_redirect_uri
                .clone()
                .unwrap_or_else(|| "/".to_owned()),
        };
        headers.extend(
            HeaderValue::from_str(&location)
                .ok()
                .map(|v| (header::LOCATION, v)),
        );
        respond(AuthnReason::Logout, StatusCode::FOUND, headers)
    }

    /// A token endpoint request with the client's credentials (HTTP Basic, RFC 6749 §2.3.1).
    async fn token_request(&self, endpoint: &str, form: String) -> Result<TokenResponse, String> {
        let fetched = self.token_request_raw(endpoint, form).await?;
        serde_json::from_slice(&fetched.body).map_err(|e| format!("the token response: {e}"))
    }

    async fn token_request_raw(
        &self,
        endpoint: &str,
        form: String,
    ) -> Result<fetch::Fetched, String> {
        let encode = |s: &str| form_encode(&[("", s)])[1..].to_owned();
        let credentials = format!(
            "{}:{}",
            encode(&self.model.client_id),
            encode(&self.model.client_secret)
        );
        fetch::post_form(
            endpoint,
            fetch::Form {
                authorization: Some(format!("Basic {}", STANDARD.encode(credentials))),
                body: form,
            },
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// The ID token's claims, if it verifies and (on login) carries the nonce.
    async fn verify_id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthnReason> {
        let now = now_s();
        let mut keys = self.keys.keys();
        if keys.is_none() {
            self.keys
                .refresh_for_unknown_kid(super::jwks::KID_REFRESH_WAIT)
                .await;
            keys = self.keys.keys();
        }
        let Some(mut set) = keys else {
            return Err(AuthnReason::JwksUnavailable);
        };
        let mut verified = rampart_l7::jwt::verify_jwt(&self.model.verifier, &set, token, now);
        if matches!(&verified, Err(r) if r.reason == rampart_l7::jwt::RejectReason::KeySelection)
            && self
                .keys
                .refresh_for_unknown_kid(super::jwks::KID_REFRESH_WAIT)
                .await
            && let Some(fresh) = self.keys.keys()
        {
            set = fresh;
            verified = rampart_l7::jwt::verify_jwt(&self.model.verifier, &set, token, now);
        }
        let claims = match verified {
            Ok(v) => v.claims.0,
            Err(rejection) => {
                tracing::info!(provider = %self.model.name, %rejection, "oidc: an ID token refused");
                return Err(AuthnReason::InvalidCallback);
            }
        };
        if let Some(nonce) = nonce
            && claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce)
        {
            tracing::info!(provider = %self.model.name, "oidc: an ID token for another login (nonce)");
            return Err(AuthnReason::InvalidCallback);
        }
        Ok(claims)
    }

    /// Renews a session whose ID token expired.
    async fn refresh(
        &self,
        mut session: Session,
        refresh_token: &str,
    ) -> Option<(Session, HeaderValue)> {
        let endpoints = self.endpoints().await.ok()?;
        let form = form_encode(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ]);
        let tokens = match self.token_request(&endpoints.token, form).await {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::info!(provider = %self.model.name, error = %e, "oidc: a refresh failed; the session ends");
                return None;
            }
        };
        let now = now_s();
        match &tokens.id_token {
            Some(id_token) => {
                let claims = self.verify_id_token(id_token, None).await.ok()?;
                if claims.get("sub") != session.claims.get("sub") {
                    return None;
                }
                session.renew = claims
                    .get("exp")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(now);
                session.claims = without_protocol_claims(claims);
                session.id_token = Some(id_token.clone());
            }
            None => session.renew = now + tokens.expires_in.unwrap_or(60),
        }
        if tokens.refresh_token.is_some() {
            session.refresh_token = tokens.refresh_token;
        }
        let cookie = self.seal_session(&session)?;
        Some((session, cookie))
    }
}

/// The value of a session cookie for `claims`, lasting `lifetime_s`, as a login through
/// `provider` would set it (the benchmarks' sessions, without a browser).
pub fn sealed_session(
    cookie_secret: &[u8],
    provider: &str,
    claims: serde_json::Map<String, serde_json::Value>,
    lifetime_s: u64,
) -> Option<String> {
    let now = now_s();
    let session = Session {
        sid: random_token()?,
        claims,
        ends: now + lifetime_s,
        renew: now + lifetime_s,
        refresh_token: None,
        id_token: None,
    };
    Sealer::new(cookie_secret, provider)?.seal(SESSION, &serde_json::to_vec(&session).ok()?)
}

/// Where a login returns the browser: the page it asked for when that is a path of this site,
/// else `/` (`//host` and `/\host` are other sites to a browser).
fn same_site_path(return_to: &str) -> &str {
    if return_to.starts_with('/') && !matches!(return_to.as_bytes().get(1), Some(b'/' | b'\\')) {
        return_to
    } else {
        "/"
    }
}

/// The claims a session keeps: the user's, not the token's own bookkeeping.
fn without_protocol_claims(
    mut claims: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    for name in [
        "nonce",
        "at_hash",
        "c_hash",
        "auth_time",
        "sid",
        "azp",
        "jti",
    ] {
        claims.remove(name);
    }
    claims
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    #[serde(flatten)]
    _rest: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = hyper::Request::builder().method(method).uri("/orders");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap_or_default().into_parts().0
    }

    /// The provider of `policies/auth/oidc.yaml`, with its Secret.
    fn example_state() -> OidcState {
        let checked = crate::policy::examples::checked(&["workloads.yaml", "auth/oidc.yaml"]);
        let model = checked.model.mesh_policies[0]
            .http
            .as_ref()
            .and_then(|h| h.authentication.as_ref())
            .and_then(|a| a.providers.first())
            .and_then(|p| match p {
                crate::policy::http::ProviderModel::Oidc(m) => Some(Arc::clone(m)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no oidc provider"));
        let keys = super::super::jwks::JwksRegistry::default().get(
            &crate::policy::http::JwksLocation::Discovery {
                issuer: model.issuer.clone(),
            },
        );
        OidcState::new(model, keys)
    }

    /// With every turn at the token endpoint taken, a callback waits, then answers 503 and
    /// leaves its state unanswered (the same callback may be answered again).
    #[tokio::test(start_paused = true)]
    async fn callbacks_past_the_token_endpoints_turns_are_refused_unspent() {
        let state = example_state();
        let turns: Vec<_> = (0..MAX_TOKEN_REQUESTS)
            .map(|_| state.token_requests.try_acquire().expect("a turn"))
            .collect();
        let login = Login {
            state: "s1".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            return_to: "/".into(),
            redirect_uri: "https://shop/oauth2/callback".into(),
            ends: now_s() + 60,
        };
        let sealed = state
            .sealer
            .as_ref()
            .and_then(|s| s.seal(LOGIN, &serde_json::to_vec(&login).ok()?))
            .expect("sealed");
        let cookie = format!("{}={sealed}", state.login_cookie());
        let callback = hyper::Request::builder()
            .uri(format!("{}?code=c&state=s1", state.model.redirect_path))
            .header("cookie", cookie)
            .body(())
            .unwrap_or_default()
            .into_parts()
            .0;
        let started = tokio::time::Instant::now();
        let denial = state.callback(&callback).await;
        assert_eq!(denial.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), TOKEN_REQUEST_WAIT);
        assert!(
            denial
                .headers
                .iter()
                .all(|(name, _)| name != header::SET_COOKIE),
            "the login cookie is kept for a retry: {:?}",
            denial.headers
        );
        assert!(
            state
                .taken_states
                .lock()
                .expect("lock")
                .peek("s1")
                .is_none(),
            "the state is not spent"
        );
        drop(turns);
        assert!(state.token_turn().await.is_some(), "turns come back");
    }

    #[test]
    fn a_browser_navigation_is_told_from_an_api_call() {
        assert!(is_navigation(&parts(
            "GET",
            &[("sec-fetch-mode", "navigate")]
        )));
        assert!(!is_navigation(&parts(
            "GET",
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")]
        )));
        assert!(is_navigation(&parts(
            "GET",
            &[("accept", "text/html,application/xhtml+xml")]
        )));
        assert!(!is_navigation(&parts(
            "GET",
            &[("accept", "application/json")]
        )));
        assert!(!is_navigation(&parts("POST", &[("accept", "text/html")])));
        assert!(!is_navigation(&parts(
            "GET",
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest")
            ]
        )));
        assert!(!is_navigation(&parts("GET", &[])));
    }

    #[test]
    fn a_login_returns_only_to_a_path_of_this_site() {
        assert_eq!(same_site_path("/orders/7?view=full"), "/orders/7?view=full");
        for elsewhere in [
            "//evil.example/",
            "/\\evil.example/",
            "https://evil.example/",
            "",
        ] {
            assert_eq!(same_site_path(elsewhere), "/", "{elsewhere}");
        }
    }

    #[test]
    fn forms_and_queries_round_trip() {
        let form = form_encode(&[
            ("redirect_uri", "https://a.test/cb?x=1"),
            ("scope", "openid email"),
        ]);
        assert_eq!(
            form,
            "redirect_uri=https%3A%2F%2Fa.test%2Fcb%3Fx%3D1&scope=openid%20email"
        );
        assert_eq!(
            query_value("code=a%2Fb&state=s+t", "code").as_deref(),
            Some("a/b")
        );
        assert_eq!(
            query_value("code=a&state=s+t", "state").as_deref(),
            Some("s t")
        );
        assert_eq!(query_value("code=a", "state"), None);
    }
}

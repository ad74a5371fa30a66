//! The identity filters of the chain (`filter.rs`): `authn` → `authz` → `ratelimit`. Each reads
//! the request head and what the filters before it established, and either passes or returns a
//! [`Denial`]: the status the client gets, the reason (its namespace names the filter), and the
//! response headers that go with it (`www-authenticate`, `retry-after`, ...). Credentials never
//! appear in a denial.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, StatusCode};
use rampart_common::reason::{AuthnReason, AuthzReason, RateLimitReason};
use rampart_l7::jwt::{Claims, RejectReason};
use rampart_l7::ratelimit::{Decision, TokenBucket, take_all};

use rampart_l7::basic::parse_credential;

use super::context::{Denial, Passed, Peer, Principal};
use super::ldap::{Directory, DirectoryUser, Login};
use super::oidc::OidcState;
use super::passwords::{Checked, PasswordFile};
use super::route::{BucketState, HttpRoute, ProviderState};
use crate::policy::http::{
    ApiKeyProviderModel, AuthenticationModel, BasicProviderModel, ClaimMatch, HeaderValueMatch,
    HttpRuleModel, JwtProviderModel, LdapProviderModel, OidcProviderModel, PathMatch,
    ProviderModel, RateKey, RuleAction, TokenSource,
};

/// Runs the three filters of `route` on a request head (the unit tests' and the fuzz target's
/// entry; the proxy runs them apart, with the body filters between).
pub async fn run(
    route: &HttpRoute,
    parts: &Parts,
    peer: &Peer,
    stats: &super::L7Stats,
) -> Result<Passed, Denial> {
    let mut passed = Passed::default();
    authenticate_request(route, parts, peer, &mut passed).await?;
    authorize(&route.model.rules, parts, peer, &passed)?;
    rate_limit(route, parts, peer, &mut passed, stats)?;
    Ok(passed)
}

/// `authn`: the route's providers on the request (nothing to do without them).
pub async fn authenticate_request(
    route: &HttpRoute,
    parts: &Parts,
    peer: &Peer,
    passed: &mut Passed,
) -> Result<(), Denial> {
    match &route.model.authentication {
        Some(authn) => authenticate(authn, route, parts, peer, now_s(), passed).await,
        None => Ok(()),
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// authn

/// `AnyOf` (default): the first provider whose credential verifies authenticates the request.
/// `AllOf`: every provider must. No credential anywhere: 401 `missing_credentials` (or anonymous
/// with `allowMissing`). A credential that fails: 401 with the verifier's reason, never a pass,
/// even with `allowMissing`; a credential that could not be checked (the directory down, every
/// check slot busy): 503, never a pass either.
async fn authenticate(
    authn: &AuthenticationModel,
    route: &HttpRoute,
    parts: &Parts,
    peer: &Peer,
    now: u64,
    passed: &mut Passed,
) -> Result<(), Denial> {
    let mut first_failure: Option<AuthnReason> = None;
    let mut any_sent = false;
    let mut login: Option<Denial> = None;
    for (index, provider) in authn.providers.iter().enumerate() {
        let state = route.providers.get(index);
        let attempt = match (provider, state) {
            (ProviderModel::Oidc(p), Some(ProviderState::Oidc(oidc))) => {
                oidc_attempt(p, oidc, parts, peer, passed).await
            }
            (ProviderModel::Oidc(_), _) => Attempt::Failed(AuthnReason::IdpUnavailable),
            _ => try_provider(provider, state, parts, now, passed).await,
        };
        match attempt {
            Attempt::Respond(denial) => return Err(denial),
            Attempt::Login(redirect) => {
                login.get_or_insert(redirect);
            }
            Attempt::Authenticated => {
                if !authn.require_all {
                    return Ok(());
                }
            }
            Attempt::Failed(reason) => {
                any_sent = true;
                first_failure.get_or_insert(reason);
                if authn.require_all {
                    break;
                }
            }
            Attempt::Ambiguous => {
                return Err(unauthorized(authn, AuthnReason::AmbiguousCredentials, true));
            }
            Attempt::Absent => {
                if authn.require_all && !authn.allow_missing {
                    first_failure.get_or_insert(AuthnReason::MissingCredentials);
                }
            }
        }
    }
    // No failure: with `AllOf`, every provider authenticated or was absent under
    // `allowMissing`; with `AnyOf`, none authenticated (it would have returned) and none was sent.
    match (first_failure, login) {
        // A browser that sent nothing another provider could use is sent to log in.
        (None | Some(AuthnReason::MissingCredentials), Some(redirect)) => Err(redirect),
        (Some(reason), _) => Err(unauthorized(authn, reason, any_sent)),
        (None, None) if authn.require_all || authn.allow_missing => Ok(()),
        (None, None) => Err(unauthorized(authn, AuthnReason::MissingCredentials, false)),
    }
}

async fn oidc_attempt(
    p: &OidcProviderModel,
    oidc: &OidcState,
    parts: &Parts,
    peer: &Peer,
    passed: &mut Passed,
) -> Attempt {
    match oidc.authenticate(parts, peer).await {
        super::oidc::Outcome::Authenticated { claims, set_cookie } => {
            for (claim, header) in &p.claims_to_headers {
                if let Some(value) = claims
                    .text(claim)
                    .and_then(|v| HeaderValue::from_str(&v).ok())
                {
                    passed.set_upstream.push((header.clone(), value));
                }
            }
            if let Some(cookie) = set_cookie {
                passed.set_response.push((header::SET_COOKIE, cookie));
            }
            // The session and login cookies stay between the browser and the proxy.
            passed
                .strip
                .push(TokenSource::Cookie(p.cookie_name.clone()));
            passed.strip.push(TokenSource::Cookie(oidc.login_cookie()));
            passed.principal = Some(Principal {
                provider: p.name.clone(),
                method: "oidc",
                claims,
            });
            Attempt::Authenticated
        }
        super::oidc::Outcome::LoginRedirect(redirect) => Attempt::Login(redirect),
        super::oidc::Outcome::Absent => Attempt::Absent,
        super::oidc::Outcome::Invalid => Attempt::Failed(AuthnReason::InvalidSession),
        super::oidc::Outcome::Respond(denial) => Attempt::Respond(denial),
    }
}

enum Attempt {
    Authenticated,
    Failed(AuthnReason),
    Ambiguous,
    Absent,
    /// No credential, and a browser to send to log in.
    Login(Denial),
    /// The provider answers the request itself (its callback and logout paths).
    Respond(Denial),
}

async fn try_provider(
    provider: &ProviderModel,
    state: Option<&ProviderState>,
    parts: &Parts,
    now: u64,
    passed: &mut Passed,
) -> Attempt {
    let mut failure = None;
    for source in provider.sources() {
        let credential = match extract(source, parts) {
            Extracted::None => continue,
            Extracted::Ambiguous => return Attempt::Ambiguous,
            Extracted::Token(token) => token,
        };
        let outcome = match (provider, state) {
            (ProviderModel::Jwt(p), Some(ProviderState::Jwt(state))) => {
                jwt_attempt(p, state, &credential, now, passed)
            }
            (ProviderModel::ApiKeys(p), _) => match p.keys.client(&credential) {
                Some(client) => {
                    accept_api_key(p, client, passed);
                    Ok(())
                }
                None => {
                    tracing::debug!(provider = %p.name, "authn: unknown API key");
                    Err(AuthnReason::InvalidApiKey)
                }
            },
            (ProviderModel::Basic(p), Some(ProviderState::Basic(file))) => {
                basic_attempt(p, file, &credential, passed).await
            }
            (ProviderModel::Ldap(p), Some(ProviderState::Ldap(directory))) => {
                ldap_attempt(p, directory, &credential, passed).await
            }
            // A route always has a state per provider; a missing one is a refusal.
            (ProviderModel::Jwt(_), _) => Err(AuthnReason::JwksUnavailable),
            (ProviderModel::Basic(_) | ProviderModel::Ldap(_), _) => {
                Err(AuthnReason::DirectoryUnavailable)
            }
            // Read by `oidc_attempt`, never from a token source.
            (ProviderModel::Oidc(_), _) => Err(AuthnReason::IdpUnavailable),
        };
        match outcome {
            Ok(()) => return Attempt::Authenticated,
            Err(reason) => {
                failure.get_or_insert(reason);
            }
        }
    }
    failure.map_or(Attempt::Absent, Attempt::Failed)
}

fn jwt_attempt(
    p: &JwtProviderModel,
    state: &super::route::JwtState,
    credential: &str,
    now: u64,
    passed: &mut Passed,
) -> Result<(), AuthnReason> {
    let Some(keys) = state.keys.current() else {
        return Err(AuthnReason::JwksUnavailable);
    };
    match state.cache.verify(&p.config, &keys, credential, now) {
        Ok(verified) => {
            accept_jwt(p, verified.claims, passed);
            Ok(())
        }
        Err(rejection) => {
            tracing::debug!(provider = %p.name, %rejection, "authn: token refused");
            Err(authn_reason(rejection.reason))
        }
    }
}

async fn basic_attempt(
    p: &BasicProviderModel,
    file: &PasswordFile,
    credential: &str,
    passed: &mut Passed,
) -> Result<(), AuthnReason> {
    let credential = parse_credential(credential).map_err(|_| AuthnReason::Malformed)?;
    match file.check(&credential).await {
        Checked::Valid => {
            accept_user(
                &p.name,
                &credential.user,
                None,
                p.user_header.as_ref(),
                None,
                p.forward_credentials,
                passed,
            );
            Ok(())
        }
        Checked::Invalid => {
            tracing::debug!(provider = %p.name, "authn: wrong user or password");
            Err(AuthnReason::InvalidCredentials)
        }
        Checked::Busy => Err(AuthnReason::VerifierBusy),
    }
}

async fn ldap_attempt(
    p: &LdapProviderModel,
    directory: &std::sync::Arc<Directory>,
    credential: &str,
    passed: &mut Passed,
) -> Result<(), AuthnReason> {
    let credential = parse_credential(credential).map_err(|_| AuthnReason::Malformed)?;
    match directory.login(&credential).await {
        Login::Authenticated(user) => {
            accept_user(
                &p.name,
                &credential.user,
                Some(&user),
                p.user_header.as_ref(),
                p.groups_header.as_ref(),
                p.forward_credentials,
                passed,
            );
            Ok(())
        }
        Login::Refused => Err(AuthnReason::InvalidCredentials),
        Login::Unavailable => Err(AuthnReason::DirectoryUnavailable),
    }
}

/// A user that a Basic credential authenticated: a principal whose claims are `sub` (and, from
/// a directory, `dn` and `groups`), so rules, rate-limit keys and headers read it as they read
/// a token's claims.
fn accept_user(
    provider: &str,
    user: &str,
    directory_user: Option<&DirectoryUser>,
    user_header: Option<&HeaderName>,
    groups_header: Option<&HeaderName>,
    forward: bool,
    passed: &mut Passed,
) {
    let user = directory_user.map_or(user, |found| found.name.as_str());
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), user.into());
    if let Some(found) = directory_user {
        claims.insert("dn".into(), found.dn.clone().into());
        claims.insert("groups".into(), found.groups.clone().into());
        if let (Some(header), Ok(value)) = (
            groups_header,
            HeaderValue::from_str(&found.groups.join(",")),
        ) {
            passed.set_upstream.push((header.clone(), value));
        }
    }
    if let (Some(header), Ok(value)) = (user_header, HeaderValue::from_str(user)) {
        passed.set_upstream.push((header.clone(), value));
    }
    if !forward {
        passed.strip.push(TokenSource::Header {
            name: header::AUTHORIZATION,
            prefix: String::new(),
        });
    }
    passed.principal = Some(Principal {
        provider: provider.to_owned(),
        method: if directory_user.is_some() {
            "ldap"
        } else {
            "basic"
        },
        claims: Claims(claims),
    });
}

fn accept_api_key(provider: &ApiKeyProviderModel, client: &str, passed: &mut Passed) {
    if let (Some(header), Ok(value)) = (&provider.client_header, HeaderValue::from_str(client)) {
        passed.set_upstream.push((header.clone(), value));
    }
    if !provider.forward_key {
        passed.strip.extend(provider.sources.iter().cloned());
    }
    passed.api_key_client = Some(client.to_owned());
}

fn accept_jwt(provider: &JwtProviderModel, claims: Claims, passed: &mut Passed) {
    for (claim, header) in &provider.claims_to_headers {
        if let Some(value) = claims
            .text(claim)
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            passed.set_upstream.push((header.clone(), value));
        }
    }
    if !provider.forward_token {
        passed.strip.extend(provider.sources.iter().cloned());
    }
    passed.principal = Some(Principal {
        provider: provider.name.clone(),
        method: "jwt",
        claims,
    });
}

/// The authn namespace's name of the JWT verifier's reason.
fn authn_reason(reason: RejectReason) -> AuthnReason {
    match reason {
        RejectReason::Signature => AuthnReason::Signature,
        RejectReason::AlgNotAllowed => AuthnReason::AlgNotAllowed,
        RejectReason::KeySelection => AuthnReason::KeySelection,
        RejectReason::Expired => AuthnReason::Expired,
        RejectReason::NotYetValid => AuthnReason::NotYetValid,
        RejectReason::Audience => AuthnReason::Audience,
        RejectReason::Issuer => AuthnReason::Issuer,
        RejectReason::MissingClaim => AuthnReason::MissingClaim,
        RejectReason::Malformed => AuthnReason::Malformed,
        RejectReason::UnsupportedCrit => AuthnReason::UnsupportedCrit,
        RejectReason::TooLarge => AuthnReason::TooLarge,
    }
}

/// The refusal of a request no provider authenticated: 401 with a challenge for each kind of
/// provider the route has (RFC 7235 §4.1), or 503 when a credential could not be checked.
fn unauthorized(authn: &AuthenticationModel, reason: AuthnReason, token_was_sent: bool) -> Denial {
    if matches!(
        reason,
        AuthnReason::DirectoryUnavailable | AuthnReason::VerifierBusy | AuthnReason::IdpUnavailable
    ) {
        return Denial {
            reason: reason.into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            body: None,
        };
    }
    let mut headers = Vec::new();
    let mut bearer = false;
    for provider in &authn.providers {
        let realm = match provider {
            ProviderModel::Jwt(_) | ProviderModel::ApiKeys(_) => {
                bearer = true;
                continue;
            }
            ProviderModel::Basic(p) => &p.realm,
            ProviderModel::Ldap(p) => &p.realm,
            // A browser is redirected, an API call gets no challenge it could answer.
            ProviderModel::Oidc(_) => continue,
        };
        if let Ok(value) =
            HeaderValue::from_str(&format!(r#"Basic realm="{realm}", charset="UTF-8""#))
            && !headers.iter().any(|(_, v)| *v == value)
        {
            headers.push((header::WWW_AUTHENTICATE, value));
        }
    }
    if bearer {
        // RFC 6750 §3: no error code when no credentials were sent.
        let challenge = if token_was_sent {
            r#"Bearer realm="rampart", error="invalid_token""#
        } else {
            r#"Bearer realm="rampart""#
        };
        headers.insert(
            0,
            (
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ),
        );
    }
    Denial {
        reason: reason.into(),
        status: StatusCode::UNAUTHORIZED,
        headers,
        body: None,
    }
}

enum Extracted {
    None,
    /// The source holds more than one candidate: refused rather than guessing.
    Ambiguous,
    Token(String),
}

fn extract(source: &TokenSource, parts: &Parts) -> Extracted {
    match source {
        TokenSource::Header { name, prefix } => {
            let mut values = parts.headers.get_all(name).iter();
            let (Some(value), None) = (values.next(), values.next()) else {
                return if parts.headers.contains_key(name) {
                    Extracted::Ambiguous
                } else {
                    Extracted::None
                };
            };
            let Ok(value) = value.to_str() else {
                return Extracted::Ambiguous;
            };
            match strip_prefix_ignore_case(value, prefix) {
                Some(token) => Extracted::Token(token.trim().to_owned()),
                None => Extracted::None,
            }
        }
        TokenSource::Query(name) => {
            let mut found = query_values(parts.uri.query().unwrap_or(""), name);
            match (found.next(), found.next()) {
                (None, _) => Extracted::None,
                (Some(token), None) => Extracted::Token(token.to_owned()),
                _ => Extracted::Ambiguous,
            }
        }
        TokenSource::Cookie(name) => {
            let mut found = cookies(&parts.headers).filter(|(k, _)| k == name);
            match (found.next(), found.next()) {
                (None, _) => Extracted::None,
                (Some((_, token)), None) => Extracted::Token(token.to_owned()),
                _ => Extracted::Ambiguous,
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The request with `sources` removed: the credential does not travel past the proxy.
pub fn strip_credentials(parts: &mut Parts, sources: &[TokenSource]) {
    for source in sources {
        match source {
            TokenSource::Header { name, .. } => {
                parts.headers.remove(name);
            }
            TokenSource::Cookie(name) => {
                let kept: Vec<String> = cookies(&parts.headers)
                    .filter(|(k, _)| k != name)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                parts.headers.remove(header::COOKIE);
                if let Ok(value) = HeaderValue::from_str(&kept.join("; "))
                    && !kept.is_empty()
                {
                    parts.headers.insert(header::COOKIE, value);
                }
            }
            TokenSource::Query(name) => {
                let Some(query) = parts.uri.query() else {
                    continue;
                };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
                    .collect();
                let path = parts.uri.path();
                let rebuilt = if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = rebuilt.parse().ok();
                if let Ok(new_uri) = hyper::Uri::from_parts(uri) {
                    parts.uri = new_uri;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// authz

/// Explicit deny wins; otherwise an allow must match, unless there are no rules at all.
pub fn authorize(
    rules: &[HttpRuleModel],
    parts: &Parts,
    peer: &Peer,
    passed: &Passed,
) -> Result<(), Denial> {
    let (principal, client) = (passed.principal.as_ref(), passed.api_key_client.as_deref());
    let matching = |action| {
        rules
            .iter()
            .filter(move |r| r.action == action)
            .any(|r| rule_matches(r, parts, peer, principal, client))
    };
    if matching(RuleAction::Deny) {
        return Err(forbidden(AuthzReason::DenyRule));
    }
    if rules.is_empty() || matching(RuleAction::Allow) {
        Ok(())
    } else {
        Err(forbidden(AuthzReason::NoRuleMatched))
    }
}

fn forbidden(reason: AuthzReason) -> Denial {
    Denial::new(reason, StatusCode::FORBIDDEN)
}

fn rule_matches(
    rule: &HttpRuleModel,
    parts: &Parts,
    peer: &Peer,
    principal: Option<&Principal>,
    api_key_client: Option<&str>,
) -> bool {
    let any_or_empty = |empty: bool, any: bool| empty || any;
    any_or_empty(
        rule.methods.is_empty(),
        rule.methods.contains(&parts.method),
    ) && any_or_empty(rule.hosts.is_empty(), {
        let host = request_host(parts);
        rule.hosts.iter().any(|h| host_matches(h, &host))
    }) && any_or_empty(rule.paths.is_empty(), {
        let path = super::normalize::rule_path(parts.uri.path());
        rule.paths.iter().any(|p| path_matches(p, &path))
    }) && rule.headers.iter().all(|h| {
        let value = parts.headers.get(&h.name).and_then(|v| v.to_str().ok());
        match &h.value {
            HeaderValueMatch::Exact(x) => value == Some(x.as_str()),
            HeaderValueMatch::Prefix(x) => value.is_some_and(|v| v.starts_with(x.as_str())),
            HeaderValueMatch::Present(present) => parts.headers.contains_key(&h.name) == *present,
        }
    }) && any_or_empty(
        rule.principals.is_empty(),
        peer.spiffe_id
            .as_ref()
            .is_some_and(|id| rule.principals.iter().any(|p| p == id.as_str())),
    ) && rule.claims.iter().all(|c| {
        principal.is_some_and(|p| match c {
            ClaimMatch::Equals(name, value) => p.claims.text(name).as_deref() == Some(value),
            ClaimMatch::Contains(name, value) => p.claims.contains(name, value),
        })
    }) && any_or_empty(
        rule.api_key_clients.is_empty(),
        api_key_client.is_some_and(|c| rule.api_key_clients.iter().any(|r| r == c)),
    ) && rule
        .authenticated
        .is_none_or(|wanted| (principal.is_some() || api_key_client.is_some()) == wanted)
}

/// The request's host, lower-case, without a port or a trailing dot (`normalize` has refused
/// a request whose `Host` headers or authority disagree).
fn request_host(parts: &Parts) -> String {
    let raw = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    raw.and_then(super::normalize::host_key).unwrap_or_default()
}

/// Exact, or `*.example.com` for any subdomain.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

fn path_matches(pattern: &PathMatch, path: &str) -> bool {
    match pattern {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Regex(re) => re.is_match(path),
    }
}

// ---------------------------------------------------------------------------------------------
// ratelimit

pub fn rate_limit(
    route: &HttpRoute,
    parts: &Parts,
    peer: &Peer,
    passed: &mut Passed,
    stats: &super::L7Stats,
) -> Result<(), Denial> {
    let mut held = Vec::new();
    for (limit, state) in route.model.rate_limits.iter().zip(&route.buckets) {
        let bucket = match &**state {
            BucketState::Single(bucket) => std::sync::Arc::clone(bucket),
            BucketState::Keyed(keyed) => match key_value(&limit.key, parts, peer, passed) {
                Some(value) => keyed.bucket(&value),
                // A request without the key's value is not counted by that limit.
                None => continue,
            },
        };
        held.push((limit.name.as_str(), bucket));
    }
    if held.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&str, &TokenBucket)> = held.iter().map(|(n, b)| (*n, b.as_ref())).collect();
    match take_all(&refs, 1) {
        Decision::Allowed {
            bucket,
            remaining,
            limit,
        } => {
            passed
                .set_response
                .extend(ratelimit_headers(limit, remaining, None));
            passed.rate_limit = Some((bucket, remaining));
            Ok(())
        }
        Decision::Denied {
            bucket,
            retry_after,
            limit,
        } => {
            if route.model.rate_limit_shadow {
                stats.shadow_limited();
                tracing::debug!(%bucket, "ratelimit: over the limit (shadow mode, passed)");
                passed.rate_limit = Some((bucket, 0));
                return Ok(());
            }
            let mut headers = ratelimit_headers(limit, 0, Some(retry_after));
            headers.push((
                HeaderName::from_static("x-envoy-ratelimited"),
                HeaderValue::from_static("true"),
            ));
            Err(Denial {
                reason: RateLimitReason::OverLimit.into(),
                status: StatusCode::TOO_MANY_REQUESTS,
                headers,
                body: None,
            })
        }
    }
}

fn key_value(key: &RateKey, parts: &Parts, peer: &Peer, passed: &Passed) -> Option<String> {
    match key {
        RateKey::Route => Some(String::new()),
        RateKey::SourcePrincipal => peer.spiffe_id.as_ref().map(|id| id.as_str().to_owned()),
        RateKey::SourceAddress => Some(peer.source.ip().to_canonical().to_string()),
        RateKey::JwtSubject => passed
            .principal
            .as_ref()
            .and_then(|p| p.claims.subject().map(str::to_owned)),
        RateKey::Claim(name) => passed.principal.as_ref().and_then(|p| p.claims.text(name)),
        RateKey::ApiKeyClient => passed.api_key_client.clone(),
        RateKey::Header(name) => parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// `x-ratelimit-limit`, `x-ratelimit-remaining`, and when denied `x-ratelimit-reset` and
/// `retry-after` (whole seconds, rounded up).
fn ratelimit_headers(
    limit: u32,
    remaining: u32,
    retry_after: Option<Duration>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(limit),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(remaining),
        ),
    ];
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        headers.push((
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(seconds),
        ));
        headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
    }
    headers
}

#[cfg(test)]
mod tests;

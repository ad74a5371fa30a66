//! The `http` section of a MeshPolicy: the L7 rules the proxy applies to requests on the
//! selected destination ports (authentication by JWT, authorization rules, rate limits). Its
//! validation into [`HttpPolicyModel`], with errors at `file:line:col` (the serde shapes are in
//! `spec/http.rs`).
//!
//! ```yaml
//! http:
//!   authentication:
//!     allowMissing: false          # no credentials at all: 401 (true: anonymous, rules decide)
//!     providers:
//!     - name: corp-idp
//!       jwt:
//!         issuer: https://idp.example.test
//!         audiences: [api://orders]
//!         algorithms: [RS256, ES256]
//!         clockSkewSeconds: 30
//!         requiredClaims: [exp, sub]
//!         tokenFrom: [{header: authorization, prefix: "Bearer "}, {query: access_token}, {cookie: token}]
//!         jwks: {inline: '{"keys": [...]}'}
//!         claimsToHeaders: [{claim: sub, header: x-user}]
//!         forwardToken: false
//!   rules:                         # explicit Deny wins; once rules exist, no match is a 403
//!   - action: Allow
//!     methods: [GET]
//!     paths: [{prefix: /orders}]
//!     claims: [{name: groups, contains: readers}]
//!   rateLimits:
//!     shadow: false
//!     buckets:
//!     - {name: per-user, key: jwtSubject, maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::policy::spec::compact::Spanned;
use hyper::Method;
use hyper::header::HeaderName;
use rampart_l7::jwt::{self, ClaimRules, KeySet, VerifierConfig};
use rampart_l7::ratelimit::BucketSpec;
use regex::Regex;

use super::diag::Diagnostic;
use super::secret::SecretModel;
use super::source::SourceObject;
pub use super::spec::RuleAction;
pub mod basic;
pub mod ext_authz;
pub mod oidc;
pub mod rego;

pub use basic::{BasicProviderModel, LdapProviderModel, LdapTransport};
pub use oidc::OidcProviderModel;

use super::spec::http::{
    ApiKeysSpec, AuthenticationSpec, HttpRuleSpec, HttpSpec, JwksSpec, JwtSpec, PathSpec,
    RateBucketSpec, TokenSourceSpec,
};

#[derive(Debug, Clone)]
pub struct HttpPolicyModel {
    pub authentication: Option<AuthenticationModel>,
    /// Empty: every request that passes authentication is allowed.
    pub rules: Vec<HttpRuleModel>,
    pub rate_limits: Vec<RateBucketModel>,
    pub rate_limit_shadow: bool,
    pub waf: Option<super::waf::WafModel>,
    pub dlp: Option<super::dlp::DlpModel>,
    /// A Rego policy that must allow every request the rules allow.
    pub rego: Option<rego::RegoModel>,
    /// An external authorization service that must allow it too.
    pub ext_authz: Option<ext_authz::ExtAuthzModel>,
    pub escaped_slashes: EscapedSlashes,
}

/// What an encoded slash (`%2F`) in a request path does (Envoy's
/// `path_with_escaped_slashes_action`): the proxy matches rules on the path with `/` as the
/// only separator, and an origin that decodes `%2F` would see another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// `400`.
    #[default]
    Reject,
    /// Forwarded as `%2F`, one character of a segment (for APIs that carry encoded slashes in
    /// identifiers and origins that do not decode them).
    KeepUnchanged,
}

#[derive(Debug, Clone)]
pub struct AuthenticationModel {
    /// Every provider must authenticate the request (`AllOf`), not just one.
    pub require_all: bool,
    pub allow_missing: bool,
    pub providers: Vec<ProviderModel>,
}

#[derive(Debug, Clone)]
pub enum ProviderModel {
    Jwt(JwtProviderModel),
    ApiKeys(ApiKeyProviderModel),
    Basic(BasicProviderModel),
    Ldap(Arc<LdapProviderModel>),
    Oidc(Arc<OidcProviderModel>),
}

impl ProviderModel {
    pub fn name(&self) -> &str {
        match self {
            ProviderModel::Jwt(p) => &p.name,
            ProviderModel::ApiKeys(p) => &p.name,
            ProviderModel::Basic(p) => &p.name,
            ProviderModel::Ldap(p) => &p.name,
            ProviderModel::Oidc(p) => &p.name,
        }
    }

    /// Headers the proxy sets on the forwarded request from this provider's result (the
    /// client's own values of them are always dropped).
    pub fn upstream_headers(&self) -> Vec<&HeaderName> {
        match self {
            ProviderModel::Jwt(p) => p.claims_to_headers.iter().map(|(_, h)| h).collect(),
            ProviderModel::ApiKeys(p) => p.client_header.iter().collect(),
            ProviderModel::Basic(p) => p.user_header.iter().collect(),
            ProviderModel::Ldap(p) => p.user_header.iter().chain(&p.groups_header).collect(),
            ProviderModel::Oidc(p) => p.claims_to_headers.iter().map(|(_, h)| h).collect(),
        }
    }

    /// Where the provider reads its credential.
    pub fn sources(&self) -> &[TokenSource] {
        match self {
            ProviderModel::Jwt(p) => &p.sources,
            ProviderModel::ApiKeys(p) => &p.sources,
            ProviderModel::Basic(_) | ProviderModel::Ldap(_) => BASIC_SOURCES.as_slice(),
            // The session cookie is read by the provider itself (`l7::oidc`).
            ProviderModel::Oidc(_) => &[],
        }
    }
}

/// Basic credentials come in `Authorization: Basic ...` (RFC 7617).
static BASIC_SOURCES: std::sync::LazyLock<[TokenSource; 1]> = std::sync::LazyLock::new(|| {
    [TokenSource::Header {
        name: hyper::header::AUTHORIZATION,
        prefix: "Basic ".into(),
    }]
});

#[derive(Debug, Clone)]
pub struct ApiKeyProviderModel {
    pub name: String,
    /// `(namespace, name)` of the Secret.
    pub secret: (String, String),
    pub sources: Vec<TokenSource>,
    pub client_header: Option<HeaderName>,
    pub forward_key: bool,
    /// Filled from the Secret once every object is read.
    pub keys: Arc<ApiKeyTable>,
    pub origin: super::diag::Origin,
}

/// API keys by their SHA-256: a lookup never compares key bytes directly, and neither the
/// keys nor their hashes are ever printed.
#[derive(Clone, Default)]
pub struct ApiKeyTable {
    clients: std::collections::HashMap<[u8; 32], String>,
}

impl std::fmt::Debug for ApiKeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeyTable({} keys)", self.clients.len())
    }
}

impl ApiKeyTable {
    pub fn client(&self, key: &str) -> Option<&str> {
        use sha2::Digest as _;
        let hash: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        self.clients.get(&hash).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Fills the API-key providers' tables from the Secrets they name; a missing or empty Secret,
/// or a key that is not text, is an error at the provider (the `basicAuth` and `ldap`
/// providers' Secrets are read here too: `basic::resolve_secrets`).
pub fn resolve_api_keys(
    http: &mut HttpPolicyModel,
    secrets: &std::collections::BTreeMap<(String, String), SecretModel>,
    diags: &mut Vec<Diagnostic>,
) {
    use sha2::Digest as _;
    {
        let Some(authn) = &mut http.authentication else {
            return;
        };
        for provider in &mut authn.providers {
            basic::resolve_secrets(provider, secrets, diags);
            let ProviderModel::ApiKeys(p) = provider else {
                continue;
            };
            let (ns, name) = &p.secret;
            let Some(secret) = secrets.get(&p.secret) else {
                diags.push(Diagnostic::error(
                    p.origin.clone(),
                    format!(
                        "apiKeys.secretRef: no Secret {ns}/{name} in the policy set ({})",
                        crate::policy::secret::LABEL_HINT
                    ),
                ));
                continue;
            };
            let mut table = ApiKeyTable::default();
            for (client, key) in &secret.entries {
                match std::str::from_utf8(key) {
                    Ok(key) if !key.trim().is_empty() => {
                        let hash: [u8; 32] = sha2::Sha256::digest(key.trim().as_bytes()).into();
                        if let Some(other) = table.clients.insert(hash, client.clone()) {
                            diags.push(Diagnostic::error(
                                p.origin.clone(),
                                format!("Secret {ns}/{name}: clients {other} and {client} have the same key"),
                            ));
                        }
                    }
                    _ => diags.push(Diagnostic::error(
                        p.origin.clone(),
                        format!(
                            "Secret {ns}/{name}: the key of client {client} is empty or not text"
                        ),
                    )),
                }
            }
            if table.is_empty() {
                diags.push(Diagnostic::error(
                    p.origin.clone(),
                    format!("Secret {ns}/{name}: no API keys"),
                ));
            }
            p.keys = Arc::new(table);
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtProviderModel {
    pub name: String,
    pub config: VerifierConfig,
    pub jwks: JwksModel,
    pub sources: Vec<TokenSource>,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub forward_token: bool,
}

/// Where a JWKS comes from (serialized: a hot restart hands the fetched sets over).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum JwksLocation {
    File(std::path::PathBuf),
    Url(String),
    /// The issuer's discovery document names the JWKS URL.
    Discovery {
        issuer: String,
    },
}

impl std::fmt::Display for JwksLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksLocation::File(path) => write!(f, "file:{}", path.display()),
            JwksLocation::Url(url) => f.write_str(url),
            JwksLocation::Discovery { issuer } => write!(f, "discovery:{issuer}"),
        }
    }
}

/// Where a JWT provider's keys come from.
#[derive(Debug, Clone)]
pub enum JwksModel {
    Inline(Arc<KeySet>),
    /// Fetched and refreshed by the agent (`l7::jwks`).
    Remote(JwksLocation),
}

/// Where a provider looks for its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header { name: HeaderName, prefix: String },
    Query(String),
    Cookie(String),
}

/// One authorization rule: every field given must match (fields are ANDed, values within a
/// field ORed).
#[derive(Debug, Clone)]
pub struct HttpRuleModel {
    pub action: RuleAction,
    pub methods: Vec<Method>,
    pub hosts: Vec<String>,
    pub paths: Vec<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub principals: Vec<String>,
    pub claims: Vec<ClaimMatch>,
    pub api_key_clients: Vec<String>,
    pub authenticated: Option<bool>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Globs are compiled to anchored regexes: `*` within a segment, `**` across segments.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    Exact(String),
    Prefix(String),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimMatch {
    Equals(String, String),
    Contains(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBucketModel {
    pub name: String,
    pub key: RateKey,
    pub spec: BucketSpec,
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    Route,
    SourcePrincipal,
    /// The client's IP address (the connection's source: a pod, or a client outside the cluster
    /// for ingress).
    SourceAddress,
    JwtSubject,
    ApiKeyClient,
    Header(HeaderName),
    Claim(String),
}

/// Validates an `http` section; errors go to `diags`, and `None` means there were some.
pub fn validate(
    so: &SourceObject,
    spec: &Spanned<HttpSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<HttpPolicyModel> {
    let mut v = HttpValidator {
        so,
        diags,
        ok: true,
    };
    let spec_value = &spec.value;
    let authentication = spec_value
        .authentication
        .as_ref()
        .map(|a| v.authentication(a));
    let rules = spec_value
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| v.rule(rule))
        .collect();
    let (rate_limits, rate_limit_shadow) = match &spec_value.rate_limits {
        None => (Vec::new(), false),
        Some(limits) => (
            limits
                .value
                .buckets
                .iter()
                .filter_map(|b| v.bucket(b))
                .collect(),
            limits.value.shadow,
        ),
    };
    let waf =
        spec_value
            .waf
            .as_ref()
            .and_then(|raw| match super::waf::validate(v.so, raw, v.diags) {
                Some(model) => Some(model),
                None => {
                    v.ok = false;
                    None
                }
            });
    let dlp =
        spec_value
            .dlp
            .as_ref()
            .and_then(|raw| match super::dlp::validate(v.so, raw, v.diags) {
                Some(model) => Some(model),
                None => {
                    v.ok = false;
                    None
                }
            });
    let rego = spec_value.rego.as_ref().and_then(|raw| v.rego(raw));
    let ext_authz = spec_value
        .ext_authz
        .as_ref()
        .and_then(|raw| v.ext_authz(raw));
    let escaped_slashes = match spec_value.escaped_slashes.as_ref() {
        None => EscapedSlashes::Reject,
        Some(s) => match s.value.as_str() {
            "Reject" => EscapedSlashes::Reject,
            "KeepUnchanged" => EscapedSlashes::KeepUnchanged,
            other => {
                v.error(
                    s,
                    format!("escapedSlashes {other:?}: Reject or KeepUnchanged"),
                );
                EscapedSlashes::Reject
            }
        },
    };
    if spec_value.authentication.is_none()
        && spec_value.rules.is_none()
        && spec_value.rate_limits.is_none()
        && spec_value.waf.is_none()
        && spec_value.dlp.is_none()
        && spec_value.rego.is_none()
        && spec_value.ext_authz.is_none()
    {
        v.error(
            spec,
            "http: name at least one of authentication, rules, rateLimits, waf, dlp, rego, extAuthz",
        );
    }
    let ok = v.ok;
    ok.then(|| HttpPolicyModel {
        authentication: authentication.flatten(),
        rules,
        rate_limits,
        rate_limit_shadow,
        waf,
        dlp,
        rego,
        ext_authz,
        escaped_slashes,
    })
}

/// Test support: the `http` model of a MeshPolicy on port 80 whose `http` section is `section`
/// (YAML lines indented under `http:`), or every error as `line:col: message`.
#[cfg(test)]
pub(crate) fn section_for_tests(section: &str) -> Result<Arc<HttpPolicyModel>, Vec<String>> {
    let text = format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: api}}\nspec:\n  ports: [{{port: 80}}]\n  http:\n{section}"
    );
    let checked = crate::policy::check(crate::policy::source::parse_str(
        std::path::Path::new("t.yaml"),
        &text,
    ))
    .map_err(|diags| {
        diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.origin.pos.line, d.origin.pos.col, d.message))
            .collect::<Vec<_>>()
    })?;
    checked.model.mesh_policies[0]
        .http
        .clone()
        .ok_or_else(|| vec!["no http section".to_owned()])
}

struct HttpValidator<'a> {
    so: &'a SourceObject,
    diags: &'a mut Vec<Diagnostic>,
    ok: bool,
}

impl HttpValidator<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(self.so.at(at), message));
        self.ok = false;
    }

    fn authentication(
        &mut self,
        spec: &Spanned<AuthenticationSpec>,
    ) -> Option<AuthenticationModel> {
        if spec.value.providers.is_empty() {
            self.error(
                spec,
                "authentication.providers: at least one provider is required",
            );
        }
        let require_all = match spec.value.require.as_ref().map(|r| r.value.as_str()) {
            None | Some("AnyOf") => false,
            Some("AllOf") => true,
            Some(other) => {
                let at = spec
                    .value
                    .require
                    .as_ref()
                    .map_or_else(|| self.so.at(spec), |r| self.so.at(r));
                self.diags.push(Diagnostic::error(
                    at,
                    format!("require {other:?}: AnyOf or AllOf"),
                ));
                self.ok = false;
                false
            }
        };
        let mut providers = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for provider in &spec.value.providers {
            let name = &provider.value.name.value;
            if !names.insert(name.clone()) {
                self.error(&provider.value.name, "provider names must be unique");
            }
            let p = &provider.value;
            match (&p.jwt, &p.api_keys, &p.basic_auth, &p.ldap, &p.oidc) {
                (Some(jwt), None, None, None, None) => {
                    providers.extend(self.jwt(name, jwt).map(ProviderModel::Jwt))
                }
                (None, Some(keys), None, None, None) => {
                    providers.extend(self.api_keys(name, keys).map(ProviderModel::ApiKeys))
                }
                (None, None, Some(basic), None, None) => {
                    providers.extend(self.basic_auth(name, basic).map(ProviderModel::Basic))
                }
                (None, None, None, Some(ldap), None) => providers.extend(
                    self.ldap(name, ldap)
                        .map(|m| ProviderModel::Ldap(Arc::new(m))),
                ),
                (None, None, None, None, Some(oidc)) => providers.extend(
                    self.oidc(name, oidc)
                        .map(|m| ProviderModel::Oidc(Arc::new(m))),
                ),
                _ => self.error(
                    provider,
                    "a provider is exactly one of `jwt`, `apiKeys`, `basicAuth`, `ldap`, `oidc`",
                ),
            }
        }
        Some(AuthenticationModel {
            require_all,
            allow_missing: spec.value.allow_missing,
            providers,
        })
    }

    fn api_keys(&mut self, name: &str, spec: &Spanned<ApiKeysSpec>) -> Option<ApiKeyProviderModel> {
        let raw = &spec.value;
        let secret_ref = &raw.secret_ref.value;
        if !crate::dns_name::is_dns_label(&secret_ref.namespace)
            || !crate::dns_name::is_dns_subdomain(&secret_ref.name)
        {
            self.error(&raw.secret_ref, "secretRef: namespace and name of a Secret");
            return None;
        }
        let mut sources = Vec::new();
        for source in raw.key_from.iter().flatten() {
            sources.extend(self.token_source(source));
        }
        if sources.is_empty() {
            sources.push(TokenSource::Header {
                name: HeaderName::from_static("x-api-key"),
                prefix: String::new(),
            });
        }
        let client_header = match &raw.client_header {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.value.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.error(h, "not a valid header name");
                    return None;
                }
            },
        };
        Some(ApiKeyProviderModel {
            name: name.to_owned(),
            secret: (secret_ref.namespace.clone(), secret_ref.name.clone()),
            sources,
            client_header,
            forward_key: raw.forward_key,
            keys: Arc::new(ApiKeyTable::default()),
            origin: self.so.at(&raw.secret_ref),
        })
    }

    fn jwt(&mut self, name: &str, spec: &Spanned<JwtSpec>) -> Option<JwtProviderModel> {
        let raw = &spec.value;
        let rules = ClaimRules {
            issuer: raw.issuer.clone(),
            audiences: raw.audiences.clone().unwrap_or_default(),
            leeway_s: raw.clock_skew_seconds.unwrap_or(0),
            required: raw
                .required_claims
                .clone()
                .unwrap_or_else(|| vec!["exp".into()]),
        };
        let max_bytes = raw
            .max_token_bytes
            .as_ref()
            .map_or(jwt::DEFAULT_MAX_TOKEN_BYTES, |m| m.value);
        let config = match VerifierConfig::new(&raw.algorithms.value, rules, max_bytes) {
            Ok(config) => Some(config),
            Err(e) => {
                self.error(&raw.algorithms, format!("jwt: {e}"));
                None
            }
        };
        let jwks = self.jwks(&raw.jwks, raw.issuer.as_deref());
        let mut sources = Vec::new();
        for source in raw.token_from.iter().flatten() {
            sources.extend(self.token_source(source));
        }
        if sources.is_empty() {
            sources.push(TokenSource::Header {
                name: hyper::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            });
        }
        let mut claims_to_headers = Vec::new();
        for pair in raw.claims_to_headers.iter().flatten() {
            match HeaderName::from_bytes(pair.value.header.value.as_bytes()) {
                Ok(header) => claims_to_headers.push((pair.value.claim.clone(), header)),
                Err(_) => self.error(&pair.value.header, "not a valid header name"),
            }
        }
        Some(JwtProviderModel {
            name: name.to_owned(),
            config: config?,
            jwks: jwks?,
            sources,
            claims_to_headers,
            forward_token: raw.forward_token,
        })
    }

    fn jwks(&mut self, spec: &Spanned<JwksSpec>, issuer: Option<&str>) -> Option<JwksModel> {
        let raw = &spec.value;
        let is_http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match (&raw.inline, &raw.file, &raw.url, &raw.discovery) {
            (Some(inline), None, None, None) => match KeySet::from_jwks(inline.value.as_bytes()) {
                Ok(set) if set.is_empty() => {
                    self.error(
                        inline,
                        format!("jwks.inline: no usable key ({:?})", set.skipped()),
                    );
                    None
                }
                Ok(set) => Some(JwksModel::Inline(Arc::new(set))),
                Err(e) => {
                    self.error(inline, format!("jwks.inline: {e}"));
                    None
                }
            },
            (None, Some(file), None, None) if file.value.starts_with('/') => Some(
                JwksModel::Remote(JwksLocation::File(file.value.clone().into())),
            ),
            (None, Some(file), None, None) => {
                self.error(file, "jwks.file: an absolute path");
                None
            }
            (None, None, Some(url), None) if is_http(&url.value) => {
                Some(JwksModel::Remote(JwksLocation::Url(url.value.clone())))
            }
            (None, None, Some(url), None) => {
                self.error(url, "jwks.url: an http:// or https:// URL");
                None
            }
            (None, None, None, Some(discovery)) if discovery.value => match issuer {
                Some(issuer) if is_http(issuer) => {
                    Some(JwksModel::Remote(JwksLocation::Discovery {
                        issuer: issuer.to_owned(),
                    }))
                }
                _ => {
                    self.error(discovery, "jwks.discovery needs an http(s) `issuer`");
                    None
                }
            },
            _ => {
                self.error(
                    spec,
                    "jwks: exactly one of inline, file, url, discovery: true",
                );
                None
            }
        }
    }

    fn token_source(&mut self, spec: &Spanned<TokenSourceSpec>) -> Option<TokenSource> {
        let raw = &spec.value;
        match (&raw.header, &raw.query, &raw.cookie) {
            (Some(header), None, None) => match HeaderName::from_bytes(header.value.as_bytes()) {
                Ok(name) => Some(TokenSource::Header {
                    name,
                    prefix: raw.prefix.clone().unwrap_or_default(),
                }),
                Err(_) => {
                    self.error(header, "not a valid header name");
                    None
                }
            },
            (None, Some(query), None) if raw.prefix.is_none() => {
                Some(TokenSource::Query(query.clone()))
            }
            (None, None, Some(cookie)) if raw.prefix.is_none() => {
                Some(TokenSource::Cookie(cookie.clone()))
            }
            _ => {
                self.error(
                    spec,
                    "tokenFrom: exactly one of header (with optional prefix), query, cookie",
                );
                None
            }
        }
    }

    fn rule(&mut self, spec: &Spanned<HttpRuleSpec>) -> Option<HttpRuleModel> {
        let raw = &spec.value;
        let action = match raw.action.value.as_str() {
            "Allow" => RuleAction::Allow,
            "Deny" => RuleAction::Deny,
            other => {
                self.error(&raw.action, format!("action {other:?}: Allow or Deny"));
                return None;
            }
        };
        let mut methods = Vec::new();
        for method in raw.methods.iter().flatten() {
            match Method::from_bytes(method.value.as_bytes()) {
                Ok(m) if method.value.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(m),
                _ => self.error(
                    method,
                    format!("method {:?}: an upper-case HTTP method", method.value),
                ),
            }
        }
        let mut paths = Vec::new();
        for path in raw.paths.iter().flatten() {
            paths.extend(self.path(path));
        }
        let mut headers = Vec::new();
        for header in raw.headers.iter().flatten() {
            let h = &header.value;
            let Ok(name) = HeaderName::from_bytes(h.name.value.as_bytes()) else {
                self.error(&h.name, "not a valid header name");
                continue;
            };
            let value = match (&h.exact, &h.prefix, h.present) {
                (Some(exact), None, None) => HeaderValueMatch::Exact(exact.clone()),
                (None, Some(prefix), None) => HeaderValueMatch::Prefix(prefix.clone()),
                (None, None, Some(present)) => HeaderValueMatch::Present(present),
                _ => {
                    self.error(header, "headers: exactly one of exact, prefix, present");
                    continue;
                }
            };
            headers.push(HeaderMatch { name, value });
        }
        let mut claims = Vec::new();
        for claim in raw.claims.iter().flatten() {
            let c = &claim.value;
            match (&c.equals, &c.contains) {
                (Some(v), None) => claims.push(ClaimMatch::Equals(c.name.clone(), v.clone())),
                (None, Some(v)) => claims.push(ClaimMatch::Contains(c.name.clone(), v.clone())),
                _ => self.error(claim, "claims: exactly one of equals, contains"),
            }
        }
        for principal in raw.principals.iter().flatten() {
            if let Err(e) = crate::spiffe::SpiffeId::parse(principal) {
                self.error(spec, format!("principals: {principal:?}: {e}"));
            }
        }
        let mut hosts = Vec::new();
        for host in raw.hosts.iter().flatten() {
            match rule_host(host) {
                Some(host) => hosts.push(host),
                None => self.error(
                    spec,
                    format!(
                        "hosts: {host:?}: a DNS name, `*.` and a DNS name, or an IP address, \
                         without a port (a request's port is not compared)"
                    ),
                ),
            }
        }
        Some(HttpRuleModel {
            action,
            methods,
            hosts,
            paths,
            headers,
            principals: raw.principals.clone().unwrap_or_default(),
            claims,
            api_key_clients: raw.api_key_clients.clone().unwrap_or_default(),
            authenticated: raw.authenticated,
        })
    }

    /// Requests are matched on their normalised path without `;parameters` (see
    /// `l7::normalize`): a pattern that no normalised path can be would never match.
    fn normalized_path(&mut self, spec: &Spanned<PathSpec>, path: &str) -> Option<()> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let problem = if !path.starts_with('/') {
            Some("must start with /")
        } else if path.contains('\\') || path.contains(';') {
            Some("a request's path never holds a backslash or ;parameters when rules match it")
        } else if segments.iter().any(|s| matches!(*s, "." | ".."))
            || path.contains("//")
            || path.to_ascii_lowercase().contains("%2e")
        {
            Some("is not normalised (dot segments, //, %2e): no request's path can equal it")
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.error(spec, format!("paths: {path:?} {problem}"));
                None
            }
            None => Some(()),
        }
    }

    fn path(&mut self, spec: &Spanned<PathSpec>) -> Option<PathMatch> {
        let raw = &spec.value;
        match (&raw.exact, &raw.prefix, &raw.glob, &raw.regex) {
            (Some(exact), None, None, None) => {
                self.normalized_path(spec, exact)?;
                Some(PathMatch::Exact(exact.clone()))
            }
            (None, Some(prefix), None, None) => {
                self.normalized_path(spec, prefix)?;
                Some(PathMatch::Prefix(prefix.clone()))
            }
            (None, None, Some(glob), None) => match Regex::new(&glob_to_regex(glob)) {
                Ok(re) => Some(PathMatch::Regex(re)),
                Err(e) => {
                    self.error(spec, format!("glob {glob:?}: {e}"));
                    None
                }
            },
            (None, None, None, Some(regex)) => {
                match Regex::new(&format!("^(?:{})$", regex.value)) {
                    Ok(re) => Some(PathMatch::Regex(re)),
                    Err(e) => {
                        self.error(regex, format!("regex: {e}"));
                        None
                    }
                }
            }
            _ => {
                self.error(spec, "paths: exactly one of exact, prefix, glob, regex");
                None
            }
        }
    }

    fn bucket(&mut self, spec: &Spanned<RateBucketSpec>) -> Option<RateBucketModel> {
        let raw = &spec.value;
        let key = match raw.key.as_ref().map(|k| k.value.as_str()) {
            None | Some("route") => RateKey::Route,
            Some("sourcePrincipal") => RateKey::SourcePrincipal,
            Some("sourceAddress") => RateKey::SourceAddress,
            Some("jwtSubject") => RateKey::JwtSubject,
            Some("apiKeyClient") => RateKey::ApiKeyClient,
            Some(other) => match other.split_once(':') {
                Some(("header", name)) => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(name) => RateKey::Header(name),
                    Err(_) => {
                        self.error(spec, format!("key {other:?}: not a valid header name"));
                        return None;
                    }
                },
                Some(("claim", name)) if !name.is_empty() => RateKey::Claim(name.to_owned()),
                _ => {
                    self.error(
                        spec,
                        format!("key {other:?}: route, sourcePrincipal, sourceAddress, jwtSubject, apiKeyClient, header:<name> or claim:<name>"),
                    );
                    return None;
                }
            },
        };
        let interval = match parse_duration(&raw.fill_interval.value) {
            Some(d) => d,
            None => {
                self.error(
                    &raw.fill_interval,
                    "fillInterval: a duration such as 500ms, 1s, 1m",
                );
                return None;
            }
        };
        let spec_ok = BucketSpec::new(raw.max_tokens, raw.tokens_per_fill.unwrap_or(1), interval);
        match spec_ok {
            Ok(bucket) => Some(RateBucketModel {
                name: raw.name.value.clone(),
                key,
                spec: bucket,
                max_keys: raw.max_keys.unwrap_or(10_000).max(1),
            }),
            Err(e) => {
                self.error(spec, format!("rate limit {}: {e}", raw.name.value));
                None
            }
        }
    }
}

/// `500ms`, `1s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

/// A rule's host as requests are compared with it: lower-case, without a trailing dot; `None`
/// if it is not a DNS name (optionally `*.`-prefixed) or an IP address.
fn rule_host(host: &str) -> Option<String> {
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let name = lower.strip_prefix("*.").unwrap_or(lower);
    let ipv6 = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    let dns = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    (ipv6 || dns).then(|| lower.to_owned())
}

/// An anchored regex for a path glob: `**` any characters, `*` any within one segment, `?` one
/// character of a segment; everything else literal.
fn glob_to_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(".*");
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests;

//! The shapes of a MeshPolicy's `http` section (validated in `policy/http.rs`).

use crate::policy::spec::compact::Spanned;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSpec {
    #[schemars(with = "Option<AuthenticationSpec>")]
    pub authentication: Option<Spanned<AuthenticationSpec>>,
    #[schemars(with = "Option<Vec<HttpRuleSpec>>")]
    pub rules: Option<Vec<Spanned<HttpRuleSpec>>>,
    #[schemars(with = "Option<RateLimitsSpec>")]
    pub rate_limits: Option<Spanned<RateLimitsSpec>>,
    /// The OWASP Core Rule Set (see `policy::waf`).
    #[schemars(with = "Option<super::waf::WafSpec>")]
    pub waf: Option<Spanned<super::waf::WafSpec>>,
    /// Sensitive data in responses (see `policy::dlp`).
    #[schemars(with = "Option<super::dlp::DlpSpec>")]
    pub dlp: Option<Spanned<super::dlp::DlpSpec>>,
    /// A Rego policy the agent evaluates per request, over OPA's Envoy input (see
    /// `policy::http::rego`).
    #[schemars(with = "Option<RegoSpec>")]
    pub rego: Option<Spanned<RegoSpec>>,
    /// An external authorization service asked per request, in Envoy's ext_authz protocol
    /// (see `policy::http::ext_authz`).
    #[schemars(with = "Option<ExtAuthzSpec>")]
    pub ext_authz: Option<Spanned<ExtAuthzSpec>>,
    /// What a `%2F` in a request path does: `Reject` (400, the default) or `KeepUnchanged`.
    #[schemars(with = "Option<String>")]
    pub escaped_slashes: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthenticationSpec {
    /// `AnyOf` (default: one provider's credential suffices) or `AllOf` (every provider's).
    #[schemars(with = "Option<String>")]
    pub require: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_missing: bool,
    #[schemars(with = "Vec<ProviderSpec>")]
    pub providers: Vec<Spanned<ProviderSpec>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderSpec {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "Option<JwtSpec>")]
    pub jwt: Option<Spanned<JwtSpec>>,
    #[schemars(with = "Option<ApiKeysSpec>")]
    pub api_keys: Option<Spanned<ApiKeysSpec>>,
    #[schemars(with = "Option<BasicAuthSpec>")]
    pub basic_auth: Option<Spanned<BasicAuthSpec>>,
    #[schemars(with = "Option<LdapSpec>")]
    pub ldap: Option<Spanned<LdapSpec>>,
    #[schemars(with = "Option<OidcSpec>")]
    pub oidc: Option<Spanned<OidcSpec>>,
}

/// Browser users logged in at an OpenID provider (authorization code flow with PKCE), kept in
/// an encrypted session cookie.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OidcSpec {
    /// The provider's issuer; its endpoints come from `<issuer>/.well-known/openid-configuration`.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    pub client_id: String,
    /// A Secret whose `client-secret` is the client's secret and `cookie-secret` (at least 32
    /// bytes) the key sessions are sealed with: every agent reads the same one.
    #[schemars(with = "SecretRefSpec")]
    pub secret_ref: Spanned<SecretRefSpec>,
    /// Where the provider sends the browser back (default `/oauth2/callback`, on the request's
    /// host); registered at the provider.
    pub redirect_path: Option<String>,
    /// An absolute redirect URI instead of one on the request's host.
    #[schemars(with = "Option<String>")]
    pub redirect_uri: Option<Spanned<String>>,
    /// The path that ends the session (default `/oauth2/logout`).
    pub logout_path: Option<String>,
    /// Where the provider sends the browser after logout (registered at the provider).
    pub post_logout_redirect_uri: Option<String>,
    /// Scopes asked for besides `openid` (default `profile email`).
    pub scopes: Option<Vec<String>>,
    /// ID token algorithms (default `[RS256]`).
    #[schemars(with = "Option<Vec<String>>")]
    pub algorithms: Option<Spanned<Vec<String>>>,
    /// The session cookie's name (default `rampart_session`).
    pub cookie_name: Option<String>,
    /// Longest session, from login (default 28800: 8 hours); refresh tokens renew the ID token
    /// within it.
    #[schemars(with = "Option<u64>")]
    pub session_seconds: Option<Spanned<u64>>,
    #[schemars(with = "Option<Vec<ClaimHeaderSpec>>")]
    pub claims_to_headers: Option<Vec<Spanned<ClaimHeaderSpec>>>,
}

/// Users and passwords from an htpasswd file in a Secret (bcrypt or SHA-crypt hashes only).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuthSpec {
    /// A `v1 Secret` in the policy set holding the htpasswd file.
    #[schemars(with = "SecretRefSpec")]
    pub secret_ref: Spanned<SecretRefSpec>,
    /// The Secret's entry that holds the file (default `htpasswd`).
    pub key: Option<String>,
    /// The realm of the `WWW-Authenticate: Basic` challenge (default `rampart`).
    #[schemars(with = "Option<String>")]
    pub realm: Option<Spanned<String>>,
    /// Request header that carries the user's name to the pod.
    #[schemars(with = "Option<String>")]
    pub user_header: Option<Spanned<String>>,
    /// `false` (default): the `Authorization` header does not reach the pod.
    #[serde(default)]
    pub forward_credentials: bool,
}

/// Basic credentials checked by an LDAP bind: the user's entry found by a search, then a bind
/// as that entry with the password; group membership for authorization rules.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LdapSpec {
    /// `ldaps://host[:port]`, or `ldap://host[:port]` with `startTls: true`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    #[serde(default)]
    pub start_tls: bool,
    /// A Secret whose `ca.crt` (PEM) holds the CAs that may sign the server's certificate
    /// (default: the public web roots).
    #[schemars(with = "Option<SecretRefSpec>")]
    pub ca_secret_ref: Option<Spanned<SecretRefSpec>>,
    /// A Secret with `bindDN` and `password`: the account the user search binds as (default:
    /// an anonymous search).
    #[schemars(with = "Option<SecretRefSpec>")]
    pub bind_secret_ref: Option<Spanned<SecretRefSpec>>,
    /// Where users are searched (subtree).
    #[schemars(with = "String")]
    pub user_base: Spanned<String>,
    /// The search filter; `{user}` is the escaped user name (default `(uid={user})`).
    #[schemars(with = "Option<String>")]
    pub user_filter: Option<Spanned<String>>,
    /// The user entry's attribute that names the user to rules, rate limits and `userHeader`
    /// (default `uid`): the directory's spelling, whatever case the client typed.
    pub user_attribute: Option<String>,
    /// Where groups are searched (subtree); without it the user has no groups.
    pub group_base: Option<String>,
    /// A group's filter; `{dn}` is the user's escaped DN, `{user}` the escaped name (default
    /// `(member={dn})`).
    #[schemars(with = "Option<String>")]
    pub group_filter: Option<Spanned<String>>,
    /// The group attribute that names it in `groups` (default `cn`).
    pub group_attribute: Option<String>,
    /// How long a successful bind is remembered (default 60, at most 600).
    #[schemars(with = "Option<u64>")]
    pub cache_seconds: Option<Spanned<u64>>,
    /// How long one login may take against the server (default `5s`, at most `30s`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// The realm of the `WWW-Authenticate: Basic` challenge (default `rampart`).
    #[schemars(with = "Option<String>")]
    pub realm: Option<Spanned<String>>,
    /// Request header that carries the user's name to the pod.
    #[schemars(with = "Option<String>")]
    pub user_header: Option<Spanned<String>>,
    /// Request header that carries the user's groups (comma-separated) to the pod.
    #[schemars(with = "Option<String>")]
    pub groups_header: Option<Spanned<String>>,
    /// `false` (default): the `Authorization` header does not reach the pod.
    #[serde(default)]
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeysSpec {
    /// A `v1 Secret` in the policy set: each entry's name is a client, its value that client's key.
    #[schemars(with = "SecretRefSpec")]
    pub secret_ref: Spanned<SecretRefSpec>,
    /// Default: the `x-api-key` header.
    #[schemars(with = "Option<Vec<TokenSourceSpec>>")]
    pub key_from: Option<Vec<Spanned<TokenSourceSpec>>>,
    /// Request header that carries the client's name to the pod.
    #[schemars(with = "Option<String>")]
    pub client_header: Option<Spanned<String>>,
    #[serde(default)]
    pub forward_key: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRefSpec {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtSpec {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    #[schemars(with = "Vec<String>")]
    pub algorithms: Spanned<Vec<String>>,
    pub clock_skew_seconds: Option<u64>,
    pub required_claims: Option<Vec<String>>,
    #[schemars(with = "Option<usize>")]
    pub max_token_bytes: Option<Spanned<usize>>,
    #[schemars(with = "Option<Vec<TokenSourceSpec>>")]
    pub token_from: Option<Vec<Spanned<TokenSourceSpec>>>,
    #[schemars(with = "JwksSpec")]
    pub jwks: Spanned<JwksSpec>,
    #[schemars(with = "Option<Vec<ClaimHeaderSpec>>")]
    pub claims_to_headers: Option<Vec<Spanned<ClaimHeaderSpec>>>,
    #[serde(default)]
    pub forward_token: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenSourceSpec {
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    pub prefix: Option<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksSpec {
    /// A JWKS document as JSON text.
    #[schemars(with = "Option<String>")]
    pub inline: Option<Spanned<String>>,
    /// An absolute path to a JWKS document, re-read like a fetched one.
    #[schemars(with = "Option<String>")]
    pub file: Option<Spanned<String>>,
    /// An `http://` or `https://` URL of a JWKS document.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// `true`: the `jwks_uri` of the issuer's OIDC discovery document.
    #[schemars(with = "Option<bool>")]
    pub discovery: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimHeaderSpec {
    pub claim: String,
    #[schemars(with = "String")]
    pub header: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRuleSpec {
    #[schemars(with = "String")]
    pub action: Spanned<String>,
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Vec<Spanned<String>>>,
    pub hosts: Option<Vec<String>>,
    #[schemars(with = "Option<Vec<PathSpec>>")]
    pub paths: Option<Vec<Spanned<PathSpec>>>,
    #[schemars(with = "Option<Vec<HeaderMatchSpec>>")]
    pub headers: Option<Vec<Spanned<HeaderMatchSpec>>>,
    pub principals: Option<Vec<String>>,
    #[schemars(with = "Option<Vec<ClaimMatchSpec>>")]
    pub claims: Option<Vec<Spanned<ClaimMatchSpec>>>,
    pub api_key_clients: Option<Vec<String>>,
    pub authenticated: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathSpec {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub glob: Option<String>,
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimMatchSpec {
    pub name: String,
    pub equals: Option<String>,
    pub contains: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitsSpec {
    #[serde(default)]
    pub shadow: bool,
    #[schemars(with = "Vec<RateBucketSpec>")]
    pub buckets: Vec<Spanned<RateBucketSpec>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateBucketSpec {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `route` (default), `sourcePrincipal`, `sourceAddress`, `jwtSubject`, `apiKeyClient`,
    /// `header:<name>`, `claim:<name>`.
    #[schemars(with = "Option<String>")]
    pub key: Option<Spanned<String>>,
    pub max_tokens: u32,
    pub tokens_per_fill: Option<u32>,
    #[schemars(with = "String")]
    pub fill_interval: Spanned<String>,
    /// Distinct key values kept (LRU); default 10,000.
    pub max_keys: Option<usize>,
}

/// A Rego policy, compiled when the set is checked.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegoSpec {
    /// The policy's text.
    #[schemars(with = "Option<String>")]
    pub inline: Option<Spanned<String>>,
    /// An absolute path to a `.rego` file, read when the set is checked.
    #[schemars(with = "Option<String>")]
    pub file: Option<Spanned<String>>,
    /// A ConfigMap of the policy set (labelled `rampart.dev/policy` in the Kubernetes API):
    /// its `key`, or else every `*.rego` entry as a module and every `*.json` entry as data
    /// (merged at `data`), as OPA's kube-mgmt loads them.
    #[schemars(with = "Option<ConfigMapRefSpec>")]
    pub config_map_ref: Option<Spanned<ConfigMapRefSpec>>,
    /// The rule that decides (default `data.envoy.authz.allow`, as OPA's Envoy plugin): `true`
    /// allows; `false` or undefined refuses (403); an object `{allowed, headers, body,
    /// http_status}` says more.
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// Longest evaluation of one request (default `10ms`, at most `1s`); past it, refused.
    #[schemars(with = "Option<String>")]
    pub time_budget: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapRefSpec {
    pub namespace: String,
    pub name: String,
    /// One entry (a Rego module) instead of every `*.rego` and `*.json` entry.
    pub key: Option<String>,
}

/// Envoy's ext_authz: an HTTP service or a gRPC `envoy.service.auth.v3.Authorization` server.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtAuthzSpec {
    /// `http://host:port[/prefix]` or `https://...`: the request's method and path (after the
    /// prefix) with the headers to send; `200` allows, anything else is the client's answer.
    #[schemars(with = "Option<String>")]
    pub http: Option<Spanned<String>>,
    /// `http://host:port` of a gRPC server (HTTP/2 without TLS), or `https://host:port` (TLS
    /// with ALPN `h2`).
    #[schemars(with = "Option<String>")]
    pub grpc: Option<Spanned<String>>,
    /// For an `https://` authorizer: a Secret whose `ca.crt` holds the CAs its certificate
    /// chains to (default: the public web's roots).
    #[schemars(with = "Option<SecretRefSpec>")]
    pub ca_secret_ref: Option<Spanned<SecretRefSpec>>,
    /// How long to wait for the answer (default `200ms`, as Envoy; at most `10s`).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// `Deny` (default: an authorizer that fails or does not answer refuses the request, 403)
    /// or `Allow`.
    #[schemars(with = "Option<String>")]
    pub failure_mode: Option<Spanned<String>>,
    /// Request headers sent to an HTTP authorizer besides `authorization` (gRPC gets them
    /// all).
    pub headers_to_send: Option<Vec<String>>,
    /// Headers of an HTTP authorizer's `200` set on the request to the pod (a gRPC
    /// authorizer's `ok_response` headers always are).
    pub headers_to_upstream: Option<Vec<String>>,
    /// Headers of an HTTP authorizer's refusal passed to the client, besides
    /// `www-authenticate`, `location` and `content-type` (a gRPC authorizer's
    /// `denied_response` headers always are).
    pub headers_to_client: Option<Vec<String>>,
}

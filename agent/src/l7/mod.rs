//! The proxy's L7 side: requests on a destination port whose MeshPolicy has an `http` section
//! are parsed (hyper, HTTP/1.1) on the inbound side of the tunnel and pass a fixed chain of named
//! filters before they reach the pod: mTLS peer (the tunnel's handshake and principal check,
//! done per connection) → `authn` (JWT, API keys, Basic credentials from htpasswd or LDAP) → `authz` (rules) → `ratelimit` (token
//! buckets) → `waf` (Core Rule Set) → `dlp` on the request → upstream → `dlp` on the response. A denial is a value ([`context::Denial`]) whose filter and reason label
//! `rampart_proxy_denied_total{filter,reason}` and the flow record.
//!
//! | module | what |
//! | --- | --- |
//! | `route` | one destination's L7 policy with its live state (rate-limit buckets) |
//! | `normalize` | the request the filters and the pod both see: path normalised, Host checked, transfer-codings other than `chunked` and hop-by-hop headers refused or removed (both directions) |
//! | `chain` | the filters and the request context they read |
//! | `serve` | HTTP/1.1 or HTTP/2 (prior knowledge) on a tunnelled stream, forwarding what passes to the upstream connection in the same protocol |
//! | `prefixed` | a stream with its first bytes put back, for telling the two apart |
//! | `linger` | the client's stream drained after hyper closes it, so a reset cannot discard the last response |
//! | `stats` | counters by filter and reason |
//! | `dlp` | sensitive data in responses masked, redacted or blocked as they stream (gzip/deflate/br decoded) |
//! | `dlp_request` | sensitive data in requests (path and query, named headers, the body held whole) blocked before the pod, or masked |
//! | `waf` | the Core Rule Set filter (engines per profile, body inspection, evaluation off the executor) |
//! | `jwks` | JWKS from a file, a URL or OIDC discovery, refreshed and cached per source |
//! | `passwords` | `basicAuth`: htpasswd users, checks off the event loop, verified credentials remembered |
//! | `ext_authz` | the route's external authorizer, in Envoy's HTTP or gRPC protocol |
//! | `oidc` | `oidc`: browser login by the authorization code flow with PKCE, sessions in sealed cookies |
//! | `rego` | the route's Rego policy on OPA-Envoy's input, within its time budget |
//! | `ldap` | `ldap`: a user's search and bind against the directory over TLS, groups, remembered logins |
//! | `fetch` | the bounded HTTP(S) GET those use |

pub mod access_log;
pub mod body;
pub mod chain;
pub mod clock;
pub mod context;
pub mod dlp;
pub mod dlp_request;
pub mod ext_authz;
pub mod fetch;
pub mod filter;
pub mod jwks;
pub mod ldap;
mod linger;
pub mod normalize;
pub mod oidc;
pub mod passwords;
mod prefixed;
pub mod rego;
pub mod respond;
pub mod route;
pub mod serve;
pub mod stats;
pub mod tls_client;
pub mod upstream;
pub mod waf;

pub use route::HttpRoute;
pub use stats::L7Stats;

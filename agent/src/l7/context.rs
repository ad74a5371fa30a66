//! What a request's filters share: who is asking ([`Peer`]), what the filters that passed it
//! established ([`Passed`]), and a refusal ([`Denial`]): the status the client gets, the filter's
//! name and a reason (metric labels), and the response headers that go with it.

use std::net::SocketAddr;

use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use rampart_common::reason::ProxyReason;
use rampart_l7::jwt::Claims;

use crate::policy::http::TokenSource;
use crate::spiffe::SpiffeId;

/// Who is asking, as the tunnel (or ingress) established it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The mTLS peer; `None` for a client outside the cluster.
    pub spiffe_id: Option<SpiffeId>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The destination workload's identity: the one the tunnel's handshake proved, or the
    /// pod's at ingress; `None` where the node's certificate served (no workload certificate).
    pub destination_spiffe_id: Option<SpiffeId>,
    /// The SNI of an ingress client whose TLS the proxy terminated.
    pub server_name: Option<String>,
}

/// An authenticated end user.
#[derive(Debug, Clone)]
pub struct Principal {
    pub provider: String,
    /// How it was authenticated, for the access log: `jwt`, `basic` (htpasswd) or `ldap`.
    pub method: &'static str,
    pub claims: Claims,
}

/// A refusal: what the client gets and why (the reason's namespace is the refusing filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: ProxyReason,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body the client gets (an authorizer's answer); `None`: the status's plain text.
    pub body: Option<hyper::body::Bytes>,
}

impl Denial {
    /// A refusal answered with `status` and no headers of its own.
    pub fn new(reason: impl Into<ProxyReason>, status: StatusCode) -> Denial {
        Denial {
            reason: reason.into(),
            status,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// What the chain decided for a request that passes: the principal, and the header changes to
/// make before forwarding / on the response.
#[derive(Debug, Default)]
pub struct Passed {
    pub principal: Option<Principal>,
    /// The API-key client, when an API key authenticated the request.
    pub api_key_client: Option<String>,
    /// Credentials to strip from the forwarded request (`forwardToken: false`).
    pub strip: Vec<TokenSource>,
    /// Headers set on the forwarded request (`claimsToHeaders`).
    pub set_upstream: Vec<(HeaderName, HeaderValue)>,
    /// Headers added to the response (`x-ratelimit-*`).
    pub set_response: Vec<(HeaderName, HeaderValue)>,
    /// The bucket that decided, and tokens left in it.
    pub rate_limit: Option<(String, u32)>,
}

/// Whether an authorizer (a Rego policy's answer, an ext_authz server's) may set `name` on the
/// request to the pod or on its refusal to the client: never the message's framing or a
/// hop-by-hop header (a `content-length` or `transfer-encoding` of its choosing would let it
/// split one request into two on the way to the pod), nor `host` (where the request goes).
/// Envoy's header mutation rules hold the same line for `host` and pseudo-headers.
pub fn authorizer_may_set(name: &HeaderName) -> bool {
    use hyper::header;
    !matches!(
        *name,
        header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::CONNECTION
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::HOST
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
    ) && !matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// The request's authority: the request target's, else its `Host` (normalisation made the two
/// agree when both are present).
pub fn authority(parts: &hyper::http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Every header once by its lower-case name, repeated values joined with `,` (as Envoy shows
/// a request to its authorizers).
pub fn joined_headers(headers: &hyper::HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut joined = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        joined
            .entry(name.as_str().to_owned())
            .and_modify(|all| {
                all.push(',');
                all.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    joined
}

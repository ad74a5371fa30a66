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

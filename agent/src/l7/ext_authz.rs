//! The `extAuthz` step of `authz`: an external authorization service asked about each request
//! the rules (and Rego) allowed, in Envoy's protocol, so that servers written for Envoy plug
//! in:
//!
//! - **HTTP**: the request's method and path (after the service's prefix), its `Host`,
//!   `authorization` and the policy's `headersToSend`, no body. `200` allows (the policy's
//!   `headersToUpstream` of the answer go to the pod); a `5xx` is a failure; any other answer
//!   is the client's, with its status, body and the headers the policy passes
//!   (`www-authenticate`, `location`, `content-type`, `headersToClient`).
//! - **gRPC**: `envoy.service.auth.v3.Authorization/Check` over HTTP/2 (with TLS and ALPN `h2`
//!   for `https://`, else prior knowledge); the
//!   request's attributes (source and destination addresses, the source's SPIFFE ID, method,
//!   path, host, scheme, protocol, every header). `status.code` 0 allows (with the
//!   `ok_response` headers to the pod); otherwise the `denied_response` is the client's answer.
//!
//! No answer within the timeout, a broken one, or a failure: refused, 403 (`failureMode:
//! Allow` lets it through instead, counted and logged). gRPC unary calls are framed by hand
//! over hyper's pooled HTTP/2 client (a 5-byte prefix and the `grpc-status` trailer): one call
//! of one method does not need tonic's generated stubs.

mod proto;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use rampart_common::reason::AuthzReason;

use super::context::{Denial, Peer};
use crate::policy::http::ext_authz::{ExtAuthzModel, Transport};

/// Largest answer read from an authorizer.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

type AuthzClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Kept-alive connections to the authorizers, HTTP/1.1 or HTTP/2 (prior knowledge without TLS,
/// ALPN `h2` with it), one client per set of trusted CAs (the public roots, or a policy's
/// `caSecretRef`), so pooled TLS connections are never shared across trust settings.
type ClientKey = (Option<[u8; 32]>, bool);
static CLIENTS: LazyLock<Mutex<HashMap<ClientKey, AuthzClient>>> = LazyLock::new(Mutex::default);
/// A policy change that swaps CAs leaves its old client behind: past this many, start over.
const MAX_CLIENTS: usize = 64;

fn client_for(ca_pem: Option<&[u8]>, http2: bool) -> AuthzClient {
    use sha2::Digest as _;
    let key = (ca_pem.map(|pem| sha2::Sha256::digest(pem).into()), http2);
    let mut clients = CLIENTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(client) = clients.get(&key) {
        return client.clone();
    }
    if clients.len() >= MAX_CLIENTS {
        clients.clear();
    }
    let client = client(ca_pem, http2);
    clients.insert(key, client.clone());
    client
}

fn client(ca_pem: Option<&[u8]>, http2: bool) -> AuthzClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(crate::policy::http::ext_authz::MAX_TIMEOUT));
    let tls = super::tls_client::config(ca_pem);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if http2 {
        builder.enable_http2().wrap_connector(connector)
    } else {
        builder.enable_http1().wrap_connector(connector)
    };
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}

/// What the authorizer decided.
#[derive(Debug)]
pub enum Decision {
    /// Allowed; headers to set on the request to the pod.
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny(Denial),
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Request(String),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("grpc-status {0}: {1}")]
    Grpc(String, String),
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// Asks `model`'s authorizer about the request.
pub async fn check(model: &ExtAuthzModel, parts: &Parts, peer: &Peer, scheme: &str) -> Decision {
    let asked = match &model.transport {
        Transport::Http { base } => {
            tokio::time::timeout(model.timeout, check_http(model, base, parts)).await
        }
        Transport::Grpc { base } => {
            let ca_pem = model.ca_pem.as_deref();
            tokio::time::timeout(model.timeout, check_grpc(base, ca_pem, parts, peer, scheme)).await
        }
    };
    let failure = match asked {
        Ok(Ok(decision)) => return decision,
        Ok(Err(e)) => e,
        Err(_) => CheckError::Timeout(model.timeout),
    };
    if model.failure_allows {
        tracing::warn!(error = %failure, "ext_authz: the authorizer failed; let through (failureMode: Allow)");
        Decision::Allow(Vec::new())
    } else {
        tracing::warn!(error = %failure, "ext_authz: the authorizer failed; refused");
        Decision::Deny(Denial::new(
            AuthzReason::ExtAuthzError,
            StatusCode::FORBIDDEN,
        ))
    }
}

async fn check_http(
    model: &ExtAuthzModel,
    base: &str,
    parts: &Parts,
) -> Result<Decision, CheckError> {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = format!("{base}{path}");
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(&uri)
        .header(header::CONTENT_LENGTH, "0");
    if let Some(host) = super::context::authority(parts) {
        request = request.header(header::HOST, host);
    }
    for name in std::iter::once(&header::AUTHORIZATION).chain(&model.headers_to_send) {
        for value in parts.headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| CheckError::Request(e.to_string()))?;
    let response = client_for(model.ca_pem.as_deref(), false)
        .request(request)
        .await
        .map_err(|e| CheckError::Request(with_causes(&e)))?;
    let (head, body) = response.into_parts();
    if head.status.is_server_error() {
        return Err(CheckError::Status(head.status));
    }
    let pick = |names: &mut dyn Iterator<Item = &HeaderName>| -> Vec<(HeaderName, HeaderValue)> {
        names
            .flat_map(|name| {
                head.headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect()
    };
    if head.status == StatusCode::OK {
        return Ok(Decision::Allow(pick(&mut model.headers_to_upstream.iter())));
    }
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| CheckError::Malformed(e.to_string()))?
        .to_bytes();
    let always = [
        header::WWW_AUTHENTICATE,
        header::LOCATION,
        header::CONTENT_TYPE,
    ];
    let mut denial = Denial::new(AuthzReason::ExtAuthzDenied, head.status);
    denial.headers = pick(&mut always.iter().chain(&model.headers_to_client));
    denial.body = Some(body);
    Ok(Decision::Deny(denial))
}

/// An error and its causes (hyper's client errors say only "client error (Connect)"; the
/// cause, such as a certificate from an unknown issuer, is in the chain).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The `CheckRequest` of a request.
fn check_request(parts: &Parts, peer: &Peer, scheme: &str) -> proto::CheckRequest {
    let mut headers: std::collections::HashMap<String, String> =
        super::context::joined_headers(&parts.headers)
            .into_iter()
            .collect();
    let host = super::context::authority(parts).unwrap_or_default();
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), parts.method.to_string());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    headers.insert(":path".into(), path.clone());
    let address = |addr: std::net::SocketAddr| proto::Address {
        socket_address: Some(proto::SocketAddress {
            address: addr.ip().to_canonical().to_string(),
            port_value: u32::from(addr.port()),
        }),
    };
    let protocol = match parts.version {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    proto::CheckRequest {
        attributes: Some(proto::AttributeContext {
            source: Some(proto::Peer {
                address: Some(address(peer.source)),
                principal: peer
                    .spiffe_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
            }),
            destination: Some(proto::Peer {
                address: Some(address(peer.destination)),
                principal: String::new(),
            }),
            request: Some(proto::Request {
                http: Some(proto::HttpRequest {
                    id: String::new(),
                    method: parts.method.to_string(),
                    headers,
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    path,
                    host,
                    scheme: scheme.to_owned(),
                    size: 0,
                    protocol: protocol.to_owned(),
                }),
            }),
        }),
    }
}

async fn check_grpc(
    base: &str,
    ca_pem: Option<&[u8]>,
    parts: &Parts,
    peer: &Peer,
    scheme: &str,
) -> Result<Decision, CheckError> {
    let message = check_request(parts, peer, scheme).encode_to_vec();
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&message);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}{CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from(framed)))
        .map_err(|e| CheckError::Request(e.to_string()))?;
    let response = client_for(ca_pem, true)
        .request(request)
        .await
        .map_err(|e| CheckError::Request(with_causes(&e)))?;
    let (head, body) = response.into_parts();
    if head.status != StatusCode::OK {
        return Err(CheckError::Status(head.status));
    }
    let collected = Limited::new(body, MAX_ANSWER_BYTES + 5)
        .collect()
        .await
        .map_err(|e| CheckError::Malformed(e.to_string()))?;
    // A trailers-only answer carries `grpc-status` in its headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let grpc_status = trailers
        .get("grpc-status")
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if grpc_status != "0" {
        let message = trailers
            .get("grpc-message")
            .or_else(|| head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        return Err(CheckError::Grpc(grpc_status, message));
    }
    let bytes = collected.to_bytes();
    let answer = match bytes.as_ref() {
        [0, a, b, c, d, rest @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == rest.len() =>
        {
            proto::CheckResponse::decode(rest).map_err(|e| CheckError::Malformed(e.to_string()))?
        }
        _ => {
            return Err(CheckError::Malformed(
                "not one uncompressed gRPC message".into(),
            ));
        }
    };
    Ok(decide_grpc(&answer))
}

fn headers_of(options: &[proto::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue)> {
    options
        .iter()
        .filter_map(|option| {
            let h = option.header.as_ref()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            Some((HeaderName::from_bytes(h.key.as_bytes()).ok()?, value))
        })
        .collect()
}

/// `status.code` 0 allows; anything else refuses with the denied response.
fn decide_grpc(answer: &proto::CheckResponse) -> Decision {
    let code = answer.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let headers = answer
            .ok_response
            .as_ref()
            .map(|ok| headers_of(&ok.headers))
            .unwrap_or_default();
        return Decision::Allow(headers);
    }
    let denied = answer.denied_response.as_ref();
    let status = denied
        .and_then(|d| d.status.as_ref())
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::FORBIDDEN);
    let mut denial = Denial::new(AuthzReason::ExtAuthzDenied, status);
    if let Some(denied) = denied {
        denial.headers = headers_of(&denied.headers);
        if !denied.body.is_empty() {
            denial.body = Some(Bytes::from(denied.body.clone()));
        }
    }
    Decision::Deny(denial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_answer_allows_with_its_headers_or_refuses_with_its_response() {
        let ok = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 0,
                message: String::new(),
            }),
            denied_response: None,
            ok_response: Some(proto::OkHttpResponse {
                headers: vec![proto::HeaderValueOption {
                    header: Some(proto::HeaderValue {
                        key: "x-authz-user".into(),
                        value: "alice".into(),
                        raw_value: Vec::new(),
                    }),
                }],
                headers_to_remove: Vec::new(),
            }),
        };
        let decoded =
            proto::CheckResponse::decode(ok.encode_to_vec().as_slice()).unwrap_or_default();
        assert!(
            matches!(decide_grpc(&decoded), Decision::Allow(h) if h.len() == 1 && h[0].1 == "alice")
        );
        let denied = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 7,
                message: "no".into(),
            }),
            denied_response: Some(proto::DeniedHttpResponse {
                status: Some(proto::HttpStatus { code: 401 }),
                headers: Vec::new(),
                body: "who are you".into(),
            }),
            ok_response: None,
        };
        let Decision::Deny(denial) = decide_grpc(&denied) else {
            panic!("allowed");
        };
        assert_eq!(
            (denial.status, denial.body.as_deref()),
            (StatusCode::UNAUTHORIZED, Some(&b"who are you"[..]))
        );
        // A refusal without a status of its own is a 403.
        let bare = proto::CheckResponse {
            status: Some(proto::RpcStatus {
                code: 7,
                message: String::new(),
            }),
            ..Default::default()
        };
        assert!(
            matches!(decide_grpc(&bare), Decision::Deny(d) if d.status == StatusCode::FORBIDDEN)
        );
    }
}

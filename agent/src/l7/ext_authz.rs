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
            .filter(|name| super::context::authorizer_may_set(name))
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
                principal: peer
                    .destination_spiffe_id
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
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
    decide_grpc(&answer)
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
            let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            super::context::authorizer_may_set(&name).then_some((name, value))
        })
        .collect()
}

/// `status.code` 0 allows; anything else refuses with the denied response. An answer without
/// a `status` is malformed (Envoy reads it as OK; an empty message from a server that is not an
/// authorizer must not allow).
fn decide_grpc(answer: &proto::CheckResponse) -> Result<Decision, CheckError> {
    let Some(code) = answer.status.as_ref().map(|s| s.code) else {
        return Err(CheckError::Malformed(
            "a CheckResponse without status".into(),
        ));
    };
    if code == 0 {
        let headers = answer
            .ok_response
            .as_ref()
            .map(|ok| headers_of(&ok.headers))
            .unwrap_or_default();
        return Ok(Decision::Allow(headers));
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
    Ok(Decision::Deny(denial))
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
            matches!(decide_grpc(&decoded), Ok(Decision::Allow(h)) if h.len() == 1 && h[0].1 == "alice")
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
        let Ok(Decision::Deny(denial)) = decide_grpc(&denied) else {
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
            matches!(decide_grpc(&bare), Ok(Decision::Deny(d)) if d.status == StatusCode::FORBIDDEN)
        );
    }

    /// What a hostile or broken authorizer answers (a loopback server answering every check
    /// with the same response).
    struct Answer {
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    }

    /// Serves `answer` on a loopback port, HTTP/1.1 or h2c; returns `http://127.0.0.1:port`.
    async fn authorizer(answer: Answer, http2: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = std::sync::Arc::clone(&answer);
                let service = hyper::service::service_fn(move |_request| {
                    let answer = std::sync::Arc::clone(&answer);
                    async move {
                        let mut response = hyper::Response::new(Full::new(answer.body.clone()));
                        *response.status_mut() = answer.status;
                        for (name, value) in &answer.headers {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(value),
                            ) {
                                response.headers_mut().append(n, v);
                            }
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(async move {
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        format!("http://{address}")
    }

    fn model(transport: Transport) -> ExtAuthzModel {
        ExtAuthzModel {
            transport,
            timeout: std::time::Duration::from_secs(2),
            failure_allows: false,
            headers_to_send: Vec::new(),
            headers_to_upstream: vec![
                HeaderName::from_static("x-authz-user"),
                header::CONTENT_LENGTH,
                header::HOST,
            ],
            headers_to_client: vec![header::TRANSFER_ENCODING],
            ca_secret: None,
            ca_pem: None,
            origin: crate::policy::diag::Origin::new(
                std::path::Path::new("t.yaml"),
                crate::policy::diag::Pos::default(),
            ),
        }
    }

    fn asked() -> (Parts, Peer) {
        let parts = hyper::Request::builder()
            .uri("/orders")
            .header("host", "shop")
            .body(())
            .unwrap_or_default()
            .into_parts()
            .0;
        let peer = Peer {
            spiffe_id: None,
            source: "10.0.0.1:1000".parse().unwrap_or_else(|e| panic!("{e}")),
            destination: "10.0.0.2:8080".parse().unwrap_or_else(|e| panic!("{e}")),
            destination_spiffe_id: crate::spiffe::SpiffeId::parse("spiffe://td/ns/web/sa/api").ok(),
            server_name: None,
        };
        (parts, peer)
    }

    /// The gRPC request names the destination workload's SPIFFE ID as Envoy does
    /// (`attributes.destination.principal`).
    #[test]
    fn the_check_request_names_the_destination_workload() {
        let (parts, peer) = asked();
        let request = check_request(&parts, &peer, "http");
        let destination = request
            .attributes
            .and_then(|a| a.destination)
            .unwrap_or_else(|| panic!("no destination"));
        assert_eq!(destination.principal, "spiffe://td/ns/web/sa/api");
    }

    /// A gRPC answer with `body` as its message frame(s) and `grpc-status: 0`.
    fn grpc_answer(body: Bytes) -> Answer {
        Answer {
            status: StatusCode::OK,
            headers: vec![
                ("content-type", "application/grpc".into()),
                ("grpc-status", "0".into()),
            ],
            body,
        }
    }

    fn framed(message: &[u8], compressed: u8, claimed: Option<u32>) -> Bytes {
        let mut out = vec![compressed];
        let length = claimed.unwrap_or(u32::try_from(message.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    /// A hostile authorizer refuses (never allows), cannot make the proxy hold more than
    /// [`MAX_ANSWER_BYTES`] of its answer, and cannot set framing or routing headers.
    #[tokio::test]
    async fn a_hostile_authorizer_cannot_allow_by_accident_or_reframe_the_request() {
        let (parts, peer) = asked();
        let refused_as_failure = |d: &Decision| matches!(d, Decision::Deny(denial) if denial.reason == rampart_common::reason::ProxyReason::Authz(AuthzReason::ExtAuthzError));
        // The decision on the HTTP authorizer's `status`, `headers` and `body`.
        let over_http = async |status, headers, body| {
            let base = authorizer(
                Answer {
                    status,
                    headers,
                    body,
                },
                false,
            )
            .await;
            check(&model(Transport::Http { base }), &parts, &peer, "http").await
        };
        // HTTP: a refusal with a body past the limit is a failure, not a 1 MiB answer.
        let d = over_http(
            StatusCode::FORBIDDEN,
            Vec::new(),
            Bytes::from(vec![b'x'; 1 << 20]),
        )
        .await;
        assert!(refused_as_failure(&d), "{d:?}");
        // HTTP: more headers than a client reads: a failure.
        let flood = (0..500).map(|i| ("x-flood", i.to_string())).collect();
        let d = over_http(StatusCode::OK, flood, Bytes::new()).await;
        assert!(refused_as_failure(&d), "{d:?}");
        // HTTP: an allow that names framing and routing headers: only the others pass.
        let named = vec![
            ("x-authz-user", "alice".into()),
            ("host", "elsewhere".into()),
        ];
        let d = over_http(StatusCode::OK, named, Bytes::new()).await;
        let Decision::Allow(headers) = d else {
            panic!("refused: {d:?}");
        };
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-authz-user"]);

        // gRPC: an empty message (no status), a compressed one, one whose length lies, and
        // one past the limit: each a failure.
        let ok_with = |headers: Vec<(&str, &str)>| proto::CheckResponse {
            status: Some(proto::RpcStatus::default()),
            denied_response: None,
            ok_response: Some(proto::OkHttpResponse {
                headers: headers
                    .into_iter()
                    .map(|(k, v)| proto::HeaderValueOption {
                        header: Some(proto::HeaderValue {
                            key: k.into(),
                            value: v.into(),
                            raw_value: Vec::new(),
                        }),
                    })
                    .collect(),
                headers_to_remove: Vec::new(),
            }),
        };
        let ok = ok_with(Vec::new()).encode_to_vec();
        let huge = ok_with(vec![("x-big", &"y".repeat(MAX_ANSWER_BYTES))]).encode_to_vec();
        for (what, body) in [
            ("no status", framed(&[], 0, None)),
            ("compressed", framed(&ok, 1, None)),
            ("a length that lies", framed(&ok, 0, Some(9999))),
            ("past the limit", framed(&huge, 0, None)),
        ] {
            let base = authorizer(grpc_answer(body), true).await;
            let d = check(&model(Transport::Grpc { base }), &parts, &peer, "http").await;
            assert!(refused_as_failure(&d), "{what}: {d:?}");
        }
        // gRPC: an allow that sets framing and routing headers: only the others pass.
        let body = framed(
            &ok_with(vec![
                ("content-length", "0"),
                ("transfer-encoding", "chunked"),
                ("host", "elsewhere"),
                ("x-authz-user", "alice"),
            ])
            .encode_to_vec(),
            0,
            None,
        );
        let base = authorizer(grpc_answer(body), true).await;
        let d = check(&model(Transport::Grpc { base }), &parts, &peer, "http").await;
        let Decision::Allow(headers) = d else {
            panic!("refused: {d:?}");
        };
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-authz-user"]);
    }
}

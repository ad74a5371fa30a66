//! HTTP on a tunnelled stream: HTTP/1.1, or HTTP/2 with prior knowledge (h2c, told apart by the
//! connection preface), each request through the filter chain; a denied one is answered here and
//! never reaches the pod; one that passes goes to the pod over the flow's own upstream
//! connection (opened when the first request passes), in the protocol the client spoke (keep-alive; HTTP/2 streams multiplexed;
//! bodies streamed, not buffered).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::sync::Mutex;

use super::body::UpstreamBody;
use super::chain;
use super::context::{Denial, Passed, Peer};
use super::prefixed::Prefixed;
use super::waf::WafReport;
use super::{HttpRoute, L7Stats};
use crate::flows::event::{ProxyEvent, ProxyEventSink, ProxySide};
use crate::flows::record::HttpAccess;
use rampart_common::reason::{AuthnReason, ProxyReason};

type Body = http_body_util::combinators::BoxBody<Bytes, super::body::BoxError>;

/// Largest request head (start line and headers) the proxy reads; over it, `431` (an 8 KiB
/// token with room for the rest).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How long a client has to send a request head, and how long a kept-alive HTTP/1 connection
/// may wait for its next request (nginx's `keepalive_timeout` is 75 s; clients' pools close
/// theirs sooner): a client that holds a connection without sending is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection to the pod, in the client's protocol.
enum UpstreamConnection {
    /// One request at a time.
    H1(Mutex<hyper::client::conn::http1::SendRequest<UpstreamBody>>),
    /// Streams multiplexed; the handle is cloned per request.
    H2(hyper::client::conn::http2::SendRequest<UpstreamBody>),
}

impl UpstreamConnection {
    async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            UpstreamConnection::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await
            }
            UpstreamConnection::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

/// The route a request is judged by, looked up as it arrives: a kept-alive connection (or an
/// HTTP/2 connection's next stream) follows policy changes instead of keeping the rules it
/// started with.
pub enum RouteNow {
    /// The port's L7 rules in force.
    Rules(Arc<HttpRoute>),
    /// The port has no L7 rules any more: the request goes to the pod as it is.
    NoRules,
    /// The policy in force no longer admits the connection (the lookup counted and logged why):
    /// `403`, and an HTTP/1 connection is closed after it.
    Refused,
}

/// Looks up the route in force for the connection's next request.
pub type RouteLookup = Arc<dyn Fn() -> RouteNow + Send + Sync>;

/// A lookup that always answers `route` (tests, and callers without a policy to follow).
pub fn fixed_route(route: Arc<HttpRoute>) -> RouteLookup {
    Arc::new(move || RouteNow::Rules(Arc::clone(&route)))
}

/// Opens the connection to the pod; `None` if it cannot (the connector counts and logs why).
pub type Connect<U> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Option<U>> + Send>> + Send>;

/// A connector for a stream that is already open.
pub fn connected<U: Send + 'static>(stream: U) -> Connect<U> {
    Box::new(move || Box::pin(std::future::ready(Some(stream))))
}

/// What opens the pod's connection, once.
type Opening = Pin<Box<dyn Future<Output = Option<UpstreamConnection>> + Send>>;

/// Where the opening of the pod's connection stands.
enum OpenState {
    NotStarted(Opening),
    /// On a task of its own: a request cancelled while waiting (an HTTP/2 stream reset, a
    /// client gone) leaves it running for the next one.
    Running(tokio::task::JoinHandle<Option<UpstreamConnection>>),
    Done,
}

/// The connection to the pod, opened when the first request passes the filters: a connection
/// whose requests are all refused never reaches the pod.
struct LazyUpstream {
    state: tokio::sync::Mutex<OpenState>,
    open: tokio::sync::OnceCell<Option<UpstreamConnection>>,
}

impl LazyUpstream {
    fn new<U>(connect: Connect<U>, http2: bool) -> LazyUpstream
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opening: Opening =
            Box::pin(async move { connect_upstream(connect().await?, http2).await });
        LazyUpstream {
            state: tokio::sync::Mutex::new(OpenState::NotStarted(opening)),
            open: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection, opened by the first caller (later ones wait for it); `None` if it
    /// could not be opened.
    async fn get(&self) -> Option<&UpstreamConnection> {
        self.open
            .get_or_init(|| async {
                let mut state = self.state.lock().await;
                if let OpenState::NotStarted(_) = &*state
                    && let OpenState::NotStarted(opening) =
                        std::mem::replace(&mut *state, OpenState::Done)
                {
                    *state = OpenState::Running(tokio::spawn(opening));
                }
                let OpenState::Running(task) = &mut *state else {
                    return None;
                };
                let opened = task.await.ok().flatten();
                *state = OpenState::Done;
                opened
            })
            .await
            .as_ref()
    }
}

/// Serves requests from `downstream` until either side closes; the pod's connection is opened
/// by `connect` when a request first passes.
pub async fn relay<D, U>(
    downstream: D,
    connect: Connect<U>,
    routes: RouteLookup,
    peer: Peer,
    stats: Arc<L7Stats>,
    events: Option<ProxyEventSink>,
) where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Drained after hyper is done with it, so the last response is not lost to a reset.
    let mut downstream = super::linger::Lingering::new(downstream);
    // Enough of the stream to tell the preface from a request line: one read, unless the bytes
    // keep matching the preface.
    // A client that sends nothing is closed like one that sends no request head.
    let mut head = Vec::with_capacity(H2_PREFACE.len());
    let read_head = async {
        while head.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&head) {
            let mut buf = [0u8; 24];
            let wanted = H2_PREFACE.len() - head.len();
            match downstream.read(&mut buf[..wanted]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(HEADER_READ_TIMEOUT, read_head).await,
        Ok(true)
    ) {
        return;
    }
    let http2 = head == H2_PREFACE;
    let downstream = TokioIo::new(Prefixed::new(head, downstream));
    let sender = Arc::new(LazyUpstream::new(connect, http2));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (now, peer, stats, sender, events) = (
            routes(),
            peer.clone(),
            Arc::clone(&stats),
            Arc::clone(&sender),
            events.clone(),
        );
        async move {
            let route = match now {
                RouteNow::Rules(route) => route,
                RouteNow::NoRules => return Ok(unfiltered(req, &sender, &stats).await),
                RouteNow::Refused => {
                    let mut response = status_response(StatusCode::FORBIDDEN);
                    if req.version() < hyper::Version::HTTP_2 {
                        response.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    return Ok(response);
                }
            };
            let started = Instant::now();
            // The access log's view of the request, taken only when there is a log to write.
            let head = events.as_ref().map(|_| RequestHead::of(&req));
            let (response, outcome, waf) = handle(req, &route, &peer, &stats, &sender).await;
            if let (Some(sink), Some(head)) = (events, head) {
                let seen = Seen {
                    head,
                    outcome: &outcome,
                    waf: waf.as_ref(),
                };
                log_access(&sink, &route, &peer, seen, &response, started);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let served = if http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(HEADER_READ_TIMEOUT / 2))
            .keep_alive_timeout(HEADER_READ_TIMEOUT / 3)
            .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
            .serve_connection(downstream, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .max_header_size(MAX_REQUEST_HEAD_BYTES)
            .serve_connection(downstream, service)
            .await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "l7: downstream connection ended");
    }
}

/// A request on a port whose L7 rules were removed: to the pod as it is.
async fn unfiltered(
    req: Request<Incoming>,
    upstream: &LazyUpstream,
    stats: &L7Stats,
) -> Response<Body> {
    let Some(upstream) = upstream.get().await else {
        return status_response(StatusCode::BAD_GATEWAY);
    };
    let mut req = req;
    super::normalize::hop_by_hop_only(req.headers_mut());
    match upstream.send(req.map(|body| body.boxed())).await {
        Ok(mut response) => {
            stats.forwarded();
            super::normalize::hop_by_hop_only(response.headers_mut());
            response.map(|body| body.map_err(Into::into).boxed())
        }
        Err(e) => {
            tracing::debug!(error = %e, "l7: upstream request failed");
            status_response(StatusCode::BAD_GATEWAY)
        }
    }
}

/// The client side of the connection to the pod, driven by a task of its own.
async fn connect_upstream<U>(upstream: U, http2: bool) -> Option<UpstreamConnection>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(upstream);
    let result = if http2 {
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map(|(sender, connection)| {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "l7: upstream connection ended");
                    }
                });
                UpstreamConnection::H2(sender)
            })
    } else {
        hyper::client::conn::http1::handshake(io)
            .await
            .map(|(sender, connection)| {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "l7: upstream connection ended");
                    }
                });
                UpstreamConnection::H1(Mutex::new(sender))
            })
    };
    result
        .map_err(|e| tracing::debug!(error = %e, http2, "l7: upstream handshake failed"))
        .ok()
}

/// What the chain decided, for the access log.
enum Outcome {
    Passed(Passed),
    Denied(Denial),
}

/// The parts of a request the access log keeps: never the query, never a header value but the
/// host.
struct RequestHead {
    method: String,
    host: String,
    path: String,
}

impl RequestHead {
    fn of(req: &Request<Incoming>) -> RequestHead {
        let host = req
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                req.headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        RequestHead {
            method: req.method().to_string(),
            host,
            path: req.uri().path().to_owned(),
        }
    }
}

/// What the proxy saw of a request and decided, for the access log.
struct Seen<'a> {
    head: RequestHead,
    outcome: &'a Outcome,
    waf: Option<&'a WafReport>,
}

fn log_access(
    sink: &ProxyEventSink,
    route: &HttpRoute,
    peer: &Peer,
    seen: Seen<'_>,
    response: &Response<Body>,
    started: Instant,
) {
    let Seen { head, outcome, waf } = seen;
    // The route's DLP detectors (of both directions) apply to what the access log keeps of
    // the request too.
    let path = match &route.model.dlp {
        Some(dlp) => {
            let mut path = head.path.into_bytes();
            for set in std::iter::once(&dlp.set).chain(dlp.requests.as_ref().map(|r| &r.set)) {
                let found = set.find(&path);
                if !found.is_empty() {
                    path = set.apply(&path, &found);
                }
            }
            String::from_utf8_lossy(&path).into_owned()
        }
        None => head.path,
    };
    let mut access = HttpAccess {
        method: head.method,
        host: head.host,
        path,
        status: response.status().as_u16(),
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        policy: route.policy.clone(),
        authn_method: None,
        principal: None,
        api_key_client: None,
        rate_limit_bucket: None,
        rate_limit_remaining: None,
        denied_by: None,
        tls_server_name: peer.server_name.clone(),
        waf_rule_ids: waf.map(|w| w.rule_ids.clone()).unwrap_or_default(),
        waf_anomaly_score: waf.and_then(|w| w.anomaly_score),
        waf_body: waf.and_then(|w| w.body).map(str::to_owned),
        waf_response_body: waf.and_then(|w| w.response_body).map(str::to_owned),
        waf_outbound_anomaly_score: waf.and_then(|w| w.outbound_score),
    };
    let refused = match outcome {
        Outcome::Passed(passed) => {
            if let Some(principal) = &passed.principal {
                access.authn_method = Some("jwt".into());
                access.principal = Some(
                    principal
                        .claims
                        .subject()
                        .map_or_else(|| principal.provider.clone(), str::to_owned),
                );
            }
            if let Some(client) = &passed.api_key_client {
                access.authn_method.get_or_insert_with(|| "api_key".into());
                access.api_key_client = Some(client.clone());
            }
            if let Some((bucket, remaining)) = &passed.rate_limit {
                access.rate_limit_bucket = Some(bucket.clone());
                access.rate_limit_remaining = Some(*remaining);
            }
            None
        }
        Outcome::Denied(denial) => {
            let reason = denial.reason;
            access.denied_by = Some(format!("{}:{}", reason.filter(), reason.name()));
            Some(reason)
        }
    };
    sink(&ProxyEvent {
        side: ProxySide::Inbound,
        refused,
        http: Some(Box::new(access)),
        peer: peer.spiffe_id.as_ref().map(|id| id.as_str().to_owned()),
        source: Some(peer.source),
        destination: Some(peer.destination),
    });
}

/// What `handle` answers: the response, what the chain decided, and what the WAF found.
type Handled = (Response<Body>, Outcome, Option<WafReport>);

/// A request the filters admitted, ready for the pod.
struct Admitted {
    parts: hyper::http::request::Parts,
    body: UpstreamBody,
    passed: Passed,
    waf: Option<WafReport>,
    /// The WAF's transaction, open for the response.
    exchange: Option<rampart_waf::Exchange>,
}

async fn handle(
    req: Request<Incoming>,
    route: &HttpRoute,
    peer: &Peer,
    stats: &Arc<L7Stats>,
    upstream: &LazyUpstream,
) -> Handled {
    let Admitted {
        mut parts,
        body,
        passed,
        mut waf,
        exchange,
    } = match admit(req, route, peer, stats).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    // Headers the proxy sets from authentication are never taken from the client.
    for header in &route.upstream_headers {
        parts.headers.remove(header);
    }
    chain::strip_credentials(&mut parts, &passed.strip);
    for (name, value) in &passed.set_upstream {
        parts.headers.insert(name.clone(), value.clone());
    }
    let no_body = parts.method == hyper::Method::HEAD;
    let Some(upstream) = upstream.get().await else {
        return (
            status_response(StatusCode::BAD_GATEWAY),
            Outcome::Passed(passed),
            waf,
        );
    };
    let response = match upstream.send(Request::from_parts(parts, body)).await {
        Ok(response) => {
            stats.forwarded();
            match filter_response(response, no_body, exchange, route, &mut waf, stats).await {
                Ok(mut response) => {
                    for (name, value) in &passed.set_response {
                        response.headers_mut().insert(name.clone(), value.clone());
                    }
                    response
                }
                Err((response, denial)) => return (response, Outcome::Denied(denial), waf),
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "l7: upstream request failed");
            status_response(StatusCode::BAD_GATEWAY)
        }
    };
    (response, Outcome::Passed(passed), waf)
}

/// The request filters: the chain (`authn` → `authz` → `ratelimit`), the WAF, request DLP.
async fn admit(
    req: Request<Incoming>,
    route: &HttpRoute,
    peer: &Peer,
    stats: &Arc<L7Stats>,
) -> Result<Admitted, Handled> {
    let (mut parts, body) = req.into_parts();
    // The filters and the pod must read the same request: normalised first, or refused.
    if let Err(denial) = super::normalize::request(&mut parts, route.model.escaped_slashes) {
        stats.deny(denial.reason);
        tracing::info!(
            policy = %route.policy,
            reason = denial.reason.name(),
            source = %peer.source,
            method = %parts.method,
            path = parts.uri.path(),
            "l7: request refused before the filters"
        );
        return Err((local_response(&denial), Outcome::Denied(denial), None));
    }
    let mut decision = chain::run(route, &parts, peer, stats);
    // A token whose `kid` no key has may have been signed with a key the IdP just published:
    // re-fetch the remote sets (rate-limited per source) and judge the request once more.
    if let Err(denial) = &decision
        && denial.reason == ProxyReason::Authn(AuthnReason::KeySelection)
    {
        let mut refreshed = false;
        for remote in route.remote_sources() {
            refreshed |= remote
                .refresh_for_unknown_kid(super::jwks::KID_REFRESH_WAIT)
                .await;
        }
        if refreshed {
            decision = chain::run(route, &parts, peer, stats);
        }
    }
    let passed = match decision {
        Ok(passed) => passed,
        Err(denial) => {
            stats.deny(denial.reason);
            tracing::info!(
                policy = %route.policy,
                filter = denial.reason.filter(),
                reason = denial.reason.name(),
                source = %peer.source,
                destination = %peer.destination,
                method = %parts.method,
                path = parts.uri.path(),
                "l7: request denied"
            );
            return Err((local_response(&denial), Outcome::Denied(denial), None));
        }
    };
    // The WAF, last: it judges the request as the client sent it (before credentials are
    // stripped), and decides which body goes on.
    let (body, waf, exchange) = match &route.waf {
        None => (body.boxed(), None, None),
        Some(waf) => {
            let super::waf::Inspected {
                judged,
                report,
                exchange,
            } = super::waf::inspect(waf, &parts, body, peer).await;
            stats.waf_evaluated(&route.policy, &report, waf.model.block);
            match judged {
                Ok(body) => (body, Some(report), exchange),
                Err(denial) => {
                    stats.deny(denial.reason);
                    tracing::info!(
                        policy = %route.policy,
                        reason = denial.reason.name(),
                        rules = ?report.rule_ids,
                        score = ?report.anomaly_score,
                        source = %peer.source,
                        method = %parts.method,
                        path = parts.uri.path(),
                        "waf: request denied"
                    );
                    let response = waf_refusal(&denial, waf, report.matched_block);
                    return Err((response, Outcome::Denied(denial), Some(report)));
                }
            }
        }
    };
    // Request DLP, on what the client sent (before credentials are stripped).
    let request_dlp = route
        .model
        .dlp
        .as_ref()
        .and_then(|dlp| Some((dlp, dlp.requests.as_ref()?)));
    let body = match request_dlp {
        Some((dlp, requests)) => {
            match super::dlp_request::inspect(dlp, requests, &mut parts, body, stats).await {
                Ok(body) => body,
                Err(denial) => {
                    stats.deny(denial.reason);
                    tracing::info!(
                        policy = %route.policy,
                        reason = denial.reason.name(),
                        source = %peer.source,
                        method = %parts.method,
                        "dlp: request refused"
                    );
                    return Err((local_response(&denial), Outcome::Denied(denial), waf));
                }
            }
        }
        None => body,
    };
    // The WAF's response rules read text: ask the pod for an uncompressed response (one that
    // comes compressed anyway is decoded for them, see `waf::inspect_response`).
    if exchange.is_some() {
        parts.headers.remove(hyper::header::ACCEPT_ENCODING);
    }
    Ok(Admitted {
        parts,
        body,
        passed,
        waf,
        exchange,
    })
}

/// The response filters on what the pod answered: the WAF's response rules (on the body as
/// sent), then DLP. `Err`: the answer that replaces it, and why.
async fn filter_response(
    response: Response<Incoming>,
    no_body: bool,
    exchange: Option<rampart_waf::Exchange>,
    route: &HttpRoute,
    waf: &mut Option<WafReport>,
    stats: &Arc<L7Stats>,
) -> Result<Response<Body>, (Response<Body>, Denial)> {
    let (mut head, body) = response.into_parts();
    if let Err(denial) = super::normalize::response(&mut head.headers) {
        return Err(refuse_response(route, stats, denial));
    }
    let has_body = !(no_body
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED);
    let mut body = body.boxed();
    if let (Some(exchange), Some(route_waf), Some(report)) = (exchange, &route.waf, waf.as_mut()) {
        let (judged, verdict) =
            super::waf::inspect_response(route_waf, exchange, &head, body, has_body, report).await;
        stats.waf_response(&route.policy, &verdict, route_waf.model.block);
        match judged {
            Ok(judged) => body = judged,
            Err(denial) => {
                stats.deny(denial.reason);
                tracing::info!(
                    policy = %route.policy,
                    reason = denial.reason.name(),
                    rules = ?report.rule_ids,
                    score = ?report.outbound_score,
                    "waf: response denied"
                );
                let by_rules = verdict.matched_block.is_some();
                return Err((waf_refusal(&denial, route_waf, by_rules), denial));
            }
        }
    }
    let body = match &route.model.dlp {
        Some(dlp) if has_body && !dlp.set.detectors.is_empty() => {
            match super::dlp::filter(dlp, &mut head, body, stats).await {
                Ok(super::dlp::Filtered::Streamed(body)) => (*body).boxed(),
                Ok(super::dlp::Filtered::Whole(bytes, trailers)) => {
                    super::body::whole_body(bytes, trailers)
                        .map_err(Into::into)
                        .boxed()
                }
                Err(refusal) => {
                    let denial = Denial::new(refusal.reason(), StatusCode::BAD_GATEWAY);
                    return Err(refuse_response(route, stats, denial));
                }
            }
        }
        _ => body.map_err(Into::into).boxed(),
    };
    Ok(Response::from_parts(head, body))
}

/// A refusal of the pod's response, counted and logged; the answer that replaces it.
fn refuse_response(route: &HttpRoute, stats: &L7Stats, denial: Denial) -> (Response<Body>, Denial) {
    stats.deny(denial.reason);
    tracing::info!(
        policy = %route.policy,
        filter = denial.reason.filter(),
        reason = denial.reason.name(),
        "l7: the pod's response refused"
    );
    (local_response(&denial), denial)
}

fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The WAF's answer to a refused request (or response): the policy's block page when the rules
/// blocked it, else the plain one (a body over the limit, an engine failure).
fn waf_refusal(denial: &Denial, waf: &super::waf::RouteWaf, by_rules: bool) -> Response<Body> {
    let Some(page) = waf.model.block_page.as_ref().filter(|_| by_rules) else {
        return local_response(denial);
    };
    let mut response = Response::new(full_body(page.body.clone()));
    *response.status_mut() = page.status.unwrap_or(denial.status);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, page.content_type.clone());
    response
}

fn local_response(denial: &Denial) -> Response<Body> {
    let mut response = status_response(denial.status);
    for (name, value) in &denial.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

fn status_response(status: StatusCode) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(full_body(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests;

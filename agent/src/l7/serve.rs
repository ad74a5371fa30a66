//! HTTP on a tunnelled stream: HTTP/1.1, or HTTP/2 with prior knowledge (h2c, told apart by the
//! connection preface), each request through the filter chain; a denied one is answered here and
//! never reaches the pod; one that passes goes to the pod over the flow's own upstream
//! connection (opened when the first request passes), in the protocol the client spoke (keep-alive; HTTP/2 streams multiplexed;
//! bodies streamed, not buffered).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use super::access_log::{Outcome, RequestHead, Seen, log_access};
use super::body::{RequestBody, UpstreamBody};
use super::clock::{ConnectionClock, TimedBody, WhileInFlight};
use super::context::{Passed, Peer};
use super::filter::{Phase, RequestContext, ResponseBody, ResponseContext};
use super::prefixed::Prefixed;
use super::respond::{Body, status_response};
use super::upstream::LazyUpstream;
pub use super::upstream::{Connect, connected};
use super::waf::WafReport;
use super::{HttpRoute, L7Stats};
use crate::activity::Watched;
use crate::flows::event::ProxyEventSink;
use crate::limits::{Limit, Limits};
use crate::listen::Drain;

/// Largest request head (start line and headers) the proxy reads; over it, `431` (an 8 KiB
/// token with room for the rest).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

/// What every client connection of one side of the proxy shares.
#[derive(Clone)]
pub struct RelayShared {
    pub stats: Arc<L7Stats>,
    pub events: Option<ProxyEventSink>,
    /// The agent's drain: HTTP/1 connections end at a request boundary, HTTP/2 ones get a
    /// GOAWAY.
    pub drain: Drain,
    pub limits: Arc<Limits>,
}

/// Serves requests from `downstream` until either side closes or the connection is over one
/// of its limits (see [`super::clock`]); the pod's connection is opened by `connect` when a
/// request first passes.
pub async fn relay<D, U>(
    downstream: D,
    connect: Connect<U>,
    routes: RouteLookup,
    peer: Peer,
    shared: RelayShared,
) where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let RelayShared {
        stats,
        events,
        drain,
        limits,
    } = shared;
    // Drained after hyper is done with it, so the last response is not lost to a reset.
    let mut downstream = super::linger::Lingering::new(downstream);
    // Enough of the stream to tell the preface from a request line: one read, unless the bytes
    // keep matching the preface. A client that sends nothing is idle.
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
    match tokio::time::timeout(limits.settings.http_idle_timeout, read_head).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => return limits.hit(Limit::HttpIdleTimeout),
    }
    let http2 = head == H2_PREFACE;
    let clock = ConnectionClock::new(http2);
    // The bytes already read pass the clock again: an HTTP/1 head has started.
    let downstream = TokioIo::new(Watched::new(
        Prefixed::new(head, downstream),
        Arc::clone(&clock),
    ));
    let sender = Arc::new(LazyUpstream::new(connect, http2));
    let draining = drain.clone();
    let source = peer.source;
    let (in_flight, body_limits) = (Arc::clone(&clock), Arc::clone(&limits));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let request = in_flight.request();
        let (now, peer, stats, sender, events) = (
            routes(),
            peer.clone(),
            Arc::clone(&stats),
            Arc::clone(&sender),
            events.clone(),
        );
        let draining = draining.clone();
        let (req, body_expired) = timed(req, &body_limits);
        async move {
            let http1 = req.version() < hyper::Version::HTTP_2;
            let mut response = answer(req, now, peer, stats, sender, events, &body_expired).await;
            // A draining agent ends kept-alive HTTP/1 connections at a request boundary: the
            // client's next request opens a connection to the agent that accepts now.
            if http1 && draining.is_draining() {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            // In flight until the response has been written.
            let response = response.map(|inner| {
                WhileInFlight {
                    inner,
                    _in_flight: request,
                }
                .boxed()
            });
            Ok::<_, Infallible>(response)
        }
    });
    let settings = &limits.settings;
    let served = if http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(settings.http_idle_timeout / 2))
            .keep_alive_timeout(settings.http_idle_timeout / 3)
            .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
            .max_concurrent_streams(settings.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(settings.h2_max_pending_reset_streams)
            .max_local_error_reset_streams(settings.h2_max_local_error_resets)
            .serve_connection(downstream, service);
        tokio::pin!(connection);
        // Draining: a GOAWAY; streams in progress finish.
        tokio::select! {
            served = connection.as_mut() => served,
            () = drain.started() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    served = connection.as_mut() => served,
                    _ = clock.expired(&limits) => return,
                }
            }
            _ = clock.expired(&limits) => return,
        }
    } else {
        // The head timeout and the keep-alive idle timeout are the clock's: hyper's own
        // header timer would cut an idle kept-alive connection at the head timeout.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .max_header_size(MAX_REQUEST_HEAD_BYTES)
            .serve_connection(downstream, service);
        tokio::select! {
            served = connection => served,
            _ = clock.expired(&limits) => return,
        }
    };
    if let Err(e) = served {
        if http2 && h2_abuse(&e) {
            limits.hit(Limit::Http2Abuse);
            tracing::info!(%source, error = %e, "l7: HTTP/2 connection ended by its limits");
        }
        tracing::debug!(error = %e, "l7: downstream connection ended");
    }
}

/// The request with its body held to the body timeout (a body that is empty already is left
/// as it is), and the flag that says it expired.
fn timed(req: Request<Incoming>, limits: &Arc<Limits>) -> (Request<UpstreamBody>, Arc<AtomicBool>) {
    if req.body().is_end_stream() {
        return (
            req.map(|b| b.map_err(Into::into).boxed()),
            Arc::new(AtomicBool::new(false)),
        );
    }
    let (parts, body) = req.into_parts();
    let (body, expired) = TimedBody::new(body, Arc::clone(limits));
    (Request::from_parts(parts, body.boxed()), expired)
}

/// Whether an HTTP/2 connection ended because the client broke the protocol's limits: a
/// GOAWAY the server sent (`ENHANCE_YOUR_CALM` for floods of resets, CONTINUATION or small
/// frames; a protocol, frame size or compression error).
pub fn h2_abuse(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away()
                && !h2.is_remote()
                && h2.reason().is_some_and(|r| {
                    [
                        h2::Reason::ENHANCE_YOUR_CALM,
                        h2::Reason::PROTOCOL_ERROR,
                        h2::Reason::FRAME_SIZE_ERROR,
                        h2::Reason::COMPRESSION_ERROR,
                        h2::Reason::FLOW_CONTROL_ERROR,
                    ]
                    .contains(&r)
                });
        }
        source = err.source();
    }
    false
}

/// One request's answer: refused for the connection's route, passed through as it is, or
/// through the chain (and logged).
async fn answer(
    req: Request<UpstreamBody>,
    now: RouteNow,
    peer: Peer,
    stats: Arc<L7Stats>,
    sender: Arc<LazyUpstream>,
    events: Option<ProxyEventSink>,
    body_expired: &AtomicBool,
) -> Response<Body> {
    let route = match now {
        RouteNow::Rules(route) => route,
        RouteNow::NoRules => {
            let response = unfiltered(req, &sender, &stats).await;
            return over_time(response, body_expired);
        }
        RouteNow::Refused => {
            let mut response = status_response(StatusCode::FORBIDDEN);
            if req.version() < hyper::Version::HTTP_2 {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            return response;
        }
    };
    let started = Instant::now();
    // The access log's view of the request, taken only when there is a log to write.
    let head = events.as_ref().map(|_| RequestHead::of(&req));
    let (response, outcome, waf) = handle(req, &route, &peer, &stats, &sender).await;
    let response = over_time(response, body_expired);
    if let (Some(sink), Some(head)) = (events, head) {
        let seen = Seen {
            head,
            outcome: &outcome,
            waf: waf.as_ref(),
        };
        log_access(&sink, &route, &peer, seen, &response, started);
    }
    response
}

/// `408` (and the connection closed) in place of whatever a request whose body ran out of time
/// was answered (a filter's refusal of an unreadable body, the pod's connection failed under
/// it).
fn over_time(response: Response<Body>, body_expired: &AtomicBool) -> Response<Body> {
    if !body_expired.load(Ordering::Relaxed) {
        return response;
    }
    let mut response = status_response(StatusCode::REQUEST_TIMEOUT);
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// A request on a port whose L7 rules were removed: to the pod as it is.
async fn unfiltered(
    req: Request<UpstreamBody>,
    upstream: &LazyUpstream,
    stats: &L7Stats,
) -> Response<Body> {
    let Some(upstream) = upstream.get().await else {
        return status_response(StatusCode::BAD_GATEWAY);
    };
    let mut req = req;
    super::normalize::hop_by_hop_only(req.headers_mut());
    match upstream.send(req).await {
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

/// One request through the filter chain and, if it passes, to the pod and back through the
/// chain's response phase: the response, what was decided (for the access log), and what the
/// WAF found.
async fn handle(
    req: Request<UpstreamBody>,
    route: &HttpRoute,
    peer: &Peer,
    stats: &Arc<L7Stats>,
    upstream: &LazyUpstream,
) -> (Response<Body>, Outcome, Option<WafReport>) {
    let (parts, body) = req.into_parts();
    let mut request = RequestContext {
        route,
        peer,
        stats,
        parts,
        body: RequestBody::new(body),
        passed: Passed::default(),
        waf: None,
        exchange: None,
    };
    if let Err(denial) = super::filter::request_phase(&mut request).await {
        let (parts, waf) = (&request.parts, request.waf.as_ref());
        let response = super::filter::refuse(
            &denial,
            Phase::Request,
            route,
            stats,
            peer,
            Some(parts),
            waf,
        );
        return (response, Outcome::Denied(denial), request.waf);
    }
    let RequestContext {
        parts,
        body,
        passed,
        mut waf,
        exchange,
        ..
    } = request;
    let no_body = parts.method == hyper::Method::HEAD;
    let Some(connection) = upstream.get().await else {
        return (
            status_response(StatusCode::BAD_GATEWAY),
            Outcome::Passed(passed),
            waf,
        );
    };
    let (head, body) = match connection
        .send(Request::from_parts(parts, body.into_upstream()))
        .await
    {
        Ok(response) => response.into_parts(),
        Err(e) => {
            tracing::debug!(error = %e, "l7: upstream request failed");
            let response = status_response(StatusCode::BAD_GATEWAY);
            return (response, Outcome::Passed(passed), waf);
        }
    };
    stats.forwarded();
    let has_body = !(no_body
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED);
    let mut response = ResponseContext {
        route,
        stats,
        passed: &passed,
        head,
        body: ResponseBody::Upstream(body.map_err(Into::into).boxed()),
        has_body,
        waf: &mut waf,
        exchange,
    };
    match super::filter::response_phase(&mut response).await {
        Ok(()) => {
            let answer = Response::from_parts(response.head, response.body.into_client());
            (answer, Outcome::Passed(passed), waf)
        }
        Err(denial) => {
            let report = response.waf.as_ref();
            let answer =
                super::filter::refuse(&denial, Phase::Response, route, stats, peer, None, report);
            (answer, Outcome::Denied(denial), waf)
        }
    }
}

#[cfg(test)]
mod tests;

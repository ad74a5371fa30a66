//! HTTP/1.1 on a tunnelled stream: each request runs the filter chain; a denied one is answered
//! here and never reaches the pod; one that passes goes to the pod over the flow's own upstream
//! connection (keep-alive on both sides; bodies streamed, not buffered).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::chain::{self, Denial, Peer};
use super::{HttpRoute, L7Stats};

type Body = Either<Incoming, Full<Bytes>>;
type Upstream = hyper::client::conn::http1::SendRequest<Incoming>;

/// Serves requests from `downstream` until either side closes.
pub async fn relay<D>(
    downstream: D,
    upstream: TcpStream,
    route: Arc<HttpRoute>,
    peer: Peer,
    stats: Arc<L7Stats>,
) where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "l7: upstream handshake failed");
                return;
            }
        };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "l7: upstream connection ended");
        }
    });
    let sender = Arc::new(Mutex::new(sender));
    let service = hyper::service::service_fn(move |req| {
        let (route, peer, stats, sender) = (
            Arc::clone(&route),
            peer.clone(),
            Arc::clone(&stats),
            Arc::clone(&sender),
        );
        async move { Ok::<_, Infallible>(handle(req, &route, &peer, &stats, &sender).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(downstream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "l7: downstream connection ended");
    }
}

async fn handle(
    req: Request<Incoming>,
    route: &HttpRoute,
    peer: &Peer,
    stats: &L7Stats,
    upstream: &Mutex<Upstream>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let passed = match chain::run(route, &parts, peer, stats) {
        Ok(passed) => passed,
        Err(denial) => {
            stats.deny(denial.filter, denial.reason);
            tracing::info!(
                policy = %route.policy,
                filter = denial.filter,
                reason = denial.reason,
                source = %peer.source,
                destination = %peer.destination,
                method = %parts.method,
                path = parts.uri.path(),
                "l7: request denied"
            );
            return local_response(&denial);
        }
    };
    // Headers the proxy sets from claims are never taken from the client.
    if let Some(authn) = &route.model.authentication {
        for provider in &authn.providers {
            for header in provider.upstream_headers() {
                parts.headers.remove(header);
            }
        }
    }
    chain::strip_credentials(&mut parts, &passed.strip);
    for (name, value) in passed.set_upstream {
        parts.headers.insert(name, value);
    }
    let mut sender = upstream.lock().await;
    if sender.ready().await.is_err() {
        return status_response(StatusCode::BAD_GATEWAY);
    }
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            stats.forwarded();
            let mut response = response.map(Either::Left);
            for (name, value) in passed.set_response {
                response.headers_mut().insert(name, value);
            }
            response
        }
        Err(e) => {
            tracing::debug!(error = %e, "l7: upstream request failed");
            status_response(StatusCode::BAD_GATEWAY)
        }
    }
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
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

//! The client side of the admin server (`admin.rs`), for the commands that talk to a running
//! agent: `rampart status`, `rampart flows` and `rampart policy push`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request (a JSON body if `body` is given) to the agent at `addr` and returns the
/// status and the whole body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let response = send(addr, method, path, body).await?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {path}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// Sends one request and returns the response with its body still to read (for streams).
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Response<Incoming>> {
    let connect = tokio::net::TcpStream::connect(addr);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .with_context(|| format!("connecting to the agent at {addr}: timed out"))?
        .with_context(|| {
            format!("connecting to the agent at {addr} (is `rampart run` running there?)")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("building the request for {path}"))?;
    sender
        .send_request(req)
        .await
        .with_context(|| format!("requesting {path}"))
}

//! The client side of the admin socket (`admin.rs`), for the commands that talk to a running
//! agent: `rampart status`, `rampart flows`, `rampart kernel-log`, `rampart policy explain` and
//! `rampart policy push`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one request (a JSON body if `body` is given) to the agent on the admin socket at
/// `socket` and returns the status and the whole body.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let response = send(socket, method, path, body).await?;
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
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Response<Incoming>> {
    let connect = tokio::net::UnixStream::connect(socket);
    let shown = socket.display();
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .with_context(|| format!("connecting to the agent's admin socket {shown}: timed out"))?
        .with_context(|| {
            format!(
                "connecting to the agent's admin socket {shown} (is `rampart run` running with \
                 this --admin-socket, and are you root?)"
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost");
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

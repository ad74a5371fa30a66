//! HTTP/2 with prior knowledge inside namespaces (hyper on a current-thread runtime per
//! connection): a recording origin, the HTTP/2 twin of [`crate::raw_origin`], and a client
//! that sends one request. The WAF conformance run uses both to send the cases over HTTP/2.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::listener::Listener;
use crate::netns::{self, Netns};
use crate::raw_origin::Received;

/// An HTTP/2 origin recording every request as it arrives and answering `200`.
#[derive(Debug)]
pub struct H2Origin {
    received: Arc<Mutex<Vec<Received>>>,
    _listener: Listener,
}

impl H2Origin {
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<H2Origin> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let listener = Listener::start(ns, port, "HTTP/2 origin", move |stream| {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve(stream, &sink));
        })?;
        Ok(H2Origin {
            received,
            _listener: listener,
        })
    }

    /// Takes what arrived since the last call.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn serve(stream: TcpStream, sink: &Arc<Mutex<Vec<Received>>>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let sink = Arc::clone(sink);
    runtime.block_on(async move {
        let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        else {
            return;
        };
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let sink = Arc::clone(&sink);
            async move {
                let (parts, body) = request.into_parts();
                // A response to HEAD has no body (HTTP/2 has no framing to ignore one).
                let answer: &'static [u8] = if parts.method == hyper::Method::HEAD {
                    b""
                } else {
                    b"ok\n"
                };
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                let mut headers: Vec<(String, String)> = parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                if let Some(authority) = parts.uri.authority() {
                    headers.push(("host".to_owned(), authority.as_str().to_owned()));
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Received {
                        method: parts.method.to_string(),
                        target: parts
                            .uri
                            .path_and_query()
                            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
                        headers,
                        body,
                    });
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(answer))))
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// One request as HTTP/2 can carry it: `None` if it cannot (a method, target or header HTTP/2
/// has no way to send, as in a request-line or framing attack). `Host` becomes the
/// `:authority`; a `Content-Length` that matches the body and `Connection: keep-alive|close`
/// are HTTP/1's framing and are left out; any other connection-specific header (RFC 9113
/// §8.2.2) makes the request one HTTP/2 cannot carry, except `Keep-Alive` and
/// `Proxy-Connection`, which a client speaking HTTP/2 simply does not send.
pub fn request(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<hyper::Request<Full<Bytes>>> {
    let host = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or("localhost", |(_, v)| v.as_str());
    if !target.starts_with('/') {
        return None;
    }
    let uri: hyper::Uri = format!("http://{host}{target}").parse().ok()?;
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).ok()?)
        .uri(uri)
        .version(hyper::Version::HTTP_2);
    let mut hosts = 0;
    for (name, value) in headers {
        match name.to_ascii_lowercase().as_str() {
            "host" => {
                hosts += 1;
                continue;
            }
            "content-length" if value.trim().parse::<usize>().ok() == Some(body.len()) => continue,
            "connection"
                if value.eq_ignore_ascii_case("keep-alive")
                    || value.eq_ignore_ascii_case("close") =>
            {
                continue;
            }
            "keep-alive" | "proxy-connection" => continue,
            "content-length" | "connection" | "transfer-encoding" | "upgrade" => return None,
            "te" if value != "trailers" => return None,
            _ => {}
        }
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = hyper::header::HeaderValue::from_str(value).ok()?;
        builder = builder.header(name, value);
    }
    if hosts > 1 {
        return None;
    }
    builder.body(Full::new(Bytes::copy_from_slice(body))).ok()
}

/// Sends `request` over a new HTTP/2 connection from the namespace at `ns` to `to`; the status.
pub fn send(
    ns: &str,
    to: SocketAddr,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> anyhow::Result<u16> {
    netns::run_in(ns, move || -> anyhow::Result<u16> {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let stream = tokio::net::TcpStream::from_std(stream)?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .context("HTTP/2 handshake")?;
            tokio::spawn(connection);
            let response = tokio::time::timeout(timeout, sender.send_request(request))
                .await
                .context("no answer in time")??;
            let status = response.status().as_u16();
            // Read the body so the stream ends cleanly.
            let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
            Ok(status)
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn host_becomes_the_authority_and_http1_framing_is_left_out() {
        let request = request(
            "POST",
            "/search?q=1",
            &headers(&[
                ("Host", "shop.example"),
                ("Content-Length", "2"),
                ("Connection", "keep-alive"),
                ("X-Kept", "1"),
            ]),
            b"{}",
        )
        .expect("an HTTP/2 request");
        assert_eq!(request.uri().to_string(), "http://shop.example/search?q=1");
        let names: Vec<&str> = request.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn what_http2_cannot_carry_is_none() {
        for (target, pairs) in [
            ("*", vec![]),
            ("/", vec![("Content-Length", "5")]),
            ("/", vec![("Transfer-Encoding", "chunked")]),
            ("/", vec![("Connection", "Upgrade"), ("Upgrade", "h2c")]),
            ("/", vec![("Host", "a"), ("Host", "b")]),
            ("/", vec![("TE", "gzip")]),
            ("/", vec![("Host", "bad host")]),
        ] {
            assert!(
                request("GET", target, &headers(&pairs), b"").is_none(),
                "{target} {pairs:?}"
            );
        }
        assert!(request("GE T", "/", &[], b"").is_none());
    }
}

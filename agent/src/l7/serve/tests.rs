//! The proxy's HTTP side over in-memory streams: an HTTP/1.1 and an HTTP/2 (prior knowledge)
//! client, through `relay`, to an origin speaking the same protocol.

use std::path::Path;

use http_body_util::{BodyExt as _, Empty};
use tokio::io::DuplexStream;

use super::*;
use crate::l7::jwks::JwksRegistry;

fn route() -> Arc<HttpRoute> {
    let text = "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: api}\nspec:\n  ports: [{port: 80}]\n  http:\n    rules:\n    - {action: Allow, paths: [{exact: /ok}]}\n";
    let checked = crate::policy::check(crate::policy::source::parse_str(Path::new("t.yaml"), text))
        .unwrap_or_else(|d| panic!("{d:?}"));
    let model = checked.model.mesh_policies[0]
        .http
        .clone()
        .unwrap_or_else(|| panic!("no http"));
    Arc::new(HttpRoute::new(
        "api".into(),
        model,
        &JwksRegistry::default(),
        None,
    ))
}

fn peer() -> Peer {
    Peer {
        spiffe_id: None,
        source: "10.0.0.1:1000".parse().unwrap_or_else(|e| panic!("{e}")),
        destination: "10.0.0.2:80".parse().unwrap_or_else(|e| panic!("{e}")),
        server_name: None,
    }
}

async fn origin(io: DuplexStream, http2: bool) {
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        let body = format!("origin {:?} {}", req.version(), req.uri().path());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let io = TokioIo::new(io);
    let _ = if http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

/// The client's end of a stream through `relay` to an origin speaking `http2` or HTTP/1.1.
fn proxied(http2: bool) -> DuplexStream {
    let (client_io, proxy_down) = tokio::io::duplex(1 << 20);
    let (proxy_up, origin_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(origin(origin_io, http2));
    let stats = Arc::new(L7Stats::default());
    tokio::spawn(relay(proxy_down, proxy_up, route(), peer(), stats, None));
    client_io
}

/// What the proxy answers first to `bytes` sent as they are on an HTTP/1.1 connection.
async fn raw_answer(bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut client = proxied(false);
    client
        .write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = vec![0u8; 64];
    let n = client
        .read(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Two requests on one client connection; (status, body) of each.
async fn exchange(http2: bool, paths: [&str; 2]) -> Vec<(u16, String)> {
    let io = TokioIo::new(proxied(http2));
    let mut out = Vec::new();
    if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(connection);
        for path in paths {
            let req = Request::get(format!("http://b{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap_or_else(|e| panic!("{e}"));
            let response = sender
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.push(read(response).await);
        }
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(connection);
        for path in paths {
            let req = Request::get(path)
                .header("host", "b")
                .body(Empty::<Bytes>::new())
                .unwrap_or_else(|e| panic!("{e}"));
            let response = sender
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out.push(read(response).await);
        }
    }
    out
}

async fn read(response: Response<Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http1_requests_pass_the_chain_on_a_kept_alive_connection() {
    let replies = exchange(false, ["/ok", "/no"]).await;
    assert_eq!(replies[0], (200, "origin HTTP/1.1 /ok".into()));
    assert_eq!(replies[1].0, 403);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_and_forwarded_as_http2() {
    let replies = exchange(true, ["/ok", "/no"]).await;
    assert_eq!(replies[0], (200, "origin HTTP/2.0 /ok".into()));
    assert_eq!(replies[1].0, 403);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let huge = "x".repeat(MAX_REQUEST_HEAD_BYTES + 1);
    let request = format!("GET /ok HTTP/1.1\r\nhost: b\r\nx-big: {huge}\r\n\r\n");
    let answer = raw_answer(request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn garbage_instead_of_http_gets_400() {
    let answer = raw_answer(b"\x00\x01 not http at all\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

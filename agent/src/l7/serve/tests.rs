//! The proxy's HTTP side over in-memory streams: an HTTP/1.1 and an HTTP/2 (prior knowledge)
//! client, through `relay`, to an origin speaking the same protocol.

use std::path::Path;

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Bytes;
use tokio::io::DuplexStream;

use super::*;
use crate::flows::event::ProxyEvent;
use crate::l7::jwks::JwksRegistry;

/// The route of an `http` section (YAML lines indented under `http:`), no WAF engine loaded.
fn route_of(section: &str) -> HttpRoute {
    let model = crate::policy::http::section_for_tests(section).unwrap_or_else(|e| panic!("{e:?}"));
    HttpRoute::new("api".into(), model, &JwksRegistry::default(), None, None)
}

fn route() -> Arc<HttpRoute> {
    Arc::new(route_of(
        "    rules:\n    - {action: Allow, paths: [{exact: /ok}]}\n",
    ))
}

fn peer() -> Peer {
    Peer {
        spiffe_id: None,
        source: "10.0.0.1:1000".parse().unwrap_or_else(|e| panic!("{e}")),
        destination: "10.0.0.2:80".parse().unwrap_or_else(|e| panic!("{e}")),
        destination_spiffe_id: None,
        server_name: None,
    }
}

/// What the connections share, with the default limits.
fn shared(
    stats: Arc<L7Stats>,
    events: Option<ProxyEventSink>,
    drain: crate::listen::Drain,
) -> RelayShared {
    RelayShared {
        stats,
        events,
        drain,
        limits: Limits::new(crate::limits::ProxyLimits::default()),
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
    tokio::spawn(relay(
        proxy_down,
        connected(proxy_up),
        fixed_route(route()),
        peer(),
        shared(stats, None, crate::listen::Drain::default()),
    ));
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

/// `../shared/crs-4.28.0` beside the project (or `RAMPART_CRS_DIR`).
fn shared_crs() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("RAMPART_CRS_DIR") {
        return dir.into();
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/crs-4.28.0");
    [beside, "/work/shared/crs-4.28.0".into()]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no CRS 4.28.0 beside the project; set RAMPART_CRS_DIR"))
}

/// A route whose `http` section is only `waf` (as YAML flow text), its engine loaded.
fn waf_route(waf: &str) -> Arc<HttpRoute> {
    let mut route = route_of(&format!("    waf: {waf}\n"));
    if let Some(waf) = &mut route.waf {
        let layout =
            rampart_waf::CrsLayout::discover(&shared_crs()).unwrap_or_else(|e| panic!("{e}"));
        let engine = rampart_waf::Engine::load(&layout, &waf.model.profile)
            .unwrap_or_else(|e| panic!("{e}"));
        waf.engine = Some(Arc::new(engine));
    }
    Arc::new(route)
}

/// An origin that answers with the request body it received, and counts requests.
async fn echo_origin(io: DuplexStream, seen: Arc<std::sync::atomic::AtomicU64>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// An HTTP/1.1 client connection through `relay` over `route`, to the origin `origin` serves
/// on its end; the proxy's counters.
async fn client_through<B, F>(
    route: Arc<HttpRoute>,
    events: Option<crate::flows::event::ProxyEventSink>,
    origin: impl FnOnce(DuplexStream) -> F,
) -> (hyper::client::conn::http1::SendRequest<B>, Arc<L7Stats>)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    client_following(fixed_route(route), events, origin).await
}

/// Like [`client_through`], with each request's route from `routes`.
async fn client_following<B, F>(
    routes: RouteLookup,
    events: Option<crate::flows::event::ProxyEventSink>,
    origin: impl FnOnce(DuplexStream) -> F,
) -> (hyper::client::conn::http1::SendRequest<B>, Arc<L7Stats>)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (client_io, proxy_down) = tokio::io::duplex(1 << 20);
    let (proxy_up, origin_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(origin(origin_io));
    let stats = Arc::new(L7Stats::default());
    tokio::spawn(relay(
        proxy_down,
        connected(proxy_up),
        routes,
        peer(),
        shared(Arc::clone(&stats), events, crate::listen::Drain::default()),
    ));
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    (sender, stats)
}

#[tokio::test]
async fn a_request_cancelled_while_the_pod_connects_leaves_the_connection_opening() {
    let (proxy_up, origin_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(echo_origin(
        origin_io,
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    ));
    let connect: Connect<DuplexStream> = Box::new(move || {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Some(proxy_up)
        })
    });
    let lazy = LazyUpstream::new(connect, false);
    let first = tokio::time::timeout(std::time::Duration::from_millis(10), lazy.get()).await;
    assert!(
        first.is_err(),
        "the first request gave up before the pod answered"
    );
    assert!(
        lazy.get().await.is_some(),
        "the next request gets the connection"
    );
}

#[tokio::test]
async fn the_pod_is_connected_only_when_a_request_passes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let opened = Arc::new(AtomicU64::new(0));
    let (client_io, proxy_down) = tokio::io::duplex(1 << 16);
    let (proxy_up, origin_io) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(AtomicU64::new(0));
    tokio::spawn(echo_origin(origin_io, Arc::clone(&seen)));
    let counted = Arc::clone(&opened);
    let connect: Connect<DuplexStream> = Box::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Some(proxy_up)))
    });
    let stats = Arc::new(L7Stats::default());
    tokio::spawn(relay(
        proxy_down,
        connect,
        fixed_route(route()),
        peer(),
        shared(stats, None, crate::listen::Drain::default()),
    ));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let mut get = async |path: &str| {
        let req = Request::get(path)
            .header("host", "b")
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let response = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        read(response).await.0
    };
    assert_eq!(get("/refused").await, 403);
    assert_eq!(get("/refused").await, 403);
    assert_eq!(
        opened.load(Ordering::SeqCst),
        0,
        "refused requests opened the pod's connection"
    );
    assert_eq!(get("/ok").await, 200);
    assert_eq!(get("/ok").await, 200);
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "one connection for the flow"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // A pod that does not accept the connection: 502 for the request that passed.
    let (client_io, proxy_down) = tokio::io::duplex(1 << 16);
    let unreachable: Connect<DuplexStream> = Box::new(|| Box::pin(std::future::ready(None)));
    tokio::spawn(relay(
        proxy_down,
        unreachable,
        fixed_route(route()),
        peer(),
        shared(
            Arc::new(L7Stats::default()),
            None,
            crate::listen::Drain::default(),
        ),
    ));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let req = Request::get("/ok")
        .header("host", "b")
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn a_kept_alive_connection_follows_policy_changes() {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: the first rules, 1: rules that allow another path, 2: no rules, 3: refused.
    let state = Arc::new(AtomicU8::new(0));
    let first = Arc::new(route_of(
        "    rules:\n    - {action: Allow, paths: [{exact: /ok}]}\n",
    ));
    let second = Arc::new(route_of(
        "    rules:\n    - {action: Allow, paths: [{exact: /other}]}\n",
    ));
    let now = Arc::clone(&state);
    let routes: RouteLookup = Arc::new(move || match now.load(Ordering::SeqCst) {
        0 => RouteNow::Rules(Arc::clone(&first)),
        1 => RouteNow::Rules(Arc::clone(&second)),
        2 => RouteNow::NoRules,
        _ => RouteNow::Refused,
    });
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&seen);
    let (mut sender, _) = client_following(routes, None, |io| echo_origin(io, counted)).await;
    let mut get = async |path: &str| {
        let req = Request::get(path)
            .header("host", "b")
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|e| panic!("{e}"));
        match sender.send_request(req).await {
            Ok(response) => Some(read(response).await.0),
            Err(_) => None,
        }
    };
    assert_eq!(get("/ok").await, Some(200));
    assert_eq!(get("/other").await, Some(403));
    state.store(1, Ordering::SeqCst);
    assert_eq!(
        get("/other").await,
        Some(200),
        "the new rules, same connection"
    );
    assert_eq!(get("/ok").await, Some(403));
    state.store(2, Ordering::SeqCst);
    assert_eq!(
        get("/anything").await,
        Some(200),
        "rules removed: unfiltered"
    );
    state.store(3, Ordering::SeqCst);
    assert_eq!(get("/ok").await, Some(403), "no longer admitted");
    assert_eq!(get("/ok").await, None, "and the connection closed");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// One HTTP/1.1 request with `body` through a WAF route; (status, body, requests at the origin).
async fn through_waf(route: Arc<HttpRoute>, path: &str, body: &'static [u8]) -> (u16, String, u64) {
    let (status, text, at_origin, _) = through_waf_counted(route, path, body).await;
    (status, text, at_origin)
}

/// [`through_waf`], with the proxy's counters.
async fn through_waf_counted(
    route: Arc<HttpRoute>,
    path: &str,
    body: &'static [u8],
) -> (u16, String, u64, Arc<L7Stats>) {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&seen);
    let (mut sender, stats) = client_through(route, None, |io| echo_origin(io, counted)).await;
    let req = Request::post(path)
        .header("host", "b")
        .header("user-agent", "Mozilla/5.0")
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, text) = read(response).await;
    let at_origin = seen.load(std::sync::atomic::Ordering::SeqCst);
    (status, text, at_origin, stats)
}

#[tokio::test]
async fn the_waf_blocks_attacks_before_the_pod_and_forwards_bodies_it_judged() {
    let route = waf_route("{}");
    let (status, _, at_origin) = through_waf(Arc::clone(&route), "/post", b"var=1234 OR 1=1").await;
    assert_eq!((status, at_origin), (403, 0), "a SQL injection in the body");
    let (status, _, at_origin) =
        through_waf(Arc::clone(&route), "/q?id=1%27%20OR%20%271%27=%271", b"").await;
    assert_eq!((status, at_origin), (403, 0), "in the query, no body");
    let (status, body, at_origin) = through_waf(route, "/post", b"name=alice&city=Paris").await;
    assert_eq!(
        (status, body.as_str(), at_origin),
        (200, "name=alice&city=Paris", 1)
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_or_judged_by_their_prefix() {
    static BIG: [u8; 300] = [b'a'; 300];
    let reject = waf_route("{requestBody: {limit: 100}}");
    let (status, _, at_origin) = through_waf(reject, "/post", &BIG).await;
    assert_eq!((status, at_origin), (413, 0));
    let prefix = waf_route("{requestBody: {limit: 100, overLimit: InspectPrefix}}");
    let (status, body, at_origin) = through_waf(prefix, "/post", &BIG).await;
    assert_eq!(
        (status, body.len(), at_origin),
        (200, 300, 1),
        "the whole body reaches the pod"
    );
}

#[tokio::test]
async fn the_block_page_answers_what_the_rules_block() {
    let route = waf_route(
        "{blockPage: {status: 406, contentType: text/html, body: '<h1>Blocked</h1>'}, requestBody: {limit: 100}}",
    );
    let (status, body, at_origin) =
        through_waf(Arc::clone(&route), "/post", b"var=1234 OR 1=1").await;
    assert_eq!(
        (status, body.as_str(), at_origin),
        (406, "<h1>Blocked</h1>", 0)
    );
    // Other refusals of the filter keep their own answer.
    static BIG: [u8; 300] = [b'a'; 300];
    let (status, body, _) = through_waf(route, "/post", &BIG).await;
    assert_eq!(status, 413);
    assert!(!body.contains("Blocked"), "{body}");
}

#[tokio::test]
async fn detect_mode_lets_attacks_through() {
    let route = waf_route("{mode: Detect}");
    let (status, _, at_origin, stats) =
        through_waf_counted(route, "/post", b"var=1234 OR 1=1").await;
    assert_eq!((status, at_origin), (200, 1));
    // The rules matched, and would have blocked: counted as detected, not denied.
    assert_eq!(
        stats.waf_matches(),
        [(("api".to_owned(), "sqli", false), 1)]
    );
    assert_eq!(stats.denials(), []);
}

const SQL_ERROR: &[u8] = b"<html><body>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near '1'' at line 1</body></html>";

#[tokio::test]
async fn response_rules_stop_a_leak_when_the_route_inspects_responses() {
    let html = vec![("content-type", "text/html")];
    let inspecting = waf_route("{responseBody: {inspect: true}}");
    let (status, _, body, stats) = through_dlp(
        Arc::clone(&inspecting),
        "GET",
        vec![SQL_ERROR[..40].to_vec(), SQL_ERROR[40..].to_vec()],
        html.clone(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(!String::from_utf8_lossy(&body).contains("SQL syntax"));
    assert_eq!(stats.denials(), [(("waf", "data-leakage-sql"), 1)]);
    assert_eq!(
        stats.waf_matches(),
        [(("api".to_owned(), "data-leakage-sql", true), 1)]
    );
    let (status, _, body, _) = through_dlp(
        Arc::clone(&inspecting),
        "GET",
        vec![b"<html>order 42 shipped</html>".to_vec()],
        html.clone(),
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"<html>order 42 shipped</html>"[..])
    );
    // Compressed, the leak is judged decoded (and would go on as it came).
    let (status, _, _, _) = through_dlp(
        Arc::clone(&inspecting),
        "GET",
        vec![gzip(SQL_ERROR)],
        vec![("content-type", "text/html"), ("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 403, "a gzip leak");
    let (status, _, _, _) = through_dlp(
        Arc::clone(&inspecting),
        "GET",
        vec![b"compressed".to_vec()],
        vec![("content-type", "text/html"), ("content-encoding", "zstd")],
    )
    .await;
    assert_eq!(status, 502, "an encoding the rules cannot read is refused");
    // Without response inspection, and in Detect mode, the leak goes through.
    for route in [
        waf_route("{}"),
        waf_route("{mode: Detect, responseBody: {inspect: true}}"),
    ] {
        let (status, _, body, _) =
            through_dlp(route, "GET", vec![SQL_ERROR.to_vec()], html.clone()).await;
        assert_eq!((status, body.as_slice()), (200, SQL_ERROR));
    }
    // Past the limit: the prefix is judged and the rest streamed, or the response refused.
    let mut long = SQL_ERROR.to_vec();
    long.extend(std::iter::repeat_n(b'x', 4096));
    let prefix = waf_route("{responseBody: {limit: 1024}}");
    let (status, _, _, _) = through_dlp(prefix, "GET", vec![long.clone()], html.clone()).await;
    assert_eq!(status, 403, "the leak is in the judged prefix");
    let mut late = vec![b'x'; 4096];
    late.extend_from_slice(SQL_ERROR);
    let prefix = waf_route("{responseBody: {limit: 1024}}");
    let (status, _, body, _) = through_dlp(prefix, "GET", vec![late.clone()], html.clone()).await;
    assert_eq!(
        (status, body.len()),
        (200, late.len()),
        "past the judged prefix"
    );
    let reject = waf_route("{responseBody: {limit: 1024, overLimit: Reject}}");
    let (status, _, _, _) = through_dlp(reject, "GET", vec![late], html).await;
    assert_eq!(status, 502);
}

/// A route whose `http` section is only `dlp` (as YAML flow text).
fn dlp_route(dlp: &str) -> Arc<HttpRoute> {
    Arc::new(route_of(&format!("    dlp: {dlp}\n")))
}

/// An origin answering every request with `chunks` as separate body frames, and `headers`.
async fn chunked_origin(
    io: DuplexStream,
    chunks: Vec<Vec<u8>>,
    headers: Vec<(&'static str, &'static str)>,
) {
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let (chunks, headers) = (chunks.clone(), headers.clone());
        async move {
            let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                for chunk in chunks {
                    if sender.send_data(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
            });
            let mut response = Response::new(body);
            for (k, v) in headers {
                response
                    .headers_mut()
                    .insert(k, hyper::header::HeaderValue::from_static(v));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// One GET through `route` to an origin sending `chunks`; (status, headers, body) and stats.
async fn through_dlp(
    route: Arc<HttpRoute>,
    method: &str,
    chunks: Vec<Vec<u8>>,
    headers: Vec<(&'static str, &'static str)>,
) -> (u16, hyper::HeaderMap, Vec<u8>, Arc<L7Stats>) {
    let (mut sender, stats) =
        client_through(route, None, |io| chunked_origin(io, chunks, headers)).await;
    let req = Request::builder()
        .method(method)
        .uri("/statement")
        .header("host", "b")
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (parts.status.as_u16(), parts.headers, body, stats)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

const CARDS: &str = "{detectors: [{type: cardNumber, action: Mask, keepLast: 4}, {type: usSsn, action: Redact}], responseHeaders: [x-account]}";

#[tokio::test]
async fn card_numbers_split_across_chunks_are_masked_and_order_ids_are_not() {
    let chunks = vec![
        br#"{"card": "4111 1111 "#.to_vec(),
        br#"1111 1111", "order": "1234567812345678", "ssn": "123-4"#.to_vec(),
        br#"5-6789"}"#.to_vec(),
    ];
    let length: &'static str = Box::leak(
        chunks
            .iter()
            .map(Vec::len)
            .sum::<usize>()
            .to_string()
            .into_boxed_str(),
    );
    let (status, headers, body, stats) = through_dlp(
        dlp_route(CARDS),
        "GET",
        chunks,
        vec![
            ("content-length", length),
            ("x-account", "5555555555554444"),
        ],
    )
    .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"card": "**** **** **** 1111", "order": "1234567812345678", "ssn": "[REDACTED]"}"#
    );
    assert_eq!(
        headers.get("x-account").map(|v| v.as_bytes()),
        Some(&b"************4444"[..])
    );
    assert!(
        headers.get("content-length").is_none(),
        "re-chunked: the length changed"
    );
    let mut matches = stats.dlp_matches();
    matches.sort();
    assert_eq!(
        matches,
        [
            (("response", "card_number".to_owned(), "mask"), 2),
            (("response", "us_ssn".to_owned(), "redact"), 1)
        ]
    );
}

#[tokio::test]
async fn gzip_bodies_are_decoded_masked_and_other_encodings_refused() {
    let zipped = gzip(b"pay with 4111111111111111 today");
    let (first, rest) = zipped.split_at(zipped.len() / 2);
    let (status, headers, body, _) = through_dlp(
        dlp_route(CARDS),
        "GET",
        vec![first.to_vec(), rest.to_vec()],
        vec![("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, b"pay with ************1111 today");
    let (status, _, _, stats) = through_dlp(
        dlp_route(CARDS),
        "GET",
        vec![b"compressed".to_vec()],
        vec![("content-encoding", "zstd")],
    )
    .await;
    assert_eq!(status, 502, "never passed unscanned");
    assert_eq!(stats.denials(), [(("dlp", "unsupported_encoding"), 1)]);
}

#[tokio::test]
async fn brotli_bodies_are_decoded_and_masked_and_refused_when_the_policy_says_so() {
    let mut compressed = Vec::new();
    {
        use std::io::Write as _;
        let mut encoder = brotli::CompressorWriter::new(&mut compressed, 4096, 5, 22);
        let _ = encoder.write_all(b"pay with 4111111111111111 today");
    }
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    let (status, headers, body, _) = through_dlp(
        dlp_route(CARDS),
        "GET",
        vec![first.to_vec(), rest.to_vec()],
        vec![("content-encoding", "br")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(body, b"pay with ************1111 today");
    // A truncated stream is an error, never a short body passed as whole.
    let (status, _, body, _) = through_dlp(
        dlp_route(CARDS),
        "GET",
        vec![first.to_vec()],
        vec![("content-encoding", "br")],
    )
    .await;
    assert!(
        status != 200 || body != b"pay with ************1111 today",
        "a cut stream does not pass as the whole body"
    );
    let refuse = dlp_route("{detectors: [{type: cardNumber, action: Mask}], compressed: Refuse}");
    let (status, _, _, _) = through_dlp(
        refuse,
        "GET",
        vec![compressed.clone()],
        vec![("content-encoding", "br")],
    )
    .await;
    assert_eq!(status, 502);
}

/// One request with `body` and `headers` through `route` to an echoing origin; (status, the
/// body the client got back, requests at the origin, the proxy's counters).
async fn request_through(
    route: Arc<HttpRoute>,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Vec<u8>, u64, Arc<L7Stats>) {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&seen);
    let (mut sender, stats) = client_through(route, None, |io| echo_origin(io, counted)).await;
    let mut req = Request::post(uri).header("host", "b");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (
        parts.status.as_u16(),
        body,
        seen.load(std::sync::atomic::Ordering::SeqCst),
        stats,
    )
}

const BLOCK_CARDS_OUT: &str = "{requests: {detectors: [{type: cardNumber, action: Block}], headers: [x-note], bodyLimit: 1024}}";

#[tokio::test]
async fn requests_carrying_card_numbers_are_refused_before_the_pod() {
    let json = br#"{"order": "1234567812345678", "card": "5555-5555-5555-4444"}"#.to_vec();
    let (status, _, at_origin, stats) = request_through(
        dlp_route(BLOCK_CARDS_OUT),
        "/orders",
        &[("content-type", "application/json")],
        json,
    )
    .await;
    assert_eq!((status, at_origin), (403, 0), "a card in a JSON body");
    assert_eq!(stats.denials(), [(("dlp", "blocked"), 1)]);
    assert_eq!(
        stats.dlp_matches(),
        [(("request", "card_number".to_owned(), "block"), 1)]
    );
    for (uri, headers, body, what) in [
        (
            "/pay",
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"card=4111+1111+1111+1111&amount=3".to_vec(),
            "form-encoded, with '+' for spaces",
        ),
        (
            "/pay?card=4111111111111111",
            vec![],
            Vec::new(),
            "in the query",
        ),
        (
            "/pay?card=4111%201111%201111%201111",
            vec![],
            Vec::new(),
            "percent-encoded in the query",
        ),
        (
            "/pay",
            vec![("x-note", "card 4111 1111 1111 1111")],
            Vec::new(),
            "in a named header",
        ),
        (
            "/pay",
            vec![("content-encoding", "gzip")],
            gzip(b"card 4111111111111111"),
            "in a gzip body",
        ),
    ] {
        let (status, _, at_origin, _) =
            request_through(dlp_route(BLOCK_CARDS_OUT), uri, &headers, body).await;
        assert_eq!((status, at_origin), (403, 0), "{what}");
    }
    // Numbers that fail the Luhn check pass unchanged, and so does a header no one named.
    let order = br#"{"order": "4111111111111112"}"#.to_vec();
    let (status, echoed, at_origin, _) = request_through(
        dlp_route(BLOCK_CARDS_OUT),
        "/orders?id=1234567812345678",
        &[("x-other", "4111111111111111")],
        order.clone(),
    )
    .await;
    assert_eq!((status, echoed, at_origin), (200, order, 1));
}

#[tokio::test]
async fn request_bodies_are_masked_over_the_limit_refused_and_shadowed() {
    let mask = dlp_route(
        "{requests: {detectors: [{type: cardNumber, action: Mask, keepLast: 4}], bodyLimit: 64}}",
    );
    let (status, echoed, _, _) = request_through(
        Arc::clone(&mask),
        "/notes",
        &[("content-encoding", "gzip")],
        gzip(b"card 4111111111111111 ok"),
    )
    .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&echoed).as_ref()),
        (200, "card ************1111 ok"),
        "decoded, masked, sent with its own length"
    );
    let (status, _, at_origin, stats) =
        request_through(Arc::clone(&mask), "/notes", &[], vec![b'a'; 65]).await;
    assert_eq!((status, at_origin), (413, 0), "never passed unscanned");
    assert_eq!(stats.denials(), [(("dlp", "too_large"), 1)]);
    let (status, _, at_origin, _) = request_through(
        mask,
        "/notes",
        &[("content-encoding", "gzip")],
        gzip(&[b'0'; 4096]),
    )
    .await;
    assert_eq!((status, at_origin), (413, 0), "the decoded length counts");
    let shadow =
        dlp_route("{shadow: true, requests: {detectors: [{type: cardNumber, action: Block}]}}");
    let (status, echoed, _, stats) =
        request_through(shadow, "/notes", &[], b"4111111111111111".to_vec()).await;
    assert_eq!((status, echoed.as_slice()), (200, &b"4111111111111111"[..]));
    assert_eq!(
        stats.dlp_matches(),
        [(("request", "card_number".to_owned(), "shadow"), 1)]
    );
}

#[tokio::test]
async fn a_blocking_detector_refuses_the_response_and_shadow_mode_changes_nothing() {
    let block = dlp_route("{detectors: [{type: cardNumber, action: Block}]}");
    let (status, _, body, _) = through_dlp(
        block,
        "GET",
        vec![b"card 4111111111111111".to_vec()],
        vec![],
    )
    .await;
    assert_eq!(status, 502);
    assert!(!String::from_utf8_lossy(&body).contains("4111"));
    let shadow = dlp_route("{shadow: true, detectors: [{type: cardNumber, action: Mask}]}");
    let (status, _, body, stats) = through_dlp(
        shadow,
        "GET",
        vec![b"card 4111111111111111".to_vec()],
        vec![],
    )
    .await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"card 4111111111111111"[..])
    );
    assert_eq!(
        stats.dlp_matches(),
        [(("response", "card_number".to_owned(), "shadow"), 1)]
    );
}

#[tokio::test]
async fn the_access_log_masks_what_the_route_masks() {
    let logged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink_log = Arc::clone(&logged);
    let sink: crate::flows::event::ProxyEventSink = Arc::new(move |e: &ProxyEvent| {
        if let Some(http) = &e.http
            && let Ok(mut l) = sink_log.lock()
        {
            l.push(http.path.clone());
        }
    });
    let (mut sender, _) = client_through(dlp_route(CARDS), Some(sink), |io| {
        chunked_origin(io, vec![b"ok".to_vec()], vec![])
    })
    .await;
    let req = Request::get("/cards/4111111111111111/statement")
        .header("host", "b")
        .body(Empty::<Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read(response).await;
    let paths = logged.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(paths, ["/cards/************1111/statement"]);
}

/// A draining agent ends a kept-alive HTTP/1 connection at a request boundary: the request in
/// flight is answered whole, with `Connection: close`, and the connection then ends.
#[tokio::test]
async fn a_drain_answers_the_next_request_and_then_closes_the_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client, proxy_down) = tokio::io::duplex(1 << 20);
    let (proxy_up, origin_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(origin(origin_io, false));
    let drain = crate::listen::Drain::default();
    tokio::spawn(relay(
        proxy_down,
        connected(proxy_up),
        fixed_route(route()),
        peer(),
        shared(Arc::new(L7Stats::default()), None, drain.clone()),
    ));
    let request = b"GET /ok HTTP/1.1\r\nHost: b\r\n\r\n";
    let mut answer = vec![0u8; 4096];
    client
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let n = client
        .read(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    assert!(
        first.starts_with("http/1.1 200") && !first.contains("connection: close"),
        "{first}"
    );
    drain.start();
    client
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut rest),
    )
    .await
    .expect("the connection ends after the answer")
    .unwrap_or_else(|e| panic!("{e}"));
    let second = String::from_utf8_lossy(&rest).to_ascii_lowercase();
    assert!(second.starts_with("http/1.1 200"), "{second}");
    assert!(second.contains("connection: close"), "{second}");
    assert!(second.ends_with("origin http/1.1 /ok"), "{second}");
}

//! The bypasses an attack run found in the shipped agent, each reproduced through the real agent
//! (two nodes, pod a on node 1 calling pod b on node 2 through the mTLS tunnel and node 2's L7
//! chain; origins in pod b that record every byte they receive):
//!
//! - the admin API is not on the network: a pod reaching `--metrics-addr 0.0.0.0` gets only
//!   `/metrics`, `/readyz`, `/healthz`; push, status, flows and explain need the root-only
//!   admin socket, which refuses other users;
//! - thousands of idle connections to the metrics address neither exhaust the agent's file
//!   descriptors nor stop it, and idle ones are closed;
//! - paths are normalised before rules match (`..`, `%2e%2e`, `./`, merged slashes) and
//!   forwarded normalised; what stays ambiguous (`..;`, backslashes, `%2F`) is refused;
//! - Host tricks (two `Host`s, a trailing dot, an absolute-form authority that disagrees, case)
//!   do not pass a `hosts` rule;
//! - bodies the WAF cannot parse are refused; HTTP/2 requests reach the WAF with their host;
//! - transfer-codings other than `chunked` are refused both ways; hop-by-hop headers never
//!   reach the pod;
//! - card numbers written with JSON `\u` escapes in a request body do not pass request DLP.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rampart_tests::h2;
use rampart_tests::listener::Listener;
use rampart_tests::mesh::shop::{self, ip, world};
use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::netns::{self, TEST_PREFIX};
use rampart_tests::raw_origin::RawOrigin;
use rampart_tests::{Topology, require_root};

const TIMEOUT: Duration = Duration::from_secs(10);
const RULES_PORT: u16 = 8080;
const WAF_PORT: u16 = 8081;
const DLP_PORT: u16 = 8082;
const CODED_RESPONSE_PORT: u16 = 8083;
const H2_WAF_PORT: u16 = 8084;

fn mesh_policy(name: &str, port: u16, http: &str) -> String {
    shop::b_policy(name, port, http)
}

fn two_nodes() -> Topology {
    shop::two_nodes().expect("topology")
}

/// Sends `raw` from the namespace at `ns` to `to` and reads until the other side closes (or
/// the timeout); the status and everything read.
fn send_raw(ns: &str, to: SocketAddr, raw: &[u8]) -> (u16, String) {
    let raw = raw.to_vec();
    let read = netns::run_in(ns, move || -> anyhow::Result<String> {
        let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(&raw)?;
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        Ok(String::from_utf8_lossy(&got).into_owned())
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("sending to {to}: {e:#}"));
    let status = read
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, read)
}

/// `GET target` with `host`, as HTTP/1.1 with `Connection: close`.
fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The mesh of both nodes with the example-style rules, the Core Rule Set, request DLP and
/// response DLP, each on a port of its own.
fn start_mesh(topo: &Topology) -> MeshAgents {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crs = rampart_tests::waf_cases::shared_dir(&workspace)
        .expect("shared/")
        .join(rampart_tests::waf_cases::DEFAULT_CRS);
    let policies = [
        mesh_policy(
            "api",
            RULES_PORT,
            "    rules:\n    - {action: Deny, paths: [{prefix: /internal/}]}\n    - {action: Deny, hosts: [admin.example]}\n    - {action: Allow, paths: [{glob: \"/api/v1/**\"}]}\n",
        ),
        mesh_policy("waf", WAF_PORT, "    waf: {}\n"),
        mesh_policy("waf-h2", H2_WAF_PORT, "    waf: {}\n"),
        mesh_policy(
            "dlp-requests",
            DLP_PORT,
            "    dlp:\n      detectors: [{type: cardNumber, action: Mask}]\n      requests:\n        detectors: [{type: cardNumber, action: Mask}]\n",
        ),
        mesh_policy(
            "dlp-responses",
            CODED_RESPONSE_PORT,
            "    dlp:\n      detectors: [{type: cardNumber, action: Mask}]\n",
        ),
    ]
    .concat();
    MeshAgents::start(
        topo,
        &["node-1", "node-2"],
        &world(&policies),
        None,
        &["--crs-dir", &crs.display().to_string()],
    )
    .expect("agents")
}

#[test]
fn requests_are_normalised_and_checked_before_the_filters_and_the_pod() {
    require_root();
    let topo = two_nodes();
    let b = &topo.pod("shop/b").ns;
    let rules_origin = RawOrigin::start(b, RULES_PORT).expect("origin");
    let waf_origin = RawOrigin::start(b, WAF_PORT).expect("origin");
    let dlp_origin = RawOrigin::start(b, DLP_PORT).expect("origin");
    // Answers every request with a gzip transfer-coding under chunked, carrying a card number.
    let _coded = Listener::start(b, CODED_RESPONSE_PORT, "coded origin", |mut stream| {
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "card 4111 1111 1111 1111\n";
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        });
    })
    .expect("coded origin");
    let h2_origin = h2::H2Origin::start(b, H2_WAF_PORT).expect("HTTP/2 origin");
    let mesh = start_mesh(&topo);
    let node2 = mesh.node("node-2");
    let a = topo.pod("shop/a").ns.path();
    let to = |port| SocketAddr::new(IpAddr::V4(ip(2)), port);
    let log = || node2.log();

    // A request the rules allow reaches the pod, with its path normalised.
    let (status, reply) = send_raw(
        &a,
        to(RULES_PORT),
        &get("/api/v1/./items//42?x=1", "shop.example"),
    );
    assert_eq!(status, 200, "{reply}\nnode-2 log:\n{}", log());
    let received = rules_origin.take();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].target, "/api/v1/items/42?x=1");

    // Traversal past the Allow into the Deny: refused, whatever the spelling.
    for path in [
        "/api/v1/../../internal/secret",
        "/api/v1/%2e%2e/%2e%2e/internal/secret",
        "/api/v1/%2E%2E/%2E%2E/internal/secret",
        // Tomcat, Jetty and Spring serve /internal/secret for these.
        "/internal;x/secret",
        "/internal;jsessionid=1/secret",
        "/api/v1/./../../internal/secret",
        "/api/v1/.%2e/.%2e/internal/secret",
    ] {
        let (status, reply) = send_raw(&a, to(RULES_PORT), &get(path, "shop.example"));
        assert_eq!(status, 403, "{path}: {reply}");
    }
    // What stays ambiguous: 400.
    for path in [
        "/api/v1/..;/..;/internal/secret",
        "/api/v1/..%5c..%5cinternal/secret",
        "/api/v1/%5c../internal/secret",
        "/api/v1/%2E%2E%2F%2E%2E%2Finternal/secret",
        "/api/v1/..\\..\\internal/secret",
        "/api/v1/%zz",
    ] {
        let (status, reply) = send_raw(&a, to(RULES_PORT), &get(path, "shop.example"));
        assert_eq!(status, 400, "{path}: {reply}");
    }
    assert!(
        rules_origin.take().is_empty(),
        "a traversal reached the pod"
    );
    assert!(
        node2.sample(
            "rampart_proxy_denied_total",
            "filter=\"http\",reason=\"escaped_slash\""
        ) >= 1.0,
        "{}",
        node2.metrics().unwrap_or_default()
    );

    // Host tricks against `Deny hosts: [admin.example]`.
    let host_tricks: [(&[u8], u16); 8] = [
        (b"GET /api/v1/x HTTP/1.1\r\nHost: admin.example:x\r\nConnection: close\r\n\r\n", 400),
        (b"GET http://u@admin.example/api/v1/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n", 400),
        (b"CONNECT admin.example:443 HTTP/1.1\r\nHost: admin.example:443\r\nConnection: close\r\n\r\n", 405),
        (b"GET /api/v1/x HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n", 400),
        (b"GET /api/v1/x HTTP/1.1\r\nHost: admin.example.\r\nConnection: close\r\n\r\n", 403),
        (b"GET /api/v1/x HTTP/1.1\r\nHost: ADMIN.Example:8080\r\nConnection: close\r\n\r\n", 403),
        (b"GET http://admin.example/api/v1/x HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n", 400),
        (b"GET /api/v1/x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ];
    for (raw, want) in host_tricks {
        let (status, reply) = send_raw(&a, to(RULES_PORT), raw);
        assert_eq!(status, want, "{}: {reply}", String::from_utf8_lossy(raw));
    }
    assert!(
        rules_origin.take().is_empty(),
        "a host trick reached the pod"
    );

    // Transfer-codings other than chunked: 501, the pod sees nothing.
    let coded = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()
    };
    let (status, reply) = send_raw(&a, to(RULES_PORT), &coded("/api/v1/upload"));
    assert_eq!(status, 501, "{reply}");
    let (status, reply) = send_raw(&a, to(DLP_PORT), &coded("/pay"));
    assert_eq!(status, 501, "{reply}");
    assert!(rules_origin.take().is_empty() && dlp_origin.take().is_empty());
    // ... and a response with one: 502, the card never reaches the client.
    let (status, reply) = send_raw(&a, to(CODED_RESPONSE_PORT), &get("/", "shop.example"));
    assert_eq!(status, 502, "{reply}");
    assert!(!reply.contains("4111 1111"), "{reply}");

    // Hop-by-hop headers are the proxy's, never the pod's.
    let hop = b"GET /api/v1/hop HTTP/1.1\r\nHost: shop.example\r\nConnection: close, X-Hop, Content-Length\r\nX-Hop: secret\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-Original-URL: /internal/secret\r\nX-Kept: 1\r\n\r\n";
    let (status, reply) = send_raw(&a, to(RULES_PORT), hop);
    assert_eq!(status, 200, "{reply}");
    let received = rules_origin.take();
    assert_eq!(received.len(), 1, "{received:?}");
    for name in [
        "connection",
        "x-hop",
        "upgrade",
        "http2-settings",
        "keep-alive",
        "proxy-connection",
        "te",
        "x-original-url",
    ] {
        assert!(
            received[0].header(name).is_none(),
            "{name} reached the pod: {:?}",
            received[0].headers
        );
    }
    assert_eq!(received[0].header("x-kept"), Some("1"));

    // Bodies the WAF's parsers reject carry no attack past it.
    let post = |content_type: &str, body: &str| {
        format!(
            "POST /search HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    for (content_type, body) in [
        (
            "application/json",
            r#"{"a": NaN, "q": "1' OR '1'='1' -- "}"#,
        ),
        (
            "application/json",
            r#"{"a": Infinity, "q": "1' OR '1'='1' -- "}"#,
        ),
        ("application/json", r#"{"q": "1' OR '1'='1' -- "} trailing"#),
        (
            "multipart/form-data; boundary=x; boundary=y",
            "--y\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' OR '1'='1' -- \r\n--y--\r\n",
        ),
        (
            "multipart/form-data; boundary=x",
            "--x\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' OR '1'='1' -- \r\n",
        ),
    ] {
        let (status, reply) = send_raw(&a, to(WAF_PORT), &post(content_type, body));
        assert!(
            status == 400 || status == 403,
            "{content_type} {body:?}: {reply}"
        );
    }
    // A compressed body is judged decoded: the pod may inflate it.
    let attack = br#"{"q": "1' OR '1'='1' -- "}"#;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(attack).expect("gzip");
    let gzipped = gzip.finish().expect("gzip");
    let mut compressed = format!(
        "POST /search HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gzipped.len()
    )
    .into_bytes();
    compressed.extend_from_slice(&gzipped);
    let (status, reply) = send_raw(&a, to(WAF_PORT), &compressed);
    assert_eq!(status, 403, "a gzip-encoded attack: {reply}");
    let (status, reply) = send_raw(
        &a,
        to(WAF_PORT),
        &post("application/json", r#"{"q": "shoes", "size": 42.5}"#),
    );
    assert_eq!(
        status,
        200,
        "a valid JSON body: {reply}\nnode-2 log:\n{}",
        log()
    );
    let received = waf_origin.take();
    assert_eq!(
        received.len(),
        1,
        "only the valid body reaches the pod: {received:?}"
    );

    // HTTP/2 reaches the WAF with its :authority as Host (CRS 920280 refused every one).
    let benign = h2_get(&a, to(H2_WAF_PORT), "/products?id=42");
    assert_eq!(
        benign,
        200,
        "an HTTP/2 request to a WAF port\nnode-2 log:\n{}",
        log()
    );
    let h2_attack = h2_get(&a, to(H2_WAF_PORT), "/products?id=1%27%20OR%20%271%27=%271");
    assert_eq!(h2_attack, 403);
    assert_eq!(
        h2_origin.take().len(),
        1,
        "the HTTP/2 attack reached the pod"
    );
    // ... and HTTP/2 paths are normalised the same way.
    assert_eq!(h2_get(&a, to(RULES_PORT), "/api/v1/../../internal/x"), 403);
    assert_eq!(h2_get(&a, to(RULES_PORT), "/api/v1/..;/internal/x"), 400);
    assert!(rules_origin.take().is_empty());

    // A card in a JSON body written with \u escapes does not pass request DLP unmasked.
    let escaped = r#"{"card": "\u0034\u0031\u0031\u0031 1111 1111 1111"}"#;
    let body = format!(
        "POST /pay HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{escaped}",
        escaped.len()
    );
    let (status, reply) = send_raw(&a, to(DLP_PORT), body.as_bytes());
    let received = dlp_origin.take();
    assert!(
        status == 403 || received.iter().all(|r| !json_decoded_has_card(&r.body)),
        "{status} {reply}: {received:?}"
    );
}

/// Whether the body, JSON-decoded, still holds the test card's digits.
fn json_decoded_has_card(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let decoded: String = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| text.into_owned());
    decoded.replace(' ', "").contains("4111111111111111")
}

/// One HTTP/2 (prior knowledge) GET of `target` (host `shop.example`) from the namespace at
/// `ns` to `to`; its status.
fn h2_get(ns: &str, to: SocketAddr, target: &str) -> u16 {
    let headers = [
        ("host".to_owned(), "shop.example".to_owned()),
        ("user-agent".to_owned(), "Mozilla/5.0".to_owned()),
        ("accept".to_owned(), "text/html".to_owned()),
    ];
    let request = h2::request("GET", target, &headers, b"").expect("an HTTP/2 request");
    h2::send(ns, to, request, TIMEOUT).unwrap_or_else(|e| panic!("HTTP/2 GET to {to}: {e:#}"))
}

#[test]
fn the_admin_api_is_off_the_network_and_a_connection_flood_stops_nothing() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .pod("node-1", "shop/a", ip(1))
        .build()
        .expect("topology");
    let dir = std::env::temp_dir().join(format!("{TEST_PREFIX}-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("policy dir");
    std::fs::write(
        dir.join("world.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}",
            pod_object("shop", "a", 1, ip(1))
        ),
    )
    .expect("policy");
    let mut opts = rampart_tests::AgentOptions::new(Vec::new());
    opts.policy_dir = Some(dir.clone());
    // As deploy/daemonset.yaml exposes it, and with few descriptors, so a flood finds the limit.
    opts.metrics_addr = SocketAddr::from(([0, 0, 0, 0], 9490));
    opts.nofile = Some(512);
    let agent = rampart_tests::Agent::start(&topo.node("node-1").ns, &opts).expect("agent");
    let a = topo.pod("shop/a").ns.path();
    // The pod reaches the node's metrics address through its gateway.
    let node = SocketAddr::from(([169, 254, 1, 1], 9490));

    let (status, _) = send_raw(&a, node, &get("/metrics", "node"));
    assert_eq!(status, 200);
    let push = br#"{"files":[{"name":"evil.yaml","content":"apiVersion: v1\nkind: Namespace\nmetadata: {name: evil}\n"}]}"#;
    let mut request = format!(
        "POST /v1/policy HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        push.len()
    )
    .into_bytes();
    request.extend_from_slice(push);
    let (status, reply) = send_raw(&a, node, &request);
    assert!(status == 404 || status == 405, "a push from a pod: {reply}");
    for path in ["/status", "/v1/flows", "/v1/explain"] {
        let (status, reply) = send_raw(&a, node, &get(path, "node"));
        assert!(status == 404 || status == 405, "{path} from a pod: {reply}");
    }
    let status: serde_json::Value = serde_json::from_str(
        &agent
            .cli(&["status", "--json"])
            .expect("status on the socket"),
    )
    .expect("json");
    assert!(
        !status.to_string().contains("push:evil.yaml"),
        "the pod's push was applied"
    );

    // The socket is root's: mode 0600, and another user is refused.
    let socket = agent.admin_socket().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let bin = agent.bin().display().to_string();
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin])
        .args(["status", "--admin-socket"])
        .arg(&socket)
        .output()
        .expect("setpriv");
    assert!(!as_nobody.status.success(), "another user read the status");
    // ... nor push: the set is unchanged.
    let evil = std::env::temp_dir().join(format!("rampart-nobody-{}.yaml", std::process::id()));
    std::fs::write(
        &evil,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: evil-nobody}\n",
    )
    .expect("file");
    let nobody_push = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin])
        .args(["policy", "push", "--admin-socket"])
        .arg(&socket)
        .arg(&evil)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_file(&evil);
    assert!(
        !nobody_push.status.success(),
        "another user pushed: {}",
        String::from_utf8_lossy(&nobody_push.stdout)
    );
    assert!(
        String::from_utf8_lossy(&nobody_push.stderr).contains("admin"),
        "the refusal names the admin socket: {}",
        String::from_utf8_lossy(&nobody_push.stderr)
    );
    assert_eq!(
        agent.sample("rampart_policy_pushed_files", ""),
        0.0,
        "another user's push changed the set"
    );

    // The pushed set is bounded, and a push replaces or deletes what an earlier one brought.
    let pushes = dir.with_extension("pushes");
    let _ = std::fs::remove_dir_all(&pushes);
    std::fs::create_dir_all(&pushes).expect("push dir");
    let file = |name: &str, namespace: &str| {
        let path = pushes.join(name);
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"),
        )
        .expect("push file");
        path.display().to_string()
    };
    let pushed = |what: &str| agent.sample(&format!("rampart_policy_pushed_{what}"), "");
    let one = file("extra.yaml", "extra-1");
    agent.cli(&["policy", "push", &one]).expect("push");
    assert_eq!(pushed("files"), 1.0);
    let first_bytes = pushed("bytes");
    let one = file("extra.yaml", "extra-replaced");
    agent.cli(&["policy", "push", &one]).expect("push again");
    assert_eq!(pushed("files"), 1.0, "a push of the same name replaces it");
    assert!(pushed("bytes") > first_bytes);
    let many: Vec<String> = (0..300)
        .map(|i| file(&format!("n{i}.yaml"), &format!("n-{i}")))
        .collect();
    let mut args = vec!["policy", "push"];
    args.extend(many.iter().map(String::as_str));
    let refused = agent.cli(&args).expect_err("300 pushed files");
    assert!(format!("{refused:#}").contains("rejected"), "{refused:#}");
    assert_eq!(pushed("files"), 1.0, "a refused push changed the set");
    let big = pushes.join("big.yaml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(33 * 1024 * 1024))).expect("big file");
    let refused = agent
        .cli(&["policy", "push", &big.display().to_string()])
        .expect_err("33 MiB pushed");
    assert!(format!("{refused:#}").contains("rejected"), "{refused:#}");
    assert!(
        agent
            .log()
            .contains("over the limit of 256 files and 33554432 bytes"),
        "the refusal names the bound"
    );
    assert_eq!(pushed("files"), 1.0, "a refused push changed the set");
    agent
        .cli(&["policy", "push", "--delete", "extra.yaml"])
        .expect("delete");
    assert_eq!(pushed("files"), 0.0);
    let status = agent.cli(&["status", "--json"]).expect("status");
    assert!(!status.contains("push:extra.yaml"), "{status}");
    let _ = std::fs::remove_dir_all(&pushes);

    // A flood of idle connections, more than the agent has descriptors.
    let flood = netns::run_in(&a, move || -> Vec<TcpStream> {
        (0..800)
            .filter_map(|_| TcpStream::connect_timeout(&node, Duration::from_secs(2)).ok())
            .collect()
    })
    .expect("flood");
    assert!(flood.len() > 600, "only {} connections opened", flood.len());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent
            .pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        "the agent exited under the flood; log:\n{}",
        agent.log()
    );
    // The admin socket answers during the flood.
    agent
        .cli(&["status"])
        .unwrap_or_else(|e| panic!("status during the flood: {e:#}\n{}", agent.log()));
    // The node's own probes are not starved by one pod's connections (8 per address).
    let (code, _) = agent
        .get("/readyz")
        .unwrap_or_else(|e| panic!("/readyz during the flood: {e:#}\n{}", agent.log()));
    assert_eq!(code, 200);
    // An idle connection is closed by the header-read timeout.
    let first = flood.into_iter().next().expect("a connection");
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = matches!((&first).read(&mut buf), Ok(0));
    assert!(
        closed,
        "an idle connection was not closed in {:?}",
        started.elapsed()
    );
    // Once the flood is gone the metrics address serves again.
    rampart_tests::eventually("/metrics to answer again", Duration::from_secs(30), || {
        matches!(agent.get("/metrics"), Ok((200, _))).then_some(())
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

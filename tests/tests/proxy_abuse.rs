//! Hostile clients at the real proxy, on a real kernel: two nodes, pod a (node 1) attacking pod
//! b's ports (node 2) through the tunnel, and a client outside the cluster attacking node 2's
//! tunnel port, while pod c (node 1, another identity) is served throughout. The agents run
//! with short limits so each abuse is cut within seconds:
//!
//! - slowloris (request heads a byte at a time) and slow POST: cut at their timeouts (the POST
//!   answered `408`);
//! - an idle kept-alive connection and an idle tunnelled flow: closed;
//! - one identity opening more flows than its share: the rest refused;
//! - HTTP/2 rapid reset, a CONTINUATION flood and a SETTINGS flood: the connection ended;
//! - a flood of half-open TLS handshakes from one address: held to its share, timed out.
//!
//! Each is counted in `rampart_proxy_limit_hits_total{limit}`, and node 2's agent stays under
//! a stated bound of resident memory and open files the whole time.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rampart_tests::h2::H2Origin;
use rampart_tests::http_server::HttpServer;
use rampart_tests::mesh::{MeshAgents, pod_object};
use rampart_tests::netns::{self, TEST_PREFIX};
use rampart_tests::probe::http_request;
use rampart_tests::raw_origin::RawOrigin;
use rampart_tests::{Agent, EchoServer, Topology, require_root};

/// Resident memory node 2's agent may grow by over its warmed-up size during the attacks.
const RSS_GROWTH_BOUND: u64 = 48 << 20;
/// Open files it may grow by: the attacks try to hold up to 300 connections at once; the
/// limits let it keep the connection share of one address (100), of which the flows' share of
/// one identity (20, two files each), and the slow clients' connections until their timeouts.
const FD_GROWTH_BOUND: usize = 160;

const LIMITS: &[&str] = &[
    "--request-head-timeout",
    "2",
    "--request-body-timeout",
    "2",
    "--http-idle-timeout",
    "2",
    "--tunnel-idle-timeout",
    "3",
    "--max-flows-per-identity",
    "20",
    "--tls-handshake-timeout",
    "2",
    "--max-tls-handshakes-per-source",
    "16",
    "--max-connections-per-source",
    "100",
];

fn ip(n: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, d)
}

fn b(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(2, 10)), port)
}

fn policy() -> String {
    let pod = |name: &str, node: u8, d: u8| pod_object("shop", name, node, ip(node, d));
    let http = |name: &str, port: u16| {
        format!(
            "---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: {name}}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {port}}}]\n  http:\n    rules:\n    - {{action: Allow, paths: [{{prefix: /}}]}}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}{}{}{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: b-tcp}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: 5432}}]\n",
        pod("a", 1, 10),
        pod("c", 1, 11),
        pod("b", 2, 10),
        http("b-post", 8080),
        http("b-http", 8081),
        http("b-h2", 8082),
    )
}

/// Samples an agent's resources every 50 ms until stopped; keeps the peaks.
struct Peaks {
    rss: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peaks {
    fn watch(pid_of: &Agent) -> Peaks {
        let pid = pid_of.pid().expect("agent pid");
        let (rss, fds, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, f, s) = (Arc::clone(&rss), Arc::clone(&fds), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, fds)) = rampart_tests::agent::process_resources(pid) {
                    r.fetch_max(rss, Ordering::Relaxed);
                    f.fetch_max(fds as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Peaks {
            rss,
            fds,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.rss.load(Ordering::Relaxed),
            usize::try_from(self.fds.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        )
    }
}

/// A well-behaved client: pod c asks b:8081 every 250 ms until stopped; counts answers and
/// failures.
struct GoodClient {
    served: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GoodClient {
    fn start(ns_path: String) -> GoodClient {
        let (served, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(std::sync::Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, f, st) = (Arc::clone(&served), Arc::clone(&failed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match http_request(
                    &ns_path,
                    b(8081),
                    "GET",
                    "/good",
                    &[],
                    Duration::from_secs(5),
                ) {
                    Ok(r) if r.status == 200 => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => f
                        .lock()
                        .expect("failures")
                        .push(format!("status {}", r.status)),
                    Err(e) => f.lock().expect("failures").push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        GoodClient {
            served,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failed = std::mem::take(&mut *self.failed.lock().expect("failures"));
        (self.served.load(Ordering::Relaxed), failed)
    }
}

/// `n` TCP connections to `to` opened inside the namespace at `ns_path`.
fn connections(ns_path: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    netns::run_in(ns_path, move || {
        (0..n)
            .filter_map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok())
            .collect::<Vec<_>>()
    })
    .expect("connect in the namespace")
}

/// Whether the peer has closed `stream` (EOF or reset) by `deadline`; data read is discarded.
fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

fn hits(agent: &Agent, limit: &str) -> f64 {
    agent.sample(
        "rampart_proxy_limit_hits_total",
        &format!("limit=\"{limit}\""),
    )
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HPACK: `:method GET`, `:scheme http`, `:path /`, `:authority b` (literal, not indexed).
const GET_HEADERS: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'b'];
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 0x4;

/// Sends `bytes` on a new connection from pod a to `to` and says whether the proxy closed it
/// within 5 s.
fn h2_attack(a: &str, to: SocketAddr, bytes: Vec<u8>) -> bool {
    let mut stream = connections(a, to, 1).pop().expect("connected");
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(&bytes);
    closed_by(&mut stream, Instant::now() + Duration::from_secs(5))
}

#[test]
fn hostile_clients_are_cut_at_their_limits_while_a_good_client_is_served() {
    require_root();
    let topo = Topology::builder(TEST_PREFIX)
        .node("node-1")
        .node("node-2")
        .outside()
        .pod("node-1", "shop/a", ip(1, 10))
        .pod("node-1", "shop/c", ip(1, 11))
        .pod("node-2", "shop/b", ip(2, 10))
        .build()
        .expect("topology");
    let b_ns = &topo.pod("shop/b").ns;
    let post_origin = RawOrigin::start(b_ns, 8080).expect("origin 8080");
    let _http = HttpServer::start(b_ns, 8081).expect("origin 8081");
    let _h2 = H2Origin::start(b_ns, 8082).expect("origin 8082");
    let _echo = EchoServer::start(b_ns, &[5432], &[]).expect("echo");
    let mesh =
        MeshAgents::start(&topo, &["node-1", "node-2"], &policy(), None, LIMITS).expect("agents");
    let (node1, node2) = (mesh.node("node-1"), mesh.node("node-2"));
    let a = topo.pod("shop/a").ns.path();
    let c = topo.pod("shop/c").ns.path();

    // Warm up: the good client's path works, then the baseline is taken.
    rampart_tests::eventually("c to reach b:8081", Duration::from_secs(20), || {
        http_request(&c, b(8081), "GET", "/", &[], Duration::from_secs(3))
            .ok()
            .filter(|r| r.status == 200)
    });
    for _ in 0..5 {
        let _ = http_request(&c, b(8081), "GET", "/", &[], Duration::from_secs(3));
    }
    let (rss0, fds0) = node2.resources().expect("node 2's resources");
    let peaks = Peaks::watch(node2);
    let good = GoodClient::start(c.clone());

    // Slowloris: 20 request heads (the identity's share of flows), a byte every 500 ms; each
    // is cut at the head timeout (2 s), not before.
    let mut slow = connections(&a, b(8081), 20);
    assert_eq!(slow.len(), 20);
    for s in &mut slow {
        s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n")
            .expect("head start");
        let _ = s.set_nonblocking(true);
    }
    let started = Instant::now();
    let mut cut_at: Vec<Option<Duration>> = vec![None; slow.len()];
    while cut_at.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(500));
        for (s, cut) in slow.iter_mut().zip(&mut cut_at) {
            if cut.is_some() {
                continue;
            }
            let mut buf = [0u8; 64];
            let gone = matches!(s.read(&mut buf), Ok(0))
                || s.write_all(b"X").is_err()
                || matches!(s.read(&mut buf), Ok(0));
            if gone {
                *cut = Some(started.elapsed());
            }
        }
    }
    drop(slow);
    assert!(
        cut_at
            .iter()
            .all(|c| c.is_some_and(|t| t >= Duration::from_millis(1500))),
        "slow heads not cut at the head timeout: {cut_at:?}\n{}",
        node2.metrics().unwrap_or_default()
    );
    assert!(hits(node2, "request_head_timeout") >= 20.0);

    // Slow POST: 100 kB announced, 20 bytes every 500 ms: 408 at the body timeout, and the
    // pod never gets a whole request.
    let mut post = connections(&a, b(8080), 1).pop().expect("connected");
    post.write_all(b"POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n\r\n")
        .expect("head");
    let _ = post.set_read_timeout(Some(Duration::from_millis(500)));
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let _ = post.write_all(&[b'x'; 20]);
        let mut buf = [0u8; 1024];
        match post.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow POST got: {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(post_origin.take().is_empty(), "the pod got a request");
    assert!(hits(node2, "request_body_timeout") >= 1.0);

    // An idle kept-alive connection is closed after its request.
    let mut kept = connections(&a, b(8081), 1).pop().expect("connected");
    kept.write_all(b"GET /once HTTP/1.1\r\nHost: b\r\n\r\n")
        .expect("request");
    let started = Instant::now();
    assert!(
        closed_by(&mut kept, started + Duration::from_secs(6)),
        "an idle keep-alive connection stayed open"
    );
    assert!(hits(node2, "http_idle_timeout") >= 1.0);

    // One identity opening 60 flows: 20 are served, the rest refused; they close when idle.
    let mut flows = connections(&a, b(5432), 60);
    let mut echoed = 0;
    for f in &mut flows {
        let _ = f.set_read_timeout(Some(Duration::from_secs(2)));
        let mut back = [0u8; 1];
        if f.write_all(b"x").is_ok() && f.read_exact(&mut back).is_ok() {
            echoed += 1;
        }
    }
    assert_eq!(echoed, 20, "flows past the identity's share were served");
    assert!(hits(node2, "flows_per_identity") >= 40.0);
    let started = Instant::now();
    let mut idle_closed = 0;
    for f in &mut flows {
        if closed_by(f, started + Duration::from_secs(8)) {
            idle_closed += 1;
        }
    }
    assert_eq!(idle_closed, 60, "idle flows stayed open");
    drop(flows);
    let tunnel_idle = hits(node1, "tunnel_idle_timeout") + hits(node2, "tunnel_idle_timeout");
    assert!(tunnel_idle >= 20.0, "idle flows counted: {tunnel_idle}");

    // HTTP/2 rapid reset: 1,000 streams opened and reset in one burst.
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS, id, GET_HEADERS));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    assert!(h2_attack(&a, b(8082), burst), "rapid reset: still open");
    // CONTINUATION flood: a header block that never ends.
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    flood.extend(frame(HEADERS, 0, 1, &GET_HEADERS[..3]));
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[0x01, 0x01, b'b']));
    }
    assert!(
        h2_attack(&a, b(8082), flood),
        "CONTINUATION flood: still open"
    );
    let abuse = hits(node2, "http2_abuse");
    assert!(abuse >= 2.0, "HTTP/2 abuse counted: {abuse}");
    // SETTINGS flood, never reading the acknowledgements: bounded, and closed when idle.
    let mut settings = PREFACE.to_vec();
    for _ in 0..20_000 {
        settings.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    assert!(
        h2_attack(&a, b(8082), settings),
        "SETTINGS flood: still open"
    );

    // Half-open TLS handshakes from outside: 300 connections to the tunnel port that never
    // speak. 100 are taken (the address's share; the rest closed at once), 16 at a time hold a
    // handshake slot and the others wait for one, each until its own deadline: all are closed.
    let outside = topo.outside().path();
    let tunnel = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 200, 2)), 15008);
    let mut half_open = connections(&outside, tunnel, 300);
    assert!(half_open.len() >= 250, "{} connected", half_open.len());
    let started = Instant::now();
    let mut closed = 0;
    for s in &mut half_open {
        if closed_by(s, started + Duration::from_secs(5)) {
            closed += 1;
        }
    }
    assert_eq!(closed, half_open.len(), "half-open handshakes stayed open");
    drop(half_open);
    let limit_hits = || {
        node2
            .metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("rampart_proxy_limit_hits_total"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        hits(node2, "connections_per_source") >= 150.0,
        "{}",
        limit_hits()
    );
    // Each taken connection ended at its deadline: in its handshake, or still waiting for one.
    let ended = hits(node2, "tls_handshake_timeout") + hits(node2, "tls_handshakes_per_source");
    assert!(ended >= 90.0, "{}", limit_hits());
    assert!(
        hits(node2, "tls_handshake_timeout") >= 16.0,
        "{}",
        limit_hits()
    );

    let (served, failed) = good.stop();
    let (rss, fds) = peaks.stop();
    assert!(
        failed.is_empty(),
        "the good client failed {} times (served {served}): {failed:?}",
        failed.len()
    );
    assert!(served >= 20, "the good client was served {served} times");
    eprintln!(
        "node 2: RSS {} -> peak {} MiB; open files {fds0} -> peak {fds}",
        rss0 >> 20,
        rss >> 20
    );
    assert!(
        rss <= rss0 + RSS_GROWTH_BOUND,
        "RSS grew from {rss0} to {rss}"
    );
    assert!(
        fds <= fds0 + FD_GROWTH_BOUND,
        "open files grew from {fds0} to {fds}"
    );
}

//! The tunnel on loopback with real TLS: what gets through, what is refused and counted, and a
//! flow that outlives a certificate and root rotation.

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::mesh::ca::{Ca, WorkloadCert};
use crate::mesh::tls::{
    RotatingCert, TrustBundle, build_client_config, client_config, server_config,
};

const TD: &str = "example.org";
const HOUR: Duration = Duration::from_secs(3600);

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).expect("id")
}

fn frontend() -> SpiffeId {
    id("/ns/shop/sa/frontend")
}

fn node() -> SpiffeId {
    id("/rampart/node/node-2")
}

fn db() -> SpiffeId {
    id("/ns/shop/sa/db")
}

/// The destination node's local workloads: `db` at 127.0.0.1 (where the test's upstream
/// listens).
struct Workloads {
    bundle: TrustBundle,
    db: Arc<RotatingCert>,
}

impl DestinationIdentity for Workloads {
    fn config_for(&self, addr: IpAddr) -> IdentityFuture<'_> {
        Box::pin(async move {
            (addr == IpAddr::from([127, 0, 0, 1])).then(|| {
                let config = server_config(&self.bundle, Arc::clone(&self.db)).expect("config");
                (db(), config)
            })
        })
    }

    fn identity_of(&self, addr: IpAddr) -> Option<SpiffeId> {
        (addr == IpAddr::from([127, 0, 0, 1])).then(db)
    }
}

/// Allows only the frontend.
struct FrontendOnly;

impl Authorize for FrontendOnly {
    fn check(&self, flow: &FlowRequest) -> Result<Option<Arc<crate::l7::HttpRoute>>, MtlsReason> {
        if flow.peer == frontend() {
            Ok(None)
        } else {
            Err(MtlsReason::PrincipalNotAllowed)
        }
    }
}

struct World {
    ca: Ca,
    bundle: TrustBundle,
    tunnel: SocketAddr,
    upstream: SocketAddr,
    inbound: Arc<Inbound>,
    server_cert: Arc<RotatingCert>,
    events: Arc<std::sync::Mutex<Vec<ProxyEvent>>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    /// A destination node that presents its node certificate to every client.
    async fn start() -> World {
        World::start_with(false).await
    }

    /// With `workloads`, the destination node presents the certificate of its workload `db`
    /// (at 127.0.0.1, the upstream) to a client that names that address.
    async fn start_with(workloads: bool) -> World {
        let ca = Ca::generate(TD, 24 * HOUR, SystemTime::now()).expect("ca");
        let bundle = TrustBundle::new(TD, &[ca.cert_der().clone()]).expect("bundle");
        let server_cert = Arc::new(
            RotatingCert::new(&ca.issue(&node(), HOUR, SystemTime::now()).expect("issue"))
                .expect("cert"),
        );
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_events = Arc::clone(&events);
        let sink: ProxyEventSink = Arc::new(move |e: &ProxyEvent| {
            sink_events.lock().expect("events").push(e.clone());
        });
        let inbound = Arc::new(Inbound {
            config: RwLock::new(server_config(&bundle, Arc::clone(&server_cert)).expect("config")),
            trust_domain: TD.to_owned(),
            authorize: Arc::new(FrontendOnly),
            stats: Arc::new(TunnelStats::default()),
            l7: Arc::new(crate::l7::L7Stats::default()),
            upstream: UpstreamSource::Plain,
            events: Some(sink),
            identities: workloads.then(|| {
                Arc::new(Workloads {
                    bundle: bundle.clone(),
                    db: Arc::new(
                        RotatingCert::new(
                            &ca.issue(&db(), HOUR, SystemTime::now()).expect("issue"),
                        )
                        .expect("cert"),
                    ),
                }) as Arc<dyn DestinationIdentity>
            }),
            drain: crate::listen::Drain::default(),
            guards: crate::limits::ProxyGuards::new(crate::limits::ProxyLimits::default(), 4096),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tunnel = listener.local_addr().expect("addr");
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = echo.local_addr().expect("addr");
        let tasks = vec![
            tokio::spawn(serve(
                listener,
                Arc::clone(&inbound),
                crate::listen::ConnectionCap::new(64),
                crate::listen::Gate::open_now(),
            )),
            tokio::spawn(async move {
                while let Ok((mut s, _)) = echo.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            }),
        ];
        World {
            ca,
            bundle,
            tunnel,
            upstream,
            inbound,
            server_cert,
            events,
            _tasks: tasks,
        }
    }

    fn cert(&self, who: &SpiffeId) -> WorkloadCert {
        self.ca.issue(who, HOUR, SystemTime::now()).expect("issue")
    }

    async fn open(&self, config: Arc<ClientConfig>) -> Result<FlowStream, ConnectError> {
        let source: SocketAddr = "10.244.1.10:40000".parse().expect("addr");
        connect(self.tunnel, config, source, self.upstream).await
    }

    async fn wait_denied(&self, reason: MtlsReason) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inbound.stats.denied(reason) == 0 {
            assert!(Instant::now() < deadline, "{} never counted", reason.name());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn echo(stream: &mut FlowStream, payload: &[u8]) {
    stream.write_all(payload).await.expect("write");
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(back, payload);
}

#[tokio::test]
async fn an_allowed_peer_reaches_the_destination_through_the_tunnel() {
    let w = World::start().await;
    let config = client_config(&w.bundle, &w.cert(&frontend()), node()).expect("config");
    let mut flow = w.open(config).await.expect("tunnel");
    echo(&mut flow, b"hello through mTLS").await;
    assert_eq!(w.inbound.stats.accepted_streams(), 1);
    for &reason in MtlsReason::ALL {
        assert_eq!(w.inbound.stats.denied(reason), 0, "{}", reason.name());
    }
}

#[tokio::test]
async fn a_peer_policy_does_not_allow_is_refused() {
    let w = World::start().await;
    let db = id("/ns/shop/sa/db");
    let config = client_config(&w.bundle, &w.cert(&db), node()).expect("config");
    match w.open(config).await {
        Err(ConnectError::Refused(code)) => assert_eq!(code, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert_eq!(w.inbound.stats.denied(MtlsReason::PrincipalNotAllowed), 1);
    // The refusal is a flow event naming the flow and the peer.
    let events = w.events.lock().expect("events").clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].side, ProxySide::Inbound);
    assert_eq!(
        events[0].refused.map(|r| r.name()),
        Some("principal_not_allowed")
    );
    assert_eq!(events[0].peer.as_deref(), Some(db.as_str()));
    assert_eq!(events[0].destination, Some(w.upstream));
    assert_eq!(
        events[0].source,
        Some("10.244.1.10:40000".parse().expect("addr"))
    );
}

#[tokio::test]
async fn bad_certificates_and_plaintext_are_refused_and_counted() {
    let w = World::start().await;

    // A certificate of another CA (same trust domain name, other key).
    let rogue = Ca::generate(TD, HOUR, SystemTime::now()).expect("ca");
    let cert = rogue
        .issue(&frontend(), HOUR, SystemTime::now())
        .expect("issue");
    let config = client_config(&w.bundle, &cert, node()).expect("config");
    assert!(w.open(config).await.is_err());
    w.wait_denied(MtlsReason::UnknownCa).await;

    // An expired certificate.
    let past = SystemTime::now() - 48 * HOUR;
    let expired = w.ca.issue(&frontend(), HOUR, past).expect("issue");
    let config = client_config(&w.bundle, &expired, node()).expect("config");
    assert!(w.open(config).await.is_err());
    w.wait_denied(MtlsReason::CertificateExpired).await;

    // An SVID of another trust domain, from this trust domain's own CA.
    let foreign = SpiffeId::parse("spiffe://other.org/ns/shop/sa/frontend").expect("id");
    let cert =
        w.ca.issue(&foreign, HOUR, SystemTime::now())
            .expect("issue");
    let config = client_config(&w.bundle, &cert, node()).expect("config");
    assert!(w.open(config).await.is_err());
    w.wait_denied(MtlsReason::NotSpiffe).await;

    // No client certificate.
    let config =
        build_client_config(&w.bundle, None, node(), &[&rustls::version::TLS13]).expect("config");
    assert!(w.open(config).await.is_err());
    w.wait_denied(MtlsReason::NoClientCertificate).await;

    // TLS 1.2.
    let cert = w.cert(&frontend());
    let config = build_client_config(&w.bundle, Some(&cert), node(), &[&rustls::version::TLS12])
        .expect("config");
    assert!(w.open(config).await.is_err());
    w.wait_denied(MtlsReason::ProtocolVersion).await;

    // Plaintext to the tunnel port.
    let mut plain = TcpStream::connect(w.tunnel).await.expect("connect");
    plain
        .write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "plaintext gets no answer");
    w.wait_denied(MtlsReason::Plaintext).await;
    assert_eq!(w.inbound.stats.accepted_streams(), 0);
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_identity() {
    let w = World::start().await;
    let config =
        client_config(&w.bundle, &w.cert(&frontend()), id("/rampart/node/node-3")).expect("config");
    match w.open(config).await {
        // Not opened again: another try meets the same certificate.
        Err(e @ ConnectError::Tls(..)) => assert!(!e.is_retriable(), "{e}"),
        other => panic!("expected a TLS failure, got {:?}", other.map(|_| ())),
    }
    assert_eq!(w.inbound.stats.accepted_streams(), 0);
}

#[tokio::test]
async fn a_connection_the_drain_catches_before_its_first_stream_serves_it() {
    // The connection is accepted as the agent stops accepting: the drain starts before the
    // client's CONNECT arrives, which comes late (a busy node). The flow is served; a GOAWAY
    // before it would refuse it.
    let w = World::start().await;
    w.inbound.drain.start();
    let config = client_config(&w.bundle, &w.cert(&frontend()), node()).expect("config");
    let tcp = TcpStream::connect(w.tunnel).await.expect("connect");
    let tls = TlsConnector::from(config)
        .connect(server_name_for(w.upstream.ip()), tcp)
        .await
        .expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/2");
    let _conn = tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(w.upstream.to_string())
        .header(SOURCE_HEADER, "for=\"10.244.1.10:40000\"")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .expect("the stream is served");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut flow = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgrade"));
    echo(&mut flow, b"caught by the drain").await;
    assert_eq!(w.inbound.stats.accepted_streams(), 1);
}

#[tokio::test]
async fn a_tunnel_closed_before_it_took_the_flow_is_opened_again() {
    // In front of the tunnel: the first connection is closed during the TLS handshake (an
    // agent going away), the next ones are passed through.
    let w = World::start().await;
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let tunnel = w.tunnel;
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let _front = tokio::spawn(async move {
        while let Ok((mut client, _)) = front.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                // Read the ClientHello, then close.
                let mut hello = [0u8; 512];
                let _ = client.read(&mut hello).await;
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(tunnel).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let config = client_config(&w.bundle, &w.cert(&frontend()), node()).expect("config");
    let source: SocketAddr = "10.244.1.10:40000".parse().expect("addr");

    // The first try alone fails in a way that is safe to repeat.
    let once = connect_named(
        front_addr,
        Arc::clone(&config),
        server_name_for(w.upstream.ip()),
        source,
        w.upstream,
    )
    .await;
    match once {
        Err(e) => assert!(e.is_retriable(), "{e}"),
        Ok(_) => panic!("the front closed the first connection"),
    }
    // `connect` opens it again, and the flow goes through.
    accepted.store(0, Ordering::SeqCst);
    let mut flow = connect(front_addr, config, source, w.upstream)
        .await
        .expect("opened on the second try");
    echo(&mut flow, b"second try").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_flow_outlives_certificate_and_root_rotation() {
    let w = World::start().await;
    let config = client_config(&w.bundle, &w.cert(&frontend()), node()).expect("config");
    let mut flow = w.open(config).await.expect("tunnel");
    echo(&mut flow, b"before").await;

    // A new root is rolled out: the bundle holds both; the server gets a certificate of the new
    // root and a configuration trusting both. The established flow keeps working.
    let next = Ca::generate(TD, 24 * HOUR, SystemTime::now()).expect("ca");
    let both =
        TrustBundle::new(TD, &[w.ca.cert_der().clone(), next.cert_der().clone()]).expect("bundle");
    w.server_cert
        .replace(&next.issue(&node(), HOUR, SystemTime::now()).expect("issue"))
        .expect("replace");
    *w.inbound.config.write().expect("lock") =
        server_config(&both, Arc::clone(&w.server_cert)).expect("config");
    echo(&mut flow, b"after rotation").await;

    // New flows use the new certificates.
    let cert = next
        .issue(&frontend(), HOUR, SystemTime::now())
        .expect("issue");
    let config = client_config(&both, &cert, node()).expect("config");
    let mut fresh = w.open(config).await.expect("tunnel after rotation");
    echo(&mut fresh, b"new").await;
    echo(&mut flow, b"still alive").await;
}

#[test]
fn server_names_carry_the_destination_address() {
    for addr in ["10.244.1.12", "fd00::a:f401:c", "::ffff:10.0.0.1"] {
        let addr: IpAddr = addr.parse().expect("addr");
        let ServerName::DnsName(name) = server_name_for(addr) else {
            panic!("{addr}: not a DNS name");
        };
        assert_eq!(
            destination_of_server_name(name.as_ref()),
            Some(addr.to_canonical()),
            "{name:?}"
        );
    }
    for bad in [
        "0af4010c.example.com",
        "0af401.dst.rampart.invalid",
        "zzf4010c.dst.rampart.invalid",
        ".dst.rampart.invalid",
    ] {
        assert_eq!(destination_of_server_name(bad), None, "{bad}");
    }
}

/// The destination's agent presents the certificate of the workload at the address the client
/// names; a client that expects that workload gets through, one whose policy gives the address
/// another identity refuses the handshake.
#[tokio::test]
async fn the_destination_proves_the_workload_at_the_address() {
    let w = World::start_with(true).await;
    let config = client_config(&w.bundle, &w.cert(&frontend()), db()).expect("config");
    let mut flow = w.open(config).await.expect("the db's own certificate");
    echo(&mut flow, b"to the db").await;

    let expecting_backend =
        client_config(&w.bundle, &w.cert(&frontend()), id("/ns/shop/sa/backend")).expect("config");
    match w.open(expecting_backend).await {
        Err(e) => assert!(e.is_wrong_server_identity(), "{e}"),
        Ok(_) => panic!("a client expecting another workload was let through"),
    }
}

/// A connection whose handshake proved the workload at one address carries no stream to another.
#[tokio::test]
async fn a_stream_to_another_address_than_the_handshake_named_is_refused() {
    let w = World::start_with(true).await;
    let config = client_config(&w.bundle, &w.cert(&frontend()), db()).expect("config");
    let source: SocketAddr = "10.244.1.10:40000".parse().expect("addr");
    let elsewhere = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), w.upstream.port());
    let named = server_name_for(w.upstream.ip());
    match connect_named(w.tunnel, config, named, source, elsewhere).await {
        Err(ConnectError::Refused(status)) => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    w.wait_denied(MtlsReason::DestinationMismatch).await;
}

//! `rampart ca serve`: the CA over HTTPS (TLS 1.3, its own certificate naming
//! `spiffe://<trust domain>/rampart/ca`), HTTP/1.1:
//!
//! - `POST /v1/node`: `Authorization: Bearer <node token>`, body a PKCS#10 request (DER): the
//!   node certificate of the node the token names (PEM chain).
//! - `POST /v1/workload?id=<SPIFFE ID>`: over a client certificate that is a node certificate,
//!   body a request: the workload's SVID, if a pod with that identity runs on that node.
//! - `GET /v1/bundle`: the trust bundle in the SPIFFE bundle format (a JWK set).
//!
//! Refusals are answered 401 (no or a bad credential) or 403 (not this node's), counted by
//! reason and logged with the node and the identity asked for.
//!
//! With [`CaService::reloading`], the signing files (`ca.crt`/`ca.key`, or the user's
//! intermediate in `tls.crt`/`tls.key`) are read again when they change: the CA signs with the
//! new ones from then on, and nodes whose certificates chain to the root it signed under just
//! before are still served (their next certificates come from the new key).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::authority::{Authority, Placement, Refusal};
use super::node_tokens;
pub use super::placement::PlacementSource;
use crate::mesh::tls::{RotatingCert, TrustBundle, provider};
use crate::spiffe::SpiffeId;

/// The largest request body (a CSR is a few hundred bytes).
const BODY_LIMIT: usize = 16 * 1024;
/// How long a request body may take to arrive (the header's own timeout is the listener's).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the signing files are compared with those in force. Polled, as the agents poll
/// their `ca.crt`: a Kubernetes Secret volume changes by swapping a symlink, which a watch of
/// the files does not see without watching the directory's internals.
const RELOAD_CHECK: Duration = Duration::from_secs(5);
/// The files the signing material is read from.
const SIGNING_FILES: [&str; 4] = [
    crate::mesh::ca::CA_CERT_FILE,
    crate::mesh::ca::CA_KEY_FILE,
    crate::mesh::ca::EXTERNAL_CERT_FILE,
    crate::mesh::ca::EXTERNAL_KEY_FILE,
];

/// Counters of the service.
#[derive(Debug, Default)]
pub struct CaStats {
    pub node_certificates: AtomicU64,
    pub workload_certificates: AtomicU64,
    /// Times the signing files changed and the CA took the new ones.
    pub reloads: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl CaStats {
    fn refuse(&self, reason: &'static str) {
        if let Ok(mut refused) = self.refused.lock() {
            *refused.entry(reason).or_default() += 1;
        }
    }

    /// Refusals by reason.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

pub struct CaService {
    authority: Authority,
    /// Where the node tokens' digests are.
    ca_dir: PathBuf,
    placement: PlacementSource,
    /// The agents' (namespace, service account), whose projected tokens authenticate nodes.
    agent: (String, String),
    /// Read the signing files again when they change: `Some(trust domain as at start)`.
    reload: Option<Option<String>>,
    /// How often the files are compared ([`RELOAD_CHECK`]).
    reload_every: Duration,
    pub stats: CaStats,
}

impl CaService {
    pub fn new(authority: Authority, ca_dir: &Path, placement: PlacementSource) -> CaService {
        CaService {
            authority,
            ca_dir: ca_dir.to_owned(),
            placement,
            agent: ("rampart-system".to_owned(), "rampart".to_owned()),
            reload: None,
            reload_every: RELOAD_CHECK,
            stats: CaStats::default(),
        }
    }

    /// Nodes authenticate with the projected tokens of `namespace/service account` too (with
    /// a Kubernetes placement).
    pub fn with_agent(mut self, namespace: &str, service_account: &str) -> CaService {
        self.agent = (namespace.to_owned(), service_account.to_owned());
        self
    }

    /// Reads the signing files of the CA's directory again when they change (loaded as at
    /// start: for `trust_domain`, or the one `ca.crt` names).
    pub fn reloading(mut self, trust_domain: Option<&str>) -> CaService {
        self.reload = Some(trust_domain.map(str::to_owned));
        self
    }

    /// The signing files as they are now (absent ones as `None`).
    fn signing_files(&self) -> Vec<Option<Vec<u8>>> {
        SIGNING_FILES
            .iter()
            .map(|name| std::fs::read(self.ca_dir.join(name)).ok())
            .collect()
    }

    /// Loads the signing files and signs with them from now on.
    fn reload_signing(&self, trust_domain: Option<&str>) -> anyhow::Result<()> {
        let ca = crate::mesh::ca::Ca::load_signing(&self.ca_dir, trust_domain)?;
        self.authority.replace(ca)?;
        Ok(())
    }

    /// The CA's own SPIFFE ID (what clients expect the server to present).
    pub fn id(&self) -> anyhow::Result<SpiffeId> {
        Ok(SpiffeId::ca(self.authority.trust_domain())?)
    }

    fn placement(&self) -> anyhow::Result<Arc<Placement>> {
        self.placement.current()
    }

    /// The TLS configuration: TLS 1.3, the CA's own certificate, client certificates optional
    /// (a node bootstrapping has none yet) and, when given, chained to one of `client_roots`.
    pub fn tls_config(
        &self,
        client_roots: &[CertificateDer<'static>],
    ) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<RotatingCert>)> {
        let own = self.authority.issue_own(&self.id()?, SystemTime::now())?;
        let resolver = Arc::new(RotatingCert::new(&own)?);
        let bundle = TrustBundle::new(self.authority.trust_domain(), client_roots)?;
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&bundle.roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(
                Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>
            );
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok((Arc::new(config), resolver))
    }

    /// The counters in the Prometheus text format: certificates issued by kind, refusals by
    /// reason.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP rampart_ca_certificates_issued_total Certificates the CA signed, by kind\n# TYPE rampart_ca_certificates_issued_total counter\n",
        );
        for (kind, n) in [
            ("node", &self.stats.node_certificates),
            ("workload", &self.stats.workload_certificates),
        ] {
            let _ = writeln!(
                out,
                "rampart_ca_certificates_issued_total{{kind=\"{kind}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP rampart_ca_refusals_total Requests the CA refused, by reason\n# TYPE rampart_ca_refusals_total counter\n");
        let refused = self.stats.refused();
        let reasons = Refusal::NAMES.iter().copied().chain([
            "no_credential",
            "malformed_token",
            "unknown_node",
            "wrong_token",
        ]);
        for reason in reasons {
            let _ = writeln!(
                out,
                "rampart_ca_refusals_total{{reason=\"{reason}\"}} {}",
                refused.get(reason).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP rampart_ca_signing_reloads_total Times the signing files changed and the CA signs with the new ones\n# TYPE rampart_ca_signing_reloads_total counter\nrampart_ca_signing_reloads_total {}",
            self.stats.reloads.load(Ordering::Relaxed)
        );
        out
    }

    /// The trust bundle in the SPIFFE bundle format: a JWK set whose keys (`use: x509-svid`)
    /// carry the roots (`x5c`).
    pub fn bundle_json(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> =
            self.authority.roots().iter().filter_map(jwk_of).collect();
        serde_json::json!({"keys": keys, "spiffe_refresh_hint": 300})
    }
}

/// One CA certificate as a JWK of the SPIFFE bundle format (EC P-256 keys: what `rampart ca`
/// makes; other keys are left out).
fn jwk_of(der: &CertificateDer<'_>) -> Option<serde_json::Value> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let point = cert.public_key().subject_public_key.data.as_ref();
    // An uncompressed P-256 point: 0x04, X (32 bytes), Y (32 bytes).
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    Some(serde_json::json!({
        "use": "x509-svid",
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        "x5c": [STANDARD.encode(der.as_ref())],
    }))
}

/// The service's TLS in force: its acceptor and its own certificate (both replaced when the
/// signing files change).
struct ServiceTls {
    acceptor: TlsAcceptor,
    own: Arc<RotatingCert>,
}

type SharedTls = Arc<std::sync::RwLock<ServiceTls>>;

fn current_tls<T>(tls: &SharedTls, f: impl FnOnce(&ServiceTls) -> T) -> T {
    match tls.read() {
        Ok(t) => f(&t),
        Err(poisoned) => f(&poisoned.into_inner()),
    }
}

/// Checks the signing files every [`RELOAD_CHECK`]; when they change, and read the same again
/// a moment later (a replacement in progress finishes first), and load, the CA signs with them,
/// presents a certificate of the new key, and takes client certificates under the new roots and
/// those it signed under just before (nodes are served through a rotation, as agents trust the
/// previous root beside the new; a root two rotations old is trusted no more). Files that do
/// not load change nothing (logged once per change).
async fn reload_signing(service: Arc<CaService>, trust_domain: Option<String>, tls: SharedTls) {
    let mut seen = service.signing_files();
    loop {
        tokio::time::sleep(service.reload_every).await;
        let files = service.signing_files();
        if files == seen {
            continue;
        }
        tokio::time::sleep(service.reload_every.min(Duration::from_secs(1))).await;
        if service.signing_files() != files {
            continue;
        }
        seen = files;
        let previous = service.authority.roots();
        let reloaded = service
            .reload_signing(trust_domain.as_deref())
            .and_then(|()| {
                let mut client_roots = service.authority.roots();
                for root in previous {
                    if !client_roots.contains(&root) {
                        client_roots.push(root);
                    }
                }
                service
                    .tls_config(&client_roots)
                    .map(|t| (t, client_roots.len()))
            });
        match reloaded {
            Ok(((config, own), roots)) => {
                let fresh = ServiceTls {
                    acceptor: TlsAcceptor::from(config),
                    own,
                };
                match tls.write() {
                    Ok(mut t) => *t = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                }
                service.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    roots,
                    "ca: the signing files changed; signing with the new ones"
                );
            }
            Err(e) => tracing::warn!(
                "ca: the signing files changed but do not load; signing with the previous ones: {e:#}"
            ),
        }
    }
}

/// Serves HTTPS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, service: Arc<CaService>) -> anyhow::Result<()> {
    let (config, own) = service.tls_config(&service.authority.roots())?;
    let tls: SharedTls = Arc::new(std::sync::RwLock::new(ServiceTls {
        acceptor: TlsAcceptor::from(config),
        own,
    }));
    if let Some(trust_domain) = service.reload.clone() {
        tokio::spawn(reload_signing(
            Arc::clone(&service),
            trust_domain,
            Arc::clone(&tls),
        ));
    }
    // The service's own certificate, issued again at half its lifetime.
    let (renewer, renewed) = (Arc::clone(&service), Arc::clone(&tls));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(super::authority::OWN_TTL / 2).await;
            match renewer
                .id()
                .and_then(|id| Ok(renewer.authority.issue_own(&id, SystemTime::now())?))
            {
                Ok(cert) => match current_tls(&renewed, |t| t.own.replace(&cert)) {
                    Ok(()) => tracing::info!("ca: the service's own certificate renewed"),
                    Err(e) => tracing::warn!("ca: renewing the service's own certificate: {e}"),
                },
                Err(e) => tracing::warn!("ca: renewing the service's own certificate: {e:#}"),
            }
        }
    });
    let cap = crate::listen::ConnectionCap::new(1024).per_peer(64);
    crate::listen::serve("ca", listener, cap, move |stream, peer: SocketAddr| {
        let (acceptor, service) = (
            current_tls(&tls, |t| t.acceptor.clone()),
            Arc::clone(&service),
        );
        async move {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let Ok(Ok(tls)) = handshake else {
                tracing::debug!(%peer, "ca: TLS handshake failed");
                return;
            };
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| SpiffeId::from_certificate(c).ok())
                .filter(|id| id.trust_domain() == service.authority.trust_domain())
                .and_then(|id| id.node_name().map(str::to_owned));
            let svc = hyper::service::service_fn(move |req| {
                let (service, node) = (Arc::clone(&service), node.clone());
                async move { Ok::<_, Infallible>(handle(req, node, peer, &service).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::listen::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "ca connection: {e}");
            }
        }
    })
    .await;
    Ok(())
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", format!("{message}\n"))
}

fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|der| {
            let b64 = STANDARD.encode(der.as_ref());
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

/// The request body, if it arrives whole within [`BODY_TIMEOUT`] and [`BODY_LIMIT`].
async fn body_of(req: Request<Incoming>) -> Option<Bytes> {
    let collect = Limited::new(req.into_body(), BODY_LIMIT).collect();
    tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .ok()?
        .ok()
        .map(|b| b.to_bytes())
}

async fn handle(
    req: Request<Incoming>,
    node: Option<String>,
    peer: SocketAddr,
    service: &CaService,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            service.metrics_text(),
        ),
        (Method::GET, "/v1/bundle") => reply(
            StatusCode::OK,
            "application/json",
            service.bundle_json().to_string(),
        ),
        (Method::POST, "/v1/node") => {
            let token = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let Some(token) = token else {
                service.stats.refuse("no_credential");
                return text(StatusCode::UNAUTHORIZED, "a node token is required");
            };
            // A node token of `rampart ca node-token`, or an agent's service-account token.
            let verified = if token.starts_with("rnt1.") {
                node_tokens::verify(&service.ca_dir, &token).map_err(|r| r.name())
            } else {
                service
                    .placement
                    .node_of_token(&token, &service.agent)
                    .await
            };
            let node = match verified {
                Ok(node) => node,
                Err(reason) => {
                    service.stats.refuse(reason);
                    tracing::warn!(%peer, reason, "ca: node credential refused");
                    return text(StatusCode::UNAUTHORIZED, "the node credential is not valid");
                }
            };
            let Some(csr) = body_of(req).await else {
                service
                    .stats
                    .refuse(Refusal::BadRequest(String::new()).name());
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request body is too large or too slow",
                );
            };
            match service.authority.sign_node(&node, &csr, SystemTime::now()) {
                Ok(chain) => {
                    service
                        .stats
                        .node_certificates
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%node, %peer, "ca: node certificate issued");
                    reply(StatusCode::OK, "application/x-pem-file", pem_chain(&chain))
                }
                Err(refusal) => refused(service, &node, "node", &refusal),
            }
        }
        (Method::POST, "/v1/workload") => {
            let Some(node) = node else {
                service.stats.refuse("no_credential");
                return text(
                    StatusCode::UNAUTHORIZED,
                    "a node certificate is required (as the TLS client certificate)",
                );
            };
            let id = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("id="))
                    .and_then(|v| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8()
                            .ok()
                            .map(String::from)
                    })
            });
            let Some(Ok(id)) = id.map(|i| SpiffeId::parse(&i)) else {
                service
                    .stats
                    .refuse(Refusal::BadRequest(String::new()).name());
                return text(StatusCode::BAD_REQUEST, "?id=<SPIFFE ID> is required");
            };
            let placement = match service.placement() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("ca: the cluster's pods are unreadable: {e:#}");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the cluster view is unavailable",
                    );
                }
            };
            let Some(csr) = body_of(req).await else {
                service
                    .stats
                    .refuse(Refusal::BadRequest(String::new()).name());
                return text(
                    StatusCode::BAD_REQUEST,
                    "the request body is too large or too slow",
                );
            };
            match service
                .authority
                .sign_workload(&node, &id, &csr, &placement, SystemTime::now())
            {
                Ok(chain) => {
                    service
                        .stats
                        .workload_certificates
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%node, workload = %id, "ca: SVID issued");
                    reply(StatusCode::OK, "application/x-pem-file", pem_chain(&chain))
                }
                Err(refusal) => refused(service, &node, id.as_str(), &refusal),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn refused(
    service: &CaService,
    node: &str,
    asked: &str,
    refusal: &Refusal,
) -> Response<Full<Bytes>> {
    service.stats.refuse(refusal.name());
    tracing::warn!(%node, asked, reason = refusal.name(), "ca: refused: {refusal}");
    let status = match refusal {
        Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    text(status, &refusal.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::client::CaClient;
    use super::*;
    use crate::mesh::ca::Ca;

    const TD: &str = "example.org";

    struct Fixture {
        dir: PathBuf,
        service: Arc<CaService>,
        url: String,
        bundle: TrustBundle,
        tokens: (String, String),
        _task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Serves `service` on a loopback port: its URL and the serving task.
    async fn serve_on_loopback(service: &Arc<CaService>) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let served = Arc::clone(service);
        let task = tokio::spawn(async move {
            let _ = serve(listener, served).await;
        });
        (url, task)
    }

    fn pod(name: &str, sa: &str, node: &str, d: u8) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: c, image: c}}]}}\nstatus: {{podIP: 10.244.0.{d}}}\n"
        )
    }

    /// A CA with node tokens for node-1 and node-2, and a cluster where shop/backend runs on
    /// node 1 and shop/db on node 2, served on loopback.
    async fn fixture(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("rampart-ca-svc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca_dir, pods_dir) = (dir.join("ca"), dir.join("pods"));
        let ca = Ca::generate(TD, Duration::from_secs(86_400), SystemTime::now()).expect("ca");
        ca.write(&ca_dir, false).expect("write");
        let bundle = TrustBundle::new(TD, &[ca.cert_der().clone()]).expect("bundle");
        let tokens = (
            node_tokens::create(&ca_dir, "node-1").expect("token"),
            node_tokens::create(&ca_dir, "node-2").expect("token"),
        );
        std::fs::create_dir_all(&pods_dir).expect("pods dir");
        std::fs::write(
            pods_dir.join("pods.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}",
                pod("backend-1", "backend", "node-1", 1),
                pod("db-0", "db", "node-2", 2)
            ),
        )
        .expect("pods");
        let authority = Authority::new(Ca::load(&ca_dir).expect("load"), Duration::from_secs(600));
        let service = Arc::new(CaService::new(
            authority,
            &ca_dir,
            PlacementSource::dir(&pods_dir),
        ));
        let (url, task) = serve_on_loopback(&service).await;
        Fixture {
            dir,
            service,
            url,
            bundle,
            tokens,
            _task: task,
        }
    }

    fn workload(sa: &str) -> SpiffeId {
        SpiffeId::workload(TD, "shop", sa).expect("id")
    }

    #[tokio::test]
    async fn a_node_bootstraps_and_gets_only_its_own_pods_identities() {
        let f = fixture("own").await;
        let node1 = CaClient::new(&f.url, f.bundle.clone(), f.tokens.0.clone()).expect("client");
        let node_cert = node1.node_certificate().await.expect("node certificate");
        assert_eq!(
            node_cert.spiffe_id.as_str(),
            "spiffe://example.org/rampart/node/node-1"
        );
        let backend = node1
            .workload_certificate(&node_cert, &workload("backend"))
            .await
            .expect("backend runs on node 1");
        assert_eq!(backend.spiffe_id, workload("backend"));
        // db runs on node 2: node 1 (or whoever holds its token) cannot get its identity.
        let err = node1
            .workload_certificate(&node_cert, &workload("db"))
            .await
            .expect_err("db is node 2's");
        assert!(
            matches!(&err, super::super::client::CaClientError::Refused { status, .. } if *status == StatusCode::FORBIDDEN),
            "{err}"
        );
        assert_eq!(f.service.stats.refused().get("not_on_node"), Some(&1));
        // Node 2's own token gets it.
        let node2 = CaClient::new(&f.url, f.bundle.clone(), f.tokens.1.clone()).expect("client");
        let node2_cert = node2.node_certificate().await.expect("node 2");
        node2
            .workload_certificate(&node2_cert, &workload("db"))
            .await
            .expect("db runs on node 2");
        let metrics = node1
            .exchange(None, Method::GET, "/metrics", None, Vec::new())
            .await
            .expect("metrics");
        assert!(
            metrics.contains("rampart_ca_refusals_total{reason=\"not_on_node\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("rampart_ca_certificates_issued_total{kind=\"workload\"} 2"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn no_credential_no_certificate() {
        let f = fixture("creds").await;
        let forged = format!(
            "{}x",
            f.tokens.0.get(..f.tokens.0.len() - 1).expect("token")
        );
        let client = CaClient::new(&f.url, f.bundle.clone(), forged).expect("client");
        let err = client.node_certificate().await.expect_err("forged token");
        assert!(err.is_refusal(), "{err}");
        // A workload certificate without a node certificate to show.
        let err = client
            .exchange(
                None,
                Method::POST,
                "/v1/workload?id=spiffe%3A%2F%2Fexample.org%2Fns%2Fshop%2Fsa%2Fbackend",
                None,
                Vec::new(),
            )
            .await
            .expect_err("no client certificate");
        assert!(
            matches!(&err, super::super::client::CaClientError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED),
            "{err}"
        );
        let refused = f.service.stats.refused();
        assert_eq!(refused.get("wrong_token"), Some(&1), "{refused:?}");
        assert_eq!(refused.get("no_credential"), Some(&1), "{refused:?}");
    }

    #[tokio::test]
    async fn the_bundle_is_a_spiffe_bundle() {
        let f = fixture("bundle").await;
        let client = CaClient::new(&f.url, f.bundle.clone(), f.tokens.0.clone()).expect("client");
        let text = client
            .exchange(None, Method::GET, "/v1/bundle", None, Vec::new())
            .await
            .expect("bundle");
        let bundle: serde_json::Value = serde_json::from_str(&text).expect("json");
        let key = &bundle["keys"][0];
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(key["kty"], "EC");
        let der = STANDARD
            .decode(key["x5c"][0].as_str().expect("x5c"))
            .expect("base64");
        assert_eq!(der, f.bundle_root());
    }

    impl Fixture {
        fn bundle_root(&self) -> Vec<u8> {
            self.service.authority.roots()[0].to_vec()
        }
    }

    /// A root of the user's PKI (without any SPIFFE name), which issues intermediates for the
    /// CA.
    struct UserPki {
        root: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl UserPki {
        fn new() -> UserPki {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
            let root_key = KeyPair::generate().expect("key");
            let mut root = CertificateParams::default();
            root.distinguished_name
                .push(DnType::CommonName, "Example Corp Root");
            root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root_cert = root.self_signed(&root_key).expect("root");
            UserPki {
                root: root_cert,
                issuer: Issuer::new(root, root_key),
            }
        }

        /// Writes a new intermediate named `name` as cert-manager lays a Secret out
        /// (`tls.crt` with the root after it, `tls.key`, `ca.crt`); returns its certificate.
        fn intermediate(&self, dir: &Path, name: &str) -> CertificateDer<'static> {
            use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
            let key = KeyPair::generate().expect("key");
            let mut inter = CertificateParams::default();
            inter.distinguished_name.push(DnType::CommonName, name);
            inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let inter_cert = inter.signed_by(&key, &self.issuer).expect("intermediate");
            std::fs::create_dir_all(dir).expect("dir");
            std::fs::write(dir.join("ca.crt"), self.root.pem()).expect("ca.crt");
            std::fs::write(
                dir.join("tls.crt"),
                format!("{}{}", inter_cert.pem(), self.root.pem()),
            )
            .expect("tls.crt");
            std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("tls.key");
            inter_cert.der().clone()
        }
    }

    /// Writes a user PKI as cert-manager would: a root (`ca.crt`) and an intermediate it signed
    /// (`tls.crt` with the root after it, `tls.key`); returns the root.
    fn user_pki(dir: &Path) -> CertificateDer<'static> {
        let pki = UserPki::new();
        pki.intermediate(dir, "Example Corp mesh issuer");
        pki.root.der().clone()
    }

    /// The user's PKI rotates the intermediate (cert-manager renews its Secret in place): the
    /// running CA signs with the new one, a node holding a certificate of the old one is still
    /// served, and files that do not load leave the new one in force.
    #[tokio::test]
    async fn a_rotated_intermediate_signs_while_the_ca_runs() {
        let dir = std::env::temp_dir().join(format!("rampart-ca-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca_dir, pods_dir) = (dir.join("ca"), dir.join("pods"));
        let pki = UserPki::new();
        let first = pki.intermediate(&ca_dir, "Example Corp mesh issuer 1");
        let token = node_tokens::create(&ca_dir, "node-1").expect("token");
        std::fs::create_dir_all(&pods_dir).expect("pods");
        std::fs::write(
            pods_dir.join("pods.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}",
                pod("backend-1", "backend", "node-1", 1)
            ),
        )
        .expect("pods");
        let mut service = CaService::new(
            Authority::new(
                Ca::load_for(&ca_dir, TD).expect("loads"),
                Duration::from_secs(600),
            ),
            &ca_dir,
            PlacementSource::dir(&pods_dir),
        )
        .reloading(Some(TD));
        service.reload_every = Duration::from_millis(50);
        let service = Arc::new(service);
        let (url, task) = serve_on_loopback(&service).await;
        let bundle = TrustBundle::new(TD, &[pki.root.der().clone()]).expect("bundle");
        let client = CaClient::new(&url, bundle, token).expect("client");
        let node = client.node_certificate().await.expect("node certificate");
        assert_eq!(node.chain[1], first);

        let second = pki.intermediate(&ca_dir, "Example Corp mesh issuer 2");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while service.stats.reloads.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "no reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let backend = client
            .workload_certificate(&node, &workload("backend"))
            .await
            .expect("a node certificate of the old intermediate is still served");
        assert_eq!(backend.chain[1], second, "signed by the new intermediate");
        assert!(
            service
                .metrics_text()
                .contains("rampart_ca_signing_reloads_total 1")
        );

        std::fs::write(ca_dir.join("tls.key"), "not a key").expect("broken");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = client
            .workload_certificate(&node, &workload("backend"))
            .await
            .expect("still signing");
        assert_eq!(again.chain[1], second, "broken files change nothing");
        assert_eq!(service.stats.reloads.load(Ordering::Relaxed), 1);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// With an intermediate of the user's PKI, certificates chain to the user's root: agents
    /// trusting that root alone get them, use them with each other, and the bundle is that root.
    #[tokio::test]
    async fn an_intermediate_of_the_users_pki_chains_the_trust_domain_to_their_root() {
        let dir = std::env::temp_dir().join(format!("rampart-ca-ext-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca_dir, pods_dir) = (dir.join("ca"), dir.join("pods"));
        let user_root = user_pki(&ca_dir);
        let token = node_tokens::create(&ca_dir, "node-1").expect("token");
        std::fs::create_dir_all(&pods_dir).expect("pods");
        std::fs::write(
            pods_dir.join("pods.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n{}{}",
                pod("backend-1", "backend", "node-1", 1),
                pod("db-0", "db", "node-1", 2)
            ),
        )
        .expect("pods");
        let ca = Ca::load_for(&ca_dir, TD).expect("the intermediate loads");
        assert_eq!(ca.roots(), std::slice::from_ref(&user_root));
        let service = Arc::new(CaService::new(
            Authority::new(ca, Duration::from_secs(600)),
            &ca_dir,
            PlacementSource::dir(&pods_dir),
        ));
        let (url, task) = serve_on_loopback(&service).await;
        let bundle = TrustBundle::new(TD, std::slice::from_ref(&user_root)).expect("bundle");
        let client = CaClient::new(&url, bundle.clone(), token).expect("client");
        let node = client.node_certificate().await.expect("node certificate");
        assert_eq!(
            node.chain.len(),
            2,
            "leaf and intermediate; the root is not sent"
        );
        let backend = client
            .workload_certificate(&node, &workload("backend"))
            .await
            .expect("backend");
        let db = client
            .workload_certificate(&node, &workload("db"))
            .await
            .expect("db");
        // The two SVIDs authenticate each other with the user's root as the only anchor.
        let server = crate::mesh::tls::server_config(
            &bundle,
            Arc::new(RotatingCert::new(&db).expect("cert")),
        )
        .expect("server config");
        let client_cfg =
            crate::mesh::tls::client_config(&bundle, &backend, workload("db")).expect("config");
        let (a, b) = tokio::io::duplex(64 << 10);
        let name = rustls_pki_types::ServerName::try_from("db.test").expect("name");
        let (accepted, connected) = tokio::join!(
            TlsAcceptor::from(server).accept(a),
            tokio_rustls::TlsConnector::from(client_cfg).connect(name, b)
        );
        assert!(
            accepted.is_ok() && connected.is_ok(),
            "{accepted:?} {connected:?}"
        );
        // The bundle publishes the user's root.
        let text = client
            .exchange(None, Method::GET, "/v1/bundle", None, Vec::new())
            .await
            .expect("bundle");
        let published: serde_json::Value = serde_json::from_str(&text).expect("json");
        let der = STANDARD
            .decode(published["keys"][0]["x5c"][0].as_str().expect("x5c"))
            .expect("base64");
        assert_eq!(der, user_root.to_vec());
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

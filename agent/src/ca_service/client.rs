//! The agents' side of the CA service: the node certificate, bootstrapped with the node's token,
//! then workload SVIDs over mutual TLS with that certificate. Every key is generated here and
//! never leaves the process; the CA sees only certificate signing requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::mesh::ca::WorkloadCert;
use crate::mesh::tls::{TrustBundle, build_client_config};
use crate::spiffe::SpiffeId;

/// How long one exchange with the CA may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer (a chain of a few certificates).
const ANSWER_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("--ca-url {0:?}: expected https://HOST:PORT")]
    Url(String),
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("connecting to the CA at {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with the CA at {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP with the CA: {0}")]
    Http(#[from] hyper::Error),
    #[error("the CA took longer than {0:?}")]
    Timeout(Duration),
    #[error("the CA refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the CA's answer is not a certificate chain for {0}: {1}")]
    BadAnswer(String, String),
    #[error("{0}")]
    Local(String),
}

impl CaClientError {
    /// Whether the CA said no (as opposed to being unreachable): retrying will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CaClientError::Refused { .. })
    }
}

/// The CA service: where it is, the roots it must chain to, and the node's token.
#[derive(Debug, Clone)]
pub struct CaClient {
    host: String,
    bundle: TrustBundle,
    ca_id: SpiffeId,
    token: String,
    /// Read again at every bootstrap: a projected service-account token is rotated in place.
    token_file: Option<std::path::PathBuf>,
}

impl CaClient {
    /// `url`: `https://HOST:PORT`; `bundle`: the trust domain's roots (the CA's certificate
    /// must chain to them and name `spiffe://<trust domain>/rampart/ca`).
    pub fn new(url: &str, bundle: TrustBundle, token: String) -> Result<CaClient, CaClientError> {
        let host = url
            .strip_prefix("https://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| CaClientError::Url(url.to_owned()))?;
        let ca_id =
            SpiffeId::ca(&bundle.trust_domain).map_err(|e| CaClientError::Local(e.to_string()))?;
        Ok(CaClient {
            host: host.to_owned(),
            bundle,
            ca_id,
            token: token.trim().to_owned(),
            token_file: None,
        })
    }

    /// Like [`CaClient::new`], with the credential read from `path` at every bootstrap (a node
    /// token, or a projected service-account token for the audience `rampart-ca`).
    pub fn with_token_file(
        url: &str,
        bundle: TrustBundle,
        path: &std::path::Path,
    ) -> Result<CaClient, CaClientError> {
        let mut client = CaClient::new(url, bundle, String::new())?;
        client.token_file = Some(path.to_owned());
        Ok(client)
    }

    /// This node's certificate (`spiffe://<td>/rampart/node/<node>`, the node its token names).
    pub async fn node_certificate(&self) -> Result<WorkloadCert, CaClientError> {
        let key = KeyPair::generate().map_err(|e| CaClientError::Local(e.to_string()))?;
        let csr = request_for(&key)?;
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| CaClientError::Local(format!("{}: {e}", path.display())))?
                .trim()
                .to_owned(),
            None => self.token.clone(),
        };
        let auth = format!("Bearer {token}");
        let pem = self
            .exchange(None, Method::POST, "/v1/node", Some(&auth), csr)
            .await?;
        certificate(pem, &key, None)
    }

    /// The SVID `id`, asked as the node `node_cert` names.
    pub async fn workload_certificate(
        &self,
        node_cert: &WorkloadCert,
        id: &SpiffeId,
    ) -> Result<WorkloadCert, CaClientError> {
        let key = KeyPair::generate().map_err(|e| CaClientError::Local(e.to_string()))?;
        let csr = request_for(&key)?;
        let path = format!(
            "/v1/workload?id={}",
            percent_encoding::utf8_percent_encode(id.as_str(), percent_encoding::NON_ALPHANUMERIC)
        );
        let pem = self
            .exchange(Some(node_cert), Method::POST, &path, None, csr)
            .await?;
        certificate(pem, &key, Some(id))
    }

    /// One request over a new TLS connection (an exchange every half-lifetime per identity: no
    /// connection is kept): the answer's text if it is `200 OK`.
    pub async fn exchange(
        &self,
        client_cert: Option<&WorkloadCert>,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> Result<String, CaClientError> {
        tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            self.exchange_now(client_cert, method, path, authorization, body),
        )
        .await
        .map_err(|_| CaClientError::Timeout(EXCHANGE_TIMEOUT))?
    }

    async fn exchange_now(
        &self,
        client_cert: Option<&WorkloadCert>,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> Result<String, CaClientError> {
        let addr = tokio::net::lookup_host(&self.host)
            .await
            .map_err(|e| CaClientError::Resolve(self.host.clone(), e))?
            .next()
            .ok_or_else(|| {
                CaClientError::Resolve(self.host.clone(), std::io::ErrorKind::NotFound.into())
            })?;
        let config = build_client_config(
            &self.bundle,
            client_cert,
            self.ca_id.clone(),
            &[&rustls::version::TLS13],
        )
        .map_err(|e| CaClientError::Local(e.to_string()))?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| CaClientError::Connect(addr, e))?;
        // The server is checked by its SPIFFE ID; the name only fills SNI.
        let name = ServerName::try_from("rampart-ca.invalid")
            .map_err(|e| CaClientError::Local(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| CaClientError::Tls(addr, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ca client: connection ended");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/pkcs10");
        if let Some(auth) = authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CaClientError::Local(e.to_string()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let answer = Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| CaClientError::BadAnswer(path.to_owned(), e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&answer).trim().to_owned();
        if status != StatusCode::OK {
            return Err(CaClientError::Refused {
                status,
                message: text,
            });
        }
        Ok(text)
    }
}

/// A PKCS#10 request over `key` (the CA decides every name in the certificate).
fn request_for(key: &KeyPair) -> Result<Vec<u8>, CaClientError> {
    CertificateParams::default()
        .serialize_request(key)
        .map(|r| r.der().to_vec())
        .map_err(|e| CaClientError::Local(e.to_string()))
}

/// The answer's chain with `key`: the leaf must name `expected` (when given) and carry `key`.
fn certificate(
    pem: String,
    key: &KeyPair,
    expected: Option<&SpiffeId>,
) -> Result<WorkloadCert, CaClientError> {
    let what = expected.map_or_else(|| "the node".to_owned(), ToString::to_string);
    let bad = |reason: String| CaClientError::BadAnswer(what.clone(), reason);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| bad("no certificate".into()))?;
    let id = SpiffeId::from_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    if expected.is_some_and(|e| *e != id) {
        return Err(bad(format!("the certificate names {id}")));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad("the certificate is not for this request's key".into()));
    }
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let validity = parsed.validity();
    let (not_before, not_after) = (at(validity.not_before), at(validity.not_after));
    Ok(WorkloadCert::new(
        id,
        chain,
        key.serialize_der(),
        not_before,
        not_after,
        SystemTime::now(),
    ))
}

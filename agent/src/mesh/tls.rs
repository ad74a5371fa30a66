//! rustls configurations of the tunnel: TLS 1.3 only, ALPN `h2`, both ends authenticated with
//! X.509-SVIDs of one trust domain. The server requires a client certificate that chains to the
//! trust domain's root (the SPIFFE ID is then checked against policy, per request); the client
//! checks the server's chain and that its SPIFFE ID is the one it expects (X.509-SVIDs carry a
//! URI SAN, not a DNS name, so the usual host name check does not apply).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ca::WorkloadCert;
use crate::spiffe::SpiffeId;

/// ALPN of the tunnel: HTTP/2, CONNECT per flow.
pub const ALPN: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots a node trusts: its trust domain's CA certificates (more than one while a rotated
/// root is rolled out).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: &str,
        cas: &[CertificateDer<'static>],
    ) -> Result<TrustBundle, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.clone())?;
        }
        Ok(TrustBundle {
            trust_domain: trust_domain.to_owned(),
            roots: Arc::new(roots),
        })
    }
}

/// The certificate the server presents, replaceable while connections use the old one.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RotatingCert {
    pub fn new(cert: &WorkloadCert) -> Result<RotatingCert, TlsError> {
        Ok(RotatingCert {
            current: RwLock::new(certified_key(cert)?),
        })
    }

    /// Puts `cert` in place for new handshakes; connections made with the old one keep it.
    pub fn replace(&self, cert: &WorkloadCert) -> Result<(), TlsError> {
        let key = certified_key(cert)?;
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
        Ok(())
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn certified_key(cert: &WorkloadCert) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(cert.private_key())?;
    Ok(Arc::new(CertifiedKey::new(cert.chain.clone(), key)))
}

/// The tunnel server's configuration: TLS 1.3, client certificates required and chained to
/// `bundle`, the server certificate from `cert`.
pub fn server_config(
    bundle: &TrustBundle,
    cert: Arc<RotatingCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&bundle.roots), provider.clone())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The tunnel client's configuration: TLS 1.3, presenting `cert`, accepting only a server whose
/// SVID chains to `bundle` and names `expected_server`.
pub fn client_config(
    bundle: &TrustBundle,
    cert: &WorkloadCert,
    expected_server: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    build_client_config(
        bundle,
        Some(cert),
        expected_server,
        &[&rustls::version::TLS13],
    )
}

/// [`client_config`] with the choices production never makes open (tests use them to show the
/// server refuses a client without a certificate, or one speaking TLS 1.2).
pub(crate) fn build_client_config(
    bundle: &TrustBundle,
    cert: Option<&WorkloadCert>,
    expected_server: SpiffeId,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: Arc::clone(&bundle.roots),
        algorithms: provider.signature_verification_algorithms,
        expected: expected_server,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.private_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Checks a server's chain with webpki, then its SPIFFE ID instead of a host name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match SpiffeId::from_certificate(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;

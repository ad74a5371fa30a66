//! TLS client settings for the servers the proxy asks (LDAP directories, ext_authz
//! authorizers, JWKS and OIDC endpoints): rustls with ring, TLS 1.2 and 1.3, trusting a policy's
//! CAs or the Mozilla root set (webpki-roots).

use std::sync::Arc;

/// TLS 1.2 or 1.3, trusting `ca_pem`'s CAs or else the public web's roots.
pub fn config(ca_pem: Option<&[u8]>) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem).flatten() {
                let _ = roots.add(cert);
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider always supports the default versions; fall back to the default
        // builder rather than panic.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    }
}

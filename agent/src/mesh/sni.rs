//! The TLS server side of ingress: a server certificate chosen by the client's SNI among a
//! policy's certificates, and the rustls configuration built on it.
//!
//! Selection: an exact DNS name of a certificate, then a `*.` wildcard covering exactly one more
//! label (RFC 6125: `*.example.com` matches `api.example.com`, not `example.com` nor
//! `a.b.example.com`), in the policy's order; a client without SNI, or with a name no
//! certificate has, gets the first certificate (the default server of nginx and Envoy's default
//! filter chain), so that a client checking names fails on its own side, with a clear error.
//! rustls' own `ResolvesServerCertUsingSni` has no wildcard and no default, hence this.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::policy::ingress::ServerCertificate;

/// Certificates by name, and the default.
#[derive(Debug)]
pub struct SniResolver {
    /// `(name, certificate)` in the policy's order; wildcard names keep their `*.`.
    names: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `None` if no certificate is resolved (a policy set that checked has them all).
    pub fn new(certificates: &[ServerCertificate]) -> Option<SniResolver> {
        let default = Arc::clone(certificates.iter().find_map(|c| c.key.as_ref())?);
        let names = certificates
            .iter()
            .filter_map(|c| Some((c, c.key.as_ref()?)))
            .flat_map(|(c, key)| c.names.iter().map(|n| (n.clone(), Arc::clone(key))))
            .collect();
        Some(SniResolver { names, default })
    }

    /// The certificate for `server_name` (the default when it names none of them).
    pub fn select(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        let exact = self.names.iter().find(|(n, _)| *n == name);
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.names
                .iter()
                .find(|(n, _)| n.strip_prefix("*.") == Some(parent))
        };
        exact
            .or_else(wildcard)
            .map_or(&self.default, |(_, key)| key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.select(hello.server_name())))
    }
}

/// The ingress server configuration: TLS 1.2 and 1.3 (clients outside the cluster), no client
/// certificates, `http/1.1` offered by ALPN when the proxy parses HTTP on the port (the pod
/// behind it is spoken to in the client's protocol, and HTTP/2 to a pod is only with prior
/// knowledge, so `h2` is not offered).
pub fn server_config(
    certificates: &[ServerCertificate],
    http: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let resolver = SniResolver::new(certificates)
        .ok_or_else(|| rustls::Error::General("no server certificate".into()))?;
    let mut config = ServerConfig::builder_with_provider(super::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(secret: &str, names: &[&str]) -> ServerCertificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![format!("{secret}.test")])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let signing = super::super::tls::provider()
            .key_provider
            .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .expect("key loads");
        ServerCertificate {
            secret: ("shop".into(), secret.into()),
            origin: Default::default(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            key: Some(Arc::new(CertifiedKey::new(
                vec![cert.der().clone()],
                signing,
            ))),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let certs = [
            certificate("default", &["shop.test"]),
            certificate("wild", &["*.shop.test"]),
            certificate("api", &["api.shop.test"]),
        ];
        let resolver = SniResolver::new(&certs).expect("resolver");
        let chosen = |name: Option<&str>| {
            let key = resolver.select(name);
            certs
                .iter()
                .find(|c| c.key.as_ref().is_some_and(|k| Arc::ptr_eq(k, key)))
                .map(|c| c.secret.1.as_str())
                .expect("one of them")
        };
        assert_eq!(chosen(Some("api.shop.test")), "api", "exact beats wildcard");
        assert_eq!(chosen(Some("API.Shop.Test.")), "api", "case and root dot");
        assert_eq!(chosen(Some("www.shop.test")), "wild");
        assert_eq!(chosen(Some("a.b.shop.test")), "default", "one label only");
        assert_eq!(chosen(Some("shop.test")), "default");
        assert_eq!(chosen(Some("other.test")), "default");
        assert_eq!(chosen(None), "default");
    }

    #[test]
    fn no_certificate_is_no_configuration() {
        assert!(SniResolver::new(&[]).is_none());
        assert!(server_config(&[], true).is_err());
        let config =
            server_config(&[certificate("api", &["api.shop.test"])], true).expect("config");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }
}

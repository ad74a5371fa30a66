//! An HTTPS client for the ingress tests, run from inside a namespace: TLS (rustls) with the
//! server name sent as SNI and checked against the roots the test trusts, then one HTTP/1.0
//! request read to EOF.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::netns;
use crate::probe::{HttpReply, parse_reply, request_text};

/// One request to `addr` over TLS, sending `server_name` as SNI and accepting only a certificate
/// for that name that chains to one of `roots_pem` (PEM certificates).
pub fn https_request(
    ns_path: &str,
    addr: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.context("a root certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = request_text("GET", path, server_name, &headers);
    netns::run_in(ns_path, move || -> anyhow::Result<HttpReply> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(request.as_bytes())
            .context("TLS handshake or request")?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify: what arrived is the reply.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e).context("reading the reply"),
        }
        parse_reply(&String::from_utf8_lossy(&raw))
    })?
}

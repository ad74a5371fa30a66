//! `client_hello`: the bytes a TLS client sends first, through the tunnel's ClientHello path
//! (rustls' `Acceptor`, then the destination its SNI names) and the ingress handshake (the
//! certificate chosen by SNI).

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use rustls::server::Acceptor;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

use crate::mesh::sni::{SniResolver, server_config};
use crate::mesh::tunnel::{destination_of_server_name, server_name_for};
use crate::policy::ingress::ServerCertificate;

fn certificate(names: &[&str]) -> ServerCertificate {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
    let sans: Vec<String> = names.iter().map(|n| n.replace("*.", "any.")).collect();
    let cert = rcgen::CertificateParams::new(sans)
        .and_then(|params| params.self_signed(&key))
        .unwrap_or_else(|e| panic!("certificate: {e}"));
    let signing = crate::mesh::tls::provider()
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .unwrap_or_else(|e| panic!("key: {e}"));
    ServerCertificate {
        secret: ("fuzz".into(), names.join(",")),
        origin: Default::default(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        key: Some(Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        ))),
    }
}

/// The ingress side: two certificates (an exact name, a wildcard), their resolver and config.
fn ingress() -> &'static (SniResolver, Arc<ServerConfig>) {
    static INGRESS: OnceLock<(SniResolver, Arc<ServerConfig>)> = OnceLock::new();
    INGRESS.get_or_init(|| {
        let certificates = [
            certificate(&["shop.example.com"]),
            certificate(&["*.api.example.com"]),
        ];
        let resolver =
            SniResolver::new(&certificates).unwrap_or_else(|| panic!("no certificate resolved"));
        let config = server_config(&certificates, true).unwrap_or_else(|e| panic!("config: {e}"));
        (resolver, config)
    })
}

/// Input: what a client sends first. The tunnel reads a ClientHello or refuses; a destination
/// its SNI names is the one the client side would have named it by. The ingress handshake
/// reads the same bytes or refuses; the certificate for a name it read is one the resolver has.
pub fn client_hello(data: &[u8]) {
    tunnel(data);
    let (resolver, config) = ingress();
    let Ok(mut connection) = ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut input = Cursor::new(data);
    while (input.position() as usize) < data.len() {
        match connection.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if connection.process_new_packets().is_err() {
            break;
        }
    }
    let _ = resolver.select(connection.server_name());
    // The name as raw text, as a mangled SNI would come.
    let _ = destination_of_server_name(&String::from_utf8_lossy(data));
}

fn tunnel(data: &[u8]) {
    let mut acceptor = Acceptor::default();
    let mut input = Cursor::new(data);
    loop {
        match acceptor.read_tls(&mut input) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Err(_) => return,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let Some(addr) = hello.server_name().and_then(destination_of_server_name) else {
                    return;
                };
                let name = server_name_for(addr);
                let rustls_pki_types::ServerName::DnsName(name) = name else {
                    panic!("{addr} has no SNI name");
                };
                assert_eq!(
                    destination_of_server_name(name.as_ref()),
                    Some(addr.to_canonical()),
                    "{:?} names {addr}, which the client side names {:?}",
                    hello.server_name(),
                    name.as_ref()
                );
                return;
            }
        }
    }
}

//! An identity provider stand-in inside a namespace: serves an OIDC discovery document
//! (`/.well-known/openid-configuration`, naming `/keys` as `jwks_uri`) and a JWKS the test can
//! replace, or answers `503` to everything while "down". Counts requests.
//!
//! Hand-written HTTP/1.1 like [`crate::http_server`]: one request per connection.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::listener::Listener;
use crate::netns::Netns;

/// A compact JWS of `claims` signed with HS256 under `secret`, its header naming `kid` (the
/// tokens the tests' IdP would issue).
pub fn hs256_token(kid: &str, claims: &serde_json::Value, secret: &[u8]) -> anyhow::Result<String> {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .context("signing a token")?;
    Ok(format!("{input}.{signature}"))
}

#[derive(Debug)]
struct State {
    issuer: String,
    jwks: String,
    up: bool,
}

/// The IdP; stopped on drop.
#[derive(Debug)]
pub struct IdpServer {
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
    _listener: Listener,
}

impl IdpServer {
    /// Serves on `[::]:port` inside `ns` as `issuer`, publishing `jwks`.
    pub fn start(ns: &Netns, port: u16, issuer: &str, jwks: &str) -> anyhow::Result<IdpServer> {
        let state = Arc::new(Mutex::new(State {
            issuer: issuer.to_owned(),
            jwks: jwks.to_owned(),
            up: true,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let (served, counted) = (Arc::clone(&state), Arc::clone(&requests));
        let listener = Listener::start(ns, port, "IdP", move |stream| {
            counted.fetch_add(1, Ordering::SeqCst);
            answer(stream, &served);
        })?;
        Ok(IdpServer {
            state,
            requests,
            _listener: listener,
        })
    }

    /// Publishes another JWKS (a key rotation).
    pub fn set_jwks(&self, jwks: &str) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jwks = jwks.to_owned();
    }

    /// Down: every request gets `503`. Up: served again.
    pub fn set_up(&self, up: bool) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).up = up;
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim_end().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = {
        let state = state.lock().unwrap_or_else(PoisonError::into_inner);
        match (state.up, path) {
            (false, _) => ("503 Service Unavailable", String::new()),
            (true, "/.well-known/openid-configuration") => (
                "200 OK",
                format!(
                    r#"{{"issuer":"{0}","jwks_uri":"{0}/keys","id_token_signing_alg_values_supported":["HS256"]}}"#,
                    state.issuer
                ),
            ),
            (true, "/keys") => ("200 OK", state.jwks.clone()),
            (true, _) => ("404 Not Found", String::new()),
        }
    };
    let _ = write!(
        writer,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: max-age=300\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

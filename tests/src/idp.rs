//! An identity provider stand-in inside a namespace: serves an OIDC discovery document
//! (`/.well-known/openid-configuration`, naming `/keys` as `jwks_uri`) and a JWKS the test can
//! replace, or answers `503` to everything while "down". Counts requests.
//!
//! Hand-written HTTP/1.1 like [`crate::http_server`]: one request per connection.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{self, Netns};

#[derive(Debug)]
struct State {
    issuer: String,
    jwks: String,
    up: bool,
}

/// The IdP; stopped and joined on drop.
#[derive(Debug)]
pub struct IdpServer {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl IdpServer {
    /// Serves on `[::]:port` inside `ns` as `issuer`, publishing `jwks`.
    pub fn start(ns: &Netns, port: u16, issuer: &str, jwks: &str) -> anyhow::Result<IdpServer> {
        let state = Arc::new(Mutex::new(State {
            issuer: issuer.to_owned(),
            jwks: jwks.to_owned(),
            up: true,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (state2, stop2, requests2, path) = (
            Arc::clone(&state),
            Arc::clone(&stop),
            Arc::clone(&requests),
            ns.path(),
        );
        let thread = std::thread::spawn(move || {
            if let Err(e) = netns::enter(&path) {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let listener =
                match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
            let _ = ready_tx.send(Ok(()));
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        requests2.fetch_add(1, Ordering::SeqCst);
                        answer(stream, &state2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("IdP on {port} in {} did not start", ns.name()))?
            .map_err(|e| anyhow::anyhow!("IdP on {port} in {}: {e}", ns.name()))?;
        Ok(IdpServer {
            state,
            stop,
            requests,
            thread: Some(thread),
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

impl Drop for IdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
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

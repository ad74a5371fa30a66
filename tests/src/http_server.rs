//! A small HTTP/1.1 origin inside a namespace for the L7 proxy tests: every request gets `200`
//! and a body that reports what arrived (the request line, each header as `name: value`, then
//! `peer: <the connection's source address>`, then what [`HttpServer::start_with_body`] gave it),
//! and is counted, so a test can tell what reached the pod, from where, and what the proxy
//! stopped.
//!
//! Hand-written (keep-alive, `Content-Length` only, no request bodies): the harness stays free of
//! an HTTP stack, and what it must do is small.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::listener::Listener;
use crate::netns::Netns;

/// The origin; stopped on drop.
#[derive(Debug)]
pub struct HttpServer {
    requests: Arc<AtomicU64>,
    _listener: Listener,
}

impl HttpServer {
    /// Binds `[::]:port` inside `ns`; returns once it listens.
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<HttpServer> {
        HttpServer::start_with_body(ns, port, "")
    }

    /// Like [`HttpServer::start`], ending every response body with `extra` (what the pod's
    /// application would answer, e.g. a record with a card number for DLP to mask).
    pub fn start_with_body(
        ns: &Netns,
        port: u16,
        extra: &'static str,
    ) -> anyhow::Result<HttpServer> {
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let listener = Listener::start(ns, port, "http server", move |stream| {
            let requests = Arc::clone(&counted);
            std::thread::spawn(move || serve(stream, &requests, extra));
        })?;
        Ok(HttpServer {
            requests,
            _listener: listener,
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Answers requests on one connection until the client closes it (or 10 s of silence).
fn serve(stream: TcpStream, requests: &AtomicU64, extra: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.ip().to_canonical().to_string());
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let close = head
            .iter()
            .any(|h| h.eq_ignore_ascii_case("connection: close"))
            || head.first().is_some_and(|l| l.ends_with("HTTP/1.0"));
        let body = head.join("\n") + "\npeer: " + &peer + "\n" + extra;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

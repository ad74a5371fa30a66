//! A small HTTP/1.1 origin inside a namespace for the L7 proxy tests: every request gets `200`
//! and a body that reports what arrived (the request line, then each header as `name: value`),
//! and is counted, so a test can tell what reached the pod and what the proxy stopped.
//!
//! Hand-written (keep-alive, `Content-Length` only, no request bodies): the harness stays free of
//! an HTTP stack, and what it must do is small.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{self, Netns};

/// The origin; stopped and joined on drop.
#[derive(Debug)]
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `[::]:port` inside `ns`; returns once it listens.
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<HttpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop2, requests2, path) = (Arc::clone(&stop), Arc::clone(&requests), ns.path());
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
                        let requests = Arc::clone(&requests2);
                        std::thread::spawn(move || serve(stream, &requests));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("http server on {port} in {} did not start", ns.name()))?
            .map_err(|e| anyhow::anyhow!("http server on {port} in {}: {e}", ns.name()))?;
        Ok(HttpServer {
            stop,
            requests,
            thread: Some(thread),
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers requests on one connection until the client closes it (or 10 s of silence).
fn serve(stream: TcpStream, requests: &AtomicU64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
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
        let body = head.join("\n") + "\n";
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

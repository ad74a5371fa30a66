//! An upstream for the WAF conformance run: it records every request it receives as it arrives
//! (request line, headers, body read by `Content-Length` or chunked framing) and answers `200`
//! with `connection: close`, so a run can check that a `pass` request reached the pod unchanged
//! and a `block` request not at all.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::listener::Listener;
use crate::netns::Netns;

/// One request as the origin received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// (name, value) as received, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct RawOrigin {
    received: Arc<Mutex<Vec<Received>>>,
    _listener: Listener,
}

impl RawOrigin {
    pub fn start(ns: &Netns, port: u16) -> anyhow::Result<RawOrigin> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let listener = Listener::start(ns, port, "raw origin", move |stream| {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve(stream, &sink));
        })?;
        Ok(RawOrigin {
            received,
            _listener: listener,
        })
    }

    /// Takes what arrived since the last call.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn serve(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    if let Some(received) = read_request(&mut reader) {
        // A response to HEAD has no body.
        let body = if received.method == "HEAD" {
            ""
        } else {
            "ok\n"
        };
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(received);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\n{body}"
        );
        let _ = writer.write_all(reply.as_bytes());
    }
}

pub(crate) fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.trim_end().splitn(3, ' ');
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut received = Received {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if received
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            received.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = received
        .header("content-length")
        .and_then(|v| v.parse().ok())
    {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).ok()?;
        received.body = body;
    }
    Some(received)
}

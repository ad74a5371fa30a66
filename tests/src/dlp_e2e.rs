//! The DLP conformance run through the real proxy: two nodes, one agent each, pod a calling
//! pod b across the mTLS tunnel. Cases with the same direction and detectors share one of pod
//! b's ports, under a MeshPolicy whose `http.dlp` (`detectors`, or `requests.detectors`) is
//! exactly the cases' list. The origin on b's ports answers with the case's body in the case's
//! pieces (each an HTTP/1.1 chunk, flushed on its own) and records every request it receives;
//! the client writes a request's body in the case's pieces too.
//!
//! Prints one line per case and the pass rate per category, and returns the counts (the caller
//! prints `N passed, M failed`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::Topology;
use crate::dlp_cases::{Case, Direction, Outcome, verdict};
use crate::listener::Listener;
use crate::mesh::{MeshAgents, pod_object};
use crate::netns::{self, Netns};
use crate::raw_origin::{Received, read_request};

const FIRST_PORT: u16 = 9300;
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most the origin (or the client) waits between pieces, and in all for one body: pieces
/// are flushed apart so that the proxy reads them apart, without a case of many pieces taking
/// long.
const PIECE_GAP: Duration = Duration::from_millis(1);
const BODY_GAPS: Duration = Duration::from_secs(1);

fn ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 10)
}

/// The gap between `pieces` pieces.
fn gap(pieces: usize) -> Duration {
    let n = u32::try_from(pieces.max(1)).unwrap_or(u32::MAX);
    PIECE_GAP.min(BODY_GAPS / n)
}

/// What the origin answers.
#[derive(Debug, Clone, Default)]
struct Reply {
    content_type: String,
    pieces: Vec<Vec<u8>>,
}

/// Pod b's origin on every case port.
struct DlpOrigin {
    reply: Arc<Mutex<Reply>>,
    received: Arc<Mutex<Vec<Received>>>,
    _listeners: Vec<Listener>,
}

impl DlpOrigin {
    fn start(ns: &Netns, ports: impl IntoIterator<Item = u16>) -> anyhow::Result<DlpOrigin> {
        let reply = Arc::new(Mutex::new(Reply::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for port in ports {
            let (reply, received) = (Arc::clone(&reply), Arc::clone(&received));
            listeners.push(Listener::start(ns, port, "DLP origin", move |stream| {
                let (reply, received) = (Arc::clone(&reply), Arc::clone(&received));
                std::thread::spawn(move || serve(stream, &reply, &received));
            })?);
        }
        Ok(DlpOrigin {
            reply,
            received,
            _listeners: listeners,
        })
    }

    fn answer_with(&self, reply: Reply) {
        *self.reply.lock().unwrap_or_else(PoisonError::into_inner) = reply;
    }

    /// Takes what arrived since the last call.
    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn serve(stream: TcpStream, reply: &Mutex<Reply>, sink: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some(received) = read_request(&mut reader) else {
        return;
    };
    sink.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received);
    let reply = reply.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let _ = write_reply(&mut writer, &reply);
}

fn write_reply(out: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut head = String::from("HTTP/1.1 200 OK\r\nconnection: close\r\n");
    if !reply.content_type.is_empty() {
        head.push_str(&format!("content-type: {}\r\n", reply.content_type));
    }
    match reply.pieces.as_slice() {
        [one] => {
            head.push_str(&format!("content-length: {}\r\n\r\n", one.len()));
            out.write_all(head.as_bytes())?;
            out.write_all(one)?;
        }
        pieces => {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            out.write_all(head.as_bytes())?;
            out.flush()?;
            let pause = gap(pieces.len());
            for piece in pieces {
                out.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                out.write_all(piece)?;
                out.write_all(b"\r\n")?;
                out.flush()?;
                std::thread::sleep(pause);
            }
            out.write_all(b"0\r\n\r\n")?;
        }
    }
    out.flush()
}

/// A response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Sends `case`'s request (or, for a response case, a plain `GET` of its target) from the
/// namespace at `ns` to `to`, writing the body in the case's pieces; reads the whole response.
fn send(ns: &str, to: SocketAddr, case: &Case) -> anyhow::Result<Response> {
    let (method, target, content_type, pieces) = match case.direction {
        Direction::Request => (
            case.method.clone(),
            case.target.clone(),
            case.content_type.clone(),
            case.pieces().into_iter().map(<[u8]>::to_vec).collect(),
        ),
        Direction::Response => (
            "GET".to_owned(),
            case.target.clone(),
            String::new(),
            Vec::new(),
        ),
    };
    netns::run_in(ns, move || -> anyhow::Result<Response> {
        let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let length: usize = pieces.iter().map(Vec::len).sum();
        let mut head = format!("{method} {target} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n");
        if !content_type.is_empty() {
            head.push_str(&format!("content-type: {content_type}\r\n"));
        }
        if length > 0 || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("content-length: {length}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        let pause = gap(pieces.len());
        for piece in &pieces {
            stream.write_all(piece)?;
            stream.flush()?;
            std::thread::sleep(pause);
        }
        read_response(BufReader::new(stream))
    })?
}

/// Reads a response: its status and its body (by `content-length`, chunked framing, or to the
/// end of the connection); a body that stops short is an error.
fn read_response(mut reader: BufReader<TcpStream>) -> anyhow::Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed in the response's head");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("the body was cut after {} bytes", body.len()))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            reader
                .read_exact(&mut chunk)
                .with_context(|| format!("the body was cut after {} bytes", body.len()))?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader
            .read_exact(&mut body)
            .context("the body stopped short of its content-length")?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response { status, body })
}

/// The cases' ports: one per (direction, detectors), in order of first appearance.
fn ports(cases: &[Case]) -> Vec<((Direction, String), u16)> {
    let mut out: Vec<((Direction, String), u16)> = Vec::new();
    for case in cases {
        let key = (case.direction, detectors_json(case));
        if !out.iter().any(|(k, _)| *k == key) {
            let port = FIRST_PORT + u16::try_from(out.len()).unwrap_or(u16::MAX - FIRST_PORT);
            out.push((key, port));
        }
    }
    out
}

fn detectors_json(case: &Case) -> String {
    serde_json::to_string(&case.detectors).unwrap_or_default()
}

/// The namespace, pods a and b, and one MeshPolicy per port whose DLP holds exactly its cases'
/// detectors (JSON is YAML's flow style).
fn policy(ports: &[((Direction, String), u16)]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: conf}}\n{}{}",
        pod_object("conf", "a", 1, ip(1)),
        pod_object("conf", "b", 2, ip(2))
    );
    for ((direction, detectors), port) in ports {
        let dlp = match direction {
            Direction::Response => format!("{{detectors: {detectors}}}"),
            Direction::Request => format!("{{requests: {{detectors: {detectors}}}}}"),
        };
        text.push_str(&format!(
            "---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: dlp-{port}}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {port}}}]\n  http:\n    dlp: {dlp}\n"
        ));
    }
    text
}

/// Runs `case` on `port`: what reached the other side.
fn run_case(origin: &DlpOrigin, a: &str, port: u16, case: &Case) -> anyhow::Result<(u16, Outcome)> {
    origin.answer_with(match case.direction {
        Direction::Response => Reply {
            content_type: case.content_type.clone(),
            pieces: case.pieces().into_iter().map(<[u8]>::to_vec).collect(),
        },
        Direction::Request => Reply {
            content_type: "text/plain".into(),
            pieces: vec![b"ok\n".to_vec()],
        },
    });
    let _ = origin.take();
    let to = SocketAddr::new(IpAddr::V4(ip(2)), port);
    let response = send(a, to, case)?;
    let received = origin.take();
    let refused = response.status >= 400;
    let outcome = match case.direction {
        Direction::Response if refused => Outcome::Refused {
            status: response.status,
            origin_saw: false,
            body: response.body,
        },
        Direction::Response => Outcome::Delivered {
            target: case.target.clone(),
            body: response.body,
        },
        Direction::Request if refused => Outcome::Refused {
            status: response.status,
            origin_saw: !received.is_empty(),
            body: response.body,
        },
        Direction::Request => {
            let [got] = received.as_slice() else {
                bail!(
                    "answered {}, and the origin received {} requests",
                    response.status,
                    received.len()
                );
            };
            Outcome::Delivered {
                target: got.target.clone(),
                body: got.body.clone(),
            }
        }
    };
    Ok((response.status, outcome))
}

/// Waits until `port` passes a plain request through the tunnel, the policy and the proxy.
fn warm_up(origin: &DlpOrigin, a: &str, port: u16, wait: Duration) -> anyhow::Result<()> {
    origin.answer_with(Reply {
        content_type: "text/plain".into(),
        pieces: vec![b"ok\n".to_vec()],
    });
    let probe = Case {
        id: "warm-up".into(),
        category: String::new(),
        direction: Direction::Response,
        detectors: Vec::new(),
        method: "GET".into(),
        target: "/health".into(),
        content_type: String::new(),
        body: String::new(),
        chunk: 0,
        expect: crate::dlp_cases::Expect::Unchanged,
        secrets: Vec::new(),
        keep: Vec::new(),
    };
    let to = SocketAddr::new(IpAddr::V4(ip(2)), port);
    let deadline = Instant::now() + wait;
    loop {
        match send(a, to, &probe) {
            Ok(r) if r.status == 200 => return Ok(()),
            result if Instant::now() > deadline => {
                bail!("port {port} never answered 200 (last: {result:?})")
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[derive(Debug, Default)]
struct Rate {
    cases: usize,
    passed: usize,
}

/// Runs `cases` through agents built as `bin`; (passed, failed).
pub fn run(cases: &[Case], bin: &Path, prefix: &str) -> anyhow::Result<(usize, usize)> {
    let ports = ports(cases);
    let topo = Topology::builder(prefix)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "conf/a", ip(1))
        .pod("node-2", "conf/b", ip(2))
        .build()?;
    let origin = DlpOrigin::start(&topo.pod("conf/b").ns, ports.iter().map(|(_, p)| *p))?;
    let agents = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &policy(&ports),
        Some(bin),
        &[],
    )?;
    let a = topo.pod("conf/a").ns.path();
    for (i, (_, port)) in ports.iter().enumerate() {
        // The first port waits for the tunnel and the policy; the rest are in force with it.
        let wait = Duration::from_secs(if i == 0 { 60 } else { 10 });
        warm_up(&origin, &a, *port, wait)
            .with_context(|| format!("node-2 log:\n{}", agents.node("node-2").log()))?;
    }

    let (mut passed, mut failed) = (0, 0);
    let mut rates: BTreeMap<String, Rate> = BTreeMap::new();
    for case in cases {
        let key = (case.direction, detectors_json(case));
        let port = ports
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| *p)
            .context("a case without a port")?;
        let (shown, result) = match run_case(&origin, &a, port, case) {
            Ok((status, outcome)) => (status.to_string(), verdict(case, &outcome)),
            Err(e) => ("-".to_owned(), Err(format!("no answer: {e:#}"))),
        };
        let rate = rates.entry(case.category.clone()).or_default();
        rate.cases += 1;
        let expect = format!("{:?}", case.expect).to_lowercase();
        match result {
            Ok(()) => {
                passed += 1;
                rate.passed += 1;
                println!(
                    "ok    {:<36} {:<17} {expect} ({shown})",
                    case.id, case.category
                );
            }
            Err(why) => {
                failed += 1;
                println!(
                    "FAIL  {:<36} {:<17} {expect}: {why} ({shown})",
                    case.id, case.category
                );
            }
        }
    }
    println!("\ncategory           cases  passed   rate");
    for (category, r) in &rates {
        println!(
            "{category:<17} {:>6} {:>7} {:>5.0}%",
            r.cases,
            r.passed,
            100.0 * r.passed as f64 / r.cases.max(1) as f64
        );
    }
    drop(agents);
    Ok((passed, failed))
}

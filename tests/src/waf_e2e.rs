//! The WAF conformance run through the real proxy: two nodes, one agent each (with the Core
//! Rule Set the run names), pod a sending each case across the mTLS tunnel to pod b's port
//! 8080, where a MeshPolicy's `http.waf` is at its defaults (paranoia level 1, inbound
//! threshold 5) and a recording origin listens. Over HTTP/1.1 each case goes **as raw bytes**;
//! over HTTP/2 (prior knowledge, [`Protocol::Http2`]) as the request HTTP/2 can carry (a case
//! it cannot, such as a malformed request line, is reported `n/a` and not counted).
//!
//! - `block`: the proxy answers 4xx and the origin receives nothing;
//! - `pass`: the origin answers (200) and received the request unchanged: method, target as
//!   sent, every header with its value (names compared without case; hop-by-hop headers aside),
//!   the body byte for byte.
//!
//! Prints one line per case, detection and false-positive rates per category, and returns the
//! counts (the caller prints `N passed, M failed`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::Topology;
use crate::h2::H2Origin;
use crate::mesh::{MeshAgents, pod_object};
use crate::netns;
use crate::raw_origin::{RawOrigin, Received};
use crate::waf_cases::Case;

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Headers a proxy may change or drop by HTTP's own rules.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 10)
}

fn policy() -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: conf}}\n{}{}---\napiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: waf-default}}\nspec:\n  appliesTo: {{podSelector: {{matchLabels: {{app: b}}}}}}\n  ports: [{{port: {PORT}}}]\n  http:\n    waf: {{}}\n",
        pod_object("conf", "a", 1, ip(1)),
        pod_object("conf", "b", 2, ip(2))
    )
}

/// Sends `raw` from the namespace at `ns` to `to` and reads one response; its status.
fn send(ns: &str, to: SocketAddr, raw: Vec<u8>) -> anyhow::Result<u16> {
    let head_request = raw.starts_with(b"HEAD ");
    netns::run_in(ns, move || -> anyhow::Result<u16> {
        let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(&raw)?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        // No body answers HEAD, nor comes with 1xx, 204 or 304.
        if !(head_request || status < 200 || status == 204 || status == 304) {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
        }
        Ok(status)
    })?
}

/// Why a `pass` case's request did not arrive unchanged, if it did not.
fn difference(case: &Case, received: &[Received], protocol: Protocol) -> Option<String> {
    let [got] = received else {
        return Some(format!("the origin received {} requests", received.len()));
    };
    if got.method != case.method || got.target != case.uri {
        return Some(format!("arrived as {} {}", got.method, got.target));
    }
    for (name, value) in &case.headers {
        let lower = name.to_ascii_lowercase();
        // HTTP/2 frames the body itself; its length is no header of the case's.
        if HOP_BY_HOP.contains(&lower.as_str())
            || (protocol == Protocol::Http2 && lower == "content-length")
        {
            continue;
        }
        if got.header(name) != Some(value.as_str()) {
            return Some(format!("header {name}: {:?}", got.header(name)));
        }
    }
    (got.body != case.body.as_bytes()).then(|| format!("body of {} bytes", got.body.len()))
}

#[derive(Debug, Default)]
struct Rates {
    attacks: usize,
    blocked_attacks: usize,
    benign: usize,
    blocked_benign: usize,
}

/// How the cases reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, each case's bytes as written.
    Http1Raw,
    /// HTTP/2 with prior knowledge, to an HTTP/2 origin.
    Http2,
}

/// The recording origin of the protocol.
enum Origin {
    Raw(RawOrigin),
    H2(H2Origin),
}

impl Origin {
    fn take(&self) -> Vec<Received> {
        match self {
            Origin::Raw(o) => o.take(),
            Origin::H2(o) => o.take(),
        }
    }
}

/// Sends a case in `protocol`; `None` if HTTP/2 cannot carry it.
fn send_case(
    protocol: Protocol,
    ns: &str,
    to: SocketAddr,
    case: &Case,
) -> Option<anyhow::Result<u16>> {
    match protocol {
        Protocol::Http1Raw => Some(send(ns, to, case.raw())),
        Protocol::Http2 => {
            let request =
                crate::h2::request(&case.method, &case.uri, &case.headers, case.body.as_bytes())?;
            Some(crate::h2::send(ns, to, request, TIMEOUT))
        }
    }
}

/// Runs `cases` through agents built as `bin`, with the CRS at `crs`, in `protocol`;
/// (passed, failed).
pub fn run(
    cases: &[Case],
    crs: &Path,
    bin: &Path,
    prefix: &str,
    protocol: Protocol,
) -> anyhow::Result<(usize, usize)> {
    let topo = Topology::builder(prefix)
        .node("node-1")
        .node("node-2")
        .pod("node-1", "conf/a", ip(1))
        .pod("node-2", "conf/b", ip(2))
        .build()?;
    let origin = match protocol {
        Protocol::Http1Raw => Origin::Raw(RawOrigin::start(&topo.pod("conf/b").ns, PORT)?),
        Protocol::Http2 => Origin::H2(H2Origin::start(&topo.pod("conf/b").ns, PORT)?),
    };
    let crs_arg = crs.display().to_string();
    let agents = MeshAgents::start(
        &topo,
        &["node-1", "node-2"],
        &policy(),
        Some(bin),
        &["--crs-dir", &crs_arg],
    )?;
    let a = topo.pod("conf/a").ns.path();
    let b = SocketAddr::new(IpAddr::V4(ip(2)), PORT);

    // The first request waits for the tunnel, the policy and the rules.
    let warm_up = Case {
        id: "warm-up".into(),
        category: String::new(),
        expected: "pass".into(),
        method: "GET".into(),
        uri: "/health".into(),
        headers: vec![
            ("Host".into(), "localhost".into()),
            ("User-Agent".into(), "conformance".into()),
            ("Accept".into(), "*/*".into()),
        ],
        body: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match send_case(protocol, &a, b, &warm_up).unwrap_or_else(|| Ok(0)) {
            Ok(200) => break,
            result if Instant::now() > deadline => {
                bail!(
                    "the WAF port never answered 200 (last: {result:?})\nnode-2 log:\n{}",
                    agents.node("node-2").log()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    let _ = origin.take();

    let (mut passed, mut failed) = (0, 0);
    let mut rates: BTreeMap<String, Rates> = BTreeMap::new();
    let mut not_applicable = 0;
    for case in cases {
        let Some(status) = send_case(protocol, &a, b, case) else {
            not_applicable += 1;
            println!(
                "n/a   {:<28} {:<22} {}: HTTP/2 cannot carry this request",
                case.id, case.category, case.expected
            );
            continue;
        };
        // A refused request is answered before the origin could see it; a passed one is
        // recorded before the origin answers.
        let received = origin.take();
        let blocked = matches!(status, Ok(s) if (400..500).contains(&s));
        let verdict = match (&status, case.blocks()) {
            (Err(e), _) => Err(format!("no answer: {e:#}")),
            (Ok(_), true) if blocked && received.is_empty() => Ok(()),
            (Ok(s), true) if blocked => Err(format!("{s}, but the origin received it")),
            (Ok(s), true) => Err(format!("not blocked ({s})")),
            (Ok(200), false) => difference(case, &received, protocol).map_or(Ok(()), Err),
            (Ok(s), false) => Err(format!("refused ({s})")),
        };
        let r = rates.entry(case.category.clone()).or_default();
        if case.blocks() {
            r.attacks += 1;
            r.blocked_attacks += usize::from(blocked);
        } else {
            r.benign += 1;
            r.blocked_benign += usize::from(blocked);
        }
        let shown = status.as_ref().map_or("-".to_owned(), u16::to_string);
        match verdict {
            Ok(()) => {
                passed += 1;
                println!(
                    "ok    {:<28} {:<22} {} ({shown})",
                    case.id, case.category, case.expected
                );
            }
            Err(why) => {
                failed += 1;
                println!(
                    "FAIL  {:<28} {:<22} {}: {why}",
                    case.id, case.category, case.expected
                );
            }
        }
    }
    println!(
        "\ncategory               attacks blocked  detection   benign blocked  false-positive"
    );
    let pct = |n: usize, d: usize| {
        if d == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * n as f64 / d as f64)
        }
    };
    for (category, r) in &rates {
        println!(
            "{category:<22} {:>7} {:>7} {:>10} {:>8} {:>7} {:>15}",
            r.attacks,
            r.blocked_attacks,
            pct(r.blocked_attacks, r.attacks),
            r.benign,
            r.blocked_benign,
            pct(r.blocked_benign, r.benign)
        );
    }
    if not_applicable > 0 {
        println!("{not_applicable} cases HTTP/2 cannot carry (not counted)");
    }
    drop(agents);
    Ok((passed, failed))
}

//! HTTP/1.1 request/response through a hop: a hyper server inside the destination pod answers
//! every `GET` with a 64-byte body, and `concurrency` keep-alive clients in the source pod send
//! requests back to back. The client is a few lines of blocking I/O, one thread per connection:
//! the measurement then has no async runtime's scheduling in it, for any system measured.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use rampart_tests::Netns;

use crate::traffic::Metric;

const BODY: &[u8] = &[b'r'; 64];

/// The server; stops on drop.
pub struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves HTTP/1.1 on `port` (all addresses) inside `ns`, every response a 64-byte body.
pub fn serve(ns: &Netns, port: u16) -> anyhow::Result<HttpServer> {
    serve_body(ns, port, BODY)
}

/// Serves HTTP/1.1 on `port` inside `ns`, every response `body`.
pub fn serve_body(ns: &Netns, port: u16, body: &'static [u8]) -> anyhow::Result<HttpServer> {
    let path = ns.path();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let thread = std::thread::spawn(move || {
        let started = (|| -> anyhow::Result<(tokio::runtime::Runtime, std::net::TcpListener)> {
            rampart_tests::netns::enter(&path)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
            listener.set_nonblocking(true)?;
            Ok((rt, listener))
        })();
        let (rt, listener) = match started {
            Ok(v) => {
                let _ = ready_tx.send(Ok(()));
                v
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let accept = async {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(body),
                            )))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the HTTP server did not start"))??;
    Ok(HttpServer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Requests per second over all connections, and the p50 and p99 latency in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct HttpSample {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The HTTP metrics, named for the concurrency the proxy suite uses.
pub const METRICS: [Metric<HttpSample>; 3] = [
    ("http_rate_c8", "req/s", |s| s.rate),
    ("http_latency_p50_c8", "us", |s| s.p50_us),
    ("http_latency_p99_c8", "us", |s| s.p99_us),
];

/// The request every client sends, and the status it must get back.
#[derive(Debug, Clone)]
pub struct Get {
    pub path: &'static str,
    /// A `name: value` line.
    pub header: Option<String>,
    pub expect: u16,
}

impl Get {
    /// `GET /`, answered 200 by the server.
    pub fn root() -> Get {
        Get {
            path: "/",
            header: None,
            expect: 200,
        }
    }

    pub fn with_header(header: String) -> Get {
        Get {
            header: Some(header),
            ..Get::root()
        }
    }
}

/// `concurrency` keep-alive connections from inside `ns`, `requests` each, back to back, each
/// request `get`; a response with another status than `get.expect` fails the measurement.
pub fn measure(
    ns: &Netns,
    dst: SocketAddr,
    concurrency: usize,
    requests: usize,
    get: &Get,
) -> anyhow::Result<HttpSample> {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: bench\r\nuser-agent: rampart-bench\r\naccept: */*\r\n{}\r\n",
        get.path,
        get.header
            .as_ref()
            .map_or(String::new(), |h| format!("{h}\r\n"))
    );
    let expect = get.expect;
    let request: std::sync::Arc<[u8]> = request.into_bytes().into();
    ns.run(move || -> anyhow::Result<HttpSample> {
        let start = Instant::now();
        // Threads created here inherit this thread's network namespace.
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let request = std::sync::Arc::clone(&request);
                std::thread::spawn(move || client(dst, &request, requests, expect))
            })
            .collect();
        let mut latencies = Vec::with_capacity(concurrency * requests);
        for w in workers {
            latencies.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("an HTTP client panicked"))??,
            );
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        Ok(HttpSample {
            rate: latencies.len() as f64 / secs,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        })
    })?
}

/// One keep-alive connection: `requests` GETs, each latency in microseconds.
fn client(
    dst: SocketAddr,
    request: &[u8],
    requests: usize,
    expect: u16,
) -> anyhow::Result<Vec<f64>> {
    let timeout = Duration::from_secs(5);
    let stream = TcpStream::connect_timeout(&dst, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut out = Vec::with_capacity(requests);
    let mut line = String::new();
    let mut body = Vec::new();
    for _ in 0..requests {
        let t = Instant::now();
        writer.write_all(request)?;
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        anyhow::ensure!(
            status == Some(expect),
            "expected {expect}, got {:?}",
            line.trim_end()
        );
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if chunked {
            // A re-chunked body (the DLP filter changes lengths): size lines, data, CRLF.
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)?;
                body.resize(size + 2, 0);
                reader.read_exact(&mut body)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let length =
                length.ok_or_else(|| anyhow::anyhow!("a response without content-length"))?;
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

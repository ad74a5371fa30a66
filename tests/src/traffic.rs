//! Continuous traffic from inside a pod's namespace while something happens to the agents (a
//! hot restart, an upgrade, a SIGKILL), and what it saw: connections reset, requests failed,
//! requests that got through what policy denies, and the longest gap in new-connection success.
//! Every loop is bounded by a stop flag and a deadline.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns;

/// How long one attempt may take before it counts as failed.
const ATTEMPT: Duration = Duration::from_secs(2);

/// What one kind of traffic saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    /// Connections that broke (reset, closed early, timed out) or requests without the answer
    /// they should have had.
    pub failed: u64,
    /// Longest time between two successes (new connections).
    pub longest_gap: Duration,
    /// The first few failures, for the report, each with its time since the traffic started.
    pub examples: Vec<String>,
    last_ok: Option<Instant>,
    started: Option<Instant>,
}

impl Tally {
    fn ok(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_ok {
            self.longest_gap = self.longest_gap.max(now - last);
        }
        self.last_ok = Some(now);
        self.ok += 1;
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.examples.len() < 5 {
            let at = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            self.examples.push(format!("[+{at:.2}s] {why}"));
        }
    }
}

type Shared = Arc<Mutex<Tally>>;

fn record(tally: &Shared, outcome: Result<(), String>) {
    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    match outcome {
        Ok(()) => t.ok(),
        Err(why) => t.fail(why),
    }
}

/// Traffic running on threads until [`Traffic::stop`] (or its deadline).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, Shared, JoinHandle<()>)>,
    started: Instant,
    deadline: Instant,
}

impl Traffic {
    /// Nothing running yet; every worker stops at `limit` from now at the latest.
    pub fn new(limit: Duration) -> Traffic {
        let started = Instant::now();
        Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            started,
            deadline: started + limit,
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        ns_path: &str,
        work: impl FnOnce(Shared, Arc<AtomicBool>, Instant) + Send + 'static,
    ) {
        let tally: Shared = Arc::new(Mutex::new(Tally {
            started: Some(self.started),
            ..Tally::default()
        }));
        let (t, stop, deadline, path) = (
            Arc::clone(&tally),
            Arc::clone(&self.stop),
            self.deadline,
            ns_path.to_owned(),
        );
        let handle = std::thread::spawn(move || {
            if let Err(e) = netns::enter(&path) {
                record(&t, Err(format!("entering the namespace: {e:#}")));
                return;
            }
            work(t, stop, deadline);
        });
        self.threads.push((name.to_owned(), tally, handle));
    }

    /// `attempt`, over and over with `pause` between, on a thread inside the namespace: each
    /// `Err` is a failure (for checks the other kinds do not make, such as a response's body).
    pub fn repeat(
        &mut self,
        name: &str,
        ns_path: &str,
        pause: Duration,
        attempt: impl Fn() -> Result<(), String> + Send + 'static,
    ) {
        self.spawn(name, ns_path, move |tally, stop, deadline| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                record(&tally, attempt());
                std::thread::sleep(pause);
            }
        });
    }

    /// `flows` connections to an echo server at `dst`, each sending a round every 50 ms for
    /// `lifetime` and then replaced by a new one: a round that does not come back whole is a
    /// broken connection.
    pub fn long_flows(
        &mut self,
        name: &str,
        ns_path: &str,
        dst: SocketAddr,
        flows: usize,
        lifetime: Duration,
    ) {
        self.connections(name, ns_path, dst, flows, lifetime, |s, round| {
            let payload = format!("round {round:08}\n");
            let mut back = vec![0u8; payload.len()];
            s.write_all(payload.as_bytes())
                .and_then(|()| s.read_exact(&mut back))
                .map_err(|e| format!("round {round}: {e}"))?;
            if back != payload.as_bytes() {
                return Err(format!("round {round}: a different echo"));
            }
            std::thread::sleep(Duration::from_millis(50));
            Ok(())
        });
    }

    /// `flows` threads, each opening connections to `dst` one after another and running
    /// `round` on each (round 0, 1, ...) for `lifetime`: an error is a broken connection, unless
    /// the traffic is stopping (its servers close their connections then).
    fn connections(
        &mut self,
        name: &str,
        ns_path: &str,
        dst: SocketAddr,
        flows: usize,
        lifetime: Duration,
        round: fn(&mut TcpStream, u32) -> Result<(), String>,
    ) {
        for _ in 0..flows {
            self.spawn(name, ns_path, move |tally, stop, deadline| {
                let running = || !stop.load(Ordering::Relaxed) && Instant::now() < deadline;
                while running() {
                    let outcome = (|| {
                        let mut s = TcpStream::connect_timeout(&dst, ATTEMPT)
                            .map_err(|e| format!("connect: {e}"))?;
                        s.set_read_timeout(Some(ATTEMPT))
                            .map_err(|e| e.to_string())?;
                        let opened = Instant::now();
                        let mut n = 0u32;
                        while running() && opened.elapsed() < lifetime {
                            round(&mut s, n)?;
                            n += 1;
                        }
                        Ok(())
                    })();
                    if outcome.is_err() && !running() {
                        return;
                    }
                    record(&tally, outcome);
                }
            });
        }
    }

    /// A server in the namespace at `ns_path` on `port` that writes a 5-byte tick every 50 ms
    /// on every connection, until the client closes it or the traffic stops: a flow whose
    /// packets come from the server only, for [`Traffic::pushed_flows`].
    pub fn pushing_server(&mut self, ns_path: &str, port: u16) -> anyhow::Result<()> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        self.spawn("pushing server", ns_path, move |tally, stop, deadline| {
            let listener = match std::net::TcpListener::bind(("::", port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let stop = Arc::clone(&stop);
                        let _ = s.set_nonblocking(false);
                        std::thread::spawn(move || {
                            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                                if s.write_all(b"tick\n").is_err() {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        });
                        record(&tally, Ok(()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => anyhow::bail!("the pushing server on port {port}: {e}"),
            Err(_) => anyhow::bail!("the pushing server on port {port} did not start"),
        }
    }

    /// `flows` connections to a [`Traffic::pushing_server`] at `dst`, each reading its ticks for
    /// `lifetime` and then replaced: only the server sends, so its packets are admitted to the
    /// client by nothing but their flow's state (when the client takes no connections) — a tick
    /// that does not arrive within 2 s is a broken connection.
    pub fn pushed_flows(
        &mut self,
        name: &str,
        ns_path: &str,
        dst: SocketAddr,
        flows: usize,
        lifetime: Duration,
    ) {
        self.connections(name, ns_path, dst, flows, lifetime, |s, n| {
            let mut tick = [0u8; 5];
            s.read_exact(&mut tick)
                .map_err(|e| format!("tick {n}: {e}"))
        });
    }

    /// New connections to an echo server at `dst`, one after another, each echoing once.
    pub fn new_connections(&mut self, name: &str, ns_path: &str, dst: SocketAddr) {
        self.spawn(name, ns_path, move |tally, stop, deadline| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let outcome = (|| {
                    let mut s = TcpStream::connect_timeout(&dst, ATTEMPT)
                        .map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(ATTEMPT))
                        .map_err(|e| e.to_string())?;
                    let mut back = [0u8; 5];
                    s.write_all(b"hello")
                        .and_then(|()| s.read_exact(&mut back))
                        .map_err(|e| format!("echo: {e}"))?;
                    Ok(())
                })();
                let failed = outcome.is_err();
                record(&tally, outcome);
                std::thread::sleep(Duration::from_millis(if failed { 50 } else { 10 }));
            }
        });
    }

    /// HTTP/1.1 GETs of `path` on kept-alive connections to `dst` with `headers`, each answer
    /// expected to be `status`; a connection is replaced after `per_connection` requests or when
    /// the server says `Connection: close` (as a client's pool does).
    #[allow(clippy::too_many_arguments)]
    pub fn http(
        &mut self,
        name: &str,
        ns_path: &str,
        dst: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        status: u16,
        per_connection: u32,
    ) {
        let request = {
            let mut r = format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\n");
            for (k, v) in headers {
                r.push_str(&format!("{k}: {v}\r\n"));
            }
            r.push_str("\r\n");
            r
        };
        self.spawn(name, ns_path, move |tally, stop, deadline| {
            let mut connection: Option<(BufReader<TcpStream>, u32)> = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if connection.is_none() {
                    match TcpStream::connect_timeout(&dst, ATTEMPT) {
                        Ok(s) => {
                            let _ = s.set_read_timeout(Some(ATTEMPT));
                            connection = Some((BufReader::new(s), 0));
                        }
                        Err(e) => {
                            record(&tally, Err(format!("connect: {e}")));
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
                let Some((reader, used)) = connection.as_mut() else {
                    continue;
                };
                match exchange(reader, &request) {
                    Ok((got, close)) if got == status => {
                        record(&tally, Ok(()));
                        *used += 1;
                        if close || *used >= per_connection {
                            connection = None;
                        }
                    }
                    Ok((got, _)) => {
                        record(&tally, Err(format!("status {got}, expected {status}")));
                        connection = None;
                    }
                    Err(e) => {
                        record(&tally, Err(e));
                        connection = None;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }

    /// Connections to `dst` that policy denies, one after another: each one that is answered is
    /// a violation (counted as failed).
    pub fn denied_connections(&mut self, name: &str, ns_path: &str, dst: SocketAddr) {
        self.spawn(name, ns_path, move |tally, stop, deadline| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let outcome = match TcpStream::connect_timeout(&dst, Duration::from_millis(300)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                        let mut back = [0u8; 5];
                        if s.write_all(b"hello")
                            .and_then(|()| s.read_exact(&mut back))
                            .is_ok()
                        {
                            Err("a denied connection was answered".to_owned())
                        } else {
                            Ok(())
                        }
                    }
                    Err(_) => Ok(()),
                };
                record(&tally, outcome);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    /// Since the traffic started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every worker and returns what each kind saw (its name, summed over its threads).
    pub fn stop(self) -> Vec<(String, Tally)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out: Vec<(String, Tally)> = Vec::new();
        for (name, tally, handle) in self.threads {
            let _ = handle.join();
            let t = tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, sum)) => {
                    sum.ok += t.ok;
                    sum.failed += t.failed;
                    sum.longest_gap = sum.longest_gap.max(t.longest_gap);
                    sum.examples.extend(t.examples.into_iter().take(2));
                }
                None => out.push((name, t)),
            }
        }
        out
    }
}

/// One request and its response on a kept-alive connection: the status, and whether the server
/// closes the connection after it.
fn exchange(reader: &mut BufReader<TcpStream>, request: &str) -> Result<(u16, bool), String> {
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err("closed before an answer".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status in {status_line:?}"))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("closed in the head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            if k == "content-length" {
                length = v.parse().map_err(|_| format!("content-length {v:?}"))?;
            } else if k == "connection" && v.contains("close") {
                close = true;
            } else if k == "transfer-encoding" {
                return Err("a chunked answer (not expected here)".into());
            }
        }
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, close))
}

/// The tallies as a table, for the test's output.
pub fn report(tallies: &[(String, Tally)]) -> String {
    let mut out = String::from("traffic                        ok  failed  longest gap\n");
    for (name, t) in tallies {
        out.push_str(&format!(
            "{name:<28} {:>6} {:>7}  {:>6} ms  {}\n",
            t.ok,
            t.failed,
            t.longest_gap.as_millis(),
            t.examples.join("; ")
        ));
    }
    out
}

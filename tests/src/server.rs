//! Echo servers inside a namespace: every TCP connection gets back what it sent first, every UDP
//! datagram is sent back to its sender. Probes use them to prove a flow got through both ways.

use std::io::{Read as _, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{self, Netns};

const POLL: Duration = Duration::from_millis(10);

/// Servers on some TCP and UDP ports of one namespace; stopped and joined on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `[::]:<port>` (dual-stack: IPv4 and IPv6) for each port inside `ns`; returns once
    /// every socket is bound.
    pub fn start(ns: &Netns, tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<EchoServer> {
        let mut server = EchoServer {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for &port in tcp_ports {
            server.spawn(ns, port, true)?;
        }
        for &port in udp_ports {
            server.spawn(ns, port, false)?;
        }
        Ok(server)
    }

    fn spawn(&mut self, ns: &Netns, port: u16, tcp: bool) -> anyhow::Result<()> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let stop = Arc::clone(&self.stop);
        let path = ns.path();
        let handle = std::thread::spawn(move || {
            if let Err(e) = netns::enter(&path) {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            if tcp {
                serve_tcp(addr, &stop, &ready_tx);
            } else {
                serve_udp(addr, &stop, &ready_tx);
            }
        });
        self.threads.push(handle);
        let proto = if tcp { "tcp" } else { "udp" };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("echo server {proto}/{port} in {} did not start", ns.name()))?
            .map_err(|e| anyhow::anyhow!("echo server {proto}/{port} in {}: {e}", ns.name()))
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(addr: SocketAddr, stop: &AtomicBool, ready: &mpsc::Sender<Result<(), String>>) {
    let listener = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        // Wait for a connection (or the next look at `stop`) without delaying the accept: a
        // sleep-and-retry loop would add up to its period to every connection's setup time.
        if !readable(&listener, POLL * 5) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                // Each connection on its own thread: echo everything until the peer closes.
                std::thread::spawn(move || echo_stream(stream));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Whether `listener` has a connection to accept within `timeout`.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn echo_stream(mut stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn serve_udp(addr: SocketAddr, stop: &AtomicBool, ready: &mpsc::Sender<Result<(), String>>) {
    let socket =
        match UdpSocket::bind(addr).and_then(|s| s.set_read_timeout(Some(POLL * 5)).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
    let _ = ready.send(Ok(()));
    // Room for the largest datagram, so fragmented probes come back whole.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

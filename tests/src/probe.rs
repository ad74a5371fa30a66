//! Reachability probes, run from inside a namespace: a TCP connect with an echo round trip, a UDP
//! datagram with its echo, and a plain HTTP GET for the agent's admin endpoints.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::{self, Netns};

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payload came back: the flow works both ways.
    Reached,
    /// The peer answered with a reset (TCP) or port unreachable (UDP): the packet got there.
    Refused,
    /// Nothing came back in time: dropped somewhere.
    TimedOut,
    /// Anything else (an error of the probe itself).
    Error(String),
}

impl Outcome {
    pub fn reached(&self) -> bool {
        *self == Outcome::Reached
    }
}

const PAYLOAD: &[u8] = b"rampart-probe";

/// TCP connect to `dst` from inside `ns`, send a payload and wait for its echo.
pub fn tcp(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(move || tcp_here(dst, timeout))
        .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")))
}

/// Sends `size` bytes over one TCP connection to an echo server from inside `ns` and checks that
/// all of them come back: bulk data, large segments (GSO/GRO), many packets each way.
pub fn tcp_bulk(ns: &Netns, dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    ns.run(move || tcp_bulk_here(dst, size, timeout))
        .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")))
}

fn tcp_bulk_here(dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    let stream = match TcpStream::connect_timeout(&dst, timeout) {
        Ok(s) => s,
        Err(e) => return io_outcome(&e),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let sent = data.clone();
    let sender = std::thread::spawn(move || {
        let result = writer.write_all(&sent);
        let _ = writer.shutdown(std::net::Shutdown::Write);
        result
    });
    let mut back = Vec::with_capacity(size);
    let mut reader = stream;
    let read = reader.read_to_end(&mut back);
    let wrote = sender
        .join()
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()));
    match (read, wrote) {
        (Ok(_), Ok(())) if back == data => Outcome::Reached,
        (Ok(n), Ok(())) => Outcome::Error(format!("{n} of {size} bytes came back intact")),
        (Err(e), _) => io_outcome(&e),
        (_, Err(())) => Outcome::Error("sending failed".into()),
    }
}

/// Like [`tcp`], but from `src`, an address `ns` does not own (a socket with `IP_TRANSPARENT`
/// bound to it): what a process on a node that forges a pod's address sends. Answers routed
/// back to `src` go wherever `src` lives, so this sees [`Outcome::Reached`] only if they come
/// back here.
pub fn tcp_spoofed(ns: &Netns, src: IpAddr, dst: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(move || {
        let connect = || -> std::io::Result<TcpStream> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(dst),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            if src.is_ipv4() {
                socket.set_ip_transparent_v4(true)?;
            } else {
                socket.set_ip_transparent_v6(true)?;
            }
            socket.bind(&SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&dst.into(), timeout)?;
            Ok(socket.into())
        };
        match connect() {
            Ok(stream) => echo_on(stream, timeout),
            Err(e) => io_outcome(&e),
        }
    })
    .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")))
}

/// A UDP datagram to `dst` from inside `ns`, waiting for its echo.
pub fn udp(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Outcome {
    udp_sized(ns, dst, PAYLOAD.len(), timeout)
}

/// Like [`udp`] with a datagram of `size` bytes: above the path MTU it travels as IP fragments,
/// both ways.
pub fn udp_sized(ns: &Netns, dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    ns.run(move || udp_here(dst, size, timeout))
        .unwrap_or_else(|e| Outcome::Error(format!("{e:#}")))
}

/// One ICMP echo (`ping -c 1`) to `dst` from inside `ns`.
pub fn ping(ns: &Netns, dst: IpAddr, timeout: Duration) -> Outcome {
    let wait = timeout.as_secs().max(1).to_string();
    match crate::cmd::in_ns(
        ns.name(),
        "ping",
        &["-n", "-q", "-c", "1", "-W", &wait, &dst.to_string()],
    ) {
        Ok(_) => Outcome::Reached,
        Err(e) if e.to_string().contains("exit status: 1") => Outcome::TimedOut,
        Err(e) => Outcome::Error(format!("{e:#}")),
    }
}

/// Sends `payload` over one TCP connection to an echo server from inside `ns` and reads it back:
/// whether it came back whole.
pub fn echo_exchange(
    ns: &Netns,
    dst: SocketAddr,
    payload: &'static [u8],
    timeout: Duration,
) -> bool {
    echo_rounds(ns, dst, payload, 1, Duration::ZERO, timeout)
}

/// Like [`echo_exchange`], `rounds` times over the same connection, `pause` apart (a long-lived
/// flow): whether every round came back whole.
pub fn echo_rounds(
    ns: &Netns,
    dst: SocketAddr,
    payload: &'static [u8],
    rounds: u32,
    pause: Duration,
    timeout: Duration,
) -> bool {
    ns.run(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&dst, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        (0..rounds).all(|round| {
            if round > 0 {
                std::thread::sleep(pause);
            }
            let mut back = vec![0u8; payload.len()];
            s.write_all(payload).is_ok() && s.read_exact(&mut back).is_ok() && back == payload
        })
    })
    .unwrap_or(false)
}

fn tcp_here(dst: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&dst, timeout) {
        Ok(stream) => echo_on(stream, timeout),
        Err(e) => io_outcome(&e),
    }
}

/// Sends the probe's payload on a connected stream and waits for its echo.
fn echo_on(mut stream: TcpStream, timeout: Duration) -> Outcome {
    let _ = stream.set_read_timeout(Some(timeout));
    if let Err(e) = stream.write_all(PAYLOAD) {
        return io_outcome(&e);
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if &buf[..n] == PAYLOAD => Outcome::Reached,
        Ok(n) => Outcome::Error(format!("unexpected echo of {n} bytes")),
        Err(e) => io_outcome(&e),
    }
}

fn udp_here(dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    let local: IpAddr = if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = match UdpSocket::bind((local, 0)) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let _ = socket.set_read_timeout(Some(timeout));
    // connect() so an ICMP port unreachable surfaces as ECONNREFUSED on recv.
    let payload: Vec<u8> = PAYLOAD.iter().copied().cycle().take(size).collect();
    if let Err(e) = socket
        .connect(dst)
        .and_then(|()| socket.send(&payload).map(|_| ()))
    {
        return io_outcome(&e);
    }
    let mut buf = vec![0u8; size + 64];
    match socket.recv(&mut buf) {
        Ok(n) if buf[..n] == payload[..] => Outcome::Reached,
        Ok(n) => Outcome::Error(format!("unexpected echo of {n} bytes")),
        Err(e) => io_outcome(&e),
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => {
            Outcome::Refused
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Error(e.to_string()),
    }
}

/// `GET path` on `addr` from inside the namespace at `ns_path`; returns the status code and body.
///
/// Hand-written HTTP/1.0 (one request, `Connection: close`, read to EOF): the harness only reads
/// the agent's small admin responses, and this keeps an HTTP client stack out of the harness.
pub fn http_get(
    ns_path: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_get_with(ns_path, addr, path, &[], timeout)
}

/// [`http_get`] with more request headers (`("Accept", "...")`).
pub fn http_get_with(
    ns_path: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_request(ns_path, addr, "GET", path, headers, timeout).map(|r| (r.status, r.body))
}

/// A response as [`http_request`] reads it.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.0 request (`Connection: close`, read to EOF) from inside the namespace. Its `Host`
/// is `addr`, unless `headers` has a `host`.
pub fn http_request(
    ns_path: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let (method, path) = (method.to_owned(), path.to_owned());
    let (host, headers) = host_and_headers(addr, headers);
    netns::run_in(ns_path, move || -> anyhow::Result<HttpReply> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request_text(&method, &path, &host, &headers).as_bytes())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        parse_reply(&raw)
    })?
}

/// Like [`http_request`] from the calling thread's namespace (a thread that entered one), with
/// a 3 s timeout.
pub fn http_request_here(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpReply> {
    let timeout = Duration::from_secs(3);
    let (host, headers) = host_and_headers(addr, headers);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request_text(method, path, &host, &headers).as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    parse_reply(&raw)
}

/// One HTTP/1.0 `GET path` on a Unix socket (the agent's admin socket), read to EOF.
pub fn unix_http_get(
    socket: &std::path::Path,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request_text("GET", path, "localhost", "").as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    parse_reply(&raw).map(|r| (r.status, r.body))
}

/// One HTTP/1.0 POST of `body` (with its `Content-Length`), read to EOF, from inside the
/// namespace.
pub fn http_post(
    ns_path: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let (host, mut headers) = host_and_headers(addr, headers);
    headers.push_str(&format!("Content-Length: {}\r\n", body.len()));
    let mut request = request_text("POST", path, &host, &headers).into_bytes();
    request.extend_from_slice(body);
    netns::run_in(ns_path, move || -> anyhow::Result<HttpReply> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(&request)?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        parse_reply(&raw)
    })?
}

/// An HTTP/1.1 connection kept open across requests, opened from inside a namespace (the
/// socket stays in it). Responses are read by `Content-Length` or chunked.
pub struct KeptAlive {
    reader: std::io::BufReader<TcpStream>,
    host: String,
}

impl KeptAlive {
    pub fn open(ns_path: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<KeptAlive> {
        let stream = netns::run_in(ns_path, move || -> anyhow::Result<TcpStream> {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            Ok(stream)
        })??;
        Ok(KeptAlive {
            reader: std::io::BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// One GET on the connection; `None` once the server has closed it.
    pub fn get(&mut self, path: &str) -> anyhow::Result<Option<HttpReply>> {
        use std::io::BufRead as _;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        if self.reader.get_mut().write_all(request.as_bytes()).is_err() {
            return Ok(None);
        }
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_ascii_lowercase())
            })
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .with_context(|| format!("a chunk size: {size:?}"))?;
                let mut chunk = vec![0u8; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .with_context(|| format!("a response without a length: {head}"))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        let mut raw = head;
        raw.push_str("\r\n");
        raw.push_str(&String::from_utf8_lossy(&body));
        parse_reply(&raw).map(Some)
    }
}

/// The `Host` to send (a `host` entry of `headers`, else `addr`) and the other headers as
/// `name: value\r\n` lines.
fn host_and_headers(addr: SocketAddr, headers: &[(&str, &str)]) -> (String, String) {
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or_else(|| addr.to_string(), |(_, v)| (*v).to_owned());
    let lines = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    (host, lines)
}

/// An HTTP/1.0 request with `Connection: close`; `headers` are `name: value\r\n` lines.
pub(crate) fn request_text(method: &str, path: &str, host: &str, headers: &str) -> String {
    format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
}

/// A whole response as read to EOF.
pub(crate) fn parse_reply(raw: &str) -> anyhow::Result<HttpReply> {
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("no status code")?;
    Ok(HttpReply {
        status,
        head: head.replace("\r\n", "\n"),
        body: body.to_owned(),
    })
}

/// Sends `frame` (a whole Ethernet frame, as is) on `interface` inside `ns` through a packet
/// socket: how a test hands the kernel programs a malformed packet no socket API would build.
pub fn raw_frame(ns: &Netns, interface: &str, frame: Vec<u8>) -> anyhow::Result<()> {
    let interface = std::ffi::CString::new(interface).context("interface name")?;
    anyhow::ensure!(frame.len() >= 14, "a frame has at least an Ethernet header");
    ns.run(move || -> anyhow::Result<()> {
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(interface.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {interface:?}");
        // SAFETY: plain socket(2); the descriptor is owned by `fd` below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        anyhow::ensure!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `to` are valid for the lengths given; `fd` is open.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(
            usize::try_from(sent).ok() == Some(frame.len()),
            "sending the frame: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })?
}

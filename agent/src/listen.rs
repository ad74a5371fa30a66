//! Accept loops for every listener the agent owns (the admin socket, the metrics address, the
//! proxy's transparent listener, the tunnel), with the same guarantees: a failed `accept()`
//! (out of file descriptors, a connection aborted before it was taken) is logged and retried,
//! never returned, so a listener can never stop the agent; at most `cap` connections are open
//! at once: the next `accept()` waits until one closes, leaving new connections in the
//! kernel's backlog instead of spending descriptors the proxy's flows need; and, where a
//! per-peer limit is set, one source address holds at most that many of them: its next
//! connection is closed as soon as it is accepted, so a single client cannot fill the cap and
//! starve the others (the kubelet's probes behind a pod's idle connections).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{KeyedSlot, KeyedSlots, Limit, Limits};

/// How long the loop waits after a failed accept (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per listener in this interval; the rest are counted into it.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Header-read timeout of the agent's HTTP servers (the admin socket, the metrics address):
/// a client must send a whole request head within it, and a kept-alive connection is closed
/// when no next request starts within it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Something connections are accepted from.
pub trait Listener: Send + Sync + 'static {
    type Stream: Send + 'static;
    type Peer: std::fmt::Debug + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
    /// The peer's address, for per-peer limits (`None`: not limited per peer).
    fn peer_ip(peer: &Self::Peer) -> Option<IpAddr>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
    fn peer_ip(peer: &Self::Peer) -> Option<IpAddr> {
        Some(peer.ip().to_canonical())
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::UnixListener::accept(self)
    }
    fn peer_ip(_: &Self::Peer) -> Option<IpAddr> {
        None
    }
}

/// A bound on open connections, shared by the listeners of one service (the proxy's IPv4 and
/// IPv6 transparent listeners and its tunnel share one).
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    cap: usize,
    /// The open connections, so a drain that runs out can say which ones held it.
    open: Arc<OpenConnections>,
    /// Open connections by peer address, each under the per-peer limit (`None`: no limit).
    per_peer: Option<KeyedSlots<IpAddr>>,
    /// Where the limits' hits are counted (the proxy's; `None`: not counted).
    limits: Option<Arc<Limits>>,
}

impl ConnectionCap {
    pub fn new(cap: usize) -> ConnectionCap {
        let cap = cap.max(1);
        ConnectionCap {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            open: Arc::default(),
            per_peer: None,
            limits: None,
        }
    }

    /// The same cap, with at most `limit` connections from any one address.
    pub fn per_peer(mut self, limit: usize) -> ConnectionCap {
        self.per_peer = Some(KeyedSlots::new(limit));
        self
    }

    /// The proxy's cap for a process allowed `fd_limit` open files: `limits`' settings, hits
    /// counted there.
    pub fn for_proxy(limits: &Arc<Limits>, fd_limit: u64) -> ConnectionCap {
        let settings = &limits.settings;
        let mut cap = ConnectionCap::new(settings.connections(fd_limit))
            .per_peer(settings.connections_per_source(fd_limit));
        cap.limits = Some(Arc::clone(limits));
        cap
    }

    fn hit(&self, limit: Limit) {
        if let Some(limits) = &self.limits {
            limits.hit(limit);
        }
    }

    /// Counts a connection from `ip` if it is under the per-peer limit; the slot uncounts it.
    fn admit(&self, ip: Option<IpAddr>) -> Option<Option<KeyedSlot<IpAddr>>> {
        let (Some(per_peer), Some(ip)) = (&self.per_peer, ip) else {
            return Some(None);
        };
        per_peer.take(&ip).map(Some)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    pub fn limit(&self) -> usize {
        self.cap
    }

    /// The `n` connections open longest: listener, peer and age.
    pub fn oldest(&self, n: usize) -> Vec<OpenConnection> {
        self.open.oldest(n)
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }
}

/// One open connection, as [`ConnectionCap::oldest`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenConnection {
    pub listener: &'static str,
    pub peer: Option<IpAddr>,
    pub opened: Instant,
}

/// The open connections by a serial number; a lock per accept and per close, off every
/// connection's data path.
#[derive(Debug, Default)]
struct OpenConnections {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, OpenConnection>>,
}

impl OpenConnections {
    fn insert(self: &Arc<Self>, connection: OpenConnection) -> Registered {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, connection);
        }
        Registered {
            id,
            open: Arc::clone(self),
        }
    }

    fn oldest(&self, n: usize) -> Vec<OpenConnection> {
        let Ok(open) = self.open.lock() else {
            return Vec::new();
        };
        let mut all: Vec<OpenConnection> = open.values().copied().collect();
        all.sort_by_key(|c| c.opened);
        all.truncate(n);
        all
    }
}

/// Removes its connection from the registry when dropped.
struct Registered {
    id: u64,
    open: Arc<OpenConnections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// Whether a listener's accept loop runs. A hot restart shares each listening socket between
/// two agents: the new one waits to accept until it can serve (its first policy generation is in
/// force), the old one stops accepting once the new one does (see `handover`). Connections in
/// the kernel's backlog meanwhile go to whichever process accepts them.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<Accepting>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepting {
    NotYet,
    Yes,
    Stopped,
}

impl Gate {
    /// A gate that is open from the start.
    pub fn open_now() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(Accepting::Yes)))
    }

    /// A gate that opens with [`Gate::open`].
    pub fn closed() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(Accepting::NotYet)))
    }

    /// Lets its loops accept (a stopped gate stays stopped).
    pub fn open(&self) {
        self.0.send_if_modified(|now| {
            let opens = *now == Accepting::NotYet;
            if opens {
                *now = Accepting::Yes;
            }
            opens
        });
    }

    /// Ends its accept loops for good: each drops its listener (the socket itself lives on in
    /// any other process holding it). Accepted connections are not touched.
    pub fn stop(&self) {
        self.0.send_replace(Accepting::Stopped);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow() == Accepting::Yes
    }

    /// Waits until the gate opens (true) or stops (false).
    async fn opened(&self) -> bool {
        let mut rx = self.0.subscribe();
        matches!(
            rx.wait_for(|a| *a != Accepting::NotYet).await.map(|a| *a),
            Ok(Accepting::Yes)
        )
    }

    /// Waits until the gate stops.
    async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|a| *a == Accepting::Stopped).await;
    }
}

/// The agent's drain: once started (a successor took the listeners, or SIGTERM), HTTP/1
/// responses the proxy serves carry `Connection: close` and HTTP/2 connections get a GOAWAY, so
/// kept-alive clients open their next connection to whichever agent accepts now, at a request
/// boundary, instead of being cut when this process exits.
#[derive(Debug, Clone)]
pub struct Drain(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Drain {
    fn default() -> Drain {
        Drain(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Drain {
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the drain starts.
    pub async fn started(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Accepts connections from `listener` for ever, handing each to `handle` on a task of its own
/// that holds one of `cap`'s permits until it ends. Never returns.
pub async fn serve<L, H, F>(name: &'static str, listener: L, cap: ConnectionCap, handle: H)
where
    L: Listener,
    H: Fn(L::Stream, L::Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_while(name, listener, cap, Gate::open_now(), handle).await;
}

/// Like [`serve`], accepting only while `gate` is open: nothing before it opens, and once it
/// stops the loop returns and drops `listener`.
pub async fn serve_while<L, H, F>(
    name: &'static str,
    listener: L,
    cap: ConnectionCap,
    gate: Gate,
    handle: H,
) where
    L: Listener,
    H: Fn(L::Stream, L::Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    if !gate.opened().await {
        return;
    }
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    let mut warned_full = false;
    let mut over_peer_limit: u64 = 0;
    let mut last_peer_warning: Option<Instant> = None;
    loop {
        if cap.permits.available_permits() == 0 {
            cap.hit(Limit::Connections);
        }
        if cap.permits.available_permits() == 0 && !warned_full {
            tracing::warn!(
                listener = name,
                cap = cap.cap,
                "connection cap reached: new connections wait in the backlog"
            );
            warned_full = true;
        }
        let permit = tokio::select! {
            permit = cap.acquire() => permit,
            () = gate.stopped() => return,
        };
        let Some(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = gate.stopped() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                if cap.permits.available_permits() > cap.cap / 2 {
                    warned_full = false;
                }
                let Some(counted) = cap.admit(L::peer_ip(&peer)) else {
                    // Closed at once: the peer holds its share already.
                    drop(stream);
                    cap.hit(Limit::ConnectionsPerSource);
                    over_peer_limit += 1;
                    if last_peer_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            listener = name,
                            ?peer,
                            limit = cap.per_peer.as_ref().map(KeyedSlots::limit),
                            closed = over_peer_limit,
                            "a peer is over its connection limit: its new connections are closed"
                        );
                        last_peer_warning = Some(Instant::now());
                        over_peer_limit = 0;
                    }
                    continue;
                };
                let registered = cap.open.insert(OpenConnection {
                    listener: name,
                    peer: L::peer_ip(&peer),
                    opened: Instant::now(),
                });
                let task = handle(stream, peer);
                tokio::spawn(async move {
                    task.await;
                    drop(registered);
                    drop(counted);
                    drop(permit);
                });
            }
            Err(e) => {
                drop(permit);
                failures += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        failures,
                        "accept failed; retrying"
                    );
                    last_warning = Some(Instant::now());
                    failures = 0;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Binds a Unix socket at `path` that only its owner may use: created with no group or other
/// permissions (so it is never open to them, not even between the bind and the chmod), then mode
/// 0600. The admin socket and the handover socket.
pub fn bind_private_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    // SAFETY: umask only changes this process's file creation mask; restored right after.
    let previous = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Raises the soft limit on open files to the hard limit (a proxy holds a descriptor per
/// connection; the default soft limit of 1,024 is reached by a few hundred flows). Returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_peer_cannot_take_more_than_its_share() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cap = ConnectionCap::new(10).per_peer(2);
        tokio::spawn(serve(
            "test",
            listener,
            cap.clone(),
            move |stream, _| async move {
                // Held until the client closes.
                let mut stream = stream;
                let mut buf = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            },
        ));
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut third, &mut buf),
        )
        .await
        .expect("the third connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let from_here = |cap: &ConnectionCap| cap.per_peer.as_ref().map_or(0, KeyedSlots::keys);
        assert_eq!(from_here(&cap), 1);
        // The two held ones are listed as open, oldest first; the closed third is not.
        let open = cap.oldest(8);
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(
            open.iter()
                .all(|c| c.listener == "test" && c.peer == Some(IpAddr::from([127, 0, 0, 1])))
        );
        assert!(open[0].opened <= open[1].opened);
        assert_eq!(cap.oldest(1).len(), 1);
        drop(held);
        // Their places are given back: a new connection is served (held open).
        let deadline = Instant::now() + Duration::from_secs(5);
        while from_here(&cap) > 0 {
            assert!(
                Instant::now() < deadline,
                "the closed connections were not uncounted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            cap.oldest(8).is_empty(),
            "closed connections are still listed"
        );
        let mut again = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let held_open = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::io::AsyncReadExt::read(&mut again, &mut buf),
        )
        .await
        .is_err();
        assert!(held_open, "a peer under its limit was closed");
    }

    #[test]
    fn the_proxy_cap_leaves_room_for_the_agent() {
        let limits = Limits::new(crate::limits::ProxyLimits::default());
        assert_eq!(ConnectionCap::for_proxy(&limits, 1024).limit(), 170);
        assert_eq!(ConnectionCap::for_proxy(&limits, 100).limit(), 64);
        assert_eq!(ConnectionCap::for_proxy(&limits, 1 << 20).limit(), 349_354);
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_and_a_closed_one_frees_a_place() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cap = ConnectionCap::new(2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(0usize);
        tokio::spawn(serve("test", listener, cap.clone(), move |stream, _| {
            let tx = tx.clone();
            let mut release = release_rx.clone();
            async move {
                let _ = tx.send(());
                let _keep = stream;
                let _ = release.changed().await;
            }
        }));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("two accepted");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "a third connection was accepted over the cap"
        );
        assert_eq!(cap.open(), 2);
        release_tx.send(1).expect("release");
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the third is accepted once a place is free");
    }
}

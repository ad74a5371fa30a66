//! Accept loops for every listener the agent owns (the admin socket, the metrics address, the
//! proxy's transparent listener, the tunnel), with the same guarantees: a failed `accept()`
//! (out of file descriptors, a connection aborted before it was taken) is logged and retried,
//! never returned, so a listener can never stop the agent; and at most `cap` connections are
//! open at once: the next `accept()` waits until one closes, leaving new connections in the
//! kernel's backlog instead of spending descriptors the proxy's flows need.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the loop waits after a failed accept (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per listener in this interval; the rest are counted into it.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Header-read timeout of the agent's HTTP servers (the admin socket, the metrics address):
/// a client must send a whole request head within it, and a kept-alive connection is closed
/// when no next request starts within it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors the agent keeps for itself (maps, programs, links, the policy files,
/// the admin listeners) when it sizes the proxy's connection cap.
const RESERVED_FDS: u64 = 512;

/// Something connections are accepted from.
pub trait Listener: Send + Sync + 'static {
    type Stream: Send + 'static;
    type Peer: std::fmt::Debug + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::UnixListener::accept(self)
    }
}

/// A bound on open connections, shared by the listeners of one service (the proxy's IPv4 and
/// IPv6 transparent listeners and its tunnel share one).
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    cap: usize,
}

impl ConnectionCap {
    pub fn new(cap: usize) -> ConnectionCap {
        let cap = cap.max(1);
        ConnectionCap {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// The proxy's cap for a process allowed `fd_limit` open files: a proxied flow holds at
    /// most three (the client's socket, the tunnel, the pod's connection), and the agent keeps
    /// [`RESERVED_FDS`] for itself.
    pub fn for_proxy(fd_limit: u64) -> ConnectionCap {
        let usable = fd_limit.saturating_sub(RESERVED_FDS) / 3;
        ConnectionCap::new(usize::try_from(usable.clamp(64, 1 << 20)).unwrap_or(64))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    pub fn limit(&self) -> usize {
        self.cap
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_owned().await.ok()
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
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    let mut warned_full = false;
    loop {
        if cap.permits.available_permits() == 0 && !warned_full {
            tracing::warn!(
                listener = name,
                cap = cap.cap,
                "connection cap reached: new connections wait in the backlog"
            );
            warned_full = true;
        }
        let Some(permit) = cap.acquire().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                if cap.permits.available_permits() > cap.cap / 2 {
                    warned_full = false;
                }
                let task = handle(stream, peer);
                tokio::spawn(async move {
                    task.await;
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

    #[test]
    fn the_proxy_cap_leaves_room_for_the_agent() {
        assert_eq!(ConnectionCap::for_proxy(1024).limit(), 170);
        assert_eq!(ConnectionCap::for_proxy(100).limit(), 64);
        assert_eq!(ConnectionCap::for_proxy(1 << 20).limit(), 349_354);
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

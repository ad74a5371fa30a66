//! Streams that note when bytes move, for the proxy's idle and slow-client timeouts: a
//! [`Watched`] stream tells its [`Watch`] of every read and write, and [`relay_until_idle`]
//! copies between two streams until either closes or no byte has moved for a while.
//! (tokio's `copy_bidirectional` has no idle timeout, and a timeout around it would cut a busy
//! flow; tokio-io-timeout times single reads, not a flow that is quiet both ways.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told of the bytes a [`Watched`] stream moves.
pub trait Watch: Send + Sync {
    fn read(&self, bytes: usize);
    fn wrote(&self, bytes: usize);
}

/// A stream whose reads and writes are told to `watch`.
pub struct Watched<S, W> {
    inner: S,
    watch: Arc<W>,
}

impl<S, W> Watched<S, W> {
    pub fn new(inner: S, watch: Arc<W>) -> Watched<S, W> {
        Watched { inner, watch }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin, W: Watch> AsyncRead for Watched<S, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.watch.read(read);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, W: Watch> AsyncWrite for Watched<S, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.watch.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.watch.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When bytes last moved, either way: milliseconds since `start`.
#[derive(Debug)]
pub struct LastActive {
    start: Instant,
    at_ms: AtomicU64,
}

impl Default for LastActive {
    fn default() -> LastActive {
        LastActive {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl LastActive {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn touch(&self) {
        self.at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.at_ms.load(Ordering::Relaxed)),
        )
    }
}

impl Watch for LastActive {
    fn read(&self, _: usize) {
        self.touch();
    }
    fn wrote(&self, _: usize) {
        self.touch();
    }
}

/// Waits until `active` has been quiet for `idle` (checked a few times per period, so a flow
/// is closed between `idle` and 1.25 × `idle` after its last byte).
pub async fn quiet(active: &LastActive, idle: Duration) {
    let step = (idle / 4).max(Duration::from_millis(50));
    loop {
        let quiet = active.quiet_for();
        if quiet >= idle {
            return;
        }
        tokio::time::sleep((idle - quiet).min(step).max(Duration::from_millis(10))).await;
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// One side closed (or failed).
    Closed,
    /// No byte either way for the idle timeout: both streams were dropped.
    Idle,
}

/// Copies between `a` and `b` (buffers of `buffer` bytes each way) until either side closes,
/// or no byte has moved either way for `idle`.
pub async fn relay_until_idle<A, B>(a: A, b: B, buffer: usize, idle: Duration) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let active = Arc::new(LastActive::default());
    let mut a = Watched::new(a, Arc::clone(&active));
    let mut b = b;
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer, buffer) => RelayEnd::Closed,
        () = quiet(&active, idle) => RelayEnd::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_flow_ends_and_a_busy_one_does_not() {
        let (client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay_until_idle(a, b, 1024, Duration::from_secs(10)));
        let mut client = client;
        // Busy for 30 s: a byte every 5 s keeps it open.
        for _ in 0..6 {
            client.write_all(b"x").await.expect("write");
            let mut got = [0u8; 1];
            server.read_exact(&mut got).await.expect("relayed");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert!(!relay.is_finished(), "a busy flow was closed");
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(relay.await.expect("relay"), RelayEnd::Idle);
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}

//! A lingering close for the client side of the proxy's HTTP server: when hyper is done with a
//! connection (it has written and shut down its side), the stream is not dropped at once but
//! read until the client closes too, for at most [`LINGER`]. Dropping a stream whose peer may
//! still send resets it — a TCP RST, or through the tunnel an HTTP/2 `RST_STREAM(CANCEL)` — and
//! a reset can discard the last response before the client has read it (seen under load: an
//! HTTP/1.0 client through the tunnel read nothing at all). Servers do the same for TCP
//! (nginx's `lingering_close`); hyper leaves it to the caller.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// How long a closed connection is drained before it is dropped anyway.
pub const LINGER: Duration = Duration::from_secs(5);

/// `inner`, shut down and drained on a task of its own when dropped.
pub struct Lingering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    inner: Option<S>,
    /// hyper closed our side gracefully (a response it gave up on mid-way is not: that
    /// connection is dropped at once, so the client sees it cut).
    shut_down: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<S> {
    pub fn new(inner: S) -> Lingering<S> {
        Lingering {
            inner: Some(inner),
            shut_down: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        if !self.shut_down {
            return;
        }
        let (Some(mut inner), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = inner.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Some(inner) => Pin::new(inner).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = match &mut self.inner {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        };
        if let Poll::Ready(Ok(())) = polled {
            self.shut_down = true;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn a_dropped_stream_is_read_until_the_peer_closes() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut lingering = Lingering::new(ours);
        lingering
            .write_all(b"response")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        lingering.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        drop(lingering);
        // The peer still sends after our side is done: with the stream dropped outright this
        // write would fail (broken pipe); lingering, it is read and discarded.
        let mut got = Vec::new();
        theirs
            .read_to_end(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, b"response");
        theirs
            .write_all(&[0u8; 1024])
            .await
            .unwrap_or_else(|e| panic!("the lingering side stopped reading: {e}"));
        theirs.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// hyper gave up on it (a response cut mid-way): dropped at once, no graceful end.
    #[tokio::test]
    async fn a_stream_dropped_without_a_shutdown_ends_at_once() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut lingering = Lingering::new(ours);
        lingering
            .write_all(b"part")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(lingering);
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), theirs.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the peer waited for the linger to end");
        assert_eq!(got, b"part");
    }
}

//! The slow-client and idle limits of one HTTP connection (settings in `crate::limits`):
//!
//! - [`ConnectionClock`] watches the client's stream and the requests in progress. With none
//!   in progress, an HTTP/1 connection that has started a request head must finish it within
//!   the head timeout (slowloris), and one that has sent nothing must not stay so for the idle
//!   timeout (kept-alive connections); an HTTP/2 connection with no open stream for the idle
//!   timeout is closed (its PINGs do not keep it open). [`ConnectionClock::expired`] resolves
//!   with the limit that ended the connection.
//! - [`TimedBody`] holds a request body to its timeout, extended by one second per
//!   `request_body_min_rate` bytes received (a slow POST is cut; a large upload at a sane rate
//!   is not). Past it the body fails with [`BodyTimeout`] and the request is answered `408`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use crate::activity::Watch;
use crate::limits::{Limit, Limits};

/// Where one connection stands.
#[derive(Debug)]
struct ClockState {
    /// Requests (HTTP/2: streams) being served, from their head to the end of the response.
    in_flight: usize,
    /// Since when none has been in flight.
    idle_since: Instant,
    /// HTTP/1: when the first byte of the next request head arrived (none in flight).
    head_started: Option<Instant>,
}

/// The clock of one client connection; see the module docs.
#[derive(Debug)]
pub struct ConnectionClock {
    http2: bool,
    state: Mutex<ClockState>,
}

impl ConnectionClock {
    pub fn new(http2: bool) -> Arc<ConnectionClock> {
        Arc::new(ConnectionClock {
            http2,
            state: Mutex::new(ClockState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head has arrived; it is in flight until the guard is dropped (with the
    /// response body, once it has been written).
    pub fn request(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.head_started = None;
        InFlight {
            clock: Arc::clone(self),
        }
    }

    /// The limit this connection is over now, if any.
    fn over(&self, limits: &Limits) -> Option<(Limit, Instant)> {
        let state = self.state();
        if state.in_flight > 0 {
            return None;
        }
        let settings = &limits.settings;
        match state.head_started {
            Some(started) if !self.http2 => Some((
                Limit::RequestHeadTimeout,
                started + settings.request_head_timeout,
            )),
            _ => Some((
                Limit::HttpIdleTimeout,
                state.idle_since + settings.http_idle_timeout,
            )),
        }
    }

    /// Resolves when the connection is over one of its limits (counted), which ends it.
    pub async fn expired(&self, limits: &Limits) -> Limit {
        // Rechecked at least this often, so a request that starts or ends moves the deadline.
        let step = Duration::from_millis(250).max(
            limits
                .settings
                .request_head_timeout
                .min(limits.settings.http_idle_timeout)
                / 8,
        );
        loop {
            let now = Instant::now();
            match self.over(limits) {
                Some((limit, deadline)) if deadline <= now => {
                    limits.hit(limit);
                    return limit;
                }
                Some((_, deadline)) => tokio::time::sleep_until(deadline.min(now + step)).await,
                None => tokio::time::sleep(step).await,
            }
        }
    }
}

impl Watch for ConnectionClock {
    fn read(&self, _: usize) {
        if self.http2 {
            return;
        }
        let mut state = self.state();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
        }
    }

    fn wrote(&self, _: usize) {}
}

/// A request in flight on its connection's clock.
#[derive(Debug)]
pub struct InFlight {
    clock: Arc<ConnectionClock>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.clock.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.head_started = None;
        }
    }
}

/// A response body that keeps its request in flight until it has been written (or dropped).
pub struct WhileInFlight<B> {
    pub inner: B,
    pub _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for WhileInFlight<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that took longer than its limit allows.
#[derive(Debug, thiserror::Error)]
#[error("the request body took longer than its timeout")]
pub struct BodyTimeout;

/// A request body held to its timeout (see the module docs); `expired` tells the request's
/// handler that it failed for this reason.
pub struct TimedBody<B> {
    inner: B,
    started: Instant,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    limits: Arc<Limits>,
    expired: Arc<AtomicBool>,
    done: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: Arc<Limits>) -> (TimedBody<B>, Arc<AtomicBool>) {
        let started = Instant::now();
        let expired = Arc::new(AtomicBool::new(false));
        let deadline = Box::pin(tokio::time::sleep_until(
            started + limits.settings.request_body_timeout,
        ));
        let body = TimedBody {
            inner,
            started,
            received: 0,
            deadline,
            limits,
            expired: Arc::clone(&expired),
            done: false,
        };
        (body, expired)
    }

    /// The deadline for what has been received so far.
    fn deadline(&self) -> Instant {
        let settings = &self.limits.settings;
        let earned = self.received / settings.request_body_min_rate.max(1);
        self.started + settings.request_body_timeout + Duration::from_secs(earned)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    let deadline = self.deadline();
                    if deadline > self.deadline.deadline() {
                        self.deadline.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    self.done = true;
                    self.expired.store(true, Ordering::Relaxed);
                    self.limits.hit(Limit::RequestBodyTimeout);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ProxyLimits;
    use http_body_util::BodyExt as _;

    fn limits() -> Arc<Limits> {
        Limits::new(ProxyLimits {
            request_head_timeout: Duration::from_secs(5),
            request_body_timeout: Duration::from_secs(10),
            request_body_min_rate: 100,
            http_idle_timeout: Duration::from_secs(20),
            ..ProxyLimits::default()
        })
    }

    /// A body fed by the test: each `send` is one frame.
    type Frames =
        Pin<Box<dyn futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send>>;

    fn channel() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        http_body_util::StreamBody<Frames>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(Box::pin(stream)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_fails_at_its_deadline_and_is_counted() {
        let limits = limits();
        let (tx, inner) = channel();
        let (mut body, expired) = TimedBody::new(inner, Arc::clone(&limits));
        // 50 bytes every 4 s: 12.5 B/s, far under the 100 B/s that would extend it.
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                if tx.send(Bytes::from(vec![b'a'; 50])).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        });
        let started = Instant::now();
        let mut failed = None;
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                failed = Some(e);
                break;
            }
        }
        let failed = failed.expect("the body failed");
        assert!(failed.is::<BodyTimeout>(), "{failed}");
        assert!(expired.load(Ordering::Relaxed));
        // 10 s, plus 1 s for each 100 bytes received (at most 150 by then).
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took <= Duration::from_secs(12),
            "{took:?}"
        );
        assert_eq!(limits.hits.get(Limit::RequestBodyTimeout), 1);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_is_not_cut() {
        let limits = limits();
        let (tx, inner) = channel();
        let (body, expired) = TimedBody::new(inner, Arc::clone(&limits));
        // 200 B/s for 40 s: four times the base timeout.
        tokio::spawn(async move {
            for _ in 0..40 {
                let _ = tx.send(Bytes::from(vec![b'a'; 200])).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let whole = body.collect().await.expect("the whole body").to_bytes();
        assert_eq!(whole.len(), 8000);
        assert!(!expired.load(Ordering::Relaxed));
        assert_eq!(limits.hits.get(Limit::RequestBodyTimeout), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_head_must_finish_in_time_and_an_idle_connection_is_closed() {
        let limits = limits();
        // A head started and never finished: the head timeout, from its first byte.
        let clock = ConnectionClock::new(false);
        tokio::time::sleep(Duration::from_secs(3)).await;
        clock.read(1);
        let started = Instant::now();
        assert_eq!(clock.expired(&limits).await, Limit::RequestHeadTimeout);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "{took:?}"
        );
        // A request in flight holds the connection however long it takes; once it ends, the
        // idle timeout runs from there.
        let clock = ConnectionClock::new(false);
        let request = clock.request();
        let waiting = tokio::time::timeout(Duration::from_secs(60), clock.expired(&limits)).await;
        assert!(waiting.is_err(), "a connection was closed under a request");
        drop(request);
        let ended = Instant::now();
        assert_eq!(clock.expired(&limits).await, Limit::HttpIdleTimeout);
        let took = ended.elapsed();
        assert!(
            took >= Duration::from_secs(20) && took < Duration::from_secs(21),
            "{took:?}"
        );
        assert_eq!(limits.hits.get(Limit::RequestHeadTimeout), 1);
        assert_eq!(limits.hits.get(Limit::HttpIdleTimeout), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_without_a_stream_do_not_keep_a_connection_open() {
        let limits = limits();
        let clock = ConnectionClock::new(true);
        let pinging = async {
            loop {
                clock.read(17);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let limit = tokio::select! {
            limit = clock.expired(&limits) => limit,
            () = pinging => unreachable!(),
        };
        assert_eq!(limit, Limit::HttpIdleTimeout);
    }
}

//! The connection to the pod: opened when the first request of a client connection passes
//! the filters (a connection whose requests are all refused never reaches the pod), in the
//! client's protocol (HTTP/1.1, one request at a time; HTTP/2, streams multiplexed).

use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::body::UpstreamBody;

/// The connection to the pod, in the client's protocol.
pub enum UpstreamConnection {
    /// One request at a time.
    H1(Mutex<hyper::client::conn::http1::SendRequest<UpstreamBody>>),
    /// Streams multiplexed; the handle is cloned per request.
    H2(hyper::client::conn::http2::SendRequest<UpstreamBody>),
}

impl UpstreamConnection {
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            UpstreamConnection::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await
            }
            UpstreamConnection::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

/// Opens the connection to the pod; `None` if it cannot (the connector counts and logs why).
pub type Connect<U> = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Option<U>> + Send>> + Send>;

/// A connector for a stream that is already open.
pub fn connected<U: Send + 'static>(stream: U) -> Connect<U> {
    Box::new(move || Box::pin(std::future::ready(Some(stream))))
}

/// What opens the pod's connection, once.
type Opening = Pin<Box<dyn Future<Output = Option<UpstreamConnection>> + Send>>;

/// Where the opening of the pod's connection stands.
enum OpenState {
    NotStarted(Opening),
    /// On a task of its own: a request cancelled while waiting (an HTTP/2 stream reset, a
    /// client gone) leaves it running for the next one.
    Running(tokio::task::JoinHandle<Option<UpstreamConnection>>),
    Done,
}

/// The connection to the pod, opened when the first request passes the filters: a connection
/// whose requests are all refused never reaches the pod.
pub struct LazyUpstream {
    state: tokio::sync::Mutex<OpenState>,
    open: tokio::sync::OnceCell<Option<UpstreamConnection>>,
}

impl LazyUpstream {
    pub fn new<U>(connect: Connect<U>, http2: bool) -> LazyUpstream
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opening: Opening =
            Box::pin(async move { connect_upstream(connect().await?, http2).await });
        LazyUpstream {
            state: tokio::sync::Mutex::new(OpenState::NotStarted(opening)),
            open: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection, opened by the first caller (later ones wait for it); `None` if it
    /// could not be opened.
    pub async fn get(&self) -> Option<&UpstreamConnection> {
        self.open
            .get_or_init(|| async {
                let mut state = self.state.lock().await;
                if let OpenState::NotStarted(_) = &*state
                    && let OpenState::NotStarted(opening) =
                        std::mem::replace(&mut *state, OpenState::Done)
                {
                    *state = OpenState::Running(tokio::spawn(opening));
                }
                let OpenState::Running(task) = &mut *state else {
                    return None;
                };
                let opened = task.await.ok().flatten();
                *state = OpenState::Done;
                opened
            })
            .await
            .as_ref()
    }
}

/// The client side of the connection to the pod, driven by a task of its own.
async fn connect_upstream<U>(upstream: U, http2: bool) -> Option<UpstreamConnection>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(upstream);
    let result = if http2 {
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map(|(sender, connection)| {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "l7: upstream connection ended");
                    }
                });
                UpstreamConnection::H2(sender)
            })
    } else {
        hyper::client::conn::http1::handshake(io)
            .await
            .map(|(sender, connection)| {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "l7: upstream connection ended");
                    }
                });
                UpstreamConnection::H1(Mutex::new(sender))
            })
    };
    result
        .map_err(|e| tracing::debug!(error = %e, http2, "l7: upstream handshake failed"))
        .ok()
}

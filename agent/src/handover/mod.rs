//! Hot restart: a new agent process takes over from the running one without a gap, as Envoy's
//! hot restart does. The running agent serves a Unix socket (`--handover-socket`, mode 0600,
//! peers of another user refused); a new `rampart run` connects to it first thing:
//!
//! 1. new → old `Hello` (its version, node and pin root; the old agent refuses another node's).
//! 2. The old agent pauses its policy controller (nothing it does writes the kernel from here)
//!    and stops reading the kernel's event ring; it sends its listening sockets (`SCM_RIGHTS`:
//!    the metrics address, the admin socket, the proxy's transparent listeners, the tunnel) and
//!    an `Offer`: their names and the state that carries over (`rampart policy push`'s files).
//! 3. new → old `TakingKernel`, then the new agent loads its programs into the pinned links and
//!    installs its first policy generation; it accepts on the shared sockets only once that
//!    generation is in force, then says `Ready`.
//! 4. The old agent stops accepting (the sockets live on in the new process; connections in
//!    their backlogs go to it), answers `Draining`, lets its open connections finish (HTTP
//!    responses carry `Connection: close`, see [`crate::listen::Drain`]) for up to its grace
//!    period, and exits.
//!
//! If the new agent goes away before `TakingKernel`, the old one resumes as if nothing
//! happened; after it, the old agent's view of the kernel is stale, so it exits (the kernel
//! keeps enforcing what is pinned; the next agent adopts it).

pub mod messages;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use messages::{FromPredecessor, FromSuccessor, Hello, Offer};
use wire::WireError;

/// How long the new agent waits for the old one's offer (it pauses its controller first, which
/// waits for a reload in progress).
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer of the handover socket has to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the agent there runs as uid {uid}, not as this agent's user")]
    Stranger { path: String, uid: u32 },
    #[error("{path}: the running agent refused the handover: {reason}")]
    Refused { path: String, reason: String },
    #[error("{path}: no offer from the running agent within {OFFER_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("{path}: the running agent sent {fds} descriptors for {names} listeners")]
    Mismatch {
        path: String,
        fds: usize,
        names: usize,
    },
    #[error("{path}: {source}")]
    Wire { path: String, source: WireError },
    #[error("binding --handover-socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// The listening sockets a process inherited from its predecessor, and those it offers to its
/// successor.
#[derive(Debug, Default)]
pub struct Sockets {
    inherited: Mutex<HashMap<String, OwnedFd>>,
    offered: Mutex<Vec<(String, OwnedFd)>>,
}

impl Sockets {
    /// The predecessor's listener `name` as a TCP listener, if it listens on `want` (a new
    /// agent with another address binds its own: `None`).
    pub fn inherit_tcp(&self, name: &str, want: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.take(name)?;
        let listener = std::net::TcpListener::from(fd);
        match listener.local_addr() {
            Ok(at) if at == want => match listener.set_nonblocking(true) {
                Ok(()) => {
                    tracing::info!(listener = name, %at, "listening on the socket the previous agent handed over");
                    Some(listener)
                }
                Err(e) => {
                    tracing::warn!(listener = name, "inherited listener: {e}; binding anew");
                    None
                }
            },
            Ok(at) => {
                tracing::info!(listener = name, inherited = %at, wanted = %want, "the previous agent listened elsewhere; binding anew");
                None
            }
            Err(e) => {
                tracing::warn!(listener = name, "inherited listener: {e}; binding anew");
                None
            }
        }
    }

    /// The predecessor's Unix listener `name`, if it is bound at `want`.
    pub fn inherit_unix(
        &self,
        name: &str,
        want: &Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        let fd = self.take(name)?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        let at = listener.local_addr().ok()?;
        if at.as_pathname() != Some(want) {
            tracing::info!(listener = name, wanted = %want.display(), "the previous agent listened elsewhere; binding anew");
            return None;
        }
        listener.set_nonblocking(true).ok()?;
        tracing::info!(listener = name, path = %want.display(), "listening on the socket the previous agent handed over");
        Some(listener)
    }

    fn take(&self, name: &str) -> Option<OwnedFd> {
        self.inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
    }

    /// Offers `socket` as `name` to a successor (a duplicate descriptor is kept for it).
    pub fn offer(&self, name: &str, socket: BorrowedFd<'_>) -> std::io::Result<()> {
        let fd = socket.try_clone_to_owned()?;
        let mut offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        offered.retain(|(n, _)| n != name);
        offered.push((name.to_owned(), fd));
        Ok(())
    }

    /// Closes the inherited sockets nobody took (a listener this agent does not have: kept, the
    /// socket would stay bound and queue connections nobody accepts); returns their names.
    pub fn close_unused(&self) -> Vec<String> {
        let mut inherited = self
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = inherited.drain().map(|(name, _fd)| name).collect();
        names.sort();
        names
    }

    /// Drops the offered duplicates (after a handover: the successor holds its own).
    fn release_offered(&self) {
        self.offered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn offered(&self) -> (Vec<String>, Vec<RawFd>) {
        let offered = self.offered.lock().unwrap_or_else(PoisonError::into_inner);
        offered
            .iter()
            .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
            .unzip()
    }
}

/// A handover in progress, on the new agent's side.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    path: PathBuf,
    pub offer: Offer,
}

/// Connects to the running agent at `path`, if there is one, and asks it to hand over: `None`
/// when no agent listens there (no socket, or a stale one, which is removed). The inherited
/// sockets go into `sockets`.
pub async fn find_predecessor(
    path: &Path,
    hello: Hello,
    sockets: &Sockets,
) -> Result<Option<Takeover>, HandoverError> {
    let shown = path.display().to_string();
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %shown, "a stale handover socket (no agent listens): removed");
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        Err(source) => {
            return Err(HandoverError::Connect {
                path: shown,
                source,
            });
        }
    };
    check_peer(&stream, &shown)?;
    let wire = |source| HandoverError::Wire {
        path: shown.clone(),
        source,
    };
    wire::send(&mut stream, &FromSuccessor::Hello(hello))
        .await
        .map_err(wire)?;
    let exchange = async {
        let fds = wire::receive_fds(&stream).await?;
        let message: FromPredecessor = wire::receive(&mut stream).await?;
        Ok::<_, WireError>((fds, message))
    };
    let (fds, message) = tokio::time::timeout(OFFER_TIMEOUT, exchange)
        .await
        .map_err(|_| HandoverError::Timeout {
            path: shown.clone(),
        })?
        .map_err(wire)?;
    let offer = match message {
        FromPredecessor::Offer(offer) => offer,
        FromPredecessor::Refused { reason } => {
            return Err(HandoverError::Refused {
                path: shown,
                reason,
            });
        }
        FromPredecessor::Draining { .. } => {
            return Err(HandoverError::Refused {
                path: shown,
                reason: "unexpected answer".into(),
            });
        }
    };
    if fds.len() != offer.listeners.len() {
        return Err(HandoverError::Mismatch {
            path: shown,
            fds: fds.len(),
            names: offer.listeners.len(),
        });
    }
    {
        let mut inherited = sockets
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, fd) in offer.listeners.iter().zip(fds) {
            inherited.insert(name.clone(), fd);
        }
    }
    Ok(Some(Takeover {
        stream,
        path: path.to_owned(),
        offer,
    }))
}

impl Takeover {
    /// Tells the old agent that this one now writes the kernel.
    pub async fn taking_kernel(&mut self) -> Result<(), HandoverError> {
        self.say(FromSuccessor::TakingKernel).await
    }

    /// Tells the old agent that this one serves: it stops accepting and drains. Returns the
    /// connections it drains.
    pub async fn ready(mut self) -> Result<u64, HandoverError> {
        self.say(FromSuccessor::Ready).await?;
        let answer = tokio::time::timeout(OFFER_TIMEOUT, wire::receive(&mut self.stream)).await;
        match answer {
            Ok(Ok(FromPredecessor::Draining { connections })) => Ok(connections),
            Ok(Ok(_)) => Err(HandoverError::Refused {
                path: self.path.display().to_string(),
                reason: "unexpected answer to ready".into(),
            }),
            Ok(Err(source)) => Err(HandoverError::Wire {
                path: self.path.display().to_string(),
                source,
            }),
            Err(_) => Err(HandoverError::Timeout {
                path: self.path.display().to_string(),
            }),
        }
    }

    async fn say(&mut self, message: FromSuccessor) -> Result<(), HandoverError> {
        wire::send(&mut self.stream, &message)
            .await
            .map_err(|source| HandoverError::Wire {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// What the old agent does at each step of a handover (the composition root implements it).
pub trait Predecessor: Send + Sync + 'static {
    /// Stops writing the kernel and reading its events; returns the pushed files, or why it
    /// cannot hand over now.
    fn pause(&self) -> impl std::future::Future<Output = Result<Offer, String>> + Send;
    /// The successor went away before it took the kernel: carry on.
    fn resume(&self);
    /// The successor went away after it took the kernel: this agent's view of it is stale.
    fn kernel_lost(&self);
    /// The successor serves: stop accepting and drain; returns the connections being drained.
    fn handed_over(&self) -> u64;
}

/// This agent's handover socket, bound at `path` (mode 0600; an old file there is replaced).
pub fn bind(path: &Path) -> Result<UnixListener, HandoverError> {
    let bind_err = |source| HandoverError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    crate::listen::bind_private_unix(path).map_err(bind_err)
}

/// Serves handovers on `listener` until one completes. `me` is this agent's node and pin
/// root: a successor of another node or root is refused.
pub async fn serve<P: Predecessor>(
    listener: UnixListener,
    me: Hello,
    sockets: Arc<Sockets>,
    predecessor: Arc<P>,
) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("handover socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = check_peer(&stream, "handover socket") {
            tracing::warn!("{e}");
            continue;
        }
        match hand_over(&mut stream, &me, &sockets, predecessor.as_ref()).await {
            Ok(connections) => {
                tracing::info!(connections, "handed over: draining");
                sockets.release_offered();
                return;
            }
            Err(e) => tracing::warn!("handover failed: {e}"),
        }
    }
}

/// Steps 2 to 4, on the old agent's side.
async fn hand_over<P: Predecessor>(
    stream: &mut UnixStream,
    me: &Hello,
    sockets: &Sockets,
    predecessor: &P,
) -> Result<u64, WireError> {
    // A peer that connects and says nothing must not hold the socket: the next agent waits.
    let first = tokio::time::timeout(HELLO_TIMEOUT, wire::receive(stream))
        .await
        .map_err(|_| WireError::Closed)??;
    let FromSuccessor::Hello(hello) = first else {
        return refuse(stream, "the first message must be hello").await;
    };
    if hello.node_name != me.node_name || hello.bpffs_root != me.bpffs_root {
        return refuse(
            stream,
            &format!(
                "this agent serves node {:?} with pins under {}, not node {:?} under {}",
                me.node_name, me.bpffs_root, hello.node_name, hello.bpffs_root
            ),
        )
        .await;
    }
    tracing::info!(version = %hello.version, pid = hello.pid, "a new agent asks to take over");
    let mut offer = match predecessor.pause().await {
        Ok(offer) => offer,
        Err(reason) => return refuse(stream, &reason).await,
    };
    let (names, fds) = sockets.offered();
    offer.version = me.version.clone();
    offer.pid = me.pid;
    offer.listeners = names;
    let sent = async {
        wire::send_fds(stream, &fds).await?;
        wire::send(stream, &FromPredecessor::Offer(offer)).await
    }
    .await;
    if let Err(e) = sent {
        predecessor.resume();
        return Err(e);
    }
    let mut kernel_taken = false;
    loop {
        match wire::receive::<FromSuccessor>(stream).await {
            Ok(FromSuccessor::TakingKernel) => {
                tracing::info!("the new agent takes over the kernel programs and maps");
                kernel_taken = true;
            }
            Ok(FromSuccessor::Ready) => {
                let connections = predecessor.handed_over();
                // The successor serves whether or not it hears this.
                let _ = wire::send(stream, &FromPredecessor::Draining { connections }).await;
                return Ok(connections);
            }
            Ok(FromSuccessor::Hello(_)) | Err(_) => {
                if kernel_taken {
                    predecessor.kernel_lost();
                } else {
                    predecessor.resume();
                }
                return Err(WireError::Closed);
            }
        }
    }
}

async fn refuse(stream: &mut UnixStream, reason: &str) -> Result<u64, WireError> {
    tracing::warn!(reason, "refused a handover");
    wire::send_fds(stream, &[]).await?;
    wire::send(
        stream,
        &FromPredecessor::Refused {
            reason: reason.to_owned(),
        },
    )
    .await?;
    Err(WireError::Closed)
}

/// Only a process of this agent's own user may take part in a handover.
fn check_peer(stream: &UnixStream, what: &str) -> Result<(), HandoverError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => Ok(()),
        Ok(cred) => Err(HandoverError::Stranger {
            path: what.to_owned(),
            uid: cred.uid(),
        }),
        Err(source) => Err(HandoverError::Connect {
            path: what.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;

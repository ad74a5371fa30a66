//! The handover socket's framing: messages are JSON, each preceded by its length (4 bytes, big
//! endian); file descriptors travel as `SCM_RIGHTS` on a one-byte message of their own, sent
//! just before the message that names them. Nothing here knows what the messages mean.
//!
//! Hand-written because no maintained crate passes descriptors over tokio's `UnixStream`
//! (`nix` does the `sendmsg`/`recvmsg` part); it is two small functions on top of it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;

/// Largest message either side accepts (the pushed policy files are at most 32 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most descriptors one message may carry (the agent passes five listeners).
pub const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the other agent closed the handover connection")]
    Closed,
    #[error("handover connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a handover message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a handover message is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("passing file descriptors: {0}")]
    Fds(String),
}

/// Sends `message`.
pub async fn send<T: Serialize>(stream: &mut UnixStream, message: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge(body.len()))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await?;
    Ok(())
}

/// Receives one message.
pub async fn receive<T: DeserializeOwned>(stream: &mut UnixStream) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(serde_json::from_slice(&body)?)
}

/// Sends `fds` (duplicated into the receiver by the kernel; ours stay open).
pub async fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> Result<(), WireError> {
    if fds.len() > MAX_FDS {
        return Err(WireError::Fds(format!(
            "{} descriptors, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let raw = stream.as_raw_fd();
    stream
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(b"F")];
            let rights = [ControlMessage::ScmRights(fds)];
            // An empty SCM_RIGHTS is not valid: no descriptors, no control message.
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
            sendmsg::<()>(raw, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        })
        .await?;
    Ok(())
}

/// Receives the descriptors of one [`send_fds`], owned from now on (closed on drop).
pub async fn receive_fds(stream: &UnixStream) -> Result<Vec<OwnedFd>, WireError> {
    let raw = stream.as_raw_fd();
    stream
        .async_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut iov = [IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let msg = recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(std::io::Error::from)?;
            if msg.bytes == 0 {
                return Ok(Err(WireError::Closed));
            }
            let mut fds = Vec::new();
            let cmsgs = match msg.cmsgs() {
                Ok(c) => c,
                Err(e) => return Ok(Err(WireError::Fds(format!("truncated: {e}")))),
            };
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process for
                    // us; nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok(Ok(fds))
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    #[tokio::test]
    async fn messages_and_descriptors_cross_in_order() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        let (mut pipe_read, mut pipe_write) = std::io::pipe().expect("pipe");
        send_fds(&a, &[pipe_write.as_raw_fd()])
            .await
            .expect("send fds");
        send(&mut a, &vec!["pipe".to_owned()]).await.expect("send");
        let fds = receive_fds(&b).await.expect("receive fds");
        let names: Vec<String> = receive(&mut b).await.expect("receive");
        assert_eq!((fds.len(), names), (1, vec!["pipe".to_owned()]));
        // The received descriptor is the same pipe.
        let mut passed = std::fs::File::from(fds.into_iter().next().expect("one"));
        passed.write_all(b"x").expect("write");
        pipe_write.write_all(b"y").expect("write");
        let mut got = [0u8; 2];
        pipe_read.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"xy");
    }

    #[tokio::test]
    async fn a_closed_peer_and_an_oversized_length_are_errors() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        a.write_all(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes())
            .await
            .expect("write");
        assert!(matches!(
            receive::<String>(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
        drop(a);
        assert!(matches!(
            receive::<String>(&mut b).await,
            Err(WireError::Closed)
        ));
    }
}

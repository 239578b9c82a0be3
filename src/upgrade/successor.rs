//! The successor's side of an upgrade: ask the running process for its
//! sockets, report ready, learn when it has let go, confirm the take-over.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::fds::{handover_fd_from_env, recv_frame};
use super::wire::{FromSuccessor, HANDOVER_VERSION, Header, OLDEST_HANDOVER_VERSION, ToSuccessor};
use super::{HandoverError, Inherited};
use crate::control::{Command, PROTOCOL_VERSION, Request};
use crate::metrics::History;

/// The connection to the running process, with what it handed over.
pub struct Predecessor {
    stream: UnixStream,
    pub header: Header,
    pub inherited: Inherited,
}

/// How the predecessor let go.
#[derive(Debug)]
pub enum Release {
    /// It stopped accepting and serving admin; with version 2, everything
    /// earlier generations counted up to that instant.
    Released(Option<History>),
    /// It went away (killed mid-hand-over): everything is ours all the same.
    Gone,
    /// It rolled back the upgrade; it will stop us.
    Refused(String),
}

/// The hand-over connection: the socketpair end our predecessor passed
/// when it spawned us, else (a supervisor started us) the control socket.
async fn connect(path: &Path) -> Result<UnixStream, HandoverError> {
    if let Some(fd) = handover_fd_from_env() {
        let std = std::os::unix::net::UnixStream::from(fd);
        let stream = std
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(std));
        match stream {
            Ok(s) => return Ok(s),
            Err(e) => tracing::warn!(error = %e, "inherited hand-over connection unusable"),
        }
    }
    UnixStream::connect(path)
        .await
        .map_err(|source| HandoverError::NoPredecessor {
            path: path.display().to_string(),
            source,
        })
}

async fn request(stream: &mut UnixStream, error: Option<String>) -> Result<(), HandoverError> {
    let request = Request {
        v: PROTOCOL_VERSION,
        command: Command::Handover {
            pid: std::process::id(),
            error,
            handover_version: Some(HANDOVER_VERSION),
        },
    };
    let mut line = serde_json::to_vec(&request).expect("requests serialize");
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| HandoverError::Request(e.to_string()))
}

/// Tells the running process that our config is invalid, so it rolls back
/// at once with this reason.
pub async fn report_config_error(
    control_socket: &Path,
    reason: String,
) -> Result<(), HandoverError> {
    let mut stream = connect(control_socket).await?;
    request(&mut stream, Some(reason)).await
}

/// Asks for the sockets and receives them, all or nothing.
pub async fn receive(control_socket: &Path) -> Result<Predecessor, HandoverError> {
    let mut stream = connect(control_socket).await?;
    request(&mut stream, None).await?;
    let header = match next(&stream).await? {
        (ToSuccessor::Header(h), _) => *h,
        (ToSuccessor::Refused { reason }, _) => return Err(HandoverError::Refused(reason)),
        (other, _) => {
            return Err(HandoverError::Protocol(format!(
                "expected a header, got {other:?}"
            )));
        }
    };
    let mut sockets: HashMap<String, OwnedFd> = HashMap::new();
    loop {
        match next(&stream).await? {
            (ToSuccessor::Sockets { names }, fds) => {
                if names.len() != fds.len() {
                    return Err(HandoverError::Protocol(format!(
                        "{} names but {} descriptors",
                        names.len(),
                        fds.len()
                    )));
                }
                sockets.extend(names.into_iter().zip(fds));
            }
            (ToSuccessor::End, _) => break,
            (ToSuccessor::Refused { reason }, _) => return Err(HandoverError::Refused(reason)),
            (other, _) => return Err(HandoverError::Protocol(format!("unexpected {other:?}"))),
        }
    }
    tracing::info!(
        predecessor = header.pid,
        generation = header.generation,
        sockets = ?sockets.keys().collect::<Vec<_>>(),
        "received the listening sockets"
    );
    Ok(Predecessor {
        stream,
        header,
        inherited: Inherited::from_named(sockets),
    })
}

/// Reads one frame; the header's version is checked before anything else
/// of it is read, so an unreadable format is refused cleanly.
pub(super) async fn next(
    stream: &UnixStream,
) -> Result<(ToSuccessor, Vec<OwnedFd>), HandoverError> {
    let (payload, fds) = recv_frame(stream)
        .await
        .map_err(|e| HandoverError::Protocol(e.to_string()))?
        .ok_or_else(|| HandoverError::Protocol("the running baton closed the connection".into()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    if value.get("frame").and_then(|f| f.as_str()) == Some("header") {
        let theirs = value
            .get("handover_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if !(OLDEST_HANDOVER_VERSION..=HANDOVER_VERSION).contains(&theirs) {
            let error = HandoverError::Version {
                theirs,
                oldest: OLDEST_HANDOVER_VERSION,
                ours: HANDOVER_VERSION,
            };
            let _ = say(
                stream,
                &FromSuccessor::Failed {
                    reason: error.to_string(),
                },
            )
            .await;
            return Err(error);
        }
    }
    let frame =
        serde_json::from_value(value).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    Ok((frame, fds))
}

pub(super) async fn say(stream: &UnixStream, event: &FromSuccessor) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).expect("events serialize");
    line.push(b'\n');
    let mut written = 0;
    while written < line.len() {
        stream.writable().await?;
        match stream.try_write(&line[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Predecessor {
    pub async fn ready(&self, generation: u64) -> std::io::Result<()> {
        say(
            &self.stream,
            &FromSuccessor::Ready {
                pid: std::process::id(),
                generation,
            },
        )
        .await
    }

    pub async fn failed(&self, reason: String) {
        let _ = say(&self.stream, &FromSuccessor::Failed { reason }).await;
    }

    /// Waits for the predecessor to let go.
    pub async fn released(&self) -> Release {
        match next(&self.stream).await {
            Ok((ToSuccessor::Released { history }, _)) => Release::Released(history),
            Ok((ToSuccessor::Refused { reason }, _)) => Release::Refused(reason),
            Ok((other, _)) => Release::Refused(format!("unexpected {other:?}")),
            Err(_) => Release::Gone,
        }
    }

    /// The hand-over connection, to receive moved streams on (format 3).
    pub fn into_stream(self) -> Option<UnixStream> {
        (self.header.handover_version >= 3).then_some(self.stream)
    }

    /// Confirms that we serve everything now, so the predecessor closes its
    /// sockets (version 2). If it is gone, there is nobody to tell.
    pub async fn took_over(&self) {
        if self.header.handover_version >= 2 {
            let _ = say(&self.stream, &FromSuccessor::TookOver).await;
        }
    }
}

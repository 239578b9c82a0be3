//! The successor's side of an upgrade: ask the running process for its
//! sockets, report ready, and learn when it has let go.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::Inherited;
use super::fds::recv_frame;
use super::wire::{FromSuccessor, HANDOVER_VERSION, Header, OLDEST_HANDOVER_VERSION, ToSuccessor};
use crate::control::{Command, PROTOCOL_VERSION, Request};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running baton answers on {path}: {source}; start without --upgrade")]
    NoPredecessor {
        path: String,
        source: std::io::Error,
    },
    #[error("the running baton refused the hand-over: {0}")]
    Refused(String),
    #[error(
        "hand-over format {theirs} is not supported (this build reads {oldest} to {ours}); nothing was adopted"
    )]
    Version { theirs: u32, oldest: u32, ours: u32 },
    #[error("hand-over failed: {0}")]
    Protocol(String),
}

/// The connection to the running process, with what it handed over.
pub struct Predecessor {
    stream: UnixStream,
    pub header: Header,
    pub inherited: Inherited,
}

/// How the predecessor let go.
#[derive(Debug)]
pub enum Release {
    /// It stopped accepting and serving admin.
    Released,
    /// It went away (killed mid-hand-over): everything is ours all the same.
    Gone,
    /// It rolled back the upgrade; it will stop us.
    Refused(String),
}

async fn connect(path: &Path) -> Result<UnixStream, UpgradeError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| UpgradeError::NoPredecessor {
            path: path.display().to_string(),
            source,
        })
}

async fn request(stream: &mut UnixStream, error: Option<String>) -> Result<(), UpgradeError> {
    let request = Request {
        v: PROTOCOL_VERSION,
        command: Command::Handover {
            pid: std::process::id(),
            error,
        },
    };
    let mut line = serde_json::to_vec(&request).expect("requests serialize");
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| UpgradeError::Protocol(e.to_string()))
}

/// Tells the running process that our config is invalid, so it rolls back
/// at once with this reason.
pub async fn report_config_error(
    control_socket: &Path,
    reason: String,
) -> Result<(), UpgradeError> {
    let mut stream = connect(control_socket).await?;
    request(&mut stream, Some(reason)).await
}

/// Asks for the sockets and receives them, all or nothing.
pub async fn receive(control_socket: &Path) -> Result<Predecessor, UpgradeError> {
    let mut stream = connect(control_socket).await?;
    request(&mut stream, None).await?;
    let header = match next(&stream).await? {
        (ToSuccessor::Header(h), _) => *h,
        (ToSuccessor::Refused { reason }, _) => return Err(UpgradeError::Refused(reason)),
        (other, _) => {
            return Err(UpgradeError::Protocol(format!(
                "expected a header, got {other:?}"
            )));
        }
    };
    let mut sockets: HashMap<String, OwnedFd> = HashMap::new();
    loop {
        match next(&stream).await? {
            (ToSuccessor::Sockets { names }, fds) => {
                if names.len() != fds.len() {
                    return Err(UpgradeError::Protocol(format!(
                        "{} names but {} descriptors",
                        names.len(),
                        fds.len()
                    )));
                }
                sockets.extend(names.into_iter().zip(fds));
            }
            (ToSuccessor::End, _) => break,
            (ToSuccessor::Refused { reason }, _) => return Err(UpgradeError::Refused(reason)),
            (other, _) => return Err(UpgradeError::Protocol(format!("unexpected {other:?}"))),
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
async fn next(stream: &UnixStream) -> Result<(ToSuccessor, Vec<OwnedFd>), UpgradeError> {
    let (payload, fds) = recv_frame(stream)
        .await
        .map_err(|e| UpgradeError::Protocol(e.to_string()))?
        .ok_or_else(|| UpgradeError::Protocol("the running baton closed the connection".into()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    if value.get("frame").and_then(|f| f.as_str()) == Some("header") {
        let theirs = value
            .get("handover_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if !(OLDEST_HANDOVER_VERSION..=HANDOVER_VERSION).contains(&theirs) {
            let error = UpgradeError::Version {
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
    let frame = serde_json::from_value(value).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok((frame, fds))
}

async fn say(stream: &UnixStream, event: &FromSuccessor) -> std::io::Result<()> {
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
            Ok((ToSuccessor::Released, _)) => Release::Released,
            Ok((ToSuccessor::Refused { reason }, _)) => Release::Refused(reason),
            Ok((other, _)) => Release::Refused(format!("unexpected {other:?}")),
            Err(_) => Release::Gone,
        }
    }
}

//! The control socket (`control.socket`, a unix stream socket, mode 0600):
//! how `baton reload`, `baton status` and `baton upgrade` reach the running
//! process.
//!
//! Protocol version 1: the client writes one JSON object on one line, the
//! server answers with one JSON object on one line, and either may close.
//!
//! ```text
//! → {"v":1,"cmd":"status"}
//! ← {"v":1,"ok":true,"status":{...}}
//! → {"v":1,"cmd":"reload","dry_run":false}
//! ← {"v":1,"ok":true,"reload":{"config_generation":2,"changes":["backends added: app/127.0.0.1:9003"],...}}
//! ← {"v":1,"ok":false,"error":"a reload is already in progress"}
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::{Mode, umask};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::status::Status;
use crate::upgrade::wire::{DrainReport, UpgradeReport};

pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused: the socket is local, but a
/// confused client must not make the process buffer without bound.
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Status,
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    /// Spawn a successor of `binary` (default: our own `argv[0]`) and hand
    /// over to it; answered when it took over or the upgrade rolled back.
    Upgrade {
        #[serde(default)]
        binary: Option<PathBuf>,
    },
    /// From a successor: send me your sockets (see `upgrade`). With
    /// `error`, the successor could not load its config.
    Handover {
        pid: u32,
        #[serde(default)]
        error: Option<String>,
        /// The hand-over format the successor speaks; absent before
        /// version 2.
        #[serde(default)]
        handover_version: Option<u32>,
    },
    /// From a draining predecessor, once a second on one connection.
    DrainReport(DrainReport),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeReport>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }

    pub fn ok() -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            ..Response::default()
        }
    }
}

/// What a reload did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config_generation: u64,
    pub dry_run: bool,
    pub changes: Vec<String>,
    pub duration_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("baton already runs as pid {pid} on {path}; use --upgrade to replace it")]
    Running { pid: u32, path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot use control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no baton answers on {path}: {source}")]
    NotRunning { path: PathBuf, source: io::Error },
    #[error("bad answer from {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// What the control socket hands to the process's owner: every request
/// goes there, answered on `reply` (one dispatcher).
#[derive(Debug)]
pub enum Message {
    /// `status`, `reload`, `upgrade`.
    Command { command: Command, reply: Reply },
    /// A successor started from outside asks for the sockets; the rest of
    /// `stream` is the hand-over protocol.
    Handover {
        stream: UnixStream,
        /// The kernel's word for who asks (`SO_PEERCRED`), not the request's.
        peer: u32,
        version: u32,
        error: Option<String>,
    },
    /// A draining predecessor's report; `reply` says whether it was taken
    /// (false: find the process that accepts now).
    DrainReport {
        report: DrainReport,
        peer: u32,
        reply: oneshot::Sender<bool>,
    },
    /// The report connection of `pid` closed: it exited (or died).
    DrainEnded { pid: u32 },
}

/// Where the answer to a command goes. A process about to exit (the old
/// one, once `baton upgrade`'s streams moved) waits until the answer is
/// written, or the client would see the connection close instead.
#[derive(Debug)]
pub struct Reply {
    answer: oneshot::Sender<Response>,
    written: oneshot::Receiver<()>,
}

impl Reply {
    /// Hands the answer to the connection that asked; false if it is gone.
    pub fn send(self, response: Response) -> bool {
        self.answer.send(response).is_ok()
    }

    /// As `send`, then waits (at most `limit`) until it was written.
    pub async fn send_written(self, response: Response, limit: Duration) {
        if self.answer.send(response).is_ok() {
            let _ = tokio::time::timeout(limit, self.written).await;
        }
    }
}

/// Binds the control socket with a restrictive umask (never briefly
/// world-accessible) in a folder created 0700 if missing. A live baton
/// answering on `path` is an error; a socket is stale (and replaced) only
/// when connecting to it is refused.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        match StdUnixStream::connect(path) {
            Ok(stream) => {
                let pid = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )
                .map_or(0, |c| c.pid() as u32);
                return Err(ControlError::Running {
                    pid,
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale control socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
    }
    // The socket file is created by bind(2) with the umask applied: 0600
    // from its first instant.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Whether a peer may talk to us: our own uid, or root.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Answers control connections until `stop` fires; every request becomes a
/// [`Message`] to `to`.
pub async fn serve(listener: UnixListener, to: mpsc::Sender<Message>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (uid, pid) = match stream.peer_cred() {
            Ok(c) => (c.uid(), c.pid().unwrap_or(0).max(0) as u32),
            Err(e) => {
                tracing::warn!(error = %e, "control peer without credentials; closed");
                continue;
            }
        };
        if !trusted(uid) {
            tracing::warn!(uid, pid, "control connection from another user refused");
            let mut stream = stream;
            let refusal = line(&Response::error(
                "permission denied: only baton's own user or root may use this socket",
            ));
            tokio::spawn(async move {
                let _ = stream.write_all(&refusal).await;
                // Read what it sent before closing: a unix socket closed with
                // unread data resets the peer, which would lose the answer.
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                let drain =
                    async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            });
            continue;
        }
        let to = to.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, pid, to).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

fn line(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).expect("responses always serialize");
    out.push(b'\n');
    out
}

async fn connection(stream: UnixStream, peer: u32, to: mpsc::Sender<Message>) -> io::Result<()> {
    let mut lines = tokio::io::BufReader::new(stream);
    let mut text = String::new();
    // The pid of a draining predecessor that reports on this connection.
    let mut reporter: Option<u32> = None;
    let result = loop {
        text.clear();
        let n = match (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut text)
            .await
        {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            break Ok(());
        }
        let response = match serde_json::from_str::<Request>(text.trim()) {
            Ok(request) if request.v != PROTOCOL_VERSION => Response::error(format!(
                "control protocol version {} is not supported (this baton speaks {PROTOCOL_VERSION})",
                request.v
            )),
            Ok(Request {
                command:
                    Command::Handover {
                        pid,
                        error,
                        handover_version,
                    },
                ..
            }) => {
                if peer == 0 {
                    // Another pid namespace: we could not tell who it is.
                    Response::error("hand-over refused: the peer's pid is not visible here")
                } else {
                    if peer != pid {
                        tracing::warn!(
                            claimed = pid,
                            peer,
                            "hand-over request names another pid; using the peer's"
                        );
                    }
                    // The rest of this connection is the hand-over protocol.
                    let _ = to
                        .send(Message::Handover {
                            stream: lines.into_inner(),
                            peer,
                            version: handover_version.unwrap_or(1),
                            error,
                        })
                        .await;
                    return Ok(());
                }
            }
            Ok(Request {
                command: Command::DrainReport(report),
                ..
            }) => {
                let pid = report.pid;
                let (reply, taken) = oneshot::channel();
                let message = Message::DrainReport {
                    report,
                    peer,
                    reply,
                };
                if to.send(message).await.is_err() || !taken.await.unwrap_or(false) {
                    // Not taken here: the reporter finds the process that
                    // accepts now (or its report was bad).
                    break Ok(());
                }
                reporter = Some(pid);
                Response::ok()
            }
            Ok(request) => {
                let (answer_tx, answer) = oneshot::channel();
                let (done, written) = oneshot::channel();
                let reply = Reply {
                    answer: answer_tx,
                    written,
                };
                let message = Message::Command {
                    command: request.command,
                    reply,
                };
                let response = if to.send(message).await.is_err() {
                    Response::error("this process is stopping")
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| Response::error("this process is stopping"))
                };
                if let Err(e) = lines.get_mut().write_all(&line(&response)).await {
                    break Err(e);
                }
                let _ = done.send(());
                continue;
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        if let Err(e) = lines.get_mut().write_all(&line(&response)).await {
            break Err(e);
        }
    };
    if let Some(pid) = reporter {
        let _ = to.send(Message::DrainEnded { pid }).await;
    }
    result
}

/// Sends one request and waits up to `timeout` for its answer.
pub fn request(
    path: &Path,
    command: &Command,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let not_running = |source| ControlError::NotRunning {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = StdUnixStream::connect(path).map_err(not_running)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(not_running)?;
    let request = Request {
        v: PROTOCOL_VERSION,
        command: command.clone(),
    };
    let mut line = serde_json::to_vec(&request).expect("requests always serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(not_running)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(not_running)?;
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        message: format!("{e}: {answer:?}"),
    })
}

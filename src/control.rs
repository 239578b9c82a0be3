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
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::status::Status;
use crate::upgrade::predecessor::UpgradeReport;
use crate::upgrade::wire::DrainReport;

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

/// Binds the control socket. A live baton answering on `path` is an error;
/// a socket file nobody answers on is stale and replaced.
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
        match request(path, &Command::Status, Duration::from_secs(2)) {
            Ok(response) => {
                let pid = response.status.map_or(0, |s| s.pid);
                return Err(ControlError::Running {
                    pid,
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing a stale control socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Answers control requests until `stop` fires.
pub async fn serve(listener: UnixListener, app: Arc<App>, stop: CancellationToken) {
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
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, app).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn connection(stream: UnixStream, app: Arc<App>) -> io::Result<()> {
    let mut lines = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    // The pid of a draining predecessor that reports on this connection.
    let mut reporter: Option<u32> = None;
    let result = loop {
        line.clear();
        let n = match (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        if n == 0 {
            break Ok(());
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) if request.v != PROTOCOL_VERSION => Response::error(format!(
                "control protocol version {} is not supported (this baton speaks {PROTOCOL_VERSION})",
                request.v
            )),
            Ok(Request {
                command: Command::Handover { pid, error },
                ..
            }) => {
                // The kernel's word for who is asking, not the request's: a
                // rollback signals this pid.
                let peer = lines.get_ref().peer_cred().ok().and_then(|c| c.pid());
                let Some(peer) = peer.map(|p| p as u32) else {
                    return Ok(());
                };
                if peer != pid {
                    tracing::warn!(
                        claimed = pid,
                        peer,
                        "hand-over request names another pid; using the peer's"
                    );
                }
                // The rest of this connection is the hand-over protocol.
                app.hand_over(lines.into_inner(), peer, error).await;
                return Ok(());
            }
            Ok(Request {
                command: Command::DrainReport(report),
                ..
            }) => {
                reporter = Some(report.pid);
                if app.record_drain(report) {
                    Response::ok()
                } else {
                    // We no longer accept: the reporter should find the
                    // process that does.
                    break Ok(());
                }
            }
            Ok(request) => app.clone().control(request.command).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&response).expect("responses always serialize");
        out.push(b'\n');
        if let Err(e) = lines.get_mut().write_all(&out).await {
            break Err(e);
        }
    };
    if let Some(pid) = reporter {
        app.drain_ended(pid);
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

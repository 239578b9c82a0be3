//! The predecessor's upgrade coordinator: spawns the successor with its own
//! end of a socketpair (so the request is matched to the process we started
//! without racing its spawn), runs the hand-over steps in a task, reports
//! each step to the state machine's owner, and rolls back on any failure.
//!
//! The owner answers the `Ready` step with a [`ReleaseOrder`] once it has
//! paused accepting and stopped admin and control; the task then sends
//! `Released` with the counter history and waits for the successor's
//! confirmation. Only then does the owner close its sockets: a successor
//! that dies between the release and its confirmation finds the
//! predecessor accepting again on the same sockets.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::HandoverError;
use super::fds::{HANDOVER_FD_ENV, handover_pair};
use super::handover::{self, HandoverRequest};
use super::wire::Header;
use crate::proxy::Proxy;

/// A step of one attempt, for the owner.
#[derive(Debug)]
pub enum Progress {
    SocketsSent {
        id: u64,
    },
    Ready {
        id: u64,
        pid: u32,
        generation: u64,
    },
    Done {
        id: u64,
        result: Result<Successor, HandoverError>,
    },
}

/// The successor that took over, and the connection its streams go on.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    pub generation: u64,
    pub stream: UnixStream,
    /// Its hand-over format (3 and up take established streams).
    pub version: u32,
}

/// The owner's go-ahead after `Ready`: accepting is paused; `admin` ends
/// once the last admin answer went out, so the counts sent after it are at
/// least what any scrape of this process showed.
pub struct ReleaseOrder {
    pub admin: Option<JoinHandle<()>>,
    pub proxy: Arc<Proxy>,
    pub generation: u64,
}

/// One upgrade attempt, run by [`Attempt::run`].
pub struct Attempt {
    pub id: u64,
    /// The hand-over connection: our end of the socketpair, or the control
    /// connection of a successor started from outside.
    pub stream: UnixStream,
    /// Already read (a successor from outside asked on the control socket).
    pub request: Option<HandoverRequest>,
    /// A request for this attempt that arrived on the control socket from
    /// the pid we spawned (a successor that does not use the inherited
    /// connection, such as an older build).
    pub via_control: Option<oneshot::Receiver<(UnixStream, HandoverRequest)>>,
    /// The process we spawned; never a process we did not.
    pub child: Option<Child>,
    pub header: Header,
    pub sockets: Vec<(String, OwnedFd)>,
    pub ready_timeout: Duration,
    /// How long a rolled-back successor gets to drain after SIGTERM.
    pub kill_grace: Duration,
    pub progress: mpsc::UnboundedSender<Progress>,
    pub release: oneshot::Receiver<ReleaseOrder>,
    /// Fired by a stop signal: roll back.
    pub cancel: CancellationToken,
}

/// Starts `<binary> run -c <config> --upgrade` with the child's end of a
/// socketpair under `BATON_HANDOVER_FD`. Returns the child and our end.
pub fn spawn(
    binary: &Path,
    config: &Path,
    log_format: &str,
) -> Result<(Child, UnixStream), HandoverError> {
    let error = |source| HandoverError::Spawn {
        binary: binary.display().to_string(),
        source,
    };
    let (ours, theirs) = handover_pair().map_err(error)?;
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("run")
        .arg("-c")
        .arg(config)
        .arg("--upgrade")
        .arg("--log-format")
        .arg(log_format)
        .env(HANDOVER_FD_ENV, theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null());
    let child = command.spawn().map_err(error)?;
    // The child has its copy; ours would keep the connection open after it
    // died.
    drop(theirs);
    ours.set_nonblocking(true).map_err(error)?;
    let ours = UnixStream::from_std(ours).map_err(error)?;
    Ok((child, ours))
}

impl Attempt {
    /// Runs the hand-over to its end and reports `Done`.
    pub async fn run(mut self) {
        let result = match self.steps().await {
            Ok((pid, generation, version)) => Ok(Successor {
                pid,
                generation,
                stream: self.stream,
                version,
            }),
            Err(e) => {
                handover::refuse(&self.stream, &format!("upgrade rolled back: {e}")).await;
                if let Some(child) = self.child.take() {
                    tokio::spawn(terminate(child, self.kill_grace));
                }
                Err(e)
            }
        };
        let _ = self.progress.send(Progress::Done {
            id: self.id,
            result,
        });
    }

    /// The successor's pid, generation and hand-over format.
    async fn steps(&mut self) -> Result<(u32, u64, u32), HandoverError> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut exited = false;
        let request = match self.request.take() {
            Some(r) => r,
            None => {
                let via_control = self.via_control.take();
                let asked = async {
                    match via_control {
                        Some(rx) => tokio::select! {
                            r = handover::read_request(&self.stream) => r.map(|r| (None, r)),
                            Ok((stream, r)) = rx => Ok((Some(stream), r)),
                        },
                        None => handover::read_request(&self.stream)
                            .await
                            .map(|r| (None, r)),
                    }
                };
                let (stream, request) = until(
                    deadline,
                    self.ready_timeout,
                    &self.cancel,
                    &mut self.child,
                    &mut exited,
                    asked,
                )
                .await?;
                if let Some(stream) = stream {
                    self.stream = stream;
                }
                request
            }
        };
        if let Some(error) = request.error {
            return Err(HandoverError::SuccessorConfig(error));
        }
        let mut header = std::mem::replace(&mut self.header, empty_header());
        // Speak the successor's format when it is older (a downgrade): it
        // refuses a newer header, and ignores the fields it does not know.
        header.handover_version = header.handover_version.min(request.version);
        let send = handover::send_sockets(&self.stream, header, &self.sockets);
        until(
            deadline,
            self.ready_timeout,
            &self.cancel,
            &mut self.child,
            &mut exited,
            send,
        )
        .await?;
        // The successor holds its own copies now.
        self.sockets.clear();
        let _ = self.progress.send(Progress::SocketsSent { id: self.id });
        let ready = handover::wait_ready(&self.stream);
        let (pid, generation) = until(
            deadline,
            self.ready_timeout,
            &self.cancel,
            &mut self.child,
            &mut exited,
            ready,
        )
        .await?;
        tracing::info!(successor = pid, generation, "upgrade: successor ready");
        let _ = self.progress.send(Progress::Ready {
            id: self.id,
            pid,
            generation,
        });
        let order = tokio::select! {
            order = &mut self.release => order.map_err(|_| HandoverError::Stopped)?,
            _ = self.cancel.cancelled() => return Err(HandoverError::Stopped),
        };
        if let Some(admin) = order.admin {
            let _ = admin.await;
        }
        let history = order
            .proxy
            .metrics
            .hand_on(std::process::id(), order.generation);
        let confirmed = handover::release(&self.stream, history, request.version);
        match tokio::time::timeout(self.ready_timeout, confirmed).await {
            Ok(result) => result?,
            Err(_) => return Err(HandoverError::NotConfirmed(self.ready_timeout)),
        }
        Ok((pid, generation, request.version))
    }
}

fn empty_header() -> Header {
    Header {
        handover_version: 0,
        pid: 0,
        generation: 0,
        config_generation: 0,
        sockets: Vec::new(),
        counters: Vec::new(),
        history: None,
        health: Vec::new(),
        draining: Vec::new(),
        ticket_keys: Vec::new(),
    }
}

/// Runs `step` until it ends, the deadline passes, a stop signal arrives,
/// or the child we spawned exits with a failure. A child that exits
/// successfully (a wrapper that forked the real successor) is not a
/// failure: the hand-over connection says whether the successor lives.
async fn until<T>(
    deadline: Instant,
    ready_timeout: Duration,
    cancel: &CancellationToken,
    child: &mut Option<Child>,
    exited: &mut bool,
    step: impl Future<Output = Result<T, HandoverError>>,
) -> Result<T, HandoverError> {
    tokio::pin!(step);
    loop {
        tokio::select! {
            result = &mut step => {
                // A closed connection usually means the child died: its
                // exit status says more, if it comes at once.
                if let (Err(HandoverError::SuccessorGone(_)), Some(c), false) = (&result, child.as_mut(), *exited)
                    && let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(500), c.wait()).await
                    && !status.success()
                {
                    *exited = true;
                    return Err(HandoverError::SuccessorExited(status.to_string()));
                }
                return result;
            }
            _ = tokio::time::sleep_until(deadline) => return Err(HandoverError::NotReady(ready_timeout)),
            _ = cancel.cancelled() => return Err(HandoverError::Stopped),
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() && !*exited => {
                *exited = true;
                let exited_with = match status {
                    Ok(s) if s.success() => continue,
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                // What it said before it died (its config error) is the
                // better reason, if it is already on the connection.
                match tokio::time::timeout(Duration::from_millis(500), &mut step).await {
                    Ok(Err(HandoverError::SuccessorGone(_))) | Err(_) => {
                        return Err(HandoverError::SuccessorExited(exited_with));
                    }
                    Ok(result) => return result,
                }
            }
        }
    }
}

/// SIGTERM so it drains what it accepted; SIGKILL after `grace`. Only for a
/// child we spawned (its pid cannot be reused before we reap it).
async fn terminate(mut child: Child, grace: Duration) {
    if let Some(pid) = child.id().filter(|&p| p > 0) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

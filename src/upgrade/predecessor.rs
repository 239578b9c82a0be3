//! The predecessor's side of an upgrade: spawn the successor, hand it the
//! sockets, wait for it to be ready, then release — or roll back.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::CONTROL_SOCKET_NAME;
use super::fds::{MAX_FDS_PER_FRAME, send_frame};
use super::wire::{
    FromSuccessor, GenerationCounts, HANDOVER_VERSION, Header, HealthState, SocketInfo, ToSuccessor,
};
use crate::app::{ADMIN_SOCKET_NAME, App, Lifecycle};

/// What `baton upgrade` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub old_pid: u32,
    pub old_generation: u64,
    pub new_pid: u32,
    pub new_generation: u64,
    pub duration_ms: f64,
}

#[derive(Debug)]
enum Outcome {
    Success { pid: u32, generation: u64 },
    Failure(String),
}

/// One upgrade in progress.
pub(crate) struct Attempt {
    /// The successor we spawned; `None` when a supervisor started it.
    expected_pid: Option<u32>,
    started: Instant,
    decided: AtomicBool,
    outcome: std::sync::Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// At most one upgrade at a time.
#[derive(Default)]
pub(crate) struct UpgradeSlot {
    busy: AtomicBool,
    attempt: std::sync::Mutex<Option<Arc<Attempt>>>,
}

impl App {
    /// Refuses an upgrade this process cannot start now, with the reason.
    fn upgrade_refusal(&self) -> Option<String> {
        if self.lifecycle() != Lifecycle::Ready {
            return Some(format!(
                "this process is {}; upgrade the process that accepts",
                self.lifecycle().as_str()
            ));
        }
        let draining = self.draining_count();
        let max = self.proxy.snapshot.load().config.upgrade.max_draining;
        if draining >= max {
            return Some(format!(
                "{draining} predecessor(s) still draining, the most upgrade.max_draining allows; wait for one to finish"
            ));
        }
        None
    }

    /// SIGUSR2 or `baton upgrade`: spawns `<binary> run -c <config> --upgrade`
    /// and waits until it took over or the upgrade rolled back.
    pub async fn upgrade(
        self: &Arc<Self>,
        binary: Option<PathBuf>,
    ) -> Result<UpgradeReport, String> {
        if let Some(reason) = self.upgrade_refusal() {
            return Err(reason);
        }
        if self.upgrade_slot.busy.swap(true, Ordering::AcqRel) {
            return Err("an upgrade is already in progress".into());
        }
        let started = Instant::now();
        let binary = binary.unwrap_or_else(|| self.options.exe.clone());
        let config_path = self.proxy.snapshot.load().config.path.clone();
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .arg("--upgrade")
            .arg("--log-format")
            .arg(self.options.log_format.as_str())
            .stdin(std::process::Stdio::null());
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", binary.display());
                self.upgrade_failed(&reason);
                self.upgrade_slot.busy.store(false, Ordering::Release);
                return Err(reason);
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(successor = pid, binary = %binary.display(), "upgrade: successor started");
        let (tx, mut rx) = oneshot::channel();
        let attempt = Arc::new(Attempt {
            expected_pid: Some(pid),
            started,
            decided: AtomicBool::new(false),
            outcome: std::sync::Mutex::new(Some(tx)),
        });
        *self
            .upgrade_slot
            .attempt
            .lock()
            .expect("upgrade lock is never poisoned") = Some(attempt.clone());

        let ready_timeout = self.proxy.snapshot.load().config.upgrade.ready_timeout;
        let timeout = tokio::time::sleep(ready_timeout);
        tokio::pin!(timeout);
        let (mut exited, mut timed_out) = (false, false);
        let outcome = loop {
            tokio::select! {
                outcome = &mut rx => break outcome.unwrap_or(Outcome::Failure("upgrade abandoned".into())),
                status = child.wait(), if !exited => {
                    exited = true;
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    self.decide(&attempt, Outcome::Failure(format!("successor exited ({status}) before it was ready")));
                }
                _ = &mut timeout, if !timed_out => {
                    timed_out = true;
                    self.decide(&attempt, Outcome::Failure(format!(
                        "successor not ready within upgrade.ready_timeout ({ready_timeout:?})"
                    )));
                }
            }
        };
        self.upgrade_slot
            .attempt
            .lock()
            .expect("upgrade lock is never poisoned")
            .take();
        match outcome {
            Outcome::Success { pid, generation } => Ok(UpgradeReport {
                old_pid: std::process::id(),
                old_generation: self.generation,
                new_pid: pid,
                new_generation: generation,
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            }),
            Outcome::Failure(reason) => {
                if !exited {
                    let grace = self.proxy.snapshot.load().config.drain_timeout;
                    tokio::spawn(terminate_child(child, grace));
                }
                self.upgrade_slot.busy.store(false, Ordering::Release);
                Err(reason)
            }
        }
    }

    /// The first decision about an attempt wins; returns whether this was it.
    fn decide(&self, attempt: &Attempt, outcome: Outcome) -> bool {
        if attempt.decided.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Outcome::Failure(reason) = &outcome {
            self.upgrade_failed(reason);
        }
        if let Some(tx) = attempt
            .outcome
            .lock()
            .expect("upgrade lock is never poisoned")
            .take()
        {
            let _ = tx.send(outcome);
        }
        true
    }

    fn upgrade_failed(&self, reason: &str) {
        tracing::error!(reason, "upgrade rolled back; this process keeps serving");
        self.proxy
            .metrics
            .upgrades
            .with_label_values(&["failure"])
            .inc();
    }

    /// A successor's `handover` request on the control socket.
    pub(crate) async fn hand_over(
        self: Arc<Self>,
        stream: UnixStream,
        pid: u32,
        error: Option<String>,
    ) {
        let attempt = {
            let current = self
                .upgrade_slot
                .attempt
                .lock()
                .expect("upgrade lock is never poisoned")
                .clone();
            match current {
                Some(a) if a.expected_pid == Some(pid) => a,
                _ => {
                    let refusal = self.upgrade_refusal().or_else(|| {
                        self.upgrade_slot
                            .busy
                            .swap(true, Ordering::AcqRel)
                            .then(|| "an upgrade is already in progress".to_string())
                    });
                    if let Some(reason) = refusal {
                        tracing::warn!(successor = pid, reason, "hand-over refused");
                        let _ = send(&stream, &ToSuccessor::Refused { reason }).await;
                        return;
                    }
                    tracing::info!(
                        successor = pid,
                        "upgrade: a successor started from outside asks for the sockets"
                    );
                    Arc::new(Attempt {
                        expected_pid: None,
                        started: Instant::now(),
                        decided: AtomicBool::new(false),
                        outcome: std::sync::Mutex::new(None),
                    })
                }
            }
        };
        let external = attempt.expected_pid.is_none();
        let result = self
            .clone()
            .run_hand_over(&stream, pid, error, &attempt)
            .await;
        if let Err(reason) = result {
            let decided = self.decide(&attempt, Outcome::Failure(reason));
            let _ = send(
                &stream,
                &ToSuccessor::Refused {
                    reason: "upgrade rolled back".into(),
                },
            )
            .await;
            if external && decided {
                let grace = self.proxy.snapshot.load().config.drain_timeout;
                tokio::spawn(terminate_pid(pid, grace));
                self.upgrade_slot.busy.store(false, Ordering::Release);
            }
        }
    }

    async fn run_hand_over(
        self: Arc<Self>,
        stream: &UnixStream,
        pid: u32,
        error: Option<String>,
        attempt: &Attempt,
    ) -> Result<(), String> {
        if let Some(error) = error {
            return Err(format!("successor refused its config: {error}"));
        }
        let header = self.header();
        let sockets = self.sockets_to_hand_over();
        send(stream, &ToSuccessor::Header(Box::new(header)))
            .await
            .map_err(|e| format!("sending the hand-over header: {e}"))?;
        for batch in sockets.chunks(MAX_FDS_PER_FRAME) {
            let names: Vec<String> = batch.iter().map(|(n, _)| n.clone()).collect();
            let fds: Vec<_> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
            let payload =
                serde_json::to_vec(&ToSuccessor::Sockets { names }).expect("frames serialize");
            send_frame(stream, &payload, &fds)
                .await
                .map_err(|e| format!("sending sockets: {e}"))?;
        }
        send(stream, &ToSuccessor::End)
            .await
            .map_err(|e| format!("sending sockets: {e}"))?;

        let ready_timeout = self.proxy.snapshot.load().config.upgrade.ready_timeout;
        let left = ready_timeout.saturating_sub(attempt.started.elapsed());
        let mut line = String::new();
        let read = tokio::time::timeout(left, read_line(stream, &mut line)).await;
        let event = match read {
            Err(_) => {
                return Err(format!(
                    "successor not ready within upgrade.ready_timeout ({ready_timeout:?})"
                ));
            }
            Ok(Err(e)) => return Err(format!("hand-over connection failed: {e}")),
            Ok(Ok(0)) => {
                return Err("successor closed the hand-over connection before it was ready".into());
            }
            Ok(Ok(_)) => serde_json::from_str::<FromSuccessor>(line.trim())
                .map_err(|e| format!("bad message from the successor: {e}"))?,
        };
        match event {
            FromSuccessor::Failed { reason } => Err(format!("successor failed: {reason}")),
            FromSuccessor::Ready {
                pid: new_pid,
                generation,
            } => {
                if !self.decide(
                    attempt,
                    Outcome::Success {
                        pid: new_pid,
                        generation,
                    },
                ) {
                    return Err("the upgrade was already rolled back".into());
                }
                tracing::info!(
                    successor = pid,
                    generation,
                    "upgrade: successor ready; releasing the sockets"
                );
                self.release().await;
                send(stream, &ToSuccessor::Released)
                    .await
                    .map_err(|e| format!("sending release: {e}"))?;
                Ok(())
            }
        }
    }

    fn header(&self) -> Header {
        let snapshot = self.proxy.snapshot.load();
        let mut counters = vec![GenerationCounts {
            generation: self.generation,
            pid: std::process::id(),
            counts: self.proxy.metrics.own_counts(),
        }];
        counters.extend(
            self.proxy
                .metrics
                .earlier()
                .into_iter()
                .map(|(generation, counts)| GenerationCounts {
                    generation,
                    pid: 0,
                    counts,
                }),
        );
        let health = snapshot
            .clusters
            .iter()
            .flat_map(|c| {
                c.backends.iter().map(|b| HealthState {
                    cluster: c.config.name.clone(),
                    address: b.address.to_string(),
                    addr: b.addr,
                    down: b.state.is_checked_down(),
                })
            })
            .collect();
        Header {
            handover_version: HANDOVER_VERSION,
            pid: std::process::id(),
            generation: self.generation,
            config_generation: snapshot.generation,
            sockets: self
                .sockets_to_hand_over()
                .iter()
                .map(|(name, fd)| SocketInfo {
                    name: name.clone(),
                    address: describe(fd),
                })
                .collect(),
            counters,
            health,
            draining: self
                .draining_status()
                .iter()
                .map(|d| (d.pid, d.generation))
                .collect(),
        }
    }

    /// Duplicates of every listening socket, by name.
    fn sockets_to_hand_over(&self) -> Vec<(String, std::os::fd::OwnedFd)> {
        let mut out = Vec::new();
        for (name, l) in self
            .listeners
            .lock()
            .expect("listener lock is never poisoned")
            .iter()
        {
            if let Ok(fd) = l.socket.as_fd().try_clone_to_owned() {
                out.push((name.clone(), fd));
            }
        }
        if let Some(admin) = self
            .admin
            .lock()
            .expect("admin lock is never poisoned")
            .as_ref()
            && let Ok(fd) = admin.socket.as_fd().try_clone_to_owned()
        {
            out.push((ADMIN_SOCKET_NAME.to_string(), fd));
        }
        if let Some(control) = self
            .control
            .lock()
            .expect("control lock is never poisoned")
            .as_ref()
            && let Ok(fd) = control.socket.as_fd().try_clone_to_owned()
        {
            out.push((CONTROL_SOCKET_NAME.to_string(), fd));
        }
        out
    }
}

fn describe(fd: &std::os::fd::OwnedFd) -> String {
    use nix::sys::socket::{SockaddrStorage, getsockname};
    use std::os::fd::AsRawFd;
    getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_or_else(|e| e.to_string(), |a| a.to_string())
}

async fn send(stream: &UnixStream, frame: &ToSuccessor) -> std::io::Result<()> {
    let payload = serde_json::to_vec(frame).expect("frames serialize");
    send_frame(stream, &payload, &[]).await
}

/// SIGTERM so it drains what it accepted; SIGKILL after `grace`.
async fn terminate_child(mut child: tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// As `terminate_child`, for a successor we did not spawn.
async fn terminate_pid(pid: u32, grace: Duration) {
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if kill(pid, None).is_err() {
            return;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Reads one line without buffering past it (the stream carries nothing
/// after the successor's event line that we must not lose, but a line is
/// small and this keeps the stream borrowed, not owned).
async fn read_line(stream: &UnixStream, line: &mut String) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                bytes.push(byte[0]);
                if byte[0] == b'\n' || bytes.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(bytes.len())
}

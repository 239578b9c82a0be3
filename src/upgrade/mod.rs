//! Binary upgrade: hand every listening socket to a new process, roll back
//! on failure, drain the old one. Also the sockets systemd passes at start,
//! which are adopted by name the same way.
//!
//! # Protocol
//!
//! P is the running process (the predecessor), S its successor.
//!
//! 1. **Trigger.** `SIGUSR2` or `baton upgrade` make P spawn
//!    `<binary> run -c <config> --upgrade` (the binary is `argv[0]` made
//!    absolute at start, or `--binary`); S inherits stdout and stderr. A
//!    supervisor may also start S itself. One upgrade at a time; a draining
//!    process never upgrades; at most `upgrade.max_draining` predecessors
//!    drain at once.
//! 2. **Request.** S loads and validates its config, connects to
//!    `control.socket` and sends one control line
//!    `{"v":1,"cmd":"handover","pid":S}` (with `"error"` set instead if its
//!    config is invalid: P then rolls back without sending anything).
//! 3. **Sockets.** P answers with frames (`[u32 big-endian length][JSON]`,
//!    see `fds`), which S reads with `recvmsg` only:
//!    `Header` (format version, P's pid and generations, the name and
//!    address of every socket, counters per generation, backend health),
//!    then `Sockets { names }` frames whose `SCM_RIGHTS` carry at most 250
//!    descriptors each — every proxy listener by its name, the admin
//!    listener as `admin`, the control socket as `control` — then `End`.
//!    S refuses a format it cannot read (newer than it, or more than one
//!    older) with `Failed` and adopts nothing.
//! 4. **Adopt.** A listener whose name and address match an inherited
//!    socket reuses it (set non-blocking); a new one is bound; an inherited
//!    one the config no longer names is closed. S never binds an address it
//!    inherited, so there is no `EADDRINUSE` race and no `SO_REUSEPORT` split
//!    of the accept queue.
//! 5. **Ready.** S starts accepting — both processes now accept from the
//!    same kernel sockets, so nothing queued is lost — checks that each of
//!    its listeners is listening (`SO_ACCEPTCONN`; a test connection would be
//!    proxied to a backend by whichever process accepted it), and sends the
//!    line `{"event":"ready",...}`.
//! 6. **Release.** Only then does P stop accepting, by closing its own
//!    descriptors (never `shutdown(2)`, which would stop S too), stop its
//!    admin server (idle admin connections closed), stop answering control,
//!    and send `Released`. S then serves admin and control, writes the pid
//!    file (temp file + rename), and tells systemd `MAINPID=` and `READY=1`.
//!    If P dies before `Released`, S owns everything all the same. The
//!    control socket and the pid file are never unlinked or rebound.
//! 7. **Rollback.** If S exits, reports `Failed`, or is not ready within
//!    `upgrade.ready_timeout`, P keeps serving as if nothing happened (it
//!    never stopped accepting), sends `SIGTERM` to S (which drains what it
//!    accepted; `SIGKILL` after `drain.timeout`) and counts
//!    `baton_upgrades_total{result="failure"}`.
//! 8. **Drain.** P's streams go on untouched until they end or
//!    `drain.timeout` passes; then the rest are closed and counted. While it
//!    drains, P connects to the control socket (now S's, or whoever accepts
//!    later) and sends `{"cmd":"drain_report",...}` once a second with its
//!    generation, pid, remaining connections, elapsed time and own counter
//!    values; the accepting process exports them. P then exits 0.
//!
//! Counters: every process reports its own counts; the accepting process
//! exports its own plus the last report of every earlier generation, summed
//! by exact label set, so no `_total` goes backwards.

pub mod coordinator;
pub mod drains;
pub mod fds;
pub mod handover;
pub mod successor;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// The name of the admin listener among handed-over sockets.
pub const ADMIN_SOCKET_NAME: &str = "admin";
/// The name of the control socket among handed-over sockets.
pub const CONTROL_SOCKET_NAME: &str = "control";

/// Why a hand-over did not happen, one variant per step; either side's.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("no running baton answers on {path}: {source}; start without --upgrade")]
    NoPredecessor {
        path: String,
        source: std::io::Error,
    },
    #[error("the hand-over request: {0}")]
    Request(String),
    #[error("successor refused its config: {0}")]
    SuccessorConfig(String),
    #[error("the running baton refused the hand-over: {0}")]
    Refused(String),
    #[error(
        "hand-over format {theirs} is not supported (this build reads {oldest} to {ours}); nothing was adopted"
    )]
    Version { theirs: u32, oldest: u32, ours: u32 },
    #[error("sending the sockets: {0}")]
    Sockets(std::io::Error),
    #[error("successor not ready within upgrade.ready_timeout ({0:?})")]
    NotReady(std::time::Duration),
    #[error("successor exited ({0}) before it was ready")]
    SuccessorExited(String),
    #[error("successor closed the hand-over connection before {0}")]
    SuccessorGone(&'static str),
    #[error("successor failed: {0}")]
    SuccessorFailed(String),
    #[error("releasing: {0}")]
    Release(std::io::Error),
    #[error("successor did not confirm the take-over within {0:?}")]
    NotConfirmed(std::time::Duration),
    #[error("stopped by a signal during the hand-over")]
    Stopped,
    #[error("hand-over protocol: {0}")]
    Protocol(String),
}

/// Sockets handed to this process, by name, until adopted.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<String, OwnedFd>,
}

impl Inherited {
    /// The sockets systemd passed (none unless `LISTEN_PID` is our pid).
    pub fn from_systemd() -> Inherited {
        let mut sockets = HashMap::new();
        for (name, owned) in fds::from_systemd() {
            if sockets.insert(name.clone(), owned).is_some() {
                tracing::warn!(
                    name,
                    "systemd passed two sockets with one name; keeping the last"
                );
            }
        }
        if !sockets.is_empty() {
            tracing::info!(names = ?sockets.keys().collect::<Vec<_>>(), "sockets from systemd");
        }
        Inherited { sockets }
    }

    pub fn from_named(sockets: HashMap<String, OwnedFd>) -> Inherited {
        Inherited { sockets }
    }

    /// The listening TCP socket named `name`, if one was passed and listens
    /// on `addr`; set non-blocking. A socket under that name on another
    /// address is closed (the config wins) and `None` returned.
    pub fn take_tcp(&mut self, name: &str, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.sockets.remove(name)?;
        let listener = std::net::TcpListener::from(fd);
        match listener.local_addr() {
            Ok(local) if same_address(local, addr) => {}
            Ok(local) => {
                tracing::info!(name, inherited = %local, configured = %addr, "inherited socket listens elsewhere; closing it and binding the configured address");
                return None;
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "inherited descriptor is not a TCP socket; ignoring it");
                return None;
            }
        }
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::warn!(name, error = %e, "cannot make inherited socket non-blocking; ignoring it");
            return None;
        }
        tracing::info!(name, %addr, "adopted an inherited listening socket");
        Some(listener)
    }

    /// The control socket, if one was passed and is bound to `path`.
    pub fn take_control(
        &mut self,
        path: &std::path::Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        let fd = self.sockets.remove(CONTROL_SOCKET_NAME)?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        let bound = listener.local_addr().ok()?;
        if bound.as_pathname() != Some(path) {
            tracing::info!(configured = %path.display(), "control.socket moved; binding the new path");
            return None;
        }
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }

    /// Closes what nothing adopted.
    pub fn close_rest(&mut self) {
        for (name, _) in self.sockets.drain() {
            tracing::info!(
                name,
                "closing an inherited socket the config no longer names"
            );
        }
    }
}

/// Port 0 in the config means "any port": a passed socket on any port fits.
fn same_address(local: SocketAddr, configured: SocketAddr) -> bool {
    local.ip() == configured.ip() && (configured.port() == 0 || local.port() == configured.port())
}

/// Whether `socket` is a listening socket (`SO_ACCEPTCONN`): the check a
/// successor makes before it reports ready.
pub fn is_listening(socket: &impl std::os::fd::AsFd) -> bool {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false)
}

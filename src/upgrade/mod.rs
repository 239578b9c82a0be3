//! Binary upgrade: hand every listening socket to a new process, roll back
//! on failure, drain the old one. Also the sockets systemd passes at start,
//! which are adopted by name the same way.
//!
//! # Protocol (hand-over format version 4)
//!
//! P is the running process (the predecessor), S its successor. P's side
//! is `coordinator` (spawn, steps, rollback) and `handover` (one function
//! per step); S's side is `successor`. Every step is a state of P's state
//! machine (`crate::state`): `upgrading (successor started)` → `(sockets
//! sent)` → `(releasing)` → `draining`, or back to `ready` on rollback.
//!
//! 1. **Trigger.** `SIGUSR2` or `baton upgrade` make P spawn
//!    `<binary> run -c <config> --upgrade` with one end of a socketpair
//!    inherited under `BATON_HANDOVER_FD`: the hand-over connection is made
//!    before the child exists, so its request cannot race the spawn, and a
//!    wrapper script that forks instead of exec'ing passes it on. A
//!    successor started by a supervisor connects to `control.socket`
//!    instead (its pid from `SO_PEERCRED`). One operation at a time: a
//!    reload, a second upgrade or a hand-over request from anyone else is
//!    refused with the state; at most `upgrade.max_draining` predecessors
//!    drain at once.
//! 2. **Request.** S loads and validates its config and sends one line
//!    `{"v":1,"cmd":"handover","pid":S,"handover_version":4}` (with
//!    `"error"` instead if its config is invalid: P rolls back at once).
//! 3. **Sockets.** P answers with frames (`[u32 big-endian length][JSON]`,
//!    see `fds`), which S reads with `recvmsg` only: `Header` (format
//!    version, P's pid and generations, the name and address of every
//!    socket, backend health, draining predecessors, the TLS session
//!    ticket keys, the counter history in case P dies before step 6), then `Sockets { names }` frames whose
//!    `SCM_RIGHTS` carry at most 250 descriptors each — every proxy
//!    listener by name, `admin`, `control` — then `End`. S refuses a format
//!    it cannot read (newer, or older than version 2) with `Failed`.
//! 4. **Prepare.** Everything that can fail happens now, before S accepts:
//!    the snapshot, every listener adopted (same name and address) or
//!    bound, admin and control sockets, the pid file's temporary file. S
//!    never binds an address it inherited (no `EADDRINUSE` race, no
//!    `SO_REUSEPORT` split of the accept queue).
//! 5. **Ready.** S starts accepting — both processes accept from the same
//!    kernel sockets, so nothing queued is lost — and sends
//!    `{"event":"ready",...}`.
//! 6. **Release.** P pauses its accept loops (keeping its descriptors),
//!    stops admin (open answers finish) and control, then sends
//!    `Released { history }`: every count of earlier generations, its own
//!    included, as of that instant. S takes the history, renames its pid
//!    file into place, serves admin and control — steps that cannot make it
//!    exit: a failure is logged and counted in
//!    `baton_takeover_errors_total` — and confirms with `TookOver`.
//! 7. **Point of no return.** Only on `TookOver` does P close its
//!    descriptors and count the upgrade a success. If S dies between 6 and
//!    7, P accepts again on the same sockets: there is never a moment with
//!    nobody accepting. If P dies before 6, S owns everything all the same.
//! 8. **Rollback.** If S exits with a failure, reports `Failed`, closes the
//!    connection, or is not ready within `upgrade.ready_timeout`, P keeps
//!    serving, sends `Refused` (S drains what it accepted and exits),
//!    SIGTERMs the child it spawned (never a pid it did not spawn; SIGKILL
//!    after `drain.timeout`) and counts `baton_upgrades_total{result=
//!    "failure"}`.
//! 9. **Move.** With `upgrade.migrate` (default), P pauses every
//!    established plain TCP stream and sends it to S over the same
//!    connection — both sockets, and every byte read but not yet written —
//!    in acknowledged batches (`migrate`). TLS streams, streams S's config
//!    has no listener or cluster for, and any batch S does not acknowledge
//!    stay with P. `baton upgrade` answers now, with both counts.
//! 10. **Drain.** What stays with P goes on until it ends or `drain.timeout`
//!     passes; with plain TCP only, nothing stays and P exits at once.
//!     Once a second P reports its connections and own counts to
//!     whoever accepts on the control socket; only reports from a known
//!     predecessor about itself are taken (`drains`), validated first. When
//!     P exits, its last report is folded into one sum of everything
//!     earlier (`metrics::history`), so nothing grows with the number of
//!     upgrades.
//!
//! A version 2 predecessor (no streams) and a version 3 one (no ticket
//! keys: S makes its own) are still accepted. P writes its header in S's
//! format when S is older (a downgrade); a version 2 successor gets no
//! streams.

pub mod coordinator;
pub mod drains;
pub mod fds;
pub mod handover;
pub mod migrate;
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

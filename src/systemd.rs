//! systemd notifications (`NOTIFY_SOCKET`); each is a no-op without it.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` that systemd 253+ requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Back to ready after a reload; `STATUS=` says how it went.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A successor that took over: systemd must follow the new main pid
/// (`NotifyAccess=all` lets it send this).
pub fn took_over() {
    send(&[NotifyState::MainPid(std::process::id())]);
    send(&[NotifyState::Ready]);
}

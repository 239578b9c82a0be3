//! The only place with `unsafe`: turning file descriptor numbers received
//! from systemd or a predecessor into owned sockets.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of `fd`, a descriptor this process was handed at start
/// by systemd (`LISTEN_FDS`).
///
/// The caller must pass each number once, and only numbers that systemd's
/// protocol says are open and ours.
pub fn adopt_listen_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: sd_listen_fds(3): descriptors 3..3+LISTEN_FDS are open and
    // belong to this process when LISTEN_PID is our pid (checked by
    // `sd_notify::listen_fds`); each is taken exactly once by the caller, so
    // no other owner closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

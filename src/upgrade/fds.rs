//! The only place with `unsafe`: file descriptors that cross a process
//! boundary, from systemd (`LISTEN_FDS`) or a predecessor (`SCM_RIGHTS`).
//!
//! Hand-over frames are `[u32 length, big endian][JSON]`, written with one
//! `sendmsg` whose ancillary data carries the frame's descriptors, and read
//! only with `recvmsg` (a buffered read would drop them).

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Descriptors per frame; SCM_RIGHTS allows 253 per message on Linux.
pub const MAX_FDS_PER_FRAME: usize = 250;
/// A frame longer than this is a protocol error, not an allocation.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Takes ownership of `fd`, a descriptor this process was handed at start
/// by systemd (`LISTEN_FDS`).
///
/// # Safety
/// `fd` must be open, owned by nothing else in this process, and passed
/// here once: sd_listen_fds(3) promises that of descriptors
/// 3..3+LISTEN_FDS when LISTEN_PID is our pid.
pub unsafe fn adopt_listen_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller upholds the contract above.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The sockets systemd passed (`LISTEN_FDS`/`LISTEN_FDNAMES`), by name;
/// none unless `LISTEN_PID` is our pid.
pub fn from_systemd() -> Vec<(String, OwnedFd)> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds.collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed LISTEN_FDS/LISTEN_FDNAMES");
            return Vec::new();
        }
    };
    fds.into_iter()
        // SAFETY: `listen_fds_with_names` checked LISTEN_PID and yields each
        // descriptor of 3..3+LISTEN_FDS once; this is its only caller.
        .map(|(fd, name)| (name, unsafe { adopt_listen_fd(fd) }))
        .collect()
}

/// The environment variable through which a predecessor names the
/// descriptor of the hand-over connection it made for the successor it
/// spawned (one end of a socketpair).
pub const HANDOVER_FD_ENV: &str = "BATON_HANDOVER_FD";

static HANDOVER_FD_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The hand-over connection our predecessor passed when it spawned us, if
/// it did: taken once, checked to be an open unix stream socket, made
/// close-on-exec so our own children do not inherit it.
pub fn handover_fd_from_env() -> Option<OwnedFd> {
    use nix::sys::stat::{SFlag, fstat};
    let raw: RawFd = std::env::var(HANDOVER_FD_ENV).ok()?.parse().ok()?;
    if raw < 3 || HANDOVER_FD_TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the number is only borrowed for the checks below; fstat of a
    // closed descriptor fails without side effects.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let is_socket = fstat(borrowed)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK);
    if !is_socket {
        tracing::warn!(
            fd = raw,
            "{HANDOVER_FD_ENV} names no socket; using the control socket"
        );
        return None;
    }
    // SAFETY: our predecessor opened this descriptor for us alone and named
    // it in the environment; nothing in this process opened or owns it,
    // and the flag above lets it be taken once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(fd)
}

/// A connected socketpair: ours (close-on-exec), and the child's end with
/// close-on-exec cleared, so the successor we spawn inherits it under the
/// same number. Only one successor is spawned at a time, so no other child
/// can inherit it by accident.
pub fn handover_pair() -> io::Result<(std::os::unix::net::UnixStream, OwnedFd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(io::Error::from)?;
    Ok((ours, theirs))
}

/// Sends one frame with `fds` attached.
pub async fn send_frame(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS_PER_FRAME, "callers batch descriptors");
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < frame.len() {
        let rest = &frame[sent..];
        // The descriptors ride on the first byte of the frame only.
        let with_fds = sent == 0 && !raw.is_empty();
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let cmsgs = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if with_fds { &cmsgs } else { &[] };
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(rest)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Receives one frame and every descriptor that came with it. `None` at a
/// clean end of stream before a frame starts.
pub async fn recv_frame(stream: &UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    if !recv_exact(stream, &mut header, &mut fds, true).await? {
        return Ok(None);
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    if !recv_exact(stream, &mut payload, &mut fds, false).await? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some((payload, fds)))
}

/// Fills `buf` with `recvmsg`, collecting descriptors into `fds`. Returns
/// false on end of stream before the first byte when `eof_ok`.
async fn recv_exact(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    eof_ok: bool,
) -> io::Result<bool> {
    let mut filled = 0;
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
    while filled < buf.len() {
        let (n, received) = stream
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut buf[filled..])];
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut received = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        received.extend(raw);
                    }
                }
                Ok((msg.bytes, received))
            })
            .await?;
        for fd in received {
            // SAFETY: the kernel just installed these descriptors in this
            // process for this message (SCM_RIGHTS); nothing else owns them.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            if filled == 0 && eof_ok {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

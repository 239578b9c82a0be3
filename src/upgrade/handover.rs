//! The predecessor's steps of the hand-over protocol, one function each,
//! over the hand-over connection (see the protocol in `upgrade`'s doc).

use std::os::fd::{AsFd, OwnedFd};

use tokio::net::UnixStream;

use super::HandoverError;
use super::fds::{MAX_FDS_PER_FRAME, send_frame};
use super::wire::{FromSuccessor, Header, ToSuccessor};
use crate::control::{Command, Request};
use crate::metrics::History;

/// What a successor asked for.
#[derive(Debug)]
pub struct HandoverRequest {
    pub pid: u32,
    /// The hand-over format it speaks (1 when it does not say).
    pub version: u32,
    /// Its config was refused: roll back with this reason.
    pub error: Option<String>,
}

/// Reads the successor's request line (the inherited-connection path; over
/// the control socket, `control` reads it).
pub async fn read_request(stream: &UnixStream) -> Result<HandoverRequest, HandoverError> {
    let line = read_line(stream)
        .await
        .map_err(|e| HandoverError::Request(e.to_string()))?;
    if line.is_empty() {
        return Err(HandoverError::SuccessorGone("it asked for the sockets"));
    }
    match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request {
            command:
                Command::Handover {
                    pid,
                    error,
                    handover_version,
                },
            ..
        }) => Ok(HandoverRequest {
            pid,
            version: handover_version.unwrap_or(1),
            error,
        }),
        Ok(other) => Err(HandoverError::Request(format!(
            "expected a hand-over request, got {:?}",
            other.command
        ))),
        Err(e) => Err(HandoverError::Request(e.to_string())),
    }
}

/// Sends the header, then every socket in batches of at most 250
/// descriptors, then `End`.
pub async fn send_sockets(
    stream: &UnixStream,
    header: Header,
    sockets: &[(String, OwnedFd)],
) -> Result<(), HandoverError> {
    let header =
        serde_json::to_vec(&ToSuccessor::Header(Box::new(header))).expect("frames serialize");
    tracing::info!(
        header_bytes = header.len(),
        sockets = sockets.len(),
        "sending the sockets"
    );
    send_frame(stream, &header, &[])
        .await
        .map_err(HandoverError::Sockets)?;
    for batch in sockets.chunks(MAX_FDS_PER_FRAME) {
        let names: Vec<String> = batch.iter().map(|(n, _)| n.clone()).collect();
        let fds: Vec<_> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
        let payload =
            serde_json::to_vec(&ToSuccessor::Sockets { names }).expect("frames serialize");
        send_frame(stream, &payload, &fds)
            .await
            .map_err(HandoverError::Sockets)?;
    }
    send(stream, &ToSuccessor::End)
        .await
        .map_err(HandoverError::Sockets)
}

/// Waits for the successor's `ready`: its pid and generation.
pub async fn wait_ready(stream: &UnixStream) -> Result<(u32, u64), HandoverError> {
    match event(stream, "it was ready").await? {
        FromSuccessor::Ready { pid, generation } => Ok((pid, generation)),
        FromSuccessor::Failed { reason } => Err(HandoverError::SuccessorFailed(reason)),
        other => Err(HandoverError::Protocol(format!(
            "expected ready, got {other:?}"
        ))),
    }
}

/// Tells the successor it owns everything, with every count of earlier
/// generations; a version-2 successor then confirms once it serves admin
/// and control (waited for here).
pub async fn release(
    stream: &UnixStream,
    history: History,
    version: u32,
) -> Result<(), HandoverError> {
    let frame = ToSuccessor::Released {
        history: (version >= 2).then_some(history),
    };
    send(stream, &frame).await.map_err(HandoverError::Release)?;
    if version < 2 {
        return Ok(());
    }
    match event(stream, "it confirmed the take-over").await? {
        FromSuccessor::TookOver => Ok(()),
        FromSuccessor::Failed { reason } => Err(HandoverError::SuccessorFailed(reason)),
        other => Err(HandoverError::Protocol(format!(
            "expected took_over, got {other:?}"
        ))),
    }
}

/// Tells the successor the upgrade is off (it drains what it accepted and
/// exits). Best effort: it may be gone.
pub async fn refuse(stream: &UnixStream, reason: &str) {
    let _ = send(
        stream,
        &ToSuccessor::Refused {
            reason: reason.to_string(),
        },
    )
    .await;
}

pub(super) async fn event(
    stream: &UnixStream,
    before: &'static str,
) -> Result<FromSuccessor, HandoverError> {
    let line = read_line(stream)
        .await
        .map_err(|e| HandoverError::Protocol(e.to_string()))?;
    if line.is_empty() {
        return Err(HandoverError::SuccessorGone(before));
    }
    serde_json::from_str(line.trim())
        .map_err(|e| HandoverError::Protocol(format!("bad message from the successor: {e}")))
}

async fn send(stream: &UnixStream, frame: &ToSuccessor) -> std::io::Result<()> {
    let payload = serde_json::to_vec(frame).expect("frames serialize");
    send_frame(stream, &payload, &[]).await
}

/// Reads one line byte by byte: nothing past it is consumed, so the stream
/// can go on carrying frames. Empty at end of stream.
async fn read_line(stream: &UnixStream) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                bytes.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
                if bytes.len() > 64 * 1024 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "line longer than 64 KiB",
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

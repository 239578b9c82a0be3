//! Live migration, the hand-over's half: once the successor took over, the
//! predecessor moves its established plain TCP streams to it instead of
//! draining them (hand-over format version 3).
//!
//! 1. The predecessor opens `proxy.moves` and interrupts every copy: each
//!    plain stream pauses at a clean point (nothing half written; bytes read
//!    and not yet written are kept), deregisters its sockets and parks.
//! 2. Parked streams go in batches of at most 125 (250 descriptors) in one
//!    `Streams` frame: metadata as JSON, both sockets of each stream as
//!    `SCM_RIGHTS`.
//! 3. The successor checks each against its own config (listener and
//!    cluster by name) and answers `Adopted { refused }`, still polling
//!    nothing. The predecessor answers `Commit` and closes its descriptors
//!    of the adopted streams; only then does the successor start them,
//!    writing the pending bytes first. Refused streams resume in the
//!    predecessor.
//! 4. No answer within `upgrade.migrate_timeout`, or the successor gone: the
//!    predecessor sends `Resume` (the successor closes its copies unread),
//!    takes the batch and every stream still parked back, and drains them.
//!    A socket is never polled by two processes; no byte is lost.
//! 5. `StreamsEnd` ends the migration; the predecessor exits as soon as it
//!    holds no stream.
//!
//! If the predecessor dies between `Adopted` and `Commit`, the successor
//! serves the batch: nobody else holds those streams any more.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::fds::{MAX_FDS_PER_FRAME, send_frame};
use super::wire::{FromSuccessor, MovedStream, ToSuccessor};
use crate::metrics::MIGRATION_FAILURE_REASONS;
use crate::proxy::Proxy;
use crate::proxy::copy::{Direction, Flow, Transferred};
use crate::proxy::moving::{Parked, StreamInfo};
use crate::proxy::route::Snapshot;
use crate::proxy::serve;

/// Two descriptors per stream.
const STREAMS_PER_BATCH: usize = MAX_FDS_PER_FRAME / 2;
/// Pending bytes per batch before it is sent (a frame stays small).
const PENDING_PER_BATCH: usize = 4 * 1024 * 1024;
/// How often the predecessor looks whether every copying stream parked.
const PARK_POLL: Duration = Duration::from_millis(5);

/// How a migration went, for `baton upgrade` and the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub moved: u64,
    /// Streams left in this process to drain.
    pub staying: u64,
}

/// Why streams were resumed (`reason` label of
/// `baton_migration_failures_total`).
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The successor did not answer within `upgrade.migrate_timeout`.
    Timeout,
    /// The successor went away (or broke the protocol).
    SuccessorGone,
    /// The successor's config has no such listener or cluster.
    NotInConfig,
    /// A stream kept copying without ever parking.
    NotParked,
}

impl Failure {
    fn as_str(self) -> &'static str {
        let [timeout, gone, config, parked] = MIGRATION_FAILURE_REASONS;
        match self {
            Failure::Timeout => timeout,
            Failure::SuccessorGone => gone,
            Failure::NotInConfig => config,
            Failure::NotParked => parked,
        }
    }
}

/// The predecessor's side: moves every plain stream it can, resumes what
/// could not move, and ends the migration. `version` is the successor's
/// hand-over format: below 3 it takes no streams.
pub async fn send_streams(
    stream: &UnixStream,
    version: u32,
    proxy: &Arc<Proxy>,
    enabled: bool,
    timeout: Duration,
) -> Outcome {
    let mut outcome = Outcome::default();
    if version < 3 {
        outcome.staying = proxy.drain.active() as u64;
        return outcome;
    }
    if !enabled {
        outcome.staying = proxy.drain.active() as u64;
        let _ = send(
            stream,
            &ToSuccessor::StreamsEnd {
                staying: outcome.staying,
            },
        )
        .await;
        return outcome;
    }
    let started = Instant::now();
    let mut parked = proxy.moves.open();
    proxy.drain.interrupt_copies();
    let mut back: Vec<(Parked, Failure)> = Vec::new();
    let mut failed = false;
    let mut last_park = Instant::now();
    let mut first = None;
    loop {
        let batch = take_batch(&mut parked, first.take());
        if batch.is_empty() {
            if proxy.moves.copying() == 0 {
                break;
            }
            if last_park.elapsed() > timeout {
                tracing::warn!(
                    copying = proxy.moves.copying(),
                    "streams did not pause within upgrade.migrate_timeout; they stay"
                );
                proxy
                    .metrics
                    .migration_failures
                    .with_label_values(&[Failure::NotParked.as_str()])
                    .inc_by(proxy.moves.copying() as u64);
                break;
            }
            tokio::select! {
                Some(p) = parked.recv() => first = Some(p),
                _ = tokio::time::sleep(PARK_POLL) => {}
            }
            continue;
        }
        last_park = Instant::now();
        match send_batch(stream, batch, timeout).await {
            Ok((moved, refused)) => {
                outcome.moved += moved;
                back.extend(refused.into_iter().map(|p| (p, Failure::NotInConfig)));
            }
            Err((batch, why)) => {
                tracing::warn!(
                    reason = why.as_str(),
                    streams = batch.len(),
                    "a batch of streams was not acknowledged; they stay and drain here"
                );
                back.extend(batch.into_iter().map(|p| (p, why)));
                failed = true;
                break;
            }
        }
    }
    // Streams that pause from now on go on here; those already parked
    // come back.
    proxy.moves.close();
    let why = if failed {
        back.last().map_or(Failure::SuccessorGone, |(_, w)| *w)
    } else {
        Failure::NotInConfig
    };
    while let Ok(p) = parked.try_recv() {
        back.push((p, why));
    }
    for (p, why) in back {
        proxy
            .metrics
            .migration_failures
            .with_label_values(&[why.as_str()])
            .inc();
        serve::adopt(proxy, p, Arc::new(AtomicUsize::new(0)), false);
    }
    outcome.staying = proxy.drain.active() as u64;
    if !failed {
        let _ = send(
            stream,
            &ToSuccessor::StreamsEnd {
                staying: outcome.staying,
            },
        )
        .await;
    }
    tracing::info!(
        moved = outcome.moved,
        staying = outcome.staying,
        took_ms = started.elapsed().as_millis() as u64,
        "live migration ended"
    );
    outcome
}

/// What is parked now, up to a batch's limits, after `first`.
fn take_batch(queue: &mut mpsc::UnboundedReceiver<Parked>, first: Option<Parked>) -> Vec<Parked> {
    let mut pending = first
        .as_ref()
        .map_or(0, |p| p.flow.up.pending.len() + p.flow.down.pending.len());
    let mut batch: Vec<Parked> = first.into_iter().collect();
    while batch.len() < STREAMS_PER_BATCH && pending < PENDING_PER_BATCH {
        match queue.try_recv() {
            Ok(p) => {
                pending += p.flow.up.pending.len() + p.flow.down.pending.len();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Sends one batch and waits for `Adopted`; on it, commits. The streams the
/// successor refused come back; on failure, the whole batch.
async fn send_batch(
    stream: &UnixStream,
    batch: Vec<Parked>,
    timeout: Duration,
) -> Result<(u64, Vec<Parked>), (Vec<Parked>, Failure)> {
    let streams: Vec<MovedStream> = batch.iter().map(describe).collect();
    let payload = serde_json::to_vec(&ToSuccessor::Streams { streams }).expect("frames serialize");
    let fds: Vec<_> = batch
        .iter()
        .flat_map(|p| [p.client.as_fd(), p.backend.as_fd()])
        .collect();
    if send_frame(stream, &payload, &fds).await.is_err() {
        return Err((batch, Failure::SuccessorGone));
    }
    let refused =
        match tokio::time::timeout(timeout, super::handover::event(stream, "adopted")).await {
            Ok(Ok(FromSuccessor::Adopted { refused })) => refused,
            Ok(_) => return Err((batch, Failure::SuccessorGone)),
            Err(_) => {
                // The successor may still answer later: `Resume` tells it the
                // batch is not its own, so it never polls those sockets.
                let _ = send(stream, &ToSuccessor::Resume).await;
                return Err((batch, Failure::Timeout));
            }
        };
    if send(stream, &ToSuccessor::Commit).await.is_err() {
        return Err((batch, Failure::SuccessorGone));
    }
    let mut kept = Vec::new();
    let mut moved = 0;
    for (i, p) in batch.into_iter().enumerate() {
        if refused.contains(&i) {
            kept.push(p);
        } else {
            // Our descriptors close here; the successor serves the stream.
            moved += 1;
        }
    }
    Ok((moved, kept))
}

fn describe(p: &Parked) -> MovedStream {
    let info = &p.info;
    MovedStream {
        listener: info.listener.to_string(),
        cluster: info.cluster.config.name.clone(),
        backend: info.backend.to_string(),
        backend_addr: info.backend_addr,
        client: info.client,
        sni: info.sni.clone(),
        started_ms: info
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        migrated: info.migrated,
        received: p.flow.bytes.received,
        sent: p.flow.bytes.sent,
        up_shut: p.flow.up.shut,
        down_shut: p.flow.down.shut,
        idle_ms: p.flow.idle.as_millis() as u64,
        up_pending: p.flow.up.pending.clone(),
        down_pending: p.flow.down.pending.clone(),
    }
}

/// A moved stream as this process will serve it, if its config has the
/// stream's listener and cluster.
fn arrive(
    moved: MovedStream,
    client: OwnedFd,
    backend: OwnedFd,
    snapshot: &Snapshot,
) -> Option<Parked> {
    snapshot.route(&moved.listener)?;
    let cluster = snapshot
        .clusters
        .iter()
        .find(|c| c.config.name == moved.cluster)?
        .clone();
    let info = StreamInfo {
        listener: moved.listener.into(),
        cluster,
        backend: moved.backend.into(),
        backend_addr: moved.backend_addr,
        client: moved.client,
        sni: moved.sni,
        started: UNIX_EPOCH + Duration::from_millis(moved.started_ms),
        migrated: moved.migrated + 1,
    };
    let flow = Flow {
        up: Direction {
            pending: moved.up_pending,
            shut: moved.up_shut,
        },
        down: Direction {
            pending: moved.down_pending,
            shut: moved.down_shut,
        },
        bytes: Transferred {
            received: moved.received,
            sent: moved.sent,
        },
        idle: Duration::from_millis(moved.idle_ms),
    };
    Some(Parked {
        info,
        flow,
        client: std::net::TcpStream::from(client),
        backend: std::net::TcpStream::from(backend),
    })
}

/// The successor's side, run after it took over: adopts each batch the
/// predecessor sends, until `StreamsEnd` or the connection ends.
/// `active(listener)` is the listener's connection count (for
/// `max_connections`).
pub async fn receive_streams(
    stream: UnixStream,
    proxy: Arc<Proxy>,
    active: impl Fn(&str) -> Arc<AtomicUsize>,
    released: Instant,
) {
    let mut moved = 0u64;
    let pause = TestPause::from_env();
    for batch in 1.. {
        pause.at(batch, "read").await;
        let (frame, fds) = match super::successor::next(&stream).await {
            Ok(f) => f,
            Err(_) => break,
        };
        let streams = match frame {
            ToSuccessor::Streams { streams } => streams,
            ToSuccessor::StreamsEnd { staying } => {
                proxy
                    .metrics
                    .migration_duration
                    .observe(released.elapsed().as_secs_f64());
                tracing::info!(
                    moved,
                    staying,
                    "live migration: every stream that can move arrived"
                );
                return;
            }
            other => {
                tracing::warn!(frame = ?other, "live migration: unexpected frame; no more streams taken");
                return;
            }
        };
        if fds.len() != streams.len() * 2 {
            tracing::warn!(
                streams = streams.len(),
                descriptors = fds.len(),
                "live migration: a batch without its sockets; none taken"
            );
            return;
        }
        let snapshot = proxy.snapshot.load();
        let mut fds = fds.into_iter();
        let mut ready = Vec::new();
        let mut refused = Vec::new();
        for (i, m) in streams.into_iter().enumerate() {
            let (c, b) = (fds.next(), fds.next());
            let (Some(c), Some(b)) = (c, b) else { break };
            let (listener, cluster) = (m.listener.clone(), m.cluster.clone());
            match arrive(m, c, b, &snapshot) {
                Some(p) => ready.push(p),
                None => {
                    tracing::info!(
                        listener,
                        cluster,
                        "a moved stream's listener or cluster is not in this config; it stays with the predecessor"
                    );
                    refused.push(i);
                }
            }
        }
        pause.at(batch, "answer").await;
        if super::successor::say(&stream, &FromSuccessor::Adopted { refused })
            .await
            .is_err()
        {
            // The predecessor is gone: nobody else holds these now.
            adopt_all(&proxy, ready, &active, &mut moved);
            return;
        }
        match super::successor::next(&stream).await {
            Ok((ToSuccessor::Commit, _)) => adopt_all(&proxy, ready, &active, &mut moved),
            Ok((ToSuccessor::Resume, _)) => {
                tracing::warn!(
                    streams = ready.len(),
                    "live migration: the predecessor kept a batch"
                );
                return;
            }
            Ok((other, _)) => {
                tracing::warn!(frame = ?other, "live migration: expected a commit; the batch stays with the predecessor");
                return;
            }
            Err(_) => {
                // The predecessor died after our answer: its descriptors
                // are closed, ours are the only ones.
                adopt_all(&proxy, ready, &active, &mut moved);
                return;
            }
        }
    }
}

/// Fault injection for the tests, off unless set:
/// `BATON_TEST_MIGRATION_PAUSE=<step>:<batch>` (`read` or `answer`) makes a
/// successor wait a minute before reading, or before answering, that batch,
/// and log it, so a test can kill it at exactly that step.
struct TestPause {
    at: Option<(String, u64)>,
}

impl TestPause {
    fn from_env() -> TestPause {
        let at = std::env::var("BATON_TEST_MIGRATION_PAUSE")
            .ok()
            .and_then(|v| {
                let (step, batch) = v.split_once(':')?;
                Some((step.to_string(), batch.parse().ok()?))
            });
        TestPause { at }
    }

    async fn at(&self, batch: u64, step: &str) {
        if self
            .at
            .as_ref()
            .is_some_and(|(s, b)| s == step && *b == batch)
        {
            tracing::warn!(pid = std::process::id(), "test pause: {step} batch {batch}");
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

fn adopt_all(
    proxy: &Arc<Proxy>,
    ready: Vec<Parked>,
    active: &impl Fn(&str) -> Arc<AtomicUsize>,
    moved: &mut u64,
) {
    for p in ready {
        let counter = active(&p.info.listener);
        serve::adopt(proxy, p, counter, true);
        *moved += 1;
    }
}

async fn send(stream: &UnixStream, frame: &ToSuccessor) -> std::io::Result<()> {
    let payload = serde_json::to_vec(frame).expect("frames serialize");
    send_frame(stream, &payload, &[]).await
}

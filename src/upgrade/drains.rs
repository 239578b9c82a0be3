//! Drain reports: a draining predecessor tells the accepting process how far
//! it is, once a second, and the accepting process exports it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::wire::DrainReport;
use crate::app::{App, Lifecycle};
use crate::control::{Command, PROTOCOL_VERSION, Request, Response};
use crate::status::DrainingStatus;

const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A predecessor registered at release that never reports is forgotten
/// after this long (it died before it could).
const UNCLAIMED_AFTER: Duration = Duration::from_secs(5);

/// A draining predecessor as the accepting process sees it.
pub(crate) struct Draining {
    generation: u64,
    connections: u64,
    elapsed_seconds: f64,
    /// Reports arrive on an open connection; `false` for a placeholder.
    reporting: bool,
    since: Instant,
}

/// Draining predecessors by pid.
pub(crate) type Drains = std::sync::Mutex<BTreeMap<u32, Draining>>;

impl App {
    /// Records a report; `false` when this process no longer accepts, so
    /// the reporter must find the one that does.
    pub(crate) fn record_drain(&self, report: DrainReport) -> bool {
        if matches!(self.lifecycle(), Lifecycle::Draining | Lifecycle::Stopped) {
            return false;
        }
        let metrics = &self.proxy.metrics;
        metrics.set_earlier(report.generation, report.counts);
        let generation = report.generation.to_string();
        metrics
            .drain_connections_active
            .with_label_values(&[&generation])
            .set(report.connections as i64);
        metrics
            .drain_elapsed
            .with_label_values(&[&generation])
            .set(report.elapsed_seconds);
        let mut drains = self.drains.lock().expect("drain lock is never poisoned");
        drains.insert(
            report.pid,
            Draining {
                generation: report.generation,
                connections: report.connections,
                elapsed_seconds: report.elapsed_seconds,
                reporting: true,
                since: Instant::now(),
            },
        );
        metrics.draining_processes.set(drains.len() as i64);
        true
    }

    /// A predecessor that just released its sockets drains from now on,
    /// before its first report arrives.
    pub(crate) fn expect_drain(&self, pid: u32, generation: u64) {
        let mut drains = self.drains.lock().expect("drain lock is never poisoned");
        drains.entry(pid).or_insert(Draining {
            generation,
            connections: 0,
            elapsed_seconds: 0.0,
            reporting: false,
            since: Instant::now(),
        });
        self.proxy
            .metrics
            .draining_processes
            .set(drains.len() as i64);
    }

    /// The predecessor's report connection closed: it exited (or died). Its
    /// drain series go; its last counts stay in the totals.
    pub(crate) fn drain_ended(&self, pid: u32) {
        let mut drains = self.drains.lock().expect("drain lock is never poisoned");
        if let Some(gone) = drains.remove(&pid) {
            self.forget_drain_series(gone.generation);
            tracing::info!(
                pid,
                generation = gone.generation,
                "predecessor finished draining"
            );
        }
        self.proxy
            .metrics
            .draining_processes
            .set(drains.len() as i64);
    }

    fn forget_drain_series(&self, generation: u64) {
        let metrics = &self.proxy.metrics;
        let generation = generation.to_string();
        let _ = metrics
            .drain_connections_active
            .remove_label_values(&[&generation]);
        let _ = metrics.drain_elapsed.remove_label_values(&[&generation]);
    }

    /// Drops placeholders nobody claimed.
    pub(crate) fn sweep_drains(&self) {
        let mut drains = self.drains.lock().expect("drain lock is never poisoned");
        let stale: Vec<u32> = drains
            .iter()
            .filter(|(_, d)| !d.reporting && d.since.elapsed() > UNCLAIMED_AFTER)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in stale {
            if let Some(gone) = drains.remove(&pid) {
                self.forget_drain_series(gone.generation);
            }
        }
        self.proxy
            .metrics
            .draining_processes
            .set(drains.len() as i64);
    }

    pub fn draining_count(&self) -> usize {
        self.drains
            .lock()
            .expect("drain lock is never poisoned")
            .len()
    }

    pub(crate) fn draining_status(&self) -> Vec<DrainingStatus> {
        self.drains
            .lock()
            .expect("drain lock is never poisoned")
            .iter()
            .map(|(pid, d)| DrainingStatus {
                pid: *pid,
                generation: d.generation,
                connections: d.connections,
                elapsed_seconds: d.elapsed_seconds,
            })
            .collect()
    }

    fn drain_report(&self, started: Instant) -> DrainReport {
        DrainReport {
            pid: std::process::id(),
            generation: self.generation,
            connections: self.proxy.drain.active() as u64,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            counts: self.proxy.metrics.own_counts(),
        }
    }
}

/// Runs in a draining predecessor: reports to whoever accepts on the control
/// socket, reconnecting when that changes, until `stop`; then one final
/// report.
pub(crate) async fn report_loop(
    app: Arc<App>,
    control_socket: PathBuf,
    started: Instant,
    stop: CancellationToken,
) {
    let mut conn: Option<BufReader<UnixStream>> = None;
    loop {
        let report = app.drain_report(started);
        if conn.is_none() {
            conn = UnixStream::connect(&control_socket)
                .await
                .ok()
                .map(BufReader::new);
        }
        if let Some(c) = conn.as_mut()
            && !send_report(c, report).await
        {
            conn = None;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
    let last = app.drain_report(started);
    if conn.is_none() {
        conn = UnixStream::connect(&control_socket)
            .await
            .ok()
            .map(BufReader::new);
    }
    if let Some(c) = conn.as_mut() {
        send_report(c, last).await;
    }
}

/// One report and its answer; false when the connection must be replaced.
async fn send_report(conn: &mut BufReader<UnixStream>, report: DrainReport) -> bool {
    let request = Request {
        v: PROTOCOL_VERSION,
        command: Command::DrainReport(report),
    };
    let mut line = serde_json::to_vec(&request).expect("requests serialize");
    line.push(b'\n');
    if conn.get_mut().write_all(&line).await.is_err() {
        return false;
    }
    let mut answer = String::new();
    match tokio::time::timeout(Duration::from_secs(2), conn.read_line(&mut answer)).await {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<Response>(answer.trim()).is_ok_and(|r| r.ok),
        _ => false,
    }
}

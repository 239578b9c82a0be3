//! Drain reports: a draining predecessor tells the accepting process how far
//! it is, once a second, and the accepting process exports it.
//!
//! Only this lineage's predecessors may report (their pids come with the
//! hand-over), each only about itself (`SO_PEERCRED` pid = report pid),
//! and a report is validated before anything of it is stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::wire::DrainReport;
use crate::control::{Command, PROTOCOL_VERSION, Request, Response};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::status::DrainingStatus;

const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A predecessor registered at release that never reports is forgotten
/// after this long (it died before it could).
const UNCLAIMED_AFTER: Duration = Duration::from_secs(5);

/// A draining predecessor as the accepting process sees it.
struct Draining {
    generation: u64,
    connections: u64,
    elapsed_seconds: f64,
    /// Reports arrive on an open connection; `false` for a placeholder.
    reporting: bool,
    since: Instant,
}

/// Draining predecessors by pid: the only pids whose reports are taken.
#[derive(Default)]
pub struct Drains {
    by_pid: BTreeMap<u32, Draining>,
}

/// Why a drain report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("pid {0} is not a draining predecessor of this process")]
    Unknown(u32),
    #[error("report for pid {report} sent by pid {peer}")]
    NotItself { report: u32, peer: u32 },
    #[error("invalid counts: {0}")]
    Invalid(String),
}

impl Drains {
    /// A predecessor drains from now on, before its first report arrives.
    pub fn expect(&mut self, pid: u32, generation: u64, metrics: &Metrics) {
        self.by_pid.entry(pid).or_insert(Draining {
            generation,
            connections: 0,
            elapsed_seconds: 0.0,
            reporting: false,
            since: Instant::now(),
        });
        metrics.draining_processes.set(self.by_pid.len() as i64);
    }

    /// Takes a report from `peer`, or says why not (nothing is stored then).
    pub fn record(
        &mut self,
        report: DrainReport,
        peer: u32,
        metrics: &Metrics,
    ) -> Result<(), ReportError> {
        if peer != report.pid {
            return Err(ReportError::NotItself {
                report: report.pid,
                peer,
            });
        }
        let Some(known) = self.by_pid.get_mut(&report.pid) else {
            return Err(ReportError::Unknown(report.pid));
        };
        metrics
            .validate(&report.counts)
            .map_err(ReportError::Invalid)?;
        known.generation = report.generation;
        known.connections = report.connections;
        known.elapsed_seconds = report.elapsed_seconds;
        known.reporting = true;
        known.since = Instant::now();
        let generation = report.generation.to_string();
        metrics
            .drain_connections_active
            .with_label_values(&[&generation])
            .set(report.connections as i64);
        metrics
            .drain_elapsed
            .with_label_values(&[&generation])
            .set(report.elapsed_seconds);
        metrics.set_live(report.pid, report.generation, report.counts);
        Ok(())
    }

    /// The predecessor's report connection closed: it exited (or died). Its
    /// drain series go; its last counts join the earlier sum.
    pub fn ended(&mut self, pid: u32, metrics: &Metrics) {
        if let Some(gone) = self.by_pid.remove(&pid) {
            forget_series(metrics, gone.generation);
            metrics.fold(pid);
            tracing::info!(
                pid,
                generation = gone.generation,
                "predecessor finished draining"
            );
        }
        metrics.draining_processes.set(self.by_pid.len() as i64);
    }

    /// Drops placeholders nobody claimed (the predecessor died first).
    pub fn sweep(&mut self, metrics: &Metrics) {
        let stale: Vec<u32> = self
            .by_pid
            .iter()
            .filter(|(_, d)| !d.reporting && d.since.elapsed() > UNCLAIMED_AFTER)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in stale {
            self.ended(pid, metrics);
        }
    }

    pub fn count(&self) -> usize {
        self.by_pid.len()
    }

    pub fn status(&self) -> Vec<DrainingStatus> {
        self.by_pid
            .iter()
            .map(|(pid, d)| DrainingStatus {
                pid: *pid,
                generation: d.generation,
                connections: d.connections,
                elapsed_seconds: d.elapsed_seconds,
            })
            .collect()
    }
}

fn forget_series(metrics: &Metrics, generation: u64) {
    let generation = generation.to_string();
    let _ = metrics
        .drain_connections_active
        .remove_label_values(&[&generation]);
    let _ = metrics.drain_elapsed.remove_label_values(&[&generation]);
}

fn report(proxy: &Proxy, generation: u64, started: Instant) -> DrainReport {
    DrainReport {
        pid: std::process::id(),
        generation,
        connections: proxy.drain.active() as u64,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        counts: proxy.metrics.own_counts(),
    }
}

/// Runs in a draining predecessor: reports to whoever accepts on the control
/// socket, reconnecting when that changes, until `stop`; then one final
/// report.
pub async fn report_loop(
    proxy: Arc<Proxy>,
    generation: u64,
    control_socket: PathBuf,
    started: Instant,
    stop: CancellationToken,
) {
    let mut conn: Option<BufReader<UnixStream>> = None;
    loop {
        let now = report(&proxy, generation, started);
        if conn.is_none() {
            conn = UnixStream::connect(&control_socket)
                .await
                .ok()
                .map(BufReader::new);
        }
        if let Some(c) = conn.as_mut()
            && !send_report(c, now).await
        {
            conn = None;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
    // The last one: if the connection we had was refused meanwhile (its
    // process handed over), find the one that accepts now.
    for _ in 0..3 {
        let last = report(&proxy, generation, started);
        if conn.is_none() {
            conn = UnixStream::connect(&control_socket)
                .await
                .ok()
                .map(BufReader::new);
        }
        let Some(c) = conn.as_mut() else { return };
        if send_report(c, last).await {
            return;
        }
        conn = None;
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

//! Active health checks: a TCP connect (and TLS handshake, and with `http`
//! a `GET path` whose status must be in `expect`) to every backend of each
//! cluster that has `health_check`, every `interval` with jitter so checks
//! do not align. The last failure's reason shows on `/status`.
//! `fall` failures in a row take a backend out of rotation, `rise` successes
//! bring it back. (Passive ejection after connect failures lives in
//! `balance::BackendState`.)

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::balance::{Backend, BackendState};
use crate::config::HealthCheckConfig;
use crate::metrics::ConnectErrorReason;
use crate::proxy::connect::{BackendStream, open};
use crate::proxy::route::{Cluster, Snapshot};

/// Starts the checks a snapshot asks for; cancelling the token stops them.
/// Backend state is shared across snapshots, so a restart keeps verdicts.
pub fn start(snapshot: &Snapshot) -> CancellationToken {
    let stop = CancellationToken::new();
    for cluster in &snapshot.clusters {
        match &cluster.config.health_check {
            Some(check) => {
                for backend in &cluster.backends {
                    tokio::spawn(check_loop(
                        cluster.clone(),
                        backend.clone(),
                        check.clone(),
                        stop.clone(),
                    ));
                }
            }
            None => {
                // Checks were removed: nothing can bring a down backend back.
                for backend in &cluster.backends {
                    if backend.state.is_checked_down() {
                        backend.state.set_checked_down(false);
                    }
                }
            }
        }
    }
    stop
}

/// A check is a connect, plus the TLS handshake for a cluster with `tls`,
/// plus `GET path` with `health_check.http`.
async fn check_loop(
    cluster: Arc<Cluster>,
    backend: Backend,
    check: HealthCheckConfig,
    stop: CancellationToken,
) {
    let cluster_name = cluster.config.name.as_str();
    // Spread the first checks over one interval.
    let mut delay = check.interval.mul_f64(fastrand::f64());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        // ±10% jitter.
        delay = check.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        let failure = match tokio::time::timeout(check.timeout, probe(&cluster, &backend, &check))
            .await
        {
            Ok(Ok(())) => None,
            Ok(Err(Failure::Local(e))) => {
                // Our own limit, not the backend's fault: no verdict.
                tracing::warn!(cluster = cluster_name, backend = %backend.address, error = %e, "health check skipped: local error");
                continue;
            }
            Ok(Err(Failure::Backend(reason))) => Some(reason),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(check.timeout)
            )),
        };
        let ok = failure.is_none();
        if let Some(reason) = &failure {
            tracing::debug!(cluster = cluster_name, backend = %backend.address, reason, "health check failed");
        }
        backend.state.set_check_failure(failure);
        if let Some(up) = observe(&backend.state, ok, &check) {
            if up {
                tracing::info!(cluster = cluster_name, backend = %backend.address, addr = %backend.addr, "backend up: health checks pass");
            } else {
                let reason = backend.state.check_failure().unwrap_or_default();
                tracing::warn!(cluster = cluster_name, backend = %backend.address, addr = %backend.addr, reason, "backend down: health checks fail");
            }
        }
    }
}

enum Failure {
    /// This machine's limit (no descriptors, no memory).
    Local(std::io::Error),
    /// The backend's: the reason `/status` shows.
    Backend(String),
}

/// One check: connect (and handshake), then the HTTP request if any.
async fn probe(
    cluster: &Cluster,
    backend: &Backend,
    check: &HealthCheckConfig,
) -> Result<(), Failure> {
    let mut stream = match open(cluster, backend.addr, &[]).await {
        Ok(s) => s,
        Err((ConnectErrorReason::Local, e)) => return Err(Failure::Local(e)),
        Err((ConnectErrorReason::Tls, e)) => {
            return Err(Failure::Backend(format!("TLS handshake: {e}")));
        }
        Err((_, e)) => return Err(Failure::Backend(format!("connect: {e}"))),
    };
    let Some(http) = &check.http else {
        return Ok(());
    };
    let host = http.host.as_deref().unwrap_or(&backend.address);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: baton-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path
    );
    let status = match &mut stream {
        BackendStream::Plain(s) => exchange(s, request.as_bytes()).await?,
        BackendStream::Tls(s) => exchange(&mut **s, request.as_bytes()).await?,
    };
    if http.expects(status) {
        Ok(())
    } else {
        Err(Failure::Backend(format!(
            "HTTP {status} from GET {} (expected {})",
            http.path, http.expect_text
        )))
    }
}

/// Sends `request`; the status code of the answer's first line
/// (`HTTP/1.x NNN ...`).
async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    request: &[u8],
) -> Result<u16, Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::Backend(format!("sending the request: {e}")))?;
    // A status line is short; more than this without a line end is not HTTP.
    const MAX: usize = 1024;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    let line = loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            break &head[..end];
        }
        if head.len() > MAX {
            return Err(Failure::Backend(
                "no HTTP status line in the first 1 KiB".into(),
            ));
        }
        match stream.read(&mut buf).await {
            Ok(0) => {
                return Err(Failure::Backend(if head.is_empty() {
                    "closed without answering".into()
                } else {
                    "closed in the middle of the status line".into()
                }));
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(Failure::Backend(format!("reading the answer: {e}"))),
        }
    };
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(version), Some(code))
            if version.starts_with("HTTP/1.") && (100..=599).contains(&code) =>
        {
            Ok(code)
        }
        _ => Err(Failure::Backend(format!(
            "not an HTTP status line: {:?}",
            text.chars().take(80).collect::<String>()
        ))),
    }
}

/// Records one check result; returns the new verdict when it changed
/// (`Some(true)` = back up).
pub fn observe(state: &Arc<BackendState>, ok: bool, check: &HealthCheckConfig) -> Option<bool> {
    let down = state.is_checked_down();
    // The streak counts results that argue for a change of verdict.
    if ok != down {
        state.check_streak.store(0, Ordering::Relaxed);
        return None;
    }
    let streak = state.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
    let needed = if down { check.rise } else { check.fall };
    if streak < needed {
        return None;
    }
    state.check_streak.store(0, Ordering::Relaxed);
    state.set_checked_down(!down);
    Some(down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Duration;

    #[test]
    fn fall_then_rise() {
        let metrics = Metrics::new(0);
        let state = Arc::new(BackendState::new(metrics.backend("c", "b:1")));
        let check = HealthCheckConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            http: None,
        };
        // Results: a failure streak broken by a success does not count.
        let results = [false, false, true, false, false, false, true, true];
        let verdicts: Vec<Option<bool>> = results
            .iter()
            .map(|&ok| observe(&state, ok, &check))
            .collect();
        assert_eq!(
            verdicts,
            [None, None, None, None, None, Some(false), None, Some(true)]
        );
        assert!(state.is_healthy());
    }
}

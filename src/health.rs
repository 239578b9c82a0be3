//! Active health checks: a TCP connect to every backend of each cluster that
//! has `health_check`, every `interval` with jitter so checks do not align.
//! `fall` failures in a row take a backend out of rotation, `rise` successes
//! bring it back. (Passive ejection after connect failures lives in
//! `balance::BackendState`.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

use crate::balance::{Backend, BackendState};
use crate::config::HealthCheckConfig;
use crate::metrics::ConnectErrorReason;
use crate::proxy::connect::open;
use crate::proxy::route::{Cluster, Snapshot};

/// Starts the checks a snapshot asks for; cancelling the token stops them.
/// Backend state is shared across snapshots, so a restart keeps verdicts.
pub fn start(snapshot: &Snapshot) -> CancellationToken {
    let stop = CancellationToken::new();
    for cluster in &snapshot.clusters {
        match cluster.config.health_check {
            Some(check) => {
                for backend in &cluster.backends {
                    tokio::spawn(check_loop(
                        cluster.clone(),
                        backend.clone(),
                        check,
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

/// A check is a connect, plus the TLS handshake for a cluster with `tls`.
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
        let ok = match tokio::time::timeout(check.timeout, open(&cluster, backend.addr, &[])).await
        {
            Ok(Ok(_)) => true,
            Ok(Err((ConnectErrorReason::Local, e))) => {
                // Our own limit, not the backend's fault: no verdict.
                tracing::warn!(cluster = cluster_name, backend = %backend.address, error = %e, "health check skipped: local error");
                delay = check.interval;
                continue;
            }
            _ => false,
        };
        if let Some(up) = observe(&backend.state, ok, &check) {
            if up {
                tracing::info!(cluster = cluster_name, backend = %backend.address, addr = %backend.addr, "backend up: health checks pass");
            } else {
                tracing::warn!(cluster = cluster_name, backend = %backend.address, addr = %backend.addr, "backend down: health checks fail");
            }
        }
        // ±10% jitter.
        delay = check.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
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

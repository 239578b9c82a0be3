//! Backends and the algorithms that choose one per new connection, one file
//! per algorithm behind the [`Balancer`] trait.

mod hash_source_ip;
mod least_conn;
mod p2c;
mod random;
mod round_robin;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::BalanceKind;
use crate::metrics::BackendMetrics;

pub use hash_source_ip::HashSourceIp;
pub use least_conn::LeastConn;
pub use p2c::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;

/// One address a cluster can connect to. A DNS name that yields several
/// addresses gives several backends with the same `address` label.
#[derive(Clone)]
pub struct Backend {
    /// As written in the config (`target:port` for an SRV target): the
    /// metric label.
    pub address: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    /// SRV priority (lower first); 0 for an address backend.
    pub priority: u16,
    /// The SRV name it came from.
    pub srv: Option<Arc<str>>,
    /// Live state, shared by every snapshot that names this backend.
    pub state: Arc<BackendState>,
}

/// What outlives a reload: health, active count, ejection.
pub struct BackendState {
    pub active: AtomicUsize,
    /// Marked down by active health checks.
    checked_down: AtomicBool,
    /// Consecutive check results in the current direction (see `health`).
    pub check_streak: AtomicU32,
    /// Consecutive failed connects seen by the data path.
    pub connect_failures: AtomicU32,
    /// Passive ejection: no new connections before this instant
    /// (milliseconds on [`clock_ms`]); 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// How many times in a row it was ejected: the back-off doubles.
    ejections: AtomicU32,
    /// Why the last failed health check failed (cleared by a pass); health
    /// checks and `/status` only, never the data path.
    check_failure: std::sync::Mutex<Option<String>>,
    pub metrics: BackendMetrics,
}

/// Consecutive connect failures that eject a backend from new connections.
pub const EJECT_AFTER_FAILURES: u32 = 3;
const EJECT_BASE_MS: u64 = 1_000;
const EJECT_MAX_MS: u64 = 30_000;

/// Milliseconds since the process started, on the monotonic clock.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl BackendState {
    pub fn new(metrics: BackendMetrics) -> BackendState {
        metrics.healthy.set(1);
        BackendState {
            active: AtomicUsize::new(0),
            checked_down: AtomicBool::new(false),
            check_streak: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            check_failure: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// The last health check's failure, `None` once one passes.
    pub fn check_failure(&self) -> Option<String> {
        self.check_failure
            .lock()
            .expect("check failure lock is never poisoned")
            .clone()
    }

    pub fn set_check_failure(&self, reason: Option<String>) {
        *self
            .check_failure
            .lock()
            .expect("check failure lock is never poisoned") = reason;
    }

    /// Takes new connections: not down by health checks, not ejected.
    pub fn is_healthy(&self) -> bool {
        if self.checked_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || clock_ms() >= until
    }

    pub fn is_checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    /// The verdict of active health checks.
    pub fn set_checked_down(&self, down: bool) {
        self.checked_down.store(down, Ordering::Relaxed);
        if !down {
            // A passing check also ends a passive ejection.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
        }
        self.refresh_gauge();
    }

    pub fn refresh_gauge(&self) {
        self.metrics.healthy.set(self.is_healthy() as i64);
    }

    /// A connect succeeded: the failure streak and any back-off end.
    pub fn connect_succeeded(&self) {
        if self.connect_failures.swap(0, Ordering::Relaxed) != 0
            || self.ejected_until_ms.load(Ordering::Relaxed) != 0
        {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.refresh_gauge();
        }
    }

    /// A connect failed. After [`EJECT_AFTER_FAILURES`] in a row the backend
    /// gets no new connections for a back-off (1 s doubling to 30 s); the
    /// returned duration says for how long, when this failure ejected it.
    pub fn connect_failed(&self) -> Option<Duration> {
        let failures = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER_FAILURES {
            return None;
        }
        self.connect_failures.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let backoff = (EJECT_BASE_MS << n).min(EJECT_MAX_MS);
        self.ejected_until_ms
            .store(clock_ms() + backoff, Ordering::Relaxed);
        self.refresh_gauge();
        Some(Duration::from_millis(backoff))
    }

    /// Counts one more connection to this backend until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        ActiveGuard(self.clone())
    }
}

pub struct ActiveGuard(Arc<BackendState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active.dec();
    }
}

/// Chooses a backend for a new connection.
pub trait Balancer: Send + Sync {
    /// The index of the chosen backend among those for which `usable`
    /// holds, or `None` when there is none.
    fn pick(
        &self,
        backends: &[Backend],
        client: IpAddr,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize>;
}

pub fn new_balancer(kind: BalanceKind, backends: &[Backend]) -> Box<dyn Balancer> {
    match kind {
        BalanceKind::RoundRobin => Box::new(RoundRobin::new(backends)),
        BalanceKind::LeastConn => Box::new(LeastConn::default()),
        BalanceKind::Random => Box::new(Random::new(backends)),
        BalanceKind::P2c => Box::new(PowerOfTwo::new(backends)),
        BalanceKind::HashSourceIp => Box::new(HashSourceIp::new(backends)),
    }
}

/// `a` carries less load than `b` relative to their weights.
fn lighter(a: &Backend, b: &Backend) -> bool {
    let load = |x: &Backend| x.state.active.load(Ordering::Relaxed) as u64;
    load(a) * u64::from(b.weight) < load(b) * u64::from(a.weight)
}

/// Weighted random choice among usable backends, by cumulative weight.
fn weighted_random(backends: &[Backend], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..backends.len())
        .filter(|&i| usable(i))
        .map(|i| u64::from(backends[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(0..total);
    for (i, b) in backends.iter().enumerate() {
        if !usable(i) {
            continue;
        }
        let w = u64::from(b.weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::metrics::Metrics;

    pub fn backends(weights: &[u32]) -> Vec<Backend> {
        let metrics = Metrics::new(0);
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let address: Arc<str> = format!("10.0.0.{}:80", i + 1).into();
                Backend {
                    addr: address.parse().unwrap(),
                    state: Arc::new(BackendState::new(metrics.backend("c", &address))),
                    address,
                    weight,
                    priority: 0,
                    srv: None,
                }
            })
            .collect()
    }

    pub fn client() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }
}

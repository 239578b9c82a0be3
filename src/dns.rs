//! Backend names are looked up again every `resolve_interval`. A changed
//! answer becomes a new routing snapshot (same config generation); a failed
//! lookup keeps the last addresses; addresses that stay keep their health.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, resolve};
use crate::proxy::Proxy;

/// How often the loop wakes when no cluster names a backend by DNS name.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// One lookup's answer: cluster, backend as written, addresses or error.
pub type Lookup = (String, String, Result<Vec<SocketAddr>, String>);

/// Looks up every due backend name off the runtime's workers and sends the
/// answers to `to`, whose owner applies them (serialised with reloads),
/// until `stop`.
pub async fn refresh_loop(
    proxy: Arc<Proxy>,
    to: mpsc::Sender<Vec<Lookup>>,
    stop: CancellationToken,
) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        let config = proxy.snapshot.load().config.clone();
        let tick = named_clusters(&config)
            .map(|c| c.resolve_interval)
            .min()
            .unwrap_or(IDLE_TICK)
            .min(IDLE_TICK);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = named_clusters(&config)
            .filter(|c| {
                last.get(&c.name)
                    .is_none_or(|t| now.duration_since(*t) + tick / 10 >= c.resolve_interval)
            })
            .flat_map(|c| {
                c.backends
                    .iter()
                    .filter(|b| b.address.parse::<SocketAddr>().is_err())
                    .map(|b| (c.name.clone(), b.address.clone()))
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        for (cluster, _) in &due {
            last.insert(cluster.clone(), now);
        }
        let lookups = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(cluster, address)| {
                    let answer = resolve(&address);
                    (cluster, address, answer)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if to.send(lookups).await.is_err() {
            return;
        }
    }
}

/// `config` with the new answers, or `None` if no address changed. A failed
/// lookup keeps the last addresses.
pub fn apply(config: &Config, lookups: Vec<Lookup>) -> Option<Config> {
    let mut next = config.clone();
    let mut changed = false;
    for (cluster, address, answer) in lookups {
        let Some(backend) = next
            .clusters
            .iter_mut()
            .find(|c| c.name == cluster)
            .and_then(|c| c.backends.iter_mut().find(|b| b.address == address))
        else {
            continue;
        };
        match answer {
            Ok(addrs) if addrs != backend.resolved => {
                tracing::info!(cluster, backend = address, from = ?backend.resolved, to = ?addrs, "backend name resolves to new addresses");
                backend.resolved = addrs;
                changed = true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cluster, backend = address, error = e, kept = ?backend.resolved, "backend name lookup failed; keeping the last addresses")
            }
        }
    }
    changed.then_some(next)
}

fn named_clusters(config: &Config) -> impl Iterator<Item = &crate::config::ClusterConfig> {
    config.clusters.iter().filter(|c| {
        c.backends
            .iter()
            .any(|b| b.address.parse::<SocketAddr>().is_err())
    })
}

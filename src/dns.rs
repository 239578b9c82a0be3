//! Backend names are looked up again every `resolve_interval`. A changed
//! answer becomes a new routing snapshot (same config generation); a failed
//! lookup keeps the last addresses; addresses that stay keep their health.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{App, Lifecycle};
use crate::config::{Config, resolve};
use crate::proxy::route::Snapshot;

/// How often the loop wakes when no cluster names a backend by DNS name.
const IDLE_TICK: Duration = Duration::from_secs(30);

pub async fn refresh_loop(app: Arc<App>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        let config = app.proxy.snapshot.load().config.clone();
        let tick = named_clusters(&config)
            .map(|c| c.resolve_interval)
            .min()
            .unwrap_or(IDLE_TICK)
            .min(IDLE_TICK);
        tokio::time::sleep(tick).await;
        if app.lifecycle() == Lifecycle::Draining {
            // The process that accepts now keeps the addresses current.
            return;
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

        // Serialised with reloads, and applied to whatever config is live now.
        let _one_at_a_time = app.reload_lock.lock().await;
        let current = app.proxy.snapshot.load_full();
        let mut next = (*current.config).clone();
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
        if changed {
            let snapshot = Snapshot::build(
                Arc::new(next),
                current.generation,
                &app.backend_states,
                &app.proxy.metrics,
            );
            match snapshot {
                Ok(snapshot) => app.install(Arc::new(snapshot)),
                Err(e) => tracing::error!(error = e, "cannot apply new backend addresses"),
            }
        }
    }
}

fn named_clusters(config: &Config) -> impl Iterator<Item = &crate::config::ClusterConfig> {
    config.clusters.iter().filter(|c| {
        c.backends
            .iter()
            .any(|b| b.address.parse::<SocketAddr>().is_err())
    })
}

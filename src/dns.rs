//! Backend names (`HOST:PORT` and SRV) are looked up again every
//! `resolve_interval`, of `dns.servers` or the system resolver. A changed
//! answer becomes a new routing snapshot (same config generation); a failed
//! lookup keeps the last addresses; addresses (and SRV targets) that stay
//! keep their health and streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Answer, Config, Query, lookup};
use crate::proxy::Proxy;

/// How often the loop wakes when no cluster names a backend by DNS name.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// One lookup's answer: cluster, backend as written, and the answer.
pub type Lookup = (String, String, Answer);

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
        let due: Vec<(String, String, Query)> = named_clusters(&config)
            .filter(|c| {
                last.get(&c.name)
                    .is_none_or(|t| now.duration_since(*t) + tick / 10 >= c.resolve_interval)
            })
            .flat_map(|c| {
                c.backends.iter().filter_map(|b| {
                    let query = match b.srv {
                        Some(_) => Query::Srv(b.address.clone()),
                        None if is_name(&b.address) => Query::Host(b.address.clone()),
                        None => return None,
                    };
                    Some((c.name.clone(), b.address.clone(), query))
                })
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        for (cluster, _, _) in &due {
            last.insert(cluster.clone(), now);
        }
        let servers = config.dns_servers.clone();
        let lookups = tokio::task::spawn_blocking(move || {
            let queries: Vec<Query> = due.iter().map(|(_, _, q)| q.clone()).collect();
            let answers = lookup(&servers, &queries);
            due.into_iter()
                .zip(answers)
                .map(|((cluster, address, _), answer)| (cluster, address, answer))
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
            Answer::Addrs(Ok(addrs)) if addrs != backend.resolved => {
                tracing::info!(cluster, backend = address, from = ?backend.resolved, to = ?addrs, "backend name resolves to new addresses");
                backend.resolved = addrs;
                changed = true;
            }
            Answer::Srv(Ok(targets)) if backend.srv.as_ref() != Some(&targets) => {
                let labels = |t: &[crate::config::SrvTarget]| {
                    t.iter()
                        .map(|t| {
                            format!("{} (priority {}, weight {})", t.label, t.priority, t.weight)
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                tracing::info!(
                    cluster,
                    srv = address,
                    from = labels(backend.srv.as_deref().unwrap_or_default()),
                    to = labels(&targets),
                    "SRV name names new targets"
                );
                backend.srv = Some(targets);
                changed = true;
            }
            Answer::Addrs(Ok(_)) | Answer::Srv(Ok(_)) => {}
            Answer::Addrs(Err(e)) | Answer::Srv(Err(e)) => {
                tracing::warn!(
                    cluster,
                    backend = address,
                    error = e,
                    "backend lookup failed; keeping the last answer"
                )
            }
        }
    }
    changed.then_some(next)
}

fn named_clusters(config: &Config) -> impl Iterator<Item = &crate::config::ClusterConfig> {
    config.clusters.iter().filter(|c| {
        c.backends
            .iter()
            .any(|b| b.srv.is_some() || is_name(&b.address))
    })
}

/// A `HOST:PORT` whose host is a name, not an IP address.
fn is_name(address: &str) -> bool {
    address.parse::<SocketAddr>().is_err()
}

//! Config reload in process: read the file again, validate it as `baton
//! check` does, bind what is new, then swap the routing snapshot in one
//! store. A config that fails any step changes nothing.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{self, Config, ConfigDiff, ConfigError};
use crate::control::ReloadReport;
use crate::proxy::Proxy;
use crate::proxy::listener::bind;
use crate::proxy::route::{Kept, Snapshot};
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config refused, nothing changed:\n{0}")]
    Config(#[from] ConfigError),
    #[error("config refused, nothing changed: {key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("config refused, nothing changed: {0}")]
    Snapshot(#[from] crate::proxy::route::SnapshotError),
    #[error("config refused, nothing changed: listener {name} cannot be shared: {source}")]
    Share {
        name: String,
        source: std::io::Error,
    },
    #[error("reload failed: {0}")]
    Internal(String),
}

/// A new config read, validated and bound, not yet live.
pub struct Prepared {
    pub started: Instant,
    pub dry_run: bool,
    old: Arc<Snapshot>,
    new: Config,
    diff: ConfigDiff,
    /// Sockets of listeners that are new or moved, bound.
    bound: Vec<(String, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
}

/// Reads the config file again and validates it as `baton check` does,
/// then binds every address that is new: everything that can fail, before
/// anything changes. Runs off the owner's task (DNS lookups block).
pub async fn prepare(old: Arc<Snapshot>, dry_run: bool) -> Result<Prepared, ReloadError> {
    let started = Instant::now();
    let path = old.config.path.clone();
    let new = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|e| ReloadError::Internal(e.to_string()))??;
    if !dry_run {
        new.log_warnings();
    }
    let diff = config::diff(&old.config, &new);
    let mut bound = Vec::new();
    let mut admin = None;
    if !dry_run {
        for (i, l) in new.listeners.iter().enumerate() {
            let is_new =
                diff.listeners_added.contains(&l.name) || diff.listeners_moved.contains(&l.name);
            if is_new {
                let socket = bind(l.listen).map_err(|source| ReloadError::Bind {
                    key: format!("listeners[{i}].listen"),
                    addr: l.listen,
                    source,
                })?;
                bound.push((l.name.clone(), socket));
            }
        }
        if diff.admin_moved {
            admin = Some(bind(new.admin_listen).map_err(|source| ReloadError::Bind {
                key: "admin.listen".into(),
                addr: new.admin_listen,
                source,
            })?);
        }
    }
    Ok(Prepared {
        started,
        dry_run,
        old,
        new,
        diff,
        bound,
        admin,
    })
}

/// What `commit` leaves for the owner: a moved admin socket to serve.
pub struct Committed {
    pub report: ReloadReport,
    pub snapshot: Option<Arc<Snapshot>>,
    pub admin: Option<std::net::TcpListener>,
}

/// Makes a prepared config live: builds the snapshot (the last step that
/// can refuse), then one swap, then the listener changes.
pub fn commit(
    prepared: Prepared,
    proxy: &Proxy,
    kept: &Kept,
    registry: &mut Registry,
) -> Result<Committed, ReloadError> {
    let Prepared {
        started,
        dry_run,
        old,
        new,
        diff,
        mut bound,
        admin,
    } = prepared;
    let report = |generation| ReloadReport {
        config_generation: generation,
        dry_run,
        changes: diff.lines(),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    if dry_run {
        return Ok(Committed {
            report: report(old.generation),
            snapshot: None,
            admin: None,
        });
    }
    let generation = old.generation + 1;
    for (from, to) in &diff.listeners_renamed {
        let socket = registry
            .share(from)
            .ok_or_else(|| ReloadError::Internal(format!("listener {from} is not running")))?
            .map_err(|source| ReloadError::Share {
                name: from.clone(),
                source,
            })?;
        bound.push((to.clone(), socket));
    }
    let metrics = &proxy.metrics;
    let new = Arc::new(new);
    let snapshot =
        Snapshot::build(new.clone(), generation, kept, metrics).map_err(ReloadError::Snapshot)?;
    let snapshot = Arc::new(snapshot);
    // The swap: from here on every new connection sees the new config.
    metrics.declare(&new);
    proxy.snapshot.store(snapshot.clone());
    metrics.config_generation.set(generation as i64);

    for (name, socket) in bound {
        if let Err(e) = registry.start(&name, socket) {
            tracing::error!(listener = name, error = %e, "cannot accept on a reloaded listener");
        }
    }
    for name in &diff.listeners_removed {
        registry.remove(name, false);
    }
    for (from, _) in &diff.listeners_renamed {
        // The renamed loop shares the socket and serves the queue.
        registry.remove(from, true);
    }
    for gone in &diff.backends_removed {
        if let Some((cluster, address)) = gone.split_once('/') {
            metrics.forget_backend(cluster, address);
        }
    }
    for cluster in &diff.clusters_removed {
        for b in old.config.cluster(cluster).map_or(&[][..], |c| &c.backends) {
            metrics.forget_backend(cluster, &b.address);
        }
    }
    Ok(Committed {
        report: report(generation),
        snapshot: Some(snapshot),
        admin,
    })
}

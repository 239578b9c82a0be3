//! Config reload in process: read the file again, validate it as `baton
//! check` does, bind what is new, then swap the routing snapshot in one
//! store. A config that fails any step changes nothing.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::MutexGuard;

use crate::app::App;
use crate::config::{self, Config, ConfigError};
use crate::control::ReloadReport;
use crate::proxy::listener::bind;
use crate::proxy::route::Snapshot;
use crate::systemd;

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
    #[error("reload failed: {0}")]
    Internal(String),
}

impl App {
    /// Runs one reload; the caller holds the reload lock.
    pub(crate) async fn reload_locked(
        self: &Arc<Self>,
        dry_run: bool,
        _one_at_a_time: MutexGuard<'_, ()>,
    ) -> Result<ReloadReport, ReloadError> {
        let started = Instant::now();
        if dry_run {
            return self.apply(true, started).await;
        }
        systemd::reloading();
        let metrics = &self.proxy.metrics;
        let result = self.apply(false, started).await;
        metrics
            .config_reload_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(report) => {
                metrics.config_reloads.with_label_values(&["success"]).inc();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics.config_last_reload_success.set(now);
                tracing::info!(generation = report.config_generation, changes = %report.changes.join("; "), "config reloaded");
                systemd::reloaded(&format!("config generation {}", report.config_generation));
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!("{e}");
                systemd::reloaded("last reload failed; the previous config still serves");
            }
        }
        result
    }

    async fn apply(
        self: &Arc<Self>,
        dry_run: bool,
        started: Instant,
    ) -> Result<ReloadReport, ReloadError> {
        let old = self.proxy.snapshot.load_full();
        let path = old.config.path.clone();
        // Validation resolves DNS names: keep it off the runtime's workers.
        let new = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::Internal(e.to_string()))??;
        let diff = config::diff(&old.config, &new);
        let generation = old.generation + 1;
        let report = |generation| ReloadReport {
            config_generation: generation,
            dry_run,
            changes: diff.lines(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        if dry_run {
            return Ok(report(old.generation));
        }

        // Bind everything new before changing anything.
        let mut sockets = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            let is_new =
                diff.listeners_added.contains(&l.name) || diff.listeners_moved.contains(&l.name);
            if is_new {
                let socket = bind(l.listen).map_err(|source| ReloadError::Bind {
                    key: format!("listeners[{i}].listen"),
                    addr: l.listen,
                    source,
                })?;
                sockets.push((l.name.clone(), socket));
            }
        }
        for (from, to) in &diff.listeners_renamed {
            let listeners = self
                .listeners
                .lock()
                .expect("listener lock is never poisoned");
            let socket = listeners
                .get(from)
                .ok_or_else(|| ReloadError::Internal(format!("listener {from} is not running")))?
                .socket
                .try_clone()
                .map_err(|e| ReloadError::Internal(format!("cannot share listener {from}: {e}")))?;
            sockets.push((to.clone(), socket));
        }
        let admin_socket = if diff.admin_moved {
            Some(bind(new.admin_listen).map_err(|source| ReloadError::Bind {
                key: "admin.listen".into(),
                addr: new.admin_listen,
                source,
            })?)
        } else {
            None
        };

        let metrics = &self.proxy.metrics;
        let new = Arc::new(new);
        let snapshot = Snapshot::build(new.clone(), generation, &self.backend_states, metrics)
            .map_err(ReloadError::Internal)?;
        // The swap: from here on every new connection sees the new config.
        metrics.declare(&new);
        self.install(Arc::new(snapshot));
        metrics.config_generation.set(generation as i64);

        for (name, socket) in sockets {
            self.start_listener(&name, socket)
                .map_err(|e| ReloadError::Internal(format!("listener {name}: {e}")))?;
        }
        {
            let mut listeners = self
                .listeners
                .lock()
                .expect("listener lock is never poisoned");
            for name in &diff.listeners_removed {
                if let Some(l) = listeners.remove(name) {
                    l.stop(false);
                }
            }
            for (from, _) in &diff.listeners_renamed {
                // The renamed loop shares the socket and serves the queue.
                if let Some(l) = listeners.remove(from) {
                    l.stop(true);
                }
            }
        }
        if let Some(socket) = admin_socket {
            self.start_admin(socket)
                .map_err(|e| ReloadError::Internal(format!("admin: {e}")))?;
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
        Ok(report(generation))
    }
}

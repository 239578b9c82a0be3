//! Wiring: builds the routing snapshot, binds listeners and admin, runs until
//! a stop signal, then drains. Phases: `Starting → Ready → Draining → Stopped`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::listener::bind;
use crate::proxy::route::{BackendStates, Snapshot};
use crate::proxy::serve::{AcceptLoop, OnStop};

/// Where the process is in its life; `/readyz` is 200 only in `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopped = 3,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Ready => "ready",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> Lifecycle {
        match v {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            2 => Lifecycle::Draining,
            _ => Lifecycle::Stopped,
        }
    }
}

/// A listener this process accepts on.
struct RunningListener {
    addr: SocketAddr,
    stop: CancellationToken,
    active: Arc<AtomicUsize>,
}

/// The running process.
pub struct App {
    pub proxy: Arc<Proxy>,
    /// Process generation: 0 on first start, +1 per upgrade.
    pub generation: u64,
    lifecycle: AtomicU8,
    backend_states: BackendStates,
    listeners: Mutex<HashMap<String, RunningListener>>,
}

impl App {
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    fn set_lifecycle(&self, phase: Lifecycle) {
        self.lifecycle.store(phase as u8, Ordering::Release);
        tracing::info!(phase = phase.as_str(), "lifecycle");
    }

    pub fn encode_metrics(&self) -> Vec<u8> {
        self.proxy.metrics.encode()
    }

    pub fn status(&self) -> Status {
        let snapshot = self.proxy.snapshot.load();
        let listeners = self.listeners.lock().expect("listener lock is never poisoned");
        Status {
            pid: std::process::id(),
            generation: self.generation,
            config_generation: snapshot.generation,
            lifecycle: self.lifecycle().as_str(),
            listeners: snapshot
                .config
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    address: listeners
                        .get(&l.name)
                        .map_or(l.listen, |r| r.addr)
                        .to_string(),
                    cluster: l.cluster.clone(),
                    active: listeners
                        .get(&l.name)
                        .map_or(0, |r| r.active.load(Ordering::Relaxed)),
                    max_connections: l.max_connections,
                })
                .collect(),
            clusters: snapshot
                .clusters
                .iter()
                .map(|c| ClusterStatus {
                    name: c.config.name.clone(),
                    balance: c.config.balance.as_str(),
                    backends: c
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            address: b.address.to_string(),
                            resolved: b.addr.to_string(),
                            weight: b.weight,
                            healthy: b.state.is_healthy(),
                            active: b.state.active.load(Ordering::Relaxed),
                        })
                        .collect(),
                })
                .collect(),
            draining: Vec::new(),
        }
    }

    /// Starts accepting on `listener` under the name `name`.
    fn start_listener(self: &Arc<Self>, name: &str, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let stop = self.proxy.drain.accepting().child_token();
        let active = Arc::new(AtomicUsize::new(0));
        let accept = AcceptLoop {
            name: name.into(),
            proxy: self.proxy.clone(),
            metrics: self.proxy.metrics.listener(name),
            active: active.clone(),
        };
        tokio::spawn(accept.run(listener, stop.clone(), OnStop::ServeQueued));
        self.listeners
            .lock()
            .expect("listener lock is never poisoned")
            .insert(name.to_string(), RunningListener { addr, stop, active });
        tracing::info!(listener = name, %addr, "listening");
        Ok(())
    }
}

/// The JSON of `/status` and `baton status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub pid: u32,
    pub generation: u64,
    pub config_generation: u64,
    pub lifecycle: &'static str,
    pub listeners: Vec<ListenerStatus>,
    pub clusters: Vec<ClusterStatus>,
    pub draining: Vec<DrainingStatus>,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    pub cluster: String,
    pub active: usize,
    pub max_connections: usize,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub balance: &'static str,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub resolved: String,
    pub weight: u32,
    pub healthy: bool,
    pub active: usize,
}

#[derive(Debug, Serialize)]
pub struct DrainingStatus {
    pub pid: u32,
    pub generation: u64,
    pub connections: u64,
    pub elapsed_seconds: f64,
}

/// Runs baton in this process until a stop signal and the drain after it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::limits::raise_nofile();
    let metrics = Metrics::new(0);
    metrics.declare(&config);
    metrics.config_generation.set(1);
    let backend_states = BackendStates::default();
    let config = Arc::new(config);
    let snapshot = Snapshot::build(config.clone(), 1, &backend_states, &metrics);
    let proxy = Arc::new(Proxy {
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics,
        drain: Drain::default(),
    });
    let app = Arc::new(App {
        proxy,
        generation: 0,
        lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
        backend_states,
        listeners: Mutex::new(HashMap::new()),
    });

    // Bind everything before serving anything: a port in use fails the start
    // as a whole.
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let socket = bind(l.listen)
            .with_context(|| format!("listeners.{}: cannot listen on {}", l.name, l.listen))?;
        bound.push((l.name.clone(), socket));
    }
    let admin_socket = bind(config.admin_listen)
        .with_context(|| format!("admin.listen: cannot listen on {}", config.admin_listen))?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    for (name, socket) in bound {
        app.start_listener(&name, socket)?;
    }
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(crate::admin::serve(
        TcpListener::from_std(admin_socket)?,
        app.clone(),
        admin_stop.clone(),
    ));
    tracing::info!(admin = %config.admin_listen, "admin listening");
    if let Some(pid_file) = &config.pid_file {
        write_pid_file(pid_file)
            .with_context(|| format!("pid_file: cannot write {}", pid_file.display()))?;
    }
    app.set_lifecycle(Lifecycle::Ready);
    tracing::info!(pid = std::process::id(), config = %config.path.display(), summary = %config.summary(), "baton is serving");

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP: config reload is not available in this build; nothing changed");
            }
        }
    }

    app.set_lifecycle(Lifecycle::Draining);
    let drain_timeout = app.proxy.snapshot.load().config.drain_timeout;
    tracing::info!(connections = app.proxy.drain.active(), timeout = ?drain_timeout, "stopping: draining open connections");
    let forced = tokio::select! {
        forced = app.proxy.drain.drain(drain_timeout) => forced,
        _ = sigterm.recv() => stop_now(&app),
        _ = sigint.recv() => stop_now(&app),
    };
    if forced > 0 {
        tracing::warn!(forced, "drain timeout: closed the remaining connections");
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    if let Some(pid_file) = &config.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    app.set_lifecycle(Lifecycle::Stopped);
    tracing::info!("stopped");
    Ok(())
}

/// A second stop signal: cut every connection and go.
fn stop_now(app: &App) -> usize {
    let remaining = app.proxy.drain.active();
    tracing::warn!(remaining, "second stop signal: closing everything now");
    app.proxy.drain.cut();
    remaining
}

/// Writes the pid file atomically: a temporary file renamed over the old one,
/// so a reader never sees it empty or half written.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

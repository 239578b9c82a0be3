//! Wiring: builds the routing snapshot, binds listeners, admin and control,
//! runs until a stop signal, then drains.
//! Phases: `Starting → Ready → Draining → Stopped`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{self, Command, Response};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::listener::bind;
use crate::proxy::route::{BackendStates, Snapshot};
use crate::proxy::serve::AcceptLoop;
use crate::status::{BackendStatus, ClusterStatus, ListenerStatus, Status};
use crate::systemd;
use crate::upgrade::Inherited;

/// The name of the admin listener among inherited sockets.
pub const ADMIN_SOCKET_NAME: &str = "admin";

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
pub(crate) struct RunningListener {
    pub addr: SocketAddr,
    /// Our own handle on the socket, for renames and hand-over; dropped
    /// (closed) together with the accept loop's.
    pub socket: std::net::TcpListener,
    pub stop: CancellationToken,
    /// Set before `stop` fires: leave queued connections to a process that
    /// shares the socket instead of serving them.
    pub leave_queue: Arc<AtomicBool>,
    pub active: Arc<AtomicUsize>,
}

impl RunningListener {
    /// Stops accepting. Closing our fds never affects another process that
    /// shares the socket (no `shutdown(2)`).
    pub fn stop(self, leave_queue: bool) {
        self.leave_queue.store(leave_queue, Ordering::Release);
        self.stop.cancel();
    }
}

/// The admin server of this process.
pub(crate) struct AdminServer {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

/// The running process.
pub struct App {
    pub proxy: Arc<Proxy>,
    /// Process generation: 0 on first start, +1 per upgrade.
    pub generation: u64,
    lifecycle: AtomicU8,
    pub(crate) backend_states: BackendStates,
    pub(crate) listeners: Mutex<HashMap<String, RunningListener>>,
    pub(crate) admin: Mutex<Option<AdminServer>>,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// SIGHUPs are stored here; several during one reload make one more.
    pub(crate) reload_requested: Notify,
    /// Stops the health checks of the snapshot in use.
    health: Mutex<Option<CancellationToken>>,
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
        let listeners = self
            .listeners
            .lock()
            .expect("listener lock is never poisoned");
        Status {
            pid: std::process::id(),
            generation: self.generation,
            config_generation: snapshot.generation,
            lifecycle: self.lifecycle().as_str().to_string(),
            config: snapshot.config.path.display().to_string(),
            listeners: snapshot
                .config
                .listeners
                .iter()
                .map(|l| {
                    let running = listeners.get(&l.name);
                    ListenerStatus {
                        name: l.name.clone(),
                        address: running.map_or(l.listen, |r| r.addr).to_string(),
                        cluster: l.cluster.clone(),
                        active: running.map_or(0, |r| r.active.load(Ordering::Relaxed)),
                        max_connections: l.max_connections,
                    }
                })
                .collect(),
            clusters: snapshot
                .clusters
                .iter()
                .map(|c| ClusterStatus {
                    name: c.config.name.clone(),
                    balance: c.config.balance.as_str().to_string(),
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

    /// Makes `snapshot` the one every new connection uses (one atomic
    /// store) and restarts health checks for it.
    pub(crate) fn install(&self, snapshot: Arc<Snapshot>) {
        self.proxy.snapshot.store(snapshot.clone());
        let checks = crate::health::start(&snapshot);
        let old = self
            .health
            .lock()
            .expect("health lock is never poisoned")
            .replace(checks);
        if let Some(old) = old {
            old.cancel();
        }
        self.backend_states.prune();
    }

    /// Answers one control-socket command.
    pub async fn control(self: Arc<Self>, command: Command) -> Response {
        match command {
            Command::Status => Response {
                status: Some(self.status()),
                ..Response::ok()
            },
            Command::Reload { dry_run } => match self.reload_lock.try_lock() {
                Err(_) => {
                    Response::error("a reload is already in progress; try again when it ends")
                }
                Ok(guard) => match self.reload_locked(dry_run, guard).await {
                    Ok(report) => Response {
                        reload: Some(report),
                        ..Response::ok()
                    },
                    Err(e) => Response::error(e.to_string()),
                },
            },
        }
    }

    /// Starts accepting on `socket` under the listener name `name`.
    pub(crate) fn start_listener(
        self: &Arc<Self>,
        name: &str,
        socket: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        let addr = socket.local_addr()?;
        let ours = socket.try_clone()?;
        let listener = TcpListener::from_std(socket)?;
        let stop = self.proxy.drain.accepting().child_token();
        let leave_queue = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let accept = AcceptLoop {
            name: name.into(),
            proxy: self.proxy.clone(),
            metrics: self.proxy.metrics.listener(name),
            active: active.clone(),
        };
        tokio::spawn(accept.run(listener, stop.clone(), leave_queue.clone()));
        let running = RunningListener {
            addr,
            socket: ours,
            stop,
            leave_queue,
            active,
        };
        let old = self
            .listeners
            .lock()
            .expect("listener lock is never poisoned")
            .insert(name.to_string(), running);
        if let Some(old) = old {
            old.stop(false);
        }
        tracing::info!(listener = name, %addr, "listening");
        Ok(())
    }

    pub(crate) fn start_admin(
        self: &Arc<Self>,
        socket: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        let addr = socket.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::admin::serve(
            TcpListener::from_std(socket)?,
            self.clone(),
            stop.clone(),
        ));
        let old = self
            .admin
            .lock()
            .expect("admin lock is never poisoned")
            .replace(AdminServer { stop, task });
        if let Some(old) = old {
            old.stop.cancel();
        }
        tracing::info!(%addr, "admin listening");
        Ok(())
    }

    /// Stops every accept loop and closes this process's listening fds.
    fn stop_listeners(&self, leave_queue: bool) {
        let mut listeners = self
            .listeners
            .lock()
            .expect("listener lock is never poisoned");
        for (_, l) in listeners.drain() {
            l.stop(leave_queue);
        }
    }

    async fn stop_admin(&self) {
        let admin = self
            .admin
            .lock()
            .expect("admin lock is never poisoned")
            .take();
        if let Some(admin) = admin {
            admin.stop.cancel();
            let _ = admin.task.await;
        }
    }

    /// Reloads on every SIGHUP; SIGHUPs that arrive during a reload make
    /// exactly one more afterwards.
    async fn reload_on_request(self: Arc<Self>) {
        loop {
            self.reload_requested.notified().await;
            if self.lifecycle() != Lifecycle::Ready {
                tracing::info!("SIGHUP ignored: not serving");
                continue;
            }
            let guard = self.reload_lock.lock().await;
            match self.reload_locked(false, guard).await {
                Ok(report) => tracing::info!(
                    generation = report.config_generation,
                    changes = %report.changes.join("; "),
                    "SIGHUP reload done"
                ),
                Err(e) => tracing::error!("SIGHUP reload refused: {e}"),
            }
        }
    }
}

/// Runs baton in this process until a stop signal and the drain after it.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::limits::raise_nofile();
    let control_socket = control::bind(&config.control_socket)?;
    let control_path = config.control_socket.clone();
    let result = serve(config, control_socket).await;
    // Only the process that owns the control socket removes it, and only
    // when it stops for good.
    let _ = std::fs::remove_file(&control_path);
    result
}

async fn serve(
    config: Config,
    control_socket: std::os::unix::net::UnixListener,
) -> anyhow::Result<()> {
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
        admin: Mutex::new(None),
        reload_lock: tokio::sync::Mutex::new(()),
        reload_requested: Notify::new(),
        health: Mutex::new(None),
    });

    // Bind everything before serving anything: a port in use fails the start
    // as a whole.
    // Sockets passed by systemd are adopted by name; the rest are bound.
    let mut inherited = Inherited::from_systemd();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let socket = match inherited.take_tcp(&l.name, l.listen) {
            Some(s) => s,
            None => bind(l.listen)
                .with_context(|| format!("listeners.{}: cannot listen on {}", l.name, l.listen))?,
        };
        bound.push((l.name.clone(), socket));
    }
    let admin_socket = match inherited.take_tcp(ADMIN_SOCKET_NAME, config.admin_listen) {
        Some(s) => s,
        None => bind(config.admin_listen)
            .with_context(|| format!("admin.listen: cannot listen on {}", config.admin_listen))?,
    };
    inherited.close_rest();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    for (name, socket) in bound {
        app.start_listener(&name, socket)?;
    }
    app.start_admin(admin_socket)?;
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(control::serve(
        tokio::net::UnixListener::from_std(control_socket)?,
        app.clone(),
        control_stop.clone(),
    ));
    if let Some(pid_file) = &config.pid_file {
        write_pid_file(pid_file)
            .with_context(|| format!("pid_file: cannot write {}", pid_file.display()))?;
    }
    app.install(app.proxy.snapshot.load_full());
    tokio::spawn(app.clone().reload_on_request());
    tokio::spawn(crate::dns::refresh_loop(app.clone()));
    app.set_lifecycle(Lifecycle::Ready);
    systemd::ready();
    tracing::info!(pid = std::process::id(), config = %config.path.display(), summary = %config.summary(), "baton is serving");

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => app.reload_requested.notify_one(),
        }
    }

    app.set_lifecycle(Lifecycle::Draining);
    systemd::stopping();
    app.stop_listeners(false);
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
    app.stop_admin().await;
    control_stop.cancel();
    let _ = control_task.await;
    let pid_file = app.proxy.snapshot.load().config.pid_file.clone();
    if let Some(pid_file) = pid_file {
        remove_pid_file(&pid_file);
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

/// Removes the pid file if it still names this process.
fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

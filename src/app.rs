//! Wiring: builds the routing snapshot, binds (or inherits) listeners, admin
//! and control, serves until a stop signal or a hand-over, then drains.
//! Phases: `Starting → Ready → Draining → Stopped`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{self, Command, Response};
use crate::drain::Drain;
use crate::logging::LogFormat;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::proxy::listener::bind;
use crate::proxy::route::{BackendStates, Snapshot};
use crate::proxy::serve::AcceptLoop;
use crate::status::{BackendStatus, ClusterStatus, ListenerStatus, Status};
use crate::systemd;
use crate::upgrade::drains::{Drains, report_loop};
use crate::upgrade::predecessor::UpgradeSlot;
use crate::upgrade::successor::{self, Release};
use crate::upgrade::{Inherited, is_listening};

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

/// How this process was started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `argv[0]` made absolute at start: what `SIGUSR2` runs (a symlink stays
    /// a symlink, so a replaced file on disk is what runs next).
    pub exe: PathBuf,
    pub log_format: LogFormat,
    /// Take the listeners of a running baton instead of binding them.
    pub upgrade: bool,
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

/// A server task (admin, control) with our own handle on its socket.
pub(crate) struct Server<S> {
    pub socket: S,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

/// The running process.
pub struct App {
    pub proxy: Arc<Proxy>,
    /// Process generation: 0 on first start, +1 per upgrade.
    pub generation: u64,
    pub(crate) options: RunOptions,
    lifecycle: AtomicU8,
    pub(crate) backend_states: BackendStates,
    pub(crate) listeners: Mutex<HashMap<String, RunningListener>>,
    pub(crate) admin: Mutex<Option<Server<std::net::TcpListener>>>,
    pub(crate) control: Mutex<Option<Server<std::os::unix::net::UnixListener>>>,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// SIGHUPs are stored here; several during one reload make one more.
    pub(crate) reload_requested: Notify,
    /// Stops the health checks of the snapshot in use.
    health: Mutex<Option<CancellationToken>>,
    pub(crate) upgrade_slot: UpgradeSlot,
    pub(crate) drains: Drains,
    /// Whether this process owns the control socket and pid file (removes
    /// them when it stops for good).
    owner: AtomicBool,
    /// Fired when a successor took over.
    handed_over: Notify,
}

impl App {
    fn new(
        config: Config,
        generation: u64,
        config_generation: u64,
        options: RunOptions,
    ) -> anyhow::Result<Arc<App>> {
        let metrics = Metrics::new(generation);
        metrics.declare(&config);
        metrics.config_generation.set(config_generation as i64);
        let backend_states = BackendStates::default();
        let snapshot = Snapshot::build(
            Arc::new(config),
            config_generation,
            &backend_states,
            &metrics,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Arc::new(App {
            proxy: Arc::new(Proxy {
                snapshot: ArcSwap::from_pointee(snapshot),
                metrics,
                drain: Drain::default(),
            }),
            generation,
            options,
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            backend_states,
            listeners: Mutex::new(HashMap::new()),
            admin: Mutex::new(None),
            control: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            reload_requested: Notify::new(),
            health: Mutex::new(None),
            upgrade_slot: UpgradeSlot::default(),
            drains: Mutex::new(BTreeMap::new()),
            owner: AtomicBool::new(false),
            handed_over: Notify::new(),
        }))
    }

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
                        cluster: l.cluster.clone().unwrap_or_default(),
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
            draining: self.draining_status(),
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
            Command::Reload { dry_run } => {
                if self.lifecycle() != Lifecycle::Ready {
                    return Response::error(format!(
                        "this process is {}; reload the one that accepts",
                        self.lifecycle().as_str()
                    ));
                }
                match self.reload_lock.try_lock() {
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
                }
            }
            Command::Upgrade { binary } => match self.upgrade(binary).await {
                Ok(report) => Response {
                    upgrade: Some(report),
                    ..Response::ok()
                },
                Err(reason) => Response::error(reason),
            },
            Command::Handover { .. } | Command::DrainReport(_) => {
                Response::error("handled by the control connection")
            }
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

    pub(crate) fn start_admin(
        self: &Arc<Self>,
        socket: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        let addr = socket.local_addr()?;
        let ours = socket.try_clone()?;
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
            .replace(Server {
                socket: ours,
                stop,
                task,
            });
        if let Some(old) = old {
            old.stop.cancel();
        }
        tracing::info!(%addr, "admin listening");
        Ok(())
    }

    async fn stop_admin(&self) {
        let admin = self
            .admin
            .lock()
            .expect("admin lock is never poisoned")
            .take();
        if let Some(admin) = admin {
            admin.stop.cancel();
            drop(admin.socket);
            let _ = admin.task.await;
        }
    }

    fn start_control(
        self: &Arc<Self>,
        socket: std::os::unix::net::UnixListener,
    ) -> anyhow::Result<()> {
        let ours = socket.try_clone()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(control::serve(
            tokio::net::UnixListener::from_std(socket)?,
            self.clone(),
            stop.clone(),
        ));
        *self.control.lock().expect("control lock is never poisoned") = Some(Server {
            socket: ours,
            stop,
            task,
        });
        Ok(())
    }

    /// Stops answering new control connections (open ones finish).
    fn stop_control(&self) {
        if let Some(control) = self
            .control
            .lock()
            .expect("control lock is never poisoned")
            .take()
        {
            control.stop.cancel();
        }
    }

    /// The successor is ready: stop accepting, stop serving admin and
    /// control, and let the successor own everything.
    pub(crate) async fn release(&self) {
        self.set_lifecycle(Lifecycle::Draining);
        self.stop_listeners(true);
        // The successor checks the backends now.
        if let Some(checks) = self
            .health
            .lock()
            .expect("health lock is never poisoned")
            .take()
        {
            checks.cancel();
        }
        self.stop_control();
        self.stop_admin().await;
        self.owner.store(false, Ordering::Release);
        self.handed_over.notify_one();
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

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    /// Registered before anything else, so SIGHUP and SIGUSR2 never kill a
    /// process that is starting or draining: they are simply not acted on.
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs baton in this process until a stop signal and the drain after it,
/// or, once a successor took over, until this process has drained.
pub async fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    crate::limits::raise_nofile();
    let mut signals = Signals::new()?;
    let app = if options.upgrade {
        start_as_successor(config, options, &mut signals).await?
    } else {
        start(config, options).await?
    };
    serve(app, signals).await
}

/// First start: bind (or adopt from systemd) everything.
async fn start(config: Config, options: RunOptions) -> anyhow::Result<Arc<App>> {
    let control_socket = control::bind(&config.control_socket)?;
    let app = match App::new(config.clone(), 0, 1, options) {
        Ok(app) => app,
        Err(e) => {
            let _ = std::fs::remove_file(&config.control_socket);
            return Err(e);
        }
    };
    app.owner.store(true, Ordering::Release);
    let mut inherited = Inherited::from_systemd();
    let bound = adopt_or_bind(&config, &mut inherited);
    inherited.close_rest();
    let (bound, admin) = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&config.control_socket);
            return Err(e);
        }
    };
    for (name, socket) in bound {
        app.start_listener(&name, socket)?;
    }
    app.install(app.proxy.snapshot.load_full());
    if let Some(pid_file) = &config.pid_file {
        write_pid_file(pid_file)
            .with_context(|| format!("pid_file: cannot write {}", pid_file.display()))?;
    }
    // Ready before admin and control answer, so nobody who reaches them
    // sees a process that is still starting.
    app.set_lifecycle(Lifecycle::Ready);
    app.start_admin(admin)?;
    app.start_control(control_socket)?;
    systemd::ready();
    tracing::info!(pid = std::process::id(), config = %config.path.display(), summary = %config.summary(), "baton is serving");
    Ok(app)
}

/// `run --upgrade`: take the running process's sockets, start accepting
/// beside it, report ready, and own everything once it lets go.
async fn start_as_successor(
    config: Config,
    options: RunOptions,
    signals: &mut Signals,
) -> anyhow::Result<Arc<App>> {
    let mut predecessor = successor::receive(&config.control_socket).await?;
    let header = &predecessor.header;
    let app = match App::new(
        config.clone(),
        header.generation + 1,
        header.config_generation + 1,
        options,
    ) {
        Ok(app) => app,
        Err(e) => {
            predecessor.failed(format!("{e:#}")).await;
            return Err(e);
        }
    };
    for gc in &header.counters {
        app.proxy
            .metrics
            .set_earlier(gc.generation, gc.counts.clone());
    }
    inherit_health(&app, header);
    let mut inherited = std::mem::take(&mut predecessor.inherited);

    let adopted = adopt_or_bind(&config, &mut inherited).map(|(bound, admin)| {
        let control = inherited.take_control(&config.control_socket);
        (bound, admin, control)
    });
    inherited.close_rest();
    let (bound, admin, control_socket) = match adopted {
        Ok(a) => a,
        Err(e) => {
            predecessor.failed(format!("{e:#}")).await;
            return Err(e);
        }
    };
    for (name, socket) in bound {
        app.start_listener(&name, socket)?;
    }
    let not_listening: Vec<String> = app
        .listeners
        .lock()
        .expect("listener lock is never poisoned")
        .iter()
        .filter(|(_, l)| !is_listening(&l.socket))
        .map(|(name, _)| name.clone())
        .collect();
    if !not_listening.is_empty() {
        let reason = format!("listeners not listening: {}", not_listening.join(", "));
        predecessor.failed(reason.clone()).await;
        anyhow::bail!(reason);
    }
    app.install(app.proxy.snapshot.load_full());
    predecessor.ready(app.generation).await?;
    tracing::info!(
        predecessor = header.pid,
        generation = app.generation,
        "accepting beside the predecessor; ready"
    );

    let release = tokio::select! {
        r = predecessor.released() => r,
        _ = signals.stop() => Release::Refused("stopped by a signal before the predecessor let go".into()),
    };
    if let Release::Refused(reason) = release {
        // Drain what we accepted; the control socket and pid file stay the
        // predecessor's.
        tracing::warn!(
            reason,
            "upgrade rolled back; draining what this process accepted"
        );
        app.set_lifecycle(Lifecycle::Draining);
        app.stop_listeners(false);
        let timeout = config.drain_timeout;
        tokio::select! {
            _ = app.proxy.drain.drain(timeout) => {}
            _ = signals.stop() => { app.proxy.drain.cut(); }
        }
        anyhow::bail!("upgrade rolled back: {reason}");
    }
    if matches!(release, Release::Gone) {
        tracing::warn!(
            "the predecessor went away during the hand-over; this process owns everything"
        );
    }
    app.owner.store(true, Ordering::Release);
    // Registered before control is served, so their first reports find them.
    if matches!(release, Release::Released) {
        app.expect_drain(header.pid, header.generation);
    }
    for (pid, generation) in &header.draining {
        app.expect_drain(*pid, *generation);
    }
    if let Some(pid_file) = &config.pid_file {
        write_pid_file(pid_file)
            .with_context(|| format!("pid_file: cannot write {}", pid_file.display()))?;
    }
    app.proxy
        .metrics
        .upgrades
        .with_label_values(&["success"])
        .inc();
    // Ready before admin and control answer (see `start`).
    app.set_lifecycle(Lifecycle::Ready);
    app.start_admin(admin)?;
    let control_socket = match control_socket {
        Some(s) => s,
        None => control::bind(&config.control_socket)?,
    };
    app.start_control(control_socket)?;
    systemd::took_over();
    tracing::info!(pid = std::process::id(), generation = app.generation, config = %config.path.display(), "baton took over and is serving");
    Ok(app)
}

/// A proxy listener socket by name.
type NamedListeners = Vec<(String, std::net::TcpListener)>;

/// Every listener and the admin listener: the inherited socket of the same
/// name and address, or a new bind.
fn adopt_or_bind(
    config: &Config,
    inherited: &mut Inherited,
) -> anyhow::Result<(NamedListeners, std::net::TcpListener)> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let socket = match inherited.take_tcp(&l.name, l.listen) {
            Some(s) => s,
            None => bind(l.listen)
                .with_context(|| format!("listeners.{}: cannot listen on {}", l.name, l.listen))?,
        };
        bound.push((l.name.clone(), socket));
    }
    let admin = match inherited.take_tcp(ADMIN_SOCKET_NAME, config.admin_listen) {
        Some(s) => s,
        None => bind(config.admin_listen)
            .with_context(|| format!("admin.listen: cannot listen on {}", config.admin_listen))?,
    };
    Ok((bound, admin))
}

/// Backend health as the predecessor saw it, for addresses we still have.
fn inherit_health(app: &App, header: &crate::upgrade::wire::Header) {
    let snapshot = app.proxy.snapshot.load();
    for h in header.health.iter().filter(|h| h.down) {
        let backend = snapshot
            .clusters
            .iter()
            .filter(|c| c.config.name == h.cluster)
            .flat_map(|c| c.backends.iter())
            .find(|b| *b.address == *h.address && b.addr == h.addr);
        if let Some(b) = backend {
            b.state.set_checked_down(true);
        }
    }
}

/// Serves until a stop signal or a hand-over, then drains and stops.
async fn serve(app: Arc<App>, mut signals: Signals) -> anyhow::Result<()> {
    let background = CancellationToken::new();
    tokio::spawn(app.clone().reload_on_request());
    tokio::spawn(crate::dns::refresh_loop(app.clone()));
    let sweeper = app.clone();
    let sweeper_stop = background.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sweeper_stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => sweeper.sweep_drains(),
            }
        }
    });

    let handed_over = loop {
        tokio::select! {
            _ = signals.term.recv() => break false,
            _ = signals.int.recv() => break false,
            _ = signals.hup.recv() => app.reload_requested.notify_one(),
            _ = signals.usr2.recv() => {
                let app = app.clone();
                tokio::spawn(async move {
                    match app.upgrade(None).await {
                        Ok(r) => tracing::info!(new_pid = r.new_pid, new_generation = r.new_generation, "SIGUSR2 upgrade done"),
                        Err(reason) => tracing::error!(reason, "SIGUSR2 upgrade failed"),
                    }
                });
            }
            _ = app.handed_over.notified() => break true,
        }
    };

    let config = app.proxy.snapshot.load().config.clone();
    let started = Instant::now();
    let reports = CancellationToken::new();
    let reporter = if handed_over {
        tracing::info!(connections = app.proxy.drain.active(), timeout = ?config.drain_timeout, "handed over; draining open connections");
        Some(tokio::spawn(report_loop(
            app.clone(),
            config.control_socket.clone(),
            started,
            reports.clone(),
        )))
    } else {
        app.set_lifecycle(Lifecycle::Draining);
        systemd::stopping();
        app.stop_listeners(false);
        tracing::info!(connections = app.proxy.drain.active(), timeout = ?config.drain_timeout, "stopping: draining open connections");
        None
    };
    let forced = tokio::select! {
        forced = app.proxy.drain.drain(config.drain_timeout) => forced,
        _ = signals.stop() => stop_now(&app),
    };
    if forced > 0 {
        tracing::warn!(forced, "drain timeout: closed the remaining connections");
    }
    reports.cancel();
    if let Some(reporter) = reporter {
        let _ = tokio::time::timeout(Duration::from_secs(3), reporter).await;
    }
    app.stop_admin().await;
    app.stop_control();
    background.cancel();
    if app.owner.load(Ordering::Acquire) {
        // Only the process that owns them removes them, when it stops for good.
        if let Some(pid_file) = &config.pid_file {
            remove_pid_file(pid_file);
        }
        let _ = std::fs::remove_file(&config.control_socket);
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

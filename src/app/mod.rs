//! Wiring: starts the process (fresh, or as a successor taking over), hands
//! it to the owner of the state machine (`owner`), then drains and stops.
//!
//! `run(config, start, options, shutdown)` is the whole program: `main`
//! calls it, and tests can call it in-process.

mod owner;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminContext;
use crate::config::Config;
use crate::control;
use crate::drain::Drain;
use crate::logging::LogFormat;
use crate::metrics::{History, Metrics};
use crate::proxy::Proxy;
use crate::proxy::route::{Kept, Snapshot};
use crate::registry::{NamedSockets, Registry};
use crate::state::{Event, Machine};
use crate::status::{BackendStatus, ClusterStatus, ListenerStatus, Status, StatusSource};
use crate::systemd;
use crate::tls::{Resumption, TicketKeys};
use crate::upgrade::Inherited;
use crate::upgrade::drains::{Drains, report_loop};
use crate::upgrade::migrate;
use crate::upgrade::successor::{self, Release};
use crate::upgrade::wire::{Header, TicketKey};

use owner::{Ending, Owner, Signals};

/// How this process was started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `argv[0]` made absolute at start: what `SIGUSR2` runs (a symlink stays
    /// a symlink, so a replaced file on disk is what runs next).
    pub exe: PathBuf,
    pub log_format: LogFormat,
    /// Act on SIGHUP, SIGUSR2, SIGTERM and SIGINT (off for a process that
    /// runs baton in-process beside other things, such as a test).
    pub signals: bool,
}

/// Where the listening sockets come from.
pub enum Start {
    /// Bind them, or adopt those systemd passed.
    Fresh(Inherited),
    /// Take them from the running baton (`run --upgrade`).
    Successor,
}

/// What every part of the running process shares; the owner is the only
/// one that changes the registry, the drains and the state.
pub(crate) struct Shared {
    pub proxy: Arc<Proxy>,
    /// Process generation: 0 on first start, +1 per upgrade.
    pub generation: u64,
    pub machine: Machine,
    pub registry: Mutex<Registry>,
    pub drains: Mutex<Drains>,
    /// What each new snapshot takes over from the one before.
    pub kept: Kept,
    /// Streams arriving from our predecessor (a successor, until its
    /// predecessor ends the migration).
    pub receiving: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn new(
        config: Config,
        generation: u64,
        config_generation: u64,
        tickets: TicketKeys,
    ) -> anyhow::Result<Shared> {
        let metrics = Metrics::new(generation);
        metrics.declare(&config);
        metrics.config_generation.set(config_generation as i64);
        metrics.tls_ticket_key_created.set(tickets.created() as f64);
        let kept = Kept {
            backends: Default::default(),
            resumption: Resumption::new(tickets),
        };
        let snapshot = Snapshot::build(Arc::new(config), config_generation, &kept, &metrics)
            .map_err(anyhow::Error::msg)?;
        let proxy = Arc::new(Proxy {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            drain: Drain::default(),
            moves: Default::default(),
        });
        Ok(Shared {
            registry: Mutex::new(Registry::new(proxy.clone())),
            proxy,
            generation,
            machine: Machine::default(),
            drains: Mutex::new(Drains::default()),
            kept,
            receiving: Mutex::new(None),
        })
    }

    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .expect("registry lock is never poisoned")
    }

    pub fn drains(&self) -> std::sync::MutexGuard<'_, Drains> {
        self.drains.lock().expect("drain lock is never poisoned")
    }

    fn admin_context(self: &Arc<Self>) -> AdminContext {
        AdminContext {
            proxy: self.proxy.clone(),
            state: self.machine.subscribe(),
            status: self.clone(),
        }
    }
}

impl StatusSource for Shared {
    fn status(&self) -> Status {
        let snapshot = self.proxy.snapshot.load();
        let registry = self.registry();
        Status {
            pid: std::process::id(),
            generation: self.generation,
            config_generation: snapshot.generation,
            lifecycle: self.machine.get().as_str().to_string(),
            config: snapshot.config.path.display().to_string(),
            listeners: snapshot
                .config
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    address: registry.addr(&l.name).unwrap_or(l.listen).to_string(),
                    cluster: l.cluster.clone().unwrap_or_default(),
                    active: registry.active(&l.name),
                    max_connections: l.max_connections,
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
                            active: b.state.active.load(std::sync::atomic::Ordering::Relaxed),
                            check_failure: b.state.check_failure(),
                            srv: b.srv.as_deref().map(String::from),
                            priority: b.priority,
                        })
                        .collect(),
                })
                .collect(),
            draining: self.drains().status(),
        }
    }
}

/// Runs baton in this process until `shutdown` (or a stop signal) and the
/// drain after it, or, once a successor took over, until this process has
/// drained.
pub async fn run(
    config: Config,
    start: Start,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::limits::raise_nofile();
    // Registered before anything else, so SIGHUP and SIGUSR2 never kill a
    // process that is starting or draining: they are simply not acted on.
    let mut signals = if options.signals {
        Some(Signals::new()?)
    } else {
        None
    };
    let owner = match start {
        Start::Fresh(inherited) => start_fresh(config, inherited, options).await?,
        Start::Successor => {
            match start_successor(config, options, &mut signals, &shutdown).await? {
                Some(owner) => owner,
                None => anyhow::bail!("upgrade rolled back"),
            }
        }
    };
    let shared = owner.shared.clone();
    let ending = owner.run(signals.as_mut(), &shutdown).await;
    drain(shared, ending, signals).await
}

/// First start: bind (or adopt from systemd) everything.
async fn start_fresh(
    config: Config,
    mut inherited: Inherited,
    options: RunOptions,
) -> anyhow::Result<Owner> {
    let control_socket = control::bind(&config.control_socket)?;
    let cleanup = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&config.control_socket);
        e
    };
    let tickets = TicketKeys::new(config.ticket_rotation);
    let shared = Arc::new(Shared::new(config.clone(), 0, 1, tickets).map_err(cleanup)?);
    let bound = Registry::adopt_or_bind(&config, &mut inherited);
    inherited.close_rest();
    let (bound, admin) = bound.map_err(|e| cleanup(e.into()))?;
    // The last step that can fail before the first accept.
    if let Some(pid_file) = &config.pid_file {
        write_pid_file(pid_file)
            .with_context(|| format!("pid_file: cannot write {}", pid_file.display()))
            .map_err(cleanup)?;
    }
    {
        let mut registry = shared.registry();
        for (name, socket) in bound {
            registry
                .start(&name, socket)
                .map_err(|e| cleanup(e.into()))?;
        }
        registry.set_admin(admin);
        registry.set_control(control_socket);
    }
    let mut owner = Owner::new(shared.clone(), options, true);
    owner.install(shared.proxy.snapshot.load_full());
    // Ready before admin and control answer, so nobody who reaches them
    // sees a process that is still starting.
    shared
        .machine
        .apply(Event::Ready)
        .expect("a starting process can become ready");
    owner.serve_admin_and_control();
    systemd::ready();
    tracing::info!(pid = std::process::id(), config = %config.path.display(), summary = %config.summary(), "baton is serving");
    Ok(owner)
}

/// `run --upgrade`: take the running process's sockets, do everything that
/// can fail, start accepting beside it, report ready; once it lets go, take
/// over with steps that cannot fail. `None` when the upgrade was rolled
/// back and this process drained what it had accepted.
async fn start_successor(
    config: Config,
    options: RunOptions,
    signals: &mut Option<Signals>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Owner>> {
    let mut predecessor = successor::receive(&config.control_socket).await?;
    let header = &predecessor.header;
    let prepared = prepare_successor(&config, header, &mut predecessor.inherited);
    let (shared, pid_tmp, listeners) = match prepared {
        Ok(p) => p,
        Err(e) => {
            predecessor.failed(format!("{e:#}")).await;
            return Err(e);
        }
    };
    // Accepting starts only now that nothing else can fail: a successor
    // that accepted and then exited would cut what it accepted.
    let started = {
        let mut registry = shared.registry();
        listeners
            .into_iter()
            .try_for_each(|(name, socket)| registry.start(&name, socket))
    };
    if let Err(e) = started {
        predecessor.failed(e.to_string()).await;
        if let Some(tmp) = &pid_tmp {
            let _ = std::fs::remove_file(tmp);
        }
        shared.registry().close_listeners();
        shared.proxy.drain.drain(config.drain_timeout).await;
        return Err(e.into());
    }
    let mut owner = Owner::new(shared.clone(), options, false);
    owner.install(shared.proxy.snapshot.load_full());
    predecessor.ready(shared.generation).await?;
    tracing::info!(
        predecessor = header.pid,
        generation = shared.generation,
        "accepting beside the predecessor; ready"
    );

    let stop_signal = async {
        match signals.as_mut() {
            Some(s) => s.stop().await,
            None => std::future::pending().await,
        }
    };
    let release = tokio::select! {
        r = predecessor.released() => r,
        _ = stop_signal => Release::Refused("stopped by a signal before the predecessor let go".into()),
        _ = shutdown.cancelled() => Release::Refused("shut down before the predecessor let go".into()),
    };
    let history = match release {
        Release::Refused(reason) => {
            // Drain what we accepted; the control socket and pid file stay
            // the predecessor's.
            tracing::warn!(
                reason,
                "upgrade rolled back; draining what this process accepted"
            );
            if let Some(tmp) = pid_tmp {
                let _ = std::fs::remove_file(tmp);
            }
            shared.machine.force(crate::state::State::Draining);
            shared.registry().close(false);
            let timeout = config.drain_timeout;
            let stop_signal = async {
                match signals.as_mut() {
                    Some(s) => s.stop().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shared.proxy.drain.drain(timeout) => {}
                _ = stop_signal => shared.proxy.drain.cut(),
            }
            return Ok(None);
        }
        Release::Released(Some(history)) => history,
        Release::Released(None) => history_of(&predecessor.header, false),
        Release::Gone => {
            tracing::warn!(
                "the predecessor went away during the hand-over; this process owns everything"
            );
            history_of(&predecessor.header, true)
        }
    };

    // The point of no return: the predecessor accepts no more. Nothing
    // below may make this process exit; a failure is logged and counted.
    let header = &predecessor.header;
    let metrics = &shared.proxy.metrics;
    {
        let mut drains = shared.drains();
        for live in &history.live {
            drains.expect(live.pid, live.generation, metrics);
        }
        for &(pid, generation) in &header.draining {
            drains.expect(pid, generation, metrics);
        }
    }
    metrics.set_history(history);
    if let (Some(tmp), Some(pid_file)) = (pid_tmp, &config.pid_file)
        && let Err(e) = std::fs::rename(&tmp, pid_file)
    {
        tracing::error!(error = %e, path = %pid_file.display(), "cannot write the pid file; serving anyway");
        metrics
            .takeover_errors
            .with_label_values(&["pid_file"])
            .inc();
    }
    metrics.upgrades.with_label_values(&["success"]).inc();
    shared
        .machine
        .apply(Event::Ready)
        .expect("a successor taking over becomes ready");
    owner.serve_admin_and_control();
    let released = Instant::now();
    predecessor.took_over().await;
    if let Some(stream) = predecessor.into_stream() {
        let for_counts = shared.clone();
        let receiving = tokio::spawn(migrate::receive_streams(
            stream,
            shared.proxy.clone(),
            move |listener: &str| for_counts.registry().active_counter(listener),
            released,
        ));
        *shared.receiving.lock().expect("lock is never poisoned") = Some(receiving);
    }
    systemd::took_over();
    tracing::info!(pid = std::process::id(), generation = shared.generation, config = %config.path.display(), "baton took over and is serving");
    Ok(Some(owner))
}

/// Everything a successor must do that can fail, before it accepts: the
/// snapshot, every listener socket (adopted or bound, and listening), admin
/// and control sockets, the pid file written to its temporary file.
fn prepare_successor(
    config: &Config,
    header: &Header,
    inherited: &mut Inherited,
) -> anyhow::Result<(Arc<Shared>, Option<PathBuf>, NamedSockets)> {
    let tickets = TicketKeys::handed_on(
        header
            .ticket_keys
            .iter()
            .filter_map(TicketKey::material)
            .collect(),
        config.ticket_rotation,
    );
    let shared = Arc::new(Shared::new(
        config.clone(),
        header.generation + 1,
        header.config_generation + 1,
        tickets,
    )?);
    inherit_health(&shared, header);
    let adopted = Registry::adopt_or_bind(config, inherited);
    let control = inherited.take_control(&config.control_socket);
    inherited.close_rest();
    let (bound, admin) = adopted?;
    let not_listening: Vec<&str> = bound
        .iter()
        .filter(|(_, socket)| !crate::upgrade::is_listening(socket))
        .map(|(name, _)| name.as_str())
        .collect();
    if !not_listening.is_empty() {
        anyhow::bail!("listeners not listening: {}", not_listening.join(", "));
    }
    let control = match control {
        Some(s) => s,
        None => control::bind(&config.control_socket)?,
    };
    let pid_tmp = match &config.pid_file {
        Some(path) => Some(
            write_pid_tmp(path)
                .with_context(|| format!("pid_file: cannot write {}", path.display()))?,
        ),
        None => None,
    };
    {
        let mut registry = shared.registry();
        registry.set_admin(admin);
        registry.set_control(control);
    }
    Ok((shared, pid_tmp, bound))
}

/// Counts from the header, for a predecessor that could not send them with
/// its release (version 1, or it died): its own and what it knew.
fn history_of(header: &Header, gone: bool) -> History {
    let mut history = header.history.clone().unwrap_or_default();
    for gc in &header.counters {
        if gc.pid == header.pid && gc.pid != 0 {
            history.set_live(gc.pid, gc.generation, gc.counts.clone());
        } else {
            history.folded.add(&gc.counts);
        }
    }
    if gone {
        history.fold(header.pid);
    }
    history
}

/// Backend health as the predecessor saw it, for addresses we still have.
fn inherit_health(shared: &Shared, header: &Header) {
    let snapshot = shared.proxy.snapshot.load();
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

/// After the owner ends: drain what this process holds, report the drain
/// if it handed over, and stop.
async fn drain(
    shared: Arc<Shared>,
    ending: Ending,
    mut signals: Option<Signals>,
) -> anyhow::Result<()> {
    let config = shared.proxy.snapshot.load().config.clone();
    let started = Instant::now();
    let reports = CancellationToken::new();
    let (owns_files, reporter) = match ending {
        Ending::HandedOver(handed) => {
            let reporter = tokio::spawn(report_loop(
                shared.proxy.clone(),
                shared.generation,
                config.control_socket.clone(),
                started,
                reports.clone(),
            ));
            move_streams(&shared, *handed).await;
            tracing::info!(connections = shared.proxy.drain.active(), timeout = ?config.drain_timeout, "handed over; draining open connections");
            (false, Some(reporter))
        }
        Ending::Stop => {
            systemd::stopping();
            shared.registry().close_listeners();
            tracing::info!(connections = shared.proxy.drain.active(), timeout = ?config.drain_timeout, "stopping: draining open connections");
            (true, None)
        }
    };
    let second_stop = async {
        match signals.as_mut() {
            Some(s) => s.stop().await,
            None => std::future::pending().await,
        }
    };
    let forced = tokio::select! {
        forced = shared.proxy.drain.drain(config.drain_timeout) => forced,
        _ = second_stop => stop_now(&shared.proxy),
    };
    if forced > 0 {
        tracing::warn!(forced, "drain timeout: closed the remaining connections");
    }
    reports.cancel();
    if let Some(reporter) = reporter {
        let _ = tokio::time::timeout(Duration::from_secs(3), reporter).await;
    }
    let admin = shared.registry().close(false);
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if owns_files {
        // Only the process that owns them removes them, when it stops for good.
        if let Some(pid_file) = &config.pid_file {
            remove_pid_file(pid_file);
        }
        let _ = std::fs::remove_file(&config.control_socket);
    }
    let _ = shared.machine.apply(Event::Drained);
    tracing::info!("stopped");
    Ok(())
}

/// Moves established streams to the successor that took over, then answers
/// `baton upgrade` with how many moved and how many stay.
async fn move_streams(shared: &Shared, handed: owner::HandedOver) {
    let owner::HandedOver {
        successor,
        reply,
        mut report,
    } = handed;
    let upgrade = shared.proxy.snapshot.load().config.upgrade.clone();
    // Streams still arriving from our own predecessor move on with the
    // rest, so a chain of upgrades leaves no middle generation behind.
    let receiving = shared
        .receiving
        .lock()
        .expect("lock is never poisoned")
        .take();
    if let Some(receiving) = receiving {
        let _ = tokio::time::timeout(upgrade.migrate_timeout * 2, receiving).await;
    }
    let outcome = migrate::send_streams(
        &successor.stream,
        successor.version,
        &shared.proxy,
        upgrade.migrate,
        upgrade.migrate_timeout,
    )
    .await;
    report.moved = outcome.moved;
    report.staying = outcome.staying;
    if let Some(reply) = reply {
        let answer = control::Response {
            upgrade: Some(report),
            ..control::Response::ok()
        };
        // This process may have nothing left to drain and exit next.
        reply.send_written(answer, Duration::from_secs(2)).await;
    }
}

/// A second stop signal: cut every connection and go.
fn stop_now(proxy: &Proxy) -> usize {
    let remaining = proxy.drain.active();
    tracing::warn!(remaining, "second stop signal: closing everything now");
    proxy.drain.cut();
    remaining
}

/// Writes the pid file atomically: a temporary file renamed over the old one,
/// so a reader never sees it empty or half written.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let tmp = write_pid_tmp(path)?;
    std::fs::rename(&tmp, path)
}

/// The pid file's temporary file, written; renaming it is the last step.
fn write_pid_tmp(path: &Path) -> std::io::Result<PathBuf> {
    let tmp: PathBuf = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    Ok(tmp)
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

//! The owner of the state machine: one task receives every command —
//! reload, upgrade, stop, a successor's hand-over request, drain reports,
//! DNS answers — holds the only writer of the `State`, and is the only one
//! that changes the listener registry. Slow steps (reading a config,
//! spawning and handing over) run in tasks whose results come back here as
//! messages, so the owner never waits and a request that does not fit the
//! current state is refused at once with the state in the reason.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UnixStream;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{RunOptions, Shared};
use crate::control::{Command, Message, Reply, Response};
use crate::dns;
use crate::proxy::route::Snapshot;
use crate::reload::{self, Prepared, ReloadError};
use crate::state::{Event, State, UpgradeStep};
use crate::status::StatusSource;
use crate::systemd;
use crate::upgrade::coordinator::{self, Attempt, Progress, ReleaseOrder, Successor};
use crate::upgrade::handover::{self, HandoverRequest};
use crate::upgrade::wire::{
    HANDOVER_VERSION, Header, HealthState, SocketInfo, TicketKey, UpgradeReport,
};

/// How the owner's life ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// A successor took over; this process moves its streams to it, then
    /// drains what stays and reports.
    HandedOver(Box<HandedOver>),
    /// A stop signal (or `shutdown`): drain and stop for good.
    Stop,
}

/// What the drain phase needs of a hand-over that succeeded.
#[derive(Debug)]
pub(crate) struct HandedOver {
    pub successor: Successor,
    /// `baton upgrade` waits for its answer until the streams moved.
    pub reply: Option<Reply>,
    pub report: UpgradeReport,
}

pub(crate) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

enum Sig {
    Stop,
    Hup,
    Usr2,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    pub async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop,
            _ = self.int.recv() => Sig::Stop,
            _ = self.hup.recv() => Sig::Hup,
            _ = self.usr2.recv() => Sig::Usr2,
        }
    }
}

/// A reload's prepared config (or why not), back from its task.
struct Reloaded {
    result: Result<Prepared, ReloadError>,
    dry_run: bool,
    started: Instant,
    reply: Option<Reply>,
}

/// The upgrade attempt in flight.
struct Current {
    id: u64,
    /// The process we spawned (none for a successor started from outside).
    child_pid: Option<u32>,
    release: Option<oneshot::Sender<ReleaseOrder>>,
    via_control: Option<oneshot::Sender<(UnixStream, HandoverRequest)>>,
    cancel: CancellationToken,
    reply: Option<Reply>,
    started: Instant,
}

pub(crate) struct Owner {
    pub shared: Arc<Shared>,
    options: RunOptions,
    control_tx: mpsc::Sender<Message>,
    control_rx: mpsc::Receiver<Message>,
    progress_tx: mpsc::UnboundedSender<Progress>,
    progress_rx: mpsc::UnboundedReceiver<Progress>,
    reload_tx: mpsc::Sender<Reloaded>,
    reload_rx: mpsc::Receiver<Reloaded>,
    dns_tx: mpsc::Sender<Vec<dns::Lookup>>,
    dns_rx: mpsc::Receiver<Vec<dns::Lookup>>,
    /// Stops the health checks of the snapshot in use.
    health: Option<CancellationToken>,
    /// DNS refresh; ends when this process stops accepting.
    background: CancellationToken,
    /// Open connections since the last time memory was given back.
    waves: crate::memory::Waves,
    /// `reload.watch`: the config file's watcher, while one runs.
    watching: Option<crate::watch::Watching>,
    watch_tx: mpsc::Sender<()>,
    watch_rx: mpsc::Receiver<()>,
    /// SIGHUPs during a reload make exactly one more afterwards.
    hup_pending: bool,
    attempt: Option<Current>,
    next_attempt: u64,
    stopping: bool,
}

impl Owner {
    pub fn new(shared: Arc<Shared>, options: RunOptions, _fresh: bool) -> Owner {
        let (control_tx, control_rx) = mpsc::channel(64);
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let (dns_tx, dns_rx) = mpsc::channel(4);
        let (watch_tx, watch_rx) = mpsc::channel(1);
        Owner {
            shared,
            options,
            control_tx,
            control_rx,
            progress_tx,
            progress_rx,
            reload_tx,
            reload_rx,
            dns_tx,
            dns_rx,
            health: None,
            background: CancellationToken::new(),
            waves: Default::default(),
            watching: None,
            watch_tx,
            watch_rx,
            hup_pending: false,
            attempt: None,
            next_attempt: 1,
            stopping: false,
        }
    }

    fn state(&self) -> State {
        self.shared.machine.get()
    }

    /// Makes `snapshot` the one every new connection uses (one atomic
    /// store) and restarts health checks for it.
    pub fn install(&mut self, snapshot: Arc<Snapshot>) {
        self.shared.proxy.snapshot.store(snapshot.clone());
        let tickets = &self.shared.kept.resumption.tickets;
        tickets.set_rotation(snapshot.config.ticket_rotation);
        self.follow_config_file(&snapshot);
        self.restart_health(&snapshot);
    }

    /// Starts, keeps or stops the config file's watcher as `reload.watch`
    /// of `snapshot` says.
    fn follow_config_file(&mut self, snapshot: &Snapshot) {
        let config = &snapshot.config;
        if !config.reload.watch {
            self.watching = None;
            return;
        }
        if let Some(w) = &self.watching
            && w.path == config.path
            && w.debounce == config.reload.debounce
        {
            return;
        }
        self.watching = None;
        match crate::watch::start(
            &config.path,
            config.reload.debounce,
            self.shared.proxy.clone(),
            self.watch_tx.clone(),
            self.background.child_token(),
        ) {
            Ok(w) => {
                tracing::info!(path = %config.path.display(), debounce = ?config.reload.debounce, "reload.watch: watching the config file");
                self.watching = Some(w);
            }
            Err(e) => {
                tracing::error!(path = %config.path.display(), error = %e, "reload.watch: cannot watch the config file; reload with SIGHUP");
            }
        }
    }

    fn restart_health(&mut self, snapshot: &Snapshot) {
        let checks = crate::health::start(snapshot);
        if let Some(old) = self.health.replace(checks) {
            old.cancel();
        }
        self.shared.kept.backends.prune();
    }

    /// Serves admin and control on the registry's sockets. A failure here
    /// is logged and counted, never fatal: it can come after a take-over.
    pub fn serve_admin_and_control(&mut self) {
        let context = self.shared.admin_context();
        let metrics = &self.shared.proxy.metrics;
        let mut registry = self.shared.registry();
        if let Err(e) = registry.serve_admin(context) {
            tracing::error!(error = %e, "cannot serve admin");
            metrics.takeover_errors.with_label_values(&["admin"]).inc();
        }
        if let Err(e) = registry.serve_control(self.control_tx.clone()) {
            tracing::error!(error = %e, "cannot serve the control socket");
            metrics
                .takeover_errors
                .with_label_values(&["control"])
                .inc();
        }
    }

    /// Receives every command until this process stops accepting.
    pub async fn run(
        mut self,
        mut signals: Option<&mut Signals>,
        shutdown: &CancellationToken,
    ) -> Ending {
        tokio::spawn(dns::refresh_loop(
            self.shared.proxy.clone(),
            self.dns_tx.clone(),
            self.background.clone(),
        ));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let ending = loop {
            let signal = async {
                match signals.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(m) = self.control_rx.recv() => self.on_control(m),
                Some(p) = self.progress_rx.recv() => {
                    if let Some(ending) = self.on_progress(p) {
                        break ending;
                    }
                }
                Some(r) = self.reload_rx.recv() => self.on_reloaded(r),
                Some(l) = self.dns_rx.recv() => self.on_resolved(l),
                Some(()) = self.watch_rx.recv() => self.reload(false, None),
                _ = sweep.tick() => {
                    self.shared.drains().sweep(&self.shared.proxy.metrics);
                    self.rotate_ticket_keys();
                    let drain = &self.shared.proxy.drain;
                    if self.waves.ended(drain.active(), drain.take_peak()) {
                        crate::memory::give_back();
                    }
                }
                sig = signal => match sig {
                    Sig::Hup => self.reload(false, None),
                    Sig::Usr2 => self.upgrade(None, None),
                    Sig::Stop => {
                        if let Some(ending) = self.stop() {
                            break ending;
                        }
                    }
                },
                _ = shutdown.cancelled(), if !self.stopping => {
                    if let Some(ending) = self.stop() {
                        break ending;
                    }
                }
            }
        };
        self.background.cancel();
        if matches!(ending, Ending::HandedOver(_))
            && let Some(health) = self.health.take()
        {
            // The successor checks the backends now.
            health.cancel();
        }
        self.answer_while_draining();
        ending
    }

    /// A new session ticket key when the one in use is due. Not during an
    /// upgrade: the successor holds a copy of the keys sent in the header.
    fn rotate_ticket_keys(&self) {
        let tickets = &self.shared.kept.resumption.tickets;
        if self.state() != State::Serving || !tickets.due_in().is_zero() {
            return;
        }
        tickets.rotate();
        let metrics = &self.shared.proxy.metrics;
        metrics.tls_ticket_key_created.set(tickets.created() as f64);
        tracing::info!("session ticket key rotated; the previous one still opens its tickets");
    }

    /// A stop signal: now, or once the upgrade in flight is rolled back.
    fn stop(&mut self) -> Option<Ending> {
        self.stopping = true;
        if let Some(a) = &self.attempt {
            tracing::info!("stop requested: rolling back the upgrade in flight first");
            a.cancel.cancel();
            return None;
        }
        match self.shared.machine.apply(Event::Stop) {
            Ok(_) => {}
            Err(_) => self.shared.machine.force(State::Draining),
        }
        Some(Ending::Stop)
    }

    /// After the owner's life: control connections still open get answers
    /// (status, refusals) while this process drains.
    fn answer_while_draining(self) {
        let Owner {
            shared,
            mut control_rx,
            ..
        } = self;
        tokio::spawn(async move {
            while let Some(m) = control_rx.recv().await {
                match m {
                    Message::Command {
                        command: Command::Status,
                        reply,
                    } => {
                        let _ = reply.send(Response {
                            status: Some(shared.status()),
                            ..Response::ok()
                        });
                    }
                    Message::Command { reply, .. } => {
                        let _ = reply.send(Response::error(format!(
                            "this process is {}; ask the one that accepts",
                            shared.machine.get().as_str()
                        )));
                    }
                    Message::Handover { stream, .. } => {
                        handover::refuse(&stream, "this process is draining").await;
                    }
                    Message::DrainReport { reply, .. } => {
                        let _ = reply.send(false);
                    }
                    Message::DrainEnded { pid } => {
                        shared.drains().ended(pid, &shared.proxy.metrics);
                    }
                }
            }
        });
    }

    fn on_control(&mut self, message: Message) {
        match message {
            Message::Command { command, reply } => match command {
                Command::Status => {
                    let _ = reply.send(Response {
                        status: Some(self.shared.status()),
                        ..Response::ok()
                    });
                }
                Command::Reload { dry_run } => self.reload(dry_run, Some(reply)),
                Command::Upgrade { binary } => self.upgrade(binary, Some(reply)),
                Command::Handover { .. } | Command::DrainReport(_) => {
                    let _ = reply.send(Response::error("handled by the control connection"));
                }
            },
            Message::Handover {
                stream,
                peer,
                version,
                error,
            } => self.external(stream, peer, version, error),
            Message::DrainReport {
                report,
                peer,
                reply,
            } => {
                // Once releasing, the successor takes the reports (ours
                // went to it with the release).
                let taking = matches!(
                    self.state(),
                    State::Serving
                        | State::Reloading
                        | State::Upgrading(UpgradeStep::Spawned | UpgradeStep::SocketsSent)
                );
                if !taking {
                    let _ = reply.send(false);
                    return;
                }
                let pid = report.pid;
                let result = self
                    .shared
                    .drains()
                    .record(report, peer, &self.shared.proxy.metrics);
                if let Err(e) = &result {
                    tracing::warn!(pid, peer, error = %e, "drain report dropped");
                }
                let _ = reply.send(result.is_ok());
            }
            Message::DrainEnded { pid } => {
                self.shared.drains().ended(pid, &self.shared.proxy.metrics);
            }
        }
    }

    /// Why `what` cannot start in `state`.
    fn refusal(what: &str, state: State) -> String {
        match state {
            State::Reloading => format!("a reload is already in progress; {what} when it ends"),
            State::Upgrading(_) => {
                format!("an upgrade is already in progress; {what} when it ends")
            }
            other => format!(
                "this process is {}; {what} the process that accepts",
                other.as_str()
            ),
        }
    }

    fn reload(&mut self, dry_run: bool, reply: Option<Reply>) {
        let state = self.state();
        if state == State::Reloading && reply.is_none() {
            tracing::info!("SIGHUP during a reload: one more reload follows it");
            self.hup_pending = true;
            return;
        }
        if self.stopping || self.shared.machine.apply(Event::ReloadStarted).is_err() {
            let reason = Self::refusal("reload", state);
            match reply {
                Some(reply) => {
                    let _ = reply.send(Response::error(reason));
                }
                None => tracing::warn!(reason, "SIGHUP ignored"),
            }
            return;
        }
        if !dry_run {
            systemd::reloading();
        }
        let old = self.shared.proxy.snapshot.load_full();
        let to = self.reload_tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = reload::prepare(old, dry_run).await;
            let _ = to
                .send(Reloaded {
                    result,
                    dry_run,
                    started,
                    reply,
                })
                .await;
        });
    }

    fn on_reloaded(&mut self, r: Reloaded) {
        if self.state() != State::Reloading {
            if let Some(reply) = r.reply {
                let _ = reply.send(Response::error("stopped before the reload ended"));
            }
            return;
        }
        let result = r.result.and_then(|prepared| {
            let mut registry = self.shared.registry();
            reload::commit(
                prepared,
                &self.shared.proxy,
                &self.shared.kept,
                &mut registry,
            )
        });
        let result = result.map(|committed| {
            if let Some(snapshot) = &committed.snapshot {
                self.restart_health(snapshot);
                self.follow_config_file(snapshot);
            }
            if let Some(admin) = committed.admin {
                self.shared.registry().set_admin(admin);
                self.serve_admin_and_control();
            }
            committed.report
        });
        let metrics = &self.shared.proxy.metrics;
        if !r.dry_run {
            metrics
                .config_reload_duration
                .observe(r.started.elapsed().as_secs_f64());
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
        }
        let _ = self.shared.machine.apply(Event::ReloadEnded);
        if let Some(reply) = r.reply {
            let _ = reply.send(match result {
                Ok(report) => Response {
                    reload: Some(report),
                    ..Response::ok()
                },
                Err(e) => Response::error(e.to_string()),
            });
        }
        if std::mem::take(&mut self.hup_pending) {
            self.reload(false, None);
        }
    }

    fn on_resolved(&mut self, lookups: Vec<dns::Lookup>) {
        // A reload resolves every name itself; a draining process no
        // longer keeps addresses current.
        if self.state() != State::Serving {
            return;
        }
        let current = self.shared.proxy.snapshot.load_full();
        let Some(next) = dns::apply(&current.config, lookups) else {
            return;
        };
        match Snapshot::build(
            Arc::new(next),
            current.generation,
            &self.shared.kept,
            &self.shared.proxy.metrics,
        ) {
            Ok(snapshot) => self.install(Arc::new(snapshot)),
            Err(e) => tracing::error!(error = %e, "cannot apply new backend addresses"),
        }
    }

    /// Refuses an upgrade this process cannot start now, with the reason.
    fn upgrade_refusal(&self) -> Option<String> {
        let state = self.state();
        if state != State::Serving || self.stopping {
            return Some(Self::refusal("upgrade", state));
        }
        let draining = self.shared.drains().count();
        let max = self
            .shared
            .proxy
            .snapshot
            .load()
            .config
            .upgrade
            .max_draining;
        (draining >= max).then(|| format!(
            "{draining} predecessor(s) still draining, the most upgrade.max_draining allows; wait for one to finish"
        ))
    }

    fn upgrade_failed(&self, reason: &str) {
        tracing::error!(reason, "upgrade rolled back; this process keeps serving");
        self.shared
            .proxy
            .metrics
            .upgrades
            .with_label_values(&["failure"])
            .inc();
    }

    /// SIGUSR2 or `baton upgrade`: spawn `<binary> run -c <config> --upgrade`
    /// with its own hand-over connection.
    fn upgrade(&mut self, binary: Option<PathBuf>, reply: Option<Reply>) {
        let answer = |reply: Option<Reply>, reason: String| match reply {
            Some(reply) => {
                let _ = reply.send(Response::error(reason));
            }
            None => tracing::error!(reason, "SIGUSR2 upgrade refused"),
        };
        if let Some(reason) = self.upgrade_refusal() {
            return answer(reply, reason);
        }
        let binary = binary.unwrap_or_else(|| self.options.exe.clone());
        let config_path = self.shared.proxy.snapshot.load().config.path.clone();
        let (child, stream) =
            match coordinator::spawn(&binary, &config_path, self.options.log_format.as_str()) {
                Ok(spawned) => spawned,
                Err(e) => {
                    self.upgrade_failed(&e.to_string());
                    return answer(reply, e.to_string());
                }
            };
        tracing::info!(successor = ?child.id(), binary = %binary.display(), "upgrade: successor started");
        self.begin(stream, None, Some(child), reply);
    }

    /// A successor asks for the sockets on the control socket: the one we
    /// spawned (an older build that does not use the inherited connection),
    /// or one a supervisor started.
    fn external(&mut self, stream: UnixStream, peer: u32, version: u32, error: Option<String>) {
        let request = HandoverRequest {
            pid: peer,
            version,
            error,
        };
        if let Some(a) = &mut self.attempt
            && a.child_pid == Some(peer)
            && let Some(to) = a.via_control.take()
        {
            let _ = to.send((stream, request));
            return;
        }
        if let Some(reason) = self.upgrade_refusal() {
            tracing::warn!(successor = peer, reason, "hand-over refused");
            tokio::spawn(async move { handover::refuse(&stream, &reason).await });
            return;
        }
        tracing::info!(
            successor = peer,
            "upgrade: a successor started from outside asks for the sockets"
        );
        self.begin(stream, Some(request), None, None);
    }

    fn begin(
        &mut self,
        stream: UnixStream,
        request: Option<HandoverRequest>,
        child: Option<tokio::process::Child>,
        reply: Option<Reply>,
    ) {
        self.shared
            .machine
            .apply(Event::UpgradeStarted)
            .expect("checked: serving");
        let id = self.next_attempt;
        self.next_attempt += 1;
        let config = self.shared.proxy.snapshot.load().config.clone();
        let (release_tx, release_rx) = oneshot::channel();
        let (via_tx, via_rx) = match child {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let cancel = CancellationToken::new();
        let child_pid = child.as_ref().and_then(|c| c.id());
        let attempt = Attempt {
            id,
            stream,
            request,
            via_control: via_rx,
            child,
            header: self.header(),
            sockets: self.shared.registry().duplicate(),
            ready_timeout: config.upgrade.ready_timeout,
            kill_grace: config.drain_timeout,
            progress: self.progress_tx.clone(),
            release: release_rx,
            cancel: cancel.clone(),
        };
        self.attempt = Some(Current {
            id,
            child_pid,
            release: Some(release_tx),
            via_control: via_tx,
            cancel,
            reply,
            started: Instant::now(),
        });
        tokio::spawn(attempt.run());
    }

    fn on_progress(&mut self, progress: Progress) -> Option<Ending> {
        let shared = self.shared.clone();
        let machine = &shared.machine;
        let current = self.attempt.as_mut()?;
        match progress {
            Progress::SocketsSent { id } if id == current.id => {
                let _ = machine.apply(Event::SocketsSent);
                None
            }
            Progress::Ready { id, .. } if id == current.id => {
                if self.stopping {
                    // The attempt sees the cancel and rolls back.
                    return None;
                }
                let _ = machine.apply(Event::SuccessorReady);
                let admin = {
                    let mut registry = self.shared.registry();
                    registry.pause();
                    registry.stop_control();
                    registry.stop_admin()
                };
                if let Some(release) = current.release.take() {
                    let _ = release.send(ReleaseOrder {
                        admin,
                        proxy: self.shared.proxy.clone(),
                        generation: self.shared.generation,
                    });
                }
                None
            }
            Progress::Done { id, result } if id == current.id => {
                let current = self.attempt.take().expect("matched above");
                match result {
                    Ok(successor) => {
                        let _ = machine.apply(Event::HandedOver);
                        let _ = self.shared.registry().close(true);
                        tracing::info!(
                            successor = successor.pid,
                            generation = successor.generation,
                            "upgrade: the successor took over"
                        );
                        let report = UpgradeReport {
                            old_pid: std::process::id(),
                            old_generation: self.shared.generation,
                            new_pid: successor.pid,
                            new_generation: successor.generation,
                            duration_ms: current.started.elapsed().as_secs_f64() * 1000.0,
                            moved: 0,
                            staying: 0,
                        };
                        Some(Ending::HandedOver(Box::new(HandedOver {
                            successor,
                            reply: current.reply,
                            report,
                        })))
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        self.upgrade_failed(&reason);
                        if machine.get() == State::Upgrading(UpgradeStep::Releasing) {
                            // The successor died between release and its
                            // confirmation: accept again on the same sockets.
                            self.shared.registry().resume();
                            self.serve_admin_and_control();
                        }
                        let _ = machine.apply(Event::RolledBack);
                        if let Some(reply) = current.reply {
                            let _ = reply.send(Response::error(reason));
                        }
                        if self.stopping {
                            let _ = machine.apply(Event::Stop);
                            return Some(Ending::Stop);
                        }
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// What the successor needs besides the sockets.
    fn header(&self) -> Header {
        let snapshot = self.shared.proxy.snapshot.load();
        let pid = std::process::id();
        let generation = self.shared.generation;
        let history = self.shared.proxy.metrics.hand_on(pid, generation);
        let health = snapshot
            .clusters
            .iter()
            .flat_map(|c| {
                c.backends.iter().map(|b| HealthState {
                    cluster: c.config.name.clone(),
                    address: b.address.to_string(),
                    addr: b.addr,
                    down: b.state.is_checked_down(),
                })
            })
            .collect();
        let sockets = self
            .shared
            .registry()
            .duplicate()
            .iter()
            .map(|(name, fd)| SocketInfo {
                name: name.clone(),
                address: describe(fd),
            })
            .collect();
        Header {
            handover_version: HANDOVER_VERSION,
            pid,
            generation,
            config_generation: snapshot.generation,
            sockets,
            // Version 1 successors refuse a version 2 header anyway.
            counters: Vec::new(),
            history: Some(history),
            health,
            ticket_keys: self
                .shared
                .kept
                .resumption
                .tickets
                .hand_on()
                .iter()
                .map(TicketKey::from)
                .collect(),
            draining: self
                .shared
                .drains()
                .status()
                .iter()
                .map(|d| (d.pid, d.generation))
                .collect(),
        }
    }
}

fn describe(fd: &std::os::fd::OwnedFd) -> String {
    use nix::sys::socket::{SockaddrStorage, getsockname};
    getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_or_else(|e| e.to_string(), |a| a.to_string())
}

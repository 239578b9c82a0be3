//! Every metric of the contract, registered on one owned registry. The data
//! path holds pre-resolved handles ([`ListenerMetrics`], [`BackendMetrics`]),
//! never a label lookup per read.

pub mod history;

use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;
pub use history::{CounterSeries, CounterSnapshot, History, SeriesKind};
use history::{HighWater, Schema};

/// Metric names, as fixed by SPEC.md.
pub mod names {
    pub const BUILD_INFO: &str = "baton_build_info";
    pub const PROCESS_GENERATION: &str = "baton_process_generation";
    pub const CONFIG_GENERATION: &str = "baton_config_generation";
    pub const CONFIG_RELOADS: &str = "baton_config_reloads_total";
    pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
        "baton_config_last_reload_success_timestamp_seconds";
    pub const CONFIG_RELOAD_DURATION: &str = "baton_config_reload_duration_seconds";
    pub const UPGRADES: &str = "baton_upgrades_total";
    pub const CONNECTIONS_ACCEPTED: &str = "baton_connections_accepted_total";
    pub const CONNECTIONS_ACTIVE: &str = "baton_connections_active";
    pub const CONNECTIONS_REJECTED: &str = "baton_connections_rejected_total";
    pub const CONNECTION_DURATION: &str = "baton_connection_duration_seconds";
    pub const BYTES_RECEIVED: &str = "baton_bytes_received_total";
    pub const BYTES_SENT: &str = "baton_bytes_sent_total";
    pub const LISTENER_MAX_CONNECTIONS: &str = "baton_listener_max_connections";
    pub const BACKEND_CONNECTIONS_ACTIVE: &str = "baton_backend_connections_active";
    pub const BACKEND_CONNECT_ERRORS: &str = "baton_backend_connect_errors_total";
    pub const BACKEND_CONNECT_DURATION: &str = "baton_backend_connect_duration_seconds";
    pub const BACKEND_HEALTHY: &str = "baton_backend_healthy";
    pub const DRAINING_PROCESSES: &str = "baton_draining_processes";
    pub const DRAIN_CONNECTIONS_ACTIVE: &str = "baton_drain_connections_active";
    pub const DRAIN_ELAPSED: &str = "baton_drain_elapsed_seconds";
    pub const DRAIN_FORCED_CLOSES: &str = "baton_drain_forced_closes_total";
    pub const DRAIN_TIMEOUT: &str = "baton_drain_timeout_seconds";
    pub const TLS_CERTIFICATE_EXPIRY: &str = "baton_tls_certificate_expiry_timestamp_seconds";
    pub const TLS_TICKET_KEY_CREATED: &str = "baton_tls_ticket_key_created_timestamp_seconds";
    pub const TAKEOVER_ERRORS: &str = "baton_takeover_errors_total";
    pub const CONNECTIONS_MIGRATED: &str = "baton_connections_migrated_total";
    pub const MIGRATION_DURATION: &str = "baton_migration_duration_seconds";
    pub const MIGRATION_FAILURES: &str = "baton_migration_failures_total";
    pub const LOG_LINES_DROPPED: &str = "baton_log_lines_dropped_total";
}

/// Why a client was closed without being proxied (`reason` label).
pub const REJECT_REASONS: [&str; 4] = [
    "max_connections",
    "tls_handshake",
    "proxy_protocol",
    "sni_no_route",
];

/// Why a predecessor kept streams instead of moving them (`reason` label
/// of `baton_migration_failures_total`).
pub const MIGRATION_FAILURE_REASONS: [&str; 4] =
    ["timeout", "successor_gone", "not_in_config", "not_parked"];

/// Why a backend connect failed (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorReason {
    Refused,
    Timeout,
    Unreachable,
    Other,
    /// The TLS handshake with the backend failed (verification, protocol).
    Tls,
    /// This machine's own limit (EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS,
    /// ENOMEM): never held against the backend's health.
    Local,
}

impl ConnectErrorReason {
    pub const ALL: [ConnectErrorReason; 6] = [
        ConnectErrorReason::Refused,
        ConnectErrorReason::Timeout,
        ConnectErrorReason::Unreachable,
        ConnectErrorReason::Other,
        ConnectErrorReason::Tls,
        ConnectErrorReason::Local,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorReason::Refused => "refused",
            ConnectErrorReason::Timeout => "timeout",
            ConnectErrorReason::Unreachable => "unreachable",
            ConnectErrorReason::Other => "other",
            ConnectErrorReason::Tls => "tls",
            ConnectErrorReason::Local => "local",
        }
    }
}

/// Connect latency on loopback is tens of microseconds; across a WAN or a
/// loaded backend it reaches seconds.
const CONNECT_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Connections last from milliseconds (a request) to hours (a websocket).
const CONNECTION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];
const RELOAD_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

pub struct Metrics {
    registry: Registry,
    /// What earlier process generations counted, added to ours on export
    /// so no `_total` goes backwards across an upgrade.
    history: Mutex<History>,
    high_water: Mutex<HighWater>,
    /// The counters and histograms a report from another process may hold.
    schema: Schema,
    pub process_generation: IntGauge,
    pub config_generation: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub config_reload_duration: Histogram,
    pub upgrades: IntCounterVec,
    connections_accepted: IntCounterVec,
    connections_active: IntGaugeVec,
    connections_rejected: IntCounterVec,
    connection_duration: HistogramVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    listener_max_connections: IntGaugeVec,
    backend_connections_active: IntGaugeVec,
    backend_connect_errors: IntCounterVec,
    backend_connect_duration: HistogramVec,
    backend_healthy: IntGaugeVec,
    pub draining_processes: IntGauge,
    pub drain_connections_active: IntGaugeVec,
    pub drain_elapsed: GaugeVec,
    pub drain_forced_closes: IntCounter,
    /// Steps a successor could not take after its predecessor let go
    /// (served around, never an exit).
    pub takeover_errors: IntCounterVec,
    pub drain_timeout: Gauge,
    pub tls_certificate_expiry: GaugeVec,
    /// When the session ticket key in use was made (it rotates).
    pub tls_ticket_key_created: Gauge,
    connections_migrated: IntCounterVec,
    /// From release to the last acknowledged batch of moved streams.
    pub migration_duration: Histogram,
    /// Streams a predecessor took back (`reason`).
    pub migration_failures: IntCounterVec,
    /// Follows `logging::dropped_lines` (synced when read).
    log_lines_dropped: IntCounter,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are constants registered once");
    collector
}

fn int_counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let opts = Opts::new(name, help);
    register(
        r,
        IntCounterVec::new(opts, labels).expect("valid metric definition"),
    )
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let opts = Opts::new(name, help);
    register(
        r,
        IntGaugeVec::new(opts, labels).expect("valid metric definition"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        r,
        HistogramVec::new(opts, labels).expect("valid metric definition"),
    )
}

impl Metrics {
    pub fn new(generation: u64) -> Metrics {
        use names::*;
        let r = Registry::new();
        let build_info = int_gauge_vec(
            &r,
            BUILD_INFO,
            "Always 1; the version label names the build.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let process_generation = register(
            &r,
            IntGauge::new(
                PROCESS_GENERATION,
                "0 on first start, +1 per binary upgrade.",
            )
            .expect("valid metric definition"),
        );
        process_generation.set(generation as i64);
        let mut metrics = Metrics {
            process_generation,
            config_generation: register(
                &r,
                IntGauge::new(
                    CONFIG_GENERATION,
                    "Config generation now serving; +1 per successful reload.",
                )
                .expect("valid metric definition"),
            ),
            config_reloads: int_counter_vec(
                &r,
                CONFIG_RELOADS,
                "Config reloads by result.",
                &["result"],
            ),
            config_last_reload_success: register(
                &r,
                Gauge::new(
                    CONFIG_LAST_RELOAD_SUCCESS,
                    "Unix time of the last config that went live.",
                )
                .expect("valid metric definition"),
            ),
            config_reload_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        CONFIG_RELOAD_DURATION,
                        "From reload request to new config live or refused.",
                    )
                    .buckets(RELOAD_BUCKETS.to_vec()),
                )
                .expect("valid metric definition"),
            ),
            upgrades: int_counter_vec(&r, UPGRADES, "Binary upgrades by result.", &["result"]),
            connections_accepted: int_counter_vec(
                &r,
                CONNECTIONS_ACCEPTED,
                "Client connections accepted.",
                &["listener"],
            ),
            connections_active: int_gauge_vec(
                &r,
                CONNECTIONS_ACTIVE,
                "Client connections open now.",
                &["listener"],
            ),
            connections_rejected: int_counter_vec(
                &r,
                CONNECTIONS_REJECTED,
                "Client connections closed without being proxied, by reason.",
                &["listener", "reason"],
            ),
            connection_duration: histogram_vec(
                &r,
                CONNECTION_DURATION,
                "Lifetime of proxied client connections.",
                &["listener"],
                &CONNECTION_BUCKETS,
            ),
            bytes_received: int_counter_vec(
                &r,
                BYTES_RECEIVED,
                "Bytes received from clients.",
                &["listener"],
            ),
            bytes_sent: int_counter_vec(&r, BYTES_SENT, "Bytes sent to clients.", &["listener"]),
            listener_max_connections: int_gauge_vec(
                &r,
                LISTENER_MAX_CONNECTIONS,
                "Configured max_connections of each listener.",
                &["listener"],
            ),
            backend_connections_active: int_gauge_vec(
                &r,
                BACKEND_CONNECTIONS_ACTIVE,
                "Connections open to each backend now.",
                &["cluster", "backend"],
            ),
            backend_connect_errors: int_counter_vec(
                &r,
                BACKEND_CONNECT_ERRORS,
                "Failed connects to backends, by reason.",
                &["cluster", "backend", "reason"],
            ),
            backend_connect_duration: histogram_vec(
                &r,
                BACKEND_CONNECT_DURATION,
                "Time to establish a backend connection.",
                &["cluster"],
                &CONNECT_BUCKETS,
            ),
            backend_healthy: int_gauge_vec(
                &r,
                BACKEND_HEALTHY,
                "1 while a backend takes new connections.",
                &["cluster", "backend"],
            ),
            draining_processes: register(
                &r,
                IntGauge::new(DRAINING_PROCESSES, "Predecessor processes still draining.")
                    .expect("valid metric definition"),
            ),
            drain_connections_active: int_gauge_vec(
                &r,
                DRAIN_CONNECTIONS_ACTIVE,
                "Connections a draining process still holds.",
                &["generation"],
            ),
            drain_elapsed: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        DRAIN_ELAPSED,
                        "Seconds since a draining process stopped accepting.",
                    ),
                    &["generation"],
                )
                .expect("valid metric definition"),
            ),
            drain_forced_closes: register(
                &r,
                IntCounter::new(
                    DRAIN_FORCED_CLOSES,
                    "Connections closed because drain.timeout passed.",
                )
                .expect("valid metric definition"),
            ),
            drain_timeout: register(
                &r,
                Gauge::new(DRAIN_TIMEOUT, "Configured drain.timeout in seconds.")
                    .expect("valid metric definition"),
            ),
            tls_certificate_expiry: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        TLS_CERTIFICATE_EXPIRY,
                        "Unix time at which a served certificate expires.",
                    ),
                    &["listener", "cert"],
                )
                .expect("valid metric definition"),
            ),
            tls_ticket_key_created: register(
                &r,
                Gauge::new(
                    TLS_TICKET_KEY_CREATED,
                    "Unix time the session ticket key in use was made (rotated every session_tickets.rotation).",
                )
                .expect("valid metric definition"),
            ),
            takeover_errors: int_counter_vec(
                &r,
                TAKEOVER_ERRORS,
                "Steps a successor could not take after its predecessor let go (pid_file, admin, control); it serves on",
                &["step"],
            ),
            connections_migrated: int_counter_vec(
                &r,
                CONNECTIONS_MIGRATED,
                "Established streams this process took over from its predecessor.",
                &["listener"],
            ),
            migration_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        MIGRATION_DURATION,
                        "Time from release to the last acknowledged batch of moved streams.",
                    )
                    .buckets(RELOAD_BUCKETS.to_vec()),
                )
                .expect("valid metric definition"),
            ),
            migration_failures: int_counter_vec(
                &r,
                MIGRATION_FAILURES,
                "Streams a predecessor resumed instead of moving them.",
                &["reason"],
            ),
            log_lines_dropped: register(
                &r,
                IntCounter::new(
                    LOG_LINES_DROPPED,
                    "Log lines dropped because the log queue was full (stderr not read fast enough).",
                )
                .expect("valid metric definition"),
            ),
            registry: r,
            history: Mutex::new(History::default()),
            high_water: Mutex::new(HighWater::default()),
            schema: Schema::new(),
        };
        metrics.schema = metrics.build_schema();
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
            metrics.upgrades.with_label_values(&[result]);
        }
        for reason in MIGRATION_FAILURE_REASONS {
            metrics.migration_failures.with_label_values(&[reason]);
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        // Only Linux has the process collector's data; elsewhere it is simply absent.
        let _ = metrics.registry.register(Box::new(process));
        metrics
    }

    /// Creates the zero-valued series of every configured listener, cluster
    /// and backend, so dashboards see them before the first connection.
    pub fn declare(&self, config: &Config) {
        for l in &config.listeners {
            let m = self.listener(&l.name);
            m.max_connections.set(l.max_connections as i64);
            self.migrated(&l.name);
        }
        for l in &config.listeners {
            for c in l.tls.iter().flat_map(|t| &t.certificates) {
                self.tls_certificate_expiry
                    .with_label_values(&[&l.name, &c.label])
                    .set(c.not_after as f64);
            }
        }
        for c in &config.clusters {
            self.backend_connect_duration.with_label_values(&[&c.name]);
            for b in &c.backends {
                // The series exist now; their values come from the live
                // backend state, which a reload keeps (health included).
                match &b.srv {
                    None => {
                        self.backend(&c.name, &b.address);
                    }
                    Some(targets) => {
                        for t in targets {
                            self.backend(&c.name, &t.label);
                        }
                    }
                }
            }
        }
        self.drain_timeout.set(config.drain_timeout.as_secs_f64());
    }

    /// Handles for one listener; resolve once, use for every connection.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: self.connections_accepted.with_label_values(&[name]),
            active: self.connections_active.with_label_values(&[name]),
            rejected: REJECT_REASONS
                .map(|r| self.connections_rejected.with_label_values(&[name, r])),
            duration: self.connection_duration.with_label_values(&[name]),
            bytes_received: self.bytes_received.with_label_values(&[name]),
            bytes_sent: self.bytes_sent.with_label_values(&[name]),
            max_connections: self.listener_max_connections.with_label_values(&[name]),
        }
    }

    /// Streams that moved into this process on listener `name`.
    pub fn migrated(&self, name: &str) -> IntCounter {
        self.connections_migrated.with_label_values(&[name])
    }

    /// Handles for one backend of one cluster.
    pub fn backend(&self, cluster: &str, address: &str) -> BackendMetrics {
        BackendMetrics {
            active: self
                .backend_connections_active
                .with_label_values(&[cluster, address]),
            connect_errors: ConnectErrorReason::ALL.map(|r| {
                self.backend_connect_errors
                    .with_label_values(&[cluster, address, r.as_str()])
            }),
            connect_duration: self.backend_connect_duration.with_label_values(&[cluster]),
            healthy: self.backend_healthy.with_label_values(&[cluster, address]),
        }
    }

    /// Drops the series of a backend that no config names any more.
    pub fn forget_backend(&self, cluster: &str, address: &str) {
        let _ = self
            .backend_connections_active
            .remove_label_values(&[cluster, address]);
        let _ = self
            .backend_healthy
            .remove_label_values(&[cluster, address]);
    }

    /// The Prometheus text exposition: our own values, with every earlier
    /// generation's counters and histograms added by exact label set.
    pub fn encode(&self) -> Vec<u8> {
        self.sync_log_drops();
        let mut out = Vec::with_capacity(16 * 1024);
        let mut families = self.registry.gather();
        {
            let history = self.history.lock().expect("metrics lock is never poisoned");
            history::merge_into(&mut families, &history);
        }
        self.high_water
            .lock()
            .expect("metrics lock is never poisoned")
            .hold(&mut families);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }

    /// Our own counter and histogram values (not including earlier
    /// generations'), for a successor or a drain report.
    pub fn own_counts(&self) -> CounterSnapshot {
        self.sync_log_drops();
        let mut series = Vec::new();
        for family in self.registry.gather() {
            let kind = match family.get_field_type() {
                MetricType::COUNTER => SeriesKind::Counter,
                MetricType::HISTOGRAM => SeriesKind::Histogram,
                _ => continue,
            };
            for m in family.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let mut s = CounterSeries {
                    name: family.name().to_string(),
                    help: family.help().to_string(),
                    kind,
                    labels,
                    value: 0.0,
                    count: 0,
                    buckets: Vec::new(),
                };
                match kind {
                    // A zero adds nothing: reports and hand-overs carry only
                    // what was counted.
                    SeriesKind::Counter if m.get_counter().get_value() == 0.0 => continue,
                    SeriesKind::Histogram if m.get_histogram().get_sample_count() == 0 => continue,
                    SeriesKind::Counter => s.value = m.get_counter().get_value(),
                    SeriesKind::Histogram => {
                        let h = m.get_histogram();
                        s.value = h.get_sample_sum();
                        s.count = h.get_sample_count();
                        s.buckets = h
                            .get_bucket()
                            .iter()
                            .map(|b| (b.upper_bound(), b.cumulative_count()))
                            .collect();
                    }
                }
                series.push(s);
            }
        }
        CounterSnapshot { series }
    }

    /// Checks a report from another process against our own metric
    /// definitions before anything of it is stored.
    pub fn validate(&self, counts: &CounterSnapshot) -> Result<(), String> {
        history::validate(&self.schema, counts)
    }

    /// Records the latest counts of a draining predecessor.
    pub fn set_live(&self, pid: u32, generation: u64, counts: CounterSnapshot) {
        self.history
            .lock()
            .expect("metrics lock is never poisoned")
            .set_live(pid, generation, counts);
    }

    /// A predecessor exited: its last counts join the earlier sum.
    pub fn fold(&self, pid: u32) {
        self.history
            .lock()
            .expect("metrics lock is never poisoned")
            .fold(pid);
    }

    /// Replaces what we know of earlier generations (a successor, from its
    /// predecessor's hand-over).
    pub fn set_history(&self, mut history: History) {
        self.high_water
            .lock()
            .expect("metrics lock is never poisoned")
            .seed(&history.shown);
        history.shown.clear();
        *self.history.lock().expect("metrics lock is never poisoned") = history;
    }

    /// Everything earlier generations counted plus our own counts as one
    /// more live predecessor: what our successor must export from its
    /// first scrape.
    pub fn hand_on(&self, pid: u32, generation: u64) -> History {
        let mut history = self
            .history
            .lock()
            .expect("metrics lock is never poisoned")
            .clone();
        history.set_live(pid, generation, self.own_counts());
        history.shown = self
            .high_water
            .lock()
            .expect("metrics lock is never poisoned")
            .export();
        history
    }

    /// The log's drop count is kept by the logger; the counter catches up
    /// whenever it is read.
    fn sync_log_drops(&self) {
        let total = crate::logging::dropped_lines();
        let shown = self.log_lines_dropped.get();
        if total > shown {
            self.log_lines_dropped.inc_by(total - shown);
        }
    }

    fn build_schema(&self) -> Schema {
        let counters: [&dyn Collector; 12] = [
            &self.log_lines_dropped,
            &self.connections_migrated,
            &self.migration_failures,
            &self.takeover_errors,
            &self.config_reloads,
            &self.upgrades,
            &self.connections_accepted,
            &self.connections_rejected,
            &self.bytes_received,
            &self.bytes_sent,
            &self.backend_connect_errors,
            &self.drain_forced_closes,
        ];
        let histograms: [&dyn Collector; 4] = [
            &self.migration_duration,
            &self.config_reload_duration,
            &self.connection_duration,
            &self.backend_connect_duration,
        ];
        let mut schema = Schema::new();
        for (kind, collectors) in [
            (SeriesKind::Counter, &counters[..]),
            (SeriesKind::Histogram, &histograms[..]),
        ] {
            for c in collectors {
                for d in c.desc() {
                    schema.insert(d.fq_name.clone(), (kind, d.variable_labels.clone()));
                }
            }
        }
        schema.insert(
            "process_cpu_seconds_total".into(),
            (SeriesKind::Counter, Vec::new()),
        );
        schema
    }
}

/// Index into [`ListenerMetrics::rejected`].
#[derive(Debug, Clone, Copy)]
pub enum RejectReason {
    MaxConnections = 0,
    TlsHandshake = 1,
    ProxyProtocol = 2,
    SniNoRoute = 3,
}

#[derive(Clone)]
pub struct ListenerMetrics {
    pub accepted: IntCounter,
    pub active: IntGauge,
    pub rejected: [IntCounter; 4],
    pub duration: Histogram,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub max_connections: IntGauge,
}

impl ListenerMetrics {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }
}

#[derive(Clone)]
pub struct BackendMetrics {
    pub active: IntGauge,
    pub connect_errors: [IntCounter; 6],
    pub connect_duration: Histogram,
    pub healthy: IntGauge,
}

impl BackendMetrics {
    pub fn connect_error(&self, reason: ConnectErrorReason) {
        self.connect_errors[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration_sum(m: &Metrics) -> f64 {
        let text = String::from_utf8(m.encode()).expect("utf-8");
        let line = text
            .lines()
            .find(|l| l.starts_with("baton_migration_duration_seconds_sum"))
            .expect("the series");
        line.rsplit_once(' ')
            .expect("a value")
            .1
            .parse()
            .expect("a float")
    }

    #[test]
    fn a_successor_never_shows_less_than_its_predecessor_showed() {
        // Three generations whose sums, re-added in another order after a
        // fold, come out one rounding step apart.
        let (a, b, c) = (Metrics::new(0), Metrics::new(1), Metrics::new(2));
        a.migration_duration.observe(0.1);
        b.migration_duration.observe(0.2);
        c.migration_duration.observe(0.3);
        // c holds a and b as live predecessors, and shows the sum.
        c.set_live(1, 0, a.own_counts());
        c.set_live(2, 1, b.own_counts());
        let shown = migration_sum(&c);
        // Its successor gets them with b folded first, a later.
        let mut history = c.hand_on(3, 2);
        history.fold(2);
        history.fold(1);
        let d = Metrics::new(3);
        d.set_history(history);
        assert!(
            migration_sum(&d) >= shown,
            "{} < {shown}",
            migration_sum(&d)
        );
    }

    #[test]
    fn earlier_generations_add_by_exact_label_set() {
        let old = Metrics::new(0);
        old.listener("web").accepted.inc_by(5);
        old.listener("gone").accepted.inc_by(2);
        old.backend("app", "b:1").connect_duration.observe(0.001);
        let new = Metrics::new(1);
        new.listener("web").accepted.inc_by(1);
        new.backend("app", "b:1").connect_duration.observe(0.001);
        new.set_live(1000, 0, old.own_counts());
        let text = String::from_utf8(new.encode()).unwrap();
        assert!(
            text.contains("baton_connections_accepted_total{listener=\"web\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_connections_accepted_total{listener=\"gone\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_backend_connect_duration_seconds_count{cluster=\"app\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "baton_backend_connect_duration_seconds_bucket{cluster=\"app\",le=\"0.001\"} 2\n"
            ),
            "{text}"
        );
        // Gauges are never summed.
        assert!(text.contains("baton_process_generation 1\n"), "{text}");
    }
}

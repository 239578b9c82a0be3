//! `FileConfig` → `Config`: defaults, references, addresses, limits. Every
//! problem is collected, so one `baton check` shows them all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::file::{
    FileCluster, FileConfig, FileDuration, FileHttpCheck, FileListener, ProxyProtocolVersion,
};
use crate::tls::{BackendTlsConfig, ListenerTlsConfig};

use super::{
    BackendConfig, ClusterConfig, Config, HealthCheckConfig, HttpCheckConfig, ListenerConfig,
    Problem, ProxyProtocolConfig, ReloadConfig, UpgradeConfig,
    lookup::{Answer, Query, lookup},
};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub const DEFAULT_CONTROL_SOCKET: &str = "baton.sock";
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 64;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MIGRATE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_DRAINING: u32 = 4;
pub const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_secs(1);
/// Tickets open for one to two hours: long enough for a client that comes
/// back within the hour, short enough to bound what a stolen key reveals.
pub const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(3600);
pub const MAX_TICKET_ROTATION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_FALL: u32 = 3;
/// Weights are small integers, as in HAProxy; the round-robin schedule is
/// precomputed from them.
pub const MAX_WEIGHT: u32 = 256;

/// The longest duration any setting takes: longer is a typo (`30d` for
/// `30s`) or an overflow waiting to happen.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: i64 = 14 * 24 * 3600;

/// The checked config (when nothing is wrong), every problem, and the
/// warnings, which never stop a config.
pub fn validate(
    file: FileConfig,
    path: &Path,
    base: &Path,
) -> (Option<Config>, Vec<Problem>, Vec<Problem>) {
    let mut v = Validator::default();
    let config = build(&mut v, file, path, base);
    (config, v.problems, v.warnings)
}

fn build(v: &mut Validator, file: FileConfig, path: &Path, base: &Path) -> Option<Config> {
    let admin_listen = v.socket_addr(
        "admin.listen",
        file.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    );
    let admin_max_connections = file
        .admin
        .max_connections
        .unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS);
    if admin_max_connections == 0 {
        v.problem("admin.max_connections", "must be at least 1");
    }
    let control_socket = base.join(
        file.control
            .socket
            .as_deref()
            .unwrap_or(DEFAULT_CONTROL_SOCKET),
    );
    let pid_file = file.pid_file.as_deref().map(|p| base.join(p));
    let drain_timeout = v.duration("drain.timeout", file.drain.timeout, DEFAULT_DRAIN_TIMEOUT);
    if let Some(message) = systemd_stop_timeout().and_then(|stop| stop_warning(drain_timeout, stop))
    {
        v.warnings.push(Problem::new("drain.timeout", message));
    }
    let ready_timeout = v.duration(
        "upgrade.ready_timeout",
        file.upgrade.ready_timeout,
        DEFAULT_READY_TIMEOUT,
    );
    let max_draining = file.upgrade.max_draining.unwrap_or(DEFAULT_MAX_DRAINING);
    let migrate_timeout = v.duration(
        "upgrade.migrate_timeout",
        file.upgrade.migrate_timeout,
        DEFAULT_MIGRATE_TIMEOUT,
    );
    if max_draining == 0 {
        v.problem("upgrade.max_draining", "must be at least 1");
    }
    let reload = ReloadConfig {
        watch: file.reload.watch.unwrap_or(false),
        debounce: v.duration(
            "reload.debounce",
            file.reload.debounce,
            DEFAULT_RELOAD_DEBOUNCE,
        ),
    };
    let ticket_rotation = v.duration(
        "session_tickets.rotation",
        file.session_tickets.rotation,
        DEFAULT_TICKET_ROTATION,
    );
    if ticket_rotation < Duration::from_secs(1) || ticket_rotation > MAX_TICKET_ROTATION {
        v.problem(
            "session_tickets.rotation",
            "must be between 1s and 7d (TLS 1.3 tickets live at most 7 days)",
        );
    }

    v.dns_servers = file
        .dns
        .servers
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| {
            // A bare IP means port 53.
            let parsed = s.parse::<SocketAddr>().or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Ok(addr) => Some(addr),
                Err(_) => {
                    v.problem(
                        &format!("dns.servers[{i}]"),
                        format!("{s:?} is not IP:PORT (such as 127.0.0.1:8600)"),
                    );
                    None
                }
            }
        })
        .collect();

    let clusters: Vec<ClusterConfig> = file
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| v.cluster(i, c, base))
        .collect();
    v.unique_names("clusters", clusters.iter().map(|c| c.name.as_str()));

    let listeners: Vec<ListenerConfig> = file
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| v.listener(i, l, &clusters, base))
        .collect();
    v.unique_names("listeners", file.listeners.iter().map(|l| l.name.as_str()));
    if let Some(admin) = admin_listen {
        let mut bound: Vec<(String, SocketAddr)> = vec![("admin.listen".into(), admin)];
        for (i, l) in file.listeners.iter().enumerate() {
            if let Some(listener) = listeners.iter().find(|c| c.name == l.name) {
                let key = format!("listeners[{i}].listen");
                if let Some((other, _)) = bound.iter().find(|(_, a)| collide(*a, listener.listen)) {
                    v.problem(
                        &key,
                        format!(
                            "{} collides with {other}: two listeners cannot share a port",
                            listener.listen
                        ),
                    );
                } else {
                    bound.push((key, listener.listen));
                }
            }
        }
    }

    if !v.problems.is_empty() {
        return None;
    }
    Some(Config {
        path: path.to_path_buf(),
        admin_listen: admin_listen.expect("admin.listen was checked above"),
        admin_max_connections: admin_max_connections as usize,
        control_socket,
        pid_file,
        drain_timeout,
        upgrade: UpgradeConfig {
            ready_timeout,
            max_draining: max_draining as usize,
            migrate: file.upgrade.migrate.unwrap_or(true),
            migrate_timeout,
        },
        ticket_rotation,
        listeners,
        clusters,
        warnings: Vec::new(),
        reload,
        dns_servers: v.dns_servers.clone(),
        digest: 0,
    })
}

/// The stop timeout of the systemd unit this process runs in, when one is
/// visible: under systemd (`INVOCATION_ID`), the unit that
/// `/proc/self/cgroup` names, as `systemctl show` reports it.
fn systemd_stop_timeout() -> Option<Duration> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let unit = cgroup
        .lines()
        .find_map(|l| l.rsplit('/').find(|s| s.ends_with(".service")))?
        .to_string();
    let out = std::process::Command::new("systemctl")
        .args(["show", "-P", "TimeoutStopUSec", &unit])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    // "1min 30s", "5min"; "infinity" parses to nothing, and warns of nothing.
    humantime::parse_duration(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

/// A drain that systemd would cut short with SIGKILL.
fn stop_warning(drain: Duration, stop: Duration) -> Option<String> {
    (drain >= stop).then(|| {
        format!(
            "{} is not shorter than the unit's TimeoutStopSec ({}): systemd kills baton before the drain ends; raise TimeoutStopSec",
            humantime::format_duration(drain),
            humantime::format_duration(stop)
        )
    })
}

/// Two listening addresses collide when they share a port and either is a
/// wildcard or both are the same address.
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// `dns.servers`, read before the clusters that need them.
    dns_servers: Vec<SocketAddr>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        if text.trim().is_empty() {
            let key = path.rsplit('.').next().unwrap_or(path);
            self.problem(path, format!("missing field `{key}` (required)"));
            return None;
        }
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.problem(
                    path,
                    format!("{text:?}: the port must be 1 to 65535, not 0"),
                );
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    path,
                    format!(
                        "{text:?} is not an IP:PORT address (e.g. 127.0.0.1:8080 or [::1]:8080)"
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, path: &str, value: Option<FileDuration>, default: Duration) -> Duration {
        match value {
            Some(FileDuration(d)) if d.is_zero() => {
                self.problem(path, "must be longer than zero");
                default
            }
            Some(FileDuration(d)) if d > MAX_DURATION => {
                self.problem(
                    path,
                    format!(
                        "{:.1} days is too long: at most 30 days (30d)",
                        d.as_secs_f64() / 86_400.0
                    ),
                );
                default
            }
            Some(FileDuration(d)) => d,
            None => default,
        }
    }

    fn http_check(&mut self, at: &str, http: &FileHttpCheck) -> HttpCheckConfig {
        // Bytes that would end the request line or a header early.
        let unsafe_text = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || unsafe_text(&path) {
            self.problem(
                &format!("{at}.path"),
                format!("{path:?} must start with / and hold no spaces or control characters"),
            );
        }
        if let Some(host) = &http.host
            && (host.is_empty() || unsafe_text(host))
        {
            self.problem(
                &format!("{at}.host"),
                format!("{host:?} must be a non-empty name without spaces"),
            );
        }
        let expect_text = http.expect.clone().unwrap_or_else(|| "200-399".into());
        let expect = match parse_expect(&expect_text) {
            Some(ranges) => ranges,
            None => {
                self.problem(
                    &format!("{at}.expect"),
                    format!(
                        "{expect_text:?} is not a status list: write codes and ranges of 100-599 like \"200-399\" or \"200,204\""
                    ),
                );
                Vec::new()
            }
        };
        HttpCheckConfig {
            path,
            host: http.host.clone(),
            expect,
            expect_text,
        }
    }

    fn unique_names<'a>(&mut self, list: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.enumerate() {
            if name.trim().is_empty() {
                self.problem(
                    &format!("{list}[{i}].name"),
                    "missing field `name` (required, not empty)",
                );
            } else if let Some(first) = seen.insert(name, i) {
                self.problem(
                    &format!("{list}[{i}].name"),
                    format!("{name:?} is already the name of {list}[{first}]"),
                );
            }
        }
    }

    fn listener(
        &mut self,
        i: usize,
        l: &FileListener,
        clusters: &[ClusterConfig],
        base: &Path,
    ) -> Option<ListenerConfig> {
        let at = |key: &str| format!("listeners[{i}].{key}");
        let listen = self.socket_addr(&at("listen"), &l.listen);
        match &l.cluster {
            Some(cluster) if !clusters.iter().any(|c| c.name == *cluster) => {
                self.problem(&at("cluster"), format!("no cluster is named {cluster:?}"));
            }
            None if l.sni_routes.is_none() => {
                self.problem(
                    &at("cluster"),
                    "missing: the cluster this listener sends to",
                );
            }
            _ => {}
        }
        let mut sni_routes = Vec::new();
        for (name, cluster) in l.sni_routes.iter().flatten() {
            let key = format!("listeners[{i}].sni_routes.{name}");
            if !clusters.iter().any(|c| c.name == *cluster) {
                self.problem(&key, format!("no cluster is named {cluster:?}"));
            }
            let host = name.strip_prefix("*.").unwrap_or(name);
            if host.is_empty()
                || host.contains('*')
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                self.problem(&key, format!("{name:?} is not a server name or *.suffix"));
            }
            sni_routes.push((name.to_ascii_lowercase(), cluster.clone()));
        }
        if l.sni_routes.as_ref().is_some_and(|r| r.is_empty()) {
            self.problem(
                &at("sni_routes"),
                "name at least one route, or leave sni_routes out",
            );
        }
        let max_connections = l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            self.problem(&at("max_connections"), "must be at least 1");
        }
        let proxy_protocol = ProxyProtocolConfig {
            accept: l.proxy_protocol.as_ref().is_some_and(|p| p.accept),
            send: l
                .proxy_protocol
                .as_ref()
                .map_or(ProxyProtocolVersion::None, |p| p.send),
            timeout: self.duration(
                &at("proxy_protocol.timeout"),
                l.proxy_protocol.as_ref().and_then(|p| p.timeout),
                DEFAULT_PROXY_PROTOCOL_TIMEOUT,
            ),
        };
        let tls = l.tls.as_ref().map(|t| {
            if t.certificates.is_empty() {
                self.problem(
                    &at("tls.certificates"),
                    "TLS needs at least one certificate",
                );
            }
            let mut certificates = Vec::new();
            for (j, c) in t.certificates.iter().enumerate() {
                let missing = [("cert", &c.cert), ("key", &c.key)]
                    .into_iter()
                    .filter(|(_, v)| v.trim().is_empty())
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>();
                if !missing.is_empty() {
                    for key in missing {
                        self.problem(
                            &format!("listeners[{i}].tls.certificates[{j}].{key}"),
                            format!("missing field `{key}` (required)"),
                        );
                    }
                    continue;
                }
                match crate::tls::load_certificate(base, &c.cert, &c.key) {
                    Ok(loaded) => {
                        let left = loaded.not_after - now_unix();
                        let at = format!("listeners[{i}].tls.certificates[{j}].cert");
                        if left < 0 {
                            self.warnings.push(Problem::new(
                                at,
                                format!("certificate {} has expired", c.cert),
                            ));
                        } else if left < EXPIRY_WARNING {
                            self.warnings.push(Problem::new(
                                at,
                                format!(
                                    "certificate {} expires in {} day(s)",
                                    c.cert,
                                    left / 86_400
                                ),
                            ));
                        }
                        certificates.push(loaded);
                    }
                    Err(e) => self.problem(
                        &format!("listeners[{i}].tls.certificates[{j}]"),
                        e.to_string(),
                    ),
                }
            }
            if let Some(alpn) = &t.alpn
                && alpn.iter().any(|p| p.is_empty() || p.len() > 255)
            {
                self.problem(&at("tls.alpn"), "ALPN protocol names are 1 to 255 bytes");
            }
            ListenerTlsConfig {
                certificates,
                session_resumption: t.session_resumption.unwrap_or(true),
                alpn: t.alpn.clone().unwrap_or_default(),
                handshake_timeout: self.duration(
                    &at("tls.handshake_timeout"),
                    t.handshake_timeout,
                    DEFAULT_HANDSHAKE_TIMEOUT,
                ),
            }
        });
        Some(ListenerConfig {
            name: l.name.clone(),
            listen: listen?,
            cluster: l.cluster.clone(),
            max_connections: max_connections as usize,
            tls,
            proxy_protocol,
            sni_routes,
        })
    }

    fn cluster(&mut self, i: usize, c: &FileCluster, base: &Path) -> ClusterConfig {
        let at = |key: &str| format!("clusters[{i}].{key}");
        let connect_timeout = self.duration(
            &at("connect_timeout"),
            c.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration(&at("idle_timeout"), c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let resolve_interval = self.duration(
            &at("resolve_interval"),
            c.resolve_interval,
            DEFAULT_RESOLVE_INTERVAL,
        );
        if resolve_interval < Duration::from_secs(1) {
            self.warnings.push(Problem::new(
                at("resolve_interval"),
                format!(
                    "{} is shorter than 1s: every backend name is looked up that often",
                    humantime::format_duration(resolve_interval)
                ),
            ));
        }
        let health_check = c.health_check.as_ref().map(|h| {
            let hc = HealthCheckConfig {
                interval: self.duration(
                    &at("health_check.interval"),
                    h.interval,
                    DEFAULT_HEALTH_INTERVAL,
                ),
                timeout: self.duration(
                    &at("health_check.timeout"),
                    h.timeout,
                    DEFAULT_HEALTH_TIMEOUT,
                ),
                rise: h.rise.unwrap_or(DEFAULT_RISE),
                fall: h.fall.unwrap_or(DEFAULT_FALL),
                http: h
                    .http
                    .as_ref()
                    .map(|http| self.http_check(&at("health_check.http"), http)),
            };
            if hc.rise == 0 {
                self.problem(&at("health_check.rise"), "must be at least 1");
            }
            if hc.fall == 0 {
                self.problem(&at("health_check.fall"), "must be at least 1");
            }
            hc
        });
        if c.backends.is_empty() {
            self.problem(&at("backends"), "a cluster needs at least one backend");
        }
        // Checked first, then every name asked at once: one batch of DNS
        // questions per cluster, not one wait per backend.
        let mut wanted: Vec<(usize, &str, String, Query, u32)> = Vec::new();
        for (j, b) in c.backends.iter().enumerate() {
            let at = |key: &str| format!("clusters[{i}].backends[{j}].{key}");
            let weight = b.weight.unwrap_or(1);
            if weight == 0 || weight > MAX_WEIGHT {
                self.problem(
                    &at("weight"),
                    format!("must be between 1 and {MAX_WEIGHT}, not {weight}"),
                );
            }
            let (key, written, query) = match (&b.srv, b.address.trim().is_empty()) {
                (Some(_), false) => {
                    self.problem(&at("srv"), "give `address` or `srv`, not both");
                    continue;
                }
                (Some(name), true) => {
                    if b.weight.is_some() {
                        self.problem(
                            &at("weight"),
                            "an SRV backend's weights come from its records",
                        );
                    }
                    ("srv", name.clone(), Query::Srv(name.clone()))
                }
                (None, true) => {
                    self.problem(&at("address"), "missing field `address` (required)");
                    continue;
                }
                (None, false) => ("address", b.address.clone(), Query::Host(b.address.clone())),
            };
            if wanted.iter().any(|(_, _, w, _, _)| *w == written) {
                self.problem(
                    &at(key),
                    format!("{written:?} is listed twice in this cluster"),
                );
            }
            wanted.push((j, key, written, query, weight.clamp(1, MAX_WEIGHT)));
        }
        let queries: Vec<Query> = wanted.iter().map(|(_, _, _, q, _)| q.clone()).collect();
        let answers = lookup(&self.dns_servers, &queries);
        let mut backends = Vec::with_capacity(wanted.len());
        for ((j, key, address, _, weight), answer) in wanted.into_iter().zip(answers) {
            let at = format!("clusters[{i}].backends[{j}].{key}");
            let (resolved, srv) = match answer {
                Answer::Addrs(Ok(resolved)) => (resolved, None),
                Answer::Srv(Ok(targets)) => (Vec::new(), Some(targets)),
                Answer::Addrs(Err(message)) | Answer::Srv(Err(message)) => {
                    self.problem(&at, message);
                    continue;
                }
            };
            backends.push(BackendConfig {
                address,
                weight,
                resolved,
                srv,
            });
        }
        let tls = c.tls.as_ref().map(|t| {
            let ca =
                t.ca.as_ref()
                    .and_then(|ca| match crate::tls::load_ca(base, ca) {
                        Ok(certs) => Some(certs),
                        Err(e) => {
                            self.problem(&at("tls.ca"), e.to_string());
                            None
                        }
                    });
            if t.server_name.trim().is_empty() {
                self.problem(
                    &at("tls.server_name"),
                    "missing field `server_name` (required)",
                );
            }
            let config = BackendTlsConfig {
                server_name: t.server_name.clone(),
                ca,
            };
            if !config.server_name.trim().is_empty()
                && let Err(e) = crate::tls::backend_tls(&config)
            {
                self.problem(&at("tls"), e.to_string());
            }
            config
        });
        ClusterConfig {
            name: c.name.clone(),
            balance: c.balance,
            tls,
            connect_timeout,
            idle_timeout,
            retries: c.retries.unwrap_or(DEFAULT_RETRIES),
            health_check,
            resolve_interval,
            backends,
        }
    }
}

/// `"200-399"`, `"200,204"`, `"200-299,301"`: inclusive ranges of 100-599.
fn parse_expect(text: &str) -> Option<Vec<(u16, u16)>> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => Some((code(lo)?, code(hi)?)).filter(|(lo, hi)| lo <= hi),
            None => code(part).map(|c| (c, c)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_parse_as_inclusive_ranges() {
        assert_eq!(parse_expect("200-399"), Some(vec![(200, 399)]));
        assert_eq!(
            parse_expect("200, 204,300-301"),
            Some(vec![(200, 200), (204, 204), (300, 301)])
        );
        for bad in ["", "2xx", "399-200", "99", "600", "200-", "200,,204"] {
            assert_eq!(parse_expect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wildcard_and_specific_addresses_on_one_port_collide() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(collide(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(collide(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(collide(a("[::]:80"), a("127.0.0.1:80")));
        assert!(!collide(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!collide(a("0.0.0.0:80"), a("0.0.0.0:81")));
    }

    #[test]
    fn a_drain_longer_than_the_units_stop_timeout_is_a_warning() {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert!(stop_warning(minutes(5), minutes(6)).is_none());
        let warning = stop_warning(minutes(5), minutes(5)).expect("equal is too long");
        assert!(warning.contains("TimeoutStopSec (5m)"), "{warning}");
        assert!(stop_warning(minutes(10), Duration::from_secs(90)).is_some());
    }
}

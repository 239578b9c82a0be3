//! Configuration: `file` mirrors the YAML, `validate` turns it into a checked
//! [`Config`], `lines` finds where a key path stands in the file, `diff`
//! names what a reload changes.

mod diff;
mod file;
mod lines;
mod lookup;
mod tree;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diff::{ConfigDiff, diff};
pub use file::{BalanceKind, FileConfig, ProxyProtocolVersion};
pub use lines::LineIndex;
pub use lookup::{
    Answer, HOSTS_FILE_ENV, Query, Resolver, SrvTarget, lookup, resolve, set_resolver,
};

use crate::tls::{BackendTlsConfig, ListenerTlsConfig};

/// A checked configuration: every reference resolves, every address parses,
/// every path is absolute. Nothing here is "must be Some".
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, absolute; reloads read it again.
    pub path: PathBuf,
    pub admin_listen: SocketAddr,
    /// Admin connections open at once; past it, accepted and closed.
    pub admin_max_connections: usize,
    pub control_socket: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub upgrade: UpgradeConfig,
    /// How long a session ticket key is in use; tickets it sealed open for
    /// one more period after it.
    pub ticket_rotation: Duration,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    /// Things worth knowing that do not stop the config (an expired
    /// certificate).
    pub warnings: Vec<Problem>,
    pub reload: ReloadConfig,
    /// Where DNS lookups go (`dns.servers`); empty: the system resolver.
    pub dns_servers: Vec<SocketAddr>,
    /// Of the bytes it was read from: the watcher reloads only for others.
    pub digest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Reload when the file changes (inotify on its folder).
    pub watch: bool,
    /// Quiet time after the last change before the reload.
    pub debounce: Duration,
}

/// A digest of a config file's bytes (not cryptographic: it tells whether
/// the bytes changed, nothing more).
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    pub ready_timeout: Duration,
    pub max_draining: usize,
    /// Move established plain TCP streams to the successor.
    pub migrate: bool,
    /// How long the successor may take to acknowledge a batch of streams.
    pub migrate_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Where connections go; with `sni_routes`, those whose name matches
    /// no route (`None`: they are closed).
    pub cluster: Option<String>,
    pub max_connections: usize,
    pub tls: Option<ListenerTlsConfig>,
    pub proxy_protocol: ProxyProtocolConfig,
    /// (server name, cluster), exact names and `*.suffix` wildcards.
    pub sni_routes: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Read a PROXY header (v1 or v2) from every client first.
    pub accept: bool,
    pub send: ProxyProtocolVersion,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub balance: BalanceKind,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connect failures retried on another backend before the client is closed.
    pub retries: u32,
    pub health_check: Option<HealthCheckConfig>,
    /// How often backend names are looked up again.
    pub resolve_interval: Duration,
    pub tls: Option<BackendTlsConfig>,
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up.
    pub rise: u32,
    /// Consecutive failures that mark an up backend down.
    pub fall: u32,
    /// `GET path` after the connect (and handshake); `None`: the connect
    /// alone is the check.
    pub http: Option<HttpCheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheckConfig {
    pub path: String,
    /// The `Host` header; `None`: the backend's address as written.
    pub host: Option<String>,
    /// Statuses that pass, as inclusive ranges.
    pub expect: Vec<(u16, u16)>,
    /// `expect` as written, for failure reasons.
    pub expect_text: String,
}

impl HttpCheckConfig {
    pub fn expects(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Exactly as written in the file (`HOST:PORT`, or the SRV name); the
    /// `backend` metric label of an address backend.
    pub address: String,
    pub weight: u32,
    /// What `address` resolved to when the config was loaded (or at the
    /// last refresh).
    pub resolved: Vec<SocketAddr>,
    /// An SRV backend: its targets as last resolved, each a backend of its
    /// own (label `target:port`, the record's weight and priority).
    pub srv: Option<Vec<SrvTarget>>,
}

impl Config {
    /// Reads, parses and validates `path`; the same path `baton check` takes.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&absolute).map_err(|e| ConfigError {
            file: absolute.clone(),
            problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
            warnings: Vec::new(),
        })?;
        Config::from_text(&absolute, &text)
    }

    /// Parses and validates `text` as if read from `path`: every problem
    /// at once (only a YAML syntax error stops at the first).
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let index = LineIndex::new(text);
        let place = |mut problems: Vec<Problem>| {
            for problem in &mut problems {
                if problem.position.is_none() {
                    problem.position = index.find(&problem.path);
                }
                // A problem with the whole document is at its start.
                if problem.position.is_none() && problem.path.is_empty() {
                    problem.position = Some((1, 1));
                }
            }
            // In file order, as an editor shows them.
            problems.sort_by_key(|p| p.position.unwrap_or((usize::MAX, 0)));
            problems
        };
        let fail = |problems, warnings| ConfigError {
            file: path.to_path_buf(),
            problems: place(problems),
            warnings: place(warnings),
        };
        let (tree, mut problems) = match tree::build(text) {
            Ok(built) => built,
            // The reference parser's reading, and its words, when it has any.
            Err(ours) => match yaml_value(text) {
                Ok(value) => (value, Vec::new()),
                Err(theirs) => return Err(fail(vec![theirs.unwrap_or(ours)], Vec::new())),
            },
        };
        let mut unreadable = Vec::new();
        let file: Option<FileConfig> = tree::collect(tree, &mut unreadable);
        let Some(file) = file else {
            problems.extend(unreadable);
            return Err(fail(problems, Vec::new()));
        };
        let base = path.parent().unwrap_or(Path::new("/"));
        let (config, semantic, warnings) = validate::validate(file, path, base);
        // A key already reported as unreadable is not reported again as
        // missing or invalid.
        let under = |p: &str, q: &str| {
            p == q || (p.starts_with(q) && matches!(p.as_bytes().get(q.len()), Some(b'.' | b'[')))
        };
        let semantic: Vec<Problem> = semantic
            .into_iter()
            .filter(|s| !unreadable.iter().any(|u| under(&s.path, &u.path)))
            .collect();
        problems.extend(unreadable);
        problems.extend(semantic);
        match config {
            Some(mut config) if problems.is_empty() => {
                config.warnings = place(warnings);
                config.digest = digest(text.as_bytes());
                Ok(config)
            }
            _ => Err(fail(problems, warnings)),
        }
    }

    /// Logs every warning (at start and at each reload, as `check` prints
    /// them).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            let (line, column) = w.position.unwrap_or((0, 0));
            tracing::warn!(
                file = %self.path.display(),
                line,
                column,
                path = %w.path,
                "config warning: {}",
                w.message
            );
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// A one-line summary for `baton check` and the start-up log.
    pub fn summary(&self) -> String {
        let backends: usize = self.clusters.iter().map(|c| c.backends.len()).sum();
        format!(
            "{} listener(s), {} cluster(s), {} backend(s), admin on {}",
            self.listeners.len(),
            self.clusters.len(),
            backends,
            self.admin_listen
        )
    }
}

/// `text` as serde_yaml reads it; its syntax error with key path and
/// position when it cannot.
fn yaml_value(text: &str) -> Result<serde_yaml::Value, Option<Problem>> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let position = inner.location().map(|l| (l.line(), l.column()));
        // serde_yaml appends its own position; ours is printed in front.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
            message = rest.to_string();
        }
        Some(Problem {
            path: if path == "." { String::new() } else { path },
            position,
            message: format!("YAML syntax: {message}"),
        })
    })
}

/// Reads only `control.socket` from `path`, leniently: the rest of the file
/// may be broken, as it may be when someone asks a running baton to reload it.
pub fn control_socket_of(path: &Path) -> Result<PathBuf, String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&absolute)
        .map_err(|e| format!("cannot read {}: {e}", absolute.display()))?;
    let base = absolute.parent().unwrap_or(Path::new("/"));
    let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::Null);
    let socket = value
        .get("control")
        .and_then(|c| c.get("socket"))
        .and_then(|s| s.as_str())
        .unwrap_or(validate::DEFAULT_CONTROL_SOCKET);
    Ok(base.join(socket))
}

/// One thing wrong with a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `listeners[0].cluster`; empty for the whole document.
    pub path: String,
    /// 1-based line and column, where known.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            position: None,
            message: message.into(),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
    /// Found beside the errors; they alone would not stop the config.
    pub warnings: Vec<Problem>,
}

impl Problem {
    /// `file:line:column: path: message`, the way editors jump to it.
    pub fn display(&self, file: &Path) -> String {
        let mut out = file.display().to_string();
        if let Some((line, column)) = self.position {
            out.push_str(&format!(":{line}:{column}"));
        }
        if self.path.is_empty() {
            out.push_str(&format!(": {}", self.message));
        } else {
            out.push_str(&format!(": {}: {}", self.path, self.message));
        }
        out
    }

    /// One entry of `check --format json`.
    pub fn to_json(&self, severity: &str, file: &Path) -> serde_json::Value {
        serde_json::json!({
            "severity": severity,
            "file": file.display().to_string(),
            "line": self.position.map(|p| p.0),
            "column": self.position.map(|p| p.1),
            "path": self.path,
            "message": self.message,
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", p.display(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

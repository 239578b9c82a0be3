//! Configuration: `file` mirrors the YAML, `validate` turns it into a checked
//! [`Config`], `lines` finds where a key path stands in the file, `diff`
//! names what a reload changes.

mod diff;
mod file;
mod lines;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diff::{ConfigDiff, diff};
pub use file::{BalanceKind, FileConfig, ProxyProtocolVersion};
pub use lines::LineIndex;
pub use validate::{HOSTS_FILE_ENV, Resolver, resolve, set_resolver};

use crate::tls::{BackendTlsConfig, ListenerTlsConfig};

/// A checked configuration: every reference resolves, every address parses,
/// every path is absolute. Nothing here is "must be Some".
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, absolute; reloads read it again.
    pub path: PathBuf,
    pub admin_listen: SocketAddr,
    pub control_socket: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub upgrade: UpgradeConfig,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    /// Things worth knowing that do not stop the config (an expired
    /// certificate).
    pub warnings: Vec<Problem>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up.
    pub rise: u32,
    /// Consecutive failures that mark an up backend down.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Exactly as written in the file; the `backend` metric label.
    pub address: String,
    pub weight: u32,
    /// What `address` resolved to when the config was loaded.
    pub resolved: Vec<SocketAddr>,
}

impl Config {
    /// Reads, parses and validates `path`; the same path `baton check` takes.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&absolute).map_err(|e| ConfigError {
            file: absolute.clone(),
            problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
        })?;
        Config::from_text(&absolute, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        };
        let file = parse(text).map_err(|p| fail(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let index = LineIndex::new(text);
        let place = |mut problems: Vec<Problem>| {
            for problem in &mut problems {
                problem.position = index.find(&problem.path);
            }
            // In file order, as an editor shows them.
            problems.sort_by_key(|p| p.position.unwrap_or((usize::MAX, 0)));
            problems
        };
        match validate::validate(file, path, base) {
            Ok(mut config) => {
                config.warnings = place(std::mem::take(&mut config.warnings));
                Ok(config)
            }
            Err(problems) => Err(fail(place(problems))),
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

/// Syntax and type errors stop at the first one, with its key path and position.
fn parse(text: &str) -> Result<FileConfig, Problem> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let position = inner.location().map(|l| (l.line(), l.column()));
        // serde_yaml appends its own position; we print ours in front.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        // ... and sometimes its own copy of the path.
        if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
            message = rest.to_string();
        }
        Problem {
            path: if path == "." { String::new() } else { path },
            position,
            message,
        }
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, column)) = p.position {
                write!(f, ":{line}:{column}")?;
            }
            if p.path.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

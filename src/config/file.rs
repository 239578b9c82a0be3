//! The serde mirror of `config.yaml`: every key, nothing checked beyond types.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The YAML document as written. Unknown keys are errors at every level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub control: FileControl,
    pub pid_file: Option<String>,
    #[serde(default)]
    pub drain: FileDrain,
    #[serde(default)]
    pub upgrade: FileUpgrade,
    #[serde(default)]
    pub session_tickets: FileSessionTickets,
    #[serde(default)]
    pub reload: FileReload,
    #[serde(default)]
    pub dns: FileDns,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub clusters: Vec<FileCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControl {
    pub socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDrain {
    pub timeout: Option<FileDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpgrade {
    pub ready_timeout: Option<FileDuration>,
    pub max_draining: Option<u32>,
    pub migrate: Option<bool>,
    pub migrate_timeout: Option<FileDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    pub servers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReload {
    pub watch: Option<bool>,
    pub debounce: Option<FileDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSessionTickets {
    pub rotation: Option<FileDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    // Required keys default to empty so that a missing one is reported
    // with the rest (by `validate`), not instead of them.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub listen: String,
    /// Required, except that with `sni_routes` it is the route for names
    /// that match none (and may be left out to close those).
    pub cluster: Option<String>,
    pub max_connections: Option<u32>,
    pub proxy_protocol: Option<FileProxyProtocol>,
    pub tls: Option<FileTls>,
    /// Server name (exact or `*.suffix`) → cluster, read from the
    /// ClientHello (or the terminated handshake with `tls`).
    pub sni_routes: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxyProtocol {
    #[serde(default)]
    pub accept: bool,
    #[serde(default)]
    pub send: ProxyProtocolVersion,
    /// How long an upstream may take to send its header.
    pub timeout: Option<FileDuration>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    #[serde(default)]
    pub certificates: Vec<FileCertificate>,
    pub session_resumption: Option<bool>,
    pub alpn: Option<Vec<String>>,
    pub handshake_timeout: Option<FileDuration>,
}

/// TLS from baton to a cluster's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackendTls {
    #[serde(default)]
    pub server_name: String,
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub balance: BalanceKind,
    pub connect_timeout: Option<FileDuration>,
    pub idle_timeout: Option<FileDuration>,
    pub retries: Option<u32>,
    pub health_check: Option<FileHealthCheck>,
    pub resolve_interval: Option<FileDuration>,
    pub tls: Option<FileBackendTls>,
    #[serde(default)]
    pub backends: Vec<FileBackend>,
}

/// How a cluster picks a backend for each new connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceKind {
    #[default]
    RoundRobin,
    LeastConn,
    Random,
    P2c,
    HashSourceIp,
}

impl BalanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceKind::RoundRobin => "round_robin",
            BalanceKind::LeastConn => "least_conn",
            BalanceKind::Random => "random",
            BalanceKind::P2c => "p2c",
            BalanceKind::HashSourceIp => "hash_source_ip",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub interval: Option<FileDuration>,
    pub timeout: Option<FileDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub http: Option<FileHttpCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttpCheck {
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    #[serde(default)]
    pub address: String,
    /// Instead of `address`: every target of this SRV name.
    pub srv: Option<String>,
    pub weight: Option<u32>,
}

/// A duration written as `250ms`, `5s`, `2m`, `1h`; parsed while deserializing
/// so a malformed one is reported with its key path, line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDuration(pub Duration);

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(FileDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like 250ms, 5s, 2m or 1h"
                ))
            })
    }
}

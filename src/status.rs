//! The facts of `/status` and `baton status`, as one serializable value.

use serde::{Deserialize, Serialize};

/// Whoever can tell the process's status (admin holds one of these, not
/// the app).
pub trait StatusSource: Send + Sync {
    fn status(&self) -> Status;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub generation: u64,
    pub config_generation: u64,
    pub lifecycle: String,
    pub config: String,
    pub listeners: Vec<ListenerStatus>,
    pub clusters: Vec<ClusterStatus>,
    pub draining: Vec<DrainingStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    pub cluster: String,
    pub active: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub balance: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    /// As written in the config.
    pub address: String,
    /// The address it resolved to.
    pub resolved: String,
    pub weight: u32,
    pub healthy: bool,
    pub active: usize,
    /// The SRV name it came from, and its priority there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    #[serde(default)]
    pub priority: u16,
    /// Why the last health check failed (none once one passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainingStatus {
    pub pid: u32,
    pub generation: u64,
    pub connections: u64,
    pub elapsed_seconds: f64,
}

impl Status {
    /// A terminal rendering for `baton status`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "baton pid {}  generation {}  config generation {}  {}\nconfig {}\n\nlisteners\n",
            self.pid, self.generation, self.config_generation, self.lifecycle, self.config
        );
        for l in &self.listeners {
            out.push_str(&format!(
                "  {:<16} {:<24} -> {:<16} active {}/{}\n",
                l.name, l.address, l.cluster, l.active, l.max_connections
            ));
        }
        out.push_str("\nclusters\n");
        for c in &self.clusters {
            out.push_str(&format!("  {} ({})\n", c.name, c.balance));
            for b in &c.backends {
                out.push_str(&format!(
                    "    {:<28} {:<22} weight {:<3} {:<9} active {}\n",
                    b.address,
                    b.resolved,
                    b.weight,
                    if b.healthy { "healthy" } else { "DOWN" },
                    b.active
                ));
                if let Some(srv) = &b.srv {
                    out.push_str(&format!("      from SRV {srv} (priority {})\n", b.priority));
                }
                if let Some(reason) = &b.check_failure {
                    out.push_str(&format!("      last check failed: {reason}\n"));
                }
            }
        }
        out.push_str("\ndraining\n");
        if self.draining.is_empty() {
            out.push_str("  none\n");
        }
        for d in &self.draining {
            out.push_str(&format!(
                "  pid {} generation {}: {} connection(s), {:.1}s\n",
                d.pid, d.generation, d.connections, d.elapsed_seconds
            ));
        }
        out
    }
}

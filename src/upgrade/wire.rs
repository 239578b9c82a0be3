//! The messages of the hand-over (see the protocol in `upgrade`'s doc).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::{CounterSnapshot, History};

/// The hand-over format this build speaks. Version 2: counter history
/// folded and sent with `Released`, and the successor confirms the
/// take-over (`TookOver`) before the predecessor closes its sockets.
pub const HANDOVER_VERSION: u32 = 2;
/// The oldest predecessor format this build still accepts.
pub const OLDEST_HANDOVER_VERSION: u32 = 1;

/// What `baton upgrade` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub old_pid: u32,
    pub old_generation: u64,
    pub new_pid: u32,
    pub new_generation: u64,
    pub duration_ms: f64,
}

/// Predecessor → successor frames (length-prefixed JSON, read with recvmsg).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum ToSuccessor {
    Header(Box<Header>),
    /// The descriptors attached to this frame, in order.
    Sockets {
        names: Vec<String>,
    },
    /// Every socket was sent.
    End,
    /// The predecessor stopped accepting and serving admin: the successor
    /// owns everything now. `history`: every count of earlier generations
    /// as of this instant, the predecessor's own included (version 2).
    Released {
        #[serde(default)]
        history: Option<History>,
    },
    /// The hand-over will not happen (another upgrade runs, the predecessor
    /// drains, or it gave up waiting).
    Refused {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub handover_version: u32,
    pub pid: u32,
    pub generation: u64,
    pub config_generation: u64,
    pub sockets: Vec<SocketInfo>,
    /// Version 1: own counts of the predecessor and the last report of
    /// every earlier generation it knew.
    #[serde(default)]
    pub counters: Vec<GenerationCounts>,
    /// Version 2: what earlier generations counted, the predecessor's own
    /// counts as one live entry; bounded (see `metrics::history`). Used
    /// only if the predecessor dies before `Released`.
    #[serde(default)]
    pub history: Option<History>,
    pub health: Vec<HealthState>,
    /// Predecessors still draining: (pid, generation). They report to the
    /// new process once it accepts.
    #[serde(default)]
    pub draining: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationCounts {
    pub generation: u64,
    pub pid: u32,
    pub counts: CounterSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthState {
    pub cluster: String,
    pub address: String,
    pub addr: SocketAddr,
    pub down: bool,
}

/// Successor → predecessor lines on the hand-over connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FromSuccessor {
    /// Accepting on every listener; the predecessor may stop.
    Ready {
        pid: u32,
        generation: u64,
    },
    Failed {
        reason: String,
    },
    /// Version 2: the successor got `Released`, and serves admin and
    /// control; the predecessor may close its sockets.
    TookOver,
}

/// A draining process's periodic report to the accepting one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReport {
    pub pid: u32,
    pub generation: u64,
    pub connections: u64,
    pub elapsed_seconds: f64,
    pub counts: CounterSnapshot,
}

//! The messages of the hand-over (see the protocol in `upgrade`'s doc).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::CounterSnapshot;

/// The hand-over format this build speaks.
pub const HANDOVER_VERSION: u32 = 1;
/// The oldest predecessor format this build still accepts (one older than
/// the current once the format changes).
pub const OLDEST_HANDOVER_VERSION: u32 = 1;

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
    /// owns everything now.
    Released,
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
    /// Own counts of the predecessor and the last report of every earlier
    /// generation it knew, never summed together.
    pub counters: Vec<GenerationCounts>,
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

//! The data path: a listener accepts, the route names a cluster, the cluster's
//! balancer picks a backend, `connect` reaches it, `copy` moves the bytes.

pub mod connect;
pub mod copy;
pub mod listener;
pub mod moving;
pub mod proxy_protocol;
pub mod route;
pub mod serve;
pub mod sni;

use arc_swap::ArcSwap;

use crate::drain::Drain;
use crate::metrics::Metrics;
use route::Snapshot;

/// What every accept loop and connection shares.
pub struct Proxy {
    /// The routing state; a reload replaces it in one store.
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub drain: Drain,
    /// Streams paused for a live migration.
    pub moves: moving::Moves,
}

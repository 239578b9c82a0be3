//! The routing snapshot: what every new connection consults, immutable, and
//! swapped as a whole on reload (one `ArcSwap` store). A connection keeps the
//! `Route` it started with, so a reload never changes an open stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use crate::balance::{Backend, BackendState, Balancer, new_balancer};
use crate::config::{BackendConfig, ClusterConfig, Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::tls::{BackendTls, ListenerTls, Resumption, backend_tls, listener_tls};

pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    routes: HashMap<String, Arc<Route>>,
    pub clusters: Vec<Arc<Cluster>>,
}

/// Where a listener sends its connections.
pub struct Route {
    pub listener: ListenerConfig,
    /// The cluster for every connection, or with SNI routes for names that
    /// match none.
    pub cluster: Option<Arc<Cluster>>,
    pub sni: SniRoutes,
    /// TLS termination, with the certificates read at this generation.
    pub tls: Option<ListenerTls>,
}

/// Server name → cluster: exact names, then `*.suffix` (one label).
#[derive(Default)]
pub struct SniRoutes {
    exact: HashMap<String, Arc<Cluster>>,
    wildcard: HashMap<String, Arc<Cluster>>,
}

impl SniRoutes {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    fn lookup(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.exact.get(name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        })
    }
}

impl Route {
    /// The cluster for a connection whose ClientHello named `sni`.
    pub fn cluster_for(&self, sni: Option<&str>) -> Option<&Arc<Cluster>> {
        sni.and_then(|name| self.sni.lookup(name))
            .or(self.cluster.as_ref())
    }

    /// SNI routing without terminating TLS: the ClientHello is read first.
    pub fn peeks_sni(&self) -> bool {
        !self.sni.is_empty() && self.tls.is_none()
    }
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub backends: Vec<Backend>,
    /// Backends of more than one SRV priority: only the lowest group with
    /// a healthy backend takes connections.
    pub priorities: bool,
    pub balancer: Box<dyn Balancer>,
    /// TLS to the backends.
    pub tls: Option<BackendTls>,
}

/// Why a routing snapshot could not be built from a checked config.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("clusters.{cluster}.tls: {source}")]
    ClusterTls {
        cluster: String,
        source: crate::tls::TlsError,
    },
    #[error("listeners.{listener}: no cluster is named {cluster:?}")]
    NoCluster { listener: String, cluster: String },
    #[error("listeners.{listener}.tls: {source}")]
    ListenerTls {
        listener: String,
        source: crate::tls::TlsError,
    },
}

impl Snapshot {
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        kept: &Kept,
        metrics: &Metrics,
    ) -> Result<Snapshot, SnapshotError> {
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| {
                let backends: Vec<Backend> = c
                    .backends
                    .iter()
                    .flat_map(expand)
                    .map(|e| Backend {
                        state: kept.backends.get(&c.name, &e.label, e.addr, metrics),
                        address: e.label,
                        addr: e.addr,
                        weight: e.weight,
                        priority: e.priority,
                        srv: e.srv,
                    })
                    .collect();
                let priorities = backends.iter().any(|b| b.priority != backends[0].priority);
                let tls = c
                    .tls
                    .as_ref()
                    .map(backend_tls)
                    .transpose()
                    .map_err(|source| SnapshotError::ClusterTls {
                        cluster: c.name.clone(),
                        source,
                    })?;
                Ok(Arc::new(Cluster {
                    balancer: new_balancer(c.balance, &backends),
                    priorities,
                    config: c.clone(),
                    backends,
                    tls,
                }))
            })
            .collect::<Result<_, SnapshotError>>()?;
        let routes = config
            .listeners
            .iter()
            .map(|l| {
                let by_name = |name: &str| {
                    clusters
                        .iter()
                        .find(|c| c.config.name == name)
                        .cloned()
                        .ok_or_else(|| SnapshotError::NoCluster {
                            listener: l.name.clone(),
                            cluster: name.to_string(),
                        })
                };
                let cluster = l.cluster.as_deref().map(by_name).transpose()?;
                let mut sni = SniRoutes::default();
                for (name, target) in &l.sni_routes {
                    let target = by_name(target)?;
                    match name.strip_prefix("*.") {
                        Some(suffix) => sni.wildcard.insert(suffix.to_string(), target),
                        None => sni.exact.insert(name.clone(), target),
                    };
                }
                let tls = l
                    .tls
                    .as_ref()
                    .map(|tls| listener_tls(tls, &kept.resumption))
                    .transpose()
                    .map_err(|source| SnapshotError::ListenerTls {
                        listener: l.name.clone(),
                        source,
                    })?;
                let route = Route {
                    listener: l.clone(),
                    cluster,
                    sni,
                    tls,
                };
                Ok((l.name.clone(), Arc::new(route)))
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(Snapshot {
            generation,
            config,
            routes,
            clusters,
        })
    }

    pub fn route(&self, listener: &str) -> Option<&Arc<Route>> {
        self.routes.get(listener)
    }
}

/// One backend of a snapshot, as a config backend expands: an address
/// backend to each address it resolved to, an SRV backend to each address
/// of each target.
struct Expanded {
    label: Arc<str>,
    addr: SocketAddr,
    weight: u32,
    priority: u16,
    srv: Option<Arc<str>>,
}

fn expand(b: &BackendConfig) -> Vec<Expanded> {
    match &b.srv {
        None => {
            let label: Arc<str> = b.address.as_str().into();
            b.resolved
                .iter()
                .map(|&addr| Expanded {
                    label: label.clone(),
                    addr,
                    weight: b.weight,
                    priority: 0,
                    srv: None,
                })
                .collect()
        }
        Some(targets) => {
            let name: Arc<str> = b.address.as_str().into();
            targets
                .iter()
                .flat_map(|t| {
                    let label: Arc<str> = t.label.as_str().into();
                    let name = name.clone();
                    t.addrs.iter().map(move |&addr| Expanded {
                        label: label.clone(),
                        addr,
                        weight: t.weight,
                        priority: t.priority,
                        srv: Some(name.clone()),
                    })
                })
                .collect()
        }
    }
}

/// What every snapshot of a process shares and a new one takes over from
/// the old: backend health and counts, TLS resumption state.
pub struct Kept {
    pub backends: BackendStates,
    pub resumption: Resumption,
}

type BackendKey = (String, Arc<str>, SocketAddr);

/// Live backend state by (cluster, address label, resolved address): a new
/// snapshot reuses the state of every backend an older one still holds, so
/// health and active counts survive reloads.
#[derive(Default)]
pub struct BackendStates {
    states: Mutex<HashMap<BackendKey, Weak<BackendState>>>,
}

impl BackendStates {
    fn get(
        &self,
        cluster: &str,
        address: &Arc<str>,
        addr: SocketAddr,
        metrics: &Metrics,
    ) -> Arc<BackendState> {
        let mut states = self
            .states
            .lock()
            .expect("backend state lock is never poisoned");
        let key = (cluster.to_string(), address.clone(), addr);
        if let Some(state) = states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(BackendState::new(metrics.backend(cluster, address)));
        states.insert(key, Arc::downgrade(&state));
        state
    }

    /// Forgets backends no snapshot holds any more.
    pub fn prune(&self) {
        let mut states = self
            .states
            .lock()
            .expect("backend state lock is never poisoned");
        states.retain(|_, s| s.strong_count() > 0);
    }
}

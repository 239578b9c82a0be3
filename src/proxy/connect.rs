//! Connecting to a backend of a cluster: pick, connect under
//! `connect_timeout`, and on failure retry another backend up to `retries`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::route::Cluster;
use crate::balance::{ActiveGuard, Backend};
use crate::metrics::ConnectErrorReason;

/// A backend connection: plain TCP, or TLS when the cluster asks for it.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A backend connection and the guard that counts it as active.
pub struct Connected<'a> {
    pub stream: BackendStream,
    pub backend: &'a Backend,
    pub _active: ActiveGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster has no backend to try")]
    NoBackend,
    #[error("{attempts} connect attempt(s) failed, last to {backend}: {reason} ({detail})")]
    Failed {
        attempts: u32,
        backend: String,
        reason: &'static str,
        detail: String,
    },
}

/// Connects to a backend of `cluster` for a client at `client`; `preamble`
/// (a PROXY header) is written before anything else, TLS included.
pub async fn connect<'a>(
    cluster: &'a Cluster,
    client: IpAddr,
    preamble: &[u8],
) -> Result<Connected<'a>, ConnectError> {
    let backends = &cluster.backends;
    let mut tried = Tried::default();
    let mut last = None;
    let attempts = cluster.config.retries + 1;
    for _ in 0..attempts {
        let Some(i) = pick(cluster, client, &tried) else {
            break;
        };
        tried.push(i);
        let backend = &backends[i];
        let started = Instant::now();
        let result = tokio::time::timeout(
            cluster.config.connect_timeout,
            open(cluster, backend.addr, preamble),
        )
        .await;
        let (reason, detail) = match result {
            Ok(Ok(stream)) => {
                backend
                    .state
                    .metrics
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
                backend.state.connect_succeeded();
                return Ok(Connected {
                    stream,
                    _active: backend.state.track(),
                    backend,
                });
            }
            Ok(Err((reason, e))) => (reason, e.to_string()),
            Err(_) => (
                ConnectErrorReason::Timeout,
                "connect_timeout passed".to_string(),
            ),
        };
        tracing::debug!(cluster = %cluster.config.name, backend = %backend.address, addr = %backend.addr, reason = reason.as_str(), "backend connect failed");
        backend.state.metrics.connect_error(reason);
        if reason == ConnectErrorReason::Local {
            // Out of descriptors or ports here: another backend would fail
            // the same way, and this one is not to blame.
            tracing::warn!(cluster = %cluster.config.name, error = %detail, "backend connect failed for a local reason; backend health unchanged");
            last = Some((backend, reason, detail));
            break;
        }
        if let Some(backoff) = backend.state.connect_failed() {
            tracing::warn!(cluster = %cluster.config.name, backend = %backend.address, addr = %backend.addr, ?backoff, "backend ejected after consecutive connect failures");
            let state = backend.state.clone();
            // Show it healthy again on /metrics when the back-off ends.
            tokio::spawn(async move {
                tokio::time::sleep(backoff).await;
                state.refresh_gauge();
            });
        }
        last = Some((backend, reason, detail));
    }
    match last {
        Some((backend, reason, detail)) => Err(ConnectError::Failed {
            attempts: tried.len as u32,
            backend: backend.address.to_string(),
            reason: reason.as_str(),
            detail,
        }),
        None => Err(ConnectError::NoBackend),
    }
}

/// The backends one connection has tried: inline for the first few, so
/// that connecting allocates nothing; more retries than that spill over.
#[derive(Default)]
struct Tried {
    first: [usize; 4],
    more: Vec<usize>,
    len: usize,
}

impl Tried {
    fn push(&mut self, i: usize) {
        match self.first.get_mut(self.len) {
            Some(slot) => *slot = i,
            None => self.more.push(i),
        }
        self.len += 1;
    }

    fn contains(&self, i: usize) -> bool {
        self.first[..self.len.min(self.first.len())].contains(&i) || self.more.contains(&i)
    }
}

/// TCP connect, the preamble, then the TLS handshake when the cluster has
/// `tls`.
pub async fn open(
    cluster: &Cluster,
    addr: SocketAddr,
    preamble: &[u8],
) -> Result<BackendStream, (ConnectErrorReason, io::Error)> {
    let mut stream = tcp_connect(addr).await.map_err(|e| (classify(&e), e))?;
    let _ = stream.set_nodelay(true);
    if !preamble.is_empty() {
        Box::pin(stream.write_all(preamble))
            .await
            .map_err(|e| (ConnectErrorReason::Other, e))?;
    }
    match &cluster.tls {
        None => Ok(BackendStream::Plain(stream)),
        Some(tls) => Box::pin(tls.connector.connect(tls.server_name.clone(), stream))
            .await
            .map(|s| BackendStream::Tls(Box::new(s)))
            .map_err(|e| (ConnectErrorReason::Tls, e)),
    }
}

/// A non-blocking connect. The socket turns writable once the handshake is
/// done; only one the kernel marked closed is asked why (tokio's own
/// connect asks every time: one `getsockopt` per connection more).
async fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed()
        && let Some(e) = stream.take_error()?
    {
        return Err(e);
    }
    Ok(stream)
}

/// A healthy backend not tried yet; when none is healthy, any backend not
/// tried yet (fail open, as Envoy's panic threshold does). With SRV
/// priorities, only from the lowest group that has such a backend.
fn pick(cluster: &Cluster, client: IpAddr, tried: &Tried) -> Option<usize> {
    let backends = &cluster.backends;
    let candidate = |i: usize| !tried.contains(i) && backends[i].state.is_healthy();
    let group = if cluster.priorities {
        (0..backends.len())
            .filter(|&i| candidate(i))
            .map(|i| backends[i].priority)
            .min()
    } else {
        None
    };
    cluster
        .balancer
        .pick(backends, client, &|i| {
            candidate(i) && group.is_none_or(|p| backends[i].priority == p)
        })
        .or_else(|| {
            let any_healthy = backends.iter().any(|b| b.state.is_healthy());
            if any_healthy {
                None
            } else {
                cluster
                    .balancer
                    .pick(backends, client, &|i| !tried.contains(i))
            }
        })
}

fn classify(e: &io::Error) -> ConnectErrorReason {
    use nix::libc::{EADDRNOTAVAIL, EMFILE, ENFILE, ENOBUFS, ENOMEM};
    if matches!(
        e.raw_os_error(),
        Some(EMFILE | ENFILE | EADDRNOTAVAIL | ENOBUFS | ENOMEM)
    ) {
        return ConnectErrorReason::Local;
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectErrorReason::Refused,
        io::ErrorKind::TimedOut => ConnectErrorReason::Timeout,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            ConnectErrorReason::Unreachable
        }
        _ => ConnectErrorReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_backends_past_the_inline_few_are_still_remembered() {
        let mut tried = Tried::default();
        for i in [7, 3, 9, 0, 12, 5] {
            assert!(!tried.contains(i));
            tried.push(i);
        }
        assert_eq!(tried.len, 6);
        for i in [7, 3, 9, 0, 12, 5] {
            assert!(tried.contains(i), "backend {i} was tried");
        }
        assert!(!tried.contains(1) && !tried.contains(4));
    }

    #[tokio::test]
    async fn a_refused_connect_says_refused() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let e = tcp_connect(addr).await.expect_err("nothing listens");
        assert_eq!(classify(&e), ConnectErrorReason::Refused, "{e}");
    }
}

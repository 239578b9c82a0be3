//! Accept loops and the life of one proxied connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Proxy;
use super::connect::{BackendStream, connect};
use super::copy::{self, End};
use super::route::Route;
use crate::metrics::{ListenerMetrics, RejectReason};

/// One listener's accept loop state. `active` outlives reloads, so
/// `max_connections` counts every connection the listener holds.
pub struct AcceptLoop {
    pub name: Arc<str>,
    pub proxy: Arc<Proxy>,
    pub metrics: ListenerMetrics,
    pub active: Arc<AtomicUsize>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl AcceptLoop {
    /// Accepts until `stop` fires. Then, unless `leave_queue` is set (another
    /// loop or process shares the socket and takes the queue), serves what
    /// the kernel already queued, so no queued client is reset.
    pub async fn run(
        self,
        listener: TcpListener,
        stop: CancellationToken,
        leave_queue: Arc<AtomicBool>,
    ) {
        let mut backoff = BACKOFF_MIN;
        // A listener removed by a reload serves its queue with the last route
        // it had.
        let mut route = None;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = BACKOFF_MIN;
                    self.admit(stream, peer, &mut route);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the queue stays, so
                    // retrying at once would spin. Back off and try again.
                    tracing::warn!(listener = %self.name, error = %e, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if !leave_queue.load(Ordering::Acquire) {
            // A zero timeout still polls accept once: whatever is queued now.
            while let Ok(Ok((stream, peer))) =
                tokio::time::timeout(Duration::ZERO, listener.accept()).await
            {
                self.admit(stream, peer, &mut route);
            }
        }
        tracing::debug!(listener = %self.name, "stopped accepting");
    }

    /// Starts serving `stream`, or closes it at once past `max_connections`.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, last_route: &mut Option<Arc<Route>>) {
        let current = self.proxy.snapshot.load().route(&self.name).cloned();
        if current.is_some() {
            *last_route = current;
        }
        let Some(route) = last_route.clone() else {
            return;
        };
        self.metrics.accepted.inc();
        let max = route.listener.max_connections;
        if self.active.fetch_add(1, Ordering::AcqRel) >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.metrics.reject(RejectReason::MaxConnections);
            tracing::debug!(listener = %self.name, client = %peer, "closed: max_connections reached");
            return;
        }
        let guard = ActiveConnection {
            active: self.active.clone(),
            metrics: self.metrics.clone(),
        };
        self.metrics.active.inc();
        let proxy = self.proxy.clone();
        let name = self.name.clone();
        self.proxy.drain.spawn_connection(async move {
            serve(stream, peer, &name, &route, &proxy, &guard.metrics).await;
            drop(guard);
        });
    }
}

/// Releases a connection's place in its listener's count.
struct ActiveConnection {
    active: Arc<AtomicUsize>,
    metrics: ListenerMetrics,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.metrics.active.dec();
    }
}

/// A client connection: plain TCP, or TLS terminated here.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// route → (TLS) → connect → copy, then one access-log line.
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: &str,
    route: &Route,
    proxy: &Proxy,
    metrics: &ListenerMetrics,
) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let client = match &route.tls {
        None => ClientStream::Plain(client),
        Some(tls) => {
            let handshake =
                tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(client));
            let result = tokio::select! {
                r = handshake => r,
                _ = proxy.drain.force().cancelled() => return,
            };
            match result {
                Ok(Ok(stream)) => ClientStream::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    metrics.reject(RejectReason::TlsHandshake);
                    tracing::debug!(client = %peer, listener, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.reject(RejectReason::TlsHandshake);
                    tracing::debug!(client = %peer, listener, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let (sni, alpn) = match &client {
        ClientStream::Tls(s) => {
            let session = s.get_ref().1;
            (
                session.server_name().map(str::to_string),
                session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            )
        }
        ClientStream::Plain(_) => (None, None),
    };
    let cluster = &route.cluster;
    let connected = tokio::select! {
        c = connect(cluster, peer.ip()) => c,
        _ = proxy.drain.force().cancelled() => {
            proxy.metrics.drain_forced_closes.inc();
            return;
        }
    };
    let backend = match connected {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                target: "baton::access",
                client = %peer,
                listener,
                cluster = %cluster.config.name,
                error = %e,
                "no backend connection; client closed"
            );
            return;
        }
    };
    let idle = cluster.config.idle_timeout;
    let (received, sent, force) = (
        &metrics.bytes_received,
        &metrics.bytes_sent,
        proxy.drain.force(),
    );
    let address = backend.backend.address.clone();
    let addr = backend.backend.addr;
    let _active = backend._active;
    let (end, bytes) = match (client, backend.stream) {
        (ClientStream::Plain(c), BackendStream::Plain(b)) => {
            copy::proxy(&c, &b, idle, received, sent, force).await
        }
        (ClientStream::Plain(mut c), BackendStream::Tls(mut b)) => {
            copy::proxy_streams(&mut c, &mut *b, idle, received, sent, force).await
        }
        (ClientStream::Tls(mut c), BackendStream::Plain(mut b)) => {
            copy::proxy_streams(&mut *c, &mut b, idle, received, sent, force).await
        }
        (ClientStream::Tls(mut c), BackendStream::Tls(mut b)) => {
            copy::proxy_streams(&mut *c, &mut *b, idle, received, sent, force).await
        }
    };
    if matches!(end, End::Forced) {
        proxy.metrics.drain_forced_closes.inc();
    }
    let duration = started.elapsed();
    metrics.duration.observe(duration.as_secs_f64());
    let error = match &end {
        End::ClientError(e) | End::BackendError(e) => Some(e.to_string()),
        _ => None,
    };
    tracing::info!(
        target: "baton::access",
        client = %peer,
        listener,
        backend = %address,
        backend_addr = %addr,
        received = bytes.received,
        sent = bytes.sent,
        duration_ms = duration.as_millis() as u64,
        end = end.as_str(),
        error,
        sni,
        alpn,
        "connection"
    );
}

/// Accept errors that concern one connection only; the next accept works.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e.raw_os_error() == Some(nix::libc::EPROTO)
}

//! Accept loops and the life of one proxied connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::Proxy;
use super::connect::{BackendStream, Connected, connect};
use super::copy::{self, End, Flow, Stops};
use super::moving::{Moves, Parked, StreamInfo};
use super::route::{Cluster, Route};
use super::{proxy_protocol, sni};
use crate::balance::ActiveGuard;
use crate::config::ProxyProtocolVersion;
use crate::drain::{Open, Signal};
use crate::metrics::{ListenerMetrics, RejectReason};
use tokio::io::AsyncWriteExt;

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
        // One waiter on the stop token for the loop's life, not one per
        // accepted connection (each registers under the token's lock).
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut stopped => break,
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
                        _ = &mut stopped => break,
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
        let (name, proxy) = (self.name.clone(), self.proxy.clone());
        self.proxy
            .drain
            .spawn_connection(|open| connection(stream, peer, name, route, proxy, guard, open));
    }
}

/// The task of one accepted connection: what each open connection costs
/// in memory beyond its sockets and buffers (its size is pinned by a test).
// Not an `async fn`: that form keeps its arguments beside the state that
// borrows them, 120 bytes more per open connection.
#[allow(clippy::manual_async_fn)]
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    route: Arc<Route>,
    proxy: Arc<Proxy>,
    guard: ActiveConnection,
    open: Open,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let metrics = &guard.metrics;
        let copy = {
            // Boxed: the setup's state (PROXY header, handshake or peek,
            // connect and its retries) is on the heap only while it runs;
            // the task keeps only the copy's, which lives as long as the
            // connection. The block ends `phase` before the copy starts.
            let phase = Box::pin(setup(stream, peer, &name, &route, &proxy, metrics)).await;
            match phase {
                Ok(CopyPhase::Plain(stream, active)) => {
                    Either::Left(copy_plain(stream, Some(active), &proxy, metrics, open))
                }
                Ok(CopyPhase::Tls(tls)) => Either::Right(copy_tls(tls, &name, &proxy, metrics)),
                Err(Stop::Forced) => {
                    proxy.metrics.drain_forced_closes.inc();
                    return;
                }
                Err(Stop::Rejected | Stop::Ended) => return,
            }
        };
        copy.await;
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

/// How long a client may take to send its ClientHello when routing by SNI
/// without terminating TLS.
const SNI_PEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended before its copy phase; each step says it once.
enum Stop {
    /// Refused for a reason counted on the listener.
    Rejected,
    /// `drain.timeout` passed (counted once, here).
    Forced,
    /// Already logged (no backend, a failed write).
    Ended,
}

/// Runs `step` unless the drain deadline cuts it first.
async fn unless_forced<T>(force: &Signal, step: impl Future<Output = T>) -> Result<T, Stop> {
    tokio::select! {
        out = step => Ok(out),
        _ = force.wait() => Err(Stop::Forced),
    }
}

/// The client as the upstream balancer said it is.
struct Origin {
    /// What the logs, `hash_source_ip` and a PROXY header onward use.
    source: SocketAddr,
    /// The address the client connected to, when a PROXY header said.
    destination: Option<SocketAddr>,
}

/// A client after its TLS handshake or SNI peek.
struct Client {
    stream: ClientStream,
    /// Bytes the SNI peek read, to forward first.
    initial: Vec<u8>,
    sni: Option<String>,
}

/// A connection up to its copy phase: PROXY header → client TLS or SNI
/// peek → route → connect. A forced close is counted the same at every
/// step.
async fn setup<'r>(
    mut client: TcpStream,
    peer: SocketAddr,
    name: &Arc<str>,
    route: &'r Route,
    proxy: &Proxy,
    metrics: &ListenerMetrics,
) -> Result<CopyPhase<'r>, Stop> {
    let listener: &str = name;
    let started = Instant::now();
    // TCP_NODELAY: inherited from the listener (`Registry::spawn_accept`).
    let force = proxy.drain.force();
    let origin = proxy_header(&mut client, peer, listener, route, metrics, force).await?;
    let client = client_stream(client, &origin, listener, route, metrics, force).await?;
    let Some(cluster) = route.cluster_for(client.sni.as_deref()) else {
        metrics.reject(RejectReason::SniNoRoute);
        tracing::debug!(client = %origin.source, listener, sni = client.sni, "no route for this server name");
        return Err(Stop::Rejected);
    };
    let backend =
        connect_backend(&client, &origin, cluster, listener, route, metrics, force).await?;
    Ok(copy_phase(
        client,
        backend,
        origin.source,
        name,
        cluster,
        started,
    ))
}

/// Reads the PROXY header when the listener accepts one.
async fn proxy_header(
    client: &mut TcpStream,
    peer: SocketAddr,
    listener: &str,
    route: &Route,
    metrics: &ListenerMetrics,
    force: &Signal,
) -> Result<Origin, Stop> {
    let pp = route.listener.proxy_protocol;
    let mut origin = Origin {
        source: peer,
        destination: None,
    };
    if !pp.accept {
        return Ok(origin);
    }
    // Boxed, like every step only some connections take: the setup of a
    // plain connection stays small.
    let read = tokio::time::timeout(pp.timeout, Box::pin(proxy_protocol::read(client)));
    match unless_forced(force, read).await? {
        Ok(Ok(proxy_protocol::Header::Proxy {
            source,
            destination,
        })) => {
            origin.source = source;
            origin.destination = Some(destination);
        }
        Ok(Ok(proxy_protocol::Header::Local)) => {}
        Ok(Err(e)) => {
            metrics.reject(RejectReason::ProxyProtocol);
            tracing::debug!(client = %peer, listener, error = %e, "PROXY header refused");
            return Err(Stop::Rejected);
        }
        Err(_) => {
            metrics.reject(RejectReason::ProxyProtocol);
            tracing::debug!(client = %peer, listener, "no PROXY header in time");
            return Err(Stop::Rejected);
        }
    }
    Ok(origin)
}

/// Terminates TLS, or peeks at the ClientHello for SNI routing, or
/// neither.
async fn client_stream(
    mut client: TcpStream,
    origin: &Origin,
    listener: &str,
    route: &Route,
    metrics: &ListenerMetrics,
    force: &Signal,
) -> Result<Client, Stop> {
    match &route.tls {
        Some(tls) => {
            let handshake =
                tokio::time::timeout(tls.handshake_timeout, Box::pin(tls.accept(client)));
            match unless_forced(force, handshake).await? {
                Ok(Ok(stream)) => {
                    let sni = stream
                        .get_ref()
                        .1
                        .server_name()
                        .map(str::to_ascii_lowercase);
                    Ok(Client {
                        stream: ClientStream::Tls(Box::new(stream)),
                        initial: Vec::new(),
                        sni,
                    })
                }
                Ok(Err(e)) => {
                    metrics.reject(RejectReason::TlsHandshake);
                    tracing::debug!(client = %origin.source, listener, error = %e, "TLS handshake failed");
                    Err(Stop::Rejected)
                }
                Err(_) => {
                    metrics.reject(RejectReason::TlsHandshake);
                    tracing::debug!(client = %origin.source, listener, "TLS handshake timed out");
                    Err(Stop::Rejected)
                }
            }
        }
        None if route.peeks_sni() => {
            let (initial, name) =
                unless_forced(force, Box::pin(sni::peek(&mut client, SNI_PEEK_TIMEOUT))).await?;
            Ok(Client {
                stream: ClientStream::Plain(client),
                initial,
                sni: name.ok().flatten(),
            })
        }
        None => Ok(Client {
            stream: ClientStream::Plain(client),
            initial: Vec::new(),
            sni: None,
        }),
    }
}

/// Connects to a backend of `cluster` (the PROXY header onward first), then
/// forwards what the SNI peek read.
async fn connect_backend<'c>(
    client: &Client,
    origin: &Origin,
    cluster: &'c Cluster,
    listener: &str,
    route: &Route,
    metrics: &ListenerMetrics,
    force: &Signal,
) -> Result<Connected<'c>, Stop> {
    let preamble = match route.listener.proxy_protocol.send {
        ProxyProtocolVersion::None => Vec::new(),
        send => {
            let destination = origin
                .destination
                .or_else(|| client_local_addr(&client.stream))
                .unwrap_or(route.listener.listen);
            match send {
                ProxyProtocolVersion::V1 => proxy_protocol::encode_v1(origin.source, destination),
                _ => proxy_protocol::encode_v2(origin.source, destination),
            }
        }
    };
    let connected = unless_forced(force, connect(cluster, origin.source.ip(), &preamble)).await?;
    let mut backend = match connected {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                target: "baton::access",
                client = %origin.source,
                listener,
                cluster = %cluster.config.name,
                error = %e,
                "no backend connection; client closed"
            );
            return Err(Stop::Ended);
        }
    };
    // What the SNI peek read goes first, untouched.
    if !client.initial.is_empty() {
        let written = match &mut backend.stream {
            BackendStream::Plain(b) => copy::write_all(b, &client.initial).await,
            BackendStream::Tls(b) => Box::pin(b.write_all(&client.initial)).await,
        };
        if written.is_err() {
            return Err(Stop::Ended);
        }
        metrics.bytes_received.inc_by(client.initial.len() as u64);
    }
    Ok(backend)
}

/// A connection's copy phase, chosen once both sides are up.
enum CopyPhase<'c> {
    /// Both sides plain TCP: the pausable copy, which may move to a
    /// successor.
    Plain(PlainStream, ActiveGuard),
    /// TLS on either side.
    Tls(TlsStreams<'c>),
}

/// Both sides of a stream with TLS on either, and what its log line names.
struct TlsStreams<'c> {
    client: Client,
    backend: Connected<'c>,
    source: SocketAddr,
    cluster: &'c Arc<Cluster>,
    started: Instant,
}

fn copy_phase<'c>(
    client: Client,
    backend: Connected<'c>,
    source: SocketAddr,
    listener: &Arc<str>,
    cluster: &'c Arc<Cluster>,
    started: Instant,
) -> CopyPhase<'c> {
    let Connected {
        stream: backend_stream,
        backend,
        _active: active,
    } = backend;
    match (client.stream, backend_stream) {
        (ClientStream::Plain(c), BackendStream::Plain(b)) => {
            let info = StreamInfo {
                listener: listener.clone(),
                cluster: cluster.clone(),
                backend: backend.address.clone(),
                backend_addr: backend.addr,
                client: source,
                sni: client.sni,
                started: SystemTime::now() - started.elapsed(),
                migrated: 0,
            };
            // What the SNI peek read was forwarded before the copy.
            let mut flow = Flow::default();
            flow.bytes.received = client.initial.len() as u64;
            let stream = PlainStream {
                client: c,
                backend: b,
                info,
                flow,
            };
            CopyPhase::Plain(stream, active)
        }
        (c, b) => CopyPhase::Tls(TlsStreams {
            client: Client {
                stream: c,
                initial: client.initial,
                sni: client.sni,
            },
            backend: Connected {
                stream: b,
                backend,
                _active: active,
            },
            source,
            cluster,
            started,
        }),
    }
}

/// Copies a stream with TLS on either side to its end, then writes the
/// connection's one access-log line.
async fn copy_tls(
    tls: TlsStreams<'_>,
    listener: &Arc<str>,
    proxy: &Proxy,
    metrics: &ListenerMetrics,
) {
    let TlsStreams {
        client,
        backend,
        source,
        cluster,
        started,
    } = tls;
    let Connected {
        stream: b,
        backend,
        _active: active,
    } = backend;
    let c = client.stream;
    let alpn = match &c {
        ClientStream::Tls(s) => s
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        ClientStream::Plain(_) => None,
    };
    let idle = cluster.config.idle_timeout;
    let (received, sent, force) = (
        &metrics.bytes_received,
        &metrics.bytes_sent,
        proxy.drain.force(),
    );
    let (end, bytes) = match (c, b) {
        (ClientStream::Plain(mut c), BackendStream::Tls(mut b)) => {
            Box::pin(copy::proxy_streams(
                &mut c, &mut *b, idle, received, sent, force,
            ))
            .await
        }
        (ClientStream::Tls(mut c), BackendStream::Plain(mut b)) => {
            Box::pin(copy::proxy_streams(
                &mut *c, &mut b, idle, received, sent, force,
            ))
            .await
        }
        (ClientStream::Tls(mut c), BackendStream::Tls(mut b)) => {
            Box::pin(copy::proxy_streams(
                &mut *c, &mut *b, idle, received, sent, force,
            ))
            .await
        }
        (ClientStream::Plain(_), BackendStream::Plain(_)) => {
            unreachable!("copy_phase gives a plain pair to copy_plain")
        }
    };
    drop(active);
    let bytes = copy::Transferred {
        received: bytes.received + client.initial.len() as u64,
        ..bytes
    };
    let info = Logged {
        client: source,
        listener,
        backend: &backend.address,
        backend_addr: backend.addr,
        sni: client.sni.as_deref(),
        alpn: alpn.as_deref(),
        migrated: 0,
    };
    log_end(&end, bytes, started.elapsed(), &info, proxy, metrics);
}

/// A plain TCP stream in its copy phase: everything it needs to go on,
/// in this process or, after a move, in another.
pub struct PlainStream {
    pub client: TcpStream,
    pub backend: TcpStream,
    pub info: StreamInfo,
    pub flow: Flow,
}

/// Copies a plain stream to its end. When a migration takes it, it pauses,
/// parks its sockets (`moving`) and this task ends without a log line: the
/// process where the stream ends writes it.
// Not an `async fn`: that form would keep `stream` twice (the argument and
// the local it is reassigned to after a pause), 328 bytes more for every
// open connection.
#[allow(clippy::manual_async_fn)]
fn copy_plain<'a>(
    mut stream: PlainStream,
    backend_active: Option<ActiveGuard>,
    proxy: &'a Proxy,
    metrics: &'a ListenerMetrics,
    open: Open,
) -> impl Future<Output = ()> + Send + 'a {
    async move {
        // Counts the stream on its backend until it ends or moves away.
        let _backend_active = backend_active;
        let _copying = proxy.moves.copying_guard();
        let stops = Stops {
            interrupt: proxy.drain.interrupt(),
            force: proxy.drain.force(),
            pause: proxy.moves.pause_flag(),
        };
        let idle = stream.info.cluster.config.idle_timeout;
        let end = loop {
            let end = copy::proxy(
                &stream.client,
                &stream.backend,
                &mut stream.flow,
                idle,
                &metrics.bytes_received,
                &metrics.bytes_sent,
                stops,
            )
            .await;
            if !matches!(end, End::Paused) {
                break end;
            }
            match park(stream, &proxy.moves) {
                Some(back) => stream = back,
                None => {
                    // Out of the drain before out of `copying`: once the
                    // migration sees no stream copying, `active` counts
                    // only the streams that stay.
                    drop(open);
                    return;
                }
            }
        };
        let info = &stream.info;
        let duration = SystemTime::now()
            .duration_since(info.started)
            .unwrap_or_default();
        let logged = Logged {
            client: info.client,
            listener: &info.listener,
            backend: &info.backend,
            backend_addr: info.backend_addr,
            sni: info.sni.as_deref(),
            alpn: None,
            migrated: info.migrated,
        };
        log_end(&end, stream.flow.bytes, duration, &logged, proxy, metrics);
    }
}

/// Parks a paused stream for the migration: `None` once parked, the stream
/// back if the migration ended meanwhile (it goes on here).
fn park(stream: PlainStream, moves: &Moves) -> Option<PlainStream> {
    let PlainStream {
        client,
        backend,
        info,
        flow,
    } = stream;
    let lost = |e: io::Error, info: &StreamInfo| {
        // The reactor refused a socket it had: nothing sane is left to do
        // with this stream but close it.
        tracing::error!(client = %info.client, listener = %info.listener, error = %e, "cannot pause a stream; closed");
    };
    // Deregistered from this process's reactor: nothing here polls them.
    let sockets = client
        .into_std()
        .and_then(|c| backend.into_std().map(|b| (c, b)));
    let (client, backend) = match sockets {
        Ok(s) => s,
        Err(e) => {
            lost(e, &info);
            return None;
        }
    };
    let parked = Parked {
        client,
        backend,
        info,
        flow,
    };
    let Parked {
        client,
        backend,
        info,
        flow,
    } = *moves.park(parked).err()?;
    let sockets =
        TcpStream::from_std(client).and_then(|c| TcpStream::from_std(backend).map(|b| (c, b)));
    match sockets {
        Ok((client, backend)) => Some(PlainStream {
            client,
            backend,
            info,
            flow,
        }),
        Err(e) => {
            lost(e, &info);
            None
        }
    }
}

/// Starts the task of a stream that arrived from another process (`moved`)
/// or came back from a batch that was not acknowledged. It counts on its
/// listener (never refused for `max_connections`) and backend as if it had
/// been accepted here, but is not counted as accepted again.
pub fn adopt(proxy: &Arc<Proxy>, parked: Parked, active: Arc<AtomicUsize>, moved: bool) {
    let Parked {
        client,
        backend,
        info,
        flow,
    } = parked;
    let sockets =
        TcpStream::from_std(client).and_then(|c| TcpStream::from_std(backend).map(|b| (c, b)));
    let (client, backend) = match sockets {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %info.client, listener = %info.listener, error = %e, "cannot adopt a moved stream; closed");
            return;
        }
    };
    let metrics = proxy.metrics.listener(&info.listener);
    if moved {
        proxy.metrics.migrated(&info.listener).inc();
    }
    let backend_active = info
        .cluster
        .backends
        .iter()
        .find(|b| *b.address == *info.backend && b.addr == info.backend_addr)
        .map(|b| b.state.track());
    active.fetch_add(1, Ordering::AcqRel);
    metrics.active.inc();
    let guard = ActiveConnection { active, metrics };
    let stream = PlainStream {
        client,
        backend,
        info,
        flow,
    };
    let proxy_ = proxy.clone();
    proxy.drain.spawn_connection(move |open| async move {
        copy_plain(stream, backend_active, &proxy_, &guard.metrics, open).await;
        drop(guard);
    });
}

/// What a connection's access-log line names.
struct Logged<'a> {
    client: SocketAddr,
    listener: &'a str,
    backend: &'a str,
    backend_addr: SocketAddr,
    sni: Option<&'a str>,
    alpn: Option<&'a str>,
    migrated: u32,
}

/// The connection's one access-log line, and the counts of its end.
fn log_end(
    end: &End,
    bytes: copy::Transferred,
    duration: Duration,
    info: &Logged<'_>,
    proxy: &Proxy,
    metrics: &ListenerMetrics,
) {
    if matches!(end, End::Forced) {
        proxy.metrics.drain_forced_closes.inc();
    }
    metrics.duration.observe(duration.as_secs_f64());
    let error = match end {
        End::ClientError(e) | End::BackendError(e) => Some(e.to_string()),
        _ => None,
    };
    tracing::info!(
        target: "baton::access",
        client = %info.client,
        listener = info.listener,
        backend = info.backend,
        backend_addr = %info.backend_addr,
        received = bytes.received,
        sent = bytes.sent,
        duration_ms = duration.as_millis() as u64,
        end = end.as_str(),
        error,
        sni = info.sni,
        alpn = info.alpn,
        migrated = info.migrated,
        "connection"
    );
}

fn client_local_addr(client: &ClientStream) -> Option<SocketAddr> {
    match client {
        ClientStream::Plain(s) => s.local_addr().ok(),
        ClientStream::Tls(s) => s.get_ref().0.local_addr().ok(),
    }
}

/// Accept errors that concern one connection only, retried at once: those
/// accept(2) says to retry (pending network errors of the new socket, and
/// EPERM from a firewall rule). Anything else — EMFILE, ENFILE, ENOBUFS,
/// ENOMEM, or an error we do not know — backs off instead of spinning.
fn is_per_connection(e: &io::Error) -> bool {
    use nix::libc::{
        ECONNABORTED, EHOSTDOWN, EHOSTUNREACH, ENETDOWN, ENETUNREACH, ENONET, ENOPROTOOPT,
        EOPNOTSUPP, EPERM, EPROTO,
    };
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(
            ECONNABORTED
                | ENETDOWN
                | EPROTO
                | ENOPROTOOPT
                | EHOSTDOWN
                | ENONET
                | EHOSTUNREACH
                | EOPNOTSUPP
                | ENETUNREACH
                | EPERM
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state every open connection keeps, plain or TLS (one future type
    /// serves both; TLS state and the setup are boxed, so an open plain
    /// stream pays only for its copy). Measured 1,232 bytes (3,704, then
    /// 2,968, before the setup was boxed and the copy became one state
    /// machine); the bound leaves a little room, not a regression's worth.
    #[tokio::test]
    async fn the_task_of_a_connection_stays_small() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("config.yaml");
        let yaml = "listeners:\n  - { name: web, listen: 127.0.0.1:1, cluster: app }\n\
                    clusters:\n  - { name: app, backends: [ { address: 127.0.0.1:2 } ] }\n";
        let config = crate::config::Config::from_text(&path, yaml).expect("a valid config");
        let metrics = crate::metrics::Metrics::new(0);
        let kept = crate::proxy::route::Kept {
            backends: Default::default(),
            resumption: crate::tls::Resumption::new(crate::tls::TicketKeys::new(
                Duration::from_secs(60),
            )),
        };
        let snapshot = crate::proxy::route::Snapshot::build(Arc::new(config), 1, &kept, &metrics)
            .expect("a snapshot");
        let route = snapshot.route("web").expect("the listener's route").clone();
        let listener_metrics = metrics.listener("web");
        let proxy = Arc::new(Proxy {
            snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
            metrics,
            drain: Default::default(),
            moves: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let _client = TcpStream::connect(listener.local_addr().expect("an address"))
            .await
            .expect("a connection");
        let (stream, peer) = listener.accept().await.expect("accepted");
        let guard = ActiveConnection {
            active: Arc::new(AtomicUsize::new(1)),
            metrics: listener_metrics,
        };
        let open = tokio_util::task::TaskTracker::new().token();
        let task = connection(stream, peer, "web".into(), route, proxy, guard, open);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1_300, "a connection's task is {size} bytes");
    }

    /// What a TLS connection adds on the heap beyond the task: the boxed
    /// rustls stream and the boxed copy future that drives it.
    #[test]
    fn the_tls_state_of_a_connection_stays_small() {
        fn size_of_output<F: FnOnce() -> Fut, Fut>(_: &F) -> usize {
            std::mem::size_of::<Fut>()
        }
        type Tls = tokio_rustls::server::TlsStream<TcpStream>;
        let client: Option<Tls> = None;
        let backend: Option<TcpStream> = None;
        let counter = || prometheus::IntCounter::new("c", "c").expect("a counter");
        let (received, sent, force) = (counter(), counter(), Signal::default());
        // Never called: only the type of the future it would make counts.
        let copy = move || async move {
            let (Some(mut c), Some(mut b)) = (client, backend) else {
                return;
            };
            let idle = Duration::from_secs(1);
            copy::proxy_streams(&mut c, &mut b, idle, &received, &sent, &force).await;
        };
        let copy_size = size_of_output(&copy);
        let stream_size = std::mem::size_of::<Tls>();
        // Measured: 1,224 bytes of stream; 3,096 for the future, which
        // holds the stream itself, the backend socket and the counters.
        assert!(
            stream_size <= 1_300,
            "the rustls server stream is {stream_size} bytes"
        );
        assert!(
            copy_size <= 3_200,
            "the TLS copy future is {copy_size} bytes"
        );
    }

    #[test]
    fn accept_retries_what_the_man_page_says_and_backs_off_on_exhaustion() {
        use nix::libc::*;
        for errno in [
            ECONNABORTED,
            ENETDOWN,
            EPROTO,
            ENOPROTOOPT,
            EHOSTDOWN,
            ENONET,
            EHOSTUNREACH,
            EOPNOTSUPP,
            ENETUNREACH,
            EPERM,
        ] {
            assert!(
                is_per_connection(&io::Error::from_raw_os_error(errno)),
                "errno {errno} is retried at once"
            );
        }
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM, EBADF] {
            assert!(
                !is_per_connection(&io::Error::from_raw_os_error(errno)),
                "errno {errno} backs off"
            );
        }
    }
}

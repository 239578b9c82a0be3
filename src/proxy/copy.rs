//! Moving bytes both ways between a client and a backend, with half-close.
//!
//! Each direction waits for readiness without holding memory; a 64 KiB buffer
//! is taken from a per-thread pool only while bytes flow and given back as
//! soon as the socket has nothing more to read. An idle connection therefore
//! costs its two sockets and a small task, not two buffers.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BUFFER_SIZE: usize = 64 * 1024;
/// Buffers kept per worker thread; more than this in flight are freed on return.
const POOL_PER_THREAD: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer; goes back to the current thread's pool on drop.
struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    fn take() -> Buffer {
        let buf = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Buffer(Some(buf))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("buffer is present until drop")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // try_with: during thread teardown the pool may already be gone.
            let _ = POOL.try_with(|p| {
                let mut pool = p.borrow_mut();
                if pool.len() < POOL_PER_THREAD {
                    pool.push(buf);
                }
            });
        }
    }
}

/// How a proxied connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their half.
    Closed,
    ClientError(io::Error),
    BackendError(io::Error),
    IdleTimeout,
    /// `drain.timeout` passed while the stream was open.
    Forced,
    /// Asked to pause: the stream goes on elsewhere (see [`Flow`]).
    Paused,
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientError(_) => "client_error",
            End::BackendError(_) => "backend_error",
            End::IdleTimeout => "idle_timeout",
            End::Forced => "drain_timeout",
            End::Paused => "paused",
        }
    }
}

/// Bytes moved, from the client's point of view.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub received: u64,
    pub sent: u64,
}

/// Which side an I/O error came from.
enum Side {
    Reading(io::Error),
    Writing(io::Error),
}

/// One direction of a plain stream, as it stands between two runs of
/// [`proxy`] (a pause, a move to another process).
#[derive(Debug, Default, Clone)]
pub struct Direction {
    /// Read from the source, not yet written to the destination; written
    /// first when the copy runs again.
    pub pending: Vec<u8>,
    /// The source's FIN was passed on: this direction is over.
    pub shut: bool,
}

/// A plain stream's copy state, carried across a pause.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    /// Client → backend.
    pub up: Direction,
    /// Backend → client.
    pub down: Direction,
    /// Bytes written so far, each way.
    pub bytes: Transferred,
    /// How long no byte had moved when the copy (re)starts: the idle
    /// timeout counts from the last byte, not from the move.
    pub idle: Duration,
}

/// What ends a plain copy besides the stream itself.
#[derive(Clone, Copy)]
pub struct Stops<'a> {
    /// Fires on the drain deadline and when streams start to move: the one
    /// token a copy waits on, whatever the reason.
    pub interrupt: &'a CancellationToken,
    /// `drain.timeout` passed.
    pub force: &'a CancellationToken,
    /// Read when `interrupt` fires without `force`: pause at the next clean
    /// point (nothing half written) and return [`End::Paused`].
    pub pause: &'a AtomicBool,
}

/// How a direction's pump stopped without an error.
enum Pumped {
    /// FIN passed on.
    Shut,
    /// Paused; these bytes were read and not written.
    Paused(Vec<u8>),
}

/// Copies until both directions are closed, either side fails, no byte moves
/// for `idle_timeout`, the drain deadline passes, or the stream is asked to
/// pause. `flow` says where to start (bytes to write first, directions
/// already shut) and is left where the copy stopped.
pub async fn proxy(
    client: &TcpStream,
    backend: &TcpStream,
    flow: &mut Flow,
    idle_timeout: Duration,
    received: &IntCounter,
    sent: &IntCounter,
    stops: Stops<'_>,
) -> End {
    let now = Instant::now();
    let start = now.checked_sub(flow.idle).unwrap_or(now);
    let last_activity = AtomicU64::new(0);
    let pausing = AtomicBool::new(false);
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut up_left, mut down_left) = (None, None);
    let end = {
        let up_pending = std::mem::take(&mut flow.up.pending);
        let down_pending = std::mem::take(&mut flow.down.pending);
        let (up_left, down_left) = (&mut up_left, &mut down_left);
        let (mut up_done, mut down_done) = (flow.up.shut, flow.down.shut);
        let (last_activity, pausing) = (&last_activity, &pausing);
        let (up_bytes, down_bytes) = (&up_bytes, &down_bytes);
        // The pumps are made inside and the whole is pinned here: a future
        // moved into another is stored twice, and this one lives as long
        // as the connection.
        let both = async move {
            let upstream = pump(
                client,
                backend,
                up_pending,
                received,
                up_bytes,
                last_activity,
                start,
                pausing,
            );
            let downstream = pump(
                backend,
                client,
                down_pending,
                sent,
                down_bytes,
                last_activity,
                start,
                pausing,
            );
            tokio::pin!(upstream, downstream);
            let mut paused = false;
            while !(up_done && down_done) {
                tokio::select! {
                    r = &mut upstream, if !up_done => {
                        up_done = true;
                        match r {
                            Ok(Pumped::Shut) => {}
                            Ok(Pumped::Paused(rest)) => {
                                paused = true;
                                *up_left = Some(rest);
                            }
                            Err(Side::Reading(e)) => return End::ClientError(e),
                            Err(Side::Writing(e)) => return End::BackendError(e),
                        }
                    },
                    r = &mut downstream, if !down_done => {
                        down_done = true;
                        match r {
                            Ok(Pumped::Shut) => {}
                            Ok(Pumped::Paused(rest)) => {
                                paused = true;
                                *down_left = Some(rest);
                            }
                            Err(Side::Reading(e)) => return End::BackendError(e),
                            Err(Side::Writing(e)) => return End::ClientError(e),
                        }
                    },
                }
            }
            if paused { End::Paused } else { End::Closed }
        };
        tokio::pin!(both);
        supervise(both, idle_timeout, last_activity, start, stops, pausing).await
    };
    flow.bytes.received += up_bytes.load(Ordering::Relaxed);
    flow.bytes.sent += down_bytes.load(Ordering::Relaxed);
    if let End::Paused = end {
        // A direction that was neither paused nor running had shut.
        match up_left {
            Some(rest) => flow.up.pending = rest,
            None => flow.up.shut = true,
        }
        match down_left {
            Some(rest) => flow.down.pending = rest,
            None => flow.down.shut = true,
        }
        let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        flow.idle = Instant::now().saturating_duration_since(last);
    }
    end
}

/// Runs `copy` to its end, unless no byte moves for `idle_timeout` or the
/// drain deadline passes first; asks it to pause (`pausing`) when `stops`
/// says so. `last_activity` is in ms since `start`.
async fn supervise(
    copy: impl Future<Output = End>,
    idle_timeout: Duration,
    last_activity: &AtomicU64,
    start: Instant,
    stops: Stops<'_>,
    pausing: &AtomicBool,
) -> End {
    tokio::pin!(copy);
    let mut deadline = start + idle_timeout;
    // The interrupt until it fired once; after that only the deadline
    // matters (a pause asked and answered, or not wanted).
    let mut waiting_on = stops.interrupt;
    loop {
        tokio::select! {
            end = &mut copy => return end,
            _ = tokio::time::sleep_until(deadline) => {
                let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                if last + idle_timeout <= Instant::now() {
                    return End::IdleTimeout;
                }
                deadline = last + idle_timeout;
            }
            _ = waiting_on.cancelled() => {
                if stops.force.is_cancelled() {
                    return End::Forced;
                }
                if stops.pause.load(Ordering::Acquire) {
                    // The pumps see it at their next wait; the copy then
                    // ends with End::Paused.
                    pausing.store(true, Ordering::Relaxed);
                }
                waiting_on = stops.force;
            }
        }
    }
}

/// Runs `step` unless `pausing` is set first. Registers no waker of its
/// own: whoever sets `pausing` runs in the same task and polls again.
async fn unless_paused<T>(pausing: &AtomicBool, step: impl Future<Output = T>) -> Option<T> {
    let mut step = std::pin::pin!(step);
    std::future::poll_fn(|cx| {
        if pausing.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        step.as_mut().poll(cx).map(Some)
    })
    .await
}

/// One direction: write `pending` first, then read what `src` has, write
/// it all to `dst`, and forward `src`'s FIN as a write shutdown of `dst`.
/// Adds the bytes written to `moved`. Stops at a wait once `pausing` is
/// set, returning what it read and did not write.
#[allow(clippy::too_many_arguments)]
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pending: Vec<u8>,
    counter: &IntCounter,
    moved: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
    pausing: &AtomicBool,
) -> Result<Pumped, Side> {
    let wrote = |n: usize| {
        moved.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    if !pending.is_empty() {
        let n = write_until_paused(dst, &pending, pausing)
            .await
            .map_err(Side::Writing)?;
        wrote(n);
        if n < pending.len() {
            return Ok(Pumped::Paused(pending[n..].to_vec()));
        }
    }
    drop(pending);
    loop {
        // poll_read_ready keeps its waker in the socket's own slot: no
        // waiter node in this future, which lives as long as the stream.
        let readable = std::future::poll_fn(|cx| src.poll_read_ready(cx));
        match unless_paused(pausing, readable).await {
            None => return Ok(Pumped::Paused(Vec::new())),
            Some(ready) => ready.map_err(Side::Reading)?,
        }
        let mut buffer = Buffer::take();
        let buf = buffer.as_mut();
        loop {
            // A short read means the socket is drained: report it as
            // WouldBlock so tokio clears the readiness now, instead of
            // paying one more read that returns EAGAIN. (tokio only clears
            // what it saw before the read; data arriving after it sets
            // readiness again.)
            let mut got = 0;
            let read = src.try_io(Interest::READABLE, || {
                got = nix::unistd::read(src, buf).map_err(io::Error::from)?;
                if got > 0 && got < buf.len() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(got)
                }
            });
            match read {
                Err(e) if got == 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if got == 0 && e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if got == 0 => return Err(Side::Reading(e)),
                _ if got == 0 => {
                    // End of stream. Half-close: the other direction keeps
                    // flowing.
                    let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                    return Ok(Pumped::Shut);
                }
                _ => {
                    let n = write_until_paused(dst, &buf[..got], pausing)
                        .await
                        .map_err(Side::Writing)?;
                    wrote(n);
                    if n < got {
                        return Ok(Pumped::Paused(buf[n..got].to_vec()));
                    }
                    if got < buf.len() {
                        break;
                    }
                }
            }
        }
        // The buffer returns to the pool here, before waiting again.
    }
}

/// Writes all of `data` unless `pausing` is set while `dst` is full: the
/// number of bytes written.
async fn write_until_paused(
    dst: &TcpStream,
    data: &[u8],
    pausing: &AtomicBool,
) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match dst.try_write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let writable = std::future::poll_fn(|cx| dst.poll_write_ready(cx));
                match unless_paused(pausing, writable).await {
                    None => return Ok(written),
                    Some(ready) => ready?,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

pub async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction of the generic copy: what is read and not yet written.
#[derive(Default)]
struct Half {
    buffer: Option<Buffer>,
    pos: usize,
    end: usize,
    need_flush: bool,
    read_done: bool,
    done: bool,
}

/// Drives one direction as far as it goes without waiting. The buffer is
/// taken from the pool for each read and given back at once when nothing
/// is there, so an idle stream holds none.
#[allow(clippy::too_many_arguments)]
fn poll_half<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    half: &mut Half,
    counter: &IntCounter,
    moved: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
) -> Poll<Result<(), Side>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if half.done {
            return Poll::Ready(Ok(()));
        }
        if let Some(buffer) = half.buffer.as_mut() {
            while half.pos < half.end {
                let data = &buffer.as_mut()[half.pos..half.end];
                match Pin::new(&mut *dst).poll_write(cx, data) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Writing(e))),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Side::Writing(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        half.pos += n;
                        moved.fetch_add(n as u64, Ordering::Relaxed);
                        counter.inc_by(n as u64);
                        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
            }
            half.buffer = None;
            half.need_flush = true;
        }
        if half.need_flush {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Writing(e))),
                Poll::Ready(Ok(())) => half.need_flush = false,
            }
        }
        if half.read_done {
            // Half-close: a TLS peer gets close_notify, then FIN.
            return match Pin::new(&mut *dst).poll_shutdown(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => {
                    half.done = true;
                    Poll::Ready(Ok(()))
                }
            };
        }
        let mut buffer = Buffer::take();
        let mut read = ReadBuf::new(buffer.as_mut());
        match Pin::new(&mut *src).poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Reading(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    half.read_done = true;
                } else {
                    half.buffer = Some(buffer);
                    half.pos = 0;
                    half.end = n;
                }
            }
        }
    }
}

/// As [`proxy`], for streams that are not plain TCP on both sides (TLS).
pub async fn proxy_streams<C, B>(
    client: &mut C,
    backend: &mut B,
    idle_timeout: Duration,
    received: &IntCounter,
    sent: &IntCounter,
    force: &CancellationToken,
) -> (End, Transferred)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut up, mut down) = (Half::default(), Half::default());
    let both = std::future::poll_fn(|cx| {
        if let Poll::Ready(Err(e)) = poll_half(
            cx,
            client,
            backend,
            &mut up,
            received,
            &up_bytes,
            &last_activity,
            start,
        ) {
            return Poll::Ready(match e {
                Side::Reading(e) => End::ClientError(e),
                Side::Writing(e) => End::BackendError(e),
            });
        }
        if let Poll::Ready(Err(e)) = poll_half(
            cx,
            backend,
            client,
            &mut down,
            sent,
            &down_bytes,
            &last_activity,
            start,
        ) {
            return Poll::Ready(match e {
                Side::Reading(e) => End::BackendError(e),
                Side::Writing(e) => End::ClientError(e),
            });
        }
        if up.done && down.done {
            Poll::Ready(End::Closed)
        } else {
            Poll::Pending
        }
    });
    // TLS state lives in this process: such a stream never pauses.
    let never = AtomicBool::new(false);
    let stops = Stops {
        interrupt: force,
        force,
        pause: &never,
    };
    let end = supervise(both, idle_timeout, &last_activity, start, stops, &never).await;
    let transferred = Transferred {
        received: up_bytes.load(Ordering::Relaxed),
        sent: down_bytes.load(Ordering::Relaxed),
    };
    (end, transferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("received", "test").expect("valid"),
            IntCounter::new("sent", "test").expect("valid"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_stream_keeps_the_other_direction_flowing() {
        let (mut client, mut client_side) = duplex(64 * 1024);
        let (mut backend_side, mut backend) = duplex(64 * 1024);
        let copy = tokio::spawn(async move {
            let (received, sent) = counters();
            let force = CancellationToken::new();
            let out = proxy_streams(
                &mut client_side,
                &mut backend_side,
                Duration::from_secs(60),
                &received,
                &sent,
                &force,
            )
            .await;
            (out, received.get(), sent.get())
        });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "the client's FIN reaches the backend");
        // The backend still answers after the client's half-close.
        backend.write_all(b"a long answer").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"a long answer");
        let ((end, bytes), received, sent) = copy.await.unwrap();
        assert!(matches!(end, End::Closed), "{}", end.as_str());
        assert_eq!((bytes.received, bytes.sent), (7, 13));
        assert_eq!((received, sent), (7, 13));
    }

    #[tokio::test(start_paused = true)]
    async fn no_byte_for_the_idle_timeout_ends_the_stream_and_a_byte_resets_it() {
        let (mut client, mut client_side) = duplex(1024);
        let (mut backend_side, mut backend) = duplex(1024);
        let started = tokio::time::Instant::now();
        let copy = tokio::spawn(async move {
            let (received, sent) = counters();
            let force = CancellationToken::new();
            proxy_streams(
                &mut client_side,
                &mut backend_side,
                Duration::from_secs(30),
                &received,
                &sent,
                &force,
            )
            .await
        });
        // A byte at 20 s pushes the deadline to 50 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        backend.read_exact(&mut b).await.unwrap();
        let (end, _) = copy.await.unwrap();
        assert!(matches!(end, End::IdleTimeout), "{}", end.as_str());
        let idle = started.elapsed();
        assert!(
            idle >= Duration::from_secs(50) && idle < Duration::from_secs(52),
            "{idle:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_cuts_a_busy_stream() {
        let (mut client, mut client_side) = duplex(1024);
        let (mut backend_side, mut backend) = duplex(1024);
        let force = CancellationToken::new();
        let cut = force.clone();
        let copy = tokio::spawn(async move {
            let (received, sent) = counters();
            proxy_streams(
                &mut client_side,
                &mut backend_side,
                Duration::from_secs(3600),
                &received,
                &sent,
                &force,
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        backend.read_exact(&mut b).await.unwrap();
        cut.cancel();
        let (end, bytes) = copy.await.unwrap();
        assert!(matches!(end, End::Forced), "{}", end.as_str());
        assert_eq!(bytes.received, 4);
        // Both sides see the stream end.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// The tokens and flag a plain copy is stopped by, owned by a test.
    #[derive(Default)]
    struct TestStops {
        interrupt: CancellationToken,
        force: CancellationToken,
        pause: AtomicBool,
    }

    impl TestStops {
        fn stops(&self) -> Stops<'_> {
            Stops {
                interrupt: &self.interrupt,
                force: &self.force,
                pause: &self.pause,
            }
        }
    }

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn a_paused_copy_keeps_what_it_read_and_goes_on_byte_exact() {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let data: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let to_send = data.clone();
        // The backend reads nothing yet: the copy blocks mid-write.
        let writer = tokio::spawn(async move {
            client.write_all(&to_send).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let (received, sent) = counters();
        let test_stops = TestStops::default();
        let stops = test_stops.stops();
        let mut flow = Flow::default();
        let copy = proxy(
            &client_side,
            &backend_side,
            &mut flow,
            Duration::from_secs(60),
            &received,
            &sent,
            stops,
        );
        let pausing = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            test_stops.pause.store(true, Ordering::Release);
            test_stops.interrupt.cancel();
        };
        let (end, ()) = tokio::join!(copy, pausing);
        assert!(matches!(end, End::Paused), "{}", end.as_str());
        assert!(
            !flow.up.pending.is_empty(),
            "a blocked write leaves bytes read and not written"
        );
        assert!(!flow.up.shut && !flow.down.shut);
        let written_before = flow.bytes.received;
        assert_eq!(received.get(), written_before);

        // Go on (as the new process would): pending bytes first, then the rest.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            (got, backend)
        });
        let fresh = TestStops::default();
        let stops = fresh.stops();
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            // The backend's FIN ends the other direction.
            let copy = proxy(
                &client_side,
                &backend_side,
                &mut flow,
                Duration::from_secs(60),
                &received,
                &sent,
                stops,
            );
            let closer = async {
                let (got, mut backend) = reader.await.unwrap();
                backend.shutdown().await.unwrap();
                got
            };
            tokio::join!(copy, closer)
        })
        .await
        .expect("the copy ends");
        let (end, got) = end;
        assert!(matches!(end, End::Closed), "{}", end.as_str());
        assert_eq!(got.len(), data.len());
        assert!(got == data, "every byte, in order");
        assert_eq!(flow.bytes.received, data.len() as u64);
        drop(writer.await.unwrap());
    }

    /// The copy lives as long as the stream, inside every connection's
    /// task: a future moved into another (stored twice) or a waiter node
    /// per readiness wait shows here first. 1,624 bytes when pinned.
    #[tokio::test]
    async fn the_copy_of_a_plain_stream_stays_small() {
        let (a, b) = pair().await;
        let (received, sent) = counters();
        let test_stops = TestStops::default();
        let stops = test_stops.stops();
        let mut flow = Flow::default();
        let copy = proxy(
            &a,
            &b,
            &mut flow,
            Duration::from_secs(1),
            &received,
            &sent,
            stops,
        );
        let size = std::mem::size_of_val(&copy);
        assert!(size <= 1800, "the plain copy future is {size} bytes");
    }
}

//! Moving bytes both ways between a client and a backend, with half-close.
//!
//! Each direction waits for readiness without holding memory; a 64 KiB buffer
//! is taken from a per-thread pool only while bytes flow and given back as
//! soon as the socket has nothing more to read. An idle connection therefore
//! costs its two sockets and a small task, not two buffers.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientError(_) => "client_error",
            End::BackendError(_) => "backend_error",
            End::IdleTimeout => "idle_timeout",
            End::Forced => "drain_timeout",
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

/// Copies until both directions are closed, either side fails, no byte moves
/// for `idle_timeout`, or `force` fires.
pub async fn proxy(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
    received: &IntCounter,
    sent: &IntCounter,
    force: &CancellationToken,
) -> (End, Transferred) {
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let upstream = pump(client, backend, received, &up_bytes, &last_activity, start);
    let downstream = pump(backend, client, sent, &down_bytes, &last_activity, start);
    let both = async {
        tokio::pin!(upstream, downstream);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut upstream, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(Side::Reading(e)) => return End::ClientError(e),
                    Err(Side::Writing(e)) => return End::BackendError(e),
                },
                r = &mut downstream, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(Side::Reading(e)) => return End::BackendError(e),
                    Err(Side::Writing(e)) => return End::ClientError(e),
                },
            }
        }
        End::Closed
    };
    let end = supervise(both, idle_timeout, &last_activity, start, force).await;
    let transferred = Transferred {
        received: up_bytes.load(Ordering::Relaxed),
        sent: down_bytes.load(Ordering::Relaxed),
    };
    (end, transferred)
}

/// Runs `copy` to its end, unless no byte moves for `idle_timeout` or
/// `force` fires first. `last_activity` is in ms since `start`.
async fn supervise(
    copy: impl Future<Output = End>,
    idle_timeout: Duration,
    last_activity: &AtomicU64,
    start: Instant,
    force: &CancellationToken,
) -> End {
    tokio::pin!(copy);
    let mut deadline = start + idle_timeout;
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
            _ = force.cancelled() => return End::Forced,
        }
    }
}

/// One direction: read what `src` has, write it all to `dst`, and forward
/// `src`'s FIN as a write shutdown of `dst`. Adds the bytes moved to `moved`.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &IntCounter,
    moved: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
) -> Result<(), Side> {
    loop {
        src.readable().await.map_err(Side::Reading)?;
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
                    return Ok(());
                }
                _ => {
                    write_all(dst, &buf[..got]).await.map_err(Side::Writing)?;
                    moved.fetch_add(got as u64, Ordering::Relaxed);
                    counter.inc_by(got as u64);
                    last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    if got < buf.len() {
                        break;
                    }
                }
            }
        }
        // The buffer returns to the pool here, before waiting again.
    }
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
    let end = supervise(both, idle_timeout, &last_activity, start, force).await;
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
}

//! Moving bytes both ways between a client and a backend, with half-close.
//!
//! Each direction waits for readiness without holding memory; a 32 KiB buffer
//! is taken from a per-thread pool only while bytes flow and given back as
//! soon as the socket has nothing more to read. An idle connection therefore
//! costs its two sockets and a small task, not two buffers.
//!
//! A copy is one hand-written state machine polled from one `poll_fn`, not
//! a tree of futures: it lives as long as the connection, in every
//! connection's task, so its size is what each idle connection costs, and
//! each wake-up goes straight to the socket that has news.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFuture;

use crate::drain::Signal;

/// 32 KiB: measured against 16 and 64 KiB on a bulk stream (BENCHMARKS.md,
/// 3 December); with 64 KiB, baton needed about twice the CPU per GB.
const BUFFER_SIZE: usize = 32 * 1024;
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

    /// Bytes a paused copy left, to write first when it goes on.
    fn holding(bytes: Vec<u8>) -> Buffer {
        Buffer(Some(bytes.into_boxed_slice()))
    }

    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("buffer is present until drop")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // Only full-size buffers are pooled (not what a pause left).
        if let Some(buf) = self.0.take().filter(|b| b.len() == BUFFER_SIZE) {
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

/// The plain copy's two syscalls, made directly (rustix): `recv`/`send`
/// skip the file layer `read`/`write` go through, and no libc wrapper
/// toggles thread cancellation around each. Four of them per proxied
/// request are most of what a keep-alive request costs baton.
fn recv(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let (n, _) = rustix::net::recv(src, buf, rustix::net::RecvFlags::empty())?;
    Ok(n)
}

/// `more`: the FIN follows at once, so the last segment waits for it
/// (`MSG_MORE`) and both leave as one.
fn send(dst: &TcpStream, bytes: &[u8], more: bool) -> io::Result<usize> {
    use rustix::net::SendFlags;
    // NOSIGNAL: a peer gone is an error here, not a SIGPIPE.
    let flags = if more {
        SendFlags::NOSIGNAL | SendFlags::MORE
    } else {
        SendFlags::NOSIGNAL
    };
    Ok(rustix::net::send(dst, bytes, flags)?)
}

/// The monotonic clock as of the kernel's last tick (1 to 10 ms old): no
/// clock-source read, so noting when each byte moved costs next to
/// nothing. Same origin as `Instant`; only differences are taken.
fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
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

impl Side {
    /// The end this error makes, for the direction client → backend
    /// (`upstream`) or back.
    fn end(self, upstream: bool) -> End {
        match (self, upstream) {
            (Side::Reading(e), true) | (Side::Writing(e), false) => End::ClientError(e),
            (Side::Reading(e), false) | (Side::Writing(e), true) => End::BackendError(e),
        }
    }
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

/// What ends a copy besides the stream itself.
#[derive(Clone, Copy)]
pub struct Stops<'a> {
    /// Fires on the drain deadline and when streams start to move: the one
    /// signal a copy waits on, whatever the reason.
    pub interrupt: &'a Signal,
    /// `drain.timeout` passed.
    pub force: &'a Signal,
    /// Read when `interrupt` fires without `force`: pause at the next clean
    /// point (nothing half written) and return [`End::Paused`].
    pub pause: &'a AtomicBool,
}

/// The idle timer and the stop signals of one copy. A wake-up of the
/// copy's task reads a flag or two here: the timer and the signal's waiter
/// are polled only when they have news (the timer elapsed, the signal
/// fired) or the task's waker changed, so a byte moved takes no lock.
struct Watch<'a> {
    stops: Stops<'a>,
    idle_timeout: Duration,
    /// When the last byte moved (or the copy started), on the coarse clock.
    last_byte: Duration,
    /// The waker the timer and the signal's waiter were last polled with.
    waker: Option<Waker>,
    /// This poll's waker is new to them: poll both.
    rearm: bool,
    /// The interrupt fired: only `force` is watched from now on.
    interrupted: bool,
    /// Asked to pause: the pumps stop at their next wait.
    pausing: bool,
}

impl<'a> Watch<'a> {
    /// `idle`: how long no byte had moved before this copy started.
    fn new(stops: Stops<'a>, idle_timeout: Duration, idle: Duration) -> Watch<'a> {
        Watch {
            stops,
            idle_timeout,
            last_byte: coarse_now().saturating_sub(idle),
            waker: None,
            rearm: true,
            interrupted: false,
            pausing: false,
        }
    }

    /// How long no byte has moved, to within a clock tick.
    fn idle(&self) -> Duration {
        coarse_now().saturating_sub(self.last_byte)
    }

    /// When the idle timer is due: the rest of the timeout, from now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.idle_timeout.saturating_sub(self.idle())
    }

    /// First in every poll: `Some(End::Forced)` once the drain deadline
    /// passed; sets `pausing` when the interrupt asks for a pause.
    fn poll_stops(
        &mut self,
        cx: &mut Context<'_>,
        mut stop: Pin<&mut WaitForCancellationFuture<'a>>,
    ) -> Option<End> {
        self.rearm = !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if self.rearm {
            self.waker = Some(cx.waker().clone());
        }
        let mut poll_waiter = self.rearm;
        if !self.interrupted {
            let fired = self.stops.interrupt.is_fired()
                || (poll_waiter && stop.as_mut().poll(cx).is_ready());
            if !fired {
                return None;
            }
            self.interrupted = true;
            if self.stops.pause.load(Ordering::Acquire) {
                self.pausing = true;
            }
            stop.set(self.stops.force.wait());
            poll_waiter = true;
        }
        let forced =
            self.stops.force.is_fired() || (poll_waiter && stop.as_mut().poll(cx).is_ready());
        forced.then_some(End::Forced)
    }

    /// Last in every poll, after the streams: `moved` says whether a byte
    /// moved in this poll. `Some(End::IdleTimeout)` once none moved for
    /// the idle timeout.
    fn poll_timer(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        moved: bool,
    ) -> Option<End> {
        if moved {
            // Read lazily: the timer is moved only when it fires.
            self.last_byte = coarse_now();
        }
        if !(self.rearm || timer.is_elapsed()) || timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        if self.idle() >= self.idle_timeout {
            return Some(End::IdleTimeout);
        }
        timer.as_mut().reset(self.deadline());
        // A fired timer gave its waker away: register again.
        let _ = timer.as_mut().poll(cx);
        None
    }

    /// Runs a copy to its end. Each poll checks the stop signals, lets
    /// `step` move what it can (told whether to pause; it says whether a
    /// byte moved, or breaks with how the copy ended), then the idle timer.
    // Not an `async fn`: that form keeps its arguments twice, and this
    // state lives as long as the stream.
    #[allow(clippy::manual_async_fn)]
    fn run<'s>(
        &'s mut self,
        mut step: impl FnMut(&mut Context<'_>, bool) -> ControlFlow<End, bool> + 's,
    ) -> impl Future<Output = End> + 's {
        async move {
            let stops = self.stops;
            let timer = tokio::time::sleep_until(self.deadline());
            let stop = stops.interrupt.wait();
            tokio::pin!(timer, stop);
            std::future::poll_fn(|cx| {
                if let Some(end) = self.poll_stops(cx, stop.as_mut()) {
                    return Poll::Ready(end);
                }
                let moved = match step(cx, self.pausing) {
                    ControlFlow::Continue(moved) => moved,
                    ControlFlow::Break(end) => return Poll::Ready(end),
                };
                match self.poll_timer(cx, timer.as_mut(), moved) {
                    Some(end) => Poll::Ready(end),
                    None => Poll::Pending,
                }
            })
            .await
        }
    }
}

/// One direction's bytes on their way: read and not yet written
/// (`buffer[pos..end]`, a buffer held only while there are any), and the
/// count of bytes written.
#[derive(Default)]
struct InFlight {
    buffer: Option<Buffer>,
    pos: usize,
    end: usize,
    moved: u64,
}

impl InFlight {
    fn hold(&mut self, buffer: Buffer, len: usize) {
        self.buffer = Some(buffer);
        self.pos = 0;
        self.end = len;
    }

    /// What is still to write.
    fn bytes(&mut self) -> &[u8] {
        match self.buffer.as_mut() {
            Some(buffer) => &buffer.as_mut()[self.pos..self.end],
            None => &[],
        }
    }

    /// `n` of those bytes were written (none: the destination refuses).
    fn wrote(&mut self, n: usize, counter: &IntCounter) -> Result<(), Side> {
        if n == 0 {
            return Err(Side::Writing(io::ErrorKind::WriteZero.into()));
        }
        self.pos += n;
        self.moved += n as u64;
        counter.inc_by(n as u64);
        Ok(())
    }

    /// All written: the buffer goes back to the pool.
    fn release(&mut self) {
        self.buffer = None;
    }
}

/// One direction of a plain stream: what `src` has goes to `dst`.
#[derive(Default)]
struct Pump {
    flight: InFlight,
    /// The source sent its FIN: every byte before it was read (those in
    /// `flight` are still to write).
    eof: bool,
    /// The FIN was passed on (or the close will pass it): the direction
    /// is over.
    shut: bool,
    /// The FIN was held for one turn of the event loop (see `pass_fin`).
    fin_held: bool,
    /// The last bytes went out corked for the FIN (`MSG_MORE`): it must
    /// follow at once.
    corked: bool,
    /// A read failed after bytes were read in the same turn: reported once
    /// they are written.
    failed: Option<io::Error>,
}

impl Pump {
    /// Goes on from where a pause left the direction.
    fn resume(direction: &mut Direction) -> Pump {
        let pending = std::mem::take(&mut direction.pending);
        let mut flight = InFlight::default();
        if !pending.is_empty() {
            let len = pending.len();
            flight.hold(Buffer::holding(pending), len);
        }
        Pump {
            flight,
            eof: direction.shut,
            shut: direction.shut,
            fin_held: false,
            corked: false,
            failed: None,
        }
    }

    /// Where the direction stands, for the next run.
    fn left(&mut self) -> Direction {
        Direction {
            pending: self.flight.bytes().to_vec(),
            shut: self.shut,
        }
    }

    /// Moves bytes until a socket would block. Ready once the source's
    /// FIN came (`eof`; [`Pump::pass_fin`] passes it on) or, when
    /// `pausing`, at its next wait.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        counter: &IntCounter,
        pausing: bool,
    ) -> Poll<Result<(), Side>> {
        // The look for a FIN after a short read found the source not ready
        // and left this poll's waker with it: no second look needed.
        let mut read_waits = false;
        loop {
            while !self.flight.bytes().is_empty() {
                let bytes = self.flight.bytes();
                let more = self.eof;
                match dst.try_io(Interest::WRITABLE, || send(dst, bytes, more)) {
                    Ok(n) => self.flight.wrote(n, counter)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // A stream with a read error to report does not
                        // move: the error would not move with it.
                        if pausing && self.failed.is_none() {
                            return Poll::Ready(Ok(()));
                        }
                        ready!(dst.poll_write_ready(cx)).map_err(Side::Writing)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(Side::Writing(e))),
                }
                self.corked = more;
            }
            // All written: the buffer goes back to the pool before a wait.
            self.flight.release();
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(Side::Reading(e)));
            }
            if self.eof || pausing {
                return Poll::Ready(Ok(()));
            }
            if read_waits {
                return Poll::Pending;
            }
            // poll_read_ready keeps its waker in the socket's own slot: no
            // waiter node in this state, which lives as long as the stream.
            ready!(src.poll_read_ready(cx)).map_err(Side::Reading)?;
            let mut buffer = Buffer::take();
            let buf = buffer.as_mut();
            // A short read means the socket is drained: report it as
            // WouldBlock so tokio clears the readiness now, instead of
            // paying one more read that returns EAGAIN. (tokio only clears
            // what it saw before the read; data arriving after it sets
            // readiness again, and a FIN stays seen.)
            let mut got = 0;
            let read = src.try_io(Interest::READABLE, || {
                got = recv(src, buf)?;
                if got > 0 && got < buf.len() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(got)
                }
            });
            match read {
                _ if got > 0 => {
                    read_waits = got < buf.len() && src.poll_read_ready(cx).is_pending();
                    if got < buf.len() && !read_waits {
                        // The socket is drained, yet ready: the FIN came
                        // (tokio keeps a seen FIN as readiness), or more
                        // bytes did. Read it now, so that these bytes and
                        // the FIN can leave in one segment.
                        let rest = &mut buf[got..];
                        let mut more = 0;
                        let read = src.try_io(Interest::READABLE, || {
                            more = recv(src, rest)?;
                            Ok(more)
                        });
                        match read {
                            Ok(0) => self.eof = true,
                            Ok(_) => got += more,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => self.failed = Some(e),
                        }
                    }
                    self.flight.hold(buffer, got);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Poll::Ready(Err(Side::Reading(e))),
                Ok(_) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Passes the source's FIN on to `dst` (half-close: the other
    /// direction keeps flowing), once both directions were polled and its
    /// bytes are written. When the FIN was read with the last bytes (a
    /// `Connection: close` answer, mostly), it goes out at once, in their
    /// segment: one packet less on each such connection, as HAProxy does.
    /// A FIN that came alone is held for one turn of the event loop: a
    /// peer that closes as soon as it has the other's last bytes has
    /// usually closed by then, and when both ends have, the close that
    /// follows sends both FINs: no shutdown call.
    fn pass_fin(&mut self, cx: &mut Context<'_>, dst: &TcpStream, other_eof: bool, pausing: bool) {
        if !self.eof || self.shut || self.flight.buffer.is_some() {
            return;
        }
        if self.corked {
            // The last bytes wait for this FIN: no hold, no leaving it to
            // the close.
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            self.shut = true;
        } else if other_eof {
            self.shut = true;
        } else if self.fin_held || pausing {
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            self.shut = true;
        } else {
            self.fin_held = true;
            // tokio wakes a yielded task after its next look at the
            // sockets; if it does not, the FIN just goes out sooner.
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        }
    }
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
    let mut watch = Watch::new(stops, idle_timeout, flow.idle);
    let mut up = Pump::resume(&mut flow.up);
    let mut down = Pump::resume(&mut flow.down);
    let end = watch
        .run(|cx, pausing| {
            let before = up.flight.moved + down.flight.moved;
            let up_stopped = match up.poll(cx, client, backend, received, pausing) {
                Poll::Ready(Err(e)) => return ControlFlow::Break(e.end(true)),
                Poll::Ready(Ok(())) => true,
                Poll::Pending => false,
            };
            let down_stopped = match down.poll(cx, backend, client, sent, pausing) {
                Poll::Ready(Err(e)) => return ControlFlow::Break(e.end(false)),
                Poll::Ready(Ok(())) => true,
                Poll::Pending => false,
            };
            up.pass_fin(cx, backend, down.eof, pausing);
            down.pass_fin(cx, client, up.eof, pausing);
            if up.shut && down.shut {
                return ControlFlow::Break(End::Closed);
            }
            if pausing && up_stopped && down_stopped {
                return ControlFlow::Break(End::Paused);
            }
            ControlFlow::Continue(up.flight.moved + down.flight.moved != before)
        })
        .await;
    flow.bytes.received += up.flight.moved;
    flow.bytes.sent += down.flight.moved;
    if let End::Paused = end {
        flow.up = up.left();
        flow.down = down.left();
        flow.idle = watch.idle();
    }
    end
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
    flight: InFlight,
    need_flush: bool,
    read_done: bool,
    done: bool,
}

/// Drives one direction as far as it goes without waiting. The buffer is
/// taken from the pool for each read and given back at once when nothing
/// is there, so an idle stream holds none.
fn poll_half<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    half: &mut Half,
    counter: &IntCounter,
) -> Poll<Result<(), Side>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if half.done {
            return Poll::Ready(Ok(()));
        }
        if half.flight.buffer.is_some() {
            while !half.flight.bytes().is_empty() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, half.flight.bytes()))
                    .map_err(Side::Writing)?;
                half.flight.wrote(n, counter)?;
            }
            half.flight.release();
            half.need_flush = true;
        }
        if half.need_flush {
            ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(Side::Writing)?;
            half.need_flush = false;
        }
        if half.read_done {
            // Half-close: a TLS peer gets close_notify, then FIN.
            let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
            half.done = true;
            return Poll::Ready(Ok(()));
        }
        let mut buffer = Buffer::take();
        let mut read = ReadBuf::new(buffer.as_mut());
        ready!(Pin::new(&mut *src).poll_read(cx, &mut read)).map_err(Side::Reading)?;
        let n = read.filled().len();
        if n == 0 {
            half.read_done = true;
        } else {
            half.flight.hold(buffer, n);
        }
    }
}

/// Never set: a stream that cannot pause.
static NEVER: AtomicBool = AtomicBool::new(false);

/// As [`proxy`], for streams that are not plain TCP on both sides (TLS).
pub async fn proxy_streams<C, B>(
    client: &mut C,
    backend: &mut B,
    idle_timeout: Duration,
    received: &IntCounter,
    sent: &IntCounter,
    force: &Signal,
) -> (End, Transferred)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // TLS state lives in this process: such a stream never pauses.
    let stops = Stops {
        interrupt: force,
        force,
        pause: &NEVER,
    };
    let mut watch = Watch::new(stops, idle_timeout, Duration::ZERO);
    let (mut up, mut down) = (Half::default(), Half::default());
    let end = watch
        .run(|cx, _| {
            let before = up.flight.moved + down.flight.moved;
            if let Poll::Ready(Err(e)) = poll_half(cx, client, backend, &mut up, received) {
                return ControlFlow::Break(e.end(true));
            }
            if let Poll::Ready(Err(e)) = poll_half(cx, backend, client, &mut down, sent) {
                return ControlFlow::Break(e.end(false));
            }
            if up.done && down.done {
                return ControlFlow::Break(End::Closed);
            }
            ControlFlow::Continue(up.flight.moved + down.flight.moved != before)
        })
        .await;
    let transferred = Transferred {
        received: up.flight.moved,
        sent: down.flight.moved,
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
            let force = Signal::default();
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

    /// On the real clock: the copy notes each byte's time on the kernel's
    /// coarse clock, which tokio's paused clock does not move.
    #[tokio::test]
    async fn no_byte_for_the_idle_timeout_ends_the_stream_and_a_byte_resets_it() {
        let (mut client, mut client_side) = duplex(1024);
        let (mut backend_side, mut backend) = duplex(1024);
        let started = std::time::Instant::now();
        let copy = tokio::spawn(async move {
            let (received, sent) = counters();
            let force = Signal::default();
            proxy_streams(
                &mut client_side,
                &mut backend_side,
                Duration::from_millis(300),
                &received,
                &sent,
                &force,
            )
            .await
        });
        // A byte at 200 ms pushes the deadline to 500 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let byte_at = std::time::Instant::now();
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        backend.read_exact(&mut b).await.unwrap();
        let (end, _) = tokio::time::timeout(Duration::from_secs(10), copy)
            .await
            .expect("the idle timeout ends the copy")
            .unwrap();
        assert!(matches!(end, End::IdleTimeout), "{}", end.as_str());
        // The coarse clock is up to a tick (at most 10 ms) behind.
        let idle = byte_at.elapsed();
        assert!(idle >= Duration::from_millis(290), "idle {idle:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_deadline_cuts_a_busy_stream() {
        let (mut client, mut client_side) = duplex(1024);
        let (mut backend_side, mut backend) = duplex(1024);
        let force = Signal::default();
        let force = std::sync::Arc::new(force);
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
        cut.fire();
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
        interrupt: Signal,
        force: Signal,
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
            test_stops.interrupt.fire();
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
    /// per readiness wait shows here first. 600 bytes (1,624 as a tree of
    /// async fns and `select!`s).
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
        assert!(size <= 640, "the plain copy future is {size} bytes");
    }
}

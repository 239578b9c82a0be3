//! The one drain mechanism, used by a graceful stop and by a predecessor
//! after an upgrade: accept loops end when `accepting` is cancelled; every
//! connection runs on `connections`; after `drain.timeout` the `force` token
//! cuts what is left.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// A connection's place in the drain: the drain waits until each is
/// dropped, and `active` counts them. A connection task holds its own, so a
/// stream that moves to another process can give it up before anything
/// else that the migration watches (`Moves::copying`).
pub type Open = TaskTrackerToken;

/// A one-way signal that every open connection watches. Reading it is one
/// atomic load: a copy looks at it on every wake-up, and a
/// `CancellationToken`'s own check takes a lock shared by all of them.
#[derive(Default)]
pub struct Signal {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub fn fire(&self) {
        // The flag first: whoever the token wakes sees it set.
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Ready once the signal fired.
    pub fn wait(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

#[derive(Default)]
pub struct Drain {
    accepting: CancellationToken,
    force: Signal,
    /// Fired with `force`, and when streams start to move: what a plain
    /// copy waits on (one signal, so a copy registers one waiter).
    interrupt: Signal,
    connections: TaskTracker,
    /// Most connections open at once since the owner last asked
    /// (`memory::Waves`): a wave shorter than the owner's sweep counts too.
    peak: AtomicUsize,
}

impl Drain {
    /// Cancelled when this process stops accepting.
    pub fn accepting(&self) -> &CancellationToken {
        &self.accepting
    }

    /// Fired when the drain deadline passes; connections watch it.
    pub fn force(&self) -> &Signal {
        &self.force
    }

    /// Fired with `force` and when streams start to move.
    pub fn interrupt(&self) -> &Signal {
        &self.interrupt
    }

    /// Wakes every plain copy so it pauses (if migration takes streams).
    pub fn interrupt_copies(&self) {
        self.interrupt.fire();
    }

    /// Spawns the task `connection` makes from its place in the drain.
    pub fn spawn_connection<F>(&self, connection: impl FnOnce(Open) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(connection(self.connections.token()));
        // Mostly a load: the mark moves only while a wave grows.
        let open = self.connections.len();
        if open > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(open, Ordering::Relaxed);
        }
    }

    /// The most connections open at once since the last call.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.connections.len(), Ordering::Relaxed)
    }

    /// Connections still open.
    pub fn active(&self) -> usize {
        self.connections.len()
    }

    pub fn stop_accepting(&self) {
        self.accepting.cancel();
    }

    /// Stops accepting, waits up to `timeout` for open connections, then
    /// cuts the rest (each counts itself as a forced close) and waits for
    /// them to go. Returns how many were cut.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.accepting.cancel();
        self.connections.close();
        if tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let remaining = self.connections.len();
        self.force.fire();
        self.interrupt.fire();
        self.connections.wait().await;
        remaining
    }

    /// Cuts every connection now (a second stop signal).
    pub fn cut(&self) {
        self.accepting.cancel();
        self.force.fire();
        self.interrupt.fire();
    }
}

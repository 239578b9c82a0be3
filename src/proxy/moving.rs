//! Live migration, the data path's half: a plain TCP stream in its copy
//! phase pauses at a clean point and parks here, where the upgrade picks it
//! up to send it to the successor; a stream that arrives from a predecessor
//! (or comes back because its batch was not acknowledged) goes on copying
//! from exactly where it stopped.
//!
//! A parked stream holds its two sockets deregistered from this process's
//! reactor (`into_std`), so nothing here polls them while another process
//! may. What stays: TLS terminated here or to the backend — its keys and
//! record state live in rustls. Moving it would mean extracting the
//! session's traffic secrets and sequence numbers (rustls'
//! `dangerous_extract_secrets`), sending them with the socket, and having
//! the successor install them into kernel TLS (`setsockopt(SOL_TLS)`) so
//! the record layer continues where the predecessor's stopped; a later step.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::copy::Flow;
use super::route::Cluster;

/// A stream paused at a clean point, its sockets no longer polled here.
pub struct Parked {
    pub info: StreamInfo,
    pub flow: Flow,
    pub client: std::net::TcpStream,
    pub backend: std::net::TcpStream,
}

/// What a stream's new task needs besides its sockets and flow.
#[derive(Clone)]
pub struct StreamInfo {
    pub listener: Arc<str>,
    pub cluster: Arc<Cluster>,
    /// The backend as the config names it (the metric label).
    pub backend: Arc<str>,
    pub backend_addr: SocketAddr,
    /// The client as the logs show it (the PROXY source where one was read).
    pub client: SocketAddr,
    pub sni: Option<String>,
    /// When the client connected, wall clock (it crosses processes).
    pub started: SystemTime,
    /// Times this stream moved to another process.
    pub migrated: u32,
}

/// Where streams park while this process hands them over.
#[derive(Default)]
pub struct Moves {
    /// Set while the migration takes streams: a copy that is interrupted
    /// pauses instead of waiting for the drain deadline.
    open: AtomicBool,
    to: Mutex<Option<mpsc::UnboundedSender<Parked>>>,
    /// Plain streams in their copy phase: those that would park.
    copying: AtomicUsize,
}

impl Moves {
    /// Starts taking streams; the caller then interrupts the copies.
    pub fn open(&self) -> mpsc::UnboundedReceiver<Parked> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.to.lock().expect("moves lock is never poisoned") = Some(tx);
        self.open.store(true, Ordering::Release);
        rx
    }

    /// Takes no more streams: one that pauses from now on resumes here.
    /// Whatever parked before is in the receiver.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.to.lock().expect("moves lock is never poisoned").take();
    }

    /// Read by an interrupted copy: pause, or go on.
    pub fn pause_flag(&self) -> &AtomicBool {
        &self.open
    }

    /// Hands a paused stream over, or gives it back if the migration
    /// already ended.
    pub fn park(&self, parked: Parked) -> Result<(), Box<Parked>> {
        let to = self.to.lock().expect("moves lock is never poisoned");
        match to.as_ref() {
            Some(tx) => tx.send(parked).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(parked)),
        }
    }

    /// Plain streams copying now (parked ones no longer count).
    pub fn copying(&self) -> usize {
        self.copying.load(Ordering::Acquire)
    }

    /// Counts a plain stream as copying until the guard drops.
    pub fn copying_guard(&self) -> Copying<'_> {
        self.copying.fetch_add(1, Ordering::AcqRel);
        Copying(&self.copying)
    }
}

pub struct Copying<'a>(&'a AtomicUsize);

impl Drop for Copying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

//! `reload.watch`: the config file's folder watched with inotify; after
//! `reload.debounce` of quiet, the file's bytes are read and, if they are
//! not the bytes the running config came from (nor the bytes last tried),
//! the owner reloads exactly as on `SIGHUP`.
//!
//! The folder, not the file, is watched: editors rename a new file over
//! the old one, and a Kubernetes ConfigMap volume swaps a `..data` symlink
//! beside it, where a watch on the file itself would see nothing (or lose
//! the file it watched). When the path is a symlink, the folder of its
//! target is watched too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::digest;
use crate::proxy::Proxy;

/// What is watched now, so a reload that keeps it changes nothing.
pub struct Watching {
    pub path: PathBuf,
    pub debounce: Duration,
    stop: CancellationToken,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts watching `path`; each change that calls for a reload is one
/// message on `to`. Stops when `stop` fires or the result is dropped.
pub fn start(
    path: &Path,
    debounce: Duration,
    proxy: Arc<Proxy>,
    to: mpsc::Sender<()>,
    stop: CancellationToken,
) -> io::Result<Watching> {
    let mut inotify = Inotify::init()?;
    add_watches(&mut inotify, path)?;
    // Deprecated because a `T: AsRawFd` need not own its fd; `Inotify`
    // does (closed only when the last handle to it drops, after `AsyncFd`
    // deregistered it), so the unsafety it warns of cannot arise here.
    #[allow(deprecated)]
    let fd = AsyncFd::new(inotify)?;
    tokio::spawn(watch_loop(
        fd,
        path.to_path_buf(),
        debounce,
        proxy,
        to,
        stop.clone(),
    ));
    Ok(Watching {
        path: path.to_path_buf(),
        debounce,
        stop,
    })
}

const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE);

/// The file's folder, and its target's folder when it is a symlink.
/// Adding a folder watched already changes nothing.
fn add_watches(inotify: &mut Inotify, path: &Path) -> io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("/"));
    inotify.watches().add(folder, MASK)?;
    if let Ok(target) = std::fs::canonicalize(path)
        && let Some(target_folder) = target.parent()
        && target_folder != folder
    {
        // Best effort: the folder may be gone again already (a swap).
        let _ = inotify.watches().add(target_folder, MASK);
    }
    Ok(())
}

/// Waits for the next batch of events (which ones does not matter: the
/// file's bytes decide).
async fn next_events(fd: &mut AsyncFd<Inotify>, buffer: &mut [u8]) -> io::Result<()> {
    loop {
        let mut guard = fd.readable_mut().await?;
        let read = guard.try_io(|inner| inner.get_mut().read_events(buffer).map(|_| ()));
        match read {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn watch_loop(
    mut fd: AsyncFd<Inotify>,
    path: PathBuf,
    debounce: Duration,
    proxy: Arc<Proxy>,
    to: mpsc::Sender<()>,
    stop: CancellationToken,
) {
    let mut buffer = [0u8; 4096];
    // The bytes last handed to a reload: a bad file is tried once.
    let mut tried: Option<u64> = None;
    loop {
        // At the start too: a change made between reading the config and
        // watching it (a successor starting during an upgrade) is not lost.
        if !check(&path, &proxy, &mut tried, &to).await {
            return;
        }
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            r = next_events(&mut fd, &mut buffer) => r,
        };
        if let Err(e) = first {
            tracing::error!(path = %path.display(), error = %e, "reload.watch: cannot read inotify events; no longer watching");
            return;
        }
        // Quiet for `debounce`: every change of a burst makes one reload.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(debounce) => break,
                r = next_events(&mut fd, &mut buffer) => if r.is_err() { break },
            }
        }
        // Folders replaced in the meantime are watched again.
        if let Err(e) = add_watches(fd.get_mut(), &path) {
            tracing::warn!(path = %path.display(), error = %e, "reload.watch: cannot watch the config's folder");
        }
    }
}

/// Reads the file; asks for a reload if its bytes are neither the live
/// config's nor the last ones tried. False once the owner is gone.
async fn check(path: &Path, proxy: &Proxy, tried: &mut Option<u64>, to: &mpsc::Sender<()>) -> bool {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // Mid-swap, or removed: the next change brings it back.
            tracing::warn!(path = %path.display(), error = %e, "reload.watch: cannot read the config file");
            return true;
        }
    };
    let now = digest(&bytes);
    if now == proxy.snapshot.load().config.digest || *tried == Some(now) {
        return true;
    }
    *tried = Some(now);
    tracing::info!(path = %path.display(), "config file changed: reloading");
    to.send(()).await.is_ok()
}

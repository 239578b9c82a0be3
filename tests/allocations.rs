//! How many heap allocations one proxied plain TCP connection costs,
//! counted by a counting global allocator with baton run in-process: the
//! allocations of a connection through baton, less those of the same
//! connection made directly to the backend (the client's and the echo
//! backend's own share). Pinned, so the data path cannot start allocating
//! per connection unnoticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{free_port as port, run_in_process, tokio_echo_backend as echo_backend};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a count
// is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One whole connection: 64 bytes there and back, then both closes; the
/// far end's close is read, so the proxy's task has finished its copy.
async fn exchange(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[7u8; 64]).await.unwrap();
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, [7u8; 64]);
    s.shutdown().await.unwrap();
    let mut rest = [0u8; 1];
    assert_eq!(s.read(&mut rest).await.unwrap(), 0);
}

/// Allocations per connection of `n` connections to `addr`.
async fn per_connection(addr: SocketAddr, n: u64) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        exchange(addr).await;
    }
    // The proxy's task ends in the poll that closed the client; one more
    // turn of the scheduler lets every such task finish.
    tokio::task::yield_now().await;
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

#[tokio::test(flavor = "current_thread")]
async fn a_proxied_connection_costs_a_few_allocations() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (port(), port());
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:{admin}\ncontrol:\n  socket: baton.sock\n\
         listeners:\n  - {{ name: web, listen: \"127.0.0.1:{listen}\", cluster: app }}\n\
         clusters:\n  - name: app\n    backends: [ {{ address: \"{backend}\" }} ]\n"
    );
    let (run, shutdown) = run_in_process(dir.path(), &yaml);
    let proxy: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let mut up = false;
    for _ in 0..500 {
        if TcpStream::connect(proxy).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "baton listens in-process");
    // Warm up both paths: lazily made handles, pools, slab pages.
    per_connection(proxy, 200).await;
    per_connection(backend, 200).await;

    let direct = per_connection(backend, 500).await;
    let through = per_connection(proxy, 500).await;
    let baton = through - direct;
    eprintln!(
        "allocations per connection: direct {direct:.2}, through baton {through:.2}, baton's own {baton:.2}"
    );
    // Measured: 6, the same in every run (an exact count, not a timing).
    assert!(
        baton <= 6.0,
        "baton allocates {baton:.2} times per connection"
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}

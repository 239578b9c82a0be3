//! Any text as config.yaml, backends included: the loader answers with a
//! config or errors that name a place, never panics. Names never reach the
//! network: the target injects a resolver that answers from the name alone.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Once;

use baton::config::{Config, set_resolver};
use libfuzzer_sys::fuzz_target;

/// Names under `.invalid` fail (RFC 2606); every other name is loopback,
/// one address, or two for names starting with `two.`.
fn offline(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if host.ends_with(".invalid") {
        return Err(format!("{host:?} does not resolve"));
    }
    let mut addrs = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    if host.starts_with("two.") {
        addrs.push(SocketAddr::from(([127, 0, 0, 2], port)));
    }
    Ok(addrs)
}

static OFFLINE: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    OFFLINE.call_once(|| {
        set_resolver(offline);
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_text(Path::new("/nonexistent/config.yaml"), text) {
        Ok(config) => {
            // Every backend it accepted resolved to something.
            for cluster in &config.clusters {
                for backend in &cluster.backends {
                    assert!(!backend.resolved.is_empty(), "{}", backend.address);
                }
            }
        }
        Err(e) => assert!(!e.problems.is_empty()),
    }
});

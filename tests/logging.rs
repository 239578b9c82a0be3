//! The log never blocks the data path: with stderr on a pipe that nobody
//! reads, baton keeps proxying and answering /metrics, and counts the lines
//! it had to drop.

mod support;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_log_nobody_reads_never_stalls_the_proxy() {
    let echo = Backend::start("a");
    let config = ConfigBuilder::new(&[&echo]);
    // A pipe whose reading end stays open and unread: once its 64 KiB fill
    // (a few hundred access lines), every write to it would block.
    let (unread, writer) = std::io::pipe().expect("a pipe");
    let baton = Baton::start_logging_to(&config.yaml(), Stdio::from(writer));

    // Rig-like load for 10 s: short connections (one access line each)
    // and long streams, every byte checked.
    let load = Load::start(config.listen, 4, 2);
    let started = Instant::now();
    let mut slowest_scrape = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(10) {
        let asked = Instant::now();
        let (status, _) = http_get(baton.admin, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200);
        slowest_scrape = slowest_scrape.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = load.short_done.load(Ordering::Relaxed);
    let errors = load.finish();
    assert!(errors.is_empty(), "client failures: {errors:?}");
    // The queue (10,000 lines) and the pipe (a few hundred) hold what is
    // not dropped; far more were served.
    assert!(done > 12_000, "only {done} short connections in 10 s");
    let dropped = baton
        .metric("baton_log_lines_dropped_total")
        .expect("the dropped-lines counter is exported");
    assert!(
        dropped as usize + 12_000 >= done,
        "{dropped} lines dropped of {done} connections"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1),
        "a scrape took {slowest_scrape:?}"
    );
    let accepted = baton
        .metric("baton_connections_accepted_total{listener=\"web\"}")
        .expect("accepted is exported");
    assert!(
        accepted as usize >= done,
        "{accepted} accepted, {done} done"
    );
    drop(unread);
}

//! Counter history stays bounded: after hundreds of upgrades, memory, the
//! work of a scrape and the hand-over header are what they were after ten
//! (scrape time itself: `bench/history_scrape.sh`, BENCHMARKS.md). In a
//! file of its own so nothing else runs beside it while it measures.

mod support;

use std::time::Duration;

use support::*;

fn draining(baton: &Baton) -> Option<f64> {
    metric_value(
        &http_get(baton.admin, "/metrics").ok()?.1,
        "baton_draining_processes",
    )
}

/// The bytes of one `/metrics` answer: what a scrape makes the process
/// gather, merge and encode. The test pins this work rather than a time:
/// on two cores a scrape's wall time, and even its CPU time, moved by 25–30%
/// between quiet runs of the same build (timing lives in BENCHMARKS.md).
fn scrape_bytes(baton: &Baton) -> f64 {
    let (code, body) = http_get(baton.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    body.len() as f64
}

fn last_header_bytes(log: &str) -> usize {
    log.lines()
        .rev()
        .filter_map(|l| l.split("header_bytes=").nth(1))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
        .expect("the predecessor logs the header size")
}

#[test]
fn history_stays_flat_over_200_upgrades_with_2000_backends() {
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    for port in 0..1999u16 {
        config.backends.push((
            std::net::SocketAddr::from(([127, 0, 0, 2], 20000 + port)),
            1,
        ));
    }
    let baton = Baton::start(&config.yaml());
    let mut pid = baton.pid();
    // (RSS KiB, scrape seconds, header bytes) of generations 3-10 and
    // 193-200. Their lowest values are compared: one process's RSS and scrape
    // time are bimodal here (about 31 or 39 MiB, 27 or 36 ms, whatever its
    // generation), while growth would raise every sample.
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for i in 1..=200 {
        // One connection, so every generation has counts of its own.
        let _ = connect_named(config.listen);
        let (ok, out) = baton.ctl(&["upgrade"]);
        assert!(ok, "upgrade {i}: {out}");
        pid = wait_new_pid(&baton, pid);
        wait_until(Duration::from_secs(10), "predecessor folded", || {
            draining(&baton) == Some(0.0)
        });
        if (3..=10).contains(&i) || (193..=200).contains(&i) {
            let sample = [
                rss_of(pid) as f64,
                scrape_bytes(&baton),
                last_header_bytes(&baton.log()) as f64,
            ];
            if i <= 10 { &mut early } else { &mut late }.push(sample);
        }
    }
    let lowest = |samples: &[[f64; 3]], k: usize| {
        samples
            .iter()
            .map(|s| s[k])
            .min_by(f64::total_cmp)
            .expect("samples taken")
    };
    let (rss, scrape, header) = (lowest(&early, 0), lowest(&early, 1), lowest(&early, 2));
    let (rss2, scrape2, header2) = (lowest(&late, 0), lowest(&late, 1), lowest(&late, 2));
    assert!(rss2 <= rss * 1.1, "RSS {rss} KiB -> {rss2} KiB");
    // The same work per scrape (a few bytes move with digit counts).
    assert!(scrape2 <= scrape * 1.01, "scrape {scrape} B -> {scrape2} B");
    assert!(header2 <= header * 1.1, "header {header} B -> {header2} B");
    let text = http_get(baton.admin, "/metrics").unwrap().1;
    assert_eq!(
        metric_value(&text, "baton_connections_accepted_total{listener=\"web\"}"),
        Some(200.0),
        "every generation's count kept"
    );
    stop_pid(pid);
}

//! Upgrades you can watch: drain progress through the successor's /metrics,
//! counters that never go backwards, chains, limits, leaks, systemd.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn held_streams(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect()
}

/// Every cumulative series (`_total`, histogram `_count` and `_bucket`).
fn cumulative(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let name = series.split('{').next().unwrap_or("");
            name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_bucket")
        })
        .filter_map(|(series, v)| Some((series.to_string(), v.parse().ok()?)))
        .collect()
}

fn assert_not_backwards(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, when: &str) {
    for (series, old) in before {
        let new = after
            .get(series)
            .unwrap_or_else(|| panic!("{when}: {series} disappeared"));
        assert!(new >= old, "{when}: {series} went from {old} to {new}");
    }
}

#[test]
fn drain_progress_shows_on_the_successor_and_goes_away_with_it() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    // This test is about draining: streams stay with the old process.
    config.extra_top = "upgrade:\n  migrate: false\n".into();
    let mut baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let mut streams = held_streams(config.listen, 4);
    assert!(baton.ctl(&["upgrade"]).0);
    let new = wait_new_pid(&baton, old);
    let series = "baton_drain_connections_active{generation=\"0\"}";
    wait_until(
        Duration::from_secs(5),
        "4 draining streams reported",
        || {
            let m = baton.metrics();
            metric_value(&m, "baton_draining_processes") == Some(1.0)
                && metric_value(&m, series) == Some(4.0)
        },
    );
    let elapsed =
        |m: &str| metric_value(m, "baton_drain_elapsed_seconds{generation=\"0\"}").unwrap();
    let first = elapsed(&baton.metrics());
    streams.pop();
    wait_until(Duration::from_secs(5), "3 left", || {
        metric_value(&baton.metrics(), series) == Some(3.0)
    });
    wait_until(Duration::from_secs(5), "elapsed advances", || {
        elapsed(&baton.metrics()) > first
    });
    let status = baton.ctl(&["status"]).1;
    assert!(
        status.contains(&format!("pid {old} generation 0: 3 connection(s)")),
        "{status}"
    );
    assert_eq!(
        metric_value(&baton.metrics(), "baton_drain_timeout_seconds"),
        Some(300.0)
    );
    streams.clear();
    assert!(baton.wait_exit(Duration::from_secs(10)).success());
    wait_until(Duration::from_secs(5), "drain series gone", || {
        let m = baton.metrics();
        metric_value(&m, "baton_draining_processes") == Some(0.0)
            && !m.contains("baton_drain_connections_active{")
            && !m.contains("baton_drain_elapsed_seconds{")
    });
    stop_pid(new);
}

#[test]
fn no_counter_goes_backwards_across_two_upgrades() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = ConfigBuilder::new(&[&a, &b]);
    let mut baton = Baton::start(&config.yaml());
    let load = Load::start(config.listen, 2, 0);
    wait_until(Duration::from_secs(5), "traffic counted", || {
        metric_value(
            &baton.metrics(),
            "baton_connections_accepted_total{listener=\"web\"}",
        )
        .is_some_and(|v| v > 20.0)
    });
    let mut held = held_streams(config.listen, 2);
    let mut last = cumulative(&baton.metrics());
    let mut pid = baton.pid();
    let mut pids = vec![pid];
    for round in 0..2 {
        assert!(baton.ctl(&["upgrade"]).0);
        pid = wait_new_pid(&baton, pid);
        pids.push(pid);
        // During the drain, several reads.
        for _ in 0..5 {
            let now = cumulative(&baton.metrics());
            assert_not_backwards(&last, &now, &format!("upgrade {round}, draining"));
            last = now;
            std::thread::sleep(Duration::from_millis(200));
        }
        held = {
            drop(held);
            held_streams(config.listen, 2)
        };
    }
    drop(held);
    let errors = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    // After both predecessors exit, their final counts stay.
    assert!(baton.wait_exit(Duration::from_secs(10)).success());
    wait_until(Duration::from_secs(10), "predecessors gone", || {
        metric_value(&baton.metrics(), "baton_draining_processes") == Some(0.0)
    });
    let now = cumulative(&baton.metrics());
    assert_not_backwards(&last, &now, "after the predecessors exited");
    assert!(
        now.keys()
            .any(|k| k.starts_with("process_cpu_seconds_total"))
    );
    assert_eq!(
        metric_value(&baton.metrics(), "baton_process_generation"),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&baton.metrics(), "baton_config_generation"),
        Some(3.0)
    );
    stop_pid(pid);
}

#[test]
fn a_chain_of_upgrades_while_draining_and_the_max_draining_limit() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "upgrade:\n  migrate: false\n  max_draining: 2\n".into();
    let baton = Baton::start(&config.yaml());
    let g0 = baton.pid();
    let s0 = held_streams(config.listen, 1);
    assert!(baton.ctl(&["upgrade"]).0);
    let g1 = wait_new_pid(&baton, g0);
    let s1 = held_streams(config.listen, 1);
    assert!(baton.ctl(&["upgrade"]).0);
    let g2 = wait_new_pid(&baton, g1);
    wait_until(Duration::from_secs(5), "two draining", || {
        metric_value(&baton.metrics(), "baton_draining_processes") == Some(2.0)
            && metric_value(
                &baton.metrics(),
                "baton_drain_connections_active{generation=\"0\"}",
            ) == Some(1.0)
            && metric_value(
                &baton.metrics(),
                "baton_drain_connections_active{generation=\"1\"}",
            ) == Some(1.0)
    });
    assert!(
        pid_alive(g0) && pid_alive(g1) && pid_alive(g2),
        "three processes alive"
    );
    // Only the newest accepts.
    let fresh = held_streams(config.listen, 3);
    wait_until(
        Duration::from_secs(5),
        "new connections on the newest",
        || {
            metric_value(
                &baton.metrics(),
                "baton_connections_active{listener=\"web\"}",
            ) == Some(3.0)
        },
    );
    // A third would exceed max_draining: refused with the reason, nothing cut.
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(!ok && out.contains("max_draining"), "{out}");
    assert_eq!(serving_pid(baton.admin), Some(g2));
    for mut s in s0.into_iter().chain(s1) {
        s.write_all(b"z").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    drop(fresh);
    stop_pid(g2);
    wait_until(Duration::from_secs(10), "all gone", || {
        !pid_alive(g0) && !pid_alive(g1)
    });
}

#[test]
fn a_killed_draining_predecessor_vanishes_and_clients_see_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    // This test is about draining: streams stay with the old process.
    config.extra_top = "upgrade:\n  migrate: false\n".into();
    let mut baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let _held = held_streams(config.listen, 2);
    assert!(baton.ctl(&["upgrade"]).0);
    let new = wait_new_pid(&baton, old);
    wait_until(Duration::from_secs(5), "draining shown", || {
        metric_value(&baton.metrics(), "baton_draining_processes") == Some(1.0)
    });
    let accepted_before = metric_value(
        &baton.metrics(),
        "baton_connections_accepted_total{listener=\"web\"}",
    )
    .unwrap();
    let load = Load::start(config.listen, 2, 2);
    baton.signal("KILL");
    baton.wait_exit(Duration::from_secs(5));
    wait_until(Duration::from_secs(5), "its series vanish", || {
        let m = baton.metrics();
        metric_value(&m, "baton_draining_processes") == Some(0.0)
            && !m.contains("baton_drain_connections_active{")
    });
    std::thread::sleep(Duration::from_millis(300));
    let errors = load.finish();
    assert!(errors.is_empty(), "{errors:?}");
    let accepted_after = metric_value(
        &baton.metrics(),
        "baton_connections_accepted_total{listener=\"web\"}",
    )
    .unwrap();
    assert!(accepted_after >= accepted_before, "its last counts stay");
    stop_pid(new);
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn children(pid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .count()
}

#[test]
fn twenty_upgrades_leak_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = ConfigBuilder::new(&[&a, &b]);
    let baton = Baton::start(&config.yaml());
    let mut pid = baton.pid();
    let mut first = None;
    for i in 0..20 {
        let _ = connect_named(config.listen);
        assert!(baton.ctl(&["upgrade"]).0, "upgrade {i}");
        let old = pid;
        pid = wait_new_pid(&baton, pid);
        wait_until(Duration::from_secs(10), "predecessor exits", || {
            !pid_alive(old)
        });
        wait_until(Duration::from_secs(10), "no draining left", || {
            metric_value(&baton.metrics(), "baton_draining_processes") == Some(0.0)
        });
        let _ = connect_named(config.listen);
        let sample = (fd_count(pid), children(pid), rss_of(pid));
        if i == 1 {
            first = Some(sample);
        }
        if let Some((fds, _, rss)) = first {
            assert!(
                sample.0 <= fds + 4,
                "upgrade {i}: fds {} vs {fds}",
                sample.0
            );
            assert!(
                sample.2 <= rss + 8 * 1024,
                "upgrade {i}: RSS {} KiB vs {rss} KiB",
                sample.2
            );
        }
        assert_eq!(
            sample.1, 0,
            "upgrade {i}: the accepting process has no children"
        );
    }
    stop_pid(pid);
}

#[test]
fn the_successor_tells_systemd_its_pid_then_ready() {
    let notify = Notify::new();
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = notify.start_baton(&config.yaml());
    let recv = || notify.recv();
    assert!(recv().contains("READY=1"));
    assert!(baton.ctl(&["upgrade"]).0);
    let new = wait_new_pid(&baton, baton.pid());
    // The predecessor says STOPPING only on a stop, not on a hand-over.
    let mainpid = recv();
    assert_eq!(mainpid.trim(), format!("MAINPID={new}"));
    assert!(recv().contains("READY=1"));
    stop_pid(new);
}

#[test]
fn a_hand_over_format_it_cannot_read_is_refused_cleanly() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let sock = dir.path().join("baton.sock");
    // A predecessor from the future, played by python on the control socket.
    let fake = r#"
import json, socket, struct, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen(1)
print("listening", flush=True)
c, _ = srv.accept()
c.recv(4096)
frame = json.dumps({"frame": "header", "handover_version": 99}).encode()
c.sendall(struct.pack(">I", len(frame)) + frame)
c.settimeout(5)
print(c.recv(4096).decode(), flush=True)
"#;
    let mut predecessor = std::process::Command::new("python3")
        .args(["-c", fake])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = predecessor.stdout.take().unwrap();
    let mut first = [0u8; 10];
    out.read_exact(&mut first).unwrap();
    let successor = std::process::Command::new(BATON)
        .args(["run", "--upgrade", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(successor.status.code(), Some(1));
    let err = String::from_utf8_lossy(&successor.stderr);
    assert!(
        err.contains("hand-over format 99 is not supported"),
        "{err}"
    );
    assert!(
        TcpStream::connect(config.listen).is_err(),
        "nothing adopted or bound"
    );
    let mut said = String::new();
    out.read_to_string(&mut said).unwrap();
    assert!(said.contains("\"event\":\"failed\""), "{said}");
    predecessor.wait().unwrap();
}

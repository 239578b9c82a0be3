//! Binary upgrade from outside: the real binary hands its sockets to a real
//! successor under load, rolls back on every kind of failure, and drains.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::*;

fn pid_file(baton: &Baton) -> i32 {
    std::fs::read_to_string(baton.path("baton.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A script standing in for a broken successor binary.
fn script(baton: &Baton, name: &str, body: &str) -> std::path::PathBuf {
    let path = baton.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Stops both loads: no client saw an error, and each ran more than `at_least`.
fn stop_load(load: Load, keep_alive: KeepAlive, at_least: usize) {
    let short = load.short_done.load(std::sync::atomic::Ordering::Relaxed);
    let requests = keep_alive
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut errors = load.finish();
    errors.extend(keep_alive.finish());
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(
        short > at_least && requests > at_least,
        "load ran: {short} short, {requests} requests"
    );
}

#[test]
fn twenty_upgrades_under_load_cost_no_client_anything() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let http = HttpBackend::start();
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  max_draining: 25\ndrain:\n  timeout: 60s\n".into();
    let (yaml, http_addr) = config.with_http_listener(&http);
    let mut baton = Baton::start(&yaml);
    let first = baton.pid();

    let load = Load::start(config.listen, 3, 4);
    let keep_alive = KeepAlive::start(http_addr, 2, 20);
    let mut pid = first;
    for i in 0..20 {
        if i % 2 == 0 {
            let pid_now = pid;
            let out = std::process::Command::new("kill")
                .args(["-USR2", &pid_now.to_string()])
                .status()
                .unwrap();
            assert!(out.success());
        } else {
            let (ok, out) = baton.ctl(&["upgrade"]);
            assert!(ok, "upgrade {i}: {out}");
            assert!(out.contains(&format!("pid {pid}")), "{out}");
        }
        pid = wait_new_pid(&baton, pid);
        wait_until(
            Duration::from_secs(5),
            "pid file names the accepting process",
            || pid_file(&baton) == pid,
        );
    }
    stop_load(load, keep_alive, 100);
    let status: serde_json::Value =
        serde_json::from_str(&http_get(baton.admin, "/status").unwrap().1).unwrap();
    assert_eq!(status["generation"], 20);
    assert_eq!(
        metric_value(&baton.metrics(), "baton_upgrades_total{result=\"success\"}"),
        Some(20.0)
    );
    // The first process exits 0 once its streams are gone.
    let exit = baton.wait_exit(Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
    // Stop the last one (not our child) by its pid.
    stop_pid(pid);
}

#[test]
fn a_hundred_long_streams_cross_an_upgrade_intact() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    // This test is about draining: streams stay with the old process.
    config.extra_top = "upgrade:\n  migrate: false\n".into();
    let mut baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let mut streams: Vec<TcpStream> = (0..100)
        .map(|_| {
            let s = TcpStream::connect(config.listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let exchange = |streams: &mut Vec<TcpStream>, round: u8| {
        for (i, s) in streams.iter_mut().enumerate() {
            let chunk: Vec<u8> = (0..4096).map(|k| (k as u8) ^ round ^ (i as u8)).collect();
            s.write_all(&chunk).unwrap();
            let mut back = vec![0u8; chunk.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, chunk, "stream {i} round {round}");
        }
    };
    exchange(&mut streams, 1);
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    let new = wait_new_pid(&baton, old);
    exchange(&mut streams, 2);

    // New connections reach the successor: its own active gauge counts them.
    let fresh: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(config.listen).unwrap())
        .collect();
    wait_until(
        Duration::from_secs(5),
        "new connections on the successor",
        || {
            metric_value(
                &baton.metrics(),
                "baton_connections_active{listener=\"web\"}",
            ) == Some(5.0)
        },
    );
    wait_until(
        Duration::from_secs(5),
        "the predecessor reports 100 streams",
        || {
            metric_value(
                &baton.metrics(),
                "baton_drain_connections_active{generation=\"0\"}",
            ) == Some(100.0)
        },
    );
    exchange(&mut streams, 3);
    assert!(
        baton.child.try_wait().unwrap().is_none(),
        "predecessor drains while streams are open"
    );
    for s in &streams {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for s in &mut streams {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    drop(streams);
    let exit = baton.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "predecessor exit: {exit}");
    drop(fresh);
    stop_pid(new);
}

#[test]
fn drain_timeout_cuts_what_remains_and_counts_it() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 2s\nupgrade:\n  migrate: false\n".into();
    let mut baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let mut streams: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(config.listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    let (ok, out) = baton.ctl(&["upgrade"]);
    let ready = Instant::now();
    assert!(ok, "{out}");
    let new = wait_new_pid(&baton, old);
    assert!(closed_by_peer(&mut streams[0]), "stream cut");
    let cut_after = ready.elapsed();
    assert!(
        cut_after >= Duration::from_millis(1800) && cut_after < Duration::from_secs(4),
        "cut {cut_after:?} after the successor was ready"
    );
    for s in &mut streams[1..] {
        assert!(closed_by_peer(s), "every remaining stream cut");
    }
    assert!(
        baton.wait_exit(Duration::from_secs(10)).success(),
        "exit 0 after a forced drain"
    );
    wait_until(
        Duration::from_secs(5),
        "forced closes reach the successor",
        || metric_value(&baton.metrics(), "baton_drain_forced_closes_total") == Some(3.0),
    );
    stop_pid(new);
}

#[test]
fn failed_upgrades_roll_back_and_a_good_one_follows() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  ready_timeout: 1s\ndrain:\n  timeout: 3s\n".into();
    let baton = Baton::start(&config.yaml());
    let pid = baton.pid();
    let load = Load::start(config.listen, 2, 2);

    let exits = script(&baton, "exits", "exit 1");
    let (ok, out) = baton.ctl(&["upgrade", "--binary", exits.to_str().unwrap()]);
    assert!(!ok && out.contains("exited"), "{out}");

    let hangs = script(&baton, "hangs", "exec sleep 1000");
    let started = Instant::now();
    let (ok, out) = baton.ctl(&["upgrade", "--binary", hangs.to_str().unwrap()]);
    assert!(!ok && out.contains("not ready within"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let good = baton.config_path.clone();
    let yaml = std::fs::read_to_string(&good).unwrap();
    baton.write_config(&yaml.replace("cluster: app", "cluster: nope"));
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(!ok && out.contains("listeners[0].cluster"), "{out}");

    assert_eq!(
        serving_pid(baton.admin),
        Some(pid),
        "the old process still serves"
    );
    assert_eq!(
        metric_value(&baton.metrics(), "baton_upgrades_total{result=\"failure\"}"),
        Some(3.0)
    );
    assert_eq!(connect_named(config.listen).1.len(), 1);

    baton.write_config(&yaml);
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    let new = wait_new_pid(&baton, pid);
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(
        metric_value(&baton.metrics(), "baton_upgrades_total{result=\"failure\"}"),
        Some(3.0),
        "failures carried to the successor"
    );
    stop_pid(new);
}

/// A successor that dies at each step of the protocol, played by the test
/// on the real control socket: the running baton keeps serving.
#[test]
fn a_successor_dying_mid_hand_over_costs_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  ready_timeout: 2s\n".into();
    let baton = Baton::start(&config.yaml());
    let pid = baton.pid();
    let sock = baton.path("baton.sock");
    let load = Load::start(config.listen, 2, 2);
    // The successor is a separate process (a rollback signals it), played
    // by python: it stops at each step in turn.
    let fake = r#"
import os, socket, sys
stage, path = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
if stage >= 1:
    s.sendall(b'{"v":1,"cmd":"handover","pid":%d}\n' % os.getpid())
if stage >= 2:
    s.recv(8)
if stage >= 3:
    s.settimeout(0.3)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
if stage >= 4:
    s.sendall(b'{"event":"failed","reason":"test"}\n')
"#;
    for stage in 0..5 {
        // It may end by itself or by the rollback's SIGTERM.
        let _ = std::process::Command::new("python3")
            .args(["-c", fake, &stage.to_string()])
            .arg(&sock)
            .output()
            .unwrap();
        wait_until(Duration::from_secs(5), "the attempt is over", || {
            let (ok, out) = baton.ctl(&["status", "--json"]);
            ok && out.contains("\"lifecycle\": \"ready\"")
        });
        assert_eq!(serving_pid(baton.admin), Some(pid), "stage {stage}");
    }
    // Real successor processes SIGKILLed at random moments before they can
    // take over (a hand-over takes a few ms, faster than a test can aim a
    // signal inside it; the steps inside are played by python above).
    for i in 0..5 {
        let pid_path = baton.path(&format!("successor-{i}.pid"));
        let wrapper = script(
            &baton,
            &format!("wrapper-{i}"),
            &format!(
                "echo $$ > {}\nsleep 1\nexec {BATON} \"$@\"",
                pid_path.display()
            ),
        );
        let binary = wrapper.to_str().unwrap().to_string();
        let config_path = baton.config_path.clone();
        let upgrade = std::thread::spawn(move || {
            std::process::Command::new(BATON)
                .args(["upgrade", "--binary", &binary, "-c"])
                .arg(&config_path)
                .output()
                .unwrap()
        });
        wait_until(Duration::from_secs(5), "successor pid", || {
            std::fs::read_to_string(&pid_path).is_ok_and(|s| s.ends_with('\n'))
        });
        let successor: i32 = std::fs::read_to_string(&pid_path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..800)));
        let _ = std::process::Command::new("kill")
            .args(["-9", &successor.to_string()])
            .status();
        let out = upgrade.join().unwrap();
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(serving_pid(baton.admin), Some(pid));
    }
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(connect_named(config.listen).1.len(), 1);
}

#[test]
fn upgrade_without_a_predecessor_exits_1_and_binds_nothing() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let out = std::process::Command::new(BATON)
        .args(["run", "--upgrade", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running baton"), "{err}");
    assert!(TcpStream::connect(config.listen).is_err());
    assert!(TcpStream::connect(config.admin).is_err());
    assert!(!dir.path().join("baton.sock").exists());
}

#[test]
fn a_draining_process_refuses_to_upgrade_and_ignores_sighup() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    // This test is about draining: streams stay with the old process.
    config.extra_top = "upgrade:\n  migrate: false\n".into();
    let baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let held = TcpStream::connect(config.listen).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&held).write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    (&held).read_exact(&mut b).unwrap();
    assert!(baton.ctl(&["upgrade"]).0);
    let new = wait_new_pid(&baton, old);
    // The old one drains: SIGHUP and SIGUSR2 change nothing and kill nothing.
    baton.signal("HUP");
    baton.signal("USR2");
    (&held).write_all(b"y").unwrap();
    (&held).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
    assert!(pid_alive(old));
    assert_eq!(serving_pid(baton.admin), Some(new));
    drop(held);
    stop_pid(new);
    wait_until(Duration::from_secs(10), "the predecessor stops too", || {
        !pid_alive(old)
    });
}

/// With one worker the process runs on the current-thread scheduler (its
/// own tasks and every connection on one thread): reloads, upgrades and a
/// stream that moves to the successor cost no client anything there too.
#[test]
fn one_worker_reloads_and_upgrades_under_load_cost_no_client_anything() {
    let a = Backend::start("a");
    let http = HttpBackend::start();
    let config = ConfigBuilder::new(&[&a]);
    let (yaml, http_addr) = config.with_http_listener(&http);
    let mut baton = Baton::start_opts(&yaml, None, &[("TOKIO_WORKER_THREADS", "1")]);
    let first = baton.pid();

    let (mut stream, name) = connect_named(config.listen);
    assert_eq!(name, "a");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut exchange = |round: u8| {
        let chunk: Vec<u8> = (0..8192).map(|k| (k as u8) ^ round).collect();
        stream.write_all(&chunk).unwrap();
        let mut back = vec![0u8; chunk.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, chunk, "round {round}");
    };
    exchange(1);
    let load = Load::start(config.listen, 2, 4);
    let keep_alive = KeepAlive::start(http_addr, 2, 20);
    let mut pid = first;
    for i in 0..4u8 {
        // To the process that serves now (the first one drains after an
        // upgrade, and a draining process ignores SIGHUP).
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        wait_until(Duration::from_secs(5), "the reload is counted", || {
            baton.metric("baton_config_reloads_total{result=\"success\"}")
                == Some(f64::from(i) + 1.0)
        });
        exchange(2 + i);
        // Load goes through every generation.
        let before = load.short_done.load(std::sync::atomic::Ordering::Relaxed);
        wait_until(Duration::from_secs(5), "short connections go on", || {
            load.short_done.load(std::sync::atomic::Ordering::Relaxed) > before + 20
        });
        if i % 2 == 1 {
            let (ok, out) = baton.ctl(&["upgrade"]);
            assert!(ok, "upgrade {i}: {out}");
            pid = wait_new_pid(&baton, pid);
            exchange(10 + i);
        }
    }
    stop_load(load, keep_alive, 50);
    // The long stream moved on to the last process and still echoes.
    assert!(
        baton
            .metric("baton_connections_migrated_total{listener=\"web\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        baton.metrics()
    );
    exchange(99);
    drop(stream);
    let exit = baton.wait_exit(Duration::from_secs(20));
    assert!(exit.success(), "{exit}");
    stop_pid(pid);
}

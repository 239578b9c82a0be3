//! The control plane as one state machine, tried from outside: upgrades
//! that never fail by chance, reload and upgrade that refuse each other,
//! no moment without an accepting process, a control socket that trusts
//! only its own, counter history that stays flat, `/metrics` that never
//! goes backwards.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::exposition::parse;
use support::*;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `baton upgrade --binary BINARY` in a thread: (success, output).
fn upgrade_in_background(
    baton: &Baton,
    binary: Option<&Path>,
) -> std::thread::JoinHandle<(bool, String)> {
    let config = baton.config_path.clone();
    let binary = binary.map(Path::to_path_buf);
    std::thread::spawn(move || {
        let mut command = Command::new(BATON);
        command.arg("upgrade").arg("-c").arg(&config);
        if let Some(b) = binary {
            command.arg("--binary").arg(b);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
}

/// Listening sockets on `port` in this network namespace (IPv4).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "0A"
        })
        .count()
}

fn draining(baton: &Baton) -> Option<f64> {
    metric_value(
        &http_get(baton.admin, "/metrics").ok()?.1,
        "baton_draining_processes",
    )
}

#[test]
fn upgrades_right_after_a_take_over_never_fail_under_load() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let http = HttpBackend::start();
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  max_draining: 64\ndrain:\n  timeout: 60s\n".into();
    let (yaml, http_addr) = config.with_http_listener(&http);
    let baton = Baton::start(&yaml);
    let load = Load::start(config.listen, 30, 0);
    let keep_alive = KeepAlive::start(http_addr, 10, 20);

    // A wrapper that forks the successor and exits instead of exec'ing it.
    let forking = script(
        baton.dir.path(),
        "forking-wrapper",
        &format!("#!/bin/sh\n\"{BATON}\" \"$@\" &\nexit 0\n"),
    );
    let mut pid = baton.pid();
    for i in 0..55 {
        let before = pid;
        if i >= 50 {
            let (ok, out) = upgrade_in_background(&baton, Some(&forking))
                .join()
                .unwrap();
            assert!(ok, "upgrade {i} through a forking wrapper: {out}");
        } else if i % 2 == 0 {
            let ok = Command::new("kill")
                .args(["-USR2", &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        } else {
            let (ok, out) = baton.ctl(&["upgrade"]);
            assert!(ok, "upgrade {i}: {out}");
        }
        pid = wait_new_pid(&baton, before);
        // The next one 0-50 ms after the take-over: the race window of a
        // successor that asks before its spawn was recorded.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..=50)));
    }
    let errors = load.finish();
    let ka_errors = keep_alive.finish();
    assert!(errors.is_empty(), "short TCP client errors: {errors:?}");
    assert!(
        ka_errors.is_empty(),
        "keep-alive client errors: {ka_errors:?}"
    );
    let text = http_get(baton.admin, "/metrics").unwrap().1;
    assert_eq!(
        metric_value(&text, "baton_upgrades_total{result=\"success\"}"),
        Some(55.0),
        "every upgrade counted as a success"
    );
    assert_eq!(
        metric_value(&text, "baton_upgrades_total{result=\"failure\"}"),
        Some(0.0)
    );
    stop_pid(pid);
}

/// A successor played by python on the inherited hand-over connection: it
/// takes the sockets and stops at `stage` until the test says go.
fn fake_successor(dir: &Path, stage: &str) -> PathBuf {
    let body = format!(
        r#"#!/usr/bin/env python3
import array, json, os, socket, struct, sys, time
stage, folder = "{stage}", "{dir}"
s = socket.socket(fileno=int(os.environ["BATON_HANDOVER_FD"]))
s.sendall(b'{{"v":1,"cmd":"handover","pid":%d,"handover_version":2}}\n' % os.getpid())
held = []
def read(n):
    data = b""
    while len(data) < n:
        msg, anc, _, _ = s.recvmsg(n - len(data), socket.CMSG_SPACE(250 * 4))
        if not msg:
            sys.exit(3)
        data += msg
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(raw[: len(raw) - len(raw) % 4])
                held.extend(a)
    return data
def frame():
    return json.loads(read(struct.unpack(">I", read(4))[0]))
while frame()["frame"] != "end":
    pass
def reached():
    open(os.path.join(folder, "reached"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)
if stage == "sockets":
    reached()
    s.sendall(b'{{"event":"failed","reason":"the test says no"}}\n')
    time.sleep(5)
else:
    s.sendall(b'{{"event":"ready","pid":%d,"generation":99}}\n' % os.getpid())
    assert frame()["frame"] == "released"
    reached()
"#,
        dir = dir.display()
    );
    script(dir, &format!("fake-{stage}"), &body)
}

#[test]
fn reload_and_upgrade_refuse_each_other_in_every_phase() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  ready_timeout: 20s\n".into();
    let dir = tempfile::tempdir().unwrap();
    let hosts = SlowHosts::new(dir.path(), "127.0.0.1 slow.test");
    let baton = Baton::start_opts(&config.yaml(), None, &[hosts.env()]);
    let pid = baton.pid();
    let load = Load::start(config.listen, 2, 2);
    let go = baton.path("go");
    let reached = baton.path("reached");

    // Phase "successor started": a wrapper that waits before exec'ing.
    let slow = script(
        baton.dir.path(),
        "slow-wrapper",
        &format!(
            "#!/bin/sh\ntouch \"{reached}\"\nwhile [ ! -e \"{go}\" ]; do sleep 0.01; done\nexec \"{BATON}\" \"$@\"\n",
            reached = reached.display(),
            go = go.display()
        ),
    );
    let upgrade = upgrade_in_background(&baton, Some(&slow));
    wait_until(Duration::from_secs(10), "wrapper started", || {
        reached.exists()
    });
    assert_eq!(lifecycle(&baton), "upgrading (successor started)");
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(
        !ok && out.contains("an upgrade is already in progress"),
        "{out}"
    );
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(
        !ok && out.contains("an upgrade is already in progress"),
        "{out}"
    );
    baton.signal("HUP");
    wait_until(Duration::from_secs(5), "SIGHUP refused in the log", || {
        baton.log().contains("SIGHUP ignored")
    });
    std::fs::write(&go, "").unwrap();
    let (ok, out) = upgrade.join().unwrap();
    assert!(ok, "the first operation completes: {out}");
    let pid = wait_new_pid(&baton, pid);
    assert_eq!(
        listening_sockets(config.listen.port()),
        1,
        "no listener bound twice"
    );
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&reached).unwrap();

    // Phase "sockets sent": a successor that holds the sockets, then fails.
    let fake = fake_successor(baton.dir.path(), "sockets");
    let upgrade = upgrade_in_background(&baton, Some(&fake));
    wait_until(Duration::from_secs(10), "fake has the sockets", || {
        reached.exists()
    });
    assert_eq!(lifecycle(&baton), "upgrading (sockets sent)");
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(
        !ok && out.contains("an upgrade is already in progress"),
        "{out}"
    );
    std::fs::write(&go, "").unwrap();
    let (ok, out) = upgrade.join().unwrap();
    assert!(!ok && out.contains("the test says no"), "{out}");
    assert_eq!(lifecycle(&baton), "ready");
    assert_eq!(serving_pid(baton.admin), Some(pid));
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_file(&reached).unwrap();

    // A slow reload (its name lookup reads a FIFO the test writes later):
    // upgrade and reload are refused while it runs; it completes.
    let yaml = std::fs::read_to_string(&baton.config_path).unwrap();
    baton.write_config(&yaml.replace(
        &format!("address: \"{}\"", b.addr),
        &format!("address: \"slow.test:{}\"", b.addr.port()),
    ));
    let config_path = baton.config_path.clone();
    let reload = std::thread::spawn(move || {
        Command::new(BATON)
            .arg("reload")
            .arg("-c")
            .arg(&config_path)
            .output()
            .unwrap()
    });
    wait_until(Duration::from_secs(10), "reload running", || {
        lifecycle(&baton) == "reloading"
    });
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(
        !ok && out.contains("a reload is already in progress"),
        "{out}"
    );
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(
        !ok && out.contains("a reload is already in progress"),
        "{out}"
    );
    hosts.release();
    let out = reload.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lifecycle(&baton), "ready");

    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    stop_pid(pid);
}

#[test]
fn a_successor_gone_after_the_release_gives_the_sockets_back() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "upgrade:\n  ready_timeout: 20s\n".into();
    let baton = Baton::start(&config.yaml());
    let pid = baton.pid();
    // A client every few ms: it may wait in the queue during the release,
    // never be refused.
    let load = Load::start(config.listen, 1, 1);
    let fake = fake_successor(baton.dir.path(), "released");
    let upgrade = upgrade_in_background(&baton, Some(&fake));
    wait_until(Duration::from_secs(10), "fake got the release", || {
        baton.path("reached").exists()
    });
    // Released: this process neither accepts nor serves control now.
    baton.signal("HUP");
    wait_until(Duration::from_secs(5), "SIGHUP refused in the log", || {
        baton.log().contains("SIGHUP ignored")
    });
    std::fs::write(baton.path("go"), "").unwrap();
    let (ok, out) = upgrade.join().unwrap();
    assert!(
        !ok && out.contains("before it confirmed the take-over"),
        "{out}"
    );
    wait_until(Duration::from_secs(5), "serving again", || {
        serving_pid(baton.admin) == Some(pid)
    });
    assert_eq!(lifecycle(&baton), "ready");
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert_eq!(connect_named(config.listen).1.len(), 1);
    // And a real upgrade still works.
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    stop_pid(wait_new_pid(&baton, pid));
}

#[test]
fn an_unwritable_pid_file_refuses_the_upgrade_before_release() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let pid = baton.pid();
    let load = Load::start(config.listen, 1, 1);
    // A pid file inside a regular file cannot be written, not even by root.
    std::fs::write(baton.path("blocker"), "").unwrap();
    let yaml = std::fs::read_to_string(&baton.config_path).unwrap();
    baton.write_config(&yaml.replace("pid_file: baton.pid", "pid_file: blocker/baton.pid"));
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok, "the reload is accepted: {out}");
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(!ok && out.contains("pid_file"), "{out}");
    assert_eq!(serving_pid(baton.admin), Some(pid));
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    // Fixed: the next upgrade goes through.
    baton.write_config(&yaml);
    assert!(baton.ctl(&["reload"]).0);
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    stop_pid(wait_new_pid(&baton, pid));
}

#[test]
fn a_stopped_baton_is_running_not_stale() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let pid = baton.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let second = Command::new(BATON)
        .args(["run", "-c"])
        .arg(&baton.config_path)
        .output()
        .unwrap();
    let took = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("runs as pid {pid}")), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "decided without waiting: {took:?}"
    );
    let (ok, out) = baton.ctl(&["status"]);
    assert!(ok, "the control socket still answers: {out}");
}

#[test]
fn the_control_socket_trusts_only_its_own() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 30s\nupgrade:\n  migrate: false\n".into();
    let baton = Baton::start(&config.yaml());
    let sock = baton.path("baton.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");

    // Another user, even with the file opened up to everyone: refused.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"v":1,"cmd":"status"}\n')
print(s.recv(4096).decode())
"#,
        )
        .arg(&sock)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&other.stdout);
    assert!(
        said.contains("permission denied"),
        "{said}{}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(!said.contains("\"status\""), "{said}");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A predecessor that drains (a held stream), then reports that are not
    // its own: an unknown pid, and a known pid sent by someone else.
    let mut held = std::net::TcpStream::connect(config.listen).unwrap();
    std::io::Write::write_all(&mut held, b"x").unwrap();
    let old = baton.pid();
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    let new = wait_new_pid(&baton, old);
    wait_until(Duration::from_secs(5), "predecessor reports", || {
        draining(&baton) == Some(1.0)
    });
    let inject = r#"
import json, os, socket, sys
path, known = sys.argv[1], int(sys.argv[2])
series = [{"name": "baton_connections_accepted_total", "help": "x", "kind": "counter",
           "labels": [["listener", "web"]], "value": 1e9}]
for pid, gen in ((os.getpid(), 77), (known, 0)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    report = {"v": 1, "cmd": "drain_report", "pid": pid, "generation": gen, "connections": 5,
              "elapsed_seconds": 1.0, "counts": {"series": series}}
    s.sendall(json.dumps(report).encode() + b"\n")
    s.settimeout(3)
    print(repr(s.recv(4096)))
"#;
    let out = Command::new("python3")
        .args(["-c", inject])
        .arg(&sock)
        .arg(old.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.matches("b''").count(),
        2,
        "both closed unanswered: {said}"
    );
    let text = http_get(baton.admin, "/metrics").unwrap().1;
    let exposition = parse(&text);
    let accepted =
        metric_value(&text, "baton_connections_accepted_total{listener=\"web\"}").unwrap();
    assert!(accepted < 1e6, "injected counts exported: {accepted}");
    assert!(
        !exposition
            .samples
            .iter()
            .any(|(_, labels, _)| labels.get("generation").is_some_and(|g| g == "77")),
        "an unknown pid's drain series exported"
    );
    baton.wait_for_log("drain report dropped");
    drop(held);
    wait_until(Duration::from_secs(10), "predecessor gone", || {
        !pid_alive(old)
    });
    // Upgrades still work.
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    let newer = wait_new_pid(&baton, new);
    stop_pid(newer);
}

/// Every cumulative series: `_total`, and histogram `_sum`, `_count`,
/// `_bucket`.
fn cumulative(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let name = series.split('{').next().unwrap_or("");
            ["_total", "_sum", "_count", "_bucket"]
                .iter()
                .any(|s| name.ends_with(s))
        })
        .filter_map(|(series, v)| Some((series.to_string(), v.parse().ok()?)))
        .collect()
}

#[test]
fn metrics_never_go_backwards_while_scraped_every_2ms_across_20_upgrades() {
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    config.extra_top = "upgrade:\n  max_draining: 32\n".into();
    let baton = Baton::start(&config.yaml());
    let load = Load::start(config.listen, 4, 4);
    let admin = baton.admin;
    let stop = Arc::new(AtomicBool::new(false));
    let scraped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scraper = {
        let stop = stop.clone();
        let scraped = scraped.clone();
        std::thread::spawn(move || {
            let mut last: BTreeMap<String, f64> = BTreeMap::new();
            let mut last_gen = None;
            let (mut scrapes, mut regressions) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                if let Ok((200, body)) = http_get(admin, "/metrics") {
                    let now = cumulative(&body);
                    let generation = metric_value(&body, "baton_process_generation");
                    for (series, old) in &last {
                        match now.get(series) {
                            Some(new) if new < old => regressions.push(format!(
                                "{series}: {old} -> {new} (generation {last_gen:?} -> {generation:?})"
                            )),
                            None => regressions.push(format!("{series} disappeared")),
                            _ => {}
                        }
                    }
                    last = now;
                    last_gen = generation;
                    scrapes += 1;
                    scraped.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (scrapes, regressions)
        })
    };
    let mut pid = baton.pid();
    for i in 0..20 {
        let (ok, out) = baton.ctl(&["upgrade"]);
        assert!(ok, "upgrade {i}: {out}");
        pid = wait_new_pid(&baton, pid);
    }
    // Upgrades can be quicker than 40 scrapes: scrape on a little.
    wait_until(Duration::from_secs(10), "40 scrapes", || {
        scraped.load(Ordering::Relaxed) >= 40
    });
    stop.store(true, Ordering::Relaxed);
    let (scrapes, regressions) = scraper.join().unwrap();
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(scrapes >= 40, "only {scrapes} scrapes");
    assert!(regressions.is_empty(), "went backwards: {regressions:?}");
    stop_pid(pid);
}

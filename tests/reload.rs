//! Config reload in process: under load nothing is dropped, a bad config
//! changes nothing, listeners come and go, memory stays flat.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Names of the backends that answer `n` new connections.
#[test]
fn fifty_reloads_under_load_drop_nothing_and_switch_at_once() {
    let (a1, a2) = (Backend::start("a1"), Backend::start("a2"));
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let mut config = ConfigBuilder::new(&[&a1, &a2]);
    let yaml_a = config.yaml();
    config.backends = vec![(b1.addr, 1), (b2.addr, 1)];
    let yaml_b = config.yaml();
    let baton = Baton::start(&yaml_a);

    let load = Load::start(config.listen, 4, 8);
    for i in 0..50 {
        let (yaml, want) = if i % 2 == 0 {
            (&yaml_b, names(&["b1", "b2"]))
        } else {
            (&yaml_a, names(&["a1", "a2"]))
        };
        baton.write_config(yaml);
        let (ok, out) = baton.ctl(&["reload"]);
        assert!(ok, "reload {i}: {out}");
        assert!(
            out.contains(&format!("config generation {}", i + 2)),
            "{out}"
        );
        let seen = answering(config.listen, 4);
        assert!(
            seen.is_subset(&want),
            "after reload {i}: {seen:?} answered, want only {want:?}"
        );
    }
    let short = load.short_done.load(std::sync::atomic::Ordering::Relaxed);
    let streamed = load.stream_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(short > 50, "short connections ran: {short}");
    assert!(streamed > 0, "streams ran");
    assert_eq!(
        baton.metric("baton_config_reloads_total{result=\"success\"}"),
        Some(50.0)
    );
    assert_eq!(baton.metric("baton_config_generation"), Some(51.0));
}

#[test]
fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let good = config.yaml();
    let baton = Baton::start(&good);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();

    let bad: Vec<(&str, String, &str)> = vec![
        ("syntax", good.replace("listeners:", "listeners: [\n"), "config refused"),
        ("unknown key", good.replace("pid_file:", "pid_fil:"), "pid_fil"),
        (
            "unknown cluster",
            good.replace("cluster: app", "cluster: nope"),
            "listeners[0].cluster",
        ),
        (
            "unresolvable backend",
            good.replace(&a.addr.to_string(), "no-such-host.invalid:80"),
            "clusters[0].backends[0].address",
        ),
        (
            "port in use",
            good.replace(
                "clusters:",
                &format!(
                    "  - {{ name: extra, listen: \"127.0.0.1:{busy_port}\", cluster: app }}\nclusters:"
                ),
            ),
            "listeners[1].listen",
        ),
    ];
    for (i, (what, yaml, want)) in bad.iter().enumerate() {
        baton.write_config(yaml);
        let (ok, out) = baton.ctl(&["reload"]);
        assert!(!ok, "{what}: reload must fail");
        assert!(out.contains(want), "{what}: message lacks {want:?}: {out}");
        assert_eq!(
            baton.metric("baton_config_reloads_total{result=\"failure\"}"),
            Some((i + 1) as f64),
            "{what}: counted once"
        );
        assert_eq!(baton.metric("baton_config_generation"), Some(1.0));
        assert_eq!(
            connect_named(config.listen).1,
            "a",
            "{what}: old config serves"
        );
    }
    drop(busy);
    baton.write_config(&good);
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok, "{out}");
    // Errors are logged with their path.
    baton.wait_for_log("listeners[0].cluster");
}

#[test]
fn listeners_are_added_moved_renamed_and_removed() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let with_api = |api_name: &str, api: std::net::SocketAddr| {
        config.yaml().replace(
            "clusters:",
            &format!("  - {{ name: {api_name}, listen: \"{api}\", cluster: app }}\nclusters:"),
        )
    };

    // Added.
    baton.write_config(&with_api("api", second));
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok && out.contains("listeners added: api"), "{out}");
    assert_eq!(connect_named(second).1, "a");

    // A stream open on it survives every later change to it.
    let mut stream = TcpStream::connect(second).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = [0u8; 2];
    stream.read_exact(&mut hello).unwrap();

    // Renamed on the same address: same socket, no gap.
    baton.write_config(&with_api("api2", second));
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(
        ok && out.contains("listeners renamed: api -> api2"),
        "{out}"
    );
    assert_eq!(connect_named(second).1, "a");
    let status = baton.ctl(&["status", "--json"]).1;
    assert!(status.contains("\"api2\""), "{status}");

    // Moved to another address.
    let third = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    baton.write_config(&with_api("api2", third));
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok && out.contains("listeners moved: api2"), "{out}");
    assert_eq!(connect_named(third).1, "a");
    wait_until(Duration::from_secs(5), "old address closed", || {
        TcpStream::connect(second).is_err()
    });

    // Removed.
    baton.write_config(&config.yaml());
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok && out.contains("listeners removed: api2"), "{out}");
    wait_until(Duration::from_secs(5), "removed listener closed", || {
        TcpStream::connect(third).is_err()
    });
    assert_eq!(connect_named(config.listen).1, "a");

    stream.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
}

#[test]
fn connections_racing_a_listener_removal_are_served_not_reset() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let with_api = config.yaml().replace(
        "clusters:",
        &format!("  - {{ name: api, listen: \"{second}\", cluster: app }}\nclusters:"),
    );
    let baton = Baton::start(&with_api);
    for round in 0..5 {
        // Open connections as fast as possible while the listener goes away:
        // every connection the kernel completed must reach a backend.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let opener = std::thread::spawn(move || {
            let mut opened = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match TcpStream::connect(second) {
                    Ok(c) => opened.push(c),
                    Err(_) => break,
                }
                if opened.len() > 200 {
                    break;
                }
            }
            opened
        });
        baton.write_config(&config.yaml());
        let (ok, out) = baton.ctl(&["reload"]);
        assert!(ok, "{out}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let opened = opener.join().unwrap();
        for (i, mut c) in opened.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut hello = [0u8; 2];
            c.read_exact(&mut hello)
                .unwrap_or_else(|e| panic!("round {round}: connection {i} was not served: {e}"));
            assert_eq!(&hello, b"a\n");
        }
        baton.write_config(&with_api);
        let (ok, out) = baton.ctl(&["reload"]);
        assert!(ok, "{out}");
    }
}

#[test]
fn a_removed_backend_keeps_its_open_streams() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let (mut stream, name) = connect_named(config.listen);
    assert_eq!(name, "a");
    config.backends = vec![(b.addr, 1)];
    baton.write_config(&config.yaml());
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("backends removed: app/{}", a.addr)),
        "{out}"
    );
    assert_eq!(connect_named(config.listen).1, "b");
    for i in 0..20 {
        let msg = format!("message {i}");
        stream.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

#[test]
fn unchanged_backends_keep_their_live_state() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a]);
    config.cluster_extra = "    balance: least_conn\n".into();
    let baton = Baton::start(&config.yaml());
    let held: Vec<_> = (0..3).map(|_| connect_named(config.listen)).collect();
    config.backends = vec![(a.addr, 1), (b.addr, 1)];
    baton.write_config(&config.yaml());
    assert!(baton.ctl(&["reload"]).0);
    // `a` still counts its 3 connections, so least_conn sends the next 3 to `b`.
    // Each held open, so it counts for the next pick.
    let next: Vec<(std::net::TcpStream, String)> =
        (0..3).map(|_| connect_named(config.listen)).collect();
    let names: Vec<&str> = next.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["b", "b", "b"]);
    let series = format!(
        "baton_backend_connections_active{{backend=\"{}\",cluster=\"app\"}}",
        a.addr
    );
    assert_eq!(baton.metric(&series), Some(3.0));
    drop(held);
    drop(next);
}

#[test]
fn sighup_storm_under_load_costs_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = ConfigBuilder::new(&[&a, &b]);
    let baton = Baton::start(&config.yaml());
    let load = Load::start(config.listen, 4, 4);
    let started = Instant::now();
    for _ in 0..50 {
        baton.signal("HUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    wait_until(Duration::from_secs(10), "a final reload", || {
        baton.ctl(&["reload"]).0
    });
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let successes = baton
        .metric("baton_config_reloads_total{result=\"success\"}")
        .unwrap();
    assert!(successes >= 2.0, "SIGHUPs reloaded: {successes}");
    assert_eq!(
        baton.metric("baton_config_reloads_total{result=\"failure\"}"),
        Some(0.0)
    );
}

/// One reload made slow on purpose (its name lookup reads a FIFO the test
/// writes later): 50 SIGHUPs inside it coalesce into exactly one more.
#[test]
fn sighups_during_a_slow_reload_make_exactly_one_more() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = ConfigBuilder::new(&[&a, &b]);
    let dir = tempfile::tempdir().unwrap();
    let hosts = SlowHosts::new(dir.path(), "127.0.0.1 slow.test");
    let baton = Baton::start_opts(&config.yaml(), None, &[hosts.env()]);
    let yaml = config.yaml().replace(
        &format!("address: \"{}\"", b.addr),
        &format!("address: \"slow.test:{}\"", b.addr.port()),
    );
    baton.write_config(&yaml);
    baton.signal("HUP");
    wait_until(Duration::from_secs(10), "the slow reload runs", || {
        lifecycle(&baton) == "reloading"
    });
    for _ in 0..50 {
        baton.signal("HUP");
    }
    assert_eq!(lifecycle(&baton), "reloading", "still inside the slow one");
    hosts.release();
    let reloads = "baton_config_reloads_total{result=\"success\"}";
    wait_until(Duration::from_secs(10), "the reloads end", || {
        lifecycle(&baton) == "ready" && baton.metric(reloads) == Some(2.0)
    });
    // Ready with nothing pending: the slow reload and one more, not 51.
    assert_eq!(baton.metric(reloads), Some(2.0));
    assert_eq!(baton.metric("baton_config_generation"), Some(3.0));
    assert_eq!(
        baton.metric("baton_config_reloads_total{result=\"failure\"}"),
        Some(0.0)
    );
}

#[test]
fn a_thousand_reloads_do_not_grow_memory() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let sock = baton.path("baton.sock");
    let reload = || {
        let r = baton::control::request(
            &sock,
            &baton::control::Command::Reload { dry_run: false },
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(r.ok, "{:?}", r.error);
    };
    for _ in 0..10 {
        reload();
    }
    let _ = connect_named(config.listen);
    let after_10 = baton.rss_kib();
    for _ in 0..1000 {
        reload();
    }
    let _ = connect_named(config.listen);
    let after_1000 = baton.rss_kib();
    assert!(
        after_1000 < after_10 + 4 * 1024,
        "RSS grew from {after_10} KiB to {after_1000} KiB over 1,000 reloads"
    );
    assert_eq!(baton.metric("baton_config_generation"), Some(1011.0));
}

#[test]
fn dry_run_reports_without_applying() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    config.backends = vec![(b.addr, 1)];
    baton.write_config(&config.yaml());
    let (ok, out) = baton.ctl(&["reload", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("backends added: app/{}", b.addr)),
        "{out}"
    );
    assert_eq!(connect_named(config.listen).1, "a");
    assert_eq!(baton.metric("baton_config_generation"), Some(1.0));
}

#[test]
fn sd_notify_ready_and_reloading_are_sent() {
    let notify = Notify::new();
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = notify.start_baton(&config.yaml());
    let recv = || notify.recv();
    assert!(recv().contains("READY=1"));
    assert!(baton.ctl(&["reload"]).0);
    let reloading = recv();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(recv().contains("READY=1"));

    // A failed reload also ends with READY=1, and STATUS= says it failed.
    baton.write_config("listeners: [");
    assert!(!baton.ctl(&["reload"]).0);
    assert!(recv().contains("RELOADING=1"));
    let after = recv();
    assert!(
        after.contains("READY=1") && after.contains("STATUS=last reload failed"),
        "{after}"
    );
}

#[test]
fn one_baton_per_control_socket_and_stale_sockets_are_replaced() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    // A second `baton run` on the same config finds the first and exits 1.
    let out = std::process::Command::new(BATON)
        .args(["run", "-c"])
        .arg(&baton.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("runs as pid {}", baton.pid())),
        "{err}"
    );
    assert!(err.contains("--upgrade"), "{err}");
    let mut baton = baton;
    baton.child.kill().unwrap();
    baton.child.wait().unwrap();
    // The killed process left its socket file; nobody answers it.
    assert!(baton.path("baton.sock").exists());
    let mut again = std::process::Command::new(BATON)
        .args(["run", "-c"])
        .arg(&baton.config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "restart on a stale socket", || {
        matches!(http_get(config.admin, "/readyz"), Ok((200, _)))
    });
    let (ok, out) = baton.ctl(&["status"]);
    assert!(ok && out.contains(&format!("pid {}", again.id())), "{out}");
    again.kill().unwrap();
    again.wait().unwrap();
}

#[test]
fn a_down_backend_stays_down_across_a_reload_that_keeps_it() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let b_addr = b.addr;
    let mut config = ConfigBuilder::new(&[&a, &b]);
    // rise 100: once down, only the reload could (wrongly) bring it back.
    config.cluster_extra =
        "    health_check: { interval: 100ms, timeout: 100ms, rise: 100, fall: 1 }\n".into();
    let baton = Baton::start(&config.yaml());
    let healthy = format!("baton_backend_healthy{{backend=\"{b_addr}\",cluster=\"app\"}}");
    drop(b);
    wait_until(Duration::from_secs(5), "b down", || {
        baton.metric(&healthy) == Some(0.0)
    });
    let _b = Backend::start_at("b", b_addr);
    config.backends.push((c.addr, 1));
    baton.write_config(&config.yaml());
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok, "{out}");
    assert_eq!(
        baton.metric(&healthy),
        Some(0.0),
        "health survived the reload"
    );
    let seen = answering(config.listen, 6);
    assert!(
        !seen.contains("b"),
        "a down backend gets no connections: {seen:?}"
    );
}

#[test]
fn a_refused_reload_names_every_mistake_and_warnings_are_logged() {
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    // A warning at start: a name looked up ten times a second.
    config.cluster_extra = "    resolve_interval: 100ms\n".into();
    let good = config.yaml();
    let baton = Baton::start(&good);
    wait_until(
        Duration::from_secs(5),
        "the start-up warning in the log",
        || baton.log().contains("config warning") && baton.log().contains("resolve_interval"),
    );
    let bad = good
        .replace("pid_file:", "pid_fil:")
        .replace("cluster: app", "cluster: nope")
        .replace("resolve_interval: 100ms", "resolve_interval: soon");
    baton.write_config(&bad);
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(!ok, "{out}");
    for want in [
        "pid_fil",
        "did you mean `pid_file`",
        "listeners[0].cluster",
        "clusters[0].resolve_interval",
        "invalid duration",
    ] {
        assert!(out.contains(want), "the refusal lacks {want:?}:\n{out}");
        baton.wait_for_log(want);
    }
    // The old config still serves; a good reload logs its warning again.
    let (_s, name) = connect_named(config.listen);
    assert_eq!(name, "a");
    baton.write_config(&good);
    let before = baton.log().matches("config warning").count();
    let (ok, out) = baton.ctl(&["reload"]);
    assert!(ok, "{out}");
    wait_until(Duration::from_secs(10), "the warning logged again", || {
        baton.log().matches("config warning").count() > before
    });
}

/// A config that reloads itself: watched, with a short debounce.
fn watched(a: &Backend) -> ConfigBuilder {
    let mut config = ConfigBuilder::new(&[a]);
    config.extra_top = "reload: { watch: true, debounce: 200ms }\n".into();
    config
}

fn reloads(baton: &Baton, result: &str) -> f64 {
    baton
        .metric(&format!(
            "baton_config_reloads_total{{result=\"{result}\"}}"
        ))
        .unwrap_or(-1.0)
}

/// Waits until `n` reloads with `result` were counted, then long enough
/// for one more to have happened (three debounces) and checks none did.
fn exactly(baton: &Baton, result: &str, n: f64) {
    wait_until(
        Duration::from_secs(10),
        &format!("{n} {result} reload(s)"),
        || reloads(baton, result) >= n,
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        reloads(baton, result),
        n,
        "{result} reloads\n{}",
        baton.log()
    );
}

/// Each way a file is replaced makes exactly one reload; the same bytes
/// written again make none; a bad file is refused, counted, and the old
/// config keeps serving.
#[test]
fn a_watched_config_reloads_itself_once_per_change() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = watched(&a);
    let baton = Baton::start(&config.yaml());
    baton.wait_for_log("reload.watch: watching the config file");

    // Written in place.
    config.backends = vec![(b.addr, 1)];
    std::fs::write(&baton.config_path, config.yaml()).unwrap();
    exactly(&baton, "success", 1.0);
    assert_eq!(answering(config.listen, 4), names(&["b"]));

    // The same bytes again: nothing to do.
    std::fs::write(&baton.config_path, config.yaml()).unwrap();
    exactly(&baton, "success", 1.0);

    // Renamed over (how most editors and config management save).
    config.backends = vec![(a.addr, 1)];
    let tmp = baton.dir.path().join(".config.yaml.swp");
    std::fs::write(&tmp, config.yaml()).unwrap();
    std::fs::rename(&tmp, &baton.config_path).unwrap();
    exactly(&baton, "success", 2.0);
    assert_eq!(answering(config.listen, 4), names(&["a"]));

    // A bad file: refused once, counted, nothing changes.
    std::fs::write(
        &baton.config_path,
        config.yaml().replace("balance", "balanse") + "bogus: 1\n",
    )
    .unwrap();
    exactly(&baton, "failure", 1.0);
    assert_eq!(reloads(&baton, "success"), 2.0);
    assert_eq!(answering(config.listen, 4), names(&["a"]));

    // Fixed again: back to work.
    config.backends = vec![(b.addr, 1)];
    std::fs::write(&baton.config_path, config.yaml()).unwrap();
    exactly(&baton, "success", 3.0);
    assert_eq!(answering(config.listen, 4), names(&["b"]));
}

/// A Kubernetes ConfigMap volume: `config.yaml -> ..data/config.yaml`,
/// `..data -> ..<version>`; an update writes a new version folder and
/// renames a new `..data` symlink over the old one.
#[test]
fn a_configmap_style_symlink_swap_reloads_once() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = watched(&a);
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, yaml: &str| {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("config.yaml"), yaml).unwrap();
    };
    version("..v1", &config.yaml());
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
    // Writes config.yaml through the symlinks: the same bytes.
    let baton = Baton::start_in(dir, &config.yaml());
    baton.wait_for_log("reload.watch: watching the config file");
    let root = baton.dir.path();

    config.backends = vec![(b.addr, 1)];
    let folder = root.join("..v2");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.yaml"), config.yaml()).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    exactly(&baton, "success", 1.0);
    assert_eq!(answering(config.listen, 4), names(&["b"]));
}

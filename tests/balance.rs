//! Where connections go: every algorithm, retries past dead backends, health
//! checks, fail-open, DNS re-resolution and systemd socket activation.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::*;

fn counts(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// Connects from `source` (any 127.0.0.0/8 address) and returns the name of
/// the backend that answered.
fn name_from(source: [u8; 4], to: SocketAddr) -> String {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn random_respects_weights() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.backends[0].1 = 3;
    config.cluster_extra = "    balance: random\n".into();
    let _baton = Baton::start(&config.yaml());
    let seen = counts((0..400).map(|_| connect_named(config.listen).1));
    // 300 expected for `a`; ±60 is over 6 standard deviations.
    let on_a = seen.get("a").copied().unwrap_or(0);
    assert!((240..=360).contains(&on_a), "{seen:?}");
}

#[test]
fn least_conn_and_p2c_prefer_idle_backends() {
    for balance in ["least_conn", "p2c"] {
        let (a, b) = (Backend::start("a"), Backend::start("b"));
        let mut config = ConfigBuilder::new(&[&a, &b]);
        config.cluster_extra = format!("    balance: {balance}\n");
        let baton = Baton::start(&config.yaml());
        // Ten held connections spread evenly.
        let held: Vec<(TcpStream, String)> =
            (0..10).map(|_| connect_named(config.listen)).collect();
        let load = counts(held.iter().map(|(_, n)| n.clone()));
        assert_eq!(load.get("a"), Some(&5), "{balance}: {load:?}");
        assert_eq!(load.get("b"), Some(&5), "{balance}: {load:?}");
        // Close those on `b`: it is idle, `a` holds 5.
        let on_a: Vec<TcpStream> = held
            .into_iter()
            .filter(|(_, n)| n == "a")
            .map(|(s, _)| s)
            .collect();
        let b_active = format!(
            "baton_backend_connections_active{{backend=\"{}\",cluster=\"app\"}}",
            b.addr
        );
        wait_until(Duration::from_secs(5), "b idle", || {
            baton.metric(&b_active) == Some(0.0)
        });
        // The next 4 connections all go to the idle backend (each held
        // open, so it counts for the next pick).
        let mut kept = Vec::new();
        let next = counts((0..4).map(|_| {
            let (s, n) = connect_named(config.listen);
            kept.push(s);
            n
        }));
        drop(kept);
        drop(on_a);
        assert_eq!(next.get("b"), Some(&4), "{balance}: {next:?}");
    }
}

#[test]
fn hash_source_ip_is_sticky_and_moves_only_the_removed_backends_clients() {
    let backends: Vec<Backend> = (0..5).map(|i| Backend::start(&format!("b{i}"))).collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let mut config = ConfigBuilder::new(&refs);
    config.cluster_extra = "    balance: hash_source_ip\n".into();
    let baton = Baton::start(&config.yaml());
    let sources: Vec<[u8; 4]> = (1..=120).map(|i| [127, 0, 1, i as u8]).collect();
    let first: Vec<String> = sources
        .iter()
        .map(|s| name_from(*s, config.listen))
        .collect();
    let again: Vec<String> = sources
        .iter()
        .map(|s| name_from(*s, config.listen))
        .collect();
    assert_eq!(first, again, "each client keeps its backend");
    assert!(
        counts(first.clone()).len() >= 4,
        "clients spread: {:?}",
        counts(first.clone())
    );

    // Remove b4: only its clients move.
    config.backends.pop();
    baton.write_config(&config.yaml());
    assert!(baton.ctl(&["reload"]).0);
    let after: Vec<String> = sources
        .iter()
        .map(|s| name_from(*s, config.listen))
        .collect();
    let mut moved = 0;
    for (before, now) in first.iter().zip(&after) {
        if before == "b4" {
            moved += 1;
            assert_ne!(now, "b4");
        } else {
            assert_eq!(before, now, "a client of a remaining backend moved");
        }
    }
    assert!(
        moved > 0 && moved < 60,
        "{moved} of 120 were on the removed backend"
    );
}

#[test]
fn retries_pass_dead_backends_with_zero_client_errors() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.backends = vec![(dead[0], 1), (a.addr, 1), (dead[1], 1), (b.addr, 1)];
    config.cluster_extra = "    retries: 2\n".into();
    let baton = Baton::start(&config.yaml());
    let seen = counts((0..40).map(|_| connect_named(config.listen).1));
    assert_eq!(seen.values().sum::<usize>(), 40);
    assert!(seen.contains_key("a") && seen.contains_key("b"), "{seen:?}");
    let refused = |addr: SocketAddr| {
        baton
            .metric(&format!(
                "baton_backend_connect_errors_total{{backend=\"{addr}\",cluster=\"app\",reason=\"refused\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert!(refused(dead[0]) >= 1.0 && refused(dead[1]) >= 1.0);
    // After 3 failures in a row a dead backend is ejected, so most of the 40
    // connections did not even try it.
    assert!(refused(dead[0]) + refused(dead[1]) < 20.0);
    assert!(
        baton
            .metric("baton_backend_connect_duration_seconds_count{cluster=\"app\"}")
            .unwrap()
            >= 40.0
    );
}

#[test]
fn health_checks_take_a_backend_down_and_bring_it_back() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let b_addr = b.addr;
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.cluster_extra =
        "    health_check: { interval: 200ms, timeout: 100ms, rise: 2, fall: 3 }\n".into();
    let baton = Baton::start(&config.yaml());
    let healthy = format!("baton_backend_healthy{{backend=\"{b_addr}\",cluster=\"app\"}}");
    assert_eq!(baton.metric(&healthy), Some(1.0));

    drop(b);
    let stopped = Instant::now();
    wait_until(Duration::from_secs(5), "b marked down", || {
        baton.metric(&healthy) == Some(0.0)
    });
    let down_after = stopped.elapsed();
    // fall × interval (+ jitter and timeout), and not before fall checks.
    assert!(
        down_after < Duration::from_millis(3 * 220 + 400),
        "down after {down_after:?}"
    );
    assert!(
        down_after >= Duration::from_millis(350),
        "down after {down_after:?}"
    );
    // Down backends get no new connections: every client reaches `a`.
    let seen = counts((0..10).map(|_| connect_named(config.listen).1));
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");

    let b = Backend::start_at("b", b_addr);
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "b back up", || {
        baton.metric(&healthy) == Some(1.0)
    });
    let up_after = started.elapsed();
    assert!(
        up_after < Duration::from_millis(2 * 220 + 400),
        "up after {up_after:?}"
    );
    let seen = counts((0..10).map(|_| connect_named(config.listen).1));
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
    let status = baton.ctl(&["status", "--json"]).1;
    assert!(!status.contains("\"healthy\": false"), "{status}");
    drop(b);
}

#[test]
fn a_cluster_with_every_backend_down_fails_open() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let (a_addr, b_addr) = (a.addr, b.addr);
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.cluster_extra =
        "    health_check: { interval: 100ms, timeout: 100ms, rise: 50, fall: 1 }\n".into();
    let baton = Baton::start(&config.yaml());
    drop(a);
    drop(b);
    wait_until(Duration::from_secs(5), "both down", || {
        baton.metric(&format!(
            "baton_backend_healthy{{backend=\"{a_addr}\",cluster=\"app\"}}"
        )) == Some(0.0)
            && baton.metric(&format!(
                "baton_backend_healthy{{backend=\"{b_addr}\",cluster=\"app\"}}"
            )) == Some(0.0)
    });
    // They come back, but rise=50 keeps them marked down for 5 s: clients
    // are still served because an all-down cluster tries every backend.
    let _a = Backend::start_at("a", a_addr);
    let _b = Backend::start_at("b", b_addr);
    let seen = counts((0..6).map(|_| connect_named(config.listen).1));
    assert_eq!(seen.values().sum::<usize>(), 6, "{seen:?}");
    assert_eq!(
        baton.metric(&format!(
            "baton_backend_healthy{{backend=\"{a_addr}\",cluster=\"app\"}}"
        )),
        Some(0.0),
        "still marked down: the connections were served by failing open"
    );
}

#[test]
fn dns_names_are_re_resolved_and_a_failed_lookup_keeps_the_last_addresses() {
    let port = free_port();
    let a = Backend::start_at("a", SocketAddr::from(([127, 0, 0, 1], port)));
    let b = Backend::start_at("b", SocketAddr::from(([127, 0, 0, 2], port)));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let write_hosts = |text: &str| {
        let tmp = dir.path().join("hosts.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &hosts).unwrap();
    };
    write_hosts("127.0.0.1 app.test\n");
    let mut config = ConfigBuilder::new(&[&a]);
    config.cluster_extra = "    resolve_interval: 100ms\n".into();
    let yaml = config
        .yaml()
        .replace(&format!("127.0.0.1:{port}"), &format!("app.test:{port}"));
    let baton = Baton::start_opts(
        &yaml,
        None,
        &[("BATON_HOSTS_FILE", hosts.to_str().unwrap())],
    );
    assert_eq!(connect_named(config.listen).1, "a");

    write_hosts("127.0.0.2 app.test\n");
    wait_until(Duration::from_secs(5), "the new address is used", || {
        connect_named(config.listen).1 == "b"
    });
    baton.wait_for_log("resolves to new addresses");

    // The name no longer resolves at all: the last addresses stay.
    write_hosts("# nothing\n");
    wait_until(Duration::from_secs(5), "a failed lookup logged", || {
        baton
            .log()
            .contains("lookup failed; keeping the last answer")
    });
    for _ in 0..5 {
        assert_eq!(connect_named(config.listen).1, "b");
    }
    drop(a);
    drop(b);
}

#[test]
fn a_real_dns_name_resolves_through_the_system_resolver() {
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    config.cluster_extra = "    resolve_interval: 100ms\n".into();
    let yaml = config.yaml().replace("127.0.0.1:", "localhost:").replace(
        &format!("listen: \"localhost:{}\"", config.listen.port()),
        &format!("listen: \"127.0.0.1:{}\"", config.listen.port()),
    );
    let yaml = yaml.replace(
        &format!("listen: \"localhost:{}\"", config.admin.port()),
        &format!("listen: \"127.0.0.1:{}\"", config.admin.port()),
    );
    let baton = Baton::start(&yaml);
    assert_eq!(connect_named(config.listen).1, "a");
    let status = baton.ctl(&["status", "--json"]).1;
    assert!(
        status.contains(&format!("localhost:{}", a.addr.port())),
        "{status}"
    );
}

#[test]
fn systemd_socket_activation_adopts_listeners_by_name() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let passed = std::net::TcpListener::bind(config.listen).unwrap();
    let fd = passed.as_raw_fd();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let log = dir.path().join("log");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        // $$ is the shell's pid, which baton keeps after exec.
        .arg("LISTEN_PID=$$ exec \"$0\" run -c \"$1\"")
        .arg(BATON)
        .arg(&path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web")
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; they put the listening
    // socket at fd 3 without close-on-exec, as systemd does.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it by hand then.
            let ok = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0) >= 0
            } else {
                nix::libc::dup2(fd, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(passed);
    wait_until(Duration::from_secs(10), "ready", || {
        matches!(http_get(config.admin, "/readyz"), Ok((200, _)))
    });
    assert_eq!(connect_named(config.listen).1, "a");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("adopted an inherited listening socket"),
        "{text}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

//! Live migration: an upgrade moves established plain TCP streams to the
//! new process, byte-exact, and the old process exits in seconds. Real
//! binary, real sockets; the successor is killed at chosen steps through
//! `BATON_TEST_MIGRATION_PAUSE` (it waits there, and says so in its log).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// `n` streams through baton to a naming echo backend, each checked once.
fn echo_streams(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let (mut s, _name) = connect_named(addr);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            round_trip(&mut s, i, 0);
            s
        })
        .collect()
}

/// One verified echo of a message naming stream `i` and round `round`.
fn round_trip(s: &mut TcpStream, i: usize, round: usize) {
    let message = format!("stream {i} round {round};");
    s.write_all(message.as_bytes()).unwrap();
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("stream {i} round {round}: {e}"));
    assert_eq!(back, message.as_bytes(), "stream {i} round {round}");
}

fn upgrade(baton: &Baton) -> String {
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "upgrade: {out}\n{}", baton.log());
    out
}

/// "N stream(s) moved, M stay" of `baton upgrade`'s answer.
fn moved_and_staying(out: &str) -> (u64, u64) {
    let number_before = |word: &str| -> u64 {
        let at = out.find(word).unwrap_or_else(|| panic!("{word} in {out}"));
        out[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {word} in {out}"))
    };
    (number_before("stream(s) moved"), number_before("stay"))
}

fn wait_gone(pid: i32, within: Duration, what: &str) {
    wait_until(within, what, || !pid_alive(pid));
}

#[test]
fn a_thousand_streams_move_and_the_old_process_exits_in_two_seconds() {
    let echo = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let mut streams = echo_streams(config.listen, 1000);
    // A few that keep flowing the whole time, verified chunk by chunk.
    let load = Load::start(config.listen, 0, 8);
    wait_until(Duration::from_secs(10), "the flowing streams run", || {
        load.stream_bytes.load(Ordering::Relaxed) > 8 * 4096
    });

    let released = Instant::now();
    let out = upgrade(&baton);
    let (moved, staying) = moved_and_staying(&out);
    assert_eq!((moved, staying), (1008, 0), "{out}");
    wait_gone(
        old,
        Duration::from_secs(2),
        "the old process exits within 2 s",
    );
    let exited_after = released.elapsed();
    let new = wait_new_pid(&baton, old);

    // Every stream goes on, byte-exact, through the new process alone.
    for (i, s) in streams.iter_mut().enumerate() {
        round_trip(s, i, 1);
    }
    assert!(
        sockets_of(new) >= 2 * 1008,
        "the successor holds both sockets of every stream: {}",
        sockets_of(new)
    );
    let m = baton.metrics();
    assert_eq!(
        metric_value(&m, "baton_connections_migrated_total{listener=\"web\"}"),
        Some(1008.0)
    );
    assert_eq!(
        metric_value(&m, "baton_connections_active{listener=\"web\"}"),
        Some(1008.0)
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "baton_backend_connections_active{{backend=\"{}\",cluster=\"app\"}}",
                echo.addr
            )
        ),
        Some(1008.0),
        "the balancer counts moved streams"
    );
    assert_eq!(
        metric_value(&m, "baton_connections_accepted_total{listener=\"web\"}"),
        Some(1008.0),
        "a moved stream is not accepted twice"
    );
    assert_eq!(
        metric_value(&m, "baton_migration_duration_seconds_count"),
        Some(1.0)
    );
    let errors = load.finish();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    eprintln!("old process gone {exited_after:?} after the upgrade began");

    // Streams end in the new process: one access-log line each, `migrated=1`.
    drop(streams);
    wait_until(Duration::from_secs(10), "streams end", || {
        baton.metric("baton_connections_active{listener=\"web\"}") == Some(0.0)
    });
    let moved_lines = || {
        baton
            .log()
            .lines()
            .filter(|l| l.contains("connection") && l.contains("migrated=1"))
            .count()
    };
    wait_until(
        Duration::from_secs(10),
        "one log line per moved stream",
        || moved_lines() >= 1008,
    );
    assert_eq!(moved_lines(), 1008, "one log line per moved stream");
}

/// A deterministic byte at position `i` of direction `dir` of stream `id`.
fn byte_at(id: u8, dir: u8, i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ id.wrapping_mul(31) ^ dir
}

/// A backend whose every connection sends an endless pattern (direction 1)
/// and checks what it reads against direction 0, counting both.
struct PatternBackend {
    addr: SocketAddr,
    errors: Arc<Mutex<Vec<String>>>,
}

impl PatternBackend {
    fn start(stop: Arc<AtomicBool>) -> PatternBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errs = errors.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut id_byte = [0u8; 1];
                let mut first = stream.try_clone().unwrap();
                if first.read_exact(&mut id_byte).is_err() {
                    continue;
                }
                let (errs, stop) = (errs.clone(), stop.clone());
                let writer = stream.try_clone().unwrap();
                let stop_w = stop.clone();
                thread::spawn(move || push_pattern(writer, id_byte[0], 1, &stop_w, None));
                thread::spawn(move || {
                    if let Err(e) = check_pattern(stream, id_byte[0], 0, None) {
                        errs.lock()
                            .unwrap()
                            .push(format!("backend side {}: {e}", id_byte[0]));
                    }
                });
            }
        });
        PatternBackend { addr, errors }
    }
}

/// Writes the pattern until `stop`, then FIN.
fn push_pattern(mut s: TcpStream, id: u8, dir: u8, stop: &AtomicBool, count: Option<&AtomicU64>) {
    let mut at = 0u64;
    let mut chunk = vec![0u8; 32 * 1024];
    while !stop.load(Ordering::Relaxed) {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = byte_at(id, dir, at + k as u64);
        }
        if s.write_all(&chunk).is_err() {
            return;
        }
        at += chunk.len() as u64;
        if let Some(c) = count {
            c.store(at, Ordering::Relaxed);
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Reads to the end, checking every byte; `progress` gets (bytes, longest
/// gap between two reads).
fn check_pattern(
    mut s: TcpStream,
    id: u8,
    dir: u8,
    progress: Option<(&AtomicU64, &AtomicU64)>,
) -> Result<u64, String> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut at = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("at byte {at}: {e}"))?;
        if n == 0 {
            return Ok(at);
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            if b != byte_at(id, dir, at + k as u64) {
                return Err(format!("byte {} differs", at + k as u64));
            }
        }
        at += n as u64;
        if let Some((bytes, gap)) = progress {
            let now = Instant::now();
            gap.fetch_max(
                now.duration_since(last).as_micros() as u64,
                Ordering::Relaxed,
            );
            last = now;
            bytes.store(at, Ordering::Relaxed);
        }
    }
}

#[test]
fn bulk_streams_cross_three_upgrades_byte_exact_both_ways() {
    let stop = Arc::new(AtomicBool::new(false));
    let backend = PatternBackend::start(stop.clone());
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend.addr, 1)];
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let baton = Baton::start(&config.yaml());

    const STREAMS: u8 = 3;
    let received: Vec<Arc<AtomicU64>> = (0..STREAMS).map(|_| Arc::default()).collect();
    let gaps: Vec<Arc<AtomicU64>> = (0..STREAMS).map(|_| Arc::default()).collect();
    let mut readers = Vec::new();
    for id in 0..STREAMS {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.write_all(&[id]).unwrap();
        let writer = s.try_clone().unwrap();
        let stop_w = stop.clone();
        thread::spawn(move || push_pattern(writer, id, 0, &stop_w, None));
        let (bytes, gap) = (received[id as usize].clone(), gaps[id as usize].clone());
        readers.push(thread::spawn(move || {
            check_pattern(s, id, 1, Some((&bytes, &gap)))
        }));
    }
    let total = || {
        received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut pid = baton.pid();
    for round in 0..3 {
        let before = total();
        wait_until(Duration::from_secs(30), "bulk flows", || {
            total() > before + 48 * 1024 * 1024
        });
        for g in &gaps {
            g.store(0, Ordering::Relaxed);
        }
        let out = upgrade(&baton);
        let (moved, _) = moved_and_staying(&out);
        assert_eq!(moved, u64::from(STREAMS), "round {round}: {out}");
        wait_gone(pid, Duration::from_secs(5), "the old process exits");
        pid = wait_new_pid(&baton, pid);
        let before = total();
        wait_until(Duration::from_secs(30), "bulk flows after the move", || {
            total() > before + 16 * 1024 * 1024
        });
        let longest = gaps
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .max()
            .unwrap();
        eprintln!(
            "round {round}: longest pause in a stream's flow across the move: {} ms",
            longest / 1000
        );
    }
    stop.store(true, Ordering::Relaxed);
    for (id, r) in readers.into_iter().enumerate() {
        let got = r
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client side {id}: {e}"));
        assert!(got > 0);
    }
    thread::sleep(Duration::from_millis(200));
    let errors = backend.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    eprintln!("moved {} MiB to clients in all", total() >> 20);
}

#[test]
fn half_closed_streams_keep_their_state_across_a_move() {
    // Backend: on "client-fin" streams, read to the end, wait for `go`,
    // answer and close; on "backend-fin" streams, say bye and FIN at once,
    // then record what the client still sends.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let go = Arc::new(AtomicBool::new(false));
    let late = Arc::new(Mutex::new(Vec::<u8>::new()));
    let saw_fin = Arc::new(AtomicBool::new(false));
    {
        let (go, late, saw_fin) = (go.clone(), late.clone(), saw_fin.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (go, late, saw_fin) = (go.clone(), late.clone(), saw_fin.clone());
                thread::spawn(move || {
                    let mut kind = [0u8; 1];
                    s.read_exact(&mut kind).unwrap();
                    if kind[0] == b'c' {
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).unwrap();
                        assert_eq!(got, b"hello");
                        saw_fin.store(true, Ordering::Relaxed);
                        while !go.load(Ordering::Relaxed) {
                            thread::sleep(Duration::from_millis(5));
                        }
                        s.write_all(b"answer after the move").unwrap();
                    } else {
                        s.write_all(b"bye").unwrap();
                        s.shutdown(Shutdown::Write).unwrap();
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).unwrap();
                        *late.lock().unwrap() = got;
                    }
                });
            }
        });
    }
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(addr, 1)];
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let baton = Baton::start(&config.yaml());
    let old = baton.pid();

    // Client FIN first: the backend still has to answer.
    let mut client_fin = TcpStream::connect(config.listen).unwrap();
    client_fin
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client_fin.write_all(b"chello").unwrap();
    client_fin.shutdown(Shutdown::Write).unwrap();
    wait_until(
        Duration::from_secs(5),
        "the backend sees the client's FIN",
        || saw_fin.load(Ordering::Relaxed),
    );
    // Backend FIN first: the client still sends.
    let mut backend_fin = TcpStream::connect(config.listen).unwrap();
    backend_fin
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    backend_fin.write_all(b"b").unwrap();
    let mut bye = Vec::new();
    backend_fin.read_to_end(&mut bye).unwrap();
    assert_eq!(bye, b"bye");

    let out = upgrade(&baton);
    assert_eq!(moved_and_staying(&out), (2, 0), "{out}");
    wait_gone(old, Duration::from_secs(2), "the old process exits");

    go.store(true, Ordering::Relaxed);
    let mut answer = Vec::new();
    client_fin.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"answer after the move");
    backend_fin.write_all(b"late words").unwrap();
    backend_fin.shutdown(Shutdown::Write).unwrap();
    wait_until(
        Duration::from_secs(5),
        "the backend reads the late words",
        || *late.lock().unwrap() == b"late words",
    );
}

#[test]
fn proxy_protocol_and_sni_passthrough_streams_move_with_their_client_address() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.listener_extra = "    proxy_protocol: { accept: true, send: v1 }\n".into();
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let sni_port = free_port();
    let yaml = config.with_more(
        &format!(
            "  - name: sni\n    listen: \"127.0.0.1:{sni_port}\"\n    cluster: app\n    sni_routes:\n      \"a.test\": app\n"
        ),
        "",
    );
    // The echo backend returns the PROXY v1 line baton sends first.
    let baton = Baton::start(&yaml);
    let old = baton.pid();

    let mut proxied = TcpStream::connect(config.listen).unwrap();
    proxied
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    proxied
        .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n")
        .unwrap();
    let mut reader = BufReader::new(proxied.try_clone().unwrap());
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    assert!(header.starts_with("PROXY TCP4 203.0.113.7 "), "{header}");

    let hello = client_hello("a.test", 0);
    let mut sni = TcpStream::connect(("127.0.0.1", sni_port)).unwrap();
    sni.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sni.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    sni.read_exact(&mut back).unwrap();
    assert_eq!(back, hello);

    let out = upgrade(&baton);
    assert_eq!(moved_and_staying(&out), (2, 0), "{out}");
    wait_gone(old, Duration::from_secs(2), "the old process exits");

    proxied.write_all(b"after\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n");
    sni.write_all(b"more").unwrap();
    let mut more = [0u8; 4];
    sni.read_exact(&mut more).unwrap();
    assert_eq!(&more, b"more");
    drop((proxied, reader, sni));
    wait_until(
        Duration::from_secs(10),
        "the moved streams' log lines",
        || {
            let log = baton.log();
            log.lines()
                .any(|l| l.contains("migrated=1") && l.contains("client=203.0.113.7:5555"))
                && log
                    .lines()
                    .any(|l| l.contains("migrated=1") && l.contains("sni=\"a.test\""))
        },
    );
}

#[test]
fn streams_of_a_listener_the_new_config_lacks_stay_and_drain() {
    let echo = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let api_port = free_port();
    let with_api = config.with_more(
        &format!("  - {{ name: api, listen: \"127.0.0.1:{api_port}\", cluster: app }}\n"),
        "",
    );
    let baton = Baton::start(&with_api);
    let old = baton.pid();
    let mut web = echo_streams(config.listen, 5);
    let mut api = echo_streams(SocketAddr::from(([127, 0, 0, 1], api_port)), 3);

    baton.write_config(&config.yaml());
    let out = upgrade(&baton);
    assert_eq!(moved_and_staying(&out), (5, 3), "{out}");
    let new = wait_new_pid(&baton, old);
    assert!(pid_alive(old), "the old process keeps the api streams");
    for (i, s) in web.iter_mut().enumerate() {
        round_trip(s, i, 1);
    }
    for (i, s) in api.iter_mut().enumerate() {
        round_trip(s, i, 1);
    }
    // The old process counts them; its report reaches the new one's /metrics.
    wait_until(Duration::from_secs(5), "3 streams counted as kept", || {
        baton.metric("baton_migration_failures_total{reason=\"not_in_config\"}") == Some(3.0)
    });
    drop(api);
    wait_gone(
        old,
        Duration::from_secs(5),
        "the old process exits once its streams end",
    );
    assert!(pid_alive(new));
}

#[test]
fn migrate_false_keeps_the_drain() {
    let echo = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "upgrade:\n  migrate: false\ndrain:\n  timeout: 5m\n".into();
    let baton = Baton::start(&config.yaml());
    let old = baton.pid();
    let mut streams = echo_streams(config.listen, 4);
    let out = upgrade(&baton);
    assert_eq!(moved_and_staying(&out), (0, 4), "{out}");
    wait_new_pid(&baton, old);
    for (i, s) in streams.iter_mut().enumerate() {
        round_trip(s, i, 1);
    }
    assert!(pid_alive(old), "the old process drains its streams");
    drop(streams);
    wait_gone(
        old,
        Duration::from_secs(5),
        "the old process exits once drained",
    );
}

/// The successor's pid, from the log line it writes when it pauses.
fn paused_successor(baton: &Baton, step: &str) -> i32 {
    let mut pid = 0;
    let said = format!("test pause: {}", step.replace(':', " batch "));
    wait_until(Duration::from_secs(20), step, || {
        let log = baton.log();
        pid = log
            .lines()
            .filter(|l| l.contains(&said))
            .filter_map(|l| {
                l.split("pid=")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
            })
            .next()
            .unwrap_or(0);
        pid != 0
    });
    pid
}

/// A baton whose successors stop at `step` of a migration (see the module
/// doc), with streams that could wait on a drain for minutes.
fn baton_pausing_at(step: &str) -> (Backend, ConfigBuilder, Baton) {
    let echo = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 5m\nupgrade:\n  migrate_timeout: 30s\n".into();
    let baton = Baton::start_opts(
        &config.yaml(),
        None,
        &[("BATON_TEST_MIGRATION_PAUSE", step)],
    );
    (echo, config, baton)
}

fn kill9(pid: i32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    wait_gone(pid, Duration::from_secs(5), "the killed successor is gone");
}

#[test]
fn a_successor_killed_before_it_answers_a_batch_leaves_every_stream_with_the_old_process() {
    for step in ["read:1", "answer:1"] {
        let (_echo, config, baton) = baton_pausing_at(step);
        let old = baton.pid();
        let mut streams = echo_streams(config.listen, 20);
        baton.signal("USR2");
        let successor = paused_successor(&baton, step);
        kill9(successor);
        // Every stream was resumed by the old process, byte-exact.
        for (i, s) in streams.iter_mut().enumerate() {
            round_trip(s, i, 1);
        }
        assert!(pid_alive(old), "{step}: the old process holds the streams");
        // The old process says it resumed them.
        baton.wait_for_log("they stay and drain here");
        let log = baton.log();
        // It took over before it died: the upgrade itself succeeded.
        assert!(
            !log.contains("upgrade rolled back"),
            "{step}: not counted as a failed upgrade:\n{log}"
        );
        drop(streams);
        wait_gone(
            old,
            Duration::from_secs(5),
            "the old process exits once drained",
        );
    }
}

#[test]
fn a_successor_killed_between_batches_keeps_what_it_committed_and_the_rest_stays() {
    let (_echo, config, baton) = baton_pausing_at("read:2");
    let old = baton.pid();
    // 125 streams fill a batch: 200 make at least two.
    let mut streams = echo_streams(config.listen, 200);
    baton.signal("USR2");
    let successor = paused_successor(&baton, "read:2");
    kill9(successor);
    let mut alive = 0;
    let mut dead = 0;
    for (i, s) in streams.iter_mut().enumerate() {
        let message = format!("stream {i} round 1;");
        if s.write_all(message.as_bytes()).is_err() {
            dead += 1;
            continue;
        }
        let mut back = vec![0u8; message.len()];
        match s.read_exact(&mut back) {
            Ok(()) => {
                assert_eq!(back, message.as_bytes(), "stream {i}: resumed byte-exact");
                alive += 1;
            }
            Err(_) => dead += 1,
        }
    }
    // The committed batch died with its process; the rest flows on.
    assert!(alive > 0 && dead > 0, "alive {alive}, dead {dead}");
    assert_eq!(alive + dead, 200);
    assert!(pid_alive(old));
    drop(streams);
    wait_gone(
        old,
        Duration::from_secs(5),
        "the old process exits once drained",
    );
}

#[test]
fn twenty_chained_upgrades_under_load_never_leave_more_than_two_processes() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let http = HttpBackend::start();
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.extra_top = "drain:\n  timeout: 5m\n".into();
    let (yaml, http_addr) = config.with_http_listener(&http);
    let baton = Baton::start(&yaml);
    let load = Load::start(config.listen, 4, 200);
    let keep_alive = KeepAlive::start(http_addr, 4, 50);
    let mut pids = vec![baton.pid()];
    for i in 0..20 {
        let out = upgrade(&baton);
        let new = wait_new_pid(&baton, *pids.last().unwrap());
        let old = *pids.last().unwrap();
        pids.push(new);
        wait_gone(
            old,
            Duration::from_secs(3),
            &format!("upgrade {i}: the old process exits ({out})"),
        );
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        assert_eq!(alive, vec![new], "upgrade {i}");
    }
    let streamed = load.stream_bytes.load(Ordering::Relaxed);
    let mut errors = load.finish();
    errors.extend(keep_alive.finish());
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(streamed > 0);
    let migrated = baton
        .metric("baton_connections_migrated_total{listener=\"web\"}")
        .unwrap_or(0.0);
    assert!(
        migrated >= 20.0 * 200.0,
        "every long stream moved every time: {migrated}"
    );
}

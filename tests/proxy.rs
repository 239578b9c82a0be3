//! The data path from outside: balancing order, bytes intact, half-close,
//! idle timeout, max_connections, and accept under fd exhaustion.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn weighted_round_robin_spreads_turns_smoothly() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut config = ConfigBuilder::new(&[&a, &b]);
    config.backends[0].1 = 3;
    let baton = Baton::start(&config.yaml());
    let order: Vec<String> = (0..8).map(|_| connect_named(config.listen).1).collect();
    assert_eq!(order, ["a", "a", "b", "a", "a", "a", "b", "a"]);
    drop(baton);
}

#[test]
fn ten_megabytes_arrive_intact_both_ways() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let baton = Baton::start(&config.yaml());

    let mut data = vec![0u8; 10 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for byte in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let stream = TcpStream::connect(config.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut received = Vec::with_capacity(data.len());
    (&stream).read_to_end(&mut received).unwrap();
    sender.join().unwrap();
    assert_eq!(received.len(), data.len());
    assert!(received == data, "echoed bytes differ");

    wait_until(Duration::from_secs(5), "byte counters", || {
        baton.metric("baton_bytes_received_total{listener=\"web\"}") == Some(data.len() as f64)
            && baton.metric("baton_bytes_sent_total{listener=\"web\"}") == Some(data.len() as f64)
    });
}

#[test]
fn client_fin_is_forwarded_while_the_backend_keeps_sending() {
    // The backend reads to EOF, then answers: only works if the client's
    // half-close reaches it while the other direction stays open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap();
        s.write_all(b"got ").unwrap();
        s.write_all(&request).unwrap();
    });
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend_addr, 1)];
    let _baton = Baton::start(&config.yaml());

    let mut client = TcpStream::connect(config.listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"question").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got question");
    server.join().unwrap();
}

#[test]
fn backend_fin_is_forwarded_while_the_client_keeps_sending() {
    // The backend says hello and closes its sending half at once, then
    // keeps reading what the client sends after that.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    });
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend_addr, 1)];
    let _baton = Baton::start(&config.yaml());

    let mut client = TcpStream::connect(config.listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = String::new();
    client.read_to_string(&mut hello).unwrap();
    assert_eq!(hello, "hello", "backend's FIN reached the client as EOF");
    client.write_all(b"after your FIN").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"after your FIN");
}

#[test]
fn an_answer_sent_just_before_a_backend_reset_reaches_the_client_whole() {
    // The backend answers and closes with SO_LINGER 0: its RST follows the
    // answer at once, mostly before baton has read the answer. The answer
    // still goes out whole, and only then does the stream end, as a
    // backend error.
    const ROUNDS: usize = 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        for round in 0..ROUNDS {
            let (mut s, _) = listener.accept().unwrap();
            let mut question = [0u8; 8];
            s.read_exact(&mut question).unwrap();
            s.write_all(&answer(round)).unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    fn answer(round: usize) -> Vec<u8> {
        (0..1000 + round * 97).map(|i| (i % 251) as u8).collect()
    }
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend_addr, 1)];
    let baton = Baton::start(&config.yaml());

    for round in 0..ROUNDS {
        let mut client = TcpStream::connect(config.listen).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"question").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The close that follows may be a FIN or a reset: the bytes
        // before it are what counts.
        while let Ok(n @ 1..) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, answer(round), "round {round}: the answer, whole");
    }
    server.join().unwrap();
    wait_until(
        Duration::from_secs(5),
        "an access line for every round, each a backend error with the reset's own message",
        || {
            let log = baton.log();
            let ends: Vec<_> = log
                .lines()
                .filter(|l| l.contains("backend_addr=") && l.contains(" sent="))
                .collect();
            ends.len() == ROUNDS
                && ends
                    .iter()
                    .all(|l| l.contains("backend_error") && l.contains("os error 104"))
        },
    );
}

#[test]
fn an_answer_that_ends_with_the_fin_reaches_the_client_in_one_segment() {
    // The backend sends its answer and its FIN in one segment (MSG_MORE,
    // then shutdown), as nginx does for `Connection: close`. baton passes
    // both on in one segment too: the client counts, in TCP_INFO, as many
    // segments through baton as straight from the backend (SYN-ACK, the ACK
    // of its request, answer and FIN), not one more for a FIN of its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    const ROUNDS: usize = 10;
    let server = thread::spawn(move || {
        for _ in 0..2 * ROUNDS {
            let (mut s, _) = listener.accept().unwrap();
            let mut question = [0u8; 8];
            s.read_exact(&mut question).unwrap();
            socket2::SockRef::from(&s)
                .send_with_flags(b"the answer", nix::libc::MSG_MORE)
                .unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend_addr, 1)];
    let _baton = Baton::start(&config.yaml());

    let segments_in = |to: SocketAddr| {
        let mut client = TcpStream::connect(to).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"question").unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"the answer");
        tcp_info(&client).tcpi_segs_in
    };
    for round in 0..ROUNDS {
        let direct = segments_in(backend_addr);
        let proxied = segments_in(config.listen);
        assert_eq!(
            proxied, direct,
            "round {round}: segments the client received through baton and directly"
        );
    }
    server.join().unwrap();
}

#[test]
fn both_sockets_of_a_proxied_stream_have_nagle_off() {
    // Nagle's algorithm on either of baton's sockets would hold a small
    // write back until the last one is acknowledged: up to a delayed ACK's
    // 40 ms per exchange. The sockets are baton's own; this process opens
    // the very same ones (pidfd_getfd) to read their option.
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let baton = Baton::start(&config.yaml());
    let mut client = TcpStream::connect(config.listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"x").unwrap();
    let mut back = [0u8; 1];
    client.read_exact(&mut back).unwrap();

    let ours = client.local_addr().unwrap();
    let mut client_side = None;
    let mut backend_side = None;
    for socket in sockets_of(baton.pid()) {
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let (local, peer) = (local.as_socket(), peer.as_socket());
        if local == Some(config.listen) && peer == Some(ours) {
            client_side = Some(socket.tcp_nodelay().unwrap());
        } else if peer == Some(echo.addr) {
            backend_side = Some(socket.tcp_nodelay().unwrap());
        }
    }
    assert_eq!(client_side, Some(true), "the client's socket in baton");
    assert_eq!(backend_side, Some(true), "the backend's socket in baton");
}

/// Every socket process `pid` holds, opened here as well (`pidfd_getfd`:
/// the same open socket, so its options are the process's own).
fn sockets_of(pid: i32) -> Vec<socket2::Socket> {
    use nix::libc::{SYS_pidfd_getfd, SYS_pidfd_open, c_int, syscall};
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls on integers; each fd they return is owned by
    // exactly one value below.
    let pidfd = unsafe { syscall(SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as c_int) };
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<c_int>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        use std::os::fd::AsRawFd;
        let dup = unsafe { syscall(SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup >= 0 {
            sockets.push(unsafe { socket2::Socket::from_raw_fd(dup as c_int) });
        }
    }
    sockets
}

/// The kernel's TCP_INFO of a connected socket.
fn tcp_info(socket: &TcpStream) -> nix::libc::tcp_info {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero tcp_info is a valid value (plain integers), and
    // getsockopt writes at most `len` bytes into it.
    let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&info) as nix::libc::socklen_t;
    // SAFETY: the fd is open for as long as `socket` is borrowed; the
    // pointer and length describe `info`.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            (&mut info as *mut nix::libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.cluster_extra = "    idle_timeout: 300ms\n".into();
    let _baton = Baton::start(&config.yaml());

    let mut client = TcpStream::connect(config.listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Activity keeps it open past the timeout.
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(100));
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
    }
    let idle_from = Instant::now();
    assert!(closed_by_peer(&mut client), "connection closed");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

#[test]
fn max_connections_closes_extra_clients_at_once() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.listener_extra = "    max_connections: 2\n".into();
    let baton = Baton::start(&config.yaml());

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        held.push(s);
    }
    let mut extra = TcpStream::connect(config.listen).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    assert!(closed_by_peer(&mut extra), "extra client is closed");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at once, not left waiting"
    );
    wait_until(Duration::from_secs(5), "rejection counted", || {
        baton
            .metric("baton_connections_rejected_total{listener=\"web\",reason=\"max_connections\"}")
            == Some(1.0)
    });
    assert_eq!(
        baton.metric("baton_connections_active{listener=\"web\"}"),
        Some(2.0)
    );

    // A freed place is usable again.
    drop(held.pop());
    wait_until(Duration::from_secs(5), "a place frees up", || {
        baton.metric("baton_connections_active{listener=\"web\"}") == Some(1.0)
    });
    let mut again = TcpStream::connect(config.listen).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    again.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    again.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn fd_exhaustion_backs_off_without_spinning_and_recovers() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    // A hard limit of 48 descriptors: baton cannot raise it, and about a
    // dozen held connections exhaust it.
    let baton = Baton::start_with(&config.yaml(), Some("ulimit -n 48"));
    let mut clients = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = TcpStream::connect_timeout(&config.listen, Duration::from_secs(1)) {
            clients.push(s);
        }
    }
    // Let the accept loop meet EMFILE for a while, and measure its CPU.
    let cpu_before = cpu_seconds(baton.pid());
    let watch = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "a second under fd exhaustion",
        || watch.elapsed() >= Duration::from_secs(1),
    );
    let cpu = cpu_seconds(baton.pid()) - cpu_before;
    assert!(cpu < 0.5, "accept loop spun: {cpu} CPU-s in 1 s");
    drop(clients);

    // Served again once descriptors are free.
    wait_until(
        Duration::from_secs(10),
        "service after fd exhaustion",
        || {
            let Ok(mut s) = TcpStream::connect(config.listen) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 2];
            s.write_all(b"ok").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ok"
        },
    );
    assert!(http_get(baton.admin, "/healthz").is_ok());
    // The test did exhaust descriptors.
    baton.wait_for_log("Too many open files");
}

/// Out of descriptors, connects to the backend fail with EMFILE: that is
/// this machine's limit, not the backend's fault, so the backend stays
/// healthy and serves the moment descriptors are free again.
#[test]
fn local_connect_errors_never_mark_a_backend_down() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    // No retry, so every local error is one failure in a row (passive
    // ejection would follow if they counted).
    config.cluster_extra = "    retries: 0\n".into();
    let backend = format!("{}", echo.addr);
    let healthy = format!("baton_backend_healthy{{backend=\"{backend}\",cluster=\"app\"}}");
    let local = format!(
        "baton_backend_connect_errors_total{{backend=\"{backend}\",cluster=\"app\",reason=\"local\"}}"
    );
    // Each proxied connection takes two descriptors: the connect fails
    // (rather than the accept) only when an odd number is left, so one of
    // two neighbouring limits shows it.
    for limit in [47, 48] {
        let baton = Baton::start_with(&config.yaml(), Some(&format!("ulimit -n {limit}")));
        let mut clients = Vec::new();
        for _ in 0..40 {
            if let Ok(s) = TcpStream::connect_timeout(&config.listen, Duration::from_secs(1)) {
                clients.push(s);
            }
        }
        wait_until(Duration::from_secs(5), "exhausted", || {
            baton.log().contains("Too many open files")
        });
        drop(clients);
        let mut text = String::new();
        wait_until(
            Duration::from_secs(10),
            "admin answers again",
            || match http_get(baton.admin, "/metrics") {
                Ok((200, t)) => {
                    text = t;
                    true
                }
                _ => false,
            },
        );
        if metric_value(&text, &local).unwrap_or(0.0) == 0.0 {
            continue;
        }
        assert_eq!(metric_value(&text, &healthy), Some(1.0), "{text}");
        // The dropped clients' connections are gone (their descriptors
        // free again), so the next one has what it needs.
        wait_until(Duration::from_secs(10), "old connections closed", || {
            baton.metric("baton_connections_active{listener=\"web\"}") == Some(0.0)
        });
        // Served at once: no ejection back-off to wait out.
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 2];
        s.write_all(b"ok").unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
        assert!(!baton.log().contains("backend ejected"), "{}", baton.log());
        return;
    }
    panic!("no limit made a backend connect fail with EMFILE");
}

/// A wave of idle connections raises baton's memory; once they close, the
/// memory goes back to the kernel (not kept by the allocator for later).
#[test]
fn memory_of_a_wave_of_connections_goes_back_once_they_close() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let baton = Baton::start(&config.yaml());
    // Warm up: pools and lazily made state are not what this is about.
    for _ in 0..50 {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
    }
    wait_until(
        Duration::from_secs(10),
        "warm-up connections closed",
        || baton.metric("baton_connections_active{listener=\"web\"}") == Some(0.0),
    );
    let before = baton.rss_kib();
    let mut open = Vec::new();
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        open.push(s);
    }
    let peak = baton.rss_kib();
    assert!(
        peak >= before + 2_000,
        "1,000 connections: {before} → {peak} KiB"
    );
    drop(open);
    wait_until(Duration::from_secs(10), "connections closed", || {
        baton.metric("baton_connections_active{listener=\"web\"}") == Some(0.0)
    });
    // Most of what the wave took comes back within a sweep or two.
    wait_until(Duration::from_secs(10), "memory given back", || {
        baton.rss_kib() < before + (peak - before) / 3
    });
}

/// A client that sends with its connect, before any backend is connected:
/// when the first backend refuses, the retry gets every byte, in order, and
/// the counters and access-log lines count each byte once.
#[test]
fn bytes_sent_with_the_connect_survive_a_refused_backend_and_count_once() {
    let live = Backend::start("b");
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = ConfigBuilder::new(&[&live]);
    config.backends = vec![(dead, 1), (live.addr, 1)];
    config.cluster_extra = "    retries: 1\n".into();
    let baton = Baton::start(&config.yaml());

    let mut total = 0;
    // Sizes below, at and past one copy buffer (32 KiB).
    let sizes: Vec<usize> = (0..8).map(|i| 10_007 + i * 7_001).collect();
    for (i, &len) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
        let mut stream = TcpStream::connect(config.listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&payload).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert_eq!(
            &answer[..2],
            b"b\n",
            "connection {i} reached the live backend"
        );
        assert!(answer[2..] == payload[..], "connection {i}: bytes differ");
        total += len;
    }

    let refused = format!(
        "baton_backend_connect_errors_total{{backend=\"{dead}\",cluster=\"app\",reason=\"refused\"}}"
    );
    assert!(
        baton.metric(&refused).unwrap_or(0.0) >= 1.0,
        "the dead backend was tried"
    );
    wait_until(Duration::from_secs(5), "byte counters", || {
        baton.metric("baton_bytes_received_total{listener=\"web\"}") == Some(total as f64)
    });
    for len in sizes {
        baton.wait_for_log(&format!("received={len} "));
    }
}

/// One worker (the current-thread scheduler, as the benchmarks and
/// single-core hosts run baton): short connections and long streams at
/// once, every byte checked, no client error.
#[test]
fn one_worker_serves_short_connections_and_long_streams_together() {
    let backend = Backend::start("a");
    let config = ConfigBuilder::new(&[&backend]);
    let baton = Baton::start_opts(&config.yaml(), None, &[("TOKIO_WORKER_THREADS", "1")]);
    let load = Load::start(config.listen, 6, 3);
    wait_until(Duration::from_secs(10), "traffic of both kinds", || {
        load.short_done.load(std::sync::atomic::Ordering::Relaxed) >= 500
            && load.stream_bytes.load(std::sync::atomic::Ordering::Relaxed) >= 1 << 20
    });
    let errors = load.finish();
    assert!(errors.is_empty(), "client failures: {errors:?}");
    assert!(
        baton.metric("baton_connections_accepted_total{listener=\"web\"}") >= Some(503.0),
        "every connection went through baton"
    );
}

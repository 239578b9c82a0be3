//! Graceful stop: open streams finish, the deadline is kept, a second signal
//! stops at once, the pid file comes and goes.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

#[test]
fn sigterm_lets_an_open_stream_finish_then_exits_0() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let mut baton = Baton::start(&config.yaml());
    let pid_file = baton.path("baton.pid");
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), baton.pid().to_string());

    let mut stream = TcpStream::connect(config.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    echo_once(&mut stream, b"before");
    baton.signal("TERM");
    wait_until(Duration::from_secs(5), "/readyz 503 while draining", || {
        matches!(http_get(baton.admin, "/readyz"), Ok((503, _)))
    });
    // New connections are refused once the listener is closed.
    wait_until(Duration::from_secs(5), "listener closed", || {
        TcpStream::connect(config.listen).is_err()
    });
    // The open stream still works in both directions.
    for i in 0..10 {
        echo_once(&mut stream, format!("during {i}").as_bytes());
    }
    assert!(
        baton.child.try_wait().unwrap().is_none(),
        "still running while a stream is open"
    );
    drop(stream);
    let status = baton.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(!pid_file.exists(), "pid file removed on stop");
}

#[test]
fn drain_timeout_closes_what_remains_and_exits_0() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.extra_top = "drain:\n  timeout: 600ms\n".into();
    let mut baton = Baton::start(&config.yaml());
    let mut stream = TcpStream::connect(config.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut stream, b"hello");

    let signalled = Instant::now();
    baton.signal("TERM");
    let closed = closed_by_peer(&mut stream);
    let closed_after = signalled.elapsed();
    assert!(closed, "stream closed by the drain deadline");
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    let status = baton.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        baton.log().contains("forced=1"),
        "forced close logged:\n{}",
        baton.log()
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let mut baton = Baton::start(&config.yaml());
    let mut stream = TcpStream::connect(config.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_once(&mut stream, b"hello");
    baton.signal("TERM");
    wait_until(Duration::from_secs(5), "draining", || {
        matches!(http_get(baton.admin, "/readyz"), Ok((503, _)))
    });
    let second = Instant::now();
    baton.signal("INT");
    let status = baton.wait_exit(Duration::from_secs(5));
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    assert!(closed_by_peer(&mut stream), "stream cut");
}

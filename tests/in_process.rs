//! baton run in-process through its library seam, `run(config, start,
//! options, shutdown)`, on tokio's paused clock: an hour of drain passes in
//! no time, and the stream still open at the deadline is cut.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{free_port as port, run_in_process, tokio_echo_backend as echo_backend};

async fn get(admin: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_hour_of_drain_passes_on_a_paused_clock_and_cuts_the_stream() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (port(), port());
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:{admin}\ncontrol:\n  socket: baton.sock\ndrain:\n  timeout: 1h\n\
         listeners:\n  - {{ name: web, listen: \"127.0.0.1:{listen}\", cluster: app }}\n\
         clusters:\n  - name: app\n    idle_timeout: 2h\n    backends: [ {{ address: \"{backend}\" }} ]\n"
    );
    let (run, shutdown) = run_in_process(dir.path(), &yaml);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut ready = false;
    for _ in 0..1000 {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "baton ready in-process");

    let mut client = TcpStream::connect(("127.0.0.1", listen)).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");

    let real = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    shutdown.cancel();
    // While draining, admin still answers: the stream is open.
    let metrics = get(admin, "/metrics").await;
    assert!(
        metrics.contains("baton_connections_active{listener=\"web\"} 1"),
        "{metrics}"
    );
    run.await.unwrap().unwrap();
    let drained = virtual_start.elapsed();
    assert!(drained >= Duration::from_secs(3600), "{drained:?}");
    assert!(real.elapsed() < Duration::from_secs(30), "paused clock");
    let mut rest = Vec::new();
    let cut = match client.read_to_end(&mut rest).await {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(cut, "the stream was cut at the deadline");
}

//! PROXY protocol to and from baton, and SNI routing without termination.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// A backend that reports the first `n` bytes of every connection (or all
/// of them, up to the client's FIN), then answers `ok`.
fn recording_backend(n: usize) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while got.len() < n {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = tx.send(got);
                let _ = s.write_all(b"ok");
            });
        }
    });
    (addr, rx)
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        _ => unreachable!(),
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn exchange(addr: SocketAddr, first: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(first).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = vec![0u8; 2];
    let _ = s.read_exact(&mut answer);
    (s, answer)
}

#[test]
fn send_v1_and_v2_carry_the_client_address_exactly() {
    let (backend, got) = recording_backend(usize::MAX);
    for (send, ipv6) in [("v1", false), ("v2", false), ("v1", true), ("v2", true)] {
        let mut config = ConfigBuilder::new(&[]);
        config.backends = vec![(backend, 1)];
        if ipv6 {
            config.listen = format!("[::1]:{}", free_port()).parse().unwrap();
        }
        config.listener_extra = format!("    proxy_protocol: {{ send: {send} }}\n");
        let _baton = Baton::start(&config.yaml());
        let (client, answer) = exchange(config.listen, b"hello");
        assert_eq!(answer, b"ok");
        let header = got.recv_timeout(Duration::from_secs(5)).unwrap();
        let me = client.local_addr().unwrap();
        let expected = if send == "v1" {
            let family = if ipv6 { "TCP6" } else { "TCP4" };
            format!(
                "PROXY {family} {} {} {} {}\r\nhello",
                me.ip(),
                config.listen.ip(),
                me.port(),
                config.listen.port()
            )
            .into_bytes()
        } else {
            [v2(me, config.listen), b"hello".to_vec()].concat()
        };
        assert_eq!(header, expected, "{send} ipv6={ipv6}");
    }
}

#[test]
fn an_accepted_header_is_the_client_for_logs_hashing_and_sending_on() {
    let (backend, got) = recording_backend(usize::MAX);
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend, 1)];
    config.listener_extra = "    proxy_protocol: { accept: true, send: v1 }\n".into();
    let baton = Baton::start(&config.yaml());
    let claimed: SocketAddr = "203.0.113.7:5555".parse().unwrap();
    let header = v2(claimed, "198.51.100.1:443".parse().unwrap());
    let (_c, answer) = exchange(config.listen, &[header, b"payload".to_vec()].concat());
    assert_eq!(answer, b"ok");
    let seen = got.recv_timeout(Duration::from_secs(5)).unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.starts_with("PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n"),
        "{seen}"
    );
    wait_until(
        Duration::from_secs(5),
        "access log names the real client",
        || baton.log().contains("client=203.0.113.7:5555"),
    );
    // v1 in, and LOCAL (an upstream's health check): both proxied.
    let (_c, answer) = exchange(
        config.listen,
        b"PROXY TCP4 192.0.2.9 192.0.2.1 4000 80\r\nx",
    );
    assert_eq!(answer, b"ok");
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let (_c, answer) = exchange(config.listen, &[local, b"health".to_vec()].concat());
    assert_eq!(answer, b"ok");
}

#[test]
fn hash_source_ip_uses_the_address_from_the_header() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let mut config = ConfigBuilder::new(&refs);
    config.listener_extra = "    proxy_protocol: { accept: true }\n".into();
    config.cluster_extra = "    balance: hash_source_ip\n".into();
    let _baton = Baton::start(&config.yaml());
    let name_for = |ip: &str| {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("PROXY TCP4 {ip} 10.0.0.1 1000 80\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
        line.trim().to_string()
    };
    let mut distinct = std::collections::HashSet::new();
    for i in 1..=40 {
        let ip = format!("198.51.100.{i}");
        let first = name_for(&ip);
        assert_eq!(name_for(&ip), first, "{ip} keeps its backend");
        distinct.insert(first);
    }
    assert!(distinct.len() >= 3, "header addresses spread: {distinct:?}");
}

#[test]
fn malformed_headers_cost_only_their_connection() {
    let echo = Backend::echo();
    let mut config = ConfigBuilder::new(&[&echo]);
    config.listener_extra = "    proxy_protocol: { accept: true, timeout: 300ms }\n".into();
    let baton = Baton::start(&config.yaml());
    let good_header = v2(
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
    );
    let (mut good, _) = {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&good_header).unwrap();
        s.write_all(b"ab").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        (s, b)
    };
    let mut bad_family = good_header.clone();
    bad_family[13] = 0x12;
    let mut bad_length = good_header.clone();
    bad_length[15] = 2;
    let mut bad_version = good_header.clone();
    bad_version[12] = 0x11;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "no header at all",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            false,
        ),
        (
            "wrong signature",
            b"\r\n\r\n\0\r\nQUIX\nxxxx".to_vec(),
            false,
        ),
        ("truncated v2", good_header[..20].to_vec(), true),
        ("bad family", [bad_family, b"x".to_vec()].concat(), false),
        (
            "short address block",
            [bad_length, b"x".to_vec()].concat(),
            false,
        ),
        ("bad version", bad_version, false),
        (
            "v1 without CRLF",
            [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2".to_vec(), vec![b'x'; 100]].concat(),
            false,
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_vec(),
            false,
        ),
        ("slow header", b"PROXY TCP4".to_vec(), true),
    ];
    for (i, (what, bytes, _slow)) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(config.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        assert!(closed_by_peer(&mut s), "{what}: closed");
        wait_until(Duration::from_secs(5), what, || {
            baton.metric(
                "baton_connections_rejected_total{listener=\"web\",reason=\"proxy_protocol\"}",
            ) == Some((i + 1) as f64)
        });
    }
    good.write_all(b"cd").unwrap();
    let mut b = [0u8; 2];
    good.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"cd");
}

fn sni_config(backends: &[(&str, &Backend)], default: Option<&Backend>) -> (ConfigBuilder, String) {
    let config = ConfigBuilder::new(&[]);
    let mut yaml = format!(
        "admin:\n  listen: \"{}\"\ncontrol:\n  socket: baton.sock\nlisteners:\n  - name: web\n    listen: \"{}\"\n",
        config.admin, config.listen
    );
    if default.is_some() {
        yaml.push_str("    cluster: fallback\n");
    }
    yaml.push_str("    sni_routes:\n");
    for (i, (name, _)) in backends.iter().enumerate() {
        yaml.push_str(&format!("      \"{name}\": c{i}\n"));
    }
    yaml.push_str("clusters:\n");
    for (i, (_, b)) in backends.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ name: c{i}, backends: [ {{ address: \"{}\" }} ] }}\n",
            b.addr
        ));
    }
    if let Some(d) = default {
        yaml.push_str(&format!(
            "  - {{ name: fallback, backends: [ {{ address: \"{}\" }} ] }}\n",
            d.addr
        ));
    }
    (config, yaml)
}

/// Sends `hello` in `pieces` segments; returns the backend's name and what
/// came back after it (the echo of the hello).
fn route_hello(addr: SocketAddr, hello: &[u8], pieces: usize) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for chunk in hello.chunks(hello.len().div_ceil(pieces)) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let newline = all
        .iter()
        .position(|&b| b == b'\n')
        .expect("the backend's name line");
    let name = String::from_utf8_lossy(&all[..newline]).to_string();
    (name, all[newline + 1..].to_vec())
}

#[test]
fn sni_routes_exact_wildcard_and_default_with_bytes_intact() {
    let (a, w, d) = (
        Backend::start("a"),
        Backend::start("w"),
        Backend::start("d"),
    );
    let (config, yaml) = sni_config(&[("a.test", &a), ("*.wild.test", &w)], Some(&d));
    let _baton = Baton::start(&yaml);
    for (name, want) in [
        ("a.test", "a"),
        ("x.wild.test", "w"),
        ("other.test", "d"),
        ("wild.test", "d"),
    ] {
        let hello = client_hello(name, 200);
        let (served, echoed) = route_hello(config.listen, &hello, 1);
        assert_eq!(served, want, "{name}");
        assert_eq!(echoed, hello, "{name}: bytes intact");
    }
    // Split across segments, and a post-quantum-sized hello.
    let hello = client_hello("a.test", 300);
    assert_eq!(
        route_hello(config.listen, &hello, 4),
        ("a".to_string(), hello.clone())
    );
    let big = client_hello("x.wild.test", 9000);
    assert_eq!(
        route_hello(config.listen, &big, 3),
        ("w".to_string(), big.clone())
    );
}

#[test]
fn sni_without_a_match_or_default_is_closed_and_counted() {
    let a = Backend::start("a");
    let (config, yaml) = sni_config(&[("a.test", &a)], None);
    let baton = Baton::start(&yaml);
    let mut s = TcpStream::connect(config.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&client_hello("nope.test", 0)).unwrap();
    assert!(closed_by_peer(&mut s), "closed without a route");
    wait_until(Duration::from_secs(5), "sni_no_route counted", || {
        baton.metric("baton_connections_rejected_total{listener=\"web\",reason=\"sni_no_route\"}")
            == Some(1.0)
    });
    assert_eq!(
        route_hello(config.listen, &client_hello("a.test", 0), 1).0,
        "a"
    );
}

#[test]
fn sni_routing_works_with_proxy_protocol_send() {
    let (backend, got) = recording_backend(60);
    let a = Backend::echo();
    let (config, yaml) = sni_config(&[("a.test", &a)], None);
    let yaml = yaml
        .replace(
            "    sni_routes:\n",
            "    proxy_protocol: { send: v1 }\n    sni_routes:\n",
        )
        .replace(&a.addr.to_string(), &backend.to_string());
    let _baton = Baton::start(&yaml);
    let hello = client_hello("a.test", 0);
    let mut s = TcpStream::connect(config.listen).unwrap();
    s.write_all(&hello).unwrap();
    let seen = got.recv_timeout(Duration::from_secs(5)).unwrap();
    let me = s.local_addr().unwrap();
    let header = format!(
        "PROXY TCP4 127.0.0.1 {} {} {}\r\n",
        config.listen.ip(),
        me.port(),
        config.listen.port()
    );
    assert!(
        seen.starts_with(header.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(&seen[header.len()..], &hello[..seen.len() - header.len()]);
}

//! TLS termination and TLS to backends, with certificates made by the test.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, SignatureScheme,
    StreamOwned,
};
use support::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes `<file>.pem` and `<file>.key` for a leaf with CN `cn` and SANs.
fn leaf(ca: &Ca, dir: &Path, file: &str, cn: &str, sans: &[&str], expired: bool) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
}

/// The civil date `days` from today (UTC), for certificate lifetimes.
fn date_in(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant).
    let z = now / 86_400 + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// A leaf that expires `days` from now.
fn leaf_expiring(ca: &Ca, dir: &Path, file: &str, cn: &str, days: i64) {
    let mut params = CertificateParams::new(vec![cn.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let (y, m, d) = date_in(-30);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date_in(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
}

/// Accepts any certificate: the tests look at which one was served.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, sni: &str, config: &Arc<ClientConfig>) -> Tls {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    // The echo backend: what we send comes back.
    stream.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hi");
    stream
}

/// The common name of the certificate the server presented.
fn served_cn(stream: &Tls) -> String {
    let der = &stream.conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn tls_config(config: &ConfigBuilder, certs: &[&str], extra: &str) -> String {
    let mut listener = String::from("    tls:\n      certificates:\n");
    for c in certs {
        listener.push_str(&format!("        - {{ cert: {c}.pem, key: {c}.key }}\n"));
    }
    listener.push_str(extra);
    let config = ConfigBuilder {
        admin: config.admin,
        listen: config.listen,
        extra_top: config.extra_top.clone(),
        listener_extra: listener,
        cluster_extra: config.cluster_extra.clone(),
        backends: config.backends.clone(),
    };
    config.yaml()
}

/// baton terminating TLS for `site.test` (one certificate, `extra` lines
/// added to its `tls:` block) in front of `echo`.
fn site_baton(echo: &Backend, extra: &str) -> (ConfigBuilder, Baton) {
    let config = ConfigBuilder::new(&[echo]);
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test ca");
    leaf(&ca, dir.path(), "site", "site.test", &["site.test"], false);
    let baton = start_in(dir, &tls_config(&config, &["site"], extra));
    (config, baton)
}

/// Starts baton in a folder that already holds the certificates.
fn start_in(dir: tempfile::TempDir, yaml: &str) -> Baton {
    Baton::start_in(dir, yaml)
}

#[test]
fn each_sni_name_gets_its_certificate_and_the_first_is_the_default() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test ca");
    leaf(
        &ca,
        dir.path(),
        "default",
        "default.test",
        &["default.test"],
        false,
    );
    leaf(&ca, dir.path(), "a", "a.test", &["a.test"], false);
    leaf(&ca, dir.path(), "wild", "wild", &["*.wild.test"], false);
    let baton = start_in(dir, &tls_config(&config, &["default", "a", "wild"], ""));
    let client = client_config(&[&rustls::version::TLS13]);
    assert_eq!(
        served_cn(&tls_connect(config.listen, "a.test", &client)),
        "a.test"
    );
    assert_eq!(
        served_cn(&tls_connect(config.listen, "x.wild.test", &client)),
        "wild"
    );
    assert_eq!(
        served_cn(&tls_connect(config.listen, "unknown.test", &client)),
        "default.test"
    );
    // An IP address as the server name: rustls sends no SNI.
    assert_eq!(
        served_cn(&tls_connect(config.listen, "127.0.0.1", &client)),
        "default.test"
    );
    let expiry = baton.metrics();
    assert!(
        expiry.contains(
            "baton_tls_certificate_expiry_timestamp_seconds{cert=\"a.pem\",listener=\"web\"}"
        ),
        "{expiry}"
    );
}

#[test]
fn tls_1_2_and_1_3_both_work_and_alpn_is_negotiated() {
    let echo = Backend::echo();
    let (config, baton) = site_baton(&echo, "      alpn: [h2, http/1.1]\n");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut cfg = (*client_config(&[version])).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let stream = tls_connect(config.listen, "site.test", &Arc::new(cfg));
        assert_eq!(stream.conn.protocol_version(), Some(version.version));
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    }
    wait_until(Duration::from_secs(5), "access log names the ALPN", || {
        baton.log().contains("alpn=\"http/1.1\"") || baton.log().contains("alpn=http/1.1")
    });
}

#[test]
fn a_client_offering_none_of_our_alpn_protocols_is_served_without_alpn() {
    let echo = Backend::echo();
    let (config, baton) = site_baton(&echo, "      alpn: [h2, http/1.1]\n");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut cfg = (*client_config(&[version])).clone();
        cfg.alpn_protocols = vec![b"spdy/3".to_vec(), b"imap".to_vec()];
        // tls_connect echoes through the stream: served, not refused.
        let stream = tls_connect(config.listen, "site.test", &Arc::new(cfg));
        assert_eq!(stream.conn.alpn_protocol(), None, "no ALPN agreed");
        // One that overlaps still gets its protocol.
        let mut cfg = (*client_config(&[version])).clone();
        cfg.alpn_protocols = vec![b"imap".to_vec(), b"h2".to_vec()];
        let stream = tls_connect(config.listen, "site.test", &Arc::new(cfg));
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    assert_eq!(
        baton.metric("baton_connections_rejected_total{listener=\"web\",reason=\"tls_handshake\"}"),
        Some(0.0),
        "no handshake counted as failed"
    );
}

#[test]
fn session_resumption_can_be_refused() {
    let echo = Backend::echo();
    for (resume, want) in [(true, HandshakeKind::Resumed), (false, HandshakeKind::Full)] {
        let (config, _baton) = site_baton(&echo, &format!("      session_resumption: {resume}\n"));
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            // One client config = one session cache, shared by both connections.
            let client = client_config(&[version]);
            let mut first = tls_connect(config.listen, "site.test", &client);
            // TLS 1.3 tickets arrive after the handshake: read them.
            first.conn.send_close_notify();
            let _ = first.flush();
            let mut rest = Vec::new();
            let _ = first.read_to_end(&mut rest);
            let second = tls_connect(config.listen, "site.test", &client);
            assert_eq!(
                second.conn.handshake_kind(),
                Some(want),
                "resumption {resume}, {version:?}"
            );
        }
    }
}

#[test]
fn bad_handshakes_cost_only_their_client() {
    let echo = Backend::echo();
    let (config, baton) = site_baton(&echo, "      handshake_timeout: 300ms\n");
    let client = client_config(&[&rustls::version::TLS13]);
    let good = tls_connect(config.listen, "site.test", &client);

    let closed = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        // Whatever comes (an alert at most), the connection then ends.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let mut garbage = TcpStream::connect(config.listen).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    closed(garbage);
    let mut truncated = TcpStream::connect(config.listen).unwrap();
    // A TLS handshake record header promising more than is sent.
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    closed(truncated);
    let silent = TcpStream::connect(config.listen).unwrap();
    closed(silent);
    wait_until(Duration::from_secs(5), "three rejections", || {
        baton.metric("baton_connections_rejected_total{listener=\"web\",reason=\"tls_handshake\"}")
            == Some(3.0)
    });
    let mut good = good;
    good.write_all(b"still").unwrap();
    let mut back = [0u8; 5];
    good.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still");
    let _ = tls_connect(config.listen, "site.test", &client);
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_open_streams_continue() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test ca");
    leaf(
        &ca,
        dir.path(),
        "site",
        "old.site.test",
        &["site.test"],
        false,
    );
    let baton = start_in(dir, &tls_config(&config, &["site"], ""));
    let client = client_config(&[&rustls::version::TLS13]);
    let mut open = tls_connect(config.listen, "site.test", &client);
    assert_eq!(served_cn(&open), "old.site.test");
    leaf(
        &ca,
        baton.dir.path(),
        "site",
        "new.site.test",
        &["site.test"],
        false,
    );
    baton.signal("HUP");
    wait_until(Duration::from_secs(5), "reloaded", || {
        baton.metric("baton_config_generation") == Some(2.0)
    });
    // A full handshake gets the new certificate.
    let fresh = client_config(&[&rustls::version::TLS13]);
    assert_eq!(
        served_cn(&tls_connect(config.listen, "site.test", &fresh)),
        "new.site.test"
    );
    // A client holding a session resumes it across the reload (no
    // certificate is sent on resumption: it keeps the one it checked).
    let resumed = tls_connect(config.listen, "site.test", &client);
    assert_eq!(resumed.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    open.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    open.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after");
}

#[test]
fn check_refuses_a_mismatched_key_and_warns_of_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test ca");
    leaf(&ca, dir.path(), "one", "one.test", &["one.test"], false);
    leaf(&ca, dir.path(), "two", "two.test", &["two.test"], false);
    leaf(&ca, dir.path(), "old", "old.test", &["old.test"], true);
    let yaml = |cert: &str, key: &str| {
        format!(
            "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    cluster: app\n    tls:\n      certificates:\n        - {{ cert: {cert}, key: {key} }}\nclusters:\n  - {{ name: app, backends: [ {{ address: 127.0.0.1:2 }} ] }}\n"
        )
    };
    let (ok, out) = check(dir.path(), &yaml("one.pem", "two.key"));
    assert!(
        !ok && out.contains("listeners[0].tls.certificates[0]") && out.contains("does not match"),
        "{out}"
    );
    let (ok, out) = check(dir.path(), &yaml("missing.pem", "one.key"));
    assert!(!ok && out.contains("cannot read certificate"), "{out}");
    let (ok, out) = check(dir.path(), &yaml("old.pem", "old.key"));
    assert!(
        ok && out.contains("warning") && out.contains("expired"),
        "{out}"
    );
    // Within 14 days of its end: a warning too, with the days left.
    leaf_expiring(&ca, dir.path(), "soon", "soon.test", 5);
    let (ok, out) = check(dir.path(), &yaml("soon.pem", "soon.key"));
    let days_left = out.contains("expires in 4 day(s)") || out.contains("expires in 5 day(s)");
    assert!(ok && out.contains("warning") && days_left, "{out}");
    leaf_expiring(&ca, dir.path(), "later", "later.test", 60);
    let (ok, out) = check(dir.path(), &yaml("later.pem", "later.key"));
    assert!(ok && !out.contains("warning"), "{out}");
}

/// The server side of TLS with the given certificate.
fn server_config(dir: &Path, file: &str) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(dir.join(format!("{file}.pem")))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key: PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_file(dir.join(format!("{file}.key"))).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    Arc::new(server)
}

/// A TLS echo server with the given certificate, for one connection at a time.
fn tls_backend(dir: &Path, file: &str) -> SocketAddr {
    let server = server_config(dir, file);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let server = server.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(server).unwrap();
                let mut s = StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn tls_to_backends_verifies_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("backend ca");
    let other_ca = ca("other ca");
    leaf(
        &good_ca,
        dir.path(),
        "backend",
        "backend.test",
        &["backend.test"],
        false,
    );
    std::fs::write(dir.path().join("ca.pem"), &good_ca.pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), &other_ca.pem).unwrap();
    let backend = tls_backend(dir.path(), "backend");

    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(backend, 1)];
    config.cluster_extra =
        "    retries: 0\n    tls: { server_name: backend.test, ca: ca.pem }\n".into();
    let baton = start_in(dir, &config.yaml());
    let mut s = TcpStream::connect(config.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"through tls").unwrap();
    let mut back = [0u8; 11];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through tls");

    // The same backend does not verify against another CA: refused, counted.
    config.cluster_extra =
        "    retries: 0\n    tls: { server_name: backend.test, ca: other-ca.pem }\n".into();
    baton.write_config(&config.yaml());
    assert!(baton.ctl(&["reload"]).0);
    let mut s = TcpStream::connect(config.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(closed_by_peer(&mut s), "client closed");
    let series = format!(
        "baton_backend_connect_errors_total{{backend=\"{backend}\",cluster=\"app\",reason=\"tls\"}}"
    );
    wait_until(Duration::from_secs(5), "tls failure counted", || {
        baton.metric(&series) == Some(1.0)
    });
}

#[test]
fn sni_routing_passes_a_real_handshake_through_to_the_named_backend() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("backend ca");
    leaf(&ca, dir.path(), "a", "a.test", &["a.test"], false);
    leaf(&ca, dir.path(), "b", "b.test", &["b.test"], false);
    let (a, b) = (tls_backend(dir.path(), "a"), tls_backend(dir.path(), "b"));
    let config = ConfigBuilder::new(&[]);
    let yaml = format!(
        "admin:\n  listen: \"{}\"\ncontrol:\n  socket: baton.sock\nlisteners:\n  - name: web\n    listen: \"{}\"\n    sni_routes:\n      a.test: ca\n      \"*.b.test\": cb\nclusters:\n  - {{ name: ca, backends: [ {{ address: \"{a}\" }} ] }}\n  - {{ name: cb, backends: [ {{ address: \"{b}\" }} ] }}\n",
        config.admin, config.listen
    );
    let baton = start_in(dir, &yaml);
    let client = client_config(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    // The backend terminates: its own certificate comes back through baton.
    assert_eq!(
        served_cn(&tls_connect(config.listen, "a.test", &client)),
        "a.test"
    );
    assert_eq!(
        served_cn(&tls_connect(config.listen, "www.b.test", &client)),
        "b.test"
    );
    // The ClientHello the peek read counts in each access line as it does
    // on the listener's counter.
    let logged = || -> Vec<u64> {
        baton
            .log()
            .lines()
            .filter_map(|l| l.split("received=").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .collect()
    };
    wait_until(Duration::from_secs(5), "two access lines", || {
        logged().len() == 2
    });
    let counted = baton
        .metric("baton_bytes_received_total{listener=\"web\"}")
        .expect("bytes received are counted");
    assert_eq!(logged().iter().sum::<u64>() as f64, counted);
}

#[test]
fn tls_terminated_streams_stay_with_the_old_process_which_exits_once_they_end() {
    let echo = Backend::echo();
    let (config, baton) = site_baton(&echo, "");
    let client = client_config(&[&rustls::version::TLS13]);
    let mut tls = tls_connect(config.listen, "site.test", &client);
    let old = baton.pid();
    let (ok, out) = baton.ctl(&["upgrade"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 stream(s) moved, 1 stay"),
        "TLS state lives in the old process: {out}"
    );
    let new = wait_new_pid(&baton, old);
    assert!(pid_alive(old), "the old process keeps the TLS stream");
    for round in 0..3 {
        let message = format!("still flowing {round}");
        tls.write_all(message.as_bytes()).unwrap();
        let mut back = vec![0u8; message.len()];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(back, message.as_bytes());
    }
    // New TLS clients reach the new process meanwhile.
    drop(tls_connect(config.listen, "site.test", &client));
    drop(tls);
    wait_until(Duration::from_secs(5), "the old process exits", || {
        !pid_alive(old)
    });
    assert!(pid_alive(new));
}

/// One `openssl s_client` connection to `site.test` at `addr` with
/// `version` (`-tls1_2`, `-tls1_3`), saving its session to `save` or
/// offering the one in `resume`; a line goes through the echo backend and
/// back before it closes, so every ticket has arrived. Whether the
/// handshake resumed.
fn openssl_resumed(
    addr: SocketAddr,
    version: &str,
    save: Option<&Path>,
    resume: Option<&Path>,
) -> bool {
    use std::process::{Command, Stdio};
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "site.test", version]);
    if let Some(path) = save {
        command.arg("-sess_out").arg(path);
    }
    if let Some(path) = resume {
        command.arg("-sess_in").arg(path);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs (.ci/run installs it)");
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    stdin.write_all(b"resumption-probe\n").unwrap();
    // Read until the echo is back: the handshake summary (New or Reused)
    // came before it, and so did the tickets.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
            text.push_str(&line);
            if line.contains("resumption-probe") {
                let _ = tx.send(text.clone());
            }
            line.clear();
        }
        let _ = tx.send(text);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("openssl s_client got its line back");
    drop(stdin);
    let _ = child.wait();
    assert!(
        text.contains("resumption-probe"),
        "the line did not come back:\n{text}"
    );
    assert!(
        text.contains("Reused,") || text.contains("New,"),
        "no handshake summary:\n{text}"
    );
    text.contains("Reused,")
}

/// Sessions saved by openssl before `change`, one per TLS version; after
/// it, whether each resumed.
fn resumed_across(
    baton_listen: SocketAddr,
    dir: &Path,
    change: impl FnOnce(),
) -> Vec<(String, bool)> {
    let versions = ["-tls1_2", "-tls1_3"];
    for v in versions {
        let session = dir.join(format!("session{v}"));
        assert!(
            !openssl_resumed(baton_listen, v, Some(&session), None),
            "{v}: a first visit is a full handshake"
        );
        assert!(
            openssl_resumed(baton_listen, v, None, Some(&session)),
            "{v}: resumes before the change"
        );
    }
    change();
    versions
        .iter()
        .map(|v| {
            let session = dir.join(format!("session{v}"));
            (
                v.to_string(),
                openssl_resumed(baton_listen, v, None, Some(&session)),
            )
        })
        .collect()
}

#[test]
fn sessions_resume_across_a_reload_and_an_upgrade() {
    let echo = Backend::echo();
    let (config, baton) = site_baton(&echo, "");
    let sessions = tempfile::tempdir().unwrap();
    let full = |what: &str| {
        baton
            .metric(&format!("baton_config_reloads_total{{result=\"{what}\"}}"))
            .unwrap_or(0.0)
    };
    // A reload that rebuilds every listener's TLS (a new cluster setting).
    let after_reload = resumed_across(config.listen, sessions.path(), || {
        let yaml = std::fs::read_to_string(&baton.config_path).unwrap();
        baton.write_config(&yaml.replace(
            "clusters:\n  - name: app\n",
            "clusters:\n  - name: app\n    connect_timeout: 3s\n",
        ));
        let (ok, out) = baton.ctl(&["reload"]);
        assert!(ok, "{out}");
        assert_eq!(full("success"), 1.0);
    });
    for (v, resumed) in after_reload {
        assert!(
            resumed,
            "{v}: a session from before the reload resumes after it"
        );
    }
    let old = baton.pid();
    let after_upgrade = resumed_across(config.listen, sessions.path(), || {
        let (ok, out) = baton.ctl(&["upgrade"]);
        assert!(ok, "{out}");
        wait_new_pid(&baton, old);
    });
    for (v, resumed) in after_upgrade {
        assert!(
            resumed,
            "{v}: a session from before the upgrade resumes after it"
        );
    }
}

#[test]
fn ticket_keys_rotate_and_the_previous_key_still_opens_tickets() {
    let echo = Backend::echo();
    let config = ConfigBuilder::new(&[&echo]);
    let dir = tempfile::tempdir().unwrap();
    leaf(
        &ca("test ca"),
        dir.path(),
        "site",
        "site.test",
        &["site.test"],
        false,
    );
    let yaml = tls_config(&config, &["site"], "").replacen(
        "listeners:",
        "session_tickets:\n  rotation: 3s\nlisteners:",
        1,
    );
    let baton = start_in(dir, &yaml);
    let key_made = || {
        baton
            .metric("baton_tls_ticket_key_created_timestamp_seconds")
            .expect("the ticket key's age is exported")
    };
    let next_key = |after: f64| {
        let mut now = after;
        wait_until(Duration::from_secs(10), "the ticket key rotates", || {
            now = key_made();
            now > after
        });
        now
    };
    // Right after a rotation, so the ticket's key has a whole period left.
    let first = next_key(key_made());
    let sessions = tempfile::tempdir().unwrap();
    let session = sessions.path().join("session");
    assert!(!openssl_resumed(
        config.listen,
        "-tls1_3",
        Some(&session),
        None
    ));
    let second = next_key(first);
    assert!(
        openssl_resumed(config.listen, "-tls1_3", None, Some(&session)),
        "one rotation later the previous key opens the ticket"
    );
    next_key(second);
    assert!(
        !openssl_resumed(config.listen, "-tls1_3", None, Some(&session)),
        "two rotations later the ticket's key is gone"
    );
}

#[test]
fn http_health_checks_speak_tls_to_a_tls_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let backend_ca = ca("backend ca");
    leaf(
        &backend_ca,
        dir.path(),
        "backend",
        "backend.test",
        &["backend.test"],
        false,
    );
    std::fs::write(dir.path().join("ca.pem"), &backend_ca.pem).unwrap();
    let server = server_config(dir.path(), "backend");
    let target = CheckTarget::start_wrapped(move |tcp| {
        let conn = rustls::ServerConnection::new(server.clone()).ok()?;
        Some(Box::new(StreamOwned::new(conn, tcp)))
    });
    let mut config = ConfigBuilder::new(&[]);
    config.backends = vec![(target.addr, 1)];
    config.cluster_extra = "    tls: { server_name: backend.test, ca: ca.pem }\n    \
         health_check: { interval: 100ms, timeout: 1s, rise: 1, fall: 1, http: { path: /ready } }\n"
        .into();
    let baton = start_in(dir, &config.yaml());
    let healthy = format!(
        "baton_backend_healthy{{backend=\"{}\",cluster=\"app\"}}",
        target.addr
    );
    wait_until(Duration::from_secs(10), "a check over TLS", || {
        !target.requests.lock().unwrap().is_empty()
    });
    let first = target.requests.lock().unwrap()[0].clone();
    assert!(first.starts_with("GET /ready HTTP/1.1\r\n"), "{first}");
    assert_eq!(baton.metric(&healthy), Some(1.0));
    target.answer(Answer::Status(503));
    wait_until(
        Duration::from_secs(10),
        "503 over TLS takes it down",
        || baton.metric(&healthy) == Some(0.0),
    );
    target.answer(Answer::Status(204));
    wait_until(
        Duration::from_secs(10),
        "204 over TLS brings it back",
        || baton.metric(&healthy) == Some(1.0),
    );
}

//! The admin server: health, readiness, status, every contract metric in a
//! strictly parsed exposition, and the dashboard's and alerts' queries.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::exposition::parse;
use support::*;

/// (name, type, labels) of every metric SPEC.md fixes that exists whether
/// or not an upgrade drains or TLS serves.
const SPEC: &[(&str, &str, &[&str])] = &[
    ("baton_build_info", "gauge", &["version"]),
    ("baton_process_generation", "gauge", &[]),
    ("baton_config_generation", "gauge", &[]),
    ("baton_config_reloads_total", "counter", &["result"]),
    ("baton_upgrades_total", "counter", &["result"]),
    ("baton_connections_accepted_total", "counter", &["listener"]),
    ("baton_connections_active", "gauge", &["listener"]),
    (
        "baton_connections_rejected_total",
        "counter",
        &["listener", "reason"],
    ),
    ("baton_bytes_received_total", "counter", &["listener"]),
    ("baton_bytes_sent_total", "counter", &["listener"]),
    (
        "baton_backend_connections_active",
        "gauge",
        &["cluster", "backend"],
    ),
    (
        "baton_backend_connect_errors_total",
        "counter",
        &["cluster", "backend", "reason"],
    ),
    (
        "baton_backend_connect_duration_seconds",
        "histogram",
        &["cluster"],
    ),
    ("baton_backend_healthy", "gauge", &["cluster", "backend"]),
    ("baton_draining_processes", "gauge", &[]),
    ("baton_drain_forced_closes_total", "counter", &[]),
    ("baton_listener_max_connections", "gauge", &["listener"]),
    ("baton_drain_timeout_seconds", "gauge", &[]),
    (
        "baton_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("baton_config_reload_duration_seconds", "histogram", &[]),
    ("process_cpu_seconds_total", "counter", &[]),
];

/// Series that exist only while a predecessor drains, or a listener
/// terminates TLS (SPEC.md: drain series disappear with their process).
const CONDITIONAL: &[&str] = &[
    "baton_drain_connections_active",
    "baton_drain_elapsed_seconds",
    "baton_tls_certificate_expiry_timestamp_seconds",
];

#[test]
fn metrics_parse_strictly_and_hold_every_spec_metric() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let exposition = parse(&baton.metrics());
    for (name, kind, labels) in SPEC {
        assert_eq!(
            exposition.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name} type"
        );
        let sample = if *kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.to_string()
        };
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        assert_eq!(exposition.labels_of(&sample), want, "{name} labels");
    }
    // Zero-valued series exist from start for the configured names.
    let backend = a.addr.to_string();
    for reason in ["refused", "timeout", "unreachable", "other"] {
        assert!(exposition.samples.iter().any(|(n, l, v)| n
            == "baton_backend_connect_errors_total"
            && l.get("backend") == Some(&backend)
            && l.get("reason").map(String::as_str) == Some(reason)
            && *v == 0.0));
    }
    for reason in [
        "max_connections",
        "tls_handshake",
        "proxy_protocol",
        "sni_no_route",
    ] {
        assert!(
            exposition
                .samples
                .iter()
                .any(|(n, l, _)| n == "baton_connections_rejected_total"
                    && l.get("reason").map(String::as_str) == Some(reason))
        );
    }
    assert_eq!(
        baton.metric("baton_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert_eq!(baton.metric("baton_draining_processes"), Some(0.0));
}

#[test]
fn metrics_move_with_traffic() {
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    config.listener_extra = "    max_connections: 1\n".into();
    let baton = Baton::start(&config.yaml());
    let (mut held, _) = connect_named(config.listen);
    held.write_all(b"12345").unwrap();
    let mut back = [0u8; 5];
    held.read_exact(&mut back).unwrap();
    let mut extra = TcpStream::connect(config.listen).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.read(&mut back);
    let l = "{listener=\"web\"}";
    wait_until(Duration::from_secs(5), "metrics", || {
        baton.metric(&format!("baton_connections_accepted_total{l}")) == Some(2.0)
            && baton.metric(&format!("baton_connections_active{l}")) == Some(1.0)
            && baton.metric(&format!("baton_bytes_received_total{l}")) == Some(5.0)
            // The backend's name line and the echo.
            && baton.metric(&format!("baton_bytes_sent_total{l}")) == Some(7.0)
            && baton.metric("baton_connections_rejected_total{listener=\"web\",reason=\"max_connections\"}")
                == Some(1.0)
    });
    let backend = format!("{{backend=\"{}\",cluster=\"app\"}}", a.addr);
    assert_eq!(
        baton.metric(&format!("baton_backend_connections_active{backend}")),
        Some(1.0)
    );
    assert_eq!(
        baton.metric("baton_backend_connect_duration_seconds_count{cluster=\"app\"}"),
        Some(1.0)
    );
    drop(held);
    wait_until(Duration::from_secs(5), "active back to 0", || {
        baton.metric(&format!("baton_connections_active{l}")) == Some(0.0)
    });
}

#[test]
fn connect_errors_are_counted_by_reason() {
    let dead = free_port();
    let a = Backend::start("a");
    let mut config = ConfigBuilder::new(&[&a]);
    config.backends = vec![(format!("127.0.0.1:{dead}").parse().unwrap(), 1)];
    config.cluster_extra = "    retries: 0\n".into();
    let baton = Baton::start(&config.yaml());
    let mut s = TcpStream::connect(config.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "client closed when no backend answers"
    );
    let series = format!(
        "baton_backend_connect_errors_total{{backend=\"127.0.0.1:{dead}\",cluster=\"app\",reason=\"refused\"}}"
    );
    wait_until(Duration::from_secs(5), "refused counted", || {
        baton.metric(&series) == Some(1.0)
    });
}

#[test]
fn health_readiness_status_and_http_errors() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    assert_eq!(http_get(baton.admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(baton.admin, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(baton.admin, "/nope").unwrap().0, 404);
    assert_eq!(
        http_request(baton.admin, "POST", "/metrics").unwrap().0,
        405
    );
    assert_eq!(
        http_request(baton.admin, "DELETE", "/status").unwrap().0,
        405
    );

    let (code, body) = http_get(baton.admin, "/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pid"], baton.pid());
    assert_eq!(status["generation"], 0);
    assert_eq!(status["config_generation"], 1);
    assert_eq!(status["listeners"][0]["name"], "web");
    assert_eq!(status["listeners"][0]["address"], config.listen.to_string());
    assert_eq!(status["listeners"][0]["active"], 0);
    assert_eq!(status["clusters"][0]["name"], "app");
    assert_eq!(
        status["clusters"][0]["backends"][0]["address"],
        a.addr.to_string()
    );
    assert_eq!(status["clusters"][0]["backends"][0]["healthy"], true);
    assert_eq!(status["clusters"][0]["backends"][0]["active"], 0);
    assert!(status["draining"].as_array().unwrap().is_empty());

    let (ok, out) = baton.ctl(&["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("pid {}", baton.pid())) && out.contains("healthy"),
        "{out}"
    );
}

/// Every `baton_*` name a PromQL expression in `text` uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("baton_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = name.strip_suffix("_bucket").unwrap_or(name);
        // `baton_overview` is the dashboard's uid, not a metric.
        if name != "baton_" && !name.starts_with("baton_overview") {
            names.insert(name.to_string());
        }
        i = end;
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_alerts_query_exists() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let exposition = parse(&baton.metrics());
    let dir = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{dir}/dashboards/baton.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(json["panels"].as_array().unwrap().len() > 10);
    let alerts = std::fs::read_to_string(format!("{dir}/dashboards/alerts.yaml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in used {
        let live = exposition.types.contains_key(&name);
        assert!(
            live || CONDITIONAL.contains(&name.as_str()),
            "{name} is queried but not exported"
        );
    }
}

#[test]
fn five_thousand_scrapers_that_never_read_cost_admin_a_bounded_amount() {
    let a = Backend::start("a");
    let config = ConfigBuilder::new(&[&a]);
    let baton = Baton::start(&config.yaml());
    let (rss_before, sockets_before) = (baton.rss_kib(), sockets_of(baton.pid()));
    let mut abusers = Vec::new();
    for _ in 0..5000 {
        let Ok(mut s) = std::net::TcpStream::connect(baton.admin) else {
            continue;
        };
        // Asks, and never reads the answer.
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        abusers.push(s);
    }
    assert!(abusers.len() > 4000, "{} connected", abusers.len());
    // At most admin.max_connections (64) held at any moment.
    let held = sockets_of(baton.pid()).saturating_sub(sockets_before);
    assert!(held <= 64, "{held} admin connections held");
    // A well-behaved scraper (one that tries again when a full server
    // closes it, as admin.max_connections says) is answered within 1 s;
    // the proxy is untouched.
    let started = std::time::Instant::now();
    let answer = loop {
        match http_get(baton.admin, "/metrics") {
            Ok(answer) => break answer,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(1),
                "no answer within 1 s: {e}"
            ),
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.0, 200);
    assert!(answer.1.contains("baton_connections_accepted_total"));
    for _ in 0..20 {
        let (_s, name) = connect_named(config.listen);
        assert_eq!(name, "a");
    }
    let grown = baton.rss_kib().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    drop(abusers);
}

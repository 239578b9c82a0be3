//! SRV backends through a real DNS server (dnsmasq, on a loopback port, as
//! Consul DNS is used): baton follows added, removed and re-weighted
//! targets, falls back to the next priority when a whole group is down,
//! and keeps the last set when the server stops.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const SRV: &str = "_app._tcp.app.internal";

/// One SRV record: target name, the backend it points at, priority, weight.
struct Record<'a>(&'a str, &'a Backend, u16, u16);

/// dnsmasq answering only for `app.internal`, on 127.0.0.1:`port`.
struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    fn start(port: u16, records: &[Record]) -> Dnsmasq {
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--conf-file=/dev/null"])
            .args(["--pid-file=", "--user=root", "--local-ttl=0"]);
        for Record(target, backend, priority, weight) in records {
            let name = format!("{target}.app.internal");
            command
                .arg(format!(
                    "--srv-host={SRV},{name},{},{priority},{weight}",
                    backend.addr.port()
                ))
                .arg(format!("--host-record={name},127.0.0.1"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (.ci/run installs dnsmasq-base)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(Duration::from_secs(10), "dnsmasq listens", || {
            TcpStream::connect(addr).is_ok()
        });
        Dnsmasq { child }
    }

    /// Serves other records on the same port.
    fn restart(&mut self, port: u16, records: &[Record]) {
        self.stop();
        *self = Dnsmasq::start(port, records);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// baton with one cluster of SRV backends, asking dnsmasq every 500ms.
fn srv_config(dns_port: u16, cluster_extra: &str) -> ConfigBuilder {
    let mut config = ConfigBuilder::new(&[]);
    config.extra_top = format!("dns:\n  servers: [\"127.0.0.1:{dns_port}\"]\n");
    config.cluster_extra = format!("    resolve_interval: 500ms\n{cluster_extra}");
    config
}

fn yaml(config: &ConfigBuilder) -> String {
    format!("{}      - {{ srv: {SRV} }}\n", config.yaml())
}

fn status(baton: &Baton) -> serde_json::Value {
    let (code, body) = http_get(baton.admin, "/status").expect("/status answers");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/status is JSON")
}

/// (label, weight, priority, srv) of every backend `/status` shows.
fn backends(baton: &Baton) -> Vec<(String, u64, u64, String)> {
    let status = status(baton);
    status["clusters"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["weight"].as_u64().unwrap_or_default(),
                b["priority"].as_u64().unwrap_or_default(),
                b["srv"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn srv_targets_are_followed_under_load() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let port = free_port();
    let mut dns = Dnsmasq::start(port, &[Record("a1", &a, 10, 1), Record("b1", &b, 10, 1)]);
    let config = srv_config(port, "");
    let baton = Baton::start(&yaml(&config));
    assert_eq!(answering(config.listen, 8), names(&["a", "b"]));
    let shown = backends(&baton);
    assert!(
        shown.contains(&(
            format!("a1.app.internal:{}", a.addr.port()),
            1,
            10,
            SRV.into()
        )),
        "{shown:?}"
    );

    let load = Load::start(config.listen, 2, 2);
    // b1 goes, c1 comes with three times the weight.
    dns.restart(port, &[Record("a1", &a, 10, 1), Record("c1", &c, 10, 3)]);
    wait_until(Duration::from_secs(10), "c replaces b", || {
        answering(config.listen, 12) == names(&["a", "c"])
    });
    let c_label = format!("c1.app.internal:{}", c.addr.port());
    assert!(backends(&baton).contains(&(c_label.clone(), 3, 10, SRV.into())));
    // Re-weighted.
    dns.restart(port, &[Record("a1", &a, 10, 5), Record("c1", &c, 10, 3)]);
    let a_label = format!("a1.app.internal:{}", a.addr.port());
    wait_until(Duration::from_secs(10), "a re-weighted", || {
        backends(&baton).contains(&(a_label.clone(), 5, 10, SRV.into()))
    });
    // The server gone entirely: the last set keeps serving.
    dns.stop();
    baton.wait_for_log("backend lookup failed; keeping the last answer");
    assert_eq!(answering(config.listen, 12), names(&["a", "c"]));
    let errors = load.finish();
    assert!(errors.is_empty(), "client failures: {errors:?}");
    let metric = format!("baton_backend_healthy{{backend=\"{c_label}\",cluster=\"app\"}}");
    assert_eq!(
        baton.metric(&metric),
        Some(1.0),
        "the target is the backend label"
    );
}

#[test]
fn a_lower_priority_group_serves_only_when_the_first_is_down() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let _dns = Dnsmasq::start(port, &[Record("a1", &a, 10, 1), Record("b1", &b, 20, 1)]);
    let config = srv_config(
        port,
        "    health_check: { interval: 100ms, timeout: 200ms, rise: 1, fall: 1 }\n",
    );
    let baton = Baton::start(&yaml(&config));
    assert_eq!(answering(config.listen, 8), names(&["a"]));
    let a_port = a.addr.port();
    drop(a);
    // At once (connect failures move on to the next group), and after the
    // health check marks a down.
    wait_until(Duration::from_secs(10), "b takes over", || {
        answering(config.listen, 8) == names(&["b"])
    });
    let metric =
        format!("baton_backend_healthy{{backend=\"a1.app.internal:{a_port}\",cluster=\"app\"}}");
    wait_until(Duration::from_secs(10), "a marked down", || {
        baton.metric(&metric) == Some(0.0)
    });
    // The first group back: it takes the traffic again.
    let _a = Backend::start_at("a", SocketAddr::from(([127, 0, 0, 1], a_port)));
    wait_until(Duration::from_secs(10), "a back", || {
        answering(config.listen, 8) == names(&["a"])
    });
}

#[test]
fn check_refuses_an_srv_name_that_does_not_resolve() {
    let a = Backend::start("a");
    let port = free_port();
    let _dns = Dnsmasq::start(port, &[Record("a1", &a, 10, 1)]);
    let config = srv_config(port, "");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(dir.path(), &yaml(&config));
    assert!(ok, "{out}");
    let missing = yaml(&config).replace(SRV, "_nope._tcp.app.internal");
    let (ok, out) = check(dir.path(), &missing);
    assert!(
        !ok && out.contains("clusters[0].backends[0].srv") && out.contains("does not resolve"),
        "{out}"
    );
}

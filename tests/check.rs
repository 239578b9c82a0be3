//! `baton check`: a good config passes with a summary; each bad one fails
//! with its key path and line.

mod support;

use support::*;

const GOOD: &str = "\
admin:
  listen: 127.0.0.1:19999
listeners:
  - name: web
    listen: 127.0.0.1:18888
    cluster: app
clusters:
  - name: app
    backends:
      - { address: 127.0.0.1:9001, weight: 3 }
      - { address: localhost:9002 }
";

#[test]
fn a_good_config_passes_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(dir.path(), GOOD);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: 1 listener(s), 1 cluster(s), 2 backend(s)"),
        "{out}"
    );
}

#[test]
fn the_shipped_config_passes() {
    let out = std::process::Command::new(BATON)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (what is wrong, the config, text the message must hold)
const BAD: &[(&str, &str, &[&str])] = &[
    (
        "unknown top-level key",
        "listeners: []\nclusterz: []\n",
        &["clusterz", "unknown field", ":2:"],
    ),
    (
        "unknown nested key",
        "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    cluster: app\n    max_conns: 3\nclusters: []\n",
        &["listeners[0]", "max_conns", ":5:"],
    ),
    (
        "missing listen",
        "listeners:\n  - name: web\n    cluster: app\n",
        &["listeners[0]", "missing field `listen`"],
    ),
    (
        "wrong type",
        "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    cluster: app\n    max_connections: lots\n",
        &["listeners[0].max_connections", ":5:"],
    ),
    (
        "bad duration",
        "drain:\n  timeout: soon\n",
        &["drain.timeout", "invalid duration", ":2:"],
    ),
    (
        "zero duration",
        "clusters:\n  - name: app\n    connect_timeout: 0s\n    backends: [ { address: 127.0.0.1:1 } ]\n",
        &["clusters[0].connect_timeout", "longer than zero", ":3:"],
    ),
    (
        "unknown cluster",
        "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    cluster: nope\n",
        &[
            "listeners[0].cluster",
            "no cluster is named \"nope\"",
            ":4:",
        ],
    ),
    (
        "duplicate listener name",
        "listeners:\n  - { name: web, listen: 127.0.0.1:1, cluster: app }\n  - { name: web, listen: 127.0.0.1:2, cluster: app }\nclusters:\n  - { name: app, backends: [ { address: 127.0.0.1:1 } ] }\n",
        &[
            "listeners[1].name",
            "already the name of listeners[0]",
            ":3:",
        ],
    ),
    (
        "duplicate cluster name",
        "clusters:\n  - { name: app, backends: [ { address: 127.0.0.1:1 } ] }\n  - { name: app, backends: [ { address: 127.0.0.1:2 } ] }\n",
        &["clusters[1].name", "already the name"],
    ),
    (
        "no backends",
        "clusters:\n  - name: app\n    backends: []\n",
        &["clusters[0].backends", "at least one backend", ":3:"],
    ),
    (
        "listen address does not parse",
        "listeners:\n  - { name: web, listen: \"localhost:http\", cluster: app }\nclusters:\n  - { name: app, backends: [ { address: 127.0.0.1:1 } ] }\n",
        &["listeners[0].listen", "not an IP:PORT"],
    ),
    (
        "backend without port",
        "clusters:\n  - name: app\n    backends:\n      - address: 127.0.0.1\n",
        &["clusters[0].backends[0].address", "needs a port", ":4:"],
    ),
    (
        "backend name does not resolve",
        "clusters:\n  - name: app\n    backends:\n      - address: no-such-host.invalid:80\n",
        &["clusters[0].backends[0].address", "does not resolve"],
    ),
    (
        "two listeners on one address (wildcard)",
        "listeners:\n  - { name: a, listen: 0.0.0.0:7000, cluster: app }\n  - { name: b, listen: 127.0.0.1:7000, cluster: app }\nclusters:\n  - { name: app, backends: [ { address: 127.0.0.1:1 } ] }\n",
        &["listeners[1].listen", "collides with listeners[0].listen"],
    ),
    (
        "listener on the admin address",
        "admin:\n  listen: 127.0.0.1:7001\nlisteners:\n  - { name: a, listen: 127.0.0.1:7001, cluster: app }\nclusters:\n  - { name: app, backends: [ { address: 127.0.0.1:1 } ] }\n",
        &["listeners[0].listen", "collides with admin.listen"],
    ),
    (
        "weight out of range",
        "clusters:\n  - name: app\n    backends:\n      - { address: 127.0.0.1:1, weight: 0 }\n",
        &["clusters[0].backends[0].weight", "between 1 and 256"],
    ),
    (
        "unknown balance algorithm",
        "clusters:\n  - name: app\n    balance: fastest\n    backends: [ { address: 127.0.0.1:1 } ]\n",
        &["clusters[0].balance", "unknown variant `fastest`", ":3:"],
    ),
    (
        "yaml syntax error",
        "admin:\n  listen: \"127.0.0.1:1\nlisteners: []\n",
        &["admin.listen", "unexpected end of stream"],
    ),
];

#[test]
fn each_bad_config_names_its_key_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (what, yaml, wants) in BAD {
        let (ok, out) = check(dir.path(), yaml);
        assert!(!ok, "{what}: check passed but must fail");
        for want in *wants {
            assert!(out.contains(want), "{what}: message lacks {want:?}:\n{out}");
        }
    }
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
listeners:
  - { name: a, listen: 127.0.0.1:1, cluster: nope }
  - { name: b, listen: bogus, cluster: app }
clusters:
  - name: app
    backends: []
";
    let (ok, out) = check(dir.path(), yaml);
    assert!(!ok);
    for want in [
        "listeners[0].cluster",
        "listeners[1].listen",
        "clusters[0].backends",
        "3 error(s)",
    ] {
        assert!(out.contains(want), "lacks {want:?}:\n{out}");
    }
}

#[test]
fn run_refuses_a_bad_config_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:{}\nlisteners:\n  - {{ name: a, listen: 127.0.0.1:{port}, cluster: nope }}\n",
        free_port()
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(BATON)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners[0].cluster"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn bare_baton_reads_config_yaml_in_the_current_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), GOOD).unwrap();
    // `baton check` without -c and `baton -c FILE check` both find it.
    let out = std::process::Command::new(BATON)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(BATON)
        .args(["-c", "config.yaml", "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
    // Clean: no warning either.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
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

/// Runs `baton check --format json` on `yaml`: (exit ok, the problems).
fn check_json(dir: &std::path::Path, yaml: &str) -> (bool, Vec<serde_json::Value>) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(BATON)
        .args(["check", "--format", "json", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let problems: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), problems)
}

/// A good config of ten lines; each case changes one thing.
const BASE: &str = "\
admin:
  listen: 127.0.0.1:19999
listeners:
  - name: web
    listen: 127.0.0.1:18888
    cluster: app
clusters:
  - name: app
    backends:
      - { address: 127.0.0.1:9001 }
";

/// (what, the config, key path, line, text the message holds)
fn single_mistakes() -> Vec<(&'static str, String, &'static str, u64, &'static str)> {
    let swap = |from: &str, to: &str| {
        assert!(BASE.contains(from), "{from}");
        BASE.replacen(from, to, 1)
    };
    vec![
        (
            "unknown top-level key",
            format!("colour: blue\n{BASE}"),
            "colour",
            1,
            "unknown field `colour`",
        ),
        (
            "top-level typo",
            swap("listeners:\n", "listner:\n"),
            "listner",
            3,
            "did you mean `listeners`",
        ),
        (
            "unknown admin key",
            swap(
                "  listen: 127.0.0.1:19999\n",
                "  listen: 127.0.0.1:19999\n  port: 1\n",
            ),
            "admin.port",
            3,
            "unknown field `port`",
        ),
        (
            "unknown control key",
            format!("{BASE}control:\n  sockt: x.sock\n"),
            "control.sockt",
            12,
            "did you mean `socket`",
        ),
        (
            "unknown drain key",
            format!("{BASE}drain:\n  timout: 5s\n"),
            "drain.timout",
            12,
            "did you mean `timeout`",
        ),
        (
            "unknown upgrade key",
            format!("{BASE}upgrade:\n  migrat: false\n"),
            "upgrade.migrat",
            12,
            "did you mean `migrate`",
        ),
        (
            "unknown listener key",
            swap("    cluster: app\n", "    cluster: app\n    colour: blue\n"),
            "listeners[0].colour",
            7,
            "unknown field `colour`",
        ),
        (
            "listener key typo",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    max_conections: 5\n",
            ),
            "listeners[0].max_conections",
            7,
            "did you mean `max_connections`",
        ),
        (
            "unknown proxy_protocol key",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    proxy_protocol: { acept: true }\n",
            ),
            "listeners[0].proxy_protocol.acept",
            7,
            "did you mean `accept`",
        ),
        (
            "unknown backend tls key",
            swap(
                "  - name: app\n",
                "  - name: app\n    tls: { server_name: app.test, sni: x }\n",
            ),
            "clusters[0].tls.sni",
            9,
            "unknown field `sni`",
        ),
        (
            "unknown cluster key",
            swap("  - name: app\n", "  - name: app\n    balancer: random\n"),
            "clusters[0].balancer",
            9,
            "did you mean `balance`",
        ),
        (
            "unknown health_check key",
            swap(
                "  - name: app\n",
                "  - name: app\n    health_check:\n      intervall: 1s\n",
            ),
            "clusters[0].health_check.intervall",
            10,
            "did you mean `interval`",
        ),
        (
            "unknown backend key",
            swap(
                "{ address: 127.0.0.1:9001 }",
                "{ address: 127.0.0.1:9001, wieght: 2 }",
            ),
            "clusters[0].backends[0].wieght",
            10,
            "did you mean `weight`",
        ),
        (
            "listeners not a list",
            format!(
                "{}clusters:\n  - name: app\n    backends: [ {{ address: 127.0.0.1:9001 }} ]\n",
                "admin:\n  listen: 127.0.0.1:19999\nlisteners: web\n"
            ),
            "listeners",
            3,
            "invalid type",
        ),
        (
            "max_connections not a number",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    max_connections: lots\n",
            ),
            "listeners[0].max_connections",
            7,
            "invalid type",
        ),
        (
            "negative retries",
            swap("  - name: app\n", "  - name: app\n    retries: -1\n"),
            "clusters[0].retries",
            9,
            "invalid value",
        ),
        (
            "weight not a number",
            swap(
                "{ address: 127.0.0.1:9001 }",
                "{ address: 127.0.0.1:9001, weight: heavy }",
            ),
            "clusters[0].backends[0].weight",
            10,
            "invalid type",
        ),
        (
            "accept not a bool",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    proxy_protocol: { accept: maybe }\n",
            ),
            "listeners[0].proxy_protocol.accept",
            7,
            "invalid type",
        ),
        (
            "rise not a number",
            swap(
                "  - name: app\n",
                "  - name: app\n    health_check: { rise: x }\n",
            ),
            "clusters[0].health_check.rise",
            9,
            "invalid type",
        ),
        (
            "http check status list",
            swap(
                "  - name: app\n",
                "  - name: app\n    health_check:\n      http: { path: /healthz, expect: 2xx }\n",
            ),
            "clusters[0].health_check.http.expect",
            10,
            "not a status list",
        ),
        (
            "http check path",
            swap(
                "  - name: app\n",
                "  - name: app\n    health_check:\n      http: { path: healthz }\n",
            ),
            "clusters[0].health_check.http.path",
            10,
            "must start with /",
        ),
        (
            "ticket rotation too short",
            swap(
                "listeners:\n",
                "session_tickets: { rotation: 100ms }\nlisteners:\n",
            ),
            "session_tickets.rotation",
            3,
            "between 1s and 7d",
        ),
        (
            "bad balance",
            swap("  - name: app\n", "  - name: app\n    balance: fastest\n"),
            "clusters[0].balance",
            9,
            "unknown variant `fastest`",
        ),
        (
            "bad PROXY version",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    proxy_protocol: { send: v3 }\n",
            ),
            "listeners[0].proxy_protocol.send",
            7,
            "unknown variant `v3`",
        ),
        (
            "bad duration",
            format!("{BASE}drain:\n  timeout: forever\n"),
            "drain.timeout",
            12,
            "invalid duration",
        ),
        (
            "bad duration unit",
            swap(
                "  - name: app\n",
                "  - name: app\n    connect_timeout: 5 parsecs\n",
            ),
            "clusters[0].connect_timeout",
            9,
            "invalid duration",
        ),
        (
            "duration too long",
            swap("  - name: app\n", "  - name: app\n    idle_timeout: 90d\n"),
            "clusters[0].idle_timeout",
            9,
            "at most 30 days",
        ),
        (
            "absurd duration (overflowed Instant arithmetic once)",
            swap(
                "  - name: app\n",
                "  - name: app\n    idle_timeout: 100000y\n",
            ),
            "clusters[0].idle_timeout",
            9,
            "at most 30 days",
        ),
        (
            "zero duration",
            swap(
                "  - name: app\n",
                "  - name: app\n    health_check: { interval: 0s }\n",
            ),
            "clusters[0].health_check.interval",
            9,
            "longer than zero",
        ),
        (
            "duplicate listener key",
            swap(
                "    cluster: app\n",
                "    cluster: app\n    cluster: other\n",
            ),
            "listeners[0].cluster",
            7,
            "duplicate key",
        ),
        (
            "duplicate top-level key",
            format!("{BASE}admin:\n  listen: 127.0.0.1:19998\n"),
            "admin",
            11,
            "duplicate key",
        ),
        (
            "missing listen",
            swap("    listen: 127.0.0.1:18888\n", ""),
            "listeners[0].listen",
            4,
            "missing field `listen`",
        ),
        (
            "missing address",
            swap("{ address: 127.0.0.1:9001 }", "{ weight: 2 }"),
            "clusters[0].backends[0].address",
            10,
            "missing field `address`",
        ),
        (
            "unknown cluster",
            swap("    cluster: app\n", "    cluster: nope\n"),
            "listeners[0].cluster",
            6,
            "no cluster is named \"nope\"",
        ),
        (
            "backend port 0",
            swap("127.0.0.1:9001", "127.0.0.1:0"),
            "clusters[0].backends[0].address",
            10,
            "1 to 65535",
        ),
        (
            "listen port 0",
            swap("127.0.0.1:18888", "127.0.0.1:0"),
            "listeners[0].listen",
            5,
            "1 to 65535",
        ),
        (
            "weight out of range",
            swap(
                "{ address: 127.0.0.1:9001 }",
                "{ address: 127.0.0.1:9001, weight: 300 }",
            ),
            "clusters[0].backends[0].weight",
            10,
            "between 1 and 256",
        ),
        (
            "max_draining zero",
            format!("{BASE}upgrade:\n  max_draining: 0\n"),
            "upgrade.max_draining",
            12,
            "at least 1",
        ),
        (
            "listen not an address",
            swap("127.0.0.1:18888", "somewhere"),
            "listeners[0].listen",
            5,
            "not an IP:PORT",
        ),
    ]
}

#[test]
fn each_single_mistake_is_found_alone_at_its_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, problems) = check_json(dir.path(), BASE);
    assert!(ok && problems.is_empty(), "the base is good: {problems:?}");
    let cases = single_mistakes();
    assert!(cases.len() >= 30);
    let mut wrong = Vec::new();
    for (what, yaml, path, line, text) in cases {
        let (ok, problems) = check_json(dir.path(), &yaml);
        let errors: Vec<_> = problems
            .iter()
            .filter(|p| p["severity"] == "error")
            .collect();
        let fits = |e: &serde_json::Value| {
            e["path"] == path
                && e["line"] == line
                && e["column"].as_u64().is_some_and(|c| c >= 1)
                && e["message"].as_str().is_some_and(|m| m.contains(text))
                && e["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("config.yaml"))
        };
        if ok || errors.len() != 1 || !fits(errors[0]) {
            wrong.push(format!(
                "{what}: want {path} at line {line} with {text:?}, got {errors:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let ten = "\
colour: blue
admin:
  listen: 127.0.0.1:19999
drain:
  timeout: forever
listeners:
  - name: web
    listen: 127.0.0.1:0
    cluster: app
    max_conections: 5
    cluster: other
  - name: api
    listen: 127.0.0.1:18889
    cluster: nope
clusters:
  - name: app
    balance: fastest
    idle_timeout: 90d
    backends:
      - { address: 127.0.0.1:9001, weight: 300 }
      - { weight: 2 }
";
    let (ok, problems) = check_json(dir.path(), ten);
    assert!(!ok);
    let lines: Vec<u64> = problems
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![1, 5, 8, 10, 11, 14, 17, 18, 20, 21],
        "{problems:#?}"
    );
    // The first three and the first five alone.
    let cut = |n: usize| ten.lines().take(n).collect::<Vec<_>>().join("\n") + "\n";
    let (_, three) = check_json(
        dir.path(),
        &(cut(9) + "clusters:\n  - { name: app, backends: [ { address: 127.0.0.1:9001 } ] }\n"),
    );
    assert_eq!(three.len(), 3, "{three:#?}");
    let (_, five) = check_json(
        dir.path(),
        &(cut(11) + "clusters:\n  - { name: app, backends: [ { address: 127.0.0.1:9001 } ] }\n"),
    );
    assert_eq!(five.len(), 5, "{five:#?}");
    // The text format says the same, one line each, then the count.
    let (ok, out) = check(dir.path(), ten);
    assert!(!ok);
    assert!(out.contains("10 error(s)"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("config.yaml:")).count(),
        10,
        "{out}"
    );
}

#[test]
fn warnings_are_printed_apart_and_keep_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = BASE.replace(
        "  - name: app\n",
        "  - name: app\n    resolve_interval: 100ms\n",
    );
    let (ok, problems) = check_json(dir.path(), &yaml);
    assert!(ok, "{problems:?}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["severity"], "warning");
    assert_eq!(problems[0]["path"], "clusters[0].resolve_interval");
    assert_eq!(problems[0]["line"], 9);
    let (ok, out) = check(dir.path(), &yaml);
    assert!(ok);
    assert!(
        out.contains("warning: ") && out.contains("shorter than 1s"),
        "{out}"
    );
}

#[test]
fn a_syntax_error_stops_at_the_first_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, problems) = check_json(dir.path(), "admin: [1, 2\nlisteners: {\n");
    assert!(!ok);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("YAML syntax")
    );
    assert!(problems[0]["line"].as_u64().is_some());
}

//! The shipped deploy files run as written: the unit's ExecStart and
//! ExecReload lines, with only the paths moved into a test folder, start
//! baton on deploy/config.yaml and reload it; nothing is written outside
//! what the unit makes writable (/run/baton, here the test folder).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const UNIT: &str = include_str!("../deploy/baton.service");
const CONFIG: &str = include_str!("../deploy/config.yaml");

/// The value of `key=` in the unit's [Service] section.
fn unit_line(key: &str) -> String {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

#[test]
fn the_units_lines_run_on_the_shipped_deploy_config() {
    assert_eq!(unit_line("RuntimeDirectory"), "baton");
    assert_eq!(unit_line("ProtectSystem"), "strict");
    let stop: u64 = unit_line("TimeoutStopSec").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    // Only the paths move: /run/baton is the unit's RuntimeDirectory.
    let (admin, listen) = (free_port(), free_port());
    let config = CONFIG
        .replace("/run/baton", run.to_str().unwrap())
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{listen}"));
    let config_path = etc.join("config.yaml");
    std::fs::write(&config_path, &config).unwrap();
    // The config's drain fits in the unit's stop timeout.
    assert!(config.contains("timeout: 5m") && stop > 300, "{stop}");
    let line = |key: &str| -> Vec<String> {
        unit_line(key)
            .replace("/usr/local/bin/baton", BATON)
            .replace("/etc/baton/config.yaml", config_path.to_str().unwrap())
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let start = line("ExecStart");
    let mut baton = Command::new(&start[0])
        .args(&start[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // The config dir is read-only under the unit: so is ours.
        .current_dir(&etc)
        .spawn()
        .unwrap();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ready = || matches!(http_get(admin_addr, "/readyz"), Ok((200, _)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(baton.try_wait().unwrap().is_none(), "ExecStart exited");
        assert!(std::time::Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(run.join("control.sock").exists() && run.join("baton.pid").exists());
    let reload = line("ExecReload");
    let out = Command::new(&reload[0])
        .args(&reload[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ExecReload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing beside the config in the read-only folder.
    let beside: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
    let _ = Command::new("kill").arg(baton.id().to_string()).status();
    let _ = baton.wait();
}

#[test]
fn the_deploy_config_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check(dir.path(), CONFIG);
    assert!(ok && !out.contains("warning"), "{out}");
}

/// `systemd-analyze verify` accepts the unit as shipped, with only the
/// binary's path moved to the one built here (verify checks it exists).
#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("baton.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/baton", BATON)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (.ci/run installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only lines about our unit count: verify also reads the units it
    // names (network-online.target), which on a build machine may complain
    // about themselves.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("baton.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// The Kubernetes manifests hang together: the ConfigMap's config checks
/// clean and watches itself, the grace period covers the preStop pause and
/// the whole drain, probes use /readyz and /healthz, the config is mounted
/// as a folder (a subPath mount never sees an update), and nothing runs as
/// root. (Their schema is checked by `.ci/run` with kubernetes-validate.)
#[test]
fn the_kubernetes_manifests_fit_together() {
    let read = |name: &str| -> serde_yaml::Value {
        let path = format!("{}/deploy/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (map, deployment) = (read("configmap.yaml"), read("deployment.yaml"));
    let config = map["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap");
    let parsed: serde_yaml::Value = serde_yaml::from_str(config).unwrap();
    assert_eq!(parsed["reload"]["watch"], serde_yaml::Value::Bool(true));

    // `baton check` on it, the Service name it uses pinned to loopback.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    std::fs::write(
        dir.path().join("hosts"),
        "127.0.0.1 app.default.svc.cluster.local\n",
    )
    .unwrap();
    let out = Command::new(BATON)
        .args(["check", "-c"])
        .arg(dir.path().join("config.yaml"))
        .env("BATON_HOSTS_FILE", dir.path().join("hosts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let drain = humantime::parse_duration(parsed["drain"]["timeout"].as_str().unwrap()).unwrap();
    let pause: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > drain.as_secs() + pause,
        "grace {grace}s, drain {drain:?} + preStop {pause}s"
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"],
        serde_yaml::Value::Bool(true)
    );
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .unwrap();
    assert_eq!(config_mount["mountPath"].as_str(), Some("/etc/baton"));
    assert!(
        config_mount.get("subPath").is_none(),
        "a subPath mount never updates"
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"/etc/baton/config.yaml"), "{args:?}");
}

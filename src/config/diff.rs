//! What a reload changes: a pure function of the old and new config, so that
//! every case is a row in a table test.

use std::net::SocketAddr;

use serde::Serialize;

use super::Config;

/// The changes from one config to the next, named for the operator.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// New listeners: bound on reload.
    pub listeners_added: Vec<String>,
    /// Gone listeners: they serve what is queued, then close.
    pub listeners_removed: Vec<String>,
    /// Same name, new address: the new one is bound, the old one drains.
    pub listeners_moved: Vec<String>,
    /// New name on an address an old listener had: the socket is kept.
    pub listeners_renamed: Vec<(String, String)>,
    /// Same name and address, other settings (cluster, limits).
    pub listeners_changed: Vec<String>,
    pub clusters_added: Vec<String>,
    pub clusters_removed: Vec<String>,
    pub clusters_changed: Vec<String>,
    /// `cluster/address` of backends that appear.
    pub backends_added: Vec<String>,
    /// `cluster/address` of backends that go.
    pub backends_removed: Vec<String>,
    pub admin_moved: bool,
    /// Settings that take effect only at the next upgrade.
    pub deferred: Vec<String>,
    pub other_changed: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }

    /// One line per kind of change, for `baton reload` and the log.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                out.push(format!("{what}: {}", items.join(", ")));
            }
        };
        list("listeners added", &self.listeners_added);
        list("listeners removed", &self.listeners_removed);
        list("listeners moved", &self.listeners_moved);
        let renamed: Vec<String> = self
            .listeners_renamed
            .iter()
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect();
        list("listeners renamed", &renamed);
        list("listeners changed", &self.listeners_changed);
        list("clusters added", &self.clusters_added);
        list("clusters removed", &self.clusters_removed);
        list("clusters changed", &self.clusters_changed);
        list("backends added", &self.backends_added);
        list("backends removed", &self.backends_removed);
        list("changed", &self.other_changed);
        list("applies at the next upgrade", &self.deferred);
        if self.admin_moved {
            out.push("admin listener moved".into());
        }
        if out.is_empty() {
            out.push("no changes".into());
        }
        out
    }
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let new_has = |name: &str| new.listeners.iter().any(|l| l.name == name);
    let gone_at = |addr: SocketAddr| {
        old.listeners
            .iter()
            .find(|l| l.listen == addr && !new_has(&l.name))
    };

    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => match gone_at(l.listen) {
                Some(o) => d.listeners_renamed.push((o.name.clone(), l.name.clone())),
                None => d.listeners_added.push(l.name.clone()),
            },
            Some(o) if o.listen != l.listen => d.listeners_moved.push(l.name.clone()),
            Some(o) if o != l => d.listeners_changed.push(l.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.listeners {
        let renamed = d.listeners_renamed.iter().any(|(from, _)| *from == o.name);
        if !new_has(&o.name) && !renamed {
            d.listeners_removed.push(o.name.clone());
        }
    }

    for c in &new.clusters {
        match old.cluster(&c.name) {
            None => d.clusters_added.push(c.name.clone()),
            Some(o) => {
                for b in &c.backends {
                    if !o.backends.iter().any(|ob| ob.address == b.address) {
                        d.backends_added.push(format!("{}/{}", c.name, b.address));
                    }
                }
                for ob in &o.backends {
                    if !c.backends.iter().any(|b| b.address == ob.address) {
                        d.backends_removed
                            .push(format!("{}/{}", c.name, ob.address));
                    }
                }
                if o != c {
                    d.clusters_changed.push(c.name.clone());
                }
            }
        }
    }
    for o in &old.clusters {
        if new.cluster(&o.name).is_none() {
            d.clusters_removed.push(o.name.clone());
        }
    }

    d.admin_moved = old.admin_listen != new.admin_listen;
    if old.control_socket != new.control_socket {
        d.deferred.push("control.socket".into());
    }
    if old.pid_file != new.pid_file {
        d.deferred.push("pid_file".into());
    }
    if old.drain_timeout != new.drain_timeout {
        d.other_changed.push("drain.timeout".into());
    }
    if old.upgrade != new.upgrade {
        d.other_changed.push("upgrade".into());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(listeners: &[(&str, u16)], backends: &[&str]) -> Config {
        let mut yaml = String::from("listeners:\n");
        for (name, port) in listeners {
            yaml.push_str(&format!(
                "  - {{ name: {name}, listen: 127.0.0.1:{port}, cluster: app }}\n"
            ));
        }
        yaml.push_str("clusters:\n  - name: app\n    backends:\n");
        for b in backends {
            yaml.push_str(&format!("      - {{ address: \"{b}\" }}\n"));
        }
        Config::from_text(Path::new("/tmp/baton-diff-test.yaml"), &yaml).unwrap()
    }

    #[test]
    fn table() {
        let base = config(&[("web", 7001)], &["127.0.0.1:1"]);
        type Check = fn(&ConfigDiff) -> bool;
        let cases: Vec<(&str, Config, Check)> = vec![
            ("identical", base.clone(), |d| d.is_empty()),
            (
                "listener added",
                config(&[("web", 7001), ("api", 7002)], &["127.0.0.1:1"]),
                |d| d.listeners_added == ["api"] && d.listeners_removed.is_empty(),
            ),
            ("listener removed", config(&[], &["127.0.0.1:1"]), |d| {
                d.listeners_removed == ["web"]
            }),
            (
                "listener moved",
                config(&[("web", 7003)], &["127.0.0.1:1"]),
                |d| d.listeners_moved == ["web"] && d.listeners_added.is_empty(),
            ),
            (
                "listener renamed on the same address",
                config(&[("www", 7001)], &["127.0.0.1:1"]),
                |d| {
                    d.listeners_renamed == [("web".to_string(), "www".to_string())]
                        && d.listeners_added.is_empty()
                        && d.listeners_removed.is_empty()
                },
            ),
            (
                "backend swapped",
                config(&[("web", 7001)], &["127.0.0.1:2"]),
                |d| {
                    d.backends_added == ["app/127.0.0.1:2"]
                        && d.backends_removed == ["app/127.0.0.1:1"]
                        && d.clusters_changed == ["app"]
                },
            ),
            (
                "backend added",
                config(&[("web", 7001)], &["127.0.0.1:1", "127.0.0.1:2"]),
                |d| d.backends_added == ["app/127.0.0.1:2"] && d.backends_removed.is_empty(),
            ),
        ];
        for (what, new, check) in cases {
            let d = diff(&base, &new);
            assert!(check(&d), "{what}: {d:?}");
        }
    }

    #[test]
    fn settings_that_wait_for_an_upgrade_are_named() {
        let base = config(&[("web", 7001)], &["127.0.0.1:1"]);
        let mut new = base.clone();
        new.control_socket = "/tmp/other.sock".into();
        new.pid_file = Some("/tmp/other.pid".into());
        let d = diff(&base, &new);
        assert_eq!(d.deferred, ["control.socket", "pid_file"]);
        assert!(
            d.lines()
                .iter()
                .any(|l| l.starts_with("applies at the next upgrade"))
        );
    }
}

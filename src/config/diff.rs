//! The difference between two configs, as reload applies it.
//! Compares typed sections directly (they derive `PartialEq`).

use super::model::Config;
use std::fmt;

/// Identifies a port across reloads: cluster name and port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// Cluster name.
    pub cluster: String,
    /// Port name within the cluster.
    pub port: String,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.port)
    }
}

/// What changed between the running config and a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Clusters only in the new config.
    pub clusters_added: Vec<String>,
    /// Clusters only in the old config.
    pub clusters_removed: Vec<String>,
    /// Clusters whose hosts or tls changed (their watcher is updated).
    pub watchers_changed: Vec<String>,
    /// Clusters whose replica-position settings (`replica_position_*`,
    /// the resolved `monitor_user` or that user's passwords) changed.
    pub trackers_changed: Vec<String>,
    /// Ports only in the new config.
    pub ports_added: Vec<PortKey>,
    /// Ports only in the old config.
    pub ports_removed: Vec<PortKey>,
    /// Ports whose settings changed.
    pub ports_changed: Vec<PortKey>,
    /// Global timing fields that changed (applied at once).
    pub globals_changed: Vec<&'static str>,
    /// Fields that need a restart to take effect.
    pub restart_needed: Vec<&'static str>,
}

impl ConfigDiff {
    /// Computes the diff from `old` to `new`.
    #[must_use]
    pub fn between(old: &Config, new: &Config) -> Self {
        let mut d = Self::default();
        if old.listen_address != new.listen_address {
            d.restart_needed.push("listen_address");
        }
        if old.console.as_ref().map(|c| c.listen) != new.console.as_ref().map(|c| c.listen) {
            d.restart_needed.push("console.listen");
        }
        if old.io_uring != new.io_uring {
            d.restart_needed.push("io_uring");
        }
        if old.worker_packing != new.worker_packing {
            d.restart_needed.push("worker_packing");
        }
        if old.log_format != new.log_format {
            d.restart_needed.push("log_format");
        }
        for (field, changed) in [
            (
                "cluster_update_interval",
                old.cluster_update_interval != new.cluster_update_interval,
            ),
            ("api_timeout_ms", old.api_timeout != new.api_timeout),
            (
                "connect_timeout_ms",
                old.connect_timeout != new.connect_timeout,
            ),
            ("drain_timeout_ms", old.drain_timeout != new.drain_timeout),
            (
                "client_login_timeout_ms",
                old.client_login_timeout != new.client_login_timeout,
            ),
            ("admin_token", old.admin_token != new.admin_token),
            ("max_clients", old.max_clients != new.max_clients),
            (
                "max_clients_per_address",
                old.max_clients_per_address != new.max_clients_per_address,
            ),
            ("tcp_*", old.tcp != new.tcp),
            ("log_level", old.log_level != new.log_level),
            ("peers", old.peers != new.peers),
            ("peer_id", old.peer_id != new.peer_id),
        ] {
            if changed {
                d.globals_changed.push(field);
            }
        }
        for (name, oc) in &old.clusters {
            let Some(nc) = new.clusters.get(name) else {
                d.clusters_removed.push(name.clone());
                d.ports_removed
                    .extend(oc.ports.keys().map(|p| key(name, p)));
                continue;
            };
            if oc.hosts != nc.hosts || oc.tls != nc.tls {
                d.watchers_changed.push(name.clone());
            }
            let monitor = |c: &super::model::ClusterConfig| {
                let user = c.replica_positions.monitor_user.as_deref();
                c.users
                    .iter()
                    .find(|u| Some(u.name.as_str()) == user)
                    .cloned()
            };
            if oc.replica_positions != nc.replica_positions || monitor(oc) != monitor(nc) {
                d.trackers_changed.push(name.clone());
            }
            for (pname, op) in &oc.ports {
                match nc.ports.get(pname) {
                    None => d.ports_removed.push(key(name, pname)),
                    Some(np) if np != op => d.ports_changed.push(key(name, pname)),
                    Some(_) => {}
                }
            }
            for pname in nc.ports.keys().filter(|p| !oc.ports.contains_key(*p)) {
                d.ports_added.push(key(name, pname));
            }
        }
        for (name, nc) in new
            .clusters
            .iter()
            .filter(|(n, _)| !old.clusters.contains_key(*n))
        {
            d.clusters_added.push(name.clone());
            d.ports_added.extend(nc.ports.keys().map(|p| key(name, p)));
        }
        d
    }

    /// True when nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no changes");
        }
        let list = |v: &[PortKey]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "clusters +[{}] -[{}] watchers~[{}] trackers~[{}]; ports +[{}] -[{}] ~[{}]; globals~[{}]; restart needed for [{}]",
            self.clusters_added.join(","),
            self.clusters_removed.join(","),
            self.watchers_changed.join(","),
            self.trackers_changed.join(","),
            list(&self.ports_added),
            list(&self.ports_removed),
            list(&self.ports_changed),
            self.globals_changed.join(","),
            self.restart_needed.join(","),
        )
    }
}

fn key(cluster: &str, port: &str) -> PortKey {
    PortKey {
        cluster: cluster.to_owned(),
        port: port.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const BASE: &str = "clusters:
  c:
    hosts: ['http://127.0.0.11:8008']
    ports:
      rw: {listen: '127.0.0.1:7000', roles: [leader]}
      ro: {listen: '127.0.0.1:7001', roles: [async]}
      keep: {listen: '127.0.0.1:7002', roles: [any]}
";

    #[test]
    fn diff_names_added_removed_changed_ports() {
        let old = load_str(BASE).unwrap();
        let new_text = BASE
            .replace(
                "ro: {listen: '127.0.0.1:7001', roles: [async]}",
                "ro: {listen: '127.0.0.1:7001', roles: [sync]}",
            )
            .replace(
                "rw: {listen: '127.0.0.1:7000', roles: [leader]}",
                "new: {listen: '127.0.0.1:7003', roles: [leader]}",
            )
            .replace("8008'", "8008', 'http://127.0.0.12:8008'");
        let new = load_str(&new_text).unwrap();
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.ports_added, vec![key("c", "new")]);
        assert_eq!(d.ports_removed, vec![key("c", "rw")]);
        assert_eq!(d.ports_changed, vec![key("c", "ro")]);
        assert_eq!(d.watchers_changed, vec!["c".to_owned()]);
        assert!(ConfigDiff::between(&old, &old).is_empty());
    }

    #[test]
    fn io_uring_needs_a_restart() {
        let old = load_str(BASE).unwrap();
        let new = load_str(&format!("io_uring: off\n{BASE}")).unwrap();
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.restart_needed, vec!["io_uring"]);
    }

    #[test]
    fn replica_position_settings_and_the_monitor_password_are_diffed() {
        let with_users = BASE.replace(
            "    ports:",
            "    users: [{name: mon, password: a}, {name: other, password: b}]\n    ports:",
        );
        let old = load_str(&with_users).unwrap();
        let c = &old.clusters["c"].replica_positions;
        assert_eq!(c.monitor_user.as_deref(), Some("mon"));
        for new_text in [
            with_users.replace("    ports:", "    replica_position_poll_ms: 20\n    ports:"),
            with_users.replace("    ports:", "    monitor_user: other\n    ports:"),
            with_users.replace("password: a}", "password: z}"),
        ] {
            let d = ConfigDiff::between(&old, &load_str(&new_text).unwrap());
            assert_eq!(d.trackers_changed, vec!["c".to_owned()], "{new_text}");
        }
        let other_changed = with_users.replace("password: b}", "password: z}");
        let d = ConfigDiff::between(&old, &load_str(&other_changed).unwrap());
        assert!(d.trackers_changed.is_empty());
    }

    #[test]
    fn whole_cluster_added_and_removed() {
        let old = load_str(BASE).unwrap();
        let new = load_str(&BASE.replace("  c:", "  d:")).unwrap();
        let d = ConfigDiff::between(&old, &new);
        assert_eq!(d.clusters_removed, vec!["c".to_owned()]);
        assert_eq!(d.clusters_added, vec!["d".to_owned()]);
        assert_eq!(d.ports_removed.len(), 3);
        assert_eq!(d.ports_added.len(), 3);
    }
}

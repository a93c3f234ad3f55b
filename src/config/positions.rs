//! A cluster's replica-position tracking settings
//! (`clusters.<name>.replica_position_poll_ms`, `…_fast_poll_ms`,
//! `monitor_user`), resolved with their defaults when the file is loaded.
//! Read by whoever builds the `tracker`'s settings; no IO here.

use super::load::ConfigError;
use super::model::UserConfig;
use std::time::Duration;

/// Default time between position polls of a member.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);

/// Default least time between polls of a member while reads wait.
pub const DEFAULT_FAST_POLL: Duration = Duration::from_millis(2);

/// How the tracker polls a cluster's members, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPositions {
    /// Time between polls of each member (`replica_position_poll_ms`,
    /// default 50, at least 1; reload: at once).
    pub poll: Duration,
    /// Least time between polls of a member while a read waits for it
    /// (`replica_position_fast_poll_ms`, default 2, 1 to `poll`; reload:
    /// at once).
    pub fast_poll: Duration,
    /// The user (from the cluster's `users`) the monitor connections log
    /// in as (`monitor_user`, default: the first user whose password is
    /// plaintext or who has a `backend_password`; `None` when there is no
    /// such user: positions then come from Patroni; reload: new monitor
    /// connections).
    pub monitor_user: Option<String>,
}

impl Default for ReplicaPositions {
    fn default() -> Self {
        Self {
            poll: DEFAULT_POLL,
            fast_poll: DEFAULT_FAST_POLL,
            monitor_user: None,
        }
    }
}

/// The raw fields as the file gives them.
#[derive(Debug, Clone, Default)]
pub(super) struct RawPositions {
    pub(super) poll_ms: Option<u64>,
    pub(super) fast_poll_ms: Option<u64>,
    pub(super) monitor_user: Option<String>,
}

/// Whether pgvane can log in as `u` on its own: with a plaintext password
/// or a `backend_password` (a verifier or md5 hash alone needs a client).
fn can_log_in(u: &UserConfig) -> bool {
    u.backend_password.is_some()
        || !(u.password.starts_with("SCRAM-SHA-256$") || crate::auth::is_md5_hash(&u.password))
}

/// Applies defaults and checks the fields of cluster `path`, recording
/// problems in `errors`.
pub(super) fn resolve(
    raw: RawPositions,
    users: &[UserConfig],
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> ReplicaPositions {
    let mut push = |field: &str, message: String| {
        errors.push(ConfigError {
            path: format!("{path}.{field}"),
            message,
        });
    };
    let poll = match raw.poll_ms {
        Some(0) => {
            push("replica_position_poll_ms", "must be at least 1".to_owned());
            DEFAULT_POLL
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_POLL,
    };
    let fast_poll = match raw.fast_poll_ms {
        Some(0) => {
            push(
                "replica_position_fast_poll_ms",
                "must be at least 1".to_owned(),
            );
            DEFAULT_FAST_POLL
        }
        Some(ms) if Duration::from_millis(ms) > poll => {
            push(
                "replica_position_fast_poll_ms",
                format!(
                    "must not exceed replica_position_poll_ms ({})",
                    poll.as_millis()
                ),
            );
            poll
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_FAST_POLL.min(poll),
    };
    let monitor_user = match raw.monitor_user {
        Some(name) => match users.iter().find(|u| u.name == name) {
            Some(u) if can_log_in(u) => Some(name),
            Some(_) => {
                push(
                    "monitor_user",
                    format!(
                        "user `{name}` has neither a plaintext password nor a backend_password, so pgvane cannot log in as it"
                    ),
                );
                None
            }
            None => {
                push(
                    "monitor_user",
                    format!("`{name}` is not one of this cluster's `users`"),
                );
                None
            }
        },
        None => users.iter().find(|u| can_log_in(u)).map(|u| u.name.clone()),
    };
    ReplicaPositions {
        poll,
        fast_poll,
        monitor_user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, backend: Option<&str>) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            password: password.to_owned(),
            backend_password: backend.map(str::to_owned),
        }
    }

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy";
    const MD5: &str = "md53175bce1d3201d16594cebf9d7eb3f9d";

    fn run(raw: RawPositions, users: &[UserConfig]) -> (ReplicaPositions, Vec<String>) {
        let mut errors = Vec::new();
        let r = resolve(raw, users, "clusters.c", &mut errors);
        (r, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let users = [user("app", VERIFIER, None), user("mon", "secret", None)];
        let (r, errors) = run(RawPositions::default(), &users);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r.poll, Duration::from_millis(50));
        assert_eq!(r.fast_poll, Duration::from_millis(2));
        assert_eq!(
            r.monitor_user.as_deref(),
            Some("mon"),
            "first plaintext user"
        );
        let users = [user("a", MD5, None), user("b", VERIFIER, Some("pw"))];
        let (r, _) = run(RawPositions::default(), &users);
        assert_eq!(
            r.monitor_user.as_deref(),
            Some("b"),
            "backend_password counts"
        );
        let (r, errors) = run(RawPositions::default(), &[user("a", MD5, None)]);
        assert_eq!(
            (r.monitor_user, errors.len()),
            (None, 0),
            "none usable: Patroni"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let users = [user("app", VERIFIER, None), user("mon", "pw", None)];
        let cases = [
            (
                RawPositions {
                    poll_ms: Some(0),
                    ..RawPositions::default()
                },
                "clusters.c.replica_position_poll_ms: must be at least 1",
            ),
            (
                RawPositions {
                    fast_poll_ms: Some(0),
                    ..RawPositions::default()
                },
                "clusters.c.replica_position_fast_poll_ms: must be at least 1",
            ),
            (
                RawPositions {
                    poll_ms: Some(10),
                    fast_poll_ms: Some(20),
                    ..RawPositions::default()
                },
                "clusters.c.replica_position_fast_poll_ms: must not exceed replica_position_poll_ms (10)",
            ),
            (
                RawPositions {
                    monitor_user: Some("nobody".to_owned()),
                    ..RawPositions::default()
                },
                "clusters.c.monitor_user: `nobody` is not one of this cluster's `users`",
            ),
            (
                RawPositions {
                    monitor_user: Some("app".to_owned()),
                    ..RawPositions::default()
                },
                "clusters.c.monitor_user: user `app` has neither a plaintext password nor a backend_password, so pgvane cannot log in as it",
            ),
        ];
        for (raw, want) in cases {
            let (_, errors) = run(raw, &users);
            assert_eq!(errors, [want]);
        }
    }

    #[test]
    fn the_loader_resolves_them_under_the_cluster_path() {
        let text = "clusters:
  c:
    hosts: ['http://127.0.0.11:8008']
    monitor_user: nobody
    users: [{name: a, password: b}]
    ports:
      rw: {listen: '127.0.0.1:7000', roles: [leader]}
";
        let err = crate::config::load_str(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "clusters.c.monitor_user: `nobody` is not one of this cluster's `users`"
        );
        let ok = crate::config::load_str(
            &text.replace("monitor_user: nobody", "replica_position_poll_ms: 7"),
        )
        .unwrap();
        assert_eq!(
            ok.clusters["c"].replica_positions,
            ReplicaPositions {
                poll: Duration::from_millis(7),
                fast_poll: Duration::from_millis(2),
                monitor_user: Some("a".to_owned()),
            }
        );
    }

    #[test]
    fn given_values_are_kept() {
        let users = [user("mon", "pw", None), user("other", "pw", None)];
        let (r, errors) = run(
            RawPositions {
                poll_ms: Some(100),
                fast_poll_ms: Some(5),
                monitor_user: Some("other".to_owned()),
            },
            &users,
        );
        assert!(errors.is_empty());
        assert_eq!(
            r,
            ReplicaPositions {
                poll: Duration::from_millis(100),
                fast_poll: Duration::from_millis(5),
                monitor_user: Some("other".to_owned()),
            }
        );
    }
}

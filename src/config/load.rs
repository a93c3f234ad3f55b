//! Loading: YAML text → [`Config`], collecting every problem with its field
//! path. `serde_yaml` stays behind this file so it can be swapped for a fork.

use super::model::{ClusterConfig, Config, IoUring, Mode, PortConfig, TcpConfig};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One problem in a config file: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path, e.g. `clusters.main.ports.rw.listen` (empty for the file).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    #[serde(default)]
    cluster_update_interval: Option<u64>,
    #[serde(default)]
    listen_address: Option<SocketAddr>,
    #[serde(default)]
    api_timeout_ms: Option<u64>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    drain_timeout_ms: Option<u64>,
    #[serde(default)]
    client_login_timeout_ms: Option<u64>,
    #[serde(default)]
    admin_token: Option<String>,
    #[serde(default)]
    admin_token_file: Option<String>,
    #[serde(default)]
    max_clients: Option<usize>,
    #[serde(default)]
    max_clients_per_address: Option<usize>,
    #[serde(default)]
    tcp_keepalives_idle_s: Option<u64>,
    #[serde(default)]
    tcp_keepalives_interval_s: Option<u64>,
    #[serde(default)]
    tcp_keepalives_count: Option<u32>,
    #[serde(default)]
    tcp_user_timeout_ms: Option<u64>,
    #[serde(default)]
    io_uring: IoUring,
    #[serde(default)]
    worker_packing: bool,
    #[serde(default)]
    log_format: super::model::LogFormat,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    peer_id: Option<Value>,
    #[serde(default)]
    peers: BTreeMap<u16, String>,
    #[serde(default)]
    console: Option<RawConsole>,
    clusters: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: SocketAddr,
    #[serde(default)]
    users: Vec<super::secrets::RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    hosts: Vec<String>,
    #[serde(default)]
    tls: Option<super::model::TlsConfig>,
    ports: BTreeMap<String, Value>,
    #[serde(default)]
    users: Vec<super::secrets::RawUser>,
    #[serde(default)]
    users_file: Option<String>,
    #[serde(default)]
    replica_position_poll_ms: Option<u64>,
    #[serde(default)]
    replica_position_fast_poll_ms: Option<u64>,
    #[serde(default)]
    monitor_user: Option<String>,
}

/// Reads and loads a config file.
///
/// # Errors
/// Every problem found, each naming its field path.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    load_str(&text)
}

/// Loads a config from YAML text: `${NAME}` references in its values are
/// read from the environment, `*_file` fields and `users_file` from files.
///
/// # Errors
/// Every problem found, each naming its field path.
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut root: Value = serde_yaml::from_str(text).map_err(|e| one("", e.to_string()))?;
    super::secrets::expand_env(&mut root, "", &super::secrets::process_env, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut top: RawTop =
        typed(root, "", &mut errors).ok_or_else(|| ConfigErrors(errors.clone()))?;
    let console = top.console.take().map(|c| super::model::ConsoleConfig {
        listen: c.listen,
        users: super::secrets::users(c.users, None, "console", &mut errors),
    });
    let admin_token = super::secrets::inline_or_file(
        top.admin_token.clone(),
        top.admin_token_file.clone(),
        "",
        "admin_token",
        &mut errors,
    );
    let tcp = tcp_config(&top, &mut errors);
    let mut clusters = BTreeMap::new();
    for (name, value) in top.clusters {
        let path = format!("clusters.{name}");
        let Some(raw) = typed::<RawCluster>(value, &path, &mut errors) else {
            continue;
        };
        let mut ports = BTreeMap::new();
        for (port_name, value) in raw.ports {
            let ppath = format!("{path}.ports.{port_name}");
            if let Some(mut port) = typed::<PortConfig>(value, &ppath, &mut errors) {
                port.resolve();
                ports.insert(port_name, port);
            }
        }
        let positions = super::positions::RawPositions {
            poll_ms: raw.replica_position_poll_ms,
            fast_poll_ms: raw.replica_position_fast_poll_ms,
            monitor_user: raw.monitor_user,
        };
        let users = super::secrets::users(raw.users, raw.users_file.as_deref(), &path, &mut errors);
        let replica_positions = super::positions::resolve(positions, &users, &path, &mut errors);
        let cluster = ClusterConfig {
            hosts: raw.hosts,
            tls: raw.tls,
            ports,
            users,
            replica_positions,
        };
        clusters.insert(name, cluster);
    }
    let interval = Duration::from_secs(top.cluster_update_interval.unwrap_or(3));
    let api_default = Duration::from_millis(2000).min(interval.mul_f64(0.8));
    let config = Config {
        cluster_update_interval: interval,
        listen_address: top
            .listen_address
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8009))),
        api_timeout: top
            .api_timeout_ms
            .map_or(api_default, Duration::from_millis),
        connect_timeout: Duration::from_millis(top.connect_timeout_ms.unwrap_or(3000)),
        drain_timeout: Duration::from_millis(top.drain_timeout_ms.unwrap_or(10_000)),
        client_login_timeout: Duration::from_millis(
            top.client_login_timeout_ms.unwrap_or(60_000).max(1),
        ),
        admin_token,
        max_clients: top.max_clients,
        max_clients_per_address: top.max_clients_per_address,
        tcp,
        io_uring: top.io_uring,
        worker_packing: top.worker_packing,
        log_format: top.log_format,
        log_level: top.log_level.clone().unwrap_or_else(|| "info".to_owned()),
        peer_id: peer_id(top.peer_id.as_ref(), &mut errors),
        peers: top.peers.clone(),
        console,
        clusters,
    };
    validate(&config, top.cluster_update_interval, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The TCP settings, each checked against what Linux accepts; 0 is the
/// system's value, as in PostgreSQL.
fn tcp_config(top: &RawTop, errors: &mut Vec<ConfigError>) -> TcpConfig {
    let mut tcp = TcpConfig::default();
    let mut check = |path: &str, value: Option<u64>, max: u64| -> Option<Option<u64>> {
        match value {
            Some(v) if v > max => {
                errors.push(ConfigError {
                    path: path.to_owned(),
                    message: format!("must be at most {max}"),
                });
                None
            }
            Some(0) => Some(None),
            Some(v) => Some(Some(v)),
            None => None,
        }
    };
    // TCP_KEEPIDLE and TCP_KEEPINTVL take up to 32767 s, TCP_KEEPCNT 127,
    // TCP_USER_TIMEOUT a non-negative int of milliseconds.
    if let Some(v) = check("tcp_keepalives_idle_s", top.tcp_keepalives_idle_s, 32_767) {
        tcp.keepalives_idle = v.map(Duration::from_secs);
    }
    if let Some(v) = check(
        "tcp_keepalives_interval_s",
        top.tcp_keepalives_interval_s,
        32_767,
    ) {
        tcp.keepalives_interval = v.map(Duration::from_secs);
    }
    let count = top.tcp_keepalives_count.map(u64::from);
    if let Some(v) = check("tcp_keepalives_count", count, 127) {
        tcp.keepalives_count = v.and_then(|n| u32::try_from(n).ok());
    }
    let max_ms = u64::from(i32::MAX.unsigned_abs());
    if let Some(v) = check("tcp_user_timeout_ms", top.tcp_user_timeout_ms, max_ms) {
        tcp.user_timeout = v.map(Duration::from_millis);
    }
    tcp
}

/// `peer_id`: a number, or a string of digits (an `${ENV}` reference
/// gives a string), from 1 to [`MAX_PEER_ID`].
fn peer_id(v: Option<&Value>, errors: &mut Vec<ConfigError>) -> Option<u16> {
    let v = v?;
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n.and_then(|n| u16::try_from(n).ok()) {
        Some(n) if (1..=MAX_PEER_ID).contains(&n) => Some(n),
        _ => {
            errors.push(ConfigError {
                path: "peer_id".to_owned(),
                message: format!("must be a number from 1 to {MAX_PEER_ID}"),
            });
            None
        }
    }
}

/// The highest `peer_id`: cancel keys give it 14 bits.
pub const MAX_PEER_ID: u16 = 16_383;

fn one(path: &str, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: path.to_owned(),
        message,
    }])
}

/// Deserializes `value` as `T`, recording a failure under `prefix` + the inner path.
fn typed<T: for<'de> Deserialize<'de>>(
    value: Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match (prefix.is_empty(), inner == ".") {
                (true, _) => inner,
                (false, true) => prefix.to_owned(),
                (false, false) => format!("{prefix}.{inner}"),
            };
            errors.push(ConfigError {
                path,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

fn validate(config: &Config, interval: Option<u64>, errors: &mut Vec<ConfigError>) {
    let mut push = |path: String, message: &str| {
        errors.push(ConfigError {
            path,
            message: message.to_owned(),
        });
    };
    for (field, value) in [
        ("max_clients", config.max_clients),
        ("max_clients_per_address", config.max_clients_per_address),
    ] {
        if value == Some(0) {
            push(field.into(), "must be above 0");
        }
    }
    if interval == Some(0) {
        push(
            "cluster_update_interval".into(),
            "must be at least 1 second",
        );
    }
    if let Some(t) = &config.admin_token {
        if t.len() < 16 {
            push("admin_token".into(), "must be at least 16 characters");
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log_level) {
        push("log_level".into(), &format!("not a level or filter: {e}"));
    }
    for (id, host) in &config.peers {
        let path = format!("peers.{id}");
        if !(1..=MAX_PEER_ID).contains(id) {
            push(
                path.clone(),
                &format!("a peer_id is from 1 to {MAX_PEER_ID}"),
            );
        }
        if host.trim().is_empty() || host.contains('/') {
            push(path, "must be a host name or an address");
        }
    }
    if let Some(c) = &config.console {
        if c.users.is_empty() {
            push("console.users".into(), "at least one user is required");
        }
        for (i, u) in c.users.iter().enumerate() {
            if let Err(e) = crate::auth::Secret::from_config(&u.password) {
                push(format!("console.users[{i}].password"), &e.to_string());
            }
        }
    }
    if !config.peers.is_empty() && config.peer_id.is_none() {
        push("peer_id".into(), "required when `peers` is set");
    }
    if config.api_timeout.is_zero() {
        push("api_timeout_ms".into(), "must be above 0");
    }
    if config.connect_timeout.is_zero() {
        push("connect_timeout_ms".into(), "must be above 0");
    }
    if config.clusters.is_empty() {
        push("clusters".into(), "at least one cluster is required");
    }
    let mut listens: HashMap<SocketAddr, String> = HashMap::new();
    for (name, cluster) in &config.clusters {
        let path = format!("clusters.{name}");
        if cluster.hosts.is_empty() {
            push(
                format!("{path}.hosts"),
                "at least one Patroni host is required",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, host) in cluster.hosts.iter().enumerate() {
            let lower = host.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                push(
                    format!("{path}.hosts[{i}]"),
                    &format!("`{host}` must start with http:// or https://"),
                );
            } else if reqwest::Url::parse(host).is_err() {
                push(
                    format!("{path}.hosts[{i}]"),
                    &format!("`{host}` is not a valid URL"),
                );
            }
            if !seen.insert(lower.trim_end_matches('/').to_owned()) {
                push(
                    format!("{path}.hosts[{i}]"),
                    &format!("duplicate host `{host}`"),
                );
            }
        }
        if let Some(tls) = &cluster.tls {
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                push(
                    format!("{path}.tls"),
                    "client_cert and client_key must be given together",
                );
            }
        }
        for (i, u) in cluster.users.iter().enumerate() {
            if let Err(e) = crate::auth::Secret::from_config(&u.password) {
                push(format!("{path}.users[{i}].password"), &e.to_string());
            }
            if cluster.users[..i].iter().any(|o| o.name == u.name) {
                push(
                    format!("{path}.users[{i}].name"),
                    &format!("duplicate user `{}`", u.name),
                );
            }
        }
        if cluster.ports.is_empty() {
            push(format!("{path}.ports"), "at least one port is required");
        }
        for (pname, port) in &cluster.ports {
            let ppath = format!("{path}.ports.{pname}");
            if port.roles.is_empty() {
                push(format!("{ppath}.roles"), "at least one role is required");
            }
            if port.mode == Mode::Split {
                if cluster.users.is_empty() {
                    push(
                        format!("{ppath}.mode"),
                        "a split port needs `users` in its cluster",
                    );
                }
                if port.max_prepared_statements == Some(0) {
                    push(
                        format!("{ppath}.max_prepared_statements"),
                        "must be above 0",
                    );
                }
                if port.max_classified_query_bytes == Some(0) {
                    push(
                        format!("{ppath}.max_classified_query_bytes"),
                        "must be above 0",
                    );
                }
                if port.read_your_writes == Some(super::model::RywScope::Window)
                    && port.read_your_writes_ms == Some(0)
                {
                    push(
                        format!("{ppath}.read_your_writes_ms"),
                        "`read_your_writes: window` needs a window above 0",
                    );
                }
                if port.pool_size == Some(0) {
                    push(format!("{ppath}.pool_size"), "must be above 0");
                }
                if let Some(tls) = &port.tls {
                    if tls.mode != super::model::ClientTlsMode::Disable {
                        for (field, set) in
                            [("cert", tls.cert.is_some()), ("key", tls.key.is_some())]
                        {
                            if !set {
                                push(
                                    format!("{ppath}.tls.{field}"),
                                    "required unless `mode: disable`",
                                );
                            }
                        }
                    }
                }
                if let Some(st) = &port.server_tls {
                    use super::model::ServerTlsMode as M;
                    if matches!(st.mode, M::VerifyCa | M::VerifyFull) && st.ca_file.is_none() {
                        push(
                            format!("{ppath}.server_tls.ca_file"),
                            "required for verify-ca and verify-full",
                        );
                    }
                }
                let binding = port.server_channel_binding.unwrap_or_default();
                if binding == super::model::ChannelBinding::Require {
                    let no_tls = port
                        .server_tls
                        .as_ref()
                        .is_some_and(|t| t.mode == super::model::ServerTlsMode::Disable);
                    if no_tls {
                        push(
                            format!("{ppath}.server_channel_binding"),
                            "`require` needs TLS to the nodes: server_tls.mode is disable",
                        );
                    }
                    let scram = port.server_require_auth.is_empty()
                        || port
                            .server_require_auth
                            .contains(&super::model::ServerAuth::ScramSha256);
                    if !scram {
                        push(
                            format!("{ppath}.server_channel_binding"),
                            "`require` binds SCRAM, which server_require_auth does not allow",
                        );
                    }
                }
                if port.roles == [super::model::RoleSel::Leader] {
                    push(
                        format!("{ppath}.roles"),
                        "a split port's roles say where reads may go: use sync, async or any",
                    );
                }
            } else {
                for (field, set) in [
                    ("pool_size", port.pool_size.is_some()),
                    (
                        "pool_acquire_timeout_ms",
                        port.pool_acquire_timeout_ms.is_some(),
                    ),
                    (
                        "server_idle_timeout_ms",
                        port.server_idle_timeout_ms.is_some(),
                    ),
                    ("server_lifetime_ms", port.server_lifetime_ms.is_some()),
                    ("fallback_to_leader", port.fallback_to_leader.is_some()),
                    ("read_only_functions", !port.read_only_functions.is_empty()),
                    ("read_your_writes_ms", port.read_your_writes_ms.is_some()),
                    ("read_your_writes", port.read_your_writes.is_some()),
                    (
                        "read_your_writes_wait_ms",
                        port.read_your_writes_wait_ms.is_some(),
                    ),
                    (
                        "read_your_writes_on_timeout",
                        port.read_your_writes_on_timeout.is_some(),
                    ),
                    (
                        "max_prepared_statements",
                        port.max_prepared_statements.is_some(),
                    ),
                    (
                        "idle_in_transaction_timeout_ms",
                        port.idle_in_transaction_timeout_ms.is_some(),
                    ),
                    (
                        "pinned_idle_timeout_ms",
                        port.pinned_idle_timeout_ms.is_some(),
                    ),
                    (
                        "max_classified_query_bytes",
                        port.max_classified_query_bytes.is_some(),
                    ),
                    ("server_tls", port.server_tls.is_some()),
                    ("server_require_auth", !port.server_require_auth.is_empty()),
                    (
                        "server_channel_binding",
                        port.server_channel_binding.is_some(),
                    ),
                ] {
                    if set {
                        push(
                            format!("{ppath}.{field}"),
                            "only applies to `mode: split` ports",
                        );
                    }
                }
                for (i, rule) in port.access.iter().enumerate() {
                    for (field, set) in [
                        ("users", !rule.users.is_empty()),
                        ("databases", !rule.databases.is_empty()),
                        ("tls", rule.tls),
                    ] {
                        if set {
                            push(
                                format!("{ppath}.access[{i}].{field}"),
                                "role ports relay bytes unread and see only the client address",
                            );
                        }
                    }
                }
                if port.tls.is_some() {
                    push(
                        format!("{ppath}.tls"),
                        "role ports pass TLS through to PostgreSQL unchanged: turn on `ssl` on the nodes instead",
                    );
                }
            }
            for (field, set) in [
                ("lag_grace_ms", port.lag_grace_ms.is_some()),
                ("lag_hard_factor", port.lag_hard_factor.is_some()),
                (
                    "lag_low_watermark_in_bytes",
                    port.lag_low_watermark_in_bytes.is_some(),
                ),
            ] {
                if set && port.max_lag_in_bytes.is_none() {
                    push(
                        format!("{ppath}.{field}"),
                        "needs `max_lag_in_bytes` on the same port",
                    );
                }
            }
            if port.lag_hard_factor == Some(0) {
                push(format!("{ppath}.lag_hard_factor"), "must be 1 or more");
            }
            if let (Some(low), Some(max)) = (port.lag_low_watermark_in_bytes, port.max_lag_in_bytes)
            {
                if low > max {
                    push(
                        format!("{ppath}.lag_low_watermark_in_bytes"),
                        "must not exceed `max_lag_in_bytes`",
                    );
                }
            }
            if port.host_port == Some(0) {
                push(format!("{ppath}.host_port"), "must be between 1 and 65535");
            }
            if port.max_clients == Some(0) {
                push(format!("{ppath}.max_clients"), "must be above 0");
            }
            if let Some(other) = listens.insert(port.listen, ppath.clone()) {
                push(
                    format!("{ppath}.listen"),
                    &format!("{} is already used by {other}", port.listen),
                );
            }
        }
    }
    if let Some(other) = listens.get(&config.listen_address) {
        push(
            "listen_address".into(),
            &format!("{} is already used by {other}", config.listen_address),
        );
    }
}

#[cfg(test)]
mod tests;

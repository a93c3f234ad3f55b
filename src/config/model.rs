//! The typed configuration model. Every field documents its default and
//! whether a reload changes it; `docs/configuration.md` mirrors this file.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Seconds between Patroni polls (`cluster_update_interval`, default 3;
    /// reload: applies at once).
    pub cluster_update_interval: Duration,
    /// Admin HTTP API address (`listen_address`, default 127.0.0.1:8009;
    /// reload: needs a restart).
    pub listen_address: SocketAddr,
    /// Timeout for one Patroni API request (`api_timeout_ms`, default 2000,
    /// capped below the poll interval; reload: applies at once).
    pub api_timeout: Duration,
    /// Timeout for pgvane's TCP connect to a node (`connect_timeout_ms`,
    /// default 3000; reload: applies to new clients).
    pub connect_timeout: Duration,
    /// How long removed ports and shutdown wait for clients to leave
    /// (`drain_timeout_ms`, default 10000; reload: applies at once).
    pub drain_timeout: Duration,
    /// Longest a client may take from connecting to being logged in
    /// (`client_login_timeout_ms`, default 60000 like PostgreSQL's
    /// `authentication_timeout`; reload: new clients).
    pub client_login_timeout: Duration,
    /// Bearer token the admin API requires for `POST /reload`
    /// (`admin_token` or `admin_token_file`, default none: then `/reload` is taken from loopback
    /// only; `/update_clusters` never needs it; reload: at once).
    pub admin_token: Option<String>,
    /// Most clients all ports together accept at once (`max_clients`,
    /// default: no limit; reload: new clients); more get SQLSTATE 53300.
    pub max_clients: Option<usize>,
    /// Most clients one address may have open across all ports
    /// (`max_clients_per_address`, default: no limit; reload: new clients);
    /// more get SQLSTATE 53300.
    pub max_clients_per_address: Option<usize>,
    /// TCP keepalive and user timeout on every client and server socket
    /// (reload: new connections).
    pub tcp: TcpConfig,
    /// The role ports' relay engine (`io_uring`, default `auto`; reload:
    /// needs a restart).
    pub io_uring: IoUring,
    /// Only as many client workers take clients as the load needs, and
    /// idle split sessions move between them (`worker_packing`, default
    /// off; reload: needs a restart).
    pub worker_packing: bool,
    /// How log lines are written (`log_format`, default `text`; reload:
    /// needs a restart).
    pub log_format: LogFormat,
    /// Which log lines are written: a level or a `tracing` filter such as
    /// `info,pgvane::session=debug` (`log_level`, default `info`; `RUST_LOG`
    /// or `--log` override it; reload: at once).
    pub log_level: String,
    /// This instance's number among pgvane instances behind one balancer
    /// (`peer_id`, 1 to 16383, a number or a string of digits such as
    /// `${PEER_ID}`; default none; reload: new sessions' keys; a key is
    /// always looked up here first, so older keys still work). Split-port
    /// cancel keys carry it.
    pub peer_id: Option<u16>,
    /// The other instances, by `peer_id` → host or address (`peers`,
    /// default none; this instance's own entry is ignored, so every
    /// instance can share the list; reload: at once). A split-port
    /// CancelRequest whose key another instance issued is forwarded to
    /// that instance, on the same port, as pgbouncer's `[peers]`.
    pub peers: BTreeMap<u16, String>,
    /// The PostgreSQL-protocol admin console (`console`, default none;
    /// `listen` needs a restart, `users` apply to new logins).
    pub console: Option<ConsoleConfig>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// The admin console (`console`): where it listens and who may log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Its address (`console.listen`, e.g. `127.0.0.1:6499`).
    pub listen: SocketAddr,
    /// Who may log in (`console.users`, as cluster users: a password
    /// inline, in `password_file` or as a verifier; at least one).
    pub users: Vec<UserConfig>,
}

/// How pgvane notices a peer that vanished without a FIN, or stopped
/// taking bytes: PostgreSQL's `tcp_keepalives_*` and `tcp_user_timeout`
/// (0 in the file means the system's value, as in PostgreSQL). Keepalive
/// is on for client and server sockets; the user timeout is for client
/// sockets only, since a node that stops reading (a `COPY FROM` waiting on
/// a lock) is not a dead peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConfig {
    /// Idle time before the first keepalive probe (`tcp_keepalives_idle_s`,
    /// default 60; `None`: the system's, 7200 s on Linux).
    pub keepalives_idle: Option<Duration>,
    /// Time between probes (`tcp_keepalives_interval_s`, default 10;
    /// `None`: the system's, 75 s).
    pub keepalives_interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped
    /// (`tcp_keepalives_count`, default: the system's, 9 on Linux).
    pub keepalives_count: Option<u32>,
    /// Longest time bytes sent to a client may stay unacknowledged, or its
    /// receive window stay closed, before the connection is dropped
    /// (`tcp_user_timeout_ms`, default: the system's, about 15 minutes of
    /// retransmissions and no limit for a closed window). When set, Linux
    /// also drops an idle peer at the first unanswered keepalive probe
    /// after this long instead of counting probes.
    pub user_timeout: Option<Duration>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            keepalives_idle: Some(Duration::from_secs(60)),
            keepalives_interval: Some(Duration::from_secs(10)),
            keepalives_count: None,
            user_timeout: None,
        }
    }
}

/// One Patroni cluster (`clusters.<name>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Patroni REST API base URLs, `http://` or `https://` (reload: at once).
    pub hosts: Vec<String>,
    /// TLS settings for `https://` hosts (reload: at once).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Ports by name. Filled by the loader, which reads each port on its own
    /// so that every port's errors are reported together.
    #[serde(skip)]
    pub ports: BTreeMap<String, PortConfig>,
    /// Who may log in to split ports: `users` as written (each password
    /// inline or in `password_file`), then those of `users_file`
    /// (pgbouncer's `auth_file` format); files are read again at each
    /// reload (reload: new logins).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// How replica WAL positions are polled. Filled by the loader, with
    /// its defaults applied.
    #[serde(skip)]
    pub replica_positions: super::positions::ReplicaPositions,
}

/// A user of split ports (`clusters.<name>.users[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Role name, used for the client login and the backend login.
    pub name: String,
    /// Plaintext, a `SCRAM-SHA-256$…` verifier or an `md5…` hash. Clients
    /// authenticate with SCRAM-SHA-256 (md5 when an md5 hash is given).
    pub password: String,
    /// Password pgvane uses to log in to PostgreSQL when `password` is a
    /// verifier or hash (default: `password` when plaintext; none = trust).
    #[serde(default)]
    pub backend_password: Option<String>,
}

/// TLS settings for the Patroni API client (`clusters.<name>.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust instead of none (default: none,
    /// then only `skip_verify` lets `https://` work with private CAs).
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// PEM client certificate for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
    /// Accept any server certificate (default false).
    #[serde(default)]
    pub skip_verify: Option<bool>,
}

/// Whether a split port speaks TLS with its clients
/// (`clusters.<c>.ports.<p>.tls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest answered `N`; plaintext only.
    Disable,
    /// TLS for clients that ask (SSLRequest or direct TLS), plaintext for
    /// the others (the default when a `tls` block is given).
    #[default]
    Allow,
    /// Plaintext clients are refused with SQLSTATE 28000 after their
    /// startup packet, as a `hostssl`-only pg_hba.conf does.
    Require,
}

/// Client-side TLS of a split port (`clusters.<c>.ports.<p>.tls`; reload:
/// new clients, and the files are read again on every reload).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortTls {
    /// `disable`, `allow` (default) or `require`.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// PEM certificate chain, leaf first (required unless `disable`).
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM private key of `cert` (required unless `disable`).
    #[serde(default)]
    pub key: Option<String>,
}

/// How a split port's backends use TLS, as libpq's `sslmode`
/// (`clusters.<c>.ports.<p>.server_tls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server supports it, else plaintext (the default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is checked only with a CA file.
    Require,
    /// TLS with a certificate chain that leads to the CA file.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the node's host.
    VerifyFull,
}

impl ServerTlsMode {
    /// The name used in the config and in errors.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Backend TLS of a split port (`clusters.<c>.ports.<p>.server_tls`;
/// reload: new backends, and the CA file is read again on every reload).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// `disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// PEM file of the CA certificates that sign the nodes' certificates
    /// (required for `verify-ca` and `verify-full`; with `prefer` or
    /// `require` it makes them check the chain too, as libpq).
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// An authentication request a backend may make, named as libpq's
/// `require_auth` (`clusters.<c>.ports.<p>.server_require_auth[i]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerAuth {
    /// The server asks for the password in clear.
    Password,
    /// The server asks for an md5 hash.
    Md5,
    /// The server asks for SCRAM-SHA-256 (with or without channel binding).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// The server asks for nothing (trust).
    None,
}

impl ServerAuth {
    /// The name used in the config and in errors.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Md5 => "md5",
            Self::ScramSha256 => "scram-sha-256",
            Self::None => "none",
        }
    }
}

/// SCRAM channel binding to backends, as libpq's `channel_binding`
/// (`clusters.<c>.ports.<p>.server_channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind (SCRAM-SHA-256 only).
    Disable,
    /// SCRAM-SHA-256-PLUS over TLS when the server offers it (the default).
    #[default]
    Prefer,
    /// Only SCRAM-SHA-256-PLUS over TLS; anything else is refused.
    Require,
}

/// Whether role ports relay bytes with io_uring (`io_uring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoUring {
    /// io_uring when the kernel allows it, else epoll (one log line says which).
    #[default]
    Auto,
    /// io_uring or refuse to start.
    On,
    /// epoll (tokio's reactor).
    Off,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, its fields named (for log shippers).
    Json,
}

/// How a port treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Role port: relay each whole connection to one node.
    #[default]
    Tcp,
    /// Split port: statement-level routing with pools.
    Split,
}

/// A role a port accepts, as patroni_proxy spells it (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleSel {
    /// `leader` and `standby_leader` members.
    Leader,
    /// `sync_standby` and `quorum_standby` members.
    Sync,
    /// `replica` members.
    Async,
    /// All of the above.
    Any,
}

impl<'de> Deserialize<'de> for RoleSel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.to_ascii_lowercase().as_str() {
            "leader" => Ok(Self::Leader),
            "sync" => Ok(Self::Sync),
            "async" => Ok(Self::Async),
            "any" => Ok(Self::Any),
            _ => Err(serde::de::Error::custom(format!(
                "unknown role `{text}`, expected one of leader, sync, async, any"
            ))),
        }
    }
}

/// One listening port (`clusters.<name>.ports.<port>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Address to listen on, e.g. `127.0.0.1:6432` (reload: rebinds).
    pub listen: SocketAddr,
    /// `tcp` (default) or `split`.
    #[serde(default)]
    pub mode: Mode,
    /// Roles whose members may serve this port.
    pub roles: Vec<RoleSel>,
    /// Port to connect to on the chosen member (default: the member's own
    /// `port` from Patroni).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// Replicas whose lag exceeds this many bytes take no new clients and,
    /// after `lag_grace_ms`, lose their clients (default: no limit). Never
    /// applies to leaders.
    #[serde(default)]
    pub max_lag_in_bytes: Option<u64>,
    /// How long a replica may stay over `max_lag_in_bytes` before its
    /// clients are evicted, ms (default 2000; 0 = at once).
    #[serde(default)]
    pub lag_grace_ms: Option<u64>,
    /// Past this multiple of `max_lag_in_bytes` clients are evicted without
    /// grace (default 4).
    #[serde(default)]
    pub lag_hard_factor: Option<u64>,
    /// A replica that exceeded the limit takes new clients again only at or
    /// below this lag (default half of `max_lag_in_bytes`).
    #[serde(default)]
    pub lag_low_watermark_in_bytes: Option<u64>,
    /// Most clients this port accepts at once (default: no limit); more get
    /// SQLSTATE 53300.
    #[serde(default)]
    pub max_clients: Option<usize>,
    /// Split ports: backends per (node, database, user) (default 20).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Split ports: longest wait for a pooled backend, ms (default 5000).
    #[serde(default)]
    pub pool_acquire_timeout_ms: Option<u64>,
    /// Split ports: idle backends older than this are closed, ms (default 600000).
    #[serde(default)]
    pub server_idle_timeout_ms: Option<u64>,
    /// Split ports: backends older than this are closed when returned, ms
    /// (default 3600000).
    #[serde(default)]
    pub server_lifetime_ms: Option<u64>,
    /// Split ports: send reads to the leader when no replica qualifies
    /// (default true); false answers 57P03 instead.
    #[serde(default)]
    pub fallback_to_leader: Option<bool>,
    /// Split ports: user functions known to be read-only (lower-case names),
    /// allowed on replicas.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Split ports: after a session writes, its reads go to the leader for
    /// this long, so it reads its own writes (default 1000; 0 = off).
    #[serde(default)]
    pub read_your_writes_ms: Option<u64>,
    /// Split ports: most statements pgvane keeps prepared on one backend;
    /// the least recently used is closed past it (default 200).
    #[serde(default)]
    pub max_prepared_statements: Option<usize>,
    /// Split ports: a client idle this long inside a transaction is
    /// disconnected (25P03) and its backend rolled back, ms (default off).
    #[serde(default)]
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// Split ports: a client idle this long while its session is pinned to
    /// a backend is disconnected (57P05), ms (default off).
    #[serde(default)]
    pub pinned_idle_timeout_ms: Option<u64>,
    /// Split ports: TLS with clients (default: none, SSLRequest answered
    /// `N`). Role ports pass TLS through to PostgreSQL and take no `tls`.
    #[serde(default)]
    pub tls: Option<PortTls>,
    /// Split ports: query texts longer than this many bytes go to the
    /// leader without being lexed or parsed (default 1048576).
    #[serde(default)]
    pub max_classified_query_bytes: Option<usize>,
    /// Split ports: TLS to the nodes (default: `mode: prefer`, no CA file).
    #[serde(default)]
    pub server_tls: Option<ServerTlsConfig>,
    /// Split ports: the authentication requests a node may make when
    /// pgvane logs in (default: any); anything else is refused before the
    /// password is used, as libpq's `require_auth`.
    #[serde(default)]
    pub server_require_auth: Vec<ServerAuth>,
    /// Split ports: `disable`, `prefer` (default) or `require` SCRAM
    /// channel binding to the nodes.
    #[serde(default)]
    pub server_channel_binding: Option<ChannelBinding>,
    /// Who may connect, like pg_hba.conf `host` lines that allow (default:
    /// everyone). A client matching no rule is refused with 28000. Role
    /// ports see no user or database, so their rules take `address` only.
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// Split ports: how a read sees the writes before it (default
    /// `session`; `window` when only `read_your_writes_ms` is given).
    pub read_your_writes: Option<RywScope>,
    /// Split ports: longest a read with a floor waits for a replica to
    /// replay it before `read_your_writes_on_timeout`, ms (default 20).
    pub read_your_writes_wait_ms: Option<u64>,
    /// Split ports: what a read whose floor no replica reached in time
    /// does: `leader` (default) or `error` (SQLSTATE 58000).
    pub read_your_writes_on_timeout: Option<RywTimeout>,
    /// Split ports and role ports serving `leader`: while the leader is
    /// being replaced, how long a request (split) or a new client (role)
    /// that needs it waits for the new one, ms (default 30000; 0 = refuse
    /// with 57P03 at once).
    pub leader_wait_ms: Option<u64>,
    /// Every field above with its default applied, filled when the config
    /// is loaded: code reads these, never the optional fields.
    #[serde(skip)]
    pub resolved: PortSettings,
}

/// How a split port keeps reads after writes (`read_your_writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RywScope {
    /// Reads see whatever the replica they land on has replayed.
    Off,
    /// After a write, the session's reads go to the leader for
    /// `read_your_writes_ms` (the old behaviour).
    Window,
    /// A read sees every write its own session was told committed.
    #[default]
    Session,
    /// A read sees every write acknowledged to any session of the same
    /// user and database on this pgvane.
    User,
    /// A read sees every write acknowledged to any session of the same
    /// database on this pgvane.
    Database,
    /// A read sees every commit on the leader before it arrived, across
    /// pgvane instances (one leader round trip per read).
    Cluster,
}

impl RywScope {
    /// Metric label and config text.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Window => "window",
            Self::Session => "session",
            Self::User => "user",
            Self::Database => "database",
            Self::Cluster => "cluster",
        }
    }

    /// Whether commits are captured for this scope.
    #[must_use]
    pub fn captures(self) -> bool {
        matches!(self, Self::Session | Self::User | Self::Database)
    }
}

/// What a floored read does when no replica reached its floor in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RywTimeout {
    /// Run it on the leader.
    #[default]
    Leader,
    /// Answer SQLSTATE 58000 naming the floor and the wait.
    Error,
}

/// A port's settings with defaults applied (see [`PortConfig`] for each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    /// `pool_size` (20).
    pub pool_size: usize,
    /// `pool_acquire_timeout_ms` (5000).
    pub pool_acquire_timeout: Duration,
    /// `server_idle_timeout_ms` (600000).
    pub server_idle_timeout: Duration,
    /// `server_lifetime_ms` (3600000).
    pub server_lifetime: Duration,
    /// `fallback_to_leader` (true).
    pub fallback_to_leader: bool,
    /// `read_your_writes` (session; window when only the window is set).
    pub read_your_writes: RywScope,
    /// `read_your_writes_ms` (1000).
    pub read_your_writes_window: Duration,
    /// `read_your_writes_wait_ms` (20).
    pub read_your_writes_wait: Duration,
    /// `read_your_writes_on_timeout` (leader).
    pub read_your_writes_on_timeout: RywTimeout,
    /// `leader_wait_ms` (30000).
    pub leader_wait: Duration,
    /// `max_prepared_statements` (200).
    pub max_prepared_statements: usize,
    /// `idle_in_transaction_timeout_ms` (off).
    pub idle_in_transaction_timeout: Option<Duration>,
    /// `pinned_idle_timeout_ms` (off).
    pub pinned_idle_timeout: Option<Duration>,
    /// `max_classified_query_bytes` (1 MiB).
    pub max_classified_query_bytes: usize,
}

impl Default for PortSettings {
    fn default() -> Self {
        Self {
            pool_size: 20,
            pool_acquire_timeout: Duration::from_millis(5000),
            server_idle_timeout: Duration::from_millis(600_000),
            server_lifetime: Duration::from_millis(3_600_000),
            fallback_to_leader: true,
            read_your_writes: RywScope::Session,
            read_your_writes_window: Duration::from_millis(1000),
            read_your_writes_wait: Duration::from_millis(20),
            read_your_writes_on_timeout: RywTimeout::Leader,
            leader_wait: Duration::from_millis(30_000),
            max_prepared_statements: 200,
            idle_in_transaction_timeout: None,
            pinned_idle_timeout: None,
            max_classified_query_bytes: 1024 * 1024,
        }
    }
}

impl PortConfig {
    /// Fills [`Self::resolved`] from the optional fields.
    pub fn resolve(&mut self) {
        let d = PortSettings::default();
        let ms = Duration::from_millis;
        let on = |v: Option<u64>| v.filter(|v| *v > 0).map(ms);
        self.resolved = PortSettings {
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            pool_acquire_timeout: self
                .pool_acquire_timeout_ms
                .map_or(d.pool_acquire_timeout, ms),
            server_idle_timeout: self
                .server_idle_timeout_ms
                .map_or(d.server_idle_timeout, ms),
            server_lifetime: self.server_lifetime_ms.map_or(d.server_lifetime, ms),
            fallback_to_leader: self.fallback_to_leader.unwrap_or(true),
            read_your_writes: self
                .read_your_writes
                .unwrap_or(match self.read_your_writes_ms {
                    Some(0) => RywScope::Off,
                    Some(_) => RywScope::Window,
                    None => RywScope::Session,
                }),
            read_your_writes_window: self
                .read_your_writes_ms
                .map_or(d.read_your_writes_window, ms),
            read_your_writes_wait: self
                .read_your_writes_wait_ms
                .map_or(d.read_your_writes_wait, ms),
            read_your_writes_on_timeout: self.read_your_writes_on_timeout.unwrap_or_default(),
            leader_wait: self.leader_wait_ms.map_or(d.leader_wait, ms),
            max_prepared_statements: self
                .max_prepared_statements
                .unwrap_or(d.max_prepared_statements),
            idle_in_transaction_timeout: on(self.idle_in_transaction_timeout_ms),
            pinned_idle_timeout: on(self.pinned_idle_timeout_ms),
            max_classified_query_bytes: self
                .max_classified_query_bytes
                .unwrap_or(d.max_classified_query_bytes),
        };
    }
}

/// One allow rule of a port (`clusters.<c>.ports.<p>.access[i]`); every
/// field given must match, an absent one matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Client network in CIDR form, e.g. `10.0.0.0/8` or `::1/128`.
    #[serde(default)]
    pub address: Option<ipnet::IpNet>,
    /// User names the rule admits (default: all).
    #[serde(default)]
    pub users: Vec<String>,
    /// Database names the rule admits (default: all).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Admit only TLS clients, as `hostssl` (split ports; default false).
    #[serde(default)]
    pub tls: bool,
}

/// What a port knows about a client when it checks its access rules.
#[derive(Debug, Clone, Copy)]
pub struct AccessClient<'a> {
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// The user it logs in as (`None` on role ports).
    pub user: Option<&'a str>,
    /// The database it asks for (`None` on role ports).
    pub database: Option<&'a str>,
    /// Whether it speaks TLS to pgvane.
    pub tls: bool,
}

impl AccessRule {
    /// Whether this rule admits `c`. A user or database list never
    /// matches a client whose name is unknown.
    #[must_use]
    pub fn admits(&self, c: &AccessClient<'_>) -> bool {
        let listed = |list: &[String], name: Option<&str>| {
            list.is_empty() || name.is_some_and(|n| list.iter().any(|l| l == n))
        };
        self.address
            .is_none_or(|net| net.contains(&canonical(c.ip)))
            && listed(&self.users, c.user)
            && listed(&self.databases, c.database)
            && (!self.tls || c.tls)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries, so
/// `10.0.0.0/8` matches a client on a dual-stack listener.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

impl PortConfig {
    /// A role port on `listen` for `roles` with every optional field unset.
    #[must_use]
    pub fn new(listen: SocketAddr, roles: Vec<RoleSel>) -> Self {
        Self {
            listen,
            mode: Mode::Tcp,
            roles,
            host_port: None,
            max_lag_in_bytes: None,
            lag_grace_ms: None,
            lag_hard_factor: None,
            lag_low_watermark_in_bytes: None,
            max_clients: None,
            pool_size: None,
            pool_acquire_timeout_ms: None,
            server_idle_timeout_ms: None,
            server_lifetime_ms: None,
            fallback_to_leader: None,
            read_only_functions: Vec::new(),
            read_your_writes_ms: None,
            max_prepared_statements: None,
            idle_in_transaction_timeout_ms: None,
            pinned_idle_timeout_ms: None,
            tls: None,
            max_classified_query_bytes: None,
            server_tls: None,
            server_require_auth: Vec::new(),
            server_channel_binding: None,
            access: Vec::new(),
            read_your_writes: None,
            read_your_writes_wait_ms: None,
            read_your_writes_on_timeout: None,
            leader_wait_ms: None,
            resolved: PortSettings::default(),
        }
    }

    /// Whether the access rules admit `c` (no rules: everyone).
    #[must_use]
    pub fn admits(&self, c: &AccessClient<'_>) -> bool {
        self.access.is_empty() || self.access.iter().any(|r| r.admits(c))
    }

    /// Whether a member of class `role` may serve this port by role alone.
    #[must_use]
    pub fn wants(&self, role: RoleSel) -> bool {
        self.roles.iter().any(|r| *r == RoleSel::Any || *r == role)
    }
}

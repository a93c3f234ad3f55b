//! pgvane's configuration: the typed model, loading with field paths,
//! semantic validation and the diff used by reload.
//! Does no IO beyond reading the file and the secret files it names; the
//! running config is published by `app`.

mod diff;
mod load;
mod model;
mod positions;
mod secrets;

pub use diff::{ConfigDiff, PortKey};
pub use load::{ConfigError, ConfigErrors, MAX_PEER_ID, load_file, load_str};
pub use model::{
    AccessClient, AccessRule, ChannelBinding, ClientTlsMode, ClusterConfig, Config, ConsoleConfig,
    IoUring, LogFormat, Mode, PortConfig, PortSettings, PortTls, RoleSel, RywScope, RywTimeout,
    ServerAuth, ServerTlsConfig, ServerTlsMode, TcpConfig, TlsConfig, UserConfig,
};
pub use positions::{DEFAULT_FAST_POLL, DEFAULT_POLL, ReplicaPositions};

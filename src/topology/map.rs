//! The published picture of one cluster: members with role, state, lag and
//! tags, plus generation and staleness. Built by `patroni::parse`, published
//! by the watcher, read by router, admin and app.

use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Patroni's role of a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// `leader` (also `master`/`primary` from old Patroni versions).
    Leader,
    /// `standby_leader`: leader of a standby cluster.
    StandbyLeader,
    /// `sync_standby`.
    SyncStandby,
    /// `quorum_standby` (Patroni ≥ 4.0, `synchronous_mode: quorum`).
    QuorumStandby,
    /// `replica`.
    Replica,
    /// Anything else, kept verbatim; never routable.
    Other(String),
}

impl MemberRole {
    /// Maps Patroni's role string.
    #[must_use]
    pub fn from_patroni(s: &str) -> Self {
        match s {
            "leader" | "master" | "primary" => Self::Leader,
            "standby_leader" => Self::StandbyLeader,
            "sync_standby" => Self::SyncStandby,
            "quorum_standby" => Self::QuorumStandby,
            "replica" => Self::Replica,
            other => Self::Other(other.to_owned()),
        }
    }

    /// True for `leader` and `standby_leader`.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader | Self::StandbyLeader)
    }
}

/// Patroni's state of a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// `running`.
    Running,
    /// `streaming` (a replica with a live WAL stream, Patroni ≥ 3.0.4).
    Streaming,
    /// Anything else (`stopped`, `starting`, `crashed`, ...), verbatim.
    Other(String),
}

impl MemberState {
    /// Maps Patroni's state string.
    #[must_use]
    pub fn from_patroni(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "streaming" => Self::Streaming,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// Where a member's PostgreSQL listens, as Patroni reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NodeAddr {
    /// Host name or IP literal (IPv6 without brackets); shared, so the
    /// per-request routing copies no text.
    pub host: Arc<str>,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One routable cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Patroni member name (unique in a cluster); shared, as `host`.
    pub name: Arc<str>,
    /// Role.
    pub role: MemberRole,
    /// State.
    pub state: MemberState,
    /// PostgreSQL address.
    pub addr: NodeAddr,
    /// Replica replay lag in bytes: the leader's live `xlog.location` minus
    /// this member's `replayed_location`, both read from `GET /patroni` in
    /// the same poll round; else `/cluster`'s `replay_lag` (or `lag`).
    /// `None` when unknown or for a leader.
    pub lag: Option<u64>,
    /// Replica receive lag in bytes (leader position minus
    /// `received_location`), when known.
    pub receive_lag: Option<u64>,
    /// Replay is paused on this replica (`xlog.paused`).
    pub replay_paused: bool,
    /// Where `lag` came from.
    pub lag_source: LagSource,
    /// The member's own REST status URL (`api_url`), when Patroni lists one.
    pub api_url: Option<String>,
    /// What the member's own `GET /patroni` says about its role.
    pub self_report: SelfReport,
    /// Tag `noloadbalance`.
    pub noloadbalance: bool,
    /// Tag `nofailover`.
    pub nofailover: bool,
    /// Drained by an operator (`DRAIN <node>` on the console): as a
    /// replica it takes no new clients or reads, and its role-port clients
    /// leave as their transactions end. pgvane's mark, not Patroni's.
    pub drained: bool,
    /// Timeline, when reported.
    pub timeline: Option<u64>,
    /// WAL position from the member's own `GET /patroni` this round, when
    /// it answered with one. Not a routing fact: a change alone bumps no
    /// generation (the map is stored every round anyway).
    pub live: Option<LiveWal>,
}

/// A member's WAL position as its own `GET /patroni` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LiveWal {
    /// A replica's `xlog.replayed_location`; a primary's `xlog.location`
    /// (its flush LSN).
    pub lsn: u64,
    /// `timeline` of the same answer (a replica's is its receiver's).
    pub timeline: Option<u64>,
    /// `replication_state` is `streaming` (always true for a primary).
    pub streaming: bool,
    /// `postmaster_start_time`, verbatim.
    pub postmaster_start_time: Option<String>,
}

/// Where a member's lag figure comes from (`lag_source` in `/clusters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LagSource {
    /// Live positions from `GET /patroni` of the member and the leader,
    /// sampled in the same poll round.
    Patroni,
    /// `/cluster`'s figures (the member's or the leader's `/patroni` did
    /// not answer): each side up to `loop_wait` old.
    Cluster,
    /// No figure at all (leaders, or nothing reported).
    Unknown,
}

/// A member's own answer about its role, from its `GET /patroni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfReport {
    /// Not asked: Patroni lists no `api_url` for it (or the map was built
    /// from a `/cluster` answer alone).
    Unasked,
    /// Role `primary` with a live `xlog.location`: out of recovery, or
    /// `standby_leader` for the leader of a standby cluster.
    Primary,
    /// It answered, but not as a primary out of recovery (a replica, or
    /// a new leader whose promotion has not finished).
    NotPrimary,
    /// It did not answer this round and was never confirmed primary on
    /// its current timeline.
    NoAnswer,
}

/// One published snapshot of a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterMap {
    /// Cluster name from the config.
    pub cluster: String,
    /// Bumped whenever members or staleness change; 0 = nothing fetched yet.
    pub generation: u64,
    /// Routable members, in Patroni's order.
    pub members: Vec<Member>,
    /// Names of members skipped because they had no host/port.
    pub skipped: Vec<String>,
    /// Patroni maintenance mode (`pause: true`).
    pub paused: bool,
    /// True when the last poll failed on every host and this is an older map.
    pub stale: bool,
    /// When the members were last confirmed by a good answer.
    #[serde(with = "unix_seconds")]
    pub updated_at: SystemTime,
    /// Which host gave the last good answer.
    pub source: Option<String>,
    /// The last poll error, while stale.
    pub last_error: Option<String>,
    /// How the Patroni hosts' answers disagreed in the last poll, if they did.
    pub disagreement: Option<String>,
}

impl ClusterMap {
    /// The empty map a cluster starts with, before its first poll.
    #[must_use]
    pub fn empty(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            generation: 0,
            members: Vec::new(),
            skipped: Vec::new(),
            paused: false,
            stale: true,
            updated_at: SystemTime::UNIX_EPOCH,
            source: None,
            last_error: None,
            disagreement: None,
        }
    }

    /// The member called `name`.
    #[must_use]
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| &*m.name == name)
    }

    /// The current leader, if any.
    #[must_use]
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.role.is_leader())
    }

    /// Whether routing facts differ (members but their `live` WAL
    /// positions, pause, staleness).
    #[must_use]
    pub fn same_facts(&self, other: &Self) -> bool {
        let strip = |m: &Member| Member {
            live: None,
            ..m.clone()
        };
        self.paused == other.paused
            && self.stale == other.stale
            && self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|(a, b)| a == b || strip(a) == strip(b))
    }

    /// Whether only lag figures differ from `other` (the common change
    /// while WAL is written: logged at debug, not info).
    #[must_use]
    pub fn only_lag_differs(&self, other: &Self) -> bool {
        let strip = |m: &Member| Member {
            lag: None,
            receive_lag: None,
            live: None,
            ..m.clone()
        };
        self.paused == other.paused
            && self.stale == other.stale
            && self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|(a, b)| strip(a) == strip(b))
    }
}

mod unix_seconds {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        s.serialize_f64(secs)
    }
}

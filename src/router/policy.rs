//! Port policy: whether a member qualifies for a role port (role class,
//! state, `noloadbalance`, `max_lag_in_bytes`), and why not.

use crate::config::{PortConfig, RoleSel};
use crate::topology::{Member, MemberRole, MemberState, NodeAddr};

use super::NodeKey;

/// Why a member does not qualify for a port. `label` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Its role is not one the port accepts (or not routable at all).
    Role,
    /// Its state is not `running` (or `streaming` for replicas).
    State,
    /// Tagged `noloadbalance` and the port serves it as a replica.
    NoLoadBalance,
    /// Lag above `max_lag_in_bytes`, or unknown while a limit is set.
    Lag,
    /// Gone from the map, or its address changed.
    Removed,
}

impl Ineligible {
    /// Metric label (`pgvane_evictions_total{reason}`).
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::State => "state",
            Self::NoLoadBalance => "noloadbalance",
            Self::Lag => "lag",
            Self::Removed => "removed",
        }
    }

    /// Human words for error messages and logs.
    #[must_use]
    pub fn describe(self, m: &Member, port: &PortConfig) -> String {
        match self {
            Self::Role => format!("has role {:?}", m.role),
            Self::State => format!("is in state {:?}", m.state),
            Self::NoLoadBalance => "is tagged noloadbalance".to_owned(),
            Self::Lag => match (m.lag, port.max_lag_in_bytes) {
                (Some(lag), Some(max)) => format!("lags {lag} bytes > max_lag_in_bytes {max}"),
                _ => "has unknown lag".to_owned(),
            },
            Self::Removed => "left the cluster".to_owned(),
        }
    }
}

/// The port role class of a Patroni role: `leader`/`standby_leader` →
/// leader; `sync_standby`/`quorum_standby` → sync; `replica` → async.
#[must_use]
pub fn role_class(role: &MemberRole) -> Option<RoleSel> {
    match role {
        MemberRole::Leader | MemberRole::StandbyLeader => Some(RoleSel::Leader),
        MemberRole::SyncStandby | MemberRole::QuorumStandby => Some(RoleSel::Sync),
        MemberRole::Replica => Some(RoleSel::Async),
        MemberRole::Other(_) => None,
    }
}

/// Whether `m` qualifies for `port`.
///
/// # Errors
/// The first rule it breaks.
pub fn check(m: &Member, port: &PortConfig) -> Result<(), Ineligible> {
    let class = role_class(&m.role).ok_or(Ineligible::Role)?;
    if !port.wants(class) {
        return Err(Ineligible::Role);
    }
    let is_replica = class != RoleSel::Leader;
    let state_ok = match m.state {
        MemberState::Running => true,
        MemberState::Streaming => is_replica,
        MemberState::Other(_) => false,
    };
    if !state_ok {
        return Err(Ineligible::State);
    }
    if is_replica {
        if m.noloadbalance {
            return Err(Ineligible::NoLoadBalance);
        }
        if let Some(max) = port.max_lag_in_bytes {
            if m.lag.is_none_or(|lag| lag > max) {
                return Err(Ineligible::Lag);
            }
        }
    }
    Ok(())
}

/// The address pgvane connects to for `m` on `port` (`host_port` if set).
#[must_use]
pub fn target_key(m: &Member, port: &PortConfig) -> NodeKey {
    NodeKey {
        name: m.name.clone(),
        addr: NodeAddr {
            host: m.addr.host.clone(),
            port: port.host_port.unwrap_or(m.addr.port),
        },
    }
}

/// Whether a client connected to `key` may stay, given the member now
/// listed under that name.
///
/// # Errors
/// Why the client must be evicted.
pub fn still_qualifies(
    key: &NodeKey,
    m: Option<&Member>,
    port: &PortConfig,
) -> Result<(), Ineligible> {
    let m = m.ok_or(Ineligible::Removed)?;
    if target_key(m, port) != *key {
        return Err(Ineligible::Removed);
    }
    check(m, port)
}

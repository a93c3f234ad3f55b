//! Port policy: whether a member qualifies for a role port (role class,
//! state, a leader's own confirmation, `noloadbalance`, lag through the
//! port's [`LagView`]), and why not.

use crate::config::{PortConfig, RoleSel};
use crate::topology::{Member, MemberRole, MemberState, NodeAddr, SelfReport};

use super::NodeKey;
use super::lag::{LagRules, LagVerdict, LagView};

/// Why a member does not qualify for a port. `label` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// Its role is not one the port accepts (or not routable at all).
    Role,
    /// Its state is not `running` (or `streaming` for replicas).
    State,
    /// Tagged `noloadbalance` and the port serves it as a replica.
    NoLoadBalance,
    /// Lag above `max_lag_in_bytes` (or unknown while a limit is set), or
    /// not yet back under the low watermark.
    Lag,
    /// Listed leader, but its own `/patroni` does not (yet) answer primary
    /// out of recovery.
    Unconfirmed,
    /// Gone from the map, or its address changed.
    Removed,
    /// Drained by an operator (`DRAIN <node>`) and the port serves it as a
    /// replica: no new clients; its clients leave as their transactions end.
    Drained,
}

impl Ineligible {
    /// Every reason, for series that start at 0.
    pub const ALL: [Self; 7] = [
        Self::Role,
        Self::State,
        Self::NoLoadBalance,
        Self::Lag,
        Self::Unconfirmed,
        Self::Removed,
        Self::Drained,
    ];

    /// Metric label (`pgvane_evictions_total{reason}`).
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::State => "state",
            Self::NoLoadBalance => "noloadbalance",
            Self::Lag => "lag",
            Self::Unconfirmed => "unconfirmed",
            Self::Removed => "removed",
            Self::Drained => "drained",
        }
    }

    /// Human words for error messages and logs.
    #[must_use]
    pub fn describe(self, m: &Member, port: &PortConfig) -> String {
        match self {
            Self::Role => format!("has role {:?}", m.role),
            Self::State => format!("is in state {:?}", m.state),
            Self::NoLoadBalance => "is tagged noloadbalance".to_owned(),
            Self::Lag => match (m.lag, LagRules::of(port)) {
                (Some(lag), Some(r)) if lag > r.max => {
                    format!("lags {lag} bytes > max_lag_in_bytes {}", r.max)
                }
                (Some(lag), Some(r)) => format!(
                    "lags {lag} bytes: under max_lag_in_bytes again, not yet under the low watermark {}",
                    r.low
                ),
                _ => "has unknown lag".to_owned(),
            },
            Self::Unconfirmed => {
                "is listed leader but its own /patroni does not answer primary yet".to_owned()
            }
            Self::Removed => "left the cluster".to_owned(),
            Self::Drained => "is drained by an operator".to_owned(),
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

/// Whether `m` qualifies for new clients of `port`, lag judged by `lag`.
///
/// # Errors
/// The first rule it breaks.
pub fn check(m: &Member, port: &PortConfig, lag: &LagView) -> Result<(), Ineligible> {
    check_with(m, port, lag, LagVerdict::Admit)
}

/// The rules of [`check`], lag allowed up to `worst`.
fn check_with(
    m: &Member,
    port: &PortConfig,
    lag: &LagView,
    worst: LagVerdict,
) -> Result<(), Ineligible> {
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
    if !is_replica && !leader_confirmed(m) {
        return Err(Ineligible::Unconfirmed);
    }
    if is_replica {
        if m.noloadbalance {
            return Err(Ineligible::NoLoadBalance);
        }
        if m.drained {
            return Err(Ineligible::Drained);
        }
        if lag.verdict(m, port) > worst {
            return Err(Ineligible::Lag);
        }
    }
    Ok(())
}

/// A listed leader may take writes once its own `/patroni` answered
/// primary out of recovery; a member pgvane could not ask (no `api_url`)
/// is taken on Patroni's word.
#[must_use]
pub fn leader_confirmed(m: &Member) -> bool {
    matches!(m.self_report, SelfReport::Primary | SelfReport::Unasked)
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
/// listed under that name: lag evicts only on [`LagVerdict::Evict`], a
/// leader that lost its own confirmation keeps its clients (a failed
/// status request is no reason to cut writers off; a demotion changes the
/// role, which evicts), and a drained node's clients stay to leave as
/// their transactions end ([`drains`]).
///
/// # Errors
/// Why the client must be evicted.
pub fn still_qualifies(
    key: &NodeKey,
    m: Option<&Member>,
    port: &PortConfig,
    lag: &LagView,
) -> Result<(), Ineligible> {
    let m = m.ok_or(Ineligible::Removed)?;
    if target_key(m, port) != *key {
        return Err(Ineligible::Removed);
    }
    match check_with(m, port, lag, LagVerdict::Hold) {
        Err(Ineligible::Unconfirmed | Ineligible::Drained) => Ok(()),
        other => other,
    }
}

/// [`still_qualifies`] for a client that has just connected: it must not
/// take a node drained meanwhile (that node's earlier clients stay to
/// leave at their idle point; a new one would only be told to go).
///
/// # Errors
/// Why the new client must try another node.
pub fn takes_new_client(
    key: &NodeKey,
    m: Option<&Member>,
    port: &PortConfig,
    lag: &LagView,
) -> Result<(), Ineligible> {
    if m.is_some_and(|m| drains(m, port)) {
        return Err(Ineligible::Drained);
    }
    still_qualifies(key, m, port, lag)
}

/// Whether clients of `m` on `port` must leave as their transactions end:
/// it is drained and the port serves it as a replica (a drained leader
/// keeps its writers: there is nowhere else for them to go).
#[must_use]
pub fn drains(m: &Member, port: &PortConfig) -> bool {
    m.drained && role_class(&m.role).is_some_and(|c| c != RoleSel::Leader && port.wants(c))
}

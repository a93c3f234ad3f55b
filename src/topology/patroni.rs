//! Lenient parsing of Patroni's `GET /cluster` answer into members, and of
//! a member's own `GET /patroni` status (role, WAL positions). One bad
//! member is skipped, never the whole answer; unknown keys are ignored.
//! Fed raw bodies by the watcher; tested on `shared/patroni/`.

use super::map::{LagSource, Member, MemberRole, MemberState, NodeAddr, SelfReport};
use serde_json::Value;
use std::sync::Arc;

/// The parts of a `/cluster` answer pgvane uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Members that have an address.
    pub members: Vec<Member>,
    /// Names of members without host or port.
    pub skipped: Vec<String>,
    /// Maintenance mode.
    pub paused: bool,
}

/// Why a body is not a usable `/cluster` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON without a `members` array.
    #[error("no `members` array in the answer")]
    NoMembers,
}

/// Parses a `/cluster` body.
///
/// # Errors
/// [`ParseError`] when the body is not JSON or has no `members` array.
pub fn parse(body: &[u8]) -> Result<ClusterInfo, ParseError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let members = root
        .get("members")
        .and_then(Value::as_array)
        .ok_or(ParseError::NoMembers)?;
    let mut info = ClusterInfo {
        members: Vec::with_capacity(members.len()),
        skipped: Vec::new(),
        paused: truthy(root.get("pause")),
    };
    for (i, m) in members.iter().enumerate() {
        match member(m) {
            Some(member) => info.members.push(member),
            None => info.skipped.push(
                m.get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_owned),
            ),
        }
    }
    Ok(info)
}

fn member(m: &Value) -> Option<Member> {
    let name: Arc<str> = m.get("name")?.as_str()?.into();
    let host = m.get("host")?.as_str()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    let port = u16::try_from(number(m.get("port")?)?).ok()?;
    let tags = m.get("tags");
    let lag = m
        .get("replay_lag")
        .and_then(number)
        .or_else(|| m.get("lag").and_then(number));
    Some(Member {
        name,
        role: MemberRole::from_patroni(m.get("role").and_then(Value::as_str).unwrap_or("")),
        state: MemberState::from_patroni(m.get("state").and_then(Value::as_str).unwrap_or("")),
        addr: NodeAddr {
            host: host.into(),
            port,
        },
        lag,
        receive_lag: m.get("receive_lag").and_then(number),
        replay_paused: false,
        lag_source: if lag.is_some() {
            LagSource::Cluster
        } else {
            LagSource::Unknown
        },
        api_url: m
            .get("api_url")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_owned),
        self_report: SelfReport::Unasked,
        noloadbalance: truthy(tags.and_then(|t| t.get("noloadbalance"))),
        nofailover: truthy(tags.and_then(|t| t.get("nofailover"))),
        drained: false,
        timeline: m.get("timeline").and_then(number),
        live: None,
    })
}

/// The parts of a member's own `GET /patroni` answer pgvane uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// `role`: `primary`, `replica`, `standby_leader`, ...
    pub role: String,
    /// `state`: `running`, `starting`, ...
    pub state: String,
    /// `timeline`, when reported.
    pub timeline: Option<u64>,
    /// `xlog.location`: present only when PostgreSQL is out of recovery.
    pub location: Option<u64>,
    /// `xlog.received_location` of a replica.
    pub received: Option<u64>,
    /// `xlog.replayed_location` of a replica.
    pub replayed: Option<u64>,
    /// `xlog.paused`: replay paused on a replica.
    pub paused: bool,
    /// `replication_state` of a replica (`streaming`, `in archive recovery`).
    pub replication_state: Option<String>,
    /// `postmaster_start_time`, verbatim.
    pub postmaster_start_time: Option<String>,
}

impl NodeStatus {
    /// A primary out of recovery (a live `xlog.location`), or the leader of
    /// a standby cluster.
    #[must_use]
    pub fn is_primary(&self) -> bool {
        self.state == "running"
            && ((matches!(self.role.as_str(), "primary" | "master") && self.location.is_some())
                || self.role == "standby_leader")
    }

    /// The WAL position this answer reports: a primary's `xlog.location`,
    /// else the `replayed_location` of a replica.
    #[must_use]
    pub fn live(&self) -> Option<super::map::LiveWal> {
        let (lsn, streaming) = match self.location {
            Some(at) => (at, true),
            None => (
                self.replayed?,
                self.replication_state.as_deref() == Some("streaming"),
            ),
        };
        Some(super::map::LiveWal {
            lsn,
            timeline: self.timeline,
            streaming,
            postmaster_start_time: self.postmaster_start_time.clone(),
        })
    }
}

/// Parses a `/patroni` body.
///
/// # Errors
/// [`ParseError::Json`] when the body is not a JSON object with a `role`.
pub fn parse_status(body: &[u8]) -> Result<NodeStatus, ParseError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    let role = root
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ParseError::Json("no `role` in the answer".to_owned()))?;
    let xlog = root.get("xlog");
    let at = |key: &str| xlog.and_then(|x| x.get(key)).and_then(number);
    let text = |key: &str| root.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(NodeStatus {
        role: role.to_owned(),
        state: root
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        timeline: root.get("timeline").and_then(number),
        location: at("location"),
        received: at("received_location"),
        replayed: at("replayed_location"),
        paused: truthy(xlog.and_then(|x| x.get("paused"))),
        replication_state: text("replication_state"),
        postmaster_start_time: text("postmaster_start_time"),
    })
}

/// A non-negative integer given as a number or a numeric string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Patroni tags may be bools or strings such as `"true"`, `"on"`, `"yes"`.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "on" | "yes" | "y" | "1"
        ),
        Some(Value::Number(n)) => n.as_u64().is_some_and(|n| n != 0),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests;

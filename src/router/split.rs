//! Split-port targets: the confirmed leader for writes, qualifying
//! replicas for reads (least busy first; lag by the port's hysteresis),
//! the leader as fallback when allowed.

use super::{HealthBook, LagView, policy};
use crate::classifier::Route;
use crate::config::PortConfig;
use crate::topology::{ClusterMap, MemberState, NodeAddr};
use std::time::Instant;

/// A node a split session may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Member name.
    pub name: String,
    /// Address to connect to.
    pub addr: NodeAddr,
    /// `leader` or `replica` (pool role tag).
    pub role: &'static str,
}

fn leader(
    map: &ClusterMap,
    port: &PortConfig,
    health: &HealthBook,
    now: Instant,
) -> Result<Vec<Target>, String> {
    let m = map
        .members
        .iter()
        .find(|m| m.role.is_leader() && m.state == MemberState::Running)
        .ok_or_else(|| format!("cluster \"{}\" has no running leader", map.cluster))?;
    if !policy::leader_confirmed(m) {
        return Err(format!(
            "the leader {} does not answer primary in its own /patroni yet",
            m.name
        ));
    }
    let key = policy::target_key(m, port);
    if health.cooling(&key.addr, now) {
        return Err(format!(
            "the leader {} refused connections moments ago",
            m.name
        ));
    }
    Ok(vec![Target {
        name: key.name,
        addr: key.addr,
        role: "leader",
    }])
}

/// Nodes for `route`, best first; `books` are the cluster's connect
/// failures and the port's lag verdicts.
///
/// # Errors
/// Text naming why no node can serve it.
pub fn targets(
    map: &ClusterMap,
    port: &PortConfig,
    route: Route,
    books: (&HealthBook, &LagView),
    now: Instant,
    busy: impl Fn(&NodeAddr) -> usize,
) -> Result<Vec<Target>, String> {
    let (health, lag) = books;
    if route == Route::Leader {
        return leader(map, port, health, now);
    }
    let mut reps: Vec<(usize, Target)> = map
        .members
        .iter()
        .filter(|m| !m.role.is_leader() && policy::check(m, port, lag).is_ok())
        .map(|m| policy::target_key(m, port))
        .filter(|k| !health.cooling(&k.addr, now))
        .map(|k| {
            (
                busy(&k.addr),
                Target {
                    name: k.name,
                    addr: k.addr,
                    role: "replica",
                },
            )
        })
        .collect();
    reps.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    if !reps.is_empty() {
        return Ok(reps.into_iter().map(|(_, t)| t).collect());
    }
    if port.fallback_to_leader.unwrap_or(true) {
        return leader(map, port, health, now);
    }
    Err(format!(
        "no replica of cluster \"{}\" qualifies for port reads and fallback_to_leader is off",
        map.cluster
    ))
}

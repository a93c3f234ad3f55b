//! The split port's whole routing decision, in one place: a request's
//! route (from the classifier and the session's pins), the floor its read
//! must see and the cluster's replica positions → the nodes to try (the
//! confirmed leader for writes; replicas that qualify by role, lag and, for
//! a floored read, replay position), or wait (for a replica to replay the
//! floor, for a new leader), or refuse. Pure: the session carries it out.

use super::{HealthBook, LagView, policy};
use crate::classifier::Route;
use crate::config::{PortConfig, RywTimeout};
use crate::protocol::sqlstate::{self, SqlState};
use crate::topology::{ClusterMap, Floor, Member, MemberState, NodeAddr, Positions};
use arc_swap::ArcSwapOption;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A node's part on a split port (also its pools' role tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// The confirmed leader.
    Leader,
    /// A replica that qualifies for reads.
    Replica,
}

impl NodeRole {
    /// Metric label and pool tag.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Replica => "replica",
        }
    }
}

/// A node a split session may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Member name.
    pub name: Arc<str>,
    /// Address to connect to.
    pub addr: NodeAddr,
    /// Leader or replica.
    pub role: NodeRole,
}

/// What a read must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: any qualifying replica.
    Nothing,
    /// The leader: a time window after a write, or a floor pgvane could
    /// not learn.
    Leader,
    /// A replica that replayed this floor (else wait, then the leader).
    Replayed(Floor),
}

/// What the session may still wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Patience {
    /// The floored read may wait for a replica to catch up.
    pub replica: bool,
    /// The request may wait for a new leader.
    pub leader: bool,
}

/// One request as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Where it may run: [`Route::Leader`] for writes and pinned sessions.
    pub route: Route,
    /// What a read must see (ignored for the leader route).
    pub need: Need,
    /// What it may still wait for.
    pub patience: Patience,
}

/// Why the targets were chosen (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It needs the leader (a write, a pin, a transaction).
    Write,
    /// A read with no floor.
    NoFloor,
    /// A read whose floor the replicas have replayed.
    Replayed,
    /// A read that must see the leader (window, unknown floor).
    Fresh,
    /// A floored read no replica reached in time.
    Timeout,
    /// No replica qualifies: the leader serves reads.
    Fallback,
}

impl Why {
    /// Metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::NoFloor => "no_floor",
            Self::Replayed => "replayed",
            Self::Fresh => "fresh",
            Self::Timeout => "timeout",
            Self::Fallback => "fallback",
        }
    }
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try these nodes, best first.
    Run(Targets, Why),
    /// Qualifying replicas exist but none has replayed the floor: wait for
    /// positions to change, then ask again (without replica patience once
    /// the wait runs out).
    WaitReplica,
    /// No leader can take it now (none confirmed, or it refused moments
    /// ago): wait for the map to change, then ask again.
    WaitLeader(String),
    /// Nothing can serve it: the SQLSTATE and text for the client.
    Refuse(SqlState, String),
}

/// A decision's nodes: inline up to four (a leader and three replicas'
/// worth), so routing a request allocates nothing.
pub type Targets = smallvec::SmallVec<[Target; 4]>;

/// The port's nodes as the policy admits them under one snapshot of the
/// map, the port's settings and its lag verdicts, before health, load and
/// positions are asked: the leader's target (or why there is none) and the
/// replicas that qualify. Pure in those three snapshots, so the port
/// keeps one while they stand and computes it again only when one of them
/// is replaced ([`Eligible::with`]), not on every request.
#[derive(Debug)]
pub struct Eligible {
    /// The snapshots it was computed from. Weak: it keeps no old map's
    /// contents alive, and the allocation it points to cannot be reused
    /// while it is held, so equal addresses mean the same snapshot.
    from: (Weak<ClusterMap>, Weak<PortConfig>, Weak<LagView>),
    leader: Result<Target, String>,
    /// In the map's member order.
    replicas: Box<[Target]>,
}

impl Eligible {
    /// Computes what the policy admits under `map`, `port` and `lag`.
    #[must_use]
    pub fn of(map: &Arc<ClusterMap>, port: &Arc<PortConfig>, lag: &Arc<LagView>) -> Self {
        let replicas = map
            .members
            .iter()
            .filter(|m| !m.role.is_leader() && policy::check(m, port, lag).is_ok())
            .map(|m| target(m, port, NodeRole::Replica))
            .collect();
        Self {
            from: (
                Arc::downgrade(map),
                Arc::downgrade(port),
                Arc::downgrade(lag),
            ),
            leader: confirmed_leader(map, port),
            replicas,
        }
    }

    /// Whether it was computed from exactly these snapshots.
    #[must_use]
    pub fn stands(
        &self,
        map: &Arc<ClusterMap>,
        port: &Arc<PortConfig>,
        lag: &Arc<LagView>,
    ) -> bool {
        std::ptr::eq(self.from.0.as_ptr(), Arc::as_ptr(map))
            && std::ptr::eq(self.from.1.as_ptr(), Arc::as_ptr(port))
            && std::ptr::eq(self.from.2.as_ptr(), Arc::as_ptr(lag))
    }

    /// Runs `f` on the one `slot` keeps if it stands for these snapshots,
    /// else on a new one, which `slot` keeps from then on (one per port,
    /// shared by its sessions: an idle client holds none).
    pub fn with<R>(
        slot: &ArcSwapOption<Self>,
        map: &Arc<ClusterMap>,
        port: &Arc<PortConfig>,
        lag: &Arc<LagView>,
        f: impl FnOnce(&Self) -> R,
    ) -> R {
        let kept = slot.load();
        if let Some(e) = kept.as_deref().filter(|e| e.stands(map, port, lag)) {
            return f(e);
        }
        let e = Arc::new(Self::of(map, port, lag));
        slot.store(Some(Arc::clone(&e)));
        f(&e)
    }
}

/// Everything the decision reads, one snapshot each.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The cluster map.
    pub map: &'a ClusterMap,
    /// The port's settings.
    pub port: &'a PortConfig,
    /// What the policy admits under this map, port and lag verdicts.
    pub eligible: &'a Eligible,
    /// Connect failures of the cluster.
    pub health: &'a HealthBook,
    /// Replica replay positions.
    pub positions: &'a Positions,
    /// Now.
    pub now: Instant,
}

/// The running leader that confirms its role in its own `/patroni`, as
/// the port reaches it, or why there is none.
fn confirmed_leader(map: &ClusterMap, port: &PortConfig) -> Result<Target, String> {
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
    Ok(target(m, port, NodeRole::Leader))
}

/// `m` as the port reaches it, in `role`.
fn target(m: &Member, port: &PortConfig, role: NodeRole) -> Target {
    let key = policy::target_key(m, port);
    Target {
        name: key.name,
        addr: key.addr,
        role,
    }
}

fn leader(v: &View<'_>) -> Result<Target, String> {
    let t = v.eligible.leader.as_ref().map_err(Clone::clone)?;
    if v.health.cooling(&t.addr, v.now) {
        return Err(format!(
            "the leader {} refused connections moments ago",
            t.name
        ));
    }
    Ok(t.clone())
}

fn on_leader(v: &View<'_>, req: &Request, why: Why) -> Decision {
    match leader(v) {
        Ok(t) => Decision::Run(smallvec::smallvec![t], why),
        // A leader being replaced is waited for; with no map at all
        // (Patroni unreachable since start) there is nothing to wait for.
        Err(text) if req.patience.leader && !v.map.members.is_empty() => Decision::WaitLeader(text),
        Err(text) => Decision::Refuse(sqlstate::CANNOT_CONNECT_NOW, format!("pgvane: {text}")),
    }
}

/// Replicas that qualify for the port's reads and are not backing off,
/// least busy first (by name among equals); each node's load is read once.
fn replicas(v: &View<'_>, busy: &impl Fn(&NodeAddr) -> usize) -> Targets {
    let mut reps = Targets::new();
    let mut loads = smallvec::SmallVec::<[usize; 4]>::new();
    // One replica needs no order, nor its load.
    let ordered = v.eligible.replicas.len() > 1;
    for t in &v.eligible.replicas {
        if v.health.cooling(&t.addr, v.now) {
            continue;
        }
        let load = if ordered { busy(&t.addr) } else { 0 };
        // Insertion: a handful of replicas at most.
        let at = reps
            .iter()
            .zip(&loads)
            .position(|(r, &l)| (l, &r.name) > (load, &t.name))
            .unwrap_or(reps.len());
        reps.insert(at, t.clone());
        loads.insert(at, load);
    }
    reps
}

/// Decides where `req` runs; `busy` counts a node's backends in use.
#[must_use]
pub fn decide(v: &View<'_>, req: &Request, busy: impl Fn(&NodeAddr) -> usize) -> Decision {
    if req.route == Route::Leader {
        return on_leader(v, req, Why::Write);
    }
    let reps = replicas(v, &busy);
    if reps.is_empty() {
        if v.port.resolved.fallback_to_leader {
            return on_leader(v, req, Why::Fallback);
        }
        return Decision::Refuse(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "pgvane: no replica of cluster \"{}\" qualifies for port reads and fallback_to_leader is off",
                v.map.cluster
            ),
        );
    }
    match req.need {
        Need::Nothing => Decision::Run(reps, Why::NoFloor),
        Need::Leader => on_leader(v, req, Why::Fresh),
        Need::Replayed(floor) => {
            let mut ready = reps;
            ready.retain(|t| v.positions.replayed(&t.name, &floor));
            if !ready.is_empty() {
                return Decision::Run(ready, Why::Replayed);
            }
            if req.patience.replica {
                return Decision::WaitReplica;
            }
            if v.port.resolved.read_your_writes_on_timeout == RywTimeout::Error {
                return Decision::Refuse(
                    sqlstate::SYSTEM_ERROR,
                    format!(
                        "pgvane: no replica replayed {} within read_your_writes_wait_ms ({} ms)",
                        floor.lsn,
                        v.port.resolved.read_your_writes_wait.as_millis()
                    ),
                );
            }
            on_leader(v, req, Why::Timeout)
        }
    }
}

#[cfg(test)]
mod tests;

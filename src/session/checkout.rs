//! Getting a backend for a request: what the read must see (the session's
//! floor, the shared scopes' floors, the leader's position in `cluster`
//! scope), the router's decision carried out (waits for a replica to
//! replay the floor, woken by the position tracker; waits for a new leader
//! within `leader_wait_ms`, woken by the map), the pools of the targets
//! asked in turn (`acquire.rs`), and giving the backend back after
//! ReadyForQuery `I`. The usual request (no wait, an idle backend of this
//! worker whose settings stand) is served without awaiting.

use super::error::SessionError;
use super::{Session, cancel};
use crate::classifier::{Classification, Route};
use crate::config::RywScope;
use crate::protocol::sqlstate;
use crate::router::split::{self, Decision, Eligible, Need, NodeRole, Patience, View};
use crate::topology::Floor;
use std::time::{Duration, Instant};

/// Longest a leader wait sleeps before asking the router again without a
/// new map (a node that refused moments ago cools down by time).
const LEADER_RECHECK: Duration = Duration::from_millis(100);

impl Session {
    /// The login's backend: the leader's, or a replica's while the cluster
    /// has no leader (the session is read-only until one appears). Logins
    /// do not wait for a leader.
    pub(super) async fn checkout_for_login(&mut self) -> Result<(), SessionError> {
        match self
            .checkout(Route::Leader, Need::Nothing, "session", false)
            .await
        {
            Err(SessionError::NoBackend(..)) => {
                self.checkout(Route::Replica, Need::Nothing, "session", false)
                    .await
            }
            other => other,
        }
    }

    /// Makes sure a backend is held for `class` (keeps the current one in a
    /// transaction, mid-batch or while pinned).
    pub(super) async fn backend_for(&mut self, class: &Classification) -> Result<(), SessionError> {
        if let Some(h) = self.held.as_mut() {
            if let Some(sql) = h.fixup.take() {
                if let Err(e) = h.pooled.backend.quiet(&sql).await {
                    // The client's transaction failed since its RESET: the
                    // RESET goes with it when it rolls back.
                    tracing::debug!(port = %self.ctx.key, error = %e, "startup values not restored after RESET");
                }
            }
            return Ok(());
        }
        let route = if self.pin.is_some() || class.pin.is_some() {
            Route::Leader
        } else {
            class.route
        };
        let need = match route {
            Route::Leader => Ok(Need::Nothing),
            Route::Replica => self.read_need(),
        };
        let reason = class.reason.label();
        if let Ok(need) = need {
            if self.checkout_at_once(route, need, reason).is_some() {
                return Ok(());
            }
        }
        // Boxed: a checkout's future is most of a request's; separate, it
        // is allocated only when one is needed (a wait, a login, a
        // settings round trip, a `cluster` floor), and both fit the
        // allocator's per-thread cache.
        Box::pin(self.backend_for_new(route, need, reason)).await
    }

    /// A backend for `route` when the session holds none and the usual
    /// way did not serve: `need` is what the read must see, or the floor
    /// to raise by the leader's position first (`cluster` scope).
    async fn backend_for_new(
        &mut self,
        route: Route,
        need: Result<Need, Option<Floor>>,
        reason: &'static str,
    ) -> Result<(), SessionError> {
        let need = match need {
            Ok(need) => need,
            Err(floor) => self.leader_need(floor).await,
        };
        self.checkout(route, need, reason, true).await
    }

    /// A backend on the leader for a read a replica refused.
    pub(super) async fn backend_on_leader(
        &mut self,
        class: &Classification,
    ) -> Result<(), SessionError> {
        self.checkout(Route::Leader, Need::Nothing, class.reason.label(), true)
            .await
    }

    /// What a read arriving now must see under the port's scope; in
    /// `cluster` scope, the floor known so far, which the leader's position
    /// raises ([`Self::leader_need`]).
    fn read_need(&mut self) -> Result<Need, Option<Floor>> {
        let port = self.ctx.port.load();
        let c = &self.consistency;
        let scope = port.resolved.read_your_writes;
        match scope {
            RywScope::Off => return Ok(Need::Nothing),
            RywScope::Window => {
                return Ok(if c.leader_until.is_some_and(|t| Instant::now() < t) {
                    Need::Leader
                } else {
                    Need::Nothing
                });
            }
            _ => {}
        }
        if let Some(epoch) = c.unknown {
            if epoch == self.ctx.link.tracker.current().epoch {
                return Ok(Need::Leader);
            }
            self.consistency.unknown = None;
        }
        let floors = &self.ctx.link.floors;
        let shared = match scope {
            RywScope::User => floors.user(&self.creds.user, &self.creds.database),
            RywScope::Database => floors.database(&self.creds.database),
            _ => None,
        };
        let floor = raise(self.consistency.floor, shared);
        if scope == RywScope::Cluster {
            return Err(floor);
        }
        Ok(floor.map_or(Need::Nothing, Need::Replayed))
    }

    /// What a read must see in `cluster` scope: `floor` raised by the
    /// leader's position now, or the leader itself when that position
    /// cannot be had in time.
    async fn leader_need(&self, floor: Option<Floor>) -> Need {
        // Bounded: a leader that does not answer must not hold the read
        // longer than a leader change would.
        let bound = self
            .ctx
            .port
            .load()
            .resolved
            .leader_wait
            .max(Duration::from_secs(1));
        let asked = self.ctx.link.tracker.leader_lsn_after(Instant::now());
        match tokio::time::timeout(bound, asked).await {
            Ok(Ok(f)) => raise(floor, Some(f)).map_or(Need::Nothing, Need::Replayed),
            Err(_) => Need::Leader,
            Ok(Err(e)) => {
                tracing::debug!(port = %self.ctx.key, error = %e, "leader position unknown; the read goes to the leader");
                Need::Leader
            }
        }
    }

    /// The usual checkout, decided and taken without awaiting: no pause,
    /// the router says run now, and its first target lends at once
    /// ([`Self::take_at_once`]). `None` leaves it to [`Self::checkout`],
    /// which asks again.
    fn checkout_at_once(&mut self, route: Route, need: Need, reason: &'static str) -> Option<()> {
        if self.ctx.gate.is_paused() {
            return None;
        }
        let now = Instant::now();
        let (patience, ..) = self.patience(true, now);
        let Decision::Run(targets, why) = self.decide(route, need, patience, now) else {
            return None;
        };
        let t = targets.first()?;
        self.take_at_once(t, reason)?;
        if route == Route::Replica {
            self.metrics.read(&self.ctx, t.role, why, false);
        }
        Some(())
    }

    /// What a checkout starting at `now` may wait for, and the port's
    /// bounds on the waits (`read_your_writes_wait_ms`, `leader_wait_ms`).
    fn patience(&self, wait_leader: bool, now: Instant) -> (Patience, Duration, Duration) {
        let (ryw_wait, leader_wait) = {
            let r = &self.ctx.port.load().resolved;
            (r.read_your_writes_wait, r.leader_wait)
        };
        let patience = Patience {
            replica: !ryw_wait.is_zero() && self.ctx.link.replica_waits_pay(now),
            leader: wait_leader && !leader_wait.is_zero(),
        };
        (patience, ryw_wait, leader_wait)
    }

    /// The router's decision for a request on this moment's snapshots.
    fn decide(&self, route: Route, need: Need, patience: Patience, now: Instant) -> Decision {
        let map = self.ctx.map.load();
        let port = self.ctx.port.load();
        let lag = self.ctx.lag.load();
        let pos = self.ctx.link.tracker.current();
        let (pools, mine) = (&self.ctx.pools, &self.pools);
        Eligible::with(&self.ctx.eligible, &map, &port, &lag, |eligible| {
            let view = View {
                map: &map,
                port: &port,
                eligible,
                health: &self.ctx.health,
                positions: &pos,
                now,
            };
            let req = split::Request {
                route,
                need,
                patience,
            };
            // A node this session has a pool of: its shared counter, read
            // without the pool set's lock.
            split::decide(&view, &req, |a| {
                mine.iter()
                    .find(|(n, p)| n == a && !p.is_closed())
                    .map_or_else(|| pools.busy(a), |(_, p)| p.node_busy())
            })
        })
    }

    /// Asks the router where `route` runs and carries the answer out:
    /// waits while it says wait (within the port's bounds), then acquires
    /// from the targets in turn. `wait_leader` false refuses at once
    /// when there is no leader.
    async fn checkout(
        &mut self,
        route: Route,
        need: Need,
        reason: &'static str,
        wait_leader: bool,
    ) -> Result<(), SessionError> {
        // The waits below are boxed: rare, and inline they would make the
        // future of every request larger (it is allocated per request).
        if self.ctx.gate.is_paused() {
            Box::pin(self.wait_unpaused()).await?;
        }
        let started = Instant::now();
        let (mut patience, ryw_wait, leader_wait) = self.patience(wait_leader, started);
        let replica_deadline = started + ryw_wait;
        let leader_deadline = started + leader_wait;
        // The first decision's clock is the one just read.
        let mut now = Some(started);
        let mut waited_replica = false;
        let mut waited_leader = false;
        let mut positions = None;
        let mut hurry = None;
        let mut generation = None;
        loop {
            let now = now.take().unwrap_or_else(Instant::now);
            let decision = self.decide(route, need, patience, now);
            match decision {
                Decision::Run(ref targets, why) => {
                    let leader = targets.iter().all(|t| t.role == NodeRole::Leader);
                    match self.acquire(targets, reason).await {
                        Ok(role) => {
                            if waited_replica {
                                self.metrics
                                    .ryw_wait
                                    .observe(started.elapsed().as_secs_f64());
                                if role == NodeRole::Replica {
                                    self.ctx.link.wait_paid();
                                } else {
                                    self.ctx.link.wait_ran_out(Instant::now());
                                }
                            }
                            if waited_leader {
                                self.leader_waited("leader", started);
                            }
                            if route == Route::Replica {
                                self.metrics.read(&self.ctx, role, why, waited_replica);
                            }
                            return Ok(());
                        }
                        Err(f) if f.transient && leader && patience.leader => {
                            // The leader is going away (a switchover's
                            // shutdown, a crash): wait for the next one.
                            tracing::debug!(port = %self.ctx.key, error = %f.error, "the leader refused; waiting for a leader");
                            if Instant::now() >= leader_deadline {
                                self.leader_waited("timeout", started);
                                return Err(f.error);
                            }
                            waited_leader = true;
                            Box::pin(self.wait_for_map(&mut generation, leader_deadline)).await?;
                        }
                        Err(f) => return Err(f.error),
                    }
                }
                Decision::WaitReplica => {
                    if Instant::now() >= replica_deadline {
                        patience.replica = false;
                        continue;
                    }
                    waited_replica = true;
                    let tracker = &self.ctx.link.tracker;
                    hurry.get_or_insert_with(|| tracker.hurry());
                    let rx = positions.get_or_insert_with(|| tracker.subscribe());
                    let changed = tokio::time::timeout_at(
                        tokio::time::Instant::from_std(replica_deadline),
                        rx.changed(),
                    );
                    let close = &self.client.close;
                    let moved = Box::pin(async move {
                        tokio::select! {
                            r = changed => Ok(matches!(r, Ok(Ok(())))),
                            () = close.fired() => Err(SessionError::Shutdown),
                        }
                    })
                    .await?;
                    if !moved {
                        patience.replica = false;
                    }
                }
                Decision::WaitLeader(why) => {
                    if Instant::now() >= leader_deadline {
                        patience.leader = false;
                        if waited_leader {
                            self.leader_waited("timeout", started);
                        }
                        continue;
                    }
                    if !waited_leader {
                        tracing::info!(port = %self.ctx.key, "{why}; waiting up to leader_wait_ms for a leader");
                    }
                    waited_leader = true;
                    Box::pin(self.wait_for_map(&mut generation, leader_deadline)).await?;
                }
                Decision::Refuse(code, text) => return Err(SessionError::NoBackend(code, text)),
            }
        }
    }

    /// PAUSE: new work waits for RESUME as for a new leader, up to
    /// `leader_wait_ms`.
    async fn wait_unpaused(&self) -> Result<(), SessionError> {
        let patience = self.ctx.port.load().resolved.leader_wait;
        tokio::select! {
            r = self.ctx.gate.wait_open(patience) => r.map_err(|paused| {
                let text = paused.text(&self.ctx.key);
                SessionError::NoBackend(sqlstate::CANNOT_CONNECT_NOW, text)
            }),
            () = self.client.close.fired() => Err(SessionError::Shutdown),
        }
    }

    /// Waits for a new map generation, at most [`LEADER_RECHECK`] and never
    /// past `deadline`.
    async fn wait_for_map(
        &self,
        generation: &mut Option<tokio::sync::watch::Receiver<u64>>,
        deadline: Instant,
    ) -> Result<(), SessionError> {
        let rx = generation.get_or_insert_with(|| {
            let mut rx = self.ctx.link.generation.clone();
            rx.mark_unchanged();
            rx
        });
        let until = deadline.min(Instant::now() + LEADER_RECHECK);
        let changed = tokio::time::timeout_at(tokio::time::Instant::from_std(until), rx.changed());
        tokio::select! {
            _ = changed => Ok(()),
            () = self.client.close.fired() => Err(SessionError::Shutdown),
        }
    }

    fn leader_waited(&self, outcome: &str, started: Instant) {
        let key = &self.ctx.key;
        self.ctx
            .metrics
            .leader_waited(&key.cluster, &key.port, outcome, started.elapsed());
    }

    /// Whether the client was last told it is inside a transaction block
    /// (`T` or `E`): then nothing of its may run on another backend, and
    /// losing its backend ends the session, as it would end a direct
    /// connection.
    pub(super) fn in_transaction(&self) -> bool {
        let state = match self.state {
            super::ClientState::CopyIn => self.copy_outer,
            other => other,
        };
        matches!(
            state,
            super::ClientState::InTransaction | super::ClientState::FailedTransaction
        )
    }

    /// After a ReadyForQuery: the client state follows it, and the backend
    /// goes back when idle, unpinned and not in the middle of a batch.
    pub(super) fn after_ready(&mut self, status: u8) {
        let was_idle = self.state == super::ClientState::Idle;
        self.metrics.ready(&mut self.timing, was_idle, status);
        self.state = super::ClientState::from_status(status);
        let releasable = self
            .held
            .as_ref()
            .is_some_and(|h| h.pooled.backend.state.at_rest());
        if status == b'I' && self.pin.is_none() && releasable {
            self.release_held();
        }
    }

    /// A read may be retried when its backend was taken for it alone, it
    /// pins nothing, and no byte of its answer reached the client.
    pub(super) fn may_retry(&self, fresh: bool, class: &Classification) -> bool {
        fresh
            && !self.in_transaction()
            && class.route == Route::Replica
            && class.pin.is_none()
            && self.pin.is_none()
            && !self.client.forwarded
    }

    /// Drops the lost backend (its node backs off) and takes another.
    pub(super) async fn retry_elsewhere(
        &mut self,
        class: &Classification,
    ) -> Result<(), SessionError> {
        if let Some(h) = self.held.take() {
            tracing::info!(port = %self.ctx.key, node = %h.node, "read lost its backend before answering; retrying once");
            self.ctx
                .health
                .failure(&h.pooled.backend.addr, Instant::now());
            h.pooled.discard();
        }
        cancel::set(&self.cancel_slot, None);
        self.backend_for(class).await
    }

    /// The error for a broken held backend.
    pub(super) fn lost(&self, cause: impl std::fmt::Display) -> SessionError {
        SessionError::BackendLost {
            node: self
                .held
                .as_ref()
                .map_or_else(String::new, |h| h.node.to_string()),
            cause: cause.to_string(),
        }
    }
}

/// `floor` raised to `other` when that is newer.
fn raise(floor: Option<Floor>, other: Option<Floor>) -> Option<Floor> {
    match (floor, other) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

//! Getting a backend for a request: what the read must see (the session's
//! floor, the shared scopes' floors, the leader's position in `cluster`
//! scope), the router's decision carried out (waits for a replica to
//! replay the floor, woken by the position tracker; waits for a new leader
//! within `leader_wait_ms`, woken by the map), the pool of each target in
//! turn (a refused login such as 53300 or 57P03 tries the next target and
//! feeds the health book), the session's settings applied to what was
//! checked out, and giving it back after ReadyForQuery `I`.

use super::error::SessionError;
use super::{Held, Session, cancel};
use crate::backend::BackendError;
use crate::classifier::{Classification, Route};
use crate::config::RywScope;
use crate::pool::{PoolError, PoolKey};
use crate::protocol::sqlstate;
use crate::router::split::{self, Decision, Eligible, Need, NodeRole, Patience, Targets, View};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Server SQLSTATEs at login that say "try another node", not "you may not".
fn try_next(code: &str) -> bool {
    matches!(code, "53300" | "57P01" | "57P02" | "57P03" | "53000")
}

/// Longest a leader wait sleeps before asking the router again without a
/// new map (a node that refused moments ago cools down by time).
const LEADER_RECHECK: Duration = Duration::from_millis(100);

/// Why no target could be used.
struct Failed {
    error: SessionError,
    /// Every target failed in a way a new leader may cure (connect refused,
    /// shutting down, too many connections).
    transient: bool,
}

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
        // Boxed: a checkout's future is most of a request's; separate, it
        // is allocated only when one is needed, and both fit the
        // allocator's per-thread cache.
        Box::pin(self.backend_for_new(class)).await
    }

    /// A backend for `class` when the session holds none.
    async fn backend_for_new(&mut self, class: &Classification) -> Result<(), SessionError> {
        let route = if self.pin.is_some() || class.pin.is_some() {
            Route::Leader
        } else {
            class.route
        };
        let need = if route == Route::Replica {
            self.read_need().await
        } else {
            Need::Nothing
        };
        self.checkout(route, need, class.reason.label(), true).await
    }

    /// A backend on the leader for a read a replica refused.
    pub(super) async fn backend_on_leader(
        &mut self,
        class: &Classification,
    ) -> Result<(), SessionError> {
        self.checkout(Route::Leader, Need::Nothing, class.reason.label(), true)
            .await
    }

    /// What a read arriving now must see under the port's scope.
    async fn read_need(&mut self) -> Need {
        let port = self.ctx.port.load();
        let c = &self.consistency;
        let scope = port.resolved.read_your_writes;
        match scope {
            RywScope::Off => return Need::Nothing,
            RywScope::Window => {
                return if c.leader_until.is_some_and(|t| Instant::now() < t) {
                    Need::Leader
                } else {
                    Need::Nothing
                };
            }
            _ => {}
        }
        if let Some(epoch) = c.unknown {
            if epoch == self.ctx.link.tracker.current().epoch {
                return Need::Leader;
            }
            self.consistency.unknown = None;
        }
        let c = &self.consistency;
        let floors = &self.ctx.link.floors;
        let mut floor = c.floor;
        let mut raise = |f: Option<crate::topology::Floor>| {
            if let Some(f) = f {
                floor = Some(floor.map_or(f, |old| old.max(f)));
            }
        };
        match scope {
            RywScope::User => raise(floors.user(&self.creds.user, &self.creds.database)),
            RywScope::Database => raise(floors.database(&self.creds.database)),
            RywScope::Cluster => {
                // Bounded: a leader that does not answer must not hold the
                // read longer than a leader change would.
                let bound = self
                    .ctx
                    .port
                    .load()
                    .resolved
                    .leader_wait
                    .max(Duration::from_secs(1));
                let asked = self.ctx.link.tracker.leader_lsn_after(Instant::now());
                match tokio::time::timeout(bound, asked).await {
                    Ok(Ok(f)) => raise(Some(f)),
                    Err(_) => return Need::Leader,
                    Ok(Err(e)) => {
                        tracing::debug!(port = %self.ctx.key, error = %e, "leader position unknown; the read goes to the leader");
                        return Need::Leader;
                    }
                }
            }
            _ => {}
        }
        floor.map_or(Need::Nothing, Need::Replayed)
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
        let (ryw_wait, leader_wait) = {
            let r = &self.ctx.port.load().resolved;
            (r.read_your_writes_wait, r.leader_wait)
        };
        let replica_deadline = started + ryw_wait;
        let leader_deadline = started + leader_wait;
        let mut patience = Patience {
            replica: !ryw_wait.is_zero() && self.ctx.link.replica_waits_pay(started),
            leader: wait_leader && !leader_wait.is_zero(),
        };
        // The first decision's clock is the one just read.
        let mut now = Some(started);
        let mut waited_replica = false;
        let mut waited_leader = false;
        let mut positions = None;
        let mut hurry = None;
        let mut generation = None;
        loop {
            let decision = {
                let map = self.ctx.map.load();
                let port = self.ctx.port.load();
                let lag = self.ctx.lag.load();
                let pos = self.ctx.link.tracker.current();
                let eligible = Eligible::current(&mut self.eligible, &map, &port, &lag);
                let view = View {
                    map: &map,
                    port: &port,
                    eligible,
                    health: &self.ctx.health,
                    positions: &pos,
                    now: now.take().unwrap_or_else(Instant::now),
                };
                let req = split::Request {
                    route,
                    need,
                    patience,
                };
                let (pools, mine) = (&self.ctx.pools, &self.pools);
                // A node this session has a pool of: its shared counter,
                // read without the pool set's lock.
                split::decide(&view, &req, |a| {
                    mine.iter()
                        .find(|(n, p)| n == a && !p.is_closed())
                        .map_or_else(|| pools.busy(a), |(_, p)| p.node_busy())
                })
            };
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

    /// Acquires from `targets`, best first, and applies the session's
    /// settings; the role of the node taken.
    ///
    /// The pool's wait or login and the settings' round trip are boxed:
    /// the usual request takes an idle backend whose settings stand, and
    /// its future (allocated per request) stays small.
    async fn acquire(
        &mut self,
        targets: &Targets,
        reason: &'static str,
    ) -> Result<NodeRole, Failed> {
        let mut failures = Vec::new();
        let mut refused = None;
        let mut transient = true;
        for t in targets {
            let role = t.role.label();
            let cached = self
                .pools
                .iter()
                .find(|(a, p)| *a == t.addr && p.role == role && !p.is_closed())
                .map(|(_, p)| Arc::clone(p));
            let pool = match cached {
                Some(p) => p,
                None => {
                    let key = PoolKey {
                        node: t.addr.clone(),
                        creds: self.creds.clone(),
                    };
                    let p = self.ctx.pools.get(&key, role, self.ctx.pool_settings());
                    self.pools.retain(|(a, _)| *a != t.addr);
                    if self.pools.capacity() == 0 {
                        // Room for one (see SessionMetrics::statement).
                        self.pools.reserve_exact(1);
                    }
                    self.pools.push((t.addr.clone(), Arc::clone(&p)));
                    p
                }
            };
            // An idle backend taken at once waited for nothing: no clock
            // is read for it.
            let (taken, waited) = match pool.try_take() {
                Some(p) => (Ok(p), 0.0),
                None => {
                    let started = Instant::now();
                    let r = Box::pin(pool.acquire()).await;
                    (r, started.elapsed().as_secs_f64())
                }
            };
            match taken {
                Ok(mut p) => {
                    self.ctx.health.success(&t.addr);
                    self.metrics.acquire_wait.observe(waited);
                    let wanted = &self.settings.wanted;
                    let applied = if p.backend.has_applied(wanted) {
                        Ok(())
                    } else {
                        Box::pin(p.backend.apply(wanted)).await
                    };
                    match applied {
                        Ok(()) => {}
                        // The node is shutting down under a pooled backend
                        // (a switchover): like a refused login, try on.
                        Err(BackendError::Apply { code, .. }) if try_next(&code) => {
                            p.discard();
                            self.ctx.health.failure(&t.addr, Instant::now());
                            failures.push(format!("{} ({}): {code}", t.name, t.addr));
                            continue;
                        }
                        Err(BackendError::Apply { raw, .. }) => {
                            p.release();
                            return Err(Failed {
                                error: SessionError::Server(raw),
                                transient: false,
                            });
                        }
                        Err(e) => {
                            p.discard();
                            failures.push(format!("{} ({}): {e}", t.name, t.addr));
                            continue;
                        }
                    }
                    cancel::set(&self.cancel_slot, Some((t.addr.clone(), p.backend.key)));
                    self.metrics.statement(&self.ctx, &t.name, t.role, reason);
                    self.held = Some(Box::new(Held {
                        pooled: p,
                        node: Arc::clone(&t.name),
                        role: t.role,
                        fixup: None,
                    }));
                    return Ok(t.role);
                }
                Err(PoolError::Backend(BackendError::Refused { code, raw, .. }))
                    if try_next(&code) =>
                {
                    self.ctx.health.failure(&t.addr, Instant::now());
                    tracing::info!(port = %self.ctx.key, node = %t.name, sqlstate = %code, "backend login refused; trying the next node");
                    failures.push(format!("{} ({}): refused with {code}", t.name, t.addr));
                    refused = Some(raw);
                }
                Err(PoolError::Backend(BackendError::Refused { raw, .. })) => {
                    return Err(Failed {
                        error: SessionError::Server(raw),
                        transient: false,
                    });
                }
                Err(e @ PoolError::Timeout { .. }) => {
                    return Err(Failed {
                        error: SessionError::NoBackend(
                            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                            format!("pgvane: {e}"),
                        ),
                        transient: false,
                    });
                }
                // This port's TLS or login rules refused the node: the node
                // is up and other ports may use it, so its health stands.
                Err(e @ PoolError::Backend(BackendError::Tls(_) | BackendError::Auth(_))) => {
                    tracing::warn!(port = %self.ctx.key, node = %t.name, error = %e, "backend login refused by this port's server_tls or server_require_auth");
                    failures.push(format!("{} ({}): {e}", t.name, t.addr));
                    transient = false;
                }
                Err(e) => {
                    self.ctx.health.failure(&t.addr, Instant::now());
                    self.ctx
                        .metrics
                        .connect_failures
                        .with_label_values(&[&*self.ctx.key.cluster, &*t.name])
                        .inc();
                    failures.push(format!("{} ({}): {e}", t.name, t.addr));
                }
            }
        }
        if let Some(raw) = refused.filter(|_| failures.len() == 1) {
            return Err(Failed {
                error: SessionError::Server(raw),
                transient,
            });
        }
        Err(Failed {
            error: SessionError::NoBackend(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "pgvane: could not connect to any node for port \"{}\": {}",
                    self.ctx.key,
                    failures.join("; ")
                ),
            ),
            transient,
        })
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

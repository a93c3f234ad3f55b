//! Getting a backend for a request: the route (pins and read-your-writes
//! send reads to the leader), the router's targets, the pool of each target
//! in turn (a refused login such as 53300 or 57P03 tries the next target
//! and feeds the health book), the session's settings applied to what was
//! checked out, and giving it back after ReadyForQuery `I`.

use super::error::SessionError;
use super::{Held, Session, cancel};
use crate::backend::BackendError;
use crate::classifier::{Classification, Route};
use crate::pool::{PoolError, PoolKey};
use crate::protocol::sqlstate;
use crate::router;
use std::sync::Arc;
use std::time::Instant;

/// Server SQLSTATEs at login that say "try another node", not "you may not".
fn try_next(code: &str) -> bool {
    matches!(code, "53300" | "57P01" | "57P02" | "57P03" | "53000")
}

impl Session {
    /// The login's backend: the leader's, or a replica's while the cluster
    /// has no leader (the session is read-only until one appears).
    pub(super) async fn checkout_for_login(&mut self) -> Result<(), SessionError> {
        match self.checkout(Route::Leader, "session").await {
            Err(SessionError::NoBackend(..)) => self.checkout(Route::Replica, "session").await,
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
        let reads_own_writes = self.leader_until.is_some_and(|t| Instant::now() < t);
        let route = if self.pin.is_some() || class.pin.is_some() || reads_own_writes {
            Route::Leader
        } else {
            class.route
        };
        self.checkout(route, class.reason.label()).await
    }

    /// Acquires from the targets of `route`, best first, and applies the
    /// session's settings.
    async fn checkout(&mut self, route: Route, reason: &'static str) -> Result<(), SessionError> {
        let map = self.ctx.map.load_full();
        let port = self.ctx.port.load_full();
        let pools = Arc::clone(&self.ctx.pools);
        let lag = self.ctx.lag.load();
        let targets = router::split::targets(
            &map,
            &port,
            route,
            (&self.ctx.health, &lag),
            Instant::now(),
            |a| pools.busy(a),
        )
        .map_err(|why| {
            SessionError::NoBackend(sqlstate::CANNOT_CONNECT_NOW, format!("pgvane: {why}"))
        })?;
        let settings = self.ctx.pool_settings();
        let mut failures = Vec::new();
        let mut refused = None;
        for t in targets {
            let cached = self
                .pools
                .iter()
                .find(|(a, p)| *a == t.addr && p.role == t.role && !p.is_closed())
                .map(|(_, p)| Arc::clone(p));
            let pool = match cached {
                Some(p) => p,
                None => {
                    let key = PoolKey {
                        node: t.addr.clone(),
                        creds: self.creds.clone(),
                    };
                    let p = self.ctx.pools.get(&key, t.role, settings);
                    self.pools.retain(|(a, _)| *a != t.addr);
                    self.pools.push((t.addr.clone(), Arc::clone(&p)));
                    p
                }
            };
            let started = Instant::now();
            match pool.acquire().await {
                Ok(mut p) => {
                    self.ctx.health.success(&t.addr);
                    self.acquire_wait.observe(started.elapsed().as_secs_f64());
                    match p.backend.apply(&self.settings.wanted).await {
                        Ok(()) => {}
                        Err(BackendError::Apply { raw, .. }) => {
                            p.release();
                            return Err(SessionError::Server(raw));
                        }
                        Err(e) => {
                            p.discard();
                            failures.push(format!("{} ({}): {e}", t.name, t.addr));
                            continue;
                        }
                    }
                    cancel::set(&self.cancel_slot, Some((t.addr.clone(), p.backend.key)));
                    self.count_statement(&t.name, t.role, reason);
                    self.held = Some(Held {
                        pooled: p,
                        node: t.name,
                        fixup: None,
                    });
                    return Ok(());
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
                    return Err(SessionError::Server(raw));
                }
                Err(e @ PoolError::Timeout { .. }) => {
                    return Err(SessionError::NoBackend(
                        sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                        format!("pgvane: {e}"),
                    ));
                }
                // This port's TLS or login rules refused the node: the node
                // is up and other ports may use it, so its health stands.
                Err(e @ PoolError::Backend(BackendError::Tls(_) | BackendError::Auth(_))) => {
                    tracing::warn!(port = %self.ctx.key, node = %t.name, error = %e, "backend login refused by this port's server_tls or server_require_auth");
                    failures.push(format!("{} ({}): {e}", t.name, t.addr));
                }
                Err(e) => {
                    self.ctx.health.failure(&t.addr, Instant::now());
                    self.ctx
                        .metrics
                        .connect_failures
                        .with_label_values(&[&self.ctx.key.cluster, &t.name])
                        .inc();
                    failures.push(format!("{} ({}): {e}", t.name, t.addr));
                }
            }
        }
        if let Some(raw) = refused.filter(|_| failures.len() == 1) {
            return Err(SessionError::Server(raw));
        }
        Err(SessionError::NoBackend(
            sqlstate::CONNECTION_FAILURE,
            format!(
                "pgvane: could not connect to any node for port \"{}\": {}",
                self.ctx.key,
                failures.join("; ")
            ),
        ))
    }

    fn count_statement(&mut self, node: &str, role: &'static str, reason: &'static str) {
        if let Some((_, c)) = self
            .counters
            .iter()
            .find(|((n, ro, re), _)| n == node && *ro == role && *re == reason)
        {
            c.inc();
            return;
        }
        let c = self.ctx.metrics.statements.with_label_values(&[
            &self.ctx.key.cluster,
            &self.ctx.key.port,
            node,
            role,
            reason,
        ]);
        c.inc();
        self.counters.push(((node.to_owned(), role, reason), c));
    }

    /// After a ReadyForQuery: the client state follows it, and the backend
    /// goes back when idle, unpinned and not in the middle of a batch.
    pub(super) fn after_ready(&mut self, status: u8) {
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
        // Nothing of the lost answer was sent: drop what was buffered of it.
        self.client.out.clear();
        self.backend_for(class).await
    }

    /// The error for a broken held backend.
    pub(super) fn lost(&self, cause: impl std::fmt::Display) -> SessionError {
        SessionError::BackendLost {
            node: self
                .held
                .as_ref()
                .map_or_else(String::new, |h| h.node.clone()),
            cause: cause.to_string(),
        }
    }
}

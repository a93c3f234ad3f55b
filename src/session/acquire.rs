//! Taking a backend from the pools of the router's targets, best first:
//! an idle backend of this worker at once, else a wait or a login; a
//! refused login such as 53300 or 57P03 tries the next target and feeds
//! the health book; the session's settings applied to what was taken,
//! which the session then holds.

use super::error::SessionError;
use super::{Held, Session, cancel};
use crate::backend::BackendError;
use crate::pool::{Pool, PoolError, PoolKey, Pooled};
use crate::protocol::sqlstate;
use crate::router::split::{NodeRole, Target, Targets};
use std::sync::Arc;
use std::time::Instant;

/// Server SQLSTATEs at login that say "try another node", not "you may not".
fn try_next(code: &str) -> bool {
    matches!(code, "53300" | "57P01" | "57P02" | "57P03" | "53000")
}

/// Why no target could be used.
pub(super) struct Failed {
    pub(super) error: SessionError,
    /// Every target failed in a way a new leader may cure (connect refused,
    /// shutting down, too many connections).
    pub(super) transient: bool,
}

impl Session {
    /// Acquires from `targets`, best first, and applies the session's
    /// settings; the role of the node taken.
    ///
    /// The pool's wait or login and the settings' round trip are boxed:
    /// the usual request takes an idle backend whose settings stand, and
    /// its future (allocated per request) stays small.
    pub(super) async fn acquire(
        &mut self,
        targets: &Targets,
        reason: &'static str,
    ) -> Result<NodeRole, Failed> {
        let mut failures = Vec::new();
        let mut refused = None;
        let mut transient = true;
        for t in targets {
            let role = t.role.label();
            let pool = match self.known_pool(t).map(Arc::clone) {
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
                    self.hold(p, t, reason);
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

    /// The open pool of `t` this session used before, if any.
    fn known_pool(&self, t: &Target) -> Option<&Arc<Pool>> {
        let role = t.role.label();
        self.pools
            .iter()
            .find(|(a, p)| *a == t.addr && p.role == role && !p.is_closed())
            .map(|(_, p)| p)
    }

    /// The usual request's backend, without awaiting: `t`'s pool, one this
    /// session used, lends an idle backend of this worker whose settings
    /// stand. `None` leaves the rest to [`Self::acquire`] (a backend taken
    /// whose settings differ goes back first).
    pub(super) fn take_at_once(&mut self, t: &Target, reason: &'static str) -> Option<()> {
        let p = self.known_pool(t)?.try_take()?;
        if !p.backend.has_applied(&self.settings.wanted) {
            p.release();
            return None;
        }
        self.ctx.health.success(&t.addr);
        self.metrics.acquire_wait.observe(0.0);
        self.hold(p, t, reason);
        Some(())
    }

    /// Holds `p`, taken from `t`'s pool for a request of `reason`.
    fn hold(&mut self, p: Pooled, t: &Target, reason: &'static str) {
        cancel::set(&self.cancel_slot, Some((t.addr.clone(), p.backend.key)));
        self.metrics.statement(&self.ctx, &t.name, t.role, reason);
        self.held = Some(Box::new(Held {
            pooled: p,
            node: Arc::clone(&t.name),
            role: t.role,
            fixup: None,
        }));
    }
}

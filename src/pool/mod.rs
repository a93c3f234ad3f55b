//! Idle backends per (node, database, user): at most `pool_size` open at
//! once, an acquire timeout with a clear error, idle and lifetime reaping,
//! and closing whole pools when their node leaves the map or changes role.
//! A backend returns only when its own protocol state says it is clean;
//! one at rest but holding session state is reset with `DISCARD ALL`
//! (bounded in time) first; anything else is closed.

use crate::backend::{Backend, BackendError, Credentials, SocketOptions};
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Backends idle longer than this are checked for a server-side close before reuse.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// Identifies a pool: one per (node, database, user).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Node address.
    pub node: NodeAddr,
    /// Login (user, password, database).
    pub creds: Credentials,
}

/// Pool timings and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most backends open at once.
    pub size: usize,
    /// Longest wait for a backend.
    pub acquire_timeout: Duration,
    /// Idle backends older than this are closed.
    pub idle_timeout: Duration,
    /// Backends older than this are closed when returned.
    pub lifetime: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Most statements pgvane keeps prepared on one backend.
    pub max_prepared: usize,
    /// Keepalive and user timeout for backend sockets.
    pub socket: SocketOptions,
}

/// Longest time a `DISCARD ALL` reset may take before the backend is closed.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Pools kept without any backend before empty ones are dropped.
const EMPTY_POOLS_KEPT: usize = 64;

/// Why no backend could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every backend stayed busy for the whole timeout.
    #[error("no backend of {node} became free within {timeout:?} (pool_size {size})")]
    Timeout {
        /// Node.
        node: NodeAddr,
        /// Timeout.
        timeout: Duration,
        /// Pool size.
        size: usize,
    },
    /// Opening a new backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One pool.
#[derive(Debug)]
pub struct Pool {
    /// Its key.
    pub key: PoolKey,
    /// Role class tag when created (`leader`/`replica`), for `retain`.
    pub role: &'static str,
    /// The latest settings a session asked for (see [`PoolSet::get`]);
    /// only `size` stays as the pool was created with.
    settings: ArcSwap<PoolSettings>,
    security: Arc<ArcSwap<BackendSecurity>>,
    // Boxed on purpose: a backend moves between this list, the loan and
    // the session on every request; a pointer moves, not ~300 bytes.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Backend>>>,
    permits: Arc<Semaphore>,
    /// Backends of every pool of this node in use or waited for (see
    /// [`Pool::node_busy`]), shared with the node's other pools.
    load: Arc<AtomicUsize>,
    open: AtomicUsize,
    waiting: AtomicUsize,
    closed: AtomicBool,
}

/// A backend on loan with its pool permit.
#[derive(Debug)]
pub struct Pooled {
    /// The backend, boxed: it moves between the idle list, the loan and
    /// the session on every request, a pointer instead of its ~300 bytes.
    pub backend: Box<Backend>,
    pool: Arc<Pool>,
    _permit: Loan,
}

/// A wait for a pool permit, counted in the pool's `waiting` and its
/// node's load until it ends, however it ends (a dropped wait too).
struct Waiter<'a>(&'a Pool);

impl<'a> Waiter<'a> {
    fn new(pool: &'a Pool) -> Self {
        pool.waiting.fetch_add(1, Ordering::Relaxed);
        pool.load.fetch_add(1, Ordering::Relaxed);
        Self(pool)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool permit, counted in its node's load while held.
#[derive(Debug)]
struct Loan {
    _permit: OwnedSemaphorePermit,
    load: Arc<AtomicUsize>,
}

impl Loan {
    fn new(permit: OwnedSemaphorePermit, load: &Arc<AtomicUsize>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            load: Arc::clone(load),
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    fn new(
        key: PoolKey,
        role: &'static str,
        settings: PoolSettings,
        security: Arc<ArcSwap<BackendSecurity>>,
        load: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            key,
            role,
            permits: Arc::new(Semaphore::new(settings.size.max(1))),
            load,
            settings: ArcSwap::from_pointee(settings),
            security,
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    #[allow(clippy::vec_box)] // see `idle`
    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Box<Backend>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes an idle backend or opens one, waiting up to the acquire timeout.
    ///
    /// # Errors
    /// [`PoolError`].
    pub async fn acquire(self: &Arc<Self>) -> Result<Pooled, PoolError> {
        let settings = **self.settings.load();
        // A free slot is taken without a timer (the common case: no clock
        // read, no timer entry); only a full pool waits, bounded.
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiter = Waiter::new(self);
                let permit = tokio::time::timeout(
                    settings.acquire_timeout,
                    Arc::clone(&self.permits).acquire_owned(),
                )
                .await;
                drop(waiter);
                let Ok(Ok(permit)) = permit else {
                    return Err(PoolError::Timeout {
                        node: self.key.node.clone(),
                        timeout: settings.acquire_timeout,
                        size: settings.size,
                    });
                };
                permit
            }
        };
        let permit = Loan::new(permit, &self.load);
        if let Some(backend) = self.idle_backend(&settings) {
            return Ok(Pooled {
                backend,
                pool: Arc::clone(self),
                _permit: permit,
            });
        }
        let security = self.security.load_full();
        // Boxed: a login's state (TLS, SCRAM) is large and rarely needed;
        // inline, every request's future would carry its room (and be
        // copied with it onto the heap).
        let backend = Box::pin(Backend::connect(
            &self.key.node,
            &self.key.creds,
            &security,
            settings.connect_timeout,
            settings.max_prepared,
            settings.socket,
        ))
        .await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled {
            backend: Box::new(backend),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    /// An idle backend fit for use, moved to this worker: the one this
    /// worker drove most recently, else the most recently used; stale ones
    /// met on the way are closed. For a caller holding a permit.
    fn idle_backend(&self, settings: &PoolSettings) -> Option<Box<Backend>> {
        let now = Instant::now();
        let here = std::thread::current().id();
        loop {
            // The most recently used backend this worker already drives,
            // else the most recently used one (moved here below).
            let candidate = {
                let mut idle = self.idle_list();
                match idle.iter().rposition(|b| b.home() == here) {
                    Some(i) => Some(idle.remove(i)),
                    None => idle.pop(),
                }
            };
            // Each age read once (a clock subtraction is not free).
            let idle = candidate
                .as_ref()
                .map(|b| now.saturating_duration_since(b.idle_since));
            match candidate {
                Some(b)
                    if idle > Some(settings.idle_timeout)
                        || now.saturating_duration_since(b.created) > settings.lifetime =>
                {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tokio::spawn(b.close());
                }
                // A backend idle for a while may have been closed by its
                // server (shutdown, restart): it then has data or EOF waiting.
                Some(backend) if idle > Some(IDLE_CHECK_AFTER) && !backend.idle_and_open() => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    drop(backend);
                }
                Some(mut backend) => {
                    if let Err(e) = backend.rehome() {
                        tracing::debug!(node = %self.key.node, error = %e, "pooled backend lost moving workers");
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    return Some(backend);
                }
                None => return None,
            }
        }
    }

    /// An idle backend at once, without waiting or connecting: a free
    /// permit and an idle backend, or nothing (then [`Self::acquire`]).
    /// Not async, so the request path that takes a pooled backend (almost
    /// every request) carries no future for the rare wait or login.
    #[must_use]
    pub fn try_take(self: &Arc<Self>) -> Option<Pooled> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let permit = Loan::new(permit, &self.load);
        let settings = **self.settings.load();
        let backend = self.idle_backend(&settings)?;
        Some(Pooled {
            backend,
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Drops every idle backend (its server said it is shutting down, so
    /// the others are going too): the next checkout connects afresh and
    /// learns whether the node still takes connections.
    pub fn drop_idle(&self) {
        let idle = std::mem::take(&mut *self.idle_list());
        self.open.fetch_sub(idle.len(), Ordering::Relaxed);
        drop(idle);
    }

    /// True once the pool was closed (node left the map or changed role).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Backends of this pool's node in use (lent, resetting or logging
    /// in) or waited for, across every pool of the node: read without a
    /// lock, for balancing reads on every request.
    #[must_use]
    pub fn node_busy(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// (open, idle, waiting) right now.
    #[must_use]
    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.open.load(Ordering::Relaxed),
            self.idle_list().len(),
            self.waiting.load(Ordering::Relaxed),
        )
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let drained: Vec<Box<Backend>> = std::mem::take(&mut *self.idle_list());
        self.open.fetch_sub(drained.len(), Ordering::Relaxed);
        for b in drained {
            tokio::spawn(b.close());
        }
    }
}

impl Pooled {
    /// Returns the backend to its pool if its state is clean; resets it
    /// first (in the background, still counted against the pool) when it
    /// is at rest but may hold session state; closes it otherwise.
    pub fn release(self) {
        let Self {
            mut backend,
            pool,
            _permit,
        } = self;
        let now = Instant::now();
        let usable = now.duration_since(backend.created) < pool.settings.load().lifetime
            && backend.drained()
            && !backend.has_unsent()
            && !pool.closed.load(Ordering::Relaxed);
        if usable && backend.state.clean() {
            backend.idle_since = now;
            pool.idle_list().push(backend);
        } else if usable && backend.state.at_rest() {
            tokio::spawn(async move {
                if backend.reset(RESET_TIMEOUT).await && !pool.closed.load(Ordering::Relaxed) {
                    backend.idle_since = Instant::now();
                    pool.idle_list().push(backend);
                } else {
                    pool.open.fetch_sub(1, Ordering::Relaxed);
                    backend.close().await;
                }
                drop(_permit);
            });
        } else {
            pool.open.fetch_sub(1, Ordering::Relaxed);
            tokio::spawn(backend.close());
        }
    }

    /// Closes the backend (broken or in an unknown state).
    pub fn discard(self) {
        self.pool.open.fetch_sub(1, Ordering::Relaxed);
        drop(self.backend);
    }

    /// The pool it came from.
    #[must_use]
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

/// Every pool of a split port.
#[derive(Debug, Default)]
pub struct PoolSet {
    pools: Mutex<Pools>,
    security: Arc<ArcSwap<BackendSecurity>>,
}

/// The pools by key, and each node's load counter their loans share.
#[derive(Debug, Default)]
struct Pools {
    by_key: HashMap<PoolKey, Arc<Pool>>,
    loads: HashMap<NodeAddr, Arc<AtomicUsize>>,
}

impl PoolSet {
    /// An empty set whose backends log in under `security` as it is when
    /// each one opens (a reload with renewed CA files reaches new ones).
    #[must_use]
    pub fn new(security: Arc<ArcSwap<BackendSecurity>>) -> Self {
        Self {
            pools: Mutex::default(),
            security,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool for `key`, created on first use with `settings`. An
    /// existing pool takes `settings` for its next acquire and connect (a
    /// reload's timeouts and socket options apply at once), all but `size`.
    #[must_use]
    pub fn get(&self, key: &PoolKey, role: &'static str, settings: PoolSettings) -> Arc<Pool> {
        let mut guard = self.map();
        let Pools { by_key: m, loads } = &mut *guard;
        if let Some(p) = m.get(key) {
            if p.role == role {
                let current = p.settings.load();
                let wanted = PoolSettings {
                    size: current.size,
                    ..settings
                };
                if **current != wanted {
                    p.settings.store(Arc::new(wanted));
                }
                return Arc::clone(p);
            }
            p.close();
        }
        if m.len() >= EMPTY_POOLS_KEPT {
            // Pools of databases that do not exist, or long unused: drop the empty ones.
            m.retain(|_, p| {
                let (open, idle, waiting) = p.stats();
                open + idle + waiting > 0 || Arc::strong_count(p) > 1
            });
        }
        let load = loads.entry(key.node.clone()).or_default();
        let p = Arc::new(Pool::new(
            key.clone(),
            role,
            settings,
            Arc::clone(&self.security),
            Arc::clone(load),
        ));
        m.insert(key.clone(), Arc::clone(&p));
        p
    }

    /// Closes pools whose node no longer exists or has another role class.
    pub fn retain(&self, keep: impl Fn(&NodeAddr, &'static str) -> bool) {
        let mut guard = self.map();
        let Pools { by_key, loads } = &mut *guard;
        by_key.retain(|k, p| {
            let ok = keep(&k.node, p.role);
            if !ok {
                tracing::info!(node = %k.node, role = p.role, "closing pool: node left the map or changed role");
                p.close();
            }
            ok
        });
        // A node with no pool left starts its count afresh when it returns
        // (its closed pools' loans still hold the old counter).
        loads.retain(|node, _| by_key.keys().any(|k| &k.node == node));
    }

    /// Backends of `node` in use or waited for across this set (for
    /// balancing reads when a session has no pool of the node yet).
    #[must_use]
    pub fn busy(&self, node: &NodeAddr) -> usize {
        self.map()
            .loads
            .get(node)
            .map_or(0, |l| l.load(Ordering::Relaxed))
    }

    /// Every pool with its stats: (key, role, open, idle, waiting).
    #[must_use]
    pub fn snapshot(&self) -> Vec<(PoolKey, &'static str, usize, usize, usize)> {
        self.map()
            .by_key
            .iter()
            .map(|(k, p)| {
                let (o, i, w) = p.stats();
                (k.clone(), p.role, o, i, w)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendSecret;

    fn settings(size: usize, acquire_ms: u64) -> PoolSettings {
        PoolSettings {
            size,
            acquire_timeout: Duration::from_millis(acquire_ms),
            idle_timeout: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(3),
            max_prepared: 200,
            socket: SocketOptions::default(),
        }
    }

    fn key(user: &str) -> PoolKey {
        PoolKey {
            node: NodeAddr {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            creds: Credentials {
                user: user.into(),
                secret: BackendSecret::None,
                database: "d".into(),
            },
        }
    }

    #[test]
    fn an_existing_pool_takes_new_settings_but_keeps_its_size() {
        let set = PoolSet::new(Arc::default());
        let key = key("u");
        let first = set.get(&key, "leader", settings(2, 5000));
        let again = set.get(&key, "leader", settings(9, 100));
        assert!(Arc::ptr_eq(&first, &again));
        let now = **again.settings.load();
        assert_eq!(now, settings(2, 100), "timeouts new, size as created");
        assert_eq!(again.permits.available_permits(), 2);
    }

    #[test]
    fn a_node_counts_the_loans_of_all_its_pools_without_a_lock() {
        let set = PoolSet::new(Arc::default());
        let node = key("a").node;
        let a = set.get(&key("a"), "replica", settings(2, 5000));
        let b = set.get(&key("b"), "replica", settings(2, 5000));
        let loan = |p: &Arc<Pool>| {
            let permit = Arc::clone(&p.permits).try_acquire_owned().unwrap();
            Loan::new(permit, &p.load)
        };
        let one = loan(&a);
        let two = loan(&b);
        assert_eq!((a.node_busy(), b.node_busy(), set.busy(&node)), (2, 2, 2));
        drop(one);
        assert_eq!((a.node_busy(), set.busy(&node)), (1, 1));
        drop(two);
        assert_eq!(set.busy(&node), 0);
        // The node leaves: its count goes; a loan of a closed pool does not
        // reach the count of the node's next pools.
        let old = loan(&a);
        set.retain(|_, _| false);
        assert_eq!(set.busy(&node), 0);
        let c = set.get(&key("a"), "replica", settings(2, 5000));
        assert_eq!((c.node_busy(), a.node_busy()), (0, 1));
        drop(old);
        assert_eq!(c.node_busy(), 0);
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_no_waiter_counted() {
        let set = PoolSet::new(Arc::default());
        let p = set.get(&key("u"), "replica", settings(1, 5000));
        let held = Loan::new(Arc::clone(&p.permits).try_acquire_owned().unwrap(), &p.load);
        {
            let wait = p.acquire();
            tokio::pin!(wait);
            assert!(futures_util::poll!(wait.as_mut()).is_pending());
            assert_eq!((p.stats().2, p.node_busy()), (1, 2), "a waiter counted");
        }
        assert_eq!((p.stats().2, p.node_busy()), (0, 1), "its wait dropped");
        drop(held);
        assert_eq!(p.node_busy(), 0);
    }
}

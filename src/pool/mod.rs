//! Idle backends per (node, database, user): at most `pool_size` open at
//! once, an acquire timeout with a clear error, idle and lifetime reaping,
//! and closing whole pools when their node leaves the map or changes role.
//! A backend returns only when its own protocol state says it is clean;
//! one at rest but holding session state is reset with `DISCARD ALL`
//! (bounded in time) first; anything else is closed. Idle backends are
//! kept per client worker (`idle`); a port's pools by key in `set`.

use crate::backend::{Backend, BackendError, Credentials, SocketOptions};
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use arc_swap::ArcSwap;
use idle::IdleLists;
use prometheus::IntCounter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod idle;
mod set;

pub use set::{MoveCounter, PoolSet};

/// Longest a full pool's checkout scans the other workers' lists for the
/// idle backend its count promises before it opens one anyway.
const STEAL_SCANS: usize = 4;

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
    /// Idle backends, one list per worker.
    idle: IdleLists,
    permits: Arc<Semaphore>,
    /// Backends of every pool of this node in use or waited for (see
    /// [`Pool::node_busy`]), shared with the node's other pools.
    load: Arc<AtomicUsize>,
    /// Backends open or opening (idle, lent, resetting, logging in).
    open: AtomicUsize,
    waiting: AtomicUsize,
    closed: AtomicBool,
    /// Counts idle backends taken from another worker's list.
    moves: Option<IntCounter>,
}

/// A backend on loan with its pool permit.
#[derive(Debug)]
pub struct Pooled {
    /// The backend, boxed: it moves between the idle list, the loan and
    /// the session on every request, a pointer instead of its ~300 bytes.
    pub backend: Box<Backend>,
    counted: Counted,
    _permit: Loan,
}

/// A lent backend's place in its pool's `open` count: given back when
/// dropped (a discard, a session or reset task dropped midway, a runtime
/// shutting down), unless the backend went back to an idle list, where it
/// stays counted.
#[derive(Debug)]
struct Counted {
    pool: Arc<Pool>,
    held: bool,
}

impl Counted {
    fn new(pool: &Arc<Pool>) -> Self {
        Self {
            pool: Arc::clone(pool),
            held: true,
        }
    }

    /// The backend went to [`Pool::put_back`], which keeps or gives back
    /// its count itself.
    fn handed_back(mut self) {
        self.held = false;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.held {
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
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

/// A backend being opened, counted in the pool's `open` from before the
/// login until it is lent; the count drops again when the login fails or
/// is dropped midway (the client left).
struct Opening<'a>(Option<&'a Pool>);

impl Opening<'_> {
    /// The login succeeded: the backend stays counted.
    fn opened(mut self) {
        self.0 = None;
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Pool {
    fn new(
        key: PoolKey,
        role: &'static str,
        settings: PoolSettings,
        security: Arc<ArcSwap<BackendSecurity>>,
        load: Arc<AtomicUsize>,
        moves: Option<IntCounter>,
    ) -> Self {
        Self {
            moves,
            key,
            role,
            permits: Arc::new(Semaphore::new(settings.size.max(1))),
            load,
            settings: ArcSwap::from_pointee(settings),
            security,
            idle: IdleLists::default(),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Takes an idle backend or opens one, waiting up to the acquire timeout.
    ///
    /// An idle backend of this worker first; else a new one while the pool
    /// has fewer than `pool_size` open (each worker comes to drive its own,
    /// so none moves between workers on later requests); else another
    /// worker's idle one, moved here.
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
        let own = self.idle.here();
        let lend = |backend| Pooled {
            backend,
            counted: Counted::new(self),
            _permit: permit,
        };
        if let Some(backend) = self.take_idle(own, &settings) {
            return Ok(lend(backend));
        }
        let mut scans = 0;
        let opening = loop {
            if self.reserve(settings.size.max(1)) {
                break Opening(Some(self));
            }
            // The pool is full and this caller holds a permit without a
            // backend, so one is idle in some list: take it. A scan can
            // miss it (it moves between lists behind the scan): again,
            // a few times, while any list holds one.
            let stolen = self
                .idle
                .others(own)
                .find_map(|i| self.take_idle(i, &settings));
            if let Some(backend) = stolen {
                if let Some(moves) = &self.moves {
                    moves.inc();
                }
                return Ok(lend(backend));
            }
            scans += 1;
            if scans >= STEAL_SCANS || self.idle.len() == 0 {
                // None idle anywhere although the count says full (a
                // backend between a list and a close): open one.
                self.open.fetch_add(1, Ordering::Relaxed);
                break Opening(Some(self));
            }
        };
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
        opening.opened();
        Ok(lend(Box::new(backend)))
    }

    /// Counts one more backend open if fewer than `size` are.
    fn reserve(&self, size: usize) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < size).then_some(n + 1)
            })
            .is_ok()
    }

    /// An idle backend of list `i` fit for use, moved to this worker if
    /// another drove it: the most recently used; stale ones met on the way
    /// are closed. For a caller holding a permit.
    fn take_idle(&self, i: usize, settings: &PoolSettings) -> Option<Box<Backend>> {
        loop {
            let candidate = self.idle.list(i).pop()?;
            // Each age read once (a clock subtraction is not free).
            let now = Instant::now();
            let idle = now.saturating_duration_since(candidate.idle_since);
            if idle > settings.idle_timeout
                || now.saturating_duration_since(candidate.created) > settings.lifetime
            {
                self.open.fetch_sub(1, Ordering::Relaxed);
                tokio::spawn(candidate.close());
                continue;
            }
            // A backend idle for a while may have been closed by its
            // server (shutdown, restart): it then has data or EOF waiting.
            if idle > IDLE_CHECK_AFTER && !candidate.idle_and_open() {
                self.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let mut backend = candidate;
            if let Err(e) = backend.rehome() {
                tracing::debug!(node = %self.key.node, error = %e, "pooled backend lost moving workers");
                self.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            return Some(backend);
        }
    }

    /// Puts a backend back on this worker's idle list, where it stays
    /// counted in `open`, or closes it (its count given back) when the pool
    /// closed meanwhile.
    fn put_back(&self, mut backend: Box<Backend>, now: Instant) {
        backend.idle_since = now;
        let refused = {
            let mut list = self.idle.list(self.idle.here());
            // Under the list's lock: `close` marks the pool closed before
            // it drains the lists, so a backend pushed here after the drain
            // sees the mark.
            if self.closed.load(Ordering::Relaxed) {
                Some(backend)
            } else {
                list.push(backend);
                None
            }
        };
        if let Some(b) = refused {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tokio::spawn(b.close());
        }
    }

    /// Closes the backends idle past the idle timeout in every worker's
    /// list: a list is taken from its recent end, and one whose worker has
    /// no client left, or a pool no request uses any more, is taken from
    /// no more (see [`PoolSet::sweep`]).
    fn close_stale(&self, now: Instant) {
        let timeout = self.settings.load().idle_timeout;
        let stale = self.idle.take_stale(now, timeout);
        self.open.fetch_sub(stale.len(), Ordering::Relaxed);
        for b in stale {
            tokio::spawn(b.close());
        }
    }

    /// An idle backend of this worker at once, without waiting or
    /// connecting: a free permit and an idle backend, or nothing (then
    /// [`Self::acquire`]). Not async, so the request path that takes a
    /// pooled backend (almost every request) carries no future for the
    /// rare wait or login.
    #[must_use]
    pub fn try_take(self: &Arc<Self>) -> Option<Pooled> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let permit = Loan::new(permit, &self.load);
        let settings = **self.settings.load();
        let backend = self.take_idle(self.idle.here(), &settings)?;
        Some(Pooled {
            backend,
            counted: Counted::new(self),
            _permit: permit,
        })
    }

    /// Drops every idle backend (its server said it is shutting down, so
    /// the others are going too): the next checkout connects afresh and
    /// learns whether the node still takes connections.
    pub fn drop_idle(&self) {
        let idle = self.idle.drain();
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
            self.idle.len(),
            self.waiting.load(Ordering::Relaxed),
        )
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let drained = self.idle.drain();
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
            counted,
            _permit,
        } = self;
        let pool = &counted.pool;
        let now = Instant::now();
        let lifetime = pool.settings.load().lifetime;
        let usable = now.duration_since(backend.created) < lifetime
            && backend.drained()
            && !backend.has_unsent()
            && !pool.closed.load(Ordering::Relaxed);
        if usable && backend.state.clean() {
            pool.put_back(backend, now);
            counted.handed_back();
        } else if usable && backend.state.at_rest() {
            // Spawned on this worker: the backend returns to its list.
            // Dropped unfinished (runtime shutdown), `counted` gives back
            // its count.
            tokio::spawn(async move {
                let pool = &counted.pool;
                if backend.reset(RESET_TIMEOUT).await && !pool.closed.load(Ordering::Relaxed) {
                    pool.put_back(backend, Instant::now());
                    counted.handed_back();
                } else {
                    drop(counted);
                    backend.close().await;
                }
                drop(_permit);
            });
        } else {
            drop(counted);
            tokio::spawn(backend.close());
        }
    }

    /// Closes the backend (broken or in an unknown state).
    pub fn discard(self) {
        drop(self);
    }

    /// The pool it came from.
    #[must_use]
    pub fn pool(&self) -> &Arc<Pool> {
        &self.counted.pool
    }
}

#[cfg(test)]
mod tests;

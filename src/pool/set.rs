//! Every pool of a split port by key, created on first use, closed when
//! its node leaves the map or changes role; and each node's load counter,
//! which all the node's pools share.

use super::{Pool, PoolKey, PoolSettings};
use crate::tls::BackendSecurity;
use crate::topology::NodeAddr;
use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Pools kept without any backend before empty ones are dropped.
const EMPTY_POOLS_KEPT: usize = 64;

/// Every pool of a split port.
#[derive(Debug, Default)]
pub struct PoolSet {
    pools: Mutex<Pools>,
    security: Arc<ArcSwap<BackendSecurity>>,
    moves: Option<MoveCounter>,
}

/// Where a set's pools count the backends they move between workers: a
/// counter by (cluster, port, node), this port's labels.
#[derive(Debug, Clone)]
pub struct MoveCounter {
    /// The counter family (`pgvane_pool_backend_moves_total`).
    pub counter: IntCounterVec,
    /// Cluster label.
    pub cluster: String,
    /// Port label.
    pub port: String,
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
            moves: None,
        }
    }

    /// This set, counting the backends its pools move between workers.
    #[must_use]
    pub fn counting_moves(mut self, moves: MoveCounter) -> Self {
        self.moves = Some(moves);
        self
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
        let node = key.node.to_string();
        let moves = self.moves.as_ref().map(|m| {
            m.counter
                .with_label_values(&[m.cluster.as_str(), m.port.as_str(), node.as_str()])
        });
        let p = Arc::new(Pool::new(
            key.clone(),
            role,
            settings,
            Arc::clone(&self.security),
            Arc::clone(load),
            moves,
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

    /// Closes, in every pool, the backends idle past its idle timeout.
    pub fn sweep(&self) {
        let now = Instant::now();
        let pools: Vec<Arc<Pool>> = self.map().by_key.values().cloned().collect();
        for p in pools {
            p.close_stale(now);
        }
    }

    /// Sweeps `set` every `period` (see [`Self::sweep`]) until it is gone.
    pub async fn sweep_every(set: Weak<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(set) = set.upgrade() else {
                return;
            };
            set.sweep();
        }
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

//! pgvane's own view of node health: nodes that refused or timed out on
//! connect are skipped for new clients for a short, growing back-off,
//! because `/cluster` shows a dead leader as running for up to `ttl`.

use crate::topology::NodeAddr;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// First back-off after a failed connect.
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    until: Instant,
}

/// Connect outcomes per node address, shared by every port of a cluster.
#[derive(Debug, Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<NodeAddr, Entry>>,
    /// Entries held, kept under the lock: every request asks about its
    /// nodes, and while none failed (the usual case) that is one atomic
    /// load, no lock and no hash.
    held: AtomicUsize,
}

impl HealthBook {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<NodeAddr, Entry>) -> R) -> R {
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(&mut guard);
        self.held.store(guard.len(), Ordering::Relaxed);
        r
    }

    fn none(&self) -> bool {
        self.held.load(Ordering::Relaxed) == 0
    }

    /// Records a failed connect: back off `500 ms × 2^(n-1)`, at most 5 s.
    pub fn failure(&self, addr: &NodeAddr, now: Instant) {
        self.with(|e| {
            let entry = e.entry(addr.clone()).or_insert(Entry {
                failures: 0,
                until: now,
            });
            entry.failures = entry.failures.saturating_add(1);
            let backoff = BASE_BACKOFF
                .saturating_mul(1 << (entry.failures - 1).min(4))
                .min(MAX_BACKOFF);
            entry.until = now + backoff;
        });
    }

    /// Records a successful connect: the node is healthy again.
    pub fn success(&self, addr: &NodeAddr) {
        if self.none() {
            return;
        }
        self.with(|e| e.remove(addr));
    }

    /// True while the node is backing off.
    #[must_use]
    pub fn cooling(&self, addr: &NodeAddr, now: Instant) -> bool {
        if self.none() {
            return false;
        }
        self.with(|e| e.get(addr).is_some_and(|x| now < x.until))
    }

    /// Consecutive failures since the last success.
    #[must_use]
    pub fn failures(&self, addr: &NodeAddr) -> u32 {
        if self.none() {
            return 0;
        }
        self.with(|e| e.get(addr).map_or(0, |x| x.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_success_clears() {
        let book = HealthBook::default();
        let a = NodeAddr {
            host: "h".into(),
            port: 1,
        };
        let t = Instant::now();
        assert!(!book.cooling(&a, t));
        book.failure(&a, t);
        assert!(book.cooling(&a, t + Duration::from_millis(499)));
        assert!(!book.cooling(&a, t + Duration::from_millis(500)));
        for _ in 0..10 {
            book.failure(&a, t);
        }
        assert_eq!(book.failures(&a), 11);
        assert!(book.cooling(&a, t + Duration::from_millis(4999)));
        assert!(!book.cooling(&a, t + MAX_BACKOFF));
        let b = NodeAddr {
            host: "h".into(),
            port: 2,
        };
        book.failure(&b, t);
        book.success(&a);
        assert!(!book.cooling(&a, t));
        assert_eq!(book.failures(&a), 0);
        assert!(book.cooling(&b, t), "another node's back-off stands");
        book.success(&b);
        assert_eq!(book.held.load(Ordering::Relaxed), 0);
        assert!(!book.cooling(&b, t));
    }
}

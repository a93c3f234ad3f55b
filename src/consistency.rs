//! What the ports of one cluster share to keep reads consistent and to
//! ride out a leader change: the position tracker's handle, the floors of
//! the `user` and `database` scopes (the newest commit pgvane acknowledged
//! per user and database), and the map's generation watch that leader
//! waits wake on. Created per cluster by `app`; floors only ever grow.

use crate::topology::Floor;
use crate::tracker::TrackerHandle;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long floored reads skip waiting for replicas after a wait ran out
/// (replicas replay slower than the wait: waiting would only delay reads
/// that end on the leader anyway). One read waits again after it.
pub const WAIT_BACKOFF: Duration = Duration::from_secs(1);

/// The floors of the shared scopes.
#[derive(Debug, Default)]
pub struct SharedFloors {
    users: Mutex<HashMap<(String, String), Floor>>,
    databases: Mutex<HashMap<String, Floor>>,
}

fn raise<K: std::hash::Hash + Eq>(m: &Mutex<HashMap<K, Floor>>, k: K, f: Floor) {
    let mut m = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    m.entry(k)
        .and_modify(|old| *old = (*old).max(f))
        .or_insert(f);
}

impl SharedFloors {
    /// Records a commit acknowledged to a session of `user` on `database`.
    pub fn raise(&self, user: &str, database: &str, f: Floor) {
        raise(&self.users, (user.to_owned(), database.to_owned()), f);
        raise(&self.databases, database.to_owned(), f);
    }

    /// The newest commit acknowledged to `user` on `database`.
    #[must_use]
    pub fn user(&self, user: &str, database: &str) -> Option<Floor> {
        let m = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(&(user.to_owned(), database.to_owned())).copied()
    }

    /// The newest commit acknowledged on `database`.
    #[must_use]
    pub fn database(&self, database: &str) -> Option<Floor> {
        let m = self
            .databases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(database).copied()
    }
}

/// One cluster's consistency state, shared by its ports.
#[derive(Debug)]
pub struct ClusterLink {
    /// Replica positions and the leader's read index.
    pub tracker: TrackerHandle,
    /// Floors of the `user` and `database` scopes.
    pub floors: SharedFloors,
    /// Changes with every new map generation.
    pub generation: watch::Receiver<u64>,
    /// Until when (ms after `born`) floored reads skip waiting.
    skip_waits_until: AtomicU64,
    born: Instant,
}

impl ClusterLink {
    /// A link over `tracker` and the watcher's generation.
    #[must_use]
    pub fn new(tracker: TrackerHandle, generation: watch::Receiver<u64>) -> Self {
        Self {
            tracker,
            floors: SharedFloors::default(),
            generation,
            skip_waits_until: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a floored read may wait for a replica now: not while a
    /// recent wait ran out (see [`WAIT_BACKOFF`]).
    #[must_use]
    pub fn replica_waits_pay(&self, now: Instant) -> bool {
        self.ms(now) >= self.skip_waits_until.load(Ordering::Relaxed)
    }

    /// A floored read waited in vain: the others skip waiting a while.
    pub fn wait_ran_out(&self, now: Instant) {
        let until = self.ms(now + WAIT_BACKOFF);
        self.skip_waits_until.fetch_max(until, Ordering::Relaxed);
    }

    /// A floored read waited and a replica caught up: waits pay again.
    pub fn wait_paid(&self) {
        self.skip_waits_until.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Lsn;

    #[test]
    fn a_wait_that_ran_out_makes_others_skip_waiting_a_while() {
        let (_tx, rx) = watch::channel(0);
        let l = ClusterLink::new(TrackerHandle::idle(), rx);
        let now = Instant::now();
        assert!(l.replica_waits_pay(now));
        l.wait_ran_out(now);
        assert!(!l.replica_waits_pay(now + Duration::from_millis(500)));
        assert!(l.replica_waits_pay(now + WAIT_BACKOFF + Duration::from_millis(1)));
        l.wait_paid();
        assert!(l.replica_waits_pay(now));
    }

    #[test]
    fn floors_only_grow_and_are_kept_per_user_and_database() {
        let f = SharedFloors::default();
        let at = |l| Floor {
            timeline: 1,
            lsn: Lsn(l),
        };
        f.raise("a", "db", at(10));
        f.raise("a", "db", at(5));
        f.raise("b", "db", at(7));
        assert_eq!(f.user("a", "db"), Some(at(10)));
        assert_eq!(f.user("b", "db"), Some(at(7)));
        assert_eq!(f.user("a", "other"), None);
        assert_eq!(f.database("db"), Some(at(10)));
    }
}

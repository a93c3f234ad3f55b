//! What the ports of one cluster share to keep reads consistent and to
//! ride out a leader change: the position tracker's handle, the floors of
//! the `user` and `database` scopes (the newest commit pgvane acknowledged
//! per user and database), and the map's generation watch that leader
//! waits wake on. Created per cluster by `app`; floors only ever grow.

use crate::topology::Floor;
use crate::tracker::TrackerHandle;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

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
}

impl ClusterLink {
    /// A link over `tracker` and the watcher's generation.
    #[must_use]
    pub fn new(tracker: TrackerHandle, generation: watch::Receiver<u64>) -> Self {
        Self {
            tracker,
            floors: SharedFloors::default(),
            generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Lsn;

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

//! The statements pgvane prepared transparently on one server connection:
//! identity is the full SQL text and parameter types (a hash is only the
//! index), names are `pgv_<n>` with `n` never reused on the connection, and
//! at most `capacity` are kept (least recently used ones are closed, like
//! pgbouncer's `max_prepared_statements`).

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// A statement's identity: its text and its parameter-type section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StmtText {
    /// SQL text.
    pub sql: Arc<str>,
    /// Parameter-type section of the Parse message, raw.
    pub types: Bytes,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    used: u64,
    confirmed: bool,
}

/// Per-connection LRU of transparently prepared statements.
#[derive(Debug)]
pub struct PreparedCache {
    map: HashMap<Arc<StmtText>, Entry>,
    capacity: usize,
    tick: u64,
    next_id: u64,
}

/// The server-side name of statement `id`.
#[must_use]
pub fn server_name(id: u64) -> ServerName {
    use std::io::Write;
    let mut name = ServerName {
        buf: [0; 24],
        len: 0,
    };
    let mut at = &mut name.buf[..];
    // "pgv_" and at most 20 digits: always fits.
    let _ = write!(at, "pgv_{id}");
    let left = at.len();
    name.len = 24 - left;
    name
}

/// A statement's server-side name, on the stack: one is written into
/// every Bind of a prepared statement, so it costs no allocation.
#[derive(Clone, Copy)]
pub struct ServerName {
    buf: [u8; 24],
    len: usize,
}

impl std::ops::Deref for ServerName {
    type Target = str;
    fn deref(&self) -> &str {
        // Written from a `u64`'s digits and ASCII: always UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl PreparedCache {
    /// An empty cache keeping at most `capacity` statements (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
            tick: 0,
            next_id: 1,
        }
    }

    /// The server name of `text` if it is prepared (or being prepared); marks it used.
    pub fn lookup(&mut self, text: &StmtText) -> Option<u64> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(text).map(|e| {
            e.used = tick;
            e.id
        })
    }

    /// Records `text` as about to be prepared; returns its id and the id of
    /// the statement evicted to make room (to be closed first), if any.
    /// `keep` lists ids the current batch still uses: they are not evicted.
    pub fn insert(&mut self, text: Arc<StmtText>, keep: &[u64]) -> (u64, Option<u64>) {
        let mut evicted = None;
        if self.map.len() >= self.capacity {
            let victim = self
                .map
                .iter()
                .filter(|(_, e)| !keep.contains(&e.id))
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| Arc::clone(k));
            if let Some(k) = victim {
                evicted = self.map.remove(&k).map(|e| e.id);
            }
        }
        self.tick += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.map.insert(
            text,
            Entry {
                id,
                used: self.tick,
                confirmed: false,
            },
        );
        (id, evicted)
    }

    /// The server answered ParseComplete for `id`.
    pub fn confirm(&mut self, id: u64) {
        if let Some(e) = self.map.values_mut().find(|e| e.id == id) {
            e.confirmed = true;
        }
    }

    /// Forgets statements whose Parse never completed (an error skipped it).
    pub fn drop_unconfirmed(&mut self) {
        self.map.retain(|_, e| e.confirmed);
    }

    /// Forgets everything (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Statements held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none are held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sql: &str) -> Arc<StmtText> {
        Arc::new(StmtText {
            sql: Arc::from(sql),
            types: Bytes::from_static(&[0, 0]),
        })
    }

    #[test]
    fn identity_is_the_full_text() {
        let mut c = PreparedCache::new(10);
        let (a, _) = c.insert(t("select 1"), &[]);
        assert_eq!(c.lookup(&t("select 1")), Some(a));
        assert_eq!(c.lookup(&t("select 2")), None);
        let other_types = StmtText {
            sql: Arc::from("select 1"),
            types: Bytes::from_static(&[0, 1, 0, 0, 0, 23]),
        };
        assert_eq!(c.lookup(&other_types), None);
    }

    #[test]
    fn evicts_least_recently_used_and_never_reuses_names() {
        let mut c = PreparedCache::new(2);
        let (a, _) = c.insert(t("a"), &[]);
        let (b, _) = c.insert(t("b"), &[]);
        c.lookup(&t("a"));
        let (x, evicted) = c.insert(t("c"), &[]);
        assert_eq!(evicted, Some(b));
        assert!(x > a && x > b);
        assert_eq!(c.len(), 2);
        let (_, evicted) = c.insert(t("d"), &[a]);
        assert_eq!(evicted, Some(x), "ids the batch uses are kept");
    }

    #[test]
    fn unconfirmed_parses_are_forgotten() {
        let mut c = PreparedCache::new(5);
        let (a, _) = c.insert(t("a"), &[]);
        c.insert(t("b"), &[]);
        c.confirm(a);
        c.drop_unconfirmed();
        assert_eq!(c.len(), 1);
        assert!(c.lookup(&t("a")).is_some());
    }
}

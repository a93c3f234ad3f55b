//! A pool's idle backends, one list per client worker. A worker returns
//! the backends it used to its own list and takes from it first, so a
//! request locks nothing another core touches and no backend socket moves
//! between the workers' reactors; a worker takes from another's list only
//! when its own is empty and the pool may open no more (`Pool::acquire`).

use crate::backend::Backend;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One worker's idle backends, most recently used last. Aligned so two
/// workers' locks never share a cache line (which would bounce between
/// their cores as one lock would).
// Boxed on purpose: a backend moves between this list, the loan and the
// session on every request; a pointer moves, not ~300 bytes.
#[allow(clippy::vec_box)]
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(Mutex<Vec<Box<Backend>>>);

/// Every worker's idle list of one pool.
#[derive(Debug)]
pub(super) struct IdleLists {
    slots: Box<[Slot]>,
}

/// One locked idle list.
#[allow(clippy::vec_box)] // see `Slot`
pub(super) type List<'a> = MutexGuard<'a, Vec<Box<Backend>>>;

impl Default for IdleLists {
    /// A list for each client worker (one off the workers, e.g. in tests).
    fn default() -> Self {
        Self::new(crate::workers::count())
    }
}

impl IdleLists {
    /// `n` lists (at least one).
    pub(super) fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// The calling thread's list: its worker's; the first off the workers
    /// (the main runtime, tests).
    pub(super) fn here(&self) -> usize {
        crate::workers::current_index().map_or(0, |i| i % self.slots.len())
    }

    /// The lists other than `own`, each once, starting after it.
    pub(super) fn others(&self, own: usize) -> impl Iterator<Item = usize> + use<> {
        let n = self.slots.len();
        (1..n).map(move |d| (own + d) % n)
    }

    /// List `i`, locked.
    pub(super) fn list(&self, i: usize) -> List<'_> {
        self.slots[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes every idle backend out of every list.
    #[allow(clippy::vec_box)] // see `Slot`
    pub(super) fn drain(&self) -> Vec<Box<Backend>> {
        (0..self.slots.len())
            .flat_map(|i| std::mem::take(&mut *self.list(i)))
            .collect()
    }

    /// Takes out of every list the backends idle longer than `timeout`
    /// at `now` (each list's oldest come first).
    #[allow(clippy::vec_box)] // see `Slot`
    pub(super) fn take_stale(&self, now: Instant, timeout: Duration) -> Vec<Box<Backend>> {
        let mut stale = Vec::new();
        for i in 0..self.slots.len() {
            let mut list = self.list(i);
            let n = list
                .iter()
                .take_while(|b| now.saturating_duration_since(b.idle_since) > timeout)
                .count();
            stale.extend(list.drain(..n));
        }
        stale
    }

    /// Idle backends in all lists.
    pub(super) fn len(&self) -> usize {
        (0..self.slots.len()).map(|i| self.list(i).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_lists_are_each_visited_once() {
        for n in 1..6 {
            let lists = IdleLists::new(n);
            for own in 0..n {
                let mut seen: Vec<usize> = lists.others(own).collect();
                if n > 1 {
                    assert_eq!(seen.first(), Some(&((own + 1) % n)));
                }
                seen.push(own);
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn off_the_workers_a_thread_uses_the_first_list() {
        assert_eq!(IdleLists::new(4).here(), 0);
        assert_eq!(IdleLists::new(0).slots.len(), 1);
    }
}

//! A pool's idle backends, one list per client worker. A worker returns
//! the backends it used to its own list and takes from it first, so a
//! request locks nothing another core touches and no backend socket moves
//! between the workers' reactors; a worker takes from another's list only
//! when its own is empty and the pool may open no more (`Pool::acquire`).

use crate::backend::Backend;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lists kept apart; workers past this many share them (index modulo).
const SLOTS: usize = 8;

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
#[derive(Debug, Default)]
pub(super) struct IdleLists {
    slots: [Slot; SLOTS],
}

/// One locked idle list.
#[allow(clippy::vec_box)] // see `Slot`
pub(super) type List<'a> = MutexGuard<'a, Vec<Box<Backend>>>;

impl IdleLists {
    /// The calling thread's list: its worker's (the first list off the
    /// workers, e.g. in tests).
    pub(super) fn here() -> usize {
        crate::workers::current_index().map_or(0, |i| i % SLOTS)
    }

    /// The other lists than `own`, each once, starting after it.
    pub(super) fn others(own: usize) -> impl Iterator<Item = usize> {
        (1..SLOTS).map(move |d| (own + d) % SLOTS)
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
        (0..SLOTS)
            .flat_map(|i| std::mem::take(&mut *self.list(i)))
            .collect()
    }

    /// Idle backends in all lists.
    pub(super) fn len(&self) -> usize {
        (0..SLOTS).map(|i| self.list(i).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_lists_are_each_visited_once() {
        for own in 0..SLOTS {
            let mut seen: Vec<usize> = IdleLists::others(own).collect();
            assert_eq!(seen.first(), Some(&((own + 1) % SLOTS)));
            seen.push(own);
            seen.sort_unstable();
            assert_eq!(seen, (0..SLOTS).collect::<Vec<_>>());
        }
    }

    #[test]
    fn off_the_workers_a_thread_uses_the_first_list() {
        assert_eq!(IdleLists::here(), 0);
    }
}

//! Interim stub of the position tracker (the tracker branch replaces it).

use crate::topology::{Floor, Positions};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Why the leader's position could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrackerError(pub String);

/// The reading side of a cluster's position tracker.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    positions: watch::Receiver<Arc<Positions>>,
}

/// While held, polls run fast.
#[derive(Debug)]
pub struct HurryGuard;

impl TrackerHandle {
    /// A handle that never learns a position.
    #[must_use]
    pub fn idle() -> Self {
        let (_tx, rx) = watch::channel(Arc::new(Positions::default()));
        Self { positions: rx }
    }
    /// The last published positions.
    #[must_use]
    pub fn current(&self) -> Arc<Positions> {
        Arc::clone(&self.positions.borrow())
    }
    /// A receiver woken on every change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Positions>> {
        self.positions.clone()
    }
    /// Fast polling while the guard lives.
    #[must_use]
    pub fn hurry(&self) -> HurryGuard {
        HurryGuard
    }
    /// The leader's position from a query sent at or after `arrival`.
    ///
    /// # Errors
    /// When the leader cannot be asked.
    pub async fn leader_lsn_after(&self, arrival: Instant) -> Result<Floor, TrackerError> {
        let _ = arrival;
        Err(TrackerError("no tracker".into()))
    }
}

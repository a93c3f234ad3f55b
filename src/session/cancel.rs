//! pgvane's own BackendKeyData: each split session gets a random key, and a
//! CancelRequest carrying it is sent to the backend that runs the session's
//! query right now. The registry belongs to the port, not to a session
//! context, so it survives reloads that rebuild the context.

use crate::topology::NodeAddr;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where a running query can be cancelled: node and backend key.
pub(super) type CancelTarget = Arc<Mutex<Option<(NodeAddr, (u32, u32))>>>;

/// pgvane-issued BackendKeyData → the backend a client's query runs on.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(u32, u32), CancelTarget>>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), CancelTarget>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh key and its (empty) target slot.
    pub(super) fn register(&self) -> ((u32, u32), CancelTarget) {
        let slot: CancelTarget = Arc::new(Mutex::new(None));
        loop {
            let b = crate::auth::random_bytes::<8>();
            let key = (
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff,
                u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            );
            let mut m = self.lock();
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(key) {
                e.insert(Arc::clone(&slot));
                return (key, slot);
            }
        }
    }

    /// Forgets a session's key.
    pub(super) fn remove(&self, key: (u32, u32)) {
        self.lock().remove(&key);
    }

    /// Keys registered now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no key is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forwards a cancel for `key` to the backend running its query, if any.
    pub async fn cancel(&self, key: (u32, u32)) {
        let target = self.lock().get(&key).and_then(|t| {
            t.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        });
        if let Some((addr, backend_key)) = target {
            crate::backend::cancel(&addr, backend_key).await;
        }
    }
}

/// Points a session's cancel slot at a backend, or clears it.
pub(super) fn set(slot: &CancelTarget, target: Option<(NodeAddr, (u32, u32))>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = target;
}

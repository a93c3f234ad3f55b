//! A one-shot signal many sessions read on every request (a port's drain,
//! close and KILL): fired once, read with one atomic load, and waited on
//! without taking a lock per wait. A `CancellationToken` takes its lock on
//! every `is_cancelled` and on every registration of a wait and its
//! removal, shared by every session of the port across workers; a split
//! session read its port's two tokens about eight times per request. A
//! session registers one waker slot per beacon once, for its whole life.
//! A leaf: it knows nothing of ports or sessions.

use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;

/// A signal that fires when its token is cancelled.
#[derive(Debug, Clone)]
pub struct Beacon {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fired: AtomicBool,
    /// The watchers' waker slots; dead ones are dropped as more come.
    slots: Mutex<Vec<Weak<AtomicWaker>>>,
    /// The token it follows.
    token: CancellationToken,
    /// The task that fires it when the token is cancelled, started by the
    /// first watcher (on a runtime, where a session always is): a cancel
    /// reaches every watcher once that worker runs the task. It ends when
    /// the token is cancelled (a removed port's close is cancelled once
    /// its clients are gone).
    bridge: OnceLock<()>,
}

impl Beacon {
    /// A beacon that fires when `token` is cancelled.
    #[must_use]
    pub fn following(token: &CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                fired: AtomicBool::new(token.is_cancelled()),
                slots: Mutex::default(),
                token: token.clone(),
                bridge: OnceLock::new(),
            }),
        }
    }

    /// The token it follows.
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// A watcher waking `slot` when the beacon fires. The caller's task
    /// registers its waker in `slot` as it waits ([`Watch::poll_fired`]);
    /// one slot may serve several beacons.
    #[must_use]
    pub fn watch(&self, slot: &Arc<AtomicWaker>) -> Watch {
        let inner = &self.inner;
        inner.bridge.get_or_init(|| {
            let me = Arc::clone(inner);
            tokio::spawn(async move {
                me.token.cancelled().await;
                me.fire();
            });
        });
        {
            let mut slots = inner.lock();
            if slots.len() == slots.capacity() {
                slots.retain(|s| s.strong_count() > 0);
                // Mostly live: room to grow, so the next sweep is as far
                // off as this one was (not one per login near the top).
                if slots.len() > slots.capacity() / 2 {
                    let more = slots.len();
                    slots.reserve(more);
                }
            }
            slots.push(Arc::downgrade(slot));
        }
        Watch {
            inner: Arc::clone(inner),
            slot: Arc::clone(slot),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<AtomicWaker>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fires: every watcher sees it from now on and is woken.
    fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let slots = std::mem::take(&mut *self.lock());
        for s in slots.iter().filter_map(Weak::upgrade) {
            s.wake();
        }
    }

    fn fired(&self) -> bool {
        // Set by the bridge a moment after the token is cancelled: a
        // cancel is seen as if it came that much later.
        self.fired.load(Ordering::SeqCst)
    }
}

/// One watcher of a [`Beacon`].
#[derive(Debug)]
pub struct Watch {
    inner: Arc<Inner>,
    slot: Arc<AtomicWaker>,
}

impl Watch {
    /// Whether the beacon fired (one atomic load).
    #[must_use]
    pub fn is_fired(&self) -> bool {
        self.inner.fired()
    }

    /// Ready once the beacon fired; else the task is woken when it fires.
    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired() {
            return Poll::Ready(());
        }
        self.slot.register(cx.waker());
        if self.inner.fired() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the beacon fires.
    pub fn fired(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_fired(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_cancelled_token_wakes_every_watcher_and_later_ones_see_it() {
        let token = CancellationToken::new();
        let beacon = Beacon::following(&token);
        let a = Arc::new(AtomicWaker::new());
        let b = Arc::new(AtomicWaker::new());
        let (wa, wb) = (beacon.watch(&a), beacon.watch(&b));
        assert!(!wa.is_fired());
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            t.cancel();
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            wa.fired().await;
            wb.fired().await;
        })
        .await
        .expect("both watchers woken");
        let late = beacon.watch(&Arc::new(AtomicWaker::new()));
        assert!(late.is_fired());
    }

    #[tokio::test]
    async fn a_beacon_of_a_cancelled_token_has_fired_and_dead_slots_go() {
        let token = CancellationToken::new();
        token.cancel();
        assert!(Beacon::following(&token).inner.fired());
        let beacon = Beacon::following(&CancellationToken::new());
        for _ in 0..100 {
            let slot = Arc::new(AtomicWaker::new());
            drop(beacon.watch(&slot));
        }
        let kept = Arc::new(AtomicWaker::new());
        let _w = beacon.watch(&kept);
        assert!(
            beacon.inner.lock().len() <= 64,
            "dead slots dropped as more come"
        );
    }
}

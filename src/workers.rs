//! Client worker runtimes: one single-threaded tokio runtime per core. Each
//! client task lives on one thread for its whole life, so a relay's two
//! directions never wake each other across threads (no work stealing, no
//! cross-thread futex wake-ups on the hot path). Created by `main`, used by
//! `listener`, which hands each accepted socket to the least busy worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How often each worker's timer wakes while it has nothing else to do.
///
/// Tokio wakes its own driver (an eventfd `write` and one more `epoll_wait`)
/// whenever a timer is armed earlier than the driver's next wake-up, and
/// with no timer pending every timer is earlier. The bounds armed per
/// request (a commit capture's 10 s, a pool acquire's 5 s) then cost a
/// system call and a wake-up each: 0.5 `write`s per tpcb-like transaction
/// under `strace`. A timer that always fires within this period keeps the
/// next wake-up close, so bounds further out are filed without a wake-up.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps a worker's timer wheel from being empty (see [`HEARTBEAT`]).
async fn heartbeat(stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One worker: its runtime handle and how many client tasks it runs.
#[derive(Debug)]
struct Worker {
    handle: Handle,
    tasks: Arc<AtomicUsize>,
}

/// The set of client worker runtimes.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

/// Decrements a worker's task count when the task ends.
#[derive(Debug)]
pub struct Placement(Arc<AtomicUsize>);

impl Drop for Placement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one), each running a
    /// current-thread runtime until [`Workers::stop`].
    ///
    /// # Errors
    /// When a runtime or thread cannot be created.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("pgvane-worker-{i}"))
                .spawn(move || rt.block_on(heartbeat(stop)))?;
            workers.push(Worker {
                handle,
                tasks: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Self { workers, stop })
    }

    /// Workers on the calling runtime only (tests and embedding): every task
    /// is spawned on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn current() -> Self {
        Self {
            workers: vec![Worker {
                handle: Handle::current(),
                tasks: Arc::new(AtomicUsize::new(0)),
            }],
            stop: CancellationToken::new(),
        }
    }

    /// The least busy worker's handle and a placement guard to move into the task.
    #[must_use]
    pub fn pick(&self) -> (Handle, Placement) {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.tasks.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("Workers always holds at least one worker"));
        w.tasks.fetch_add(1, Ordering::Relaxed);
        (w.handle.clone(), Placement(Arc::clone(&w.tasks)))
    }

    /// Number of worker threads.
    #[must_use]
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Stops the worker threads (their remaining tasks are dropped).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_least_busy_and_runs_tasks() {
        let w = Workers::start(2).unwrap();
        let (h1, p1) = w.pick();
        let (h2, _p2) = w.pick();
        assert_ne!(h1.id(), h2.id(), "second task goes to the idle worker");
        drop(p1);
        let (h3, _p3) = w.pick();
        assert_eq!(h3.id(), h1.id());
        let (tx, rx) = std::sync::mpsc::channel();
        h3.spawn(async move {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap()
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert!(name.starts_with("pgvane-worker-"));
        w.stop();
    }
}

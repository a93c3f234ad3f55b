//! Client worker runtimes: one single-threaded tokio runtime per core. A
//! client task runs on one thread at a time, so a relay's two directions
//! never wake each other across threads (no work stealing, no cross-thread
//! futex wake-ups on the hot path). `listener` places each accepted socket
//! on the active worker with the fewest clients. Every worker is active,
//! unless `worker_packing` is on: then only as many take clients as the
//! load needs (`pack`): each measures its thread's CPU share every
//! heartbeat, the first turns those into the number of active workers,
//! and a split session idle between requests moves when its worker stopped
//! being active or holds two clients more than another. Created by `main`.

pub mod pack;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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

thread_local! {
    /// The index of the client worker this thread runs, if it runs one.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many client workers run (0 before [`Workers::start`]).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The index of the client worker running on the calling thread; None on
/// any other thread (the main runtime, tests). The pools keep each
/// worker's idle backends apart by it.
#[must_use]
pub fn current_index() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// How many client workers run: a pool keeps one idle list for each (at
/// least one, also before they start and in tests).
#[must_use]
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed).max(1)
}

/// The calling thread's CPU time (user and system) from
/// `/proc/thread-self/stat`, in clock ticks of 10 ms; None where that is
/// not readable.
fn thread_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // third field of the line, utime the 14th and stime the 15th.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = rest.next()?.parse::<u64>().ok()? + rest.next()?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10))
}

/// Keeps a worker's timer wheel from being empty (see [`HEARTBEAT`]), and
/// with packing measures the worker's busy share each tick: the CPU time
/// its thread used. (Tokio's own busy time also counts time spent runnable but
/// waiting for a core, which would call for more workers exactly where
/// the cores are already taken.) Worker 0 also decides how many workers
/// are active.
async fn heartbeat(index: usize, load: Arc<Load>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without packing nothing decides by load: the timer only.
    let measures = load.decides();
    let metrics = Handle::current().metrics();
    let busy = move || thread_cpu().unwrap_or_else(|| metrics.worker_total_busy_duration(0));
    let mut last = measures.then(|| (std::time::Instant::now(), busy()));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let Some(then) = last else { continue };
        let now = (std::time::Instant::now(), busy());
        let share = (now.1.saturating_sub(then.1).as_secs_f64()
            / now.0.duration_since(then.0).as_secs_f64().max(1e-3))
        .clamp(0.0, 1.0);
        last = Some(now);
        load.busy[index].store((share * 1000.0) as u32, Ordering::Relaxed);
        if index == 0 {
            load.decide();
        }
    }
}

/// What the workers measure of themselves and what worker 0 decides.
#[derive(Debug)]
struct Load {
    /// Each worker's busy share of the last heartbeat, per mille.
    busy: Vec<AtomicU32>,
    /// How many workers take clients now (the first ones).
    active: AtomicUsize,
    /// `worker_packing`: the load decides how many workers are active;
    /// else all of them always are.
    pack: bool,
    /// Tests only (`PGVANE_TEST_ROTATE_WORKERS` set at start): every
    /// heartbeat flips between one active worker and all of them, so idle
    /// sessions keep moving.
    rotate: bool,
}

impl Load {
    /// Whether the load decides anything (packing, or the tests'
    /// rotation): else every worker stays active and no session moves.
    fn decides(&self) -> bool {
        self.pack || self.rotate
    }

    fn decide(&self) {
        let busy: Vec<f64> = self
            .busy
            .iter()
            .map(|b| f64::from(b.load(Ordering::Relaxed)) / 1000.0)
            .collect();
        let active = self.active.load(Ordering::Relaxed);
        let next = if self.rotate {
            if active == 1 { busy.len() } else { 1 }
        } else if self.pack {
            pack::wanted(&busy, active, busy.len())
        } else {
            return;
        };
        if next != active {
            tracing::debug!(active = next, ?busy, "client workers");
            self.active.store(next, Ordering::Relaxed);
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
    load: Arc<Load>,
    stop: CancellationToken,
}

/// A client counted on its worker; the count drops with it.
#[derive(Debug)]
pub struct Placement {
    tasks: Arc<AtomicUsize>,
    index: usize,
}

impl Placement {
    /// The worker's index.
    #[must_use]
    pub fn worker(&self) -> usize {
        self.index
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one), each running a
    /// current-thread runtime until [`Workers::stop`]; with `pack`, only as
    /// many take clients as the load needs (one at first).
    ///
    /// # Errors
    /// When a runtime or thread cannot be created.
    pub fn start(n: usize, pack: bool) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let n = n.max(1);
        COUNT.store(n, Ordering::Relaxed);
        let load = Arc::new(Load {
            busy: (0..n).map(|_| AtomicU32::new(0)).collect(),
            active: AtomicUsize::new(if pack { 1 } else { n }),
            pack,
            rotate: std::env::var_os("PGVANE_TEST_ROTATE_WORKERS").is_some(),
        });
        let mut workers = Vec::new();
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, load) = (stop.clone(), Arc::clone(&load));
            std::thread::Builder::new()
                .name(format!("pgvane-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(Some(i)));
                    rt.block_on(heartbeat(i, load, stop));
                })?;
            workers.push(Worker {
                handle,
                tasks: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Self {
            workers,
            load,
            stop,
        })
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
            load: Arc::new(Load {
                busy: vec![AtomicU32::new(0)],
                active: AtomicUsize::new(1),
                pack: false,
                rotate: false,
            }),
            stop: CancellationToken::new(),
        }
    }

    /// The active worker with the fewest clients: its handle and a
    /// placement guard to move into the task.
    #[must_use]
    pub fn pick(&self) -> (Handle, Placement) {
        let index = pack::least(self.active(), |i| self.tasks(i))
            .unwrap_or_else(|| unreachable!("Workers always holds at least one worker"));
        self.place(index)
    }

    /// Worker `index`'s handle and a placement on it.
    fn place(&self, index: usize) -> (Handle, Placement) {
        let w = &self.workers[index];
        w.tasks.fetch_add(1, Ordering::Relaxed);
        let placement = Placement {
            tasks: Arc::clone(&w.tasks),
            index,
        };
        (w.handle.clone(), placement)
    }

    /// Worker `i`'s clients now.
    fn tasks(&self, i: usize) -> usize {
        self.workers[i].tasks.load(Ordering::Relaxed)
    }

    /// How many workers take clients now.
    fn active(&self) -> usize {
        self.load
            .active
            .load(Ordering::Relaxed)
            .clamp(1, self.workers.len())
    }

    /// Where a client idle on `placement`'s worker should move now, if
    /// anywhere ([`pack::destination`]): the new worker's handle and
    /// placement. Cheap when the answer is no: a few atomic loads.
    #[must_use]
    pub fn move_from(&self, placement: &Placement) -> Option<(Handle, Placement)> {
        // Without packing clients stay where they were placed.
        if self.workers.len() == 1 || !self.load.decides() {
            return None;
        }
        let tasks = |i| self.tasks(i);
        let to = pack::destination(placement.index, self.active(), self.workers.len(), tasks)?;
        (to != placement.index).then(|| self.place(to))
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
    fn clients_pack_onto_the_active_workers_and_move_off_the_others() {
        let w = Workers::start(2, true).unwrap();
        let (h1, p1) = w.pick();
        let (h2, p2) = w.pick();
        assert_eq!(h1.id(), h2.id(), "one worker is active at first");
        assert_eq!((p1.worker(), p2.worker()), (0, 0));
        assert!(w.move_from(&p1).is_none(), "nowhere else to go");
        // The first worker runs hot: both become active, the next client
        // goes to the empty one and an idle client of the first evens out.
        w.load.busy[0].store(900, Ordering::Relaxed);
        w.load.decide();
        assert_eq!(w.active(), 2);
        let (_, p3) = w.pick();
        assert_eq!(p3.worker(), 1);
        let (_, p4) = w.pick();
        assert_eq!(p4.worker(), 1, "ties go to the first: 2 on each now");
        let (_, p5) = w.pick();
        assert_eq!(p5.worker(), 0);
        assert!(w.move_from(&p5).is_none(), "3 against 2 is even enough");
        drop(p4);
        let (h, moved) = w.move_from(&p1).expect("3 against 1 moves one");
        assert_eq!(moved.worker(), 1);
        drop(p1);
        // Light again: everything goes back to the first worker.
        w.load.busy[0].store(200, Ordering::Relaxed);
        w.load.busy[1].store(100, Ordering::Relaxed);
        w.load.decide();
        assert_eq!(w.active(), 1);
        let (_, back) = w.move_from(&moved).expect("off the inactive worker");
        assert_eq!(back.worker(), 0);
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap()
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(name, "pgvane-worker-1");
        drop((p2, p3, p5));
        w.stop();
    }

    #[test]
    fn without_packing_clients_spread_over_every_worker() {
        let w = Workers::start(2, false).unwrap();
        let (_, p1) = w.pick();
        let (_, p2) = w.pick();
        let (_, p3) = w.pick();
        assert_eq!((p1.worker(), p2.worker(), p3.worker()), (0, 1, 0));
        w.load.decide();
        assert_eq!(w.active(), 2, "the load decides nothing");
        // Two on the first worker, none on the second: nobody moves.
        drop(p2);
        assert!(w.move_from(&p1).is_none());
        assert!(w.move_from(&p3).is_none());
        w.stop();
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain thread, not a runtime worker
    fn a_worker_measures_its_busy_share() {
        let w = Workers::start(1, true).unwrap();
        let (h, _p) = w.pick();
        // Half a second of solid work on the worker, then its heartbeat.
        h.spawn(async {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(700);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        });
        let seen = (0..40).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            w.load.busy[0].load(Ordering::Relaxed) > 500
        });
        assert!(seen, "a spinning worker reports over half busy");
        w.stop();
    }
}

//! Replica WAL positions for read-your-writes (CONSISTENCY.md §3.3): one
//! tracker per cluster polls every member on its own monitor connection
//! (apart from client pools) and publishes [`Positions`] through a
//! `watch`; it also answers the `cluster`-scope read index (§3.5).
//! Does not route: `session`/`router` read what it publishes. Fed the
//! cluster map by the watcher and its settings by `app`.
//!
//! ```text
//!  map ──▶ tracker task ──spawns──▶ one poller per member ──probe──▶ node
//!              ▲  │                        │
//!              │  └──watch<Arc<Positions>> │ reports
//!              └───────────────────────────┘
//!  read index task ──insert LSN──▶ leader      (callers share one query)
//! ```
//!
//! **Wakeups.** Every poll refreshes `polled_at`, so [`TrackerHandle::current`]
//! always shows true ages. Subscribers are woken only when a position,
//! incarnation, timeline or the epoch changed, except while a
//! [`HurryGuard`] lives: then every poll wakes them, so a waiter that
//! needs a poll newer than some instant sees it. Waiters must hold a
//! guard while they wait.

pub mod book;
pub mod member;
pub mod probe;
pub mod read_index;

use crate::backend::{Credentials, SocketOptions};
use crate::telemetry::Metrics;
use crate::tls::BackendSecurity;
use crate::topology::{ClusterMap, Floor, NodeAddr, Positions};
use arc_swap::ArcSwap;
use book::Book;
use member::{Poller, Report};
use probe::{Connect, SqlConnect};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How a tracker polls; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    /// Time between polls of a member (`replica_position_poll_ms`).
    pub poll: Duration,
    /// Least time between polls while a guard lives
    /// (`replica_position_fast_poll_ms`).
    pub fast_poll: Duration,
    /// Who the monitor connections log in as (`monitor_user`); `None`:
    /// positions come from Patroni only.
    pub creds: Option<Credentials>,
    /// TLS and allowed authentication to the nodes.
    pub security: Arc<BackendSecurity>,
    /// Connect timeout; also bounds one probe.
    pub connect_timeout: Duration,
    /// Keepalive on the monitor sockets.
    pub socket: SocketOptions,
}

/// Why the read index gave no floor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The map names no leader.
    #[error("no leader")]
    NoLeader,
    /// No monitor user is configured, so pgvane cannot query the leader.
    #[error("no monitor user configured")]
    NoMonitorUser,
    /// Connecting to or querying the leader failed.
    #[error("leader: {0}")]
    Leader(String),
    /// The tracker stopped.
    #[error("tracker stopped")]
    Stopped,
}

/// The reading side of a tracker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    positions: watch::Receiver<Arc<Positions>>,
    hurry: Arc<watch::Sender<usize>>,
    read_index: Arc<read_index::Shared>,
}

/// Keeps a tracker polling fast while it lives (see [`TrackerHandle::hurry`]).
#[derive(Debug)]
#[must_use = "polls are fast only while the guard lives"]
pub struct HurryGuard {
    hurry: Arc<watch::Sender<usize>>,
}

impl Drop for HurryGuard {
    fn drop(&mut self) {
        self.hurry.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl TrackerHandle {
    /// A handle with no tracker behind it: no position is ever known and
    /// the read index answers [`TrackerError::Stopped`] (tests, and ports
    /// built before their cluster's tracker).
    #[must_use]
    pub fn idle() -> Self {
        let (_tx, positions) = watch::channel(Arc::new(Positions::default()));
        let stop = CancellationToken::new();
        stop.cancel();
        Self {
            positions,
            hurry: Arc::new(watch::channel(0).0),
            read_index: Arc::new(read_index::Shared::new(stop)),
        }
    }

    /// The positions as last published.
    #[must_use]
    pub fn current(&self) -> Arc<Positions> {
        Arc::clone(&self.positions.borrow())
    }

    /// A receiver woken on changes (see the module docs for when).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Positions>> {
        self.positions.clone()
    }

    /// Polls every member back to back, at least `fast_poll` apart and one
    /// query at a time per member, until every guard is dropped.
    pub fn hurry(&self) -> HurryGuard {
        self.hurry.send_modify(|n| *n += 1);
        HurryGuard {
            hurry: Arc::clone(&self.hurry),
        }
    }

    /// The leader's normalised insert position from a query sent at or
    /// after `arrival`; concurrent callers share one query. Cancel safe.
    ///
    /// # Errors
    /// [`TrackerError`].
    pub async fn leader_lsn_after(&self, arrival: Instant) -> Result<Floor, TrackerError> {
        self.read_index.after(arrival).await
    }
}

/// Starts the tracker of `cluster` with real monitor connections.
#[must_use]
pub fn spawn(
    cluster: String,
    map: Arc<ArcSwap<ClusterMap>>,
    generation: watch::Receiver<u64>,
    settings: watch::Receiver<Arc<TrackerSettings>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> TrackerHandle {
    spawn_with(
        Arc::new(SqlConnect),
        Inputs {
            cluster,
            map,
            generation,
            settings,
            metrics,
        },
        stop,
    )
}

/// What a tracker reads.
pub struct Inputs {
    /// Cluster name (logs, metrics).
    pub cluster: String,
    /// The published map.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// Changes when the map's generation does.
    pub generation: watch::Receiver<u64>,
    /// Settings.
    pub settings: watch::Receiver<Arc<TrackerSettings>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Starts a tracker whose connections `connect` opens (tests pass fakes).
#[must_use]
pub fn spawn_with<C: Connect>(
    connect: Arc<C>,
    inputs: Inputs,
    stop: CancellationToken,
) -> TrackerHandle {
    let (positions_tx, positions_rx) = watch::channel(Arc::new(Positions::default()));
    let hurry = Arc::new(watch::Sender::new(0usize));
    let shared = Arc::new(read_index::Shared::new(stop.clone()));
    tokio::spawn(
        read_index::ReadIndex {
            cluster: inputs.cluster.clone(),
            map: Arc::clone(&inputs.map),
            connect: Arc::clone(&connect),
            settings: inputs.settings.clone(),
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&inputs.metrics),
        }
        .run(stop.clone()),
    );
    let (reports_tx, reports_rx) = mpsc::channel(64);
    let task = Tracker {
        inputs,
        connect,
        positions: positions_tx,
        hurry: hurry.subscribe(),
        reports_tx,
        reports: reports_rx,
        pollers: BTreeMap::new(),
        conns: Arc::default(),
        book: Book::default(),
        hidden_warned: std::collections::BTreeSet::new(),
    };
    tokio::spawn(task.run(stop));
    TrackerHandle {
        positions: positions_rx,
        hurry,
        read_index: shared,
    }
}

/// The tracker task's state.
struct Tracker<C: Connect> {
    inputs: Inputs,
    connect: Arc<C>,
    positions: watch::Sender<Arc<Positions>>,
    hurry: watch::Receiver<usize>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    /// Running pollers: member → (address, stop).
    pollers: BTreeMap<String, (NodeAddr, CancellationToken)>,
    /// Numbers monitor connections across pollers.
    conns: Arc<std::sync::atomic::AtomicU64>,
    book: Book,
    /// Members already reported as hiding their receiver's details.
    hidden_warned: std::collections::BTreeSet<String>,
}

impl<C: Connect> Tracker<C> {
    async fn run(mut self, stop: CancellationToken) {
        self.sync_pollers(&stop);
        let mut tick = tokio::time::interval(self.inputs.settings.borrow().poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                r = self.inputs.generation.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.sync_pollers(&stop);
                }
                Some((member, outcome)) = self.reports.recv() => {
                    self.inputs
                        .metrics
                        .position_polls
                        .with_label_values(&[self.inputs.cluster.as_str(), &member, outcome.label()])
                        .inc();
                    if self.pollers.contains_key(&*member) {
                        self.log_outcome(&member, &outcome);
                        self.book.record(&member, outcome);
                    }
                }
                // Patroni-sourced positions change with every map round,
                // which bumps no generation.
                _ = tick.tick() => {}
                r = self.inputs.settings.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let poll = self.inputs.settings.borrow_and_update().poll;
                    tick = tokio::time::interval(poll);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            self.publish();
        }
    }

    /// Starts a poller for each member of the map (again when its address
    /// changed) and stops those of members that left.
    fn sync_pollers(&mut self, stop: &CancellationToken) {
        let map = self.inputs.map.load_full();
        self.pollers.retain(|name, (addr, token)| {
            let keep = map.member(name).is_some_and(|m| m.addr == *addr);
            if !keep {
                token.cancel();
            }
            keep
        });
        self.book.retain(&map);
        for m in &map.members {
            if self.pollers.contains_key(&*m.name) {
                continue;
            }
            let token = stop.child_token();
            let poller = Poller {
                member: Arc::clone(&m.name),
                addr: m.addr.clone(),
                connect: Arc::clone(&self.connect),
                settings: self.inputs.settings.clone(),
                hurry: self.hurry.clone(),
                reports: self.reports_tx.clone(),
                conns: Arc::clone(&self.conns),
            };
            tokio::spawn(poller.run(token.clone()));
            self.pollers
                .insert(m.name.to_string(), (m.addr.clone(), token));
        }
    }

    /// Publishes the book's positions; wakes subscribers on a change, or
    /// on any poll while hurried.
    fn publish(&mut self) {
        let map = self.inputs.map.load();
        let new = self.book.positions(&map, Instant::now());
        let hurried = *self.hurry.borrow() > 0;
        self.positions.send_if_modified(|cur| {
            let wake = hurried || book::differ(cur, &new);
            *cur = Arc::new(new);
            wake
        });
    }
}

impl<C: Connect> Tracker<C> {
    /// Logs a member's failures at debug (they repeat every poll), a
    /// refused login at warn, and a hidden receiver at warn once.
    fn log_outcome(&mut self, member: &str, outcome: &book::Outcome) {
        let cluster = &self.inputs.cluster;
        match outcome {
            book::Outcome::Polled { probe, .. }
                if probe.receiver == probe::Receiver::Hidden
                    && self.hidden_warned.insert(member.to_owned()) =>
            {
                tracing::warn!(%cluster, %member, "the monitor user cannot read pg_stat_wal_receiver (grant it pg_monitor); using Patroni's positions");
            }
            book::Outcome::LoginRefused(e) => {
                tracing::warn!(%cluster, %member, error = %e, "monitor login refused; using Patroni's positions");
            }
            book::Outcome::Failed(e) | book::Outcome::ConnectFailed(e) => {
                tracing::debug!(%cluster, %member, error = %e, "position poll failed");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;

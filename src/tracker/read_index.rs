//! The `cluster`-scope read index (CONSISTENCY.md §3.5): the leader's
//! insert position asked by a query sent at or after a read arrived. One
//! task per cluster, on its own leader connection, keeps at most one query
//! in flight; every caller whose arrival is not after that query was sent
//! shares its answer, later callers wait for the next one.

use super::probe::{Connect, ConnectError, Monitor};
use super::{TrackerError, TrackerSettings};
use crate::telemetry::Metrics;
use crate::topology::{ClusterMap, Floor, NodeAddr};
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// One answer: when its query was sent, and what it gave.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Taken before the query was written.
    pub sent: Instant,
    /// The normalised insert position, or why there is none.
    pub result: Result<Floor, TrackerError>,
}

/// What callers and the task share.
#[derive(Debug)]
pub struct Shared {
    /// The latest arrival a caller waits for.
    wanted: Mutex<Option<Instant>>,
    /// Wakes the task when `wanted` grows.
    wake: Notify,
    /// The last answer.
    answers: watch::Sender<Option<Answer>>,
    /// Fires when the tracker stops.
    stop: CancellationToken,
}

impl Shared {
    /// Shared state of a read index that stops with `stop`.
    #[must_use]
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            wanted: Mutex::new(None),
            wake: Notify::new(),
            answers: watch::Sender::new(None),
            stop,
        }
    }

    /// The answer of a query sent at or after `arrival`, waiting for the
    /// task to send one if needed. Cancel safe.
    ///
    /// # Errors
    /// The answer's error, or [`TrackerError::Stopped`].
    pub async fn after(&self, arrival: Instant) -> Result<Floor, TrackerError> {
        let mut answers = self.answers.subscribe();
        loop {
            if let Some(a) = &*answers.borrow_and_update() {
                if a.sent >= arrival {
                    return a.result.clone();
                }
            }
            {
                let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                *w = Some(w.map_or(arrival, |x| x.max(arrival)));
            }
            self.wake.notify_one();
            tokio::select! {
                () = self.stop.cancelled() => return Err(TrackerError::Stopped),
                r = answers.changed() => r.map_err(|_| TrackerError::Stopped)?,
            }
        }
    }

    fn wanted_after(&self, sent: Option<Instant>) -> bool {
        let w = *self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        match (w, sent) {
            (Some(w), Some(s)) => w > s,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The read index task's inputs.
pub struct ReadIndex<C: Connect> {
    /// Cluster name (metrics).
    pub cluster: String,
    /// The published map: where the leader is.
    pub map: Arc<ArcSwap<ClusterMap>>,
    /// Opens the leader connection.
    pub connect: Arc<C>,
    /// The tracker's settings.
    pub settings: watch::Receiver<Arc<TrackerSettings>>,
    /// Shared with callers.
    pub shared: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl<C: Connect> ReadIndex<C> {
    /// Answers callers until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut conn: Option<(NodeAddr, C::Conn)> = None;
        let mut last_sent = None;
        loop {
            while !self.shared.wanted_after(last_sent) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.shared.wake.notified() => {}
                }
            }
            if self.settings.has_changed().unwrap_or(false) {
                conn = None;
            }
            let settings = Arc::clone(&self.settings.borrow_and_update());
            let sent = Instant::now();
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = self.ask(&settings, &mut conn) => r,
            };
            if result.is_err() {
                conn = None;
            }
            last_sent = Some(sent);
            self.shared
                .answers
                .send_replace(Some(Answer { sent, result }));
        }
    }

    /// One query on the leader's connection, (re)connecting when the
    /// leader moved or the last query failed.
    async fn ask(
        &self,
        settings: &TrackerSettings,
        conn: &mut Option<(NodeAddr, C::Conn)>,
    ) -> Result<Floor, TrackerError> {
        if settings.creds.is_none() {
            return Err(TrackerError::NoMonitorUser);
        }
        let map = self.map.load();
        let leader = map.leader().ok_or(TrackerError::NoLeader)?;
        if conn.as_ref().is_some_and(|(a, _)| *a != leader.addr) {
            *conn = None;
        }
        let c =
            match conn {
                Some((_, c)) => c,
                None => {
                    let c = self.connect.connect(&leader.addr, settings).await.map_err(
                        |e| match e {
                            ConnectError::Login(e) | ConnectError::Other(e) => {
                                TrackerError::Leader(e)
                            }
                        },
                    )?;
                    &mut conn.insert((leader.addr.clone(), c)).1
                }
            };
        self.metrics
            .read_index_queries
            .with_label_values(&[&self.cluster])
            .inc();
        let limit = settings.connect_timeout;
        match tokio::time::timeout(limit, c.insert_floor()).await {
            Ok(r) => r.map_err(TrackerError::Leader),
            Err(_) => Err(TrackerError::Leader(format!("no answer within {limit:?}"))),
        }
    }
}

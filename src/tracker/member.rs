//! One member's poller: keeps its monitor connection, runs one probe at a
//! time (single flight), every `poll` at rest and at least `fast_poll`
//! apart while a [`super::HurryGuard`] lives, and reports each outcome to
//! the tracker task. Spawned and stopped by the tracker task.

use super::TrackerSettings;
use super::book::Outcome;
use super::probe::{Connect, ConnectError, Monitor};
use crate::topology::NodeAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Wait before a new connection attempt after a failed connect.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Wait before logging in again after a refused login.
pub const RELOGIN_AFTER: Duration = Duration::from_secs(10);

/// A report from a poller: member name and outcome.
pub type Report = (Arc<str>, Outcome);

/// How a pause between polls ended.
enum Pause {
    /// The next poll is due.
    Due,
    /// Settings changed: reconnect, then poll.
    NewSettings,
    /// Stop polling.
    Stop,
}

/// What a poller needs.
pub struct Poller<C: Connect> {
    /// Member name.
    pub member: Arc<str>,
    /// Where its PostgreSQL listens.
    pub addr: NodeAddr,
    /// Opens connections.
    pub connect: Arc<C>,
    /// The tracker's settings.
    pub settings: watch::Receiver<Arc<TrackerSettings>>,
    /// How many hurry guards live.
    pub hurry: watch::Receiver<usize>,
    /// Where outcomes go.
    pub reports: mpsc::Sender<Report>,
    /// Numbers connections across the tracker's pollers, so a connection
    /// opened by a member's new poller (its address changed) is new too.
    pub conns: Arc<AtomicU64>,
}

impl<C: Connect> Poller<C> {
    /// Polls until `stop` fires or the tracker task is gone.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut conn: Option<(u64, C::Conn)> = None;
        loop {
            let settings = Arc::clone(&self.settings.borrow_and_update());
            let started = Instant::now();
            let (outcome, wait) = if settings.creds.is_none() {
                conn = None;
                (Outcome::NoCredentials, None)
            } else {
                self.poll_once(&settings, &mut conn, started).await
            };
            if self
                .reports
                .send((Arc::clone(&self.member), outcome))
                .await
                .is_err()
            {
                return;
            }
            match self.pause(&settings, started, wait, &stop).await {
                Pause::Stop => return,
                Pause::Due => {}
                // New credentials or TLS: log in again with them.
                Pause::NewSettings => conn = None,
            }
        }
    }

    /// Connects if needed and probes once; the outcome and, after a
    /// failed connect, how long to wait before the next attempt.
    async fn poll_once(
        &self,
        settings: &TrackerSettings,
        conn: &mut Option<(u64, C::Conn)>,
        started: Instant,
    ) -> (Outcome, Option<Duration>) {
        let (id, c) = match conn {
            Some((id, c)) => (*id, c),
            None => match self.connect.connect(&self.addr, settings).await {
                Ok(c) => {
                    let id = self.conns.fetch_add(1, Ordering::Relaxed) + 1;
                    (id, &mut conn.insert((id, c)).1)
                }
                Err(ConnectError::Login(e)) => {
                    return (Outcome::LoginRefused(e), Some(RELOGIN_AFTER));
                }
                Err(ConnectError::Other(e)) => {
                    return (Outcome::ConnectFailed(e), Some(RECONNECT_AFTER));
                }
            },
        };
        let sent = Instant::now().max(started);
        let limit = settings.connect_timeout.max(settings.poll);
        match tokio::time::timeout(limit, c.probe()).await {
            Ok(Ok(probe)) => (
                Outcome::Polled {
                    conn: id,
                    sent,
                    probe,
                },
                None,
            ),
            Ok(Err(e)) => {
                *conn = None;
                (Outcome::Failed(e), None)
            }
            Err(_) => {
                *conn = None;
                (Outcome::Failed(format!("no answer within {limit:?}")), None)
            }
        }
    }

    /// Sleeps until the next poll is due: `wait` after a failed connect,
    /// else `poll` (or `fast_poll` while hurried) after `started`. Wakes
    /// early to recompute when hurrying begins, and at once when settings
    /// change.
    async fn pause(
        &mut self,
        settings: &TrackerSettings,
        started: Instant,
        wait: Option<Duration>,
        stop: &CancellationToken,
    ) -> Pause {
        loop {
            let hurried = *self.hurry.borrow_and_update() > 0;
            let due = match wait {
                Some(w) => started + w,
                None if settings.creds.is_none() => started + Duration::from_secs(3600),
                None if hurried => started + settings.fast_poll,
                None => started + settings.poll,
            };
            if Instant::now() >= due {
                return Pause::Due;
            }
            tokio::select! {
                () = stop.cancelled() => return Pause::Stop,
                () = tokio::time::sleep_until(due.into()) => return Pause::Due,
                r = self.hurry.changed() => if r.is_err() { return Pause::Stop },
                r = self.settings.changed() => {
                    return if r.is_ok() { Pause::NewSettings } else { Pause::Stop };
                }
            }
        }
    }
}

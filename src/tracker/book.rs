//! The tracker's bookkeeping: each member's last poll outcome, its
//! incarnation, and the epoch, turned into [`Positions`] with the resets
//! of CONSISTENCY.md §3.3 and §3.6. Pure: the tracker task feeds it poll
//! reports and maps, and publishes what [`Book::positions`] returns.

use super::probe::{Probe, Receiver};
use crate::topology::{ClusterMap, Lsn, Member, MemberRole, Position, PositionSource, Positions};
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

/// How one poll of a member ended, as its poller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The probe answered; `conn` numbers the poller's connections, so a
    /// new one is a new incarnation.
    Polled {
        /// The connection's number.
        conn: u64,
        /// When the query was sent.
        sent: Instant,
        /// The answer.
        probe: Probe,
    },
    /// The probe failed or timed out; the connection was dropped.
    Failed(String),
    /// No connection could be opened.
    ConnectFailed(String),
    /// The login was refused: positions come from Patroni.
    LoginRefused(String),
    /// No monitor user is configured: positions come from Patroni.
    NoCredentials,
}

impl Outcome {
    /// The `outcome` label of `pgvane_replica_position_polls_total`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Polled { probe, .. } => match probe.receiver {
                Receiver::Hidden => "hidden",
                Receiver::Streaming => "ok",
                _ if !probe.in_recovery => "ok",
                _ => "not_streaming",
            },
            Self::Failed(_) => "error",
            Self::ConnectFailed(_) => "connect_error",
            Self::LoginRefused(_) => "login_refused",
            Self::NoCredentials => "no_credentials",
        }
    }
}

/// What the book knows of one member.
#[derive(Debug, Default)]
struct Track {
    /// The last good probe and when it was sent; `None` after a failure.
    last: Option<(Instant, Probe)>,
    /// Bumped on a new connection or a new postmaster start time.
    incarnation: u64,
    /// The connection number and start time the incarnation belongs to.
    conn: u64,
    started: Option<String>,
    /// Positions come from Patroni (no login, or a hidden receiver).
    patroni: bool,
}

impl Track {
    /// Moves to a new incarnation when `conn` or `started` differ.
    fn incarnate(&mut self, conn: u64, started: Option<&str>) {
        if self.conn != conn || self.started.as_deref() != started {
            self.incarnation += 1;
            self.conn = conn;
            self.started = started.map(str::to_owned);
        }
    }
}

/// The current epoch: a leader member on a timeline.
#[derive(Debug, Clone)]
struct Epoch {
    number: u64,
    leader: String,
    timeline: u32,
    /// When the leader poll that showed it was sent: replica positions
    /// polled before do not count. `None` for the first epoch, which
    /// follows nothing.
    since: Option<Instant>,
    switch_lsn: Option<Lsn>,
}

/// Every member's last outcome and the epoch.
#[derive(Debug, Default)]
pub struct Book {
    tracks: BTreeMap<String, Track>,
    epoch: Option<Epoch>,
}

impl Book {
    /// Records one poll of `member`.
    pub fn record(&mut self, member: &str, outcome: Outcome) {
        let t = self.tracks.entry(member.to_owned()).or_default();
        match outcome {
            Outcome::Polled { conn, sent, probe } => {
                t.incarnate(conn, Some(&probe.started));
                t.patroni = probe.receiver == Receiver::Hidden;
                t.last = Some((sent, probe));
            }
            Outcome::Failed(_) | Outcome::ConnectFailed(_) => {
                t.last = None;
                t.patroni = false;
            }
            Outcome::LoginRefused(_) | Outcome::NoCredentials => {
                t.last = None;
                t.patroni = true;
            }
        }
    }

    /// Forgets members no longer in the map.
    pub fn retain(&mut self, map: &ClusterMap) {
        self.tracks.retain(|name, _| map.member(name).is_some());
    }

    /// The positions as of `now`, given the last published `map`. Moves
    /// to a new epoch when the leader member or its timeline changed; from
    /// then on only replica positions polled after the leader poll that
    /// showed the change count.
    pub fn positions(&mut self, map: &ClusterMap, now: Instant) -> Positions {
        let map_at = instant_of(map.updated_at, now);
        let leader = map.leader().and_then(|m| {
            let t = self.tracks.get_mut(&*m.name)?;
            leader_position(m, t, map_at)
        });
        if let Some(l) = &leader {
            let same = self
                .epoch
                .as_ref()
                .is_some_and(|e| e.leader == l.member && e.timeline == l.timeline);
            if !same {
                let number = self.epoch.as_ref().map_or(0, |e| e.number) + 1;
                let since = self.epoch.is_some().then_some(l.polled_at);
                tracing::info!(cluster = %map.cluster, epoch = number, leader = %l.member, timeline = l.timeline, switch_lsn = %l.lsn, "new WAL position epoch: replica positions reset");
                self.epoch = Some(Epoch {
                    number,
                    leader: l.member.clone(),
                    timeline: l.timeline,
                    since,
                    switch_lsn: Some(l.lsn),
                });
            }
        }
        // While the leader's own position is unknown for a round, the
        // epoch's timeline stands as long as the map names the same leader.
        let epoch = self
            .epoch
            .as_ref()
            .filter(|e| map.leader().is_some_and(|m| *m.name == *e.leader));
        let Some(epoch) = epoch else {
            return Positions {
                epoch: self.epoch.as_ref().map_or(0, |e| e.number),
                ..Positions::default()
            };
        };
        let replicas = map
            .members
            .iter()
            .filter(|m| !m.role.is_leader())
            .filter_map(|m| {
                let t = self.tracks.get_mut(&*m.name)?;
                replica_position(m, t, map_at)
                    .filter(|p| epoch.since.is_none_or(|since| p.polled_at >= since))
            })
            .collect();
        Positions {
            epoch: epoch.number,
            leader_timeline: Some(epoch.timeline),
            switch_lsn: epoch.switch_lsn,
            leader,
            replicas,
        }
    }
}

/// `at` on the monotonic clock, given that `now` is the present.
fn instant_of(at: SystemTime, now: Instant) -> Instant {
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

/// The leader's position: its SQL probe out of recovery (or in recovery
/// for the leader of a standby cluster), else Patroni's when it cannot be
/// polled by SQL and confirms itself primary.
fn leader_position(m: &Member, t: &mut Track, map_at: Instant) -> Option<Position> {
    if let Some((sent, p)) = &t.last {
        let standby = m.role == MemberRole::StandbyLeader;
        if p.in_recovery && !(standby && p.receiver == Receiver::Streaming) {
            return None;
        }
        return Some(Position {
            member: m.name.to_string(),
            timeline: p.timeline?,
            lsn: p.lsn?,
            incarnation: t.incarnation,
            polled_at: *sent,
            source: PositionSource::Sql,
            streaming: true,
        });
    }
    if !t.patroni || m.self_report != crate::topology::SelfReport::Primary {
        return None;
    }
    patroni_position(m, t, map_at)
}

/// A replica's position: its SQL probe in recovery, else Patroni's when it
/// cannot be polled (or read) by SQL.
fn replica_position(m: &Member, t: &mut Track, map_at: Instant) -> Option<Position> {
    match &t.last {
        Some((sent, p)) if p.in_recovery && p.receiver != Receiver::Hidden => Some(Position {
            member: m.name.to_string(),
            timeline: p.timeline?,
            lsn: p.lsn?,
            incarnation: t.incarnation,
            polled_at: *sent,
            source: PositionSource::Sql,
            streaming: p.receiver == Receiver::Streaming,
        }),
        _ if t.patroni => patroni_position(m, t, map_at),
        _ => None,
    }
}

/// The position Patroni's `/patroni` gave in the last map round.
fn patroni_position(m: &Member, t: &mut Track, map_at: Instant) -> Option<Position> {
    let live = m.live.as_ref()?;
    t.incarnate(0, live.postmaster_start_time.as_deref());
    Some(Position {
        member: m.name.to_string(),
        timeline: u32::try_from(live.timeline?).ok()?,
        lsn: Lsn(live.lsn),
        incarnation: t.incarnation,
        polled_at: map_at,
        source: PositionSource::Patroni,
        streaming: live.streaming,
    })
}

/// Whether `a` and `b` differ in more than when positions were polled.
#[must_use]
pub fn differ(a: &Positions, b: &Positions) -> bool {
    let key = |p: &Position| {
        (
            p.member.clone(),
            p.timeline,
            p.lsn,
            p.incarnation,
            p.source,
            p.streaming,
        )
    };
    a.epoch != b.epoch
        || a.leader_timeline != b.leader_timeline
        || a.switch_lsn != b.switch_lsn
        || a.leader.as_ref().map(key) != b.leader.as_ref().map(key)
        || a.replicas.len() != b.replicas.len()
        || a.replicas
            .iter()
            .zip(&b.replicas)
            .any(|(x, y)| key(x) != key(y))
}

#[cfg(test)]
pub(crate) mod tests;

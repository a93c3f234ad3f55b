use super::*;
use crate::topology::{LagSource, LiveWal, MemberState, NodeAddr, SelfReport};
use std::time::Duration;

pub(crate) fn member(name: &str, leader: bool) -> Member {
    Member {
        name: name.into(),
        role: if leader {
            MemberRole::Leader
        } else {
            MemberRole::Replica
        },
        state: MemberState::Running,
        addr: NodeAddr {
            host: format!("host-{name}").into(),
            port: 5432,
        },
        lag: None,
        receive_lag: None,
        replay_paused: false,
        lag_source: LagSource::Unknown,
        api_url: None,
        self_report: if leader {
            SelfReport::Primary
        } else {
            SelfReport::NotPrimary
        },
        noloadbalance: false,
        nofailover: false,
        drained: false,
        timeline: Some(1),
        live: None,
    }
}

pub(crate) fn map(leader: &str, replicas: &[&str]) -> ClusterMap {
    let mut members = vec![member(leader, true)];
    members.extend(replicas.iter().map(|r| member(r, false)));
    ClusterMap {
        members,
        generation: 1,
        stale: false,
        updated_at: SystemTime::now(),
        ..ClusterMap::empty("c")
    }
}

pub(crate) fn primary(lsn: u64, timeline: u32) -> Probe {
    Probe {
        in_recovery: false,
        lsn: Some(Lsn(lsn)),
        timeline: Some(timeline),
        receiver: Receiver::None,
        started: "s0".to_owned(),
    }
}

pub(crate) fn replica(lsn: u64, timeline: u32) -> Probe {
    Probe {
        in_recovery: true,
        lsn: Some(Lsn(lsn)),
        timeline: Some(timeline),
        receiver: Receiver::Streaming,
        started: "s0".to_owned(),
    }
}

fn polled(conn: u64, sent: Instant, probe: Probe) -> Outcome {
    Outcome::Polled { conn, sent, probe }
}

/// A book with leader `a` (timeline 1, flush 100) and replicas `b`
/// (replayed 90) and `c` (replayed 80), each polled after the epoch began.
fn book(m: &ClusterMap, t0: Instant) -> Book {
    let mut b = Book::default();
    b.record("a", polled(1, t0, primary(100, 1)));
    let _ = b.positions(m, t0);
    let t1 = t0 + Duration::from_millis(1);
    b.record("b", polled(1, t1, replica(90, 1)));
    b.record("c", polled(1, t1, replica(80, 1)));
    b
}

fn floor(lsn: u64) -> crate::topology::Floor {
    crate::topology::Floor {
        timeline: 1,
        lsn: Lsn(lsn),
    }
}

#[test]
fn sql_polls_give_positions_on_the_leader_timeline() {
    let m = map("a", &["b", "c"]);
    let t0 = Instant::now();
    let mut b = book(&m, t0);
    let p = b.positions(&m, t0 + Duration::from_millis(2));
    assert_eq!((p.epoch, p.leader_timeline), (1, Some(1)));
    assert_eq!(p.switch_lsn, Some(Lsn(100)));
    assert_eq!(p.leader.as_ref().map(|l| l.lsn), Some(Lsn(100)));
    assert_eq!(p.replicas.len(), 2);
    assert!(p.replayed("b", &floor(90)));
    assert!(!p.replayed("c", &floor(81)));
    let c = p.get("c").unwrap();
    assert_eq!(
        (c.source, c.streaming, c.incarnation),
        (PositionSource::Sql, true, 1)
    );
}

#[test]
fn a_failed_poll_or_a_bad_receiver_leaves_no_usable_position_until_a_good_poll() {
    let m = map("a", &["b", "c"]);
    let t0 = Instant::now();
    let mut b = book(&m, t0);
    b.record("b", Outcome::Failed("gone".to_owned()));
    let mut not_streaming = replica(95, 1);
    not_streaming.receiver = Receiver::Other("waiting".to_owned());
    b.record("c", polled(1, t0 + Duration::from_millis(3), not_streaming));
    let p = b.positions(&m, t0 + Duration::from_millis(4));
    assert!(p.get("b").is_none());
    assert!(!p.replayed("c", &floor(1)), "not streaming");
    let mut other_timeline = replica(95, 2);
    other_timeline.timeline = Some(2);
    b.record(
        "c",
        polled(1, t0 + Duration::from_millis(5), other_timeline),
    );
    assert!(
        !b.positions(&m, t0).replayed("c", &floor(1)),
        "received_tli 2"
    );
    b.record(
        "b",
        polled(2, t0 + Duration::from_millis(6), replica(91, 1)),
    );
    let p = b.positions(&m, t0 + Duration::from_millis(7));
    assert!(p.replayed("b", &floor(91)));
    assert_eq!(p.get("b").unwrap().incarnation, 2, "new monitor connection");
}

#[test]
fn a_restart_is_a_new_incarnation() {
    let m = map("a", &["b"]);
    let t0 = Instant::now();
    let mut b = book(&m, t0);
    let mut restarted = replica(50, 1);
    restarted.started = "s1".to_owned();
    b.record("b", polled(1, t0 + Duration::from_millis(3), restarted));
    let p = b.positions(&m, t0 + Duration::from_millis(4));
    let pos = p.get("b").unwrap();
    assert_eq!((pos.incarnation, pos.lsn), (2, Lsn(50)));
}

#[test]
fn a_new_leader_or_timeline_starts_an_epoch_and_drops_replica_positions() {
    let t0 = Instant::now();
    let m1 = map("a", &["b", "c"]);
    let mut b = book(&m1, t0);
    assert_eq!(b.positions(&m1, t0).epoch, 1);
    // Same leader, new timeline.
    let t2 = t0 + Duration::from_millis(10);
    b.record("a", polled(1, t2, primary(200, 2)));
    let p = b.positions(&m1, t2);
    assert_eq!(
        (p.epoch, p.leader_timeline, p.switch_lsn),
        (2, Some(2), Some(Lsn(200)))
    );
    assert!(p.replicas.is_empty(), "polled before the epoch began");
    b.record(
        "b",
        polled(1, t2 + Duration::from_millis(1), replica(210, 2)),
    );
    let p = b.positions(&m1, t2 + Duration::from_millis(2));
    assert!(p.replayed(
        "b",
        &crate::topology::Floor {
            timeline: 2,
            lsn: Lsn(205)
        }
    ));
    // An old floor past the switch point is clamped to it.
    assert!(p.replayed("b", &floor(205)));
    // A new leader member: epoch 3.
    let m2 = map("b", &["a", "c"]);
    let t3 = t2 + Duration::from_millis(10);
    b.record("b", polled(1, t3, primary(300, 3)));
    let p = b.positions(&m2, t3);
    assert_eq!((p.epoch, p.leader_timeline), (3, Some(3)));
    assert!(p.replicas.is_empty());
}

#[test]
fn the_epoch_timeline_stands_while_the_leader_cannot_be_polled() {
    let m = map("a", &["b"]);
    let t0 = Instant::now();
    let mut b = book(&m, t0);
    b.record("a", Outcome::Failed("timeout".to_owned()));
    let p = b.positions(&m, t0 + Duration::from_millis(3));
    assert!(p.leader.is_none());
    assert_eq!(p.leader_timeline, Some(1));
    assert!(p.replayed("b", &floor(90)));
    // A leader the map no longer names: nothing qualifies.
    let p = b.positions(&map("z", &["b"]), t0 + Duration::from_millis(4));
    assert_eq!(p.leader_timeline, None);
    assert!(!p.replayed("b", &floor(0)));
}

#[test]
fn without_a_login_positions_come_from_patroni() {
    let mut m = map("a", &["b", "c"]);
    let live = |lsn, streaming| {
        Some(LiveWal {
            lsn,
            timeline: Some(1),
            streaming,
            postmaster_start_time: Some("s".to_owned()),
        })
    };
    m.members[0].live = live(100, true);
    m.members[1].live = live(70, true);
    m.members[2].live = live(60, false);
    let mut b = Book::default();
    for name in ["a", "b", "c"] {
        b.record(name, Outcome::NoCredentials);
    }
    let t1 = Instant::now();
    let p = b.positions(&m, t1);
    assert_eq!((p.epoch, p.leader_timeline), (1, Some(1)));
    let pb = p.get("b").unwrap();
    assert_eq!((pb.source, pb.lsn), (PositionSource::Patroni, Lsn(70)));
    assert!(p.replayed("b", &floor(70)));
    assert!(!p.replayed("c", &floor(10)), "not streaming");
    // A hidden receiver (no pg_read_all_stats) also falls back.
    let mut hidden = replica(75, 1);
    hidden.receiver = Receiver::Hidden;
    hidden.timeline = None;
    b.record("b", polled(1, t1, hidden));
    let p = b.positions(&m, t1);
    assert_eq!(p.get("b").unwrap().source, PositionSource::Patroni);
}

#[test]
fn a_leader_still_in_recovery_has_no_position() {
    let m = map("a", &["b"]);
    let mut b = Book::default();
    b.record("a", polled(1, Instant::now(), replica(100, 1)));
    let p = b.positions(&m, Instant::now());
    assert_eq!((p.epoch, p.leader_timeline), (0, None));
    assert!(p.leader.is_none());
}

#[test]
fn only_polling_times_do_not_count_as_a_change() {
    let m = map("a", &["b"]);
    let t0 = Instant::now();
    let mut b = book(&m, t0);
    let p1 = b.positions(&m, t0 + Duration::from_millis(2));
    b.record(
        "b",
        polled(1, t0 + Duration::from_millis(5), replica(90, 1)),
    );
    let p2 = b.positions(&m, t0 + Duration::from_millis(6));
    assert_ne!(p1, p2);
    assert!(!differ(&p1, &p2));
    b.record(
        "b",
        polled(1, t0 + Duration::from_millis(7), replica(91, 1)),
    );
    let p3 = b.positions(&m, t0 + Duration::from_millis(8));
    assert!(differ(&p2, &p3));
}

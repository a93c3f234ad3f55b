//! The split decision on the healthy lab fixture: routes, floors, waits
//! and refusals.

use super::*;
use crate::config::{PortConfig, RoleSel};
use crate::topology::patroni::tests::fixture;
use crate::topology::{Lsn, Position, PositionSource};

fn map() -> ClusterMap {
    let mut m = ClusterMap::empty("lab");
    m.generation = 1;
    m.stale = false;
    m.members = fixture("01-healthy").members;
    m
}

fn port(fallback: bool, on_timeout: RywTimeout) -> PortConfig {
    let mut p = PortConfig {
        fallback_to_leader: Some(fallback),
        read_your_writes_on_timeout: Some(on_timeout),
        ..PortConfig::new(
            "127.0.0.1:1".parse().unwrap(),
            vec![RoleSel::Async, RoleSel::Sync],
        )
    };
    p.resolve();
    p
}

fn at(member: &str, lsn: u64, timeline: u32) -> Position {
    Position {
        member: member.into(),
        timeline,
        lsn: Lsn(lsn),
        incarnation: 1,
        polled_at: Instant::now(),
        source: PositionSource::Sql,
        streaming: true,
    }
}

fn positions(reps: Vec<Position>) -> Positions {
    Positions {
        epoch: 1,
        leader_timeline: Some(1),
        switch_lsn: None,
        leader: None,
        replicas: reps,
    }
}

fn run(
    map: &ClusterMap,
    port: &PortConfig,
    pos: &Positions,
    route: Route,
    need: Need,
    patience: Patience,
) -> Decision {
    let health = HealthBook::default();
    let (map, port) = (&Arc::new(map.clone()), &Arc::new(port.clone()));
    let eligible = Eligible::of(map, port, &Arc::new(LagView::default()));
    let v = View {
        map,
        port,
        eligible: &eligible,
        health: &health,
        positions: pos,
        now: Instant::now(),
    };
    decide(
        &v,
        &Request {
            route,
            need,
            patience,
        },
        |_| 0,
    )
}

fn names(d: &Decision) -> (Vec<&str>, Why) {
    match d {
        Decision::Run(t, why) => (t.iter().map(|t| &*t.name).collect(), *why),
        other => panic!("expected targets, got {other:?}"),
    }
}

const PATIENT: Patience = Patience {
    replica: true,
    leader: true,
};

#[test]
fn writes_go_to_the_leader_and_plain_reads_to_replicas() {
    let (m, p, pos) = (map(), port(true, RywTimeout::Leader), positions(vec![]));
    let d = run(&m, &p, &pos, Route::Leader, Need::Nothing, PATIENT);
    assert_eq!(names(&d), (vec!["node1"], Why::Write));
    let d = run(&m, &p, &pos, Route::Replica, Need::Nothing, PATIENT);
    assert_eq!(names(&d), (vec!["node2", "node3"], Why::NoFloor));
    let d = run(&m, &p, &pos, Route::Replica, Need::Leader, PATIENT);
    assert_eq!(names(&d), (vec!["node1"], Why::Fresh));
}

#[test]
fn a_floored_read_goes_only_where_the_floor_was_replayed() {
    let (m, p) = (map(), port(true, RywTimeout::Leader));
    let floor = Floor {
        timeline: 1,
        lsn: Lsn(100),
    };
    let pos = positions(vec![at("node2", 99, 1), at("node3", 100, 1)]);
    let d = run(&m, &p, &pos, Route::Replica, Need::Replayed(floor), PATIENT);
    assert_eq!(names(&d), (vec!["node3"], Why::Replayed));
    // Nobody there yet: wait, then the leader (or the error when configured).
    let behind = positions(vec![at("node2", 99, 1), at("node3", 50, 1)]);
    let d = run(
        &m,
        &p,
        &behind,
        Route::Replica,
        Need::Replayed(floor),
        PATIENT,
    );
    assert_eq!(d, Decision::WaitReplica);
    let tired = Patience {
        replica: false,
        leader: true,
    };
    let d = run(
        &m,
        &p,
        &behind,
        Route::Replica,
        Need::Replayed(floor),
        tired,
    );
    assert_eq!(names(&d), (vec!["node1"], Why::Timeout));
    let strict = port(true, RywTimeout::Error);
    let d = run(
        &m,
        &strict,
        &behind,
        Route::Replica,
        Need::Replayed(floor),
        tired,
    );
    assert!(matches!(d, Decision::Refuse(c, _) if c == sqlstate::SYSTEM_ERROR));
}

#[test]
fn positions_from_another_timeline_or_not_streaming_do_not_count() {
    let (m, p) = (map(), port(true, RywTimeout::Leader));
    let floor = Floor {
        timeline: 1,
        lsn: Lsn(100),
    };
    let mut stopped = at("node3", 500, 1);
    stopped.streaming = false;
    let pos = positions(vec![at("node2", 500, 2), stopped]);
    let d = run(&m, &p, &pos, Route::Replica, Need::Replayed(floor), PATIENT);
    assert_eq!(d, Decision::WaitReplica);
    // A floor from a newer timeline than pgvane knows is never met.
    let future = Floor {
        timeline: 9,
        lsn: Lsn(1),
    };
    let pos = positions(vec![at("node2", 500, 1)]);
    let d = run(
        &m,
        &p,
        &pos,
        Route::Replica,
        Need::Replayed(future),
        PATIENT,
    );
    assert_eq!(d, Decision::WaitReplica);
}

#[test]
fn without_a_leader_requests_wait_or_are_refused() {
    let mut m = map();
    for member in &mut m.members {
        if member.role.is_leader() {
            member.state = crate::topology::MemberState::Other("stopped".into());
        }
    }
    let p = port(true, RywTimeout::Leader);
    let pos = positions(vec![]);
    let d = run(&m, &p, &pos, Route::Leader, Need::Nothing, PATIENT);
    assert!(matches!(d, Decision::WaitLeader(_)), "{d:?}");
    let impatient = Patience {
        replica: true,
        leader: false,
    };
    let d = run(&m, &p, &pos, Route::Leader, Need::Nothing, impatient);
    assert!(matches!(d, Decision::Refuse(c, _) if c == sqlstate::CANNOT_CONNECT_NOW));
    // Plain reads still go to replicas meanwhile.
    let d = run(&m, &p, &pos, Route::Replica, Need::Nothing, impatient);
    assert_eq!(names(&d).1, Why::NoFloor);
}

#[test]
fn no_replica_falls_back_to_the_leader_or_refuses() {
    let mut m = map();
    m.members.retain(|x| x.role.is_leader());
    let pos = positions(vec![]);
    let d = run(
        &m,
        &port(true, RywTimeout::Leader),
        &pos,
        Route::Replica,
        Need::Nothing,
        PATIENT,
    );
    assert_eq!(names(&d), (vec!["node1"], Why::Fallback));
    let d = run(
        &m,
        &port(false, RywTimeout::Leader),
        &pos,
        Route::Replica,
        Need::Nothing,
        PATIENT,
    );
    assert!(matches!(d, Decision::Refuse(c, _) if c == sqlstate::CANNOT_CONNECT_NOW));
}

#[test]
fn reads_go_to_the_least_busy_replica_first_and_skip_one_backing_off() {
    let (m, p) = (Arc::new(map()), Arc::new(port(true, RywTimeout::Leader)));
    let eligible = Eligible::of(&m, &p, &Arc::new(LagView::default()));
    let health = HealthBook::default();
    let pos = positions(vec![]);
    let decide_with = |busy: &dyn Fn(&str) -> usize| {
        let v = View {
            map: &m,
            port: &p,
            eligible: &eligible,
            health: &health,
            positions: &pos,
            now: Instant::now(),
        };
        let req = Request {
            route: Route::Replica,
            need: Need::Nothing,
            patience: PATIENT,
        };
        let name = |a: &NodeAddr| {
            let t = eligible.replicas.iter().find(|t| t.addr == *a).unwrap();
            busy(&t.name)
        };
        decide(&v, &req, name)
    };
    let busier = |name: &str| usize::from(name == "node2") * 3;
    assert_eq!(names(&decide_with(&busier)).0, ["node3", "node2"]);
    let busier = |name: &str| usize::from(name == "node3") * 3;
    assert_eq!(names(&decide_with(&busier)).0, ["node2", "node3"]);
    // Equal loads: by name.
    assert_eq!(names(&decide_with(&|_| 1)).0, ["node2", "node3"]);
    let node3 = eligible.replicas.iter().find(|t| &*t.name == "node3");
    health.failure(&node3.unwrap().addr, Instant::now());
    assert_eq!(names(&decide_with(&|_| 0)).0, ["node2"]);
}

#[test]
fn what_the_policy_admits_is_kept_until_a_snapshot_is_replaced() {
    let m = Arc::new(map());
    let p = Arc::new(port(true, RywTimeout::Leader));
    let lag = Arc::new(LagView::default());
    let slot = ArcSwapOption::empty();
    let at = |e: &Eligible| std::ptr::from_ref(e);
    let first = Eligible::with(&slot, &m, &p, &lag, at);
    let again = Eligible::with(&slot, &m, &p, &lag, at);
    assert!(std::ptr::eq(first, again), "kept while the snapshots stand");
    // A new map (same content or not) is a new snapshot: computed again,
    // and what it says counts.
    let mut next = map();
    next.members.retain(|x| &*x.name != "node2");
    let next = Arc::new(next);
    let reps = Eligible::with(&slot, &next, &p, &lag, |e| {
        e.replicas
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(reps, ["node3"]);
    let kept = slot.load_full().unwrap();
    let e = &*kept;
    assert!(e.stands(&next, &p, &lag) && !e.stands(&m, &p, &lag));
    assert!(!e.stands(&next, &Arc::new(port(true, RywTimeout::Leader)), &lag));
    assert!(!e.stands(&next, &p, &Arc::new(LagView::default())));
    // The leader's target comes with it; without one, why.
    assert_eq!(e.leader.as_ref().map(|t| &*t.name), Ok("node1"));
    let mut leaderless = map();
    leaderless.members.retain(|x| !x.role.is_leader());
    let e = Eligible::of(&Arc::new(leaderless), &p, &lag);
    assert!(e.leader.unwrap_err().contains("no running leader"));
}

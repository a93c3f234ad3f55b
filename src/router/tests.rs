use super::*;
use crate::config::RoleSel;
use crate::topology::patroni::tests::fixture;
use std::sync::Arc;
use std::time::Duration;

fn ok(m: &crate::topology::Member, p: &PortConfig) -> bool {
    chk(m, p).is_ok()
}

fn chk(m: &crate::topology::Member, p: &PortConfig) -> Result<(), Ineligible> {
    check(m, p, &LagView::default())
}

fn port(roles: &[RoleSel], max_lag: Option<u64>) -> PortConfig {
    PortConfig {
        max_lag_in_bytes: max_lag,
        ..PortConfig::new("127.0.0.1:1".parse().unwrap(), roles.to_vec())
    }
}

fn map_of(name: &str) -> ClusterMap {
    let info = fixture(name);
    let mut m = ClusterMap::empty("lab");
    m.generation = 1;
    m.stale = false;
    m.members = info.members;
    m
}

fn eligible(name: &str, p: &PortConfig) -> Vec<String> {
    let map = map_of(name);
    let mut v: Vec<String> = map
        .members
        .iter()
        .filter(|m| ok(m, p))
        .map(|m| m.name.to_string())
        .collect();
    v.sort();
    v
}

use RoleSel::{Any, Async, Leader, Sync};
const MIB16: Option<u64> = Some(16 * 1024 * 1024);

/// (fixture, leader port, replica port [sync, async] with 16 MiB limit, any port)
/// One row: fixture, leader port, replica port, any port.
type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);
const TABLE: &[Row] = &[
    (
        "01-healthy",
        &["node1"],
        &["node2", "node3"],
        &["node1", "node2", "node3"],
    ),
    (
        "02-after-switchover",
        &["node2"],
        &["node1", "node3"],
        &["node1", "node2", "node3"],
    ),
    // A dead leader still listed leader/running: only pgvane's own connect
    // failure can tell. Replicas show `running` (no WAL stream): still eligible.
    (
        "03-leader-crashed-within-ttl",
        &["node2"],
        &["node1", "node3"],
        &["node1", "node2", "node3"],
    ),
    (
        "04-after-failover",
        &["node1"],
        &["node3"],
        &["node1", "node3"],
    ),
    (
        "05-crashed-leader-rejoined",
        &["node1"],
        &["node2", "node3"],
        &["node1", "node2", "node3"],
    ),
    (
        "07-lag-replay",
        &["node3"],
        &["node2"],
        &["node1", "node2", "node3"],
    ),
    (
        "08-lag-receive",
        &["node3"],
        &["node1"],
        &["node1", "node2", "node3"],
    ),
    (
        "09-sync-on",
        &["node3"],
        &["node1", "node2"],
        &["node1", "node2", "node3"],
    ),
    (
        "10-sync-quorum",
        &["node3"],
        &["node1", "node2"],
        &["node1", "node2", "node3"],
    ),
    (
        "11-noloadbalance",
        &["node3"],
        &["node2"],
        &["node2", "node3"],
    ),
    (
        "12-nofailover",
        &["node3"],
        &["node1", "node2"],
        &["node1", "node2", "node3"],
    ),
    (
        "13-replica-stopped",
        &["node3"],
        &["node2"],
        &["node2", "node3"],
    ),
    (
        "14-replica-stopped-expired",
        &["node3"],
        &["node2"],
        &["node2", "node3"],
    ),
    (
        "15-leader-stopped-gracefully",
        &["node2"],
        &["node1"],
        &["node1", "node2"],
    ),
    (
        "16-maintenance-mode",
        &["node2"],
        &["node1", "node3"],
        &["node1", "node2", "node3"],
    ),
    (
        "17-four-nodes",
        &["node2"],
        &["node1", "node3", "node4"],
        &["node1", "node2", "node3", "node4"],
    ),
];

#[test]
fn eligibility_on_every_state() {
    for (name, leader, replicas, any) in TABLE {
        assert_eq!(
            eligible(name, &port(&[Leader], None)),
            *leader,
            "{name} leader"
        );
        assert_eq!(
            eligible(name, &port(&[Sync, Async], MIB16)),
            *replicas,
            "{name} replicas"
        );
        // `any` has no lag limit here; the leader is never subject to lag.
        assert_eq!(eligible(name, &port(&[Any], None)), *any, "{name} any");
    }
}

#[test]
fn every_fixture_has_a_verdict_for_every_member() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/patroni");
    for entry in std::fs::read_dir(dir).unwrap() {
        let f = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = f.strip_suffix(".cluster.json") else {
            continue;
        };
        let map = map_of(stem);
        for p in [
            port(&[Leader], None),
            port(&[Sync], MIB16),
            port(&[Async], MIB16),
            port(&[Any], Some(0)),
        ] {
            let leaders = map
                .members
                .iter()
                .filter(|m| ok(m, &p) && m.role.is_leader())
                .count();
            assert!(leaders <= 1, "{f}");
        }
    }
}

#[test]
fn sync_and_async_split_by_role() {
    assert_eq!(eligible("09-sync-on", &port(&[Sync], None)), vec!["node2"]);
    assert_eq!(eligible("09-sync-on", &port(&[Async], None)), vec!["node1"]);
    assert_eq!(
        eligible("10-sync-quorum", &port(&[Sync], None)),
        vec!["node1", "node2"]
    );
    assert!(eligible("10-sync-quorum", &port(&[Async], None)).is_empty());
}

#[test]
fn noloadbalance_never_removes_a_leader() {
    let mut map = map_of("01-healthy");
    map.members[0].noloadbalance = true;
    assert!(ok(&map.members[0], &port(&[Leader], None)));
    assert!(ok(&map.members[0], &port(&[Any], None)));
    map.members[1].noloadbalance = true;
    assert_eq!(
        chk(&map.members[1], &port(&[Any], None)),
        Err(Ineligible::NoLoadBalance)
    );
}

#[test]
fn lag_limits_and_unknown_lag() {
    let map = map_of("07-lag-replay");
    let node1 = map.member("node1").unwrap();
    assert_eq!(chk(node1, &port(&[Async], MIB16)), Err(Ineligible::Lag));
    assert!(ok(node1, &port(&[Async], Some(17_000_000))));
    assert!(ok(node1, &port(&[Async], None)));
    let mut m = node1.clone();
    m.lag = None;
    assert_eq!(chk(&m, &port(&[Async], Some(1))), Err(Ineligible::Lag));
    // A leader has no lag and is never held to the limit.
    let leader = map.leader().unwrap();
    assert!(ok(leader, &port(&[Leader, Async], Some(0))));
}

#[test]
fn leader_must_be_running_replicas_may_stream() {
    let mut map = map_of("01-healthy");
    map.members[0].state = crate::topology::MemberState::Streaming;
    assert_eq!(
        chk(&map.members[0], &port(&[Leader], None)),
        Err(Ineligible::State)
    );
    map.members[1].state = crate::topology::MemberState::Running;
    assert!(ok(&map.members[1], &port(&[Async], None)));
    map.members[1].state = crate::topology::MemberState::Other("starting".into());
    assert_eq!(
        chk(&map.members[1], &port(&[Async], None)),
        Err(Ineligible::State)
    );
}

#[test]
fn choose_orders_skips_cooling_and_explains() {
    let map = map_of("01-healthy");
    let b = Arc::new(Balancer::default());
    let h = HealthBook::default();
    let now = std::time::Instant::now();
    let p = port(&[Async], None);
    let first = choose(&map, &p, &b, &h, &LagView::default(), now).unwrap();
    assert_eq!(
        first.iter().map(|k| &*k.name).collect::<Vec<_>>(),
        vec!["node2", "node3"]
    );
    let _lease = b.lease(first[0].clone());
    let second = choose(&map, &p, &b, &h, &LagView::default(), now).unwrap();
    assert_eq!(&*second[0].name, "node3", "least connections");
    h.failure(&second[0].addr, now);
    assert_eq!(
        choose(&map, &p, &b, &h, &LagView::default(), now)
            .unwrap()
            .len(),
        1
    );
    h.failure(&first[0].addr, now);
    assert!(matches!(
        choose(&map, &p, &b, &h, &LagView::default(), now),
        Err(NoTarget::AllCoolingDown(_))
    ));
    assert!(
        choose(
            &map,
            &p,
            &b,
            &h,
            &LagView::default(),
            now + Duration::from_secs(10)
        )
        .is_ok()
    );

    let none = choose(
        &map_of("13-replica-stopped"),
        &port(&[Sync], None),
        &b,
        &h,
        &LagView::default(),
        now,
    )
    .unwrap_err();
    let NoTarget::NoneQualifies(text) = none else {
        panic!()
    };
    assert!(text.contains("node1 has role Replica"), "{text}");
    let empty = choose(
        &ClusterMap::empty("lab"),
        &p,
        &b,
        &h,
        &LagView::default(),
        now,
    )
    .unwrap_err();
    assert_eq!(
        empty,
        NoTarget::NoneQualifies("no answer from Patroni yet".into())
    );
}

#[test]
fn host_port_overrides_and_address_change_evicts() {
    let map = map_of("01-healthy");
    let mut p = port(&[Leader], None);
    p.host_port = Some(6432);
    let key = target_key(&map.members[0], &p);
    assert_eq!(key.addr.port, 6432);
    assert!(policy::still_qualifies(&key, map.member("node1"), &p, &LagView::default()).is_ok());
    assert_eq!(
        policy::still_qualifies(&key, None, &p, &LagView::default()),
        Err(Ineligible::Removed)
    );
    let old_port = port(&[Leader], None);
    assert_eq!(
        policy::still_qualifies(&key, map.member("node1"), &old_port, &LagView::default()),
        Err(Ineligible::Removed)
    );
}

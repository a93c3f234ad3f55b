//! Replay lag (patroni_proxy's acceptance scenario, with hysteresis): a
//! replica whose replay is blocked (`lab.sh lag`: a reader's lock that the
//! leader's TRUNCATE conflicts with) while the leader writes 48 MiB loses
//! exactly its replica-port clients, within `cluster_update_interval` +
//! `lag_grace_ms` + 1 s of the write and not before the grace; the other
//! replica and the limit-free port keep theirs; after catching up below
//! the low watermark it takes clients again. Lag is read live from each
//! member's `/patroni`, so the figures are never `loop_wait` old.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// `cluster_update_interval` (1 s) + default `lag_grace_ms` (2 s) + 1 s.
const EVICTION_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn lagging_replica_clients_are_evicted_and_come_back() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let history = History::start(p.admin);
    let reps = replicas();
    let (laggy, steady) = (reps[0].clone(), reps[1].clone());
    let on_laggy = clients_on(p.ro, &laggy, 2).await;
    let on_steady = clients_on(p.ro, &steady, 2).await;
    // The `any` port has no lag limit: its client on the laggy node stays.
    let any_on_laggy = clients_on(p.any, &laggy, 1).await;

    lab(&["lag", laggy.trim_start_matches("node"), "--no-wait"]);
    let t0 = Instant::now();
    let evicted = all_gone(&on_laggy, EVICTION_BOUND).await;
    let took = t0.elapsed();
    assert!(
        evicted,
        "clients of the lagging replica not evicted within {EVICTION_BOUND:?}\n{}\n{}",
        history.dump(),
        pg.log_text()
    );
    eprintln!("lag: replay-lag clients evicted {took:?} after the WAL was written");
    // Hysteresis: 48 MiB is under 4 x 16 MiB, so the grace (2 s from the
    // first poll that saw the lag, itself after the first WAL switch) ran.
    assert!(
        took >= Duration::from_millis(1700),
        "evicted after {took:?}, before lag_grace_ms\n{}",
        history.dump()
    );
    for c in &on_steady {
        assert!(
            c.alive().await,
            "client of the healthy replica was dropped\n{}",
            history.dump()
        );
    }
    assert!(
        any_on_laggy[0].alive().await,
        "the any port has no lag limit"
    );
    assert_eq!(
        pg.metric("pgvane_evictions_total", &["port=\"ro\"", "reason=\"lag\""]),
        2.0
    );
    // New clients avoid the lagging replica.
    for _ in 0..3 {
        let c = connect(p.ro).await.unwrap();
        assert_eq!(c.whereami().await.unwrap().0, steady);
    }
    let clusters = pg.clusters();
    let m = clusters["lab"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == laggy.as_str())
        .unwrap()
        .clone();
    assert_eq!(m["eligible"]["ro"], "lag", "{m}");
    assert_eq!(m["lag_source"], "patroni", "{m}");
    assert!(m["lag"].as_u64().unwrap() >= 32 << 20, "{m}");
    // Blocked replay, not a paused one; it still receives.
    assert_eq!(m["replay_paused"], false, "{m}");
    assert!(m["receive_lag"].as_u64().unwrap() < 1 << 20, "{m}");
    assert!(
        pg.metric(
            "pgvane_member_lag_bytes",
            &[&format!("member=\"{laggy}\""), "kind=\"replay\""]
        ) >= f64::from(32 << 20)
    );

    lab(&["unlag", laggy.trim_start_matches("node")]);
    let back = lands_again(p.ro, &laggy, Duration::from_secs(15)).await;
    assert!(
        back,
        "caught-up replica never eligible again\n{}",
        history.dump()
    );
}

//! Receive lag: a replica cut off from WAL (its WAL receiver stopped) while
//! the leader moves 48 MiB on is seen from its own `/patroni`
//! (`received_location`), and its replica-port clients are evicted within
//! `cluster_update_interval` + `lag_grace_ms` + 1 s; the other replica's stay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

const EVICTION_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_cut_off_from_wal_loses_its_clients() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let history = History::start(p.admin);
    let reps = replicas();
    let (cut, steady) = (reps[0].clone(), reps[1].clone());
    let on_cut = clients_on(p.ro, &cut, 2).await;
    let on_steady = clients_on(p.ro, &steady, 2).await;
    lab(&["receive-lag", cut.trim_start_matches("node")]);
    let t0 = Instant::now();
    let evicted = all_gone(&on_cut, EVICTION_BOUND).await;
    let took = t0.elapsed();
    let clusters = pg.clusters();
    lab(&["unreceive-lag", cut.trim_start_matches("node")]);
    assert!(
        evicted,
        "clients of the cut-off replica not evicted within {EVICTION_BOUND:?}\n{}\n{}",
        history.dump(),
        pg.log_text()
    );
    eprintln!("lag_receive: clients evicted {took:?} after the WAL was written");
    for c in &on_steady {
        assert!(
            c.alive().await,
            "client of the healthy replica was dropped\n{}",
            history.dump()
        );
    }
    let m = clusters["lab"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == cut.as_str())
        .unwrap()
        .clone();
    assert_eq!(m["lag_source"], "patroni", "{m}");
    assert!(m["receive_lag"].as_u64().unwrap() >= 32 << 20, "{m}");
    assert_eq!(m["replay_paused"], false, "{m}");
    assert_eq!(
        pg.metric("pgvane_evictions_total", &["port=\"ro\"", "reason=\"lag\""]),
        2.0
    );
    // Back in: once it receives again it takes clients.
    let back = lands_again(p.ro, &cut, Duration::from_secs(15)).await;
    assert!(back, "replica never eligible again\n{}", history.dump());
}

//! Lag (patroni_proxy's acceptance scenario restated): a replica past
//! `max_lag_in_bytes` loses exactly its replica-port clients; the others
//! stay; after catching up it is eligible again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn lagging_replica_clients_are_evicted_and_come_back() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let reps = replicas();
    let (laggy, steady) = (reps[0].clone(), reps[1].clone());
    let mut on_laggy = Vec::new();
    let mut on_steady = Vec::new();
    for _ in 0..4 {
        let c = connect(p.ro).await.unwrap();
        let node = c.whereami().await.unwrap().0;
        if node == laggy {
            on_laggy.push(c)
        } else {
            on_steady.push(c)
        }
    }
    // The `any` port has no lag limit: its client on the laggy node stays.
    let mut any_on_laggy = None;
    for _ in 0..3 {
        let c = connect(p.any).await.unwrap();
        if c.whereami().await.unwrap().0 == laggy {
            any_on_laggy = Some(c);
        }
    }
    let any_on_laggy = any_on_laggy.expect("one any-port client per node");
    assert_eq!((on_laggy.len(), on_steady.len()), (2, 2));
    let t0 = Instant::now();
    lab(&["lag", laggy.trim_start_matches("node")]);
    let evicted = wait_until_async(Duration::from_secs(15), || async {
        let mut all = true;
        for c in &on_laggy {
            all &= !c.alive().await;
        }
        all
    })
    .await;
    let took = t0.elapsed();
    assert!(
        evicted,
        "clients of the lagging replica were not evicted:\n{}",
        pg.log_text()
    );
    eprintln!("lag: clients evicted {took:?} after `lab.sh lag` began");
    for c in &on_steady {
        assert!(c.alive().await, "client of the healthy replica was dropped");
    }
    assert!(any_on_laggy.alive().await, "the any port has no lag limit");
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
    lab(&["unlag", laggy.trim_start_matches("node")]);
    let back = wait_until_async(Duration::from_secs(15), || async {
        let mut clients = Vec::new();
        let mut seen = false;
        for _ in 0..4 {
            let Ok(c) = connect(p.ro).await else {
                return false;
            };
            seen |= c.whereami().await.map(|w| w.0 == laggy).unwrap_or(false);
            clients.push(c);
        }
        seen
    })
    .await;
    assert!(back, "caught-up replica never eligible again");
}

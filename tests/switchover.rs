//! Switchover (patroni_proxy's acceptance scenario restated): new
//! connections reach the new leader, the old leader's leader-port clients
//! are evicted, replica-port clients on untouched replicas stay, and no
//! leader-port client of the 20 per second connecting throughout ever
//! lands on a node in recovery (the new leader is used only once its own
//! `/patroni` answers primary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn switchover_moves_the_leader_port_and_keeps_other_clients() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let old = leader();
    let rw = connect(p.rw).await.unwrap();
    assert_eq!(rw.whereami().await.unwrap().0, old);
    let mut ro = Vec::new();
    for _ in 0..4 {
        let c = connect(p.ro).await.unwrap();
        let node = c.whereami().await.unwrap().0;
        ro.push((node, c));
    }
    let t0 = Instant::now();
    let prober = Prober::start(p.rw);
    tokio::task::spawn_blocking(|| lab(&["switchover"]))
        .await
        .unwrap();
    let new = leader();
    assert_ne!(new, old);
    // New connections reach the new leader as soon as pgvane's map has it.
    let ok = wait_until_async(Duration::from_secs(20), || async {
        match connect(p.rw).await {
            Ok(c) => c.whereami().await.unwrap_or_default() == (new.clone(), false),
            Err(_) => false,
        }
    })
    .await;
    let reached = t0.elapsed();
    assert!(ok, "leader port never reached {new}");
    // Two more seconds of connects on the new leader, then the verdict.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = prober.stop().await;
    report.assert_leader_port_clean("switchover", &pg.log_text());
    assert!(report.sessions.len() >= 20, "{report:?}");
    eprintln!(
        "switchover: leader port reached the new leader {:?} after the switchover began",
        reached
    );
    // The client on the old leader was evicted (or its backend terminated).
    assert!(
        wait_until_async(Duration::from_secs(10), || async { !rw.alive().await }).await,
        "old leader client still connected"
    );
    // Replica-port clients on the replica that stayed a replica are untouched.
    for (node, c) in &ro {
        if *node != new && *node != old {
            assert!(
                c.alive().await,
                "client on untouched replica {node} was dropped:\n{}",
                pg.log_text()
            );
        }
    }
    let evicted = pg.metric("pgvane_evictions_total", &["port=\"rw\""]);
    let log = pg.log_text();
    assert!(
        evicted >= 1.0 || log.contains("evicting clients"),
        "no eviction recorded:\n{log}"
    );
    lab(&["wait-healthy"]);
}

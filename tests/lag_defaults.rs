//! The lag tests with the lab at Patroni's default timing (`loop_wait` 10,
//! `ttl` 30, `retry_timeout` 10), where `/cluster` figures are up to 10 s
//! old on each side: real replay lag still evicts within
//! `cluster_update_interval` + `lag_grace_ms` + 1 s, and WAL bursts still
//! evict nobody, because positions are read live from `/patroni`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Puts the lab's own timing back, even when the test fails.
struct DefaultTiming;

impl DefaultTiming {
    fn set() -> Self {
        lab(&["timing", "10", "30", "10"]);
        Self
    }
}

impl Drop for DefaultTiming {
    fn drop(&mut self) {
        lab(&["timing", "2", "20", "5"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_at_patroni_default_timing() {
    healthy_lab();
    let _timing = DefaultTiming::set();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let history = History::start(p.admin);
    let reps = replicas();
    let (laggy, steady) = (reps[0].clone(), reps[1].clone());

    // Bursts: 10 of 42-58 MiB each, 1.5 s apart; nobody is evicted.
    let mut clients = clients_on(p.ro, &laggy, 1).await;
    clients.extend(clients_on(p.ro, &steady, 1).await);
    let leader = connect_node(&leader()).await;
    for burst in 0..10 {
        let began = Instant::now();
        leader
            .batch_execute(
                "create table if not exists lab_burst(x int, pad text);
                 insert into lab_burst select g, repeat('x', 100) from generate_series(1, 60000) g;
                 truncate lab_burst",
            )
            .await
            .unwrap();
        switch_wal(&leader, 3).await;
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(began.elapsed())).await;
        for c in &clients {
            assert!(
                c.alive().await,
                "evicted during burst {burst}\n{}",
                history.dump()
            );
        }
    }
    assert_eq!(pg.metric("pgvane_evictions_total", &["port=\"ro\""]), 0.0);

    // Real replay lag: evicted within 1 s + 2 s + 1 s, not loop_wait-late.
    lab(&["lag", laggy.trim_start_matches("node"), "--no-wait"]);
    let t0 = Instant::now();
    let evicted = wait_until_async(Duration::from_secs(4), || async {
        !clients[0].alive().await
    })
    .await;
    let took = t0.elapsed();
    lab(&["unlag", laggy.trim_start_matches("node")]);
    assert!(
        evicted,
        "not evicted within 4 s at loop_wait 10\n{}\n{}",
        history.dump(),
        pg.log_text()
    );
    eprintln!("lag_defaults: replay-lag client evicted {took:?} after the WAL was written");
    assert!(
        clients[1].alive().await,
        "the healthy replica's client was dropped"
    );
}

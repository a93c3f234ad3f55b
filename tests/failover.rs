//! kill -9 of the leader's Patroni and PostgreSQL: the leader port answers
//! an ErrorResponse or reaches the new leader within a bounded time and
//! never hangs; with 20 connects per second throughout, no leader-port
//! client ever lands on a node in recovery (a new leader is used only once
//! its own `/patroni` answers primary); the ex-leader rejoins afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn kill_leader_never_hangs_and_reaches_the_new_leader() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let rw = connect(p.rw).await.unwrap();
    let old = rw.whereami().await.unwrap().0;
    let t0 = Instant::now();
    let prober = Prober::start(p.rw);
    let killed = lab(&["kill-leader"]);
    assert_eq!(killed.lines().last().unwrap(), old);
    // Orphaned backends exit once they notice the postmaster died: bounded, not instant.
    let gone = wait_until_async(Duration::from_secs(10), || async { !rw.alive().await }).await;
    assert!(
        gone,
        "client of the killed leader still usable 10 s after the kill"
    );
    // Every attempt ends quickly: an ErrorResponse while no leader qualifies,
    // or a session on the new leader. Never a hang.
    let mut errors = 0;
    let mut first_error = None;
    let reached = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no new leader after 90 s"
        );
        let attempt = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), connect(p.rw)).await;
        let took = attempt.elapsed();
        assert!(result.is_ok(), "connect through the leader port hung");
        assert!(took < Duration::from_secs(8), "connect took {took:?}");
        match result.unwrap() {
            Ok(c) => match c.whereami().await {
                Ok((node, false)) if node != old => break t0.elapsed(),
                other => panic!("leader port reached {other:?}"),
            },
            Err(e) => {
                let db = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("not an ErrorResponse: {e:?}\n{}", pg.log_text()));
                assert!(["57P03", "08006"].contains(&db.code().code()), "{db:?}");
                first_error.get_or_insert_with(|| db.message().to_owned());
                errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Three more seconds of connects on the new leader, then the verdict.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = prober.stop().await;
    report.assert_leader_port_clean("failover", &pg.log_text());
    eprintln!(
        "failover: leader port reached the new leader {reached:?} after kill -9 ({errors} ErrorResponses meanwhile, first: {first_error:?})"
    );
    assert!(
        errors > 0,
        "the dead leader stays in /cluster for up to ttl; clients must have been refused meanwhile"
    );
    lab(&["start-node", old.trim_start_matches("node")]);
}

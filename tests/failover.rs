//! kill -9 of the leader's Patroni and PostgreSQL: a new leader-port client
//! is held (`leader_wait_ms`, 30 s by default) and reaches the new leader
//! within a bounded time, never an error and never past the wait; with
//! `leader_wait_ms: 0` (the control) clients are refused meanwhile; with 20
//! connects per second throughout, no leader-port client ever lands on a
//! node in recovery (a new leader is used only once its own `/patroni`
//! answers primary); the ex-leader rejoins afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn kill_leader_holds_new_clients_until_the_new_leader() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let rw = connect(p.rw).await.unwrap();
    let old = rw.whereami().await.unwrap().0;
    let control = control_port(&pg, &p);
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
    // Connects during the gap are held and land on the new leader; the
    // control port (leader_wait_ms 0) refuses meanwhile.
    let (errors, first_error) = match connect(control).await {
        Ok(_) => (0, None),
        Err(e) => (1, Some(format!("{e}"))),
    };
    let attempt = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(40), connect(p.rw)).await;
    let held = attempt.elapsed();
    assert!(result.is_ok(), "connect through the leader port hung");
    assert!(held < Duration::from_secs(35), "connect took {held:?}");
    let c = result.unwrap().unwrap_or_else(|e| {
        panic!(
            "the leader port refused while waiting was on: {e:?}\n{}",
            pg.log_text()
        )
    });
    match c.whereami().await {
        Ok((node, false)) if node != old => {}
        other => panic!("leader port reached {other:?}"),
    }
    let reached = t0.elapsed();
    // Three more seconds of connects on the new leader, then the verdict.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = prober.stop().await;
    report.assert_leader_port_clean("failover", &pg.log_text());
    eprintln!(
        "failover: leader port reached the new leader {reached:?} after kill -9, a client held up to {held:?}; control port: {errors} ErrorResponses meanwhile, first: {first_error:?}"
    );
    assert!(
        errors > 0,
        "control: the dead leader stays in /cluster for up to ttl; leader_wait_ms 0 clients must have been refused meanwhile"
    );
    assert!(
        pg.metric(
            "pgvane_leader_waits_total",
            &["port=\"rw\"", "outcome=\"leader\""]
        ) >= 1.0,
        "no leader-port client was held"
    );
    lab(&["start-node", old.trim_start_matches("node")]);
}

/// Adds a leader port with `leader_wait_ms: 0` (refuse at once, the old
/// behaviour) to the running pgvane by reload; its port.
fn control_port(pg: &Pgvane, p: &Ports) -> u16 {
    let port = free_port();
    let yaml = lab_config(p).replace(
        "    ports:\n",
        &format!("    ports:\n      rw0: {{listen: 127.0.0.1:{port}, roles: [leader], leader_wait_ms: 0}}\n"),
    );
    pg.rewrite_config(&yaml);
    let (status, body) = http(p.admin, "POST", "/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    port
}

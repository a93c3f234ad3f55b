//! `noloadbalance`: removes a node from replica roles only; its replica-port
//! clients are evicted, leader-port routing is untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn noloadbalance_tag_evicts_replica_clients_only() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let tagged = replicas()[0].clone();
    let n = tagged.trim_start_matches("node").to_owned();
    let mut on_tagged = Vec::new();
    for _ in 0..2 {
        let c = connect(p.ro).await.unwrap();
        if c.whereami().await.unwrap().0 == tagged {
            on_tagged.push(c);
        }
    }
    assert_eq!(on_tagged.len(), 1);
    let rw = connect(p.rw).await.unwrap();
    lab(&["tag", &n, "noloadbalance"]);
    let gone = wait_until_async(Duration::from_secs(10), || async {
        !on_tagged[0].alive().await
    })
    .await;
    assert!(
        gone,
        "client on the noloadbalance replica not evicted:\n{}",
        pg.log_text()
    );
    assert!(rw.alive().await, "leader-port client must stay");
    for _ in 0..3 {
        let c = connect(p.ro).await.unwrap();
        assert_ne!(c.whereami().await.unwrap().0, tagged);
    }
    assert_eq!(
        pg.metric("pgvane_evictions_total", &["reason=\"noloadbalance\""]),
        1.0
    );
    lab(&["untag", &n, "noloadbalance"]);
}

/// A leader tagged noloadbalance still serves the leader port.
#[tokio::test(flavor = "multi_thread")]
async fn noloadbalance_leader_keeps_the_leader_port() {
    healthy_lab();
    let p = Ports::new();
    let _pg = Pgvane::start(&lab_config(&p), p.admin);
    let l = leader();
    let n = l.trim_start_matches("node").to_owned();
    lab(&["tag", &n, "noloadbalance"]);
    let rw = connect(p.rw).await;
    let where_ = match &rw {
        Ok(c) => c.whereami().await.ok(),
        Err(_) => None,
    };
    lab(&["untag", &n, "noloadbalance"]);
    assert_eq!(where_, Some((l, false)));
}

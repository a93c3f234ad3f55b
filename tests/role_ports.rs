//! Role ports against the real lab: the leader port reaches the leader, the
//! replica port reaches replicas and spreads clients, `any` covers all,
//! refusals are PostgreSQL errors, a refused connect retries the next node,
//! a relay ends when its backend exits even if the client never reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn leader_port_reaches_the_leader() {
    healthy_lab();
    let p = Ports::new();
    let _pg = Pgvane::start(&lab_config(&p), p.admin);
    let leader = leader();
    for _ in 0..3 {
        let c = connect(p.rw).await.unwrap();
        let (node, recovery) = c.whereami().await.unwrap();
        assert_eq!(node, leader);
        assert!(
            !recovery,
            "pg_is_in_recovery() must be false on the leader port"
        );
        c.client
            .batch_execute(
                "create table if not exists pgvane_rw(x int); insert into pgvane_rw values (1)",
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_port_spreads_over_replicas() {
    healthy_lab();
    let p = Ports::new();
    let _pg = Pgvane::start(&lab_config(&p), p.admin);
    let mut clients = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..6 {
        let c = connect(p.ro).await.unwrap();
        let (node, recovery) = c.whereami().await.unwrap();
        assert!(recovery, "replica port reached a non-replica");
        *per_node.entry(node).or_default() += 1;
        clients.push(c);
    }
    let want: BTreeMap<String, usize> = replicas().into_iter().map(|r| (r, 3)).collect();
    assert_eq!(per_node, want, "least connections spreads 6 clients 3/3");
    // `any` includes the leader: 3 clients land on 3 different nodes.
    let mut any_nodes = Vec::new();
    for _ in 0..3 {
        let c = connect(p.any).await.unwrap();
        any_nodes.push(c.whereami().await.unwrap().0);
        clients.push(c);
    }
    any_nodes.sort();
    assert_eq!(any_nodes, NODES.to_vec());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_qualifying_node_gets_a_clear_error() {
    healthy_lab();
    let p = Ports::new();
    // synchronous_mode is off in the healthy lab: a sync-only port has no node.
    let yaml = lab_config(&p).replace(
        "roles: [sync, async], max_lag_in_bytes: 16777216",
        "roles: [sync]",
    );
    let pg = Pgvane::start(&yaml, p.admin);
    let (code, msg) = connect_err(p.ro).await;
    assert_eq!(code, "57P03");
    assert!(
        msg.contains("no node of cluster \"lab\" qualifies for port \"ro\""),
        "{msg}"
    );
    // The topology goes to the log, never to a client that has not logged in.
    assert!(!msg.contains("role"), "{msg}");
    for n in NODES {
        assert!(!msg.contains(n), "{msg} names {n}");
    }
    let log = pg.log_text();
    assert!(
        log.contains("has role Replica") && log.contains("has role Leader"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connects_give_08006_after_trying_every_node() {
    healthy_lab();
    let p = Ports::new();
    let closed = free_port();
    let yaml = lab_config(&p).replace(
        "roles: [any]}",
        &format!("roles: [any], host_port: {closed}}}"),
    );
    let pg = Pgvane::start(&yaml, p.admin);
    let (code, msg) = connect_err(p.any).await;
    assert_eq!(code, "08006");
    assert!(msg.contains("could not connect to any node"), "{msg}");
    // Every node was tried (the log names them; the client is not told).
    let log = pg.log_text();
    for n in NODES {
        assert!(!msg.contains(n), "{msg} names {n}");
        assert!(log.contains(&format!("{n} (")), "{n} not tried:\n{log}");
    }
    // pgvane's own failures count: the next client is told at once that
    // every node refused moments ago.
    let (code, msg) = connect_err(p.any).await;
    assert_eq!(code, "08006");
    assert!(msg.contains("refused connections moments ago"), "{msg}");
    assert!(pg.metric("pgvane_connect_failures_total", &["cluster=\"lab\""]) >= 3.0);
    assert!(pg.metric("pgvane_client_errors_total", &["sqlstate=\"08006\""]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_sees_the_error_not_a_bare_close() {
    healthy_lab();
    let p = Ports::new();
    let yaml = lab_config(&p).replace(
        "roles: [sync, async], max_lag_in_bytes: 16777216",
        "roles: [sync]",
    );
    let _pg = Pgvane::start(&yaml, p.admin);
    // psql tries SSL first (sslmode=prefer): pgvane answers N, then the error.
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &p.ro.to_string(),
            "-U",
            "postgres",
            "-c",
            "select 1",
        ])
        .env("PGPASSWORD", "postgres")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no node of cluster \"lab\" qualifies"),
        "{err}"
    );
}

/// A fake Patroni (edge case only) listing a member whose port refuses, next
/// to a real lab replica: the client lands on the real one after a retry.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connect_is_retried_on_the_next_node() {
    healthy_lab();
    let replica = replicas().remove(0);
    let closed = free_port();
    let body = format!(
        r#"{{"members": [{{"name": "a-dead", "role": "replica", "state": "streaming", "host": "127.0.0.1", "port": {closed}, "lag": 0}},
        {{"name": "{replica}", "role": "replica", "state": "streaming", "host": "{}", "port": 5432, "lag": 0}}]}}"#,
        node_ip(&replica)
    );
    let api_port = fake_patroni(body).await;
    let admin = free_port();
    let port = free_port();
    let yaml = format!(
        "listen_address: 127.0.0.1:{admin}\nclusters:\n  fake:\n    hosts: ['http://127.0.0.1:{api_port}']\n    ports:\n      ro: {{listen: 127.0.0.1:{port}, roles: [async]}}\n"
    );
    let pg = Pgvane::start(&yaml, admin);
    let c = connect(port).await.unwrap();
    assert_eq!(c.whereami().await.unwrap().0, replica);
    assert_eq!(
        pg.metric("pgvane_connect_failures_total", &["node=\"a-dead\""]),
        1.0
    );
    // The dead node now backs off: the next client goes straight to the replica.
    let c2 = connect(port).await.unwrap();
    assert_eq!(c2.whereami().await.unwrap().0, replica);
    assert_eq!(
        pg.metric("pgvane_connect_failures_total", &["node=\"a-dead\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_ends_when_the_backend_is_gone_and_the_client_idles() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    // A client that logs in through the leader port, then never reads or
    // writes again.
    let mut idle = raw::Raw::login(p.rw, &[]).await;
    let pid = raw::texts(&idle.simple("select pg_backend_pid()").await)[0].clone();
    let relayed = || pg.metric("pgvane_clients{", &["port=\"rw\""]);
    assert_eq!(relayed(), 1.0);
    let leader = connect_node(&leader()).await;
    leader
        .execute(&format!("select pg_terminate_backend({pid})"), &[])
        .await
        .unwrap();
    let ended = wait_until(Duration::from_secs(10), || relayed() == 0.0);
    assert!(
        ended,
        "relay kept after its backend exited:\n{}",
        pg.log_text()
    );
    // The client was told why before the close, as PostgreSQL tells it.
    let msgs = idle.until(b'E').await;
    assert_eq!(raw::error_code(&msgs).as_deref(), Some("57P01"));
    assert!(idle.read().await.is_none(), "socket still open");
}

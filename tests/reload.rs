//! Reload (patroni_proxy's SIGHUP scenario restated, and more): SIGHUP and
//! POST /reload add, change and remove ports by diff; clients of unchanged
//! ports stay connected; an invalid file is rejected whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_changes_removes_ports_and_keeps_unaffected_clients() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let rw = connect(p.rw).await.unwrap();
    let ro = connect(p.ro).await.unwrap();
    let any = connect(p.any).await.unwrap();
    let any_node = any.whereami().await.unwrap().0;
    let extra = free_port();
    // Add a port, remove `ro`, change `any` to leader-only.
    let new = lab_config(&p)
        .replace(&format!("      ro: {{listen: 127.0.0.1:{}, roles: [sync, async], max_lag_in_bytes: 16777216}}\n", p.ro), "")
        .replace("roles: [any]}", &format!("roles: [leader]}}\n      extra: {{listen: 127.0.0.1:{extra}, roles: [async]}}"));
    pg.rewrite_config(&new);
    pg.signal("HUP");
    let added = wait_until_async(Duration::from_secs(10), || async {
        connect(extra).await.is_ok()
    })
    .await;
    assert!(added, "added port not listening:\n{}", pg.log_text());
    let c = connect(extra).await.unwrap();
    assert!(
        c.whereami().await.unwrap().1,
        "extra port serves async replicas"
    );
    // Unchanged port: its client never noticed.
    assert!(rw.alive().await);
    // Changed port: clients stay unless their node stopped qualifying.
    let leader = leader();
    if any_node == leader {
        assert!(
            any.alive().await,
            "client on the leader still qualifies for the changed port"
        );
    } else {
        assert!(wait_until_async(Duration::from_secs(5), || async { !any.alive().await }).await);
    }
    let c = connect(p.any).await.unwrap();
    assert_eq!(c.whereami().await.unwrap().0, leader);
    // Removed port: no new clients; the existing one drains (it may finish).
    assert!(
        wait_until_async(Duration::from_secs(5), || async {
            connect(p.ro).await.is_err()
        })
        .await
    );
    assert!(
        ro.alive().await,
        "removed port drains instead of cutting clients at once"
    );
    assert!(pg.log_text().contains("configuration reloaded"));
    assert_eq!(pg.metric("pgvane_reloads_total", &["result=\"ok\""]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_reload_is_rejected_and_old_config_keeps_running() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let rw = connect(p.rw).await.unwrap();
    pg.rewrite_config(
        &lab_config(&p)
            .replace("roles: [leader]", "roles: [master]")
            .replace("cluster_update_interval: 1", "cluster_update_interval: 0"),
    );
    let (status, body) = pg.http("POST", "/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("clusters.lab.ports.rw.roles[0]") && body.contains("master"),
        "{body}"
    );
    assert!(
        body.contains("cluster_update_interval"),
        "all problems at once: {body}"
    );
    pg.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || pg
        .metric("pgvane_reloads_total", &["result=\"error\""])
        == 2.0));
    assert!(rw.alive().await);
    let c = connect(p.rw).await.unwrap();
    assert!(!c.whereami().await.unwrap().1);
    // A port whose address is taken: rejected before anything changes.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().port();
    pg.rewrite_config(&format!(
        "{}      x: {{listen: 127.0.0.1:{taken}, roles: [any]}}\n",
        lab_config(&p)
    ));
    let (status, body) = pg.http("POST", "/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("clusters.lab.ports.x.listen"), "{body}");
    assert!(connect(p.ro).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_change_applies_at_once() {
    healthy_lab();
    let p = Ports::new();
    let dead = free_port();
    // Start with only a dead Patroni host: nothing qualifies.
    let yaml = lab_config(&p).replace(
        "hosts: [http://127.0.0.11:8008, http://127.0.0.12:8008, http://127.0.0.13:8008]",
        &format!("hosts: [http://127.0.0.1:{dead}]"),
    );
    // A Pgvane, so the process is stopped even when an assertion fails.
    let mut pg = Pgvane::start_unready(&yaml, p.admin);
    assert_eq!(http(p.admin, "GET", "/ready").unwrap().0, 503);
    let (code, _) = connect_err(p.rw).await;
    assert_eq!(code, "57P03");
    pg.rewrite_config(&lab_config(&p));
    let (status, body) = http(p.admin, "POST", "/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(10), || http(
        p.admin, "GET", "/ready"
    )
    .unwrap()
    .0 == 200));
    // Ready means a Patroni answer came; the leader also takes clients only
    // once its own /patroni said primary, which a node whose REST API is
    // restarting (a test before this one toggles its TLS) may miss for a
    // round. Within a few rounds it must route.
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        match connect(p.rw).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reload: rw not routing yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "rw never routed after the hosts changed: {e}; {}",
                http(p.admin, "GET", "/clusters").map_or_else(String::new, |(_, b)| b)
            ),
        }
    };
    assert!(!c.whereami().await.unwrap().1);
    assert!(pg.stop().success());
}

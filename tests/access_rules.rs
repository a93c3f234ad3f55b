//! Per-port access rules (`access:`, like pg_hba.conf allow lines) against
//! the real lab: a split port admits by client network, user and database
//! and refuses the rest with 28000 in PostgreSQL's words after the startup
//! packet; a role port admits by network only; a SIGHUP that widens the
//! rules lets new clients in without dropping connected ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn access_rules_admit_and_refuse_like_pg_hba() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let yaml = lab_config(&p)
        .replace(
            "    ports:\n",
            &format!(
                "    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], access: [{{address: 127.0.0.2/32, users: [postgres], databases: [postgres]}}, {{address: 127.0.0.4/32, tls: true}}]}}\n"
            ),
        )
        .replace(
            "roles: [leader], host_port: 5432}",
            "roles: [leader], host_port: 5432, access: [{address: 127.0.0.2/32}]}",
        );
    let pg = Pgvane::start(&yaml, p.admin);

    // Split port: the listed network, user and database get in.
    let admitted = connect_from("127.0.0.2", split, "postgres").await.unwrap();
    let row = admitted
        .client
        .query_one("select 1 + 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    // Another address, another database, a TLS-only rule: 28000.
    let refusals = [
        (
            "127.0.0.1",
            "postgres",
            "host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption",
        ),
        (
            "127.0.0.2",
            "template1",
            "host \"127.0.0.2\", user \"postgres\", database \"template1\", no encryption",
        ),
        (
            "127.0.0.4",
            "postgres",
            "host \"127.0.0.4\", user \"postgres\", database \"postgres\", no encryption",
        ),
    ];
    for (ip, db, text) in refusals {
        let Err((code, message)) = connect_from(ip, split, db).await else {
            panic!("{ip} admitted to {db}");
        };
        assert_eq!(code, "28000", "{message}");
        assert_eq!(message, format!("no pg_hba.conf entry for {text}"));
    }

    // Role port: the network alone decides; the relay reaches the leader.
    let relayed = connect_from("127.0.0.2", p.rw, "postgres").await.unwrap();
    let (_, in_recovery) = relayed.whereami().await.unwrap();
    assert!(!in_recovery, "rw port reached a replica");
    let Err((code, message)) = connect_from("127.0.0.3", p.rw, "postgres").await else {
        panic!("127.0.0.3 admitted to the role port");
    };
    assert_eq!(code, "28000", "{message}");
    assert_eq!(message, "no pg_hba.conf entry for host \"127.0.0.3\"");
    // Refusals are counted by SQLSTATE.
    let counted = pg.metric("pgvane_client_errors_total", &["28000"]);
    assert!(counted >= 4.0, "28000 refusals counted: {counted}");

    // A reload widens both ports: new clients get in, connected ones stay.
    let yaml = std::fs::read_to_string(&pg.config)
        .unwrap()
        .replace("127.0.0.2/32", "127.0.0.0/8");
    pg.rewrite_config(&yaml);
    pg.signal("HUP");
    let widened = wait_until_async(Duration::from_secs(10), || async {
        connect_from("127.0.0.3", p.rw, "postgres").await.is_ok()
            && connect_from("127.0.0.1", split, "postgres").await.is_ok()
    })
    .await;
    assert!(widened, "rules not widened by SIGHUP:\n{}", pg.log_text());
    assert!(admitted.alive().await, "split client dropped by the reload");
    assert!(relayed.alive().await, "role client dropped by the reload");
}

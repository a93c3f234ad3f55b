//! Client limits across ports against the real lab: `max_clients_per_address`
//! counts one address over role and split ports together and refuses the
//! next with 53300 while other addresses still get in; the global
//! `max_clients` caps all ports together; both free their slot when a client
//! leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

fn config(limits: &str) -> (Pgvane, Ports, u16) {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let yaml = format!("{limits}\n{}", split_config(&p, split));
    (Pgvane::start(&yaml, p.admin), p, split)
}

async fn refused_with(ip: &str, port: u16) -> String {
    match connect_from(ip, port, "postgres").await {
        Ok(_) => panic!("{ip} admitted to {port} past the limit"),
        Err((code, message)) => {
            assert_eq!(code, "53300", "{message}");
            message
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_limit_spans_ports_and_frees_on_leave() {
    let (pg, p, split) = config("max_clients_per_address: 2");
    let first = connect_from("127.0.0.2", p.rw, "postgres").await.unwrap();
    let second = connect_from("127.0.0.2", split, "postgres").await.unwrap();
    for port in [p.rw, split, p.any] {
        let text = refused_with("127.0.0.2", port).await;
        assert_eq!(
            text,
            "pgvane: too many connections from host \"127.0.0.2\" (max_clients_per_address)"
        );
    }
    // Another address is not affected.
    let other = connect_from("127.0.0.3", split, "postgres").await.unwrap();
    assert!(other.alive().await && first.alive().await && second.alive().await);
    // A client that leaves frees its address's slot.
    drop(first);
    let freed = wait_until_async(Duration::from_secs(10), || async {
        connect_from("127.0.0.2", p.ro, "postgres").await.is_ok()
    })
    .await;
    assert!(freed, "slot not freed:\n{}", pg.log_text());
    assert!(pg.metric("pgvane_client_errors_total", &["53300"]) >= 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_limit_caps_all_ports_together() {
    let (pg, p, split) = config("max_clients: 2");
    let a = connect_from("127.0.0.2", p.rw, "postgres").await.unwrap();
    let b = connect_from("127.0.0.3", split, "postgres").await.unwrap();
    for port in [p.any, split] {
        let text = refused_with("127.0.0.4", port).await;
        assert_eq!(text, "sorry, too many clients already");
    }
    assert!(a.alive().await && b.alive().await);
    drop(b);
    let freed = wait_until_async(Duration::from_secs(10), || async {
        connect_from("127.0.0.4", p.any, "postgres").await.is_ok()
    })
    .await;
    assert!(freed, "slot not freed:\n{}", pg.log_text());
}

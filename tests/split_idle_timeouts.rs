//! Split-port clients that hold a backend and go quiet: idle in a
//! transaction past `idle_in_transaction_timeout_ms` (25P03, its
//! transaction rolled back) or pinned past `pinned_idle_timeout_ms`
//! (57P05) are disconnected with PostgreSQL's errors, and the backend
//! they held serves the next client clean. An idle client that holds no
//! backend is never timed out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// A client whose connection task reports the error that ended it.
async fn watched(
    port: u16,
) -> (
    tokio_postgres::Client,
    tokio::sync::oneshot::Receiver<Option<String>>,
) {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=10"
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let code = conn
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
        let _ = tx.send(code);
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_holders_are_disconnected_and_their_backend_comes_back_clean() {
    healthy_lab();
    let (_pg, split) = start_split(
        "roles: [sync, async], pool_size: 2, idle_in_transaction_timeout_ms: 1000, pinned_idle_timeout_ms: 1500",
    );
    let setup = connect(split).await.unwrap();
    setup
        .client
        .batch_execute("create table if not exists idle_to(x int); truncate idle_to")
        .await
        .unwrap();
    drop(setup);
    let quiet = connect(split).await.unwrap();

    let (in_tx, in_tx_end) = watched(split).await;
    in_tx
        .batch_execute("begin; insert into idle_to values (1)")
        .await
        .unwrap();
    // Each client's idle time counts from its last answer.
    let t0 = Instant::now();
    let (pinned, pinned_end) = watched(split).await;
    pinned
        .batch_execute("create temp table idle_pin(x int)")
        .await
        .unwrap();
    let t1 = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(5), in_tx_end)
        .await
        .expect("idle-in-transaction client kept past 5 s")
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(code.as_deref(), Some("25P03"), "after {took:?}");
    assert!(took >= Duration::from_millis(900), "ended after {took:?}");
    let code = tokio::time::timeout(Duration::from_secs(5), pinned_end)
        .await
        .expect("pinned idle client kept past 5 s")
        .unwrap();
    assert_eq!(code.as_deref(), Some("57P05"));
    assert!(
        t1.elapsed() >= Duration::from_millis(1400),
        "ended after {:?}",
        t1.elapsed()
    );

    // Nothing of theirs is left: the row was rolled back, the temp table is
    // gone, and the pool's backends (2) serve new clients outside any
    // transaction.
    for _ in 0..4 {
        let c = connect(split).await.unwrap();
        // Simple protocol: outside a transaction block now() is this
        // statement's own start.
        let row = c
            .client
            .simple_query(
                "select (select count(*) from idle_to), \
                 (select count(*) from pg_class where relname = 'idle_pin'), \
                 now() = statement_timestamp()",
            )
            .await
            .unwrap()
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..3)
                        .map(|i| r.get(i).unwrap().to_owned())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .unwrap();
        assert_eq!(row[0], "0", "an idle transaction's row was committed");
        assert_eq!(row[1], "0", "the pinned client's temp table survived");
        assert_eq!(row[2], "t", "a backend was still inside a transaction");
    }
    assert!(
        quiet.alive().await,
        "an idle client holding no backend was timed out"
    );
}

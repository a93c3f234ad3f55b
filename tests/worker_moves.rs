//! Split sessions moving between worker runtimes between requests (worker
//! packing), forced to happen all the time: with
//! `PGVANE_TEST_ROTATE_WORKERS` the number of active workers flips between
//! one and two every heartbeat, so every idle session keeps moving. Eight
//! clients meanwhile use what a session carries across a move: named
//! prepared statements, a session setting, transactions and their own
//! rows. Every request must succeed and see what it should, and the moves
//! must have happened (`pgvane_session_moves_total`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// pgvane on two worker threads, rotating them.
fn start_rotating(yaml: &str, admin: u16) -> Pgvane {
    let env = [("PGVANE_TEST_ROTATE_WORKERS", std::ffi::OsStr::new("1"))];
    Pgvane::start_args(yaml, admin, &env, &["--threads", "2"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_state_while_moving_between_workers() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pv = start_rotating(&split_config(&p, split), p.admin);
    let setup = connect(split).await.unwrap();
    setup
        .client
        .batch_execute("drop table if exists moves_t; create table moves_t (client int, n int)")
        .await
        .unwrap();

    let clients: Vec<_> = (0..8)
        .map(|id: i32| {
            tokio::spawn(async move {
                let c = connect(split).await.unwrap();
                let app = format!("mover-{id}");
                c.client
                    .batch_execute(&format!("set application_name = '{app}'"))
                    .await
                    .unwrap();
                let insert = c
                    .client
                    .prepare("insert into moves_t values ($1, $2)")
                    .await
                    .unwrap();
                let started = Instant::now();
                let mut done = 0;
                // Bounded in count and time.
                for n in 0..400 {
                    if started.elapsed() > Duration::from_secs(8) {
                        break;
                    }
                    c.client.batch_execute("begin").await.unwrap();
                    c.client.execute(&insert, &[&id, &n]).await.unwrap();
                    let row = c
                        .client
                        .query_one("select count(*) from moves_t where client = $1", &[&id])
                        .await
                        .unwrap();
                    c.client.batch_execute("commit").await.unwrap();
                    assert_eq!(row.get::<_, i64>(0), i64::from(n) + 1, "client {id}");
                    let shown = c
                        .client
                        .simple_query("show application_name")
                        .await
                        .unwrap();
                    let value = shown.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    assert_eq!(value.as_deref(), Some(app.as_str()), "client {id}");
                    done += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for c in clients {
        total += c.await.expect("a client failed");
    }
    let moves = pv.metric("pgvane_session_moves_total", &[]);
    eprintln!("worker moves: {total} transactions by 8 clients, {moves} session moves");
    assert!(total >= 8 * 50, "{total} transactions");
    assert!(moves >= 20.0, "sessions moved between workers: {moves}");
    let direct = connect_node(&leader()).await;
    let rows: i64 = direct
        .query_one("select count(*) from moves_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, i64::from(total), "every commit kept once");
    direct.batch_execute("drop table moves_t").await.unwrap();
}

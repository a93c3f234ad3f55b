//! A split port's pools keep each client worker's idle backends apart
//! (`src/pool/idle.rs`): while a pool has room, a worker with no idle
//! backend of its own opens one rather than take another worker's, so
//! once each worker has its own no backend socket moves between workers
//! (`pgvane_pool_backend_moves_total` stays at zero). The control: with
//! `pool_size: 1` the two workers share each node's only backend, which
//! must move, and the counter shows it (so the first check can fail).
//! Backends left idle on a worker whose clients are gone still close
//! after `server_idle_timeout_ms` (nothing takes from that list again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Clients at once: two per worker.
const CLIENTS: i32 = 4;

/// Runs [`CLIENTS`] clients on the split port, each reading (replicas) and
/// writing (leader) in turn, at most `rounds` rounds and 10 s; every
/// answer checked. The requests served.
async fn busy_clients(split: u16, rounds: i32) -> i32 {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(async move {
                let c = connect(split).await.unwrap();
                let started = Instant::now();
                let mut served = 0;
                for n in 0..rounds {
                    if started.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    let read = c
                        .client
                        .query_one("select $1::int + 1", &[&n])
                        .await
                        .unwrap();
                    assert_eq!(read.get::<_, i32>(0), n + 1, "client {id}");
                    let write = c
                        .client
                        .query_one(
                            "insert into pool_workers_t values ($1, $2) returning n",
                            &[&id, &n],
                        )
                        .await
                        .unwrap();
                    assert_eq!(write.get::<_, i32>(0), n, "client {id}");
                    served += 2;
                }
                served
            })
        })
        .collect();
    let mut served = 0;
    for c in clients {
        served += c.await.unwrap();
    }
    served
}

/// Starts pgvane on two workers with `pool_size`, runs the clients, and
/// returns (requests served, backends moved between workers).
async fn moves_with_pool_size(size: u32) -> (i32, f64) {
    let p = Ports::new();
    let split = free_port();
    let yaml = split_config(&p, split).replace("pool_size: 8,", &format!("pool_size: {size},"));
    let mut pv = Pgvane::start_args(&yaml, p.admin, &[], &["--threads", "2"]);
    let setup = connect(split).await.unwrap();
    setup
        .client
        .batch_execute(
            "create table if not exists pool_workers_t (client int, n int); \
             truncate pool_workers_t",
        )
        .await
        .unwrap();
    drop(setup);
    let served = busy_clients(split, 150).await;
    let moved = pv.metric("pgvane_pool_backend_moves_total", &[]);
    pv.stop();
    eprintln!("pool_size {size}: {served} requests, {moved} backends moved");
    (served, moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_their_own_backends_while_the_pool_has_room() {
    healthy_lab();
    let (served, moved) = moves_with_pool_size(8).await;
    assert!(served >= 100, "only {served} requests served");
    assert_eq!(
        moved, 0.0,
        "backends moved between workers over {served} requests"
    );

    // Control: one backend per node, shared by both workers, must move.
    let (served, moved) = moves_with_pool_size(1).await;
    assert!(served >= 100, "only {served} requests served");
    assert!(
        moved >= 1.0,
        "no move counted over {served} requests with pool_size 1"
    );
}

/// Open backends of the port's pools, all nodes.
fn open_backends(pv: &Pgvane) -> f64 {
    pv.metric("pgvane_pool_backends", &["state=\"open\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_clients_keeps_no_backend_past_the_idle_timeout() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let yaml = split_config(&p, split).replace(
        "pool_size: 8,",
        "pool_size: 8, server_idle_timeout_ms: 500,",
    );
    let mut pv = Pgvane::start_args(&yaml, p.admin, &[], &["--threads", "2"]);
    // Four clients (two per worker) reading at once: each worker opens
    // backends of its own.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(split).await.unwrap());
    }
    for _ in 0..10 {
        let reads = clients.iter().map(|c| c.client.simple_query("select 1"));
        for r in futures_util::future::join_all(reads).await {
            r.unwrap();
        }
    }
    let before = open_backends(&pv);
    assert!(
        before >= 4.0,
        "only {before} backends opened by four clients"
    );
    // One client stays (on one worker); the other worker's lists are
    // used no more.
    let last = clients.remove(0);
    drop(clients);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut open = before;
    while std::time::Instant::now() < deadline {
        last.client.simple_query("select 1").await.unwrap();
        open = open_backends(&pv);
        if open <= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pv.stop();
    assert!(
        open <= 2.0,
        "{open} backends still open of {before}, one client left"
    );
}

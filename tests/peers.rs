//! Two pgvane instances behind a round-robin TCP balancer: a split-port
//! CancelRequest that reaches the instance that did not issue the key is
//! forwarded to the one that did (`peer_id` + `peers`), as pgbouncer's
//! peers do. Negative control: without peers the same cancel is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A TCP balancer on loopback sending connection n to `upstreams[n % 2]`;
/// its port.
async fn round_robin(upstreams: [String; 2]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let to = upstreams[n.fetch_add(1, Ordering::SeqCst) % 2].clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

/// Both instances' configs: the split port on the same port number at
/// 127.0.0.1 (A) and 127.0.0.2 (B), each with its own role ports.
fn instances(split: u16, with_peers: bool) -> (Pgvane, Pgvane) {
    let start = |id: u16, ip: &str| {
        let p = Ports::new();
        let peers = if with_peers {
            format!("peer_id: {id}\npeers: {{1: 127.0.0.1, 2: 127.0.0.2}}\n")
        } else {
            String::new()
        };
        let yaml = format!("{peers}{}", split_config_opts(&p, split, "roles: [any]"))
            .replace(&format!("127.0.0.1:{split}"), &format!("{ip}:{split}"));
        Pgvane::start(&yaml, p.admin)
    };
    (start(1, "127.0.0.1"), start(2, "127.0.0.2"))
}

/// Connections an instance's split port accepted (sessions and cancels).
fn accepted(pv: &Pgvane) -> f64 {
    pv.metric("pgvane_clients_accepted_total", &["port=\"app\""])
}

/// Runs `select pg_sleep(secs)` through the balancer (on A), cancels it
/// through the balancer (which sends the cancel to B) once it runs;
/// returns the query's SQLSTATE (None: it finished) and how long it took.
async fn sleep_and_cancel(balancer: u16, secs: u32) -> (Option<String>, Duration) {
    let c = connect(balancer).await.unwrap();
    let token = c.client.cancel_token();
    let sql = format!("select pg_sleep({secs}) /* pgvane-peers */");
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let r = c.client.simple_query(&sql).await;
        (
            r.err().and_then(|e| e.code().map(|c| c.code().to_owned())),
            started.elapsed(),
        )
    });
    // Wait until a node runs it.
    let running = wait_until_async(Duration::from_secs(10), || async {
        for n in NODES {
            let node = connect_node(n).await;
            let row = node
                .query_one(
                    "select count(*) from pg_stat_activity where query like 'select pg_sleep(%) /* pgvane-peers */'",
                    &[],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return true;
            }
        }
        false
    })
    .await;
    assert!(running, "the query never ran");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    query.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaching_the_other_instance_is_forwarded() {
    healthy_lab();
    let split = free_port();
    let (a, b) = instances(split, true);
    let balancer = round_robin([format!("127.0.0.1:{split}"), format!("127.0.0.2:{split}")]).await;
    let (code, took) = sleep_and_cancel(balancer, 20).await;
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "not cancelled (after {took:?})"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The session was on A and the cancel reached B, which forwarded it.
    assert_eq!(accepted(&a), 2.0, "A: the session and the forwarded cancel");
    assert_eq!(accepted(&b), 1.0, "B: the cancel from the balancer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_peers_the_cancel_is_lost() {
    healthy_lab();
    let split = free_port();
    let (a, b) = instances(split, false);
    let balancer = round_robin([format!("127.0.0.1:{split}"), format!("127.0.0.2:{split}")]).await;
    let (code, took) = sleep_and_cancel(balancer, 4).await;
    assert_eq!(code, None, "cancelled without peers?");
    assert!(took >= Duration::from_millis(3900), "{took:?}");
    assert_eq!((accepted(&a), accepted(&b)), (1.0, 1.0));
}

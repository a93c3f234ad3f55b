//! Split port through a switchover under a steady read/write load: writes
//! reach the new leader as soon as the map changes, reads keep working, and
//! no commit a client was told about is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_load_loses_no_acknowledged_commit() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&split_config(&p, split), p.admin);
    let setup = connect(split).await.unwrap();
    setup
        .client
        .batch_execute(
            "create table if not exists split_fo(id bigint primary key); truncate split_fo",
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let (mut acked, mut errors, mut id) = (Vec::new(), 0u32, 0i64);
            let mut c = connect(split).await.ok();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                id += 1;
                let ok = match &c {
                    Some(cl) => tokio::time::timeout(
                        Duration::from_secs(5),
                        cl.client
                            .execute("insert into split_fo values ($1)", &[&id]),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    None => false,
                };
                if ok {
                    acked.push(id);
                } else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if c.as_ref().is_none_or(|cl| cl.client.is_closed()) {
                        c = connect(split).await.ok();
                    }
                }
            }
            (acked, errors)
        }
    });
    let reader = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let c = connect(split).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match c.client.simple_query("select count(*) from split_fo").await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = leader();
    let t0 = Instant::now();
    lab(&["switchover"]);
    let new = leader();
    assert_ne!(old, new);
    // Writes reach the new leader once pgvane's map has it.
    let probe = connect(split).await.unwrap();
    let mut reached = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(row) = probe.client.query_one("insert into split_fo values (-1 * (extract(epoch from clock_timestamp()) * 1000000)::bigint) returning host(inet_server_addr())", &[]).await {
            if node_of_ip(row.get(0)) == new {
                reached = Some(t0.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.await.unwrap();
    let (reads_ok, reads_failed) = reader.await.unwrap();
    let reached =
        reached.unwrap_or_else(|| panic!("writes never reached {new}:\n{}", pg.log_text()));
    eprintln!(
        "split failover: writes reached the new leader {reached:?} after the switchover began; {} writes acknowledged, {errors} failed; reads {reads_ok} ok, {reads_failed} failed",
        acked.len()
    );
    assert!(acked.len() > 50, "too few writes: {}", acked.len());
    // Every acknowledged id is on the new leader.
    let check = connect(p.rw).await.unwrap();
    let rows = check
        .client
        .query("select id from split_fo where id > 0", &[])
        .await
        .unwrap();
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    lab(&["wait-healthy"]);
}

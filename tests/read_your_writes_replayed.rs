//! Read-your-writes when the replicas keep up (no apply delay): a session's
//! reads after its own writes carry a floor, wait for a replica to replay it
//! (`read_your_writes_wait_ms: 200`, positions polled every 20 ms) and are
//! served there. The delayed tests in `read_your_writes.rs` send every such
//! read to the leader, so an implementation that never used replicas for a
//! floored read would pass them; this one would catch it. Apart from them
//! because it needs the lab without a delay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::ryw::*;
use common::*;
use std::time::{Duration, Instant};

/// The probe table and pgvane with a session-scope split port (wait 200
/// ms, positions every 20 ms), once the lab has no apply delay; the watch
/// fails the test if someone sets one meanwhile.
fn start_undelayed() -> (Pgvane, u16, DelayWatch) {
    healthy_lab();
    setup_probe();
    // The lab is shared: someone else's delay would make this meaningless.
    let free = wait_until(Duration::from_secs(600), || {
        configured_delay().is_some_and(|d| d.is_empty())
    });
    assert!(
        free,
        "the lab has someone else's apply delay for 10 minutes"
    );
    let watch = DelayWatch::start();
    let (p, split) = (Ports::new(), free_port());
    let yaml = cluster_fields(
        &split_config_opts(
            &p,
            split,
            "roles: [sync, async], pool_size: 8, read_your_writes: session, read_your_writes_wait_ms: 200",
        ),
        "replica_position_poll_ms: 20\n",
    );
    (Pgvane::start(&yaml, p.admin), split, watch)
}

#[tokio::test(flavor = "multi_thread")]
async fn floored_reads_go_to_replicas_that_replayed_them() {
    let (pg, split, watch) = start_undelayed();
    let lead = leader();
    let c = connect(split).await.unwrap();
    let t0 = Instant::now();
    let t = tokio::time::timeout(Duration::from_secs(120), async {
        let mut t = Tally::default();
        for _ in 0..500 {
            let w = write(&c.client, 13).await;
            t.add(w, read(&c.client, 13).await, &lead);
        }
        t
    })
    .await
    .expect("500 pairs within 120 s");
    let took = t0.elapsed();
    t.report("session, no delay, wait 200 ms", &pg);
    eprintln!(
        "ryw no delay: {:?} per pair on average",
        took / t.pairs.max(1)
    );
    watch.assert_only("");
    assert_eq!(t.stale, 0, "{t:?}");
    assert!(
        t.replica_share() >= 0.8,
        "only {:.1}% of floored reads on replicas that keep up: {t:?}",
        100.0 * t.replica_share()
    );
}

/// Asynchronous commits (CONSISTENCY.md §4, scenario a): with
/// `synchronous_commit = off` the commit returns before its record is
/// flushed, so the flush position can sit below it; pgvane then takes the
/// insert position as the floor. Replicas replaying at full speed must
/// still show every write, for a session-wide `SET` and for a `SET LOCAL`
/// inside the writing transaction (reverted by the time of COMMIT).
#[tokio::test(flavor = "multi_thread")]
async fn asynchronous_commits_are_read_back() {
    let (pg, split, watch) = start_undelayed();
    let lead = leader();
    let c = connect(split).await.unwrap();
    let t = tokio::time::timeout(Duration::from_secs(120), async {
        let mut t = Tally::default();
        c.client
            .batch_execute("set synchronous_commit = off")
            .await
            .unwrap();
        for _ in 0..300 {
            let w = write(&c.client, 14).await;
            t.add(w, read(&c.client, 14).await, &lead);
        }
        c.client
            .batch_execute("set synchronous_commit = on")
            .await
            .unwrap();
        for _ in 0..200 {
            c.client.batch_execute("begin").await.unwrap();
            c.client
                .batch_execute("set local synchronous_commit = off")
                .await
                .unwrap();
            let w = write(&c.client, 14).await;
            c.client.batch_execute("commit").await.unwrap();
            t.add(w, read(&c.client, 14).await, &lead);
        }
        t
    })
    .await
    .expect("500 pairs within 120 s");
    t.report(
        "session, synchronous_commit off (SET and SET LOCAL), no delay",
        &pg,
    );
    watch.assert_only("");
    assert_eq!(t.stale, 0, "{t:?}");
    assert!(
        pg.metric("pgvane_ryw_captures_total", &["outcome=\"ok\""]) >= 500.0,
        "every commit captured"
    );
}

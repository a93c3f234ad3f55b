//! Read-your-writes by WAL position on a split port, measured with the
//! oracle of CONSISTENCY.md §4 (`tests/common/ryw.rs`) while the lab's
//! replicas apply WAL 3 s late (`lab.sh delay 3000`, undone by the `Delay`
//! guard even when a test panics): a read is stale when it shows less than
//! a write acknowledged before it was sent. Scopes `session`, `user` and
//! `cluster`, the `pgvane.last_write_lsn` / `pgvane.min_lsn` token across two
//! pgvane processes, reads without a floor, and the leader retry of a
//! replica's refusal. The negative controls (`off`; `session` across
//! connections; `user` across pgvane processes) must see stale reads: they
//! prove the delay works, so a zero elsewhere means something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::ryw::*;
use common::*;
use std::time::Duration;
use tokio_postgres::types::Type;

/// Replicas this far behind: well past `read_your_writes_wait_ms` (20) and
/// the old window (1 s), short enough for the set-up and catch-up.
const DELAY_MS: u64 = 3000;

const WRITE: &str = "update ryw_probe set v = v + 1 where k = $1 returning v";
const READ: &str = "select v, host(inet_server_addr()) from ryw_probe where k = $1";

/// The split port's options with read-your-writes scope `scope`.
fn opts(scope: &str) -> String {
    format!("roles: [sync, async], pool_size: 8, read_your_writes: {scope}")
}

/// The probe table, then pgvane with one split port in scope `scope`.
fn start(scope: &str) -> (Pgvane, u16) {
    healthy_lab();
    setup_probe();
    start_split(&opts(scope))
}

/// Runs `work` with a deadline, so no scenario outlives its budget.
async fn bounded<T>(secs: u64, label: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .unwrap_or_else(|_| panic!("{label}: not done within {secs} s"))
}

#[tokio::test(flavor = "multi_thread")]
async fn session_reads_its_own_writes_in_every_protocol() {
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("session");
    let lead = leader();
    let c = connect(split).await.unwrap();
    let cl = &c.client;
    // s1, simple protocol: 1000 write-then-read pairs in one session.
    let simple = bounded(120, "simple", async {
        let mut t = Tally::default();
        for _ in 0..1000 {
            let w = write(cl, 1).await;
            t.add(w, read(cl, 1).await, &lead);
        }
        t
    })
    .await;
    simple.report("session, simple protocol", &pg);
    // Extended protocol, named statements (prepared once, run many times).
    let named = bounded(60, "extended named", async {
        let (ws, rs) = (
            cl.prepare(WRITE).await.unwrap(),
            cl.prepare(READ).await.unwrap(),
        );
        let mut t = Tally::default();
        for _ in 0..200 {
            let w: i64 = cl.query_one(&ws, &[&2i32]).await.unwrap().get(0);
            let r = cl.query_one(&rs, &[&2i32]).await.unwrap();
            t.add(w, (r.get(0), node_of_ip(r.get(1))), &lead);
        }
        t
    })
    .await;
    named.report("session, extended protocol, named statements", &pg);
    // Extended protocol, unnamed statements (Parse "" + Bind + Execute in
    // one round trip): a capture must not destroy the client's unnamed one.
    let unnamed = bounded(60, "extended unnamed", async {
        let mut t = Tally::default();
        for _ in 0..200 {
            let rows = cl.query_typed(WRITE, &[(&3i32, Type::INT4)]).await.unwrap();
            let w: i64 = rows[0].get(0);
            let rows = cl.query_typed(READ, &[(&3i32, Type::INT4)]).await.unwrap();
            t.add(w, (rows[0].get(0), node_of_ip(rows[0].get(1))), &lead);
        }
        t
    })
    .await;
    unnamed.report("session, extended protocol, unnamed statements", &pg);
    // Explicit transactions: BEGIN … COMMIT writes, a BEGIN READ ONLY read.
    let tx = bounded(60, "transactions", async {
        let mut t = Tally::default();
        for _ in 0..100 {
            cl.batch_execute("begin").await.unwrap();
            let w = write(cl, 4).await;
            cl.batch_execute("commit").await.unwrap();
            cl.batch_execute("begin read only").await.unwrap();
            let r = read(cl, 4).await;
            cl.batch_execute("commit").await.unwrap();
            t.add(w, r, &lead);
        }
        t
    })
    .await;
    tx.report("session, BEGIN…COMMIT then BEGIN READ ONLY", &pg);
    delay.assert_held();
    for (label, t) in [
        ("simple", &simple),
        ("named", &named),
        ("unnamed", &unnamed),
        ("transactions", &tx),
    ] {
        assert_eq!(t.stale, 0, "{label}: stale reads in session scope: {t:?}");
    }
    assert!(c.alive().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_reads_its_own_writes_after_the_old_window() {
    // s2: write, wait 1.2 s (past the old 1 s window), read. Today 20/20
    // stale (CONSISTENCY.md); with a floor, 0.
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("session");
    let lead = leader();
    let c = connect(split).await.unwrap();
    let t = bounded(90, "1.2 s later", async {
        let mut t = Tally::default();
        for _ in 0..20 {
            let w = write(&c.client, 5).await;
            tokio::time::sleep(Duration::from_millis(1200)).await;
            t.add(w, read(&c.client, 5).await, &lead);
        }
        t
    })
    .await;
    t.report("session, read 1.2 s after the write", &pg);
    delay.assert_held();
    assert_eq!(t.stale, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_off_reads_stale() {
    // Negative control: with read-your-writes off, the same session reads
    // stale data from the delayed replicas. Zero here means the delay did
    // not hold, and every zero in this file means nothing.
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("off");
    let lead = leader();
    let c = connect(split).await.unwrap();
    let t = bounded(60, "off", async {
        let mut t = Tally::default();
        for _ in 0..200 {
            let w = write(&c.client, 6).await;
            t.add(w, read(&c.client, 6).await, &lead);
        }
        t
    })
    .await;
    t.report("control: off, same session", &pg);
    delay.assert_held();
    assert!(
        t.stale > 0,
        "no stale read with read-your-writes off: the delay did not hold {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn control_session_scope_does_not_cover_another_connection() {
    // Negative control: session scope, connection A writes, B (same user)
    // reads at once: B has no floor, so it reads the delayed replicas.
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("session");
    let lead = leader();
    let (a, b) = (connect(split).await.unwrap(), connect(split).await.unwrap());
    let t = bounded(60, "session A/B", async {
        let mut t = Tally::default();
        for _ in 0..200 {
            let w = write(&a.client, 7).await;
            t.add(w, read(&b.client, 7).await, &lead);
        }
        t
    })
    .await;
    t.report("control: session scope, A writes, B reads", &pg);
    delay.assert_held();
    assert!(t.stale > 0, "B never read stale data: {t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_scope_covers_other_connections_of_the_user() {
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("user");
    let lead = leader();
    let (a, b) = (connect(split).await.unwrap(), connect(split).await.unwrap());
    let t = bounded(90, "user A/B", async {
        let mut t = Tally::default();
        for _ in 0..500 {
            let w = write(&a.client, 8).await;
            t.add(w, read(&b.client, 8).await, &lead);
        }
        t
    })
    .await;
    t.report("user scope, A writes, B reads", &pg);
    delay.assert_held();
    assert_eq!(t.stale, 0, "{t:?}");
}

/// Two pgvane processes on the same config (only the ports differ), scope
/// `scope`; `pairs` writes through #1 each read back through #2.
async fn across_two_pgvanes(scope: &str, key: i32, pairs: u32) -> (Tally, Pgvane, Pgvane) {
    let (pg1, port1) = start(scope);
    let (pg2, port2) = start_split(&opts(scope));
    let lead = leader();
    let (a, b) = (connect(port1).await.unwrap(), connect(port2).await.unwrap());
    let t = bounded(90, scope, async {
        let mut t = Tally::default();
        for _ in 0..pairs {
            let w = write(&a.client, key).await;
            t.add(w, read(&b.client, key).await, &lead);
        }
        t
    })
    .await;
    (t, pg1, pg2)
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_scope_covers_another_pgvane() {
    let delay = Delay::on(DELAY_MS);
    let (t, _pg1, pg2) = across_two_pgvanes("cluster", 9, 300).await;
    t.report("cluster scope, write via pgvane #1, read via #2", &pg2);
    delay.assert_held();
    assert_eq!(t.stale, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_user_scope_does_not_cover_another_pgvane() {
    // The documented limit: `user` covers writes through this pgvane only.
    let delay = Delay::on(DELAY_MS);
    let (t, _pg1, pg2) = across_two_pgvanes("user", 10, 200).await;
    t.report(
        "control: user scope, write via pgvane #1, read via #2",
        &pg2,
    );
    delay.assert_held();
    assert!(t.stale > 0, "pgvane #2 never read stale data: {t:?}");
}

/// `X/Y` (hex halves) as one number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_carries_the_floor_to_another_pgvane() {
    let delay = Delay::on(DELAY_MS);
    let (pg1, port1) = start("session");
    let (pg2, port2) = start_split(&opts("session"));
    let lead = leader();
    let (a, b) = (connect(port1).await.unwrap(), connect(port2).await.unwrap());
    let show = "show pgvane.last_write_lsn";
    assert_eq!(first_row(&b.client, show).await, ["0/0"], "no floor yet");
    let (t, last) = bounded(90, "token", async {
        let (mut t, mut last) = (Tally::default(), 0u64);
        for i in 0..200 {
            let w = write(&a.client, 11).await;
            let row = first_row(&a.client, show).await;
            assert_eq!(row.len(), 1, "one column: {row:?}");
            let floor = lsn(&row[0]);
            assert!(
                floor > 0 && floor >= last,
                "floor {} after {last:X}",
                row[0]
            );
            last = floor;
            let set = if i % 2 == 0 {
                format!("set pgvane.min_lsn = '{}'", row[0])
            } else {
                format!("set pgvane.min_lsn to '{}'", row[0])
            };
            b.client.batch_execute(&set).await.unwrap();
            t.add(w, read(&b.client, 11).await, &lead);
        }
        (t, last)
    })
    .await;
    t.report(
        "token: write via #1 (session), SET pgvane.min_lsn on #2",
        &pg2,
    );
    eprintln!(
        "token: captures on #1 = {}",
        pg1.metric("pgvane_ryw_captures_total", &[])
    );
    // The SET raised #2's session floor (pgvane answered it, PostgreSQL
    // never saw it: it has no such parameter).
    delay.assert_held();
    let b_floor = lsn(&first_row(&b.client, show).await[0]);
    assert!(
        b_floor >= last,
        "#2's floor {b_floor:X} below the token {last:X}"
    );
    assert_eq!(t.stale, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_without_a_floor_still_reach_replicas() {
    // p: a reader that never writes, while another session writes the row
    // it reads: no floor, so replicas serve it (stale or not: not its write).
    let delay = Delay::on(DELAY_MS);
    let (pg, split) = start("session");
    let lead = leader();
    let (writer, reader) = (connect(split).await.unwrap(), connect(split).await.unwrap());
    let t = bounded(60, "no floor", async {
        let mut t = Tally::default();
        for _ in 0..300 {
            write(&writer.client, 12).await;
            // w = 0: a read without a floor is never counted stale.
            t.add(0, read(&reader.client, 12).await, &lead);
        }
        t
    })
    .await;
    t.report("no floor: a reader that never writes", &pg);
    delay.assert_held();
    assert!(
        t.replica_share() >= 0.8,
        "only {:.1}% of reads without a floor on replicas: {t:?}",
        100.0 * t.replica_share()
    );
    let counted = pg.metric(
        "pgvane_ryw_reads_total",
        &["reason=\"no_floor\"", "target=\"replica\""],
    );
    assert!(
        counted >= 240.0,
        "pgvane_ryw_reads_total{{reason=no_floor,target=replica}} = {counted}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_refusal_is_retried_on_the_leader() {
    // `select * from v_writer` looks like a read, but the view's function
    // inserts: a replica refuses it with 25006, and pgvane runs it again on
    // the leader before the client saw anything. Each try on a fresh
    // session, so no floor sends it to the leader first.
    healthy_lab();
    setup_probe();
    let (pg, split) = start_split("roles: [sync, async], pool_size: 8");
    let retried = || {
        pg.metric(
            "pgvane_replica_refusals_retried_total",
            &["sqlstate=\"25006\""],
        )
    };
    let before = retried();
    let mut ids = Vec::new();
    bounded(60, "refusals", async {
        for i in 0..10 {
            let c = connect(split).await.unwrap();
            let id: i64 = if i % 2 == 0 {
                first_row(&c.client, "select * from v_writer").await[0]
                    .parse()
                    .unwrap()
            } else {
                c.client
                    .query_one("select * from v_writer", &[])
                    .await
                    .unwrap_or_else(|e| panic!("extended: {e:?}\n{}", pg.log_text()))
                    .get(0)
            };
            ids.push(id);
        }
    })
    .await;
    let grew = retried() - before;
    eprintln!(
        "refusal retry: 10 reads of v_writer returned ids {ids:?}; retried {grew} (25006); all refusals retried {}",
        pg.metric("pgvane_replica_refusals_retried_total", &[])
    );
    assert!(ids.iter().all(|i| *i > 0));
    // At least the first was refused and retried (pgvane may learn to send
    // the same text to the leader at once: that is fine too).
    assert!(grew >= 1.0, "refusals retried: {grew}");
    // Inside an explicit READ ONLY transaction the client gets the error.
    let c = connect(split).await.unwrap();
    c.client.batch_execute("begin read only").await.unwrap();
    let err = c
        .client
        .simple_query("select * from v_writer")
        .await
        .expect_err("a write in a READ ONLY transaction");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("25006"),
        "{err:?}"
    );
    c.client.batch_execute("rollback").await.unwrap();
    assert!(c.alive().await);
    assert!(
        retried() - before <= grew,
        "a refusal inside a transaction was retried"
    );
}

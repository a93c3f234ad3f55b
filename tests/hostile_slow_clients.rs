//! Slow and half-gone clients after login on a split port with one backend
//! per node, so any backend a bad client kept would stop the bystander:
//! slow-loris clients dribbling a query a byte at a time hold no backend; a
//! client that never reads its results keeps the leader's only backend
//! forever without `tcp_user_timeout_ms` (the control) and gives it back
//! at that timeout with it; a client that half-closes its socket still gets
//! every answer and its commit, and one that half-closes inside a
//! transaction has it rolled back. Each: other clients unaffected, file
//! descriptors and memory back to baseline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `select i::int` answers `i` on `c` within `within`.
async fn answers_within(c: &Client, i: i32, within: Duration) {
    let t = Instant::now();
    let row = tokio::time::timeout(within, c.client.query_one(&format!("select {i}::int"), &[]))
        .await
        .unwrap_or_else(|_| panic!("select {i} took over {within:?}"))
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i);
    assert!(t.elapsed() < within);
}

/// Runs a transaction (so on the leader) on `c`, failing with `what`
/// unless it is done within `within`.
async fn transaction_within(c: &Client, within: Duration, what: &str) {
    tokio::time::timeout(within, c.client.batch_execute("begin; select 1; commit"))
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_loris_clients_after_login_hold_no_backend() {
    let (pg, split) =
        start_split("roles: [sync, async], pool_size: 1, pool_acquire_timeout_ms: 3000");
    let pid = pg.child.id();
    let c = connect(split).await.unwrap();
    let (fds, rss) = (open_fds(pid), rss_kib(pid));
    let mut loris = Vec::new();
    for _ in 0..10 {
        loris.push(Raw::login(split, &[]).await);
    }
    let whole = raw::query("select 'loris'");
    let t0 = Instant::now();
    for (i, byte) in whole[..whole.len() - 1].iter().enumerate() {
        for l in &mut loris {
            l.send(&[*byte]).await;
        }
        // Each bystander read and transaction must not wait for any
        // backend: a loris holding a replica's or the leader's only one
        // would make it wait up to 3 s and fail.
        answers_within(&c, i32::try_from(i).unwrap(), Duration::from_secs(2)).await;
        transaction_within(
            &c,
            Duration::from_secs(2),
            "the bystander's transaction waited for the leader's backend",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await; // the attack's pace
    }
    eprintln!(
        "slow clients: 10 clients dribbled a {}-byte query over {:?}, the bystander ran {} reads and transactions meanwhile",
        whole.len(),
        t0.elapsed(),
        whole.len() - 1
    );
    for l in &mut loris {
        l.send(&whole[whole.len() - 1..]).await;
        let got = l.until(b'Z').await;
        assert_eq!(raw::texts(&got), ["loris"]);
    }
    drop(loris);
    let after = assert_fds_back(pid, fds);
    let rss_after = rss_kib(pid);
    eprintln!("slow clients: fds {fds} -> {after}, RSS {rss} -> {rss_after} KiB");
    assert!(rss_after < rss + 16 * 1024, "RSS {rss} -> {rss_after} KiB");
    assert!(c.alive().await);
}

/// Starts pgvane with a split port whose pools have one backend each, and
/// a raw client that opens a transaction and asks for about 1 GB it never
/// reads (its query carries `tag`). Returns pgvane, the port and the client.
async fn never_reader(globals: &str, acquire_ms: u64, tag: &str) -> (Pgvane, u16, Raw) {
    let (pg, split) = start_split_with(
        globals,
        &format!("roles: [sync, async], pool_size: 1, pool_acquire_timeout_ms: {acquire_ms}"),
    );
    let mut h = Raw::login(split, &[]).await;
    h.send(&raw::query(&format!(
        "begin; select repeat('x', 10000) from generate_series(1, 100000) /* {tag} */"
    )))
    .await;
    // The query runs on the leader (so it holds the backend) before any
    // bystander comes.
    let leader = connect_node(&leader()).await;
    let running = wait_until_async(Duration::from_secs(10), || async {
        running_big_queries(&leader, tag).await > 0
    })
    .await;
    assert!(running, "the never-reader's query did not start");
    (pg, split, h)
}

/// Backends on `leader` running the never-reader's query tagged `tag`.
async fn running_big_queries(leader: &tokio_postgres::Client, tag: &str) -> i64 {
    leader
        .query_one(
            "select count(*) from pg_stat_activity where query like '%generate_series(1, 100000)%' and query like $1 and pid <> pg_backend_pid()",
            &[&format!("%/* {tag} */%")],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_gives_its_backend_back_at_tcp_user_timeout() {
    // Control: without tcp_user_timeout_ms the client keeps the leader's
    // only backend, as it would keep a PostgreSQL backend: a bystander's
    // transaction waits for it and gets 53400.
    let run = std::process::id();
    let (pg, split, stuck) = never_reader("", 2000, &format!("control-{run}")).await;
    let c = connect(split).await.unwrap();
    let e = c
        .client
        .batch_execute("begin; select 1; commit")
        .await
        .expect_err("the bystander's transaction got a leader backend");
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("53400"), "{e}");
    drop((c, stuck, pg));

    let tag = format!("timeout-{run}");
    let (pg, split, mut stuck) = never_reader("tcp_user_timeout_ms: 2000\n", 30_000, &tag).await;
    let pid = pg.child.id();
    let rss = rss_kib(pid);
    // The bystander's login waits for the leader's backend too.
    let t = Instant::now();
    let c = connect(split).await.unwrap();
    transaction_within(
        &c,
        Duration::from_secs(25),
        "the bystander's transaction did not get the leader's backend within 25 s",
    )
    .await;
    let waited = t.elapsed();
    answers_within(&c, 7, Duration::from_secs(5)).await;
    let rss_peak = rss_kib(pid);
    // The never-reader's connection was dropped: what the kernel had
    // buffered for it, then a reset or EOF.
    let mut sink = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), stuck.stream.read_to_end(&mut sink))
        .await
        .expect("the never-reader's socket ended");
    eprintln!(
        "slow clients: bystander waited {waited:?} for the never-reader's backend (tcp_user_timeout_ms 2000); \
         the never-reader then read {} bytes and {end:?}; RSS {rss} -> {rss_peak} KiB",
        sink.len()
    );
    assert!(
        sink.len() < 100 * 1024 * 1024,
        "the never-reader got {} bytes: it was not stopped",
        sink.len()
    );
    assert!(rss_peak < rss + 32 * 1024, "RSS {rss} -> {rss_peak} KiB");
    // Its transaction ended with it: the leader has no pgvane backend left
    // idle in transaction or stuck writing.
    let leader = connect_node(&leader()).await;
    let stuck_backends = wait_until_async(Duration::from_secs(10), || async {
        running_big_queries(&leader, &tag).await == 0
    })
    .await;
    assert!(
        stuck_backends,
        "the never-reader's query still runs on the leader"
    );
}

/// Creates the table the half-close test writes to and returns a leader
/// client for checking it.
async fn half_close_table() -> tokio_postgres::Client {
    let leader = connect_node(&leader()).await;
    leader
        .batch_execute("create table if not exists hostile_half_close (v text primary key)")
        .await
        .unwrap();
    leader
}

async fn row_exists(leader: &tokio_postgres::Client, v: &str) -> bool {
    leader
        .query_opt("select 1 from hostile_half_close where v = $1", &[&v])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_client_gets_its_answers_and_keeps_its_commit() {
    let leader = half_close_table().await;
    let (pg, split) =
        start_split("roles: [sync, async], pool_size: 1, pool_acquire_timeout_ms: 3000");
    let pid = pg.child.id();
    let c = connect(split).await.unwrap();
    let fds = open_fds(pid);
    let tag = format!("committed-{}", std::process::id());
    let open_tag = format!("open-{}", std::process::id());

    // A whole transaction, then the client's FIN before any answer: like
    // PostgreSQL, pgvane runs it, sends every answer, then ends the session.
    let mut r = Raw::login(split, &[]).await;
    r.send(&raw::query(&format!(
        "begin; insert into hostile_half_close values ('{tag}'); select pg_sleep(0.3); commit; select 'done'"
    )))
    .await;
    r.stream.shutdown().await.unwrap();
    let got = r.until(b'Z').await;
    assert_eq!(raw::error_code(&got), None);
    assert!(
        raw::texts(&got).contains(&"done".to_owned()),
        "{:?}",
        raw::texts(&got)
    );
    assert!(
        got.iter()
            .any(|(t, b)| *t == b'C' && b.starts_with(b"COMMIT")),
        "no COMMIT tag"
    );
    assert_eq!(
        r.read().await,
        None,
        "the session did not end after the FIN"
    );
    assert!(
        row_exists(&leader, &tag).await,
        "the committed row was lost"
    );

    // A FIN inside an open transaction: it is rolled back and the leader's
    // only backend goes back clean.
    let mut r = Raw::login(split, &[]).await;
    let got = r
        .simple(&format!(
            "begin; insert into hostile_half_close values ('{open_tag}')"
        ))
        .await;
    assert_eq!(raw::error_code(&got), None);
    assert_eq!(got.last().map(|m| m.1.clone()), Some(b"T".to_vec()));
    r.stream.shutdown().await.unwrap();
    assert_eq!(
        r.read().await,
        None,
        "the session did not end after the FIN"
    );
    let bystander = format!("{open_tag}-bystander");
    let insert = format!("insert into hostile_half_close values ('{bystander}')");
    let write = c.client.simple_query(&insert);
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the bystander's write got the leader's backend")
        .unwrap();
    assert!(
        !row_exists(&leader, &open_tag).await,
        "an uncommitted row survived"
    );
    assert_fds_back(pid, fds);
    leader
        .execute(
            "delete from hostile_half_close where v in ($1, $2)",
            &[&tag, &bystander],
        )
        .await
        .unwrap();
}

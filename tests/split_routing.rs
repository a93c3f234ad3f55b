//! Split port against the real lab: where each statement ran, asked of
//! PostgreSQL itself (`inet_server_addr()`), for reads, writes, locking
//! reads, writing CTEs, functions, hints, transactions and pins; errors that
//! leave the session usable; COPY both ways; cancel; authentication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

async fn node_of(c: &Client, sql: &str) -> String {
    let rows = c
        .client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    for r in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = r {
            return node_of_ip(row.get(0).unwrap());
        }
    }
    panic!("{sql}: no row");
}

/// Whether one of 50 plain reads lands on a replica (the session's floor
/// replayed there).
async fn reaches_a_replica(c: &Client, leader: &str) -> bool {
    for _ in 0..50 {
        if node_of(c, "select host(inet_server_addr())").await != leader {
            return true;
        }
    }
    false
}

fn setup() -> (Ports, u16, Pgvane) {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&split_config(&p, split), p.admin);
    lab(&[
        "psql",
        &leader()[4..],
        "create table if not exists split_t(id int primary key, v text); insert into split_t values (1, 'a') on conflict do nothing; create or replace function pgvane_rw() returns int language sql as 'select 1'; create or replace function pgvane_ro() returns int language sql as 'select 1'",
    ]);
    (p, split, pg)
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_land_where_they_should() {
    let (_p, split, pg) = setup();
    let leader = leader();
    let c = connect(split).await.unwrap();
    let reads = [
        "select host(inet_server_addr())",
        "with a as (select 1) select host(inet_server_addr()) from a",
        "/* pgvane: replica */ select host(inet_server_addr()) from (select pgvane_rw()) s",
        "select host(inet_server_addr()) from (select pgvane_ro()) s",
        "select host(inet_server_addr()); explain select 1",
    ];
    for sql in reads {
        assert_ne!(
            node_of(&c, sql).await,
            leader,
            "read went to the leader: {sql}"
        );
    }
    // Prepared (extended protocol, named statements) reads and writes.
    let read = c
        .client
        .prepare("select host(inet_server_addr()) where $1::int > 0")
        .await
        .unwrap();
    for _ in 0..5 {
        let row = c.client.query_one(&read, &[&1i32]).await.unwrap();
        assert_ne!(node_of_ip(row.get(0)), leader);
    }
    assert_ne!(
        node_of(&c, reads[0]).await,
        leader,
        "a repeated read, from the cache"
    );
    let leader_stmts = [
        "select host(inet_server_addr()) from split_t where id = 1 for update",
        "select host(inet_server_addr()) from (select pgvane_rw()) s",
        "/* pgvane: leader */ select host(inet_server_addr())",
        "with w as (insert into split_t values (1000 + (random() * 100000)::int, 'cte') on conflict do nothing returning 1) select host(inet_server_addr())",
        "select host(inet_server_addr()), pg_is_in_recovery()",
        "insert into split_t values (2000000 + (random() * 100000)::int, 'w') on conflict do nothing returning host(inet_server_addr())",
    ];
    for sql in leader_stmts {
        assert_eq!(node_of(&c, sql).await, leader, "{sql}");
    }
    let write = c.client.prepare("insert into split_t values ($1, 'p') on conflict (id) do update set v = 'p' returning host(inet_server_addr())").await.unwrap();
    for i in 0..5 {
        let row = c
            .client
            .query_one(&write, &[&(3_000_000 + i)])
            .await
            .unwrap();
        assert_eq!(node_of_ip(row.get(0)), leader);
    }
    // Read your own writes (session scope): right after a write, a read
    // goes to a replica that replayed it, else the leader; with replicas
    // replaying in milliseconds, reads soon land on replicas again
    // (tests/read_your_writes*.rs count stale reads under a replay delay).
    let row = c
        .client
        .query_one("select v from split_t where id = 3000004", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "p", "the session reads its write");
    let on_replica = reaches_a_replica(&c, &leader).await;
    assert!(on_replica, "reads after a write never reached a replica");
    let routed = pg.metric(
        "pgvane_statements_routed_total",
        &["port=\"app\"", "role=\"replica\""],
    );
    assert!(routed >= 10.0, "replica routing not counted: {routed}");
    assert!(pg.metric("pgvane_classifier_cache_hits_total", &[]) >= 1.0);
    assert!(pg.metric("pgvane_classifier_cache_misses_total", &[]) >= 10.0);
    assert!(pg.metric("pgvane_pool_backends", &["port=\"app\"", "state=\"open\""]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_stay_on_one_backend() {
    let (_p, split, _pg) = setup();
    let leader = leader();
    let mut c = connect(split).await.unwrap();
    // BEGIN READ ONLY may use a replica; every statement on the same backend.
    let tx = c
        .client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    let a: String = tx
        .query_one(
            "select host(inet_server_addr()) || ':' || pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let b: String = tx
        .query_one(
            "select host(inet_server_addr()) || ':' || pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(a, b);
    assert_ne!(node_of_ip(a.split(':').next().unwrap()), leader);
    tx.commit().await.unwrap();
    // A plain transaction goes to the leader, reads included.
    let tx = c.client.transaction().await.unwrap();
    let n: String = tx
        .query_one("select host(inet_server_addr())", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(node_of_ip(&n), leader);
    tx.execute(
        "insert into split_t values (4000001, 'tx') on conflict do nothing",
        &[],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // An error inside a transaction, then ROLLBACK: the session is usable.
    c.client.batch_execute("begin").await.unwrap();
    let err = c.client.batch_execute("select 1/0").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22012");
    let err = c.client.batch_execute("select 1").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "25P02");
    c.client.batch_execute("rollback").await.unwrap();
    assert!(c.alive().await);
    // An autocommit error leaves the session usable too, and reads still
    // reach replicas once they replayed the writes above.
    assert!(
        c.client
            .simple_query("select * from no_such_table")
            .await
            .is_err()
    );
    let on_replica = reaches_a_replica(&c, &leader).await;
    assert!(on_replica, "reads never reached a replica after the error");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_pins_until_discard_all() {
    let (_p, split, pg) = setup();
    let leader = leader();
    let c = connect(split).await.unwrap();
    assert_ne!(node_of(&c, "select host(inet_server_addr())").await, leader);
    // A driver-style setting is replayed on every backend instead of pinning.
    c.client
        .batch_execute("set statement_timeout = '5min'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_ne!(
            node_of(&c, "select host(inet_server_addr())").await,
            leader,
            "not pinned by a replayed SET"
        );
        let row = c
            .client
            .query_one("show statement_timeout", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, &str>(0),
            "5min",
            "the SET follows the session to every backend"
        );
    }
    // Any other SET pins.
    c.client
        .batch_execute("set maintenance_work_mem = '8MB'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            node_of(&c, "select host(inet_server_addr())").await,
            leader,
            "pinned after SET"
        );
    }
    let row = c
        .client
        .query_one("show maintenance_work_mem", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, &str>(0),
        "8MB",
        "the SET is visible: same backend"
    );
    c.client.batch_execute("discard all").await.unwrap();
    assert_ne!(
        node_of(&c, "select host(inet_server_addr())").await,
        leader,
        "DISCARD ALL unpins"
    );
    for (sql, reason) in [
        ("create temp table tmp_x(a int)", "temp_table"),
        ("select pg_advisory_lock(42)", "advisory_lock"),
        ("listen chan", "listen"),
        ("prepare q as select 1", "prepare"),
    ] {
        let c = connect(split).await.unwrap();
        c.client.batch_execute(sql).await.unwrap();
        assert_eq!(
            node_of(&c, "select host(inet_server_addr())").await,
            leader,
            "{sql}"
        );
        assert!(
            pg.metric("pgvane_pins_total", &[&format!("reason=\"{reason}\"")]) >= 1.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_both_ways_and_cancel() {
    let (_p, split, _pg) = setup();
    let c = connect(split).await.unwrap();
    c.client
        .batch_execute("create table if not exists split_copy(a int, b text); truncate split_copy")
        .await
        .unwrap();
    use futures_util::SinkExt;
    let sink = c
        .client
        .copy_in("copy split_copy from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    use futures_util::StreamExt;
    let stream = c
        .client
        .copy_out("copy (select * from split_copy order by a) to stdout")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got.iter().filter(|b| **b == b'\n').count(), 5000);
    // Cancel reaches the backend running the query.
    let token = c.client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let t = std::time::Instant::now();
        let r = c.client.simple_query("select pg_sleep(20)").await;
        (r, t.elapsed(), c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, took, c) = sleeper.await.unwrap();
    assert_eq!(r.unwrap_err().as_db_error().unwrap().code().code(), "57014");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(c.alive().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_errors_are_clear() {
    let (_p, split, _pg) = setup();
    for (user, password) in [("postgres", "wrong"), ("nobody", "postgres")] {
        let conn =
            format!("host=127.0.0.1 port={split} user={user} password={password} dbname=postgres");
        let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .err()
            .unwrap();
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(db.code().code(), "28P01", "{user}");
        assert!(db.message().contains(user));
    }
    let conn =
        format!("host=127.0.0.1 port={split} user=postgres password=postgres dbname=no_such_db");
    let err = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "3D000");
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_replica_leaves_the_read_set_without_disconnecting() {
    let (_p, split, _pg) = setup();
    let reps = replicas();
    let (laggy, steady) = (reps[0].clone(), reps[1].clone());
    let c = connect(split).await.unwrap();
    lab(&["lag", &laggy[4..]]);
    let avoided = wait_until_async(Duration::from_secs(10), || async {
        let mut all = true;
        for _ in 0..4 {
            all &= node_of(&c, "select host(inet_server_addr())").await == steady;
        }
        all
    })
    .await;
    lab(&["unlag", &laggy[4..]]);
    assert!(avoided, "reads still reach the lagging replica");
    assert!(c.alive().await, "nobody is disconnected on a split port");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_texts_over_the_limit_go_to_the_leader_unparsed() {
    // read_your_writes_ms 0: an unparsed statement may have written, and
    // would otherwise send this session's next reads to the leader too.
    let (_pg, split) = start_split(
        "roles: [sync, async], max_classified_query_bytes: 200, read_your_writes_ms: 0",
    );
    let c = connect(split).await.unwrap();
    let lead = leader();
    let short = "select host(inet_server_addr())";
    assert_ne!(
        node_of(&c, short).await,
        lead,
        "a short read runs on a replica"
    );
    let long = format!("{short} /* {} */", "x".repeat(300));
    assert_eq!(node_of(&c, &long).await, lead, "a long one on the leader");
    // The session goes on normally after it.
    assert_ne!(node_of(&c, short).await, lead);
}

//! Nothing one client does reaches another: a hostile client leaves at
//! every point of every protocol flow (mid-result, after a Flush without
//! Sync, inside a transaction, inside a failed one, pinned, mid-COPY both
//! ways, after PREPARE/LISTEN/locks/SETs), and then other clients of the
//! same pool — `pool_size: 1`, so they get the very same PostgreSQL
//! backend or its replacement — check that none of it is visible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;

/// pgvane with one split port whose every statement uses one leader
/// backend: reads may go only to a sync standby, and the lab runs none.
fn one_backend() -> (Pgvane, u16) {
    start_split("roles: [sync], pool_size: 1, pool_acquire_timeout_ms: 15000")
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c
        .client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn setup_table(split: u16) {
    let c = connect(split).await.unwrap();
    c.client
        .batch_execute("create table if not exists iso_t(v text)")
        .await
        .unwrap();
}

async fn count(split: u16, marker: &str) -> String {
    let c = connect(split).await.unwrap();
    one(
        &c,
        &format!("select count(*) from iso_t where v = '{marker}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn leaving_mid_result_hands_no_rows_to_the_next_client() {
    let (_pg, split) = one_backend();
    for _ in 0..3 {
        let mut h = Raw::login(split, &[]).await;
        h.send(&raw::query(
            "select repeat('x', 100) from generate_series(1, 2000000)",
        ))
        .await;
        for _ in 0..20 {
            h.read().await.unwrap();
        }
        drop(h);
        let c = connect(split).await.unwrap();
        for i in 0..3 {
            assert_eq!(one(&c, &format!("select {i}")).await, i.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_without_sync_then_leaving_commits_nothing() {
    let (_pg, split) = one_backend();
    setup_table(split).await;
    for i in 0..5 {
        let marker = format!("flush-{i}-{}", std::process::id());
        let mut h = Raw::login(split, &[]).await;
        let mut out =
            raw::parse_bind_execute("", &format!("insert into iso_t values ('{marker}')"));
        out.extend(raw::flush());
        h.send(&out).await;
        let got = h.until(b'C').await;
        assert!(got.iter().any(|(t, _)| *t == b'2'), "{got:?}");
        drop(h);
        // Other clients' statements on the same pool must not commit it.
        let c = connect(split).await.unwrap();
        c.client.batch_execute("select 1; select 2").await.unwrap();
        assert_eq!(count(split, &marker).await, "0");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_or_failed_transaction_left_behind_is_rolled_back() {
    let (_pg, split) = one_backend();
    setup_table(split).await;
    let marker = format!("tx-{}", std::process::id());
    let mut h = Raw::login(split, &[]).await;
    h.simple("begin").await;
    h.simple(&format!("insert into iso_t values ('{marker}')"))
        .await;
    drop(h);
    assert_eq!(count(split, &marker).await, "0");
    let mut h = Raw::login(split, &[]).await;
    h.simple("begin").await;
    h.simple(&format!("insert into iso_t values ('{marker}')"))
        .await;
    let e = h.simple("select 1/0").await;
    assert_eq!(raw::error_code(&e).as_deref(), Some("22012"));
    drop(h);
    let c = connect(split).await.unwrap();
    assert_eq!(
        one(&c, "select 41 + 1").await,
        "42",
        "no aborted transaction"
    );
    assert_eq!(count(split, &marker).await, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discard_all_that_failed_keeps_the_pin() {
    let (_pg, split) = one_backend();
    for _ in 0..5 {
        let mut h = Raw::login(split, &[]).await;
        h.simple("create temp table iso_tmp(a int)").await;
        h.simple("begin").await;
        let e = h.simple("discard all").await;
        assert_eq!(raw::error_code(&e).as_deref(), Some("25001"), "{e:?}");
        h.simple("rollback").await;
        let seen = h.simple("select to_regclass('iso_tmp')::text").await;
        assert_eq!(raw::texts(&seen), ["iso_tmp"], "still on its own backend");
        drop(h);
        let c = connect(split).await.unwrap();
        assert_eq!(one(&c, "select to_regclass('iso_tmp')::text").await, "NULL");
    }
    // A DISCARD ALL that succeeded unpins and forgets.
    let mut h = Raw::login(split, &[]).await;
    h.simple("create temp table iso_tmp(a int)").await;
    let ok = h.simple("discard all").await;
    assert!(raw::error_code(&ok).is_none(), "{ok:?}");
    let seen = h.simple("select to_regclass('iso_tmp')::text").await;
    assert_eq!(raw::texts(&seen), ["NULL"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_never_reaches_the_next_client() {
    let (_pg, split) = one_backend();
    let base = connect(split).await.unwrap();
    let default_path = one(&base, "show search_path").await;
    let default_mwm = one(&base, "show maintenance_work_mem").await;
    let default_wm = one(&base, "show work_mem").await;
    drop(base);
    // (what the hostile client runs, what the next one asks, what it must get)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "select pg_advisory_lock(4242)",
            "select pg_try_advisory_lock(4242)::text",
            "true".into(),
        ),
        (
            "listen iso_chan",
            "select count(*) from pg_listening_channels()",
            "0".into(),
        ),
        (
            "prepare iso_q as select 1",
            "select count(*) from pg_prepared_statements where name = 'iso_q'",
            "0".into(),
        ),
        (
            "declare iso_c cursor with hold for select 1",
            "select count(*) from pg_cursors",
            "0".into(),
        ),
        (
            "create temp table iso_tmp2(a int)",
            "select to_regclass('iso_tmp2')::text",
            "NULL".into(),
        ),
        (
            "set maintenance_work_mem = '9MB'",
            "show maintenance_work_mem",
            default_mwm.clone(),
        ),
        (
            "set search_path = iso_evil",
            "show search_path",
            default_path.clone(),
        ),
        ("set work_mem = '7MB'", "show work_mem", default_wm.clone()),
        (
            "select 1 --\r; set role pg_monitor",
            "select current_user::text",
            "postgres".into(),
        ),
        (
            "select 1 --\r; set work_mem = '3MB'",
            "show work_mem",
            default_wm.clone(),
        ),
        (
            "select set_config('search_path', 'iso_evil2', NOT true)",
            "show search_path",
            default_path.clone(),
        ),
        (
            "do $$ begin perform set_config('work_mem', '6MB', false); end $$",
            "show work_mem",
            default_wm.clone(),
        ),
        (
            "set session authorization pg_monitor",
            "select session_user::text",
            "postgres".into(),
        ),
    ];
    for (evil, ask, want) in &cases {
        for _ in 0..2 {
            let mut h = Raw::login(split, &[]).await;
            let r = h.simple(evil).await;
            assert!(raw::error_code(&r).is_none(), "{evil}: {r:?}");
            drop(h);
            let c = connect(split).await.unwrap();
            assert_eq!(&one(&c, ask).await, want, "after `{evil:?}`: {ask}");
            if evil.contains("advisory") {
                c.client
                    .batch_execute("select pg_advisory_unlock_all()")
                    .await
                    .unwrap();
            }
        }
    }
    // A startup parameter is the session's own.
    let mut h = Raw::login(split, &[("application_name", "iso_evil_app")]).await;
    let r = h.simple("show application_name").await;
    assert_eq!(raw::texts(&r), ["iso_evil_app"]);
    drop(h);
    let c = connect(split).await.unwrap();
    assert_ne!(one(&c, "show application_name").await, "iso_evil_app");
}

#[tokio::test(flavor = "multi_thread")]
async fn leaving_mid_copy_leaves_nothing() {
    let (_pg, split) = one_backend();
    setup_table(split).await;
    let marker = format!("copy-{}", std::process::id());
    let mut h = Raw::login(split, &[]).await;
    h.send(&raw::query("copy iso_t from stdin")).await;
    h.until(b'G').await;
    let mut data = Vec::new();
    pgvane::protocol::encode::frame(&mut data, b'd', |b| {
        b.extend_from_slice(format!("{marker}\n").as_bytes());
    });
    h.send(&data).await;
    drop(h);
    assert_eq!(count(split, &marker).await, "0");
    let mut h = Raw::login(split, &[]).await;
    h.send(&raw::query(
        "copy (select generate_series(1, 3000000)) to stdout",
    ))
    .await;
    h.until(b'H').await;
    for _ in 0..10 {
        h.read().await.unwrap();
    }
    drop(h);
    let c = connect(split).await.unwrap();
    assert_eq!(one(&c, "select 7").await, "7");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_before_sync_skips_to_sync_like_postgresql() {
    let (_pg, split) = one_backend();
    let mut h = Raw::login(split, &[]).await;
    let mut out = raw::parse_bind_execute("", "select * from iso_no_such_table");
    out.extend(raw::flush());
    h.send(&out).await;
    let e = h.until(b'E').await;
    assert_eq!(raw::error_code(&e).as_deref(), Some("42P01"));
    // The server now ignores everything up to Sync: only ReadyForQuery.
    let mut out = raw::parse_bind_execute("s1", "select 1");
    out.extend(raw::sync());
    h.send(&out).await;
    let got = h.until(b'Z').await;
    assert_eq!(
        got.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [b'Z'],
        "{got:?}"
    );
    // `s1` was never prepared (the server skipped it), a new batch works.
    let mut out = raw::parse_bind_execute("s1", "select 5");
    out.extend(raw::sync());
    h.send(&out).await;
    let got = h.until(b'Z').await;
    assert_eq!(raw::texts(&got), ["5"], "{got:?}");
    // A Flush batch without errors answers at once, Sync later.
    let mut out = raw::parse_bind_execute("", "select 6");
    out.extend(raw::flush());
    h.send(&out).await;
    let got = h.until(b'C').await;
    assert_eq!(raw::texts(&got), ["6"]);
    h.send(&raw::sync()).await;
    let got = h.until(b'Z').await;
    assert_eq!(got.len(), 1, "{got:?}");
    let got = h.simple("select 8").await;
    assert_eq!(raw::texts(&got), ["8"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deallocate_is_tracked_from_the_server() {
    let (_pg, split) = one_backend();
    let c = connect(split).await.unwrap();
    let st = c.client.prepare("select $1::int + 1").await.unwrap();
    let row = c.client.query_one(&st, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    // DEALLOCATE ALL late in a multi-statement query drops pgvane's
    // statements too: the next use prepares again instead of failing.
    c.client
        .batch_execute("select 1; deallocate all")
        .await
        .unwrap();
    let row = c.client.query_one(&st, &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    // A failing DEALLOCATE changes nothing.
    assert!(
        c.client
            .batch_execute("deallocate iso_nothing")
            .await
            .is_err()
    );
    let row = c.client.query_one(&st, &[&3i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 4);
    // Many distinct statements stay bounded on the backend (LRU of 200).
    for i in 0..300 {
        let s = c
            .client
            .prepare(&format!("select {i} + $1::int"))
            .await
            .unwrap();
        let row = c.client.query_one(&s, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let n = one(
        &c,
        "/* pgvane: leader */ select count(*) from pg_prepared_statements where name ~ '^pgv_[0-9]+$'",
    )
    .await;
    assert!(
        n.parse::<u32>().unwrap() <= 200,
        "{n} statements kept on one backend"
    );
    let row = c.client.query_one(&st, &[&9i32]).await.unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        10,
        "an evicted statement is prepared again"
    );
}

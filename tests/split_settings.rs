//! Session settings through the split port mean exactly what PostgreSQL
//! makes of them: every `SET`/`RESET` form, lists, quoting, `DEFAULT` and
//! startup `options` give the same answers as a direct connection to the
//! leader, on whichever backend a later read lands, and never reach another
//! client. Also the fast-path FunctionCall (`F`, large objects).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use pgvane::protocol::encode;

/// A plain read (goes to a replica) showing the settings under test.
const READ: &str = "select concat_ws(' | ', current_setting('DateStyle'), \
     current_setting('search_path'), current_setting('statement_timeout'), \
     current_setting('application_name'), current_setting('IntervalStyle'), \
     '2024-03-04'::date::text, '1 day 2 hours'::interval::text)";

async fn connect_to(host: &str, port: u16, options: &str) -> tokio_postgres::Client {
    let mut conn_str = format!(
        "host={host} port={port} user=postgres password=postgres dbname=postgres connect_timeout=10"
    );
    if !options.is_empty() {
        conn_str.push_str(&format!(" options='{options}'"));
    }
    let (client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn show(c: &tokio_postgres::Client) -> Option<String> {
    c.simple_query("show DateStyle")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
}

async fn read(c: &tokio_postgres::Client) -> String {
    c.query_one(READ, &[]).await.unwrap().get(0)
}

/// Runs `steps` on a direct leader connection and through the split port
/// (both opened with `options`), comparing `READ` after each step, several
/// times so later reads land on other backends; a second split client must
/// keep seeing a fresh session's answer throughout.
async fn same_as_postgresql(split: u16, options: &str, steps: &[&str]) {
    let leader_ip = node_ip(&leader());
    let direct = connect_to(&leader_ip, 5432, options).await;
    let routed = connect_to("127.0.0.1", split, options).await;
    let bystander = connect_to("127.0.0.1", split, "").await;
    let fresh = read(&connect_to(&leader_ip, 5432, "").await).await;
    assert_eq!(read(&routed).await, read(&direct).await, "after login");
    for step in steps {
        direct.batch_execute(step).await.unwrap();
        routed.batch_execute(step).await.unwrap();
        let want = read(&direct).await;
        for i in 0..4 {
            assert_eq!(read(&routed).await, want, "after `{step}` (read {i})");
            assert_eq!(read(&bystander).await, fresh, "a bystander saw `{step}`");
        }
        // SHOW runs on the leader: the same answer there.
        assert_eq!(
            show(&routed).await,
            show(&direct).await,
            "SHOW after `{step}`"
        );
    }
}

const STEPS: &[&str] = &[
    "set DateStyle = 'Postgres, MDY'",
    "set search_path TO a, \"B c\", public",
    "set application_name = 'it''s me'",
    "set statement_timeout = '5s'",
    "set statement_timeout = DEFAULT",
    "set search_path TO DEFAULT",
    "set IntervalStyle to iso_8601",
    "reset DateStyle",
    "set DateStyle to SQL, DMY",
    "set session search_path = \"$user\", public, pg_catalog",
    "set application_name to default",
    "reset all",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_set_form_matches_postgresql() {
    let (_pg, split) = start_split("roles: [sync, async], pool_size: 2");
    same_as_postgresql(split, "", STEPS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_and_reset_return_to_the_startup_options() {
    let (_pg, split) = start_split("roles: [sync, async], pool_size: 2");
    let options = "-c DateStyle=SQL,DMY -c search_path=x,public -c statement_timeout=7s";
    same_as_postgresql(
        split,
        options,
        &[
            "set DateStyle = 'ISO'",
            "set DateStyle TO DEFAULT",
            "set search_path = y",
            "reset search_path",
            "set statement_timeout = 0",
            "reset all",
        ],
    )
    .await;
}

/// Found by PostgreSQL's regression suite through the split port
/// (guc.sql): a RESET on a backend the session holds (pinned by a
/// transaction's SET, or inside one) went to the server's default instead
/// of the client's startup value.
#[tokio::test(flavor = "multi_thread")]
async fn reset_on_a_held_backend_returns_to_the_startup_options() {
    let (_pg, split) = start_split("roles: [sync, async], pool_size: 2");
    let options = "-c DateStyle=SQL,DMY -c search_path=x,public";
    same_as_postgresql(
        split,
        options,
        &[
            "begin; set DateStyle = 'ISO, YMD'; commit",
            "set DateStyle = 'German'",
            "reset DateStyle",
            "begin; set search_path = y; reset search_path; commit",
            "begin; set DateStyle = 'ISO'; reset all; commit",
            "set DateStyle TO DEFAULT",
            "reset all",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_path_call_runs_on_the_leader() {
    let (_pg, split) = start_split("roles: [sync, async], pool_size: 2");
    let mut c = Raw::login(split, &[]).await;
    let got = c
        .simple("select 'lo_creat(integer)'::regprocedure::oid::int")
        .await;
    let fn_oid: i32 = raw::texts(&got)[0].parse().unwrap();
    // FunctionCall: oid, one binary format code, one int4 argument (-1),
    // binary result.
    let mut out = Vec::new();
    encode::frame(&mut out, b'F', |b| {
        b.extend_from_slice(&fn_oid.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
    });
    c.send(&out).await;
    let answer = c.until(b'Z').await;
    assert_eq!(raw::error_code(&answer), None, "{answer:?}");
    let (_, body) = answer
        .iter()
        .find(|(t, _)| *t == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(i32::from_be_bytes([body[0], body[1], body[2], body[3]]), 4);
    let lo = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let seen = c
        .simple(&format!(
            "/* pgvane: leader */ select count(*) from pg_largeobject_metadata where oid = {lo}"
        ))
        .await;
    assert_eq!(raw::texts(&seen), ["1"]);
    let gone = c.simple(&format!("select lo_unlink({lo})")).await;
    assert_eq!(raw::texts(&gone), ["1"]);
}

/// Found by PostgreSQL's regression suite through the split port
/// (date.sql): `SET datestyle TO ymd` changes only the field order, so
/// replaying the statement on another backend (which starts from the
/// client's startup value, not from the `ISO` set before) gave `Postgres,
/// YMD`; the value the server reported is what must be replayed.
#[tokio::test(flavor = "multi_thread")]
async fn partial_datestyle_values_replay_as_the_server_reported_them() {
    let (_pg, split) = start_split("roles: [sync, async], pool_size: 2");
    same_as_postgresql(
        split,
        "-c DateStyle=Postgres,MDY",
        &[
            "set datestyle to iso",
            "set datestyle to ymd",
            "set datestyle to sql",
        ],
    )
    .await;
}

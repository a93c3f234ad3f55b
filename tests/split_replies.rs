//! Replies reach the client in the order PostgreSQL sends them, those
//! pgvane makes up itself included: the CloseComplete of a named statement
//! (which stays prepared on the server for reuse) and the ParseComplete of
//! a statement its backend already has, between a Bind and the rows of
//! the Execute after it. And long results, relayed from the server's
//! buffer in place, arrive whole and in order, by simple and extended
//! query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use pgvane::protocol::encode;

/// The tags of `msgs`, as text.
fn tags(msgs: &[raw::Msg]) -> String {
    msgs.iter().map(|(t, _)| char::from(*t)).collect()
}

/// Prepares `sql` as `name` in a batch of its own: ParseComplete, ReadyForQuery.
async fn prepare(c: &mut Raw, name: &str, sql: &str) {
    let mut out = Vec::new();
    encode::parse(&mut out, name, sql, &[0, 0]);
    out.extend_from_slice(&raw::sync());
    c.send(&out).await;
    assert_eq!(tags(&c.until(b'Z').await), "1Z");
}

/// Runs Bind of `name`, `between`, Execute and Sync; the replies.
async fn bind_between_execute(c: &mut Raw, name: &str, between: &[u8]) -> Vec<raw::Msg> {
    let mut out = Vec::new();
    raw::bind_execute(&mut out, name, Some(between));
    out.extend_from_slice(&raw::sync());
    c.send(&out).await;
    c.until(b'Z').await
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_replies_keep_their_place_before_the_rows() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let _pv = Pgvane::start(&split_config(&p, split), p.admin);
    let mut c = Raw::login(split, &[]).await;
    let series = "select generate_series(1, 3)";
    prepare(&mut c, "s1", series).await;

    // Close of a named statement between Bind and Execute: pgvane answers
    // the Close itself.
    let mut close = Vec::new();
    encode::describe_or_close(&mut close, b'C', b'S', "s1");
    let got = bind_between_execute(&mut c, "s1", &close).await;
    assert_eq!(tags(&got), "23DDDCZ");
    assert_eq!(raw::texts(&got), ["1", "2", "3"]);

    // A Parse of a text the backend has prepared already: pgvane answers
    // the Parse itself.
    prepare(&mut c, "s2", series).await;
    let mut parse = Vec::new();
    encode::parse(&mut parse, "s3", series, &[0, 0]);
    let got = bind_between_execute(&mut c, "s2", &parse).await;
    assert_eq!(tags(&got), "21DDDCZ");
    assert_eq!(raw::texts(&got), ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_results_arrive_whole_and_in_order() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let _pv = Pgvane::start(&split_config(&p, split), p.admin);
    let mut c = Raw::login(split, &[]).await;
    // About 1 MB of rows: many reads from the server and many times the
    // client's output bound.
    let sql = "select repeat('x', 90) || g from generate_series(1, 10000) g";
    let expected: Vec<String> = (1..=10_000)
        .map(|g| format!("{}{g}", "x".repeat(90)))
        .collect();
    let got = c.simple(sql).await;
    assert_eq!(tags(&got[got.len() - 2..]), "CZ");
    assert_eq!(raw::texts(&got), expected, "simple query");
    let mut out = raw::parse_bind_execute("", sql);
    out.extend_from_slice(&raw::sync());
    c.send(&out).await;
    let got = c.until(b'Z').await;
    assert_eq!(tags(&got[..2]), "12");
    assert_eq!(tags(&got[got.len() - 2..]), "CZ");
    assert_eq!(raw::texts(&got), expected, "extended query");
    // The session goes on.
    assert_eq!(raw::texts(&c.simple("select 'after'").await), ["after"]);
}

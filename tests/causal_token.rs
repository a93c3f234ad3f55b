//! The causal token's commands answered by pgvane, in the simple protocol
//! and in an extended-protocol batch on the unnamed statement (as pgJDBC
//! sends them): `SET pgvane.min_lsn` raises the floor `SHOW
//! pgvane.last_write_lsn` reports, a malformed value is 22023, and neither
//! reaches PostgreSQL (which would accept a `pgvane.` placeholder setting
//! and pin the session).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;

fn extended(sql: &str, describe: bool) -> Vec<u8> {
    let mut out = raw::parse_bind_execute("", sql);
    if describe {
        // Parse, Bind, Describe portal, Execute: put the Describe before
        // the Execute, as pgJDBC does.
        let exec_at = out.len() - 10;
        let mut d = Vec::new();
        pgvane::protocol::encode::describe_or_close(&mut d, b'D', b'P', "");
        out.splice(exec_at..exec_at, d);
    }
    out.extend_from_slice(&raw::sync());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn token_commands_in_both_protocols() {
    healthy_lab();
    let (pg, split) = start_split("roles: [sync, async]");
    let mut c = Raw::login(split, &[]).await;
    let got = c.simple("SHOW pgvane.last_write_lsn").await;
    assert_eq!(raw::texts(&got), ["0/0"], "{got:?}");
    // Extended, unnamed statement: SET then SHOW.
    c.send(&extended("SET pgvane.min_lsn = '5/A0'", false))
        .await;
    let got = c.until(b'Z').await;
    let tags: Vec<u8> = got.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"12CZ", "{got:?}");
    c.send(&extended("show pgvane.last_write_lsn", true)).await;
    let got = c.until(b'Z').await;
    let tags: Vec<u8> = got.iter().map(|m| m.0).collect();
    assert_eq!(tags, b"12TDCZ", "{got:?}");
    assert_eq!(raw::texts(&got), ["5/A0"]);
    // A lower token never lowers the floor.
    let got = c.simple("SET pgvane.min_lsn TO '0/1'").await;
    assert!(raw::error_code(&got).is_none(), "{got:?}");
    let got = c.simple("SHOW pgvane.last_write_lsn;").await;
    assert_eq!(raw::texts(&got), ["5/A0"]);
    // A malformed value, both ways.
    let got = c.simple("SET pgvane.min_lsn = 'soon'").await;
    assert_eq!(raw::error_code(&got).as_deref(), Some("22023"), "{got:?}");
    c.send(&extended("SET pgvane.min_lsn = '1/2/3'", false))
        .await;
    let got = c.until(b'Z').await;
    assert_eq!(raw::error_code(&got).as_deref(), Some("22023"), "{got:?}");
    // The session is usable and was never pinned: PostgreSQL saw nothing.
    let got = c.simple("select 1").await;
    assert_eq!(raw::texts(&got), ["1"]);
    assert_eq!(pg.metric("pgvane_pins_total", &[]), 0.0);
}

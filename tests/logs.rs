//! Logs: `log_format: json` writes one JSON object per line; every split
//! login and disconnect, and every role-port connect and disconnect, is a
//! line of its own with who, where, how long, how many bytes and why; a
//! reload changes `log_level` at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::time::Duration;

/// The connection lines (`pgvane::conn`) logged so far, parsed.
fn conn_lines(pv: &Pgvane) -> Vec<Value> {
    pv.log_text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["target"] == "pgvane::conn")
        .collect()
}

fn find<'a>(lines: &'a [Value], event: &str, port: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["event"] == event && v["port"].as_str().is_some_and(|p| p.ends_with(port)))
        .collect()
}

/// One split session (log in, a query, Terminate) and one role-port
/// session (a query, then close).
async fn one_of_each(split: u16, rw: u16) {
    let c = connect(split).await.unwrap();
    c.client.simple_query("select 1").await.unwrap();
    drop(c.client);
    let _ = c.task.await;
    let c = connect(rw).await.unwrap();
    c.client.simple_query("select 1").await.unwrap();
    drop(c.client);
    let _ = c.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_per_connection_and_a_level_reload_applies() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let yaml = |level: &str| {
        format!(
            "log_format: json\nlog_level: {level}\n{}",
            split_config(&p, split)
        )
    };
    // RUST_LOG empty: the config's log_level decides (the harness sets one).
    let pv = Pgvane::start_with_env(&yaml("info"), p.admin, &[("RUST_LOG", OsStr::new(""))]);
    one_of_each(split, p.rw).await;
    let want = |lines: &[Value]| {
        find(lines, "disconnect", "/app").len() == 1 && find(lines, "disconnect", "/rw").len() == 1
    };
    assert!(
        wait_until(Duration::from_secs(10), || want(&conn_lines(&pv))),
        "{}",
        pv.log_text()
    );
    let lines = conn_lines(&pv);
    let login = find(&lines, "login", "/app");
    assert_eq!(login.len(), 1, "{lines:?}");
    assert_eq!(login[0]["user"], "postgres");
    assert_eq!(login[0]["database"], "postgres");
    assert_eq!(login[0]["level"], "INFO");
    assert!(
        login[0]["span"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{login:?}"
    );
    let bye = find(&lines, "disconnect", "/app")[0];
    assert_eq!(bye["reason"], "terminate", "{bye}");
    assert_eq!(bye["user"], "postgres");
    assert!(
        bye["bytes_in"].as_u64().unwrap() > 0 && bye["bytes_out"].as_u64().unwrap() > 0,
        "{bye}"
    );
    assert!(bye["duration_ms"].as_u64().is_some(), "{bye}");
    assert!(
        bye["nodes"].as_str().is_some_and(|n| n.contains(":5432")),
        "{bye}"
    );
    let role = find(&lines, "disconnect", "/rw")[0];
    assert_eq!(role["node"].as_str(), Some(leader().as_str()), "{role}");
    assert_eq!(role["reason"], "closed", "{role}");
    assert!(
        role["bytes_in"].as_u64().unwrap() > 0 && role["bytes_out"].as_u64().unwrap() > 0,
        "{role}"
    );
    assert_eq!(find(&lines, "connect", "/rw").len(), 1);

    // log_level: warn by reload: the next connections write no lines.
    pv.rewrite_config(&yaml("warn"));
    assert_eq!(pv.http("POST", "/reload").map(|r| r.0), Some(200));
    let before = conn_lines(&pv).len();
    one_of_each(split, p.rw).await;
    // Back to info: lines again (and the quiet pair before wrote none).
    pv.rewrite_config(&yaml("info"));
    assert_eq!(pv.http("POST", "/reload").map(|r| r.0), Some(200));
    one_of_each(split, p.rw).await;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let l = conn_lines(&pv);
            find(&l, "disconnect", "/app").len() == 2 && find(&l, "disconnect", "/rw").len() == 2
        }),
        "{}",
        pv.log_text()
    );
    assert_eq!(conn_lines(&pv).len(), before + 4, "{}", pv.log_text());
}

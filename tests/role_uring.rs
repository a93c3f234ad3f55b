//! Role ports on each relay engine (`io_uring: off` and `on`) against the
//! real lab: a big result, COPY both ways with megabytes of data, and a
//! cancel, then `/metrics` and the log name the engine that relayed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};

/// Rows of the COPY: about 6 MiB each way.
const ROWS: usize = 60_000;

/// A big result, COPY out (and in, on a `writable` port), and a cancel.
async fn relays_correctly(port: u16, writable: bool) {
    let c = connect(port).await.unwrap();
    // A result of about 20 MB from the server.
    let row = c
        .client
        .query_one(
            "select count(*), sum(length(x)) from (select repeat('x', 1000) || g as x \
             from generate_series(1, 20000) g) s",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20_000);
    let rows = c
        .client
        .simple_query("select repeat(md5(g::text), 30) from generate_series(1, 20000) g")
        .await
        .unwrap();
    let data_rows = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(data_rows, 20_000);
    // COPY in and out through a temporary table (nothing left behind), or
    // out of a query on a replica.
    let mut data = String::new();
    for i in 1..=ROWS {
        data.push_str(&format!("{i}\t{}\n", "y".repeat(90)));
    }
    let out = if writable {
        c.client
            .batch_execute("create temp table relay_copy(a int, b text)")
            .await
            .unwrap();
        let sink = c
            .client
            .copy_in("copy relay_copy from stdin")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), ROWS as u64);
        "copy (select * from relay_copy order by a) to stdout".to_owned()
    } else {
        format!("copy (select g, repeat('y', 90) from generate_series(1, {ROWS}) g) to stdout")
    };
    let stream = c.client.copy_out(out.as_str()).await.unwrap();
    futures_util::pin_mut!(stream);
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == data.as_bytes(), "COPY TO returned other bytes");
    // A cancel reaches the query through its own connection.
    let token = c.client.cancel_token();
    let client = c.client;
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(20)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper)
        .await
        .expect("cancel ended the query")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
}

async fn engine_relays(setting: &str, engine: &str) {
    healthy_lab();
    let p = Ports::new();
    let yaml = format!("io_uring: {setting}\n{}", lab_config(&p));
    let pg = Pgvane::start(&yaml, p.admin);
    relays_correctly(p.rw, true).await;
    relays_correctly(p.ro, false).await;
    let served = pg.metric("pgvane_relays_total", &[&format!("engine=\"{engine}\"")]);
    assert!(served >= 2.0, "{setting}: {served} relays by {engine}");
    let other = if engine == "epoll" {
        "io_uring"
    } else {
        "epoll"
    };
    let wrong = pg.metric("pgvane_relays_total", &[&format!("engine=\"{other}\"")]);
    assert_eq!(wrong, 0.0, "{setting}: relays by {other}");
    assert!(
        pg.metric("pgvane_bytes_relayed_total", &["port=\"rw\"", "to_client"]) > 20e6,
        "byte counters count"
    );
    let log = pg.log_text();
    assert!(
        log.contains(&format!("role ports relay with {engine}")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn epoll_engine_relays() {
    engine_relays("off", "epoll").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn io_uring_engine_relays() {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "2")
    {
        eprintln!("io_uring is disabled on this kernel; not tested");
        return;
    }
    engine_relays("on", "io_uring").await;
}

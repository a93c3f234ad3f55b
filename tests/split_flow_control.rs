//! No client can stall the router: half-sent messages leave pgvane's CPU
//! idle, a client that never reads is held back by TCP instead of growing
//! pgvane's memory, a long pipeline never deadlocks against the server, and
//! a thousand distinct `application_name`s share one pool per node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use std::time::{Duration, Instant};

fn start(pool_size: usize) -> (Pgvane, u16) {
    start_split(&format!("roles: [sync, async], pool_size: {pool_size}"))
}

/// `select i::int` answers `i` on `c`.
async fn answers(c: &Client, i: i32) {
    let row = c
        .client
        .query_one(&format!("select {i}::int"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i);
}

/// pgvane's CPU time (user + system) so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_messages_leave_the_cpu_idle() {
    let (mut pg, split) = start(8);
    let pid = pg.child.id();
    let sql = format!("select '{}'", "x".repeat(88));
    let whole = raw::query(&sql);
    assert!(whole.len() > 90);
    let mut halves = Vec::new();
    for _ in 0..4 {
        let mut h = Raw::login(split, &[]).await;
        h.send(&whole[..8]).await;
        halves.push(h);
    }
    let c = connect(split).await.unwrap();
    let t0 = Instant::now();
    let cpu0 = cpu(pid);
    for i in 0..50 {
        answers(&c, i).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // measuring idle CPU over a fixed window
    let used = cpu(pid) - cpu0;
    let wall = t0.elapsed();
    eprintln!("flow: pgvane used {used:?} CPU in {wall:?} with 4 half-sent messages");
    assert!(
        used < wall / 5,
        "pgvane spins on half-sent messages: {used:?} CPU in {wall:?}"
    );
    // The rest of each message arrives: each gets its answer.
    for h in &mut halves {
        h.send(&whole[8..]).await;
        let got = h.until(b'Z').await;
        assert_eq!(raw::texts(&got), ["x".repeat(88)]);
    }
    // Half a message again, then SIGTERM: the process still stops.
    for h in &mut halves {
        h.send(&whole[..8]).await;
    }
    let t = Instant::now();
    let status = pg.stop();
    assert!(status.success() || status.code().is_some(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "stop took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_held_back_not_buffered() {
    let (pg, split) = start(8);
    let pid = pg.child.id();
    let before = rss_kib(pid);
    let mut h = Raw::login(split, &[]).await;
    // About 1 GB of rows, never read.
    h.send(&raw::query(
        "select repeat('x', 10000) from generate_series(1, 100000)",
    ))
    .await;
    let c = connect(split).await.unwrap();
    let mut peak = before;
    for i in 0..20 {
        answers(&c, i).await;
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await; // sampling RSS
    }
    eprintln!("flow: RSS {before} KiB before, peak {peak} KiB while a client does not read 1 GB");
    assert!(
        peak < before + 32 * 1024,
        "pgvane buffers what the client does not read: {before} → {peak} KiB"
    );
    drop(h);
    assert!(c.alive().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_pipeline_never_deadlocks() {
    let (_pg, split) = start(8);
    let h = Raw::login(split, &[]).await;
    let n = 20_000;
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(raw::parse_bind_execute("", "select repeat('y', 500)"));
    }
    out.extend(raw::sync());
    let (mut rd, mut wr) = h.stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&out).await.unwrap();
        wr
    });
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        // Count CommandComplete up to ReadyForQuery by scanning tags.
        let mut buf = bytes::BytesMut::new();
        let mut complete = 0usize;
        loop {
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() <= len {
                    break;
                }
                let tag = buf[0];
                let _ = buf.split_to(len + 1);
                match tag {
                    b'C' => complete += 1,
                    b'Z' => return complete,
                    b'E' => panic!("error in the pipeline"),
                    _ => {}
                }
            }
            if rd.read_buf(&mut buf).await.unwrap() == 0 {
                return complete;
            }
        }
    });
    let complete = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("pipeline answered within 60 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(complete, n);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_application_names_share_one_pool_per_node() {
    let (pg, split) = start(4);
    let t0 = Instant::now();
    for i in 0..1000 {
        let name = format!("app-{i}");
        let mut h = Raw::login(split, &[("application_name", &name)]).await;
        let got = h.simple("show application_name").await;
        assert_eq!(raw::texts(&got), std::slice::from_ref(&name));
    }
    eprintln!(
        "flow: 1000 logins with distinct application_name in {:?}",
        t0.elapsed()
    );
    let open: f64 = pg
        .metrics()
        .lines()
        .filter(|l| l.starts_with("pgvane_pool_backends") && l.contains("state=\"open\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!((1.0..=3.0 * 4.0).contains(&open), "open backends: {open}");
    let leader = leader();
    let psql = std::process::Command::new("psql")
        .args([
            "-h",
            &node_ip(&leader),
            "-U",
            "postgres",
            "-Atc",
            "select count(*) from pg_stat_activity where backend_type = 'client backend' and application_name like 'app-%'",
        ])
        .env("PGPASSWORD", "postgres")
        .output()
        .unwrap();
    let n: u32 = String::from_utf8_lossy(&psql.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        n <= 4,
        "{n} leader backends still carry a client's application_name"
    );
}

//! Hostile protocol input against a split port (and a role port where
//! pgvane reads it): impossible, oversized and unknown messages after
//! login, garbage protocol versions and broken startup packets, random
//! cancel keys, 2,000 connections opened and dropped. Each gets a clear
//! error or a clean close, never a panic; a well-behaved client keeps
//! working throughout; file descriptors and memory return to baseline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start() -> (Pgvane, Ports, u16) {
    let p = Ports::new();
    let split = free_port();
    (Pgvane::start(&split_config(&p, split), p.admin), p, split)
}

/// Everything the server sends until it closes (at most 10 s).
async fn rest(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    got
}

fn fields(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).replace('\0', "|")
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_messages_after_login_get_08p01_and_touch_nobody_else() {
    healthy_lab();
    let (pg, _p, split) = start();
    let good = connect(split).await.unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length below 4", vec![b'Q', 0, 0, 0, 2]),
        ("unknown message type", {
            let mut m = vec![b'z', 0, 0, 0, 8];
            m.extend_from_slice(b"abcd");
            m
        }),
        ("300 MB Query", {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&300_000_000u32.to_be_bytes());
            m
        }),
        ("Query without its terminator", {
            let mut m = vec![b'Q', 0, 0, 0, 12];
            m.extend_from_slice(b"select 1");
            m
        }),
        ("Bind of a portal for a statement never parsed", {
            let mut m = Vec::new();
            pgvane::protocol::encode::bind_raw(&mut m, "", "nope", &[0, 0, 0, 0, 0, 0]);
            m.extend_from_slice(&raw::sync());
            // Terminate, so the answer ends with the connection.
            m.extend_from_slice(&[b'X', 0, 0, 0, 4]);
            m
        }),
    ];
    for (what, bytes) in cases {
        let mut r = Raw::login(split, &[]).await;
        r.send(&bytes).await;
        let reply = rest(&mut r.stream).await;
        let text = fields(&reply);
        eprintln!("hostile_protocol: {what}: {text}");
        assert!(
            text.contains("C08P01") || text.contains("C26000") || text.contains("C34000"),
            "{what}: {text}"
        );
        assert!(good.alive().await, "a bystander suffered from {what}");
    }
    assert!(
        !pg.log_text().contains("panicked"),
        "pgvane panicked:\n{}",
        pg.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_startup_packets_get_postgresql_answers() {
    healthy_lab();
    let (pg, p, split) = start();
    for port in [split, p.ro] {
        // Protocol 9.9.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut startup = Vec::new();
        pgvane::protocol::encode::startup(&mut startup, &[("user", "postgres")]);
        startup[4..8].copy_from_slice(&((9u32 << 16) | 9).to_be_bytes());
        s.write_all(&startup).await.unwrap();
        let text = fields(&rest(&mut s).await);
        assert!(
            text.contains("C0A000") || text.contains("C08P01"),
            "port {port}: {text}"
        );
        // A startup packet whose last parameter has no terminator.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut bad = vec![0, 0, 0, 17, 0, 3, 0, 0];
        bad.extend_from_slice(b"user\0pos");
        bad.push(b't');
        s.write_all(&bad).await.unwrap();
        let text = fields(&rest(&mut s).await);
        assert!(text.contains("C08P01"), "port {port}: {text}");
    }
    // Invalid UTF-8 in the user name: refused like a wrong user.
    let mut s = TcpStream::connect(("127.0.0.1", split)).await.unwrap();
    let mut startup = Vec::new();
    pgvane::protocol::encode::startup(&mut startup, &[("user", "x"), ("database", "postgres")]);
    let at = startup.windows(2).position(|w| w == b"x\0").unwrap();
    startup[at] = 0xff;
    s.write_all(&startup).await.unwrap();
    let mut head = [0u8; 1];
    s.read_exact(&mut head).await.unwrap();
    assert!(head[0] == b'R' || head[0] == b'E', "{head:?}");
    assert!(!pg.log_text().contains("panicked"));
}

/// A startup packet (protocol 3.0) of raw `params`.
fn startup_bytes(params: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut out = u32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_startup_parameters_gets_clear_answers() {
    healthy_lab();
    let (pg, _p, split) = start();
    let bystander = connect(split).await.unwrap();
    // In application_name and in a setting given by `options`: the bytes
    // that are not UTF-8 become U+FFFD (what PostgreSQL then stores is its
    // own business: application_name keeps ASCII only), and the session
    // works; nothing that is not UTF-8 comes back.
    let packet = startup_bytes(&[
        (b"user", b"postgres"),
        (b"database", b"postgres"),
        (b"application_name", b"app\xff\xfe"),
        (b"options", b"-c search_path=s\xffx,public"),
    ]);
    let mut r = Raw::login_packet(split, &packet)
        .await
        .unwrap_or_else(|e| panic!("refused: {}", String::from_utf8_lossy(&e)));
    let got = r.simple("select current_setting('search_path')").await;
    assert_eq!(raw::error_code(&got), None);
    assert_eq!(raw::texts(&got), ["s\u{fffd}x,public"]);
    let got = r.simple("select current_setting('application_name')").await;
    assert_eq!(raw::error_code(&got), None);
    let name = raw::texts(&got);
    assert_eq!(name.len(), 1);
    // PostgreSQL keeps printable ASCII in application_name ('?' for the rest).
    assert!(
        name[0].starts_with("app") && name[0].len() > 3 && name[0].is_ascii(),
        "{name:?}"
    );
    // In the database name: the node's own answer, 3D000, as a direct
    // connection gets.
    let packet = startup_bytes(&[(b"user", b"postgres"), (b"database", b"db\xff")]);
    let refused = match Raw::login_packet(split, &packet).await {
        Ok(_) => panic!("logged in to a database named with invalid UTF-8"),
        Err(body) => fields(&body),
    };
    assert!(refused.contains("C3D000"), "{refused}");
    assert!(bystander.alive().await);
    assert!(!pg.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn random_cancel_keys_cancel_nothing() {
    healthy_lab();
    let (_pg, p, split) = start();
    let sleeper = connect(split).await.unwrap();
    let t0 = Instant::now();
    let running = tokio::spawn(async move {
        sleeper
            .client
            .simple_query("select pg_sleep(1.5)")
            .await
            .map(|_| ())
    });
    for i in 0..200u32 {
        let port = if i % 2 == 0 { split } else { p.ro };
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut out = Vec::new();
        pgvane::protocol::encode::cancel_request(
            &mut out,
            i.wrapping_mul(2_654_435_761),
            i ^ 0x5bd1_e995,
        );
        s.write_all(&out).await.unwrap();
        assert!(
            rest(&mut s).await.is_empty(),
            "a cancel request got an answer"
        );
    }
    assert!(
        running.await.unwrap().is_ok(),
        "a random key cancelled a query"
    );
    assert!(t0.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_dropped_connections_leave_nothing_behind() {
    healthy_lab();
    let (pg, p, split) = start();
    let pid = pg.child.id();
    let good = connect(split).await.unwrap();
    let (fds, rss) = (open_fds(pid), rss_kib(pid));
    let mut startup = Vec::new();
    pgvane::protocol::encode::startup(
        &mut startup,
        &[("user", "postgres"), ("database", "postgres")],
    );
    for round in 0..20 {
        let mut batch = Vec::new();
        for i in 0..100 {
            let port = if i % 2 == 0 { split } else { p.ro };
            let half = startup[..(round * 7 + i) % startup.len()].to_vec();
            batch.push(tokio::spawn(async move {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = s.write_all(&half).await;
                }
            }));
        }
        for t in batch {
            t.await.unwrap();
        }
    }
    assert!(good.alive().await, "a logged-in client suffered");
    let back = wait_until(Duration::from_secs(10), || open_fds(pid) <= fds + 10);
    let after = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "hostile_protocol: fds {fds} -> {}, RSS {rss} -> {} KiB after 2,000 dropped connections",
        after.0, after.1
    );
    assert!(back, "file descriptors not back: {fds} -> {}", after.0);
    assert!(
        after.1 < rss + 30 * 1024,
        "RSS grew from {rss} to {} KiB",
        after.1
    );
    let accepted = pg.metric("pgvane_clients_accepted_total", &[]);
    assert!(accepted >= 2000.0, "only {accepted} accepted");
}

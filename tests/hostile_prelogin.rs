//! Hostile clients before login, on a split port and a role port: silence
//! and slow-loris end at `client_login_timeout_ms`; a password message
//! announcing 200 MB is refused at once (08P01) without pgvane reserving
//! it; a second SSLRequest gets PostgreSQL's answer; `max_clients` applies
//! to split ports (53300). Meanwhile a well-behaved client keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOGIN_TIMEOUT: Duration = Duration::from_millis(1000);

fn start() -> (Pgvane, Ports, u16) {
    let p = Ports::new();
    let split = free_port();
    let yaml = format!(
        "client_login_timeout_ms: {}\n{}",
        LOGIN_TIMEOUT.as_millis(),
        split_config(&p, split).replace("pool_size: 8,", "pool_size: 8, max_clients: 30,")
    );
    (Pgvane::start(&yaml, p.admin), p, split)
}

/// Reads until the server closes; returns what it sent and when it closed.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (got, t0.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "not closed within {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

fn sqlstate_of(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    text.split('\0')
        .find_map(|f| f.strip_prefix('C'))
        .unwrap_or("")
        .chars()
        .take(5)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_and_slow_loris_end_at_the_login_timeout() {
    healthy_lab();
    let (pg, p, split) = start();
    let good = connect(split).await.unwrap();
    for port in [split, p.ro] {
        // Silent.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (_, took) = until_closed(&mut s, LOGIN_TIMEOUT * 4).await;
        assert!(
            took >= LOGIN_TIMEOUT - Duration::from_millis(100),
            "closed after {took:?}"
        );
        // Slow-loris: a startup packet one byte every 200 ms.
        let mut startup = Vec::new();
        pgvane::protocol::encode::startup(
            &mut startup,
            &[("user", "postgres"), ("database", "postgres")],
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let t0 = Instant::now();
        for b in &startup {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if t0.elapsed() > LOGIN_TIMEOUT * 4 {
                panic!("a slow-loris client on port {port} was kept past 4 s");
            }
        }
        let (_, _) = until_closed(&mut s, LOGIN_TIMEOUT * 4).await;
        assert!(t0.elapsed() < LOGIN_TIMEOUT * 3, "kept {:?}", t0.elapsed());
    }
    assert!(good.alive().await, "a logged-in client was disturbed");
    let timeouts = pg.metric(
        "pgvane_client_errors_total",
        &["port=\"app\"", "sqlstate=\"08P01\""],
    );
    assert!(timeouts >= 2.0, "login timeouts not counted: {timeouts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_announced_200_mb_password_is_refused_at_once() {
    healthy_lab();
    let (pg, _p, split) = start();
    let pid = pg.child.id();
    let before = rss_kib(pid);
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", split)).await.unwrap();
        let mut startup = Vec::new();
        pgvane::protocol::encode::startup(
            &mut startup,
            &[("user", "postgres"), ("database", "postgres")],
        );
        s.write_all(&startup).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], b'R', "an authentication request first");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut rest = vec![0u8; len - 4];
        s.read_exact(&mut rest).await.unwrap();
        // A 'p' message announcing 200 MB, and a first few bytes of it.
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&200_000_000u32.to_be_bytes());
        msg.extend_from_slice(&[b'x'; 1000]);
        s.write_all(&msg).await.unwrap();
        socks.push(s);
    }
    for s in &mut socks {
        let (reply, took) = until_closed(s, Duration::from_secs(3)).await;
        assert_eq!(
            sqlstate_of(&reply),
            "08P01",
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let after = rss_kib(pid);
    eprintln!(
        "hostile_prelogin: RSS {before} KiB before, {after} KiB after 20 announced 200 MB messages"
    );
    assert!(
        after < before + 50 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_ssl_request_and_max_clients_get_postgresql_answers() {
    healthy_lab();
    let (_pg, _p, split) = start();
    let ssl = [0u8, 0, 0, 8, 4, 210, 22, 47];
    let mut s = TcpStream::connect(("127.0.0.1", split)).await.unwrap();
    s.write_all(&ssl).await.unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    s.write_all(&ssl).await.unwrap();
    let (reply, _) = until_closed(&mut s, Duration::from_secs(3)).await;
    assert_eq!(sqlstate_of(&reply), "08P01");
    assert!(String::from_utf8_lossy(&reply).contains("unsupported frontend protocol 1234.5679"));

    // max_clients 30: thirty logged in, the next is told so.
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connect(split).await.unwrap());
    }
    let (code, msg) = connect_err(split).await;
    assert_eq!(code, "53300", "{msg}");
    assert_eq!(msg, "sorry, too many clients already");
    held.pop();
    // A slot freed is a slot usable (counted from accept to close).
    let ok = wait_until_async(Duration::from_secs(5), || async {
        connect(split).await.is_ok()
    })
    .await;
    assert!(ok, "a freed slot was not reusable");
}

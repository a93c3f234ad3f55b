//! SIGTERM: stop accepting at once, let clients finish up to the drain
//! deadline, close the rest, exit 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_exits_zero() {
    healthy_lab();
    let p = Ports::new();
    let yaml = format!("drain_timeout_ms: 2000\n{}", lab_config(&p));
    let mut pg = Pgvane::start(&yaml, p.admin);
    let c = std::sync::Arc::new(connect(p.rw).await.unwrap());
    let t0 = Instant::now();
    pg.signal("TERM");
    // When pgvane closes the connected client, seen while pgvane still runs.
    let closed_at = tokio::spawn({
        let c = std::sync::Arc::clone(&c);
        async move {
            wait_until_async(Duration::from_secs(10), || async { !c.alive().await }).await;
            t0.elapsed()
        }
    });
    // New clients are refused at once; the connected one still works.
    assert!(
        wait_until_async(Duration::from_secs(2), || async {
            connect(p.rw).await.is_err()
        })
        .await
    );
    assert!(
        c.alive().await,
        "a connected client may finish during the drain"
    );
    // A balancer or Kubernetes sees it leave: /ready answers 503 while
    // /health stays 200.
    let (status, body) = pg.http("GET", "/ready").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(pg.http("GET", "/health").unwrap().0, 200);
    // The client is closed at the drain deadline (2 s), not before.
    let closed = closed_at.await.unwrap();
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_secs(4),
        "client closed {closed:?} after SIGTERM, not at the 2 s deadline"
    );
    let status = pg.stop();
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "drain took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_with_no_clients_exits_at_once() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let t0 = Instant::now();
    pg.signal("INT");
    let mut pg = pg;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = pg.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(t0.elapsed() < Duration::from_secs(3));
}

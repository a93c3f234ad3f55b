use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

fn counters() -> ByteCounters {
    ByteCounters {
        to_server: prometheus::IntCounter::new("a", "a").unwrap(),
        to_client: prometheus::IntCounter::new("b", "b").unwrap(),
    }
}

#[tokio::test]
async fn relays_both_ways_large_payloads_and_half_close() {
    let (mut app, client_side) = pair().await;
    let (server_side, mut db) = pair().await;
    let evict = CancellationToken::new();
    let c = counters();
    let c2 = c.clone();
    let task = tokio::spawn(async move { relay(client_side, server_side, &evict, &c2).await });
    // 4 MiB each way at once: needs both directions to progress independently.
    let up: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = up.iter().rev().copied().collect();
    let (up2, down2) = (up.clone(), down.clone());
    let (mut app_r, mut app_w) = app.split();
    let (mut db_r, mut db_w) = db.split();
    let w1 = async {
        app_w.write_all(&up2).await.unwrap();
        app_w.shutdown().await.unwrap();
    };
    let w2 = async {
        db_w.write_all(&down2).await.unwrap();
    };
    let r1 = async {
        let mut v = Vec::new();
        db_r.read_to_end(&mut v).await.unwrap();
        v
    };
    let r2 = async {
        let mut v = vec![0; down.len()];
        app_r.read_exact(&mut v).await.unwrap();
        v
    };
    let ((), (), got_up, got_down) = tokio::join!(w1, w2, r1, r2);
    assert!(got_up == up, "client→server bytes differ");
    assert!(got_down == down, "server→client bytes differ");
    // The client's EOF reached the server as EOF (read_to_end returned), and
    // the server can still answer after it.
    db.write_all(b"bye").await.unwrap();
    let mut bye = [0u8; 3];
    app.read_exact(&mut bye).await.unwrap();
    assert_eq!(&bye, b"bye");
    drop(db);
    assert_eq!(task.await.unwrap(), RelayEnd::Closed);
    assert_eq!(c.to_server.get(), up.len() as u64);
    assert_eq!(c.to_client.get(), down.len() as u64 + 3);
}

#[tokio::test]
async fn server_gone_ends_the_relay_while_the_client_is_idle() {
    let (mut app, client_side) = pair().await;
    let (server_side, mut db) = pair().await;
    let evict = CancellationToken::new();
    let c = counters();
    let task = tokio::spawn(async move { relay(client_side, server_side, &evict, &c).await });
    // The server says goodbye and closes; the client neither reads nor writes.
    db.write_all(b"FATAL").await.unwrap();
    drop(db);
    let end = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert_eq!(
        end.expect("relay outlived its server").unwrap(),
        RelayEnd::Closed
    );
    // The client still gets the last bytes, then EOF.
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"FATAL");
}

#[tokio::test]
async fn eviction_ends_the_relay() {
    let (mut app, client_side) = pair().await;
    let (server_side, _db) = pair().await;
    let evict = CancellationToken::new();
    let e2 = evict.clone();
    let task = tokio::spawn(async move { relay(client_side, server_side, &e2, &counters()).await });
    evict.cancel();
    assert_eq!(task.await.unwrap(), RelayEnd::Evicted);
    let mut buf = [0u8; 1];
    assert_eq!(
        app.read(&mut buf).await.unwrap(),
        0,
        "client sees the close"
    );
}

#[tokio::test]
async fn refusal_answers_ssl_then_sends_fatal_error() {
    let (mut app, mut client_side) = pair().await;
    let task = tokio::spawn(async move {
        refuse(
            &mut client_side,
            &[],
            crate::protocol::sqlstate::CANNOT_CONNECT_NOW,
            "no node",
            Duration::from_secs(5),
        )
        .await;
    });
    app.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut n = [0u8; 1];
    app.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    app.write_all(b"\0\0\0\x12\0\x03\0\0user\0app\0\0")
        .await
        .unwrap();
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply[0], b'E');
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("C57P03") && text.contains("Mno node"),
        "{text}"
    );
    task.await.unwrap();
}

#[tokio::test]
async fn refusal_of_garbage_or_silence_is_bounded() {
    let (mut app, mut client_side) = pair().await;
    app.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(2),
        refuse(
            &mut client_side,
            &[],
            crate::protocol::sqlstate::CANNOT_CONNECT_NOW,
            "x",
            Duration::from_secs(1),
        ),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with('E') && text.contains("C08P01") && text.contains("invalid startup packet"),
        "{text}"
    );
    let (_silent, mut client_side) = pair().await;
    tokio::time::timeout(
        Duration::from_secs(2),
        refuse(
            &mut client_side,
            &[],
            crate::protocol::sqlstate::CANNOT_CONNECT_NOW,
            "x",
            Duration::from_millis(200),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn refusal_reads_on_from_the_bytes_already_read() {
    // The listener reads a client's first 8 bytes (to spot a CancelRequest)
    // before it knows it must refuse: the refusal parses on from them.
    let (mut app, mut client_side) = pair().await;
    let startup = b"\0\0\0\x12\0\x03\0\0user\0app\0\0";
    let task = tokio::spawn(async move {
        let mut first = [0u8; 8];
        client_side.read_exact(&mut first).await.unwrap();
        refuse(
            &mut client_side,
            &first,
            crate::protocol::sqlstate::CANNOT_CONNECT_NOW,
            "no node",
            Duration::from_secs(5),
        )
        .await;
    });
    app.write_all(startup).await.unwrap();
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with('E') && text.contains("C57P03"), "{text}");
    task.await.unwrap();
}

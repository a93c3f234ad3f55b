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
        moved: std::sync::Arc::default(),
    }
}

/// Both engines; io_uring only where the kernel allows it (said on stderr).
fn engines() -> Vec<Engine> {
    let mut v = vec![Engine::Epoll];
    match uring::Uring::start(1) {
        Ok(u) => v.push(Engine::Uring(u)),
        Err(e) => eprintln!("io_uring engine not tested here: {e}"),
    }
    v
}

/// Starts a relay on `engine`; the receiver gets how it ended.
fn start(
    engine: &Engine,
    client: TcpStream,
    server: TcpStream,
    evict: &CancellationToken,
    bytes: &ByteCounters,
) -> tokio::sync::oneshot::Receiver<RelayEnd> {
    let opaque = frames::Frames::after_request(&[]);
    let never = CancellationToken::new();
    start_watched(engine, (client, server), evict, (&never, opaque), bytes)
}

/// [`start_watched`] with the kill (port close) token given too.
fn start_killable(
    engine: &Engine,
    sockets: (TcpStream, TcpStream),
    kill: &CancellationToken,
    frames: frames::Frames,
) -> tokio::sync::oneshot::Receiver<RelayEnd> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.relay(Handoff {
        client: sockets.0,
        server: sockets.1,
        evict: CancellationToken::new(),
        drain: CancellationToken::new(),
        watch: Watch::new(frames),
        close: kill.clone(),
        bytes: counters(),
        done: Box::new(move |end| {
            let _ = tx.send(end);
        }),
    });
    rx
}

/// [`start`] with a drain token and the protocol position to watch from.
fn start_watched(
    engine: &Engine,
    (client, server): (TcpStream, TcpStream),
    evict: &CancellationToken,
    (drain, frames): (&CancellationToken, frames::Frames),
    bytes: &ByteCounters,
) -> tokio::sync::oneshot::Receiver<RelayEnd> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine.relay(Handoff {
        client,
        server,
        evict: evict.clone(),
        drain: drain.clone(),
        watch: Watch::new(frames),
        close: CancellationToken::new(),
        bytes: bytes.clone(),
        done: Box::new(move |end| {
            let _ = tx.send(end);
        }),
    });
    rx
}

#[tokio::test]
async fn relays_both_ways_large_payloads_and_half_close() {
    for engine in engines() {
        both_ways(&engine).await;
    }
}

async fn both_ways(engine: &Engine) {
    let name = engine.name();
    let (mut app, client_side) = pair().await;
    let (server_side, mut db) = pair().await;
    let evict = CancellationToken::new();
    let c = counters();
    let ended = start(engine, client_side, server_side, &evict, &c);
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
    assert!(got_up == up, "{name}: client→server bytes differ");
    assert!(got_down == down, "{name}: server→client bytes differ");
    // The client's EOF reached the server as EOF (read_to_end returned), and
    // the server can still answer after it.
    db.write_all(b"bye").await.unwrap();
    let mut bye = [0u8; 3];
    app.read_exact(&mut bye).await.unwrap();
    assert_eq!(&bye, b"bye", "{name}");
    drop(db);
    let end = tokio::time::timeout(Duration::from_secs(5), ended).await;
    assert_eq!(end.expect(name).unwrap(), RelayEnd::Closed, "{name}");
    assert_eq!(c.to_server.get(), up.len() as u64, "{name}");
    assert_eq!(c.to_client.get(), down.len() as u64 + 3, "{name}");
    // The client sees the server's close after the last bytes.
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{name}");
}

#[tokio::test]
async fn small_messages_go_both_ways_in_turn() {
    for engine in engines() {
        let name = engine.name();
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let c = counters();
        let _ended = start(
            &engine,
            client_side,
            server_side,
            &CancellationToken::new(),
            &c,
        );
        // Request/response sizes around the engines' read sizes.
        for size in [1, 100, 511, 512, 513, 2048, 9000, 70_000] {
            let msg: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            app.write_all(&msg).await.unwrap();
            let mut got = vec![0; size];
            db.read_exact(&mut got).await.unwrap();
            assert!(got == msg, "{name}: request of {size}");
            db.write_all(&msg).await.unwrap();
            app.read_exact(&mut got).await.unwrap();
            assert!(got == msg, "{name}: reply of {size}");
        }
    }
}

#[tokio::test]
async fn server_gone_ends_the_relay_while_the_client_is_idle() {
    for engine in engines() {
        let name = engine.name();
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let ended = start(
            &engine,
            client_side,
            server_side,
            &CancellationToken::new(),
            &counters(),
        );
        // The server says goodbye and closes; the client neither reads nor writes.
        db.write_all(b"FATAL").await.unwrap();
        drop(db);
        let end = tokio::time::timeout(Duration::from_secs(5), ended).await;
        assert_eq!(
            end.expect("relay outlived its server").unwrap(),
            RelayEnd::Closed,
            "{name}"
        );
        // The client still gets the last bytes, then EOF.
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"FATAL", "{name}");
    }
}

#[tokio::test]
async fn eviction_ends_the_relay() {
    for engine in engines() {
        let name = engine.name();
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let evict = CancellationToken::new();
        let ended = start(&engine, client_side, server_side, &evict, &counters());
        // A relay in full swing, then idle, then evicted.
        app.write_all(b"ping").await.unwrap();
        let mut ping = [0u8; 4];
        db.read_exact(&mut ping).await.unwrap();
        evict.cancel();
        ends_as(ended, RelayEnd::Evicted, name).await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), app.read(&mut buf)).await;
        assert_eq!(
            read.expect(name).unwrap(),
            0,
            "{name}: client sees the close"
        );
        let read = tokio::time::timeout(Duration::from_secs(5), db.read(&mut buf)).await;
        assert_eq!(
            read.expect(name).unwrap(),
            0,
            "{name}: server sees the close"
        );
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Reads exactly `want.len()` bytes and checks they are `want`.
async fn expect(s: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect(what)
        .expect(what);
    assert_eq!(got, want, "{what}");
}

/// Everything the client reads until the close, within 5 s.
async fn read_rest(app: &mut TcpStream, name: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut rest))
        .await
        .expect(name)
        .unwrap();
    rest
}

/// Waits up to 5 s for the relay to end; checks how.
async fn ends_as(ended: tokio::sync::oneshot::Receiver<RelayEnd>, want: RelayEnd, name: &str) {
    let end = tokio::time::timeout(Duration::from_secs(5), ended).await;
    assert_eq!(end.expect(name).unwrap(), want, "{name}");
}

#[tokio::test]
async fn a_drained_relay_ends_when_its_transaction_does_and_says_why() {
    for engine in engines() {
        let name = engine.name();
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let (evict, drain) = (CancellationToken::new(), CancellationToken::new());
        let frames = frames::Frames::after_startup(&[]);
        let sockets = (client_side, server_side);
        let mut ended = start_watched(&engine, sockets, &evict, (&drain, frames), &counters());
        let login = [msg(b'R', &[0; 4]), msg(b'Z', b"I")].concat();
        db.write_all(&login).await.unwrap();
        expect(&mut app, &login, name).await;
        let begin = msg(b'Q', b"begin\0");
        app.write_all(&begin).await.unwrap();
        expect(&mut db, &begin, name).await;
        let open = [msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")].concat();
        db.write_all(&open).await.unwrap();
        expect(&mut app, &open, name).await;
        drain.cancel();
        // Inside the transaction the relay goes on, both ways.
        let commit = msg(b'Q', b"commit\0");
        app.write_all(&commit).await.unwrap();
        expect(&mut db, &commit, name).await;
        assert!(
            ended.try_recv().is_err(),
            "{name}: a transaction is open: no end yet"
        );
        let done = [msg(b'C', b"COMMIT\0"), msg(b'Z', b"I")].concat();
        db.write_all(&done).await.unwrap();
        expect(&mut app, &done, name).await;
        ends_as(ended, RelayEnd::Drained, name).await;
        let rest = read_rest(&mut app, name).await;
        assert_eq!(
            rest,
            farewell_for(RelayEnd::Drained).unwrap(),
            "{name}: FATAL 57P01, then the close"
        );
        assert!(String::from_utf8_lossy(&rest).contains("57P01"));
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), db.read(&mut buf)).await;
        assert_eq!(
            read.expect(name).unwrap(),
            0,
            "{name}: server sees the close"
        );
    }
}

#[tokio::test]
async fn a_relay_idle_when_drained_ends_at_once_and_an_encrypted_one_stays() {
    for engine in engines() {
        let name = engine.name();
        let (mut app, client_side) = pair().await;
        let (server_side, db) = pair().await;
        let (evict, drain) = (CancellationToken::new(), CancellationToken::new());
        let login = [msg(b'R', &[0; 4]), msg(b'Z', b"I")].concat();
        let frames = frames::Frames::after_startup(&login);
        let sockets = (client_side, server_side);
        let ended = start_watched(&engine, sockets, &evict, (&drain, frames), &counters());
        drain.cancel();
        ends_as(ended, RelayEnd::Drained, name).await;
        expect(&mut app, farewell_for(RelayEnd::Drained).unwrap(), name).await;
        drop(db);

        // TLS negotiated with the node: pgvane cannot see transactions, so
        // draining leaves the client be; eviction still ends it.
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&crate::protocol::SSL_REQUEST_CODE.to_be_bytes());
        let frames = frames::Frames::after_request(&ssl);
        let sockets = (client_side, server_side);
        let mut ended = start_watched(&engine, sockets, &evict, (&drain, frames), &counters());
        db.write_all(b"S").await.unwrap();
        expect(&mut app, b"S", name).await;
        let record = [msg(b'Z', b"I"), vec![0x17, 3, 3, 0, 1, 9]].concat();
        db.write_all(&record).await.unwrap();
        expect(&mut app, &record, name).await;
        assert!(ended.try_recv().is_err(), "{name}: opaque streams stay");
        evict.cancel();
        ends_as(ended, RelayEnd::Evicted, name).await;
    }
}

#[tokio::test]
async fn a_killed_relay_says_so_between_messages_and_only_then() {
    for engine in engines() {
        let name = engine.name();
        // Between messages: FATAL 57P01 "administrator command", then the close.
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let kill = CancellationToken::new();
        let login = [msg(b'R', &[0; 4]), msg(b'Z', b"I")].concat();
        let frames = frames::Frames::after_startup(&login);
        let ended = start_killable(&engine, (client_side, server_side), &kill, frames);
        let row = msg(b'D', b"\0\0");
        db.write_all(&row).await.unwrap();
        expect(&mut app, &row, name).await;
        kill.cancel();
        ends_as(ended, RelayEnd::Evicted, name).await;
        let rest = read_rest(&mut app, name).await;
        assert_eq!(rest, farewell_for(RelayEnd::Evicted).unwrap(), "{name}");
        assert!(String::from_utf8_lossy(&rest).contains("administrator command"));

        // Half a message passed on: a message of pgvane's would corrupt the
        // stream, so the client only sees the close.
        let (mut app, client_side) = pair().await;
        let (server_side, mut db) = pair().await;
        let kill = CancellationToken::new();
        let frames = frames::Frames::after_startup(&login);
        let ended = start_killable(&engine, (client_side, server_side), &kill, frames);
        let half = &msg(b'D', &[7; 40])[..20];
        db.write_all(half).await.unwrap();
        expect(&mut app, half, name).await;
        kill.cancel();
        ends_as(ended, RelayEnd::Evicted, name).await;
        let rest = read_rest(&mut app, name).await;
        assert!(rest.is_empty(), "{name}: nothing after half a message");
    }
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

#[test]
fn a_whole_protocol_3_startup_packet_is_told_from_other_first_packets() {
    let mut startup = Vec::new();
    crate::protocol::encode::startup(&mut startup, &[("user", "u")]);
    assert!(flow::is_startup(&startup));
    assert!(!flow::is_startup(&startup[..8]), "only its first 8 bytes");
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(!flow::is_startup(&ssl));
}

#[test]
fn the_sqlstate_of_an_error_body() {
    use crate::protocol::message::error_fields;
    let body = b"SFATAL\0C57P03\0Mthe database system is shutting down\0\0";
    assert_eq!(error_fields(body).0, "57P03");
    assert_eq!(error_fields(b"SFATAL\0\0").0, "");
    assert_eq!(error_fields(b"C57P0").0, "", "unterminated");
}

#[tokio::test]
async fn a_node_shutting_down_is_told_from_one_that_serves() {
    let mut err = Vec::new();
    crate::protocol::encode::error_response(
        &mut err,
        crate::protocol::encode::Severity::Fatal,
        crate::protocol::sqlstate::CANNOT_CONNECT_NOW,
        "the database system is shutting down",
    );
    let mut other = Vec::new();
    crate::protocol::encode::error_response(
        &mut other,
        crate::protocol::encode::Severity::Fatal,
        crate::protocol::sqlstate::INVALID_PASSWORD,
        "password authentication failed",
    );
    let auth_ok = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];
    for (answer, want) in [
        (err.clone(), flow::Reply::NotAccepting("57P03".into())),
        (other.clone(), flow::Reply::Serves(other.clone())),
        (auth_ok.to_vec(), flow::Reply::Serves(auth_ok[..5].to_vec())),
    ] {
        let (mut node, mut pgvane) = pair().await;
        node.write_all(&answer).await.unwrap();
        let got = flow::first_reply(&mut pgvane, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, want);
    }
    // A node that says nothing within the timeout is an error, not a hang.
    let (_node, mut pgvane) = pair().await;
    assert!(
        flow::first_reply(&mut pgvane, Duration::from_millis(50))
            .await
            .is_err()
    );
}

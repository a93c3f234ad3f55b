use super::*;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake Patroni answers.
#[derive(Clone)]
enum Answer {
    Json(&'static str),
    Status(u16),
    Hang,
    Close,
    /// A chunked body of this many bytes (no Content-Length).
    Huge(usize),
    /// A Content-Length of this many bytes, then nothing.
    Announce(u64),
}

struct Fake {
    url: String,
    answer: Arc<Mutex<Answer>>,
}

async fn fake(answer: Answer) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(Mutex::new(answer));
    let shared = Arc::clone(&answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let now = shared.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(
                    got.starts_with(b"GET /cluster "),
                    "{}",
                    String::from_utf8_lossy(&got)
                );
                let reply = match now {
                    Answer::Json(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Answer::Status(code) => format!(
                        "HTTP/1.1 {code} Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    Answer::Close => return,
                    Answer::Huge(n) => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536));
                        for _ in 0..n / 65536 {
                            if sock.write_all(chunk.as_bytes()).await.is_err() {
                                return; // pgvane stopped reading: what we want
                            }
                        }
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                        return;
                    }
                    Answer::Announce(n) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
                    ),
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    Fake { url, answer }
}

const HEALTHY: &str = r#"{"members": [
 {"name": "n1", "role": "leader", "state": "running", "api_url": null, "host": "127.0.0.11", "port": 5432},
 {"name": "n2", "role": "replica", "state": "streaming", "host": "127.0.0.12", "port": 5432, "lag": 0, "tags": {"noloadbalance": "false"}},
 {"name": "n3", "role": "replica", "state": "stopped", "host": "127.0.0.13", "port": 5432, "lag": "unknown"},
 {"name": "n4", "role": "replica", "state": "running"}]}"#;

const SWITCHED: &str = r#"{"members": [
 {"name": "n1", "role": "replica", "state": "running", "host": "127.0.0.11", "port": 5432, "lag": 0},
 {"name": "n2", "role": "leader", "state": "running", "host": "127.0.0.12", "port": 5432}]}"#;

fn settings(hosts: &[&Fake]) -> WatchSettings {
    WatchSettings {
        hosts: hosts.iter().map(|f| f.url.clone()).collect(),
        interval: Duration::from_secs(3600),
        timeout: Duration::from_millis(300),
        client: reqwest::Client::new(),
    }
}

fn start(s: WatchSettings) -> (WatcherHandle, CancellationToken) {
    let (w, h) = Watcher::new("c", s, Arc::new(Metrics::new()));
    let cancel = CancellationToken::new();
    tokio::spawn(w.run(cancel.clone()));
    (h, cancel)
}

#[tokio::test]
async fn polls_and_publishes_lenient_answer() {
    let f = fake(Answer::Json(HEALTHY)).await;
    let (h, _c) = start(settings(&[&f]));
    let generation = h.update_now().await.unwrap();
    assert!(generation >= 1);
    let map = h.map.load();
    assert_eq!(map.members.len(), 3);
    assert_eq!(map.skipped, vec!["n4".to_owned()]);
    assert!(!map.stale);
    assert_eq!(map.members[2].lag, None);
    // An identical answer does not bump the generation.
    assert_eq!(h.update_now().await.unwrap(), generation);
    *f.answer.lock().unwrap() = Answer::Json(SWITCHED);
    assert_eq!(h.update_now().await.unwrap(), generation + 1);
    assert_eq!(&*h.map.load().leader().unwrap().name, "n2");
}

#[tokio::test]
async fn first_good_answer_wins_over_failing_hosts() {
    let bad = fake(Answer::Status(503)).await;
    let hang = fake(Answer::Hang).await;
    let good = fake(Answer::Json(HEALTHY)).await;
    let mut s = settings(&[&bad, &hang, &good]);
    s.timeout = Duration::from_secs(5);
    let (h, _c) = start(s);
    let t = Instant::now();
    h.update_now().await.unwrap();
    // The others get SETTLE after the first good answer, never the timeout.
    assert!(
        t.elapsed() < SETTLE + Duration::from_millis(500),
        "waited for the hanging host: {:?}",
        t.elapsed()
    );
    assert_eq!(h.map.load().source.as_deref(), Some(good.url.as_str()));
}

#[tokio::test]
async fn every_host_failing_keeps_last_map_marked_stale() {
    let a = fake(Answer::Json(HEALTHY)).await;
    let b = fake(Answer::Status(500)).await;
    let (h, _c) = start(settings(&[&a, &b]));
    let g1 = h.update_now().await.unwrap();
    for broken in [
        Answer::Status(500),
        Answer::Json("{not json"),
        Answer::Hang,
        Answer::Close,
        Answer::Json(r#"{"members": []}"#),
        Answer::Json(r#"{"x": 1}"#),
    ] {
        *a.answer.lock().unwrap() = broken;
        let err = h.update_now().await.unwrap_err();
        assert!(err.contains(&a.url) && err.contains(&b.url), "{err}");
        let map = h.map.load();
        assert!(map.stale);
        assert_eq!(map.members.len(), 3, "last good members kept");
        assert_eq!(map.generation, g1 + 1, "stale flips the generation once");
        assert!(map.last_error.is_some());
    }
    let err = {
        *a.answer.lock().unwrap() = Answer::Hang;
        h.update_now().await.unwrap_err()
    };
    assert!(err.contains("timed out"), "{err}");
    *a.answer.lock().unwrap() = Answer::Json(HEALTHY);
    assert_eq!(h.update_now().await.unwrap(), g1 + 2);
    assert!(!h.map.load().stale);
}

#[tokio::test]
async fn settings_change_polls_new_hosts_at_once() {
    let a = fake(Answer::Json(HEALTHY)).await;
    let b = fake(Answer::Json(SWITCHED)).await;
    let (h, _c) = start(settings(&[&a]));
    h.update_now().await.unwrap();
    let mut gen_rx = h.generation.clone();
    h.set_settings(settings(&[&b]));
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.map.load().leader().map(|m| &*m.name) != Some("n2") {
            gen_rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn never_answered_cluster_stays_empty_and_stale() {
    let a = fake(Answer::Status(503)).await;
    let (h, _c) = start(settings(&[&a]));
    assert!(h.update_now().await.unwrap_err().contains("503"));
    let map = h.map.load();
    assert!(map.stale && map.members.is_empty());
    assert_eq!(map.generation, 0);
}

#[tokio::test]
async fn an_old_view_answering_first_loses_to_the_majority() {
    let old = fake(Answer::Json(HEALTHY)).await;
    let a = fake(Answer::Json(SWITCHED)).await;
    let b = fake(Answer::Json(SWITCHED)).await;
    let (h, _c) = start(settings(&[&old, &a, &b]));
    h.update_now().await.unwrap();
    let map = h.map.load();
    assert_eq!(&*map.leader().unwrap().name, "n2", "{map:?}");
    let why = map.disagreement.as_deref().unwrap();
    assert!(
        why.contains(&format!("{} lists leader n1", old.url)),
        "{why}"
    );
    // Once they agree, the disagreement is gone.
    *old.answer.lock().unwrap() = Answer::Json(SWITCHED);
    h.update_now().await.unwrap();
    assert_eq!(h.map.load().disagreement, None);
}

#[test]
fn credentials_in_urls_are_redacted() {
    assert_eq!(
        redact("https://user:secret@patroni-1:8008/cluster"),
        "https://***@patroni-1:8008/cluster"
    );
    assert_eq!(redact("http://10.0.0.1:8008"), "http://10.0.0.1:8008");
    assert_eq!(redact("http://h:1/a@b"), "http://h:1/a@b");
}

#[tokio::test]
async fn oversized_answers_are_refused_without_reading_them_whole() {
    let huge = fake(Answer::Huge(64 * 1024 * 1024)).await;
    let announce = fake(Answer::Announce(1 << 40)).await;
    for f in [&huge, &announce] {
        let mut s = settings(&[f]);
        s.timeout = Duration::from_secs(20);
        let (h, _c) = start(s);
        let t = Instant::now();
        let e = h.update_now().await.unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

#[tokio::test]
async fn a_drain_mark_republishes_at_once_and_survives_polls() {
    let f = fake(Answer::Json(HEALTHY)).await;
    let (h, _c) = start(settings(&[&f]));
    let generation = h.update_now().await.unwrap();
    let mut rx = h.generation.clone();
    rx.mark_unchanged();
    assert!(h.set_drained("n2", true));
    assert!(!h.set_drained("n2", true), "already marked");
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("republished without a poll")
        .unwrap();
    let map = h.map.load_full();
    assert_eq!(map.generation, generation + 1);
    assert!(map.member("n2").unwrap().drained);
    assert!(!map.member("n1").unwrap().drained);
    // The next poll of the same answer keeps the mark and the generation.
    assert_eq!(h.update_now().await.unwrap(), generation + 1);
    assert!(h.map.load().member("n2").unwrap().drained);
    assert!(h.set_drained("n2", false));
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(!h.map.load().member("n2").unwrap().drained);
}

#[tokio::test]
async fn a_drain_mark_before_the_first_answer_publishes_no_map() {
    let f = fake(Answer::Hang).await;
    let (h, _c) = start(settings(&[&f]));
    assert!(h.set_drained("n2", true));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.map.load().generation, 0, "no answer yet: still no map");
}

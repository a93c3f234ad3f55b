use super::*;
use crate::config::{PortConfig, PortKey, RoleSel, load_str};
use crate::router::HealthBook;
use crate::topology::watcher::{WatchSettings, Watcher};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use std::time::Duration;
use tower::ServiceExt;

fn state_with(
    hosts: Vec<String>,
) -> (
    AdminState,
    mpsc::Receiver<Command>,
    tokio_util::sync::CancellationToken,
) {
    let metrics = Arc::new(Metrics::new());
    let settings = WatchSettings {
        hosts,
        interval: Duration::from_secs(3600),
        timeout: Duration::from_millis(200),
        client: reqwest::Client::new(),
    };
    let (w, handle) = Watcher::new("main", settings, Arc::clone(&metrics));
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(w.run(cancel.clone()));
    let globals = Arc::new(ArcSwap::from_pointee(
        load_str("clusters: {main: {hosts: ['http://127.0.0.1:1'], ports: {ro: {listen: '127.0.0.1:1', roles: [async]}}}}").unwrap(),
    ));
    let port = Arc::new(PortShared::new(
        PortKey {
            cluster: "main".into(),
            port: "ro".into(),
        },
        PortConfig {
            max_lag_in_bytes: Some(100),
            ..PortConfig::new("127.0.0.1:1".parse().unwrap(), vec![RoleSel::Async])
        },
        Arc::clone(&globals),
        Arc::clone(&handle.map),
        Arc::new(HealthBook::default()),
        Arc::new(crate::consistency::ClusterLink::new(
            crate::tracker::TrackerHandle::idle(),
            handle.generation.clone(),
        )),
        crate::listener::ProcessShared {
            metrics: Arc::clone(&metrics),
            workers: Arc::new(crate::workers::Workers::current()),
            admissions: Arc::default(),
            engine: Arc::new(crate::relay::Engine::Epoll),
        },
    ));
    let mut views = BTreeMap::new();
    views.insert(
        "main".to_owned(),
        ClusterView {
            watcher: handle,
            ports: vec![port],
            positions: crate::tracker::TrackerHandle::idle(),
        },
    );
    let (tx, rx) = mpsc::channel(4);
    let state = AdminState {
        clusters: Arc::new(ArcSwap::from_pointee(views)),
        metrics,
        commands: tx,
        globals,
        draining: tokio_util::sync::CancellationToken::new(),
    };
    (state, rx, cancel)
}

/// A request from a loopback peer, with its body.
async fn call(state: &AdminState, method: &str, uri: &str) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(super::Peer("127.0.0.1:40000".parse().unwrap()));
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A one-shot fake Patroni serving `body` on every request.
async fn patroni(body: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    url
}

const CLUSTER: &str = r#"{"members": [{"name": "n1", "role": "leader", "state": "running", "host": "127.0.0.11", "port": 5432},
 {"name": "n2", "role": "replica", "state": "streaming", "host": "127.0.0.12", "port": 5432, "lag": 0},
 {"name": "n3", "role": "replica", "state": "streaming", "host": "127.0.0.13", "port": 5432, "lag": 5000}]}"#;

#[tokio::test]
async fn root_health_and_unready_before_first_answer() {
    let (s, _rx, _c) = state_with(vec!["http://127.0.0.1:1".into()]);
    assert_eq!(call(&s, "GET", "/").await, (StatusCode::OK, "OK".into()));
    assert_eq!(call(&s, "GET", "/health").await.0, StatusCode::OK);
    let (status, body) = call(&s, "GET", "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("main"));
    let (status, body) = call(&s, "POST", "/update_clusters").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("error"), "{body}");
}

#[tokio::test]
async fn update_clusters_publishes_before_answering() {
    let url = patroni(CLUSTER).await;
    let (s, _rx, _c) = state_with(vec![url]);
    let (status, body) = call(&s, "GET", "/update_clusters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"generation\":1"), "{body}");
    assert_eq!(call(&s, "GET", "/ready").await.0, StatusCode::OK);
    let (_, body) = call(&s, "GET", "/clusters").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let main = &v["main"];
    assert_eq!(main["generation"], 1);
    assert_eq!(main["stale"], false);
    assert_eq!(main["members"][0]["role"], "leader");
    assert_eq!(main["members"][0]["eligible"]["ro"], "role");
    assert_eq!(main["members"][1]["eligible"]["ro"], true);
    assert_eq!(main["members"][2]["eligible"]["ro"], "lag");
    assert_eq!(main["members"][2]["lag"], 5000);
    assert_eq!(main["ports"]["ro"]["max_lag_in_bytes"], 100);
    let (status, text) = call(&s, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("pgvane_map_generation{cluster=\"main\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pgvane_patroni_polls_total{cluster=\"main\",result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pgvane_map_age_seconds{cluster=\"main\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn reload_goes_to_app_and_reports_errors() {
    let (s, mut rx, _c) = state_with(vec!["http://127.0.0.1:1".into()]);
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(Command::Reload(Some(reply))) = rx.recv().await {
            n += 1;
            let _ = reply.send(if n == 1 {
                Ok("ports +[main/x]".into())
            } else {
                Err("clusters.main.hosts: bad".into())
            });
        }
    });
    let (status, body) = call(&s, "POST", "/reload").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("main/x"));
    let (status, body) = call(&s, "POST", "/reload").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("clusters.main.hosts: bad") && body.contains("old configuration kept"),
        "{body}"
    );
    assert_eq!(
        call(&s, "GET", "/reload").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// A request from a loopback peer.
async fn call_with(
    state: &AdminState,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    call_from(state, "127.0.0.1:40000", method, uri, headers).await
}

async fn call_from(
    state: &AdminState,
    peer: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(super::Peer(peer.parse().unwrap()));
    router(state.clone()).oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn state_changing_requests_need_the_token_and_no_browser() {
    let (s, mut rx, _c) = state_with(vec!["http://127.0.0.1:1".into()]);
    tokio::spawn(async move {
        while let Some(Command::Reload(Some(reply))) = rx.recv().await {
            let _ = reply.send(Ok("nothing".into()));
        }
    });
    // No token configured: allowed from curl on loopback, refused from
    // another host and from a web page.
    assert_eq!(call_with(&s, "POST", "/reload", &[]).await, StatusCode::OK);
    assert_eq!(
        call_from(&s, "10.1.2.3:5000", "POST", "/reload", &[]).await,
        StatusCode::FORBIDDEN
    );
    let evil = [("origin", "https://evil.example")];
    assert_eq!(
        call_with(&s, "POST", "/reload", &evil).await,
        StatusCode::FORBIDDEN
    );
    let fetch = [("sec-fetch-site", "cross-site")];
    assert_eq!(
        call_with(&s, "GET", "/update_clusters", &fetch).await,
        StatusCode::FORBIDDEN
    );
    // With a token: only the right bearer passes; reads stay open.
    let mut cfg = (*s.globals.load_full()).clone();
    cfg.admin_token = Some("a-long-enough-token".into());
    s.globals.store(Arc::new(cfg));
    assert_eq!(
        call_with(&s, "POST", "/reload", &[]).await,
        StatusCode::UNAUTHORIZED
    );
    let wrong = [("authorization", "Bearer a-long-enough-tokeX")];
    assert_eq!(
        call_with(&s, "POST", "/reload", &wrong).await,
        StatusCode::UNAUTHORIZED
    );
    let right = [("authorization", "Bearer a-long-enough-token")];
    assert_eq!(
        call_with(&s, "POST", "/reload", &right).await,
        StatusCode::OK
    );
    assert_eq!(
        call_from(&s, "10.1.2.3:5000", "POST", "/reload", &right).await,
        StatusCode::OK
    );
    assert_eq!(call_with(&s, "GET", "/clusters", &[]).await, StatusCode::OK);
    assert_eq!(call_with(&s, "GET", "/metrics", &[]).await, StatusCode::OK);
}

/// Patroni's callbacks call `/update_clusters` from the nodes, with no
/// token: it is taken from any host (it only polls sooner), and a burst of
/// calls shares a few spaced polls.
#[tokio::test]
async fn update_clusters_needs_no_token_and_floods_are_coalesced() {
    let url = patroni(CLUSTER).await;
    let (s, _rx, _c) = state_with(vec![url]);
    let mut cfg = (*s.globals.load_full()).clone();
    cfg.admin_token = Some("a-long-enough-token".into());
    s.globals.store(Arc::new(cfg));
    let calls = (0..40).map(|_| call_from(&s, "10.1.2.3:5000", "POST", "/update_clusters", &[]));
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|a| *a == StatusCode::OK), "{answers:?}");
    let (_, text) = call(&s, "GET", "/metrics").await;
    let polls: f64 = text
        .lines()
        .find(|l| l.starts_with("pgvane_patroni_polls_total{cluster=\"main\",result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // At most one poll per TRIGGER_GAP since the start, plus the first.
    let gaps =
        started.elapsed().as_secs_f64() / crate::topology::watcher::TRIGGER_GAP.as_secs_f64();
    assert!(
        polls <= gaps.ceil() + 1.0 && polls < 40.0,
        "{polls} polls for 40 calls"
    );
}

#[tokio::test]
async fn ready_is_503_once_draining() {
    let url = patroni(CLUSTER).await;
    let (s, _rx, _c) = state_with(vec![url]);
    assert_eq!(call(&s, "GET", "/update_clusters").await.0, StatusCode::OK);
    assert_eq!(call(&s, "GET", "/ready").await.0, StatusCode::OK);
    s.draining.cancel();
    let (status, body) = call(&s, "GET", "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(call(&s, "GET", "/health").await.0, StatusCode::OK);
}

//! Every Patroni API down (all Patroni processes paused with SIGSTOP while
//! PostgreSQL runs on): pgvane keeps the last map, shows it stale, and
//! traffic still flows; fresh again when Patroni answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

struct Resume;
impl Drop for Resume {
    fn drop(&mut self) {
        lab(&["resume-api"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_map_is_kept_and_traffic_flows() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let leader = leader();
    let before = connect(p.rw).await.unwrap();
    let guard = Resume;
    lab(&["pause-api"]);
    let stale = wait_until(Duration::from_secs(10), || {
        pg.clusters()["lab"]["stale"] == true
    });
    assert!(stale, "map never marked stale:\n{}", pg.log_text());
    let v = pg.clusters();
    assert_eq!(
        v["lab"]["members"].as_array().unwrap().len(),
        3,
        "last good members kept"
    );
    assert!(
        v["lab"]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{v}"
    );
    assert_eq!(pg.metric("pgvane_map_stale", &["cluster=\"lab\""]), 1.0);
    let (status, body) = pg.http("POST", "/update_clusters").unwrap();
    assert_eq!(status, 503, "{body}");
    // Traffic still flows on the last map.
    assert!(before.alive().await);
    let c = connect(p.rw).await.unwrap();
    assert_eq!(c.whereami().await.unwrap(), (leader.clone(), false));
    let r = connect(p.ro).await.unwrap();
    assert!(r.whereami().await.unwrap().1);
    drop(guard);
    let fresh = wait_until(Duration::from_secs(15), || {
        pg.clusters()["lab"]["stale"] == false
    });
    assert!(fresh);
    let log = pg.log_text();
    assert_eq!(
        log.matches("every Patroni host failed").count(),
        1,
        "logged once per state change:\n{log}"
    );
    assert!(log.contains("Patroni answers again"));
    lab(&["wait-healthy"]);
}

//! A stopped replica leaves the replica port; new clients go elsewhere;
//! started again it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn stopped_replica_is_skipped_then_returns() {
    healthy_lab();
    let p = Ports::new();
    let pg = Pgvane::start(&lab_config(&p), p.admin);
    let reps = replicas();
    let stopped = reps[0].clone();
    let n = stopped.trim_start_matches("node").to_owned();
    lab(&["stop-node", &n]);
    // Until Patroni marks it stopped, pgvane's own refused connects steer new
    // clients away; afterwards the map does. Either way: never the stopped node.
    for _ in 0..6 {
        let c = connect(p.ro)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.log_text()));
        assert_eq!(c.whereami().await.unwrap().0, reps[1]);
    }
    let listed_not_eligible = wait_until(Duration::from_secs(30), || {
        let v = pg.clusters();
        v["lab"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != stopped.as_str() || m["eligible"]["ro"] != true)
    });
    assert!(listed_not_eligible);
    lab(&["start-node", &n]);
    let back = wait_until_async(Duration::from_secs(20), || async {
        let mut seen = false;
        let mut keep = Vec::new();
        for _ in 0..3 {
            if let Ok(c) = connect(p.ro).await {
                seen |= c.whereami().await.map(|w| w.0 == stopped).unwrap_or(false);
                keep.push(c);
            }
        }
        seen
    })
    .await;
    assert!(back, "restarted replica not used again");
}

//! Patroni hosts that disagree: a fake host answers first with an old
//! `/cluster` (leader and a replica swapped, no lag anywhere). It must not
//! flip the leader (the majority and the leader's own `/patroni` win) nor
//! hide real lag (positions come from each member's own `/patroni`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn an_old_view_neither_flips_the_leader_nor_hides_lag() {
    healthy_lab();
    let real_leader = leader();
    let reps = replicas();
    let (laggy, steady) = (reps[0].clone(), reps[1].clone());
    // The old view: the real members, laggy listed as leader, no lag.
    let members: Vec<serde_json::Value> = NODES
        .iter()
        .map(|n| {
            let role = if *n == laggy { "leader" } else { "replica" };
            let ip = node_ip(n);
            serde_json::json!({"name": n, "role": role, "state": if role == "leader" { "running" } else { "streaming" },
                "host": ip, "port": 5432, "api_url": format!("http://{ip}:8008/patroni"), "timeline": 1, "lag": 0, "replay_lag": 0})
        })
        .collect();
    let old = serde_json::json!({"members": members, "scope": "lab"}).to_string();
    let fake = fake_patroni(old).await;
    let p = Ports::new();
    let yaml = lab_config(&p).replace("hosts: [", &format!("hosts: [http://127.0.0.1:{fake}, "));
    let pg = Pgvane::start(&yaml, p.admin);
    let history = History::start(p.admin);
    // The leader port reaches the real leader, out of recovery, every time.
    for _ in 0..5 {
        let c = connect(p.rw).await.unwrap();
        assert_eq!(
            c.whereami().await.unwrap(),
            (real_leader.clone(), false),
            "{}",
            history.dump()
        );
    }
    let clusters = pg.clusters();
    let why = clusters["lab"]["disagreement"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains(&format!("lists leader {laggy}")),
        "disagreement not reported: {}",
        clusters["lab"]
    );
    // Real lag on the replica the old view calls leader (and lag-free).
    let on_laggy = clients_on(p.ro, &laggy, 2).await;
    let on_steady = clients_on(p.ro, &steady, 1).await;
    lab(&["lag", laggy.trim_start_matches("node"), "--no-wait"]);
    let t0 = Instant::now();
    let evicted = all_gone(&on_laggy, Duration::from_secs(4)).await;
    let took = t0.elapsed();
    lab(&["unlag", laggy.trim_start_matches("node")]);
    assert!(
        evicted,
        "lag hidden by the old view\n{}\n{}",
        history.dump(),
        pg.log_text()
    );
    eprintln!("lag_disagreeing_hosts: evicted {took:?} after the WAL was written");
    assert!(on_steady[0].alive().await);
    assert!(
        pg.log_text().contains("Patroni hosts disagree"),
        "disagreement not logged"
    );
}

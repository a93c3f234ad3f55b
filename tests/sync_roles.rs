//! `sync` and `async` roles with `synchronous_mode` on: the sync port
//! reaches only the sync standby, the async port only the others.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::time::Duration;

struct SyncOff;
impl Drop for SyncOff {
    fn drop(&mut self) {
        lab(&["sync", "off"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_and_async_ports_follow_patroni_roles() {
    healthy_lab();
    let p = Ports::new();
    let yaml = lab_config(&p)
        .replace(
            "roles: [sync, async], max_lag_in_bytes: 16777216",
            "roles: [sync]",
        )
        .replace("roles: [any]", "roles: [async]");
    let pg = Pgvane::start(&yaml, p.admin);
    let _off = SyncOff;
    lab(&["sync", "on"]);
    let summary = lab(&["summary"]);
    let sync_node = summary
        .split(' ')
        .find(|m| m.contains("=sync_standby/"))
        .map(|m| m.split('=').next().unwrap().to_owned())
        .expect("a sync standby");
    let ok = wait_until(Duration::from_secs(10), || {
        pg.clusters()["lab"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "sync_standby")
    });
    assert!(ok);
    for _ in 0..3 {
        let c = connect(p.ro).await.unwrap();
        assert_eq!(c.whereami().await.unwrap(), (sync_node.clone(), true));
        let a = connect(p.any).await.unwrap();
        let (n, rec) = a.whereami().await.unwrap();
        assert!(rec && n != sync_node, "async port reached {n}");
    }
}

//! `pgvane status`: the map, ports and pool use of a running pgvane, read
//! from its admin API; a clear error when nothing answers there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_members_ports_and_pools() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let _pv = Pgvane::start(&split_config(&p, split), p.admin);
    let c = connect(split).await.unwrap();
    c.client.simple_query("select 1").await.unwrap();
    let rw = connect(p.rw).await.unwrap();
    rw.client.simple_query("select 1").await.unwrap();
    let out = Command::new(bin())
        .args(["status", "--admin", &format!("127.0.0.1:{}", p.admin)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("cluster lab: generation "), "{text}");
    let leader = leader();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&leader))
        .unwrap();
    assert!(line.contains("leader") && line.contains(" rw"), "{line}");
    let rw_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rw "))
        .unwrap();
    assert!(rw_line.contains(&format!("{leader}=1")), "{rw_line}");
    // The split port's pool: one open backend at least (open/idle/waiting).
    let app_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("app "))
        .unwrap();
    let pool = app_line.split_whitespace().last().unwrap();
    let open: f64 = pool.split('/').next().unwrap().parse().unwrap();
    assert!(open >= 1.0, "{app_line}");

    let nobody = free_port();
    let out = Command::new(bin())
        .args(["status", "--admin", &format!("127.0.0.1:{nobody}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{nobody}/clusters")),
        "{err}"
    );
}

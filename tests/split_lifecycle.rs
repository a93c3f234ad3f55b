//! A split session's life beyond its queries: SIGTERM and port removal end
//! it (an open transaction may finish first), cancels still reach its
//! backend after a reload rebuilt the port, it can log in while the cluster
//! has no leader, a backend that refuses a login (53300) sends it to the
//! next node, and a role port's CancelRequest reaches the node that runs the
//! query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::{self, Raw};
use common::*;
use pgvane::protocol::{encode, sqlstate};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn split_yaml(p: &Ports, split: u16, extra: &str) -> String {
    format!(
        "drain_timeout_ms: 8000\n{}",
        lab_config(p).replace(
            "    ports:\n",
            &format!(
                "    users:\n      - {{name: postgres, password: postgres}}\n    ports:\n      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], pool_size: 4{extra}}}\n"
            ),
        )
    )
}

/// The next message is a FATAL with `code`, then the connection closes.
async fn ends_with(c: &mut Raw, code: &str) {
    let msg = tokio::time::timeout(Duration::from_secs(5), c.read())
        .await
        .expect("no FATAL within 5 s");
    let msg = msg.expect("closed without an ErrorResponse");
    assert_eq!(raw::error_code(&[msg]).as_deref(), Some(code));
    let after = tokio::time::timeout(Duration::from_secs(5), c.read())
        .await
        .expect("not closed after the FATAL");
    assert!(after.is_none(), "more after the FATAL: {after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_idle_sessions_and_lets_a_transaction_finish() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let mut pg = Pgvane::start(&split_yaml(&p, split, ""), p.admin);
    let setup = connect(split).await.unwrap();
    setup
        .client
        .batch_execute("create table if not exists life_t (x int)")
        .await
        .unwrap();
    let mut idle = Raw::login(split, &[]).await;
    idle.simple("select 1").await;
    let mut fresh = Raw::login(split, &[]).await;
    let mut half = Raw::login(split, &[]).await;
    half.send(&raw::query("select 1")[..3]).await;
    let tx = connect(split).await.unwrap();
    tx.client
        .batch_execute("begin; insert into life_t values (1)")
        .await
        .unwrap();
    let t0 = Instant::now();
    pg.signal("TERM");
    // A session holding no backend ends at once with 57P01.
    ends_with(&mut idle, sqlstate::ADMIN_SHUTDOWN.code()).await;
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // One that has sent no request yet (its client may have connected just
    // before the listener closed) is given a second to send it, then ends.
    ends_with(&mut fresh, sqlstate::ADMIN_SHUTDOWN.code()).await;
    ends_with(&mut half, sqlstate::ADMIN_SHUTDOWN.code()).await;
    let fresh_ended = t0.elapsed();
    assert!(
        fresh_ended >= Duration::from_millis(900) && fresh_ended < Duration::from_secs(3),
        "{fresh_ended:?}"
    );
    // The open transaction may finish, and its commit holds.
    tx.client
        .batch_execute("insert into life_t values (2); commit")
        .await
        .unwrap();
    assert!(
        wait_until_async(Duration::from_secs(5), || async { !tx.alive().await }).await,
        "the session lived on after its transaction ended"
    );
    let status = pg.stop();
    assert!(status.success(), "{status:?}");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "exit waited for the drain deadline with no session left: {took:?}"
    );
    let leader = node_ip(&leader());
    let direct = tokio_postgres::connect(
        &format!("host={leader} user=postgres password=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(direct.1);
    let n: i64 = direct
        .0
        .query_one("select count(*) from life_t where x in (1, 2)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 2, "the committed rows are lost: {n}");
    direct.0.batch_execute("drop table life_t").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_port_ends_its_sessions() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&split_yaml(&p, split, ""), p.admin);
    let mut idle = Raw::login(split, &[]).await;
    idle.simple("select 1").await;
    pg.rewrite_config(&format!("drain_timeout_ms: 8000\n{}", lab_config(&p)));
    pg.signal("HUP");
    ends_with(&mut idle, sqlstate::ADMIN_SHUTDOWN.code()).await;
    assert!(
        wait_until_async(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", split))
                .await
                .is_err()
        })
        .await,
        "the removed port still accepts"
    );
}

/// True when some lab node runs `select pg_sleep(30)` right now.
async fn sleeping_somewhere() -> bool {
    for node in NODES {
        let Ok((c, conn)) = tokio_postgres::connect(
            &format!(
                "host={} user=postgres password=postgres dbname=postgres connect_timeout=2",
                node_ip(node)
            ),
            tokio_postgres::NoTls,
        )
        .await
        else {
            continue;
        };
        tokio::spawn(conn);
        let q = "select count(*) from pg_stat_activity \
                 where state = 'active' and query = 'select pg_sleep(30)'";
        if c.query_one(q, &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) > 0)
        {
            return true;
        }
    }
    false
}

async fn cancel_interrupts(c: &Client) {
    let token = c.client.cancel_token();
    let t0 = Instant::now();
    let running = {
        let client = &c.client;
        async move { client.simple_query("select pg_sleep(30)").await }
    };
    let canceller = async {
        // The query must be running before it can be cancelled.
        assert!(
            wait_until_async(Duration::from_secs(10), sleeping_somewhere).await,
            "pg_sleep(30) never started"
        );
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    };
    let (r, ()) = tokio::join!(running, canceller);
    let e = r.expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_sessions_older_than_a_reload() {
    healthy_lab();
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&split_yaml(&p, split, ""), p.admin);
    let old = connect(split).await.unwrap();
    cancel_interrupts(&old).await;
    // A change that rebuilds the split port's session context.
    pg.rewrite_config(&split_yaml(&p, split, ", read_only_functions: [life_ro]"));
    pg.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || pg
            .log_text()
            .contains("life_ro")
            || pg.log_text().contains("reload")),
        "no reload in the log:\n{}",
        pg.log_text()
    );
    cancel_interrupts(&old).await;
    let new = connect(split).await.unwrap();
    cancel_interrupts(&new).await;
    assert!(old.alive().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn role_port_cancels_reach_the_node_running_the_query() {
    healthy_lab();
    let p = Ports::new();
    let _pg = Pgvane::start(&lab_config(&p), p.admin);
    for port in [p.ro, p.any, p.rw] {
        for _ in 0..2 {
            let c = connect(port).await.unwrap();
            cancel_interrupts(&c).await;
        }
    }
}

/// A `/cluster` body listing `members` as (name, role, host, port, state).
fn cluster_json(members: &[(&str, &str, &str, u16, &str)]) -> String {
    let list: Vec<serde_json::Value> = members
        .iter()
        .map(|(name, role, host, port, state)| {
            serde_json::json!({
                "name": name, "role": role, "state": state, "host": host, "port": port,
                "api_url": format!("http://{host}:8008/patroni"), "timeline": 1, "lag": 0
            })
        })
        .collect();
    serde_json::json!({ "members": list }).to_string()
}

fn fake_cluster_yaml(p: &Ports, split: u16, api: u16) -> String {
    format!(
        "cluster_update_interval: 1
listen_address: 127.0.0.1:{admin}
clusters:
  lab:
    hosts: [http://127.0.0.1:{api}]
    users:
      - {{name: postgres, password: postgres}}
    ports:
      app: {{listen: 127.0.0.1:{split}, mode: split, roles: [sync, async], pool_size: 4}}
",
        admin = p.admin
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn login_works_while_the_cluster_has_no_leader() {
    healthy_lab();
    let reps = replicas();
    let (a, b) = (node_ip(&reps[0]), node_ip(&reps[1]));
    let api = fake_patroni(cluster_json(&[
        (&reps[0], "replica", &a, 5432, "streaming"),
        (&reps[1], "replica", &b, 5432, "streaming"),
    ]))
    .await;
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&fake_cluster_yaml(&p, split, api), p.admin);
    assert!(
        wait_until(Duration::from_secs(10), || pg.clusters()["lab"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2)),
        "{}",
        pg.log_text()
    );
    let c = connect(split).await.expect("login without a leader");
    // A plain read runs on a replica (`pg_is_in_recovery()` is a driver
    // probe and needs the leader).
    let row = c
        .client
        .query_one("select host(inet_server_addr())", &[])
        .await
        .unwrap();
    let node = node_of_ip(row.get::<_, &str>(0));
    assert!(reps.contains(&node), "{node}");
    let e = c
        .client
        .batch_execute("create table no_leader_t (x int)")
        .await
        .expect_err("a write without a leader");
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    assert!(matches!(code.as_deref(), Some("57P03" | "25006")), "{e:?}");
    assert!(c.alive().await, "the session survives a refused write");
}

/// A fake PostgreSQL that refuses every login with 53300; counts attempts.
async fn refusing_server() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let tries = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&tries);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_startup(&mut s).await.is_none() {
                    return;
                }
                let mut out = Vec::new();
                encode::error_response(
                    &mut out,
                    encode::Severity::Fatal,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already",
                );
                let _ = s.write_all(&out).await;
            });
        }
    });
    (port, tries)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_backend_login_tries_the_next_node() {
    healthy_lab();
    let lead = leader();
    let reps = replicas();
    let (refuser, tries) = refusing_server().await;
    let api = fake_patroni(cluster_json(&[
        (&lead, "leader", &node_ip(&lead), 5432, "running"),
        (&reps[0], "replica", &node_ip(&reps[0]), 5432, "streaming"),
        ("full", "replica", "127.0.0.1", refuser, "streaming"),
    ]))
    .await;
    let p = Ports::new();
    let split = free_port();
    let pg = Pgvane::start(&fake_cluster_yaml(&p, split, api), p.admin);
    assert!(wait_until(Duration::from_secs(10), || pg.clusters()["lab"]
        ["members"]
        .as_array()
        .is_some_and(|m| m.len() == 3)));
    for i in 0..12 {
        let c = connect(split).await.unwrap();
        let row = c
            .client
            .query_one("select host(inet_server_addr())", &[])
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e:?}\n{}", pg.log_text()));
        let ip: &str = row.get(0);
        assert_ne!(ip, "127.0.0.1");
    }
    assert!(
        tries.load(Ordering::SeqCst) >= 1,
        "the refusing node was never tried: the test proves nothing"
    );
}

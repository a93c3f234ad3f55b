//! The console's switches in the lab, driven with psql as an operator
//! would: `DRAIN`/`UNDRAIN` of a replica (its role-port clients leave as
//! their transactions end, told 57P01; new clients and split reads go
//! elsewhere), `PAUSE`/`RESUME` (new work waits, PAUSE answers once open
//! transactions ended, a wait past `leader_wait_ms` gets 57P03) and
//! `KILL` (every client of the named port ends, others stay).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::raw::Raw;
use common::*;
use pgvane::protocol::encode;
use std::time::Duration;

/// A lab config with a console on `console` (user admin/secret).
fn with_console(console: u16, yaml: &str) -> String {
    format!(
        "console:\n  listen: 127.0.0.1:{console}\n  users:\n    - {{name: admin, password: secret}}\n{yaml}"
    )
}

/// Runs one console command: (success, stdout, stderr).
fn console(port: u16, sql: &str) -> (bool, String, String) {
    psql(port, "secret", "pgvane", sql)
}

/// The node a raw session reached, asked of PostgreSQL.
async fn node_of(r: &mut Raw) -> String {
    let msgs = r.simple("select host(inet_server_addr())").await;
    let row = msgs.iter().find(|m| m.0 == b'D').expect("a row");
    let len = u32::from_be_bytes([row.1[2], row.1[3], row.1[4], row.1[5]]) as usize;
    node_of_ip(std::str::from_utf8(&row.1[6..6 + len]).unwrap())
}

/// A raw client of `port` on `node` (after an SSLRequest refused when
/// `ssl_first`), connecting at most 12 times; the others are held until
/// it is placed, so the balancer spreads them.
async fn raw_on(port: u16, node: &str, ssl_first: bool) -> Raw {
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut r = if ssl_first {
            Raw::login_after_ssl_refused(port).await
        } else {
            Raw::login(port, &[]).await
        };
        if node_of(&mut r).await == node {
            return r;
        }
        held.push(r);
    }
    panic!("no client of port {port} reached {node}");
}

/// The SQLSTATE of an ErrorResponse body.
fn code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Reads the FATAL 57P01 a drained or killed client is told (its text
/// containing `says`), then the close.
async fn told_and_closed(r: &mut Raw, says: &str, what: &str) {
    let m = r
        .read()
        .await
        .unwrap_or_else(|| panic!("{what}: closed without a word"));
    let text = String::from_utf8_lossy(&m.1).into_owned();
    assert_eq!(m.0, b'E', "{what}: {text}");
    assert_eq!(code(&m.1), "57P01", "{what}: {text}");
    assert!(text.contains(says), "{what}: {text}");
    assert!(r.read().await.is_none(), "{what}: closed after the FATAL");
}

fn no_error(msgs: &[(u8, Vec<u8>)], what: &str) {
    assert!(
        msgs.iter().all(|m| m.0 != b'E'),
        "{what}: {:?}",
        msgs.iter()
            .filter(|m| m.0 == b'E')
            .map(|m| String::from_utf8_lossy(&m.1))
            .collect::<Vec<_>>()
    );
}

/// One cell of a SHOW: `column` of the first row `pick` chooses.
fn cell(
    port: u16,
    show: &str,
    pick: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
    column: &str,
) -> String {
    let (ok, out, err) = console(port, show);
    assert!(ok, "{err}");
    rows(&out)
        .into_iter()
        .find(|r| pick(r))
        .map(|r| r[column].clone())
        .unwrap_or_default()
}

/// SHOW CLUSTERS' `drained` column for `member`.
fn drained(port: u16, member: &str) -> String {
    cell(port, "SHOW CLUSTERS", |r| r["member"] == member, "drained")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_off_a_replica_as_their_transactions_end() {
    healthy_lab();
    let p = Ports::new();
    let (split, port) = (free_port(), free_port());
    // The drain's grace: what is still there after it is evicted.
    let yaml = format!("drain_timeout_ms: 4000\n{}", split_config(&p, split));
    let _pv = Pgvane::start(&with_console(port, &yaml), p.admin);
    let target = replicas()[0].clone();

    // Four clients of the replica port on the target: idle, idle after
    // libpq's SSLRequest was refused, one inside a transaction that ends,
    // and one whose extended-protocol batch waits for its Sync (an
    // implicit transaction), which the client holds back.
    let mut idle = raw_on(p.ro, &target, false).await;
    let mut idle_ssl = raw_on(p.ro, &target, true).await;
    let mut busy = raw_on(p.ro, &target, false).await;
    let mut unsynced = raw_on(p.ro, &target, false).await;
    no_error(&busy.simple("begin").await, "begin");
    no_error(&busy.simple("select 1").await, "in the transaction");
    let mut batch = Vec::new();
    encode::parse(&mut batch, "", "select 1", &[0, 0]);
    encode::bind_raw(&mut batch, "", "", &[0, 0, 0, 0, 0, 0]);
    encode::execute(&mut batch, "");
    encode::frame(&mut batch, b'H', |_| {});
    unsynced.send(&batch).await;
    no_error(&unsynced.until(b'C').await, "the batch before its Sync");
    // Control: before DRAIN every one of them answers.
    no_error(&idle.simple("select 1").await, "idle before DRAIN");
    no_error(
        &idle_ssl.simple("select 1").await,
        "idle (ssl) before DRAIN",
    );
    assert_eq!(drained(port, &target), "false");

    let (ok, out, err) = console(port, &format!("DRAIN {target}"));
    assert!(ok && out.contains("DRAIN"), "{out}{err}");
    let drained_at = std::time::Instant::now();
    told_and_closed(&mut idle, "drained its node", "idle client").await;
    let what = "idle client after SSLRequest";
    told_and_closed(&mut idle_ssl, "drained its node", what).await;
    // The open transaction goes on to its end, then the client is told.
    no_error(
        &busy.simple("select 2").await,
        "the transaction after DRAIN",
    );
    no_error(&busy.simple("commit").await, "commit after DRAIN");
    let what = "client whose transaction ended";
    told_and_closed(&mut busy, "drained its node", what).await;
    // The batch waiting for its Sync is no idle point: it stays until the
    // drain's grace ran out, then it is evicted.
    assert!(
        unsynced.read().await.is_none(),
        "evicted at drain_timeout_ms"
    );
    assert!(
        drained_at.elapsed() >= Duration::from_secs(3),
        "not before the grace: {:?}",
        drained_at.elapsed()
    );
    assert_eq!(drained(port, &target), "true");
    let (_, out, _) = console(port, "SHOW CLUSTERS");
    let row = rows(&out)
        .into_iter()
        .find(|r| r["member"] == target)
        .unwrap();
    assert!(row["eligible"].contains("ro=drained"), "{out}");

    // New replica-port clients and split-port reads go elsewhere.
    let mut held = Vec::new();
    for i in 0..6 {
        let c = connect(p.ro).await.unwrap();
        assert_ne!(c.whereami().await.unwrap().0, target, "ro client {i}");
        held.push(c);
    }
    let mut app = Raw::login(split, &[]).await;
    let (lead, mut seen) = (leader(), Vec::new());
    for _ in 0..10 {
        seen.push(node_of(&mut app).await);
    }
    assert!(
        seen.iter().all(|n| *n != target && *n != lead),
        "split reads ran on the other replica only: {seen:?}"
    );

    // Refusals name what is wrong and change nothing.
    let (ok, _, err) = console(port, &format!("DRAIN {}", leader()));
    assert!(!ok && err.contains("switch over first"), "{err}");
    let (ok, _, err) = console(port, "DRAIN nosuch");
    assert!(
        !ok && err.contains("no cluster lists a member named \"nosuch\""),
        "{err}"
    );
    let (ok, _, err) = console(port, "DRAIN lab");
    assert!(!ok && err.contains("no cluster lists"), "{err}");

    // UNDRAIN: it serves again.
    let (ok, out, err) = console(port, &format!("UNDRAIN lab {target}"));
    assert!(ok && out.contains("UNDRAIN"), "{out}{err}");
    assert_eq!(drained(port, &target), "false");
    assert!(
        lands_again(p.ro, &target, Duration::from_secs(20)).await,
        "a new client reaches {target} again"
    );
}

/// SHOW CLIENTS' `paused` column for `port` (the port's own row).
fn paused(console_port: u16, port: &str) -> String {
    let pick =
        |r: &std::collections::BTreeMap<String, String>| r["port"] == port && r["node"].is_empty();
    cell(console_port, "SHOW CLIENTS", pick, "paused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_work_until_resume_and_kill_ends_the_ports_clients() {
    healthy_lab();
    let p = Ports::new();
    let (split, port) = (free_port(), free_port());
    let opts = "roles: [sync, async], pool_size: 4, leader_wait_ms: 6000";
    let yaml = with_console(port, &split_config_opts(&p, split, opts));
    let _pv = Pgvane::start(&yaml, p.admin);

    let a = connect(split).await.unwrap();
    let b = connect(split).await.unwrap();
    a.client.simple_query("begin").await.unwrap();
    a.client.simple_query("select 1").await.unwrap();

    // PAUSE answers only once a's transaction ended.
    let pause = std::thread::spawn(move || console(port, "PAUSE lab"));
    assert!(
        wait_until(Duration::from_secs(10), || paused(port, "app") == "true"),
        "the port reports paused"
    );
    assert_eq!(
        paused(port, "rw"),
        "true",
        "PAUSE lab pauses every port of it"
    );
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    // New work waits: b's next request, and a new leader-port client.
    let b_query = tokio::spawn(async move {
        let r = b.client.simple_query("select 1").await.map(|_| ());
        (b, r)
    });
    let rw_connect = tokio::spawn(async move { connect(p.rw).await.map(|_| ()) });
    a.client.simple_query("commit").await.unwrap();
    let (ok, out, err) = pause.join().unwrap();
    assert!(ok && out.contains("PAUSE"), "{out}{err}");
    assert!(
        !b_query.is_finished() && !rw_connect.is_finished(),
        "both wait while paused"
    );

    let (ok, out, err) = console(port, "RESUME lab");
    assert!(ok && out.contains("RESUME"), "{out}{err}");
    let (b, r) = tokio::time::timeout(Duration::from_secs(10), b_query)
        .await
        .expect("b's request goes on after RESUME")
        .unwrap();
    r.expect("b's request succeeds");
    tokio::time::timeout(Duration::from_secs(10), rw_connect)
        .await
        .expect("the leader-port client goes on after RESUME")
        .unwrap()
        .expect("and connects");
    assert_eq!(paused(port, "app"), "false");

    // A wait past leader_wait_ms gets 57P03 and the session goes on.
    let (ok, _, err) = console(port, "PAUSE lab/app");
    assert!(ok, "{err}");
    let started = std::time::Instant::now();
    let e = b.client.simple_query("select 1").await.unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("paused by an operator"), "{db:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (ok, _, err) = console(port, "RESUME lab/app");
    assert!(ok, "{err}");
    b.client.simple_query("select 1").await.unwrap();

    // KILL one port: its clients end, the other port's stay.
    let rw = connect(p.rw).await.unwrap();
    let mut rw_raw = Raw::login(p.rw, &[]).await;
    let (ok, out, err) = console(port, "KILL lab/app");
    assert!(ok && out.contains("KILL"), "{out}{err}");
    assert!(
        all_gone(&[a, b], Duration::from_secs(10)).await,
        "split sessions end"
    );
    assert!(
        rw.alive().await,
        "a leader-port client of another port stays"
    );
    let fresh = connect(split).await.unwrap();
    assert!(fresh.alive().await, "new clients come in after KILL");
    let (ok, _, err) = console(port, "KILL rw");
    assert!(ok, "{err}");
    assert!(
        all_gone(&[rw], Duration::from_secs(10)).await,
        "role-port client ends"
    );
    let what = "killed role-port client";
    told_and_closed(&mut rw_raw, "administrator command", what).await;
    assert!(fresh.alive().await);
    let (ok, _, err) = console(port, "KILL");
    assert!(!ok && err.contains("usage: KILL"), "{err}");
    assert!(fresh.alive().await, "a bare KILL ends nothing");

    let (ok, _, err) = console(port, "PAUSE nosuch");
    assert!(
        !ok && err.contains("no cluster or port named \"nosuch\""),
        "{err}"
    );
}

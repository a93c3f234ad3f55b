//! Replacing pgvane by a new instance started beside it (every listener
//! has `SO_REUSEPORT`; the old one gets SIGTERM once the new one told
//! systemd `READY=1`) refuses no client: connection churn on a role port
//! runs across three replacements with no failed connection or query, and
//! transactions open on the old instance (role and split port) commit
//! after its SIGTERM. The negative control, a stop followed by a start,
//! shows the same churn failing. Split-port churn runs beside it, held to
//! the same: no failed connection or query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients that connect, run one query and leave, as fast as they can,
/// on `ports` in turn; failures are kept with their port.
struct Churn {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Churn {
    fn start(ports: &[u16], clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let port = ports[i % ports.len()];
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    // Bounded in count and time, whatever happens.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(240)
                        {
                            return;
                        }
                        let attempt = async {
                            let c = connect(port).await.map_err(|e| described("connect", &e))?;
                            c.client
                                .simple_query("select 1")
                                .await
                                .map_err(|e| described("select 1", &e))?;
                            Ok::<(), String>(())
                        };
                        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => failures.lock().unwrap().push(format!("{port}: {e}")),
                            Err(_) => failures.lock().unwrap().push(format!("{port}: hung")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Waits until `more` further clients succeeded (the churn is running).
    async fn progressed(&self, more: usize) -> bool {
        let target = self.ok() + more;
        wait_until_async(Duration::from_secs(20), || async { self.ok() >= target }).await
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// An error with its SQLSTATE and message when the server sent one.
fn described(step: &str, e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{step}: {} {}", db.code().code(), db.message()),
        None => format!("{step}: {e:?}"),
    }
}

/// Waits for the child to exit after SIGTERM; its status.
fn wait_exit(pg: &mut Pgvane, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = pg.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "pgvane did not exit within {within:?} of SIGTERM:\n{}",
            pg.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn migrate_req() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn replacements_beside_the_old_instance_refuse_no_client() {
    healthy_lab();
    assert_eq!(
        migrate_req(),
        "1",
        "net.ipv4.tcp_migrate_req must be 1 (lab.sh up sets it): without it the kernel \
         resets connections queued on a closing listener"
    );
    let p = Ports::new();
    let split = free_port();
    let yaml = format!("drain_timeout_ms: 10000\n{}", split_config(&p, split));
    let (mut current, notes) = Pgvane::start_notified(&yaml, p.admin);
    assert!(
        notes.iter().any(|n| n.contains("STATUS=ready")),
        "{notes:?}"
    );
    let direct = connect_node(&leader()).await;
    direct
        .batch_execute(
            "drop table if exists restart_t; create table restart_t (round int, via text)",
        )
        .await
        .unwrap();

    let churn = Churn::start(&[p.rw], 3);
    let split_churn = Churn::start(&[split], 1);
    assert!(churn.progressed(50).await, "{:?}", churn.failures());
    for round in 0..3 {
        // Transactions open on the instance about to be replaced.
        let role_tx = connect(p.rw).await.unwrap();
        let split_tx = connect(split).await.unwrap();
        for (c, via) in [(&role_tx, "role"), (&split_tx, "split")] {
            c.client
                .batch_execute(&format!(
                    "begin; insert into restart_t values ({round}, '{via}')"
                ))
                .await
                .unwrap();
        }
        let (next, _) = Pgvane::start_notified(&yaml, p.admin);
        current.signal("TERM");
        // The old instance no longer takes clients but finishes these.
        for c in [&role_tx, &split_tx] {
            c.client.batch_execute("commit").await.unwrap();
        }
        drop((role_tx, split_tx));
        let status = wait_exit(&mut current, Duration::from_secs(15));
        assert!(status.success(), "round {round}: exit {status:?}");
        // Clients keep coming, now all to the new instance.
        assert!(
            churn.progressed(50).await,
            "round {round}: {:?}",
            churn.failures()
        );
        current = next;
    }
    let (split_ok, split_failures) = split_churn.stop().await;
    assert!(
        split_failures.is_empty() && split_ok >= 30,
        "split port: {} of {} clients failed across 3 replacements: {:?}\n{}",
        split_failures.len(),
        split_ok + split_failures.len(),
        &split_failures[..split_failures.len().min(10)],
        current.log_text()
    );
    eprintln!("restart: split port: {split_ok} clients, 0 failed, across 3 replacements");
    let (ok, failures) = churn.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} clients failed across 3 replacements: {:?}\n{}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)],
        current.log_text()
    );
    let committed: i64 = direct
        .query_one("select count(*) from restart_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        committed, 6,
        "a commit acknowledged by an old instance is lost"
    );
    eprintln!("restart: role port: {ok} clients, 0 failed, across 3 replacements");

    // Negative control: the same churn across a stop, then a start, sees
    // refused clients, so the assertion above can fail.
    let churn = Churn::start(&[p.rw, split], 4);
    assert!(churn.progressed(50).await, "{:?}", churn.failures());
    current.signal("TERM");
    assert!(wait_exit(&mut current, Duration::from_secs(15)).success());
    let (mut again, _) = Pgvane::start_notified(&yaml, p.admin);
    assert!(churn.progressed(50).await, "{:?}", churn.failures());
    let (_, refused) = churn.stop().await;
    assert!(
        !refused.is_empty(),
        "no client failed across a stop and a start: the churn does not detect refusals"
    );
    eprintln!(
        "restart control: {} clients failed across a stop and a start",
        refused.len()
    );
    direct.batch_execute("drop table restart_t").await.unwrap();
    again.stop();
}

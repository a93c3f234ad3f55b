//! A chaos soak: mixed load through a split port and a role port (single
//! writes, multi-statement transactions, readers, clients that walk away
//! mid-transaction or mid-result) while the lab runs synchronous
//! replication and is switched over, has its leader killed -9 and brought
//! back, has a replica replay late, and pgvane is reloaded and replaced by
//! a new instance beside it. Then, read on the leader directly: 0
//! acknowledged commits lost, 0 rows of abandoned transactions, 0 half
//! committed transactions; 0 stuck clients; the surviving instance back to
//! no clients, its descriptors and memory near where it started.
//!
//! `PGVANE_SOAK_ROUNDS` (default 1, about two minutes) repeats the chaos
//! sequence for a longer soak.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::timeout;

/// Longest any client operation may take before it counts as stuck.
const STUCK: Duration = Duration::from_secs(45);

/// A two-row transaction: (first id, second id, commit acknowledged, port,
/// what the client saw).
type Pair = (i64, i64, bool, u16, String);

#[derive(Default)]
struct Ledger {
    next: AtomicI64,
    /// Single writes acknowledged (CommandComplete reached the client).
    acked: Mutex<Vec<i64>>,
    /// Two-row transactions: (first id, second id, commit acknowledged,
    /// port, what the client saw).
    pairs: Mutex<Vec<Pair>>,
    /// Rows written in transactions whose client walked away before commit.
    abandoned: Mutex<Vec<i64>>,
    ops: AtomicUsize,
    errors: AtomicUsize,
    stuck: AtomicUsize,
    /// Transactions whose two inserts reported different transactions or
    /// servers (the transaction was split).
    splits: Mutex<Vec<String>>,
    /// Writes refused as duplicate keys: an insert run twice.
    duplicates: AtomicUsize,
}

impl Ledger {
    fn id(&self) -> i64 {
        self.next.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A connection, opened again after any failure; None while it cannot be.
async fn ensure(slot: &mut Option<Client>, port: u16, l: &Ledger) -> bool {
    if slot.is_some() {
        return true;
    }
    match timeout(STUCK, connect(port)).await {
        Ok(Ok(c)) => {
            *slot = Some(c);
            true
        }
        Ok(Err(_)) => {
            l.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            false
        }
        Err(_) => {
            l.stuck.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Counts an operation's outcome; drops the connection after a failure.
fn outcome<T, E>(
    r: Result<Result<T, E>, tokio::time::error::Elapsed>,
    slot: &mut Option<Client>,
    l: &Ledger,
) -> Option<T> {
    l.ops.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(Ok(v)) => Some(v),
        Ok(Err(_)) => {
            l.errors.fetch_add(1, Ordering::Relaxed);
            *slot = None;
            None
        }
        Err(_) => {
            l.stuck.fetch_add(1, Ordering::Relaxed);
            *slot = None;
            None
        }
    }
}

async fn writer(port: u16, l: Arc<Ledger>, until: Arc<Mutex<Instant>>) {
    let mut slot = None;
    while Instant::now() < *until.lock().unwrap() {
        if !ensure(&mut slot, port, &l).await {
            continue;
        }
        let id = l.id();
        let c = &slot.as_ref().unwrap().client;
        let r = timeout(
            STUCK,
            c.execute(
                "insert into soak_ledger (id, kind) values ($1, 'write')",
                &[&id],
            ),
        )
        .await;
        if let Ok(Err(e)) = &r {
            if e.code().is_some_and(|c| c.code() == "23505") {
                l.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome(r, &mut slot, &l) == Some(1) {
            l.acked.lock().unwrap().push(id);
        }
    }
}

async fn transactions(port: u16, l: Arc<Ledger>, until: Arc<Mutex<Instant>>) {
    let mut slot = None;
    while Instant::now() < *until.lock().unwrap() {
        if !ensure(&mut slot, port, &l).await {
            continue;
        }
        let (a, b) = (l.id(), l.id());
        l.pairs
            .lock()
            .unwrap()
            .push((a, b, false, port, String::new()));
        let c = &slot.as_ref().unwrap().client;
        // Each insert says which transaction and server ran it: both must
        // be the same, or the session's transaction was split.
        let insert = "insert into soak_ledger (id, kind) values ($1, 'pair') returning pg_current_xact_id()::text || '@' || coalesce(host(inet_server_addr()), '?')";
        let steps = async {
            c.simple_query("begin").await?;
            let x: String = c.query_one(insert, &[&a]).await?.get(0);
            c.simple_query("select pg_sleep(0.01)").await?;
            let y: String = c.query_one(insert, &[&b]).await?.get(0);
            c.simple_query("commit").await.map(|_| (x, y))
        };
        let r = timeout(STUCK, steps).await;
        if let Ok(Ok((x, y))) = &r {
            if x != y {
                l.splits
                    .lock()
                    .unwrap()
                    .push(format!("{a}/{b}: {x} then {y}"));
            }
        }
        let seen = match &r {
            Ok(Ok((x, y))) => format!(
                "committed at {:?}: {x} then {y}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
            ),
            Ok(Err(e)) => format!("error: {e:?}"),
            Err(_) => "stuck".to_owned(),
        };
        let ok = outcome(r, &mut slot, &l).is_some();
        let mut pairs = l.pairs.lock().unwrap();
        if let Some(p) = pairs.iter_mut().rev().find(|p| p.0 == a) {
            p.2 = ok;
            p.4 = seen;
        }
    }
}

async fn reader(port: u16, l: Arc<Ledger>, until: Arc<Mutex<Instant>>) {
    let mut slot = None;
    while Instant::now() < *until.lock().unwrap() {
        if !ensure(&mut slot, port, &l).await {
            continue;
        }
        let c = &slot.as_ref().unwrap().client;
        let r = timeout(STUCK, c.simple_query("select count(*) from soak_ledger")).await;
        outcome(r, &mut slot, &l);
    }
}

/// Leaves abruptly: the connection task is aborted, so the socket closes
/// with no Terminate and no draining of what the server still sends.
fn leave(c: Option<Client>) {
    if let Some(Client { client, task }) = c {
        task.abort();
        drop(client);
    }
}

/// Opens a transaction, writes a row, and leaves without committing; then
/// starts a large result and leaves after its first bytes.
async fn walker(ports: [u16; 2], l: Arc<Ledger>, until: Arc<Mutex<Instant>>) {
    let mut turn = 0usize;
    while Instant::now() < *until.lock().unwrap() {
        turn += 1;
        let port = ports[turn % 2];
        let mut slot = None;
        if !ensure(&mut slot, port, &l).await {
            continue;
        }
        let id = l.id();
        let c = &slot.as_ref().unwrap().client;
        let steps = async {
            c.simple_query("begin").await?;
            c.execute(
                "insert into soak_ledger (id, kind) values ($1, 'abandoned')",
                &[&id],
            )
            .await
        };
        let r = timeout(STUCK, steps).await;
        // Recorded whatever the insert said: it must not be there at the end.
        l.abandoned.lock().unwrap().push(id);
        outcome(r, &mut slot, &l);
        leave(slot.take());
        if !ensure(&mut slot, port, &l).await {
            continue;
        }
        let c = &slot.as_ref().unwrap().client;
        let big = c.simple_query("select repeat('x', 200) from generate_series(1, 200000)");
        let _ = timeout(Duration::from_millis(30), big).await;
        leave(slot.take());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pgvane serving the ports now (replaced mid-run).
struct Instance {
    pv: Option<Pgvane>,
    yaml: String,
    admin: u16,
    /// (descriptors, resident KiB) of the current instance when it started.
    baseline: (usize, u64),
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `lab.sh args` off the async threads.
async fn lab_step(args: &'static [&'static str]) -> String {
    tokio::task::spawn_blocking(move || lab(args))
        .await
        .unwrap()
}

/// `lab.sh args` with arguments made at run time, off the async threads.
async fn lab_owned(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab(&args)
    })
    .await
    .unwrap()
}

/// One round of chaos, each step logged with the time it took.
async fn chaos(inst: Arc<Mutex<Instance>>) {
    let step =
        |what: &str, t0: Instant| eprintln!("soak: {what} ({:.1} s)", t0.elapsed().as_secs_f64());
    // First, so the instance that survives goes through the rest.
    let t0 = Instant::now();
    let inst2 = Arc::clone(&inst);
    tokio::task::spawn_blocking(move || {
        let (yaml, admin) = {
            let i = inst2.lock().unwrap();
            (i.yaml.clone(), i.admin)
        };
        let (new, _) = Pgvane::start_notified(&yaml, admin);
        let pid = new.child.id();
        let baseline = (fds(pid), rss_kib(pid));
        let old = {
            let mut i = inst2.lock().unwrap();
            i.baseline = baseline;
            i.pv.replace(new)
        };
        let mut old = old.unwrap();
        let st = old.stop();
        assert!(st.success(), "old instance: {st:?}\n{}", old.log_text());
    })
    .await
    .unwrap();
    step("replaced by a new instance", t0);

    let t0 = Instant::now();
    lab_step(&["switchover"]).await;
    step("switchover", t0);

    // Synchronous replication holds only once the new leader has named a
    // sync standby again: kill it after that, as the test is of pgvane, not
    // of the window Patroni's non-strict mode leaves after a switchover.
    let t0 = Instant::now();
    let named = tokio::task::spawn_blocking(|| {
        wait_until(Duration::from_secs(60), || {
            lab(&["summary"]).contains("sync_standby")
        })
    })
    .await
    .unwrap();
    assert!(
        named,
        "no sync standby after the switchover: {}",
        lab(&["summary"])
    );
    let killed = lab_step(&["kill-leader"]).await;
    let killed = killed.trim().to_owned();
    // A real failover: another node leads before the old one comes back.
    let gone = killed.clone();
    let failed_over = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(90), || {
            let l = leader();
            !l.is_empty() && l != gone
        })
    })
    .await
    .unwrap();
    assert!(
        failed_over,
        "no failover from {killed}: {}",
        lab(&["summary"])
    );
    step(&format!("{killed} killed -9, {} leads", leader()), t0);
    let n = killed.trim_start_matches("node").to_owned();
    lab_owned(vec!["start-node".into(), n]).await;
    step(&format!("{killed} back as a replica"), t0);

    // A replica now (the failover changed who is one).
    let t0 = Instant::now();
    let replica = tokio::task::spawn_blocking(|| replicas().into_iter().next().unwrap())
        .await
        .unwrap();
    let n = replica.trim_start_matches("node").to_owned();
    lab_owned(vec!["delay-node".into(), n, "2000".into()]).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    lab_step(&["undelay"]).await;
    step(&format!("{replica} replayed 2 s late for 8 s"), t0);

    let t0 = Instant::now();
    inst.lock().unwrap().pv.as_ref().unwrap().signal("HUP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    step("reload", t0);
}

struct SyncOff;
impl Drop for SyncOff {
    fn drop(&mut self) {
        let _ = std::process::Command::new(root().join("deploy/lab/lab.sh"))
            .args(["sync", "off"])
            .output();
        let _ = std::process::Command::new(root().join("deploy/lab/lab.sh"))
            .args(["undelay"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_commit_lost_under_chaos() {
    healthy_lab();
    let _sync = SyncOff;
    lab(&["sync", "on"]);
    let setup = connect_node(&leader()).await;
    setup
        .batch_execute("drop table if exists soak_ledger; create table soak_ledger (id bigint primary key, kind text not null)")
        .await
        .unwrap();
    let p = Ports::new();
    let split = free_port();
    let yaml = split_config(&p, split);
    let pv = Pgvane::start(&yaml, p.admin);
    let pid = pv.child.id();
    let inst = Arc::new(Mutex::new(Instance {
        baseline: (fds(pid), rss_kib(pid)),
        pv: Some(pv),
        yaml,
        admin: p.admin,
    }));
    let rounds: usize = std::env::var("PGVANE_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let l = Arc::new(Ledger::default());
    // Load runs until the chaos is over, plus a few seconds.
    let until = Arc::new(Mutex::new(Instant::now() + Duration::from_secs(3600)));
    let mut load = Vec::new();
    for _ in 0..3 {
        load.push(tokio::spawn(writer(
            split,
            Arc::clone(&l),
            Arc::clone(&until),
        )));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(writer(
            p.rw,
            Arc::clone(&l),
            Arc::clone(&until),
        )));
    }
    load.push(tokio::spawn(transactions(
        split,
        Arc::clone(&l),
        Arc::clone(&until),
    )));
    load.push(tokio::spawn(transactions(
        p.rw,
        Arc::clone(&l),
        Arc::clone(&until),
    )));
    for _ in 0..2 {
        load.push(tokio::spawn(reader(
            split,
            Arc::clone(&l),
            Arc::clone(&until),
        )));
    }
    load.push(tokio::spawn(walker(
        [split, p.rw],
        Arc::clone(&l),
        Arc::clone(&until),
    )));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in 0..rounds {
        eprintln!("soak: round {}", r + 1);
        chaos(Arc::clone(&inst)).await;
    }
    *until.lock().unwrap() = Instant::now() + Duration::from_secs(5);
    for t in load {
        // Every operation is bounded by STUCK, so the loops end.
        timeout(STUCK * 3, t)
            .await
            .expect("a load task never ended")
            .unwrap();
    }
    let elapsed = started.elapsed();
    lab(&["wait-healthy"]);

    // The ledger, read on the leader.
    let leader = connect_node(&leader()).await;
    let rows: std::collections::HashSet<i64> = leader
        .query("select id from soak_ledger", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let acked = l.acked.lock().unwrap().clone();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !rows.contains(id))
        .collect();
    let abandoned = l.abandoned.lock().unwrap().clone();
    let kept: Vec<i64> = abandoned
        .iter()
        .copied()
        .filter(|id| rows.contains(id))
        .collect();
    let pairs = l.pairs.lock().unwrap().clone();
    let via = |port: u16| if port == split { "split" } else { "rw" };
    let half: Vec<_> = pairs
        .iter()
        .filter(|(a, b, ..)| rows.contains(a) != rows.contains(b))
        .map(|(a, b, ok, port, seen)| {
            format!(
                "{a}:{} {b}:{} acked {ok} via {} ({seen})",
                rows.contains(a),
                rows.contains(b),
                via(*port)
            )
        })
        .collect();
    let lost_pairs: Vec<_> = pairs
        .iter()
        .filter(|(a, b, ok, ..)| *ok && !(rows.contains(a) && rows.contains(b)))
        .map(|(a, b, _, port, seen)| {
            format!(
                "{a}:{} {b}:{} via {} ({seen})",
                rows.contains(a),
                rows.contains(b),
                via(*port)
            )
        })
        .collect();
    let acked_pairs = pairs.iter().filter(|p| p.2).count();
    eprintln!(
        "soak: {rounds} round(s) in {:.0} s: {} operations, {} errors, {} stuck; {} single writes and {acked_pairs} transactions acknowledged, {} clients walked away; lost {} writes and {} transactions, {} abandoned rows kept, {} half-committed",
        elapsed.as_secs_f64(),
        l.ops.load(Ordering::Relaxed),
        l.errors.load(Ordering::Relaxed),
        l.stuck.load(Ordering::Relaxed),
        acked.len(),
        abandoned.len(),
        lost.len(),
        lost_pairs.len(),
        kept.len(),
        half.len()
    );
    assert!(
        acked.len() > 100 && acked_pairs > 10,
        "too little load to say anything"
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        lost_pairs.is_empty(),
        "acknowledged transactions lost: {lost_pairs:?}"
    );
    assert!(
        kept.is_empty(),
        "rows of abandoned transactions committed: {kept:?}"
    );
    assert!(half.is_empty(), "half-committed transactions: {half:?}");
    let splits = l.splits.lock().unwrap().clone();
    assert!(
        splits.is_empty(),
        "transactions split across backends: {splits:?}"
    );
    eprintln!(
        "soak: {} writes refused as duplicate keys (an insert run twice)",
        l.duplicates.load(Ordering::Relaxed)
    );
    assert_eq!(
        l.stuck.load(Ordering::Relaxed),
        0,
        "operations stuck over {STUCK:?}"
    );

    // The surviving instance: no clients left, descriptors and memory near
    // its start (its pools keep idle backends, counted here).
    let (admin, pid, baseline) = {
        let i = inst.lock().unwrap();
        (i.admin, i.pv.as_ref().unwrap().child.id(), i.baseline)
    };
    let clients = || -> u64 {
        let (_, body) = http(admin, "GET", "/clusters").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["lab"]["ports"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p["clients"].as_u64().unwrap())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(30), || clients() == 0),
        "clients left: {}",
        clients()
    );
    let pool_open = || -> usize {
        let (_, m) = http(admin, "GET", "/metrics").unwrap();
        m.lines()
            .filter(|l| l.starts_with("pgvane_pool_backends{") && l.contains("state=\"open\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize
    };
    let settled = wait_until(Duration::from_secs(30), || {
        fds(pid) <= baseline.0 + pool_open() + 8
    });
    let (now_fds, now_rss) = (fds(pid), rss_kib(pid));
    eprintln!(
        "soak: surviving instance: descriptors {} at start, {now_fds} now ({} pooled backends open); resident {} KiB at start, {now_rss} KiB now",
        baseline.0,
        pool_open(),
        baseline.1
    );
    assert!(
        settled,
        "descriptors did not come back: {now_fds} vs {} + {} pooled",
        baseline.0,
        pool_open()
    );
    assert!(
        now_rss <= baseline.1 * 2 + 32 * 1024,
        "resident memory grew: {} → {now_rss} KiB",
        baseline.1
    );
}

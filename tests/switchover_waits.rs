//! While a leader is being replaced, requests that need the leader wait for
//! the new one (`leader_wait_ms`) instead of failing with 57P03. Clients run
//! write-then-read pairs (autocommit, oracle of CONSISTENCY.md §4) through a
//! split port with `leader_wait_ms: 30000` while the replicas apply WAL 3 s
//! late, through a `lab.sh switchover` (0 errors, 0 stale) and then a
//! `lab.sh kill-leader` (requests held through the gap succeed, none takes
//! longer than leader_wait_ms + a margin; the killed node rejoins). During
//! the switchover a prober connects 20 times a second to a `roles: [leader]`
//! port with `leader_wait_ms: 30000` (no 57P03), and to the same port of a
//! second pgvane with `leader_wait_ms: 0`, the control (57P03 as before).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::ryw::*;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

const LEADER_WAIT_MS: u64 = 30_000;
/// No request may take longer than the leader wait plus this.
const MARGIN: Duration = Duration::from_secs(5);
const CLIENTS: i32 = 4;
/// Keys 40..44 of `ryw_probe`, one per client.
const FIRST_KEY: i32 = 40;

/// The lab config with the split port `app` and the leader port `rw`, both
/// with `leader_wait_ms: wait`.
fn config(p: &Ports, split: u16, wait: u64) -> String {
    split_config_opts(
        p,
        split,
        &format!(
            "roles: [sync, async], pool_size: 8, read_your_writes: session, leader_wait_ms: {wait}"
        ),
    )
    .replace(
        "roles: [leader], host_port: 5432}",
        &format!("roles: [leader], host_port: 5432, leader_wait_ms: {wait}}}"),
    )
}

/// One request's fate.
#[derive(Debug, Clone)]
struct Event {
    /// Start, since the load began.
    at: Duration,
    took: Duration,
    what: &'static str,
    /// None: success; Some(SQLSTATE, "io", "closed" or "hang").
    error: Option<String>,
}

#[derive(Debug, Default)]
struct ClientLog {
    events: Vec<Event>,
    tally: Tally,
    /// Reads with v < w whose write the leader then lost (the next write
    /// returned no more than w): a lost write, not a stale read.
    lost: u32,
}

fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(
        || {
            if e.is_closed() {
                "closed".to_owned()
            } else {
                "io".to_owned()
            }
        },
        |d| d.code().code().to_owned(),
    )
}

/// Write-then-read pairs on key `k` until `stop`; reconnects when pgvane
/// closed the session (counted as an error).
async fn client_loop(
    port: u16,
    k: i32,
    t0: Instant,
    stop: Arc<AtomicBool>,
    pairs: Arc<AtomicU32>,
) -> ClientLog {
    let bound = Duration::from_millis(LEADER_WAIT_MS) + MARGIN;
    let mut log = ClientLog::default();
    let mut c = connect(port).await.unwrap();
    // A stale-looking read waiting for the next write to tell stale from lost.
    let mut suspect: Option<(i64, i64, String)> = None;
    let deadline = t0 + Duration::from_secs(300);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if c.client.is_closed() {
            match connect(port).await {
                Ok(n) => c = n,
                Err(e) => {
                    log.events.push(Event {
                        at: t0.elapsed(),
                        took: Duration::ZERO,
                        what: "connect",
                        error: Some(code_of(&e)),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let at = t0.elapsed();
        let started = Instant::now();
        let w = match tokio::time::timeout(bound, try_write(&c.client, k)).await {
            Ok(Ok(w)) => w,
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => code_of(&e),
                    _ => "hang".to_owned(),
                };
                log.events.push(Event {
                    at,
                    took: started.elapsed(),
                    what: "write",
                    error: Some(error),
                });
                // A refused request returns at once: pace the retries.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        log.events.push(Event {
            at,
            took: started.elapsed(),
            what: "write",
            error: None,
        });
        if let Some((sw, sv, node)) = suspect.take() {
            if w <= sw {
                log.lost += 1;
            } else {
                log.tally.stale += 1;
                log.tally.examples.push((sw, sv, node));
            }
        }
        let at = t0.elapsed();
        let started = Instant::now();
        match tokio::time::timeout(bound, try_read(&c.client, k)).await {
            Ok(Ok((v, node))) => {
                log.events.push(Event {
                    at,
                    took: started.elapsed(),
                    what: "read",
                    error: None,
                });
                log.tally.pairs += 1;
                pairs.fetch_add(1, Ordering::Relaxed);
                if v < w {
                    suspect = Some((w, v, node));
                }
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => code_of(&e),
                    _ => "hang".to_owned(),
                };
                log.events.push(Event {
                    at,
                    took: started.elapsed(),
                    what: "read",
                    error: Some(error),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // A last suspect: stale unless the leader's value shows the write lost.
    if let Some((sw, sv, node)) = suspect {
        let now: i64 = first_row(
            &connect_node(&leader()).await,
            &format!("select v from ryw_probe where k = {k}"),
        )
        .await[0]
            .parse()
            .unwrap();
        if now < sw {
            log.lost += 1;
        } else {
            log.tally.stale += 1;
            log.tally.examples.push((sw, sv, node));
        }
    }
    log
}

/// Waits (at most `secs`) until `pairs` grew by `more`.
async fn more_pairs(pairs: &AtomicU32, more: u32, secs: u64) -> bool {
    let from = pairs.load(Ordering::Relaxed);
    wait_until_async(Duration::from_secs(secs), || async {
        pairs.load(Ordering::Relaxed) >= from + more
    })
    .await
}

/// The last 40 lines of a pgvane log (a failed run's log can be huge).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The first 10 of `events`.
fn first<'a>(events: &'a [&'a Event]) -> &'a [&'a Event] {
    &events[..events.len().min(10)]
}

/// Restarts a node `lab.sh kill-leader` killed when dropped, so the lab is
/// whole again even if the test fails (`lab.sh start-node` waits for health).
struct Rejoin(Option<String>);

impl Drop for Rejoin {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            let out = std::process::Command::new(root().join("deploy/lab/lab.sh"))
                .args(["start-node", &n[4..]])
                .output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("lab.sh start-node {n} failed: {out:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_changes_hold_requests_instead_of_failing() {
    healthy_lab();
    setup_probe();
    let delay = Delay::on(3000);
    let mut rejoin = Rejoin(None);
    let (p, split) = (Ports::new(), free_port());
    let pg = Pgvane::start(&config(&p, split, LEADER_WAIT_MS), p.admin);
    let (pc, split_c) = (Ports::new(), free_port());
    let control = Pgvane::start(&config(&pc, split_c, 0), pc.admin);
    let history = History::start(p.admin);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client_loop(
                split,
                FIRST_KEY + i,
                t0,
                Arc::clone(&stop),
                Arc::clone(&pairs),
            ))
        })
        .collect();
    assert!(
        more_pairs(&pairs, 40, 30).await,
        "the load never got going:\n{}",
        tail(&pg.log_text())
    );

    // 1. Switchover, with both leader-port probers running through it.
    let probe = Prober::start(p.rw);
    let probe_control = Prober::start(pc.rw);
    let old = leader();
    tokio::task::spawn_blocking(|| lab(&["switchover"]))
        .await
        .unwrap();
    let after_switchover = leader();
    assert_ne!(old, after_switchover);
    let settled = more_pairs(&pairs, 80, 60).await;
    // A quick switchover leaves the probers little time: let them reach
    // the count asserted below (at 20 a second, about a second more).
    wait_until_async(Duration::from_secs(30), || async { probe.sessions() >= 20 }).await;
    let (report, report_control) = (probe.stop().await, probe_control.stop().await);
    let t_kill = t0.elapsed();
    assert!(
        settled,
        "no pairs after the switchover:\n{}\n{}",
        history.dump(),
        tail(&pg.log_text())
    );

    // 2. kill -9 of the leader (Patroni and postmaster): failover after the
    // leader key's TTL (20 s in the lab).
    let killed = tokio::task::spawn_blocking(|| lab(&["kill-leader"]))
        .await
        .unwrap();
    let killed = killed.lines().last().unwrap().trim().to_owned();
    rejoin.0 = Some(killed.clone());
    let promoted = wait_until_async(Duration::from_secs(60), || async {
        let l = tokio::task::spawn_blocking(|| {
            std::process::Command::new(root().join("deploy/lab/lab.sh"))
                .arg("leader")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        })
        .await
        .unwrap();
        !l.is_empty() && l != killed
    })
    .await;
    assert!(
        promoted,
        "no new leader after killing {killed}:\n{}",
        history.dump()
    );
    let recovered = more_pairs(&pairs, 80, 60).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for c in clients {
        logs.push(c.await.unwrap());
    }
    let t_end = t0.elapsed();
    // 3. The killed node rejoins; the lab is healthy again.
    drop(rejoin);
    lab(&["wait-healthy"]);

    // Figures.
    let events: Vec<&Event> = logs.iter().flat_map(|l| &l.events).collect();
    let errors = |from: Duration, to: Duration| -> Vec<&Event> {
        events
            .iter()
            .copied()
            .filter(|e| e.error.is_some() && e.at >= from && e.at < to)
            .collect()
    };
    let slowest = events.iter().map(|e| e.took).max().unwrap_or_default();
    let held: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.error.is_none() && e.took > Duration::from_millis(500))
        .collect();
    let total = Tally {
        pairs: logs.iter().map(|l| l.tally.pairs).sum(),
        stale: logs.iter().map(|l| l.tally.stale).sum(),
        on_replica: 0,
        examples: logs.iter().flat_map(|l| l.tally.examples.clone()).collect(),
        nodes: Default::default(),
    };
    let lost: u32 = logs.iter().map(|l| l.lost).sum();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in events.iter().filter(|e| e.error.is_some()) {
        *kinds
            .entry(format!("{} {}", e.what, e.error.as_deref().unwrap_or("")))
            .or_default() += 1;
    }
    eprintln!("leader change: errors by request and code: {kinds:?}");
    let in_switchover = errors(Duration::ZERO, t_kill);
    let at_kill = errors(t_kill, t_kill + Duration::from_secs(1));
    let after_kill = errors(t_kill + Duration::from_secs(1), t_end);
    eprintln!(
        "leader change: {} pairs, {} stale, {} lost writes (kill -9), requests held > 0.5 s: {} (longest {:?}); errors: switchover {}, in flight at the kill {}, after it {}; slowest request {:?}",
        total.pairs,
        total.stale,
        lost,
        held.len(),
        held.iter().map(|e| e.took).max().unwrap_or_default(),
        in_switchover.len(),
        at_kill.len(),
        after_kill.len(),
        slowest
    );
    total.report("leader change, split port with leader_wait_ms 30000", &pg);
    eprintln!(
        "leader waits: {} ({} timed out); control {}",
        pg.metric("pgvane_leader_waits_total", &["outcome=\"leader\""]) + 0.0,
        pg.metric("pgvane_leader_waits_total", &["outcome=\"timeout\""]) + 0.0,
        control.metric("pgvane_leader_waits_total", &[]) + 0.0
    );
    report.assert_leader_port_clean(
        "switchover, leader port, leader_wait_ms 30000",
        &tail(&pg.log_text()),
    );
    report_control.assert_leader_port_clean(
        "switchover, leader port, leader_wait_ms 0 (control)",
        &tail(&control.log_text()),
    );

    delay.assert_held();
    assert!(
        recovered,
        "no pairs after the failover:\n{}\n{}",
        history.dump(),
        tail(&pg.log_text())
    );
    assert!(
        in_switchover.is_empty(),
        "{} errors during the switchover, the first: {:?}\n{}",
        in_switchover.len(),
        first(&in_switchover),
        tail(&pg.log_text())
    );
    assert!(
        after_kill.is_empty(),
        "{} errors after the kill (beyond requests in flight), the first: {:?}\n{}",
        after_kill.len(),
        first(&after_kill),
        tail(&pg.log_text())
    );
    assert!(
        at_kill.len() <= CLIENTS as usize,
        "more errors at the kill than requests in flight: {} {:?}",
        at_kill.len(),
        first(&at_kill)
    );
    assert!(
        slowest <= Duration::from_millis(LEADER_WAIT_MS) + MARGIN,
        "a request took {slowest:?}: {:?}\n{}",
        events.iter().max_by_key(|e| e.took),
        pg.log_text()
            .lines()
            .filter(|l| l.contains("peer"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        total.stale, 0,
        "stale reads through the leader changes: {:?}",
        total.examples
    );
    assert!(
        !report.errors.contains_key("57P03"),
        "the leader port refused during the switchover: {report:?}"
    );
    assert!(report.sessions.len() >= 20, "{report:?}");
    assert!(
        report_control.errors.get("57P03").copied().unwrap_or(0) > 0,
        "control: leader_wait_ms 0 never refused (57P03) during the switchover: {report_control:?}"
    );
    assert!(pg.metric("pgvane_leader_waits_total", &["outcome=\"leader\""]) >= 1.0);
}

//! The stale-read oracle of CONSISTENCY.md §4 for the read-your-writes
//! tests: table `ryw_probe(k int primary key, v bigint not null)`; a writer
//! runs `UPDATE ryw_probe SET v = v + 1 WHERE k = $1 RETURNING v` and gets
//! w; a reader runs `SELECT v, host(inet_server_addr()) FROM ryw_probe
//! WHERE k = $1` (read-class: `pg_is_in_recovery()` would be a driver probe
//! that forces the leader); the read is stale when v < w. Every test uses
//! its own keys, so tests of one process can run side by side.

use super::{Pgvane, lab, leader, node_of_ip, replicas};
use std::time::Duration;

/// Keys 1..=PROBE_KEYS exist in `ryw_probe` (the benchmark `bench/ryw.py`
/// drops and refills the same table with more keys; it never runs while a
/// delay is set, and these tests run only under a delay of their own).
pub const PROBE_KEYS: i32 = 64;

static SET_UP: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

/// Creates `ryw_probe` (keys 1..=64), and for the refusal test the table
/// `ryw_writer_log`, the writing function `f_writer()` and the view
/// `v_writer` over it, once per process; then waits (at most 60 s, a delay
/// may be on) until every replica has them.
pub fn setup_probe() {
    let mut done = SET_UP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *done {
        return;
    }
    let l = leader();
    lab(&[
        "psql",
        &l[4..],
        &format!(
            "create table if not exists ryw_probe(k int primary key, v bigint not null);
             insert into ryw_probe select g, 0 from generate_series(1, {PROBE_KEYS}) g on conflict do nothing;
             create table if not exists ryw_writer_log(id bigserial primary key, at timestamptz not null default now());
             create or replace function f_writer() returns setof bigint language plpgsql as
               $f$ begin return query insert into ryw_writer_log default values returning id; end $f$;
             create or replace view v_writer as select * from f_writer() as f(id);"
        ),
    ]);
    for r in replicas() {
        let ok = super::wait_until(Duration::from_secs(60), || {
            std::process::Command::new(super::root().join("deploy/lab/lab.sh"))
                .args([
                    "psql",
                    &r[4..],
                    "select count(*) from ryw_probe where k <= 64 and to_regclass('v_writer') is not null",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == PROBE_KEYS.to_string())
        });
        assert!(ok, "ryw_probe and v_writer never reached {r}");
    }
    *done = true;
}

/// The first row of a simple-protocol query, every column as text.
pub async fn first_row(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return (0..r.len())
                .map(|i| r.get(i).unwrap_or("").to_owned())
                .collect();
        }
    }
    panic!("{sql}: no row");
}

/// The write of the oracle (simple protocol): the new value w of key `k`.
pub async fn write(c: &tokio_postgres::Client, k: i32) -> i64 {
    try_write(c, k)
        .await
        .unwrap_or_else(|e| panic!("write {k}: {e:?}"))
}

pub async fn try_write(c: &tokio_postgres::Client, k: i32) -> Result<i64, tokio_postgres::Error> {
    let msgs = c
        .simple_query(&format!(
            "update ryw_probe set v = v + 1 where k = {k} returning v"
        ))
        .await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("write {k}: no row")))
}

/// The read of the oracle (simple protocol): (v, node that served it).
pub async fn read(c: &tokio_postgres::Client, k: i32) -> (i64, String) {
    try_read(c, k)
        .await
        .unwrap_or_else(|e| panic!("read {k}: {e:?}"))
}

pub async fn try_read(
    c: &tokio_postgres::Client,
    k: i32,
) -> Result<(i64, String), tokio_postgres::Error> {
    let msgs = c
        .simple_query(&format!(
            "select v, host(inet_server_addr()) from ryw_probe where k = {k}"
        ))
        .await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0)?.parse().ok()?, node_of_ip(r.get(1)?)))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("read {k}: no row")))
}

/// Counts of one scenario: pairs, stale reads, reads served by replicas.
#[derive(Debug, Default)]
pub struct Tally {
    pub pairs: u32,
    pub stale: u32,
    pub on_replica: u32,
    /// The first few stale reads: (w, v, node).
    pub examples: Vec<(i64, i64, String)>,
    /// Reads per node.
    pub nodes: std::collections::BTreeMap<String, u32>,
}

impl Tally {
    /// Records one write-then-read pair; `leader` is the leader's name.
    pub fn add(&mut self, w: i64, (v, node): (i64, String), leader: &str) {
        self.pairs += 1;
        *self.nodes.entry(node.clone()).or_default() += 1;
        if node != leader {
            self.on_replica += 1;
        }
        if v < w {
            self.stale += 1;
            if self.examples.len() < 5 {
                self.examples.push((w, v, node));
            }
        }
    }

    pub fn replica_share(&self) -> f64 {
        if self.pairs == 0 {
            return 0.0;
        }
        f64::from(self.on_replica) / f64::from(self.pairs)
    }

    /// One line with the counts and `pg`'s read-your-writes metrics (the
    /// figures the closing note quotes); printed and returned.
    pub fn report(&self, label: &str, pg: &Pgvane) -> String {
        // `+ 0.0`: an empty sum is -0.0.
        let m = |name: &str, f: &[&str]| pg.metric(name, f) + 0.0;
        let line = format!(
            "ryw {label}: pairs={} stale={} replica_share={:.1}% ({} of {}, by node {:?}) | metrics: reads waited={} timeout={} replayed={} no_floor={} leader={} replica={}; wait_seconds sum={:.3} count={}; captures={}; refusals_retried={}; examples(w,v,node)={:?}",
            self.pairs,
            self.stale,
            100.0 * self.replica_share(),
            self.on_replica,
            self.pairs,
            self.nodes,
            m("pgvane_ryw_reads_total", &["reason=\"waited\""]),
            m("pgvane_ryw_reads_total", &["reason=\"timeout\""]),
            m("pgvane_ryw_reads_total", &["reason=\"replayed\""]),
            m("pgvane_ryw_reads_total", &["reason=\"no_floor\""]),
            m("pgvane_ryw_reads_total", &["target=\"leader\""]),
            m("pgvane_ryw_reads_total", &["target=\"replica\""]),
            m("pgvane_ryw_wait_seconds_sum", &[]),
            m("pgvane_ryw_wait_seconds_count", &[]),
            m("pgvane_ryw_captures_total", &[]),
            m("pgvane_replica_refusals_retried_total", &[]),
            self.examples
        );
        eprintln!("{line}");
        line
    }
}

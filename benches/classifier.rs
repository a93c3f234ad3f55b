//! Classifier micro-benchmark: the per-statement cost a split session pays
//! (`Classifier::classify` on a warm classifier) for pgbench's statements
//! and a few others, then the cache-miss cost (full lexer + sqlparser +
//! visitor) over the PostgreSQL 15 regression corpus in a shuffled order.
//! `cargo bench --bench classifier`. A plain harness: no extra crates.
//! Every timing is repeated [`ROUNDS`] times; min and median are printed,
//! since other builds share the machine.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use pgvane::classifier::{Classifier, classify_uncached};
use std::hint::black_box;
use std::time::Instant;

/// Repetitions of each timing.
const ROUNDS: usize = 7;

/// Statements a pgbench client sends, and a few a cache or a fast path
/// may not know.
const STATEMENTS: &[(&str, &str)] = &[
    (
        "-S select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    ),
    (
        "tpcb update accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
    ),
    (
        "tpcb select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 5678;",
    ),
    (
        "tpcb update tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 7;",
    ),
    (
        "tpcb update branches",
        "UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;",
    ),
    (
        "tpcb insert history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
    ),
    ("tpcb begin", "BEGIN;"),
    ("tpcb end", "END;"),
    ("select 1", "SELECT 1"),
    ("show", "SHOW transaction_read_only"),
    ("set", "SET application_name = 'bench'"),
    (
        "join with parameter",
        "select u.id, u.name, o.total from users u join orders o on o.user_id = u.id where u.id = $1 order by o.created_at desc limit 20",
    ),
    ("function call", "SELECT now(), count(*) FROM t WHERE x > 3"),
    ("nextval", "SELECT nextval('s')"),
];

/// The regression corpus as the classifier's unit tests read it.
#[path = "../src/classifier/corpus.rs"]
#[allow(dead_code)] // `record` is for the unit tests
mod regress;

fn corpus() -> Vec<(String, bool)> {
    regress::statements()
        .into_iter()
        .map(|e| (e.sql, e.scs))
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// Min and median of `ROUNDS` runs of `f`, each timing `n` calls, in ns per call.
fn time(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut runs: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / n as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    (runs[0], runs[runs.len() / 2])
}

fn main() {
    let cl = Classifier::new(vec![]);
    println!("Classifier::classify, warm (ns per statement, min / median of {ROUNDS}):");
    for (label, sql) in STATEMENTS {
        let _ = cl.classify(sql, true);
        let (min, med) = time(200_000, || {
            black_box(cl.classify(black_box(sql), true));
        });
        println!("  {label:<22} {min:>7.0} / {med:>7.0}");
    }
    println!("the same on 2 threads at once (a split port's workers sharing one classifier):");
    for (label, sql) in [STATEMENTS[0], STATEMENTS[11]] {
        let (min, med) = time(1, || {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..100_000 {
                            black_box(cl.classify(black_box(sql), true));
                        }
                    });
                }
            });
        });
        println!(
            "  {label:<22} {:>7.0} / {:>7.0}",
            min / 100_000.0,
            med / 100_000.0
        );
    }
    println!("classify_uncached (the full path, ns per statement, min / median):");
    for (label, sql) in STATEMENTS {
        let (min, med) = time(5_000, || {
            black_box(classify_uncached(black_box(sql), true, &[]));
        });
        println!("  {label:<22} {min:>7.0} / {med:>7.0}");
    }

    let mut stmts = corpus();
    // Deterministic shuffle (xorshift) so cache-line effects resemble a proxy's miss path.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..stmts.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        stmts.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut miss: Vec<f64> = Vec::with_capacity(stmts.len());
    for (sql, scs) in &stmts {
        let t = Instant::now();
        black_box(classify_uncached(black_box(sql), *scs, &[]));
        miss.push(t.elapsed().as_secs_f64() * 1e6);
    }
    miss.sort_by(f64::total_cmp);
    let mean = miss.iter().sum::<f64>() / miss.len() as f64;
    println!(
        "cache miss over {} corpus statements: mean {mean:.2} µs, p50 {:.2} µs, p99 {:.2} µs, max {:.0} µs",
        miss.len(),
        pct(&miss, 0.5),
        pct(&miss, 0.99),
        miss[miss.len() - 1]
    );
    // The whole corpus through a warm classifier: fast path, cache hits.
    let cl = Classifier::new(vec![]);
    for (sql, scs) in &stmts {
        let _ = cl.classify(sql, *scs);
    }
    let (min, med) = time(1, || {
        for (sql, scs) in &stmts {
            black_box(cl.classify(black_box(sql), *scs));
        }
    });
    let n = stmts.len() as f64;
    println!(
        "corpus through a warm classifier: {:.0} / {:.0} ns per statement (min / median)",
        min / n,
        med / n
    );
}

//! Classifier micro-benchmark over the PostgreSQL 15 regression corpus:
//! cache hit cost, and cache-miss cost (full lexer + sqlparser + visitor)
//! per statement with p50/p99, statements in a shuffled order.
//! `cargo bench --bench classifier`. A plain harness: no extra crates.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use pgvane::classifier::{Classifier, classify_uncached};
use std::hint::black_box;
use std::io::Read;
use std::time::Instant;

fn corpus() -> Vec<(String, bool)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sqlcorpus/pg15-regress-statements.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let scs = v
                .get("standard_conforming_strings")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
            (v["sql"].as_str().unwrap().to_owned(), scs)
        })
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
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
    let cl = Classifier::new(vec![]);
    for (sql, q) in [
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "pgbench -S",
        ),
        (
            "select u.id, u.name, o.total from users u join orders o on o.user_id = u.id where u.id = $1 order by o.created_at desc limit 20",
            "join with parameter",
        ),
    ] {
        let _ = cl.classify(sql, true);
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(cl.classify(black_box(sql), true));
        }
        println!(
            "cache hit ({q}): {:.0} ns per lookup",
            t.elapsed().as_secs_f64() * 1e9 / n as f64
        );
    }
}

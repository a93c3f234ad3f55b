//! The PostgreSQL 15 regression corpus the classifier's tests read
//! (`tests/fixtures/sqlcorpus`): each statement with its session's
//! `standard_conforming_strings` and the record it came in.

use std::io::Read;

/// One statement of the corpus.
pub(crate) struct Entry {
    /// Its text.
    pub sql: String,
    /// Its session's `standard_conforming_strings` (on where unrecorded).
    pub scs: bool,
    /// The whole record (`pg_stmt`, `pg_valid`, …).
    pub record: serde_json::Value,
}

/// Every statement of the corpus, in order.
pub(crate) fn statements() -> Vec<Entry> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sqlcorpus/pg15-regress-statements.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            Entry {
                sql: record["sql"].as_str().unwrap().to_owned(),
                scs: record
                    .get("standard_conforming_strings")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(true),
                record,
            }
        })
        .collect()
}

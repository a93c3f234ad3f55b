//! `EXPLAIN`: a plain EXPLAIN only plans, so any node may run it;
//! `EXPLAIN ANALYZE` (either spelling, or `ANALYZE` in the option list)
//! runs the statement, which is then classified like any other.

use super::{Classification, Hint, Reason, Route, lexer};

pub(super) fn explain(
    stmt: &str,
    scs: bool,
    allow: &[String],
    hint: Option<Hint>,
) -> Classification {
    let kw = lexer::keywords(stmt, 3);
    let analyze = match kw.get(1).map(String::as_str) {
        Some("ANALYZE" | "ANALYSE") => true,
        Some("(") => explain_options_analyze(stmt, scs),
        _ => false,
    };
    if !analyze {
        // Plain EXPLAIN plans without running: any node may do it.
        return Classification::new(Route::Replica, Reason::Read);
    }
    // EXPLAIN ANALYZE runs the statement: classify what follows the options.
    let inner = inner_of_explain(stmt);
    match inner {
        Some(rest) if !rest.trim().is_empty() => super::classify_one(rest, scs, allow, hint),
        _ => Classification::unparsed(Reason::Unparsed),
    }
}

/// True when a parenthesised EXPLAIN option list turns ANALYZE on.
fn explain_options_analyze(stmt: &str, scs: bool) -> bool {
    let words = lexer::words(stmt, scs);
    words.iter().enumerate().any(|(i, w)| {
        (w == "ANALYZE" || w == "ANALYSE")
            && !matches!(words.get(i + 1).map(String::as_str), Some("FALSE" | "OFF"))
    }) && !stmt.to_ascii_lowercase().contains("analyze 0")
}

/// The statement after `EXPLAIN [ANALYZE] [VERBOSE] [(...)]`: from the
/// earliest statement keyword that follows the options.
fn inner_of_explain(stmt: &str) -> Option<&str> {
    let lower = stmt.to_ascii_lowercase();
    let b = lower.as_bytes();
    let is_word_start =
        |p: usize| p == 0 || !(b[p - 1].is_ascii_alphanumeric() || b[p - 1] == b'_');
    let pos = [
        "select", "with", "values", "insert", "update", "delete", "merge", "create", "execute",
        "declare", "table",
    ]
    .iter()
    .filter_map(|key| {
        lower
            .match_indices(key)
            .map(|(p, _)| p)
            .find(|p| *p > 7 && is_word_start(*p))
    })
    .min()?;
    stmt.get(pos..)
}

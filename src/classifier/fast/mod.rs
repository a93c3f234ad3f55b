//! The fast path: decides the commonest statement shapes in one pass over
//! the text, without allocating and without sqlparser, before the cache is
//! even keyed. It answers only when it is sure to give the very
//! [`Classification`] the full pipeline ([`super::classify_uncached`])
//! gives; otherwise it declines (`None`) and the caller goes on to the
//! cache and the full pipeline. `tests.rs` checks that agreement over the
//! regression corpus and generated statements.
//!
//! What it decides, for a text of exactly one statement:
//! - `INSERT`, `UPDATE`, `DELETE`: leader (the full path never parses them);
//! - `BEGIN`/`START`, `COMMIT`/`END`/`ROLLBACK`/`ABORT`/`SAVEPOINT`/
//!   `RELEASE`, `SHOW`, `SET`, `RESET`: by the same keyword rules as the
//!   full path;
//! - a plain `SELECT` in a small grammar that sqlparser is known to accept:
//!   a select list of simple expressions (columns, literals, `$n`, unary
//!   and binary operators, `IS [NOT] NULL|TRUE|FALSE`), `FROM` tables with
//!   aliases, `WHERE`, `ORDER BY`, `LIMIT`, `OFFSET`. No parentheses (so no
//!   function calls, subqueries or casts), no comments, no quoted
//!   identifiers, no word sqlparser treats as a keyword outside the
//!   grammar's own, no `pg_*` names (node-local views), and only with
//!   `standard_conforming_strings` on.

mod select;

use super::lexer;
use super::{Classification, Pin, Reason, Route};

/// The verdict on `sql` if the fast path is sure of it; `None` otherwise.
#[must_use]
pub fn classify(sql: &str, scs: bool) -> Option<Classification> {
    if starts_with_select(sql) {
        // The grammar's own lexer allows no comment and nothing after a
        // final `;`, so the text is one statement: no separate pass.
        return if scs { select::select(sql) } else { None };
    }
    classify_keyword(sql, scs)
}

/// True when the first word of `sql` is `SELECT`.
fn starts_with_select(sql: &str) -> bool {
    lexer::leading_words(sql)
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("SELECT"))
}

/// [`classify`] for every shape but `SELECT` (declined here): the shapes
/// decided by their leading keywords, which cost less to decide than a
/// cache lookup. A `SELECT` costs about as much to check against the
/// grammar as a cache hit, so the caller looks it up in the cache first.
#[must_use]
pub fn classify_keyword(sql: &str, scs: bool) -> Option<Classification> {
    let is = |w: &str, any: &[&str]| any.iter().any(|a| w.eq_ignore_ascii_case(a));
    if starts_with_select(sql) {
        return None;
    }
    let mut statements = lexer::statements(sql, scs);
    let stmt = statements.next()?;
    if statements.next().is_some() {
        return None;
    }
    let mut words = lexer::leading_words(stmt);
    let first = words.next()?;
    let c = if is(first, &["INSERT", "UPDATE", "DELETE"]) {
        Classification::leader(Reason::Write)
    } else if is(
        first,
        &["COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"],
    ) {
        Classification::leader(Reason::Transaction)
    } else if is(first, &["SHOW"]) {
        Classification::leader(Reason::Probe)
    } else if is(first, &["SET"]) {
        if is(
            words.next().unwrap_or(""),
            &["LOCAL", "TRANSACTION", "CONSTRAINTS"],
        ) {
            Classification::leader(Reason::Transaction)
        } else {
            Classification::pinned(Pin::Set)
        }
    } else if is(first, &["RESET"]) {
        Classification::pinned(Pin::Set)
    } else if is(first, &["BEGIN", "START"]) {
        super::begin(stmt, scs)
    } else {
        return None;
    };
    // The full path sends a replica verdict to the leader when
    // `standard_conforming_strings` is off or a leading hint says so:
    // leave those to it.
    if c.route == Route::Replica && (!scs || starts_with_comment(sql)) {
        return None;
    }
    Some(c)
}

/// True when the first thing after whitespace is a comment (which may hold
/// a hint).
fn starts_with_comment(sql: &str) -> bool {
    let rest = sql.trim_start_matches(|c: char| c.is_ascii_whitespace());
    rest.starts_with("--") || rest.starts_with("/*")
}

#[cfg(test)]
mod tests;

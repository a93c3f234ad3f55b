//! The split-port classifier: SQL text → [`Classification`] (leader or
//! replica, and whether it pins the session). Pure: no IO, no awaiting.
//! Pipeline (CLASSIFIER.md §3): own lexer → cache → sqlparser visitor →
//! fail closed. Transaction state is not guessed here: the session reads it
//! from ReadyForQuery.

mod ast;
pub mod functions;
pub mod lexer;

use std::collections::HashMap;
use std::sync::Mutex;

pub use lexer::Hint;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Only the leader.
    Leader,
    /// A qualifying replica (or the leader as a fallback).
    Replica,
}

/// Why a session must stay on its leader backend until `DISCARD ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pin {
    /// `SET` / `RESET` of a session setting.
    Set,
    /// `set_config(…, false)`.
    SetConfig,
    /// Temporary table, view or sequence.
    TempTable,
    /// `LISTEN`.
    Listen,
    /// Session advisory lock.
    AdvisoryLock,
    /// SQL `PREPARE`.
    Prepare,
    /// `DECLARE … WITH HOLD`.
    HoldCursor,
    /// `LOAD`.
    Load,
    /// `nextval`/`setval`/`currval`/`lastval`.
    Sequence,
    /// `dblink_connect`.
    Dblink,
    /// The lexer could not tell (fail closed).
    Unknown,
}

impl Pin {
    /// Metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::SetConfig => "set_config",
            Self::TempTable => "temp_table",
            Self::Listen => "listen",
            Self::AdvisoryLock => "advisory_lock",
            Self::Prepare => "prepare",
            Self::HoldCursor => "hold_cursor",
            Self::Load => "load",
            Self::Sequence => "sequence",
            Self::Dblink => "dblink",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a statement got its route; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A plain read.
    Read,
    /// A write (DML, DDL, utility).
    Write,
    /// `SELECT … FOR UPDATE/SHARE` and friends.
    Lock,
    /// A function that writes or holds state.
    WriteFunction,
    /// A function not known to be read-only.
    UnknownFunction,
    /// sqlparser could not parse it.
    Unparsed,
    /// A hint chose the leader.
    Hint,
    /// A driver probe (`pg_is_in_recovery`, `SHOW transaction_read_only`).
    Probe,
    /// Transaction control or a transaction start.
    Transaction,
    /// Session state (pins).
    Session,
    /// Longer than the parse limit.
    TooLong,
    /// Reads the answering node's own state (`pg_stat_*` views, locks,
    /// replication): the leader's, unless a hint says replica.
    NodeLocal,
}

impl Reason {
    /// Metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Lock => "lock",
            Self::WriteFunction => "write_function",
            Self::UnknownFunction => "unknown_function",
            Self::Unparsed => "unparsed",
            Self::Hint => "hint",
            Self::Probe => "probe",
            Self::Transaction => "transaction",
            Self::Session => "session",
            Self::TooLong => "too_long",
            Self::NodeLocal => "node_local",
        }
    }
}

/// The verdict on one query text (all its statements together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Classification {
    /// Where it may run.
    pub route: Route,
    /// Why.
    pub reason: Reason,
    /// Session state it creates, if any.
    pub pin: Option<Pin>,
    /// `BEGIN`/`START TRANSACTION`: `Some(true)` when declared READ ONLY and
    /// not SERIALIZABLE (a replica may run the transaction).
    pub begin: Option<bool>,
    /// `DISCARD ALL`: drops every pin.
    pub discard_all: bool,
    /// sqlparser parsed it (or the lexer recognised it fully).
    pub parsed: bool,
    /// The statement may leave session state the classifier cannot see
    /// (DO, CALL, a function not known to be side-effect free): the
    /// backend it ran on is reset before another client gets it.
    pub reset: bool,
}

impl Classification {
    const fn new(route: Route, reason: Reason) -> Self {
        Self {
            route,
            reason,
            pin: None,
            begin: None,
            discard_all: false,
            parsed: true,
            reset: false,
        }
    }

    fn leader(reason: Reason) -> Self {
        Self::new(Route::Leader, reason)
    }

    /// The leader, and the backend is reset before another client gets it.
    fn leader_then_reset(reason: Reason) -> Self {
        Self {
            reset: true,
            ..Self::leader(reason)
        }
    }

    fn unparsed(reason: Reason) -> Self {
        Self {
            parsed: false,
            ..Self::leader_then_reset(reason)
        }
    }

    fn pinned(pin: Pin) -> Self {
        Self {
            pin: Some(pin),
            ..Self::leader(Reason::Session)
        }
    }

    /// Combines the verdicts of statements run together (one query, one
    /// batch): the leader wins, pins and `DISCARD ALL` add up.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        let (route, reason) = if self.route == Route::Leader {
            (self.route, self.reason)
        } else {
            (other.route, other.reason)
        };
        Self {
            route,
            reason,
            pin: self.pin.or(other.pin),
            begin: self.begin.or(other.begin),
            discard_all: self.discard_all || other.discard_all,
            parsed: self.parsed && other.parsed,
            reset: self.reset || other.reset,
        }
    }
}

/// Longest text handed to sqlparser; longer goes to the leader.
pub const MAX_PARSE_LEN: usize = 64 * 1024;
/// Default for the longest query text classified at all (a split port's
/// `max_classified_query_bytes`); longer goes to the leader unlexed.
pub const DEFAULT_MAX_QUERY_LEN: usize = 1024 * 1024;
/// Entries kept in one cache map before it starts evicting.
pub const CACHE_CAPACITY: usize = 16_384;

/// Longest key the cache keeps: longer statements are classified each
/// time.
pub const MAX_CACHED_KEY: usize = 4096;

/// Bytes one cache map may hold (keys plus [`ENTRY_OVERHEAD`] each), so the
/// cache never passes 2 × 8 MiB whatever clients send: 16,384 typical keys
/// of a few hundred bytes fit, 2,000 keys of 4 KiB do.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// What an entry costs beside its key: the boxed key's pointer and length,
/// the verdict and the hash table's slot and control byte.
const ENTRY_OVERHEAD: usize = 48;

/// One cache map with the bytes it holds.
#[derive(Debug, Default)]
struct CacheSlot {
    map: HashMap<Box<str>, Classification>,
    bytes: usize,
}

impl CacheSlot {
    /// Inserts `key`, first evicting arbitrary entries until it fits both
    /// [`CACHE_CAPACITY`] and [`CACHE_BYTES`].
    fn insert(&mut self, key: Box<str>, c: Classification) {
        let cost = key.len() + ENTRY_OVERHEAD;
        while !self.map.is_empty()
            && (self.map.len() >= CACHE_CAPACITY || self.bytes + cost > CACHE_BYTES)
        {
            let Some(old) = self.map.keys().next().cloned() else {
                break;
            };
            self.map.remove(&old);
            self.bytes -= old.len() + ENTRY_OVERHEAD;
        }
        // Another session may have cached the same key meanwhile.
        if self.map.insert(key, c).is_none() {
            self.bytes += cost;
        }
    }
}

/// Classifies SQL with a bounded cache keyed by the text with its literals
/// blanked ([`lexer::normalize`]) and `standard_conforming_strings`.
#[derive(Debug, Default)]
pub struct Classifier {
    read_only_functions: Vec<String>,
    /// Longer query texts are not even lexed: leader, unparsed.
    max_query_len: usize,
    /// One map per `standard_conforming_strings` value, looked up by `&str`
    /// without allocating.
    cache: [Mutex<CacheSlot>; 2],
}

impl Classifier {
    /// A classifier trusting `read_only_functions` (lower-case names) as reads.
    #[must_use]
    pub fn new(read_only_functions: Vec<String>) -> Self {
        Self {
            read_only_functions: read_only_functions
                .into_iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            max_query_len: DEFAULT_MAX_QUERY_LEN,
            cache: [Mutex::default(), Mutex::default()],
        }
    }

    /// The same, sending query texts longer than `bytes` to the leader
    /// without lexing or parsing them (each statement is parsed only up to
    /// [`MAX_PARSE_LEN`] whatever this says).
    #[must_use]
    pub fn with_max_query_len(mut self, bytes: usize) -> Self {
        self.max_query_len = bytes;
        self
    }

    /// Classifies `sql`; `scs` is the session's `standard_conforming_strings`.
    /// Returns the verdict and whether it came from the cache.
    pub fn classify(&self, sql: &str, scs: bool) -> (Classification, bool) {
        if sql.len() > self.max_query_len {
            return (Classification::unparsed(Reason::TooLong), false);
        }
        let slot = &self.cache[usize::from(scs)];
        let key = lexer::normalize(sql, scs);
        {
            let cache = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = cache.map.get(key.as_str()) {
                return (*c, true);
            }
        }
        let c = classify_uncached(sql, scs, &self.read_only_functions);
        if key.len() > MAX_CACHED_KEY {
            return (c, false);
        }
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.into_boxed_str(), c);
        (c, false)
    }
}

/// Classifies without a cache.
#[must_use]
pub fn classify_uncached(sql: &str, scs: bool, allow: &[String]) -> Classification {
    let hint = lexer::leading_hint(sql);
    let statements = lexer::split(sql, scs);
    let mut verdict: Option<Classification> = None;
    for stmt in &statements {
        let c = classify_one(stmt, scs, allow, hint);
        verdict = Some(verdict.map_or(c, |v| v.merge(c)));
    }
    let mut c = verdict.unwrap_or(Classification::new(Route::Replica, Reason::Read));
    if !scs && c.route == Route::Replica {
        // sqlparser cannot read `'a\'b'`: fail closed.
        c = Classification {
            route: Route::Leader,
            reason: Reason::Unparsed,
            ..c
        };
    }
    if hint == Some(Hint::Leader) && c.route == Route::Replica {
        c.route = Route::Leader;
        c.reason = Reason::Hint;
    }
    if statements.len() > 1 && c.begin.is_some() {
        // A transaction started inside a multi-statement query: leader.
        c.begin = Some(false);
        c.route = Route::Leader;
    }
    c
}

fn classify_one(stmt: &str, scs: bool, allow: &[String], hint: Option<Hint>) -> Classification {
    let kw = lexer::keywords(stmt, 4);
    let k = |i: usize| kw.get(i).map_or("", String::as_str);
    match k(0) {
        "BEGIN" | "START" => begin(stmt, scs),
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            Classification::leader(Reason::Transaction)
        }
        "PREPARE" if k(1) == "TRANSACTION" => Classification::leader(Reason::Transaction),
        "PREPARE" => Classification::pinned(Pin::Prepare),
        "SET" if k(1) == "LOCAL" || k(1) == "TRANSACTION" || k(1) == "CONSTRAINTS" => {
            Classification::leader(Reason::Transaction)
        }
        "SET" | "RESET" => Classification::pinned(Pin::Set),
        "LISTEN" => Classification::pinned(Pin::Listen),
        "LOAD" => Classification::pinned(Pin::Load),
        "DISCARD" => Classification {
            discard_all: k(1) == "ALL",
            ..Classification::leader(Reason::Session)
        },
        "DECLARE"
            if lexer::words(stmt, scs)
                .windows(2)
                .any(|w| w[0] == "WITH" && w[1] == "HOLD") =>
        {
            Classification::pinned(Pin::HoldCursor)
        }
        "CREATE"
            if matches!(k(1), "TEMP" | "TEMPORARY")
                || (matches!(k(1), "LOCAL" | "GLOBAL") && matches!(k(2), "TEMP" | "TEMPORARY")) =>
        {
            Classification::pinned(Pin::TempTable)
        }
        "CREATE"
            if k(1) == "TABLE"
                && lexer::words(stmt, scs)
                    .iter()
                    .any(|w| w == "TEMP" || w == "TEMPORARY") =>
        {
            Classification::pinned(Pin::TempTable)
        }
        "SHOW" => Classification::leader(Reason::Probe),
        // Their session effects cannot be known from the text.
        "DO" | "CALL" | "EXECUTE" => Classification::leader_then_reset(Reason::Write),
        "TABLE" => {
            let words = lexer::words(stmt, scs);
            if words.iter().any(|w| w == "FOR") {
                Classification::leader(Reason::Lock)
            } else {
                Classification::new(Route::Replica, Reason::Read)
            }
        }
        "EXPLAIN" => explain(stmt, scs, allow, hint),
        "SELECT" | "WITH" | "VALUES" | "(" => parse_and_walk(stmt, allow, hint),
        _ => Classification::leader(Reason::Write),
    }
}

fn begin(stmt: &str, scs: bool) -> Classification {
    let words = lexer::words(stmt, scs);
    let read_only = words.windows(2).any(|w| w[0] == "READ" && w[1] == "ONLY")
        && !words.iter().any(|w| w == "SERIALIZABLE");
    Classification {
        begin: Some(read_only),
        ..Classification::new(
            if read_only {
                Route::Replica
            } else {
                Route::Leader
            },
            Reason::Transaction,
        )
    }
}

fn explain(stmt: &str, scs: bool, allow: &[String], hint: Option<Hint>) -> Classification {
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
        Some(rest) if !rest.trim().is_empty() => classify_one(rest, scs, allow, hint),
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

fn parse_and_walk(stmt: &str, allow: &[String], hint: Option<Hint>) -> Classification {
    if stmt.len() > MAX_PARSE_LEN {
        return Classification::unparsed(Reason::TooLong);
    }
    match ast::analyze(stmt, allow) {
        Some(mut c) => {
            if matches!(c.reason, Reason::UnknownFunction | Reason::NodeLocal)
                && hint == Some(Hint::Replica)
                && c.pin.is_none()
            {
                // A hint relaxes the route; an unknown function still
                // resets the backend it ran on.
                c.route = Route::Replica;
                c.reason = Reason::Read;
            }
            c
        }
        None => Classification::unparsed(Reason::Unparsed),
    }
}

#[cfg(test)]
mod tests;

//! The split-port classifier: SQL text → [`Classification`] (leader or
//! replica, and whether it pins the session). Pure: no IO, no awaiting.
//! Pipeline (CLASSIFIER.md §3): fast path for the common shapes → own
//! lexer → cache → sqlparser visitor → fail closed. Transaction state is
//! not guessed here: the session reads it from ReadyForQuery.

mod ast;
mod cache;
mod explain;
pub mod fast;
pub mod functions;
pub mod lexer;

pub use cache::{CACHE_BYTES, CACHE_CAPACITY, MAX_CACHED_KEY, SHARDS};
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

/// How a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The fast path decided it without the cache or sqlparser.
    Fast,
    /// The cache had it.
    Cache,
    /// The full pipeline (lexer, sqlparser, visitor) ran: a cache miss.
    Full,
}

/// The verdict on one query text, with what the session needs beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The classification of all its statements together.
    pub class: Classification,
    /// How many statements it holds ([`lexer::count_statements`]).
    pub statements: usize,
    /// How the verdict was reached (for the cache metrics).
    pub source: Source,
}

/// Classifies SQL: the fast path's keyword shapes
/// ([`fast::classify_keyword`]) first, then a bounded cache keyed by the
/// text with its literals blanked ([`lexer::normalize`]) and
/// `standard_conforming_strings`, then the fast `SELECT` grammar
/// ([`fast::classify`]), then the full pipeline.
#[derive(Debug, Default)]
pub struct Classifier {
    read_only_functions: Vec<String>,
    /// Longer query texts are not even lexed: leader, unparsed.
    max_query_len: usize,
    cache: cache::Cache,
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
            cache: cache::Cache::default(),
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
    /// Returns the verdict and whether it came without running the full
    /// pipeline (from the fast path or the cache). [`Self::classify_query`]
    /// tells the two apart and counts the statements too.
    pub fn classify(&self, sql: &str, scs: bool) -> (Classification, bool) {
        let v = self.classify_query(sql, scs);
        (v.class, v.source != Source::Full)
    }

    /// Classifies `sql` (`scs` is the session's
    /// `standard_conforming_strings`) and counts its statements, so the
    /// caller need not split it again. Allocates nothing unless the full
    /// pipeline runs.
    pub fn classify_query(&self, sql: &str, scs: bool) -> Verdict {
        let verdict = |class, statements, source| Verdict {
            class,
            statements,
            source,
        };
        if sql.len() > self.max_query_len {
            let n = lexer::count_statements(sql, scs);
            return verdict(Classification::unparsed(Reason::TooLong), n, Source::Full);
        }
        if let Some(class) = fast::classify_keyword(sql, scs) {
            return verdict(class, 1, Source::Fast);
        }
        let mut buf = [0; cache::INLINE_KEY];
        let key = self.cache.key(sql, scs, &mut buf);
        let cacheable = key.len <= MAX_CACHED_KEY;
        if cacheable {
            if let Some((class, statements)) = self.cache.get(key, &buf, sql, scs) {
                return verdict(class, statements, Source::Cache);
            }
        }
        if let Some(class) = fast::classify(sql, scs) {
            if cacheable {
                self.cache.insert(key, sql, scs, class, 1);
            }
            return verdict(class, 1, Source::Fast);
        }
        let (class, statements) = classify_full(sql, scs, &self.read_only_functions);
        if cacheable {
            self.cache.insert(key, sql, scs, class, statements);
        }
        Verdict {
            class,
            statements,
            source: Source::Full,
        }
    }
}

/// Classifies without a cache or the fast path: the full pipeline.
#[must_use]
pub fn classify_uncached(sql: &str, scs: bool, allow: &[String]) -> Classification {
    classify_full(sql, scs, allow).0
}

/// The full pipeline's verdict and the number of statements.
fn classify_full(sql: &str, scs: bool, allow: &[String]) -> (Classification, usize) {
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
    (c, statements.len())
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
        "EXPLAIN" => explain::explain(stmt, scs, allow, hint),
        "SELECT" | "WITH" | "VALUES" | "(" => parse_and_walk(stmt, allow, hint),
        _ => Classification::leader(Reason::Write),
    }
}

/// `BEGIN`/`START TRANSACTION`: to a replica when `READ ONLY` and not
/// `SERIALIZABLE`. Allocates nothing (the fast path uses it too).
fn begin(stmt: &str, scs: bool) -> Classification {
    let mut read_only = false;
    let mut serializable = false;
    let mut prev_read = false;
    for w in lexer::bare_words(stmt, scs) {
        read_only |= prev_read && w.eq_ignore_ascii_case("ONLY");
        serializable |= w.eq_ignore_ascii_case("SERIALIZABLE");
        prev_read = w.eq_ignore_ascii_case("READ");
    }
    let read_only = read_only && !serializable;
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
mod corpus;
#[cfg(test)]
mod tests;

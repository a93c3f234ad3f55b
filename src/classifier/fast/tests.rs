//! The fast path against the full pipeline: on every statement it decides,
//! it must give the full pipeline's verdict.

use super::*;

fn read(sql: &str) -> bool {
    classify(sql, true) == Some(Classification::new(Route::Replica, Reason::Read))
}

#[test]
fn decides_pgbench_shapes() {
    assert!(read(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
    ));
    assert!(read("SELECT 1"));
    assert!(read(
        "select a, b as c from s.t x where a = $1 and b is not null order by a desc limit 10 offset $2"
    ));
    for (sql, reason) in [
        (
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
            Reason::Write,
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP);",
            Reason::Write,
        ),
        ("BEGIN;", Reason::Transaction),
        ("END;", Reason::Transaction),
        ("show transaction_read_only", Reason::Probe),
    ] {
        let c = classify(sql, true).unwrap_or_else(|| panic!("declined {sql}"));
        assert_eq!((c.route, c.reason), (Route::Leader, reason), "{sql}");
    }
}

#[test]
fn declines_what_it_cannot_be_sure_of() {
    for sql in [
        "select now()",
        "select \"nextval\" from t",
        "select a from t for update",
        "select a into b from t",
        "select id from t",
        "select a from pg_locks",
        "select E'a' from t",
        "select a from t -- pgvane: leader",
        "/* pgvane: leader */ select 1",
        "select 1; select 2",
        "select 1 from t where a =-1",
        "select 1a",
        "select 'a\\' from t",
        "with d as (delete from t) select 1",
        "create table t (a int)",
        "",
    ] {
        assert_eq!(classify(sql, true), None, "{sql}");
    }
    assert_eq!(classify("select 1", false), None, "scs off");
    assert_eq!(
        classify("-- c\nbegin read only", true),
        None,
        "a hint may follow"
    );
}

/// Checks the fast path against the full pipeline on `sql`; true when the
/// fast path decided it.
fn agrees(sql: &str, scs: bool) -> bool {
    let Some(fast) = classify(sql, scs) else {
        return false;
    };
    let full = super::super::classify_uncached(sql, scs, &[]);
    assert_eq!(fast, full, "scs {scs}: {sql:?}");
    assert_eq!(lexer::count_statements(sql, scs), 1, "{sql:?}");
    true
}

/// The string literals of a Rust source file (the statements of the
/// classifier's other tests, and their messages, which do no harm).
fn string_literals(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = src.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('r') => s.push('\r'),
                    Some('t') => s.push('\t'),
                    Some(other) => s.push(other),
                    None => {}
                },
                c => s.push(c),
            }
        }
        out.push(s);
    }
    out
}

/// pgbench's statements, the regression corpus and every string of the
/// classifier's tests: wherever the fast path answers, it answers as the
/// full pipeline does.
#[test]
fn agrees_with_the_full_pipeline_on_the_corpus_and_the_tests() {
    let (mut n, mut decided, mut decided_off, mut reads) = (0, 0, 0, 0);
    for e in super::super::corpus::statements() {
        let (sql, scs) = (e.sql.as_str(), e.scs);
        n += 1;
        decided += usize::from(agrees(sql, scs));
        reads += usize::from(classify(sql, scs).is_some_and(|c| c.route == Route::Replica));
        // The same text in a session with the other setting.
        decided_off += usize::from(agrees(sql, !scs));
    }
    eprintln!(
        "corpus: {n} statements, {decided} decided by the fast path \
         ({reads} of them replica reads; with the other scs setting: {decided_off})"
    );
    assert_eq!(n, 41_562);
    let (mut m, mut tests_decided) = (0, 0);
    for src in [
        include_str!("../tests.rs"),
        include_str!("../lexer.rs"),
        include_str!("../../../benches/classifier.rs"),
        include_str!("mod.rs"),
    ] {
        for sql in string_literals(src) {
            m += 1;
            tests_decided += usize::from(agrees(&sql, true));
            tests_decided += usize::from(agrees(&sql, false));
        }
    }
    eprintln!("test strings: {m} (each with scs on and off), {tests_decided} decided");
    assert!(tests_decided > 20, "{tests_decided}");
}

/// The pieces of generated statements: the grammar's own words, and
/// things just outside it.
const VOCAB: &[&str] = &[
    "SELECT",
    "select",
    "DISTINCT",
    "*",
    "a",
    "b",
    "t.c",
    "s.t",
    "x1",
    "FROM",
    "from",
    "t",
    "WHERE",
    "AND",
    "or",
    "NOT",
    "=",
    "<>",
    "!=",
    "<",
    "<=",
    ">=",
    ">",
    "+",
    "-",
    "/",
    "%",
    "||",
    "1",
    "2.5",
    "0",
    "'s'",
    "'it''s'",
    "''",
    "$1",
    "$2",
    "NULL",
    "TRUE",
    "false",
    "IS",
    "AS",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "LIMIT",
    "OFFSET",
    ",",
    "id",
    "name",
    "pg_x",
    "now()",
    "(",
    ")",
    ";",
    "for",
    "update",
    "into",
    "nextval('s')",
    "\"q\"",
    "\"nextval\"",
    "e'x'",
    "--c\n",
    "/*c*/",
    "1e5",
    "1.",
    "$$x$$",
    "::int",
    "user",
    "current_user",
    "WITH",
    "BEGIN",
    "READ",
    "ONLY",
    "SERIALIZABLE",
    "SET",
    "LOCAL",
    "INSERT",
    "SHOW",
    "END",
    "ROLLBACK",
    "=-",
    "!",
    "~",
    "@",
    "?",
    ":",
    "[",
    "é",
    "a$b",
    "$q$;$q$",
    "E'\\';'",
    "'\\'",
    "/* /* */ ; */",
    "U&'x'",
    "B'1'",
    "x'1f'",
    "all",
    "between",
    "like",
    "in",
    "over",
    "collate",
    "at",
];

/// A deterministic generator of statements near the fast grammar: a
/// statement in the grammar, then with some probability one piece
/// dropped, doubled or replaced from [`VOCAB`].
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[usize::try_from(self.next() % from.len() as u64).unwrap()]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }

    fn expr(&mut self, out: &mut Vec<&'static str>) {
        let operands = [
            "a", "b", "t.c", "x1", "1", "2.5", "'s'", "'it''s'", "$1", "NULL", "TRUE", "false",
        ];
        let ops = [
            "=", "<>", "!=", "<", "<=", ">=", ">", "+", "-", "*", "/", "%", "||", "AND", "OR",
        ];
        loop {
            while self.chance(5) {
                out.push(self.pick(&["NOT", "-", "+"]));
            }
            out.push(self.pick(&operands));
            if self.chance(6) {
                out.push("IS");
                if self.chance(2) {
                    out.push("NOT");
                }
                out.push(self.pick(&["NULL", "TRUE", "FALSE"]));
            }
            if !self.chance(2) {
                return;
            }
            out.push(self.pick(&ops));
        }
    }

    fn statement(&mut self) -> Vec<&'static str> {
        let mut out = vec!["SELECT"];
        if self.chance(8) {
            out.push("DISTINCT");
        }
        if self.chance(4) {
            out.push("*");
        } else {
            loop {
                self.expr(&mut out);
                if self.chance(3) {
                    out.push("AS");
                    out.push("x1");
                } else if self.chance(4) {
                    out.push("y");
                }
                if !self.chance(3) {
                    break;
                }
                out.push(",");
            }
        }
        if !self.chance(4) {
            out.push("FROM");
            loop {
                out.push(self.pick(&["t", "s.t", "a.b.c"]));
                if self.chance(3) {
                    out.push(self.pick(&["u", "AS"]));
                    if out.last() == Some(&"AS") {
                        out.push("v");
                    }
                }
                if !self.chance(4) {
                    break;
                }
                out.push(",");
            }
        }
        if self.chance(2) {
            out.push("WHERE");
            self.expr(&mut out);
        }
        if self.chance(4) {
            out.push("ORDER");
            out.push("BY");
            self.expr(&mut out);
            if self.chance(2) {
                out.push(self.pick(&["ASC", "DESC"]));
            }
        }
        for kw in ["LIMIT", "OFFSET"] {
            if self.chance(4) {
                out.push(kw);
                out.push(self.pick(&["10", "$2"]));
            }
        }
        if self.chance(2) {
            let at = usize::try_from(self.next() % out.len() as u64).unwrap();
            match self.next() % 3 {
                0 => {
                    out.remove(at);
                }
                1 => out.insert(at, out[at]),
                _ => out[at] = self.pick(VOCAB),
            }
        }
        out
    }
}

/// Generated statements in and near the grammar, joined with spaces or
/// with nothing: every one the fast path decides, the full pipeline
/// decides the same way.
#[test]
fn agrees_on_generated_statements() {
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    let (mut n, mut decided) = (0, 0);
    for _ in 0..20_000 {
        let tokens = g.statement();
        let sep = if g.chance(5) { "" } else { " " };
        let sql = tokens.join(sep);
        n += 1;
        decided += usize::from(agrees(&sql, true));
    }
    eprintln!("generated: {n} statements, {decided} decided by the fast path");
    assert!(
        decided > n / 4,
        "the generator stays too far from the grammar: {decided}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    /// Random token soup from [`VOCAB`], mostly starting with SELECT or
    /// another keyword the fast path knows, in either scs setting.
    #[test]
    fn agrees_on_token_soup(
        lead in proptest::sample::select(&["SELECT ", "select ", "UPDATE t SET a = ", "BEGIN ", "SET ", "SHOW ", "", "/* pgvane: leader */ SELECT "][..]),
        pieces in proptest::collection::vec(proptest::sample::select(VOCAB), 0..14),
        sep in proptest::sample::select(&[" ", "", "\n"][..]),
        scs in proptest::bool::ANY,
    ) {
        let sql = format!("{lead}{}", pieces.join(sep));
        agrees(&sql, scs);
    }

    /// Tricky lexing placed inside shapes the fast path decides: dollar
    /// quotes, `E''` strings, nested comments, quoted identifiers such as
    /// `"nextval"`, backslashes with `standard_conforming_strings` off,
    /// and semicolons hidden in any of them.
    #[test]
    fn agrees_on_tricky_lexing(
        shape in proptest::sample::select(&[
            "SELECT a FROM t WHERE b = {}",
            "SELECT {} FROM t",
            "SELECT a {} FROM t",
            "{} SELECT 1",
            "UPDATE t SET a = {} WHERE b = 1",
            "INSERT INTO t VALUES ({})",
            "BEGIN {} READ ONLY",
            "BEGIN READ {}",
            "START TRANSACTION {}",
            "SET {} x = 1",
            "SHOW {}",
            "COMMIT {}",
            "SELECT 1 {}",
        ][..]),
        piece in proptest::sample::select(&[
            "$$;$$", "$q$ ' ; $q$", "$q$ $$ ; $q$", "E'\\'; set x = 1; '", "E'\\\\'",
            "'a\\'; set x = 1; select '", "'a\\'", "/* /* */ ; */", "/* ; */", "-- ;\n",
            "\"nextval\"", "\"a;b\"", "\"\"\"\"", "'it''s'", "U&'x'", "U&\"a\"", "a$b",
            "$1", "$é$;$é$", "é", "; set x = 1", "; ", "';'", "read only", "serializable",
            "/* pgvane: replica */", "-- pgvane: leader\n", "local", "\r", "\\", "$", "'",
            "\"", "/*", "--", "E'", "$a$",
        ][..]),
        scs in proptest::bool::ANY,
    ) {
        agrees(&shape.replace("{}", piece), scs);
    }
}

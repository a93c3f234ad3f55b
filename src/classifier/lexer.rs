//! pgvane's own SQL lexer: statement boundaries, the leading hint comment
//! and the first keywords, with PostgreSQL's quoting rules (nested block
//! comments, `E''`, `U&''`, dollar quotes, `standard_conforming_strings`).
//! Never panics, whatever the input; never allocates for the common path.

/// A routing hint read from the comments before the first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    /// `/* pgvane: leader */` (or `primary`): always the leader.
    Leader,
    /// `/* pgvane: replica */`: may relax a policy decision.
    Replica,
}

/// Splits `sql` into statements at top-level semicolons. Empty statements
/// are dropped. With `scs` false, a backslash escapes inside plain `'...'`.
#[must_use]
pub fn split(sql: &str, scs: bool) -> Vec<&str> {
    statements(sql, scs).collect()
}

/// The statements of `sql` as [`split`] finds them, without allocating.
pub fn statements(sql: &str, scs: bool) -> impl Iterator<Item = &str> {
    let b = sql.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while start <= b.len() {
            let seg_start = start;
            while i < b.len() && b[i] != b';' {
                i = skip_token(b, i, scs);
            }
            let seg_end = i.min(b.len());
            i = seg_end + 1;
            start = i;
            if let Some(s) = sql.get(seg_start..seg_end) {
                if first_token_at(s.as_bytes(), 0).is_some() {
                    return Some(s);
                }
            }
        }
        None
    })
}

/// How many statements [`split`] finds in `sql`, without allocating.
#[must_use]
pub fn count_statements(sql: &str, scs: bool) -> usize {
    statements(sql, scs).count()
}

/// Returns the index after the token (or single byte) starting at `i`.
fn skip_token(b: &[u8], i: usize, scs: bool) -> usize {
    match b[i] {
        // scan.l: a `--` comment ends at `\n` or `\r`.
        b'-' if b.get(i + 1) == Some(&b'-') => b[i..]
            .iter()
            .position(|c| matches!(*c, b'\n' | b'\r'))
            .map_or(b.len(), |p| i + p + 1),
        b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
        b'\'' => {
            let escapes = !scs || is_e_prefix(b, i);
            skip_quoted(b, i, b'\'', escapes)
        }
        b'"' => skip_quoted(b, i, b'"', false),
        // `$` inside an identifier (`a$b`) starts nothing.
        b'$' if i > 0 && is_ident_byte(b[i - 1]) => i + 1,
        b'$' => skip_dollar(b, i),
        // An identifier is one token, so a `$` in it is never a quote.
        c if is_ident_start(c) => {
            let rest = &b[i + 1..];
            i + 1
                + rest
                    .iter()
                    .position(|c| !has(*c, IDENT_CONT))
                    .unwrap_or(rest.len())
        }
        _ => i + 1,
    }
}

/// scan.l's `ident_start`: a letter, `_` or any byte of a non-ASCII character.
const IDENT_START: u8 = 1;
/// scan.l's `dolq_cont` (`ident_cont` without `$`).
const DOLQ_CONT: u8 = 2;
/// scan.l's `ident_cont`: `dolq_cont` or `$`.
const IDENT_CONT: u8 = 4;
/// An ASCII letter or digit, `_` or `$`: a number after one is part of a
/// word, not a literal.
const WORDISH: u8 = 8;
/// A byte that may start a literal, a quoted identifier or a comment
/// (`'`, `"`, `$`, `-`, `/`, a digit): every other byte outside a word is
/// a token of its own that [`normalize_with`] passes over.
const SPECIAL: u8 = 16;

/// Each byte's classes, looked up once per byte: the lexer reads every
/// byte of every statement (the classifier cache's key among others).
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
        let dolq = start || c.is_ascii_digit();
        let mut v = 0;
        if start {
            v |= IDENT_START;
        }
        if dolq {
            v |= DOLQ_CONT;
        }
        if dolq || c == b'$' {
            v |= IDENT_CONT;
        }
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' {
            v |= WORDISH;
        }
        if matches!(c, b'\'' | b'"' | b'$' | b'-' | b'/') || c.is_ascii_digit() {
            v |= SPECIAL;
        }
        t[i] = v;
        i += 1;
    }
    t
};

/// Whether byte `c` is of class `class`.
fn has(c: u8, class: u8) -> bool {
    CLASSES[usize::from(c)] & class != 0
}

/// scan.l's `ident_start`.
fn is_ident_start(c: u8) -> bool {
    has(c, IDENT_START)
}

/// scan.l's `dolq_cont`.
fn is_ident_byte(c: u8) -> bool {
    has(c, DOLQ_CONT)
}

fn is_e_prefix(b: &[u8], i: usize) -> bool {
    i > 0
        && matches!(b[i - 1], b'e' | b'E')
        && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'))
}

fn skip_block_comment(b: &[u8], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j + 1 < b.len() {
        if b[j] == b'/' && b[j + 1] == b'*' {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
        } else if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
            } else {
                return j + 1;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

fn skip_dollar(b: &[u8], i: usize) -> usize {
    // scan.l: a tag is `$` dolq_start dolq_cont* `$` or `$$`, where
    // dolq_start is [A-Za-z\200-\377_]; `$1` is a parameter.
    let mut j = i + 1;
    while j < b.len() && is_ident_byte(b[j]) {
        if j == i + 1 && b[j].is_ascii_digit() {
            return i + 1;
        }
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' {
        return i + 1;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// Index of the first token (after whitespace and comments) at or after `i`.
fn first_token_at(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_token(b, i, true),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            _ => return Some(i),
        }
    }
    None
}

/// The hint in the comments before the first token, if any.
#[must_use]
pub fn leading_hint(sql: &str) -> Option<Hint> {
    let b = sql.as_bytes();
    let end = first_token_at(b, 0).unwrap_or(b.len());
    let head = sql.get(..end)?.to_ascii_lowercase();
    let mut found = None;
    for (marker, hint) in [
        ("pgvane: leader", Hint::Leader),
        ("pgvane:leader", Hint::Leader),
        ("pgvane: primary", Hint::Leader),
        ("pgdog_role: primary", Hint::Leader),
        ("pgvane: replica", Hint::Replica),
        ("pgvane:replica", Hint::Replica),
        ("pgdog_role: replica", Hint::Replica),
    ] {
        if head.contains(marker) {
            // Leader wins over replica when both appear.
            if hint == Hint::Leader {
                return Some(Hint::Leader);
            }
            found = Some(hint);
        }
    }
    found
}

/// Up to `n` leading words of a statement, upper-cased; a `(` counts as a word.
#[must_use]
pub fn keywords(stmt: &str, n: usize) -> Vec<String> {
    leading_words(stmt)
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The leading words of a statement as [`keywords`] reads them, in their
/// own case and without allocating: each a run of ASCII letters, digits
/// and `_` after whitespace and comments, or a `(`; any other byte ends them.
pub fn leading_words(stmt: &str) -> impl Iterator<Item = &str> {
    let b = stmt.as_bytes();
    let mut i = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let Some(start) = first_token_at(b, i) else {
            done = true;
            return None;
        };
        let rest = &b[start..];
        let end = start
            + rest
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .unwrap_or(rest.len());
        if end == start {
            // Punctuation: `(` is reported, anything else ends the scan.
            if b[start] == b'(' {
                i = start + 1;
                return Some("(");
            }
            done = true;
            return None;
        }
        i = end;
        stmt.get(start..end)
    })
}

/// The cache key of a query: the text with every string and number literal
/// replaced by `?`, so `... WHERE id = 1` and `... WHERE id = 2` share one
/// entry. Routing never depends on a literal's value (booleans and NULL are
/// keywords and stay); comments stay, hints included.
#[must_use]
pub fn normalize(sql: &str, scs: bool) -> String {
    let mut out = String::with_capacity(sql.len());
    normalize_with(sql, scs, |piece| out.push_str(piece));
    out
}

/// [`normalize`] without allocating: hands the key to `f` piece by piece
/// (runs of the text and `"?"` for each literal), in order; the key is the
/// pieces joined.
pub fn normalize_with(sql: &str, scs: bool, mut f: impl FnMut(&str)) {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        let class = CLASSES[usize::from(c)];
        // A word (keyword or identifier) is one token, the digits and `$`
        // in it included: never a literal, so skipped at once.
        if class & IDENT_START != 0 {
            let rest = &b[i + 1..];
            i += 1 + rest
                .iter()
                .position(|c| !has(*c, IDENT_CONT))
                .unwrap_or(rest.len());
            continue;
        }
        // Whitespace, operators and punctuation: one byte each, no literal.
        if class & SPECIAL == 0 {
            i += 1;
            continue;
        }
        i = normalize_token(sql, i, scs, &mut copied, &mut f);
    }
    let run = sql.get(copied..).unwrap_or("");
    if !run.is_empty() {
        f(run);
    }
}

/// One token of [`normalize_with`], at `i`: a literal is handed to `f` as
/// `?`, after the text since `copied` (which moves past the literal);
/// any other token is passed over. The index after the token.
fn normalize_token(
    sql: &str,
    i: usize,
    scs: bool,
    copied: &mut usize,
    f: &mut impl FnMut(&str),
) -> usize {
    let b = sql.as_bytes();
    match literal_end(b, i, scs) {
        Some(end) => {
            let run = sql.get(*copied..i).unwrap_or("");
            if !run.is_empty() {
                f(run);
            }
            f("?");
            *copied = end.max(i + 1);
            *copied
        }
        None => skip_token(b, i, scs).max(i + 1),
    }
}

/// Where the string, dollar-quoted or number literal starting at `i`
/// ends, if one starts there (`scs`: `standard_conforming_strings`); a
/// number or a dollar quote right after a word byte is part of the word.
fn literal_end(b: &[u8], i: usize, scs: bool) -> Option<usize> {
    let prev_word = i > 0 && has(b[i - 1], WORDISH);
    match b[i] {
        b'\'' => Some(skip_quoted(b, i, b'\'', !scs || is_e_prefix(b, i))),
        b'$' if !prev_word && i + 1 < b.len() && (b[i + 1] == b'$' || is_ident_start(b[i + 1])) => {
            let end = skip_dollar(b, i);
            (end > i + 1).then_some(end)
        }
        b'0'..=b'9' if !prev_word => {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            if j < b.len()
                && (b[j] == b'e' || b[j] == b'E')
                && b.get(j + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == b'-' || *d == b'+')
            {
                j += 2;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
            }
            Some(j)
        }
        _ => None,
    }
}

/// Every bare word of a statement outside quotes and comments, upper-cased;
/// `scs` is the session's `standard_conforming_strings`.
#[must_use]
pub fn words(stmt: &str, scs: bool) -> Vec<String> {
    bare_words(stmt, scs).map(str::to_ascii_uppercase).collect()
}

/// The words [`words`] finds, in their own case and without allocating.
pub fn bare_words(stmt: &str, scs: bool) -> impl Iterator<Item = &str> {
    let b = stmt.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if b[i].is_ascii_alphabetic() || b[i] == b'_' {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                return stmt.get(start..i);
            }
            i = skip_token(b, i, scs).max(i + 1);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_quotes_comments_dollars() {
        assert_eq!(
            split("select 1; select 2;", true),
            vec!["select 1", " select 2"]
        );
        assert_eq!(
            split("select ';'; select $$;$$; select $a$ $$ ; $a$", true).len(),
            3
        );
        assert_eq!(
            split("select 1 /* ; /* ; */ ; */ ; select \"a;b\"", true).len(),
            2
        );
        assert_eq!(split("select 1 -- ;\n; ;;", true), vec!["select 1 -- ;\n"]);
        assert_eq!(
            split("select 'a\\'; select 1'", false).len(),
            1,
            "scs off: backslash escapes"
        );
        assert_eq!(split("select 'a\\'; select 1'", true).len(), 2);
        assert_eq!(split("select E'a\\'; select 1'", true).len(), 1);
        assert_eq!(split("select $1, $2; select 3", true).len(), 2);
        assert!(split("  -- only a comment", true).is_empty());
        // scan.l ends a `--` comment at `\r` too.
        assert_eq!(split("select 1 --\r; set role x", true).len(), 2);
        // A `$` inside an identifier starts no dollar quote.
        assert_eq!(split("select a$b$; select $b$ ; $b$", true).len(), 2);
        assert_eq!(split("select $é$ ; $é$; select 2", true).len(), 2);
        assert_eq!(split("select $_1$ ; $_1$; select 2", true).len(), 2);
        // Nested block comments end only at the outer `*/`.
        assert_eq!(split("select /* /* */ ; */ 1; select 2", true).len(), 2);
    }

    #[test]
    fn hints_only_before_the_first_token() {
        assert_eq!(
            leading_hint("/* pgvane: leader */ select 1"),
            Some(Hint::Leader)
        );
        assert_eq!(
            leading_hint("-- pgvane: replica\nselect 1"),
            Some(Hint::Replica)
        );
        assert_eq!(
            leading_hint("/* x */ /* PGVANE: Replica */select 1"),
            Some(Hint::Replica)
        );
        assert_eq!(leading_hint("select 1 /* pgvane: leader */"), None);
        assert_eq!(leading_hint("select '/* pgvane: leader */'"), None);
    }

    #[test]
    fn keywords_and_words() {
        assert_eq!(
            keywords("  /* c */ begin  read only", 3),
            vec!["BEGIN", "READ", "ONLY"]
        );
        assert_eq!(
            keywords("explain (analyze) select", 3),
            vec!["EXPLAIN", "(", "ANALYZE"]
        );
        assert_eq!(keywords("", 2), Vec::<String>::new());
        assert_eq!(
            words("select 'for update' from t for update", true),
            vec!["SELECT", "FROM", "T", "FOR", "UPDATE"]
        );
    }

    #[test]
    fn normalizes_literals_only() {
        assert_eq!(
            normalize("select * from t where id = 42 and s = 'x''y'", true),
            "select * from t where id = ? and s = ?"
        );
        assert_eq!(
            normalize("select $1, t1.c2, 1.5e-3, $$a$$, $q$b$q$", true),
            "select $1, t1.c2, ?, ?, ?"
        );
        assert_eq!(
            normalize("/* pgvane: leader */ select true, null -- 5\n", true),
            "/* pgvane: leader */ select true, null -- 5\n"
        );
        assert_eq!(normalize("select E'a\\'b'", true), "select E?");
        assert_eq!(normalize("select 'a\\'", false), "select ?");
    }

    /// The key as it was computed token by token before words and
    /// one-byte tokens were passed over in place: the reference the
    /// faster loop must match byte for byte.
    fn normalize_reference(sql: &str, scs: bool) -> String {
        let mut out = String::new();
        let mut f = |piece: &str| out.push_str(piece);
        let (mut i, mut copied) = (0, 0);
        while i < sql.len() {
            i = normalize_token(sql, i, scs, &mut copied, &mut f);
        }
        f(sql.get(copied..).unwrap_or(""));
        out
    }

    /// The keys of the regression corpus, in either scs setting.
    #[test]
    fn normalizes_the_corpus_as_the_token_by_token_reference() {
        let corpus = super::super::corpus::statements();
        for e in &corpus {
            for scs in [true, false] {
                let (sql, got) = (&e.sql, normalize(&e.sql, scs));
                assert_eq!(got, normalize_reference(sql, scs), "{sql:?}");
            }
        }
        assert!(corpus.len() > 1000, "{} statements", corpus.len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        /// Soup of the pieces that change how bytes lex.
        #[test]
        fn normalizes_token_soup_as_the_reference(
            pieces in proptest::collection::vec(proptest::sample::select(&[
                "select", " ", "a", "t1", "_x", "é", "$", "$$", "$q$", "$1", "1", "1.5", "2e-3",
                "e", "E", "'", "''", "\\", "\"", "--", "\n", "\r", "/*", "*/", "-", "/", "*",
                ".", ",", ";", "(", ")", "=", "U&", "x", "0", "9", "a$b", "ü", "\t",
            ][..]), 0..24),
            scs in proptest::bool::ANY,
        ) {
            let sql: String = pieces.concat();
            proptest::prop_assert_eq!(normalize(&sql, scs), normalize_reference(&sql, scs));
        }

        /// Any text at all.
        #[test]
        fn normalizes_any_text_as_the_reference(sql in "\\PC{0,40}", scs in proptest::bool::ANY) {
            proptest::prop_assert_eq!(normalize(&sql, scs), normalize_reference(&sql, scs));
        }
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for s in [
            "'", "\"", "$", "$a", "$a$", "/*", "/* /*", "--", "E'\\", "é'ü;", "$1$",
        ] {
            let _ = split(s, true);
            let _ = split(s, false);
            let _ = leading_hint(s);
            let _ = keywords(s, 4);
            let _ = words(s, true);
            let _ = words(s, false);
            let _ = normalize(s, true);
            let _ = normalize(s, false);
        }
    }
}

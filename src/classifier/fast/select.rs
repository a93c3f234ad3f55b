//! The fast path's `SELECT` grammar: a lexer and a recursive-descent check
//! for a small subset of `SELECT` that sqlparser is known to accept and
//! that can only be a plain read (see the parent module for the subset).
//! Nothing is built: the statement is either in the subset or not.

use super::super::{Classification, Reason, Route};
use sqlparser::keywords::ALL_KEYWORDS;

/// A keyword of the fast `SELECT` grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Select,
    Distinct,
    From,
    Where,
    And,
    Or,
    Not,
    As,
    Order,
    By,
    Asc,
    Desc,
    Limit,
    Offset,
    Null,
    True,
    False,
    Is,
}

const GRAMMAR_KEYWORDS: &[(&str, Kw)] = &[
    ("SELECT", Kw::Select),
    ("DISTINCT", Kw::Distinct),
    ("FROM", Kw::From),
    ("WHERE", Kw::Where),
    ("AND", Kw::And),
    ("OR", Kw::Or),
    ("NOT", Kw::Not),
    ("AS", Kw::As),
    ("ORDER", Kw::Order),
    ("BY", Kw::By),
    ("ASC", Kw::Asc),
    ("DESC", Kw::Desc),
    ("LIMIT", Kw::Limit),
    ("OFFSET", Kw::Offset),
    ("NULL", Kw::Null),
    ("TRUE", Kw::True),
    ("FALSE", Kw::False),
    ("IS", Kw::Is),
];

/// A token of the fast `SELECT` grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Kw(Kw),
    /// An unquoted name that is no sqlparser keyword; `dotted` for `a.b`.
    Ident {
        dotted: bool,
    },
    /// An unsigned integer.
    Int,
    /// A number with a fraction.
    Num,
    /// A plain `'...'` string.
    Str,
    /// `$n`.
    Param,
    Star,
    Comma,
    Plus,
    Minus,
    /// `=`, `<>`, `!=`, `<`, `>`, `<=`, `>=`.
    Compare,
    /// `/`, `%`, `||`.
    Arith,
    End,
}

/// Bytes PostgreSQL's scan.l builds operators from.
fn is_op_byte(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// A byte that may not directly follow a word, number, string or
/// parameter in the fast grammar (it would glue on in some lexer).
fn is_glue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'\'' | b'"' | b'.') || c >= 0x80
}

/// sqlparser's case-insensitive keyword lookup (its `keyword_lookup`).
fn is_sqlparser_keyword(word: &[u8]) -> bool {
    ALL_KEYWORDS
        .binary_search_by(|probe| {
            let probe = probe.as_bytes();
            for (p, w) in probe.iter().zip(word) {
                let cmp = p.cmp(&w.to_ascii_uppercase());
                if cmp != std::cmp::Ordering::Equal {
                    return cmp;
                }
            }
            probe.len().cmp(&word.len())
        })
        .is_ok()
}

/// The tokens of one statement; `None` from [`Lexer::next`] means "not in
/// the fast grammar".
struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn next(&mut self) -> Option<Tok> {
        let b = self.b;
        while self.i < b.len() && matches!(b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
        let Some(&c) = b.get(self.i) else {
            return Some(Tok::End);
        };
        let start = self.i;
        let tok = match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => return self.word(),
            b'0'..=b'9' => {
                let mut tok = Tok::Int;
                self.digits();
                if b.get(self.i) == Some(&b'.') {
                    self.i += 1;
                    if !b.get(self.i).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    self.digits();
                    tok = Tok::Num;
                }
                tok
            }
            b'\'' => {
                self.i += 1;
                loop {
                    match b.get(self.i)? {
                        b'\'' if b.get(self.i + 1) == Some(&b'\'') => self.i += 2,
                        b'\'' => break,
                        b'\\' => return None,
                        c if *c >= 0x80 => return None,
                        _ => self.i += 1,
                    }
                }
                self.i += 1;
                Tok::Str
            }
            b'$' => {
                self.i += 1;
                if !b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                self.digits();
                Tok::Param
            }
            b',' => {
                self.i += 1;
                Tok::Comma
            }
            c if is_op_byte(c) => {
                while self.i < b.len() && is_op_byte(b[self.i]) {
                    self.i += 1;
                }
                match &b[start..self.i] {
                    b"*" => Tok::Star,
                    b"+" => Tok::Plus,
                    b"-" => Tok::Minus,
                    b"=" | b"<>" | b"!=" | b"<" | b">" | b"<=" | b">=" => Tok::Compare,
                    b"/" | b"%" | b"||" => Tok::Arith,
                    _ => return None,
                }
            }
            _ => return None,
        };
        if matches!(tok, Tok::Int | Tok::Num | Tok::Str | Tok::Param)
            && b.get(self.i).is_some_and(|c| is_glue(*c))
        {
            return None;
        }
        Some(tok)
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }

    /// A word, or a dotted name of words: a grammar keyword, or a name
    /// sqlparser reads as a plain identifier.
    fn word(&mut self) -> Option<Tok> {
        let b = self.b;
        let mut parts = 0;
        loop {
            let start = self.i;
            while self
                .b
                .get(self.i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                self.i += 1;
            }
            let word = &b[start..self.i];
            if word.is_empty() || !(word[0].is_ascii_alphabetic() || word[0] == b'_') {
                return None;
            }
            parts += 1;
            if parts == 1 && b.get(self.i) != Some(&b'.') {
                if let Some((_, kw)) = GRAMMAR_KEYWORDS
                    .iter()
                    .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(word))
                {
                    if is_glue_after_word(b.get(self.i)) {
                        return None;
                    }
                    return Some(Tok::Kw(*kw));
                }
            }
            if is_sqlparser_keyword(word)
                || (word.len() >= 3 && word[..3].eq_ignore_ascii_case(b"pg_"))
            {
                return None;
            }
            if b.get(self.i) == Some(&b'.') {
                self.i += 1;
                continue;
            }
            if is_glue_after_word(b.get(self.i)) {
                return None;
            }
            return Some(Tok::Ident { dotted: parts > 1 });
        }
    }
}

/// After a word: `$`, quotes and non-ASCII bytes would make it part of
/// something else (`E'…'`, `a$b`, `U&"…"` and so on).
fn is_glue_after_word(c: Option<&u8>) -> bool {
    c.is_some_and(|c| matches!(c, b'$' | b'\'' | b'"' | b'.') || *c >= 0x80)
}

/// A recursive-descent check of the fast `SELECT` grammar.
struct Parser<'a> {
    lexer: Lexer<'a>,
    peek: Tok,
}

impl Parser<'_> {
    fn bump(&mut self) -> Option<()> {
        self.peek = self.lexer.next()?;
        Some(())
    }

    /// Consumes `t` if it is next.
    fn eat(&mut self, t: Tok) -> Option<bool> {
        if self.peek == t {
            self.bump()?;
            Some(true)
        } else {
            Some(false)
        }
    }

    fn expect(&mut self, ok: impl Fn(Tok) -> bool) -> Option<()> {
        if ok(self.peek) { self.bump() } else { None }
    }

    fn expr(&mut self) -> Option<()> {
        loop {
            while matches!(self.peek, Tok::Kw(Kw::Not) | Tok::Minus | Tok::Plus) {
                self.bump()?;
            }
            self.expect(|t| {
                matches!(
                    t,
                    Tok::Ident { .. }
                        | Tok::Int
                        | Tok::Num
                        | Tok::Str
                        | Tok::Param
                        | Tok::Kw(Kw::Null | Kw::True | Kw::False)
                )
            })?;
            if self.eat(Tok::Kw(Kw::Is))? {
                self.eat(Tok::Kw(Kw::Not))?;
                self.expect(|t| matches!(t, Tok::Kw(Kw::Null | Kw::True | Kw::False)))?;
            }
            if matches!(
                self.peek,
                Tok::Compare
                    | Tok::Arith
                    | Tok::Plus
                    | Tok::Minus
                    | Tok::Star
                    | Tok::Kw(Kw::And | Kw::Or)
            ) {
                self.bump()?;
            } else {
                return Some(());
            }
        }
    }

    /// `AS name` or a bare `name`, if there.
    fn alias(&mut self) -> Option<()> {
        if self.eat(Tok::Kw(Kw::As))? {
            self.expect(|t| t == Tok::Ident { dotted: false })
        } else {
            self.eat(Tok::Ident { dotted: false }).map(|_| ())
        }
    }

    fn select(&mut self) -> Option<()> {
        self.expect(|t| t == Tok::Kw(Kw::Select))?;
        self.eat(Tok::Kw(Kw::Distinct))?;
        if self.eat(Tok::Star)? {
            if self.peek != Tok::Kw(Kw::From) {
                return None;
            }
        } else {
            loop {
                self.expr()?;
                self.alias()?;
                if !self.eat(Tok::Comma)? {
                    break;
                }
            }
        }
        if self.eat(Tok::Kw(Kw::From))? {
            loop {
                self.expect(|t| matches!(t, Tok::Ident { .. }))?;
                self.alias()?;
                if !self.eat(Tok::Comma)? {
                    break;
                }
            }
        }
        if self.eat(Tok::Kw(Kw::Where))? {
            self.expr()?;
        }
        if self.eat(Tok::Kw(Kw::Order))? {
            self.expect(|t| t == Tok::Kw(Kw::By))?;
            loop {
                self.expr()?;
                if !self.eat(Tok::Kw(Kw::Asc))? {
                    self.eat(Tok::Kw(Kw::Desc))?;
                }
                if !self.eat(Tok::Comma)? {
                    break;
                }
            }
        }
        for kw in [Kw::Limit, Kw::Offset] {
            if self.eat(Tok::Kw(kw))? {
                self.expect(|t| matches!(t, Tok::Int | Tok::Param))?;
            }
        }
        (self.peek == Tok::End).then_some(())
    }
}

/// A plain read when `stmt` is in the fast `SELECT` grammar.
pub(super) fn select(stmt: &str) -> Option<Classification> {
    let mut lexer = Lexer {
        b: stmt.as_bytes(),
        i: 0,
    };
    let peek = lexer.next()?;
    let mut p = Parser { lexer, peek };
    p.select()?;
    Some(Classification::new(Route::Replica, Reason::Read))
}

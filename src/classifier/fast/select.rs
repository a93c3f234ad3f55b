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

/// Longest word the fast grammar reads; longer words decline.
const MAX_WORD: usize = 63;

/// Slots of [`KEYWORD_TABLE`] (a power of two, about four per keyword).
const KEYWORD_SLOTS: usize = 4096;

/// FNV-1a of a word, for [`KEYWORD_TABLE`].
const fn fnv(w: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < w.len() {
        h ^= w[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h as usize
}

/// sqlparser's keywords as an open-addressing hash table built at compile
/// time: a slot holds a keyword's index in `ALL_KEYWORDS` plus one, or 0.
static KEYWORD_TABLE: [u16; KEYWORD_SLOTS] = {
    let mut t = [0u16; KEYWORD_SLOTS];
    let mut i = 0;
    while i < ALL_KEYWORDS.len() {
        let mut slot = fnv(ALL_KEYWORDS[i].as_bytes()) % KEYWORD_SLOTS;
        while t[slot] != 0 {
            slot = (slot + 1) % KEYWORD_SLOTS;
        }
        t[slot] = (i + 1) as u16;
        i += 1;
    }
    t
};

/// sqlparser's case-insensitive keyword lookup (its `keyword_lookup`),
/// for a word already upper-cased.
fn is_sqlparser_keyword(upper: &[u8]) -> bool {
    let mut slot = fnv(upper) % KEYWORD_SLOTS;
    loop {
        let Some(k) = KEYWORD_TABLE[slot].checked_sub(1) else {
            return false;
        };
        if ALL_KEYWORDS
            .get(usize::from(k))
            .is_some_and(|k| k.as_bytes() == upper)
        {
            return true;
        }
        slot = (slot + 1) % KEYWORD_SLOTS;
    }
}

/// A grammar keyword, by its upper-cased spelling.
fn grammar_keyword(upper: &[u8]) -> Option<Kw> {
    Some(match upper {
        b"SELECT" => Kw::Select,
        b"DISTINCT" => Kw::Distinct,
        b"FROM" => Kw::From,
        b"WHERE" => Kw::Where,
        b"AND" => Kw::And,
        b"OR" => Kw::Or,
        b"NOT" => Kw::Not,
        b"AS" => Kw::As,
        b"ORDER" => Kw::Order,
        b"BY" => Kw::By,
        b"ASC" => Kw::Asc,
        b"DESC" => Kw::Desc,
        b"LIMIT" => Kw::Limit,
        b"OFFSET" => Kw::Offset,
        b"NULL" => Kw::Null,
        b"TRUE" => Kw::True,
        b"FALSE" => Kw::False,
        b"IS" => Kw::Is,
        _ => return None,
    })
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
            // A final `;`: only whitespace and more `;` may follow.
            b';' if b[self.i..]
                .iter()
                .all(|c| matches!(c, b';' | b' ' | b'\t' | b'\n' | b'\r')) =>
            {
                self.i = b.len();
                Tok::End
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
            if word.is_empty()
                || word.len() > MAX_WORD
                || !(word[0].is_ascii_alphabetic() || word[0] == b'_')
            {
                return None;
            }
            let mut buf = [0u8; MAX_WORD];
            let upper = &mut buf[..word.len()];
            upper.copy_from_slice(word);
            upper.make_ascii_uppercase();
            parts += 1;
            if parts == 1 && b.get(self.i) != Some(&b'.') {
                if let Some(kw) = grammar_keyword(upper) {
                    if is_glue_after_word(b.get(self.i)) {
                        return None;
                    }
                    return Some(Tok::Kw(kw));
                }
            }
            if upper.starts_with(b"PG_") || is_sqlparser_keyword(upper) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_lookup_finds_every_sqlparser_keyword_and_nothing_else() {
        assert!(ALL_KEYWORDS.len() < KEYWORD_SLOTS / 2);
        for k in ALL_KEYWORDS {
            assert!(is_sqlparser_keyword(k.as_bytes()), "{k}");
        }
        for w in ["ABALANCE", "AID", "PGBENCH_ACCOUNTS", "X1", "_A", ""] {
            assert!(!is_sqlparser_keyword(w.as_bytes()), "{w}");
        }
        // Every grammar keyword is one of sqlparser's.
        for w in [
            "SELECT", "DISTINCT", "FROM", "WHERE", "AND", "OR", "NOT", "AS", "ORDER", "BY", "ASC",
            "DESC", "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "IS",
        ] {
            assert!(grammar_keyword(w.as_bytes()).is_some(), "{w}");
            assert!(is_sqlparser_keyword(w.as_bytes()), "{w}");
        }
    }
}

//! The words a request's text is scanned for (COPY, synchronous_commit,
//! the causal token's `pgvane.`), without parsing it.

/// Whether `sql` contains `word` (ASCII, any case).
pub(super) fn mentions(sql: &str, word: &[u8]) -> bool {
    sql.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// The words a request's text is scanned for, found in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Mentions {
    /// `copy` (any case): the request may start a COPY.
    pub(super) copy: bool,
    /// `synchronous_commit`: its commit may be asynchronous.
    pub(super) synchronous_commit: bool,
}

impl Mentions {
    /// Either's words: a batch of both.
    pub(super) fn or(self, other: Self) -> Self {
        Self {
            copy: self.copy || other.copy,
            synchronous_commit: self.synchronous_commit || other.synchronous_commit,
        }
    }

    /// Scans `sql` for every word (ASCII, any case, anywhere): a vector
    /// search for each word's first letter, then a compare where it is.
    pub(super) fn of(sql: &str) -> Self {
        let b = sql.as_bytes();
        Self {
            copy: has(b, b"copy"),
            synchronous_commit: has(b, b"synchronous_commit"),
        }
    }
}

/// Whether `b` contains `word` (lowercase ASCII), any case.
fn has(b: &[u8], word: &[u8]) -> bool {
    let first = word[0];
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), b).any(|i| {
        b.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn one_pass_finds_the_same_words_as_a_scan_per_word() {
        for sql in [
            "",
            "select 1",
            "COPY t FROM STDIN",
            "set SYNCHRONOUS_COMMIT = off; copy t to stdout",
            "select 'synchronous_commi', 'cop'",
            "select ssynchronous_commit, ccopy",
            "sssynchronous_commit",
            "copy",
            "xcopyx synchronous_commit",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "é copy ü",
        ] {
            let m = Mentions::of(sql);
            assert_eq!(m.copy, mentions(sql, b"copy"), "{sql}");
            assert_eq!(
                m.synchronous_commit,
                mentions(sql, b"synchronous_commit"),
                "{sql}"
            );
        }
    }
}

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
    /// Scans `sql` once for every word (ASCII, any case, anywhere).
    pub(super) fn of(sql: &str) -> Self {
        const COPY: &[u8] = b"copy";
        const SYNC: &[u8] = b"synchronous_commit";
        let b = sql.as_bytes();
        let mut m = Self::default();
        for (i, c) in b.iter().enumerate() {
            match c | 0x20 {
                b'c' if !m.copy => {
                    m.copy = b
                        .get(i..i + COPY.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(COPY));
                }
                b's' if !m.synchronous_commit => {
                    m.synchronous_commit = b
                        .get(i..i + SYNC.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(SYNC));
                }
                _ => {}
            }
            if m.copy && m.synchronous_commit {
                break;
            }
        }
        m
    }
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

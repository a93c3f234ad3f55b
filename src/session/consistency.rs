//! Read-your-writes for one session: its floor (the commit positions it
//! was acknowledged, and tokens it was given), the time window of the old
//! `window` mode, whether its open transaction wrote, and the commit
//! capture: a prepared statement pgvane runs on the leader backend right
//! behind a writing transaction's end, in the same write, whose row is the
//! WAL position a replica must replay to show that commit. Also the two
//! session commands of the causal token, `SHOW pgvane.last_write_lsn` and
//! `SET pgvane.min_lsn`. Pure: the pipeline sends and reads.

use crate::classifier::{Classification, Reason, Route};
use crate::protocol::encode;
use crate::topology::{Floor, Lsn, position::normalize_insert_lsn};
use std::time::Instant;

/// pgvane's portal for the capture (named and closed at once, so a
/// client's unnamed portal inside a transaction survives).
pub(super) const CAPTURE_PORTAL: &str = "pgvane_capture";

/// The flush LSN (a synchronous commit's record end is at or below it),
/// the insert LSN (for asynchronous commits), the commit mode, the WAL
/// geometry for normalising the insert LSN, and the timeline.
pub(super) const CAPTURE_SQL: &str = "SELECT pg_catalog.pg_current_wal_flush_lsn()::text, \
     pg_catalog.pg_current_wal_insert_lsn()::text, \
     pg_catalog.current_setting('synchronous_commit'), \
     pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))::text, \
     pg_catalog.current_setting('wal_block_size'), \
     pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)";

/// Appends a capture: Parse into the unnamed statement, Bind to a named
/// portal, Execute, Close of the portal, Sync. The unnamed statement is
/// free: pgvane parses a client's unnamed statement again on every batch
/// that uses it without parsing it, so nothing of the client's is lost;
/// and nothing of pgvane's shows in `pg_prepared_statements` or can be
/// replaced by a client's `PREPARE`.
pub(super) fn capture_bytes(out: &mut Vec<u8>) {
    encode::parse(out, "", CAPTURE_SQL, &[0, 0]);
    // No parameter formats, no parameters, no result formats (all text).
    encode::bind_raw(out, CAPTURE_PORTAL, "", &[0, 0, 0, 0, 0, 0]);
    encode::execute(out, CAPTURE_PORTAL);
    encode::describe_or_close(out, b'C', b'P', CAPTURE_PORTAL);
    encode::sync(out);
}

/// A capture's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Captured {
    flush: Lsn,
    insert: Lsn,
    asynchronous: bool,
    segment: u64,
    block: u64,
    timeline: u32,
}

impl Captured {
    /// Reads a DataRow body of [`CAPTURE_SQL`].
    pub(super) fn parse(body: &[u8]) -> Option<Self> {
        let mut cols = Vec::with_capacity(6);
        let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
        let mut at = 2;
        for _ in 0..n {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            let len = usize::try_from(len).ok()?;
            cols.push(std::str::from_utf8(body.get(at..at + len)?).ok()?);
            at += len;
        }
        let [flush, insert, mode, segment, block, timeline] = cols[..] else {
            return None;
        };
        Some(Self {
            flush: flush.parse().ok()?,
            insert: insert.parse().ok()?,
            asynchronous: mode == "off",
            segment: segment.parse().ok()?,
            block: block.parse().ok()?,
            timeline: u32::from_str_radix(timeline, 16).ok()?,
        })
    }

    /// The floor: the flush LSN after a synchronous commit; the normalised
    /// insert LSN when commits may be asynchronous (`synchronous_commit =
    /// off`, or the request itself touched the setting).
    pub(super) fn floor(&self, maybe_async: bool) -> Floor {
        let lsn = if self.asynchronous || maybe_async {
            normalize_insert_lsn(self.insert, self.segment, self.block).max(self.flush)
        } else {
            self.flush
        };
        Floor {
            timeline: self.timeline,
            lsn,
        }
    }
}

/// Bytes PostgreSQL's scanner takes for whitespace.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes of an unquoted word (ASCII letters, digits, `_`), by table: a
/// word is read for every statement.
static WORD_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_';
        c += 1;
    }
    t
};

/// The first word of `sql` after whitespace and comments (`--` and
/// `/* */`, as a hint is written), and the text after it; the word is
/// empty when none starts there.
fn next_word(sql: &str) -> (&str, &str) {
    let b = sql.as_bytes();
    let mut i = 0;
    loop {
        while b.get(i).is_some_and(|c| is_space(*c)) {
            i += 1;
        }
        let rest = &b[i..];
        if rest.starts_with(b"--") {
            i = memchr::memchr(b'\n', rest).map_or(b.len(), |j| i + j + 1);
        } else if rest.starts_with(b"/*") {
            i = memchr::memmem::find(&rest[2..], b"*/").map_or(b.len(), |j| i + 2 + j + 2);
        } else {
            break;
        }
    }
    let len = b[i..]
        .iter()
        .position(|c| !WORD_BYTE[usize::from(*c)])
        .unwrap_or(b.len() - i);
    // ASCII on both sides: char boundaries.
    (&sql[i..i + len], &sql[i + len..])
}

/// The first two words of `sql` (see [`next_word`]); compare them
/// ignoring case.
#[cfg(test)]
pub(super) fn first_words(sql: &str) -> (&str, &str) {
    let (first, rest) = next_word(sql);
    if first.is_empty() {
        return ("", "");
    }
    (first, next_word(rest).0)
}

/// What one request means for read-your-writes, from its verdict and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Effect {
    /// It may write when it runs on the leader.
    pub(super) writes: bool,
    /// A single `COMMIT`/`END`: it ends the transaction (its capture can be
    /// pipelined behind it).
    pub(super) commits: bool,
    /// A single `ROLLBACK`/`ABORT`: nothing it ends needs a capture.
    pub(super) rolls_back: bool,
    /// A single plain DML or SELECT: if its node shuts down before it
    /// completes, nothing of it committed and it may run again.
    pub(super) rerunnable: bool,
}

impl Effect {
    /// The effect of `statements` statements with verdict `class`, the
    /// first (or only) one being `sql`.
    pub(super) fn of(class: &Classification, sql: &str, statements: usize) -> Self {
        if statements != 1 {
            // A merged verdict keeps one reason: any multi-statement text
            // on the leader may write.
            return Self {
                writes: class.route == Route::Leader,
                ..Self::default()
            };
        }
        let is = |w: &str, any: &[&str]| any.iter().any(|a| w.eq_ignore_ascii_case(a));
        let (first, rest) = next_word(sql);
        // The second word matters only after these (most statements are
        // told by their first).
        let second = if is(first, &["commit", "rollback", "abort"]) {
            next_word(rest).0
        } else {
            ""
        };
        let prepared = is(second, &["prepared"]);
        Self {
            writes: writes(class) || (is(first, &["commit"]) && prepared),
            commits: is(first, &["commit", "end"]) && !prepared,
            rolls_back: is(first, &["rollback", "abort"]) && !is(second, &["to"]),
            rerunnable: !class.reset
                && is(
                    first,
                    &[
                        "select", "insert", "update", "delete", "with", "values", "table",
                    ],
                ),
        }
    }

    /// Both: a batch of several statements.
    pub(super) fn and(self, other: Self) -> Self {
        Self {
            writes: self.writes || other.writes,
            commits: false,
            rolls_back: false,
            rerunnable: false,
        }
    }
}

/// Whether a request on the leader may have written (and so its commit
/// must be captured): anything routed there but probes, session settings,
/// node-local reads and transaction control.
pub(super) fn writes(class: &Classification) -> bool {
    class.route == Route::Leader
        && !matches!(
            class.reason,
            Reason::Probe | Reason::Session | Reason::NodeLocal | Reason::Transaction
        )
}

/// One session's consistency state.
#[derive(Debug, Default)]
pub(super) struct Consistency {
    /// The highest commit this session was acknowledged or given.
    pub(super) floor: Option<Floor>,
    /// `window` mode: reads go to the leader until then.
    pub(super) leader_until: Option<Instant>,
    /// A capture failed in this tracker epoch: reads go to the leader until
    /// one succeeds or the leader changes (then positions restart too).
    pub(super) unknown: Option<u64>,
    /// The open transaction wrote on the leader.
    pub(super) wrote: bool,
    /// The open transaction may have committed asynchronously (its SQL
    /// named `synchronous_commit`).
    pub(super) maybe_async: bool,
}

impl Consistency {
    /// Raises the session's floor.
    pub(super) fn raise(&mut self, f: Floor) {
        self.floor = Some(self.floor.map_or(f, |old| old.max(f)));
    }
}

/// A session command pgvane answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// `SHOW pgvane.last_write_lsn`.
    ShowLastWrite,
    /// `SET pgvane.min_lsn = '…'` with its value.
    SetMinLsn(String),
}

/// Recognises the token commands (case-insensitive, one statement, an
/// optional trailing semicolon).
pub(super) fn command(sql: &str) -> Option<Command> {
    // Only a `SHOW …` or a `SET …` can be one: anything else (every
    // ordinary statement) is told apart by its first letters, then its
    // first word, before the scans below (which still require the exact
    // form).
    let head = sql.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
    let h = head.as_bytes();
    let maybe = h.starts_with(b"--")
        || h.starts_with(b"/*")
        || h.get(..3).is_some_and(|w| w.eq_ignore_ascii_case(b"set"))
        || h.get(..4).is_some_and(|w| w.eq_ignore_ascii_case(b"show"));
    if !maybe {
        return None;
    }
    let t = sql.trim().trim_end_matches(';').trim_end();
    let (first, _) = next_word(t);
    if !(first.eq_ignore_ascii_case("show") || first.eq_ignore_ascii_case("set")) {
        return None;
    }
    if t.len() < 8 || t.len() > 200 || !super::mentions::mentions(t, b"pgvane.") {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["show", "pgvane.last_write_lsn"] => Some(Command::ShowLastWrite),
        ["set", "session", rest @ ..] | ["set", rest @ ..] if !rest.is_empty() => {
            // Rejoin to cut at `=` or ` to `.
            let joined = rest.join(" ");
            let (name, value) = joined
                .split_once('=')
                .or_else(|| joined.split_once(" to "))?;
            if name.trim() != "pgvane.min_lsn" {
                return None;
            }
            let v = value.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            Some(Command::SetMinLsn(v.to_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        encode::data_row(&mut out, cols);
        out[5..].to_vec()
    }

    #[test]
    fn a_capture_row_gives_flush_or_the_normalised_insert_position() {
        let body = row(&[
            "0/3000148",
            "0/3002018",
            "on",
            "16777216",
            "8192",
            "00000002",
        ]);
        let c = Captured::parse(&body).unwrap();
        assert_eq!(
            c.floor(false),
            Floor {
                timeline: 2,
                lsn: "0/3000148".parse().unwrap()
            }
        );
        assert_eq!(
            c.floor(true).lsn,
            "0/3002000".parse::<Lsn>().unwrap(),
            "insert past a page header steps back"
        );
        let off = Captured::parse(&row(&[
            "0/3000148",
            "0/4000028",
            "off",
            "16777216",
            "8192",
            "0000000A",
        ]))
        .unwrap();
        assert_eq!(
            off.floor(false),
            Floor {
                timeline: 10,
                lsn: "0/4000000".parse().unwrap()
            }
        );
        assert!(Captured::parse(&row(&["x", "0/1", "on", "1", "1", "1"])).is_none());
        assert!(Captured::parse(&row(&["0/1"])).is_none());
    }

    #[test]
    fn effects_of_requests() {
        let c = crate::classifier::Classifier::new(Vec::new());
        let eff = |sql: &str| {
            let n = crate::classifier::lexer::split(sql, true).len();
            Effect::of(&c.classify(sql, true).0, sql, n)
        };
        assert!(eff("insert into t values (1)").writes);
        assert!(eff("insert into t values (1)").rerunnable);
        assert!(!eff("select 1").writes);
        assert!(
            eff("begin; update t set v = 1; commit").writes,
            "merged verdicts"
        );
        assert!(eff("show x; insert into t values (1)").writes);
        assert!(eff("COMMIT PREPARED 'x'").writes);
        assert!(!eff("COMMIT PREPARED 'x'").commits);
        assert!(eff("/* c */ commit").commits && !eff("commit").writes);
        assert!(eff("END").commits);
        assert!(eff("rollback").rolls_back && !eff("rollback to s").rolls_back);
        assert!(
            !eff("call p()").rerunnable,
            "procedures may commit part-way"
        );
        assert!(!eff("do $$ begin end $$").rerunnable);
        assert!(!eff("create index concurrently i on t (v)").rerunnable);
        assert_eq!(
            first_words("-- x\n /* y */ Commit  Prepared 'a'"),
            ("Commit", "Prepared")
        );
        assert_eq!(first_words("\x0b\tselect\x0c1"), ("select", "1"));
        assert_eq!(first_words("-- only a comment"), ("", ""));
        assert_eq!(first_words("/* open"), ("", ""));
        assert_eq!(first_words("é select"), ("", ""));
        assert_eq!(first_words("end;commit"), ("end", ""));
        assert!(eff("COMMIT PREPARED 'x'").writes && eff("Insert into t values (1)").rerunnable);
    }

    #[test]
    fn token_commands_are_recognised_and_nothing_else() {
        assert_eq!(
            command("SHOW pgvane.last_write_lsn;"),
            Some(Command::ShowLastWrite)
        );
        assert_eq!(
            command("  show   PGVANE.last_write_lsn "),
            Some(Command::ShowLastWrite)
        );
        assert_eq!(
            command("SET pgvane.min_lsn = '0/3000148'"),
            Some(Command::SetMinLsn("0/3000148".into()))
        );
        assert_eq!(
            command("set session pgvane.min_lsn to '0/AB'"),
            Some(Command::SetMinLsn("0/ab".into()))
        );
        assert_eq!(
            command("SET pgvane.min_lsn='1/2';"),
            Some(Command::SetMinLsn("1/2".into()))
        );
        assert_eq!(command("SET search_path = 'x'"), None);
        assert_eq!(command("SHOW search_path"), None);
        assert_eq!(command("select 1"), None);
        assert_eq!(command("SELECT pgvane.min_lsn = 1"), None);
        assert_eq!(command("settle pgvane.min_lsn = '0/1'"), None);
        assert_eq!(
            command("set\tpgvane.min_lsn = '0/1'"),
            Some(Command::SetMinLsn("0/1".into()))
        );
    }
}

//! WAL positions: the [`Lsn`] type, the floor a replica must have replayed
//! ([`Floor`]) and the published per-cluster picture of positions
//! ([`Positions`]) with the read-your-writes check of CONSISTENCY.md §3.1.
//! Pure, no IO: the `tracker` module polls the members and publishes these.

use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// A WAL position (PostgreSQL's `pg_lsn`), ordered as PostgreSQL orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Why a text is not a `pg_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN `{0}`: expected two hex numbers of at most 8 digits, as `0/3000148`")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses PostgreSQL's `X/Y` text (each half 1–8 hex digits, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LsnParseError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Self((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    /// As PostgreSQL prints it: upper-case hex halves without padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Size of a WAL page header (`SizeOfXLogShortPHD`, 64-bit builds), see
/// <https://github.com/postgres/postgres/blob/REL_15_STABLE/src/include/access/xlog_internal.h>.
pub const SHORT_PAGE_HEADER: u64 = 24;

/// Size of the header of a segment's first page (`SizeOfXLogLongPHD`).
pub const LONG_PAGE_HEADER: u64 = 40;

/// `pg_current_wal_insert_lsn()` made reachable by replay: at a page (or
/// segment) boundary the insert position points past the page header
/// (`XLogBytePosToRecPtr`), while replay positions stop at the page start
/// (CONSISTENCY.md §1.2). Subtracts the header there (the long one on a
/// segment's first page, the short one on any other page); any other LSN
/// is returned as is. Sizes of 0 (unknown) disable the matching correction.
#[must_use]
pub fn normalize_insert_lsn(lsn: Lsn, wal_segment_size: u64, wal_block_size: u64) -> Lsn {
    let in_segment = (wal_segment_size > 0).then(|| lsn.0 % wal_segment_size);
    if in_segment == Some(LONG_PAGE_HEADER) {
        Lsn(lsn.0 - LONG_PAGE_HEADER)
    } else if wal_block_size > 0
        && lsn.0 % wal_block_size == SHORT_PAGE_HEADER
        && in_segment != Some(SHORT_PAGE_HEADER)
    {
        Lsn(lsn.0 - SHORT_PAGE_HEADER)
    } else {
        lsn
    }
}

/// The lowest position a replica must have replayed to serve a read.
///
/// Floors combine with `Ord::max`: the newer timeline wins, then the higher
/// LSN. Any LSN on a newer timeline is at or past that timeline's switch
/// point, so it dominates what an older timeline's floor translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Floor {
    /// Timeline the LSN was read on.
    pub timeline: u32,
    /// The position.
    pub lsn: Lsn,
}

/// Where a [`Position`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionSource {
    /// pgvane's own monitor connection: milliseconds old.
    Sql,
    /// The member's `GET /patroni`, as the last map has it: seconds old,
    /// still a lower bound.
    Patroni,
}

/// One member's WAL position, as last polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Patroni member name.
    pub member: String,
    /// Timeline: a replica's `received_tli`, the leader's insert timeline.
    pub timeline: u32,
    /// A replica's replay LSN; the leader's flush LSN.
    pub lsn: Lsn,
    /// Bumped when the postmaster restarted or the monitor connection was
    /// replaced: positions of different incarnations are not comparable.
    pub incarnation: u64,
    /// When the query that read it was sent (or, from Patroni, when the
    /// map was confirmed): the observation happened at or after this.
    pub polled_at: Instant,
    /// Where it came from.
    pub source: PositionSource,
    /// A replica's WAL receiver is `streaming` (always true for a leader).
    pub streaming: bool,
}

/// Every known position of one cluster, published by the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Positions {
    /// Count of distinct (leader, timeline) pairs the tracker has seen.
    pub epoch: u64,
    /// The current leader's timeline, once known.
    pub leader_timeline: Option<u32>,
    /// The leader's flush LSN when this epoch began: at or past the switch
    /// point of the previous timeline, so it clamps older floors (§3.6).
    pub switch_lsn: Option<Lsn>,
    /// The leader's position.
    pub leader: Option<Position>,
    /// Replicas with a good last poll (streaming or not).
    pub replicas: Vec<Position>,
}

impl Positions {
    /// The position of `member` (leader or replica), if it has one.
    #[must_use]
    pub fn get(&self, member: &str) -> Option<&Position> {
        self.leader
            .iter()
            .chain(&self.replicas)
            .find(|p| p.member == member)
    }

    /// The floor's LSN as it must be met on the leader's timeline, `None`
    /// when it cannot be met (a timeline newer than the leader's, or no
    /// leader timeline known). An older timeline's floor is clamped to
    /// [`Self::switch_lsn`] when known, else taken as is (conservative).
    #[must_use]
    pub fn translate(&self, floor: &Floor) -> Option<Lsn> {
        let timeline = self.leader_timeline?;
        // A floor whose timeline is not known (a token set before pgvane
        // knew one) is taken as is: never clamped, so never lowered.
        if floor.timeline == 0 {
            return Some(floor.lsn);
        }
        match floor.timeline.cmp(&timeline) {
            std::cmp::Ordering::Greater => None,
            std::cmp::Ordering::Equal => Some(floor.lsn),
            std::cmp::Ordering::Less => {
                Some(self.switch_lsn.map_or(floor.lsn, |s| s.min(floor.lsn)))
            }
        }
    }

    /// Whether `member` has replayed `floor` (CONSISTENCY.md §3.1): it has
    /// a position, streams on the leader's current timeline, and its LSN
    /// is at or past the floor translated to that timeline.
    #[must_use]
    pub fn replayed(&self, member: &str, floor: &Floor) -> bool {
        let (Some(need), Some(p)) = (self.translate(floor), self.get(member)) else {
            return false;
        };
        p.streaming && Some(p.timeline) == self.leader_timeline && p.lsn >= need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips_as_postgres_prints_it() {
        for (text, value) in [
            ("0/3000148", 0x0300_0148),
            ("0/0", 0),
            ("1/0", 1 << 32),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!(
            serde_json::to_string(&Lsn(0x0300_0148)).unwrap(),
            "\"0/3000148\""
        );
    }

    #[test]
    fn malformed_lsn_text_is_refused() {
        for text in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/3000148/1",
            "123456789/0",
            "0/-1",
            "0/ 1",
            "g/0",
            "+1/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?}");
        }
    }

    const SEG: u64 = 16 * 1024 * 1024;
    const BLOCK: u64 = 8192;

    #[test]
    fn insert_lsn_loses_the_page_header_only_at_a_boundary() {
        let n = |v| normalize_insert_lsn(Lsn(v), SEG, BLOCK).0;
        // Just past a page's short header: back to the page start.
        assert_eq!(n(BLOCK + 24), BLOCK);
        assert_eq!(n(5 * BLOCK + 24), 5 * BLOCK);
        // Just past a segment's long header: back to the segment start.
        assert_eq!(n(SEG + 40), SEG);
        assert_eq!(n(3 * SEG + 40), 3 * SEG);
        // A segment's first page has the long header: 24 is inside it,
        // never an insert position, and is left alone.
        assert_eq!(n(SEG + 24), SEG + 24);
        assert_eq!(n(24), 24);
        assert_eq!(n(40), 0);
        // Inside a page, and the page start itself: unchanged.
        assert_eq!(n(BLOCK + 25), BLOCK + 25);
        assert_eq!(n(BLOCK + 23), BLOCK + 23);
        assert_eq!(n(BLOCK), BLOCK);
        assert_eq!(n(5 * BLOCK + 40), 5 * BLOCK + 40);
        assert_eq!(n(0x0400_0060), 0x0400_0060);
        // Unknown sizes: nothing to correct.
        assert_eq!(normalize_insert_lsn(Lsn(SEG + 40), 0, 0), Lsn(SEG + 40));
    }

    fn pos(member: &str, timeline: u32, lsn: u64, streaming: bool) -> Position {
        Position {
            member: member.to_owned(),
            timeline,
            lsn: Lsn(lsn),
            incarnation: 1,
            polled_at: Instant::now(),
            source: PositionSource::Sql,
            streaming,
        }
    }

    fn floor(timeline: u32, lsn: u64) -> Floor {
        Floor {
            timeline,
            lsn: Lsn(lsn),
        }
    }

    fn positions() -> Positions {
        Positions {
            epoch: 2,
            leader_timeline: Some(5),
            switch_lsn: Some(Lsn(1000)),
            leader: Some(pos("a", 5, 5000, true)),
            replicas: vec![
                pos("b", 5, 3000, true),
                pos("c", 5, 4000, false),
                pos("d", 4, 9000, true),
            ],
        }
    }

    #[test]
    fn a_replica_streaming_on_the_timeline_and_past_the_floor_qualifies() {
        let p = positions();
        assert!(p.replayed("b", &floor(5, 3000)));
        assert!(p.replayed("b", &floor(5, 10)));
        assert!(!p.replayed("b", &floor(5, 3001)));
        assert!(p.replayed("a", &floor(5, 5000)));
        assert_eq!(p.get("b").map(|x| x.lsn), Some(Lsn(3000)));
        assert!(p.get("z").is_none());
    }

    #[test]
    fn not_streaming_other_timeline_or_unknown_never_qualify() {
        let p = positions();
        assert!(!p.replayed("c", &floor(5, 10)), "not streaming");
        assert!(!p.replayed("d", &floor(5, 10)), "old timeline, high LSN");
        assert!(!p.replayed("z", &floor(5, 0)), "no position");
        let no_leader = Positions {
            leader_timeline: None,
            ..positions()
        };
        assert!(!no_leader.replayed("b", &floor(5, 0)));
    }

    #[test]
    fn floors_of_older_timelines_are_clamped_newer_ones_never_met() {
        let p = positions();
        // (4, 2500) is past the switch point 1000: clamped to 1000.
        assert!(p.replayed("b", &floor(4, 2500)));
        assert_eq!(p.translate(&floor(4, 2500)), Some(Lsn(1000)));
        assert_eq!(p.translate(&floor(3, 800)), Some(Lsn(800)));
        // Switch point unknown: the floor stands as it is.
        let unknown = Positions {
            switch_lsn: None,
            ..positions()
        };
        assert!(!unknown.replayed("b", &floor(4, 3500)));
        assert!(unknown.replayed("b", &floor(4, 2500)));
        // A floor from a newer timeline than the leader's is never met.
        assert!(!p.replayed("a", &floor(6, 0)));
        assert_eq!(p.translate(&floor(6, 0)), None);
    }

    #[test]
    fn floors_combine_newest_timeline_then_highest_lsn() {
        assert_eq!(floor(5, 10).max(floor(5, 20)), floor(5, 20));
        assert_eq!(floor(6, 10).max(floor(5, 20)), floor(6, 10));
        assert_eq!(floor(5, 20).max(floor(6, 10)), floor(6, 10));
    }
}

//! WAL positions: the LSN type, a read's floor, and the replay positions
//! of a cluster's members as the position tracker last saw them. Pure.
//! (Interim version; the tracker branch brings the full one.)

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// A WAL position (PostgreSQL's `pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN \"{s}\""))?;
        let p = |x: &str| u32::from_str_radix(x, 16).map_err(|_| format!("invalid LSN \"{s}\""));
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(format!("invalid LSN \"{s}\""));
        }
        Ok(Self((u64::from(p(hi)?) << 32) | u64::from(p(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a replica must have replayed to serve a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Floor {
    /// Timeline of the leader that wrote it (0 = not known).
    pub timeline: u32,
    /// The position.
    pub lsn: Lsn,
}

impl Floor {
    /// The higher of two floors.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        if other.lsn > self.lsn {
            Self {
                timeline: other.timeline.max(self.timeline),
                ..other
            }
        } else {
            Self {
                timeline: self.timeline.max(other.timeline),
                ..self
            }
        }
    }
}

/// Where a position came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionSource {
    /// pgvane's own monitor query.
    Sql,
    /// Patroni's `/patroni` answer.
    Patroni,
}

/// One member's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Member name.
    pub member: String,
    /// Timeline it streams (replica) or writes (leader) on.
    pub timeline: u32,
    /// Replay LSN (replica) or flush LSN (leader).
    pub lsn: Lsn,
    /// Changes when the server restarted.
    pub incarnation: u64,
    /// When it was read.
    pub polled_at: Instant,
    /// Where it came from.
    pub source: PositionSource,
    /// The replica's WAL receiver is streaming.
    pub streaming: bool,
}

/// Every member's last known position.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    /// Count of leaders seen.
    pub epoch: u64,
    /// The current leader's timeline.
    pub leader_timeline: Option<u32>,
    /// The leader's position.
    pub leader: Option<Position>,
    /// Replicas with a usable position.
    pub replicas: Vec<Position>,
}

impl Positions {
    /// The position of `member`, if usable.
    #[must_use]
    pub fn get(&self, member: &str) -> Option<&Position> {
        self.replicas.iter().find(|p| p.member == member)
    }

    /// Whether `member` has replayed `floor` on the leader's timeline.
    #[must_use]
    pub fn replayed(&self, member: &str, floor: &Floor) -> bool {
        let Some(tl) = self.leader_timeline else {
            return false;
        };
        if floor.timeline > tl {
            return false;
        }
        self.get(member)
            .is_some_and(|p| p.streaming && p.timeline == tl && p.lsn >= floor.lsn)
    }
}

/// The insert LSN as a record end: right after a page header it points
/// past the header (24 bytes, 40 at a segment start), where no replay
/// position ever stops; step back to the page start.
#[must_use]
pub fn normalize_insert_lsn(lsn: Lsn, wal_segment_size: u64, wal_block_size: u64) -> Lsn {
    let v = lsn.0;
    if wal_segment_size > 0 && v % wal_segment_size == 40 {
        return Lsn(v - 40);
    }
    if wal_block_size > 0 && v % wal_block_size == 24 {
        return Lsn(v - 24);
    }
    lsn
}

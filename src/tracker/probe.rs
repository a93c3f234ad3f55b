//! What one poll asks a member and how the answer is read: the SQL, the
//! parsed [`Probe`], and the seam ([`Connect`], [`Monitor`]) between the
//! tracker's logic and real connections ([`SqlConnect`], via `backend`).
//! Tests put a fake behind the same traits.

use super::TrackerSettings;
use crate::backend::{Backend, BackendError};
use crate::topology::{Floor, Lsn, NodeAddr, normalize_insert_lsn};
use std::future::Future;

/// The poll query, for leaders and replicas alike. `pg_is_in_recovery()`
/// is read once (a subquery with a volatile target list is not flattened),
/// so the LSN and timeline columns agree with it: a replica gives its
/// replay LSN and its receiver's timeline, a primary its flush LSN and the
/// timeline it inserts on (`pg_walfile_name`'s first 8 hex digits, as
/// Patroni reads it; `pg_control_checkpoint()` lags until the first
/// checkpoint after a promotion). A user without `pg_read_all_stats`
/// (which `pg_monitor` grants) sees the receiver's `pid` but NULL status
/// and timeline.
pub const PROBE_SQL: &str = "SELECT s.rec, \
CASE WHEN s.rec THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_flush_lsn() END, \
CASE WHEN s.rec THEN NULL ELSE pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END, \
r.received_tli, r.status, r.pid IS NOT NULL, pg_catalog.pg_postmaster_start_time() \
FROM (SELECT pg_catalog.pg_is_in_recovery() AS rec) AS s \
LEFT JOIN pg_catalog.pg_stat_wal_receiver AS r ON true";

/// The read index query: the leader's insert LSN and timeline; fails with
/// "recovery is in progress" on a server in recovery.
pub const INSERT_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn(), \
pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)";

/// The WAL geometry, read once per connection for [`normalize_insert_lsn`].
pub const SIZES_SQL: &str = "SELECT (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'), \
pg_catalog.current_setting('wal_block_size')";

/// The state of a member's WAL receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiver {
    /// No receiver (a primary, or a replica whose receiver is down).
    None,
    /// `status` is `streaming`.
    Streaming,
    /// Another status (`starting`, `waiting`, `stopping`, ...).
    Other(String),
    /// A receiver runs but the monitor user may not see its details.
    Hidden,
}

/// One poll's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Replay LSN in recovery, else flush LSN (`None`: a server that never
    /// replayed anything).
    pub lsn: Option<Lsn>,
    /// The receiver's timeline in recovery, else the insert timeline.
    pub timeline: Option<u32>,
    /// The WAL receiver.
    pub receiver: Receiver,
    /// `pg_postmaster_start_time()` as text.
    pub started: String,
}

/// Why a poll or a query failed.
pub type ProbeError = String;

/// Why a monitor connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The server refused the login, or TLS or the authentication method
    /// is not what pgvane may use: retrying will not help soon.
    Login(String),
    /// Anything else (network, timeout, server starting).
    Other(String),
}

/// Opens monitor connections.
pub trait Connect: Send + Sync + 'static {
    /// The connection type.
    type Conn: Monitor;
    /// Opens one connection to `addr` as `settings` say.
    fn connect(
        &self,
        addr: &NodeAddr,
        settings: &TrackerSettings,
    ) -> impl Future<Output = Result<Self::Conn, ConnectError>> + Send;
}

/// One open monitor connection. Its futures are not cancel safe: drop the
/// connection when one is dropped before it completes.
pub trait Monitor: Send + 'static {
    /// Runs [`PROBE_SQL`].
    fn probe(&mut self) -> impl Future<Output = Result<Probe, ProbeError>> + Send;
    /// Runs [`INSERT_SQL`]: the normalised insert LSN and its timeline.
    fn insert_floor(&mut self) -> impl Future<Output = Result<Floor, ProbeError>> + Send;
}

/// Parses a [`PROBE_SQL`] row.
///
/// # Errors
/// A description of what is missing or malformed.
pub fn parse_probe(row: &[Option<String>]) -> Result<Probe, ProbeError> {
    let col = |i: usize| row.get(i).and_then(Option::as_deref);
    if row.len() != 7 {
        return Err(format!("probe returned {} columns, expected 7", row.len()));
    }
    let in_recovery = col(0) == Some("t");
    let lsn = col(1)
        .map(str::parse::<Lsn>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let timeline = if in_recovery {
        col(3).map(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("bad received_tli `{t}`"))
        })
    } else {
        col(2).map(hex_timeline)
    }
    .transpose()?;
    let receiver = match (col(4), col(5)) {
        (Some("streaming"), _) => Receiver::Streaming,
        (Some(other), _) => Receiver::Other(other.to_owned()),
        (None, Some("t")) => Receiver::Hidden,
        (None, _) => Receiver::None,
    };
    Ok(Probe {
        in_recovery,
        lsn,
        timeline,
        receiver,
        started: col(6).unwrap_or_default().to_owned(),
    })
}

/// A timeline from the first 8 hex digits of a WAL file name.
fn hex_timeline(t: &str) -> Result<u32, ProbeError> {
    u32::from_str_radix(t, 16).map_err(|_| format!("bad timeline `{t}`"))
}

/// Parses an [`INSERT_SQL`] row and normalises the LSN with `sizes`
/// (segment, block).
///
/// # Errors
/// A description of what is missing or malformed.
pub fn parse_insert(row: &[Option<String>], sizes: (u64, u64)) -> Result<Floor, ProbeError> {
    let (Some(Some(lsn)), Some(Some(tl))) = (row.first(), row.get(1)) else {
        return Err("insert position query returned NULL".to_owned());
    };
    let lsn: Lsn = lsn
        .parse()
        .map_err(|e: crate::topology::position::LsnParseError| e.to_string())?;
    Ok(Floor {
        timeline: hex_timeline(tl)?,
        lsn: normalize_insert_lsn(lsn, sizes.0, sizes.1),
    })
}

/// Real monitor connections: [`Backend`]s with the tracker's credentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlConnect;

/// A [`Backend`] used as a monitor connection.
#[derive(Debug)]
pub struct SqlMonitor {
    backend: Backend,
    /// `wal_segment_size`, `wal_block_size`, read at first use.
    sizes: Option<(u64, u64)>,
}

impl Connect for SqlConnect {
    type Conn = SqlMonitor;

    async fn connect(
        &self,
        addr: &NodeAddr,
        settings: &TrackerSettings,
    ) -> Result<SqlMonitor, ConnectError> {
        let Some(creds) = &settings.creds else {
            return Err(ConnectError::Login("no monitor user".to_owned()));
        };
        let backend = Backend::connect(
            addr,
            creds,
            &settings.security,
            settings.connect_timeout,
            0,
            settings.socket,
        )
        .await
        .map_err(|e| match &e {
            BackendError::Refused { code, .. } if code.starts_with("28") => {
                ConnectError::Login(e.to_string())
            }
            BackendError::Auth(_) | BackendError::Tls(_) => ConnectError::Login(e.to_string()),
            _ => ConnectError::Other(e.to_string()),
        })?;
        Ok(SqlMonitor {
            backend,
            sizes: None,
        })
    }
}

impl SqlMonitor {
    async fn row(&mut self, sql: &str) -> Result<Vec<Option<String>>, ProbeError> {
        self.backend
            .query_row(sql)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "query returned no row".to_owned())
    }
}

impl Monitor for SqlMonitor {
    async fn probe(&mut self) -> Result<Probe, ProbeError> {
        parse_probe(&self.row(PROBE_SQL).await?)
    }

    async fn insert_floor(&mut self) -> Result<Floor, ProbeError> {
        let sizes = match self.sizes {
            Some(s) => s,
            None => {
                let row = self.row(SIZES_SQL).await?;
                let num = |i: usize| {
                    row.get(i)
                        .and_then(Option::as_deref)
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| format!("bad WAL size in {row:?}"))
                };
                let s = (num(0)?, num(1)?);
                self.sizes = Some(s);
                s
            }
        };
        parse_insert(&self.row(INSERT_SQL).await?, sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[Option<&str>]) -> Vec<Option<String>> {
        cols.iter().map(|c| c.map(str::to_owned)).collect()
    }

    const STARTED: &str = "2026-12-06 03:15:16.875469+00";

    #[test]
    fn rows_seen_in_the_lab_parse() {
        // As postgres on the leader, a replica, and as a user without
        // pg_read_all_stats on a replica (PostgreSQL 15 lab).
        let leader = parse_probe(&row(&[
            Some("f"),
            Some("0/BE50658"),
            Some("00000001"),
            None,
            None,
            Some("f"),
            Some(STARTED),
        ]))
        .unwrap();
        assert_eq!(
            leader,
            Probe {
                in_recovery: false,
                lsn: Some(Lsn(0x0BE5_0658)),
                timeline: Some(1),
                receiver: Receiver::None,
                started: STARTED.to_owned(),
            }
        );
        let replica = parse_probe(&row(&[
            Some("t"),
            Some("0/BE50658"),
            None,
            Some("1"),
            Some("streaming"),
            Some("t"),
            Some(STARTED),
        ]))
        .unwrap();
        assert_eq!(replica.timeline, Some(1));
        assert_eq!(replica.receiver, Receiver::Streaming);
        let hidden = parse_probe(&row(&[
            Some("t"),
            Some("0/BE50658"),
            None,
            None,
            None,
            Some("t"),
            Some(STARTED),
        ]))
        .unwrap();
        assert_eq!((hidden.timeline, hidden.receiver), (None, Receiver::Hidden));
        let timeline_1a = parse_probe(&row(&[
            Some("f"),
            Some("0/1"),
            Some("0000001A"),
            None,
            None,
            Some("f"),
            Some(STARTED),
        ]))
        .unwrap();
        assert_eq!(timeline_1a.timeline, Some(26), "hex");
    }

    #[test]
    fn malformed_rows_are_errors() {
        assert!(parse_probe(&row(&[Some("t")])).is_err());
        let mut r = row(&[
            Some("t"),
            Some("zz"),
            None,
            Some("1"),
            Some("streaming"),
            Some("t"),
            Some(STARTED),
        ]);
        assert!(parse_probe(&r).is_err());
        r[1] = Some("0/1".to_owned());
        r[3] = Some("x".to_owned());
        assert!(parse_probe(&r).is_err());
    }

    #[test]
    fn insert_positions_are_normalised() {
        let sizes = (16 << 20, 8192);
        let f = parse_insert(&row(&[Some("0/1000028"), Some("00000003")]), sizes).unwrap();
        assert_eq!(
            f,
            Floor {
                timeline: 3,
                lsn: Lsn(0x0100_0000)
            }
        );
        let f = parse_insert(&row(&[Some("0/BE50658"), Some("00000001")]), sizes).unwrap();
        assert_eq!(f.lsn, Lsn(0x0BE5_0658));
        assert!(parse_insert(&row(&[None, Some("1")]), sizes).is_err());
    }
}

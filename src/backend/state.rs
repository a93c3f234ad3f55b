//! The protocol state of one server connection, owned by the connection
//! and updated only from the bytes pgvane sends and the messages the server
//! answers (ReadyForQuery status, COPY starts and ends, CommandComplete
//! tags such as `DISCARD ALL`). Sans-IO: the backend feeds it, the pool
//! asks it whether the connection is clean.

use crate::protocol::message::Message;
use crate::protocol::tag::{backend as bt, frontend as ft, status};

/// COPY in progress on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyState {
    /// No COPY.
    #[default]
    None,
    /// The server waits for CopyData from pgvane (`CopyInResponse`).
    In,
    /// The server streams CopyData (`CopyOutResponse`).
    Out,
    /// Replication-style copy both ways (`CopyBothResponse`).
    Both,
}

/// What a server connection owes and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    /// ReadyForQuery messages the server still owes: one per Query, Sync
    /// and FunctionCall sent.
    pub ready_owed: u32,
    /// Last ReadyForQuery status: `I`, `T` or `E`.
    pub status: u8,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// The server reported an error in extended mode and ignores everything
    /// up to the next Sync.
    pub skipping: bool,
    /// COPY in progress.
    pub copy: CopyState,
    /// Session state may be present (a pin, a statement with unknown
    /// effects, a fast-path call): reset before another client uses it.
    pub dirty: bool,
    /// A SQL `DEALLOCATE <name>` succeeded: which statement went is not
    /// known, so pgvane's list of its prepared statements may be wrong.
    pub prepared_unknown: bool,
    /// A `SET`/`RESET`/`DISCARD` ran: the session settings on it are no
    /// longer the ones pgvane applied.
    pub settings_changed: bool,
    /// The last CommandComplete tag's first word (`DISCARD ALL` kept whole).
    pub last_tag: Tag,
}

/// CommandComplete tags pgvane acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tag {
    /// Any other tag, or none yet.
    #[default]
    Other,
    /// `SET`.
    Set,
    /// `RESET`.
    Reset,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DEALLOCATE`.
    Deallocate,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// A command that always leaves session state: `LISTEN`, `PREPARE`,
    /// `LOAD`, `DECLARE CURSOR`.
    SessionState,
}

impl Tag {
    /// Reads a CommandComplete body (the tag text, NUL-terminated).
    #[must_use]
    pub fn of(body: &[u8]) -> Self {
        let text = body.strip_suffix(&[0]).unwrap_or(body);
        match text {
            b"SET" => Self::Set,
            b"RESET" => Self::Reset,
            b"DISCARD ALL" => Self::DiscardAll,
            b"DEALLOCATE ALL" => Self::DeallocateAll,
            b"DEALLOCATE" => Self::Deallocate,
            b"COMMIT" => Self::Commit,
            b"ROLLBACK" => Self::Rollback,
            b"BEGIN" | b"START TRANSACTION" => Self::Begin,
            b"LISTEN" | b"PREPARE" | b"LOAD" | b"DECLARE CURSOR" => Self::SessionState,
            _ => Self::Other,
        }
    }
}

/// What a received message means for the statements pgvane prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedEffect {
    /// Nothing.
    None,
    /// Every prepared statement on the connection is gone.
    AllGone,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            ready_owed: 0,
            status: status::IDLE,
            unsynced: false,
            skipping: false,
            copy: CopyState::None,
            dirty: false,
            prepared_unknown: false,
            settings_changed: false,
            last_tag: Tag::Other,
        }
    }
}

impl ConnState {
    /// Notes bytes about to be written: whole, well-formed frontend messages.
    pub fn on_send(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at + 5 <= bytes.len() {
            let tag = bytes[at];
            let len =
                u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
                    as usize;
            match tag {
                ft::QUERY | ft::FUNCTION_CALL => self.ready_owed += 1,
                ft::SYNC => {
                    self.ready_owed += 1;
                    self.unsynced = false;
                }
                ft::PARSE | ft::BIND | ft::DESCRIBE | ft::EXECUTE | ft::CLOSE => {
                    self.unsynced = true
                }
                _ => {}
            }
            at += 1 + len.max(4);
        }
    }

    /// Notes a message the server sent; says what it did to prepared statements.
    pub fn on_recv(&mut self, m: &Message) -> PreparedEffect {
        self.on_recv_parts(m.tag(), m.body())
    }

    /// [`Self::on_recv`] for a message read in place: its tag and body.
    pub fn on_recv_parts(&mut self, tag: u8, body: &[u8]) -> PreparedEffect {
        match tag {
            bt::READY_FOR_QUERY => {
                self.ready_owed = self.ready_owed.saturating_sub(1);
                self.status = body.first().copied().unwrap_or(status::IDLE);
                self.skipping = false;
                self.copy = CopyState::None;
            }
            bt::COPY_IN_RESPONSE => self.copy = CopyState::In,
            bt::COPY_OUT_RESPONSE => self.copy = CopyState::Out,
            bt::COPY_BOTH_RESPONSE => self.copy = CopyState::Both,
            bt::COPY_DONE if self.copy == CopyState::Out => self.copy = CopyState::None,
            bt::ERROR_RESPONSE => {
                if self.unsynced {
                    self.skipping = true;
                }
                self.copy = CopyState::None;
            }
            bt::COMMAND_COMPLETE => {
                let tag = Tag::of(body);
                self.last_tag = tag;
                if self.copy == CopyState::In {
                    self.copy = CopyState::None;
                }
                match tag {
                    // Whatever the client's text looked like, the server
                    // says session state changed: reset before reuse (a
                    // SET pgvane replays clears this again).
                    Tag::Set | Tag::Reset => {
                        self.settings_changed = true;
                        self.dirty = true;
                    }
                    Tag::SessionState => self.dirty = true,
                    Tag::DiscardAll => {
                        // DISCARD ALL cannot run in a transaction: it ran.
                        self.dirty = false;
                        self.prepared_unknown = false;
                        self.settings_changed = true;
                        return PreparedEffect::AllGone;
                    }
                    Tag::DeallocateAll => {
                        self.prepared_unknown = false;
                        return PreparedEffect::AllGone;
                    }
                    Tag::Deallocate => self.prepared_unknown = true,
                    _ => {}
                }
            }
            _ => {}
        }
        PreparedEffect::None
    }

    /// Nothing owed, idle, no COPY, no half-sent batch: the protocol is at rest.
    #[must_use]
    pub fn at_rest(&self) -> bool {
        self.ready_owed == 0
            && self.status == status::IDLE
            && !self.unsynced
            && !self.skipping
            && self.copy == CopyState::None
    }

    /// At rest and holding nothing another client could see.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.at_rest() && !self.dirty && !self.prepared_unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;
    use bytes::Bytes;

    fn msg(tag: u8, body: &[u8]) -> Message {
        let mut v = Vec::new();
        encode::frame(&mut v, tag, |b| b.extend_from_slice(body));
        Message::from_raw(Bytes::from(v))
    }

    #[test]
    fn query_owes_one_ready_and_rests_after_it() {
        let mut s = ConnState::default();
        let mut out = Vec::new();
        encode::query(&mut out, "select 1");
        s.on_send(&out);
        assert!(!s.at_rest());
        s.on_recv(&msg(b'C', b"SELECT 1\0"));
        assert!(!s.at_rest(), "still owes ReadyForQuery");
        s.on_recv(&msg(b'Z', b"I"));
        assert!(s.clean());
    }

    #[test]
    fn flush_without_sync_is_not_at_rest() {
        let mut s = ConnState::default();
        let mut out = Vec::new();
        encode::parse(&mut out, "", "insert into t values (1)", &[0, 0]);
        encode::frame(&mut out, b'H', |_| {});
        s.on_send(&out);
        assert!(s.unsynced && !s.at_rest());
        s.on_recv(&msg(b'E', b"SERROR\0\0"));
        assert!(s.skipping, "an error before Sync skips up to Sync");
        let mut sync = Vec::new();
        encode::sync(&mut sync);
        s.on_send(&sync);
        s.on_recv(&msg(b'Z', b"I"));
        assert!(s.at_rest() && !s.skipping);
    }

    #[test]
    fn transaction_and_copy_are_not_at_rest() {
        let mut s = ConnState::default();
        s.on_recv(&msg(b'Z', b"T"));
        assert!(!s.at_rest());
        s.on_recv(&msg(b'Z', b"I"));
        s.on_recv(&msg(b'G', b"\0\0\0"));
        assert_eq!(s.copy, CopyState::In);
        assert!(!s.at_rest());
        s.on_recv(&msg(b'C', b"COPY 3\0"));
        assert_eq!(s.copy, CopyState::None);
        s.on_recv(&msg(b'H', b"\0\0\0"));
        s.on_recv(&msg(b'c', b""));
        assert_eq!(s.copy, CopyState::None);
    }

    #[test]
    fn tags_come_from_the_server() {
        let mut s = ConnState {
            dirty: true,
            ..ConnState::default()
        };
        assert_eq!(s.on_recv(&msg(b'C', b"DEALLOCATE\0")), PreparedEffect::None);
        assert!(s.prepared_unknown);
        assert_eq!(
            s.on_recv(&msg(b'C', b"DEALLOCATE ALL\0")),
            PreparedEffect::AllGone
        );
        assert!(!s.prepared_unknown && s.dirty);
        assert_eq!(
            s.on_recv(&msg(b'C', b"DISCARD ALL\0")),
            PreparedEffect::AllGone
        );
        assert!(!s.dirty && s.settings_changed);
        assert_eq!(Tag::of(b"SET\0"), Tag::Set);
        let mut s = ConnState::default();
        s.on_recv(&msg(b'C', b"SET\0"));
        assert!(
            s.dirty && s.settings_changed,
            "a SET the server ran marks it"
        );
        let mut s = ConnState::default();
        s.on_recv(&msg(b'C', b"LISTEN\0"));
        assert!(s.dirty);
        assert_eq!(Tag::of(b"SELECT 1\0"), Tag::Other);
    }
}

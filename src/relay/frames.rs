//! Where a relayed role-port connection stands between transactions, read
//! off the bytes as they pass without holding any: message boundaries in
//! both directions, how many `ReadyForQuery` the client's messages still
//! await, and the last transaction status. `DRAIN <node>` ends a relay
//! only when [`Frames::idle`] says nothing is in flight and no transaction
//! is open. A stream pgvane cannot read (TLS or GSS encryption negotiated
//! with the node) is opaque: never idle.

use crate::protocol::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};

/// The client → server direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    /// Untagged packets (length, code): a startup or an encryption request.
    Packet { head: [u8; 8], have: u8, skip: u32 },
    /// Tagged messages after the startup packet.
    Message { head: [u8; 5], have: u8, skip: u32 },
}

/// The server → client direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    /// A one-byte answer to an encryption request is due.
    Answer,
    /// Between an `N` answer and the client's next packet: nothing is due.
    Quiet,
    /// Tagged messages; `status` set when the body byte due next is a
    /// `ReadyForQuery` status.
    Message {
        head: [u8; 5],
        have: u8,
        skip: u32,
        status: bool,
    },
}

/// One relayed connection's protocol position (a few dozen bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    up: Up,
    down: Down,
    /// `ReadyForQuery` the client's messages (startup, Query, Sync,
    /// FunctionCall) have asked for so far.
    asked: u64,
    /// `ReadyForQuery` the server has sent so far.
    answered: u64,
    /// The last `ReadyForQuery` status (`I`, `T` or `E`); 0 before one.
    status: u8,
    /// The stream is encrypted or not understood: never idle.
    opaque: bool,
    /// Extended-protocol messages (Parse, Bind, Describe, Execute, Close,
    /// Flush) were sent since the last Sync: the server may have run them
    /// in an implicit transaction that only the Sync ends.
    unsynced: bool,
    /// Syncs the client sent since its last Execute (or Query): when that
    /// Execute turns out to start COPY FROM STDIN, the server ignores them.
    syncs_after_execute: u64,
    /// Between the server's CopyInResponse and the client's CopyDone or
    /// CopyFail: the server ignores Syncs.
    copy_in: bool,
}

const NEW_MESSAGE: Down = Down::Message {
    head: [0; 5],
    have: 0,
    skip: 0,
    status: false,
};

impl Frames {
    /// A relay that starts after pgvane passed the client's startup packet
    /// on and `early`, the start of the node's answer, back.
    #[must_use]
    pub fn after_startup(early: &[u8]) -> Self {
        let mut f = Self {
            up: Up::Message {
                head: [0; 5],
                have: 0,
                skip: 0,
            },
            down: NEW_MESSAGE,
            asked: 1,
            answered: 0,
            status: 0,
            opaque: false,
            unsynced: false,
            syncs_after_execute: 0,
            copy_in: false,
        };
        f.down(early);
        f
    }

    /// A relay that starts after pgvane passed the client's first 8 bytes
    /// on unread (`head`): an SSL or GSS encryption request, whose one-byte
    /// answer comes next; anything else is opaque.
    #[must_use]
    pub fn after_request(head: &[u8]) -> Self {
        let code = head
            .get(4..8)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        let len = head
            .get(0..4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        let request =
            len == Some(8) && matches!(code, Some(SSL_REQUEST_CODE | GSSENC_REQUEST_CODE));
        Self {
            up: Up::Packet {
                head: [0; 8],
                have: 0,
                skip: 0,
            },
            down: Down::Answer,
            asked: 0,
            answered: 0,
            status: 0,
            opaque: !request,
            unsynced: false,
            syncs_after_execute: 0,
            copy_in: false,
        }
    }

    /// Whether the connection is between transactions with nothing in
    /// flight: every message the client sent has had its `ReadyForQuery`
    /// (no extended-protocol message waits for its Sync, no COPY is under
    /// way), the last one said idle, and neither direction is inside a
    /// message.
    #[must_use]
    pub fn idle(&self) -> bool {
        !self.unsynced
            && !self.copy_in
            && self.asked == self.answered
            && self.status == b'I'
            && matches!(
                self.up,
                Up::Message {
                    have: 0,
                    skip: 0,
                    ..
                }
            )
            && self.between_messages()
    }

    /// Whether the server → client direction sits between messages, so a
    /// message of pgvane's own may be put there.
    #[must_use]
    pub fn between_messages(&self) -> bool {
        !self.opaque
            && matches!(
                self.down,
                Down::Message {
                    have: 0,
                    skip: 0,
                    ..
                }
            )
    }

    /// Reads bytes the client sent, before they are passed on.
    pub fn up(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.opaque {
            match &mut self.up {
                Up::Packet { head, have, skip } => {
                    let Some(head) = header(head, have, skip, &mut b) else {
                        continue;
                    };
                    let (len, code) = (be32(&head[..4]), be32(&head[4..]));
                    match code {
                        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if len == 8 => {
                            self.down = Down::Answer;
                        }
                        c if c >> 16 == 3 && len >= 8 => {
                            self.asked += 1;
                            self.down = NEW_MESSAGE;
                            // The rest of the startup packet carries no tags.
                            self.up = Up::Message {
                                head: [0; 5],
                                have: 0,
                                skip: len - 8,
                            };
                        }
                        _ => self.opaque = true,
                    }
                }
                Up::Message { head, have, skip } => {
                    let Some(&[tag, ref len @ ..]) = header(head, have, skip, &mut b) else {
                        continue;
                    };
                    let len = be32(len);
                    if len < 4 {
                        self.opaque = true;
                        continue;
                    }
                    match tag {
                        b'Q' | b'F' => {
                            self.asked += 1;
                            self.syncs_after_execute = 0;
                        }
                        b'S' => {
                            self.unsynced = false;
                            if !self.copy_in {
                                self.asked += 1;
                                self.syncs_after_execute += 1;
                            }
                        }
                        b'E' => {
                            self.unsynced = true;
                            self.syncs_after_execute = 0;
                        }
                        b'P' | b'B' | b'D' | b'C' | b'H' => self.unsynced = true,
                        b'c' | b'f' => self.copy_in = false,
                        _ => {}
                    }
                    *skip = len - 4;
                }
            }
        }
    }

    /// Reads bytes the server sent, before they are passed on.
    pub fn down(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.opaque {
            match &mut self.down {
                Down::Answer => {
                    if b[0] == b'N' {
                        self.down = Down::Quiet;
                        b = &b[1..];
                    } else {
                        // `S`/`G`: encrypted from here on; else not understood.
                        self.opaque = true;
                    }
                }
                Down::Quiet => self.opaque = true,
                Down::Message {
                    head,
                    have,
                    skip,
                    status,
                } => {
                    if *skip > 0 && *status {
                        self.status = b[0];
                        self.answered += 1;
                        *status = false;
                    }
                    let Some(&[tag, ref len @ ..]) = header(head, have, skip, &mut b) else {
                        continue;
                    };
                    let len = be32(len);
                    if len < 4 || (tag == b'Z' && len != 5) {
                        self.opaque = true;
                        continue;
                    }
                    *status = tag == b'Z';
                    *skip = len - 4;
                    match tag {
                        // CopyInResponse: the Syncs sent behind the Execute
                        // that started it reach a server in copy-in mode,
                        // which ignores them.
                        b'G' => {
                            self.copy_in = true;
                            self.asked = self.asked.saturating_sub(self.syncs_after_execute);
                            self.syncs_after_execute = 0;
                        }
                        // CopyBothResponse (replication): not followed.
                        b'W' => self.opaque = true,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Skips what is left of the current message, then gathers the next
/// header from `b` (advanced past what was taken). Returns the header once
/// whole; `have` is reset for the next.
fn header<'h, const N: usize>(
    head: &'h mut [u8; N],
    have: &mut u8,
    skip: &mut u32,
    b: &mut &[u8],
) -> Option<&'h [u8; N]> {
    if *skip > 0 {
        let k = (*skip as usize).min(b.len());
        *skip -= k as u32;
        *b = &b[k..];
        return None;
    }
    let k = (N - *have as usize).min(b.len());
    head[*have as usize..*have as usize + k].copy_from_slice(&b[..k]);
    *have += k as u8;
    *b = &b[k..];
    if (*have as usize) < N {
        return None;
    }
    *have = 0;
    Some(head)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests;

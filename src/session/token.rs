//! The causal token's two session commands, answered by pgvane without a
//! backend, in the simple protocol and in an extended-protocol batch of one
//! unnamed statement (Parse, Bind, Describe, Execute, Sync, as pgJDBC and
//! other drivers send them): `SHOW pgvane.last_write_lsn` gives the
//! session's floor; `SET pgvane.min_lsn = '…'` raises it.

use super::Session;
use super::consistency::{self, Command};
use crate::protocol::encode;
use crate::protocol::message::{Frontend, Message};
use crate::protocol::sqlstate;
use crate::topology::{Floor, Lsn};

/// What the client asked to be described before Execute.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Describe {
    None,
    Statement,
    Portal,
}

impl Session {
    /// Answers a simple-protocol token command; false when `sql` is not one.
    pub(super) fn session_command(&mut self, sql: &str) -> bool {
        let Some(cmd) = consistency::command(sql) else {
            return false;
        };
        if cmd == Command::ShowLastWrite {
            self.describe_command(&cmd);
        }
        self.run_command(cmd);
        let status = self.status();
        encode::ready_for_query(&mut self.client.out, status);
        true
    }

    /// Answers an extended-protocol batch that runs one token command on
    /// the unnamed statement and portal; false when the batch is anything
    /// else (it then goes to a backend as usual).
    pub(super) fn batch_command(&mut self, msgs: &[Message]) -> bool {
        let mut cmd = None;
        let mut describe = Describe::None;
        let mut shape = smallvec::SmallVec::<[u8; 8]>::new();
        for m in msgs {
            match Frontend::parse(m) {
                Some(Frontend::Parse { name: "", sql, .. }) if cmd.is_none() => {
                    let Some(c) = consistency::command(sql) else {
                        return false;
                    };
                    cmd = Some(c);
                }
                Some(Frontend::Bind {
                    portal: "",
                    statement: "",
                    ..
                }) => {}
                Some(Frontend::Describe {
                    kind: b'S',
                    name: "",
                }) => describe = Describe::Statement,
                Some(Frontend::Describe {
                    kind: b'P',
                    name: "",
                }) => describe = Describe::Portal,
                Some(Frontend::Execute | Frontend::Sync) => {}
                _ => return false,
            }
            shape.push(m.tag());
        }
        if !matches!(
            shape[..],
            [b'P', b'B', b'E', b'S']
                | [b'P', b'B', b'D', b'E', b'S']
                | [b'P', b'D', b'B', b'E', b'S']
        ) {
            return false;
        }
        let Some(cmd) = cmd else {
            return false;
        };
        let out = &mut self.client.out;
        encode::parse_complete(out);
        if describe == Describe::Statement {
            // No parameters.
            encode::frame(out, b't', |b| b.extend_from_slice(&0u16.to_be_bytes()));
            self.describe_command(&cmd);
            encode::bind_complete(&mut self.client.out);
        } else {
            encode::bind_complete(out);
            if describe == Describe::Portal {
                self.describe_command(&cmd);
            }
        }
        self.run_command(cmd);
        let status = self.status();
        encode::ready_for_query(&mut self.client.out, status);
        true
    }

    /// RowDescription of a SHOW, NoData of a SET.
    fn describe_command(&mut self, cmd: &Command) {
        match cmd {
            Command::ShowLastWrite => {
                encode::row_description(&mut self.client.out, &["pgvane.last_write_lsn"]);
            }
            Command::SetMinLsn(_) => encode::frame(&mut self.client.out, b'n', |_| {}),
        }
    }

    /// The command's rows and CommandComplete, or its error.
    fn run_command(&mut self, cmd: Command) {
        match cmd {
            Command::ShowLastWrite => {
                let lsn = self.consistency.floor.map_or(Lsn(0), |f| f.lsn).to_string();
                encode::data_row(&mut self.client.out, &[&lsn]);
                encode::command_complete(&mut self.client.out, "SHOW");
            }
            Command::SetMinLsn(text) => match text.parse::<Lsn>() {
                Ok(lsn) => {
                    // The token names no timeline: the current leader's (0,
                    // taken as is, while none is known yet).
                    let timeline = self
                        .ctx
                        .link
                        .tracker
                        .current()
                        .leader_timeline
                        .or(self.consistency.floor.map(|f| f.timeline))
                        .unwrap_or(0);
                    self.consistency.raise(Floor { timeline, lsn });
                    encode::command_complete(&mut self.client.out, "SET");
                }
                Err(_) => encode::error_response(
                    &mut self.client.out,
                    encode::Severity::Error,
                    sqlstate::INVALID_PARAMETER_VALUE,
                    &format!(
                        "invalid value for parameter \"pgvane.min_lsn\": \"{text}\" (expected an LSN such as 0/3000148)"
                    ),
                ),
            },
        }
    }
}

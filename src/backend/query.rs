//! pgvane's own one-row queries on a backend (the tracker's WAL position
//! polls): simple protocol, text results. Not for client traffic; the
//! connection's protocol state is kept by [`Backend::read`] as always.

use super::{Backend, BackendError};
use crate::protocol::encode;
use crate::protocol::message;
use crate::protocol::tag::backend as bt;

/// One row of text values; `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

impl Backend {
    /// Runs `sql` (one statement) and returns its first row, or `None`
    /// when it returned none; further rows are read and dropped. Only at
    /// rest. Not cancel safe: a query cut short leaves replies unread, so
    /// drop the connection if this future is dropped.
    ///
    /// # Errors
    /// [`BackendError::Query`] with the server's error, an IO error, or
    /// [`BackendError::Protocol`] for a malformed DataRow.
    pub async fn query_row(&mut self, sql: &str) -> Result<Option<Row>, BackendError> {
        let mut out = Vec::with_capacity(sql.len() + 6);
        encode::query(&mut out, sql);
        self.send(&out).await?;
        let mut row = None;
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag() {
                bt::DATA_ROW if row.is_none() && failed.is_none() => {
                    row = Some(
                        data_row(m.body()).ok_or(BackendError::Protocol("malformed DataRow"))?,
                    );
                }
                bt::ERROR_RESPONSE => {
                    let (code, message) = message::error_fields(m.body());
                    failed = Some(BackendError::Query { code, message });
                }
                bt::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        failed.map_or(Ok(row), Err)
    }
}

/// The text values of a DataRow body: Int16 count, then per column an
/// Int32 length (-1: NULL) and that many bytes
/// (<https://www.postgresql.org/docs/current/protocol-message-formats.html>).
fn data_row(body: &[u8]) -> Option<Row> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut pos = 2;
    let mut row = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        let text = std::str::from_utf8(body.get(pos..end)?).ok()?;
        row.push(Some(text.to_owned()));
        pos = end;
    }
    (pos == body.len()).then_some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(cols: &[Option<&str>]) -> Vec<u8> {
        let mut b = u16::try_from(cols.len()).unwrap().to_be_bytes().to_vec();
        for c in cols {
            match c {
                Some(t) => {
                    b.extend_from_slice(&i32::try_from(t.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(t.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn data_rows_decode_text_and_nulls() {
        let cols = [Some("t"), Some("0/4000060"), None, Some("")];
        let row = data_row(&body(&cols)).unwrap();
        let want: Row = cols.iter().map(|c| c.map(str::to_owned)).collect();
        assert_eq!(row, want);
        assert_eq!(data_row(&body(&[])).unwrap(), Row::new());
    }

    #[test]
    fn malformed_data_rows_are_refused() {
        let good = body(&[Some("abc")]);
        assert!(data_row(&good[..good.len() - 1]).is_none(), "short value");
        let mut long = good.clone();
        long.push(0);
        assert!(data_row(&long).is_none(), "trailing bytes");
        assert!(data_row(&[0]).is_none(), "short count");
        assert!(data_row(&body(&[Some("\u{0}")])).is_some());
        let mut bad_utf8 = body(&[Some("ab")]);
        let n = bad_utf8.len();
        bad_utf8[n - 1] = 0xff;
        assert!(data_row(&bad_utf8).is_none(), "not UTF-8");
    }
}

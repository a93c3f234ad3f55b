//! The polite refusal of a role-port client no node can take: answer its
//! first packet as PostgreSQL would, with a FATAL `ErrorResponse`. Knows
//! nothing of why; fed the SQLSTATE and text by the client flow.

use crate::protocol::encode::{Severity, error_response};
use crate::protocol::sqlstate::{PROTOCOL_VIOLATION, SqlState};
use crate::protocol::startup::{self, FirstPacket};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers a client that cannot be served with a FATAL `ErrorResponse`, as
/// PostgreSQL itself would: read its first packet (answering `N` to an
/// SSL or GSS encryption request, then reading the startup message), send
/// the error, and close. A CancelRequest is closed silently. Bounded by `deadline`.
pub async fn refuse(
    client: &mut TcpStream,
    already: &[u8],
    code: SqlState,
    message: &str,
    deadline: Duration,
) {
    let mut pending = already.to_vec();
    let work = async {
        let mut out = Vec::with_capacity(64 + message.len());
        loop {
            match read_first(client, &mut pending).await {
                Ok(FirstPacket::SslRequest | FirstPacket::GssEncRequest) => {
                    client.write_all(b"N").await?
                }
                Ok(FirstPacket::Cancel { .. }) => return Ok(()),
                Ok(FirstPacket::Startup { .. }) => {
                    error_response(&mut out, Severity::Fatal, code, message);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let text = format!("invalid startup packet: {e}");
                    error_response(&mut out, Severity::Fatal, PROTOCOL_VIOLATION, &text);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        client.write_all(&out).await?;
        client.shutdown().await
    };
    let result: io::Result<()> = match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "could not deliver the refusal");
    }
}

/// Fills `buf` from `pending` (bytes already read off the socket) first,
/// then from the socket.
async fn read_exact_after(
    client: &mut TcpStream,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
) -> io::Result<()> {
    let n = pending.len().min(buf.len());
    buf[..n].copy_from_slice(&pending[..n]);
    pending.drain(..n);
    if n < buf.len() {
        client.read_exact(&mut buf[n..]).await?;
    }
    Ok(())
}

async fn read_first(client: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<FirstPacket> {
    let mut head = [0u8; 4];
    read_exact_after(client, pending, &mut head).await?;
    let len = startup::packet_len(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .unwrap_or(8);
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&head);
    read_exact_after(client, pending, &mut packet[4..]).await?;
    startup::parse(&packet).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

//! Reading the untagged first packet of a connection.
//! Owns the classification of SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage; does not answer them. Fed by `relay::refuse`.

use super::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LENGTH, SSL_REQUEST_CODE,
};

/// What the first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// SSLRequest: the client wants TLS.
    SslRequest,
    /// GSSENCRequest: the client wants GSSAPI encryption.
    GssEncRequest,
    /// CancelRequest for the given process id and secret key.
    Cancel {
        /// Backend process id from BackendKeyData.
        pid: u32,
        /// Secret key from BackendKeyData.
        key: u32,
    },
    /// StartupMessage with its protocol version and parameters.
    Startup {
        /// Requested protocol version (`major << 16 | minor`).
        version: u32,
        /// Parameter name/value pairs (user, database, ...).
        params: Vec<(String, String)>,
    },
}

/// Why a first packet could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The length field is below 8 or above [`MAX_STARTUP_PACKET_LENGTH`].
    #[error("invalid startup packet length {0}")]
    BadLength(u32),
    /// The parameter list is not NUL-terminated pairs.
    #[error("malformed startup packet")]
    Malformed,
}

/// Returns how many bytes the first packet in `buf` needs in total, once
/// its 4-byte length is available; `Ok(None)` when fewer than 4 bytes arrived.
///
/// # Errors
/// [`StartupError::BadLength`] when the length is out of range.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(8..=MAX_STARTUP_PACKET_LENGTH as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok(Some(len as usize))
}

/// Parses one complete first packet (length prefix included).
///
/// # Errors
/// [`StartupError`] for a packet that is not a valid first packet.
pub fn parse(packet: &[u8]) -> Result<FirstPacket, StartupError> {
    let len = packet_len(packet)?.ok_or(StartupError::Malformed)?;
    if packet.len() != len {
        return Err(StartupError::Malformed);
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE if body.is_empty() => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE if body.is_empty() => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if body.len() == 8 => Ok(FirstPacket::Cancel {
            pid: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            key: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            Err(StartupError::Malformed)
        }
        version => Ok(FirstPacket::Startup {
            version,
            params: parse_params(body)?,
        }),
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut parts = body.split(|b| *b == 0);
    let mut params = Vec::new();
    loop {
        let name = parts.next().ok_or(StartupError::Malformed)?;
        if name.is_empty() {
            // The terminating NUL: nothing may follow it.
            return match parts.next() {
                Some([]) if parts.next().is_none() => Ok(params),
                None => Ok(params),
                _ => Err(StartupError::Malformed),
            };
        }
        let value = parts.next().ok_or(StartupError::Malformed)?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn classifies_every_kind() {
        assert_eq!(
            parse(&packet(SSL_REQUEST_CODE, b"")),
            Ok(FirstPacket::SslRequest)
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST_CODE, b"")),
            Ok(FirstPacket::GssEncRequest)
        );
        assert_eq!(
            parse(&packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])),
            Ok(FirstPacket::Cancel { pid: 7, key: 9 })
        );
        assert_eq!(
            parse(&packet(196_608, b"user\0app\0database\0db\0\0")),
            Ok(FirstPacket::Startup {
                version: 196_608,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ],
            })
        );
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert_eq!(packet_len(&[0, 0, 0]), Ok(None));
        assert_eq!(packet_len(&[0, 0, 0, 4]), Err(StartupError::BadLength(4)));
        assert_eq!(
            packet_len(&[0, 1, 0, 0]),
            Err(StartupError::BadLength(65536))
        );
        assert_eq!(
            parse(&packet(196_608, b"user\0app")),
            Err(StartupError::Malformed)
        );
        assert_eq!(
            parse(&packet(CANCEL_REQUEST_CODE, b"x")),
            Err(StartupError::Malformed)
        );
        // Every short prefix of every byte value: no panic.
        for b in 0..=255u8 {
            for n in 0..12 {
                let mut p = vec![0, 0, 0, 12];
                p.extend(std::iter::repeat_n(b, n));
                let _ = parse(&p);
            }
        }
    }
}

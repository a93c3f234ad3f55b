//! The start of a split-port connection: SSL/GSS negotiation (SSLRequest
//! handed back to the caller to start TLS when the port has a certificate,
//! `N` otherwise), CancelRequest, protocol version, then client
//! authentication from the cluster's `users` (SCRAM-SHA-256, -PLUS over TLS,
//! or md5). Generic over the stream so tests drive it through
//! `tokio::io::duplex`.

use crate::auth::{self, Secret, scram};
use crate::protocol::PROTOCOL_3_0;
use crate::protocol::encode::{self, Severity};
use crate::protocol::message::{self, Frontend};
use crate::protocol::sqlstate::{self, SqlState};
use crate::protocol::startup::{self, FirstPacket};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the first packets asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// A session: the startup parameters.
    Session(Vec<(String, String)>),
    /// A CancelRequest for pgvane's (pid, key).
    Cancel(u32, u32),
    /// An SSLRequest on a port that offers TLS: the caller answers `S`,
    /// runs the TLS handshake and calls [`handshake`] again.
    StartTls,
}

/// What [`handshake`] does with an SSLRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOffer {
    /// Answer `N`: the port has no certificate.
    Refuse,
    /// Return [`Handshake::StartTls`].
    Offer,
    /// TLS is already on: another SSLRequest is refused, as PostgreSQL does.
    Active,
}

/// Why the handshake ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// IO or EOF.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Refused with this SQLSTATE and message (already sent).
    #[error("{1}")]
    Refused(SqlState, String),
}

/// Sends a FATAL ErrorResponse and returns the matching error.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: SqlState,
    text: String,
) -> HandshakeError {
    let mut out = Vec::new();
    encode::error_response(&mut out, Severity::Fatal, code, &text);
    let _ = s.write_all(&out).await;
    HandshakeError::Refused(code, text)
}

/// Reads the first packets. Cancel safe only before the first byte.
///
/// # Errors
/// [`HandshakeError`].
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    tls: TlsOffer,
) -> Result<Handshake, HandshakeError> {
    // One SSLRequest and one GSSENCRequest per connection, as PostgreSQL.
    let (mut ssl_done, mut gss_done) = (tls == TlsOffer::Active, false);
    loop {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        let len = match startup::packet_len(&head) {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => {
                return Err(refuse(
                    s,
                    sqlstate::PROTOCOL_VIOLATION,
                    "invalid startup packet length".into(),
                )
                .await);
            }
        };
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&head);
        s.read_exact(&mut packet[4..]).await?;
        match startup::parse(&packet) {
            Ok(request @ (FirstPacket::SslRequest | FirstPacket::GssEncRequest)) => {
                let done = if request == FirstPacket::SslRequest {
                    &mut ssl_done
                } else {
                    &mut gss_done
                };
                if std::mem::replace(done, true) {
                    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
                    let text = format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                        code >> 16,
                        code & 0xffff
                    );
                    return Err(refuse(s, sqlstate::PROTOCOL_VIOLATION, text).await);
                }
                if request == FirstPacket::SslRequest && tls == TlsOffer::Offer {
                    return Ok(Handshake::StartTls);
                }
                s.write_all(b"N").await?;
            }
            Ok(FirstPacket::Cancel { pid, key }) => return Ok(Handshake::Cancel(pid, key)),
            Ok(FirstPacket::Startup { version, params }) => {
                if version >> 16 != 3 {
                    let text = format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        version >> 16,
                        version & 0xffff
                    );
                    return Err(refuse(s, sqlstate::PROTOCOL_VIOLATION, text).await);
                }
                let unknown: Vec<&str> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.as_str())
                    .collect();
                if version != PROTOCOL_3_0 || !unknown.is_empty() {
                    let mut out = Vec::new();
                    encode::negotiate_protocol_version(&mut out, 0, &unknown);
                    s.write_all(&out).await?;
                }
                let params = params
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                return Ok(Handshake::Session(params));
            }
            Err(e) => {
                return Err(refuse(
                    s,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {e}"),
                )
                .await);
            }
        }
    }
}

/// Who is logging in: a configured user's secret, or the mock secret of
/// an unknown name (see [`auth::mock_secret`]) that no answer matches.
#[derive(Debug, Clone, Copy)]
pub enum Login<'a> {
    /// A configured user.
    Known(&'a Secret),
    /// An unknown user, asked for this mock secret.
    Unknown(&'a Secret),
}

/// Authenticates `user`. An unknown user goes through the same exchange
/// with a mock secret (same method, same work, a stable salt), then gets
/// the same error as a wrong password. `binding` is the certificate's
/// `tls-server-end-point` data on a TLS connection: SCRAM-SHA-256-PLUS is
/// then offered first, as PostgreSQL does. Sends AuthenticationOk on success
/// and returns the keys a SCRAM client proved (for SCRAM pass-through).
///
/// # Errors
/// [`HandshakeError::Refused`] with 28P01 for a wrong password or unknown user.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
    login: Login<'_>,
    binding: Option<&[u8]>,
) -> Result<Option<scram::ScramKeys>, HandshakeError> {
    let mut keys = None;
    let fail = format!("password authentication failed for user \"{user}\"");
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let (secret, known) = match login {
        Login::Known(s) => (s, true),
        Login::Unknown(s) => (s, false),
    };
    match secret {
        Secret::Md5(stored) => {
            let salt = auth::random_bytes::<4>();
            encode::auth(&mut out, 5, &salt);
            s.write_all(&out).await?;
            let answer = read_password(s, &mut buf).await?;
            let got = answer.strip_suffix(&[0][..]).unwrap_or(&answer);
            if got != auth::md5_expected(stored, salt).as_bytes() || !known {
                return Err(refuse(s, sqlstate::INVALID_PASSWORD, fail).await);
            }
        }
        Secret::Scram(verifier) => {
            let offer: &[u8] = if binding.is_some() {
                b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
            } else {
                b"SCRAM-SHA-256\0\0"
            };
            encode::auth(&mut out, 10, offer);
            s.write_all(&out).await?;
            let initial = read_password(s, &mut buf).await?;
            let mut pos = 0;
            let mech = message::cstr(&initial, &mut pos).unwrap_or("");
            let chosen = match (mech, binding) {
                ("SCRAM-SHA-256", None) => Some(scram::Binding::Unavailable),
                ("SCRAM-SHA-256", Some(_)) => Some(scram::Binding::Declined),
                ("SCRAM-SHA-256-PLUS", Some(data)) => Some(scram::Binding::Selected(data)),
                _ => None,
            };
            let Some(chosen) = chosen.filter(|_| initial.len() >= pos + 4) else {
                return Err(refuse(
                    s,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("unsupported SASL mechanism \"{mech}\""),
                )
                .await);
            };
            let data = &initial[pos + 4..];
            let mut server = scram::Server::with_binding(verifier, auth::nonce(), chosen);
            let first = match server.client_first(data) {
                Ok(f) => f,
                Err(e) => return Err(refuse(s, sqlstate::PROTOCOL_VIOLATION, e.to_string()).await),
            };
            out.clear();
            encode::auth(&mut out, 11, first.as_bytes());
            s.write_all(&out).await?;
            let fin = read_password(s, &mut buf).await?;
            match server.client_final(&fin) {
                Ok(sig) if known => {
                    out.clear();
                    encode::auth(&mut out, 12, sig.as_bytes());
                    s.write_all(&out).await?;
                    keys = server.keys();
                }
                Ok(_) | Err(scram::ScramError::WrongPassword) => {
                    return Err(refuse(s, sqlstate::INVALID_PASSWORD, fail).await);
                }
                Err(e) => return Err(refuse(s, sqlstate::PROTOCOL_VIOLATION, e.to_string()).await),
            }
        }
    }
    out.clear();
    encode::auth(&mut out, 0, &[]);
    s.write_all(&out).await?;
    Ok(keys)
}

async fn read_password<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, HandshakeError> {
    let m = match message::read_message_max(s, buf, message::MAX_AUTH_MESSAGE_LEN).await {
        Ok(m) => m,
        Err(message::ReadError::Io(e)) => return Err(e.into()),
        Err(message::ReadError::BadLength(len)) => {
            return Err(refuse(
                s,
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid message length {len} during authentication"),
            )
            .await);
        }
        Err(e) => {
            return Err(HandshakeError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                e.to_string(),
            )));
        }
    };
    match Frontend::parse(&m) {
        Some(Frontend::Password(data)) => Ok(data.to_vec()),
        _ => Err(refuse(
            s,
            sqlstate::PROTOCOL_VIOLATION,
            format!("expected a password message, got '{}'", m.tag() as char),
        )
        .await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ssl_then_startup() {
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Refuse).await.unwrap() });
        c.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
        let mut n = [0u8; 1];
        c.read_exact(&mut n).await.unwrap();
        assert_eq!(&n, b"N");
        let mut out = Vec::new();
        encode::startup(&mut out, &[("user", "app"), ("database", "db")]);
        c.write_all(&out).await.unwrap();
        assert_eq!(
            task.await.unwrap(),
            Handshake::Session(vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into())
            ])
        );
    }

    #[tokio::test]
    async fn cancel_and_bad_packets() {
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Refuse).await.unwrap() });
        let mut out = Vec::new();
        encode::cancel_request(&mut out, 7, 9);
        c.write_all(&out).await.unwrap();
        assert_eq!(task.await.unwrap(), Handshake::Cancel(7, 9));

        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Refuse).await });
        c.write_all(&[0, 0, 0, 2]).await.unwrap();
        assert!(
            matches!(task.await.unwrap(), Err(HandshakeError::Refused(code, _)) if code == sqlstate::PROTOCOL_VIOLATION)
        );
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply[0], b'E');
    }

    #[tokio::test]
    async fn a_second_ssl_request_is_refused_like_postgresql() {
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Refuse).await });
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        c.write_all(&ssl).await.unwrap();
        let mut n = [0u8; 1];
        c.read_exact(&mut n).await.unwrap();
        c.write_all(&ssl).await.unwrap();
        assert!(matches!(
            task.await.unwrap(),
            Err(HandshakeError::Refused(code, ref text)) if code == sqlstate::PROTOCOL_VIOLATION && text.contains("1234.5679")
        ));
    }

    #[tokio::test]
    async fn an_oversized_password_message_is_refused_without_reserving_it() {
        let (mut c, mut s) = tokio::io::duplex(1 << 16);
        let secret = Secret::Md5(format!("md5{}", "0".repeat(32)));
        let task =
            tokio::spawn(
                async move { authenticate(&mut s, "app", Login::Known(&secret), None).await },
            );
        let mut req = [0u8; 13];
        c.read_exact(&mut req).await.unwrap();
        assert_eq!(req[0], b'R');
        // 'p' announcing 200 MB, then a few bytes of it.
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&200_000_000u32.to_be_bytes());
        msg.extend_from_slice(b"abc");
        c.write_all(&msg).await.unwrap();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("refused at once, not after 200 MB")
            .unwrap();
        assert!(matches!(
            result,
            Err(HandshakeError::Refused(code, _)) if code == sqlstate::PROTOCOL_VIOLATION
        ));
    }

    #[tokio::test]
    async fn protocol_3_2_gets_negotiate() {
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Refuse).await.unwrap() });
        let mut out = Vec::new();
        encode::startup(&mut out, &[("user", "app"), ("_pq_.x", "1")]);
        out[4..8].copy_from_slice(&((3u32 << 16) | 2).to_be_bytes());
        c.write_all(&out).await.unwrap();
        assert_eq!(
            task.await.unwrap(),
            Handshake::Session(vec![("user".into(), "app".into())])
        );
        let mut head = [0u8; 1];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"v");
    }

    #[tokio::test]
    async fn scram_with_tokio_postgres_client_logic() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let secret = Secret::from_config("pw").unwrap();
        for (password, ok) in [("pw", true), ("nope", false)] {
            let (mut c, mut s) = tokio::io::duplex(4096);
            let sec = secret.clone();
            let task =
                tokio::spawn(
                    async move { authenticate(&mut s, "app", Login::Known(&sec), None).await },
                );
            let mut buf = BytesMut::new();
            let m = message::read_message(&mut c, &mut buf).await.unwrap();
            assert_eq!(m.tag(), b'R');
            let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let mut out = Vec::new();
            encode::sasl_initial(&mut out, "SCRAM-SHA-256", scram.message());
            c.write_all(&out).await.unwrap();
            let m = message::read_message(&mut c, &mut buf).await.unwrap();
            scram.update(&m.body()[4..]).unwrap();
            out.clear();
            encode::password(&mut out, scram.message());
            c.write_all(&out).await.unwrap();
            let m = message::read_message(&mut c, &mut buf).await.unwrap();
            if ok {
                assert_eq!(&m.body()[..4], &12i32.to_be_bytes());
                scram.finish(&m.body()[4..]).unwrap();
                task.await.unwrap().unwrap();
            } else {
                assert_eq!(m.tag(), b'E');
                assert!(String::from_utf8_lossy(m.body()).contains("28P01"));
                assert!(task.await.unwrap().is_err());
            }
        }
    }

    #[tokio::test]
    async fn an_ssl_request_is_handed_back_when_tls_is_offered() {
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { handshake(&mut s, TlsOffer::Offer).await.unwrap() });
        c.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
        assert_eq!(task.await.unwrap(), Handshake::StartTls);
        // Nothing was answered: the caller sends 'S' and starts TLS.
        drop(c);
    }

    /// One SCRAM attempt with a wrong password: (mechanisms, salt, error text).
    async fn scram_attempt(user: &str, login: Login<'static>) -> (Vec<u8>, String, String) {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let (mut c, mut s) = tokio::io::duplex(4096);
        let name = user.to_owned();
        let task = tokio::spawn(async move { authenticate(&mut s, &name, login, None).await });
        let mut buf = BytesMut::new();
        let m = message::read_message(&mut c, &mut buf).await.unwrap();
        let mechanisms = m.body()[4..].to_vec();
        let mut scram = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
        let mut out = Vec::new();
        encode::sasl_initial(&mut out, "SCRAM-SHA-256", scram.message());
        c.write_all(&out).await.unwrap();
        let m = message::read_message(&mut c, &mut buf).await.unwrap();
        let first = String::from_utf8_lossy(&m.body()[4..]).into_owned();
        let salt = first
            .split(',')
            .find_map(|p| p.strip_prefix("s="))
            .unwrap()
            .to_owned();
        scram.update(&m.body()[4..]).unwrap();
        out.clear();
        encode::password(&mut out, scram.message());
        c.write_all(&out).await.unwrap();
        let m = message::read_message(&mut c, &mut buf).await.unwrap();
        assert_eq!(m.tag(), b'E');
        let text = String::from_utf8_lossy(m.body()).replace(user, "USER");
        assert!(task.await.unwrap().is_err());
        (mechanisms, salt, text)
    }

    #[tokio::test]
    async fn an_unknown_user_cannot_be_told_from_a_known_one() {
        static KNOWN: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
        static GHOST: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
        let known = KNOWN.get_or_init(|| Secret::from_config("pw").unwrap());
        let ghost = GHOST.get_or_init(|| auth::mock_secret("ghost", false));
        let (km, ksalt, kerr) = scram_attempt("app", Login::Known(known)).await;
        let (gm, gsalt, gerr) = scram_attempt("ghost", Login::Unknown(ghost)).await;
        let (_, gsalt2, _) = scram_attempt("ghost", Login::Unknown(ghost)).await;
        assert_eq!(km, gm, "same mechanisms");
        assert_eq!(kerr, gerr, "same error");
        assert_eq!(
            gsalt, gsalt2,
            "an unknown name keeps its salt, like a real user"
        );
        assert_eq!(ksalt.len(), gsalt.len());
    }

    #[tokio::test]
    async fn md5_login() {
        let secret = Secret::Md5(auth::md5_stored("app", "pw"));
        let (mut c, mut s) = tokio::io::duplex(4096);
        let task =
            tokio::spawn(
                async move { authenticate(&mut s, "app", Login::Known(&secret), None).await },
            );
        let mut buf = BytesMut::new();
        let m = message::read_message(&mut c, &mut buf).await.unwrap();
        let salt: [u8; 4] = m.body()[4..8].try_into().unwrap();
        let mut data =
            postgres_protocol::authentication::md5_hash(b"app", b"pw", salt).into_bytes();
        data.push(0);
        let mut out = Vec::new();
        encode::password(&mut out, &data);
        c.write_all(&out).await.unwrap();
        task.await.unwrap().unwrap();
    }
}

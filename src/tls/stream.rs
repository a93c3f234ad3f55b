//! One byte-stream type for both sides of pgvane's PostgreSQL traffic:
//! a socket in plain, or TLS over it (rustls as the client of a node, as
//! the server of a client). Owns the choice and the delegation of reads and
//! writes only; the socket type `S` and its extras (moving a node's socket
//! between workers, a client's readiness reads) stay with the side using it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsStream;

/// A connection on socket `S`, plain or TLS.
pub enum MaybeTls<S> {
    /// Plain bytes on the socket.
    Plain(S),
    /// TLS over the socket, pgvane as client or as server.
    Tls(Box<TlsStream<S>>),
    /// A TLS handshake took the socket and failed: reads see EOF, writes
    /// fail.
    Closed,
}

impl<S> std::fmt::Debug for MaybeTls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Plain",
            Self::Tls(_) => "Tls",
            Self::Closed => "Closed",
        })
    }
}

impl<S> MaybeTls<S> {
    /// Whether the connection is encrypted.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The socket under the connection, `None` once [`MaybeTls::Closed`].
    #[must_use]
    pub fn socket(&self) -> Option<&S> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(t) => Some(t.get_ref().0),
            Self::Closed => None,
        }
    }

    /// The socket under the connection, mutably.
    pub fn socket_mut(&mut self) -> Option<&mut S> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(t) => Some(t.get_mut().0),
            Self::Closed => None,
        }
    }

    /// The peer's leaf certificate (DER), when TLS is on and the peer sent
    /// one (a node always does).
    #[must_use]
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(t) => t
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(AsRef::as_ref),
            _ => None,
        }
    }

    /// The ALPN protocol both ends of the TLS session agreed on.
    #[must_use]
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTls<S> {
    /// Runs a TLS handshake as the server on the plain socket. On failure
    /// the stream is [`MaybeTls::Closed`].
    ///
    /// # Errors
    /// The handshake's IO or TLS error, or TLS already on.
    pub async fn start_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let Self::Plain(socket) = std::mem::replace(self, Self::Closed) else {
            return Err(io::Error::other("TLS is already on"));
        };
        let tls = acceptor.accept(socket).await?;
        *self = Self::Tls(Box::new(tls.into()));
        Ok(())
    }
}

impl<S> From<tokio_rustls::client::TlsStream<S>> for MaybeTls<S> {
    fn from(tls: tokio_rustls::client::TlsStream<S>) -> Self {
        Self::Tls(Box::new(tls.into()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_delegates_and_closed_is_eof() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = MaybeTls::Plain(a);
        assert!(!s.is_tls() && s.socket().is_some() && s.peer_certificate().is_none());
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        let mut closed: MaybeTls<tokio::io::DuplexStream> = MaybeTls::Closed;
        assert_eq!(closed.read(&mut got).await.unwrap(), 0);
        assert!(closed.write_all(b"x").await.is_err());
        assert!(closed.socket().is_none());
    }
}

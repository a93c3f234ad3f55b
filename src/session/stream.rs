//! A split-port client's byte stream: plain TCP, or TLS over it after an
//! SSLRequest or a direct TLS handshake. Reads of a plain stream wait for
//! readiness and then read what is there (no buffer held while idle); a TLS
//! stream reads through rustls, which holds its own record buffer.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The client connection, plain or TLS.
pub(super) enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// A TLS handshake took the socket and failed: reads see EOF.
    Closed,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Plain",
            Self::Tls(_) => "Tls",
            Self::Closed => "Closed",
        })
    }
}

impl ClientStream {
    /// Whether the client speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Runs a TLS handshake on the plain socket. On failure the stream is
    /// [`ClientStream::Closed`].
    ///
    /// # Errors
    /// The handshake's IO or TLS error.
    pub(super) async fn start_tls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> io::Result<()> {
        let Self::Plain(tcp) = std::mem::replace(self, Self::Closed) else {
            return Err(io::Error::other("TLS is already on"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Self::Tls(Box::new(tls));
        Ok(())
    }

    /// The ALPN protocol the TLS client and pgvane agreed on.
    pub(super) fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Waits until the client sent something (or left), then appends what
    /// arrived to `buf`. `Ok(0)` is EOF; a plain socket may report
    /// `WouldBlock` after a spurious wake-up. Cancel safe: nothing is lost
    /// when the future is dropped before it completes.
    pub(super) async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => {
                // No buffer is reserved before the socket is readable, so
                // an idle client holds none.
                tcp.readable().await?;
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(8192);
                }
                // `read_buf`, not `try_read_buf`: after a short read tokio
                // forgets the readiness, so the next read waits in the
                // reactor instead of failing once with EAGAIN (one wasted
                // `recvfrom` per request).
                tcp.read_buf(buf).await
            }
            Self::Tls(tls) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(8192);
                }
                tls.read_buf(buf).await
            }
            Self::Closed => Ok(0),
        }
    }
}

impl AsyncRead for ClientStream {
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

impl AsyncWrite for ClientStream {
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

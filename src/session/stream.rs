//! A split-port client's byte stream: the shared plain-or-TLS
//! [`MaybeTls`] over the accepted socket, TLS after an SSLRequest or a
//! direct TLS handshake. Adds the readiness read: a plain stream waits for
//! readiness and then reads what is there (no buffer held while idle); a
//! TLS stream reads through rustls, which holds its own record buffer.

use crate::tls::stream::MaybeTls;
use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// The client connection, plain or TLS ([`MaybeTls::Closed`] after a
/// failed TLS handshake).
pub(super) type ClientStream = MaybeTls<TcpStream>;

impl MaybeTls<TcpStream> {
    /// Waits until the client sent something (or left), then appends what
    /// arrived to `buf`. `Ok(0)` is EOF; a plain socket may report
    /// `WouldBlock` after a spurious wake-up. Cancel safe: nothing is lost
    /// when the future is dropped before it completes.
    pub(super) async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        // A poll function, not nested futures: the future holds no state
        // of its own, and every idle session's task holds this one.
        std::future::poll_fn(|cx| self.poll_read_some(cx, buf)).await
    }

    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(tcp) => {
                // No buffer is reserved before the socket is readable, so
                // an idle client holds none.
                std::task::ready!(tcp.poll_read_ready(cx))?;
                if buf.capacity() == 0 {
                    *buf = super::buffers::take_read();
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(8192);
                }
                // `poll_read`, not `try_read_buf`: after a short read tokio
                // forgets the readiness, so the next read waits in the
                // reactor instead of failing once with EAGAIN (one wasted
                // `recvfrom` per request).
                tokio_util::io::poll_read_buf(Pin::new(tcp), cx, buf)
            }
            Self::Tls(tls) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(8192);
                }
                tokio_util::io::poll_read_buf(Pin::new(tls.as_mut()), cx, buf)
            }
            Self::Closed => Poll::Ready(Ok(0)),
        }
    }
}

//! A backend's byte stream: plain TCP, or TLS over it after the server
//! answered pgvane's SSLRequest with `S` (the shared [`MaybeTls`] type),
//! over a socket that knows its worker. Both arms are driven by polling
//! (one `poll_fn` writes queued bytes and reads), so a pipeline is written
//! while replies arrive whichever the stream is. The socket remembers which
//! worker thread's reactor it is registered with, so a pooled backend can
//! move to the worker of the session that borrows it (`rehome`).

use crate::tls::stream::MaybeTls;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A node socket and the thread whose reactor it is registered with.
#[derive(Debug)]
pub struct HomedTcp {
    /// `None` only after a failed [`HomedTcp::rehome`]: the stream is dead.
    tcp: Option<TcpStream>,
    home: std::thread::ThreadId,
}

impl HomedTcp {
    /// Wraps a socket registered by the calling thread's runtime.
    #[must_use]
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp: Some(tcp),
            home: std::thread::current().id(),
        }
    }

    fn get(&self) -> Option<&TcpStream> {
        self.tcp.as_ref()
    }

    fn pinned(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket lost on rehome"))
    }

    /// Moves the socket's registration to the calling thread's runtime when
    /// it was registered by another one, so its readiness wakes this
    /// thread directly instead of another worker that then wakes this one.
    fn rehome(&mut self) -> io::Result<()> {
        let here = std::thread::current().id();
        if self.home == here {
            return Ok(());
        }
        let Some(tcp) = self.tcp.take() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "socket lost on rehome",
            ));
        };
        self.tcp = Some(TcpStream::from_std(tcp.into_std()?)?);
        self.home = here;
        Ok(())
    }
}

impl AsyncRead for HomedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for HomedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().pinned() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The connection to a PostgreSQL node, plain or TLS: the one stream type
/// of both sides ([`MaybeTls`]) over a [`HomedTcp`]. pgvane never builds
/// its [`MaybeTls::Closed`] for a node.
pub type ServerStream = MaybeTls<HomedTcp>;

impl MaybeTls<HomedTcp> {
    fn tcp(&self) -> Option<&TcpStream> {
        self.socket().and_then(HomedTcp::get)
    }

    /// The thread whose runtime drives this socket (the calling thread's
    /// when there is no socket).
    #[must_use]
    pub fn home(&self) -> std::thread::ThreadId {
        self.socket()
            .map_or_else(|| std::thread::current().id(), |s| s.home)
    }

    /// Registers the socket with the calling thread's runtime when another
    /// one drives it (two `epoll_ctl` calls, once per move).
    ///
    /// # Errors
    /// When the socket cannot be moved; it is then dead.
    pub fn rehome(&mut self) -> io::Result<()> {
        match self.socket_mut() {
            Some(s) => s.rehome(),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no socket")),
        }
    }

    /// True when nothing waits to be read on the socket: no bytes, no EOF
    /// (for TLS that covers records rustls has not read yet). Peeks, so it
    /// consumes nothing and never waits.
    #[must_use]
    pub fn silent(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        self.tcp()
            .is_some_and(|t| t.poll_peek(&mut cx, &mut rb).is_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_socket_moves_to_the_worker_that_uses_it_and_keeps_working() {
        // Runtime A (this thread) opens the connection; runtime B, on its
        // own thread, takes the stream over as a borrowing worker would.
        let a = runtime();
        let (stream, server) = a.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = l.accept().await.unwrap();
            (
                ServerStream::Plain(HomedTcp::new(client)),
                server.into_std().unwrap(),
            )
        });
        let opener = std::thread::current().id();
        assert_eq!(stream.home(), opener);
        let moved = std::thread::spawn(move || {
            let mut stream = stream;
            runtime().block_on(async move {
                let mut server = TcpStream::from_std(server).unwrap();
                stream.rehome().unwrap();
                assert_eq!(stream.home(), std::thread::current().id());
                stream.write_all(b"ping").await.unwrap();
                let mut got = [0u8; 4];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"ping");
                server.write_all(b"pong").await.unwrap();
                stream.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"pong");
                // A second rehome on the same worker changes nothing.
                stream.rehome().unwrap();
                stream.home()
            })
        })
        .join()
        .unwrap();
        assert_ne!(moved, opener);
        drop(a);
    }
}

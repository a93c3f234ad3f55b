//! Cancelling a query on a node: a CancelRequest on a fresh connection to
//! the node, best effort (the server answers nothing). Knows nothing of
//! sessions; the session's cancel forwarding calls it with the key the
//! backend's login received.

use crate::protocol::encode;
use crate::topology::NodeAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends a CancelRequest for backend `key` to `addr` (best effort).
pub async fn cancel(addr: &NodeAddr, key: (u32, u32)) {
    let work = async {
        let mut s = TcpStream::connect((&*addr.host, addr.port)).await?;
        let mut out = Vec::new();
        encode::cancel_request(&mut out, key.0, key.1);
        s.write_all(&out).await?;
        s.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::warn!(%addr, error = %e, "cancel request failed");
    }
}

//! pgvane's own BackendKeyData: each split session gets a random key, and a
//! CancelRequest carrying it is sent to the backend that runs the session's
//! query right now. With `peer_id` set, the key's process-id field carries
//! it, so an instance that receives a key another instance issued (behind
//! a balancer) forwards the request to that instance (`peers`). The
//! registry belongs to the port, not to a session context, so it survives
//! reloads that rebuild the context.

use crate::topology::NodeAddr;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Where a running query can be cancelled: node and backend key.
pub(super) type CancelTarget = Arc<Mutex<Option<(NodeAddr, (u32, u32))>>>;

/// pgvane-issued BackendKeyData → the backend a client's query runs on.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(u32, u32), CancelTarget>>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u32), CancelTarget>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh key and its (empty) target slot; `peer` (this instance's
    /// `peer_id`) goes in the key's top bits.
    pub(super) fn register(&self, peer: Option<u16>) -> ((u32, u32), CancelTarget) {
        let slot: CancelTarget = Arc::new(Mutex::new(None));
        loop {
            let b = crate::auth::random_bytes::<8>();
            let key = (
                with_peer(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), peer),
                u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            );
            let mut m = self.lock();
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(key) {
                e.insert(Arc::clone(&slot));
                return (key, slot);
            }
        }
    }

    /// Forgets a session's key.
    pub(super) fn remove(&self, key: (u32, u32)) {
        self.lock().remove(&key);
    }

    /// Keys registered now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no key is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forwards a cancel for `key` to the backend running its query, if
    /// this instance issued the key; else, when the key names another
    /// instance of `peers`, to that instance on `port`. Says where it went.
    pub(super) async fn cancel(&self, key: (u32, u32), peers: &Peers<'_>, port: u16) -> Sent {
        // A forwarded key has hops taken off its TTL: look it up as issued.
        let issued = (key.0 | TTL_MASK, key.1);
        let found = {
            let map = self.lock();
            map.get(&key).or_else(|| map.get(&issued)).cloned()
        };
        let (known, target) = match found {
            Some(t) => (
                true,
                t.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
            None => (false, None),
        };
        if let Some((addr, backend_key)) = target {
            crate::backend::cancel(&addr, backend_key).await;
            return Sent::Backend;
        }
        if known {
            return Sent::Idle;
        }
        match (peers.owner(key.0), hop(key.0)) {
            (Some(host), Some(next)) => {
                let peer = NodeAddr {
                    host: host.into(),
                    port,
                };
                crate::backend::cancel(&peer, (next, key.1)).await;
                Sent::Peer
            }
            (Some(_), None) => Sent::HopLimit,
            (None, _) => Sent::Unknown,
        }
    }
}

/// Where a CancelRequest went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// To the backend running the session's query.
    Backend,
    /// Nowhere: the session runs no query now.
    Idle,
    /// To the instance that issued the key.
    Peer,
    /// Nowhere: no session here has the key, nor does it name a peer.
    Unknown,
    /// Nowhere: the key names a peer but has been forwarded as often as
    /// its TTL allows (a `peers` list that points back at itself).
    HopLimit,
}

/// Bits of a key's process-id field below the peer id.
const PEER_SHIFT: u32 = 17;

/// The key's forwarding TTL (bits 15–16), as pgbouncer's: full when
/// issued, one less at each forward, never forwarded at 0.
const TTL_SHIFT: u32 = 15;
const TTL_MASK: u32 = 0b11 << TTL_SHIFT;

/// `random` with `peer` in bits 17–30 and a full TTL in bits 15–16 (bit
/// 31 stays clear: PostgreSQL's process ids are positive), or 31 random
/// bits without a peer.
fn with_peer(random: u32, peer: Option<u16>) -> u32 {
    match peer {
        Some(id) => {
            (u32::from(id) << PEER_SHIFT) & 0x7fff_ffff
                | TTL_MASK
                | (random & ((1 << TTL_SHIFT) - 1))
        }
        None => random & 0x7fff_ffff,
    }
}

/// The process id to forward with one hop taken off the TTL; None when no
/// hop is left.
fn hop(pid: u32) -> Option<u32> {
    let ttl = (pid & TTL_MASK) >> TTL_SHIFT;
    (ttl > 0).then(|| (pid & !TTL_MASK) | ((ttl - 1) << TTL_SHIFT))
}

/// This instance's `peer_id` and the `peers` list, as a cancel reads them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peers<'a> {
    /// This instance's `peer_id`.
    pub(super) own: Option<u16>,
    /// Every instance by `peer_id`.
    pub(super) hosts: &'a BTreeMap<u16, String>,
}

impl Peers<'_> {
    /// The host of the instance that issued a key with this process id,
    /// when it is another listed instance.
    fn owner(&self, pid: u32) -> Option<&str> {
        let own = self.own?;
        let id = u16::try_from(pid >> PEER_SHIFT).ok()?;
        if id == own {
            return None;
        }
        self.hosts.get(&id).map(String::as_str)
    }
}

/// Points a session's cancel slot at a backend, or clears it.
pub(super) fn set(slot: &CancelTarget, target: Option<(NodeAddr, (u32, u32))>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = target;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_peer_id_and_name_their_owner() {
        let hosts: BTreeMap<u16, String> = [
            (1, "10.0.0.1".to_owned()),
            (2, "10.0.0.2".to_owned()),
            (16383, "h".to_owned()),
        ]
        .into();
        for id in [1u16, 2, 16383] {
            let pid = with_peer(u32::MAX, Some(id));
            assert!(pid <= 0x7fff_ffff);
            assert_eq!(pid >> PEER_SHIFT, u32::from(id));
            let me = Peers {
                own: Some(1),
                hosts: &hosts,
            };
            let want = (id != 1).then(|| hosts[&id].as_str());
            assert_eq!(me.owner(pid), want, "key of peer {id}");
        }
        // An unlisted peer, no own id (peers unused), no peer bits.
        let me = Peers {
            own: Some(1),
            hosts: &hosts,
        };
        assert_eq!(me.owner(with_peer(7, Some(3))), None);
        let alone = Peers {
            own: None,
            hosts: &hosts,
        };
        assert_eq!(alone.owner(with_peer(7, Some(2))), None);
        assert!(with_peer(u32::MAX, None) <= 0x7fff_ffff);
    }

    #[test]
    fn forwards_take_hops_off_the_ttl_until_none_is_left() {
        let pid = with_peer(0, Some(2));
        let mut hops = Vec::new();
        let mut p = pid;
        while let Some(next) = hop(p) {
            assert_eq!(next >> PEER_SHIFT, 2, "the peer id stays");
            hops.push(next);
            p = next;
        }
        assert_eq!(hops.len(), 3);
        // Whatever hops were taken, the issued key is the one with a full TTL.
        assert!(hops.iter().all(|h| h | TTL_MASK == pid));
    }

    #[tokio::test]
    async fn a_forwarded_key_is_found_and_a_spent_one_goes_nowhere() {
        let reg = CancelRegistry::default();
        let hosts: BTreeMap<u16, String> = [(2, "127.0.0.1".to_owned())].into();
        let peers = Peers {
            own: Some(1),
            hosts: &hosts,
        };
        let (key, _slot) = reg.register(Some(1));
        let forwarded = (hop(hop(key.0).unwrap_or(0)).unwrap_or(0), key.1);
        assert_eq!(reg.cancel(forwarded, &peers, 1).await, Sent::Idle);
        // A key of peer 2 whose TTL is spent is not forwarded again.
        let spent = with_peer(5, Some(2)) & !TTL_MASK;
        assert_eq!(reg.cancel((spent, 9), &peers, 1).await, Sent::HopLimit);
    }

    #[tokio::test]
    async fn a_registered_key_is_never_forwarded() {
        let reg = CancelRegistry::default();
        let hosts: BTreeMap<u16, String> = [(2, "127.0.0.1".to_owned())].into();
        let (key, _slot) = reg.register(Some(1));
        let peers = Peers {
            own: Some(1),
            hosts: &hosts,
        };
        assert_eq!(reg.cancel(key, &peers, 1).await, Sent::Idle);
        // A key this instance did not issue, of itself: nowhere.
        assert_eq!(
            reg.cancel((with_peer(5, Some(1)), 9), &peers, 1).await,
            Sent::Unknown
        );
    }
}

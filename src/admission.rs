//! Client admission: counts every open client per port, in total and per
//! client address, and says whether a new one fits under `max_clients`
//! (port and global) and `max_clients_per_address`. The counts are released
//! when the [`Ticket`] a client holds is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Client counts shared by every port of the process.
#[derive(Debug, Default)]
pub struct Admissions {
    total: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// The limits a new client is held to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The port's `max_clients`.
    pub port: Option<usize>,
    /// The global `max_clients`.
    pub total: Option<usize>,
    /// The global `max_clients_per_address`.
    pub per_address: Option<usize>,
}

/// Which limit a refused client hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The port's `max_clients`.
    Port,
    /// The global `max_clients`.
    Total,
    /// `max_clients_per_address` for this address.
    Address,
}

/// One client's place in the counts; dropping it releases them. A refused
/// client holds one too, until it has been told (so a flood of refusals
/// is still counted). Owned, so it can move with a relayed client to the
/// thread that relays it.
#[derive(Debug)]
pub struct Ticket {
    all: Arc<Admissions>,
    port: Arc<AtomicUsize>,
    ip: IpAddr,
    /// `None` when the client fits; else the limit it hit.
    pub full: Option<Full>,
}

impl Admissions {
    /// Counts a client from `ip` on a port whose count is `port` and says
    /// whether it fits under `limits`.
    pub fn admit(self: &Arc<Self>, port: &Arc<AtomicUsize>, ip: IpAddr, limits: Limits) -> Ticket {
        let on_port = port.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let from_ip = {
            let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            *n += 1;
            *n
        };
        let over = |limit: Option<usize>, n: usize| limit.is_some_and(|max| n > max);
        let full = if over(limits.port, on_port) {
            Some(Full::Port)
        } else if over(limits.total, total) {
            Some(Full::Total)
        } else if over(limits.per_address, from_ip) {
            Some(Full::Address)
        } else {
            None
        };
        Ticket {
            all: Arc::clone(self),
            port: Arc::clone(port),
            ip,
            full,
        }
    }

    /// Clients open now, all ports together.
    #[must_use]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses with at least one open client.
    #[must_use]
    pub fn addresses(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Full {
    /// What the client is told (SQLSTATE 53300), as PostgreSQL words its
    /// own limit where there is one (split ports, which answer as
    /// PostgreSQL, say so for their port limit too).
    #[must_use]
    pub fn text(self, port: &str, split: bool, ip: IpAddr) -> String {
        match self {
            Self::Port if split => "sorry, too many clients already".to_owned(),
            Self::Port => format!("pgvane: port \"{port}\" has reached max_clients"),
            Self::Total => "sorry, too many clients already".to_owned(),
            Self::Address => {
                format!("pgvane: too many connections from host \"{ip}\" (max_clients_per_address)")
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.port.fetch_sub(1, Ordering::Relaxed);
        self.all.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = self
            .all
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_release() {
        let all = Arc::new(Admissions::default());
        let (p1, p2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let limits = Limits {
            port: Some(2),
            total: Some(3),
            per_address: Some(2),
        };
        let t1 = all.admit(&p1, a, limits);
        let t2 = all.admit(&p1, a, limits);
        assert_eq!((t1.full, t2.full), (None, None));
        assert_eq!(all.admit(&p1, b, limits).full, Some(Full::Port));
        assert_eq!(all.admit(&p2, a, limits).full, Some(Full::Address));
        let t3 = all.admit(&p2, b, limits);
        assert_eq!(t3.full, None);
        assert_eq!(all.admit(&p2, b, limits).full, Some(Full::Total));
        assert_eq!((all.total(), all.addresses()), (3, 2));
        drop((t1, t2, t3));
        assert_eq!((all.total(), all.addresses()), (0, 0));
        assert_eq!(p1.load(Ordering::Relaxed) + p2.load(Ordering::Relaxed), 0);
        assert_eq!(all.admit(&p1, a, Limits::default()).full, None, "no limits");
    }
}

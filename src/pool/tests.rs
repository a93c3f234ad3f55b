//! The pool's accounting: sizes, loans, waits and logins counted however
//! they end.

use super::*;
use crate::backend::BackendSecret;

fn settings(size: usize, acquire_ms: u64) -> PoolSettings {
    PoolSettings {
        size,
        acquire_timeout: Duration::from_millis(acquire_ms),
        idle_timeout: Duration::from_secs(600),
        lifetime: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(3),
        max_prepared: 200,
        socket: SocketOptions::default(),
    }
}

fn key(user: &str) -> PoolKey {
    PoolKey {
        node: NodeAddr {
            host: "127.0.0.1".into(),
            port: 5432,
        },
        creds: Credentials {
            user: user.into(),
            secret: BackendSecret::None,
            database: "d".into(),
        },
    }
}

#[test]
fn an_existing_pool_takes_new_settings_but_keeps_its_size() {
    let set = PoolSet::new(Arc::default());
    let key = key("u");
    let first = set.get(&key, "leader", settings(2, 5000));
    let again = set.get(&key, "leader", settings(9, 100));
    assert!(Arc::ptr_eq(&first, &again));
    let now = **again.settings.load();
    assert_eq!(now, settings(2, 100), "timeouts new, size as created");
    assert_eq!(again.permits.available_permits(), 2);
}

#[test]
fn a_node_counts_the_loans_of_all_its_pools_without_a_lock() {
    let set = PoolSet::new(Arc::default());
    let node = key("a").node;
    let a = set.get(&key("a"), "replica", settings(2, 5000));
    let b = set.get(&key("b"), "replica", settings(2, 5000));
    let loan = |p: &Arc<Pool>| {
        let permit = Arc::clone(&p.permits).try_acquire_owned().unwrap();
        Loan::new(permit, &p.load)
    };
    let one = loan(&a);
    let two = loan(&b);
    assert_eq!((a.node_busy(), b.node_busy(), set.busy(&node)), (2, 2, 2));
    drop(one);
    assert_eq!((a.node_busy(), set.busy(&node)), (1, 1));
    drop(two);
    assert_eq!(set.busy(&node), 0);
    // The node leaves: its count goes; a loan of a closed pool does not
    // reach the count of the node's next pools.
    let old = loan(&a);
    set.retain(|_, _| false);
    assert_eq!(set.busy(&node), 0);
    let c = set.get(&key("a"), "replica", settings(2, 5000));
    assert_eq!((c.node_busy(), a.node_busy()), (0, 1));
    drop(old);
    assert_eq!(c.node_busy(), 0);
}

#[tokio::test]
async fn a_dropped_wait_leaves_no_waiter_counted() {
    let set = PoolSet::new(Arc::default());
    let p = set.get(&key("u"), "replica", settings(1, 5000));
    let held = Loan::new(Arc::clone(&p.permits).try_acquire_owned().unwrap(), &p.load);
    {
        let wait = p.acquire();
        tokio::pin!(wait);
        assert!(futures_util::poll!(wait.as_mut()).is_pending());
        assert_eq!((p.stats().2, p.node_busy()), (1, 2), "a waiter counted");
    }
    assert_eq!((p.stats().2, p.node_busy()), (0, 1), "its wait dropped");
    drop(held);
    assert_eq!(p.node_busy(), 0);
}

#[test]
fn a_pool_opens_no_more_than_its_size() {
    let set = PoolSet::new(Arc::default());
    let p = set.get(&key("u"), "leader", settings(2, 5000));
    assert!(p.reserve(2) && p.reserve(2));
    assert!(!p.reserve(2), "two open of two");
    assert_eq!(p.stats().0, 2);
    p.open.store(1, Ordering::Relaxed);
    Opening(Some(&p)).opened();
    assert_eq!(p.stats().0, 1, "an opened backend stays counted");
    drop(Opening(Some(&p)));
    assert_eq!(p.stats().0, 0, "a login that did not finish is not");
}

/// A pool of a node on `port` of loopback.
fn pool_at(port: u16) -> Arc<Pool> {
    let mut key = key("u");
    key.node.port = port;
    PoolSet::new(Arc::default()).get(&key, "leader", settings(2, 5000))
}

#[tokio::test]
async fn a_failed_or_abandoned_login_leaves_nothing_counted() {
    // Refused: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let p = pool_at(port);
    assert!(p.acquire().await.is_err());
    assert_eq!((p.stats(), p.node_busy()), ((0, 0, 0), 0));
    // Abandoned: the server never answers the startup; the client
    // leaves while the login waits.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = pool_at(silent.local_addr().unwrap().port());
    {
        let login = p.acquire();
        tokio::pin!(login);
        for _ in 0..50 {
            assert!(futures_util::poll!(login.as_mut()).is_pending());
            if p.stats().0 == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!((p.stats().0, p.node_busy()), (1, 1), "the login counted");
    }
    assert_eq!((p.stats(), p.node_busy()), ((0, 0, 0), 0));
}

#[test]
fn a_lent_backend_dropped_unreturned_gives_back_its_count() {
    let p = pool_at(5432);
    assert!(p.reserve(2) && p.reserve(2));
    // Dropped without release or discard (a session or reset task dropped
    // midway, a runtime shutting down).
    drop(Counted::new(&p));
    assert_eq!(p.stats().0, 1, "its count given back");
    // Handed to put_back, which keeps the count with the idle backend.
    Counted::new(&p).handed_back();
    assert_eq!(p.stats().0, 1, "an idle backend stays counted");
}

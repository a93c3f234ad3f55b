//! The tracker's tasks against fake connections: publishing, hurry,
//! single flight per member, the shared read index, the Patroni fallback.

use super::book::tests::{map, primary, replica};
use super::probe::{ConnectError, Monitor, Probe, ProbeError};
use super::*;
use crate::backend::BackendSecret;
use crate::topology::{LiveWal, Lsn, PositionSource};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Scripted members: what each host answers and how often it was asked.
#[derive(Default)]
struct Fake {
    /// Probe answers by host (`host-<member>`).
    probes: Mutex<HashMap<String, Probe>>,
    /// Hosts whose login is refused.
    refuse: Mutex<Vec<String>>,
    /// Probes run, by host.
    count: Mutex<HashMap<String, u64>>,
    /// Probes running now, and the most ever at once on one host.
    running: Mutex<HashMap<String, usize>>,
    most_at_once: AtomicUsize,
    /// Read index queries run, and how long each takes.
    inserts: AtomicU64,
    insert_delay: Mutex<Duration>,
}

struct FakeConn {
    host: String,
    fake: Arc<Fake>,
}

/// The connector the tracker gets: shares one [`Fake`].
#[derive(Clone)]
struct FakeConnect(Arc<Fake>);

impl Connect for FakeConnect {
    type Conn = FakeConn;

    async fn connect(
        &self,
        addr: &NodeAddr,
        _settings: &TrackerSettings,
    ) -> Result<FakeConn, ConnectError> {
        if self
            .0
            .refuse
            .lock()
            .unwrap()
            .iter()
            .any(|h| **h == *addr.host)
        {
            return Err(ConnectError::Login(
                "28P01 password authentication failed".to_owned(),
            ));
        }
        Ok(FakeConn {
            host: addr.host.to_string(),
            fake: Arc::clone(&self.0),
        })
    }
}

impl Monitor for FakeConn {
    async fn probe(&mut self) -> Result<Probe, ProbeError> {
        let f = &self.fake;
        let now = {
            let mut r = f.running.lock().unwrap();
            let n = r.entry(self.host.clone()).or_default();
            *n += 1;
            *n
        };
        f.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_micros(200)).await;
        *f.running.lock().unwrap().get_mut(&self.host).unwrap() -= 1;
        *f.count
            .lock()
            .unwrap()
            .entry(self.host.clone())
            .or_default() += 1;
        f.probes
            .lock()
            .unwrap()
            .get(&self.host)
            .cloned()
            .ok_or_else(|| "no script".to_owned())
    }

    async fn insert_floor(&mut self) -> Result<Floor, ProbeError> {
        let n = self.fake.inserts.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = *self.fake.insert_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        Ok(Floor {
            timeline: 1,
            lsn: Lsn(1000 * n),
        })
    }
}

fn settings(poll_ms: u64, creds: bool) -> TrackerSettings {
    TrackerSettings {
        poll: Duration::from_millis(poll_ms),
        fast_poll: Duration::from_millis(1),
        creds: creds.then(|| Credentials {
            user: "mon".to_owned(),
            secret: BackendSecret::None,
            database: "postgres".to_owned(),
        }),
        security: Arc::new(BackendSecurity::default()),
        connect_timeout: Duration::from_secs(1),
        socket: SocketOptions::default(),
    }
}

struct Lab {
    fake: Arc<Fake>,
    handle: TrackerHandle,
    stop: CancellationToken,
    settings: watch::Sender<Arc<TrackerSettings>>,
    _generation: watch::Sender<u64>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A tracker over `m` whose members `a`, `b`, `c` answer as scripted
/// (`a` the leader), the logins to `refuse` refused.
fn start(poll_ms: u64, creds: bool, m: crate::topology::ClusterMap, refuse: &[&str]) -> Lab {
    let fake = Arc::new(Fake::default());
    fake.refuse
        .lock()
        .unwrap()
        .extend(refuse.iter().map(|r| format!("host-{r}")));
    {
        let mut p = fake.probes.lock().unwrap();
        p.insert("host-a".to_owned(), primary(100, 1));
        p.insert("host-b".to_owned(), replica(90, 1));
        p.insert("host-c".to_owned(), replica(80, 1));
    }
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings(poll_ms, creds)));
    let (gen_tx, gen_rx) = watch::channel(1);
    let stop = CancellationToken::new();
    let handle = spawn_with(
        Arc::new(FakeConnect(Arc::clone(&fake))),
        Inputs {
            cluster: "c".to_owned(),
            map: Arc::new(ArcSwap::from_pointee(m)),
            generation: gen_rx,
            settings: settings_rx,
            metrics: Arc::new(Metrics::new()),
        },
        stop.clone(),
    );
    Lab {
        fake,
        handle,
        stop,
        settings: settings_tx,
        _generation: gen_tx,
    }
}

/// Waits until `f` holds for the published positions, or panics after 5 s.
async fn until(handle: &TrackerHandle, what: &str, f: impl Fn(&Positions) -> bool) {
    let mut rx = handle.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if f(&rx.borrow_and_update()) {
            return;
        }
        // Positions refreshed silently are seen at the next tick.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)),
            rx.changed(),
        )
        .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

fn floor(lsn: u64) -> Floor {
    Floor {
        timeline: 1,
        lsn: Lsn(lsn),
    }
}

#[tokio::test]
async fn positions_are_published_and_follow_replay() {
    let lab = start(5, true, map("a", &["b", "c"]), &[]);
    until(&lab.handle, "b at 90", |p| p.replayed("b", &floor(90))).await;
    let p = lab.handle.current();
    assert_eq!((p.epoch, p.leader_timeline), (1, Some(1)));
    assert_eq!(p.get("b").unwrap().source, PositionSource::Sql);
    lab.fake
        .probes
        .lock()
        .unwrap()
        .insert("host-b".to_owned(), replica(150, 1));
    until(&lab.handle, "b at 150", |p| p.replayed("b", &floor(150))).await;
    // A member whose polls fail loses its position.
    lab.fake.probes.lock().unwrap().remove("host-c");
    until(&lab.handle, "c gone", |p| p.get("c").is_none()).await;
}

#[tokio::test]
async fn hurry_polls_fast_one_query_at_a_time_per_member() {
    let lab = start(10_000, true, map("a", &["b"]), &[]);
    until(&lab.handle, "first poll", |p| p.get("b").is_some()).await;
    let probes = |lab: &Lab| {
        lab.fake
            .count
            .lock()
            .unwrap()
            .get("host-b")
            .copied()
            .unwrap_or(0)
    };
    let at_rest = probes(&lab);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(probes(&lab), at_rest, "no poll before `poll` at rest");
    let guard = lab.handle.hurry();
    let second = lab.handle.hurry();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hurried = probes(&lab);
    assert!(hurried >= at_rest + 10, "{at_rest} then {hurried} polls");
    // 100 ms at >= 1 ms apart: at most about 100 polls.
    assert!(hurried <= at_rest + 110, "{at_rest} then {hurried} polls");
    drop(guard);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(probes(&lab) > hurried, "one guard still lives");
    drop(second);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let calm = probes(&lab);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(probes(&lab), calm, "back at rest");
    assert_eq!(lab.fake.most_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hurried_polls_wake_subscribers_resting_ones_do_not() {
    let lab = start(2, true, map("a", &["b"]), &[]);
    until(&lab.handle, "b", |p| p.get("b").is_some()).await;
    let mut rx = lab.handle.subscribe();
    let seen = Arc::clone(&rx.borrow_and_update());
    let woke = tokio::time::timeout(Duration::from_millis(60), rx.changed()).await;
    assert!(
        woke.is_err(),
        "nothing changed but polling times: {seen:?} then {:?}",
        rx.borrow()
    );
    let before = lab.handle.current().get("b").unwrap().polled_at;
    assert!(lab.handle.current().get("b").unwrap().polled_at >= before);
    let _guard = lab.handle.hurry();
    // Each poll of a or b wakes the waiter; b's next one shows a newer time.
    let fresh = async {
        loop {
            rx.changed().await.unwrap();
            if rx.borrow_and_update().get("b").unwrap().polled_at > before {
                return;
            }
        }
    };
    let woke = tokio::time::timeout(Duration::from_millis(500), fresh).await;
    assert!(woke.is_ok(), "a waiter sees every poll");
}

#[tokio::test]
async fn callers_share_the_read_index_query_sent_after_they_arrived() {
    let lab = start(1000, true, map("a", &["b"]), &[]);
    *lab.fake.insert_delay.lock().unwrap() = Duration::from_millis(50);
    let arrival = Instant::now();
    let first = {
        let h = lab.handle.clone();
        tokio::spawn(async move { h.leader_lsn_after(arrival).await })
    };
    // Let the first query go out, then pile callers onto it.
    while lab.fake.inserts.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let same: Vec<_> = (0..8)
        .map(|_| {
            let h = lab.handle.clone();
            tokio::spawn(async move { h.leader_lsn_after(arrival).await })
        })
        .collect();
    let later_arrival = Instant::now();
    let later = {
        let h = lab.handle.clone();
        tokio::spawn(async move { h.leader_lsn_after(later_arrival).await })
    };
    assert_eq!(first.await.unwrap(), Ok(floor(1000)));
    for s in same {
        assert_eq!(s.await.unwrap(), Ok(floor(1000)));
    }
    assert_eq!(
        later.await.unwrap(),
        Ok(floor(2000)),
        "waits for the next query"
    );
    assert_eq!(lab.fake.inserts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_credentials_positions_come_from_patroni_and_the_read_index_refuses() {
    let mut m = map("a", &["b"]);
    m.updated_at = std::time::SystemTime::now() + Duration::from_secs(3600);
    for (member, lsn) in m.members.iter_mut().zip([100, 70]) {
        member.live = Some(LiveWal {
            lsn,
            timeline: Some(1),
            streaming: true,
            postmaster_start_time: None,
        });
    }
    let lab = start(5, false, m, &[]);
    until(&lab.handle, "b from Patroni", |p| {
        p.replayed("b", &floor(70))
    })
    .await;
    assert_eq!(
        lab.handle.current().get("b").unwrap().source,
        PositionSource::Patroni
    );
    assert_eq!(
        lab.handle.leader_lsn_after(Instant::now()).await,
        Err(TrackerError::NoMonitorUser)
    );
    assert!(lab.fake.count.lock().unwrap().is_empty(), "no SQL polls");
}

#[tokio::test]
async fn a_refused_login_falls_back_to_patroni_for_that_member() {
    let mut m = map("a", &["b", "c"]);
    m.updated_at = std::time::SystemTime::now() + Duration::from_secs(3600);
    m.members[2].live = Some(LiveWal {
        lsn: 60,
        timeline: Some(1),
        streaming: true,
        postmaster_start_time: None,
    });
    let lab = start(5, true, m, &["c"]);
    until(&lab.handle, "both replicas", |p| {
        p.replayed("b", &floor(90)) && p.replayed("c", &floor(60))
    })
    .await;
    let p = lab.handle.current();
    assert_eq!(p.get("b").unwrap().source, PositionSource::Sql);
    assert_eq!(p.get("c").unwrap().source, PositionSource::Patroni);
}

#[test]
fn the_handle_is_shared_freely() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    shared::<TrackerHandle>();
}

#[tokio::test]
async fn a_monitor_user_given_on_reload_starts_sql_polls() {
    let lab = start(5, false, map("a", &["b"]), &[]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(lab.fake.count.lock().unwrap().is_empty());
    lab.settings.send_replace(Arc::new(settings(5, true)));
    until(&lab.handle, "b by SQL", |p| {
        p.get("b").is_some_and(|b| b.source == PositionSource::Sql)
    })
    .await;
}

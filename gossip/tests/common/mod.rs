//! Shared helpers for the transport and membership tests: an in-memory "durable" store standing
//! in for the forecaster's database, constructors for receivers, senders and members on
//! loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prescale_gossip::membership::{Membership, MembershipConfig, Role};
use prescale_gossip::{
    DevCa, EntryKey, Error, NodeIdentity, ReceiverConfig, Refusal, SenderConfig, Sketch,
    SketchReceiver, SketchSender, SketchSink,
};

pub const FORECASTER: &str = "fc-eu";

/// The store: survives receiver restarts because tests keep it across them.
#[derive(Default)]
pub struct Store {
    pub sketches: Mutex<BTreeMap<(String, u64), Sketch>>,
    /// How many times `accept` stored each (node, sequence).
    pub stores: Mutex<BTreeMap<(String, u64), u32>>,
}

impl Store {
    pub fn sequences(&self, node: &str) -> Vec<u64> {
        self.sketches
            .lock()
            .unwrap()
            .keys()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| *s)
            .collect()
    }

    pub fn max_stores(&self) -> u32 {
        self.stores
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.sketches
            .lock()
            .unwrap()
            .values()
            .map(|s| s.total_requests())
            .sum()
    }
}

/// A sink over a [`Store`], with fault injection.
pub struct TestSink {
    pub store: Arc<Store>,
    /// After storing this sequence, never return (the "receiver dies before acking" case).
    pub hang_after_storing: Option<u64>,
    /// Fail this many `accept` calls first.
    pub fail_first: AtomicU64,
    /// Refuse these sequences for good, with these reasons (storing nothing).
    pub refuse: BTreeMap<u64, Refusal>,
    pub last_sequence_calls: AtomicU64,
}

impl TestSink {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            hang_after_storing: None,
            fail_first: AtomicU64::new(0),
            refuse: BTreeMap::new(),
            last_sequence_calls: AtomicU64::new(0),
        }
    }
}

impl SketchSink for TestSink {
    fn last_sequence(&self, node: &str) -> Result<Option<u64>, Error> {
        self.last_sequence_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.store.sequences(node).last().copied())
    }

    async fn accept(&self, sketch: Sketch) -> Result<(), Error> {
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::sink("database is locked"));
        }
        if let Some(reason) = self.refuse.get(&sketch.sequence) {
            return Err(Error::Refused {
                reason: *reason,
                detail: format!("test refuses sequence {}", sketch.sequence),
            });
        }
        let key = (sketch.node.clone(), sketch.sequence);
        let seq = sketch.sequence;
        self.store
            .sketches
            .lock()
            .unwrap()
            .insert(key.clone(), sketch);
        *self.store.stores.lock().unwrap().entry(key).or_default() += 1;
        if self.hang_after_storing == Some(seq) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Start a receiver. Rebinding the port of a receiver just shut down can race the release of its
/// socket by the old endpoint's driver task, so a busy port is retried for up to 5 s.
pub async fn receiver(ca: &DevCa, bind: SocketAddr, sink: TestSink) -> SketchReceiver<TestSink> {
    let id = ca.identity(FORECASTER).unwrap();
    let sink = Arc::new(sink);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match SketchReceiver::start(ReceiverConfig::new(bind, id.clone()), sink.clone()) {
            Ok(rx) => return rx,
            Err(e)
                if tokio::time::Instant::now() < deadline && e.to_string().contains("in use") =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("receiver on {bind}: {e}"),
        }
    }
}

pub fn sender_config(
    identity: NodeIdentity,
    node: &str,
    addr: SocketAddr,
    spool: &Path,
) -> SenderConfig {
    // A new spool starts a sequence epoch at the clock's microseconds; these tests number a
    // new spool's sketches from 1 so that their sequences read plainly.
    let next = spool.join("next-sequence");
    if !next.exists() {
        std::fs::create_dir_all(spool).unwrap();
        std::fs::write(&next, b"1").unwrap();
    }
    let mut c = SenderConfig::new(node, "eu", addr, FORECASTER, identity, spool);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.ack_timeout = Duration::from_secs(5);
    c
}

pub fn sender(ca: &DevCa, node: &str, addr: SocketAddr, spool: &Path) -> SketchSender {
    SketchSender::start(sender_config(ca.identity(node).unwrap(), node, addr, spool)).unwrap()
}

/// A small sketch with `requests` requests in one entry.
pub fn sketch(requests: u64) -> Sketch {
    let mut s = Sketch::new("ignored", "ignored", 0, 10_000);
    let e = s.entry(EntryKey {
        profile: "profile-1".to_string(),
        origin_region: "eu".into(),
        fleet: "web".into(),
    });
    e.requests = requests;
    for u in 0..requests.min(50) {
        e.users.insert(u);
    }
    s
}

/// Poll `cond` every 10 ms for up to `secs` seconds.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// SWIM timings a test can wait for: probes every 200 ms, down after 800 ms of suspicion.
pub fn fast(mut c: MembershipConfig) -> MembershipConfig {
    c.swim.probe_period = Duration::from_millis(200);
    c.swim.probe_rtt = Duration::from_millis(100);
    c.swim.suspect_to_down_after = Duration::from_millis(800);
    c.swim.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(100),
        num_members: 3.try_into().unwrap(),
    });
    c.swim.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(500),
        num_members: 1.try_into().unwrap(),
    });
    c
}

/// A member on a loopback port with a certificate binding `role` and `region`.
pub fn member(ca: &DevCa, name: &str, role: Role, region: &str) -> Membership {
    let cfg = MembershipConfig::new(
        name,
        role,
        region,
        "127.0.0.1:0".parse().unwrap(),
        ca.member_identity(name, role, region).unwrap(),
    );
    Membership::start(fast(cfg)).unwrap()
}

//! The forecaster's sketch sink: sketches accepted by the QUIC receiver are written to the
//! series store by one writer thread in batches (one SQLite transaction per batch), and each
//! sketch's acknowledgement waits for the commit that holds it.
//!
//! Before a sketch is queued it passes the forecaster's [`Admission`] at the node clock's time;
//! one it fails, or one the store refuses (counts that would overflow a row, a row at another
//! precision), is answered [`prescale_gossip::Error::Refused`], which the receiver turns into a
//! refusal the proxy drops the sketch on, so it never blocks the proxy's later sketches.
//!
//! Invariants: an `Ok` from [`StoreSink::accept`] means the sketch is committed (so the proxy's
//! ack follows the commit, durable as the store's `synchronous` setting makes it: see
//! [`crate::store`]); a batch that fails is retried sketch by sketch so one bad sketch cannot
//! hold back the others; reads use their own connection (SQLite WAL), never the writer's.
//!
//! Sketches arrive decoded and validated by the receiver, which inflated every latency histogram
//! to check it; the store merges from that inflated form, so the writer thread does not inflate
//! them again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prescale_gossip::{NodeClock, Sketch, SketchSink};
use tokio::sync::oneshot;

use crate::admission::Admission;
use crate::error::{Error, Result};
use crate::store::{Ingested, NodeRecord, SeriesPoint, SeriesQuery, SeriesStore};

/// Most sketches committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<prescale_gossip::Result<Ingested>>;

/// Counters for the forecaster's `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
}

/// Told about every sketch the writer stored, after its commit (the forecaster's profile
/// learning takes the sampled users from it). Called on the writer thread: keep it brief.
pub trait SampleObserver: Send + Sync {
    fn observe(&self, sketch: &Sketch);
}

type Observer = Arc<OnceLock<Arc<dyn SampleObserver>>>;

pub struct StoreSink {
    queue: mpsc::SyncSender<(Sketch, Reply)>,
    admission: Admission,
    clock: NodeClock,
    observer: Observer,
    reader: Mutex<SeriesStore>,
    pub stats: Arc<IngestStats>,
    /// Each proxy's recent requests per (fleet, profile), for splitting grants among proxies.
    pub traffic: Arc<NodeTraffic>,
    path: PathBuf,
}

/// Minutes of per-proxy traffic kept in memory.
const TRAFFIC_MINUTES: u64 = 10;

/// Each proxy's requests per (fleet, profile) over the last few minutes it reported, as stored:
/// what the live driver splits a profile's grant by (a proxy gets the share of the grant that it
/// had of the profile's requests). In memory only: after a restart shares start even.
#[derive(Debug, Default)]
pub struct NodeTraffic {
    recent: Mutex<std::collections::HashMap<TrafficKey, Vec<MinuteCount>>>,
}

/// (node, fleet, profile).
type TrafficKey = (String, String, String);
/// (minute start, requests).
type MinuteCount = (u64, u64);

impl NodeTraffic {
    fn record(&self, sketch: &Sketch) {
        let minute = sketch.interval_start_ms / 60_000 * 60;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for entry in &sketch.entries {
            let key = (
                sketch.node.clone(),
                entry.key.fleet.clone(),
                entry.key.profile.clone(),
            );
            let minutes = recent.entry(key).or_default();
            match minutes.iter_mut().find(|(m, _)| *m == minute) {
                Some((_, n)) => *n += entry.stats.requests,
                None => minutes.push((minute, entry.stats.requests)),
            }
            let newest = minutes.iter().map(|(m, _)| *m).max().unwrap_or(minute);
            minutes.retain(|(m, _)| *m + TRAFFIC_MINUTES * 60 > newest);
        }
    }

    /// Requests per proxy of `profile` on `fleet` in minutes starting at or after `from`
    /// (unix seconds), proxies with none left out.
    pub fn shares(&self, fleet: &str, profile: &str, from: u64) -> Vec<(String, u64)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = recent
            .iter()
            .filter(|((_, f, p), _)| f == fleet && p == profile)
            .map(|((node, _, _), minutes)| {
                let n = minutes
                    .iter()
                    .filter(|(m, _)| *m >= from)
                    .map(|(_, n)| n)
                    .sum();
                (node.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }
}

impl StoreSink {
    /// Opens the store at `path` (creating it), starts the writer thread. Sketches are checked
    /// against `admission` at `clock`'s time (node time, as the series minutes are).
    pub fn open(path: &Path, admission: Admission, clock: NodeClock) -> Result<Self> {
        let writer = SeriesStore::open(path)?;
        let reader = SeriesStore::open(path)?;
        let (queue, receiver) = mpsc::sync_channel::<(Sketch, Reply)>(4 * MAX_BATCH);
        let stats = Arc::new(IngestStats::default());
        let writer_stats = Arc::clone(&stats);
        let traffic = Arc::new(NodeTraffic::default());
        let writer_traffic = Arc::clone(&traffic);
        let observer: Observer = Arc::default();
        let writer_observer = Arc::clone(&observer);
        std::thread::Builder::new()
            .name("series-writer".into())
            .spawn(move || {
                write_loop(
                    writer,
                    receiver,
                    writer_stats,
                    writer_traffic,
                    writer_observer,
                )
            })
            .map_err(|e| Error::Store {
                what: format!("start the writer thread: {e}"),
                source: None,
            })?;
        Ok(StoreSink {
            queue,
            admission,
            clock,
            observer,
            reader: Mutex::new(reader),
            stats,
            traffic,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the observer of stored sketches (once; false if one was set already).
    pub fn set_observer(&self, observer: Arc<dyn SampleObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    pub fn series(
        &self,
        query: &SeriesQuery,
    ) -> Result<std::collections::BTreeMap<String, Vec<SeriesPoint>>> {
        self.reader().series(query)
    }

    pub fn totals_by_profile(
        &self,
        region: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64)>> {
        self.reader().totals_by_profile(region, from, to)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.reader().nodes()
    }

    /// Deletes data older than the retention (run periodically).
    pub fn prune(&self, now_secs: u64, retention_secs: u64) -> Result<usize> {
        self.reader().prune(now_secs, retention_secs)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, SeriesStore> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_loop(
    mut store: SeriesStore,
    receiver: mpsc::Receiver<(Sketch, Reply)>,
    stats: Arc<IngestStats>,
    traffic: Arc<NodeTraffic>,
    observer: Observer,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (sketches, replies): (Vec<Sketch>, Vec<Reply>) = batch.into_iter().unzip();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        // Replies go out only after `ingest` returned, i.e. after the commit that holds them.
        match store.ingest(&sketches, now_ms) {
            Ok(outcomes) => {
                for (sketch, outcome) in sketches.iter().zip(&outcomes) {
                    if *outcome == Ingested::Stored {
                        traffic.record(sketch);
                        if let Some(observer) = observer.get() {
                            observer.observe(sketch);
                        }
                    }
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    count(&stats, Ok(outcome));
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(batch_error) => {
                tracing::warn!(error = %batch_error, sketches = sketches.len(), "batch failed; storing one by one");
                for (sketch, reply) in sketches.into_iter().zip(replies) {
                    let outcome = store
                        .ingest(std::slice::from_ref(&sketch), now_ms)
                        .map(|mut o| o.pop().unwrap_or(Ingested::Duplicate))
                        .map_err(|e| match e {
                            Error::Refused(refused) => prescale_gossip::Error::from(refused),
                            other => prescale_gossip::Error::Sink(format!(
                                "sketch {}#{}: {other}",
                                sketch.node, sketch.sequence
                            )),
                        });
                    if matches!(outcome, Ok(Ingested::Stored)) {
                        traffic.record(&sketch);
                        if let Some(observer) = observer.get() {
                            observer.observe(&sketch);
                        }
                    }
                    count(
                        &stats,
                        match &outcome {
                            Ok(o) => Ok(*o),
                            Err(prescale_gossip::Error::Refused { .. }) => Err(Failure::Refused),
                            Err(_) => Err(Failure::Failed),
                        },
                    );
                    let _ = reply.send(outcome);
                }
            }
        }
    }
}

/// Why the writer did not store a sketch.
enum Failure {
    Refused,
    Failed,
}

fn count(stats: &IngestStats, outcome: std::result::Result<Ingested, Failure>) {
    let counter = match outcome {
        Ok(Ingested::Stored) => &stats.stored,
        Ok(Ingested::Duplicate) => &stats.duplicates,
        // Counted by reason by the receiver, which answers the refusal.
        Err(Failure::Refused) => return,
        Err(Failure::Failed) => &stats.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SketchSink for StoreSink {
    fn last_sequence(&self, node: &str) -> prescale_gossip::Result<Option<u64>> {
        self.reader()
            .last_sequence(node)
            .map_err(|e| prescale_gossip::Error::Sink(e.to_string()))
    }

    async fn accept(&self, sketch: Sketch) -> prescale_gossip::Result<()> {
        self.admission.check(&sketch, self.clock.now_ms())?;
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.clone();
        // A full queue blocks: the receiver's stream waits (back-pressure to the proxies).
        tokio::task::spawn_blocking(move || queue.send((sketch, reply)))
            .await
            .map_err(|e| prescale_gossip::Error::Sink(format!("writer queue task failed: {e}")))?
            .map_err(|_| {
                prescale_gossip::Error::Sink("the series writer has stopped".to_string())
            })?;
        match answer.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(prescale_gossip::Error::Sink(
                "the series writer dropped the sketch".to_string(),
            )),
        }
    }
}

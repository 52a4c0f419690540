//! The proxy node's side: spool each sketch, deliver the spool in order to the forecaster over
//! QUIC, one stream per sketch, and remove a sketch only when its ack arrives.
//!
//! [`SketchSender::submit`] assigns the sketch its sequence and writes it to the on-disk
//! [`Spool`] before returning, so a sketch survives a crash of the node as well as an outage of
//! the forecaster. A background task connects (mutual TLS), sends the oldest spooled sketch,
//! waits for its [`Ack`](crate::Ack) (bounded by `ack_timeout`), removes it, and goes on; on any
//! failure it drops the connection and reconnects after an exponential backoff with jitter
//! (`backoff_min` doubling up to `backoff_max`, reset by the next ack). Strict one-at-a-time,
//! in-order delivery is what lets the receiver deduplicate by "sequence <= last stored".
//!
//! A sketch the receiver rejects as malformed (stream reset with `RESET_REJECTED`) is removed
//! from the spool and counted in `corrupt` rather than retried forever; one it refuses for good
//! (an ack with [`AckOutcome::Refused`], e.g. the node's region is not the forecaster's) is
//! removed, logged with its reason and counted in `refused`. When the spool is full
//! the oldest sketch is dropped and counted in `dropped` — both counters are in
//! [`SenderStatsSnapshot`] for the proxy's metrics.
//!
//! Model and plan updates pushed by the forecaster arrive on unidirectional streams of the same
//! connection and are published on watch channels ([`SketchSender::models`],
//! [`SketchSender::plans`]); an update older than the current one is ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::codec::{encode, Limits};
use crate::error::{Error, Result};
use crate::frame_io::{read_frame, write_frame};
use crate::messages::{AckOutcome, Message, ModelUpdate, PlanUpdate};
use crate::receiver::RESET_REJECTED;
use crate::sketch::{SenderState, Sketch};
use crate::spool::Spool;
use crate::tls::NodeIdentity;

/// Sender settings. [`SenderConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// This node's name (written into every sketch).
    pub node: String,
    /// This node's region (written into every sketch).
    pub region: String,
    /// The regional forecaster's address and certificate name.
    pub forecaster: SocketAddr,
    pub forecaster_name: String,
    /// Local address to bind; default: loopback for a loopback forecaster, else unspecified.
    pub bind: SocketAddr,
    pub identity: NodeIdentity,
    pub spool_dir: PathBuf,
    /// Most sketches kept unacknowledged (default 720: two hours at 10 s).
    pub spool_capacity: usize,
    /// How long to wait for a connection or an ack (default 10 s).
    pub ack_timeout: Duration,
    /// Reconnect backoff bounds (default 100 ms .. 30 s).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub limits: Limits,
}

impl SenderConfig {
    pub fn new(
        node: impl Into<String>,
        region: impl Into<String>,
        forecaster: SocketAddr,
        forecaster_name: impl Into<String>,
        identity: NodeIdentity,
        spool_dir: impl Into<PathBuf>,
    ) -> Self {
        let bind_ip = match (forecaster.ip(), forecaster.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Self {
            node: node.into(),
            region: region.into(),
            forecaster,
            forecaster_name: forecaster_name.into(),
            bind: SocketAddr::new(bind_ip, 0),
            identity,
            spool_dir: spool_dir.into(),
            spool_capacity: 720,
            ack_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}

/// Counters for the proxy's metrics.
#[derive(Debug, Default)]
pub struct SenderStats {
    spooled: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    acked_duplicate: AtomicU64,
    refused: AtomicU64,
    send_failures: AtomicU64,
    connects: AtomicU64,
    connected: AtomicBool,
}

/// A plain copy of the sender's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStatsSnapshot {
    /// Sketches in the spool now (gauge).
    pub spooled: u64,
    /// Sketches dropped because the spool was full (counter).
    pub dropped: u64,
    /// Spooled sketches discarded as unreadable or rejected by the receiver (counter).
    pub corrupt: u64,
    /// Send attempts (counter; resends included).
    pub sent: u64,
    /// Acks received, duplicates included (counter).
    pub acked: u64,
    /// Acks that said "duplicate" (counter).
    pub acked_duplicate: u64,
    /// Acks that said the forecaster refuses the sketch for good; it left the spool (counter).
    pub refused: u64,
    /// Failed sends or connection attempts (counter).
    pub send_failures: u64,
    /// Connections established (counter).
    pub connects: u64,
    pub connected: bool,
}

struct Shared {
    node: String,
    region: String,
    limits: Limits,
    spool: Mutex<Spool>,
    notify: Notify,
    stats: SenderStats,
    models: watch::Sender<Option<Arc<ModelUpdate>>>,
    plans: watch::Sender<Option<Arc<PlanUpdate>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Spool methods leave it consistent at every return; a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn sync_spool_stats(&self, spool: &Spool) {
        self.stats
            .spooled
            .store(spool.len() as u64, Ordering::Relaxed);
        self.stats.dropped.store(spool.dropped(), Ordering::Relaxed);
        self.stats.corrupt.store(spool.corrupt(), Ordering::Relaxed);
    }
}

/// A running sender. Dropping it stops delivery (the spool stays on disk).
pub struct SketchSender {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl SketchSender {
    /// Open the spool and start delivering. Must be called within a tokio runtime.
    pub fn start(config: SenderConfig) -> Result<Self> {
        crate::tls::check_node_name(&config.forecaster_name)?;
        let spool = Spool::open_with_max_file(
            &config.spool_dir,
            config.spool_capacity,
            crate::codec::HEADER_LEN.saturating_add(config.limits.max_frame),
        )?;
        let client = config.identity.client_config()?;
        let mut endpoint = quinn::Endpoint::client(config.bind)
            .map_err(|e| Error::Transport(format!("binding {}: {e}", config.bind)))?;
        endpoint.set_default_client_config(client);
        let shared = Arc::new(Shared {
            node: config.node.clone(),
            region: config.region.clone(),
            limits: config.limits,
            spool: Mutex::new(spool),
            notify: Notify::new(),
            stats: SenderStats::default(),
            models: watch::Sender::new(None),
            plans: watch::Sender::new(None),
        });
        shared.sync_spool_stats(&lock(&shared.spool));
        let task = tokio::spawn(run(endpoint.clone(), config, shared.clone()));
        Ok(Self {
            shared,
            endpoint,
            task,
        })
    }

    /// Spool `sketch` for delivery: sets its node, region, sequence and sender state, writes it
    /// durably (a small synced file write), and wakes the delivery task. Returns the sequence.
    pub fn submit(&self, mut sketch: Sketch) -> Result<u64> {
        sketch.node = self.shared.node.clone();
        sketch.region = self.shared.region.clone();
        let mut spool = lock(&self.shared.spool);
        let seq = append(&mut spool, sketch, &self.shared.limits)?;
        self.shared.sync_spool_stats(&spool);
        drop(spool);
        self.shared.notify.notify_one();
        Ok(seq)
    }

    /// Spool one interval's measurements, split into as many sketches as the frame limits need
    /// ([`Sketch::split_to_fit`]), all or nothing: either every part is spooled (and their
    /// sequences returned, in order) or none is, so the caller may carry the whole interval over
    /// to the next one without counting any part twice. The delivery task sees no part before
    /// all are spooled.
    pub fn submit_interval(&self, mut sketch: Sketch) -> Result<Vec<u64>> {
        sketch.node = self.shared.node.clone();
        sketch.region = self.shared.region.clone();
        let limits = self.shared.limits;
        let parts = sketch.split_to_fit(&limits)?;
        let mut spool = lock(&self.shared.spool);
        let mut sequences = Vec::with_capacity(parts.len());
        for part in parts {
            let appended = append(&mut spool, part, &limits);
            match appended {
                Ok(seq) => sequences.push(seq),
                Err(e) => {
                    for seq in &sequences {
                        if let Err(undo) = spool.remove(*seq) {
                            tracing::error!(sequence = seq, error = %undo, "could not take back a part of an interval that failed to spool");
                        }
                    }
                    self.shared.sync_spool_stats(&spool);
                    return Err(e);
                }
            }
        }
        self.shared.sync_spool_stats(&spool);
        drop(spool);
        self.shared.notify.notify_one();
        Ok(sequences)
    }

    pub fn stats(&self) -> SenderStatsSnapshot {
        let s = &self.shared.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SenderStatsSnapshot {
            spooled: g(&s.spooled),
            dropped: g(&s.dropped),
            corrupt: g(&s.corrupt),
            sent: g(&s.sent),
            acked: g(&s.acked),
            acked_duplicate: g(&s.acked_duplicate),
            refused: g(&s.refused),
            send_failures: g(&s.send_failures),
            connects: g(&s.connects),
            connected: s.connected.load(Ordering::Relaxed),
        }
    }

    /// Sequences still waiting for an ack, oldest first.
    pub fn pending(&self) -> Vec<u64> {
        lock(&self.shared.spool).sequences()
    }

    /// Latest model pushed by the forecaster.
    pub fn models(&self) -> watch::Receiver<Option<Arc<ModelUpdate>>> {
        self.shared.models.subscribe()
    }

    /// Latest plan pushed by the forecaster.
    pub fn plans(&self) -> watch::Receiver<Option<Arc<PlanUpdate>>> {
        self.shared.plans.subscribe()
    }

    /// Wait until the spool is empty or `timeout` passes; returns whether it emptied.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if lock(&self.shared.spool).is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop delivering and close the connection. Unacknowledged sketches stay spooled.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.endpoint.close(0u32.into(), b"shutdown");
        self.endpoint.wait_idle().await;
    }
}

impl Drop for SketchSender {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// Appends `sketch` to `spool` under the next sequence, with the spool's state as of now.
fn append(spool: &mut Spool, mut sketch: Sketch, limits: &Limits) -> Result<u64> {
    let spooled = (spool.len() + 1).min(spool.capacity());
    let dropped_before = spool.dropped();
    let full = spool.len() >= spool.capacity();
    spool.append(|seq| {
        sketch.sequence = seq;
        sketch.sender = SenderState {
            spooled: u32::try_from(spooled).unwrap_or(u32::MAX),
            dropped: dropped_before + u64::from(full),
        };
        encode(&Message::Sketch(sketch), limits)
    })
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn run(endpoint: quinn::Endpoint, config: SenderConfig, shared: Arc<Shared>) {
    let mut backoff = config.backoff_min;
    loop {
        let conn = match connect(&endpoint, &config).await {
            Ok(c) => c,
            Err(e) => {
                shared.stats.send_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(forecaster = %config.forecaster, error = %e, retry_in = ?backoff, "cannot reach the forecaster");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = backoff.saturating_mul(2).min(config.backoff_max);
                continue;
            }
        };
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        shared.stats.connected.store(true, Ordering::Relaxed);
        let listener = tokio::spawn(listen_updates(conn.clone(), shared.clone()));
        let err = deliver(&conn, &config, &shared, &mut backoff).await;
        listener.abort();
        shared.stats.connected.store(false, Ordering::Relaxed);
        shared.stats.send_failures.fetch_add(1, Ordering::Relaxed);
        conn.close(0u32.into(), b"reconnecting");
        tracing::warn!(forecaster = %config.forecaster, error = %err, retry_in = ?backoff, "delivery interrupted; reconnecting");
        tokio::time::sleep(jittered(backoff)).await;
        backoff = backoff.saturating_mul(2).min(config.backoff_max);
    }
}

async fn connect(endpoint: &quinn::Endpoint, config: &SenderConfig) -> Result<quinn::Connection> {
    let connecting = endpoint
        .connect(config.forecaster, &config.forecaster_name)
        .map_err(Error::transport)?;
    match tokio::time::timeout(config.ack_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Error::transport(e)),
        Err(_) => Err(Error::Transport("connection timed out".into())),
    }
}

/// Send spooled sketches in order until something fails; returns that failure.
async fn deliver(
    conn: &quinn::Connection,
    config: &SenderConfig,
    shared: &Shared,
    backoff: &mut Duration,
) -> Error {
    loop {
        let next = lock(&shared.spool).oldest();
        let (seq, frame) = match next {
            Err(e) => return e,
            Ok(Some(x)) => x,
            Ok(None) => {
                tokio::select! {
                    _ = shared.notify.notified() => continue,
                    reason = conn.closed() => return Error::transport(reason),
                }
            }
        };
        shared.stats.sent.fetch_add(1, Ordering::Relaxed);
        match send_one(conn, config, seq, &frame).await {
            Ok(outcome) => {
                shared.stats.acked.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    AckOutcome::Stored => {}
                    AckOutcome::Duplicate => {
                        shared.stats.acked_duplicate.fetch_add(1, Ordering::Relaxed);
                    }
                    AckOutcome::Refused(reason) => {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            sequence = seq,
                            %reason,
                            "the forecaster refuses this node's sketch for good; dropping it (see the forecaster's log for the detail)"
                        );
                    }
                }
                let mut spool = lock(&shared.spool);
                if let Err(e) = spool.remove(seq) {
                    return e;
                }
                shared.sync_spool_stats(&spool);
                *backoff = config.backoff_min;
            }
            Err(Error::PeerRejected { code }) if code == u64::from(RESET_REJECTED) => {
                tracing::error!(
                    sequence = seq,
                    "the forecaster rejected a spooled sketch as malformed; discarding it"
                );
                let mut spool = lock(&shared.spool);
                if let Err(e) = spool.discard(seq) {
                    return e;
                }
                shared.sync_spool_stats(&spool);
            }
            Err(e) => return e,
        }
    }
}

async fn send_one(
    conn: &quinn::Connection,
    config: &SenderConfig,
    seq: u64,
    frame: &[u8],
) -> Result<AckOutcome> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(Error::transport)?;
        write_frame(&mut send, frame).await?;
        read_frame(&mut recv, &config.limits).await
    };
    let reply = tokio::time::timeout(config.ack_timeout, exchange)
        .await
        .map_err(|_| {
            Error::Transport(format!(
                "no ack for sequence {seq} within {:?}",
                config.ack_timeout
            ))
        })??;
    match reply {
        Message::Ack(ack) if ack.sequence == seq && ack.node == config.node => Ok(ack.outcome),
        Message::Ack(ack) => Err(Error::Protocol(format!(
            "ack for {}#{} while waiting for {}#{seq}",
            ack.node, ack.sequence, config.node
        ))),
        other => Err(Error::Protocol(format!(
            "expected an ack, got {:?}",
            other.kind()
        ))),
    }
}

async fn listen_updates(conn: quinn::Connection, shared: Arc<Shared>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        match read_frame(&mut recv, &shared.limits).await {
            Ok(Message::ModelUpdate(m)) => {
                shared.models.send_if_modified(|cur| {
                    if cur
                        .as_ref()
                        .is_some_and(|c| c.model.version >= m.model.version)
                    {
                        return false;
                    }
                    *cur = Some(Arc::new(m));
                    true
                });
            }
            Ok(Message::PlanUpdate(p)) => {
                shared.plans.send_if_modified(|cur| {
                    if cur.as_ref().is_some_and(|c| c.version >= p.version) {
                        return false;
                    }
                    *cur = Some(Arc::new(p));
                    true
                });
            }
            Ok(other) => {
                tracing::warn!(kind = ?other.kind(), "unexpected message pushed by the forecaster")
            }
            Err(e) => tracing::warn!(error = %e, "bad update pushed by the forecaster"),
        }
    }
}

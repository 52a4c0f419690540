//! The forecaster's side: accept QUIC connections from proxies, read one sketch per stream,
//! deduplicate by (node, sequence), hand new sketches to the caller's [`SketchSink`], and ack.
//!
//! Delivery contract: a sketch is acknowledged only after the sink's `accept` returned `Ok`, so
//! with the sender's spool-and-resend this is at-least-once; deduplication makes it exactly
//! once into the sink. Dedup state survives restarts through the sink itself:
//! [`SketchSink::last_sequence`] says what the store already holds for a node (asked once per
//! node per receiver lifetime; afterwards the receiver tracks it, so a store must be written by
//! one receiver at a time). Senders deliver in sequence
//! order, one at a time, so "sequence <= last stored" means duplicate. Per node, the check and
//! the sink call run under one async lock, so concurrent connections of a node cannot both
//! store the same sequence.
//!
//! Authenticity: a sketch is accepted only under a node name its sender's certificate is valid
//! for (checked against the certificate's subject alternative names), so one node cannot write
//! into another node's series or dedup state; a mismatch is counted in
//! [`ReceiverStats::wrong_node`] and rejected.
//!
//! Robustness: every stream is read with the codec's limits; garbage, oversized or non-sketch
//! frames are counted in [`ReceiverStats::rejected`] and the stream is reset with
//! [`RESET_REJECTED`]; a sink failure resets with [`RESET_UNAVAILABLE`] (the sender retries).
//! A sketch the sink refuses for good ([`Error::Refused`]: wrong region, mismatched precision,
//! outside the time window, overflowing counts) is acked with [`AckOutcome::Refused`] and its
//! reason, counted per reason in [`ReceiverStats::refused`], and taken as the node's last
//! sequence, so it never blocks the node's later sketches. None of these closes the connection
//! or stops the server.
//!
//! Resource caps ([`PeerCaps`]): at most so many connections in all and per certificate, so
//! many handshakes in progress per address, so many concurrent streams per connection, and flow
//! control windows of one frame per stream, so a peer — even one with a valid certificate — holds
//! a bounded share of the forecaster's memory and tasks. An excess connection is refused or closed
//! with [`CLOSE_TOO_MANY`] and counted in [`ReceiverStats::refused_connections`]; an excess stream
//! waits for credit at the peer.
//!
//! The way back: [`SketchReceiver::publish_model`] / [`SketchReceiver::publish_plan`] push an
//! update on a unidirectional stream to every connected node, and the latest of each is pushed
//! to every node when it connects.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::task::{JoinHandle, JoinSet};

use crate::codec::{encode, Limits};
use crate::error::{Error, Result};
use crate::frame_io::{read_frame, write_frame};
use crate::messages::{Ack, AckOutcome, Message, ModelUpdate, PlanUpdate, Refusal};
use crate::sketch::Sketch;
use crate::tls::NodeIdentity;

/// Stream reset code: the frame was malformed or not a sketch; resending will not help.
pub const RESET_REJECTED: u32 = 1;
/// Stream reset code: the sink could not store the sketch now; resend later.
pub const RESET_UNAVAILABLE: u32 = 2;

/// Connection close code: the peer (its certificate or address) holds its share of connections.
pub const CLOSE_TOO_MANY: u32 = 3;

/// How long a stream may take to deliver its whole frame (a stalled stream is rejected).
pub const STREAM_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where accepted sketches go (the forecaster's store).
pub trait SketchSink: Send + Sync + 'static {
    /// The highest sequence of `node` already stored, if any. Called once per node per receiver
    /// lifetime, before the first sketch of that node is handled.
    fn last_sequence(&self, node: &str) -> Result<Option<u64>>;

    /// Store `sketch` durably. Return `Ok` only once it is stored: that is when the node gets
    /// its ack. An error means "not stored", and the node will resend.
    fn accept(&self, sketch: Sketch) -> impl Future<Output = Result<()>> + Send;
}

/// Receiver settings.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub bind: SocketAddr,
    pub identity: NodeIdentity,
    pub limits: Limits,
    pub caps: PeerCaps,
}

impl ReceiverConfig {
    pub fn new(bind: SocketAddr, identity: NodeIdentity) -> Self {
        Self {
            bind,
            identity,
            limits: Limits::default(),
            caps: PeerCaps::default(),
        }
    }
}

/// What one peer may hold of the receiver. A proxy needs one connection and one stream at a
/// time (its sender delivers one sketch at a time); the defaults leave room for restarts and
/// reconnects racing the old connection's idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCaps {
    /// Established connections in all.
    pub connections: usize,
    /// Established connections per client certificate.
    pub connections_per_certificate: usize,
    /// Handshakes in progress per remote IP address.
    pub handshakes_per_address: usize,
    /// Concurrent sketch streams a connection may open (more wait for credit).
    pub streams_per_connection: u32,
}

impl Default for PeerCaps {
    fn default() -> Self {
        PeerCaps {
            connections: 4096,
            connections_per_certificate: 4,
            handshakes_per_address: 16,
            streams_per_connection: 4,
        }
    }
}

/// Counters, exported by the forecaster as metrics.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Sketches the sink accepted.
    pub accepted: AtomicU64,
    /// Sketches acknowledged as duplicates without calling the sink.
    pub duplicates: AtomicU64,
    /// Streams rejected: malformed, truncated, oversized, unknown version or not a sketch.
    pub rejected: AtomicU64,
    /// Sketches whose node name the sender's certificate does not cover (also in `rejected`).
    pub wrong_node: AtomicU64,
    /// Sink failures (sketch not acknowledged).
    pub sink_errors: AtomicU64,
    /// Sketches the sink refused for good, by reason (indexed by [`Refusal::index`]).
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Handshakes that failed (e.g. a certificate not signed by our CA).
    pub handshake_failures: AtomicU64,
    /// Connections refused or closed at once over a [`PeerCaps`] cap.
    pub refused_connections: AtomicU64,
    /// Connections established.
    pub connections: AtomicU64,
    /// Updates pushed to nodes.
    pub updates_pushed: AtomicU64,
}

/// A plain copy of [`ReceiverStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStatsSnapshot {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub wrong_node: u64,
    pub sink_errors: u64,
    /// By reason, in the order of [`Refusal::ALL`].
    pub refused: [u64; Refusal::ALL.len()],
    pub handshake_failures: u64,
    pub refused_connections: u64,
    pub connections: u64,
    pub updates_pushed: u64,
}

impl ReceiverStatsSnapshot {
    /// Sketches refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()]
    }
}

impl ReceiverStats {
    pub fn snapshot(&self) -> ReceiverStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReceiverStatsSnapshot {
            accepted: g(&self.accepted),
            duplicates: g(&self.duplicates),
            rejected: g(&self.rejected),
            wrong_node: g(&self.wrong_node),
            sink_errors: g(&self.sink_errors),
            refused: std::array::from_fn(|i| g(&self.refused[i])),
            handshake_failures: g(&self.handshake_failures),
            refused_connections: g(&self.refused_connections),
            connections: g(&self.connections),
            updates_pushed: g(&self.updates_pushed),
        }
    }
}

/// What the receiver knows about one node (for the forecaster's `/api/v1/nodes`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub node: String,
    pub region: String,
    /// Highest sequence stored.
    pub last_sequence: Option<u64>,
    /// When the last sketch (new or duplicate) arrived.
    pub last_seen: SystemTime,
    /// The node's spool backlog and drop count as of its last sketch.
    pub spooled: u32,
    pub dropped: u64,
    pub remote: SocketAddr,
}

#[derive(Default)]
struct NodeDedup {
    loaded: bool,
    last: Option<u64>,
}

struct Shared<S> {
    sink: Arc<S>,
    limits: Limits,
    caps: PeerCaps,
    /// Handshakes in progress per remote address.
    handshakes: Mutex<HashMap<std::net::IpAddr, usize>>,
    /// Established connections per client certificate (its DER bytes).
    per_certificate: Mutex<HashMap<Vec<u8>, usize>>,
    stats: ReceiverStats,
    dedup: Mutex<HashMap<String, Arc<tokio::sync::Mutex<NodeDedup>>>>,
    status: Mutex<HashMap<String, NodeStatus>>,
    conns: Mutex<HashMap<usize, quinn::Connection>>,
    latest_model: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    latest_plan: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave its data half-updated (every
    // critical section is a single insert/read), so poisoning is safe to ignore.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running receiver. Dropping it stops accepting and closes the endpoint.
pub struct SketchReceiver<S: SketchSink> {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<S>>,
    task: JoinHandle<()>,
    runtime: tokio::runtime::Handle,
}

impl<S: SketchSink> SketchReceiver<S> {
    /// Bind and start accepting. Must be called within a tokio runtime.
    pub fn start(config: ReceiverConfig, sink: Arc<S>) -> Result<Self> {
        let mut server = config.identity.server_config()?;
        server.transport_config(Arc::new(receiver_transport(&config)));
        server.max_incoming(config.caps.connections);
        let endpoint = quinn::Endpoint::server(server, config.bind)
            .map_err(|e| Error::Transport(format!("binding {}: {e}", config.bind)))?;
        let shared = Arc::new(Shared {
            sink,
            limits: config.limits,
            caps: config.caps,
            handshakes: Mutex::new(HashMap::new()),
            per_certificate: Mutex::new(HashMap::new()),
            stats: ReceiverStats::default(),
            dedup: Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            latest_model: Mutex::new(None),
            latest_plan: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Ok(Self {
            endpoint,
            shared,
            task,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint.local_addr().map_err(Error::transport)
    }

    pub fn stats(&self) -> ReceiverStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Every node seen since start, sorted by name.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut v: Vec<NodeStatus> = lock(&self.shared.status).values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// Nodes seen since start whose last sketch is older than `silent_for`.
    pub fn silent_nodes(
        &self,
        now: SystemTime,
        silent_for: std::time::Duration,
    ) -> Vec<NodeStatus> {
        self.nodes()
            .into_iter()
            .filter(|n| {
                now.duration_since(n.last_seen)
                    .map(|d| d > silent_for)
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Number of currently open connections.
    pub fn connected(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Publish a model: kept as the latest (sent to nodes on connect) and pushed to every
    /// connected node. An older version than the latest published is ignored.
    pub fn publish_model(&self, update: ModelUpdate) -> Result<()> {
        let version = update.model.version;
        let frame = Arc::new(encode(&Message::ModelUpdate(update), &self.shared.limits)?);
        {
            let mut latest = lock(&self.shared.latest_model);
            if latest.as_ref().is_some_and(|(v, _)| *v > version) {
                return Ok(());
            }
            *latest = Some((version, frame.clone()));
        }
        self.push_all(frame);
        Ok(())
    }

    /// Publish a plan (same rules as [`SketchReceiver::publish_model`], by plan version).
    pub fn publish_plan(&self, update: PlanUpdate) -> Result<()> {
        let version = update.version;
        let frame = Arc::new(encode(&Message::PlanUpdate(update), &self.shared.limits)?);
        {
            let mut latest = lock(&self.shared.latest_plan);
            if latest.as_ref().is_some_and(|(v, _)| *v > version) {
                return Ok(());
            }
            *latest = Some((version, frame.clone()));
        }
        self.push_all(frame);
        Ok(())
    }

    fn push_all(&self, frame: Arc<Vec<u8>>) {
        let conns: Vec<quinn::Connection> = lock(&self.shared.conns).values().cloned().collect();
        for conn in conns {
            let shared = self.shared.clone();
            let frame = frame.clone();
            self.runtime
                .spawn(async move { push(&conn, &frame, &shared.stats).await });
        }
    }

    /// Stop: close every connection and the endpoint and wait for them to drain. The UDP port
    /// is released once the endpoint's driver task observes the last handle gone (the next
    /// scheduler tick after this returns).
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        lock(&self.shared.conns).clear();
        self.endpoint.close(0u32.into(), b"shutdown");
        self.endpoint.wait_idle().await;
    }
}

impl<S: SketchSink> Drop for SketchReceiver<S> {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

async fn push(conn: &quinn::Connection, frame: &[u8], stats: &ReceiverStats) {
    let result = async {
        let mut send = conn.open_uni().await.map_err(Error::transport)?;
        write_frame(&mut send, frame).await
    }
    .await;
    match result {
        Ok(()) => {
            stats.updates_pushed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::debug!(remote = %conn.remote_address(), error = %e, "push of an update failed")
        }
    }
}

/// The receiver's transport: the common one, with stream and flow-control limits from `config`
/// (a stream's window holds one whole frame, a connection's one per stream). Proxies open no
/// unidirectional streams and send no datagrams to it.
fn receiver_transport(config: &ReceiverConfig) -> quinn::TransportConfig {
    let mut t = crate::tls::transport();
    let frame = (config.limits.max_frame + crate::codec::HEADER_LEN) as u64;
    let streams = u64::from(config.caps.streams_per_connection.max(1));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(config.caps.streams_per_connection));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u64(frame).unwrap_or(quinn::VarInt::MAX));
    t.receive_window(quinn::VarInt::from_u64(frame * streams).unwrap_or(quinn::VarInt::MAX));
    t.datagram_receive_buffer_size(None);
    t
}

/// A slot held in a per-key count, given back on drop.
struct Slot<'a, K: std::hash::Hash + Eq + Clone> {
    counts: &'a Mutex<HashMap<K, usize>>,
    key: K,
}

impl<'a, K: std::hash::Hash + Eq + Clone> Slot<'a, K> {
    /// Takes a slot of `key` if fewer than `cap` are held.
    fn take(counts: &'a Mutex<HashMap<K, usize>>, key: K, cap: usize) -> Option<Self> {
        let mut map = lock(counts);
        let held = map.entry(key.clone()).or_default();
        if *held >= cap {
            if *held == 0 {
                map.remove(&key);
            }
            return None;
        }
        *held += 1;
        Some(Slot { counts, key })
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        let mut map = lock(self.counts);
        if let Some(held) = map.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.key);
            }
        }
    }
}

async fn accept_loop<S: SketchSink>(endpoint: quinn::Endpoint, shared: Arc<Shared<S>>) {
    let mut conns = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while conns.try_join_next().is_some() {}
        let remote = incoming.remote_address();
        if lock(&shared.conns).len() >= shared.caps.connections {
            shared
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, cap = shared.caps.connections, "connection refused: the receiver holds its most connections");
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        conns.spawn(async move {
            let Some(handshake) = Slot::take(
                &shared.handshakes,
                remote.ip(),
                shared.caps.handshakes_per_address,
            ) else {
                shared
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%remote, "connection refused: too many handshakes in progress from this address");
                incoming.refuse();
                return;
            };
            let connected = incoming.await;
            drop(handshake);
            match connected {
                Ok(conn) => serve_connection(conn, shared).await,
                Err(e) => {
                    shared
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "QUIC handshake refused");
                }
            }
        });
    }
}

async fn serve_connection<S: SketchSink>(conn: quinn::Connection, shared: Arc<Shared<S>>) {
    let certificate = peer_certificate(&conn);
    let key = certificate
        .as_ref()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let Some(_slot) = Slot::take(
        &shared.per_certificate,
        key,
        shared.caps.connections_per_certificate,
    ) else {
        shared
            .stats
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(remote = %conn.remote_address(), cap = shared.caps.connections_per_certificate, "connection closed: its certificate holds its most connections");
        conn.close(
            CLOSE_TOO_MANY.into(),
            b"too many connections for this certificate",
        );
        return;
    };
    let id = conn.stable_id();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    lock(&shared.conns).insert(id, conn.clone());
    tracing::debug!(remote = %conn.remote_address(), "node connected");
    let latest: Vec<Arc<Vec<u8>>> = [&shared.latest_model, &shared.latest_plan]
        .into_iter()
        .filter_map(|m| lock(m).as_ref().map(|(_, f)| f.clone()))
        .collect();
    for frame in latest {
        push(&conn, &frame, &shared.stats).await;
    }
    let peer_cert: Arc<Option<CertificateDer<'static>>> = Arc::new(certificate);
    let mut streams = JoinSet::new();
    loop {
        while streams.try_join_next().is_some() {}
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let remote = conn.remote_address();
                let peer_cert = peer_cert.clone();
                streams.spawn(
                    async move { serve_stream(send, recv, remote, &peer_cert, shared).await },
                );
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), error = %e, "connection ended");
                break;
            }
        }
    }
    lock(&shared.conns).remove(&id);
}

async fn serve_stream<S: SketchSink>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    peer_cert: &Option<CertificateDer<'static>>,
    shared: Arc<Shared<S>>,
) {
    let read =
        tokio::time::timeout(STREAM_READ_TIMEOUT, read_frame(&mut recv, &shared.limits)).await;
    let read = read.unwrap_or_else(|_| {
        Err(Error::Malformed {
            what: "stream",
            detail: format!("no complete frame within {STREAM_READ_TIMEOUT:?}"),
        })
    });
    let sketch = match read {
        Ok(Message::Sketch(s)) => s,
        Ok(other) => {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, kind = ?other.kind(), "rejected a stream: not a sketch");
            let _ = send.reset(RESET_REJECTED.into());
            return;
        }
        Err(e) if e.is_decode_error() => {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, error = %e, "rejected a malformed stream");
            let _ = recv.stop(RESET_REJECTED.into());
            let _ = send.reset(RESET_REJECTED.into());
            return;
        }
        Err(e) => {
            tracing::debug!(%remote, error = %e, "stream failed");
            return;
        }
    };
    if !cert_covers(peer_cert, &sketch.node) {
        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        shared.stats.wrong_node.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%remote, node = %sketch.node, "rejected a sketch for a node the sender's certificate does not name");
        let _ = send.reset(RESET_REJECTED.into());
        return;
    }
    let node = sketch.node.clone();
    let sequence = sketch.sequence;
    let (region, sender_state) = (sketch.region.clone(), sketch.sender);
    let outcome = match store(&shared, sketch).await {
        Ok(o) => o,
        Err(e) => {
            shared.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, %node, sequence, error = %e, "sketch not stored; the node will resend");
            let _ = send.reset(RESET_UNAVAILABLE.into());
            return;
        }
    };
    {
        let mut status = lock(&shared.status);
        let entry = status.entry(node.clone()).or_insert_with(|| NodeStatus {
            node: node.clone(),
            region: region.clone(),
            last_sequence: None,
            last_seen: SystemTime::now(),
            spooled: 0,
            dropped: 0,
            remote,
        });
        entry.region = region;
        entry.last_seen = SystemTime::now();
        entry.remote = remote;
        if matches!(outcome, AckOutcome::Stored | AckOutcome::Refused(_)) {
            entry.last_sequence = Some(sequence);
            entry.spooled = sender_state.spooled;
            entry.dropped = sender_state.dropped;
        } else if entry.last_sequence.is_none() {
            entry.last_sequence = Some(sequence);
        }
    }
    let ack = Message::Ack(Ack {
        node,
        sequence,
        outcome,
    });
    match encode(&ack, &shared.limits) {
        Ok(frame) => {
            if let Err(e) = write_frame(&mut send, &frame).await {
                tracing::debug!(%remote, error = %e, "ack not delivered; the node will resend and get a duplicate ack");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode an ack"),
    }
}

/// The peer's end-entity certificate.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
}

/// Whether the peer's end-entity certificate is valid for the DNS name `node`.
fn cert_covers(cert: &Option<CertificateDer<'static>>, node: &str) -> bool {
    let Some(cert) = cert else { return false };
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Dedup and store under the node's lock.
async fn store<S: SketchSink>(shared: &Shared<S>, sketch: Sketch) -> Result<AckOutcome> {
    let node_lock = lock(&shared.dedup)
        .entry(sketch.node.clone())
        .or_default()
        .clone();
    let mut state = node_lock.lock().await;
    if !state.loaded {
        state.last = shared.sink.last_sequence(&sketch.node)?;
        state.loaded = true;
    }
    if state.last.is_some_and(|last| sketch.sequence <= last) {
        shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        return Ok(AckOutcome::Duplicate);
    }
    let sequence = sketch.sequence;
    let node = sketch.node.clone();
    match shared.sink.accept(sketch).await {
        Ok(()) => {
            state.last = Some(sequence);
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            Ok(AckOutcome::Stored)
        }
        Err(Error::Refused { reason, detail }) => {
            // Taken as delivered: the node drops it and goes on with its next sequence.
            state.last = Some(sequence);
            shared.stats.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%node, sequence, %reason, %detail, "refused a sketch; the node drops it");
            Ok(AckOutcome::Refused(reason))
        }
        Err(e) => Err(e),
    }
}

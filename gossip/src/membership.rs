//! Cluster membership: who is alive among the proxies and forecasters of all regions, using
//! foca's SWIM (with suspicion and infection-style dissemination) over QUIC datagrams.
//!
//! Every member runs one QUIC endpoint (mutual TLS with the same CA as the sketch transport),
//! so only peers holding a certificate from the deployment's CA can exchange membership
//! datagrams: a foreign peer's handshake fails and its datagrams never reach foca. A member's
//! name is bound to its certificate: a datagram whose sender identity (foca's header `src`)
//! names a member the certificate of its connection is not valid for is dropped and counted
//! ([`MembershipStats::wrong_identity`]), so a member cannot speak for another. foca is
//! sans-IO; this module is its runtime: a single actor task owns the `Foca` instance and feeds it
//! received datagrams and due timers; what foca wants sent goes out as a QUIC datagram on a
//! connection to the member (opened on first use, reused after); timers are tokio sleeps that
//! post back to the actor. Datagrams are unreliable, which is what SWIM expects.
//!
//! Restarts: every start is a new incarnation (its `bump` is the start time in milliseconds),
//! which wins over the previous one in foca. A cached connection is dropped as soon as it fails,
//! when foca declares its member down, and when a new incarnation of its member appears, and the
//! next datagram dials again; so a member killed and restarted on the same address is reached
//! at once rather than after the dead connection's idle timeout. A member that knows no live
//! member (e.g. its seed's answer was lost) announces itself to its seeds again every two probe
//! periods.
//!
//! On top of membership, forecasters disseminate their per-region totals ([`RegionTotals`]) as
//! foca custom broadcasts, so any forecaster can answer for the global view. A broadcast is
//! kept and re-disseminated only if it is newer (by `version`) than what is known for that
//! region.
//!
//! Invariants: the actor is the only code touching `Foca`; the member view is updated only from
//! foca's notifications; a packet larger than the configured maximum is never sent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Header, Invalidates, OwnedNotification,
    PostcardCodec, Timer,
};
use rand_pcg::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::tls::{cert_is_for, check_node_name, peer_certificate, NodeIdentity};

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Proxy,
    Forecaster,
}

/// A member's identity as gossiped. Two identities with the same `name` are the same member;
/// `bump` tells its incarnations apart: the one with the higher `bump` wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub name: String,
    pub role: Role,
    pub region: String,
    /// Where its membership endpoint listens (and the name in its certificate is `name`).
    pub addr: SocketAddr,
    /// The member's start time in unix milliseconds, plus one for each time foca renewed it
    /// after it had been declared down; a restarted member thus rejoins as a newer identity.
    pub bump: u64,
}

impl foca::Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// A forecaster's totals for its region over one period, disseminated to all members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionTotals {
    pub region: String,
    /// The forecaster that computed them.
    pub forecaster: String,
    /// Monotonic per region (e.g. unix milliseconds of computation); newer replaces older.
    pub version: u64,
    /// Start of the period, unix milliseconds.
    pub period_start_ms: u64,
    /// Requests per profile (by name) in the period.
    pub requests: Vec<(String, u64)>,
    /// Proxies of the region that reported in the period.
    pub proxies: u32,
}

/// Most profiles in one [`RegionTotals`] (so it fits one datagram).
pub const MAX_TOTALS_PROFILES: usize = 64;

/// A member as seen from here.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberStatus {
    pub id: MemberId,
    pub alive: bool,
    /// When it last changed state (as observed here).
    pub since: Instant,
}

/// Membership settings.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub name: String,
    pub role: Role,
    pub region: String,
    /// Local address of the membership endpoint.
    pub bind: SocketAddr,
    /// Address others should use, if not the bound one (e.g. when binding 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    pub identity: NodeIdentity,
    /// SWIM timing; [`MembershipConfig::new`] uses foca's LAN defaults for ~16 members.
    pub swim: foca::Config,
}

/// Largest foca packet: fits a QUIC datagram at the minimum 1200-byte path MTU.
const MAX_PACKET: usize = 1024;

impl MembershipConfig {
    pub fn new(
        name: impl Into<String>,
        role: Role,
        region: impl Into<String>,
        bind: SocketAddr,
        identity: NodeIdentity,
    ) -> Self {
        let mut swim = foca::Config::new_lan(std::num::NonZeroU32::MIN.saturating_add(15));
        swim.max_packet_size = std::num::NonZeroUsize::MIN.saturating_add(MAX_PACKET - 1);
        Self {
            name: name.into(),
            role,
            region: region.into(),
            bind,
            advertise: None,
            identity,
            swim,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
struct Stats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bad_packets: AtomicU64,
    wrong_identity: AtomicU64,
}

/// A snapshot of the membership counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Datagrams foca could not decode (or that were not meant for it).
    pub bad_packets: u64,
    /// Datagrams dropped because they claim a member name the certificate of the connection
    /// they came over is not valid for.
    pub wrong_identity: u64,
}

enum Input {
    Data(Bytes),
    Timer(Timer<MemberId>),
    Announce(MemberId),
    Broadcast(Vec<u8>),
    Leave(tokio::sync::oneshot::Sender<()>),
    /// Announce to the seeds again if no member is known alive.
    Rejoin,
}

type Totals = Arc<Mutex<HashMap<String, RegionTotals>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// foca's custom broadcast handler for [`RegionTotals`].
struct TotalsHandler {
    totals: Totals,
}

/// Identifies a totals broadcast for foca's dissemination backlog.
struct TotalsKey {
    region: String,
    version: u64,
}

impl Invalidates for TotalsKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.region == other.region && self.version >= other.version
    }
}

impl BroadcastHandler<MemberId> for TotalsHandler {
    type Key = TotalsKey;
    type Error = Error;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<TotalsKey>> {
        let (t, rest) =
            postcard::take_from_bytes::<RegionTotals>(data).map_err(|e| Error::Malformed {
                what: "region totals",
                detail: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(Error::Malformed {
                what: "region totals",
                detail: "trailing bytes".into(),
            });
        }
        crate::sketch::check_name("totals region", &t.region, false)?;
        if t.requests.len() > MAX_TOTALS_PROFILES {
            return Err(Error::invalid("region totals", "too many profiles"));
        }
        let mut totals = lock(&self.totals);
        if totals
            .get(&t.region)
            .is_some_and(|cur| cur.version >= t.version)
        {
            return Ok(None);
        }
        let key = TotalsKey {
            region: t.region.clone(),
            version: t.version,
        };
        totals.insert(t.region.clone(), t);
        Ok(Some(key))
    }
}

struct Transport {
    endpoint: quinn::Endpoint,
    /// The connection each member's datagrams go out on, by member name. An entry leaves when
    /// its connection closes or fails, when its member goes down and when a new incarnation of
    /// its member appears; the next datagram for the member dials again.
    outgoing: Mutex<HashMap<String, quinn::Connection>>,
    connecting: Mutex<HashSet<String>>,
    input: mpsc::UnboundedSender<Input>,
    stats: Stats,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

/// Application close code of a connection given up on because its member went down or was
/// replaced by a new incarnation.
const CLOSE_FORGOTTEN: u32 = 1;

impl Transport {
    fn send(self: &Arc<Self>, to: MemberId, data: Bytes) {
        self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
        let existing = lock(&self.outgoing).get(&to.name).cloned();
        if let Some(conn) = existing {
            match conn.send_datagram(data.clone()) {
                Ok(()) => return,
                Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                    tracing::debug!(member = %to.name, error = %e, "membership connection lost; dialing again");
                    self.forget_connection(&conn);
                }
                Err(e) => {
                    // Too large or unsupported: dialing again would not help.
                    tracing::debug!(member = %to.name, error = %e, "membership datagram not sent");
                    return;
                }
            }
        }
        if !lock(&self.connecting).insert(to.name.clone()) {
            return; // a connection is being set up; SWIM tolerates the lost packet
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = match this.endpoint.connect(to.addr, &to.name) {
                Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting).await,
                Err(e) => {
                    tracing::debug!(member = %to.name, error = %e, "membership connect failed");
                    lock(&this.connecting).remove(&to.name);
                    return;
                }
            };
            match result {
                Ok(Ok(conn)) => {
                    let _ = conn.send_datagram(data);
                    lock(&this.outgoing).insert(to.name.clone(), conn.clone());
                    lock(&this.connecting).remove(&to.name);
                    this.read_from(conn);
                }
                Ok(Err(e)) => {
                    lock(&this.connecting).remove(&to.name);
                    tracing::debug!(member = %to.name, error = %e, "membership connect failed")
                }
                Err(_) => {
                    lock(&this.connecting).remove(&to.name);
                    tracing::debug!(member = %to.name, "membership connect timed out")
                }
            }
        });
        self.track(task);
    }

    /// Stop sending to `name` on its cached connection (closing it); the next datagram for it
    /// dials again.
    fn forget(&self, name: &str, reason: &'static str) {
        if let Some(conn) = lock(&self.outgoing).remove(name) {
            tracing::debug!(member = %name, reason, "membership connection dropped");
            conn.close(CLOSE_FORGOTTEN.into(), reason.as_bytes());
        }
    }

    /// Remove `conn` from the cache if it is there (it closed or failed).
    fn forget_connection(&self, conn: &quinn::Connection) {
        let id = conn.stable_id();
        lock(&self.outgoing).retain(|_, c| c.stable_id() != id);
    }

    /// Read datagrams from `conn` until it closes, passing those whose claimed sender its
    /// certificate names to the actor; then drop it from the cache.
    fn read_from(self: &Arc<Self>, conn: quinn::Connection) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut peer = PeerCheck::new(&conn);
            loop {
                let data = match conn.read_datagram().await {
                    Ok(data) => data,
                    Err(e) => {
                        tracing::debug!(remote = %conn.remote_address(), error = %e, "membership connection ended");
                        break;
                    }
                };
                this.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                match peer.check(&data) {
                    Ok(()) => {}
                    Err(Rejected::Undecodable) => {
                        this.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(Rejected::WrongIdentity) => {
                        this.stats.wrong_identity.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                if this.input.send(Input::Data(data)).is_err() {
                    break;
                }
            }
            this.forget_connection(&conn);
        });
        self.track(task);
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut readers = lock(&self.readers);
        readers.retain(|t| !t.is_finished());
        readers.push(task);
    }
}

enum Rejected {
    /// Not even a foca header.
    Undecodable,
    /// The sender claims a member name its certificate is not valid for.
    WrongIdentity,
}

/// Binds the member names claimed on one connection to the certificate its peer presented.
struct PeerCheck {
    remote: SocketAddr,
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The last claimed name the certificate was found valid for (checked once, not per packet).
    verified: Option<String>,
    warned: bool,
}

impl PeerCheck {
    fn new(conn: &quinn::Connection) -> Self {
        Self {
            remote: conn.remote_address(),
            cert: peer_certificate(conn),
            verified: None,
            warned: false,
        }
    }

    fn check(&mut self, data: &[u8]) -> std::result::Result<(), Rejected> {
        let header: Header<MemberId> =
            foca::Codec::decode_header(&mut PostcardCodec, data).map_err(|e| {
                tracing::debug!(remote = %self.remote, error = %e, "undecodable membership datagram");
                Rejected::Undecodable
            })?;
        let claimed = header.src.name;
        if self.verified.as_deref() == Some(claimed.as_str()) {
            return Ok(());
        }
        if self.cert.as_ref().is_some_and(|c| cert_is_for(c, &claimed)) {
            self.verified = Some(claimed);
            return Ok(());
        }
        if !self.warned {
            self.warned = true;
            tracing::warn!(remote = %self.remote, claimed = %claimed, "dropping membership datagrams claiming a member name the peer's certificate is not valid for");
        }
        Err(Rejected::WrongIdentity)
    }
}

/// A running membership agent. Dropping it stops it without leaving (like a crash); use
/// [`Membership::leave`] to leave cleanly.
pub struct Membership {
    me: MemberId,
    input: mpsc::UnboundedSender<Input>,
    view: Arc<Mutex<HashMap<String, MemberStatus>>>,
    totals: Totals,
    transport: Arc<Transport>,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Bind the membership endpoint and start the SWIM agent. Must run within a tokio runtime.
    pub fn start(config: MembershipConfig) -> Result<Self> {
        check_node_name(&config.name)?;
        // Peers drop datagrams whose member name the sender's certificate does not cover.
        config.identity.check_name(&config.name)?;
        // quinn's default transport config accepts datagrams (1.25 MB receive buffer).
        let server = config.identity.server_config()?;
        let mut endpoint = quinn::Endpoint::server(server, config.bind)
            .map_err(|e| Error::Transport(format!("binding {}: {e}", config.bind)))?;
        endpoint.set_default_client_config(config.identity.client_config()?);
        let addr = match config.advertise {
            Some(a) => a,
            None => endpoint.local_addr().map_err(Error::transport)?,
        };
        if addr.ip().is_unspecified() {
            return Err(Error::Argument(format!(
                "membership: bound to {addr}; set an address to advertise"
            )));
        }
        // A restarted member must be a newer incarnation than the one it replaces (which the
        // others may still consider alive or already declared down): the start time in ms.
        let bump = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let me = MemberId {
            name: config.name,
            role: config.role,
            region: config.region,
            addr,
            bump,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            outgoing: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashSet::new()),
            input: tx.clone(),
            stats: Stats::default(),
            readers: Mutex::new(Vec::new()),
        });
        let view = Arc::new(Mutex::new(HashMap::new()));
        let totals: Totals = Arc::new(Mutex::new(HashMap::new()));
        let rng = rand_pcg::Pcg64Mcg::seed_from_u64(rand::random());
        let rejoin_every = config
            .swim
            .probe_period
            .saturating_mul(2)
            .max(Duration::from_millis(100));
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config.swim,
            rng,
            PostcardCodec,
            TotalsHandler {
                totals: totals.clone(),
            },
        );
        let actor = tokio::spawn(run_actor(
            foca,
            rx,
            tx.clone(),
            transport.clone(),
            view.clone(),
            rejoin_every,
        ));
        let accept = {
            let transport = transport.clone();
            tokio::spawn(async move {
                while let Some(incoming) = transport.endpoint.accept().await {
                    let t = transport.clone();
                    let task = tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => t.read_from(conn),
                            Err(e) => tracing::warn!(error = %e, "membership handshake refused"),
                        }
                    });
                    transport.track(task);
                }
            })
        };
        Ok(Self {
            me,
            input: tx,
            view,
            totals,
            transport,
            tasks: vec![actor, accept],
        })
    }

    /// This member's identity.
    pub fn id(&self) -> &MemberId {
        &self.me
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.transport
            .endpoint
            .local_addr()
            .map_err(Error::transport)
    }

    /// Join the cluster through a known member (its certificate name and membership address).
    pub fn join(&self, name: &str, addr: SocketAddr) -> Result<()> {
        check_node_name(name)?;
        // foca ignores the destination identity of a packet, so a seed only needs name + addr.
        let seed = MemberId {
            name: name.to_string(),
            role: Role::Forecaster,
            region: String::new(),
            addr,
            bump: 0,
        };
        self.input
            .send(Input::Announce(seed))
            .map_err(|_| Error::Transport("membership agent stopped".into()))
    }

    /// Every member known, alive or not, sorted by name (this member excluded).
    pub fn members(&self) -> Vec<MemberStatus> {
        let mut v: Vec<MemberStatus> = lock(&self.view).values().cloned().collect();
        v.sort_by(|a, b| a.id.name.cmp(&b.id.name));
        v
    }

    /// Alive members, optionally of one role.
    pub fn alive(&self, role: Option<Role>) -> Vec<MemberId> {
        self.members()
            .into_iter()
            .filter(|m| m.alive && role.is_none_or(|r| m.id.role == r))
            .map(|m| m.id)
            .collect()
    }

    /// Proxies that were members and are now considered down (silent).
    pub fn silent_proxies(&self) -> Vec<MemberStatus> {
        self.members()
            .into_iter()
            .filter(|m| !m.alive && m.id.role == Role::Proxy)
            .collect()
    }

    /// Disseminate this forecaster's totals for its region to every member.
    pub fn publish_totals(&self, totals: RegionTotals) -> Result<()> {
        if totals.requests.len() > MAX_TOTALS_PROFILES {
            return Err(Error::Argument(format!(
                "at most {MAX_TOTALS_PROFILES} profiles per region totals"
            )));
        }
        let bytes = postcard::to_stdvec(&totals).map_err(|e| Error::Malformed {
            what: "region totals",
            detail: e.to_string(),
        })?;
        if bytes.len() > MAX_PACKET / 2 {
            return Err(Error::Argument(format!(
                "region totals take {} bytes, too many for one datagram",
                bytes.len()
            )));
        }
        self.input
            .send(Input::Broadcast(bytes))
            .map_err(|_| Error::Transport("membership agent stopped".into()))
    }

    /// The latest totals known for every region (own region included once published).
    pub fn region_totals(&self) -> Vec<RegionTotals> {
        let mut v: Vec<RegionTotals> = lock(&self.totals).values().cloned().collect();
        v.sort_by(|a, b| a.region.cmp(&b.region));
        v
    }

    pub fn stats(&self) -> MembershipStats {
        let s = &self.transport.stats;
        MembershipStats {
            packets_in: s.packets_in.load(Ordering::Relaxed),
            packets_out: s.packets_out.load(Ordering::Relaxed),
            bad_packets: s.bad_packets.load(Ordering::Relaxed),
            wrong_identity: s.wrong_identity.load(Ordering::Relaxed),
        }
    }

    /// Tell a few members we are leaving, then stop.
    pub async fn leave(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.input.send(Input::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
            // Give the datagrams a moment to leave the socket.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop().await;
    }

    /// Stop without telling anyone (others will find out by probing).
    pub async fn stop(mut self) {
        self.abort_all();
        self.transport.endpoint.close(0u32.into(), b"stopped");
        self.transport.endpoint.wait_idle().await;
    }

    fn abort_all(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for t in lock(&self.transport.readers).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.abort_all();
        self.transport.endpoint.close(0u32.into(), b"stopped");
    }
}

type Agent = Foca<MemberId, PostcardCodec, rand_pcg::Pcg64Mcg, TotalsHandler>;

async fn run_actor(
    mut foca: Agent,
    mut rx: mpsc::UnboundedReceiver<Input>,
    tx: mpsc::UnboundedSender<Input>,
    transport: Arc<Transport>,
    view: Arc<Mutex<HashMap<String, MemberStatus>>>,
    rejoin_every: Duration,
) {
    let mut rt = AccumulatingRuntime::new();
    let mut seeds: Vec<MemberId> = Vec::new();
    let mut rejoin = tokio::time::interval(rejoin_every);
    rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let input = tokio::select! {
            input = rx.recv() => match input {
                Some(input) => input,
                None => return,
            },
            _ = rejoin.tick() => Input::Rejoin,
        };
        let mut leaving = None;
        let result = match input {
            Input::Data(data) => {
                let r = foca.handle_data(&data, &mut rt);
                if r.is_err() {
                    transport.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            Input::Timer(t) => foca.handle_timer(t, &mut rt),
            Input::Announce(seed) => {
                seeds.retain(|s| s.name != seed.name);
                seeds.push(seed.clone());
                foca.announce(seed, &mut rt)
            }
            Input::Rejoin if foca.num_members() == 0 => seeds
                .iter()
                .try_for_each(|seed| foca.announce(seed.clone(), &mut rt)),
            Input::Rejoin => Ok(()),
            Input::Broadcast(bytes) => foca
                .add_broadcast(&bytes)
                .map(|_| ())
                .and_then(|()| foca.broadcast(&mut rt)),
            Input::Leave(done) => {
                leaving = Some(done);
                foca.leave_cluster(&mut rt)
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "membership: foca reported an error");
        }
        // Before sending: a reply to a new incarnation must not go out on the connection to
        // the process it replaced.
        while let Some(n) = rt.to_notify() {
            if let Some((name, reason)) = apply_notification(&view, n) {
                transport.forget(&name, reason);
            }
        }
        while let Some((to, data)) = rt.to_send() {
            transport.send(to, data);
        }
        while let Some((after, timer)) = rt.to_schedule() {
            let tx = tx.clone();
            transport.track(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Input::Timer(timer));
            }));
        }
        if let Some(done) = leaving {
            let _ = done.send(());
            return;
        }
    }
}

/// Apply a foca notification to the view. Returns the member whose cached connection must be
/// dropped, and why: it went down, or a new incarnation replaced the one it was dialed for.
fn apply_notification(
    view: &Mutex<HashMap<String, MemberStatus>>,
    n: OwnedNotification<MemberId>,
) -> Option<(String, &'static str)> {
    let (id, alive) = match n {
        OwnedNotification::MemberUp(id) => (id, true),
        OwnedNotification::MemberDown(id) => (id, false),
        OwnedNotification::Rename(_, new) => (new, true),
        _ => return None,
    };
    let mut view = lock(view);
    let known = view.get(&id.name);
    // A notification about an older incarnation (e.g. the down of the process a member
    // restarted from) must not override what is known of the newer one.
    if let Some(known) = known {
        if known.id.bump != id.bump && !foca::Identity::win_addr_conflict(&id, &known.id) {
            return None;
        }
    }
    let new_incarnation = known.is_some_and(|m| m.id.bump != id.bump);
    let changed = known.is_none_or(|m| m.alive != alive || m.id != id);
    let name = id.name.clone();
    if changed {
        tracing::info!(member = %id.name, role = ?id.role, region = %id.region, alive, "membership change");
        view.insert(
            id.name.clone(),
            MemberStatus {
                id,
                alive,
                since: Instant::now(),
            },
        );
    }
    if !alive {
        Some((name, "member down"))
    } else if new_incarnation {
        Some((name, "new incarnation"))
    } else {
        None
    }
}

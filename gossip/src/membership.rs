//! Cluster membership: who is alive among the proxies and forecasters of all regions, using
//! foca's SWIM (with suspicion and infection-style dissemination) over QUIC datagrams.
//!
//! Every member runs one QUIC endpoint (mutual TLS with the same CA as the sketch transport),
//! so only peers holding a certificate from the deployment's CA can exchange membership
//! datagrams: a foreign peer's handshake fails and its datagrams never reach foca. foca is
//! sans-IO; this module is its runtime: a single actor task owns the `Foca` instance and feeds it
//! received datagrams and due timers; what foca wants sent goes out as a QUIC datagram on a
//! connection to the member (opened on first use, reused after); timers are tokio sleeps that
//! post back to the actor. Datagrams are unreliable, which is what SWIM expects.
//!
//! What a member can claim is bound to its certificate ([`crate::tls`] documents the format):
//! a datagram whose sender identity (foca's header `src`) has a name the certificate of its
//! connection is not valid for, or a role or region the certificate does not bind, is dropped
//! and counted ([`MembershipStats::wrong_identity`]), so a member cannot speak for another nor
//! pose as another role or region. What a member says about *others* (foca's piggybacked
//! updates) cannot be checked against their certificates, so it is screened before foca sees it
//! ([`MembershipStats::forged_updates`] counts what is refused):
//! - an update that would leave its subject unable to refute it is refused: foca's incarnation
//!   `u16::MAX` (a suspicion there cannot be outbid), an identity whose `bump` is ahead of the
//!   clock by more than [`MembershipConfig::max_clock_ahead`] (it would win over every identity
//!   its member can take until then), a role or region other than the one its member's
//!   certificate was seen to bind;
//! - an update that would replace the identity known for a member (restart, new address) is
//!   ignored: only the member itself introduces a new identity of its own;
//! - "down" about another member is taken as suspicion at the same incarnation: its subject can
//!   refute it, and if it is really gone, the suspicion times out into "down" here too.
//!
//! The view ([`Membership::members`]) lists a member only once it has spoken here itself under
//! exactly the identity foca holds for it, so a name, role or region heard only from others
//! never appears in it.
//!
//! Restarts: every start is a new incarnation (its `bump` is the start time in milliseconds),
//! which wins over the previous one in foca; a renewal after being declared down takes the clock
//! too (at least the old `bump` plus one). A cached connection is dropped as soon as it fails,
//! when foca declares its member down, and when a new incarnation of its member appears, and the
//! next datagram dials again; so a member killed and restarted on the same address is reached
//! at once rather than after the dead connection's idle timeout. A member that knows no live
//! member (e.g. its seed's answer was lost) announces itself to its seeds again every two probe
//! periods.
//!
//! On top of membership, forecasters disseminate their per-region totals ([`RegionTotals`]) as
//! foca custom broadcasts, so any forecaster can answer for the global view. Totals are taken
//! only from a sender whose certificate binds the totals' region, and only members of that region
//! pass them on; members elsewhere keep them without relaying. A broadcast is kept (and, in its
//! region, re-disseminated) only if it is newer (by `version`) than what is known for that
//! region and not ahead of the clock by more than [`MembershipConfig::max_clock_ahead`]
//! ([`MembershipStats::forged_totals`] counts the refused ones).
//!
//! Received datagrams wait for the actor in a bounded queue ([`QUEUE_CAPACITY`]); the
//! connections of one peer certificate together get at most
//! [`MembershipConfig::max_peer_rate`] datagrams a second into it. What exceeds either is dropped
//! and counted ([`MembershipStats::rate_limited`], [`MembershipStats::queue_full`]), so a flooding
//! peer costs bounded memory, never blocks a connection's reader, and gets no more of the agent's
//! time than its rate.
//!
//! Invariants: the actor is the only code touching `Foca`; the member view is updated only from
//! foca's notifications; a packet larger than the configured maximum is never sent nor handed to
//! foca.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Header, Identity as _, Incarnation, Invalidates,
    Member, Message, OwnedNotification, PostcardCodec, State, Timer,
};
use rand_pcg::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::tls::{
    cert_is_for, cert_member_binding, check_node_name, check_region_name, peer_certificate,
    BindingError, MemberBinding, NodeIdentity,
};

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Proxy,
    Forecaster,
}

impl Role {
    /// The role's name in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Forecaster => "forecaster",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "proxy" => Ok(Role::Proxy),
            "forecaster" => Ok(Role::Forecaster),
            _ => Err(Error::Argument(format!(
                "role {s:?} must be proxy or forecaster"
            ))),
        }
    }
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
    /// The member's start time in unix milliseconds; when foca renews it after it had been
    /// declared down, the clock again (at least the previous value plus one). A restarted or
    /// renewed member thus rejoins as a newer identity.
    pub bump: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl foca::Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        // The clock, not just plus one: an identity someone else made up with a `bump` up to
        // the clock (and the allowed skew) is overtaken once that much time has passed.
        let bump = self.bump.checked_add(1)?.max(now_ms());
        Some(Self {
            bump,
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
    /// Monotonic per region, newer replaces older: the unix milliseconds of computation, or any
    /// smaller counter; members refuse a version ahead of their clock by more than
    /// [`MembershipConfig::max_clock_ahead`].
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
    /// Its certificate must be valid for `name` and bind `role` and `region`.
    pub identity: NodeIdentity,
    /// SWIM timing; [`MembershipConfig::new`] uses foca's LAN defaults for ~16 members.
    pub swim: foca::Config,
    /// How far ahead of this member's clock another member's clock may be: identities heard
    /// about (their `bump`) and region totals (their `version`) further ahead are refused. A
    /// member whose clock runs further ahead is still known to those it talks to directly.
    pub max_clock_ahead: Duration,
    /// Datagrams a second the connections of one peer certificate may hand to the agent
    /// together (bursts of up to [`PEER_BURST`]); the rest is dropped. SWIM sends a member a few
    /// datagrams per probe period and gossip round, so only a flood reaches the default.
    pub max_peer_rate: u32,
}

/// Largest foca packet: fits a QUIC datagram at the minimum 1200-byte path MTU.
const MAX_PACKET: usize = 1024;

/// Received datagrams waiting for the actor, at most.
pub const QUEUE_CAPACITY: usize = 1024;

/// Datagrams one peer certificate may hand to the agent at once, beyond its rate.
pub const PEER_BURST: u32 = 64;

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
            max_clock_ahead: Duration::from_secs(60),
            max_peer_rate: 200,
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
    forged_updates: AtomicU64,
    forged_totals: AtomicU64,
    rate_limited: AtomicU64,
    queue_full: AtomicU64,
}

/// A snapshot of the membership counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Datagrams foca could not decode (or that were not meant for it).
    pub bad_packets: u64,
    /// Datagrams dropped because their sender claims a member name the certificate of the
    /// connection they came over is not valid for, or a role or region it does not bind (a
    /// certificate binding none counts every datagram here).
    pub wrong_identity: u64,
    /// Updates about other members refused (see the module docs); the rest of their datagram
    /// is still used.
    pub forged_updates: u64,
    /// Region totals refused: from a member of another region, or ahead of the clock.
    pub forged_totals: u64,
    /// Datagrams dropped because their peer certificate exceeded its rate.
    pub rate_limited: u64,
    /// Datagrams dropped because the queue to the agent was full.
    pub queue_full: u64,
}

/// What the actor is told by this process (datagrams come on a queue of their own).
enum Input {
    Timer(Timer<MemberId>),
    Announce(MemberId),
    Broadcast(Vec<u8>),
    Leave(tokio::sync::oneshot::Sender<()>),
}

/// The datagram allowance of one peer certificate, shared by its connections: a token bucket.
struct Allowance {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(PEER_BURST),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(f64::from(PEER_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Totals = Arc<Mutex<HashMap<String, RegionTotals>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parse and check one [`RegionTotals`] broadcast item.
fn decode_totals(data: &[u8]) -> Result<RegionTotals> {
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
    if check_node_name(&t.forecaster).is_err() {
        return Err(Error::invalid("region totals", "bad forecaster name"));
    }
    if t.requests.len() > MAX_TOTALS_PROFILES {
        return Err(Error::invalid("region totals", "too many profiles"));
    }
    Ok(t)
}

/// Why totals received from `sender` (`None`: published here) are refused, if they are.
fn refuse_totals(
    t: &RegionTotals,
    sender: Option<&MemberId>,
    now_ms: u64,
    ahead_ms: u64,
) -> Option<&'static str> {
    let sender = sender?;
    if sender.region != t.region {
        // The sender's region is its certificate's (checked before foca saw the datagram).
        Some("region totals from a member of another region")
    } else if t.version > now_ms.saturating_add(ahead_ms) {
        Some("region totals version ahead of the clock")
    } else {
        None
    }
}

/// foca's custom broadcast handler for [`RegionTotals`].
struct TotalsHandler {
    totals: Totals,
    /// Only members of a region pass its totals on.
    region: String,
    ahead_ms: u64,
    stats: Arc<Stats>,
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
        sender: Option<&MemberId>,
    ) -> Result<Option<TotalsKey>> {
        let t = decode_totals(data)?;
        if let Some(why) = refuse_totals(&t, sender, now_ms(), self.ahead_ms) {
            // Not an error: foca would skip the datagram's remaining broadcasts.
            self.stats.forged_totals.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(sender = ?sender.map(|s| &s.name), region = %t.region, why, "region totals refused");
            return Ok(None);
        }
        let mut totals = lock(&self.totals);
        if totals
            .get(&t.region)
            .is_some_and(|cur| cur.version >= t.version)
        {
            return Ok(None);
        }
        let relay = t.region == self.region;
        let key = TotalsKey {
            region: t.region.clone(),
            version: t.version,
        };
        totals.insert(t.region.clone(), t);
        Ok(relay.then_some(key))
    }
}

/// A foca packet taken apart: the header, the piggybacked updates (when the message carries
/// them) and the custom broadcasts after them, as foca itself reads a packet.
struct Packet<'a> {
    header: Header<MemberId>,
    updates: Option<Vec<Member<MemberId>>>,
    broadcasts: &'a [u8],
}

fn parse_packet(mut data: &[u8]) -> std::result::Result<Packet<'_>, Rejected> {
    if data.len() > MAX_PACKET {
        return Err(Rejected::Undecodable);
    }
    let header: Header<MemberId> = foca::Codec::decode_header(&mut PostcardCodec, &mut data)
        .map_err(|_| Rejected::Undecodable)?;
    if data.len() == 1 || (header.message == Message::Announce && !data.is_empty()) {
        return Err(Rejected::Undecodable);
    }
    let mut updates = None;
    if header.message != Message::Broadcast {
        if let Some((count, rest)) = data.split_first_chunk::<2>() {
            data = rest;
            let mut v = Vec::new();
            for _ in 0..u16::from_be_bytes(*count) {
                v.push(
                    foca::Codec::decode_member(&mut PostcardCodec, &mut data)
                        .map_err(|_| Rejected::Undecodable)?,
                );
            }
            updates = Some(v);
        }
    }
    Ok(Packet {
        header,
        updates,
        broadcasts: data,
    })
}

fn encode_packet(
    header: &Header<MemberId>,
    updates: &[Member<MemberId>],
    broadcasts: &[u8],
) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(MAX_PACKET);
    foca::Codec::encode_header(&mut PostcardCodec, header, &mut buf).ok()?;
    buf.extend_from_slice(&u16::try_from(updates.len()).ok()?.to_be_bytes());
    for m in updates {
        foca::Codec::encode_member(&mut PostcardCodec, m, &mut buf).ok()?;
    }
    buf.extend_from_slice(broadcasts);
    Some(buf)
}

/// The custom broadcast items of a packet, framed as foca frames them (a big-endian `u16`
/// length before each); `Err` where foca would reject the framing.
fn broadcast_items(mut data: &[u8]) -> std::result::Result<Vec<&[u8]>, Rejected> {
    if !data.is_empty() && data.len() < 3 {
        return Err(Rejected::Undecodable);
    }
    let mut items = Vec::new();
    while data.len() > 2 {
        let Some((len, rest)) = data.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || rest.len() < len {
            return Err(Rejected::Undecodable);
        }
        let (item, rest) = rest.split_at(len);
        items.push(item);
        data = rest;
    }
    Ok(items)
}

/// What the screening of updates knows here.
struct Scene<'a> {
    /// The identity each member last spoke under here (role and region checked against its
    /// certificate), by name.
    heard: &'a HashMap<String, MemberId>,
    /// The identity foca holds for a name (this member's own included).
    known: &'a dyn Fn(&str) -> Option<MemberId>,
    now_ms: u64,
    ahead_ms: u64,
}

/// What becomes of one piggybacked update.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// "Down" about another member, passed on as suspicion at the same incarnation.
    AsSuspicion,
    /// Dropped without counting: news only its subject may bring, or nothing to learn.
    Ignore,
    /// Dropped and counted: no honest member sends it.
    Forged(&'static str),
}

fn screen_update(src: &MemberId, update: &Member<MemberId>, scene: &Scene<'_>) -> Verdict {
    let id = update.id();
    if id.name == src.name {
        // The sender about itself (a departure, a previous identity of its own going down) is
        // authoritative, but never for an identity of its name newer than the one it speaks as.
        return if id != src && !src.win_addr_conflict(id) {
            Verdict::Forged("a newer identity of the sender than the one it speaks as")
        } else {
            Verdict::Keep
        };
    }
    if check_node_name(&id.name).is_err() || check_region_name(&id.region).is_err() {
        return Verdict::Forged("an identity no member can have");
    }
    if update.incarnation() == Incarnation::MAX {
        return Verdict::Forged("an incarnation its member could not refute");
    }
    if id.bump > scene.now_ms.saturating_add(scene.ahead_ms) {
        return Verdict::Forged("an identity ahead of the clock");
    }
    if let Some(heard) = scene.heard.get(&id.name) {
        if heard.role != id.role || heard.region != id.region {
            return Verdict::Forged("a role or region its member's certificate does not bind");
        }
    }
    match (scene.known)(&id.name) {
        Some(known) if &known != id && !known.win_addr_conflict(id) => Verdict::Ignore,
        None if update.state() == State::Down => Verdict::Ignore,
        _ if update.state() == State::Down => Verdict::AsSuspicion,
        _ => Verdict::Keep,
    }
}

/// A datagram after screening.
struct Screened {
    src: MemberId,
    /// The packet to hand to foca instead of the received one, when updates were dropped or
    /// changed.
    rewritten: Option<Vec<u8>>,
    forged: u64,
    ignored: usize,
    as_suspicion: usize,
    updates: usize,
}

/// Screen the updates of a datagram whose sender was already checked against its certificate.
fn screen(data: &[u8], scene: &Scene<'_>) -> std::result::Result<Screened, Rejected> {
    let packet = parse_packet(data)?;
    let src = packet.header.src.clone();
    let mut screened = Screened {
        src,
        rewritten: None,
        forged: 0,
        ignored: 0,
        as_suspicion: 0,
        updates: 0,
    };
    let Some(updates) = packet.updates else {
        return Ok(screened);
    };
    screened.updates = updates.len();
    let mut kept = Vec::with_capacity(updates.len());
    let mut changed = false;
    for update in updates {
        match screen_update(&screened.src, &update, scene) {
            Verdict::Keep => kept.push(update),
            Verdict::AsSuspicion => {
                screened.as_suspicion += 1;
                changed = true;
                let (id, incarnation) = (update.id().clone(), update.incarnation());
                kept.push(Member::new(id, incarnation, State::Suspect));
            }
            Verdict::Ignore => {
                screened.ignored += 1;
                changed = true;
            }
            Verdict::Forged(why) => {
                screened.forged += 1;
                changed = true;
                tracing::debug!(sender = %screened.src.name, about = %update.id().name, why, "membership update refused");
            }
        }
    }
    if changed {
        screened.rewritten = Some(
            encode_packet(&packet.header, &kept, packet.broadcasts).ok_or(Rejected::Undecodable)?,
        );
    }
    Ok(screened)
}

/// Why a datagram is dropped whole.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not a foca packet this build reads (or larger than the largest it sends).
    Undecodable,
    /// The sender claims a member name, role or region its certificate does not carry.
    WrongIdentity,
}

/// Check a datagram's sender identity against what its connection's certificate allows:
/// `covers` tells whether the certificate is valid for a name.
fn check_sender(
    src: &MemberId,
    covers: impl FnOnce(&str) -> bool,
    binding: Option<&MemberBinding>,
) -> std::result::Result<(), Rejected> {
    let bound = binding.is_some_and(|b| b.role == src.role && b.region == src.region);
    if bound && covers(&src.name) {
        Ok(())
    } else {
        Err(Rejected::WrongIdentity)
    }
}

/// A fixed scene for exercising the screening of untrusted input outside a running member:
/// this member is `me`, the datagram came over a connection whose certificate is for `sender`,
/// and `other` is a member that spoke here before.
#[doc(hidden)]
pub struct ScreenScene {
    pub me: MemberId,
    pub sender: MemberId,
    pub other: MemberId,
    pub now_ms: u64,
    pub ahead_ms: u64,
}

impl ScreenScene {
    pub fn fixed() -> Self {
        let now_ms = 1_700_000_000_000;
        let id = |name: &str, role, region: &str, port| MemberId {
            name: name.into(),
            role,
            region: region.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bump: now_ms - 60_000,
        };
        Self {
            me: id("fc-eu", Role::Forecaster, "eu", 7001),
            sender: id("proxy-us-1", Role::Proxy, "us", 7002),
            other: id("proxy-eu-1", Role::Proxy, "eu", 7003),
            now_ms,
            ahead_ms: 60_000,
        }
    }
}

/// What [`screen_untrusted`] made of a datagram.
#[doc(hidden)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScreenReport {
    pub updates: usize,
    pub forged_updates: u64,
    pub ignored_updates: usize,
    pub downs_as_suspicion: usize,
    pub totals: usize,
    pub forged_totals: usize,
    pub malformed_totals: usize,
    /// Whether screening the packet as rewritten for foca again changes nothing more.
    pub rewrite_is_final: bool,
}

/// What [`screen_untrusted`] made of some bytes.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq)]
pub struct UntrustedVerdict {
    /// The bytes as a datagram from the scene's sender.
    pub datagram: std::result::Result<ScreenReport, Rejected>,
    /// The bytes as one region totals broadcast item.
    pub totals: Option<RegionTotals>,
}

/// Every check a received membership datagram goes through before foca handles it (sender
/// identity, updates, region totals), on [`ScreenScene::fixed`], and the region totals decoder
/// on the bytes as they are. The fuzz target and the test replaying its corpus both run this,
/// so they exercise exactly what a member runs.
#[doc(hidden)]
pub fn screen_untrusted(data: &[u8]) -> UntrustedVerdict {
    UntrustedVerdict {
        datagram: screen_on_fixed_scene(data),
        totals: decode_totals(data).ok(),
    }
}

fn screen_on_fixed_scene(data: &[u8]) -> std::result::Result<ScreenReport, Rejected> {
    let scene = ScreenScene::fixed();
    let packet = parse_packet(data)?;
    let sender_binding = MemberBinding {
        role: scene.sender.role,
        region: scene.sender.region.clone(),
    };
    check_sender(
        &packet.header.src,
        |name| name == scene.sender.name,
        Some(&sender_binding),
    )?;
    let heard: HashMap<String, MemberId> = [&scene.sender, &scene.other]
        .into_iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let known = |name: &str| {
        [&scene.me, &scene.sender, &scene.other]
            .into_iter()
            .find(|m| m.name == name)
            .cloned()
    };
    let scene = Scene {
        heard: &heard,
        known: &known,
        now_ms: scene.now_ms,
        ahead_ms: scene.ahead_ms,
    };
    let screened = screen(data, &scene)?;
    let mut report = ScreenReport {
        updates: screened.updates,
        forged_updates: screened.forged,
        ignored_updates: screened.ignored,
        downs_as_suspicion: screened.as_suspicion,
        rewrite_is_final: true,
        ..ScreenReport::default()
    };
    let rewritten = screened.rewritten.as_deref().unwrap_or(data);
    if let Some(again) = &screened.rewritten {
        report.rewrite_is_final = screen(again, &scene).is_ok_and(|s| s.rewritten.is_none());
    }
    let packet = parse_packet(rewritten)?;
    for item in broadcast_items(packet.broadcasts)? {
        report.totals += 1;
        match decode_totals(item) {
            Ok(t) => {
                let refused =
                    refuse_totals(&t, Some(&packet.header.src), scene.now_ms, scene.ahead_ms);
                report.forged_totals += usize::from(refused.is_some());
            }
            Err(_) => report.malformed_totals += 1,
        }
    }
    Ok(report)
}

struct Transport {
    endpoint: quinn::Endpoint,
    /// The connection each member's datagrams go out on, by member name. An entry leaves when
    /// its connection closes or fails, when its member goes down and when a new incarnation of
    /// its member appears; the next datagram for the member dials again.
    outgoing: Mutex<HashMap<String, quinn::Connection>>,
    connecting: Mutex<HashSet<String>>,
    datagrams: mpsc::Sender<Bytes>,
    /// The allowance of each peer certificate with a connection open (keyed by the
    /// certificate's bytes); an entry leaves with the last of its connections.
    allowances: Mutex<HashMap<Vec<u8>, Arc<Mutex<Allowance>>>>,
    max_peer_rate: u32,
    stats: Arc<Stats>,
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

    /// The allowance of the peer certificate `cert`.
    fn allowance(
        &self,
        cert: Option<&rustls::pki_types::CertificateDer<'static>>,
    ) -> Arc<Mutex<Allowance>> {
        let key = cert.map(|c| c.as_ref().to_vec()).unwrap_or_default();
        lock(&self.allowances)
            .entry(key)
            .or_insert_with(|| Arc::new(Mutex::new(Allowance::new(self.max_peer_rate))))
            .clone()
    }

    /// Read datagrams from `conn` until it closes, queueing for the actor those whose sender
    /// identity its certificate allows, within its peer's allowance and the queue's room; then
    /// drop it from the cache.
    fn read_from(self: &Arc<Self>, conn: quinn::Connection) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut peer = PeerCheck::new(&conn);
            let allowance = this.allowance(peer.cert.as_ref());
            loop {
                // quinn hands out buffered datagrams without ever yielding: under a flood this
                // loop would hold its worker thread, and with it the agent's timers.
                tokio::task::coop::consume_budget().await;
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
                if !lock(&allowance).take() {
                    this.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match this.datagrams.try_send(data) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        this.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            this.forget_connection(&conn);
            drop(allowance);
            lock(&this.allowances).retain(|_, a| Arc::strong_count(a) > 1);
        });
        self.track(task);
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut readers = lock(&self.readers);
        readers.retain(|t| !t.is_finished());
        readers.push(task);
    }
}

/// Binds the sender identities claimed on one connection to the certificate its peer
/// presented: the name must be one the certificate is valid for, the role and region the ones
/// it binds.
struct PeerCheck {
    remote: SocketAddr,
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    binding: std::result::Result<MemberBinding, BindingError>,
    /// The last claimed name the certificate was found valid for (checked once, not per packet).
    verified: Option<String>,
    warned: bool,
}

impl PeerCheck {
    fn new(conn: &quinn::Connection) -> Self {
        let cert = peer_certificate(conn);
        let binding = cert
            .as_ref()
            .ok_or(BindingError::Unparsable)
            .and_then(cert_member_binding);
        Self {
            remote: conn.remote_address(),
            cert,
            binding,
            verified: None,
            warned: false,
        }
    }

    fn check(&mut self, data: &[u8]) -> std::result::Result<(), Rejected> {
        if data.len() > MAX_PACKET {
            return Err(Rejected::Undecodable);
        }
        let header: Header<MemberId> =
            foca::Codec::decode_header(&mut PostcardCodec, data).map_err(|e| {
                tracing::debug!(remote = %self.remote, error = %e, "undecodable membership datagram");
                Rejected::Undecodable
            })?;
        let src = header.src;
        let (cert, verified) = (&self.cert, &mut self.verified);
        let covers = |name: &str| {
            if verified.as_deref() == Some(name) {
                return true;
            }
            let ok = cert.as_ref().is_some_and(|c| cert_is_for(c, name));
            if ok {
                *verified = Some(name.to_string());
            }
            ok
        };
        let result = check_sender(&src, covers, self.binding.as_ref().ok());
        if result.is_err() && !self.warned {
            self.warned = true;
            match &self.binding {
                Err(e) => {
                    tracing::warn!(remote = %self.remote, claimed = %src.name, error = %e, "dropping membership datagrams: the peer's certificate binds no membership role and region")
                }
                Ok(b) => {
                    tracing::warn!(remote = %self.remote, claimed = %src.name, role = src.role.as_str(), region = %src.region, cert_role = b.role.as_str(), cert_region = %b.region, "dropping membership datagrams claiming a name, role or region the peer's certificate does not carry")
                }
            }
        }
        result
    }
}

type View = Arc<Mutex<HashMap<String, MemberStatus>>>;

/// A running membership agent. Dropping it stops it without leaving (like a crash); use
/// [`Membership::leave`] to leave cleanly.
pub struct Membership {
    me: MemberId,
    input: mpsc::UnboundedSender<Input>,
    view: View,
    totals: Totals,
    transport: Arc<Transport>,
    max_clock_ahead: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Bind the membership endpoint and start the SWIM agent. Must run within a tokio runtime.
    pub fn start(config: MembershipConfig) -> Result<Self> {
        check_node_name(&config.name)?;
        check_region_name(&config.region)?;
        // Peers drop datagrams whose name, role or region the sender's certificate does not
        // carry.
        config.identity.check_name(&config.name)?;
        config.identity.check_member(config.role, &config.region)?;
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
        let me = MemberId {
            name: config.name,
            role: config.role,
            region: config.region,
            addr,
            bump: now_ms(),
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(Stats::default());
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            outgoing: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashSet::new()),
            datagrams: data_tx,
            allowances: Mutex::new(HashMap::new()),
            max_peer_rate: config.max_peer_rate.max(1),
            stats: stats.clone(),
            readers: Mutex::new(Vec::new()),
        });
        let view: View = Arc::new(Mutex::new(HashMap::new()));
        let totals: Totals = Arc::new(Mutex::new(HashMap::new()));
        let rng = rand_pcg::Pcg64Mcg::seed_from_u64(rand::random());
        let rejoin_every = config
            .swim
            .probe_period
            .saturating_mul(2)
            .max(Duration::from_millis(100));
        let ahead_ms = u64::try_from(config.max_clock_ahead.as_millis()).unwrap_or(u64::MAX);
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config.swim,
            rng,
            PostcardCodec,
            TotalsHandler {
                totals: totals.clone(),
                region: me.region.clone(),
                ahead_ms,
                stats,
            },
        );
        let actor = Actor {
            foca,
            rt: AccumulatingRuntime::new(),
            control: control_tx.clone(),
            transport: transport.clone(),
            view: view.clone(),
            heard: HashMap::new(),
            pending: HashMap::new(),
            seeds: Vec::new(),
            ahead_ms,
        };
        let actor = tokio::spawn(actor.run(control_rx, data_rx, rejoin_every));
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
            input: control_tx,
            view,
            totals,
            transport,
            max_clock_ahead: config.max_clock_ahead,
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

    /// Every member known, alive or not, sorted by name (this member excluded). A member is
    /// listed once it has spoken here itself under the identity foca holds for it.
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

    /// Disseminate this forecaster's totals for its region to every member. Only a forecaster
    /// publishes, only for its own region and under its own name (what the others accept).
    pub fn publish_totals(&self, totals: RegionTotals) -> Result<()> {
        if self.me.role != Role::Forecaster
            || totals.region != self.me.region
            || totals.forecaster != self.me.name
        {
            return Err(Error::Argument(format!(
                "only the forecaster {} publishes totals, for its region {}",
                self.me.name, self.me.region
            )));
        }
        let ahead = u64::try_from(self.max_clock_ahead.as_millis()).unwrap_or(u64::MAX);
        if totals.version > now_ms().saturating_add(ahead) {
            return Err(Error::Argument(format!(
                "region totals version {} is ahead of the clock; the others would refuse it",
                totals.version
            )));
        }
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
            forged_updates: s.forged_updates.load(Ordering::Relaxed),
            forged_totals: s.forged_totals.load(Ordering::Relaxed),
            rate_limited: s.rate_limited.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
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

/// The task owning foca.
struct Actor {
    foca: Agent,
    rt: AccumulatingRuntime<MemberId>,
    control: mpsc::UnboundedSender<Input>,
    transport: Arc<Transport>,
    view: View,
    /// The identity each member last spoke under here, by name. Only names a certificate was
    /// valid for get here, and their role and region are the certificate's.
    heard: HashMap<String, MemberId>,
    /// What foca said about members not (yet) heard under the identity it was about, by name:
    /// it reaches the view once the member speaks under exactly that identity.
    pending: HashMap<String, (MemberId, bool)>,
    seeds: Vec<MemberId>,
    ahead_ms: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Input>,
        mut datagrams: mpsc::Receiver<Bytes>,
        rejoin_every: Duration,
    ) {
        let mut rejoin = tokio::time::interval(rejoin_every);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Fair choice: a flood of datagrams does not hold back the timers foca relies on.
            tokio::select! {
                input = control.recv() => match input {
                    Some(input) => {
                        if self.on_input(input) {
                            return;
                        }
                    }
                    None => return,
                },
                datagram = datagrams.recv() => match datagram {
                    Some(datagram) => self.on_datagram(&datagram),
                    None => return,
                },
                _ = rejoin.tick() => {
                    if self.foca.num_members() == 0 {
                        let result = self
                            .seeds
                            .iter()
                            .try_for_each(|seed| self.foca.announce(seed.clone(), &mut self.rt));
                        self.settle(result);
                    }
                }
            }
        }
    }

    /// Handle a local input; true once the member has left.
    fn on_input(&mut self, input: Input) -> bool {
        let mut leaving = None;
        let result = match input {
            Input::Timer(t) => self.foca.handle_timer(t, &mut self.rt),
            Input::Announce(seed) => {
                self.seeds.retain(|s| s.name != seed.name);
                self.seeds.push(seed.clone());
                self.foca.announce(seed, &mut self.rt)
            }
            Input::Broadcast(bytes) => self
                .foca
                .add_broadcast(&bytes)
                .map(|_| ())
                .and_then(|()| self.foca.broadcast(&mut self.rt)),
            Input::Leave(done) => {
                leaving = Some(done);
                self.foca.leave_cluster(&mut self.rt)
            }
        };
        self.settle(result);
        match leaving {
            Some(done) => {
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// Handle a datagram whose sender identity its certificate allows.
    fn on_datagram(&mut self, data: &[u8]) {
        let stats = &self.transport.stats;
        let screened = {
            let foca = &self.foca;
            let known = |name: &str| {
                let me = foca.identity();
                if me.name == name {
                    return Some(me.clone());
                }
                foca.iter_membership_state()
                    .find(|m| m.id().name == name)
                    .map(|m| m.id().clone())
            };
            screen(
                data,
                &Scene {
                    heard: &self.heard,
                    known: &known,
                    now_ms: now_ms(),
                    ahead_ms: self.ahead_ms,
                },
            )
        };
        let screened = match screened {
            Ok(s) => s,
            Err(_) => {
                stats.bad_packets.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        stats
            .forged_updates
            .fetch_add(screened.forged, Ordering::Relaxed);
        let src = screened.src;
        self.heard.insert(src.name.clone(), src.clone());
        let packet = screened.rewritten.as_deref().unwrap_or(data);
        let result = self.foca.handle_data(packet, &mut self.rt);
        if result.is_err() {
            stats.bad_packets.fetch_add(1, Ordering::Relaxed);
        }
        self.settle(result);
        if self
            .pending
            .get(&src.name)
            .is_some_and(|(id, _)| *id == src)
        {
            if let Some((id, alive)) = self.pending.remove(&src.name) {
                if let Some((name, reason)) = apply_notification(&self.view, id, alive) {
                    self.transport.forget(&name, reason);
                }
            }
        }
    }

    /// Act on what foca asked for: notifications, datagrams, timers.
    fn settle(&mut self, result: std::result::Result<(), foca::Error>) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "membership: foca reported an error");
        }
        // Before sending: a reply to a new incarnation must not go out on the connection to
        // the process it replaced.
        while let Some(n) = self.rt.to_notify() {
            let (id, alive) = match n {
                OwnedNotification::MemberUp(id) => (id, true),
                OwnedNotification::MemberDown(id) => (id, false),
                OwnedNotification::Rename(_, new) => (new, true),
                _ => continue,
            };
            if self.heard.get(&id.name) == Some(&id) {
                self.pending.remove(&id.name);
                if let Some((name, reason)) = apply_notification(&self.view, id, alive) {
                    self.transport.forget(&name, reason);
                }
            } else {
                self.pending.insert(id.name.clone(), (id, alive));
            }
        }
        while let Some((to, data)) = self.rt.to_send() {
            self.transport.send(to, data);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            let tx = self.control.clone();
            self.transport.track(tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Input::Timer(timer));
            }));
        }
    }
}

/// Apply what foca said about a member to the view. Returns the member whose cached connection
/// must be dropped, and why: it went down, or a new incarnation replaced the one it was dialed
/// for.
fn apply_notification(
    view: &Mutex<HashMap<String, MemberStatus>>,
    id: MemberId,
    alive: bool,
) -> Option<(String, &'static str)> {
    let mut view = lock(view);
    let known = view.get(&id.name);
    // A notification about an older incarnation (e.g. the down of the process a member
    // restarted from) must not override what is known of the newer one.
    if let Some(known) = known {
        if known.id.bump != id.bump && !id.win_addr_conflict(&known.id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn packet(src: &MemberId, updates: &[Member<MemberId>], broadcasts: &[u8]) -> Vec<u8> {
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: ScreenScene::fixed().me,
            message: Message::Gossip,
        };
        encode_packet(&header, updates, broadcasts).unwrap()
    }

    #[test]
    fn updates_that_pin_or_evict_another_member_are_screened() {
        let scene = ScreenScene::fixed();
        let other = scene.other.clone();
        let mut ahead = other.clone();
        ahead.bump = scene.now_ms + scene.ahead_ms + 1;
        let mut wrong_region = other.clone();
        wrong_region.region = "us".into();
        let mut newer = other.clone();
        newer.bump += 1;
        let mut stranger = other.clone();
        stranger.name = "proxy-eu-9".into();
        let cases = [
            (Member::new(other.clone(), 3, State::Suspect), "keep"),
            (
                Member::new(other.clone(), Incarnation::MAX, State::Suspect),
                "forged",
            ),
            (
                Member::new(other.clone(), Incarnation::MAX, State::Alive),
                "forged",
            ),
            (Member::new(ahead, 0, State::Alive), "forged"),
            (Member::new(wrong_region, 0, State::Alive), "forged"),
            (Member::new(other.clone(), 3, State::Down), "suspicion"),
            (Member::new(newer, 0, State::Alive), "ignored"),
            (Member::new(stranger.clone(), 0, State::Alive), "keep"),
            (Member::new(stranger, 0, State::Down), "ignored"),
        ];
        for (update, expected) in cases {
            let report =
                screen_on_fixed_scene(&packet(&scene.sender, std::slice::from_ref(&update), &[]))
                    .unwrap();
            let got = match report {
                ScreenReport {
                    forged_updates: 1, ..
                } => "forged",
                ScreenReport {
                    downs_as_suspicion: 1,
                    ..
                } => "suspicion",
                ScreenReport {
                    ignored_updates: 1, ..
                } => "ignored",
                _ => "keep",
            };
            assert_eq!(got, expected, "{update:?}");
        }
    }

    #[test]
    fn the_sender_speaks_for_itself_but_not_for_a_newer_self() {
        let scene = ScreenScene::fixed();
        let leaving = Member::new(scene.sender.clone(), 0, State::Down);
        let report = screen_on_fixed_scene(&packet(&scene.sender, &[leaving], &[])).unwrap();
        assert_eq!((report.forged_updates, report.downs_as_suspicion), (0, 0));
        let mut newer = scene.sender.clone();
        newer.bump += 1;
        let report = screen_on_fixed_scene(&packet(
            &scene.sender,
            &[Member::new(newer, 0, State::Alive)],
            &[],
        ))
        .unwrap();
        assert_eq!(report.forged_updates, 1);
    }

    #[test]
    fn rewritten_packets_keep_their_broadcasts() {
        let scene = ScreenScene::fixed();
        let totals = RegionTotals {
            region: "us".into(),
            forecaster: "fc-us".into(),
            version: 1,
            period_start_ms: 0,
            requests: vec![("batch".into(), 3)],
            proxies: 1,
        };
        let item = postcard::to_stdvec(&totals).unwrap();
        let mut broadcasts = u16::try_from(item.len()).unwrap().to_be_bytes().to_vec();
        broadcasts.extend_from_slice(&item);
        let down = Member::new(scene.other.clone(), 0, State::Down);
        let data = packet(&scene.sender, &[down], &broadcasts);
        let report = screen_on_fixed_scene(&data).unwrap();
        assert_eq!(
            (
                report.downs_as_suspicion,
                report.totals,
                report.forged_totals
            ),
            (1, 1, 0)
        );
        let mut eu = totals;
        eu.region = "eu".into();
        let item = postcard::to_stdvec(&eu).unwrap();
        let mut broadcasts = u16::try_from(item.len()).unwrap().to_be_bytes().to_vec();
        broadcasts.extend_from_slice(&item);
        let report = screen_on_fixed_scene(&packet(&scene.sender, &[], &broadcasts)).unwrap();
        assert_eq!(report.forged_totals, 1, "{report:?}");
    }

    #[test]
    fn the_sender_must_carry_its_certificate_role_and_region() {
        let scene = ScreenScene::fixed();
        let changes: [fn(&mut MemberId); 3] = [
            |m| m.role = Role::Forecaster,
            |m| m.region = "eu".into(),
            |m| m.name = "proxy-us-2".into(),
        ];
        for change in changes {
            let mut src = scene.sender.clone();
            change(&mut src);
            assert_eq!(
                screen_on_fixed_scene(&packet(&src, &[], &[])),
                Err(Rejected::WrongIdentity)
            );
        }
        assert!(screen_on_fixed_scene(&packet(&scene.sender, &[], &[])).is_ok());
    }

    #[test]
    fn renewal_never_wraps_and_overtakes_the_clock() {
        let mut id = ScreenScene::fixed().me;
        id.bump = 5;
        assert!(id.renew().unwrap().bump >= now_ms());
        id.bump = u64::MAX;
        assert!(id.renew().is_none());
    }
}

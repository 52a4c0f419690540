//! Fleets: the backend pools of the node's region. A fleet's backends are one immutable
//! [`BackendSet`] behind an `ArcSwap`: the backends' shared state, an address map, and the
//! selection structure (pingora's round robin, or Ketama consistent hashing on the user key)
//! built once per set from the backends that were Ready when it was built. A fleet without a
//! provisioner, or with a remote one (`exec`, `webhook`, `kubernetes`: the instances sit behind
//! the configured addresses), keeps the set built from its config (every backend Ready) forever;
//! a fleet of the `process` provisioner starts empty and takes the backends each plan lists ([`Fleet::apply_backends`]: a new
//! set when the backends or which of them are Ready changed, else phases updated in place). Also here: active health checks (`probe`: a GET over each
//! backend's own peer, with the fleet's thresholds), passive ejection, per-backend and per-fleet in-flight
//! counts, and the tried set of a request.
//!
//! Invariants:
//! - a backend is chosen only when it is Ready, its health check says healthy, it is not ejected
//!   and the request has not tried it yet; Warming and Draining backends get no new requests;
//! - a request never goes twice to the same backend (the tried set holds backend identities,
//!   unique for the life of the process, so it works for any number of backends);
//! - a backend whose address persists from one set to the next keeps its state (counters, idle
//!   connections, health, ejection): only its phase changes; one that leaves the set is dropped
//!   with the last reference to it, which closes its idle upstream connections (those of a
//!   backend entering Draining close at once);
//! - in-flight counts go back down when the request's guard drops, whatever path the request
//!   took and however the set changed meanwhile (the guard holds the backend itself);
//! - choosing a backend is one `ArcSwap` load and a walk of the selection structure (one map
//!   look-up and a few atomic loads per candidate): no lock, no allocation; health checks run on
//!   the Ready backends only (the others get no requests);
//! - without a plan, or when plans stop coming, nothing changes: the last set stays.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;
use prescale_config::{FleetConfig, LoadBalancing};
use prescale_gossip::{BackendPhase, PlannedBackend};
use serde::Serialize;

use crate::error::ProxyError;
use crate::grants::{GrantTable, ShedCounters};
use crate::plan::{FleetOutcome, PhaseCounts, PlanError, SetChange};
use crate::upstream_pool::IdleConnections;

mod probe;
mod upstream;

use probe::HealthProbe;
pub use upstream::Upstream;

/// Idle keep-alive connections kept per backend (beyond that, released connections close).
pub const IDLE_CONNECTIONS_PER_BACKEND: usize = 512;
/// Most attempts one request makes: the first and up to 10 retries (the most `retries` a fleet
/// may configure).
pub const MAX_ATTEMPTS: usize = 11;

/// Identities of backend states: never reused while the process runs.
static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// `ready_since_ms` of a backend that has never been Ready.
const NEVER: u64 = u64::MAX;

/// Index of a fleet in [`Fleets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FleetIdx(pub u16);

/// The backends one request has tried, by identity ([`BackendState::id`]): a small inline list,
/// as many as a request may make attempts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried {
    ids: [u64; MAX_ATTEMPTS],
    len: u8,
}

impl Tried {
    pub const fn new() -> Self {
        Tried {
            ids: [0; MAX_ATTEMPTS],
            len: 0,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids[..usize::from(self.len)].contains(&id)
    }

    /// Adds a backend; false when the list is full (no further attempt may be made).
    pub fn insert(&mut self, id: u64) -> bool {
        if self.contains(id) {
            return true;
        }
        let Some(slot) = self.ids.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = id;
        self.len += 1;
        true
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == MAX_ATTEMPTS
    }
}

/// What the proxy knows about one backend: where it is, its phase, health, ejection, counters
/// and idle connections. Shared by every set it is part of and by the requests on it.
#[derive(Debug)]
pub struct BackendState {
    id: u64,
    pub addr: SocketAddr,
    /// How pingora connects to it (address, timeouts, pool key), built once.
    pub peer: HttpPeer,
    /// Keep-alive connections of the direct path waiting for a request.
    pub idle: IdleConnections,
    /// The name the config gave it (its TLS server name); `None` for a planned backend.
    host: Option<String>,
    /// The backend as the health check probes it.
    target: Backend,
    phase: AtomicU8,
    /// Unix milliseconds it entered its phase.
    since_ms: AtomicU64,
    /// Unix milliseconds it last became Ready ([`NEVER`] if it has not been).
    ready_since_ms: AtomicU64,
    /// The active health check's verdict (a backend starts healthy).
    healthy: AtomicBool,
    /// Consecutive passed checks while unhealthy / failed checks while healthy.
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    /// Shared with the backend's successor when a reload rebuilds it ([`Fleet::reconfigure`]),
    /// so requests begun before count on after.
    pub in_flight: Arc<AtomicU32>,
    pub requests: Arc<AtomicU64>,
    pub failures: Arc<AtomicU64>,
    /// Consecutive failed requests (passive health).
    consecutive_failures: AtomicU32,
    /// Milliseconds since the fleet's epoch until which the backend is ejected (0 = not ejected).
    ejected_until_ms: AtomicU64,
    /// The in-flight count of the backend's fleet (shared by all its backends).
    fleet_in_flight: Arc<AtomicU32>,
}

fn phase_code(phase: BackendPhase) -> u8 {
    match phase {
        BackendPhase::Warming => 0,
        BackendPhase::Ready => 1,
        BackendPhase::Draining => 2,
    }
}

fn phase_of(code: u8) -> BackendPhase {
    match code {
        0 => BackendPhase::Warming,
        1 => BackendPhase::Ready,
        _ => BackendPhase::Draining,
    }
}

/// The phase as the admin API and metrics name it.
pub fn phase_name(phase: BackendPhase) -> &'static str {
    match phase {
        BackendPhase::Warming => "warming",
        BackendPhase::Ready => "ready",
        BackendPhase::Draining => "draining",
    }
}

const READY: u8 = 1;

impl BackendState {
    /// Identity for the tried set, unique for the life of the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn phase(&self) -> BackendPhase {
        phase_of(self.phase.load(Ordering::Relaxed))
    }

    pub fn is_ready(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == READY
    }

    /// Unix milliseconds it entered its current phase.
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Relaxed)
    }

    /// Unix milliseconds it last became Ready, if it ever was.
    pub fn ready_since_ms(&self) -> Option<u64> {
        Some(self.ready_since_ms.load(Ordering::Relaxed)).filter(|&ms| ms != NEVER)
    }

    /// Whether the active health check says healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether a new request may go here (`now_ms` on the fleet's clock).
    fn routable(&self, now_ms: u64) -> bool {
        self.is_ready()
            && self.is_healthy()
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn set_phase(&self, phase: BackendPhase, since_ms: u64) {
        let previous = self.phase.swap(phase_code(phase), Ordering::Relaxed);
        self.since_ms.store(since_ms, Ordering::Relaxed);
        if phase == BackendPhase::Ready {
            self.ready_since_ms.store(since_ms, Ordering::Relaxed);
        }
        if phase == BackendPhase::Draining && previous != phase_code(BackendPhase::Draining) {
            // No new request will use them; closing them lets the backend drain.
            self.idle.clear();
        }
    }

    /// Books one active check; returns the new verdict when it flipped.
    fn observe_check(
        &self,
        passed: bool,
        healthy_threshold: usize,
        unhealthy_threshold: usize,
    ) -> Option<bool> {
        let healthy = self.is_healthy();
        let (towards, against, threshold) = if passed {
            (
                &self.check_successes,
                &self.check_failures,
                healthy_threshold,
            )
        } else {
            (
                &self.check_failures,
                &self.check_successes,
                unhealthy_threshold,
            )
        };
        against.store(0, Ordering::Relaxed);
        if passed == healthy {
            towards.store(0, Ordering::Relaxed);
            return None;
        }
        let count = towards.fetch_add(1, Ordering::Relaxed) as usize + 1;
        if count < threshold {
            return None;
        }
        towards.store(0, Ordering::Relaxed);
        self.healthy.store(passed, Ordering::Relaxed);
        Some(passed)
    }

    /// Starts counting a request against the backend and its fleet; the counts drop with the
    /// guard, which keeps the backend alive (a set swap meanwhile changes nothing for it).
    pub fn begin(self: Arc<Self>) -> InFlight {
        self.fleet_in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { backend: self }
    }
}

/// How one set chooses among its Ready backends.
enum Selection {
    RoundRobin(Arc<RoundRobin>),
    Consistent(Arc<Consistent>),
}

/// One immutable generation of a fleet's backends.
pub struct BackendSet {
    backends: Vec<Arc<BackendState>>,
    by_addr: HashMap<SocketAddr, usize>,
    selection: Selection,
    /// Backends in `selection` (the Ready ones when the set was built).
    selectable: usize,
}

impl BackendSet {
    fn build(backends: Vec<Arc<BackendState>>, load_balancing: LoadBalancing) -> Self {
        let by_addr = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.addr, i))
            .collect();
        let ready: BTreeSet<Backend> = backends
            .iter()
            .filter(|b| b.is_ready())
            .map(|b| b.target.clone())
            .collect();
        let selection = match load_balancing {
            LoadBalancing::RoundRobin => Selection::RoundRobin(Arc::new(RoundRobin::build(&ready))),
            LoadBalancing::ConsistentHash => {
                Selection::Consistent(Arc::new(Consistent::build(&ready)))
            }
        };
        BackendSet {
            backends,
            by_addr,
            selection,
            selectable: ready.len(),
        }
    }

    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<BackendState>> {
        self.by_addr.get(addr).map(|&i| &self.backends[i])
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The first candidate of `candidates` a new request of `tried` may go to.
    /// The first candidate that is routable, untried and below `max_in_flight` requests (0: no
    /// cap).
    fn pick(
        &self,
        mut candidates: impl BackendIter,
        tried: &Tried,
        now_ms: u64,
        max_in_flight: u32,
    ) -> Option<Arc<BackendState>> {
        // As pingora's balancer bounds its walk (round robin's fallbacks and the ring may repeat
        // backends).
        let max_iterations = self.selectable * 2 + 1;
        for _ in 0..max_iterations {
            let candidate = candidates.next()?;
            let Some(&index) = candidate.addr.as_inet().and_then(|a| self.by_addr.get(a)) else {
                continue;
            };
            let backend = &self.backends[index];
            if backend.routable(now_ms)
                && !tried.contains(backend.id)
                && (max_in_flight == 0 || backend.in_flight.load(Ordering::Relaxed) < max_in_flight)
            {
                return Some(Arc::clone(backend));
            }
        }
        None
    }
}

/// One fleet of the node's region.
pub struct Fleet {
    pub name: String,
    /// The fleet's config as last applied (at start, then by each reload).
    config: ArcSwap<FleetConfig>,
    set: ArcSwap<BackendSet>,
    epoch: Instant,
    in_flight: Arc<AtomicU32>,
    /// Per backend, for its idle connections.
    worker_threads: usize,
    /// How its backends are spoken to (protocol, TLS), shared by every backend's peer.
    upstream: ArcSwap<Upstream>,
    /// `upstream.general_path_only()`, read per request by the front door.
    general_path_only: AtomicBool,
    probe: ArcSwap<HealthProbe>,
    /// Serialises set replacements (plans, reloads), never taken on the request path.
    apply_lock: Mutex<()>,
    /// Version of the last plan applied to this fleet ([`NEVER`]: none).
    plan_version: AtomicU64,
    /// A plan listed backends for this static fleet (warned about once).
    warned_static_plan: AtomicBool,
    /// Per-profile grants while the fleet's cap binds (`None`: every profile admitted).
    grants: arc_swap::ArcSwapOption<GrantTable>,
    /// Requests shed by grant, per profile.
    pub grant_shed: ShedCounters,
    /// Re-resolutions of its backend names (`resolve = true`).
    pub dns: DnsCounters,
    /// The settings a reload may change, read per request.
    limits: FleetLimits,
}

/// A fleet's settings that a config reload may change (`prescale_proxy::reload`); the rest of
/// `Fleet::config` is fixed at start.
#[derive(Debug)]
struct FleetLimits {
    retries: AtomicU32,
    eject_after_failures: AtomicU32,
    eject_secs: AtomicU64,
    max_in_flight_per_backend: AtomicU32,
    max_connections_per_backend: AtomicU32,
}

impl FleetLimits {
    fn of(config: &FleetConfig) -> Self {
        let limits = FleetLimits {
            retries: AtomicU32::new(0),
            eject_after_failures: AtomicU32::new(0),
            eject_secs: AtomicU64::new(0),
            max_in_flight_per_backend: AtomicU32::new(0),
            max_connections_per_backend: AtomicU32::new(0),
        };
        limits.set(config);
        limits
    }

    fn set(&self, config: &FleetConfig) {
        self.retries.store(config.retries, Ordering::Relaxed);
        self.eject_after_failures
            .store(config.eject_after_failures, Ordering::Relaxed);
        self.eject_secs.store(config.eject_secs, Ordering::Relaxed);
        self.max_in_flight_per_backend
            .store(config.max_in_flight_per_backend, Ordering::Relaxed);
        self.max_connections_per_backend
            .store(config.max_connections_per_backend, Ordering::Relaxed);
    }
}

/// One backend of a fleet whose names were resolved: its address and the name it came from
/// (its TLS server name), `None` for one given as an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub addr: SocketAddr,
    pub host: Option<String>,
}

/// Re-resolutions of a fleet's backend names, by outcome (all its names in one round).
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub succeeded: AtomicU64,
    /// A name did not resolve (its last addresses were kept).
    pub failed: AtomicU64,
}

/// Outcome of one attempt on a backend, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    /// Could not connect, timed out, or the connection broke before a response.
    Failed,
}

impl Fleet {
    /// `worker_threads`: the proxy's threads (each gets its own idle upstream connections). A
    /// static fleet's backends are resolved here and Ready from now on; a provisioned fleet
    /// starts with none.
    pub fn new(config: &FleetConfig, worker_threads: usize) -> Result<Self, ProxyError> {
        let mut fleet = Fleet {
            name: config.name.clone(),
            config: ArcSwap::from_pointee(config.clone()),
            set: ArcSwap::from_pointee(BackendSet::build(Vec::new(), config.load_balancing)),
            epoch: Instant::now(),
            in_flight: Arc::new(AtomicU32::new(0)),
            worker_threads,
            general_path_only: AtomicBool::new(false),
            upstream: ArcSwap::from_pointee(Upstream::load(config)?),
            probe: ArcSwap::from_pointee(HealthProbe::new(config)),
            apply_lock: Mutex::new(()),
            plan_version: AtomicU64::new(NEVER),
            warned_static_plan: AtomicBool::new(false),
            grants: arc_swap::ArcSwapOption::empty(),
            grant_shed: ShedCounters::default(),
            dns: DnsCounters::default(),
            limits: FleetLimits::of(config),
        };
        fleet.general_path_only = AtomicBool::new(fleet.upstream.load().general_path_only());
        if !fleet.is_provisioned() {
            let now = unix_ms();
            let backends = static_backends(config)?
                .into_iter()
                .map(|backend| {
                    let state = fleet.new_backend(backend.addr, backend.host.as_deref());
                    state.set_phase(BackendPhase::Ready, now);
                    Arc::new(state)
                })
                .collect();
            fleet.set = ArcSwap::from_pointee(BackendSet::build(backends, config.load_balancing));
        }
        Ok(fleet)
    }

    /// `host`: the backend's name in the config (its TLS server name); `None` for a planned one.
    fn new_backend(&self, addr: SocketAddr, host: Option<&str>) -> BackendState {
        let config = self.config.load();
        BackendState {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            peer: self.upstream.load().peer(addr, host, &config.timeouts),
            idle: IdleConnections::new(
                IDLE_CONNECTIONS_PER_BACKEND,
                self.worker_threads,
                Duration::from_millis(config.timeouts.idle_ms),
            ),
            host: host.map(str::to_string),
            target: Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            },
            phase: AtomicU8::new(phase_code(BackendPhase::Warming)),
            since_ms: AtomicU64::new(0),
            ready_since_ms: AtomicU64::new(NEVER),
            healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            in_flight: Arc::new(AtomicU32::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(AtomicU64::new(0)),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            fleet_in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// `old` as the fleet's current settings build it (new timeouts in its peer and idle
    /// pool): the same identity, phase, health, ejection and counters (in-flight, requests and
    /// failures shared with `old`, whose requests finish on their connections); no idle
    /// connection is carried over.
    fn successor(&self, config: &FleetConfig, old: &BackendState) -> BackendState {
        let relaxed = Ordering::Relaxed;
        BackendState {
            id: old.id,
            addr: old.addr,
            peer: self
                .upstream
                .load()
                .peer(old.addr, old.host.as_deref(), &config.timeouts),
            idle: IdleConnections::new(
                IDLE_CONNECTIONS_PER_BACKEND,
                self.worker_threads,
                Duration::from_millis(config.timeouts.idle_ms),
            ),
            host: old.host.clone(),
            target: old.target.clone(),
            phase: AtomicU8::new(old.phase.load(relaxed)),
            since_ms: AtomicU64::new(old.since_ms.load(relaxed)),
            ready_since_ms: AtomicU64::new(old.ready_since_ms.load(relaxed)),
            healthy: AtomicBool::new(old.healthy.load(relaxed)),
            check_successes: AtomicU32::new(old.check_successes.load(relaxed)),
            check_failures: AtomicU32::new(old.check_failures.load(relaxed)),
            in_flight: Arc::clone(&old.in_flight),
            requests: Arc::clone(&old.requests),
            failures: Arc::clone(&old.failures),
            consecutive_failures: AtomicU32::new(old.consecutive_failures.load(relaxed)),
            ejected_until_ms: AtomicU64::new(old.ejected_until_ms.load(relaxed)),
            fleet_in_flight: Arc::clone(&self.in_flight),
        }
    }

    /// Requests to this fleet's backends need the general path (TLS or HTTP/2 upstream).
    pub fn general_path_only(&self) -> bool {
        self.general_path_only.load(Ordering::Relaxed)
    }

    /// Whether the fleet's backends come from plans (its provisioner starts them) rather than
    /// the config.
    pub fn is_provisioned(&self) -> bool {
        self.config
            .load()
            .provisioner
            .as_ref()
            .is_some_and(|p| p.supplies_backends())
    }

    /// Picks a Ready, healthy, non-ejected backend that is not in `tried` and has room under
    /// `max_connections_per_backend`. `user_key` steers consistent hashing; round robin ignores
    /// it.
    pub fn select(&self, user_key: u64, tried: &Tried) -> Option<Arc<BackendState>> {
        let set = self.set.load();
        if set.selectable == 0 {
            return None;
        }
        let now_ms = self.now_ms();
        let key = user_key.to_le_bytes();
        let cap = self
            .limits
            .max_connections_per_backend
            .load(Ordering::Relaxed);
        match &set.selection {
            Selection::RoundRobin(s) => set.pick(s.iter(&key), tried, now_ms, cap),
            Selection::Consistent(s) => set.pick(s.iter(&key), tried, now_ms, cap),
        }
    }

    /// `retries`: further attempts a request may make after its first fails.
    pub fn retries(&self) -> u32 {
        self.limits.retries.load(Ordering::Relaxed)
    }

    /// `max_in_flight_per_backend` (0: no limit).
    pub fn max_in_flight_per_backend(&self) -> u32 {
        self.limits
            .max_in_flight_per_backend
            .load(Ordering::Relaxed)
    }

    /// The current set (for reports: requests use [`Fleet::select`]).
    pub fn backends(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Passive health: enough consecutive failures eject the backend for `eject_secs`.
    pub fn record(&self, backend: &BackendState, attempt: Attempt) {
        match attempt {
            Attempt::Succeeded => {
                if backend.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    backend.consecutive_failures.store(0, Ordering::Relaxed);
                }
            }
            Attempt::Failed => {
                backend.failures.fetch_add(1, Ordering::Relaxed);
                let failures = backend.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.limits.eject_after_failures.load(Ordering::Relaxed) {
                    let seconds = self.limits.eject_secs.load(Ordering::Relaxed);
                    let until = self.now_ms() + seconds * 1000;
                    backend.ejected_until_ms.store(until, Ordering::Relaxed);
                    backend.consecutive_failures.store(0, Ordering::Relaxed);
                    tracing::warn!(fleet = %self.name, backend = %backend.addr, seconds, "backend ejected after consecutive failures");
                }
            }
        }
    }

    pub fn is_ejected(&self, backend: &BackendState) -> bool {
        backend.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Backends a new request may go to: Ready, healthy and not ejected.
    pub fn available(&self) -> usize {
        let now_ms = self.now_ms();
        self.set
            .load()
            .backends
            .iter()
            .filter(|b| b.routable(now_ms))
            .count()
    }

    /// Backends of the current set per phase.
    pub fn phase_counts(&self) -> PhaseCounts {
        let mut counts = PhaseCounts::default();
        for backend in self.set.load().backends.iter() {
            match backend.phase() {
                BackendPhase::Warming => counts.warming += 1,
                BackendPhase::Ready => counts.ready += 1,
                BackendPhase::Draining => counts.draining += 1,
            }
        }
        counts
    }

    /// Runs one round of active health checks, at once on every Ready backend of the current
    /// set (Warming and Draining ones get no requests; a backend entering Ready starts from the
    /// verdict it has, healthy for a new one). `healthy_threshold` consecutive passes make an
    /// unhealthy backend healthy, `unhealthy_threshold` consecutive failures the reverse.
    pub async fn check_health(&self) {
        let set = self.set.load_full();
        let now_ms = self.now_ms();
        for backend in set.backends.iter() {
            backend.idle.reap(now_ms);
        }
        // One probe for the whole round, even if a reload replaces it meanwhile.
        let round_probe = self.probe.load_full();
        let mut checks = tokio::task::JoinSet::new();
        for backend in set.backends.iter().filter(|b| b.is_ready()) {
            let backend = Arc::clone(backend);
            let probe = Arc::clone(&round_probe);
            checks.spawn(async move {
                let result = probe.check(&backend.peer).await;
                (backend, result)
            });
        }
        drop(set);
        let config = self.config.load_full();
        let thresholds = &config.health_check;
        while let Some(joined) = checks.join_next().await {
            let (backend, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    // That backend keeps its verdict for this round.
                    tracing::warn!(fleet = %self.name, error = %e, "health check task failed");
                    continue;
                }
            };
            match backend.observe_check(
                result.is_ok(),
                thresholds.healthy_threshold,
                thresholds.unhealthy_threshold,
            ) {
                Some(true) => {
                    tracing::info!(fleet = %self.name, backend = %backend.addr, "backend passes its health check again")
                }
                Some(false) => {
                    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(fleet = %self.name, backend = %backend.addr, %error, "backend fails its health check")
                }
                None => {}
            }
        }
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.config.load().health_check.interval_ms)
    }

    /// Replaces a provisioned fleet's set with `planned` (its complete list of backends). A
    /// backend whose address was in the set keeps its state, with the planned phase; new ones
    /// start healthy with no history; the others leave the set (requests in flight on them
    /// finish). Nothing changes when the list cannot be used or the fleet is static.
    pub fn apply_backends(&self, planned: &[PlannedBackend]) -> Result<SetChange, PlanError> {
        if !self.is_provisioned() {
            return Err(PlanError::StaticFleet {
                fleet: self.name.clone(),
            });
        }
        let mut parsed = Vec::with_capacity(planned.len());
        let mut seen = HashSet::with_capacity(planned.len());
        for backend in planned {
            let addr: SocketAddr = backend.address.parse().map_err(|_| PlanError::BadAddress {
                fleet: self.name.clone(),
                address: backend.address.clone(),
            })?;
            if !seen.insert(addr) {
                return Err(PlanError::DuplicateAddress {
                    fleet: self.name.clone(),
                    address: backend.address.clone(),
                });
            }
            parsed.push((addr, backend));
        }
        let change = self.replace_set(
            parsed,
            |existing, planned| {
                let was_ready = existing.is_ready();
                existing.set_phase(planned.phase, planned.since_ms);
                was_ready != existing.is_ready()
            },
            |addr, planned| {
                let state = self.new_backend(addr, None);
                state.set_phase(planned.phase, planned.since_ms);
                state
            },
        );
        Ok(change)
    }

    /// Replaces a static fleet's set with `resolved`, its backends as the names in its config
    /// resolve now (every address, and the addresses given as such). A backend whose address
    /// persists keeps its state; new ones start Ready and healthy; the others leave the set
    /// (requests in flight on them finish). The set stays when nothing changed.
    pub fn replace_resolved(&self, resolved: &[ResolvedBackend]) -> SetChange {
        let now = unix_ms();
        let mut seen = HashSet::with_capacity(resolved.len());
        let unique = resolved
            .iter()
            .filter(|backend| seen.insert(backend.addr))
            .map(|backend| (backend.addr, backend));
        self.replace_set(
            unique,
            |_, _| false,
            |addr, backend| {
                let state = self.new_backend(addr, backend.host.as_deref());
                state.set_phase(BackendPhase::Ready, now);
                tracing::info!(fleet = %self.name, backend = %addr, name = backend.host.as_deref().unwrap_or("-"), "backend joined the fleet");
                state
            },
        )
    }

    /// Makes the set the backends at `entries` (unique addresses) under the apply lock: one
    /// already in the set is kept, with `keep` applied to it (true when that changed whether it
    /// is Ready); a new one is made by `create`; the rest leave. The set (and its ring) stays
    /// when no backend came or went and none changed Ready-ness.
    fn replace_set<T>(
        &self,
        entries: impl IntoIterator<Item = (SocketAddr, T)>,
        mut keep: impl FnMut(&BackendState, &T) -> bool,
        mut create: impl FnMut(SocketAddr, &T) -> BackendState,
    ) -> SetChange {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.set.load_full();
        let mut next = Vec::new();
        let mut listed = HashSet::new();
        let mut change = SetChange::default();
        let mut selection_changed = false;
        for (addr, entry) in entries {
            listed.insert(addr);
            let state = match current.get(&addr) {
                Some(existing) => {
                    change.kept += 1;
                    selection_changed |= keep(existing, &entry);
                    Arc::clone(existing)
                }
                None => {
                    change.added += 1;
                    Arc::new(create(addr, &entry))
                }
            };
            next.push(state);
        }
        change.removed = current.len() - change.kept;
        if change.added == 0 && change.removed == 0 && !selection_changed {
            return change;
        }
        for gone in current
            .backends
            .iter()
            .filter(|b| !listed.contains(&b.addr))
        {
            tracing::info!(fleet = %self.name, backend = %gone.addr, in_flight = gone.in_flight.load(Ordering::Relaxed), "backend left the fleet");
        }
        self.set.store(Arc::new(BackendSet::build(
            next,
            self.config.load().load_balancing,
        )));
        change
    }

    /// The fleet's config as last applied.
    pub fn config(&self) -> Arc<FleetConfig> {
        self.config.load_full()
    }

    /// Takes a reload's config for this fleet (its name, region, provisioner and backend
    /// source unchanged, as `reload` checks): its limits, then, when they differ, the health
    /// check (from the next round), and the timeouts, load balancing and `upstream` (loaded by
    /// the caller from `next`, so that a file that cannot be used refuses the reload before
    /// anything changed), for which every backend is rebuilt as its successor (same state and
    /// counters, new peer and idle pool) in a new set. Returns the settings that changed, as the
    /// config names them.
    pub fn reconfigure(&self, next: &FleetConfig, upstream: Option<Upstream>) -> Vec<&'static str> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.config.load_full();
        let mut changed = Vec::new();
        self.limits.set(next);
        let upstream_changed = upstream.is_some();
        if let Some(upstream) = upstream {
            // Before the new peers exist: a request that sees the new peers also takes the
            // path they need; one that still sees the old set may take the general path for a
            // cleartext backend, which serves it too.
            self.general_path_only.store(
                self.general_path_only() || upstream.general_path_only(),
                Ordering::Relaxed,
            );
            self.upstream.store(Arc::new(upstream));
            changed.push("upstream");
        }
        if was.health_check != next.health_check {
            self.probe.store(Arc::new(HealthProbe::new(next)));
            changed.push("health_check");
        }
        let timeouts = was.timeouts != next.timeouts;
        if timeouts {
            changed.push("timeouts");
        }
        if was.load_balancing != next.load_balancing {
            changed.push("load_balancing");
        }
        self.config.store(Arc::new(next.clone()));
        let rebuild = timeouts || upstream_changed;
        if rebuild || was.load_balancing != next.load_balancing {
            let current = self.set.load_full();
            let backends = current
                .backends
                .iter()
                .map(|old| match rebuild {
                    true => Arc::new(self.successor(next, old)),
                    false => Arc::clone(old),
                })
                .collect();
            self.set
                .store(Arc::new(BackendSet::build(backends, next.load_balancing)));
        }
        if upstream_changed {
            self.general_path_only
                .store(self.upstream.load().general_path_only(), Ordering::Relaxed);
        }
        changed
    }

    /// Applies this fleet's part of plan `version`: a provisioned fleet takes `backends` when
    /// the plan lists them (and keeps its set when not); a static fleet ignores them.
    pub fn apply_plan(&self, backends: Option<&[PlannedBackend]>, version: u64) -> FleetOutcome {
        let outcome = match (self.is_provisioned(), backends) {
            (true, Some(planned)) => match self.apply_backends(planned) {
                Ok(change) => FleetOutcome::Replaced(change),
                Err(e) => return FleetOutcome::Refused(e),
            },
            (true, None) => FleetOutcome::Kept,
            (false, listed) => {
                if listed.is_some() && !self.warned_static_plan.swap(true, Ordering::Relaxed) {
                    tracing::warn!(fleet = %self.name, "a plan lists backends for this fleet, whose backends are static in the config; ignored (and not logged again)");
                }
                FleetOutcome::Static {
                    ignored_backends: listed.is_some(),
                }
            }
        };
        self.plan_version.store(version, Ordering::Relaxed);
        outcome
    }

    /// Version of the last plan applied to this fleet.
    pub fn plan_version(&self) -> Option<u64> {
        Some(self.plan_version.load(Ordering::Relaxed)).filter(|&v| v != NEVER)
    }

    /// Milliseconds on the fleet's monotonic clock (real time).
    pub fn now_ms(&self) -> u64 {
        // +1 so that "ejected until 0" always means not ejected.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Puts grants in force (`None`: admit every profile).
    pub fn set_grants(&self, grants: Option<GrantTable>) {
        self.grants.store(grants.map(Arc::new));
    }

    /// The grants in force, if the cap binds.
    pub fn grants(&self) -> Option<Arc<GrantTable>> {
        self.grants.load_full()
    }

    /// Whether grants are in force (one atomic load: the request path's check).
    pub fn grant_table(&self) -> arc_swap::Guard<Option<Arc<GrantTable>>> {
        self.grants.load()
    }

    pub fn status(&self) -> FleetStatus {
        let set = self.set.load();
        let config = self.config.load();
        let now_ms = self.now_ms();
        FleetStatus {
            name: self.name.clone(),
            region: config.region.clone(),
            load_balancing: match config.load_balancing {
                LoadBalancing::RoundRobin => "round_robin",
                LoadBalancing::ConsistentHash => "consistent_hash",
            },
            provisioned: self.is_provisioned(),
            plan_version: self.plan_version(),
            in_flight: self.in_flight(),
            available_backends: set.backends.iter().filter(|b| b.routable(now_ms)).count(),
            backends: set
                .backends
                .iter()
                .map(|b| BackendStatus {
                    address: b.addr.to_string(),
                    state: phase_name(b.phase()),
                    state_since_ms: b.since_ms(),
                    ready_since_ms: b.ready_since_ms(),
                    healthy: b.is_healthy(),
                    ejected: b.ejected_until_ms.load(Ordering::Relaxed) > now_ms,
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    requests: b.requests.load(Ordering::Relaxed),
                    failures: b.failures.load(Ordering::Relaxed),
                })
                .collect(),
            grants: self
                .grants()
                .map(|table| {
                    table
                        .entries()
                        .iter()
                        .map(|e| crate::grants::GrantStatus {
                            profile: e.name.clone(),
                            revenue_weight: e.revenue_weight_milli as f64 / 1000.0,
                            requests_per_minute: e.requests_per_minute,
                            shed: self.grant_shed.get(e.profile),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Decrements the backend's and its fleet's in-flight counts when dropped; holds the backend
/// (whatever set it is in by then) for the request's attempt.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<BackendState>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.fleet_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub name: String,
    pub region: String,
    pub load_balancing: &'static str,
    /// Backends come from plans (the fleet has a provisioner).
    pub provisioned: bool,
    /// Version of the last plan applied to this fleet.
    pub plan_version: Option<u64>,
    pub in_flight: u32,
    pub available_backends: usize,
    pub backends: Vec<BackendStatus>,
    /// Grants in force while the fleet's cap binds (empty: every profile admitted).
    pub grants: Vec<crate::grants::GrantStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    /// "warming" | "ready" | "draining".
    pub state: &'static str,
    /// Unix milliseconds it entered `state`.
    pub state_since_ms: u64,
    /// Unix milliseconds it last became ready (null if never).
    pub ready_since_ms: Option<u64>,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
}

/// Every address `backend` (`host:port`) stands for, by the system's resolver, in its order.
/// The backends of a fleet whose config lists them, by the system's resolver now: every address
/// of each name, each address once (later repeats are logged and skipped). Names of a
/// `resolve = true` fleet are left to `backend_names` (only its addresses are here).
pub fn static_backends(config: &FleetConfig) -> Result<Vec<ResolvedBackend>, ProxyError> {
    let mut seen = HashSet::new();
    let mut backends = Vec::with_capacity(config.backends.len());
    for backend in &config.backends {
        let host = prescale_config::backend_host(backend);
        if config.resolve && host.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        let addrs = resolve(backend).map_err(|source| ProxyError::Backend {
            fleet: config.name.clone(),
            backend: backend.clone(),
            source,
        })?;
        for addr in addrs {
            if !seen.insert(addr) {
                tracing::warn!(fleet = %config.name, %backend, %addr, "backend resolves to an address listed before; kept once");
                continue;
            }
            backends.push(ResolvedBackend {
                addr,
                host: Some(host.to_string()),
            });
        }
    }
    Ok(backends)
}

fn resolve(backend: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = backend.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ));
    }
    Ok(addrs)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// All fleets of the node's region.
pub struct Fleets {
    fleets: Vec<Arc<Fleet>>,
    /// Told when a reload changed the `backends` of a fleet with `resolve = true`: the
    /// re-resolution loop ([`crate::backend_names`]) starts a round at once.
    names_changed: Arc<tokio::sync::Notify>,
}

impl Fleets {
    pub fn new(configs: &[&FleetConfig], worker_threads: usize) -> Result<Self, ProxyError> {
        let fleets = configs
            .iter()
            .map(|c| Fleet::new(c, worker_threads).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fleets {
            fleets,
            names_changed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// What [`Fleets::resolve_names_now`] wakes.
    pub fn names_changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.names_changed)
    }

    /// Asks the re-resolution loop for a round now (a resolving fleet's names changed).
    pub fn resolve_names_now(&self) {
        self.names_changed.notify_one();
    }

    pub fn get(&self, index: FleetIdx) -> &Arc<Fleet> {
        &self.fleets[index.0 as usize]
    }

    pub fn index_of(&self, name: &str) -> Option<FleetIdx> {
        self.fleets
            .iter()
            .position(|f| f.name == name)
            .map(|i| FleetIdx(i as u16))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Fleet>> {
        self.fleets.iter()
    }

    pub fn len(&self) -> usize {
        self.fleets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fleets.is_empty()
    }
}

#[cfg(test)]
mod tests;

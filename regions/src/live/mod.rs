//! The live driver: the IO shell that runs the brain for a region, the way `prescale replay`
//! runs it on a trace — the same [`Brain`], fed complete minutes from the series store and
//! polled on its own wakeups, its decisions carried out by the fleets' provisioners and
//! published to the proxies as versioned plans.
//!
//! One [`LiveDriver::step`] at node time `now`:
//! 0. when the scheduled events changed (the admin API bumps a counter after each change; the
//!    first step always loads them), re-read them from the [`EventStore`] and hand them to the
//!    brain: `set_event` for each stored event, `remove_event` for ids that are gone;
//! 1. (first step only) rebuild the brain from the store: every covered minute of the history
//!    window is observed and learned in order, so model choice and calibration are what they
//!    were (and events of the history window teach their tags); running instances come from the
//!    provisioners, which adopt what still runs;
//! 2. hand over every minute that is complete ([`completeness`]): observed (zero for known
//!    profiles that sent nothing) or absent (no sketch covers it: missing data, not quiet);
//! 3. look again at the minutes handed in the last hour: requests that arrived late are counted
//!    and handed over as a correction (the brain adds them to their minute);
//! 4. poll the brain once the minute before `now` has been handed over (or is past the lateness
//!    bound), and log its decisions with their reasons;
//! 5. hold each fleet's count where it must stay (the cold window's floor, a static fleet's
//!    backends); publish the plan when it changed (each fleet's plan carries its serving count,
//!    so every change of what a provisioner is asked for is a new plan version); steer each
//!    provisioned fleet to its [`ProvisionTarget`] (the planned count, tiers, warm pool, reasons
//!    and that plan version); publish again when the provisioners changed the backends.
//!
//! Fail-static, by construction: when no proxy has reported for longer than the lateness bound
//! the brain is not polled (the fleet holds what it has); a provisioner failure leaves the
//! planned count where it was; during the first minutes after a start (the cold window) no plan
//! shrinks a fleet below what it was running when the driver took over.

pub mod completeness;
pub mod record;
pub mod tiers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prescale_brain::brain::{Action, Brain, Decision, EventEffect, FleetKey, FleetSpec, WarmPool};
use prescale_brain::forecast::ForecastPoint;
use prescale_brain::planner::capacity::CapacityEstimate;
use prescale_brain::planner::Tiers;
use prescale_gossip::{FleetPlan, NodeClock, PlanUpdate, PlannedBackend, TierTarget};
use serde::Serialize;

pub use completeness::{CompletenessRule, MinuteState, NodeProgress};
pub use record::{FleetAccuracy, ScoredMinute};

use crate::events::{EventStore, StoredEvent};
use crate::history::{FleetProfileRecord, History, Outlook};
use crate::ledger::{DecisionRecord, Ledger};
use crate::provision::{ProvisionTarget, Provisioner, ProvisionerStatus};
use crate::store::{is_ingest_node, SeriesStore};

/// How far back late requests are looked for and handed over as corrections.
pub const LATE_WINDOW_MINUTES: u64 = 60;
/// The longest real time between two steps (provisioner health checks, plan pushes).
pub const STEP_INTERVAL: Duration = Duration::from_millis(200);
/// Minutes of each proxy's traffic a grant is split by.
pub const GRANT_SHARE_MINUTES: u64 = 5;
/// Decisions kept per fleet in the view.
const VIEW_DECISIONS: usize = 20;
/// Horizons the view forecasts, minutes ahead.
pub const VIEW_HORIZONS: [i64; 3] = [5, 30, 1440];

/// A fleet as the driver runs it.
pub struct LiveFleet {
    pub spec: FleetSpec,
    /// `None`: static backends, planned and reported but not provisioned.
    pub provisioner: Option<Box<dyn Provisioner>>,
    /// Backends a static fleet has (its config).
    pub static_backends: u32,
}

/// The driver's settings for one region.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub region: String,
    pub rule: CompletenessRule,
    /// Minutes of stored history the brain is rebuilt from at start.
    pub history_minutes: u64,
    /// Start in forecast-only mode (plan and report, provision nothing).
    pub forecast_only: bool,
    /// Minutes after the start during which no fleet is shrunk below what it ran at the start.
    pub cold_minutes: u64,
}

/// Publishes a plan to the region's proxies.
pub type PlanPublisher = Box<dyn FnMut(PlanUpdate) -> Result<(), String> + Send>;
/// Told of every decision as it is made (`prescale up` prints them).
pub type DecisionObserver = Box<dyn FnMut(&DecisionRecord) + Send>;

/// Counters of the driver, for `/metrics`.
#[derive(Debug, Default)]
pub struct LiveStats {
    pub minutes_observed: AtomicU64,
    pub minutes_absent: AtomicU64,
    pub late_minutes: AtomicU64,
    pub late_requests: AtomicU64,
    pub ticks: AtomicU64,
    pub last_tick_micros: AtomicU64,
    pub max_tick_micros: AtomicU64,
    pub decisions: AtomicU64,
    pub plans_published: AtomicU64,
    pub publish_failures: AtomicU64,
    pub store_failures: AtomicU64,
    /// Times the scheduled events were re-read and handed to the brain.
    pub event_syncs: AtomicU64,
}

/// What the driver shares with the admin API: its latest view, the mode switch, the counters.
pub struct LiveShared {
    view: Mutex<LiveView>,
    forecast_only: AtomicBool,
    /// Bumped after every change of the stored scheduled events; the driver re-reads them when
    /// it differs from what it last applied.
    events_generation: AtomicU64,
    membership: Mutex<Option<AliveProxies>>,
    /// What personas set for profiles the proxies route at run time (learned ones), by name.
    profile_settings: Mutex<BTreeMap<String, RuntimeProfile>>,
    /// Bumped at every change of `profile_settings`.
    settings_generation: AtomicU64,
    pub stats: LiveStats,
}

/// What the planner takes for a profile from the persona it maps to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeProfile {
    /// Revenue weight (None: the config's `[[profiles]]` entry, else the default).
    pub revenue_weight: Option<f64>,
    /// Resources per request/s, for fleets sized on their binding resource.
    pub resources: Option<prescale_brain::brain::Resources>,
}

/// The names of the region's proxies membership counts alive.
pub type AliveProxies = Box<dyn Fn() -> Vec<String> + Send + Sync>;

impl std::fmt::Debug for LiveShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveShared")
            .field("forecast_only", &self.forecast_only)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl LiveShared {
    /// The latest view of the region.
    pub fn view(&self) -> LiveView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn forecast_only(&self) -> bool {
        self.forecast_only.load(Ordering::Relaxed)
    }

    /// Forecast-only: plan and report, start and stop nothing (takes effect at the next step).
    pub fn set_forecast_only(&self, on: bool) {
        self.forecast_only.store(on, Ordering::Relaxed);
    }

    /// Sets what personas give each profile routed at run time (see [`RuntimeProfile`]); the
    /// driver applies it at its next step and as the profiles' minutes come in.
    pub fn set_profile_settings(&self, settings: BTreeMap<String, RuntimeProfile>) {
        let mut current = self
            .profile_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *current != settings {
            *current = settings;
            self.settings_generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn profile_settings(&self) -> BTreeMap<String, RuntimeProfile> {
        self.profile_settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets membership tell the driver which proxies of its region are alive (the names of
    /// alive proxy members); without it, liveness is the proxies' own reporting.
    pub fn use_membership(&self, alive_proxies: AliveProxies) {
        *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = Some(alive_proxies);
    }

    fn alive_proxies(&self) -> Option<Vec<String>> {
        let source = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        source.as_ref().map(|alive| alive())
    }

    /// Tells the driver the stored scheduled events changed (call after the change is
    /// committed); it applies them at its next step.
    pub fn events_changed(&self) {
        self.events_generation.fetch_add(1, Ordering::Release);
    }
}

/// The region as the admin API shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveView {
    pub region: String,
    /// Node time of the step that made this view, unix ms.
    pub at_ms: u64,
    pub forecast_only: bool,
    /// Why the brain is not being polled, when it is not.
    pub holding: Option<String>,
    /// End of the last minute handed to the brain, unix ms.
    pub observed_through_ms: Option<u64>,
    pub plan_version: Option<u64>,
    pub fleets: Vec<FleetView>,
    pub series: Vec<SeriesView>,
    /// Scheduled events of the region that are running or yet to come, by start: what the
    /// forecasts and the plan take into account.
    pub events: Vec<EventView>,
}

/// A scheduled event as the plan sees it.
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    /// The event as stored (id, tag, start and end in node-time unix seconds, scope, effect,
    /// version, stamps).
    #[serde(flatten)]
    pub event: StoredEvent,
    /// Running now (`start <= now < end`); otherwise it is yet to come.
    pub active: bool,
    /// What the forecasts of the series it touches are multiplied by while it runs: the
    /// effect's factor, or for `learn_from_tag` the ratio its tag learned (1 until an event
    /// with the tag has finished).
    pub multiplier: f64,
    /// For `learn_from_tag`: the ratio of observed to forecast demand of the last finished
    /// event with the same tag, if there was one.
    pub learned: Option<f64>,
}

/// One fleet's plan, instances and forecast.
#[derive(Clone, Debug, Serialize)]
pub struct FleetView {
    pub fleet: String,
    pub provisioned: bool,
    /// Instances the plan wants serving (warming and ready).
    pub planned: u32,
    pub tiers: Option<Tiers>,
    /// Which forecast sized the fleet (its total's or the sum of its profiles'), and how each
    /// has done at the lead time.
    pub sizing: Option<prescale_brain::brain::Sizing>,
    /// The feedback loop on the SLO tail: its factor, and the share of the last day's minutes
    /// over capacity against the target.
    pub tail: Option<prescale_brain::planner::tail::TailReport>,
    pub warm_pools: Vec<WarmPool>,
    pub capacity: Option<CapacityEstimate>,
    pub shed_order: Vec<String>,
    /// Capacity granted to each profile while the cap binds (empty when it does not).
    pub grants: Vec<prescale_brain::brain::ProfileGrant>,
    pub reason: Option<String>,
    pub instances: InstanceCounts,
    pub backends: Vec<PlannedBackend>,
    /// The instances of each tier (baseline, predictive, burst, guard, warm pool and its
    /// sub-pools, held, draining) with their phases ([`tiers`]); empty for static fleets.
    pub tier_sets: Vec<tiers::TierSet>,
    pub provisioner: Option<ProvisionerStatus>,
    /// The fleet total's forecast (requests per minute) at [`VIEW_HORIZONS`].
    pub forecast: Vec<HorizonPoint>,
    /// Minutes from asking for an instance until it serves a whole minute.
    pub lead_minutes: i64,
    /// The fleet total's forecast one lead time ahead: what capacity asked for now must meet.
    pub lead_forecast: Option<HorizonPoint>,
    /// What the plan expects of the coming day (refreshed each minute).
    pub outlook: Option<Outlook>,
    /// How the lead-time forecasts have done against the demand handed over since the start.
    pub accuracy: FleetAccuracy,
    /// Each candidate model's recent mean absolute error at 30 minutes (null until scored).
    pub model_errors: Vec<ModelError>,
    /// The latest decisions, newest first.
    pub decisions: Vec<DecisionRecord>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InstanceCounts {
    pub warming: u32,
    pub ready: u32,
    pub draining: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelError {
    pub model: &'static str,
    pub mean_absolute_error: Option<f64>,
}

/// One profile's forecast.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesView {
    pub profile: String,
    pub forecast: Vec<HorizonPoint>,
}

/// A forecast point with its interval, requests per minute.
#[derive(Clone, Debug, Serialize)]
pub struct HorizonPoint {
    pub horizon_minutes: i64,
    /// Unix seconds of the forecast minute's start.
    pub minute: i64,
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
    /// The bound the plan covers (the SLO quantile).
    pub slo_upper: f64,
    pub model: &'static str,
}

impl HorizonPoint {
    fn new(horizon_minutes: i64, p: &ForecastPoint) -> Self {
        HorizonPoint {
            horizon_minutes,
            minute: p.minute * 60,
            point: p.point,
            lower: p.lower,
            upper: p.upper,
            slo_upper: p.slo_upper,
            model: p.model.name(),
        }
    }
}

struct FleetRun {
    key: FleetKey,
    provisioner: Option<Box<dyn Provisioner>>,
    static_backends: u32,
    learn_capacity: bool,
    /// Serving instances when the driver took over (the cold window's floor).
    floor: u32,
    /// The latest decisions, newest first.
    recent: std::collections::VecDeque<DecisionRecord>,
    lead_forecast: Option<HorizonPoint>,
    recording: record::FleetRecording,
}

/// What was handed to the brain for one minute.
struct Handed {
    absent: bool,
    by_profile: BTreeMap<String, u64>,
}

/// The live driver of one region. See the module docs for what a step does.
pub struct LiveDriver {
    settings: LiveSettings,
    brain: Brain,
    store: SeriesStore,
    ledger: Ledger,
    fleets: Vec<FleetRun>,
    profiles: BTreeSet<String>,
    /// The fleet each profile's minutes were last routed to (as the stored rows say).
    routes: BTreeMap<String, String>,
    /// The persona settings in force, and the generation of [`LiveShared`]'s they were read at.
    persona_settings: BTreeMap<String, RuntimeProfile>,
    persona_generation: u64,
    /// Start (unix ms) of the next minute to hand over; `None` before the first step.
    next_minute_ms: Option<u64>,
    handed: BTreeMap<u64, Handed>,
    started_ms: Option<u64>,
    shared: Arc<LiveShared>,
    publish: PlanPublisher,
    observer: Option<DecisionObserver>,
    published: Option<Vec<FleetPlan>>,
    plan_version: Option<u64>,
    /// The version of the last plan issued (taken from the ledger), published or not: what
    /// the provisioners' targets refer to.
    issued_version: Option<u64>,
    forecasts: (Vec<Vec<HorizonPoint>>, Vec<SeriesView>),
    holding: Option<String>,
    /// Each proxy's recent traffic per profile, to split grants by (`None`: even splits).
    traffic: Option<Arc<crate::ingest::NodeTraffic>>,
    /// Proxies of the region that reported within the silence bound, at the last step.
    live_nodes: Vec<String>,
    /// Node time of the current step.
    now_ms: u64,
    /// Where scheduled events are kept; `None`: the brain gets none.
    event_store: Option<EventStore>,
    /// The events last read from the store (and handed to the brain), by start.
    events: Vec<StoredEvent>,
    /// The change counter the events were last read at.
    events_generation: Option<u64>,
    /// Where the capacity history is written (off until [`LiveDriver::use_history`]).
    recorder: record::Recorder,
}

impl LiveDriver {
    /// A driver for `settings.region`. Each fleet's brain state starts from the instances its
    /// provisioner runs now (adopted after a restart), or its static backends.
    pub fn new(
        settings: LiveSettings,
        mut brain: Brain,
        store: SeriesStore,
        ledger: Ledger,
        fleets: Vec<LiveFleet>,
        publish: PlanPublisher,
    ) -> Self {
        let mut profiles = BTreeSet::new();
        let mut runs = Vec::new();
        for fleet in fleets {
            let serving = match &fleet.provisioner {
                Some(p) => {
                    let s = p.status();
                    s.warming + s.ready
                }
                None => fleet.static_backends,
            };
            let mut spec = fleet.spec;
            spec.initial_instances = serving;
            profiles.extend(spec.profiles.iter().map(|p| p.name.clone()));
            runs.push(FleetRun {
                key: spec.key.clone(),
                provisioner: fleet.provisioner,
                static_backends: fleet.static_backends,
                learn_capacity: spec.learn_capacity.is_some(),
                floor: serving,
                recent: std::collections::VecDeque::new(),
                lead_forecast: None,
                recording: record::FleetRecording::default(),
            });
            brain.add_fleet(spec);
        }
        for run in &mut runs {
            if let Ok(last) = ledger.decisions(&settings.region, &run.key.fleet, VIEW_DECISIONS) {
                run.recent = last.into();
            }
        }
        let shared = Arc::new(LiveShared {
            view: Mutex::new(LiveView {
                region: settings.region.clone(),
                forecast_only: settings.forecast_only,
                ..LiveView::default()
            }),
            forecast_only: AtomicBool::new(settings.forecast_only),
            events_generation: AtomicU64::new(0),
            membership: Mutex::new(None),
            profile_settings: Mutex::new(BTreeMap::new()),
            settings_generation: AtomicU64::new(0),
            stats: LiveStats::default(),
        });
        LiveDriver {
            settings,
            brain,
            store,
            ledger,
            fleets: runs,
            profiles,
            routes: BTreeMap::new(),
            persona_settings: BTreeMap::new(),
            persona_generation: 0,
            next_minute_ms: None,
            handed: BTreeMap::new(),
            started_ms: None,
            shared,
            publish,
            observer: None,
            published: None,
            plan_version: None,
            issued_version: None,
            forecasts: (Vec::new(), Vec::new()),
            holding: None,
            traffic: None,
            live_nodes: Vec::new(),
            now_ms: 0,
            event_store: None,
            events: Vec::new(),
            events_generation: None,
            recorder: record::Recorder::default(),
        }
    }

    /// Record the capacity history in `history` (each fleet's profiles now, then every
    /// minute's capacity, demand and lead-time forecast).
    pub fn use_history(&mut self, mut history: History) {
        for fleet in &self.fleets {
            let Some(spec) = self.brain.fleet_spec(&fleet.key) else {
                continue;
            };
            let profiles: Vec<FleetProfileRecord> = spec
                .profiles
                .iter()
                .map(|p| FleetProfileRecord {
                    profile: p.name.clone(),
                    revenue_weight: p.revenue_weight,
                })
                .collect();
            if let Err(e) =
                history.record_fleet_profiles(&self.settings.region, &fleet.key.fleet, &profiles)
            {
                self.store_failed("record a fleet's profiles", &e);
            }
        }
        self.recorder = record::Recorder::new(history);
    }

    /// Apply the scheduled events kept in `store`: all of them at the first step, then again
    /// after every [`LiveShared::events_changed`].
    pub fn use_events(&mut self, store: EventStore) {
        self.event_store = Some(store);
        self.events_generation = None;
    }

    /// Split grants among proxies by their recent traffic, as the sketch sink tallies it.
    pub fn use_traffic(&mut self, traffic: Arc<crate::ingest::NodeTraffic>) {
        self.traffic = Some(traffic);
    }

    /// Call `observer` with every decision as it is made.
    pub fn on_decision(&mut self, observer: DecisionObserver) {
        self.observer = Some(observer);
    }

    /// What the admin API reads.
    pub fn shared(&self) -> Arc<LiveShared> {
        Arc::clone(&self.shared)
    }

    /// One step at node time `now_ms`; returns the node time of the next wakeup the brain asks
    /// for (the caller steps at least every [`STEP_INTERVAL`] anyway, for the provisioners).
    pub fn step(&mut self, now_ms: u64) -> u64 {
        let began = Instant::now();
        // Events first, so that a rebuild from the history sees (and learns from) them too.
        let events_changed = self.sync_events();
        if self.started_ms.is_none() {
            self.started_ms = Some(now_ms);
            self.catch_up(now_ms);
        }
        let nodes = self.node_progress();
        self.now_ms = now_ms;
        self.live_nodes = nodes
            .iter()
            .filter(|n| self.settings.rule.is_live(n, now_ms))
            .map(|n| n.node.clone())
            .collect();
        let handed = self.feed(now_ms, &nodes);
        if handed > 0 {
            self.correct_late(now_ms);
        }
        let decisions = self.plan(now_ms, &nodes);
        let changed = !decisions.is_empty();
        for decision in &decisions {
            self.record_decision(decision, now_ms);
        }
        self.hold_counts(now_ms);
        self.publish_plan(now_ms);
        if self.fleets.iter().any(|f| f.provisioner.is_some()) {
            self.provision(now_ms);
            self.publish_plan(now_ms);
        }
        if handed > 0 || changed || events_changed || self.forecasts.0.is_empty() {
            self.refresh_forecasts(now_ms);
        }
        self.record_minute_start(now_ms);
        self.flush_history();
        self.refresh_view(now_ms);
        let micros = began.elapsed().as_micros() as u64;
        let stats = &self.shared.stats;
        stats.ticks.fetch_add(1, Ordering::Relaxed);
        stats.last_tick_micros.store(micros, Ordering::Relaxed);
        stats.max_tick_micros.fetch_max(micros, Ordering::Relaxed);
        let next_minute_end = now_ms / 60_000 * 60_000 + 60_000;
        self.brain
            .next_wakeup()
            .map(|s| (s.max(0) as u64) * 1000)
            .unwrap_or(next_minute_end)
            .min(next_minute_end)
    }

    /// Runs the driver on its own thread until `stop`, stepping on the node clock. When
    /// `stop_instances`, the provisioned instances are stopped on the way out (the all-in-one
    /// `up`); otherwise they keep serving and the next start adopts them.
    pub fn spawn(
        mut self,
        clock: NodeClock,
        stop: Arc<AtomicBool>,
        stop_instances: bool,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("live-driver".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = self.step(clock.now_ms());
                    let wait = clock.real_until(next).min(STEP_INTERVAL);
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20).min(wait));
                    }
                }
                if stop_instances {
                    for fleet in &mut self.fleets {
                        if let Some(p) = fleet.provisioner.as_mut() {
                            p.stop_all();
                        }
                    }
                }
            })
    }

    /// Re-reads the stored events when they changed and hands them to the brain; returns
    /// whether they were re-read. A store that cannot be read leaves the brain's events as they
    /// were and is tried again at the next step.
    fn sync_events(&mut self) -> bool {
        let Some(store) = &self.event_store else {
            return false;
        };
        let generation = self.shared.events_generation.load(Ordering::Acquire);
        if self.events_generation == Some(generation) {
            return false;
        }
        let events = match store.list() {
            Ok(events) => events,
            Err(e) => {
                self.store_failed("read the scheduled events", &e);
                return false;
            }
        };
        let kept: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        for gone in self.events.iter().filter(|e| !kept.contains(e.id.as_str())) {
            self.brain.remove_event(&gone.id);
        }
        // Every stored event, ended ones too: the brain drops an event once it has ended (and
        // learns its tag from it), so handing it over again changes nothing.
        for event in &events {
            self.brain.set_event(event.to_brain());
        }
        tracing::info!(region = %self.settings.region, events = events.len(), "scheduled events applied");
        self.events = events;
        self.events_generation = Some(generation);
        self.shared
            .stats
            .event_syncs
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    fn event_views(&self, now_ms: u64) -> Vec<EventView> {
        let now = (now_ms / 1000) as i64;
        self.events
            .iter()
            .filter(|e| e.end > now && e.touches_region(&self.settings.region))
            .map(|e| {
                let learned = match e.effect {
                    EventEffect::LearnFromTag => self.brain.learned_multiplier(&e.tag),
                    EventEffect::Multiplier { .. } => None,
                };
                let multiplier = match e.effect {
                    EventEffect::Multiplier { factor } => factor,
                    EventEffect::LearnFromTag => learned.unwrap_or(1.0),
                };
                EventView {
                    event: e.clone(),
                    active: e.start <= now,
                    multiplier,
                    learned,
                }
            })
            .collect()
    }

    fn node_progress(&mut self) -> Vec<NodeProgress> {
        let members = self.shared.alive_proxies();
        let mut nodes: Vec<NodeProgress> = match self.store.nodes() {
            Ok(nodes) => nodes
                .into_iter()
                // The ingest route's node reports only when a batch is posted: waiting for it
                // would hold every minute to the lateness bound. Its late events are corrected
                // in like any late sketch.
                .filter(|n| n.region == self.settings.region && !is_ingest_node(&n.node))
                .map(|n| NodeProgress {
                    member_alive: members.as_ref().is_some_and(|m| m.contains(&n.node)),
                    node: n.node,
                    reported_through_ms: n.reported_through_ms,
                })
                .collect(),
            Err(e) => {
                self.store_failed("read node progress", &e);
                Vec::new()
            }
        };
        // Proxies membership knows but that have not reported yet are waited for too.
        for member in members.unwrap_or_default() {
            if !nodes.iter().any(|n| n.node == member) {
                nodes.push(NodeProgress {
                    node: member,
                    reported_through_ms: 0,
                    member_alive: true,
                });
            }
        }
        nodes
    }

    fn store_failed(&self, what: &str, e: &crate::Error) {
        self.shared
            .stats
            .store_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(region = %self.settings.region, error = %e, "live driver: cannot {what}");
    }

    /// Rebuilds the brain from the stored history window, minute by minute.
    fn catch_up(&mut self, now_ms: u64) {
        let now_minute = now_ms / 60_000 * 60;
        let from = now_minute.saturating_sub(self.settings.history_minutes * 60);
        // Minutes up to two before now are history; the last one or two are left to the normal
        // completeness rule.
        let through = now_minute.saturating_sub(60);
        let covered = match self
            .store
            .covered_minutes(&self.settings.region, from, through)
        {
            Ok(c) => c,
            Err(e) => {
                self.store_failed("read the history coverage", &e);
                Vec::new()
            }
        };
        let Some(&first) = covered.first() else {
            self.next_minute_ms = Some(through * 1000);
            return;
        };
        let rows = match self
            .store
            .region_minutes(&self.settings.region, first, through)
        {
            Ok(rows) => rows,
            Err(e) => {
                self.store_failed("read the history", &e);
                Vec::new()
            }
        };
        let mut by_minute: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        for row in rows {
            self.route(&row.profile, &row.fleet);
            self.profiles.insert(row.profile.clone());
            *by_minute
                .entry(row.minute)
                .or_default()
                .entry(row.profile)
                .or_default() += row.requests;
        }
        let minutes = covered.len();
        // The last minutes before a restart may have run (their capacity is in the history)
        // without being handed over: their demand is recorded now.
        let recent = through.saturating_sub(LATE_WINDOW_MINUTES * 60);
        for minute in covered {
            let values = by_minute.remove(&minute).unwrap_or_default();
            self.observe_minute(minute, &values);
            self.brain.learn(minute as i64 + 60);
            if minute >= recent {
                self.record_handed(minute, Some(&values));
            }
        }
        tracing::info!(region = %self.settings.region, minutes, "brain rebuilt from the stored history");
        self.next_minute_ms = Some(through * 1000);
    }

    /// Makes the brain count `profile` in `fleet`, where the proxies routed it (a learned
    /// profile is in no fleet's configured list; a persona may send a profile elsewhere).
    fn route(&mut self, profile: &str, fleet: &str) {
        self.sync_profile_settings();
        if self.routes.get(profile).is_some_and(|f| f == fleet) {
            return;
        }
        let configured = self.brain.fleet_keys().into_iter().find_map(|key| {
            self.brain.fleet_spec(&key).and_then(|spec| {
                spec.profiles
                    .iter()
                    .find(|p| p.name == profile)
                    .map(|p| p.revenue_weight)
            })
        });
        let weight = self
            .persona_settings
            .get(profile)
            .and_then(|s| s.revenue_weight)
            .or(configured)
            .unwrap_or_else(prescale_config::default_revenue_weight);
        if self
            .brain
            .route_profile(&self.settings.region, profile, fleet, weight)
        {
            tracing::info!(region = %self.settings.region, profile, fleet, revenue_weight = weight, "profile routed to a fleet");
        }
        self.routes.insert(profile.to_string(), fleet.to_string());
    }

    /// Takes the persona settings anew when they changed: resources go to the brain at once,
    /// revenue weights as each profile is routed again.
    fn sync_profile_settings(&mut self) {
        let generation = self.shared.settings_generation.load(Ordering::Relaxed);
        if generation == self.persona_generation {
            return;
        }
        self.persona_generation = generation;
        let settings = self.shared.profile_settings();
        let region = &self.settings.region;
        for profile in self.persona_settings.keys() {
            if !settings.contains_key(profile) {
                self.brain.set_profile_resources(region, profile, None);
            }
        }
        for (profile, set) in &settings {
            self.brain
                .set_profile_resources(region, profile, set.resources);
        }
        self.persona_settings = settings;
        self.routes.clear();
    }

    fn observe_minute(&mut self, minute: u64, values: &BTreeMap<String, u64>) {
        for profile in &self.profiles {
            let requests = values.get(profile).copied().unwrap_or(0);
            self.brain.observe(
                minute as i64 + 60,
                &self.settings.region,
                profile,
                minute as i64,
                requests as f64,
            );
        }
    }

    /// Hands over every complete minute; returns how many.
    fn feed(&mut self, now_ms: u64, nodes: &[NodeProgress]) -> usize {
        let Some(mut next) = self.next_minute_ms else {
            return 0;
        };
        let mut handed = 0;
        while next + 60_000 <= now_ms {
            let minute = next / 1000;
            let covered =
                match self
                    .store
                    .covered_minutes(&self.settings.region, minute, minute + 60)
                {
                    Ok(c) => !c.is_empty(),
                    Err(e) => {
                        self.store_failed("read coverage", &e);
                        break;
                    }
                };
            match self.settings.rule.state(next, now_ms, nodes, covered) {
                MinuteState::Open => break,
                MinuteState::Absent => {
                    self.shared
                        .stats
                        .minutes_absent
                        .fetch_add(1, Ordering::Relaxed);
                    self.record_handed(minute, None);
                    self.handed.insert(
                        minute,
                        Handed {
                            absent: true,
                            by_profile: BTreeMap::new(),
                        },
                    );
                }
                MinuteState::Complete => {
                    let rows =
                        match self
                            .store
                            .region_minutes(&self.settings.region, minute, minute + 60)
                        {
                            Ok(rows) => rows,
                            Err(e) => {
                                self.store_failed("read a minute", &e);
                                break;
                            }
                        };
                    let mut values: BTreeMap<String, u64> = BTreeMap::new();
                    for row in rows {
                        self.route(&row.profile, &row.fleet);
                        self.profiles.insert(row.profile.clone());
                        *values.entry(row.profile).or_default() += row.requests;
                    }
                    self.observe_minute(minute, &values);
                    self.observe_latency(minute);
                    self.record_handed(minute, Some(&values));
                    self.shared
                        .stats
                        .minutes_observed
                        .fetch_add(1, Ordering::Relaxed);
                    self.handed.insert(
                        minute,
                        Handed {
                            absent: false,
                            by_profile: values,
                        },
                    );
                }
            }
            handed += 1;
            next += 60_000;
        }
        self.next_minute_ms = Some(next);
        let oldest = (next / 1000).saturating_sub(LATE_WINDOW_MINUTES * 60);
        self.handed.retain(|&m, _| m >= oldest);
        handed
    }

    fn observe_latency(&mut self, minute: u64) {
        for fleet in self.fleets.iter().filter(|f| f.learn_capacity) {
            let serving = match &fleet.provisioner {
                Some(p) => p.status().ready,
                None => fleet.static_backends,
            };
            match self
                .store
                .fleet_minute_latency(&self.settings.region, &fleet.key.fleet, minute)
            {
                Ok(Some((requests, histogram))) => self.brain.observe_fleet_latency(
                    &fleet.key,
                    serving,
                    requests as f64,
                    &histogram,
                ),
                Ok(None) => {}
                Err(e) => {
                    self.shared
                        .stats
                        .store_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(fleet = %fleet.key.fleet, error = %e, "live driver: cannot read the fleet's latency");
                }
            }
        }
    }

    /// Requests stored for minutes already handed over are handed over as corrections.
    fn correct_late(&mut self, now_ms: u64) {
        let (Some((&from, _)), Some(next)) = (self.handed.first_key_value(), self.next_minute_ms)
        else {
            return;
        };
        let rows = match self
            .store
            .region_minutes(&self.settings.region, from, next / 1000)
        {
            Ok(rows) => rows,
            Err(e) => {
                self.store_failed("read minutes for late corrections", &e);
                return;
            }
        };
        let mut stored: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        for row in rows {
            self.route(&row.profile, &row.fleet);
            *stored
                .entry(row.minute)
                .or_default()
                .entry(row.profile)
                .or_default() += row.requests;
        }
        let mut corrected = Vec::new();
        for (minute, values) in stored {
            let Some(handed) = self.handed.get_mut(&minute) else {
                continue;
            };
            let mut late = 0;
            let mut late_by_profile = BTreeMap::new();
            for (profile, requests) in values {
                let before = handed.by_profile.get(&profile).copied().unwrap_or(0);
                if requests > before {
                    let delta = requests - before;
                    self.brain.observe(
                        (now_ms / 1000) as i64,
                        &self.settings.region,
                        &profile,
                        minute as i64,
                        delta as f64,
                    );
                    self.profiles.insert(profile.clone());
                    late_by_profile.insert(profile.clone(), delta);
                    handed.by_profile.insert(profile, requests);
                    late += delta;
                }
            }
            if late > 0 {
                let stats = &self.shared.stats;
                stats.late_minutes.fetch_add(1, Ordering::Relaxed);
                stats.late_requests.fetch_add(late, Ordering::Relaxed);
                tracing::info!(region = %self.settings.region, minute, late, was_absent = handed.absent, "late requests handed to the brain");
                handed.absent = false;
                corrected.push((minute, late_by_profile));
            }
        }
        for (minute, late_by_profile) in corrected {
            self.record_late(minute, &late_by_profile);
        }
    }

    /// Polls the brain when the minute before now is in (or the wait for it is over), unless
    /// the region's data has stopped.
    fn plan(&mut self, now_ms: u64, nodes: &[NodeProgress]) -> Vec<Decision> {
        let observed_through = self.next_minute_ms.unwrap_or(0);
        let minute_start = now_ms / 60_000 * 60_000;
        let freshest = nodes.iter().map(|n| n.reported_through_ms).max();
        let stale_after = self.settings.rule.lateness_ms + 120_000;
        self.holding = match freshest {
            None => Some("no proxy of the region has reported yet".to_string()),
            Some(f) if f + stale_after < now_ms => Some(format!(
                "no data from the region's proxies since {} (unix ms): holding capacity",
                f
            )),
            _ => None,
        };
        let previous_in = observed_through >= minute_start;
        let waited = now_ms >= minute_start + self.settings.rule.lateness_ms;
        // With no data at all yet the brain still brings fleets up to their baseline.
        let never_reported = freshest.is_none();
        if (self.holding.is_some() && !never_reported) || !(previous_in || waited) {
            return Vec::new();
        }
        let now = (now_ms / 1000) as i64;
        let mut decisions = Vec::new();
        let mut at = now;
        loop {
            decisions.extend(self.brain.poll(at));
            match self.brain.next_wakeup() {
                Some(next) if next > at && next <= now => at = next,
                _ => break,
            }
        }
        decisions
    }

    fn record_decision(&mut self, decision: &Decision, now_ms: u64) {
        let action = match decision.action {
            Action::ScaleUp { from, to } => format!("scale_up {from}→{to}"),
            Action::Drain { from, to, .. } => format!("drain {from}→{to}"),
            Action::Remove { count } => format!("remove {count}"),
        };
        let record = DecisionRecord {
            at_ms: now_ms,
            region: decision.fleet.region.clone(),
            fleet: decision.fleet.fleet.clone(),
            action,
            reason: decision.reason.clone(),
        };
        self.shared.stats.decisions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(fleet = %record.fleet, action = %record.action, reason = %record.reason, "plan decision");
        if let Err(e) = self.ledger.log_decision(&record) {
            self.store_failed("log a decision", &e);
        }
        if let Some(observer) = self.observer.as_mut() {
            observer(&record);
        }
        if let Some(fleet) = self.fleets.iter_mut().find(|f| f.key == decision.fleet) {
            fleet.recent.push_front(record);
            fleet.recent.truncate(VIEW_DECISIONS);
        }
    }

    fn cold(&self, now_ms: u64) -> bool {
        self.started_ms
            .is_some_and(|s| now_ms < s + self.settings.cold_minutes * 60_000)
    }

    /// The counts the brain keeps whatever it planned: in the cold window a provisioned fleet
    /// does not go below what it ran when the driver took over; a static fleet runs its
    /// configured backends.
    fn hold_counts(&mut self, now_ms: u64) {
        let cold = self.cold(now_ms);
        for fleet in &self.fleets {
            if fleet.provisioner.is_none() {
                self.brain
                    .set_fleet_instances(&fleet.key, fleet.static_backends);
                continue;
            }
            let planned = self.brain.fleet_status(&fleet.key).map(|s| s.running);
            if cold && planned.is_some_and(|p| p < fleet.floor) {
                // A cold brain never shrinks the fleet it took over.
                self.brain.set_fleet_instances(&fleet.key, fleet.floor);
            }
        }
    }

    /// Hands each provisioner its fleet's target (or, in forecast-only mode, only lets it
    /// watch).
    fn provision(&mut self, now_ms: u64) {
        let forecast_only = self.shared.forecast_only();
        for fleet in &mut self.fleets {
            let Some(provisioner) = fleet.provisioner.as_mut() else {
                continue;
            };
            if forecast_only {
                // Nothing is started, stopped or asked for, but health and exits (or the remote
                // side's counts) are still watched so the plan shows the truth.
                provisioner.observe(now_ms);
                continue;
            }
            let status = self.brain.fleet_status(&fleet.key);
            let target = ProvisionTarget {
                region: fleet.key.region.clone(),
                fleet: fleet.key.fleet.clone(),
                instances: status.map(|s| s.running).unwrap_or(fleet.floor),
                tiers: status.map(|s| s.tiers).unwrap_or_default(),
                warm_pools: status.map(|s| s.warm_pools.clone()).unwrap_or_default(),
                // No version (so a remote provisioner asks for nothing) until the brain has
                // planned the fleet: a count from before that is no plan.
                plan_version: status.and(self.issued_version),
                reasons: status
                    .map(|s| {
                        vec![truncate(
                            &s.reason,
                            prescale_gossip::messages::MAX_REASON_LEN,
                        )]
                    })
                    .unwrap_or_default(),
            };
            provisioner.reconcile(now_ms, &target);
        }
    }

    fn fleet_plans(&self) -> Vec<FleetPlan> {
        self.fleets
            .iter()
            .map(|fleet| {
                let status = self.brain.fleet_status(&fleet.key);
                let tiers = status.map(|s| s.tiers).unwrap_or_default();
                // What the provisioner is asked to keep serving: part of the plan, so that
                // every change of it is a new plan version.
                let serving = status.map(|s| s.running).unwrap_or(fleet.floor);
                FleetPlan {
                    fleet: fleet.key.fleet.clone(),
                    tiers: [
                        ("baseline", tiers.baseline),
                        ("predictive", tiers.predictive),
                        ("burst", tiers.burst),
                        ("guard", tiers.guard),
                        ("warm_pool", tiers.warm_pool),
                        ("total", tiers.total),
                        ("serving", serving),
                    ]
                    .into_iter()
                    .map(|(tier, instances)| TierTarget {
                        tier: tier.to_string(),
                        instances,
                    })
                    .collect(),
                    shed_order: status.map(|s| s.shed_order.clone()).unwrap_or_default(),
                    reasons: status
                        .map(|s| {
                            vec![truncate(
                                &s.reason,
                                prescale_gossip::messages::MAX_REASON_LEN,
                            )]
                        })
                        .unwrap_or_default(),
                    backends: fleet.provisioner.as_ref().and_then(|p| p.backends()),
                    grants: status
                        .map(|s| self.grants_for(fleet, &s.grants))
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The brain's grants for a fleet as the proxies get them: each split among the region's
    /// live proxies, 90 % by their share of the profile's requests over the last
    /// [`GRANT_SHARE_MINUTES`] and 10 % evenly (so a proxy that has seen none of a profile yet
    /// can still admit some). Rounded to 2 % steps, so a plan is not re-issued for noise.
    fn grants_for(
        &self,
        fleet: &FleetRun,
        grants: &[prescale_brain::brain::ProfileGrant],
    ) -> Vec<prescale_gossip::ProfileGrant> {
        let weights: BTreeMap<&str, f64> = self
            .brain
            .fleet_spec(&fleet.key)
            .map(|spec| {
                spec.profiles
                    .iter()
                    .map(|p| (p.name.as_str(), p.revenue_weight))
                    .collect()
            })
            .unwrap_or_default();
        let from = (self.now_ms / 1000 / 60 * 60).saturating_sub(GRANT_SHARE_MINUTES * 60);
        grants
            .iter()
            .map(|g| {
                let total = round_2_percent(g.requests_per_minute);
                let seen = self
                    .traffic
                    .as_ref()
                    .map(|t| t.shares(&fleet.key.fleet, &g.profile, from))
                    .unwrap_or_default();
                let seen_total: u64 = seen.iter().map(|(_, n)| n).sum();
                let live = self.live_nodes.len().max(1) as f64;
                let shares = self
                    .live_nodes
                    .iter()
                    .map(|node| {
                        let mine = seen.iter().find(|(n, _)| n == node).map_or(0, |(_, r)| *r);
                        let by_traffic = if seen_total > 0 {
                            mine as f64 / seen_total as f64
                        } else {
                            1.0 / live
                        };
                        let part = total * (0.9 * by_traffic + 0.1 / live);
                        prescale_gossip::NodeShare {
                            node: node.clone(),
                            requests_per_minute: round_2_percent(part) as u64,
                        }
                    })
                    .collect();
                prescale_gossip::ProfileGrant {
                    profile: g.profile.clone(),
                    revenue_weight_milli: (weights.get(g.profile.as_str()).copied().unwrap_or(1.0)
                        * 1000.0)
                        .max(0.0) as u64,
                    requests_per_minute: total as u64,
                    shares,
                }
            })
            .collect()
    }

    fn publish_plan(&mut self, now_ms: u64) {
        let plans = self.fleet_plans();
        // A new version when what the proxies act on changed; the reason text alone (it names
        // the minute it looked at) does not make one.
        let acted_on = |plans: &[FleetPlan]| -> Vec<FleetPlan> {
            plans
                .iter()
                .map(|p| FleetPlan {
                    reasons: Vec::new(),
                    ..p.clone()
                })
                .collect()
        };
        if self
            .published
            .as_ref()
            .is_some_and(|last| acted_on(last) == acted_on(&plans))
        {
            return;
        }
        let version = match self.ledger.next_plan_version(&self.settings.region, 0) {
            Ok(v) => v,
            Err(e) => {
                self.store_failed("take a plan version", &e);
                return;
            }
        };
        self.issued_version = Some(version);
        let update = PlanUpdate {
            region: self.settings.region.clone(),
            version,
            issued_at_ms: now_ms,
            fleets: plans.clone(),
        };
        match (self.publish)(update) {
            Ok(()) => {
                self.shared
                    .stats
                    .plans_published
                    .fetch_add(1, Ordering::Relaxed);
                self.published = Some(plans);
                self.plan_version = Some(version);
            }
            Err(e) => {
                self.shared
                    .stats
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(region = %self.settings.region, error = %e, "plan not published; retrying at the next step");
            }
        }
    }

    fn refresh_forecasts(&mut self, now_ms: u64) {
        let now = (now_ms / 1000) as i64;
        let now_minute = now.div_euclid(60);
        let mut fleets = Vec::new();
        for fleet in &mut self.fleets {
            let lead = self
                .brain
                .fleet_spec(&fleet.key)
                .map(|s| s.capacity.lead_minutes())
                .unwrap_or(1);
            fleet.lead_forecast = self
                .brain
                .fleet_forecast(&fleet.key, now, now_minute + lead)
                .map(|p| HorizonPoint::new(lead, &p));
            let points = VIEW_HORIZONS
                .iter()
                .filter_map(|&h| {
                    self.brain
                        .fleet_forecast(&fleet.key, now, now_minute + h)
                        .map(|p| HorizonPoint::new(h, &p))
                })
                .collect();
            fleets.push(points);
        }
        let mut series = Vec::new();
        for key in self.brain.series_keys() {
            if key.region != self.settings.region {
                continue;
            }
            let forecast = VIEW_HORIZONS
                .iter()
                .filter_map(|&h| {
                    self.brain
                        .series_forecast(&key, now, now_minute + h)
                        .map(|p| HorizonPoint::new(h, &p))
                })
                .collect();
            series.push(SeriesView {
                profile: key.profile,
                forecast,
            });
        }
        self.forecasts = (fleets, series);
    }

    fn refresh_view(&mut self, now_ms: u64) {
        let mut fleets = Vec::with_capacity(self.fleets.len());
        for (i, fleet) in self.fleets.iter().enumerate() {
            let status = self.brain.fleet_status(&fleet.key);
            let provisioner = fleet.provisioner.as_ref().map(|p| p.status());
            // `None` for static fleets and remote provisioners: no instances of their own.
            let listed = fleet.provisioner.as_ref().and_then(|p| p.backends());
            let lists_backends = listed.is_some();
            let backends = listed.unwrap_or_default();
            let instances = match &provisioner {
                Some(s) => InstanceCounts {
                    warming: s.warming,
                    ready: s.ready,
                    draining: s.draining,
                },
                None => InstanceCounts {
                    ready: fleet.static_backends,
                    ..InstanceCounts::default()
                },
            };
            let decisions = fleet.recent.iter().cloned().collect();
            let tier_sets = match status {
                Some(s) if lists_backends => tiers::tier_sets(&s.tiers, &s.warm_pools, &backends),
                _ => Vec::new(),
            };
            fleets.push(FleetView {
                fleet: fleet.key.fleet.clone(),
                provisioned: fleet.provisioner.is_some(),
                planned: status.map(|s| s.running).unwrap_or(fleet.floor),
                tiers: status.map(|s| s.tiers),
                sizing: status.map(|s| s.sizing.clone()),
                tail: status.map(|s| s.tail),
                warm_pools: status.map(|s| s.warm_pools.clone()).unwrap_or_default(),
                capacity: status.map(|s| s.capacity.clone()),
                shed_order: status.map(|s| s.shed_order.clone()).unwrap_or_default(),
                grants: status.map(|s| s.grants.clone()).unwrap_or_default(),
                reason: status.map(|s| s.reason.clone()),
                instances,
                backends,
                tier_sets,
                provisioner,
                forecast: self.forecasts.0.get(i).cloned().unwrap_or_default(),
                lead_minutes: self
                    .brain
                    .fleet_spec(&fleet.key)
                    .map(|s| s.capacity.lead_minutes())
                    .unwrap_or(1),
                lead_forecast: fleet.lead_forecast.clone(),
                outlook: fleet.recording.outlook.clone(),
                accuracy: fleet.recording.accuracy.clone(),
                model_errors: self
                    .brain
                    .fleet_model_errors(&fleet.key)
                    .into_iter()
                    .map(|(m, e)| ModelError {
                        model: m.name(),
                        mean_absolute_error: e,
                    })
                    .collect(),
                decisions,
            });
        }
        let view = LiveView {
            region: self.settings.region.clone(),
            at_ms: now_ms,
            forecast_only: self.shared.forecast_only(),
            holding: self.holding.clone(),
            observed_through_ms: self.next_minute_ms,
            plan_version: self.plan_version,
            fleets,
            series: self.forecasts.1.clone(),
            events: self.event_views(now_ms),
        };
        *self.shared.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }
}

/// `value` rounded to a step of 2 % of itself (at least 1).
fn round_2_percent(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 0.0;
    }
    let step = 10f64.powf((value * 0.02).log10().floor()).max(1.0);
    (value / step).round() * step
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventInput;
    use crate::planner::CapacityModel;
    use prescale_brain::brain::{EventScope, FleetProfile};

    const NOW_MS: u64 = 1_700_000_040_000 / 60_000 * 60_000;

    fn driver(path: &std::path::Path) -> LiveDriver {
        let settings = LiveSettings {
            region: "local".into(),
            rule: CompletenessRule {
                lateness_ms: 30_000,
                silent_after_ms: 60_000,
            },
            history_minutes: 1440,
            forecast_only: true,
            cold_minutes: 3,
        };
        let spec = FleetSpec {
            key: FleetKey {
                region: "local".into(),
                fleet: "web".into(),
            },
            profiles: vec![FleetProfile {
                name: "default".into(),
                revenue_weight: 1.0,
            }],
            capacity: CapacityModel {
                rps_per_instance: 10.0,
                cold_start_seconds: 60.0,
                cost_per_instance_hour: 0.0,
            },
            max_instances: None,
            budget_per_hour: None,
            initial_instances: 1,
            learn_capacity: None,
            warm_sub_pools: Vec::new(),
            instance_resources: None,
        };
        let mut driver = LiveDriver::new(
            settings,
            Brain::new(Default::default(), Default::default()),
            SeriesStore::open(path).expect("store"),
            Ledger::open(path).expect("ledger"),
            vec![LiveFleet {
                spec,
                provisioner: None,
                static_backends: 1,
            }],
            Box::new(|_| Ok(())),
        );
        driver.use_events(EventStore::open(path).expect("events"));
        driver
    }

    fn point_30(driver: &LiveDriver) -> f64 {
        let view = driver.shared().view();
        view.fleets[0]
            .forecast
            .iter()
            .find(|p| p.horizon_minutes == 30)
            .expect("30-minute point")
            .point
    }

    fn event(id: Option<&str>, region: &str, start: i64, end: i64, factor: f64) -> EventInput {
        EventInput {
            id: id.map(str::to_string),
            tag: "launch".into(),
            start,
            end,
            scope: EventScope::Region {
                region: region.into(),
            },
            effect: EventEffect::Multiplier { factor },
        }
    }

    #[test]
    fn a_live_node_behind_holds_a_minute_open_unless_it_is_the_ingest_node() {
        let minute = NOW_MS / 1000;
        for (other, waited_for) in [("edge-2", true), ("ingest/fc-1", false)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("series.db");
            let mut store = SeriesStore::open(&path).expect("store");
            let mut live = driver(&path);
            live.step(NOW_MS);
            // One proxy has reported through the end of the minute; the other node only half
            // way into it, and recently enough to count as live.
            let mut ahead = prescale_gossip::Sketch::new(
                "edge-1",
                "local",
                (minute - 60) * 1000,
                (minute + 60) * 1000,
            );
            ahead.sequence = 1;
            let mut behind =
                prescale_gossip::Sketch::new(other, "local", minute * 1000, minute * 1000 + 30_000);
            behind.sequence = 1;
            store.ingest(&[ahead, behind], NOW_MS).expect("ingest");
            live.step(NOW_MS + 61_000);
            let observed = live.shared().stats.minutes_observed.load(Ordering::Relaxed);
            // The minute before is in either way; the last one waits only for a proxy.
            assert_eq!(observed, if waited_for { 1 } else { 2 }, "{other}");
        }
    }

    #[test]
    fn each_minute_is_recorded_with_its_capacity_demand_and_lead_time_forecast() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let start = NOW_MS / 1000;
        let history: Vec<(u64, u64)> = (1..=1440u64).map(|m| (start - m * 60, 600)).collect();
        let mut store = SeriesStore::open(&path).expect("store");
        store
            .seed_history("local", "default", "web", &history)
            .expect("seed");
        let mut live = driver(&path);
        live.use_history(History::open(&path).expect("history"));
        live.step(NOW_MS);
        // The next two minutes arrive: 600 and 900 requests.
        store
            .seed_history(
                "local",
                "default",
                "web",
                &[(start, 600), (start + 60, 900)],
            )
            .expect("seed");
        live.step(NOW_MS + 91_000);
        live.step(NOW_MS + 151_000);

        let recorded = History::open(&path)
            .expect("history")
            .fleet_minutes("local", "web", 0, u64::MAX)
            .expect("minutes");
        let minutes: Vec<u64> = recorded.iter().map(|m| m.minute).collect();
        assert_eq!(minutes, [start, start + 60, start + 120]);
        assert_eq!(recorded[0].demand, Some(600));
        assert_eq!(recorded[1].demand, Some(900));
        assert_eq!(recorded[2].demand, None, "not handed yet");
        assert!(recorded
            .iter()
            .all(|m| m.ready == 1 && m.rps_per_instance == 10.0));
        assert!(
            recorded[0].forecast.is_none(),
            "nothing ran a lead time before it"
        );
        let forecast = recorded[1].forecast.as_ref().expect("forecast of minute 2");
        assert_eq!((forecast.issued_at, forecast.horizon_minutes), (start, 1));
        assert!((forecast.point - 600.0).abs() < 60.0, "{forecast:?}");

        let view = live.shared().view();
        let fleet = &view.fleets[0];
        assert_eq!(fleet.lead_minutes, 1);
        assert!(fleet.lead_forecast.is_some());
        assert_eq!(fleet.accuracy.minutes_scored, 1);
        assert_eq!(
            fleet.accuracy.misses,
            u64::from(900.0 > forecast.upper || 900.0 < forecast.lower)
        );
        let outlook = fleet.outlook.as_ref().expect("outlook");
        assert_eq!(outlook.points.len(), 60 + 23);
        // Made at the first step and every fifth minute since.
        let made = outlook.issued_at / 60 * 60;
        assert!(made == start || (made / 60).is_multiple_of(5), "{made}");
        assert_eq!(outlook.points[0].minute, made + 60);
        assert_eq!(
            outlook.points.last().map(|p| p.minute),
            Some(made + 24 * 3600)
        );
        assert!(outlook.points.iter().all(|p| p.instances >= 1));
    }

    #[test]
    fn stored_events_reach_the_brain_at_start_and_after_each_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let now = (NOW_MS / 1000) as i64;
        let points: Vec<(u64, u64)> = (1..=1440u64)
            .map(|m| (NOW_MS / 1000 - 60 - m * 60, 600))
            .collect();
        SeriesStore::open(&path)
            .expect("store")
            .seed_history("local", "default", "web", &points)
            .expect("seed");

        let mut live = driver(&path);
        live.step(NOW_MS);
        let base = point_30(&live);
        assert!(base > 300.0, "a forecast from the flat history: {base}");
        assert!(live.shared().view().events.is_empty());

        // An operator adds events: one for the next two hours here, one in another region, one
        // that is over.
        let mut admin = EventStore::open(&path).expect("events");
        let created = admin
            .create(&event(None, "local", now, now + 7200, 3.0), NOW_MS)
            .unwrap();
        admin
            .create(&event(None, "elsewhere", now, now + 7200, 5.0), NOW_MS)
            .unwrap();
        admin
            .create(&event(None, "local", now - 7200, now - 3600, 7.0), NOW_MS)
            .unwrap();
        // Not applied until the driver is told.
        live.step(NOW_MS + 100);
        assert_eq!(point_30(&live), base);
        live.shared().events_changed();
        live.step(NOW_MS + 200);
        let tripled = point_30(&live);
        assert!((tripled / base - 3.0).abs() < 1e-9, "{tripled} vs {base}");
        let view = live.shared().view();
        assert_eq!(view.events.len(), 1, "{:?}", view.events);
        assert_eq!(view.events[0].event.id, created.id);
        assert!(view.events[0].active);
        assert_eq!(view.events[0].multiplier, 3.0);
        assert_eq!(live.shared().stats.event_syncs.load(Ordering::Relaxed), 2);

        admin
            .update(
                &created.id,
                &event(None, "local", now, now + 7200, 2.0),
                NOW_MS,
            )
            .unwrap();
        live.shared().events_changed();
        live.step(NOW_MS + 300);
        assert!((point_30(&live) / base - 2.0).abs() < 1e-9);
        assert_eq!(live.shared().view().events[0].event.version, 2);

        // Later in the future: upcoming, and the forecast 30 minutes ahead is untouched.
        admin
            .update(
                &created.id,
                &event(None, "local", now + 7200, now + 9000, 2.0),
                NOW_MS,
            )
            .unwrap();
        live.shared().events_changed();
        live.step(NOW_MS + 400);
        assert_eq!(point_30(&live), base);
        assert!(!live.shared().view().events[0].active);

        admin.delete(&created.id).unwrap();
        admin
            .create(&event(Some("sale"), "local", now, now + 3600, 4.0), NOW_MS)
            .unwrap();
        live.shared().events_changed();
        live.step(NOW_MS + 500);
        assert!((point_30(&live) / base - 4.0).abs() < 1e-9);
        let ids: Vec<String> = live
            .shared()
            .view()
            .events
            .into_iter()
            .map(|e| e.event.id)
            .collect();
        assert_eq!(ids, ["sale"]);

        // A restarted driver loads what is stored.
        drop(live);
        let mut restarted = driver(&path);
        restarted.step(NOW_MS + 600);
        assert!((point_30(&restarted) / base - 4.0).abs() < 1e-6);
        assert_eq!(restarted.shared().view().events[0].event.id, "sale");

        admin.delete("sale").unwrap();
        restarted.shared().events_changed();
        restarted.step(NOW_MS + 700);
        assert!((point_30(&restarted) / base - 1.0).abs() < 1e-6);
        assert!(restarted.shared().view().events.is_empty());
    }

    /// Records every target it is handed.
    struct Recording(Arc<Mutex<Vec<ProvisionTarget>>>);

    impl Provisioner for Recording {
        fn kind(&self) -> &'static str {
            "recording"
        }

        fn reconcile(&mut self, _now_ms: u64, target: &ProvisionTarget) {
            self.0.lock().unwrap().push(target.clone());
        }

        fn observe(&mut self, _now_ms: u64) {}

        fn backends(&self) -> Option<Vec<PlannedBackend>> {
            None
        }

        fn status(&self) -> ProvisionerStatus {
            ProvisionerStatus {
                kind: "recording",
                desired: 0,
                warming: 0,
                ready: 0,
                draining: 0,
                started_total: 0,
                adopted_total: 0,
                start_failures_total: 0,
                unexpected_exits_total: 0,
                stopped_total: 0,
                last_error: None,
                retry_at_ms: None,
                remote: None,
            }
        }

        fn stop_all(&mut self) {}
    }

    #[test]
    fn each_target_carries_the_version_of_the_plan_that_holds_its_serving_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let plans: Arc<Mutex<Vec<PlanUpdate>>> = Arc::new(Mutex::new(Vec::new()));
        let published = Arc::clone(&plans);
        let settings = LiveSettings {
            region: "local".into(),
            rule: CompletenessRule {
                lateness_ms: 30_000,
                silent_after_ms: 60_000,
            },
            history_minutes: 1440,
            forecast_only: false,
            cold_minutes: 3,
        };
        let spec = FleetSpec {
            key: FleetKey {
                region: "local".into(),
                fleet: "web".into(),
            },
            profiles: vec![FleetProfile {
                name: "default".into(),
                revenue_weight: 1.0,
            }],
            capacity: CapacityModel {
                rps_per_instance: 10.0,
                cold_start_seconds: 60.0,
                cost_per_instance_hour: 0.0,
            },
            max_instances: None,
            budget_per_hour: None,
            initial_instances: 0,
            learn_capacity: None,
            warm_sub_pools: Vec::new(),
            instance_resources: None,
        };
        let planner = prescale_config::brain::PlannerConfig {
            baseline_instances: 2,
            ..Default::default()
        };
        let mut live = LiveDriver::new(
            settings,
            Brain::new(Default::default(), planner),
            SeriesStore::open(&path).expect("store"),
            Ledger::open(&path).expect("ledger"),
            vec![LiveFleet {
                spec,
                provisioner: Some(Box::new(Recording(Arc::clone(&targets)))),
                static_backends: 0,
            }],
            Box::new(move |plan| {
                published.lock().unwrap().push(plan);
                Ok(())
            }),
        );
        // Before the brain planned the fleet (the first minute is not in yet): no version.
        live.step(NOW_MS);
        assert!(targets
            .lock()
            .unwrap()
            .iter()
            .all(|t| t.plan_version.is_none()));
        // Past the lateness bound it plans the baseline.
        live.step(NOW_MS + 31_000);
        live.step(NOW_MS + 31_200);
        let targets = targets.lock().unwrap();
        let plans = plans.lock().unwrap();
        let versioned: Vec<&ProvisionTarget> = targets
            .iter()
            .filter(|t| t.plan_version.is_some())
            .collect();
        assert!(versioned.iter().any(|t| t.instances == 2), "{targets:?}");
        for target in versioned {
            let plan = plans
                .iter()
                .find(|p| Some(p.version) == target.plan_version)
                .expect("a target's version was issued before it was handed over");
            let serving = plan.fleets[0]
                .tiers
                .iter()
                .find(|t| t.tier == "serving")
                .map(|t| t.instances);
            assert_eq!(serving, Some(target.instances), "{plan:?}");
            assert_eq!(target.tiers.baseline, 2);
            assert!(!target.reasons.is_empty());
            assert_eq!(
                plan.fleets[0].backends, None,
                "a remote fleet lists no backends"
            );
        }
    }
}

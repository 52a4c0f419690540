//! The brain: the sans-IO, clock-free state machine at the core of the regional forecaster.
//!
//! It is fed observations and operator input, each carrying its time, and returns decisions as
//! values; timers are data ([`Brain::next_wakeup`]), never sleeps. The live forecaster drives it
//! with the wall clock, sockets and real provisioners; `prescale replay` drives the very same
//! code with a simulated clock and fleet. Nothing here reads a clock, a file or a socket.
//!
//! ```text
//! brain.observe(now, region, profile, minute_start, requests)
//! brain.observe_fleet_latency(fleet, serving_instances, requests, latency_histogram)
//! brain.set_event(event) / brain.remove_event(id)
//! brain.poll(now) -> Vec<Decision>
//! brain.next_wakeup() -> Option<UnixSeconds>
//! ```

use std::collections::BTreeMap;

use prescale_config::brain::{ForecastConfig, PlannerConfig};
use serde::Serialize;

use crate::forecast::{ForecastPoint, SeriesForecaster};
use crate::planner::capacity::{CapacityEstimate, CapacityLearner, CapacitySource, LatencySlo};
use crate::planner::tail::{TailControl, TailReport};
use crate::planner::{
    self, allocate_under_cap, CapacityModel, PlanInput, ProfileNeed, Step, Tiers,
};

/// Time as unix seconds; the brain never reads a clock, every input carries one of these.
pub type UnixSeconds = i64;

/// A (region, profile) series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SeriesKey {
    pub region: String,
    pub profile: String,
}

/// A fleet in a region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FleetKey {
    pub region: String,
    pub fleet: String,
}

/// A profile a fleet serves, with its revenue weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetProfile {
    pub name: String,
    pub revenue_weight: f64,
}

/// What the brain needs to know about a fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSpec {
    pub key: FleetKey,
    /// Profiles routed to this fleet; empty means every profile of the region.
    pub profiles: Vec<FleetProfile>,
    pub capacity: CapacityModel,
    /// Most instances the fleet may run.
    pub max_instances: Option<u32>,
    /// Most the fleet may cost per hour (with `capacity.cost_per_instance_hour`).
    pub budget_per_hour: Option<f64>,
    /// Instances running when the brain takes over.
    pub initial_instances: u32,
    /// Learn `capacity.rps_per_instance` against this latency SLO from the fleet's latency
    /// ([`Brain::observe_fleet_latency`]); None keeps the configured figure.
    pub learn_capacity: Option<LatencySlo>,
    /// Profiles whose instances need their own configuration: each gets its own warm sub-pool.
    pub warm_sub_pools: Vec<String>,
    /// What one instance offers. With it the fleet is sized on its binding resource: each
    /// minute's demand is the most of its requests and, per resource, what its profiles'
    /// requests use of it (their [`Brain::set_profile_resources`]) expressed in the requests an
    /// instance serves; `None`: on requests alone.
    pub instance_resources: Option<Resources>,
}

/// Amounts of the resources requests use and instances offer. For a profile they are per request
/// per second of its rate: at 1 req/s it keeps `cpu_cores` cores busy, holds `memory_mb`, moves
/// `network_mbps` and does `io_ops` operations per second; for an instance, what it has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Resources {
    pub cpu_cores: f64,
    pub memory_mb: f64,
    pub network_mbps: f64,
    pub io_ops: f64,
}

impl Resources {
    /// The names of the resources, in [`Resources::amounts`] order.
    pub const NAMES: [&'static str; 4] = ["cpu", "memory", "network", "io"];

    pub fn amounts(&self) -> [f64; 4] {
        [
            self.cpu_cores,
            self.memory_mb,
            self.network_mbps,
            self.io_ops,
        ]
    }
}

/// One minute of a resource-sized fleet's demand: its requests, each resource's use, and the
/// demand handed to the fleet's total for it so far.
#[derive(Debug, Clone, Copy, Default)]
struct BindingMinute {
    requests: f64,
    /// Per resource, in requests an instance serves (see [`FleetSpec::instance_resources`]).
    equivalent: [f64; 4],
    handed: f64,
}

/// Minutes of per-resource demand kept for late additions (corrections arrive within the hour).
const BINDING_MINUTES_KEPT: i64 = 120;
/// Minutes an ended event still scales observations of its minutes that arrive late.
const ENDED_EVENT_MEMORY_MINUTES: i64 = 120;

impl FleetSpec {
    /// Whether the fleet serves `profile` of `region`.
    pub fn serves(&self, region: &str, profile: &str) -> bool {
        self.key.region == region
            && (self.profiles.is_empty() || self.profiles.iter().any(|p| p.name == profile))
    }

    /// Most instances the fleet may run: `max_instances` and what the budget buys, whichever
    /// is lower (None: no cap).
    pub fn cap(&self) -> Option<u32> {
        let budget = self.budget_per_hour.and_then(|b| {
            let per = self.capacity.cost_per_instance_hour;
            (per > 0.0).then(|| (b / per).floor().clamp(0.0, u32::MAX as f64) as u32)
        });
        match (self.max_instances, budget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Which series a scheduled event touches.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventScope {
    All,
    Region { region: String },
    Profile { profile: String },
    RegionProfile { region: String, profile: String },
}

impl EventScope {
    fn matches(&self, region: &str, profile: &str) -> bool {
        match self {
            EventScope::All => true,
            EventScope::Region { region: r } => r == region,
            EventScope::Profile { profile: p } => p == profile,
            EventScope::RegionProfile {
                region: r,
                profile: p,
            } => r == region && p == profile,
        }
    }
}

/// How an event changes demand.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventEffect {
    /// Demand is multiplied by this factor while the event runs.
    Multiplier { factor: f64 },
    /// Use the ratio of observed to forecast demand of the last finished event with the same tag.
    LearnFromTag,
}

/// A scheduled event (a launch, a sale, a batch window).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledEvent {
    pub id: String,
    pub tag: String,
    pub scope: EventScope,
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    pub effect: EventEffect,
}

/// What a decision asks the provisioner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Start instances so that `to` run (routed as soon as ready).
    ScaleUp { from: u32, to: u32 },
    /// Stop routing new requests to `count` instances; they are removed after draining.
    Drain { from: u32, to: u32, count: u32 },
    /// Remove `count` drained instances.
    Remove { count: u32 },
}

/// A change of plan, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub at: UnixSeconds,
    pub fleet: FleetKey,
    pub action: Action,
    pub tiers: Tiers,
    /// How the warm pool splits into per-profile sub-pools (empty when there is no warm pool).
    pub warm_pools: Vec<WarmPool>,
    /// Profiles to shed first when the cap binds (lowest revenue first), else empty.
    pub shed_order: Vec<String>,
    pub reason: String,
}

/// The latest plan of a fleet, changed or not (for the admin API and reports).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStatus {
    pub at: UnixSeconds,
    pub running: u32,
    pub draining: u32,
    pub tiers: Tiers,
    pub warm_pools: Vec<WarmPool>,
    /// Requests/s per instance the plan used, and where the figure comes from.
    pub capacity: CapacityEstimate,
    pub shed_order: Vec<String>,
    /// Capacity granted to each profile while the cap binds (empty when it does not): what the
    /// proxies admit of each profile, highest revenue-weighted demand served first.
    pub grants: Vec<ProfileGrant>,
    /// Which forecast sized the fleet: its total's, or the sum of its profiles'.
    pub sizing: Sizing,
    /// The feedback loop on the SLO tail: its factor, and the share of recent minutes over
    /// capacity against the target.
    pub tail: TailReport,
    pub reason: String,
}

/// How a fleet's forecast path is made, and how each way has done at the lead time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    /// `fleet_total` (the total's own forecast and calibrated interval) or `sum_of_profiles`
    /// (each profile's forecast summed, their interval widths combined as independent errors).
    pub method: &'static str,
    /// Recent mean absolute error at the lead time of each way, requests per minute (None until
    /// scored; the sum is only tracked for fleets of two or more profiles with series).
    pub fleet_total_error: Option<f64>,
    pub sum_of_profiles_error: Option<f64>,
}

/// Lead-time minutes scored before the sum of profiles may size a fleet.
const MIN_SIZING_SCORED: u32 = 60;
/// Weight of a new error in the methods' running mean absolute error.
const SIZING_EWMA: f64 = 1.0 / 240.0;

/// The capacity a profile is granted while its fleet's cap binds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileGrant {
    pub profile: String,
    /// Instances' worth of capacity granted.
    pub instances: f64,
    /// The same as requests per minute the fleet may take of this profile.
    pub requests_per_minute: f64,
    /// Requests per minute the profile's own forecast (its SLO bound at the lead time) asks for.
    pub wanted_per_minute: f64,
}

#[derive(Debug, Clone)]
struct FleetState {
    spec: FleetSpec,
    total: SeriesForecaster,
    running: u32,
    draining: Vec<(u32, UnixSeconds)>,
    down_held_minutes: i64,
    /// The forecast made for the running minute at the last tick: (minute, point, surprise bound).
    last_bound: Option<(i64, f64, f64)>,
    /// Consecutive observed minutes above their SLO bound.
    above_bound_streak: u32,
    learner: Option<CapacityLearner>,
    status: Option<FleetStatus>,
    /// Lead-time forecasts waiting for their minute: (minute, fleet total's point, sum of the
    /// profiles' points).
    sizing_pending: std::collections::VecDeque<(i64, f64, f64)>,
    /// Running mean absolute errors of the two ways, and how many minutes were scored.
    sizing_error: [f64; 2],
    sizing_scored: u32,
    /// Recent minutes' per-resource demand of a fleet sized on its binding resource.
    binding: BTreeMap<i64, BindingMinute>,
    /// The feedback loop that keeps the realized share of minutes over capacity near the SLO.
    tail: TailControl,
}

impl FleetState {
    /// Adds `requests` of a profile using `resources` per request/s to `minute`; returns what the
    /// fleet's total gains: the growth of the minute's binding demand.
    fn add_binding(
        &mut self,
        instance: &Resources,
        minute: i64,
        requests: f64,
        resources: Option<&Resources>,
    ) -> f64 {
        let rps = self.spec.capacity.rps_per_instance;
        let entry = self.binding.entry(minute).or_default();
        entry.requests += requests;
        if let Some(used) = resources {
            for ((equivalent, per_request), offered) in entry
                .equivalent
                .iter_mut()
                .zip(used.amounts())
                .zip(instance.amounts())
            {
                if offered > 0.0 && per_request > 0.0 {
                    *equivalent += requests * per_request * rps / offered;
                }
            }
        }
        let demand = entry
            .equivalent
            .iter()
            .fold(entry.requests, |most, e| most.max(*e));
        let gain = demand - entry.handed;
        entry.handed = demand;
        let oldest = minute - BINDING_MINUTES_KEPT;
        while self
            .binding
            .first_key_value()
            .is_some_and(|(m, _)| *m < oldest)
        {
            self.binding.pop_first();
        }
        gain
    }

    /// The resource that bound the latest minute and how much it exceeds the requests (None: the
    /// requests bound, or the fleet is sized on requests alone).
    fn binding_resource(&self) -> Option<(&'static str, f64)> {
        let (_, last) = self.binding.last_key_value()?;
        let (index, most) = last
            .equivalent
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        (*most > last.requests && last.requests > 0.0)
            .then(|| (Resources::NAMES[index], most / last.requests))
    }

    fn sizing(&self, method: &'static str) -> Sizing {
        let scored = self.sizing_scored > 0;
        Sizing {
            method,
            fleet_total_error: scored.then_some(self.sizing_error[0]),
            sum_of_profiles_error: scored.then_some(self.sizing_error[1]),
        }
    }

    /// Scores the pending lead-time forecasts whose minute is observed (up to `origin`).
    fn score_sizing(&mut self, origin: i64) {
        while let Some(&(minute, total, sum)) = self.sizing_pending.front() {
            if minute > origin {
                break;
            }
            self.sizing_pending.pop_front();
            let Some(observed) = self.total.series().get(minute) else {
                continue;
            };
            let errors = [(total - observed).abs(), (sum - observed).abs()];
            self.sizing_scored += 1;
            let weight = (1.0 / self.sizing_scored as f64).max(SIZING_EWMA);
            for (running, e) in self.sizing_error.iter_mut().zip(errors) {
                *running += weight * (e - *running);
            }
        }
    }

    fn capacity(&self) -> CapacityEstimate {
        match &self.learner {
            Some(learner) => learner.estimate(),
            None => CapacityEstimate {
                rps_per_instance: self.spec.capacity.rps_per_instance,
                source: CapacitySource::Configured,
            },
        }
    }
}

/// A share of a fleet's warm pool: started for one profile's expected arrivals (`profile` set,
/// for profiles whose instances need their own configuration) or shared by the rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarmPool {
    pub profile: Option<String>,
    pub instances: u32,
}

#[derive(Debug, Clone, Default)]
struct EventLearning {
    actual: f64,
    forecast: f64,
}

#[derive(Debug, Clone)]
struct ProfileState {
    forecaster: SeriesForecaster,
    /// The last minute whose running events were measured (each minute counts once).
    learned_through: Option<i64>,
}

/// The forecasting and planning state machine of one region (or several).
#[derive(Debug, Clone)]
pub struct Brain {
    forecast_config: ForecastConfig,
    planner_config: PlannerConfig,
    profiles: BTreeMap<SeriesKey, ProfileState>,
    fleets: BTreeMap<FleetKey, FleetState>,
    /// Resources per request/s of profiles, for fleets sized on their binding resource.
    profile_resources: BTreeMap<SeriesKey, Resources>,
    events: Vec<ScheduledEvent>,
    /// Events that ended recently, kept to scale minutes of theirs reported late.
    ended_events: Vec<ScheduledEvent>,
    event_learning: BTreeMap<String, EventLearning>,
    learned: BTreeMap<String, f64>,
    next_tick: Option<UnixSeconds>,
}

impl Brain {
    /// A brain with no fleets and no history.
    pub fn new(forecast_config: ForecastConfig, planner_config: PlannerConfig) -> Self {
        Self {
            forecast_config,
            planner_config,
            profiles: BTreeMap::new(),
            fleets: BTreeMap::new(),
            profile_resources: BTreeMap::new(),
            events: Vec::new(),
            ended_events: Vec::new(),
            event_learning: BTreeMap::new(),
            learned: BTreeMap::new(),
            next_tick: None,
        }
    }

    /// Add (or replace) a fleet to plan.
    pub fn add_fleet(&mut self, spec: FleetSpec) {
        let total = SeriesForecaster::new(&self.forecast_config, self.planner_config.slo_target);
        let running = spec.initial_instances;
        let learner = spec
            .learn_capacity
            .map(|slo| CapacityLearner::new(slo, spec.capacity.rps_per_instance));
        self.fleets.insert(
            spec.key.clone(),
            FleetState {
                spec,
                total,
                running,
                draining: Vec::new(),
                down_held_minutes: 0,
                last_bound: None,
                above_bound_streak: 0,
                learner,
                status: None,
                sizing_pending: std::collections::VecDeque::new(),
                sizing_error: [0.0; 2],
                sizing_scored: 0,
                binding: BTreeMap::new(),
                tail: TailControl::new(self.planner_config.slo_target),
            },
        );
    }

    /// What a request per second of `profile` in `region` uses (from the persona it maps to);
    /// `None` forgets it. Only fleets with [`FleetSpec::instance_resources`] look at it, from the
    /// next observed minute on.
    pub fn set_profile_resources(&mut self, region: &str, profile: &str, use_: Option<Resources>) {
        let key = SeriesKey {
            region: region.to_string(),
            profile: profile.to_string(),
        };
        match use_ {
            Some(r) => {
                self.profile_resources.insert(key, r);
            }
            None => {
                self.profile_resources.remove(&key);
            }
        }
    }

    /// Makes `fleet` the fleet that serves `profile` of `region` from now on (the proxies routed
    /// it there; e.g. a learned profile, or one whose persona names another fleet): the profile
    /// joins that fleet's list with `revenue_weight` (or takes the new weight) and leaves every
    /// other fleet of the region whose list would not become empty by it (an empty list means
    /// every profile). A fleet with an empty list already serves it. Returns whether anything
    /// changed; an unknown fleet changes nothing.
    pub fn route_profile(
        &mut self,
        region: &str,
        profile: &str,
        fleet: &str,
        revenue_weight: f64,
    ) -> bool {
        let target = FleetKey {
            region: region.to_string(),
            fleet: fleet.to_string(),
        };
        if !self.fleets.contains_key(&target) {
            return false;
        }
        let mut changed = false;
        for (key, state) in self.fleets.iter_mut() {
            if key.region != region {
                continue;
            }
            let profiles = &mut state.spec.profiles;
            if *key == target {
                if profiles.is_empty() {
                    continue;
                }
                match profiles.iter_mut().find(|p| p.name == profile) {
                    Some(existing) if existing.revenue_weight == revenue_weight => {}
                    Some(existing) => {
                        existing.revenue_weight = revenue_weight;
                        changed = true;
                    }
                    None => {
                        profiles.push(FleetProfile {
                            name: profile.to_string(),
                            revenue_weight,
                        });
                        profiles.sort_by(|a, b| a.name.cmp(&b.name));
                        changed = true;
                    }
                }
            } else if profiles.len() > 1 {
                let before = profiles.len();
                profiles.retain(|p| p.name != profile);
                changed |= profiles.len() != before;
            }
        }
        changed
    }

    /// One minute of a fleet's served traffic for capacity learning: instances serving through
    /// the minute, requests served, and their latency histogram in microseconds. Ignored for
    /// fleets that do not learn their capacity.
    pub fn observe_fleet_latency(
        &mut self,
        fleet: &FleetKey,
        serving_instances: u32,
        requests: f64,
        latency_micros: &hdrhistogram::Histogram<u64>,
    ) {
        let Some(learner) = self.fleets.get_mut(fleet).and_then(|f| f.learner.as_mut()) else {
            return;
        };
        if latency_micros.is_empty() {
            return;
        }
        let at_quantile = latency_micros.value_at_quantile(learner.slo().quantile) as f64 / 1e6;
        learner.observe(serving_instances, requests, at_quantile);
    }

    /// The capacity figure a fleet is planned with now, and where it comes from.
    pub fn fleet_capacity(&self, fleet: &FleetKey) -> Option<CapacityEstimate> {
        self.fleets.get(fleet).map(FleetState::capacity)
    }

    /// Tell the brain how many instances a fleet actually runs (e.g. after a provisioner failed).
    pub fn set_fleet_instances(&mut self, fleet: &FleetKey, running: u32) {
        if let Some(state) = self.fleets.get_mut(fleet) {
            state.running = running;
        }
    }

    /// Record `requests` of `profile` in `region` during the minute starting at `minute_start`.
    /// Several reporters may add to the same minute.
    pub fn observe(
        &mut self,
        _now: UnixSeconds,
        region: &str,
        profile: &str,
        minute_start: UnixSeconds,
        requests: f64,
    ) {
        let minute = minute_start.div_euclid(60);
        let key = SeriesKey {
            region: region.to_string(),
            profile: profile.to_string(),
        };
        let forecast_config = &self.forecast_config;
        let slo = self.planner_config.slo_target;
        self.profiles
            .entry(key)
            .or_insert_with(|| ProfileState {
                forecaster: SeriesForecaster::new(forecast_config, slo),
                learned_through: None,
            })
            .forecaster
            .observe(minute, requests);
        // A fleet's total series keeps its demand without the events on the whole fleet: the
        // forecast multiplies the events back in, and a series that had adapted to an event
        // would have it multiplied twice (a 4x campaign planned at 16x once its level caught up).
        let event_factors: BTreeMap<FleetKey, f64> = self
            .fleets
            .values()
            .filter(|f| f.spec.serves(region, profile))
            .map(|f| {
                (
                    f.spec.key.clone(),
                    self.observed_event_factor(&f.spec, minute),
                )
            })
            .collect();
        let resources = self.profile_resources.get(&SeriesKey {
            region: region.to_string(),
            profile: profile.to_string(),
        });
        for fleet in self
            .fleets
            .values_mut()
            .filter(|f| f.spec.serves(region, profile))
        {
            let scale = event_factors.get(&fleet.spec.key).copied().unwrap_or(1.0);
            let requests = requests / scale;
            let demand = match fleet.spec.instance_resources {
                Some(instance) => fleet.add_binding(&instance, minute, requests, resources),
                None => requests,
            };
            fleet.total.observe(minute, demand);
        }
    }

    /// Add or replace (by id) a scheduled event.
    pub fn set_event(&mut self, event: ScheduledEvent) {
        self.events.retain(|e| e.id != event.id);
        self.ended_events.retain(|e| e.id != event.id);
        self.events.push(event);
    }

    /// Remove a scheduled event.
    pub fn remove_event(&mut self, id: &str) {
        self.events.retain(|e| e.id != id);
        self.ended_events.retain(|e| e.id != id);
    }

    /// The multiplier learned from the last finished event with `tag`, if any.
    pub fn learned_multiplier(&self, tag: &str) -> Option<f64> {
        self.learned.get(tag).copied()
    }

    /// When to call [`poll`](Brain::poll) next.
    pub fn next_wakeup(&self) -> Option<UnixSeconds> {
        let drains = self
            .fleets
            .values()
            .flat_map(|f| f.draining.iter().map(|d| d.1))
            .min();
        match (self.next_tick, drains) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Each candidate model's recent error on a fleet's total (the rolling-origin backtest).
    pub fn fleet_model_errors(
        &self,
        fleet: &FleetKey,
    ) -> Vec<(crate::forecast::Model, Option<f64>)> {
        self.fleets
            .get(fleet)
            .map(|f| f.total.model_errors())
            .unwrap_or_default()
    }

    /// The latest plan of a fleet.
    pub fn fleet_status(&self, fleet: &FleetKey) -> Option<&FleetStatus> {
        self.fleets.get(fleet).and_then(|f| f.status.as_ref())
    }

    /// Forecast of a fleet's total requests in `target` (absolute minute) from the data before
    /// `now`, events applied.
    pub fn fleet_forecast(
        &mut self,
        fleet: &FleetKey,
        now: UnixSeconds,
        target: i64,
    ) -> Option<ForecastPoint> {
        let now_minute = now.div_euclid(60);
        let state = self.fleets.get_mut(fleet)?;
        let origin = state.total.origin(now_minute)?;
        let base = state.total.forecast(origin, target);
        let spec = state.spec.clone();
        Some(self.with_events(&spec, now_minute, base))
    }

    /// Forecast of a (region, profile) series in `target` from the data before `now`, events
    /// applied.
    pub fn series_forecast(
        &mut self,
        key: &SeriesKey,
        now: UnixSeconds,
        target: i64,
    ) -> Option<ForecastPoint> {
        let now_minute = now.div_euclid(60);
        let state = self.profiles.get_mut(key)?;
        let origin = state.forecaster.origin(now_minute)?;
        let base = state.forecaster.forecast(origin, target);
        let factor = self.event_factor(&key.region, &key.profile, target);
        Some(scale_point(base, factor))
    }

    /// Bring every forecaster up to `now` without planning: score the forecasts whose minute has
    /// come and record this origin's. A driver that hands over history (a restart rebuilding
    /// from its store) calls this after each minute it observes, so the model choice and the
    /// calibrated intervals are what they would have been had the brain run through it.
    pub fn learn(&mut self, now: UnixSeconds) {
        let now_minute = now.div_euclid(60);
        self.update_profiles(now_minute);
        for fleet in self.fleets.values_mut() {
            fleet.total.update(now_minute);
        }
    }

    /// The (region, profile) series the brain has seen.
    pub fn series_keys(&self) -> Vec<SeriesKey> {
        self.profiles.keys().cloned().collect()
    }

    /// The fleets the brain plans.
    pub fn fleet_keys(&self) -> Vec<FleetKey> {
        self.fleets.keys().cloned().collect()
    }

    /// What the brain was told about a fleet.
    pub fn fleet_spec(&self, fleet: &FleetKey) -> Option<&FleetSpec> {
        self.fleets.get(fleet).map(|f| &f.spec)
    }

    /// Advance to `now`: remove drained instances that are due and, on a planning tick, update
    /// every forecast and plan every fleet. Returns the decisions, each with its reason.
    pub fn poll(&mut self, now: UnixSeconds) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for (key, fleet) in self.fleets.iter_mut() {
            let due: u32 = fleet
                .draining
                .iter()
                .filter(|d| d.1 <= now)
                .map(|d| d.0)
                .sum();
            if due > 0 {
                fleet.draining.retain(|d| d.1 > now);
                decisions.push(Decision {
                    at: now,
                    fleet: key.clone(),
                    action: Action::Remove { count: due },
                    tiers: fleet.status.as_ref().map(|s| s.tiers).unwrap_or_default(),
                    warm_pools: fleet
                        .status
                        .as_ref()
                        .map(|s| s.warm_pools.clone())
                        .unwrap_or_default(),
                    shed_order: Vec::new(),
                    reason: format!(
                        "remove {due}: drained for {} s",
                        self.planner_config.drain_seconds
                    ),
                });
            }
        }
        if self.next_tick.is_some_and(|t| now < t) {
            return decisions;
        }
        let tick = self.planner_config.tick_seconds as i64;
        self.next_tick = Some(now - now.rem_euclid(tick) + tick);
        let now_minute = now.div_euclid(60);
        self.update_profiles(now_minute);
        let keys: Vec<FleetKey> = self.fleets.keys().cloned().collect();
        for key in keys {
            if let Some(decision) = self.plan_fleet(&key, now, now_minute) {
                decisions.push(decision);
            }
        }
        decisions
    }

    fn update_profiles(&mut self, now_minute: i64) {
        let active: Vec<ScheduledEvent> = self.events.clone();
        for (key, state) in self.profiles.iter_mut() {
            state.forecaster.update(now_minute);
            let Some(origin) = state.forecaster.origin(now_minute) else {
                continue;
            };
            // Measure running events against the forecast made just before each one started
            // (a forecast made during the event would already have adapted to it).
            if state.learned_through != Some(origin) {
                state.learned_through = Some(origin);
                if let Some(actual) = state.forecaster.series().get(origin) {
                    for e in active.iter().filter(|e| {
                        in_event(e, origin) && e.scope.matches(&key.region, &key.profile)
                    }) {
                        let before = e.start.div_euclid(60) - 1;
                        if state.forecaster.series().get(before).is_none() {
                            continue;
                        }
                        let base = state.forecaster.forecast(before, origin).point;
                        let learning = self.event_learning.entry(e.id.clone()).or_default();
                        learning.actual += actual;
                        learning.forecast += base;
                    }
                }
            }
        }
        // Events that have ended teach their tag.
        let origin_minute = now_minute - 1;
        let (ended, running): (Vec<ScheduledEvent>, Vec<ScheduledEvent>) = self
            .events
            .drain(..)
            .partition(|e| e.end.div_euclid(60) <= origin_minute);
        self.events = running;
        self.ended_events
            .retain(|e| e.end.div_euclid(60) + ENDED_EVENT_MEMORY_MINUTES > origin_minute);
        self.ended_events.extend(ended.iter().cloned());
        for e in ended {
            if let Some(l) = self.event_learning.remove(&e.id) {
                if l.forecast > 0.0 && l.actual.is_finite() {
                    self.learned
                        .insert(e.tag.clone(), (l.actual / l.forecast).clamp(0.0, 1000.0));
                }
            }
        }
    }

    fn event_factor(&self, region: &str, profile: &str, minute: i64) -> f64 {
        self.events
            .iter()
            .filter(|e| in_event(e, minute) && e.scope.matches(region, profile))
            .map(|e| match &e.effect {
                EventEffect::Multiplier { factor } if factor.is_finite() && *factor >= 0.0 => {
                    *factor
                }
                EventEffect::Multiplier { .. } => 1.0,
                EventEffect::LearnFromTag => self.learned.get(&e.tag).copied().unwrap_or(1.0),
            })
            .product()
    }

    /// Apply events to a fleet total: events covering the whole fleet scale it; events on some of
    /// its profiles scale those profiles' share.
    fn with_events(
        &mut self,
        spec: &FleetSpec,
        now_minute: i64,
        base: ForecastPoint,
    ) -> ForecastPoint {
        if !self.events.iter().any(|e| in_event(e, base.minute)) {
            return base;
        }
        let region = spec.key.region.clone();
        let whole = self.event_factor_whole(spec, base.minute);
        let mut point = base.point * whole;
        if !spec.profiles.is_empty() {
            for profile in &spec.profiles {
                let own = self.event_factor(&region, &profile.name, base.minute) / whole.max(1e-12);
                if (own - 1.0).abs() > 1e-12 {
                    let key = SeriesKey {
                        region: region.clone(),
                        profile: profile.name.clone(),
                    };
                    if let Some(state) = self.profiles.get_mut(&key) {
                        if let Some(origin) = state.forecaster.origin(now_minute) {
                            point += (own - 1.0)
                                * whole
                                * state.forecaster.forecast(origin, base.minute).point;
                        }
                    }
                }
            }
        }
        let factor = if base.point > 0.0 {
            point.max(0.0) / base.point
        } else {
            whole
        };
        scale_point(base, factor)
    }

    fn event_factor_whole(&self, spec: &FleetSpec, minute: i64) -> f64 {
        self.whole_factor_of(self.events.iter(), spec, minute)
    }

    /// The factor by which the events in force at `minute` (running, or ended less than
    /// [`ENDED_EVENT_MEMORY_MINUTES`] ago, for minutes reported late) scaled a fleet's whole
    /// demand: what an observation is divided by before it enters the fleet's total series.
    fn observed_event_factor(&self, spec: &FleetSpec, minute: i64) -> f64 {
        let factor =
            self.whole_factor_of(self.events.iter().chain(&self.ended_events), spec, minute);
        if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        }
    }

    fn whole_factor_of<'a>(
        &self,
        events: impl Iterator<Item = &'a ScheduledEvent>,
        spec: &FleetSpec,
        minute: i64,
    ) -> f64 {
        events
            .filter(|e| in_event(e, minute))
            .filter(|e| match &e.scope {
                EventScope::All => true,
                EventScope::Region { region } => *region == spec.key.region,
                EventScope::Profile { profile } | EventScope::RegionProfile { profile, .. } => {
                    spec.profiles.is_empty() && e.scope.matches(&spec.key.region, profile)
                }
            })
            .map(|e| match &e.effect {
                EventEffect::Multiplier { factor } if factor.is_finite() && *factor >= 0.0 => {
                    *factor
                }
                EventEffect::Multiplier { .. } => 1.0,
                EventEffect::LearnFromTag => self.learned.get(&e.tag).copied().unwrap_or(1.0),
            })
            .product()
    }

    fn plan_fleet(
        &mut self,
        key: &FleetKey,
        now: UnixSeconds,
        now_minute: i64,
    ) -> Option<Decision> {
        let config = self.planner_config.clone();
        let state = self.fleets.get_mut(key)?;
        let capacity = state.capacity();
        let mut spec = state.spec.clone();
        spec.capacity.rps_per_instance = capacity.rps_per_instance;
        let origin = state.total.origin(now_minute);
        let last_observed = origin.and_then(|o| state.total.series().get(o));
        let previous_observed = origin.and_then(|o| state.total.series().get(o - 1));
        // A surprise: the last minute beat its surprise bound by a quarter of the bound's width
        // twice in a row, or far beyond it. One minute over the bound, or a run of minutes grazing
        // it, is the expected tail of noise, not a surprise.
        let anomaly_excess = match (state.last_bound, origin, last_observed) {
            (Some((minute, point, bound)), Some(o), Some(obs))
                if minute == o && obs > bound + 0.25 * (bound - point).max(0.0) =>
            {
                state.above_bound_streak += 1;
                let far = obs - point > 2.0 * (bound - point).max(0.0);
                if state.above_bound_streak >= 2 || far {
                    obs - bound
                } else {
                    0.0
                }
            }
            _ => {
                state.above_bound_streak = 0;
                0.0
            }
        };
        // A surprise is the reactive guard's to answer: neither the calibrated intervals nor the
        // tail the plan sizes for are widened for it (its errors would keep every bound wide for
        // the calibration window after the surge has passed).
        match (origin, last_observed) {
            (Some(o), Some(_)) if anomaly_excess > 0.0 => state.total.mark_surprise(o),
            (Some(o), Some(obs)) => {
                state.tail.observe(
                    o,
                    obs,
                    capacity.rps_per_instance * 60.0,
                    spec.capacity.lead_minutes(),
                );
            }
            _ => {}
        }
        state.total.update(now_minute);
        let window = spec.capacity.lead_minutes() + config.stabilization_minutes as i64;
        let mut path = Vec::with_capacity(window as usize + 1);
        if let Some(origin) = origin {
            state.score_sizing(origin);
            for k in 0..=window {
                let state = self.fleets.get_mut(key)?;
                let base = state.total.forecast(origin, now_minute + k);
                path.push(self.with_events(&spec, now_minute, base));
            }
        }
        // The sum of the fleet's profiles' forecasts, for fleets of several profiles: it sizes
        // the fleet once it has beaten the total's forecast at the lead time for long enough.
        let lead_index = (spec.capacity.lead_minutes() as usize).min(path.len().saturating_sub(1));
        let mut method = "fleet_total";
        // The profiles' forecasts are in requests: a fleet sized on its binding resource is
        // sized by its total, which is in that resource.
        let summable = spec.instance_resources.is_none();
        if let Some(summed) = summable
            .then(|| self.profiles_path(&spec, now, now_minute, window))
            .flatten()
        {
            let state = self.fleets.get_mut(key)?;
            if let (Some(total), Some(sum)) = (path.get(lead_index), summed.get(lead_index)) {
                state
                    .sizing_pending
                    .push_back((total.minute, total.point, sum.point));
            }
            if state.sizing_scored >= MIN_SIZING_SCORED
                && state.sizing_error[1] < 0.95 * state.sizing_error[0]
                && summed.len() == path.len()
            {
                path = summed;
                method = "sum_of_profiles";
            }
        }
        let state = self.fleets.get_mut(key)?;
        // Surprises are judged against the calibrated surprise bound (a fixed quantile, so that
        // a low `slo_target` does not make every noisy minute a surprise); the plan sizes for the
        // tail the feedback loop has scaled.
        let calibrated_now = path.first().map(|p| (p.minute, p.point, p.surprise_upper));
        let tail_scale = state.tail.scale();
        for p in &mut path {
            p.slo_upper = p.point + tail_scale * (p.slo_upper - p.point).max(0.0);
        }
        let cap = spec.cap();
        let input = PlanInput {
            current: state.running,
            path: &path,
            last_observed,
            previous_observed,
            anomaly_excess,
            cap,
            down_held_minutes: state.down_held_minutes,
        };
        let plan = planner::plan_fleet(&config, &spec.capacity, &input);
        state.last_bound = calibrated_now;
        let lead = spec.capacity.lead_minutes() as usize;
        let capped = cap.is_some_and(|c| {
            plan.tiers
                .baseline
                .max(plan.tiers.predictive + plan.tiers.burst)
                .max(plan.tiers.guard)
                > c
        });
        let (shed_order, grants) = if capped {
            self.allocate(&spec, now_minute, lead, cap.unwrap_or(0))
        } else {
            (Vec::new(), Vec::new())
        };
        let state = self.fleets.get_mut(key)?;
        state.down_held_minutes = if plan.down_condition {
            state.down_held_minutes + 1
        } else {
            0
        };
        let warm_pools = if plan.tiers.warm_pool > 0 {
            self.warm_pools(&spec, now_minute, lead as i64, plan.tiers.warm_pool)
        } else {
            Vec::new()
        };
        let state = self.fleets.get_mut(key)?;
        let mut reason = plan.reason.clone();
        if method == "sum_of_profiles" {
            reason.push_str(&format!(
                "; sized by the sum of {} profile forecasts (recent error {:.1} vs the total's {:.1} req/min)",
                spec.profiles.len().max(1),
                state.sizing_error[1],
                state.sizing_error[0]
            ));
        }
        if let Some((resource, factor)) = state.binding_resource() {
            reason.push_str(&format!(
                "; sized on {resource}: the last minute's demand is {factor:.2}× its requests in what an instance offers"
            ));
        }
        let tail = state.tail.report();
        if tail.minutes > 0 {
            reason.push_str(&format!(
                "; SLO tail ×{:.2} ({} of the last {} min over capacity, target {})",
                tail.scale,
                percent(tail.realized_miss_share),
                tail.minutes,
                percent(tail.target_miss_share),
            ));
        }
        if let CapacitySource::Learned { why } = &capacity.source {
            reason.push_str(&format!(
                "; capacity {:.1} req/s per instance learned from {why}",
                capacity.rps_per_instance
            ));
        }
        if warm_pools.iter().any(|w| w.profile.is_some()) {
            let parts: Vec<String> = warm_pools
                .iter()
                .map(|w| {
                    format!(
                        "{} {}",
                        w.profile.as_deref().unwrap_or("shared"),
                        w.instances
                    )
                })
                .collect();
            reason.push_str(&format!(
                "; warm pool {}: {}",
                plan.tiers.warm_pool,
                parts.join(", ")
            ));
        }
        if !shed_order.is_empty() {
            reason.push_str(&format!(
                "; cap {} binds, shed first: {}",
                cap.unwrap_or(0),
                shed_order.join(", ")
            ));
        }
        let decision = match plan.step {
            Step::Hold => None,
            Step::ScaleUp { from, to } => {
                state.running = to;
                Some(Action::ScaleUp { from, to })
            }
            Step::ScaleDown { from, to } => {
                state.running = to;
                state
                    .draining
                    .push((from - to, now + config.drain_seconds as i64));
                Some(Action::Drain {
                    from,
                    to,
                    count: from - to,
                })
            }
        };
        state.tail.record_tick(now_minute, state.running);
        let draining = state.draining.iter().map(|d| d.0).sum();
        state.status = Some(FleetStatus {
            at: now,
            running: state.running,
            draining,
            tiers: plan.tiers,
            warm_pools: warm_pools.clone(),
            capacity,
            shed_order: shed_order.clone(),
            grants,
            sizing: state.sizing(method),
            tail,
            reason: reason.clone(),
        });
        decision.map(|action| Decision {
            at: now,
            fleet: key.clone(),
            action,
            tiers: plan.tiers,
            warm_pools,
            shed_order,
            reason,
        })
    }

    /// Split `warm` instances among the fleet's dedicated-profile sub-pools and the shared
    /// pool, by each profile's expected arrivals within the lead time (the growth of its SLO
    /// bound from now to `now + lead`, or its level when nothing grows), largest remainders
    /// rounding so the parts add up to `warm`.
    fn warm_pools(
        &mut self,
        spec: &FleetSpec,
        now_minute: i64,
        lead: i64,
        warm: u32,
    ) -> Vec<WarmPool> {
        if spec.warm_sub_pools.is_empty() {
            return vec![WarmPool {
                profile: None,
                instances: warm,
            }];
        }
        let served: Vec<String> = if spec.profiles.is_empty() {
            self.profiles
                .keys()
                .filter(|k| k.region == spec.key.region)
                .map(|k| k.profile.clone())
                .collect()
        } else {
            spec.profiles.iter().map(|p| p.name.clone()).collect()
        };
        // (sub-pool, growth, level); sub-pool None = shared.
        let mut parts: Vec<(Option<String>, f64, f64)> = Vec::new();
        for profile in served {
            let key = SeriesKey {
                region: spec.key.region.clone(),
                profile: profile.clone(),
            };
            let now_point = self.series_forecast(&key, now_minute * 60, now_minute);
            let at_lead = self.series_forecast(&key, now_minute * 60, now_minute + lead);
            let (growth, level) = match (now_point, at_lead) {
                (Some(a), Some(b)) => ((b.slo_upper - a.slo_upper).max(0.0), b.slo_upper.max(0.0)),
                (None, Some(b)) => (b.slo_upper.max(0.0), b.slo_upper.max(0.0)),
                _ => (0.0, 0.0),
            };
            let pool = spec.warm_sub_pools.contains(&profile).then_some(profile);
            match parts.iter_mut().find(|p| p.0 == pool) {
                Some(part) => {
                    part.1 += growth;
                    part.2 += level;
                }
                None => parts.push((pool, growth, level)),
            }
        }
        if !parts.iter().any(|p| p.0.is_none()) {
            parts.push((None, 0.0, 0.0));
        }
        let growth: f64 = parts.iter().map(|p| p.1).sum();
        let level: f64 = parts.iter().map(|p| p.2).sum();
        let weights: Vec<f64> = if growth > 0.0 {
            parts.iter().map(|p| p.1 / growth).collect()
        } else if level > 0.0 {
            parts.iter().map(|p| p.2 / level).collect()
        } else {
            parts
                .iter()
                .map(|p| if p.0.is_none() { 1.0 } else { 0.0 })
                .collect()
        };
        let counts = largest_remainders(&weights, warm);
        let mut pools: Vec<WarmPool> = parts
            .into_iter()
            .zip(counts)
            .map(|((profile, _, _), instances)| WarmPool { profile, instances })
            .collect();
        // Dedicated sub-pools first, by name; the shared pool last.
        pools.sort_by(|a, b| {
            (a.profile.is_none(), &a.profile).cmp(&(b.profile.is_none(), &b.profile))
        });
        pools
    }

    /// The forecast path of a fleet as the sum of its profiles' forecasts (events applied per
    /// profile), the interval widths combined as independent errors; `None` for fleets with
    /// fewer than two profiles that have series.
    fn profiles_path(
        &mut self,
        spec: &FleetSpec,
        now: UnixSeconds,
        now_minute: i64,
        window: i64,
    ) -> Option<Vec<ForecastPoint>> {
        let keys: Vec<SeriesKey> = if spec.profiles.is_empty() {
            self.profiles
                .keys()
                .filter(|k| k.region == spec.key.region)
                .cloned()
                .collect()
        } else {
            spec.profiles
                .iter()
                .map(|p| SeriesKey {
                    region: spec.key.region.clone(),
                    profile: p.name.clone(),
                })
                .filter(|k| self.profiles.contains_key(k))
                .collect()
        };
        if keys.len() < 2 {
            return None;
        }
        let mut path = Vec::with_capacity(window as usize + 1);
        for k in 0..=window {
            let target = now_minute + k;
            let (mut point, mut up, mut down, mut slo, mut surprise) = (0.0, 0.0, 0.0, 0.0, 0.0);
            let mut model = None;
            for key in &keys {
                let Some(p) = self.series_forecast(key, now, target) else {
                    continue;
                };
                point += p.point;
                up += (p.upper - p.point).powi(2);
                down += (p.point - p.lower).powi(2);
                slo += (p.slo_upper - p.point).powi(2);
                surprise += (p.surprise_upper - p.point).powi(2);
                model.get_or_insert(p.model);
            }
            let model = model?;
            let upper = point + up.sqrt();
            path.push(ForecastPoint {
                minute: target,
                point,
                lower: (point - down.sqrt()).max(0.0),
                upper,
                slo_upper: (point + slo.sqrt()).max(upper),
                surprise_upper: (point + surprise.sqrt()).max(upper),
                model,
            });
        }
        Some(path)
    }

    /// Under a binding cap: each profile's need from its own forecast (its SLO bound at the lead
    /// time), the cap shared out by revenue weight, and the order to shed in.
    fn allocate(
        &mut self,
        spec: &FleetSpec,
        now_minute: i64,
        lead: usize,
        cap: u32,
    ) -> (Vec<String>, Vec<ProfileGrant>) {
        let mut needs = Vec::new();
        for profile in &spec.profiles {
            let key = SeriesKey {
                region: spec.key.region.clone(),
                profile: profile.name.clone(),
            };
            let instances = self
                .series_forecast(&key, now_minute * 60, now_minute + lead as i64)
                .map_or(0.0, |p| p.slo_upper / 60.0 / spec.capacity.rps_per_instance);
            needs.push(ProfileNeed {
                profile: profile.name.clone(),
                instances,
                revenue_weight: profile.revenue_weight,
            });
        }
        let allocation = allocate_under_cap(&needs, cap as f64);
        let per_instance = spec.capacity.rps_per_instance * 60.0;
        let grants = allocation
            .granted
            .iter()
            .zip(&needs)
            .map(|((profile, instances), need)| ProfileGrant {
                profile: profile.clone(),
                instances: *instances,
                requests_per_minute: instances * per_instance,
                wanted_per_minute: need.instances * per_instance,
            })
            .collect();
        (allocation.shed_order, grants)
    }
}

/// `total` split by `weights` (summing to 1) into whole parts that add up to `total`.
fn largest_remainders(weights: &[f64], total: u32) -> Vec<u32> {
    let exact: Vec<f64> = weights.iter().map(|w| w * total as f64).collect();
    let mut counts: Vec<u32> = exact.iter().map(|x| x.floor() as u32).collect();
    let mut left = total.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order.into_iter().cycle().take(weights.len() * 2) {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// A share as a percentage with up to two decimals: `0.0125` → `1.25 %`.
fn percent(share: f64) -> String {
    format!("{} %", planner::trim_percent(share * 100.0))
}

fn in_event(event: &ScheduledEvent, minute: i64) -> bool {
    let start = event.start.div_euclid(60);
    let end = event.end.div_euclid(60);
    (start..end).contains(&minute)
}

fn scale_point(p: ForecastPoint, factor: f64) -> ForecastPoint {
    if (factor - 1.0).abs() < 1e-12 || !factor.is_finite() {
        return p;
    }
    ForecastPoint {
        point: p.point * factor,
        lower: p.lower * factor,
        upper: p.upper * factor,
        slo_upper: p.slo_upper * factor,
        surprise_upper: p.surprise_upper * factor,
        ..p
    }
}

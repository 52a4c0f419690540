//! The report as data: every number the rendered report shows, per region, fleet and profile,
//! with serde both ways so the JSON a forecaster serves can be read back, merged and rendered.
//!
//! Ratios that can be undefined (nothing to divide by) are `Option`s, never NaN, so the JSON is
//! always valid and always round-trips.

use serde::{Deserialize, Serialize};

use crate::history::Outlook;
use crate::ledger::DecisionRecord;

/// Bumped when a field changes meaning or disappears (adding one does not bump it).
pub const REPORT_SCHEMA: u32 = 1;

/// A capacity report over one or more regions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`] of the code that built it.
    pub schema: u32,
    /// The period asked for (unix seconds, node time); `None`: each region's whole recorded span.
    pub requested_from: Option<u64>,
    pub requested_to: Option<u64>,
    /// What each figure means.
    pub definitions: Vec<Definition>,
    /// Sums over every region.
    pub totals: Totals,
    pub regions: Vec<RegionReport>,
    /// Why there is little or nothing to show (an empty store, a too-short period).
    pub notice: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub term: String,
    pub meaning: String,
}

/// Figures that add up across fleets and regions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Fleet-minutes recorded in the period.
    pub fleet_minutes: u64,
    /// Requests of the minutes whose demand was handed to the planner.
    pub requests: u64,
    pub violation_minutes: u64,
    /// Requests above the ready capacity of their minute (summed per minute, so fractional).
    pub unserved_requests: f64,
    /// `unserved_requests / requests`; `None` without demand.
    pub unserved_share: Option<f64>,
    pub instance_minutes: u64,
    pub instance_hours: f64,
    /// In the unit of the fleets' `cost_per_instance_hour`.
    pub cost: f64,
}

impl Totals {
    /// Adds another set of totals (the share is recomputed from the sums).
    pub fn add(&mut self, other: &Totals) {
        self.fleet_minutes += other.fleet_minutes;
        self.requests += other.requests;
        self.violation_minutes += other.violation_minutes;
        self.unserved_requests += other.unserved_requests;
        self.instance_minutes += other.instance_minutes;
        self.instance_hours = self.instance_minutes as f64 / 60.0;
        self.cost += other.cost;
        self.unserved_share = share(self.unserved_requests, self.requests as f64);
    }
}

/// `part / whole`, `None` when `whole` is zero.
pub(crate) fn share(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// One region over its period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionReport {
    pub region: String,
    /// The period reported, `[from, to)` in unix seconds (node time).
    pub from: u64,
    pub to: u64,
    /// First and last minute the store has recorded for the region, whatever the period.
    pub recorded_first_minute: Option<u64>,
    pub recorded_last_minute: Option<u64>,
    pub totals: Totals,
    pub fleets: Vec<FleetReport>,
    pub notice: Option<String>,
}

/// One fleet over the period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    pub fleet: String,
    /// The lead time (minutes) of the forecasts recorded for the fleet's minutes.
    pub lead_minutes: Option<i64>,
    pub minutes: MinuteCounts,
    pub demand: DemandStats,
    pub slo: SloStats,
    pub cost: CostStats,
    pub accuracy: Accuracy,
    /// The fleet's profiles, most requests first.
    pub profiles: Vec<ProfileReport>,
    /// Who made up the fleet's busiest minute.
    pub peak: Option<PeakDrivers>,
    /// Scaling decisions made in the period, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// The plan's latest view of the next 24 hours (not limited to the period).
    pub outlook: Option<Outlook>,
    /// Minute by minute: what the chart draws.
    pub series: Vec<MinutePoint>,
    pub notice: Option<String>,
}

impl FleetReport {
    pub fn totals(&self) -> Totals {
        Totals {
            fleet_minutes: self.minutes.recorded,
            requests: self.demand.requests,
            violation_minutes: self.slo.violation_minutes,
            unserved_requests: self.slo.unserved_requests,
            unserved_share: self.slo.unserved_share,
            instance_minutes: self.cost.instance_minutes,
            instance_hours: self.cost.instance_hours,
            cost: self.cost.money,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCounts {
    /// Minutes the live driver recorded for the fleet in the period.
    pub recorded: u64,
    /// Of those, minutes whose demand was handed to the planner.
    pub with_demand: u64,
    /// Minutes no sketch covered: missing data, not zero demand.
    pub absent: u64,
    /// Minutes covered by sketches but not (yet) handed to the planner, e.g. the last ones
    /// before the forecaster stopped.
    pub pending: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandStats {
    /// Requests of the minutes with demand.
    pub requests: u64,
    /// The busiest minute and its requests.
    pub peak_minute: Option<u64>,
    pub peak_requests: u64,
    pub mean_requests_per_minute: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SloStats {
    pub violation_minutes: u64,
    pub unserved_requests: f64,
    pub unserved_share: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostStats {
    /// Instance-minutes of warming (booting), ready and draining instances.
    pub instance_minutes: u64,
    pub warming_minutes: u64,
    pub ready_minutes: u64,
    pub draining_minutes: u64,
    pub instance_hours: f64,
    /// Each minute's instances × that minute's `cost_per_instance_hour` / 60.
    pub money: f64,
}

/// How good the recorded forecasts were against what came.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Mean |demand − forecast point| over mean |demand − demand a day earlier|, over the
    /// minutes that have a demand, a forecast and a demand a day earlier.
    pub mase: Option<f64>,
    pub mase_minutes: u64,
    pub mean_absolute_error: Option<f64>,
    pub seasonal_naive_mean_absolute_error: Option<f64>,
    /// Share of minutes with a demand and a forecast whose demand fell within [lower, upper].
    pub interval_coverage: Option<f64>,
    pub coverage_minutes: u64,
    /// Why a figure is missing ("needs a day of history", …).
    pub note: Option<String>,
}

/// One profile of a fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    pub profile: String,
    /// As configured when the driver started (`None`: the store does not know it).
    pub revenue_weight: Option<f64>,
    /// Requests the series store holds for the profile in the period.
    pub requests: u64,
    /// Of the fleet's profiles' requests in the period.
    pub share_of_requests: Option<f64>,
    /// Requests in the fleet's busiest minute, and their share of that minute.
    pub peak_requests: u64,
    pub share_of_peak: Option<f64>,
    /// `revenue_weight × peak_requests`.
    pub revenue_weighted_peak: Option<f64>,
    pub accuracy: Accuracy,
}

/// The profiles behind a fleet's busiest minute, ranked two ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakDrivers {
    pub minute: u64,
    pub requests: u64,
    /// Profile names, highest revenue weight first (ties: larger share first).
    pub by_revenue_weight: Vec<String>,
    /// Profile names, largest share of the peak minute first.
    pub by_share_of_peak: Vec<String>,
}

/// One recorded minute of a fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinutePoint {
    /// Unix seconds of the minute's start.
    pub minute: u64,
    /// `None`: absent or pending (see [`MinuteCounts`]).
    pub demand: Option<u64>,
    pub ready: u32,
    pub warming: u32,
    pub draining: u32,
    pub planned: u32,
    /// Requests the ready instances serve in the minute: ready × rps_per_instance × 60.
    pub capacity: f64,
    /// The forecast recorded for the minute at the fleet's lead time.
    pub forecast: Option<Band>,
    pub violation: bool,
}

/// A forecast with its interval (requests in the minute).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
}

/// The definitions every report states.
pub fn definitions() -> Vec<Definition> {
    [
        ("period", "minutes [from, to) in node time (UTC clock text; a node run with --speedup has a clock ahead of the wall). Default: each region's whole recorded span."),
        ("demand", "requests of the fleet's profiles in the minute as handed to the planner (late requests added)."),
        ("absent minute", "a minute no sketch covered: missing data, not zero demand; left out of accuracy, violations and unserved share, and counted."),
        ("pending minute", "a minute sketches covered but not yet handed to the planner (the last ones before the forecaster stopped); left out like an absent minute."),
        ("ready capacity", "ready instances at the minute's start × rps_per_instance × 60 (requests in the minute)."),
        ("SLO violation minute", "a minute whose demand exceeds its ready capacity."),
        ("unserved share", "sum over minutes of max(0, demand − ready capacity) / total demand."),
        ("cost", "instance-minutes of warming (booting), ready and draining instances; instance-hours = instance-minutes / 60; money = each minute's instances × that minute's cost_per_instance_hour / 60."),
        ("MASE", "mean |demand − forecast point| / mean |demand − demand of the same minute a day earlier|, over the minutes that have both; the forecast is the one recorded at the fleet's lead time. Below 1 beats the seasonal-naive forecast."),
        ("interval coverage", "share of minutes whose demand fell within [lower, upper] of the recorded forecast."),
        ("peak drivers", "the profiles' requests in the fleet's busiest minute, ranked by revenue weight and by share of that minute."),
        ("outlook", "the plan's latest forecast of the next 24 hours (minute by minute for an hour, then hourly) and the instances its sizing gives each point."),
    ]
    .into_iter()
    .map(|(term, meaning)| Definition {
        term: term.to_string(),
        meaning: meaning.to_string(),
    })
    .collect()
}

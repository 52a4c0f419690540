//! `prescale replay`: simulate scaling policies on a request trace with a simulated clock and
//! fleet, and score them under the contract in DESIGN.md (violation minutes, unserved fraction,
//! instance-minutes, cost against the oracle, forecast MASE).
//!
//! The `predictive` policy drives the same [`Brain`](crate::brain::Brain) the live forecaster
//! runs; it only ever sees minutes that have ended.

pub mod events;
pub mod fleet;
pub mod oracle;
pub mod predictive;
pub mod progress;
pub mod reactive;
pub mod sweep;

use prescale_config::brain::{ForecastConfig, PlannerConfig};
use serde::Serialize;

use crate::brain::{Decision, ScheduledEvent};
use crate::error::{Error, Result};
use crate::trace::Trace;

/// Minutes in a day: the lag of the seasonal-naive forecast MASE is scaled by.
const DAY_MINUTES: usize = 1440;

/// The policies `prescale replay` can simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Predictive,
    Reactive,
    Oracle,
}

impl Policy {
    /// All policies, in output order.
    pub const ALL: [Policy; 3] = [Policy::Predictive, Policy::Reactive, Policy::Oracle];

    /// The policy's name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Predictive => "predictive",
            Policy::Reactive => "reactive",
            Policy::Oracle => "oracle",
        }
    }
}

/// What the simulated fleet looks like and how the policies are configured.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Requests per second one instance serves.
    pub capacity_rps: f64,
    /// Seconds from requesting an instance until it is ready.
    pub cold_start_seconds: f64,
    /// The reactive policy's target utilization.
    pub target_utilization: f64,
    /// The predictive policy's forecasting settings.
    pub forecast: ForecastConfig,
    /// The predictive policy's planner settings.
    pub planner: PlannerConfig,
    /// The fleets the reactive and predictive policies start with.
    pub start: FleetStart,
    /// Scheduled events the predictive policy is told of (`--events`); every score also
    /// carries its policy's score inside each event.
    pub events: Vec<ScheduledEvent>,
}

/// How the simulated fleets start. Either way the predictive policy starts without history: it
/// learns from the minutes as they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FleetStart {
    /// Ready for the first minute's demand, as a fleet that has been running.
    #[default]
    SizedToFirstMinute,
    /// One ready instance (the predictive policy: its baseline, if larger): a new service's day
    /// one (`prescale replay --empty-history`).
    OneInstance,
}

impl FleetStart {
    /// Instances ready at minute 0 for a fleet that would need `needed` then, never below
    /// `floor`.
    pub fn instances(self, needed: usize, floor: usize) -> usize {
        match self {
            FleetStart::SizedToFirstMinute => needed.max(floor),
            FleetStart::OneInstance => floor.max(1),
        }
    }
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            capacity_rps: 1.0,
            cold_start_seconds: 60.0,
            target_utilization: 0.7,
            forecast: ForecastConfig::default(),
            planner: PlannerConfig::default(),
            start: FleetStart::default(),
            events: Vec::new(),
        }
    }
}

impl ReplaySettings {
    /// Reject settings that cannot be simulated, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, message: String| Err(Error::Setting { key, message });
        if !(self.capacity_rps.is_finite() && self.capacity_rps > 0.0) {
            return bad(
                "--capacity-rps",
                format!(
                    "{} is not a positive number of requests per second",
                    self.capacity_rps
                ),
            );
        }
        if !(self.cold_start_seconds.is_finite()
            && (0.0..=86_400.0).contains(&self.cold_start_seconds))
        {
            return bad(
                "--cold-start",
                format!(
                    "{} is not between 0 and 86400 seconds",
                    self.cold_start_seconds
                ),
            );
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return bad(
                "--target-utilization",
                format!("{} is not in (0, 1]", self.target_utilization),
            );
        }
        if let Some(problem) = self
            .forecast
            .problems()
            .into_iter()
            .chain(self.planner.problems())
            .next()
        {
            return bad("config", problem);
        }
        Ok(())
    }
}

/// One policy's simulated fleet over the trace.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    /// The policy's name.
    pub policy: &'static str,
    /// Instances ready at the start of each minute.
    pub ready: Vec<usize>,
    /// Cost: instance-minutes from request to stop, booting instances included.
    pub instance_minutes: f64,
    /// The brain's decisions (predictive only).
    pub decisions: Vec<Decision>,
    /// The 30-minute-ahead point forecast of each minute's requests (predictive only).
    pub forecast_30: Option<Vec<Option<f64>>>,
}

impl PolicyRun {
    fn new(policy: &'static str, ready: Vec<usize>, instance_minutes: f64) -> Self {
        Self {
            policy,
            ready,
            instance_minutes,
            decisions: Vec::new(),
            forecast_30: None,
        }
    }
}

/// A policy's score under the replay contract (the JSON output's objects).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyScore {
    pub policy: String,
    pub slo_violation_minutes: usize,
    pub unserved_fraction: f64,
    pub instance_minutes: f64,
    pub cost_vs_oracle: f64,
    pub forecast_mase: Option<f64>,
    /// The same policy over the trace's first day alone (`--empty-history`): what it does
    /// before it has seen a day, against the oracle of that day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_day: Option<WindowScore>,
    /// The same policy inside each scheduled event's window (`--events`), in the file's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<events::EventWindowScore>,
}

/// A policy's score over a leading part of the trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowScore {
    pub minutes: usize,
    pub slo_violation_minutes: usize,
    pub unserved_fraction: f64,
    pub instance_minutes: f64,
    pub cost_vs_oracle: f64,
}

/// The outcome of a replay: scores and the runs behind them (for plots).
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    pub scores: Vec<PolicyScore>,
    pub runs: Vec<PolicyRun>,
    pub demand_rps: Vec<f64>,
}

/// Simulate `policies` on `trace`. `progress` is called with the number of minutes simulated so
/// far (summed over policies) out of `trace.len() * policies.len()`.
/// With [`FleetStart::OneInstance`], each score also carries its policy's first day.
pub fn replay(
    trace: &Trace,
    policies: &[Policy],
    settings: &ReplaySettings,
    progress: impl FnMut(u64),
) -> Result<ReplayOutcome> {
    let mut outcome = simulate(trace, policies, settings, progress)?;
    if settings.start == FleetStart::OneInstance {
        // Every policy is causal, so the first day replayed alone is exactly what it did then,
        // with its cost closed at the day's end.
        let day = trace.first_minutes(DAY_MINUTES);
        let day_outcome = simulate(&day, policies, settings, |_| {})?;
        for (score, day_score) in outcome.scores.iter_mut().zip(day_outcome.scores) {
            score.first_day = Some(WindowScore {
                minutes: day.len(),
                slo_violation_minutes: day_score.slo_violation_minutes,
                unserved_fraction: day_score.unserved_fraction,
                instance_minutes: day_score.instance_minutes,
                cost_vs_oracle: day_score.cost_vs_oracle,
            });
        }
    }
    Ok(outcome)
}

fn simulate(
    trace: &Trace,
    policies: &[Policy],
    settings: &ReplaySettings,
    mut progress: impl FnMut(u64),
) -> Result<ReplayOutcome> {
    settings.validate()?;
    let demand = trace.demand_rps();
    let oracle_run = oracle::run(&demand, settings);
    let mut runs = Vec::new();
    let mut done = 0u64;
    for &policy in policies {
        let run = match policy {
            Policy::Oracle => oracle_run.clone(),
            Policy::Reactive => reactive::run(&demand, settings, |m| progress(done + m as u64 + 1)),
            Policy::Predictive => {
                predictive::run(trace, settings, |m| progress(done + m as u64 + 1))
            }
        };
        done += trace.len() as u64;
        progress(done);
        runs.push(run);
    }
    let scores: Vec<PolicyScore> = runs
        .iter()
        .map(|run| {
            let mut scored = score(
                run,
                &demand,
                settings.capacity_rps,
                oracle_run.instance_minutes,
                trace,
            );
            scored.events = events::window_scores(
                &settings.events,
                trace,
                &demand,
                &run.ready,
                settings.capacity_rps,
            );
            scored
        })
        .collect();
    Ok(ReplayOutcome {
        scores,
        runs,
        demand_rps: demand,
    })
}

/// Score a run against the contract.
pub fn score(
    run: &PolicyRun,
    demand: &[f64],
    capacity_rps: f64,
    oracle_cost: f64,
    trace: &Trace,
) -> PolicyScore {
    let mut violations = 0;
    let mut unserved = 0.0;
    for (&d, &r) in demand.iter().zip(&run.ready) {
        let capacity = r as f64 * capacity_rps;
        if d > capacity + 1e-9 {
            violations += 1;
        }
        unserved += (d - capacity).max(0.0);
    }
    let total: f64 = demand.iter().sum();
    PolicyScore {
        policy: run.policy.to_string(),
        slo_violation_minutes: violations,
        unserved_fraction: if total > 0.0 { unserved / total } else { 0.0 },
        instance_minutes: run.instance_minutes,
        cost_vs_oracle: if oracle_cost > 0.0 {
            run.instance_minutes / oracle_cost
        } else {
            f64::NAN
        },
        forecast_mase: run.forecast_30.as_ref().and_then(|f| mase(f, trace)),
        first_day: None,
        events: Vec::new(),
    }
}

/// Mean absolute error of the forecasts over that of "same minute yesterday", over the minutes
/// that have both a forecast and a day of history. Minutes missing from the trace (outages), and
/// minutes whose previous day is missing, are left out: they are not demand either forecast
/// could be judged on.
pub fn mase(forecast: &[Option<f64>], trace: &Trace) -> Option<f64> {
    let (mut model, mut naive) = (0.0, 0.0);
    let scored = forecast
        .iter()
        .enumerate()
        .take(trace.len())
        .skip(DAY_MINUTES);
    for (m, f) in scored {
        let Some(f) = *f else { continue };
        if !(trace.present[m] && trace.present[m - DAY_MINUTES]) {
            continue;
        }
        model += (trace.requests[m] - f).abs();
        naive += (trace.requests[m] - trace.requests[m - DAY_MINUTES]).abs();
    }
    (naive > 0.0).then(|| model / naive)
}

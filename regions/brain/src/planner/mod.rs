//! The capacity planner: pure functions from a fleet's forecast path, its capacity model and its
//! current size to a tiered plan and one scaling step with a human-readable reason.
//!
//! Tiers: `baseline` (always on), `predictive` (the interval's upper bound at the cold-start lead
//! time, or the SLO bound if lower, plus the margin), `burst` (the extra the SLO bound and any
//! anomaly ask for), `guard` (the reactive guard: observed load, carried on over the lead time
//! while it rises, at the guard utilization, so a surprise never waits for the model) and
//! `warm_pool` (instances started now for arrivals expected within the lead time, beyond what
//! the current minute needs). Scale-up is immediate; scale-down goes to what the peak SLO bound
//! over the lead time plus the stabilization window needs plus `scale_down_band` times that
//! bound's tail (the hysteresis, sized by the forecast's uncertainty), once fewer instances have
//! sufficed for the stabilization window, never below the baseline, and by draining first. The
//! SLO bounds arrive already scaled by the tail's feedback loop ([`tail`]).

pub mod allocation;
pub mod capacity;
pub mod tail;

use prescale_config::brain::PlannerConfig;
use serde::Serialize;

pub use allocation::{allocate_under_cap, Allocation, ProfileNeed};

use crate::forecast::ForecastPoint;

/// What one instance of a fleet is worth and costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CapacityModel {
    /// Requests per second one instance serves within the latency SLO.
    pub rps_per_instance: f64,
    /// Seconds from requesting an instance until it serves.
    pub cold_start_seconds: f64,
    /// Cost of one instance for an hour (any currency).
    pub cost_per_instance_hour: f64,
}

impl CapacityModel {
    /// Whole minutes from a request until the instance serves a full minute (at least one: a
    /// decision at a minute's start cannot change that minute's ready capacity).
    pub fn lead_minutes(&self) -> i64 {
        ((self.cold_start_seconds / 60.0).ceil() as i64).max(1)
    }

    /// Instances needed to serve `requests_per_minute`.
    pub fn instances_for(&self, requests_per_minute: f64) -> u32 {
        let rps = requests_per_minute.max(0.0) / 60.0;
        let n = (rps / self.rps_per_instance - 1e-9).ceil();
        if n.is_finite() {
            n.clamp(0.0, u32::MAX as f64) as u32
        } else {
            0
        }
    }
}

/// Instance counts per tier (the total is what the fleet should run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Tiers {
    pub baseline: u32,
    pub predictive: u32,
    pub burst: u32,
    pub guard: u32,
    pub warm_pool: u32,
    pub total: u32,
}

/// The planner's inputs for one fleet at one tick.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Instances running or booting now (not draining).
    pub current: u32,
    /// Forecasts for the minutes from the running one through the lead time plus the
    /// stabilization window, in order (already carrying event multipliers).
    pub path: &'a [ForecastPoint],
    /// Requests in the last complete minute, if observed.
    pub last_observed: Option<f64>,
    /// Requests in the minute before it, if observed (how fast a surprise is rising).
    pub previous_observed: Option<f64>,
    /// How far the last minute beat its own SLO bound, in requests (0 when it did not).
    pub anomaly_excess: f64,
    /// Most instances the fleet may run (instance cap and budget), if bounded.
    pub cap: Option<u32>,
    /// Minutes the scale-down condition has held so far.
    pub down_held_minutes: i64,
}

/// The step the planner takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    Hold,
    ScaleUp { from: u32, to: u32 },
    ScaleDown { from: u32, to: u32 },
}

/// A plan: tiers, the step, whether the scale-down condition holds now, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub tiers: Tiers,
    pub step: Step,
    pub down_condition: bool,
    pub reason: String,
}

/// Plan one fleet for one tick.
pub fn plan_fleet(config: &PlannerConfig, capacity: &CapacityModel, input: &PlanInput<'_>) -> Plan {
    let lead = (capacity.lead_minutes() as usize).min(input.path.len().saturating_sub(1));
    let margin = 1.0 + config.margin;
    let cap = input.cap.unwrap_or(u32::MAX);
    let baseline = config.baseline_instances.min(cap);
    let need =
        |p: &ForecastPoint| capacity.instances_for((p.slo_upper + input.anomaly_excess) * margin);
    let Some(at_lead) = input.path.get(lead) else {
        let tiers = Tiers {
            baseline,
            total: input.current.max(baseline).min(cap),
            ..Tiers::default()
        };
        let step = if tiers.total > input.current {
            Step::ScaleUp {
                from: input.current,
                to: tiers.total,
            }
        } else {
            Step::Hold
        };
        let reason = match step {
            Step::ScaleUp { from, to } => format!("baseline {from}→{to}: no forecast yet"),
            _ => format!("hold {}: no forecast yet", input.current),
        };
        return Plan {
            tiers,
            step,
            down_condition: false,
            reason,
        };
    };
    let predictive = capacity.instances_for(at_lead.upper.min(at_lead.slo_upper) * margin);
    let burst = need(at_lead).saturating_sub(predictive);
    // The reactive guard acts on a surprise: the last minute beat its own SLO bound. A surge
    // that is still rising will be higher by the time new instances serve, so the rise of the
    // last minute is carried on over the lead time (at most to twice the last minute: a single
    // spike must not buy a fleet for a surge that is not coming).
    let lead_minutes = capacity.lead_minutes() as f64;
    let guard_demand = match input.last_observed {
        Some(obs) if input.anomaly_excess > 0.0 => {
            let rise = input.previous_observed.map_or(0.0, |p| (obs - p).max(0.0));
            Some((obs + rise * lead_minutes).min(2.0 * obs))
        }
        _ => None,
    };
    let guard = guard_demand.map_or(0, |demand| {
        capacity.instances_for(demand / config.reactive_guard_utilization)
    });
    let wanted = baseline.max(predictive + burst).max(guard);
    let total_up = wanted.min(cap);
    let need_now = input.path.first().map_or(0, need);
    let warm_pool = total_up.saturating_sub(need_now.max(baseline));
    let tiers = Tiers {
        baseline,
        predictive,
        burst,
        guard,
        warm_pool,
        total: total_up,
    };
    let capacity_rpm = |n: u32| n as f64 * capacity.rps_per_instance * 60.0;
    let describe = |p: &ForecastPoint, value: f64, label: &str| {
        format!(
            "{label} forecast {:.1} req/s for {}",
            value / 60.0,
            clock(p.minute)
        )
    };
    let slo_label = format!("p{}", trim_percent(config.slo_target * 100.0));

    if total_up > input.current {
        let driver = if guard >= predictive + burst && guard >= baseline {
            let observed = input.last_observed.unwrap_or(0.0);
            let ahead = guard_demand.unwrap_or(observed);
            let rising = if ahead > observed {
                format!(
                    ", rising to {:.1} req/s within {lead_minutes} min,",
                    ahead / 60.0
                )
            } else {
                String::new()
            };
            format!(
                "observed {:.1} req/s{rising} > {:.0} % of capacity {:.1} req/s (reactive guard)",
                observed / 60.0,
                config.reactive_guard_utilization * 100.0,
                capacity_rpm(input.current) / 60.0
            )
        } else if baseline >= predictive + burst {
            format!("baseline is {baseline}")
        } else {
            format!(
                "{} > capacity {:.1} req/s",
                describe(
                    at_lead,
                    at_lead.slo_upper + input.anomaly_excess,
                    &slo_label
                ),
                capacity_rpm(input.current) / 60.0
            )
        };
        let capped = if wanted > cap {
            format!(" (capped at {cap}, wanted {wanted})")
        } else {
            String::new()
        };
        return Plan {
            tiers,
            step: Step::ScaleUp {
                from: input.current,
                to: total_up,
            },
            down_condition: false,
            reason: format!(
                "predictive {}→{}: {driver}{capped}",
                input.current, total_up
            ),
        };
    }

    // Scale-down keeps a band above the SLO bound, a share of the bound's own tail, so that a
    // bound wobbling by less than that does not take the fleet straight back up: the hysteresis
    // is sized by the forecast's uncertainty, not by a share of the fleet (which, on top of the
    // SLO bound, would count the headroom twice).
    let (peak_index, peak_bound, peak_tail) = input
        .path
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i,
                p.slo_upper + input.anomaly_excess,
                (p.slo_upper - p.point).max(0.0),
            )
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0, 0.0));
    let band = config.scale_down_band * peak_tail;
    let keep = capacity
        .instances_for((peak_bound + band) * margin)
        .max(guard)
        .max(baseline)
        .min(cap);
    let down_condition = keep < input.current;
    let peak = input.path.get(peak_index);
    let keep_text = || {
        let peak = peak.map_or(String::new(), |p| describe(p, peak_bound, &slo_label));
        format!(
            "{peak} (peak of the next {} min) + band {:.1} req/s needs {keep}",
            input.path.len(),
            band / 60.0,
        )
    };
    if down_condition && input.down_held_minutes + 1 >= config.stabilization_minutes as i64 {
        return Plan {
            tiers: Tiers {
                total: keep,
                warm_pool: keep.saturating_sub(need_now.max(baseline)),
                ..tiers
            },
            step: Step::ScaleDown {
                from: input.current,
                to: keep,
            },
            down_condition,
            reason: format!(
                "scale-down {}→{}: {} for {} min",
                input.current,
                keep,
                keep_text(),
                config.stabilization_minutes,
            ),
        };
    }
    let why = if down_condition {
        format!(
            "{} for {} of {} min before scaling down",
            keep_text(),
            input.down_held_minutes + 1,
            config.stabilization_minutes
        )
    } else {
        format!(
            "{} within capacity {:.1} req/s",
            describe(at_lead, at_lead.slo_upper, &slo_label),
            capacity_rpm(input.current) / 60.0
        )
    };
    Plan {
        tiers: Tiers {
            total: input.current,
            ..tiers
        },
        step: Step::Hold,
        down_condition,
        reason: format!("hold {}: {why}", input.current),
    }
}

/// `HH:MM` (UTC) of an absolute minute.
pub fn clock(minute: i64) -> String {
    let of_day = minute.rem_euclid(1440);
    format!("{:02}:{:02}", of_day / 60, of_day % 60)
}

pub(crate) fn trim_percent(p: f64) -> String {
    let text = format!("{p:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Model;

    fn capacity() -> CapacityModel {
        CapacityModel {
            rps_per_instance: 1.0,
            cold_start_seconds: 120.0,
            cost_per_instance_hour: 1.0,
        }
    }

    fn flat(rpm: f64, n: usize) -> Vec<ForecastPoint> {
        (0..n)
            .map(|i| ForecastPoint {
                minute: 540 + i as i64,
                point: rpm,
                lower: rpm * 0.9,
                upper: rpm * 1.1,
                slo_upper: rpm * 1.2,
                surprise_upper: rpm * 1.2,
                model: Model::Profile,
            })
            .collect()
    }

    fn input(current: u32, path: &[ForecastPoint]) -> PlanInput<'_> {
        PlanInput {
            current,
            path,
            last_observed: None,
            previous_observed: None,
            anomaly_excess: 0.0,
            cap: None,
            down_held_minutes: 0,
        }
    }

    #[test]
    fn scale_up_names_the_forecast_and_the_capacity() {
        let path = flat(600.0, 13);
        let plan = plan_fleet(&PlannerConfig::default(), &capacity(), &input(4, &path));
        assert_eq!(plan.step, Step::ScaleUp { from: 4, to: 12 });
        assert_eq!(plan.tiers.predictive, 11);
        assert_eq!(plan.tiers.burst, 1);
        assert!(
            plan.reason.starts_with(
                "predictive 4→12: p99 forecast 12.0 req/s for 09:02 > capacity 4.0 req/s"
            ),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn the_reactive_guard_answers_a_surprise() {
        let path = flat(60.0, 13);
        let mut i = input(2, &path);
        i.last_observed = Some(600.0);
        i.anomaly_excess = 600.0 - 72.0;
        let plan = plan_fleet(&PlannerConfig::default(), &capacity(), &i);
        assert_eq!(plan.step, Step::ScaleUp { from: 2, to: 12 });
        assert!(plan.reason.contains("reactive guard"), "{}", plan.reason);
    }

    #[test]
    fn scale_down_keeps_a_band_of_the_tail_above_the_bound() {
        // 10 req/s forecast, SLO bound 12 req/s: the tail is 2 req/s and the band half
        // of it, so scaling down lands on 13 req/s (13 instances), not on the bound (12).
        let path = flat(600.0, 13);
        let config = PlannerConfig::default();
        let mut i = input(20, &path);
        i.down_held_minutes = 100;
        let plan = plan_fleet(&config, &capacity(), &i);
        assert_eq!(
            plan.step,
            Step::ScaleDown { from: 20, to: 13 },
            "{}",
            plan.reason
        );
        assert!(
            plan.reason.contains("+ band 1.0 req/s needs 13 for 3 min"),
            "{}",
            plan.reason
        );
        // At 13 the bound (12 instances' worth) is within the band: the fleet holds.
        let mut i = input(13, &path);
        i.down_held_minutes = 100;
        let plan = plan_fleet(&config, &capacity(), &i);
        assert_eq!(plan.step, Step::Hold, "{}", plan.reason);
        assert!(!plan.down_condition);
        // Without a band it would go down to the bound.
        let no_band = PlannerConfig {
            scale_down_band: 0.0,
            ..PlannerConfig::default()
        };
        let plan = plan_fleet(&no_band, &capacity(), &i);
        assert_eq!(plan.step, Step::ScaleDown { from: 13, to: 12 });
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let path = flat(60.0, 13);
        let config = PlannerConfig::default();
        let mut i = input(10, &path);
        let plan = plan_fleet(&config, &capacity(), &i);
        assert_eq!(plan.step, Step::Hold);
        assert!(plan.down_condition);
        i.down_held_minutes = config.stabilization_minutes as i64 - 1;
        let plan = plan_fleet(&config, &capacity(), &i);
        assert_eq!(plan.step, Step::ScaleDown { from: 10, to: 2 });
        assert!(
            plan.reason.starts_with("scale-down 10→2"),
            "{}",
            plan.reason
        );
    }
}

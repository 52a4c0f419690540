//! `prescale replay --sweep`: the cost / violation frontier of the predictive policy over its
//! main setting (`[planner] slo_target`) against that of the reactive (HPA) policy over its
//! target utilization, and, for each HPA point, the cheapest predictive point that dominates it.
//!
//! Every point is an ordinary replay of the whole trace with one setting changed (the predictive
//! points keep every other `[forecast]` and `[planner]` setting they were given), scored against
//! the same oracle. Points run in parallel, one per core; the outcome does not depend on the
//! order they finish in.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use crate::error::Result;
use crate::trace::Trace;

use super::{oracle, predictive, reactive, score, PolicyRun, ReplaySettings};

/// The predictive points: `[planner] slo_target`, from cheap to safe.
pub const SLO_TARGETS: [f64; 9] = [0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999];
/// The reactive points: HPA's target utilization, from safe to cheap.
pub const TARGET_UTILIZATIONS: [f64; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// One replay of the sweep.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrontierPoint {
    /// `predictive` or `reactive`.
    pub policy: &'static str,
    /// The setting varied: `slo_target` (predictive) or `target_utilization` (reactive).
    pub setting: &'static str,
    pub value: f64,
    pub slo_violation_minutes: usize,
    pub unserved_fraction: f64,
    pub instance_minutes: f64,
    pub cost_vs_oracle: f64,
}

impl FrontierPoint {
    /// Pareto dominance: no more violation minutes and no more cost, and fewer of one.
    pub fn dominates(&self, other: &FrontierPoint) -> bool {
        self.slo_violation_minutes <= other.slo_violation_minutes
            && self.instance_minutes <= other.instance_minutes
            && (self.slo_violation_minutes < other.slo_violation_minutes
                || self.instance_minutes < other.instance_minutes)
    }
}

/// One HPA point and what beats it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HpaVerdict {
    pub target_utilization: f64,
    /// The `slo_target` of the cheapest predictive point that dominates this HPA point, if any.
    pub dominated_by_slo_target: Option<f64>,
}

/// The sweep's points and verdicts (`--sweep --json` prints this).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepOutcome {
    pub minutes: usize,
    pub oracle_instance_minutes: f64,
    /// Predictive points (by `slo_target`), then reactive points (by target utilization).
    pub points: Vec<FrontierPoint>,
    /// One per reactive point, in the same order.
    pub hpa: Vec<HpaVerdict>,
    /// Whether every HPA point is dominated by some predictive point.
    pub predictive_dominates_hpa: bool,
}

impl SweepOutcome {
    /// The predictive points.
    pub fn predictive(&self) -> impl Iterator<Item = &FrontierPoint> {
        self.points.iter().filter(|p| p.policy == "predictive")
    }

    /// The reactive points.
    pub fn reactive(&self) -> impl Iterator<Item = &FrontierPoint> {
        self.points.iter().filter(|p| p.policy == "reactive")
    }
}

/// Which replay a point is.
#[derive(Debug, Clone, Copy)]
enum PointSpec {
    Predictive { slo_target: f64 },
    Reactive { target_utilization: f64 },
}

/// Replay every point of the sweep on `trace`. `settings` gives the fleet and the predictive
/// policy's other settings; its `slo_target` and `target_utilization` are replaced point by
/// point. `progress` is called (from any thread) with the minutes simulated so far, out of
/// `trace.len() * (SLO_TARGETS.len() + TARGET_UTILIZATIONS.len())`.
pub fn sweep(
    trace: &Trace,
    settings: &ReplaySettings,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SweepOutcome> {
    settings.validate()?;
    let specs: Vec<PointSpec> = SLO_TARGETS
        .iter()
        .map(|&slo_target| PointSpec::Predictive { slo_target })
        .chain(
            TARGET_UTILIZATIONS
                .iter()
                .map(|&target_utilization| PointSpec::Reactive { target_utilization }),
        )
        .collect();
    for spec in &specs {
        point_settings(settings, *spec).validate()?;
    }
    let demand = trace.demand_rps();
    let oracle_cost = oracle::run(&demand, settings).instance_minutes;
    let done = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(specs.len());
    let mut points: Vec<Option<FrontierPoint>> = vec![None; specs.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&spec) = specs.get(index) else { break };
                        let run = run_point(trace, &demand, settings, spec, &|_| {
                            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                        });
                        mine.push((
                            index,
                            point(spec, &run, &demand, settings, oracle_cost, trace),
                        ));
                    }
                    mine
                })
            })
            .collect();
        for handle in handles {
            // A worker only panics if the simulation itself does; carry that panic on.
            let mine = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (index, point) in mine {
                points[index] = Some(point);
            }
        }
    });
    let points: Vec<FrontierPoint> = points.into_iter().flatten().collect();
    let hpa: Vec<HpaVerdict> = points
        .iter()
        .filter(|p| p.policy == "reactive")
        .map(|h| HpaVerdict {
            target_utilization: h.value,
            dominated_by_slo_target: points
                .iter()
                .filter(|p| p.policy == "predictive" && p.dominates(h))
                .min_by(|a, b| a.instance_minutes.total_cmp(&b.instance_minutes))
                .map(|p| p.value),
        })
        .collect();
    Ok(SweepOutcome {
        minutes: trace.len(),
        oracle_instance_minutes: oracle_cost,
        predictive_dominates_hpa: hpa.iter().all(|v| v.dominated_by_slo_target.is_some()),
        points,
        hpa,
    })
}

fn point_settings(settings: &ReplaySettings, spec: PointSpec) -> ReplaySettings {
    let mut point = settings.clone();
    match spec {
        PointSpec::Predictive { slo_target } => point.planner.slo_target = slo_target,
        PointSpec::Reactive { target_utilization } => point.target_utilization = target_utilization,
    }
    point
}

fn run_point(
    trace: &Trace,
    demand: &[f64],
    settings: &ReplaySettings,
    spec: PointSpec,
    progress: &dyn Fn(usize),
) -> PolicyRun {
    let settings = point_settings(settings, spec);
    match spec {
        PointSpec::Predictive { .. } => predictive::run(trace, &settings, progress),
        PointSpec::Reactive { .. } => reactive::run(demand, &settings, progress),
    }
}

fn point(
    spec: PointSpec,
    run: &PolicyRun,
    demand: &[f64],
    settings: &ReplaySettings,
    oracle_cost: f64,
    trace: &Trace,
) -> FrontierPoint {
    let scored = score(run, demand, settings.capacity_rps, oracle_cost, trace);
    let (policy, setting, value) = match spec {
        PointSpec::Predictive { slo_target } => ("predictive", "slo_target", slo_target),
        PointSpec::Reactive { target_utilization } => {
            ("reactive", "target_utilization", target_utilization)
        }
    };
    FrontierPoint {
        policy,
        setting,
        value,
        slo_violation_minutes: scored.slo_violation_minutes,
        unserved_fraction: scored.unserved_fraction,
        instance_minutes: scored.instance_minutes,
        cost_vs_oracle: scored.cost_vs_oracle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(violations: usize, cost: f64) -> FrontierPoint {
        FrontierPoint {
            policy: "predictive",
            setting: "slo_target",
            value: 0.99,
            slo_violation_minutes: violations,
            unserved_fraction: 0.0,
            instance_minutes: cost,
            cost_vs_oracle: 1.0,
        }
    }

    #[test]
    fn dominance_is_no_worse_on_both_and_better_on_one() {
        assert!(at(1, 10.0).dominates(&at(2, 10.0)));
        assert!(at(2, 9.0).dominates(&at(2, 10.0)));
        assert!(at(1, 9.0).dominates(&at(2, 10.0)));
        assert!(!at(2, 10.0).dominates(&at(2, 10.0)));
        assert!(!at(1, 11.0).dominates(&at(2, 10.0)));
        assert!(!at(3, 9.0).dominates(&at(2, 10.0)));
    }

    #[test]
    fn each_hpa_point_names_its_cheapest_dominating_predictive_point() {
        // A flat 3 req/s with one instance per req/s: every policy holds 3-4 instances.
        let trace = Trace::from_minutes(1_700_000_000, vec![180.0; 600]);
        let settings = ReplaySettings {
            capacity_rps: 1.0,
            cold_start_seconds: 60.0,
            ..ReplaySettings::default()
        };
        let calls = AtomicU64::new(0);
        let outcome = sweep(&trace, &settings, &|_| {
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .expect("sweep");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            (600 * (SLO_TARGETS.len() + TARGET_UTILIZATIONS.len())) as u64
        );
        assert_eq!(outcome.predictive().count(), SLO_TARGETS.len());
        assert_eq!(outcome.reactive().count(), TARGET_UTILIZATIONS.len());
        for (verdict, hpa) in outcome.hpa.iter().zip(outcome.reactive()) {
            assert_eq!(verdict.target_utilization, hpa.value);
            let beaten_by: Vec<&FrontierPoint> =
                outcome.predictive().filter(|p| p.dominates(hpa)).collect();
            match verdict.dominated_by_slo_target {
                None => assert!(beaten_by.is_empty(), "{verdict:?}"),
                Some(slo) => {
                    let chosen = outcome
                        .predictive()
                        .find(|p| p.value == slo)
                        .expect("point");
                    assert!(chosen.dominates(hpa));
                    assert!(beaten_by
                        .iter()
                        .all(|p| p.instance_minutes >= chosen.instance_minutes));
                }
            }
        }
        assert_eq!(
            outcome.predictive_dominates_hpa,
            outcome
                .hpa
                .iter()
                .all(|v| v.dominated_by_slo_target.is_some())
        );
    }
}

//! The `predictive` replay policy: the [`Brain`] (the same code the live forecaster runs) on a
//! simulated clock and fleet. At the start of each minute the brain has seen exactly the minutes
//! that ended; it never sees the future.

use crate::brain::{Action, Brain, Decision, FleetKey, FleetProfile, FleetSpec};
use crate::planner::CapacityModel;
use crate::trace::Trace;

use super::fleet::SimFleet;
use super::oracle::needed_instances;
use super::{PolicyRun, ReplaySettings};

/// Region, profile and fleet names the replay uses.
const REGION: &str = "replay";
const PROFILE: &str = "all";
const FLEET: &str = "trace";
/// The horizon of the forecast MASE is computed on, minutes.
pub const MASE_HORIZON: usize = 30;

/// The fleet key the replay plans.
pub fn fleet_key() -> FleetKey {
    FleetKey {
        region: REGION.into(),
        fleet: FLEET.into(),
    }
}

/// Simulate the predictive policy on `trace`.
pub fn run(trace: &Trace, settings: &ReplaySettings, mut progress: impl FnMut(usize)) -> PolicyRun {
    let demand = trace.demand_rps();
    let start_instances = settings.start.instances(
        needed_instances(
            demand.first().copied().unwrap_or(0.0),
            settings.capacity_rps,
        ),
        settings.planner.baseline_instances as usize,
    );
    let mut fleet = SimFleet::warm(settings.cold_start_seconds, start_instances);
    let mut brain = Brain::new(settings.forecast.clone(), settings.planner.clone());
    let key = fleet_key();
    brain.add_fleet(FleetSpec {
        key: key.clone(),
        profiles: vec![FleetProfile {
            name: PROFILE.into(),
            revenue_weight: 1.0,
        }],
        capacity: CapacityModel {
            rps_per_instance: settings.capacity_rps,
            cold_start_seconds: settings.cold_start_seconds,
            cost_per_instance_hour: 1.0,
        },
        max_instances: None,
        budget_per_hour: None,
        initial_instances: start_instances as u32,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: None,
    });
    for event in &settings.events {
        brain.set_event(event.clone());
    }
    let mut ready = Vec::with_capacity(trace.len());
    let mut decisions: Vec<Decision> = Vec::new();
    let mut forecast_30 = vec![None; trace.len()];
    for m in 0..trace.len() {
        let minute_start = trace.minute_start(m);
        ready.push(fleet.ready_at(m as f64 * 60.0));
        // Everything due in this minute: the tick at its start and any drain that completes.
        let mut now = minute_start;
        loop {
            for d in brain.poll(now) {
                apply(&mut fleet, &d, (now - trace.start) as f64);
                decisions.push(d);
            }
            match brain.next_wakeup() {
                Some(next) if next > now && next < minute_start + 60 => now = next,
                _ => break,
            }
        }
        let target = m + MASE_HORIZON - 1;
        if target < trace.len() {
            let minute = trace.minute_start(target).div_euclid(60);
            forecast_30[target] = brain
                .fleet_forecast(&key, minute_start, minute)
                .map(|p| p.point);
        }
        if trace.present[m] {
            brain.observe(
                minute_start + 60,
                REGION,
                PROFILE,
                minute_start,
                trace.requests[m],
            );
        }
        progress(m);
    }
    tracing::debug!(models = ?brain.fleet_model_errors(&key), "predictive replay finished");
    let instance_minutes = fleet.close(trace.len() as f64 * 60.0);
    PolicyRun {
        policy: "predictive",
        ready,
        instance_minutes,
        decisions,
        forecast_30: Some(forecast_30),
    }
}

/// Apply a decision to the simulated fleet. A drained instance stops at once, as the reactive
/// policy's do: the replay contract charges no policy for draining (an HPA's pods also take their
/// termination grace period), so the policies are scored alike.
fn apply(fleet: &mut SimFleet, decision: &Decision, t: f64) {
    match decision.action {
        Action::ScaleUp { to, .. } => fleet.scale_to(to as usize, t),
        Action::Drain { count, .. } => {
            fleet.scale_to(fleet.count().saturating_sub(count as usize), t)
        }
        Action::Remove { .. } => {}
    }
}

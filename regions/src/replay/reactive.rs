//! The `reactive` replay policy: the Kubernetes Horizontal Pod Autoscaler with its default
//! behavior on a requests-per-second metric (target `C × target_utilization` per replica,
//! 10 % tolerance, a sync every 15 s, scale-up by at most max(+100 %, +4) per sync with no
//! stabilization, scale-down to the highest recommendation of the last 300 s, min 1 replica).

use std::collections::VecDeque;

use super::fleet::SimFleet;
use super::{PolicyRun, ReplaySettings};

/// HPA's default tolerance around the target ratio.
const TOLERANCE: f64 = 0.1;
/// HPA's default sync period, seconds.
const SYNC_SECONDS: usize = 15;
/// HPA's default scale-down stabilization window, seconds.
const DOWN_WINDOW_SECONDS: f64 = 300.0;
/// HPA's default minimum replica count.
const MIN_REPLICAS: usize = 1;

/// Simulate the HPA on per-minute demand (requests per second).
pub fn run(
    demand: &[f64],
    settings: &ReplaySettings,
    mut progress: impl FnMut(usize),
) -> PolicyRun {
    let c = settings.capacity_rps;
    let target = c * settings.target_utilization;
    let first = demand.first().copied().unwrap_or(0.0);
    let mut fleet = SimFleet::warm(
        settings.cold_start_seconds,
        settings
            .start
            .instances((first / c).ceil() as usize, MIN_REPLICAS),
    );
    let mut recommendations: VecDeque<(f64, usize)> = VecDeque::new();
    let mut ready = Vec::with_capacity(demand.len());
    let syncs_per_minute = 60 / SYNC_SECONDS;
    for (m, &current) in demand.iter().enumerate() {
        ready.push(fleet.ready_at(m as f64 * 60.0));
        for k in 0..syncs_per_minute {
            let t = (m * 60 + k * SYNC_SECONDS) as f64;
            // The metric the HPA sees: the last full minute at the minute's first sync, then the
            // current minute's rate.
            let observed = if k == 0 && m > 0 {
                demand[m - 1]
            } else {
                current
            };
            let replicas = fleet.count();
            let ratio = if replicas == 0 {
                f64::INFINITY
            } else {
                observed / (target * replicas as f64)
            };
            let mut desired = if (ratio - 1.0).abs() <= TOLERANCE {
                replicas
            } else {
                (observed / target).ceil() as usize
            };
            recommendations.push_back((t, desired));
            while recommendations
                .front()
                .is_some_and(|&(at, _)| at < t - DOWN_WINDOW_SECONDS)
            {
                recommendations.pop_front();
            }
            if desired < replicas {
                let highest = recommendations
                    .iter()
                    .map(|&(_, r)| r)
                    .max()
                    .unwrap_or(desired);
                desired = replicas.min(highest);
            }
            if desired > replicas {
                desired = desired.min((2 * replicas).max(replicas + 4));
            }
            fleet.scale_to(MIN_REPLICAS.max(desired), t);
        }
        progress(m);
    }
    let instance_minutes = fleet.close(demand.len() as f64 * 60.0);
    PolicyRun::new("reactive", ready, instance_minutes)
}

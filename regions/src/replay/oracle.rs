//! The `oracle` replay policy: knows every minute's demand in advance and is the true cost
//! floor. Each capacity level is on exactly when needed, requested one cold start before, and
//! stays on through a lull shorter than its cold start (stopping and restarting would cost more).

use super::{PolicyRun, ReplaySettings};

/// Instances minute `m` needs: demand over capacity, rounded up.
pub fn needed_instances(demand_rps: f64, capacity_rps: f64) -> usize {
    (demand_rps / capacity_rps - 1e-9).ceil().max(0.0) as usize
}

/// The oracle's ready fleet (exactly what each minute needs) and its cost.
pub fn run(demand: &[f64], settings: &ReplaySettings) -> PolicyRun {
    let need: Vec<usize> = demand
        .iter()
        .map(|&d| needed_instances(d, settings.capacity_rps))
        .collect();
    let boot_minutes = settings.cold_start_seconds / 60.0;
    let top = need.iter().copied().max().unwrap_or(0);
    // For every level, the minutes at which it was last needed, scanned once per level.
    let mut cost = 0.0;
    let mut last_on: Vec<Option<usize>> = vec![None; top + 1];
    for (m, &n) in need.iter().enumerate() {
        for (level, last) in last_on.iter_mut().enumerate().skip(1).take(n) {
            debug_assert!(level <= n);
            cost += 1.0;
            cost += match *last {
                None => boot_minutes,
                Some(previous) => ((m - previous - 1) as f64).min(boot_minutes),
            };
            *last = Some(m);
        }
    }
    PolicyRun::new("oracle", need, cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(c: f64, s: f64) -> ReplaySettings {
        ReplaySettings {
            capacity_rps: c,
            cold_start_seconds: s,
            ..ReplaySettings::default()
        }
    }

    #[test]
    fn a_short_lull_is_bridged_and_a_long_one_restarts() {
        // Level 1 is needed in minutes 0, 2 and 10; the cold start is 2 minutes.
        let demand = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let run = run(&demand, &settings(1.0, 120.0));
        // 3 minutes on, the first boot (2), the 1-minute lull (1), a restart (2).
        assert!(
            (run.instance_minutes - 8.0).abs() < 1e-9,
            "{}",
            run.instance_minutes
        );
        assert_eq!(run.ready[1], 0);
    }
}

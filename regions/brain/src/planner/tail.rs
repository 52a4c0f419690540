//! Keeping the realized share of minutes over capacity near the SLO: a feedback loop on the SLO
//! tail the planner sizes for.
//!
//! The calibrated SLO bound covers `slo_target` of minutes *of the forecast*, but what a user
//! counts is minutes whose demand exceeded the capacity that was ready, and those are rarer
//! (instances come in whole numbers, the plan covers the peak of its window) or, around surges,
//! more frequent. So each minute, once it has ended, is scored against the instances that were
//! ready for all of it, and the tail (bound − point) the planner uses is scaled by a factor that
//! follows the misses: up by `GAIN × (1 − α)` in log terms on a minute over capacity, down by
//! `GAIN × α` on one within it (α = 1 − `slo_target`), which settles where the share of missed
//! minutes is α (a stochastic-approximation quantile tracker).
//!
//! Invariants: the scale stays within [`MIN_SCALE`, `MAX_SCALE`]; each minute is scored at most
//! once, in order; memory is bounded (a day of miss bits, the ticks of one lead time); no clock.

use std::collections::VecDeque;

use serde::Serialize;

/// Log-scale step per unit of miss error: a miss at a 1 % target raises the tail by about 5 %,
/// and 100 minutes within capacity lower it by 5 % (a day without misses: by about half).
const GAIN: f64 = 0.05;
/// Bounds of the scale.
pub const MIN_SCALE: f64 = 0.1;
pub const MAX_SCALE: f64 = 4.0;
/// Minutes of miss history kept for the realized share that is reported.
const REPORT_MINUTES: usize = 1440;

/// The fleet size after one planning tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tick {
    minute: i64,
    running: u32,
}

/// What the loop reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TailReport {
    /// The factor on the SLO tail the planner uses now.
    pub scale: f64,
    /// Minutes scored over the last day (at most 1,440).
    pub minutes: usize,
    /// Of those, the share whose demand exceeded the capacity that was ready.
    pub realized_miss_share: f64,
    /// The share the loop steers toward: 1 − `slo_target`.
    pub target_miss_share: f64,
}

/// The feedback loop of one fleet.
///
/// Call contract: [`TailControl::record_tick`] after every planning tick with the fleet size it
/// left; [`TailControl::observe`] once per ended minute, in order, with its demand.
#[derive(Debug, Clone)]
pub struct TailControl {
    target: f64,
    log_scale: f64,
    ticks: VecDeque<Tick>,
    misses: VecDeque<bool>,
    last_scored: Option<i64>,
}

impl TailControl {
    /// A loop for an SLO covering `slo_target` of minutes.
    pub fn new(slo_target: f64) -> Self {
        Self {
            target: (1.0 - slo_target).clamp(1e-4, 0.5),
            log_scale: 0.0,
            ticks: VecDeque::new(),
            misses: VecDeque::new(),
            last_scored: None,
        }
    }

    /// The factor on the SLO tail.
    pub fn scale(&self) -> f64 {
        self.log_scale.exp()
    }

    /// Record that the tick at the start of `minute` left `running` instances (booting ones
    /// included).
    pub fn record_tick(&mut self, minute: i64, running: u32) {
        if let Some(last) = self.ticks.back_mut() {
            if last.minute == minute {
                last.running = running;
                return;
            }
        }
        self.ticks.push_back(Tick { minute, running });
    }

    /// Instances ready for all of `minute`: those the fleet had at the tick `lead` minutes
    /// before, unless a later tick up to the minute's own had fewer. None before any tick.
    pub fn ready_for(&self, minute: i64, lead: i64) -> Option<u32> {
        let since = minute - lead.max(1);
        let at_since = self.ticks.iter().rev().find(|t| t.minute <= since)?;
        Some(
            self.ticks
                .iter()
                .filter(|t| t.minute > since && t.minute <= minute)
                .map(|t| t.running)
                .fold(at_since.running, u32::min),
        )
    }

    /// Score the ended `minute` with `requests` against the capacity ready for it
    /// (`requests_per_instance_minute` each, instances requested `lead` minutes ahead), and move
    /// the scale. Returns whether the minute was over capacity, or None if it could not be
    /// scored (already scored, or before any tick).
    pub fn observe(
        &mut self,
        minute: i64,
        requests: f64,
        requests_per_instance_minute: f64,
        lead: i64,
    ) -> Option<bool> {
        if self.last_scored.is_some_and(|m| minute <= m) || !requests.is_finite() {
            return None;
        }
        let ready = self.ready_for(minute, lead)?;
        self.last_scored = Some(minute);
        let miss = requests > ready as f64 * requests_per_instance_minute;
        let error = if miss {
            1.0 - self.target
        } else {
            -self.target
        };
        self.log_scale = (self.log_scale + GAIN * error).clamp(MIN_SCALE.ln(), MAX_SCALE.ln());
        if self.misses.len() == REPORT_MINUTES {
            self.misses.pop_front();
        }
        self.misses.push_back(miss);
        // Only the ticks a later minute can still need are kept.
        while self.ticks.len() > 1 && self.ticks[1].minute <= minute + 1 - lead.max(1) {
            self.ticks.pop_front();
        }
        Some(miss)
    }

    /// The loop's state for reports.
    pub fn report(&self) -> TailReport {
        let minutes = self.misses.len();
        let missed = self.misses.iter().filter(|m| **m).count();
        TailReport {
            scale: self.scale(),
            minutes,
            realized_miss_share: if minutes == 0 {
                0.0
            } else {
                missed as f64 / minutes as f64
            },
            target_miss_share: self.target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_capacity_waits_for_the_lead_and_drops_at_once() {
        let mut tail = TailControl::new(0.99);
        assert_eq!(tail.ready_for(10, 2), None);
        tail.record_tick(10, 3);
        tail.record_tick(11, 6);
        tail.record_tick(12, 6);
        tail.record_tick(13, 2);
        // Minute 12: the instances asked for at 10 (3); those asked for at 11 are still booting.
        assert_eq!(tail.ready_for(12, 2), Some(3));
        assert_eq!(tail.ready_for(13, 2), Some(2));
        assert_eq!(tail.ready_for(11, 1), Some(3));
        assert_eq!(tail.ready_for(12, 1), Some(6));
    }

    #[test]
    fn the_scale_settles_where_the_miss_share_is_the_target() {
        // Demand is 100 a minute; each instance serves 10. A fleet sized at point + scale ×
        // tail, with a tail whose excess beyond the point is uniform: misses happen when the
        // noise beats what the scale left.
        let mut tail = TailControl::new(0.95);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut misses = 0;
        let minutes = 200_000;
        for minute in 0..minutes {
            let instances = (100.0 + 40.0 * tail.scale()) / 10.0;
            tail.record_tick(minute, instances.ceil() as u32);
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let demand = 100.0 + 100.0 * u;
            if tail.observe(minute, demand, 10.0, 1) == Some(true) {
                misses += 1;
            }
        }
        let share = misses as f64 / minutes as f64;
        assert!((share - 0.05).abs() < 0.005, "{share}");
        let report = tail.report();
        assert_eq!(report.minutes, REPORT_MINUTES);
        assert!((report.target_miss_share - 0.05).abs() < 1e-12);
    }

    #[test]
    fn the_scale_is_bounded_and_minutes_are_scored_once() {
        let mut tail = TailControl::new(0.99);
        for minute in 0..10_000 {
            tail.record_tick(minute, 0);
            tail.observe(minute, 1.0, 10.0, 1);
        }
        assert!((tail.scale() - MAX_SCALE).abs() < 1e-9);
        assert_eq!(tail.observe(5, 1.0, 10.0, 1), None);
        for minute in 10_000..2_000_000 {
            tail.record_tick(minute, 100);
            tail.observe(minute, 1.0, 10.0, 1);
        }
        assert!((tail.scale() - MIN_SCALE).abs() < 1e-9);
        assert!(tail.ticks.len() <= 3, "{}", tail.ticks.len());
    }
}

//! One clock per node, with a speed factor: the time every part of a node (the proxy's exporter
//! and features, the forecaster's store minutes, brain ticks and provisioner timings) reads, so
//! that `--speedup X` runs the whole loop X times faster than real time and stays consistent.
//!
//! Invariants: node time never goes backwards (it advances with a monotonic clock, whatever the
//! wall clock does after the start). At speed 1 it is the wall clock as read at start plus
//! monotonic time. Faster, it runs from the machine's boot: node time = boot + `speed` × time
//! since boot, so every process of the machine running at the same speed agrees on it (a proxy
//! and a forecaster started apart, or a forecaster restarted on its store, see the same minutes),
//! at the price of node time lying ahead of the wall clock by `(speed - 1)` × the uptime.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fastest speed-up accepted (a day in about 14 minutes of real time at 100).
pub const MAX_SPEEDUP: f64 = 1000.0;

/// A node's clock: unix time scaled by a speed factor from the moment it was made.
#[derive(Clone, Copy, Debug)]
pub struct NodeClock {
    origin_unix_ms: u64,
    started: Instant,
    speed: f64,
}

impl NodeClock {
    /// Real time (speed 1).
    pub fn real() -> Self {
        NodeClock {
            origin_unix_ms: wall_ms(),
            started: Instant::now(),
            speed: 1.0,
        }
    }

    /// A clock running `speed` times faster than real time, from the machine's boot.
    pub fn with_speed(speed: f64) -> Result<Self, ClockError> {
        if !(speed.is_finite() && (1.0..=MAX_SPEEDUP).contains(&speed)) {
            return Err(ClockError::Speed(speed));
        }
        let started = Instant::now();
        let wall = wall_ms();
        if speed == 1.0 {
            return Ok(NodeClock {
                origin_unix_ms: wall,
                started,
                speed,
            });
        }
        let uptime_ms = read_uptime_ms()?;
        let ahead = (speed - 1.0) * uptime_ms as f64;
        Ok(NodeClock {
            origin_unix_ms: wall + ahead as u64,
            started,
            speed,
        })
    }

    /// How many times faster than real time this clock runs.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Node time, unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        let elapsed = self.started.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.origin_unix_ms + elapsed as u64
    }

    /// Node time, unix seconds.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The real time that `node` of node time takes.
    pub fn real_duration(&self, node: Duration) -> Duration {
        node.div_f64(self.speed)
    }

    /// The real time until node time reaches `target_ms` (zero when it has).
    pub fn real_until(&self, target_ms: u64) -> Duration {
        let now = self.now_ms();
        self.real_duration(Duration::from_millis(target_ms.saturating_sub(now)))
    }
}

/// Why a fast clock cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("speed-up {0} is out of range: expected a factor from 1 to {MAX_SPEEDUP}")]
    Speed(f64),
    #[error("cannot read the machine's uptime from /proc/uptime (the shared epoch of a fast clock): {0}")]
    Uptime(String),
}

/// Milliseconds since boot, from `/proc/uptime` (10 ms resolution).
fn read_uptime_ms() -> Result<u64, ClockError> {
    let text =
        std::fs::read_to_string("/proc/uptime").map_err(|e| ClockError::Uptime(e.to_string()))?;
    let seconds: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClockError::Uptime(format!("unexpected content {text:?}")))?;
    Ok((seconds * 1000.0) as u64)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_is_bounded() {
        assert!(NodeClock::with_speed(0.5).is_err());
        assert!(NodeClock::with_speed(f64::NAN).is_err());
        assert!(NodeClock::with_speed(MAX_SPEEDUP + 1.0).is_err());
        assert!(NodeClock::with_speed(60.0).is_ok());
    }

    #[test]
    fn fast_clocks_made_apart_agree() {
        let first = NodeClock::with_speed(60.0).expect("clock");
        std::thread::sleep(Duration::from_millis(300));
        let second = NodeClock::with_speed(60.0).expect("clock");
        let (a, b) = (first.now_ms(), second.now_ms());
        // Made 300 ms (18 node-seconds) apart, they read the same node time within the uptime's
        // 10 ms resolution (600 node-ms) and the scheduling between the two reads.
        assert!(a.abs_diff(b) < 2_000, "{a} vs {b}");
        assert!(NodeClock::real().now_ms() <= a);
    }

    #[test]
    fn a_fast_clock_runs_ahead_by_its_factor() {
        let clock = NodeClock::with_speed(100.0).expect("valid speed");
        let before = clock.now_ms();
        std::thread::sleep(Duration::from_millis(50));
        let gained = clock.now_ms() - before;
        // 50 ms of real time is 5 s of node time (and a little more for a slow scheduler).
        assert!((5_000..20_000).contains(&gained), "{gained}");
        assert_eq!(
            clock.real_duration(Duration::from_secs(10)),
            Duration::from_millis(100)
        );
        assert_eq!(clock.real_until(0), Duration::ZERO);
    }
}

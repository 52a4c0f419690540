//! The open-loop send schedule of `prescale load`: turns a demand description (a constant rate,
//! a step trace, the Azure per-function sample) into a time-ordered stream of sends, each with
//! its offset from the start of the run and the user it belongs to.
//!
//! Pure and clock-free: the runner decides what "now" is; tests iterate the schedule directly.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::traces::{AzureTrace, StepTrace};

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledSend {
    /// When to send it, relative to the start of the run.
    pub at: Duration,
    pub user: UserRef,
}

/// Who sends a request: a numbered synthetic user (`user-<n>`) or an entry of a name table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserRef {
    Numbered(u64),
    Named(u32),
}

/// A time-ordered, possibly endless, stream of sends.
pub struct Schedule {
    source: Source,
    rng: SmallRng,
}

enum Source {
    /// Evenly spaced sends at `rps`, users drawn uniformly from `users`.
    Uniform {
        rps: f64,
        users: u64,
        next_index: u64,
    },
    /// Trace steps, each spread evenly over its wall-clock length, users drawn from `users`.
    Steps {
        steps: std::vec::IntoIter<WallStep>,
        users: u64,
        carry: f64,
        current: StepCursor,
    },
    /// Per-function counts per minute; each minute is expanded and sorted when reached.
    Azure {
        trace: AzureTrace,
        minute_wall: Duration,
        phases: Vec<f64>,
        /// Fraction of each function's requests sent (see [`Schedule::azure`]).
        scale: f64,
        /// Each function's fractional requests not yet sent.
        carry: Vec<f64>,
        next_minute: usize,
        pending: std::vec::IntoIter<ScheduledSend>,
    },
}

/// A trace step mapped to wall-clock time.
#[derive(Debug, Clone, Copy)]
struct WallStep {
    start: Duration,
    length: Duration,
    requests: f64,
}

/// Progress through one step: `sent` of `total` sends placed so far.
#[derive(Debug, Clone, Copy, Default)]
struct StepCursor {
    start: Duration,
    length: Duration,
    total: u64,
    sent: u64,
}

impl Schedule {
    /// A constant rate over uniformly random users `0..users`.
    pub fn uniform(rps: f64, users: u64, seed: u64) -> Self {
        Schedule {
            source: Source::Uniform {
                rps,
                users: users.max(1),
                next_index: 0,
            },
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A step trace replayed `speedup` times faster, over random users `0..users`.
    pub fn trace(trace: &StepTrace, speedup: f64, users: u64, seed: u64) -> Self {
        let step_wall = seconds(trace.step_secs as f64 / speedup);
        let steps: Vec<WallStep> = trace
            .steps
            .iter()
            .map(|&(offset_secs, requests)| WallStep {
                start: seconds(offset_secs as f64 / speedup),
                length: step_wall,
                requests,
            })
            .collect();
        Schedule {
            source: Source::Steps {
                steps: steps.into_iter(),
                users: users.max(1),
                carry: 0.0,
                current: StepCursor::default(),
            },
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The Azure sample replayed `speedup` times faster; function `i` is `UserRef::Named(i)`.
    ///
    /// `scale` (0 < scale ≤ 1) is the fraction of each function's requests sent, so that a
    /// laptop can drive the whole sample: each minute sends `scale ×` its count, the fractions
    /// carried over per function, but a minute in which the function was active sends at least
    /// one request. Every function thus keeps its pattern in time (which minutes it is active
    /// in: timers stay periodic, rare functions stay rare, bursts stay where they were) while
    /// the heavy ones shrink by `scale`; the total sent is at least `scale ×` the trace's.
    pub fn azure(trace: AzureTrace, speedup: f64, scale: f64, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        // Each function fires at its own phase within a minute, so functions with the same count
        // do not all hit the target at the same instant.
        let phases = trace
            .functions
            .iter()
            .map(|_| rng.random::<f64>())
            .collect();
        let carry = vec![0.0; trace.functions.len()];
        Schedule {
            source: Source::Azure {
                trace,
                minute_wall: seconds(60.0 / speedup),
                phases,
                scale,
                carry,
                next_minute: 0,
                pending: Vec::new().into_iter(),
            },
            rng,
        }
    }

    /// The wall-clock length of the whole schedule, if it ends.
    pub fn natural_length(&self) -> Option<Duration> {
        match &self.source {
            Source::Uniform { .. } => None,
            Source::Steps { steps, current, .. } => Some(
                steps
                    .as_slice()
                    .last()
                    .map_or(current.start.saturating_add(current.length), |step| {
                        step.start.saturating_add(step.length)
                    }),
            ),
            Source::Azure {
                trace, minute_wall, ..
            } => Some(minute_wall.saturating_mul(u32::try_from(trace.minutes).unwrap_or(u32::MAX))),
        }
    }
}

impl Iterator for Schedule {
    type Item = ScheduledSend;

    fn next(&mut self) -> Option<ScheduledSend> {
        let rng = &mut self.rng;
        match &mut self.source {
            Source::Uniform {
                rps,
                users,
                next_index,
            } => {
                let at = seconds(*next_index as f64 / *rps);
                *next_index += 1;
                Some(ScheduledSend {
                    at,
                    user: UserRef::Numbered(rng.random_range(0..*users)),
                })
            }
            Source::Steps {
                steps,
                users,
                carry,
                current,
            } => {
                while current.sent >= current.total {
                    let step = steps.next()?;
                    // Fractional counts carry over so that e.g. 0.5 per step sends every other step.
                    let wanted = step.requests + *carry;
                    let total = wanted.floor();
                    *carry = wanted - total;
                    *current = StepCursor {
                        start: step.start,
                        length: step.length,
                        total: total as u64,
                        sent: 0,
                    };
                }
                let fraction = (current.sent as f64 + 0.5) / current.total as f64;
                current.sent += 1;
                let at = current
                    .start
                    .saturating_add(scaled(current.length, fraction));
                Some(ScheduledSend {
                    at,
                    user: UserRef::Numbered(rng.random_range(0..*users)),
                })
            }
            Source::Azure {
                trace,
                minute_wall,
                phases,
                scale,
                carry,
                next_minute,
                pending,
            } => loop {
                if let Some(send) = pending.next() {
                    return Some(send);
                }
                if *next_minute >= trace.minutes {
                    return None;
                }
                let minute = *next_minute;
                *next_minute += 1;
                let start = minute_wall.saturating_mul(u32::try_from(minute).unwrap_or(u32::MAX));
                let mut sends = Vec::new();
                for (index, function) in trace.functions.iter().enumerate() {
                    let count = function.per_minute.get(minute).copied().unwrap_or(0);
                    let count = match carry.get_mut(index) {
                        Some(carry) if count > 0 && *scale < 1.0 => {
                            *carry += f64::from(count) * *scale;
                            let whole = carry.floor();
                            if whole >= 1.0 {
                                *carry -= whole;
                                whole.min(f64::from(u32::MAX)) as u32
                            } else {
                                // An active minute keeps one request; the fraction stays owed.
                                1
                            }
                        }
                        _ => count,
                    };
                    let phase = phases.get(index).copied().unwrap_or(0.0);
                    let user = UserRef::Named(u32::try_from(index).unwrap_or(u32::MAX));
                    for j in 0..count {
                        let fraction = (f64::from(j) + phase) / f64::from(count);
                        sends.push(ScheduledSend {
                            at: start.saturating_add(scaled(*minute_wall, fraction)),
                            user,
                        });
                    }
                }
                sends.sort_by_key(|send| send.at);
                *pending = sends.into_iter();
            },
        }
    }
}

/// Seconds as a duration, saturating instead of panicking on absurd values (huge traces replayed
/// very slowly); NaN and negatives are zero.
fn seconds(value: f64) -> Duration {
    if value.is_nan() || value <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX)
}

fn scaled(duration: Duration, factor: f64) -> Duration {
    seconds(duration.as_secs_f64() * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_cmd::traces::AzureFunction;
    use http::HeaderValue;

    #[test]
    fn uniform_sends_are_evenly_spaced_over_the_users() {
        let sends: Vec<ScheduledSend> = Schedule::uniform(100.0, 10, 1).take(300).collect();
        assert_eq!(sends[0].at, Duration::ZERO);
        assert_eq!(sends[100].at, Duration::from_secs(1));
        assert!(sends
            .iter()
            .all(|s| matches!(s.user, UserRef::Numbered(n) if n < 10)));
        let distinct: std::collections::HashSet<_> = sends.iter().map(|s| s.user).collect();
        assert_eq!(distinct.len(), 10);
    }

    #[test]
    fn trace_steps_are_sped_up_and_spread_within_their_step() {
        let trace = StepTrace {
            step_secs: 60,
            steps: vec![(0, 4.0), (60, 0.0), (120, 2.0)],
        };
        let schedule = Schedule::trace(&trace, 60.0, 5, 1);
        assert_eq!(schedule.natural_length(), Some(Duration::from_secs(3)));
        let times: Vec<f64> = schedule.map(|s| s.at.as_secs_f64()).collect();
        let expected = [0.125, 0.375, 0.625, 0.875, 2.25, 2.75];
        assert_eq!(times.len(), expected.len());
        for (time, want) in times.iter().zip(expected) {
            assert!((time - want).abs() < 1e-6, "{times:?}");
        }
    }

    #[test]
    fn absurd_rates_and_speedups_saturate_instead_of_panicking() {
        let mut slow = Schedule::uniform(1e-300, 1, 1);
        assert_eq!(slow.nth(1).map(|send| send.at), Some(Duration::MAX));
        let trace = StepTrace {
            step_secs: u64::MAX / 2,
            steps: vec![(0, 1.0), (u64::MAX / 2, 1.0)],
        };
        let schedule = Schedule::trace(&trace, 1e-300, 1, 1);
        assert_eq!(schedule.natural_length(), Some(Duration::MAX));
        assert_eq!(schedule.count(), 2);
    }

    #[test]
    fn fractional_trace_counts_carry_over() {
        let trace = StepTrace {
            step_secs: 1,
            steps: (0..10).map(|s| (s, 0.5)).collect(),
        };
        assert_eq!(Schedule::trace(&trace, 1.0, 1, 1).count(), 5);
    }

    #[test]
    fn azure_functions_send_their_own_counts_in_time_order() {
        let function = |name: &str, per_minute: Vec<u32>| AzureFunction {
            identity: HeaderValue::from_str(name).unwrap(),
            per_minute,
        };
        let trace = AzureTrace {
            functions: vec![function("fn-a", vec![3, 0]), function("fn-b", vec![1, 2])],
            minutes: 2,
        };
        let schedule = Schedule::azure(trace, 60.0, 1.0, 7);
        assert_eq!(schedule.natural_length(), Some(Duration::from_secs(2)));
        let sends: Vec<ScheduledSend> = schedule.collect();
        assert_eq!(sends.len(), 6);
        assert!(sends.windows(2).all(|pair| pair[0].at <= pair[1].at));
        let in_minute = |minute: u64, user: u32| {
            sends
                .iter()
                .filter(|s| s.user == UserRef::Named(user) && s.at.as_secs() == minute)
                .count()
        };
        assert_eq!((in_minute(0, 0), in_minute(0, 1)), (3, 1));
        assert_eq!((in_minute(1, 0), in_minute(1, 1)), (0, 2));
    }

    #[test]
    fn a_scaled_azure_replay_keeps_every_active_minute_and_shrinks_the_heavy_ones() {
        let function = |name: &str, per_minute: Vec<u32>| AzureFunction {
            identity: HeaderValue::from_str(name).unwrap(),
            per_minute,
        };
        // A heavy function, a once-a-minute timer, one that is active every third minute.
        let minutes = 30;
        let trace = AzureTrace {
            functions: vec![
                function("heavy", vec![1000; minutes]),
                function("timer", vec![1; minutes]),
                function(
                    "sparse",
                    (0..minutes).map(|m| u32::from(m % 3 == 0) * 2).collect(),
                ),
            ],
            minutes,
        };
        let sends: Vec<ScheduledSend> = Schedule::azure(trace, 60.0, 0.01, 3).collect();
        let per_minute = |user: u32| -> Vec<usize> {
            (0..minutes as u64)
                .map(|m| {
                    sends
                        .iter()
                        .filter(|s| s.user == UserRef::Named(user) && s.at.as_secs() == m)
                        .count()
                })
                .collect()
        };
        assert!(
            per_minute(0).iter().all(|&n| n == 10),
            "{:?}",
            per_minute(0)
        );
        assert!(per_minute(1).iter().all(|&n| n == 1));
        let sparse = per_minute(2);
        for (minute, n) in sparse.iter().enumerate() {
            assert_eq!(
                *n,
                usize::from(minute % 3 == 0),
                "minute {minute}: {sparse:?}"
            );
        }
    }
}

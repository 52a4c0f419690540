//! A bounded per-minute series: request counts indexed by absolute minute (unix seconds / 60),
//! with absent minutes (no observation: an outage or a gap in reporting) kept distinct from
//! quiet ones so that outages are never learned as seasonality.

use std::collections::VecDeque;

/// Per-minute request counts over a bounded window of history.
#[derive(Debug, Clone)]
pub struct MinuteSeries {
    /// Absolute minute of `values[0]`.
    first: i64,
    /// Requests per minute; NaN marks an absent minute.
    values: VecDeque<f32>,
    capacity: usize,
    /// The first minute ever observed (survives eviction): how long this series has existed.
    born: Option<i64>,
}

impl MinuteSeries {
    /// An empty series keeping at most `capacity_minutes` minutes.
    pub fn new(capacity_minutes: usize) -> Self {
        Self {
            first: 0,
            values: VecDeque::new(),
            capacity: capacity_minutes.max(1),
            born: None,
        }
    }

    /// Add `requests` to `minute` (several reporters may add to the same minute). Minutes older
    /// than the window are ignored; a jump forward leaves the skipped minutes absent.
    pub fn add(&mut self, minute: i64, requests: f64) {
        if !requests.is_finite() || requests < 0.0 {
            return;
        }
        if self.values.is_empty() {
            self.first = minute;
            self.values.push_back(requests as f32);
            self.born.get_or_insert(minute);
            return;
        }
        if minute < self.first {
            return;
        }
        let last = self.first + self.values.len() as i64 - 1;
        if minute > last {
            let gap = (minute - last) as usize;
            if gap > self.capacity {
                self.values.clear();
                self.first = minute;
                self.values.push_back(requests as f32);
                return;
            }
            for _ in 1..gap {
                self.values.push_back(f32::NAN);
            }
            self.values.push_back(requests as f32);
            while self.values.len() > self.capacity {
                self.values.pop_front();
                self.first += 1;
            }
        } else {
            let slot = &mut self.values[(minute - self.first) as usize];
            *slot = if slot.is_nan() {
                requests as f32
            } else {
                *slot + requests as f32
            };
        }
    }

    /// Requests in `minute`, or None when absent or outside the window.
    pub fn get(&self, minute: i64) -> Option<f64> {
        if minute < self.first {
            return None;
        }
        let v = *self.values.get((minute - self.first) as usize)?;
        (!v.is_nan()).then_some(v as f64)
    }

    /// The last minute with a slot (observed or not), if any.
    pub fn last_minute(&self) -> Option<i64> {
        (!self.values.is_empty()).then(|| self.first + self.values.len() as i64 - 1)
    }

    /// The first minute still in the window.
    pub fn first_minute(&self) -> i64 {
        self.first
    }

    /// Minutes from the first observation ever to `minute` (inclusive): the series' age.
    pub fn age_minutes(&self, minute: i64) -> i64 {
        self.born.map_or(0, |b| (minute - b + 1).max(0))
    }

    /// Mean of the present minutes among the `window` minutes ending at `minute`.
    pub fn recent_mean(&self, minute: i64, window: i64) -> Option<f64> {
        let (mut sum, mut n) = (0.0, 0usize);
        for m in (minute - window + 1)..=minute {
            if let Some(v) = self.get(m) {
                sum += v;
                n += 1;
            }
        }
        (n > 0).then(|| sum / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_absent_and_old_minutes_evicted() {
        let mut s = MinuteSeries::new(5);
        s.add(100, 1.0);
        s.add(103, 4.0);
        assert_eq!(s.get(101), None);
        assert_eq!(s.get(103), Some(4.0));
        s.add(103, 1.0);
        assert_eq!(s.get(103), Some(5.0));
        s.add(106, 2.0);
        assert_eq!(s.get(100), None);
        assert_eq!(s.first_minute(), 102);
        assert_eq!(s.age_minutes(106), 7);
        assert_eq!(s.recent_mean(106, 4), Some(3.5));
    }
}

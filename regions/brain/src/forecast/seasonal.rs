//! The seasonal shapes a forecast is built on, both refreshed on a schedule (cheap between):
//!
//! * [`DailyProfile`]: the mean of the same minute ±2 over the last 7 days, absent minutes
//!   skipped;
//! * [`MstlPath`]: augurs MSTL (daily, and weekly once two weeks are known) with an AutoETS trend,
//!   fitted on coarse buckets (a per-minute daily season is too long to fit quickly) and
//!   interpolated back to minutes, both in-sample (the last day) and ahead.

use augurs::ets::trend::AutoETSTrendModel;
use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};

use super::series::MinuteSeries;

/// Minutes in a day.
pub const DAY: i64 = 1440;
/// Days of history the daily profile averages.
const PROFILE_DAYS: i64 = 7;
/// Minutes either side of the same minute that the profile averages.
const PROFILE_SPREAD: i64 = 2;

/// Mean request count per minute of the day.
#[derive(Debug, Clone)]
pub struct DailyProfile {
    values: Vec<f64>,
}

impl DailyProfile {
    /// Build from the last 7 days of `series` ending at `origin`; None when no day has data.
    pub fn build(series: &MinuteSeries, origin: i64) -> Option<DailyProfile> {
        let mut sum = vec![0.0; DAY as usize];
        let mut count = vec![0u32; DAY as usize];
        let begin = (origin - PROFILE_DAYS * DAY + 1).max(series.first_minute());
        for m in begin..=origin {
            let Some(v) = series.get(m) else { continue };
            for k in -PROFILE_SPREAD..=PROFILE_SPREAD {
                let slot = (m + k).rem_euclid(DAY) as usize;
                sum[slot] += v;
                count[slot] += 1;
            }
        }
        if count.iter().all(|&c| c == 0) {
            return None;
        }
        let overall = sum.iter().sum::<f64>() / count.iter().map(|&c| c as f64).sum::<f64>();
        let values = sum
            .iter()
            .zip(&count)
            .map(|(&s, &c)| if c > 0 { s / c as f64 } else { overall })
            .collect();
        Some(DailyProfile { values })
    }

    /// The profile's value for an absolute minute.
    pub fn at(&self, minute: i64) -> f64 {
        self.values[minute.rem_euclid(DAY) as usize]
    }
}

/// Minutes in an hour: the period of timer-driven traffic.
pub const HOUR: i64 = 60;
/// Hours of history the hourly profile averages.
const HOURLY_PROFILE_HOURS: i64 = 24;

/// Mean request count per minute of the hour over the last day: the shape of timer-driven,
/// event-style traffic (cron jobs at :00, :10, ...), learnable within hours.
#[derive(Debug, Clone)]
pub struct HourlyProfile {
    values: Vec<f64>,
}

impl HourlyProfile {
    /// Build from the last 24 hours of `series` ending at `origin`; None without two full hours.
    pub fn build(series: &MinuteSeries, origin: i64) -> Option<HourlyProfile> {
        let mut sum = vec![0.0; HOUR as usize];
        let mut count = vec![0u32; HOUR as usize];
        let begin = (origin - HOURLY_PROFILE_HOURS * HOUR + 1).max(series.first_minute());
        for m in begin..=origin {
            if let Some(v) = series.get(m) {
                sum[m.rem_euclid(HOUR) as usize] += v;
                count[m.rem_euclid(HOUR) as usize] += 1;
            }
        }
        if count.iter().any(|&c| c < 2) {
            return None;
        }
        Some(HourlyProfile {
            values: sum
                .iter()
                .zip(&count)
                .map(|(&s, &c)| s / c as f64)
                .collect(),
        })
    }

    /// The profile's value for an absolute minute.
    pub fn at(&self, minute: i64) -> f64 {
        self.values[minute.rem_euclid(HOUR) as usize]
    }
}

/// A fitted MSTL + AutoETS path in requests per minute, indexed by absolute minute.
#[derive(Debug, Clone)]
pub struct MstlPath {
    first: i64,
    values: Vec<f64>,
}

impl MstlPath {
    /// Fit on `series` up to `origin` (inclusive) in `bucket`-minute buckets, at most
    /// `max_days` of history, and forecast `ahead` minutes. Absent minutes are filled from
    /// `profile`. None when there is too little history or the model fails.
    pub fn fit(
        series: &MinuteSeries,
        profile: &DailyProfile,
        origin: i64,
        bucket: i64,
        max_days: i64,
        ahead: i64,
    ) -> Option<MstlPath> {
        let per_day = DAY / bucket;
        // Align the fit window to end on a bucket boundary at or before `origin`.
        let end = origin + 1 - (origin + 1).rem_euclid(bucket);
        let available = (end - series.first_minute()) / bucket;
        let buckets = available.min(max_days * per_day);
        if buckets < 2 * per_day {
            return None;
        }
        let begin = end - buckets * bucket;
        let mut y = Vec::with_capacity(buckets as usize);
        for b in 0..buckets {
            let start = begin + b * bucket;
            let total: f64 = (start..start + bucket)
                .map(|m| series.get(m).unwrap_or_else(|| profile.at(m)))
                .sum();
            y.push(total);
        }
        let mut periods = vec![per_day as usize];
        if buckets >= 14 * per_day {
            periods.push(7 * per_day as usize);
        }
        let trend = AutoETSTrendModel::from(AutoETS::non_seasonal());
        let fitted = MSTLModel::new(periods, trend).fit(&y).ok()?;
        let steps = (ahead + bucket - 1) / bucket + 1;
        let forecast = fitted.predict(steps as usize, None).ok()?;
        let in_sample = fitted.fit();
        let keep = per_day.min(buckets) as usize;
        let n = y.len();
        let mut centers: Vec<f64> = Vec::with_capacity(keep + forecast.point.len());
        for i in (n - keep)..n {
            let fitted_value = in_sample.trend()[i] as f64
                + in_sample
                    .seasonal()
                    .iter()
                    .map(|s| s[i] as f64)
                    .sum::<f64>();
            centers.push(fitted_value);
        }
        centers.extend(forecast.point.iter().copied());
        if centers.iter().any(|v| !v.is_finite()) {
            return None;
        }
        // Interpolate bucket totals, placed at bucket centers, back to per-minute values.
        let first_bucket_start = end - keep as i64 * bucket;
        let half = (bucket as f64 - 1.0) / 2.0;
        let total_minutes = centers.len() as i64 * bucket;
        let values = (0..total_minutes)
            .map(|j| {
                let x = (j as f64 - half) / bucket as f64;
                let lo = x.floor().clamp(0.0, centers.len() as f64 - 1.0) as usize;
                let hi = (lo + 1).min(centers.len() - 1);
                let w = (x - lo as f64).clamp(0.0, 1.0);
                ((centers[lo] * (1.0 - w) + centers[hi] * w) / bucket as f64).max(0.0)
            })
            .collect();
        Some(MstlPath {
            first: first_bucket_start,
            values,
        })
    }

    /// The path's value for an absolute minute, if covered.
    pub fn at(&self, minute: i64) -> Option<f64> {
        if minute < self.first {
            return None;
        }
        self.values.get((minute - self.first) as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diurnal(days: i64) -> MinuteSeries {
        let mut s = MinuteSeries::new((days * DAY) as usize);
        for m in 0..days * DAY {
            let phase = (m % DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
            s.add(m, 100.0 + 50.0 * phase.sin());
        }
        s
    }

    #[test]
    fn the_profile_follows_the_daily_shape() {
        let s = diurnal(3);
        let p = DailyProfile::build(&s, 3 * DAY - 1).expect("profile");
        assert!((p.at(360) - 150.0).abs() < 1.0, "{}", p.at(360));
        assert!((p.at(3 * DAY + 1080) - 50.0).abs() < 1.0);
    }

    #[test]
    fn the_mstl_path_continues_the_season() {
        let s = diurnal(4);
        let origin = 4 * DAY - 1;
        let p = DailyProfile::build(&s, origin).expect("profile");
        let path = MstlPath::fit(&s, &p, origin, 5, 14, 720).expect("fit");
        let ahead = path.at(origin + 360).expect("covered");
        assert!((ahead - 150.0).abs() < 5.0, "{ahead}");
        let in_sample = path.at(origin - 360).expect("covered");
        assert!((in_sample - 50.0).abs() < 5.0, "{in_sample}");
    }

    #[test]
    fn too_little_history_is_declined_not_a_crash() {
        let s = diurnal(1);
        let p = DailyProfile::build(&s, DAY - 1).expect("profile");
        assert!(MstlPath::fit(&s, &p, DAY - 1, 5, 14, 60).is_none());
        let empty = MinuteSeries::new(10);
        assert!(DailyProfile::build(&empty, 0).is_none());
    }
}

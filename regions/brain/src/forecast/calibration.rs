//! Interval calibration from recent forecast errors: a bounded window of (forecast, error) pairs
//! per horizon. Errors grow with the level, but how fast depends on the traffic (Poisson-like
//! counts grow with its square root, bursty or aggregated traffic in proportion), so the window
//! estimates the power `beta` (between 0.5 and 1) by regressing log |error| on log forecast, and
//! its empirical quantiles of error / forecast^beta become the interval bounds and the SLO tail.
//! The configured coverage thus holds on the series' own recent behavior at every level.

use std::collections::VecDeque;

/// Fewer errors than this and the window falls back to wide default bounds.
const MIN_ERRORS: usize = 30;

/// Quantiles of the scaled error (actual - point) / max(point, 1)^beta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorQuantiles {
    /// How errors scale with the level.
    pub beta: f64,
    /// Lower bound quantile (e.g. the 5th percentile for a 90 % interval).
    pub lower: f64,
    /// Upper bound quantile (e.g. the 95th percentile).
    pub upper: f64,
    /// The SLO quantile (e.g. the 99.9th percentile).
    pub slo: f64,
    /// The [`SURPRISE_QUANTILE`], whatever the SLO: what a surprise is judged against.
    pub surprise: f64,
}

/// The quantile of errors beyond which a minute is a surprise (fixed, so that a low
/// `slo_target` does not make every noisy minute one).
pub const SURPRISE_QUANTILE: f64 = 0.99;

impl ErrorQuantiles {
    /// Wide bounds for a series with too little error history to calibrate.
    pub const UNCALIBRATED: ErrorQuantiles = ErrorQuantiles {
        beta: 1.0,
        lower: -0.5,
        upper: 0.5,
        slo: 1.0,
        surprise: 1.0,
    };

    /// The unit errors of a forecast of `point` are measured in.
    pub fn scale(&self, point: f64) -> f64 {
        point.max(1.0).powf(self.beta)
    }
}

/// A window of recent scaled errors for one horizon.
#[derive(Debug, Clone)]
pub struct ErrorWindow {
    errors: VecDeque<(f32, f32)>,
    capacity: usize,
}

impl ErrorWindow {
    /// A window keeping the last `capacity` errors.
    pub fn new(capacity: usize) -> Self {
        Self {
            errors: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record the error of a forecast of `point` whose outcome was `actual`.
    pub fn push(&mut self, point: f64, actual: f64) {
        if !(point.is_finite() && actual.is_finite()) {
            return;
        }
        if self.errors.len() == self.capacity {
            self.errors.pop_front();
        }
        self.errors
            .push_back((point.max(0.0) as f32, (actual - point) as f32));
    }

    /// Number of errors held.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether no error is held.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Empirical quantiles for a central `coverage` interval and the `slo` tail.
    pub fn quantiles(&self, coverage: f64, slo: f64) -> ErrorQuantiles {
        if self.errors.len() < MIN_ERRORS {
            return ErrorQuantiles::UNCALIBRATED;
        }
        let beta = self.level_power();
        let mut sorted: Vec<f32> = self
            .errors
            .iter()
            .map(|&(p, e)| (e as f64 / (p as f64).max(1.0).powf(beta)) as f32)
            .collect();
        sorted.sort_by(f32::total_cmp);
        let tail = (1.0 - coverage) / 2.0;
        let upper = quantile(&sorted, 1.0 - tail);
        ErrorQuantiles {
            beta,
            lower: quantile(&sorted, tail),
            upper,
            slo: quantile(&sorted, slo),
            surprise: quantile(&sorted, SURPRISE_QUANTILE),
        }
    }

    /// Slope of log |error| against log forecast, clamped to [0.5, 1]; 0.75 when the forecasts
    /// hardly vary in level (the slope is then meaningless).
    fn level_power(&self) -> f64 {
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(p, e) in &self.errors {
            let x = (p as f64).max(1.0).ln();
            let y = ((e as f64).abs() + 1.0).ln();
            n += 1.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        let var = sxx / n - (sx / n).powi(2);
        if n < 2.0 || var < 0.05 {
            return 0.75;
        }
        ((sxy / n - sx / n * sy / n) / var).clamp(0.5, 1.0)
    }
}

/// The `q` quantile of sorted values (nearest rank, rounding up for upper tails).
fn quantile(sorted: &[f32], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_window() {
        // Forecasts all at one level: errors are spread evenly over [0, 1) units.
        let mut w = ErrorWindow::new(1000);
        for i in 0..1000 {
            w.push(100.0, 100.0 + i as f64 / 1000.0 * 100.0f64.powf(0.75));
        }
        let q = w.quantiles(0.9, 0.99);
        assert_eq!(q.beta, 0.75);
        assert!((q.lower - 0.05).abs() < 0.002, "{q:?}");
        assert!((q.upper - 0.95).abs() < 0.002, "{q:?}");
        assert!((q.slo - 0.99).abs() < 0.002, "{q:?}");
        w.push(f64::NAN, 1.0);
        assert_eq!(w.len(), 1000);
    }

    #[test]
    fn the_level_power_is_learned() {
        for beta in [0.5, 1.0] {
            let mut w = ErrorWindow::new(4000);
            for i in 0..4000 {
                let level = 10.0 * 1.002f64.powi(i);
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                w.push(level, level + sign * 3.0 * level.powf(beta));
            }
            let q = w.quantiles(0.9, 0.999);
            assert!((q.beta - beta).abs() < 0.08, "{beta}: {q:?}");
        }
    }

    #[test]
    fn too_few_errors_give_wide_defaults() {
        let w = ErrorWindow::new(10);
        assert_eq!(w.quantiles(0.9, 0.999), ErrorQuantiles::UNCALIBRATED);
    }
}

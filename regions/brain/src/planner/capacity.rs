//! Learning what one instance serves within the latency SLO from what the fleet has done: per
//! minute, the load per serving instance against the minute's SLO-quantile latency.
//!
//! Two kinds of evidence, combined conservatively:
//!
//! * **the knee**: the lowest load at which more than [`BREACH_SHARE`] of the minutes missed the
//!   SLO bounds the capacity from above;
//! * **the curve**: a queue's latency grows as `L(x) = L0 / (1 − x/μ)`, so `1/L` falls linearly
//!   with the load `x`; a least-squares line through the per-bin medians of `1/L` gives the load
//!   at which `L` reaches the SLO, *before* the fleet has ever been pushed that far. It is
//!   trusted only when latency measurably rises with load and the extrapolation stays within
//!   [`MAX_EXTRAPOLATION`] of the highest load seen.
//!
//! Loads already served within the SLO bound the estimate from below. Until
//! [`MIN_MINUTES`] minutes have been seen, or when neither kind of evidence says anything, the
//! configured capacity stands.
//!
//! Invariants: memory is bounded (fixed log-spaced load bins, each a bounded ring of recent
//! minutes); the estimate is finite and positive; no clock, file or socket.

use std::collections::VecDeque;

use serde::Serialize;

/// Minutes of evidence before the learned figure replaces the configured one.
pub const MIN_MINUTES: u64 = 30;
/// Share of a bin's minutes over the SLO above which that load counts as beyond capacity.
pub const BREACH_SHARE: f64 = 0.1;
/// The curve may extrapolate up to this multiple of the highest load seen.
pub const MAX_EXTRAPOLATION: f64 = 2.0;
/// Bins are this much apart (a 5 % step in load per instance).
const BIN_RATIO: f64 = 1.05;
/// Most recent minutes kept per bin (old behaviour fades out as the service changes).
const PER_BIN: usize = 240;
/// Smallest load per instance that is binned (requests/s); idle minutes say nothing.
const MIN_LOAD: f64 = 1e-3;
/// Bins from `MIN_LOAD` up; the top bin holds everything above (about 10^6 req/s).
const BINS: usize = 425;
/// Minutes a bin needs before it counts as evidence.
const MIN_PER_BIN: usize = 5;
/// Only the last this many observed minutes count (three days: a release that changes the
/// service's speed is learned within days, and a whole daily cycle always counts).
const HORIZON: u64 = 3 * 1440;

/// The latency objective capacity is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySlo {
    /// The latency the quantile must stay within, in seconds.
    pub seconds: f64,
    /// The quantile of requests, e.g. 0.99.
    pub quantile: f64,
}

/// Where a fleet's capacity figure comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CapacitySource {
    /// As configured; nothing learned (yet).
    Configured,
    /// Learned; `why` says from what.
    Learned { why: String },
}

/// A capacity figure and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityEstimate {
    pub rps_per_instance: f64,
    #[serde(flatten)]
    pub source: CapacitySource,
}

#[derive(Debug, Clone, Copy)]
struct Minute {
    /// Which observed minute this was (0, 1, 2, …).
    stamp: u64,
    load: f64,
    latency: f64,
}

/// Learns requests/s per instance within a latency SLO from minutes of load and latency.
#[derive(Debug, Clone)]
pub struct CapacityLearner {
    slo: LatencySlo,
    configured: f64,
    bins: Vec<VecDeque<Minute>>,
    minutes: u64,
}

impl CapacityLearner {
    /// A learner for `slo` that answers `configured` until it knows better.
    pub fn new(slo: LatencySlo, configured: f64) -> Self {
        Self {
            slo,
            configured,
            bins: vec![VecDeque::new(); BINS],
            minutes: 0,
        }
    }

    /// The objective learned against.
    pub fn slo(&self) -> LatencySlo {
        self.slo
    }

    /// One minute of a fleet: instances serving through it, requests served, and the SLO
    /// quantile of their latency in seconds. Minutes without serving instances or requests,
    /// and non-finite values, are ignored.
    pub fn observe(&mut self, serving_instances: u32, requests: f64, latency_seconds: f64) {
        if serving_instances == 0
            || !(requests.is_finite() && requests > 0.0)
            || !(latency_seconds.is_finite() && latency_seconds > 0.0)
        {
            return;
        }
        let load = requests / 60.0 / serving_instances as f64;
        if load < MIN_LOAD {
            return;
        }
        let bin = bin_of(load);
        let ring = &mut self.bins[bin];
        if ring.len() == PER_BIN {
            ring.pop_front();
        }
        ring.push_back(Minute {
            stamp: self.minutes,
            load,
            latency: latency_seconds,
        });
        self.minutes += 1;
    }

    /// The current estimate.
    pub fn estimate(&self) -> CapacityEstimate {
        let configured = CapacityEstimate {
            rps_per_instance: self.configured,
            source: CapacitySource::Configured,
        };
        if self.minutes < MIN_MINUTES {
            return configured;
        }
        let slo = self.slo.seconds;
        let since = self.minutes.saturating_sub(HORIZON);
        let evidence: Vec<BinEvidence> = self
            .bins
            .iter()
            .filter_map(|ring| {
                let recent: Vec<Minute> =
                    ring.iter().filter(|m| m.stamp >= since).copied().collect();
                (recent.len() >= MIN_PER_BIN).then(|| BinEvidence::of(&recent, slo))
            })
            .collect();
        let minutes = evidence.iter().map(|b| b.minutes).sum::<usize>();
        if evidence.is_empty() {
            return configured;
        }
        let knee = evidence
            .iter()
            .find(|b| b.breach_share > BREACH_SHARE)
            .map(|b| b.low_load);
        // The highest load served within the SLO, below any knee.
        let served = evidence
            .iter()
            .filter(|b| b.breach_share <= BREACH_SHARE && knee.is_none_or(|k| b.median_load < k))
            .map(|b| b.median_load)
            .fold(0.0, f64::max);
        let highest = evidence.iter().map(|b| b.median_load).fold(0.0, f64::max);
        let curve = fit_curve(&evidence, slo)
            .filter(|x| *x <= highest * MAX_EXTRAPOLATION)
            .filter(|x| *x > 0.0);
        let q = trim(self.slo.quantile * 100.0);
        let ms = trim(slo * 1000.0);
        let (value, why) = match (curve, knee) {
            (Some(c), Some(k)) => {
                let v = c.min(k).max(served);
                (
                    v,
                    format!(
                        "p{q} latency against load over {} minutes: the curve reaches {ms} ms at {:.1} req/s, minutes over it start at {:.1} req/s",
                        minutes, c, k
                    ),
                )
            }
            (Some(c), None) => (
                c.max(served),
                format!(
                    "p{q} latency against load over {} minutes: the curve reaches {ms} ms at {:.1} req/s (highest load seen {:.1} req/s)",
                    minutes, c, highest
                ),
            ),
            (None, Some(k)) => (
                k.max(served),
                format!(
                    "p{q} latency against load over {} minutes: minutes over {ms} ms start at {:.1} req/s",
                    minutes, k
                ),
            ),
            (None, None) if served > self.configured => (
                served,
                format!(
                    "p{q} latency against load over {} minutes: {:.1} req/s served within {ms} ms, more than configured",
                    minutes, served
                ),
            ),
            (None, None) => return configured,
        };
        if !(value.is_finite() && value > 0.0) {
            return configured;
        }
        CapacityEstimate {
            rps_per_instance: value,
            source: CapacitySource::Learned { why },
        }
    }
}

/// What one load bin says.
#[derive(Debug, Clone, Copy)]
struct BinEvidence {
    low_load: f64,
    median_load: f64,
    median_inverse_latency: f64,
    breach_share: f64,
    minutes: usize,
}

impl BinEvidence {
    fn of(ring: &[Minute], slo: f64) -> Self {
        let mut loads: Vec<f64> = ring.iter().map(|m| m.load).collect();
        let mut inverse: Vec<f64> = ring.iter().map(|m| 1.0 / m.latency).collect();
        let breaches = ring.iter().filter(|m| m.latency > slo).count();
        let low_load = loads.iter().copied().fold(f64::INFINITY, f64::min);
        Self {
            low_load,
            median_load: median(&mut loads),
            median_inverse_latency: median(&mut inverse),
            breach_share: breaches as f64 / ring.len() as f64,
            minutes: ring.len(),
        }
    }
}

/// The load at which the fitted `1/L = a − b·x` line reaches `1/slo`, when latency rises with
/// load clearly enough to trust it.
fn fit_curve(evidence: &[BinEvidence], slo: f64) -> Option<f64> {
    if evidence.len() < 3 {
        return None;
    }
    let lowest = evidence.first()?.median_load;
    let highest = evidence.last()?.median_load;
    // The loads must span a real range, or the slope is noise.
    if highest < 1.5 * lowest {
        return None;
    }
    let weight = |b: &BinEvidence| (b.minutes as f64).sqrt();
    let total: f64 = evidence.iter().map(weight).sum();
    let mean_x = evidence
        .iter()
        .map(|b| weight(b) * b.median_load)
        .sum::<f64>()
        / total;
    let mean_y = evidence
        .iter()
        .map(|b| weight(b) * b.median_inverse_latency)
        .sum::<f64>()
        / total;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for b in evidence {
        let (dx, dy) = (b.median_load - mean_x, b.median_inverse_latency - mean_y);
        sxy += weight(b) * dx * dy;
        sxx += weight(b) * dx * dx;
        syy += weight(b) * dy * dy;
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = sxy * sxy / (sxx * syy);
    let intercept = mean_y - slope * mean_x;
    // Latency must rise with load (1/L falls), the line must explain most of the variation,
    // and over the loads seen 1/L must fall by a tenth at least: otherwise it is flat noise.
    let drop = -slope * (highest - lowest) / intercept;
    if slope >= 0.0 || r2 < 0.6 || drop < 0.1 || intercept <= 1.0 / slo {
        return None;
    }
    let at_slo = (intercept - 1.0 / slo) / -slope;
    at_slo.is_finite().then_some(at_slo)
}

fn bin_of(load: f64) -> usize {
    let index = ((load / MIN_LOAD).ln() / BIN_RATIO.ln()).floor();
    if index.is_finite() {
        (index.max(0.0) as usize).min(BINS - 1)
    } else {
        0
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: LatencySlo = LatencySlo {
        seconds: 0.25,
        quantile: 0.99,
    };

    /// A queue with `mu` req/s per instance and 20 ms at no load, with ±`noise` jitter.
    fn latency(load: f64, mu: f64, noise: f64, u: f64) -> f64 {
        let rho = (load / mu).min(0.999);
        0.02 / (1.0 - rho) * (1.0 + noise * (2.0 * u - 1.0))
    }

    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A day of diurnal traffic on `instances` instances peaking at `peak_share` of `mu`.
    fn diurnal(learner: &mut CapacityLearner, mu: f64, peak_share: f64, instances: u32) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for minute in 0..1440 {
            let phase = (minute as f64 / 1440.0 * std::f64::consts::TAU).sin();
            let load = mu * peak_share * (0.6 + 0.4 * phase);
            let requests = load * 60.0 * instances as f64;
            let l = latency(load, mu, 0.1, uniform(&mut state));
            learner.observe(instances, requests, l);
        }
    }

    #[test]
    fn the_configured_figure_stands_until_there_is_evidence() {
        let mut learner = CapacityLearner::new(SLO, 40.0);
        for _ in 0..(MIN_MINUTES - 1) {
            learner.observe(4, 4.0 * 60.0 * 20.0, 0.03);
        }
        assert_eq!(learner.estimate().source, CapacitySource::Configured);
        assert_eq!(learner.estimate().rps_per_instance, 40.0);
        // Idle minutes, no instances and nonsense values are not evidence.
        for _ in 0..100 {
            learner.observe(0, 100.0, 0.03);
            learner.observe(4, 0.0, 0.03);
            learner.observe(4, f64::NAN, 0.03);
            learner.observe(4, 100.0, f64::INFINITY);
        }
        assert_eq!(learner.estimate().source, CapacitySource::Configured);
    }

    #[test]
    fn the_curve_finds_capacity_before_the_slo_is_ever_breached() {
        // True capacity at 250 ms: 60 × (1 − 20/250) = 55.2 req/s; traffic peaks at 70 % of μ.
        let mut learner = CapacityLearner::new(SLO, 100.0);
        diurnal(&mut learner, 60.0, 0.7, 8);
        let estimate = learner.estimate();
        assert!(
            (estimate.rps_per_instance - 55.2).abs() < 0.1 * 55.2,
            "{estimate:?}"
        );
        let CapacitySource::Learned { why } = estimate.source else {
            panic!("not learned: {estimate:?}");
        };
        assert!(
            why.starts_with("p99 latency against load over 1440 minutes: the curve reaches 250 ms"),
            "{why}"
        );
    }

    #[test]
    fn minutes_over_the_slo_bound_capacity_from_above() {
        // The curve is flat (a fixed-size pool that times out) until 30 req/s, then breaches.
        let mut learner = CapacityLearner::new(SLO, 100.0);
        let mut state = 7u64;
        for minute in 0..2000 {
            let load = 5.0 + 35.0 * (minute % 200) as f64 / 200.0;
            let l = if load > 30.0 {
                0.4
            } else {
                0.05 + 0.01 * uniform(&mut state)
            };
            learner.observe(2, load * 120.0, l);
        }
        let estimate = learner.estimate();
        assert!(
            (estimate.rps_per_instance - 30.0).abs() < 1.6,
            "{estimate:?}"
        );
        assert!(matches!(estimate.source, CapacitySource::Learned { .. }));
    }

    #[test]
    fn flat_latency_keeps_the_configured_figure_or_what_was_served() {
        let mut learner = CapacityLearner::new(SLO, 100.0);
        for minute in 0..1000 {
            let load = 10.0 + (minute % 50) as f64;
            learner.observe(3, load * 180.0, 0.05);
        }
        assert_eq!(learner.estimate().rps_per_instance, 100.0);
        assert_eq!(learner.estimate().source, CapacitySource::Configured);
        // Served more than configured, within the SLO: that much at least.
        let mut learner = CapacityLearner::new(SLO, 20.0);
        for minute in 0..1000 {
            let load = 10.0 + (minute % 50) as f64;
            learner.observe(3, load * 180.0, 0.05);
        }
        let estimate = learner.estimate();
        assert!(
            estimate.rps_per_instance > 55.0 && estimate.rps_per_instance < 60.0,
            "{estimate:?}"
        );
    }

    #[test]
    fn a_slower_release_lowers_the_estimate() {
        let mut learner = CapacityLearner::new(SLO, 100.0);
        diurnal(&mut learner, 60.0, 0.7, 8);
        let before = learner.estimate().rps_per_instance;
        // The service gets twice as slow per request: after the horizon only the new
        // behaviour counts.
        for _ in 0..4 {
            diurnal(&mut learner, 30.0, 0.7, 16);
        }
        let after = learner.estimate().rps_per_instance;
        assert!(after < 0.7 * before, "before {before}, after {after}");
    }
}

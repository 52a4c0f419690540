//! Forecasting one series (a region × profile, or a fleet's total): candidate models, the
//! rolling-origin backtest that picks one per series, and calibrated intervals.
//!
//! Candidates, all "a shape scaled to the current level" except the naive ones:
//!
//! * `naive`: the mean of the last `level_window_minutes`;
//! * `seasonal_naive`: the same minute yesterday;
//! * `hourly`: the mean of the same minute of the hour over the last day (timer-driven traffic),
//!   scaled by the ratio of the last hour to it;
//! * `profile`: the mean of the same minute ±2 over the last 7 days, scaled by the ratio of the
//!   recent level to the profile's over the same minutes;
//! * `mstl`: augurs MSTL + AutoETS fitted on coarse buckets every `refit_interval_minutes`,
//!   scaled the same way between refits (the cheap incremental update);
//! * `blend`: the mean of `profile` and `mstl`;
//! * `combo`: every other scored candidate weighted by the inverse square of its recent error.
//!
//! Until a series has two days of history only the naive and hourly candidates are eligible. Every forecast
//! made is scored when its minute arrives (a rolling-origin backtest at every origin); the
//! candidate with the lowest recent error at the 30-minute horizon is used. Absent minutes
//! (outages) are neither learned nor scored.

pub mod calibration;
pub mod seasonal;
pub mod series;

use std::collections::VecDeque;

use prescale_config::brain::ForecastConfig;
use serde::Serialize;

use calibration::{ErrorQuantiles, ErrorWindow};
use seasonal::{DailyProfile, HourlyProfile, MstlPath, DAY, HOUR};
use series::MinuteSeries;

/// Number of candidate models.
const MODELS: usize = 7;
/// Horizons (minutes ahead of the last observed minute) whose errors are tracked for calibration.
pub const TRACKED_HORIZONS: [i64; 5] = [1, 5, 30, 120, 1440];
/// Index in [`TRACKED_HORIZONS`] of the horizon that picks the model.
const CHOICE_HORIZON: usize = 2;
/// Minutes between refreshes of the daily profile.
const PROFILE_REFRESH_MINUTES: i64 = 60;
/// Minutes between recomputations of the error quantiles.
const QUANTILE_REFRESH_MINUTES: i64 = 15;
/// Scored forecasts a candidate needs before it can be chosen.
const MIN_SCORED: u32 = 60;
/// Weight of each new error in a candidate's running error (about a day of memory).
const ERROR_SMOOTHING: f64 = 1.0 / 1440.0;
/// Days of history the seasonal model is fitted on.
const MSTL_MAX_DAYS: i64 = 14;
/// Surprise minutes remembered (a forecast is scored at most a day after it is made).
const MAX_SURPRISES: usize = 1440;

/// How the error quantiles of the tracked horizons combine for one horizon: between two tracked
/// horizons, the bounds at both, weighted by the log of the horizon (rounding up would size a
/// 2-minute decision by the 5-minute errors); beyond the last, the last.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HorizonMix {
    below: usize,
    above: usize,
    /// The share of `above` (1 at a tracked horizon).
    weight: f64,
}

impl HorizonMix {
    fn of(horizon: i64) -> HorizonMix {
        let horizon = horizon.max(1);
        let above = TRACKED_HORIZONS
            .iter()
            .position(|&h| h >= horizon)
            .unwrap_or(TRACKED_HORIZONS.len() - 1);
        match above.checked_sub(1) {
            Some(below) if TRACKED_HORIZONS[above] > horizon => {
                let (h0, h1) = (
                    TRACKED_HORIZONS[below] as f64,
                    TRACKED_HORIZONS[above] as f64,
                );
                HorizonMix {
                    below,
                    above,
                    weight: ((horizon as f64).ln() - h0.ln()) / (h1.ln() - h0.ln()),
                }
            }
            _ => HorizonMix {
                below: above,
                above,
                weight: 1.0,
            },
        }
    }
}

/// A forecasting model a series may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    Naive,
    SeasonalNaive,
    Hourly,
    Profile,
    Mstl,
    Blend,
    Combo,
}

impl Model {
    /// All candidates, in the order they are stored.
    pub const ALL: [Model; MODELS] = [
        Model::Naive,
        Model::SeasonalNaive,
        Model::Hourly,
        Model::Profile,
        Model::Mstl,
        Model::Blend,
        Model::Combo,
    ];

    /// The model's name in reasons and reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::Naive => "naive",
            Model::SeasonalNaive => "seasonal-naive",
            Model::Hourly => "hourly",
            Model::Profile => "profile",
            Model::Mstl => "mstl-ets",
            Model::Blend => "blend",
            Model::Combo => "combo",
        }
    }
}

/// A forecast of one minute's requests, with its calibrated interval and SLO tail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ForecastPoint {
    /// The absolute minute forecast (unix seconds / 60).
    pub minute: i64,
    /// Point forecast, requests in the minute.
    pub point: f64,
    /// Lower bound of the configured interval.
    pub lower: f64,
    /// Upper bound of the configured interval.
    pub upper: f64,
    /// The bound recent errors exceeded in only `1 - slo_target` of minutes.
    pub slo_upper: f64,
    /// The bound recent errors exceeded in only 1 % of minutes, whatever the SLO: demand beyond
    /// it is a surprise (internal: the planner's guard judges by it).
    #[serde(skip)]
    pub surprise_upper: f64,
    /// The model that made it.
    pub model: Model,
}

/// How a shape is scaled to the current level.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Ratio(f64),
    Offset(f64),
}

impl Level {
    fn apply(self, shape: f64) -> f64 {
        match self {
            Level::Ratio(r) => shape * r,
            Level::Offset(d) => shape + d,
        }
        .max(0.0)
    }
}

/// Levels at one origin, computed once per origin.
#[derive(Debug, Clone, Copy)]
struct Levels {
    origin: i64,
    naive: f64,
    hourly: Option<Level>,
    profile: Option<Level>,
    mstl: Option<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    target: i64,
    horizon: u8,
    point: f32,
    candidates: Option<[f32; MODELS]>,
}

/// Forecasting state of one series.
#[derive(Debug, Clone)]
pub struct SeriesForecaster {
    config: ForecastConfig,
    slo_target: f64,
    series: MinuteSeries,
    profile: Option<DailyProfile>,
    hourly: Option<HourlyProfile>,
    profile_built_at: Option<i64>,
    mstl: Option<MstlPath>,
    mstl_fitted_at: Option<i64>,
    levels: Option<Levels>,
    pending: VecDeque<Pending>,
    errors: Vec<ErrorWindow>,
    quantiles: Vec<ErrorQuantiles>,
    quantiles_at: Option<i64>,
    model_error: [f64; MODELS],
    model_scored: [u32; MODELS],
    last_recorded_origin: Option<i64>,
    refits: u64,
    /// Minutes marked as surprises (newest last): their errors are not calibrated on.
    surprises: VecDeque<i64>,
}

impl SeriesForecaster {
    /// A forecaster with no history.
    pub fn new(config: &ForecastConfig, slo_target: f64) -> Self {
        let window = config.calibration_window_minutes as usize;
        Self {
            config: config.clone(),
            slo_target,
            series: MinuteSeries::new(config.history_days as usize * DAY as usize),
            profile: None,
            hourly: None,
            profile_built_at: None,
            mstl: None,
            mstl_fitted_at: None,
            levels: None,
            pending: VecDeque::new(),
            errors: TRACKED_HORIZONS
                .iter()
                .map(|_| ErrorWindow::new(window))
                .collect(),
            quantiles: vec![ErrorQuantiles::UNCALIBRATED; TRACKED_HORIZONS.len()],
            quantiles_at: None,
            model_error: [0.0; MODELS],
            model_scored: [0; MODELS],
            last_recorded_origin: None,
            refits: 0,
            surprises: VecDeque::new(),
        }
    }

    /// Add `requests` observed in `minute`.
    pub fn observe(&mut self, minute: i64, requests: f64) {
        self.series.add(minute, requests);
    }

    /// Mark `minute` as a surprise (demand far beyond its bound, which the planner's reactive
    /// guard answers): forecasts of it are still scored for the model choice, but their errors
    /// do not enter the calibration windows, so one surge does not widen the intervals for the
    /// whole window. Call before [`update`] scores the minute.
    ///
    /// [`update`]: SeriesForecaster::update
    pub fn mark_surprise(&mut self, minute: i64) {
        if self.surprises.back().is_some_and(|&m| m >= minute) {
            return;
        }
        if self.surprises.len() == MAX_SURPRISES {
            self.surprises.pop_front();
        }
        self.surprises.push_back(minute);
    }

    /// The observed series.
    pub fn series(&self) -> &MinuteSeries {
        &self.series
    }

    /// How many times the seasonal model has been fitted.
    pub fn refits(&self) -> u64 {
        self.refits
    }

    /// The last complete minute before `now_minute` with a slot in the series.
    pub fn origin(&self, now_minute: i64) -> Option<i64> {
        self.series
            .last_minute()
            .map(|last| last.min(now_minute - 1))
    }

    /// Bring the forecaster up to date at `now_minute` (the minute now running): score due
    /// forecasts, refresh the profile, refit on schedule, record this origin's forecasts.
    pub fn update(&mut self, now_minute: i64) {
        let Some(origin) = self.origin(now_minute) else {
            return;
        };
        self.score_due(origin);
        if self
            .profile_built_at
            .is_none_or(|at| origin - at >= PROFILE_REFRESH_MINUTES)
        {
            self.profile = DailyProfile::build(&self.series, origin);
            self.hourly = HourlyProfile::build(&self.series, origin);
            self.profile_built_at = Some(origin);
            self.levels = None;
        }
        let refit_due = self
            .mstl_fitted_at
            .is_none_or(|at| origin - at >= self.config.refit_interval_minutes as i64);
        if refit_due && self.series.age_minutes(origin) >= 2 * DAY {
            if let Some(profile) = &self.profile {
                let bucket = self.config.seasonal_bucket_minutes as i64;
                let ahead = self.config.refit_interval_minutes as i64 + DAY + 60;
                self.mstl =
                    MstlPath::fit(&self.series, profile, origin, bucket, MSTL_MAX_DAYS, ahead);
                self.refits += 1;
            }
            self.mstl_fitted_at = Some(origin);
            self.levels = None;
        }
        if self
            .quantiles_at
            .is_none_or(|at| origin - at >= QUANTILE_REFRESH_MINUTES)
        {
            let coverage = self.config.interval_coverage;
            self.quantiles = self
                .errors
                .iter()
                .map(|w| w.quantiles(coverage, self.slo_target))
                .collect();
            self.quantiles_at = Some(origin);
        }
        if self.last_recorded_origin != Some(origin) {
            self.record(origin);
            self.last_recorded_origin = Some(origin);
        }
    }

    /// The forecast of `target` made from the data up to `origin` (call [`update`] first).
    ///
    /// [`update`]: SeriesForecaster::update
    pub fn forecast(&mut self, origin: i64, target: i64) -> ForecastPoint {
        let model = self.chosen(origin, target);
        let point = self.candidate(model, origin, target).unwrap_or(0.0);
        let HorizonMix {
            below,
            above,
            mut weight,
        } = HorizonMix::of(target - origin);
        // A neighbour without enough errors yet has only the wide default bounds: while the
        // other is calibrated, it alone says more.
        let uncalibrated = |i: usize| self.quantiles[i] == ErrorQuantiles::UNCALIBRATED;
        match (uncalibrated(below), uncalibrated(above)) {
            (false, true) => weight = 0.0,
            (true, false) => weight = 1.0,
            _ => {}
        }
        let bounds = |q: ErrorQuantiles| {
            let scale = q.scale(point);
            (
                q.lower * scale,
                q.upper * scale,
                q.slo * scale,
                q.surprise * scale,
            )
        };
        let (l0, u0, s0, r0) = bounds(self.quantiles[below]);
        let (l1, u1, s1, r1) = bounds(self.quantiles[above]);
        let mix = |a: f64, b: f64| a + (b - a) * weight;
        let upper = (point + mix(u0, u1)).max(point);
        ForecastPoint {
            minute: target,
            point,
            lower: (point + mix(l0, l1)).clamp(0.0, point),
            upper,
            slo_upper: (point + mix(s0, s1)).max(0.0),
            surprise_upper: (point + mix(r0, r1)).max(upper),
            model,
        }
    }

    /// Each candidate's running mean absolute error at the 30-minute horizon (None until scored).
    pub fn model_errors(&self) -> Vec<(Model, Option<f64>)> {
        Model::ALL
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                (
                    m,
                    (self.model_scored[i] >= MIN_SCORED).then_some(self.model_error[i]),
                )
            })
            .collect()
    }

    fn eligible(&self, origin: i64) -> &'static [Model] {
        let age = self.series.age_minutes(origin);
        if age < 2 * HOUR {
            &[Model::Naive]
        } else if age < DAY {
            &[Model::Naive, Model::Hourly]
        } else if age < 2 * DAY {
            &[Model::Naive, Model::SeasonalNaive, Model::Hourly]
        } else {
            &Model::ALL
        }
    }

    fn chosen(&self, origin: i64, _target: i64) -> Model {
        let eligible = self.eligible(origin);
        let best = eligible
            .iter()
            .filter(|m| self.model_scored[**m as usize] >= MIN_SCORED)
            .min_by(|a, b| {
                self.model_error[**a as usize].total_cmp(&self.model_error[**b as usize])
            });
        match best {
            Some(&m) => m,
            None => *eligible.last().unwrap_or(&Model::Naive),
        }
    }

    fn levels(&mut self, origin: i64) -> Levels {
        if let Some(levels) = self.levels.filter(|l| l.origin == origin) {
            return levels;
        }
        let window = self.config.level_window_minutes as i64;
        let naive = self.series.recent_mean(origin, window).unwrap_or(0.0);
        let profile = self
            .profile
            .as_ref()
            .and_then(|p| level(&self.series, origin, window, |m| Some(p.at(m))));
        let mstl = self
            .mstl
            .as_ref()
            .and_then(|p| level(&self.series, origin, window, |m| p.at(m)));
        let hourly = self
            .hourly
            .as_ref()
            .and_then(|p| level(&self.series, origin, window.max(HOUR), |m| Some(p.at(m))));
        let levels = Levels {
            origin,
            naive,
            hourly,
            profile,
            mstl,
        };
        self.levels = Some(levels);
        levels
    }

    fn candidate(&mut self, model: Model, origin: i64, target: i64) -> Option<f64> {
        let levels = self.levels(origin);
        let profile = || Some(levels.profile?.apply(self.profile.as_ref()?.at(target)));
        let mstl = || Some(levels.mstl?.apply(self.mstl.as_ref()?.at(target)?));
        let hourly = || Some(levels.hourly?.apply(self.hourly.as_ref()?.at(target)));
        let value = match model {
            Model::Naive => Some(levels.naive),
            Model::Hourly => hourly().or(Some(levels.naive)),
            Model::SeasonalNaive => {
                let days_back = ((target - origin) + DAY - 1) / DAY;
                self.series
                    .get(target - days_back.max(1) * DAY)
                    .or(Some(levels.naive))
            }
            Model::Profile => profile().or(Some(levels.naive)),
            Model::Mstl => mstl().or_else(profile).or(Some(levels.naive)),
            Model::Blend => match (profile(), mstl()) {
                (Some(p), Some(m)) => Some((p + m) / 2.0),
                (p, m) => p.or(m).or(Some(levels.naive)),
            },
            Model::Combo => {
                let eligible = self.eligible(origin);
                let (mut sum, mut weights) = (0.0, 0.0);
                for model in [
                    Model::Naive,
                    Model::SeasonalNaive,
                    Model::Hourly,
                    Model::Profile,
                    Model::Mstl,
                ] {
                    let i = model as usize;
                    if !eligible.contains(&model) || self.model_scored[i] < MIN_SCORED {
                        continue;
                    }
                    let Some(value) = self.candidate(model, origin, target) else {
                        continue;
                    };
                    let w = 1.0 / self.model_error[i].max(1e-6).powi(2);
                    sum += w * value;
                    weights += w;
                }
                Some(if weights > 0.0 {
                    sum / weights
                } else {
                    levels.naive
                })
            }
        };
        value.filter(|v| v.is_finite())
    }

    fn record(&mut self, origin: i64) {
        for (index, &horizon) in TRACKED_HORIZONS.iter().enumerate() {
            let target = origin + horizon;
            let point = self.forecast(origin, target).point;
            let candidates = (index == CHOICE_HORIZON).then(|| {
                let mut all = [0f32; MODELS];
                for (slot, model) in all.iter_mut().zip(Model::ALL) {
                    *slot = self.candidate(model, origin, target).unwrap_or(f64::NAN) as f32;
                }
                all
            });
            self.pending.push_back(Pending {
                target,
                horizon: index as u8,
                point: point as f32,
                candidates,
            });
        }
    }

    fn score_due(&mut self, origin: i64) {
        let mut keep = VecDeque::with_capacity(self.pending.len());
        while let Some(p) = self.pending.pop_front() {
            if p.target > origin {
                keep.push_back(p);
                continue;
            }
            let Some(actual) = self.series.get(p.target) else {
                continue;
            };
            if self.surprises.binary_search(&p.target).is_err() {
                self.errors[p.horizon as usize].push(p.point as f64, actual);
            }
            if let Some(candidates) = p.candidates {
                for (i, c) in candidates.iter().enumerate() {
                    if c.is_nan() {
                        continue;
                    }
                    let err = (actual - *c as f64).abs();
                    self.model_error[i] = if self.model_scored[i] == 0 {
                        err
                    } else {
                        self.model_error[i]
                            + ERROR_SMOOTHING.max(1.0 / (self.model_scored[i] as f64 + 1.0))
                                * (err - self.model_error[i])
                    };
                    self.model_scored[i] = self.model_scored[i].saturating_add(1);
                }
            }
        }
        self.pending = keep;
    }
}

/// Scale of a shape to the recent level: the ratio of observed to shape over the present minutes
/// of the window, or an offset when the shape is (nearly) zero there.
fn level(
    series: &MinuteSeries,
    origin: i64,
    window: i64,
    shape: impl Fn(i64) -> Option<f64>,
) -> Option<Level> {
    let (mut actual, mut modeled, mut n) = (0.0, 0.0, 0usize);
    for m in (origin - window + 1)..=origin {
        let (Some(a), Some(s)) = (series.get(m), shape(m)) else {
            continue;
        };
        actual += a;
        modeled += s;
        n += 1;
    }
    if n == 0 {
        return Some(Level::Ratio(1.0));
    }
    if modeled > 1e-6 * n as f64 && modeled >= 0.5 {
        Some(Level::Ratio((actual / modeled).clamp(0.05, 20.0)))
    } else {
        Some(Level::Offset((actual - modeled) / n as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecaster() -> SeriesForecaster {
        SeriesForecaster::new(&ForecastConfig::default(), 0.999)
    }

    #[test]
    fn horizons_between_tracked_ones_mix_both_by_log_horizon() {
        let exact = |below, weight| HorizonMix {
            below,
            above: below,
            weight,
        };
        assert_eq!(HorizonMix::of(0), exact(0, 1.0));
        assert_eq!(HorizonMix::of(1), exact(0, 1.0));
        assert_eq!(HorizonMix::of(5), exact(1, 1.0));
        assert_eq!(HorizonMix::of(5000), exact(TRACKED_HORIZONS.len() - 1, 1.0));
        let two = HorizonMix::of(2);
        assert_eq!((two.below, two.above), (0, 1));
        assert!(
            (two.weight - 2f64.ln() / 5f64.ln()).abs() < 1e-12,
            "{two:?}"
        );
        let mut previous = 0.0;
        for h in 6..30 {
            let mix = HorizonMix::of(h);
            assert_eq!((mix.below, mix.above), (1, 2));
            assert!(mix.weight > previous && mix.weight < 1.0, "{h}: {mix:?}");
            previous = mix.weight;
        }
    }

    #[test]
    fn a_new_series_uses_the_naive_level() {
        let mut f = forecaster();
        for m in 0..100 {
            f.observe(m, 60.0);
        }
        f.update(100);
        let p = f.forecast(99, 130);
        assert_eq!(p.model, Model::Naive);
        assert!((p.point - 60.0).abs() < 1e-9);
        assert!(p.lower <= p.point && p.point <= p.upper && p.upper <= p.slo_upper);
    }

    #[test]
    fn all_zero_and_gappy_series_never_crash() {
        let mut f = forecaster();
        for m in (0..5 * DAY).step_by(7) {
            f.observe(m, 0.0);
            f.update(m + 1);
        }
        let p = f.forecast(5 * DAY - 1, 5 * DAY + 30);
        assert!(p.point.is_finite() && p.point >= 0.0 && p.slo_upper.is_finite());
    }

    #[test]
    fn an_outage_is_not_learned_as_seasonality() {
        let mut f = forecaster();
        // Three days of flat traffic with a 6-hour outage (no observations) on day 2.
        for m in 0..3 * DAY {
            if !(DAY + 600..DAY + 960).contains(&m) {
                f.observe(m, 100.0);
            }
            f.update(m + 1);
        }
        let p = f.forecast(3 * DAY - 1, 3 * DAY + 700);
        assert!((p.point - 100.0).abs() < 5.0, "{p:?}");
    }
}

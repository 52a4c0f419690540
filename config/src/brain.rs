//! Configuration of the forecasting and planning core (`[forecast]` and `[planner]`).
//!
//! Every field has a default that serves both diurnal web traffic and bursty, event-driven
//! traffic, from a few requests per second to thousands; an empty section is a valid section.

use serde::{Deserialize, Serialize};

/// `[forecast]`: how each (region, profile) and fleet series is forecast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastConfig {
    /// Central coverage of the published prediction interval (0.9 = a 90 % interval).
    pub interval_coverage: f64,
    /// Bucket width, in minutes, on which the seasonal (MSTL + AutoETS) model is fitted.
    pub seasonal_bucket_minutes: u32,
    /// Minutes between refits of the seasonal model; between refits its level is updated
    /// incrementally from each new observation.
    pub refit_interval_minutes: u32,
    /// Days of per-minute history kept per series (bounded memory).
    pub history_days: u32,
    /// Minutes of recent observations that set the current level of a forecast.
    pub level_window_minutes: u32,
    /// Minutes of recent forecast errors used to choose the model (rolling-origin backtest)
    /// and to calibrate the intervals.
    pub calibration_window_minutes: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            interval_coverage: 0.9,
            seasonal_bucket_minutes: 5,
            refit_interval_minutes: 360,
            history_days: 15,
            level_window_minutes: 30,
            calibration_window_minutes: 2 * 1440,
        }
    }
}

/// `[planner]`: how forecasts become instance counts per fleet and tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerConfig {
    /// Share of minutes whose demand the plan must cover (the SLO the burst tier is sized for).
    pub slo_target: f64,
    /// Extra headroom on top of the forecast's upper bound (0.05 = 5 %).
    pub margin: f64,
    /// Instances always on per fleet, whatever the forecast says.
    pub baseline_instances: u32,
    /// Share of the SLO tail (bound − point) kept above the bound when scaling down, so that a
    /// bound wobbling by less than that does not flap the fleet (0 = scale down to the bound).
    pub scale_down_band: f64,
    /// Minutes the plan must stay below the threshold (looking ahead) before scaling down.
    pub stabilization_minutes: u32,
    /// Seconds an instance drains (stops receiving new requests) before it is removed.
    pub drain_seconds: u32,
    /// Utilization the reactive guard scales to when observed load beats the forecast.
    pub reactive_guard_utilization: f64,
    /// Seconds between planning ticks.
    pub tick_seconds: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            slo_target: 0.99,
            margin: 0.0,
            baseline_instances: 1,
            scale_down_band: 0.5,
            stabilization_minutes: 3,
            drain_seconds: 30,
            reactive_guard_utilization: 0.9,
            tick_seconds: 60,
        }
    }
}

impl ForecastConfig {
    /// Problems with the values, each naming the key and what is expected.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.interval_coverage > 0.0 && self.interval_coverage < 1.0) {
            out.push(format!(
                "forecast.interval_coverage = {}: expected a share between 0 and 1, e.g. 0.9",
                self.interval_coverage
            ));
        }
        if self.seasonal_bucket_minutes == 0 || 1440 % self.seasonal_bucket_minutes != 0 {
            out.push(format!(
                "forecast.seasonal_bucket_minutes = {}: expected a divisor of 1440, e.g. 5",
                self.seasonal_bucket_minutes
            ));
        }
        if self.refit_interval_minutes == 0 {
            out.push("forecast.refit_interval_minutes = 0: expected at least 1, e.g. 360".into());
        }
        if self.history_days < 1 || self.history_days > 60 {
            out.push(format!(
                "forecast.history_days = {}: expected 1 to 60, e.g. 15",
                self.history_days
            ));
        }
        if self.level_window_minutes == 0 || self.level_window_minutes > 1440 {
            out.push(format!(
                "forecast.level_window_minutes = {}: expected 1 to 1440, e.g. 30",
                self.level_window_minutes
            ));
        }
        if self.calibration_window_minutes < 60 {
            out.push(format!(
                "forecast.calibration_window_minutes = {}: expected at least 60, e.g. 2880",
                self.calibration_window_minutes
            ));
        }
        out
    }
}

impl PlannerConfig {
    /// Problems with the values, each naming the key and what is expected.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.slo_target > 0.5 && self.slo_target < 1.0) {
            out.push(format!(
                "planner.slo_target = {}: expected a share between 0.5 and 1, e.g. 0.99",
                self.slo_target
            ));
        }
        if !(self.margin >= 0.0 && self.margin <= 5.0) {
            out.push(format!(
                "planner.margin = {}: expected 0 to 5, e.g. 0.05",
                self.margin
            ));
        }
        if !(self.scale_down_band >= 0.0 && self.scale_down_band <= 4.0) {
            out.push(format!(
                "planner.scale_down_band = {}: expected a share of the SLO tail from 0 to 4, e.g. 0.5",
                self.scale_down_band
            ));
        }
        if !(self.reactive_guard_utilization > 0.0 && self.reactive_guard_utilization <= 1.0) {
            out.push(format!(
                "planner.reactive_guard_utilization = {}: expected a share in (0, 1], e.g. 0.9",
                self.reactive_guard_utilization
            ));
        }
        if self.tick_seconds == 0 || self.tick_seconds > 3600 {
            out.push(format!(
                "planner.tick_seconds = {}: expected 1 to 3600, e.g. 60",
                self.tick_seconds
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sections_take_the_defaults_and_are_valid() {
        let forecast: ForecastConfig = toml::from_str("").expect("empty [forecast]");
        let planner: PlannerConfig = toml::from_str("").expect("empty [planner]");
        assert_eq!(forecast, ForecastConfig::default());
        assert_eq!(planner, PlannerConfig::default());
        assert!(forecast.problems().is_empty());
        assert!(planner.problems().is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = toml::from_str::<PlannerConfig>("slo_targett = 0.9").unwrap_err();
        assert!(err.to_string().contains("slo_targett"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let planner = PlannerConfig {
            scale_down_band: -0.5,
            ..PlannerConfig::default()
        };
        let problems = planner.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("planner.scale_down_band"));
        let forecast = ForecastConfig {
            seasonal_bucket_minutes: 7,
            ..ForecastConfig::default()
        };
        assert!(forecast.problems()[0].starts_with("forecast.seasonal_bucket_minutes"));
    }
}

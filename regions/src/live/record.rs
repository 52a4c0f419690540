//! What the driver writes to the capacity [`History`] and keeps for the view: at each node
//! minute's start, every fleet's instances, plan, capacity and cost, the forecasts of the
//! minute one lead time ahead (the fleet's total and each of its profiles), and the outlook of
//! the coming day; when a minute is handed to the brain, each fleet's demand in it and whether
//! it fell inside the interval forecast for it.
//!
//! The forecast recorded for a minute is the one made a lead time before it: the one the plan
//! had to act on, since capacity asked for later is not ready in time. Accuracy is scored
//! against that forecast only.

use std::collections::BTreeMap;

use prescale_brain::brain::{FleetKey, SeriesKey};
use prescale_brain::planner::CapacityModel;
use serde::Serialize;

use crate::history::{
    FleetCapacity, FleetDemand, ForecastRecord, History, HistoryBatch, Outlook, OutlookPoint,
    SubjectForecast,
};

use super::{FleetRun, LiveDriver};

/// The outlook is made every this many minutes (83 forecasts a fleet: at a thousand fleets,
/// making it each minute doubled the driver's step), and written to the history every
/// `OUTLOOK_STORE_EVERY_MINUTES`.
const OUTLOOK_EVERY_MINUTES: u64 = 5;
const OUTLOOK_STORE_EVERY_MINUTES: u64 = 15;
/// Outlook points: every minute of the next hour, then every hour to a day.
const OUTLOOK_MINUTELY: u64 = 60;
const OUTLOOK_HOURS: u64 = 24;

/// How a fleet's lead-time forecasts have done, for the view and `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetAccuracy {
    /// Handed minutes that had a recorded forecast.
    pub minutes_scored: u64,
    /// Of those, minutes whose demand fell outside the forecast's interval.
    pub misses: u64,
    /// The last handed minute with its demand and the forecast recorded for it.
    pub last: Option<ScoredMinute>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScoredMinute {
    /// Unix seconds of the minute's start.
    pub minute: u64,
    pub demand: u64,
    pub forecast: Option<ForecastRecord>,
}

/// Per fleet: what the recording keeps between steps.
#[derive(Debug, Default)]
pub(super) struct FleetRecording {
    /// Forecasts recorded for minutes not handed over yet, by minute.
    pub pending_forecasts: BTreeMap<u64, ForecastRecord>,
    pub accuracy: FleetAccuracy,
    pub outlook: Option<Outlook>,
}

/// The recording's state in the driver.
#[derive(Default)]
pub(super) struct Recorder {
    history: Option<History>,
    batch: HistoryBatch,
    /// Start (unix seconds) of the last minute whose capacity was recorded.
    recorded_minute: Option<u64>,
}

impl Recorder {
    pub fn new(history: History) -> Self {
        Recorder {
            history: Some(history),
            ..Recorder::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.history.is_some()
    }
}

impl LiveDriver {
    /// At a new node minute: record each fleet's capacity and the forecasts one lead time
    /// ahead, and refresh the outlooks.
    pub(super) fn record_minute_start(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000 * 60;
        if self.recorder.recorded_minute.is_some_and(|m| m >= minute) {
            return;
        }
        let first = self.recorder.recorded_minute.is_none();
        self.recorder.recorded_minute = Some(minute);
        let now = (now_ms / 1000) as i64;
        let now_minute = (minute / 60) as i64;
        let make_outlook = first || (minute / 60).is_multiple_of(OUTLOOK_EVERY_MINUTES);
        let store_outlook = first || (minute / 60).is_multiple_of(OUTLOOK_STORE_EVERY_MINUTES);
        let region = self.settings.region.clone();
        // Every series of the region, read once a minute for the fleets that serve them all.
        let mut all_series: Option<Vec<SeriesKey>> = None;
        for i in 0..self.fleets.len() {
            let key = self.fleets[i].key.clone();
            let Some(spec) = self.brain.fleet_spec(&key).cloned() else {
                continue;
            };
            let status = self.brain.fleet_status(&key).cloned();
            let counts = self.fleets[i].counts();
            let rps = status
                .as_ref()
                .map(|s| s.capacity.rps_per_instance)
                .unwrap_or(spec.capacity.rps_per_instance);
            if self.recorder.enabled() {
                self.recorder.batch.capacity.push(FleetCapacity {
                    region: region.clone(),
                    fleet: key.fleet.clone(),
                    minute,
                    ready: counts.ready,
                    warming: counts.warming,
                    draining: counts.draining,
                    planned: status
                        .as_ref()
                        .map(|s| s.running)
                        .unwrap_or(self.fleets[i].floor),
                    rps_per_instance: rps,
                    cost_per_instance_hour: spec.capacity.cost_per_instance_hour,
                });
            }
            let lead = spec.capacity.lead_minutes();
            let target = now_minute + lead;
            if let Some(p) = self.brain.fleet_forecast(&key, now, target) {
                let record = forecast_record(now, lead, &p);
                let fleet = &mut self.fleets[i];
                fleet
                    .recording
                    .pending_forecasts
                    .insert(target as u64 * 60, record.clone());
                if self.recorder.enabled() {
                    self.recorder.batch.forecasts.push(SubjectForecast {
                        region: region.clone(),
                        fleet: Some(key.fleet.clone()),
                        profile: None,
                        minute: target as u64 * 60,
                        forecast: record,
                    });
                }
            }
            if self.recorder.enabled() {
                let series: Vec<SeriesKey> = if spec.profiles.is_empty() {
                    all_series
                        .get_or_insert_with(|| self.brain.series_keys())
                        .iter()
                        .filter(|k| k.region == region)
                        .cloned()
                        .collect()
                } else {
                    spec.profiles
                        .iter()
                        .map(|p| SeriesKey {
                            region: region.clone(),
                            profile: p.name.clone(),
                        })
                        .collect()
                };
                for series in series {
                    if let Some(p) = self.brain.series_forecast(&series, now, target) {
                        self.recorder.batch.forecasts.push(SubjectForecast {
                            region: region.clone(),
                            fleet: None,
                            profile: Some(series.profile.clone()),
                            minute: target as u64 * 60,
                            forecast: forecast_record(now, lead, &p),
                        });
                    }
                }
            }
            if !make_outlook {
                continue;
            }
            let capacity = CapacityModel {
                rps_per_instance: rps,
                ..spec.capacity
            };
            let baseline = status.as_ref().map(|s| s.tiers.baseline).unwrap_or(0);
            let outlook = self.outlook(&key, now, minute, &capacity, baseline, spec.cap());
            if store_outlook && self.recorder.enabled() {
                self.recorder.batch.outlooks.push(outlook.clone());
            }
            self.fleets[i].recording.outlook = Some(outlook);
        }
    }

    fn outlook(
        &mut self,
        key: &FleetKey,
        now: i64,
        minute: u64,
        capacity: &CapacityModel,
        baseline: u32,
        cap: Option<u32>,
    ) -> Outlook {
        let now_minute = (minute / 60) as i64;
        let targets = (1..=OUTLOOK_MINUTELY as i64)
            .chain((2..=OUTLOOK_HOURS as i64).map(|h| h * 60))
            .map(|ahead| now_minute + ahead);
        let points = targets
            .filter_map(|target| {
                let p = self.brain.fleet_forecast(key, now, target)?;
                let wanted = capacity.instances_for(p.slo_upper).max(baseline);
                Some(OutlookPoint {
                    minute: target as u64 * 60,
                    point: p.point,
                    lower: p.lower,
                    upper: p.upper,
                    slo_upper: p.slo_upper,
                    instances: cap.map_or(wanted, |c| wanted.min(c)),
                })
            })
            .collect();
        Outlook {
            region: key.region.clone(),
            fleet: key.fleet.clone(),
            issued_at: now as u64,
            points,
        }
    }

    /// A minute was handed to the brain: record each fleet's demand in it (None: absent) and
    /// score it against the forecast recorded for it.
    pub(super) fn record_handed(
        &mut self,
        minute: u64,
        by_profile: Option<&BTreeMap<String, u64>>,
    ) {
        let region = self.settings.region.clone();
        for i in 0..self.fleets.len() {
            let key = self.fleets[i].key.clone();
            let requests = by_profile.map(|values| self.fleet_requests(&key, values));
            let fleet = &mut self.fleets[i];
            let forecast = fleet.recording.pending_forecasts.remove(&minute);
            fleet.recording.pending_forecasts.retain(|&m, _| m > minute);
            if let Some(demand) = requests {
                let accuracy = &mut fleet.recording.accuracy;
                if let Some(f) = &forecast {
                    accuracy.minutes_scored += 1;
                    let d = demand as f64;
                    if d < f.lower || d > f.upper {
                        accuracy.misses += 1;
                    }
                }
                accuracy.last = Some(ScoredMinute {
                    minute,
                    demand,
                    forecast,
                });
            }
            if self.recorder.enabled() {
                self.recorder.batch.demand.push(FleetDemand {
                    region: region.clone(),
                    fleet: key.fleet.clone(),
                    minute,
                    requests,
                });
            }
        }
    }

    /// Requests of a handed minute that arrived late.
    pub(super) fn record_late(&mut self, minute: u64, late_by_profile: &BTreeMap<String, u64>) {
        if !self.recorder.enabled() {
            return;
        }
        for i in 0..self.fleets.len() {
            let key = self.fleets[i].key.clone();
            let late = self.fleet_requests(&key, late_by_profile);
            if late > 0 {
                self.recorder.batch.late.push(FleetDemand {
                    region: self.settings.region.clone(),
                    fleet: key.fleet,
                    minute,
                    requests: Some(late),
                });
            }
        }
    }

    /// The requests of `values` (by profile) that `fleet` serves.
    fn fleet_requests(&self, fleet: &FleetKey, values: &BTreeMap<String, u64>) -> u64 {
        let Some(spec) = self.brain.fleet_spec(fleet) else {
            return 0;
        };
        if spec.profiles.is_empty() {
            return values.values().sum();
        }
        spec.profiles
            .iter()
            .filter_map(|p| values.get(&p.name))
            .sum()
    }

    /// Writes what this step recorded.
    pub(super) fn flush_history(&mut self) {
        let Some(history) = self.recorder.history.as_mut() else {
            return;
        };
        let batch = std::mem::take(&mut self.recorder.batch);
        if let Err(e) = history.record(&batch) {
            self.store_failed("record the capacity history", &e);
        }
    }
}

impl FleetRun {
    fn counts(&self) -> super::InstanceCounts {
        match &self.provisioner {
            Some(p) => {
                let s = p.status();
                super::InstanceCounts {
                    warming: s.warming,
                    ready: s.ready,
                    draining: s.draining,
                }
            }
            None => super::InstanceCounts {
                ready: self.static_backends,
                ..super::InstanceCounts::default()
            },
        }
    }
}

fn forecast_record(
    now: i64,
    lead: i64,
    p: &prescale_brain::forecast::ForecastPoint,
) -> ForecastRecord {
    ForecastRecord {
        issued_at: now.max(0) as u64,
        horizon_minutes: lead,
        point: p.point,
        lower: p.lower,
        upper: p.upper,
        slo_upper: p.slo_upper,
        model: p.model.name().to_string(),
    }
}

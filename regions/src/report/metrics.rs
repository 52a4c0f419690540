//! The report's arithmetic, on recorded minutes only (no IO): violations, unserved share and
//! cost of a fleet's minutes, forecast accuracy (MASE, interval coverage) and the profiles
//! behind a peak. The definitions are stated in [`super::model::definitions`].

use crate::history::FleetMinute;

use super::model::{
    share, Accuracy, Band, CostStats, DemandStats, MinuteCounts, MinutePoint, PeakDrivers, SloStats,
};

/// A fleet's figures over its recorded minutes.
#[derive(Debug, PartialEq)]
pub(crate) struct FleetFigures {
    pub minutes: MinuteCounts,
    pub demand: DemandStats,
    pub slo: SloStats,
    pub cost: CostStats,
    pub series: Vec<MinutePoint>,
}

/// Folds a fleet's recorded minutes (ascending). `covered(minute)`: whether a sketch covered
/// the minute, which tells an absent minute (missing data) from a pending one (not handed yet).
pub(crate) fn fleet_figures(
    minutes: &[FleetMinute],
    covered: impl Fn(u64) -> bool,
) -> FleetFigures {
    let mut counts = MinuteCounts::default();
    let mut demand = DemandStats::default();
    let mut slo = SloStats::default();
    let mut cost = CostStats::default();
    let mut series = Vec::with_capacity(minutes.len());
    for m in minutes {
        counts.recorded += 1;
        let instances = u64::from(m.warming) + u64::from(m.ready) + u64::from(m.draining);
        cost.warming_minutes += u64::from(m.warming);
        cost.ready_minutes += u64::from(m.ready);
        cost.draining_minutes += u64::from(m.draining);
        cost.instance_minutes += instances;
        cost.money += instances as f64 * m.cost_per_instance_hour / 60.0;
        let capacity = capacity_of(m);
        let mut violation = false;
        match m.demand {
            Some(d) => {
                counts.with_demand += 1;
                demand.requests += d;
                if demand.peak_minute.is_none() || d > demand.peak_requests {
                    demand.peak_minute = Some(m.minute);
                    demand.peak_requests = d;
                }
                let above = d as f64 - capacity;
                if above > 0.0 {
                    violation = true;
                    slo.violation_minutes += 1;
                    slo.unserved_requests += above;
                }
            }
            None if covered(m.minute) => counts.pending += 1,
            None => counts.absent += 1,
        }
        series.push(MinutePoint {
            minute: m.minute,
            demand: m.demand,
            ready: m.ready,
            warming: m.warming,
            draining: m.draining,
            planned: m.planned,
            capacity,
            forecast: m.forecast.as_ref().map(|f| Band {
                point: f.point,
                lower: f.lower,
                upper: f.upper,
            }),
            violation,
        });
    }
    cost.instance_hours = cost.instance_minutes as f64 / 60.0;
    slo.unserved_share = share(slo.unserved_requests, demand.requests as f64);
    demand.mean_requests_per_minute = share(demand.requests as f64, counts.with_demand as f64);
    FleetFigures {
        minutes: counts,
        demand,
        slo,
        cost,
        series,
    }
}

/// Requests the minute's ready instances serve: ready × rps_per_instance × 60.
pub(crate) fn capacity_of(m: &FleetMinute) -> f64 {
    f64::from(m.ready) * m.rps_per_instance * 60.0
}

/// One minute as accuracy sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub demand: f64,
    pub forecast: Option<Band>,
    /// Demand of the same minute a day earlier, when the store has it.
    pub day_before: Option<f64>,
}

/// MASE against seasonal-naive and interval coverage over minutes with a known demand.
pub(crate) fn accuracy(samples: impl IntoIterator<Item = Sample>) -> Accuracy {
    let (mut model_error, mut naive_error, mut scored) = (0.0, 0.0, 0u64);
    let (mut forecast_minutes, mut inside) = (0u64, 0u64);
    for s in samples {
        let Some(f) = s.forecast else { continue };
        forecast_minutes += 1;
        if f.lower <= s.demand && s.demand <= f.upper {
            inside += 1;
        }
        if let Some(before) = s.day_before {
            scored += 1;
            model_error += (s.demand - f.point).abs();
            naive_error += (s.demand - before).abs();
        }
    }
    let n = scored as f64;
    let note = if forecast_minutes == 0 {
        Some("no forecast recorded for these minutes".to_string())
    } else if scored == 0 {
        Some("MASE needs a day of history (no minute has the same minute a day earlier)".into())
    } else if naive_error == 0.0 {
        Some("MASE undefined: the seasonal-naive forecast made no error".to_string())
    } else {
        None
    };
    Accuracy {
        mase: (naive_error > 0.0).then(|| model_error / naive_error),
        mase_minutes: scored,
        mean_absolute_error: share(model_error, n),
        seasonal_naive_mean_absolute_error: share(naive_error, n),
        interval_coverage: share(inside as f64, forecast_minutes as f64),
        coverage_minutes: forecast_minutes,
        note,
    }
}

/// A profile's requests in the peak minute, with its revenue weight.
pub(crate) struct PeakShare<'a> {
    pub profile: &'a str,
    pub requests: u64,
    pub revenue_weight: Option<f64>,
}

/// The profiles of a peak minute ranked by revenue weight (unknown weights last, ties by
/// requests) and by share of the minute (ties by name).
pub(crate) fn peak_drivers(minute: u64, requests: u64, shares: &[PeakShare<'_>]) -> PeakDrivers {
    let present: Vec<&PeakShare<'_>> = shares.iter().filter(|s| s.requests > 0).collect();
    let mut by_weight = present.clone();
    by_weight.sort_by(|a, b| {
        let weight = |s: &PeakShare<'_>| s.revenue_weight.unwrap_or(f64::NEG_INFINITY);
        weight(b)
            .total_cmp(&weight(a))
            .then(b.requests.cmp(&a.requests))
            .then(a.profile.cmp(b.profile))
    });
    let mut by_share = present;
    by_share.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.profile.cmp(b.profile)));
    PeakDrivers {
        minute,
        requests,
        by_revenue_weight: by_weight.iter().map(|s| s.profile.to_string()).collect(),
        by_share_of_peak: by_share.iter().map(|s| s.profile.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ForecastRecord;

    fn minute(
        at: u64,
        demand: Option<u64>,
        ready: u32,
        warming: u32,
        draining: u32,
    ) -> FleetMinute {
        FleetMinute {
            region: "eu".into(),
            fleet: "web".into(),
            minute: at,
            demand,
            ready,
            warming,
            draining,
            planned: ready + warming,
            rps_per_instance: 2.0,
            cost_per_instance_hour: 0.6,
            forecast: Some(ForecastRecord {
                issued_at: at.saturating_sub(120),
                horizon_minutes: 2,
                point: 100.0,
                lower: 80.0,
                upper: 130.0,
                slo_upper: 150.0,
                model: "naive".into(),
            }),
        }
    }

    #[test]
    fn violations_unserved_and_cost_follow_the_definitions() {
        // 2 req/s per instance: 120 requests a minute each.
        let minutes = [
            minute(0, Some(100), 1, 1, 0),   // capacity 120: served
            minute(60, Some(300), 2, 0, 0),  // capacity 240: 60 unserved
            minute(120, None, 2, 0, 1),      // not covered: absent
            minute(180, Some(240), 2, 0, 0), // exactly at capacity: served
            minute(240, None, 1, 0, 0),      // covered, not handed: pending
        ];
        let figures = fleet_figures(&minutes, |m| m == 240);
        assert_eq!(
            figures.minutes,
            MinuteCounts {
                recorded: 5,
                with_demand: 3,
                absent: 1,
                pending: 1
            }
        );
        assert_eq!(figures.demand.requests, 640);
        assert_eq!(figures.demand.peak_minute, Some(60));
        assert_eq!(figures.demand.peak_requests, 300);
        assert_eq!(figures.slo.violation_minutes, 1);
        assert_eq!(figures.slo.unserved_requests, 60.0);
        assert_eq!(figures.slo.unserved_share, Some(60.0 / 640.0));
        assert_eq!(figures.cost.instance_minutes, 2 + 2 + 3 + 2 + 1);
        assert_eq!(figures.cost.warming_minutes, 1);
        assert_eq!(figures.cost.draining_minutes, 1);
        assert!((figures.cost.money - 10.0 * 0.6 / 60.0).abs() < 1e-12);
        assert!((figures.cost.instance_hours - 10.0 / 60.0).abs() < 1e-12);
        assert!(figures.series[1].violation && !figures.series[3].violation);
        assert_eq!(figures.series[0].capacity, 120.0);
    }

    #[test]
    fn no_minutes_give_no_ratios() {
        let figures = fleet_figures(&[], |_| false);
        assert_eq!(figures.slo.unserved_share, None);
        assert_eq!(figures.demand.mean_requests_per_minute, None);
        assert_eq!(figures.cost.instance_minutes, 0);
    }

    fn band(point: f64, lower: f64, upper: f64) -> Option<Band> {
        Some(Band {
            point,
            lower,
            upper,
        })
    }

    #[test]
    fn mase_and_coverage_use_only_minutes_that_have_what_they_need() {
        let samples = [
            // error 10, naive error 20, inside
            Sample {
                demand: 100.0,
                forecast: band(90.0, 80.0, 110.0),
                day_before: Some(80.0),
            },
            // error 30, naive error 10, outside
            Sample {
                demand: 130.0,
                forecast: band(100.0, 90.0, 120.0),
                day_before: Some(120.0),
            },
            // no day before: coverage only (inside)
            Sample {
                demand: 50.0,
                forecast: band(55.0, 40.0, 60.0),
                day_before: None,
            },
            // no forecast: nothing
            Sample {
                demand: 500.0,
                forecast: None,
                day_before: Some(0.0),
            },
        ];
        let a = accuracy(samples);
        assert_eq!(a.mase_minutes, 2);
        assert_eq!(a.mase, Some(40.0 / 30.0));
        assert_eq!(a.mean_absolute_error, Some(20.0));
        assert_eq!(a.seasonal_naive_mean_absolute_error, Some(15.0));
        assert_eq!(a.coverage_minutes, 3);
        assert_eq!(a.interval_coverage, Some(2.0 / 3.0));
        assert_eq!(a.note, None);
    }

    #[test]
    fn mase_without_a_day_of_history_says_so() {
        let a = accuracy([Sample {
            demand: 1.0,
            forecast: band(1.0, 0.0, 2.0),
            day_before: None,
        }]);
        assert_eq!(a.mase, None);
        assert!(
            a.note
                .as_deref()
                .unwrap_or("")
                .contains("needs a day of history"),
            "{a:?}"
        );
        assert_eq!(a.interval_coverage, Some(1.0));
        let none = accuracy([]);
        assert_eq!((none.mase, none.interval_coverage), (None, None));
        assert!(none.note.is_some());
    }

    #[test]
    fn peak_drivers_rank_by_weight_and_by_share() {
        let shares = [
            PeakShare {
                profile: "batch",
                requests: 600,
                revenue_weight: Some(1.0),
            },
            PeakShare {
                profile: "interactive",
                requests: 300,
                revenue_weight: Some(3.0),
            },
            PeakShare {
                profile: "new",
                requests: 100,
                revenue_weight: None,
            },
            PeakShare {
                profile: "idle",
                requests: 0,
                revenue_weight: Some(9.0),
            },
        ];
        let peak = peak_drivers(60, 1000, &shares);
        assert_eq!(peak.by_revenue_weight, ["interactive", "batch", "new"]);
        assert_eq!(peak.by_share_of_peak, ["batch", "interactive", "new"]);
    }
}

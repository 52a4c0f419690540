//! A fleet's chart over the report's period, as SVG text to embed in the HTML (no external
//! assets): demand, the forecast recorded at the lead time with its interval, the ready
//! capacity, and marks under the axis for SLO-violation and absent minutes. Lines, dashes and
//! a shaded band keep the series apart in black-and-white print as well as in colour.
//!
//! Long periods are bucketed for drawing (peak demand, lowest capacity, widest interval and
//! any violation per bucket, so nothing that matters is hidden); the JSON keeps every minute.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::model::{FleetReport, MinutePoint};
use super::time::{clock_text, time_of_day_text};
use super::ReportError;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 380;
/// At most this many buckets across the chart.
const MAX_BUCKETS: u64 = 1200;
/// Fewer recorded minutes than this are not charted (a line needs two points).
pub const MIN_CHART_MINUTES: usize = 2;

const DEMAND: RGBColor = RGBColor(0, 0, 0);
const FORECAST: RGBColor = RGBColor(0, 114, 178);
const CAPACITY: RGBColor = RGBColor(0, 158, 115);
const VIOLATION: RGBColor = RGBColor(213, 94, 0);
const ABSENT: RGBColor = RGBColor(140, 140, 140);

/// What one bucket of minutes draws.
#[derive(Clone, Debug, Default, PartialEq)]
struct Bucket {
    recorded: bool,
    demand: Option<f64>,
    capacity: Option<f64>,
    point: Option<(f64, u32)>,
    band: Option<(f64, f64)>,
    violation: bool,
    absent: bool,
}

impl Bucket {
    fn add(&mut self, m: &MinutePoint) {
        self.recorded = true;
        if let Some(d) = m.demand {
            let d = d as f64;
            self.demand = Some(self.demand.map_or(d, |v| v.max(d)));
        } else {
            self.absent = true;
        }
        self.capacity = Some(self.capacity.map_or(m.capacity, |v| v.min(m.capacity)));
        if let Some(f) = m.forecast {
            self.point = Some(
                self.point
                    .map_or((f.point, 1), |(sum, n)| (sum + f.point, n + 1)),
            );
            self.band = Some(self.band.map_or((f.lower, f.upper), |(lo, hi)| {
                (lo.min(f.lower), hi.max(f.upper))
            }));
        }
        self.violation |= m.violation;
    }
}

/// Minutes per bucket and the buckets of `[from, to)`.
fn buckets(series: &[MinutePoint], from: u64, to: u64) -> (u64, Vec<Bucket>) {
    let minutes = to.saturating_sub(from).div_ceil(60).max(1);
    let per = minutes.div_ceil(MAX_BUCKETS).max(1);
    let mut out = vec![Bucket::default(); minutes.div_ceil(per) as usize];
    for m in series {
        if m.minute < from || m.minute >= to {
            continue;
        }
        let index = ((m.minute - from) / 60 / per) as usize;
        if let Some(bucket) = out.get_mut(index) {
            bucket.add(m);
        }
    }
    (per, out)
}

/// Runs of consecutive buckets for which `value` is known, as (x, y) lines.
fn runs(
    buckets: &[Bucket],
    per: u64,
    value: impl Fn(&Bucket) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let mut lines = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        match value(b) {
            Some(y) => current.push(((i as u64 * per) as f64, y)),
            None if !current.is_empty() => lines.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// The fleet's chart as an SVG document, or `None` when it has too few minutes to draw.
pub fn fleet_chart(
    region: &str,
    fleet: &FleetReport,
    from: u64,
    to: u64,
) -> Result<Option<String>, ReportError> {
    if fleet.series.len() < MIN_CHART_MINUTES {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        render(&area, region, fleet, from, to).map_err(|message| ReportError::Chart {
            fleet: format!("{region}/{}", fleet.fleet),
            message,
        })?;
        area.present().map_err(|e| ReportError::Chart {
            fleet: format!("{region}/{}", fleet.fleet),
            message: e.to_string(),
        })?;
    }
    Ok(Some(svg))
}

fn render<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    region: &str,
    fleet: &FleetReport,
    from: u64,
    to: u64,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(err)?;
    let (per, buckets) = buckets(&fleet.series, from, to);
    let span_minutes = (buckets.len() as u64 * per) as f64;
    let top = buckets
        .iter()
        .flat_map(|b| {
            [
                b.demand,
                b.capacity,
                b.band.map(|(_, hi)| hi),
                b.point.map(|(sum, n)| sum / f64::from(n)),
            ]
        })
        .flatten()
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.08;
    let (violation_lane, absent_lane) = (-top * 0.035, -top * 0.075);
    let long = to.saturating_sub(from) > 86_400;
    let x_label = |x: &f64| {
        let at = from + (x.max(0.0) as u64) * 60;
        if long {
            clock_text(at).get(5..).unwrap_or_default().to_string()
        } else {
            time_of_day_text(at)
        }
    };
    let y_label = |y: &f64| {
        if *y < 0.0 {
            String::new()
        } else {
            format!("{y:.0}")
        }
    };
    let lead = fleet
        .lead_minutes
        .map(|l| format!(" ({l} min ahead)"))
        .unwrap_or_default();
    let title = format!(
        "{region}/{}: demand, forecast and ready capacity, {} to {} UTC (node time)",
        fleet.fleet,
        clock_text(from),
        clock_text(to)
    );
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(title, ("sans-serif", 17))
        .x_label_area_size(34)
        .y_label_area_size(58)
        .build_cartesian_2d(0.0..span_minutes.max(1.0), (-top * 0.1)..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(if long {
            "date and time (UTC, node time)"
        } else {
            "time (UTC, node time)"
        })
        .y_desc("requests per minute")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;

    let band_style = FORECAST.mix(0.18).filled();
    let mut band_labelled = false;
    for run in runs(&buckets, per, |b| b.band.map(|(lo, _)| lo)) {
        let uppers: Vec<(f64, f64)> = run
            .iter()
            .filter_map(|&(x, _)| {
                let b = &buckets[(x as u64 / per) as usize];
                b.band.map(|(_, hi)| (x, hi))
            })
            .collect();
        let mut outline: Vec<(f64, f64)> = uppers.clone();
        outline.extend(run.iter().rev().copied());
        if outline.len() < 3 {
            // A lone bucket: a thin bar from lower to upper.
            if let (Some(&(x, lo)), Some(&(_, hi))) = (run.first(), uppers.first()) {
                outline = vec![(x, lo), (x, hi), (x + per as f64, hi), (x + per as f64, lo)];
            }
        }
        let drawn = chart
            .draw_series(std::iter::once(Polygon::new(outline, band_style)))
            .map_err(err)?;
        if !band_labelled {
            band_labelled = true;
            drawn
                .label("forecast interval")
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 22, y + 5)], band_style));
        }
    }
    let mut point_labelled = false;
    for run in runs(&buckets, per, |b| {
        b.point.map(|(sum, n)| sum / f64::from(n))
    }) {
        let drawn = chart
            .draw_series(DashedLineSeries::new(run, 6, 4, FORECAST.stroke_width(2)))
            .map_err(err)?;
        if !point_labelled {
            point_labelled = true;
            drawn.label(format!("forecast{lead}")).legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], FORECAST.stroke_width(2))
            });
        }
    }
    let mut capacity_labelled = false;
    for run in runs(&buckets, per, |b| b.capacity) {
        // Capacity holds for the whole minute (bucket): draw it as steps.
        let mut steps = Vec::with_capacity(run.len() * 2);
        for &(x, y) in &run {
            steps.push((x, y));
            steps.push((x + per as f64, y));
        }
        let drawn = chart
            .draw_series(LineSeries::new(steps, CAPACITY.stroke_width(3)))
            .map_err(err)?;
        if !capacity_labelled {
            capacity_labelled = true;
            drawn.label("ready capacity").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], CAPACITY.stroke_width(3))
            });
        }
    }
    let mut demand_labelled = false;
    for run in runs(&buckets, per, |b| b.demand) {
        let drawn = if run.len() == 1 {
            chart
                .draw_series(run.iter().map(|&p| Circle::new(p, 2, DEMAND.filled())))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(run, DEMAND.stroke_width(1)))
                .map_err(err)?
        };
        if !demand_labelled {
            demand_labelled = true;
            drawn.label("demand").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], DEMAND.stroke_width(1))
            });
        }
    }
    let marks = |lane: f64, color: RGBColor, pick: fn(&Bucket) -> bool| {
        buckets
            .iter()
            .enumerate()
            .filter(move |(_, b)| pick(b))
            .map(move |(i, _)| {
                let x = (i as u64 * per) as f64;
                Rectangle::new(
                    [
                        (x, lane - top * 0.012),
                        (x + per as f64, lane + top * 0.012),
                    ],
                    color.filled(),
                )
            })
            .collect::<Vec<_>>()
    };
    let violations = marks(violation_lane, VIOLATION, |b| b.violation);
    if !violations.is_empty() {
        chart
            .draw_series(violations)
            .map_err(err)?
            .label("SLO violation minute")
            .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 22, y + 4)], VIOLATION.filled()));
    }
    let absent = marks(absent_lane, ABSENT, |b| b.recorded && b.absent);
    if !absent.is_empty() {
        chart
            .draw_series(absent)
            .map_err(err)?
            .label("absent or pending minute")
            .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 22, y + 4)], ABSENT.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Band;

    fn point(minute: u64, demand: Option<u64>, capacity: f64, violation: bool) -> MinutePoint {
        MinutePoint {
            minute,
            demand,
            ready: 1,
            warming: 0,
            draining: 0,
            planned: 1,
            capacity,
            forecast: Some(Band {
                point: 10.0,
                lower: 5.0,
                upper: 15.0,
            }),
            violation,
        }
    }

    #[test]
    fn long_periods_are_bucketed_keeping_peaks_lows_and_violations() {
        let series: Vec<MinutePoint> = (0..3000u64)
            .map(|m| {
                point(
                    m * 60,
                    Some(if m == 1001 { 500 } else { 10 }),
                    if m == 999 { 1.0 } else { 120.0 },
                    m == 1001,
                )
            })
            .collect();
        let (per, buckets) = buckets(&series, 0, 3000 * 60);
        assert_eq!(per, 3);
        assert_eq!(buckets.len(), 1000);
        let b = &buckets[1001 / 3];
        assert_eq!(b.demand, Some(500.0));
        assert_eq!(b.capacity, Some(1.0));
        assert!(b.violation);
        assert!(!buckets[0].violation);
    }

    #[test]
    fn gaps_break_lines() {
        let series = vec![
            point(0, Some(1), 120.0, false),
            point(60, None, 120.0, false),
            point(120, Some(3), 120.0, false),
            point(180, Some(4), 120.0, false),
        ];
        let (per, buckets) = buckets(&series, 0, 240);
        let lines = runs(&buckets, per, |b| b.demand);
        assert_eq!(lines, vec![vec![(0.0, 1.0)], vec![(2.0, 3.0), (3.0, 4.0)]]);
        assert!(buckets[1].absent);
    }
}

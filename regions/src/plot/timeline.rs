//! Timeline of a replay: demand, each policy's ready capacity, and each policy's violation
//! minutes (a mark under the axis). Long traces are bucketed for drawing: peak demand and lowest
//! capacity per bucket, so nothing is hidden.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{draw_figure, draw_legend, Figure, COLORS};
use crate::error::Result;
use crate::replay::ReplayOutcome;

/// At most this many points per line.
const MAX_POINTS: usize = 2000;

/// Draw `outcome` to `path` (`.svg` or `.png`).
pub fn draw(outcome: &ReplayOutcome, capacity_rps: f64, title: &str, path: &Path) -> Result<()> {
    draw_figure(
        &Timeline {
            outcome,
            capacity_rps,
            title,
        },
        path,
    )
}

struct Timeline<'a> {
    outcome: &'a ReplayOutcome,
    capacity_rps: f64,
    title: &'a str,
}

impl Figure for Timeline<'_> {
    fn render<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> Result<(), String> {
        render(area, self.outcome, self.capacity_rps, self.title, text)
    }
}

fn render<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    outcome: &ReplayOutcome,
    capacity_rps: f64,
    title: &str,
    text: bool,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(err)?;
    let n = outcome.demand_rps.len();
    let bucket = n.div_ceil(MAX_POINTS).max(1);
    let buckets = n.div_ceil(bucket);
    let demand: Vec<(f64, f64)> = (0..buckets)
        .map(|b| {
            let slice = &outcome.demand_rps[b * bucket..((b + 1) * bucket).min(n)];
            (
                (b * bucket) as f64 / 60.0,
                slice.iter().copied().fold(0.0, f64::max),
            )
        })
        .collect();
    let top = outcome
        .runs
        .iter()
        .flat_map(|r| r.ready.iter().map(|&x| x as f64 * capacity_rps))
        .chain(demand.iter().map(|d| d.1))
        .fold(1.0, f64::max)
        * 1.05;
    let hours = n as f64 / 60.0;
    let mut builder = ChartBuilder::on(area);
    builder.margin(10);
    if text {
        builder
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(35)
            .y_label_area_size(55);
    }
    let floor = -top * 0.04 * (outcome.runs.len() as f64 + 1.0);
    let mut chart = builder
        .build_cartesian_2d(0.0..hours.max(1.0 / 60.0), floor..top)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("hours from the start of the trace")
            .y_desc("requests per second");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(demand, BLACK.stroke_width(1)))
        .map_err(err)?
        .label("demand")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, run) in outcome.runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let capacity: Vec<(f64, f64)> = (0..buckets)
            .map(|b| {
                let slice = &run.ready[b * bucket..((b + 1) * bucket).min(n)];
                let low = slice.iter().copied().min().unwrap_or(0);
                ((b * bucket) as f64 / 60.0, low as f64 * capacity_rps)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(capacity, color.stroke_width(1)))
            .map_err(err)?
            .label(format!("{} ready capacity", run.policy))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        let lane = -top * 0.04 * (i as f64 + 1.0);
        let marks = outcome
            .demand_rps
            .iter()
            .zip(&run.ready)
            .enumerate()
            .filter(|(_, (d, r))| **d > **r as f64 * capacity_rps + 1e-9)
            .map(|(m, _)| Circle::new((m as f64 / 60.0, lane), 2, color.filled()));
        chart.draw_series(marks).map_err(err)?;
    }
    if text {
        draw_legend(&mut chart)?;
    }
    Ok(())
}

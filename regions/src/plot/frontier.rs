//! Frontier of a `prescale replay --sweep`: each point's cost (against the oracle) across, its
//! violation minutes up, one line per policy through its points in order of cost, each point
//! labelled with its setting (SVG). A point below and to the left of another dominates it.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{draw_figure, draw_legend, Figure, COLORS};
use crate::error::Result;
use crate::replay::sweep::{FrontierPoint, SweepOutcome};

/// Draw the frontier of `outcome` to `path` (`.svg` or `.png`).
pub fn draw_frontier(outcome: &SweepOutcome, title: &str, path: &Path) -> Result<()> {
    draw_figure(&Frontier { outcome, title }, path)
}

struct Frontier<'a> {
    outcome: &'a SweepOutcome,
    title: &'a str,
}

impl Figure for Frontier<'_> {
    fn render<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        area.fill(&WHITE).map_err(err)?;
        let points = &self.outcome.points;
        let costs = points
            .iter()
            .map(|p| p.cost_vs_oracle)
            .filter(|c| c.is_finite());
        let (low, high) = costs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
            (lo.min(c), hi.max(c))
        });
        let (low, high) = if low.is_finite() {
            (low, high)
        } else {
            (1.0, 1.0)
        };
        let pad = ((high - low) * 0.08).max(0.02);
        let top = points
            .iter()
            .map(|p| p.slo_violation_minutes as f64)
            .fold(1.0, f64::max)
            * 1.12;
        let mut builder = ChartBuilder::on(area);
        builder.margin(15);
        if text {
            builder
                .caption(self.title, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d((low - pad)..(high + pad), 0.0..top)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("cost: instance-minutes ÷ the oracle's")
                .y_desc("violation minutes");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        let policies: [(&str, Vec<&FrontierPoint>); 2] = [
            (
                "predictive (slo_target)",
                self.outcome.predictive().collect(),
            ),
            (
                "reactive HPA (target utilization)",
                self.outcome.reactive().collect(),
            ),
        ];
        for (i, (name, mut line)) in policies.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            line.retain(|p| p.cost_vs_oracle.is_finite());
            line.sort_by(|a, b| a.cost_vs_oracle.total_cmp(&b.cost_vs_oracle));
            let xy = |p: &&FrontierPoint| (p.cost_vs_oracle, p.slo_violation_minutes as f64);
            chart
                .draw_series(LineSeries::new(line.iter().map(xy), color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(line.iter().map(|p| Circle::new(xy(p), 4, color.filled())))
                .map_err(err)?;
            if text {
                // Points that coincide share one label ("0.9/0.93").
                let mut labels: Vec<((f64, f64), String)> = Vec::new();
                for p in &line {
                    match labels.iter_mut().find(|(at, _)| *at == xy(p)) {
                        Some((_, label)) => label.push_str(&format!("/{}", p.value)),
                        None => labels.push((xy(p), format!("{}", p.value))),
                    }
                }
                chart
                    .draw_series(labels.into_iter().map(|(at, label)| {
                        Text::new(label, at, ("sans-serif", 13).into_font().color(&color))
                    }))
                    .map_err(err)?;
            }
        }
        if text {
            draw_legend(&mut chart)?;
        }
        Ok(())
    }
}

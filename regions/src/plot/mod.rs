//! Plots of replays, as SVG or PNG chosen by the file's extension: [`timeline`] (demand and each
//! policy's ready capacity over time) and [`frontier`] (cost against violation minutes of a
//! `--sweep`). PNG carries no text (no font is bundled); SVG has the titles, axes and legends.

pub mod frontier;
pub mod timeline;

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub use frontier::draw_frontier;
pub use timeline::draw;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 600;
/// Line colours, distinguishable with the common colour-vision deficiencies.
const COLORS: [RGBColor; 3] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

/// Something drawable on any plotters backend.
trait Figure {
    /// Draw on `area`; `text` is false where no font is available (PNG).
    fn render<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> Result<(), String>;
}

/// A chart with numbers on both axes, as every figure here draws.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The legend of the chart's labelled series, top right.
fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draw `figure` to `path`, choosing the backend by the extension (`.svg` or `.png`).
fn draw_figure(figure: &impl Figure, path: &Path) -> Result<()> {
    let fail = |message: String| Error::Plot {
        path: path.to_path_buf(),
        message,
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("svg") => {
            let area = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            figure.render(&area, true).map_err(fail)?;
            area.present().map_err(|e| fail(e.to_string()))
        }
        Some("png") => {
            let area = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            figure.render(&area, false).map_err(fail)?;
            area.present().map_err(|e| fail(e.to_string()))
        }
        _ => Err(fail("the file name must end in .svg or .png".into())),
    }
}

//! Capacity reports (`prescale report` and the forecaster's `GET /api/v1/report`): per region,
//! fleet and profile over a period, demand against the forecast recorded at the lead time and
//! against the ready capacity; forecast accuracy (MASE against seasonal-naive, interval
//! coverage); SLO-violation minutes and the unserved share; cost in instance-hours and money;
//! the profiles behind the peak; the scaling decisions with their reasons; and the plan's
//! outlook of the next 24 hours.
//!
//! * [`model`]: the report as data (serde both ways: a forecaster serves it as JSON, the CLI
//!   reads it back, [`merge`]s several regions and renders them);
//! * [`source`]: builds it from a forecaster's database; [`metrics`] holds the arithmetic;
//! * [`html`] (self-contained, charts from [`chart`] as inline SVG) and [`markdown`] render it;
//! * [`time`]: `--from`/`--to` parsing and clock text; [`progress`]: the terminal bar.
//!
//! Invariant: a report's numbers come from the stored history only, so the same database and
//! period give the same report wherever it is built.

pub mod chart;
pub mod html;
pub mod markdown;
pub(crate) mod metrics;
pub mod model;
pub mod progress;
pub mod source;
#[cfg(test)]
mod tests;
pub(crate) mod text;
pub mod time;

use std::path::PathBuf;

pub use model::{Report, REPORT_SCHEMA};
pub use source::{build, Database};

/// Which regions a report covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionSelection {
    One(String),
    All,
}

impl RegionSelection {
    /// `all` or a region name (the admin API's `region` parameter).
    pub fn parse(value: &str) -> Self {
        if value == "all" {
            RegionSelection::All
        } else {
            RegionSelection::One(value.to_string())
        }
    }

    pub fn as_param(&self) -> &str {
        match self {
            RegionSelection::One(region) => region,
            RegionSelection::All => "all",
        }
    }
}

/// What to report on: regions and the period `[from, to)` (unix seconds, node time; `None`:
/// from the first or to the end of the last recorded minute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRequest {
    pub regions: RegionSelection,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Json,
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> Result<String, ReportError> {
    match format {
        Format::Html => html::render(report),
        Format::Markdown => Ok(markdown::render(report)),
        // Compact: a month of minutes is 16 MB so, twice that indented (`jq .` indents it).
        Format::Json => serde_json::to_string(report)
            .map(|mut json| {
                json.push('\n');
                json
            })
            .map_err(ReportError::Json),
    }
}

/// One report of the regions of several (each region once), as several forecasters' answers
/// make one global report.
pub fn merge(reports: Vec<Report>) -> Result<Report, ReportError> {
    let mut iter = reports.into_iter();
    let Some(mut merged) = iter.next() else {
        return Err(ReportError::Merge("no report to merge".into()));
    };
    check_schema(&merged)?;
    for report in iter {
        check_schema(&report)?;
        for region in report.regions {
            if merged.regions.iter().any(|r| r.region == region.region) {
                return Err(ReportError::DuplicateRegion {
                    region: region.region,
                });
            }
            merged.regions.push(region);
        }
        if merged.notice.is_none() {
            merged.notice = report.notice;
        }
    }
    merged.regions.sort_by(|a, b| a.region.cmp(&b.region));
    merged.totals = model::Totals::default();
    for region in &merged.regions {
        merged.totals.add(&region.totals);
    }
    if merged.totals.fleet_minutes > 0 {
        merged.notice = None;
    }
    Ok(merged)
}

fn check_schema(report: &Report) -> Result<(), ReportError> {
    if report.schema != REPORT_SCHEMA {
        return Err(ReportError::Schema {
            found: report.schema,
        });
    }
    Ok(())
}

/// What can go wrong building, merging or rendering a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The database could not be opened or read as a forecaster's.
    #[error("cannot read {}: {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
    /// A read of an open database failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The region has no recorded minutes.
    #[error("no capacity history for region `{region}` (regions recorded: {known})")]
    UnknownRegion { region: String, known: String },
    /// The period is empty or backwards.
    #[error("{0}")]
    Period(String),
    /// Two reports both hold this region.
    #[error("region `{region}` comes from more than one source")]
    DuplicateRegion { region: String },
    /// Reports that cannot be merged.
    #[error("{0}")]
    Merge(String),
    /// A report of a schema this build does not read.
    #[error("report schema {found}, but this build reads schema {REPORT_SCHEMA}")]
    Schema { found: u32 },
    #[error("cannot draw the chart of {fleet}: {message}")]
    Chart { fleet: String, message: String },
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

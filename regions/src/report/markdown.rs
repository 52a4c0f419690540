//! The report as Markdown: the same figures and tables as the HTML (charts are in the HTML
//! and the JSON's minute series only: Markdown has no self-contained way to carry them).

use std::fmt::Write;

use super::model::{Accuracy, FleetReport, RegionReport, Report, Totals};
use super::text::{int, minutes, money, num, opt, outlook_range, outlook_rows, percent, ratio};
use super::time::clock_text;

/// Escapes what would break a table cell or start Markdown formatting.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '#' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("# Capacity report\n\n");
    let period = match (report.requested_from, report.requested_to) {
        (None, None) => "each region's whole recorded span".to_string(),
        (from, to) => format!(
            "{} to {}",
            from.map_or("the first recorded minute".into(), clock_text),
            to.map_or("the last recorded minute".into(), clock_text)
        ),
    };
    let _ = writeln!(
        out,
        "Period: {period}. Times are UTC clock text of node time. Report schema {}. \
         Charts: see the HTML report.\n",
        report.schema
    );
    if let Some(notice) = &report.notice {
        let _ = writeln!(out, "> **{}**\n", cell(notice));
    }
    if !report.regions.is_empty() {
        out.push_str("## Summary\n\n| region | fleet | fleet-minutes | requests | violation minutes | unserved | instance-minutes | instance-hours | cost |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for region in &report.regions {
            for fleet in &region.fleets {
                totals_row(
                    &mut out,
                    &cell(&region.region),
                    &cell(&fleet.fleet),
                    &fleet.totals(),
                );
            }
            if region.fleets.len() > 1 {
                totals_row(
                    &mut out,
                    &cell(&region.region),
                    "all fleets",
                    &region.totals,
                );
            }
        }
        if report.regions.len() > 1 {
            totals_row(&mut out, "all regions", "", &report.totals);
        }
        out.push('\n');
    }
    for region in &report.regions {
        region_section(&mut out, region);
    }
    out.push_str("## Definitions\n\n");
    for d in &report.definitions {
        let _ = writeln!(out, "* **{}**: {}", cell(&d.term), cell(&d.meaning));
    }
    out
}

fn totals_row(out: &mut String, region: &str, fleet: &str, t: &Totals) {
    let _ = writeln!(
        out,
        "| {region} | {fleet} | {} | {} | {} | {} | {} | {} | {} |",
        int(t.fleet_minutes),
        int(t.requests),
        int(t.violation_minutes),
        percent(t.unserved_share),
        int(t.instance_minutes),
        num(t.instance_hours, 2),
        money(t.cost)
    );
}

fn region_section(out: &mut String, region: &RegionReport) {
    let _ = writeln!(out, "## Region {}\n", cell(&region.region));
    let recorded = match (region.recorded_first_minute, region.recorded_last_minute) {
        (Some(first), Some(last)) => format!("{} to {}", clock_text(first), clock_text(last + 60)),
        _ => "nothing".into(),
    };
    let _ = writeln!(
        out,
        "Period {} to {} ({} minutes); the history holds {recorded}.\n",
        clock_text(region.from),
        clock_text(region.to),
        int(region.to.saturating_sub(region.from) / 60)
    );
    if let Some(notice) = &region.notice {
        let _ = writeln!(out, "> **{}**\n", cell(notice));
    }
    for fleet in &region.fleets {
        fleet_section(out, fleet);
    }
}

fn accuracy_text(a: &Accuracy) -> (String, String) {
    let mase = match a.mase {
        Some(m) => format!("{} over {} minutes", ratio(Some(m)), int(a.mase_minutes)),
        None => a.note.clone().unwrap_or_else(|| "–".into()),
    };
    let coverage = match a.interval_coverage {
        Some(c) => format!(
            "{} of {} minutes",
            percent(Some(c)),
            int(a.coverage_minutes)
        ),
        None => "no forecast recorded".into(),
    };
    (mase, coverage)
}

fn fleet_section(out: &mut String, fleet: &FleetReport) {
    let _ = writeln!(out, "### Fleet {}\n", cell(&fleet.fleet));
    if let Some(notice) = &fleet.notice {
        let _ = writeln!(out, "> **{}**\n", cell(notice));
    }
    let m = &fleet.minutes;
    let d = &fleet.demand;
    let c = &fleet.cost;
    let (mase, coverage) = accuracy_text(&fleet.accuracy);
    let rows = [
        (
            "minutes recorded",
            format!(
                "{} ({} with demand, {} absent, {} pending)",
                int(m.recorded),
                int(m.with_demand),
                int(m.absent),
                int(m.pending)
            ),
        ),
        ("requests", int(d.requests)),
        (
            "busiest minute",
            d.peak_minute.map_or("–".into(), |at| {
                format!("{} requests at {}", int(d.peak_requests), clock_text(at))
            }),
        ),
        (
            "mean requests per minute",
            opt(d.mean_requests_per_minute, 1),
        ),
        ("SLO-violation minutes", int(fleet.slo.violation_minutes)),
        (
            "unserved",
            format!(
                "{} of the demand ({} requests)",
                percent(fleet.slo.unserved_share),
                num(fleet.slo.unserved_requests, 1)
            ),
        ),
        (
            "instance-minutes",
            format!(
                "{} ({} warming, {} ready, {} draining)",
                int(c.instance_minutes),
                int(c.warming_minutes),
                int(c.ready_minutes),
                int(c.draining_minutes)
            ),
        ),
        ("instance-hours", num(c.instance_hours, 2)),
        ("cost", money(c.money)),
        (
            "forecast lead time",
            fleet.lead_minutes.map_or("–".into(), minutes),
        ),
        ("MASE (vs. same minute a day earlier)", mase),
        (
            "mean absolute error: forecast / seasonal-naive",
            format!(
                "{} / {}",
                opt(fleet.accuracy.mean_absolute_error, 2),
                opt(fleet.accuracy.seasonal_naive_mean_absolute_error, 2)
            ),
        ),
        ("interval coverage", coverage),
    ];
    out.push_str("| figure | value |\n|---|---:|\n");
    for (label, value) in rows {
        let _ = writeln!(out, "| {label} | {} |", cell(&value));
    }
    out.push('\n');

    out.push_str("#### Profiles\n\n");
    if fleet.profiles.is_empty() {
        out.push_str("No profile recorded for this fleet.\n\n");
    } else {
        out.push_str("| profile | revenue weight | requests | share | at the peak | share of the peak | weighted peak | MASE | interval coverage |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n");
        for p in &fleet.profiles {
            let (mase, coverage) = accuracy_text(&p.accuracy);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&p.profile),
                opt(p.revenue_weight, 2),
                int(p.requests),
                percent(p.share_of_requests),
                int(p.peak_requests),
                percent(p.share_of_peak),
                opt(p.revenue_weighted_peak, 1),
                cell(&mase),
                cell(&coverage)
            );
        }
        out.push('\n');
        if let Some(peak) = &fleet.peak {
            let list = |names: &[String]| {
                if names.is_empty() {
                    "no profile had requests".to_string()
                } else {
                    cell(&names.join(", "))
                }
            };
            let _ = writeln!(
                out,
                "The busiest minute, {} ({} requests), by revenue weight: {}; by share of the peak: {}.\n",
                clock_text(peak.minute),
                int(peak.requests),
                list(&peak.by_revenue_weight),
                list(&peak.by_share_of_peak)
            );
        }
    }

    out.push_str("#### Scaling decisions\n\n");
    if fleet.decisions.is_empty() {
        out.push_str("No scaling decision in the period.\n\n");
    } else {
        out.push_str("| time | action | reason |\n|---|---|---|\n");
        for d in &fleet.decisions {
            let _ = writeln!(
                out,
                "| {}:{:02} | {} | {} |",
                clock_text(d.at_ms / 1000),
                d.at_ms / 1000 % 60,
                cell(&d.action),
                cell(&d.reason)
            );
        }
        out.push('\n');
    }

    out.push_str("#### The next 24 hours, per the plan\n\n");
    match &fleet.outlook {
        None => out.push_str("No outlook recorded yet.\n\n"),
        Some(o) if o.points.is_empty() => {
            let _ = writeln!(
                out,
                "The outlook made at {} has no points (no forecast yet).\n",
                clock_text(o.issued_at)
            );
        }
        Some(o) => {
            let range = outlook_range(&o.points)
                .map(|(fewest, most, at)| {
                    format!(
                        " The plan's sizing gives {fewest}–{most} instances, the most first at {}.",
                        clock_text(at)
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "Made at {}: every ten minutes of the coming hour, then every hour.{range}\n",
                clock_text(o.issued_at)
            );
            out.push_str("| minute | forecast | interval | SLO bound | instances |\n|---|---:|---:|---:|---:|\n");
            for p in outlook_rows(&o.points, o.issued_at) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} – {} | {} | {} |",
                    clock_text(p.minute),
                    num(p.point, 1),
                    num(p.lower, 1),
                    num(p.upper, 1),
                    num(p.slo_upper, 1),
                    p.instances
                );
            }
            out.push('\n');
        }
    }
}

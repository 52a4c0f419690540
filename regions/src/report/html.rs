//! The report as one self-contained HTML page: inline CSS, one inline SVG chart per fleet, no
//! scripts and no external assets, laid out to read in a browser and to print.

use std::fmt::Write;

use super::chart;
use super::model::{Accuracy, FleetReport, RegionReport, Report, Totals};
use super::text::{int, minutes, money, num, opt, outlook_range, outlook_rows, percent, ratio};
use super::time::clock_text;
use super::ReportError;

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #111;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #333; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eee; }
.notice { border-left: 4px solid #d55e00; background: #fff4ec; padding: 0.5em 0.9em; }
figure.chart { margin: 0.6em 0; }
figure.chart svg { width: 100%; height: auto; border: 1px solid #ddd; }
figure.chart figcaption { font-size: 0.85em; color: #444; }
dl dt { font-weight: 600; margin-top: 0.5em; }
dl dd { margin-left: 1.5em; }
.muted { color: #555; }
@media print {
  body { max-width: none; margin: 0; font-size: 10pt; }
  section.fleet { break-before: page; }
  figure.chart, table { break-inside: avoid; }
  figure.chart svg { border: none; }
}
";

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(report: &Report) -> Result<String, ReportError> {
    let mut out = String::with_capacity(64 * 1024);
    let regions: Vec<&str> = report.regions.iter().map(|r| r.region.as_str()).collect();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>prescale capacity report{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Capacity report</h1>\n",
        if regions.is_empty() {
            String::new()
        } else {
            format!(": {}", esc(&regions.join(", ")))
        }
    );
    let _ = writeln!(
        out,
        "<p class=\"muted\">Period: {}. Times are UTC clock text of node time (a node run with \
         <code>--speedup</code> keeps a clock ahead of the wall). Report schema {}.</p>",
        period_text(report),
        report.schema
    );
    if let Some(notice) = &report.notice {
        let _ = writeln!(out, "<p class=\"notice\" id=\"notice\">{}</p>", esc(notice));
    }
    if !report.regions.is_empty() {
        summary(&mut out, report);
    }
    for region in &report.regions {
        region_section(&mut out, region)?;
    }
    out.push_str("<section id=\"definitions\">\n<h2>Definitions</h2>\n<dl>\n");
    for d in &report.definitions {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", esc(&d.term), esc(&d.meaning));
    }
    out.push_str("</dl>\n</section>\n</body>\n</html>\n");
    Ok(out)
}

fn period_text(report: &Report) -> String {
    match (report.requested_from, report.requested_to) {
        (None, None) => "each region's whole recorded span".into(),
        (from, to) => format!(
            "{} to {}",
            from.map_or("the first recorded minute".into(), clock_text),
            to.map_or("the last recorded minute".into(), clock_text)
        ),
    }
}

fn totals_cells(out: &mut String, t: &Totals) {
    let _ = write!(
        out,
        "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
        int(t.fleet_minutes),
        int(t.requests),
        int(t.violation_minutes),
        percent(t.unserved_share),
        int(t.instance_minutes),
        num(t.instance_hours, 2),
        money(t.cost)
    );
}

const TOTALS_HEAD: &str = "<th class=\"n\">fleet-minutes</th><th class=\"n\">requests</th>\
    <th class=\"n\">violation minutes</th><th class=\"n\">unserved</th>\
    <th class=\"n\">instance-minutes</th><th class=\"n\">instance-hours</th><th class=\"n\">cost</th>";

fn summary(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "<section id=\"summary\">\n<h2>Summary</h2>\n<table>\n<thead><tr><th>region</th><th>fleet</th>{TOTALS_HEAD}</tr></thead>\n<tbody>"
    );
    for region in &report.regions {
        for fleet in &region.fleets {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td>",
                esc(&region.region),
                fleet_anchor(&region.region, &fleet.fleet),
                esc(&fleet.fleet)
            );
            totals_cells(out, &fleet.totals());
            out.push_str("</tr>\n");
        }
        if region.fleets.len() > 1 {
            let _ = write!(
                out,
                "<tr><th>{}</th><th>all fleets</th>",
                esc(&region.region)
            );
            totals_cells(out, &region.totals);
            out.push_str("</tr>\n");
        }
    }
    if report.regions.len() > 1 {
        out.push_str("<tr><th>all regions</th><th></th>");
        totals_cells(out, &report.totals);
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn fleet_anchor(region: &str, fleet: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    format!("fleet-{}-{}", clean(region), clean(fleet))
}

fn region_section(out: &mut String, region: &RegionReport) -> Result<(), ReportError> {
    let _ = writeln!(
        out,
        "<section class=\"region\" id=\"region-{}\">\n<h2>Region {}</h2>",
        esc(&region.region),
        esc(&region.region)
    );
    let recorded = match (region.recorded_first_minute, region.recorded_last_minute) {
        (Some(first), Some(last)) => format!("{} to {}", clock_text(first), clock_text(last + 60)),
        _ => "nothing".into(),
    };
    let _ = writeln!(
        out,
        "<p>Period {} to {} ({} minutes); the history holds {recorded}.</p>",
        clock_text(region.from),
        clock_text(region.to),
        int(region.to.saturating_sub(region.from) / 60)
    );
    if let Some(notice) = &region.notice {
        let _ = writeln!(out, "<p class=\"notice\">{}</p>", esc(notice));
    }
    for fleet in &region.fleets {
        fleet_section(out, region, fleet)?;
    }
    out.push_str("</section>\n");
    Ok(())
}

fn row(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td class=\"n\">{value}</td></tr>",
        esc(label)
    );
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

fn fleet_section(
    out: &mut String,
    region: &RegionReport,
    fleet: &FleetReport,
) -> Result<(), ReportError> {
    let _ = writeln!(
        out,
        "<section class=\"fleet\" id=\"{}\">\n<h3>Fleet {} <span class=\"muted\">(region {})</span></h3>",
        fleet_anchor(&region.region, &fleet.fleet),
        esc(&fleet.fleet),
        esc(&region.region)
    );
    if let Some(notice) = &fleet.notice {
        let _ = writeln!(out, "<p class=\"notice\">{}</p>", esc(notice));
    }
    match chart::fleet_chart(&region.region, fleet, region.from, region.to)? {
        Some(svg) => {
            let label = format!(
                "Chart of fleet {} in region {}: demand, forecast and ready capacity",
                fleet.fleet, region.region
            );
            let svg = svg.replacen(
                "<svg ",
                &format!("<svg role=\"img\" aria-label=\"{}\" ", esc(&label)),
                1,
            );
            let _ = writeln!(
                out,
                "<figure class=\"chart\" data-region=\"{}\" data-fleet=\"{}\">\n{svg}\n<figcaption>Demand \
                 (requests per minute, black), the forecast recorded {} before each minute \
                 (dashed) with its interval (band), and the ready capacity (steps). Marks under \
                 the axis: SLO-violation minutes, and minutes without demand (absent or pending).</figcaption>\n</figure>",
                esc(&region.region),
                esc(&fleet.fleet),
                fleet
                    .lead_minutes
                    .map_or("at the lead time".into(), minutes)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "<p class=\"notice\">No chart: {} recorded minute{} in the period, too few to draw.</p>",
                fleet.series.len(),
                if fleet.series.len() == 1 { "" } else { "s" }
            );
        }
    }
    let m = &fleet.minutes;
    let d = &fleet.demand;
    let c = &fleet.cost;
    let (mase, coverage) = accuracy_text(&fleet.accuracy);
    out.push_str("<table class=\"figures\">\n<tbody>\n");
    row(
        out,
        "minutes recorded",
        &format!(
            "{} ({} with demand, {} absent, {} pending)",
            int(m.recorded),
            int(m.with_demand),
            int(m.absent),
            int(m.pending)
        ),
    );
    row(out, "requests", &int(d.requests));
    row(
        out,
        "busiest minute",
        &d.peak_minute.map_or("–".into(), |at| {
            format!("{} requests at {}", int(d.peak_requests), clock_text(at))
        }),
    );
    row(
        out,
        "mean requests per minute",
        &opt(d.mean_requests_per_minute, 1),
    );
    row(
        out,
        "SLO-violation minutes",
        &int(fleet.slo.violation_minutes),
    );
    row(
        out,
        "unserved",
        &format!(
            "{} of the demand ({} requests)",
            percent(fleet.slo.unserved_share),
            num(fleet.slo.unserved_requests, 1)
        ),
    );
    row(
        out,
        "instance-minutes",
        &format!(
            "{} ({} warming, {} ready, {} draining)",
            int(c.instance_minutes),
            int(c.warming_minutes),
            int(c.ready_minutes),
            int(c.draining_minutes)
        ),
    );
    row(out, "instance-hours", &num(c.instance_hours, 2));
    row(out, "cost", &money(c.money));
    row(
        out,
        "forecast lead time",
        &fleet.lead_minutes.map_or("–".into(), minutes),
    );
    row(out, "MASE (vs. same minute a day earlier)", &esc(&mase));
    row(
        out,
        "mean absolute error: forecast / seasonal-naive",
        &format!(
            "{} / {}",
            opt(fleet.accuracy.mean_absolute_error, 2),
            opt(fleet.accuracy.seasonal_naive_mean_absolute_error, 2)
        ),
    );
    row(out, "interval coverage", &esc(&coverage));
    out.push_str("</tbody>\n</table>\n");

    profiles(out, fleet);
    decisions(out, fleet);
    outlook(out, fleet);
    out.push_str("</section>\n");
    Ok(())
}

fn profiles(out: &mut String, fleet: &FleetReport) {
    out.push_str("<h4>Profiles</h4>\n");
    if fleet.profiles.is_empty() {
        out.push_str("<p>No profile recorded for this fleet.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"profiles\">\n<thead><tr><th>profile</th><th class=\"n\">revenue weight</th>\
         <th class=\"n\">requests</th><th class=\"n\">share</th><th class=\"n\">at the peak</th>\
         <th class=\"n\">share of the peak</th><th class=\"n\">weighted peak</th><th>MASE</th>\
         <th>interval coverage</th></tr></thead>\n<tbody>\n",
    );
    for p in &fleet.profiles {
        let (mase, coverage) = accuracy_text(&p.accuracy);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.profile),
            opt(p.revenue_weight, 2),
            int(p.requests),
            percent(p.share_of_requests),
            int(p.peak_requests),
            percent(p.share_of_peak),
            opt(p.revenue_weighted_peak, 1),
            esc(&mase),
            esc(&coverage)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if let Some(peak) = &fleet.peak {
        let _ = writeln!(
            out,
            "<p class=\"peak\">The busiest minute, {} ({} requests), by revenue weight: {}; by share of the peak: {}.</p>",
            clock_text(peak.minute),
            int(peak.requests),
            esc(&list(&peak.by_revenue_weight)),
            esc(&list(&peak.by_share_of_peak))
        );
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no profile had requests".into()
    } else {
        names.join(", ")
    }
}

fn decisions(out: &mut String, fleet: &FleetReport) {
    out.push_str("<h4>Scaling decisions</h4>\n");
    if fleet.decisions.is_empty() {
        out.push_str("<p>No scaling decision in the period.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"decisions\">\n<thead><tr><th>time</th><th>action</th><th>reason</th></tr></thead>\n<tbody>\n",
    );
    for d in &fleet.decisions {
        let _ = writeln!(
            out,
            "<tr><td>{}:{:02}</td><td>{}</td><td>{}</td></tr>",
            clock_text(d.at_ms / 1000),
            d.at_ms / 1000 % 60,
            esc(&d.action),
            esc(&d.reason)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn outlook(out: &mut String, fleet: &FleetReport) {
    out.push_str("<h4>The next 24 hours, per the plan</h4>\n");
    let Some(outlook) = &fleet.outlook else {
        out.push_str("<p>No outlook recorded yet.</p>\n");
        return;
    };
    if outlook.points.is_empty() {
        let _ = writeln!(
            out,
            "<p>The outlook made at {} has no points (no forecast yet).</p>",
            clock_text(outlook.issued_at)
        );
        return;
    }
    let range = outlook_range(&outlook.points)
        .map(|(fewest, most, at)| {
            format!(
                " The plan's sizing gives {fewest}–{most} instances, the most first at {}.",
                clock_text(at)
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "<p>Made at {}: the forecast (requests per minute) every ten minutes of the coming hour, \
         then every hour, and the instances the plan's sizing gives it (the JSON has every minute \
         of the hour).{range}</p>",
        clock_text(outlook.issued_at)
    );
    out.push_str(
        "<table class=\"outlook\">\n<thead><tr><th>minute</th><th class=\"n\">forecast</th>\
         <th class=\"n\">interval</th><th class=\"n\">SLO bound</th><th class=\"n\">instances</th></tr></thead>\n<tbody>\n",
    );
    for p in outlook_rows(&outlook.points, outlook.issued_at) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} – {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            clock_text(p.minute),
            num(p.point, 1),
            num(p.lower, 1),
            num(p.upper, 1),
            num(p.slo_upper, 1),
            p.instances
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

//! A report built from a database filled through the same writers the live driver uses: its
//! numbers, its renderings and its JSON round trip.

use std::path::Path;

use crate::history::{
    FleetCapacity, FleetDemand, FleetProfileRecord, ForecastRecord, History, HistoryBatch, Outlook,
    OutlookPoint, SubjectForecast,
};
use crate::ledger::{DecisionRecord, Ledger};
use crate::store::SeriesStore;

use super::*;

const DAY: u64 = 86_400;
/// A minute start well after the epoch (2026-12-01 10:00 UTC).
const T0: u64 = 1_796_119_200;

fn forecast(point: f64) -> ForecastRecord {
    ForecastRecord {
        issued_at: 0,
        horizon_minutes: 2,
        point,
        lower: point * 0.8,
        upper: point * 1.2,
        slo_upper: point * 1.4,
        model: "seasonal".into(),
    }
}

/// Region `eu`, fleet `web` with profiles `interactive` (weight 3) and `batch` (weight 1):
/// a day of stored history before `T0`, then 10 recorded minutes from `T0`.
fn fill(path: &Path) {
    let mut store = SeriesStore::open(path).expect("store");
    let mut history = History::open(path).expect("history");
    let ledger = Ledger::open(path).expect("ledger");
    history
        .record_fleet_profiles(
            "eu",
            "web",
            &[
                FleetProfileRecord {
                    profile: "interactive".into(),
                    revenue_weight: 3.0,
                },
                FleetProfileRecord {
                    profile: "batch".into(),
                    revenue_weight: 1.0,
                },
            ],
        )
        .expect("profiles");
    // interactive: 100 a minute, batch: 20 a minute, both a day earlier and now, except the
    // peak minute 5 (interactive 100, batch 300) and minute 7 absent (no sketch).
    let day_before: Vec<(u64, u64)> = (0..10).map(|m| (T0 - DAY + m * 60, 90)).collect();
    store
        .seed_history("eu", "interactive", "web", &day_before)
        .expect("seed");
    let interactive: Vec<(u64, u64)> = (0..10)
        .filter(|&m| m != 7)
        .map(|m| (T0 + m * 60, 100))
        .collect();
    let batch: Vec<(u64, u64)> = (0..10)
        .filter(|&m| m != 7)
        .map(|m| (T0 + m * 60, if m == 5 { 300 } else { 20 }))
        .collect();
    store
        .seed_history("eu", "interactive", "web", &interactive)
        .expect("seed");
    // Seeding leaves covered minutes alone: batch's rows are added beside interactive's.
    drop(store);
    let conn = rusqlite::Connection::open(path).expect("sqlite");
    for (minute, requests) in batch {
        conn.execute(
            "INSERT INTO series (region, origin, profile, fleet, minute, requests, errors, bytes_in, bytes_out, latency, users)
             SELECT region, origin, 'batch', fleet, minute, ?2, 0, 0, 0, latency, users FROM series
             WHERE profile = 'interactive' AND minute = ?1",
            rusqlite::params![minute as i64, requests as i64],
        )
        .expect("batch row");
    }
    let mut batch_record = HistoryBatch::default();
    for m in 0..10u64 {
        let minute = T0 + m * 60;
        batch_record.capacity.push(FleetCapacity {
            region: "eu".into(),
            fleet: "web".into(),
            minute,
            ready: 1,
            warming: u32::from(m == 4),
            draining: 0,
            planned: 1 + u32::from(m == 4),
            rps_per_instance: 2.0,
            cost_per_instance_hour: 0.6,
        });
        batch_record.forecasts.push(SubjectForecast {
            region: "eu".into(),
            fleet: Some("web".into()),
            profile: None,
            minute,
            forecast: forecast(110.0),
        });
        batch_record.forecasts.push(SubjectForecast {
            region: "eu".into(),
            fleet: None,
            profile: Some("interactive".into()),
            minute,
            forecast: forecast(95.0),
        });
        // Minute 9 is recorded but not handed over yet.
        if m < 9 {
            let requests = (m != 7).then(|| 100 + if m == 5 { 300 } else { 20 });
            batch_record.demand.push(FleetDemand {
                region: "eu".into(),
                fleet: "web".into(),
                minute,
                requests,
            });
        }
    }
    batch_record.outlooks.push(Outlook {
        region: "eu".into(),
        fleet: "web".into(),
        issued_at: T0 + 540,
        points: vec![OutlookPoint {
            minute: T0 + 600,
            point: 120.0,
            lower: 100.0,
            upper: 140.0,
            slo_upper: 160.0,
            instances: 2,
        }],
    });
    history.record(&batch_record).expect("record");
    ledger
        .log_decision(&DecisionRecord {
            at_ms: (T0 + 240) * 1000,
            region: "eu".into(),
            fleet: "web".into(),
            action: "scale_up 1→2".into(),
            reason: "predictive 1→2: p99 forecast <high> & rising".into(),
        })
        .expect("decision");
}

fn all() -> ReportRequest {
    ReportRequest {
        regions: RegionSelection::All,
        from: None,
        to: None,
    }
}

#[test]
fn figures_follow_the_stored_minutes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("fc.db");
    fill(&path);
    let db = Database::open(&path).expect("open");
    let mut calls = Vec::new();
    let report = build(&db, &all(), &mut |done, total| calls.push((done, total))).expect("build");
    assert_eq!(calls.last(), Some(&(10, 10)));
    assert_eq!(report.regions.len(), 1);
    let region = &report.regions[0];
    assert_eq!((region.from, region.to), (T0, T0 + 600));
    let fleet = &region.fleets[0];
    assert_eq!(fleet.minutes.recorded, 10);
    assert_eq!(fleet.minutes.with_demand, 8);
    assert_eq!(fleet.minutes.absent, 1);
    assert_eq!(fleet.minutes.pending, 1);
    // 7 minutes of 120 and one of 400.
    assert_eq!(fleet.demand.requests, 7 * 120 + 400);
    assert_eq!(fleet.demand.peak_minute, Some(T0 + 300));
    // Capacity 1 × 2 req/s × 60 = 120: only the peak minute is over, by 280.
    assert_eq!(fleet.slo.violation_minutes, 1);
    assert_eq!(fleet.slo.unserved_requests, 280.0);
    assert_eq!(fleet.cost.instance_minutes, 11);
    assert!((fleet.cost.money - 11.0 * 0.6 / 60.0).abs() < 1e-12);
    // MASE: the forecast (110) is 10 off on 7 minutes and 290 on the peak; a day earlier
    // the fleet had 90 (interactive only): 30 off on 7 minutes and 310 on the peak.
    let mase = fleet.accuracy.mase.expect("mase");
    assert!(
        (mase - (7.0 * 10.0 + 290.0) / (7.0 * 30.0 + 310.0)).abs() < 1e-12,
        "{mase}"
    );
    assert_eq!(fleet.accuracy.mase_minutes, 8);
    // [88, 132] holds 120 but not 400.
    assert_eq!(fleet.accuracy.interval_coverage, Some(7.0 / 8.0));
    // Profiles from the store (minute 9 included), most requests first.
    let names: Vec<&str> = fleet.profiles.iter().map(|p| p.profile.as_str()).collect();
    assert_eq!(names, ["interactive", "batch"]);
    assert_eq!(fleet.profiles[0].requests, 900);
    assert_eq!(fleet.profiles[1].requests, 8 * 20 + 300);
    assert_eq!(fleet.profiles[1].peak_requests, 300);
    assert_eq!(fleet.profiles[1].share_of_peak, Some(0.75));
    let peak = fleet.peak.as_ref().expect("peak");
    assert_eq!(peak.by_revenue_weight, ["interactive", "batch"]);
    assert_eq!(peak.by_share_of_peak, ["batch", "interactive"]);
    // interactive's forecast of 95 against 100 over 8 handed minutes, naive 90 → MASE 0.5.
    assert_eq!(fleet.profiles[0].accuracy.mase, Some(0.5));
    assert!(fleet.profiles[1].accuracy.note.is_some());
    assert_eq!(fleet.decisions.len(), 1);
    assert_eq!(fleet.outlook.as_ref().map(|o| o.points.len()), Some(1));
    assert_eq!(report.totals.requests, fleet.demand.requests);
    assert_eq!(report.notice, None);

    // A period inside the span.
    let part = build(
        &db,
        &ReportRequest {
            regions: RegionSelection::One("eu".into()),
            from: Some(T0 + 300),
            to: Some(T0 + 360),
        },
        &mut |_, _| {},
    )
    .expect("build");
    let fleet = &part.regions[0].fleets[0];
    assert_eq!(fleet.demand.requests, 400);
    assert!(fleet.decisions.is_empty());
    assert!(fleet.notice.as_deref().unwrap_or("").contains("too short"));
}

#[test]
fn renderings_carry_the_figures_and_the_json_round_trips() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("fc.db");
    fill(&path);
    let db = Database::open(&path).expect("open");
    let report = build(&db, &all(), &mut |_, _| {}).expect("build");
    let json = render(&report, Format::Json).expect("json");
    let back: Report = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, report);
    let html = render(&report, Format::Html).expect("html");
    assert_eq!(html.matches("<svg").count(), 1);
    assert!(html.contains("data-fleet=\"web\""));
    for label in [
        "demand",
        "forecast (2 min ahead)",
        "forecast interval",
        "ready capacity",
        "SLO violation minute",
    ] {
        assert!(
            html.contains(&format!(">\n{label}\n<")) || html.contains(label),
            "{label}"
        );
    }
    assert!(
        html.contains("&lt;high&gt; &amp; rising"),
        "reasons are escaped"
    );
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(html.contains("1,240"), "requests as shown");
    let md = render(&report, Format::Markdown).expect("md");
    assert!(md.contains("| eu | web | 10 | 1,240 | 1 |"), "{md}");
    assert!(md.contains("\\<high\\> & rising"), "{md}");
}

#[test]
fn an_empty_database_says_so_and_an_unknown_region_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("empty.db");
    SeriesStore::open(&path).expect("create");
    let db = Database::open(&path).expect("open");
    let report = build(&db, &all(), &mut |_, _| {}).expect("build");
    assert!(report.regions.is_empty());
    assert!(report
        .notice
        .as_deref()
        .unwrap_or("")
        .contains("no capacity history"));
    let html = render(&report, Format::Html).expect("html");
    assert!(html.contains("no capacity history") && !html.contains("<svg"));

    fill(&path);
    let db = Database::open(&path).expect("open");
    let err = build(
        &db,
        &ReportRequest {
            regions: RegionSelection::One("mars".into()),
            from: None,
            to: None,
        },
        &mut |_, _| {},
    )
    .expect_err("unknown region");
    assert!(
        err.to_string().contains("`mars`") && err.to_string().contains("eu"),
        "{err}"
    );
    let missing = Database::open(&dir.path().join("nope.db"))
        .err()
        .expect("missing file");
    assert!(missing.to_string().contains("nope.db"), "{missing}");
    assert!(!dir.path().join("nope.db").exists());
}

#[test]
fn merging_keeps_each_region_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("fc.db");
    fill(&path);
    let db = Database::open(&path).expect("open");
    let eu = build(&db, &all(), &mut |_, _| {}).expect("build");
    let mut us = eu.clone();
    us.regions[0].region = "us".into();
    let merged = merge(vec![us.clone(), eu.clone()]).expect("merge");
    let names: Vec<&str> = merged.regions.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(names, ["eu", "us"]);
    assert_eq!(merged.totals.requests, 2 * eu.totals.requests);
    assert_eq!(
        merged.totals.instance_minutes,
        2 * eu.totals.instance_minutes
    );
    let twice = merge(vec![eu.clone(), eu]).expect_err("duplicate");
    assert!(twice.to_string().contains("`eu`"), "{twice}");
    us.schema = REPORT_SCHEMA + 1;
    assert!(merge(vec![us]).is_err());
}

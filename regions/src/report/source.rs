//! Builds the report from a forecaster's database: the capacity history (fleet minutes,
//! recorded forecasts, fleet profiles, outlooks), the series store (each profile's requests,
//! which minutes sketches covered) and the ledger (decisions with their reasons).
//!
//! A fleet's demand is its profiles' requests (a fleet with no recorded profiles serves them
//! all), as the live driver hands them to the brain; a profile's requests are summed over the
//! store's rows of every fleet and origin, as the driver sums them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::history::{FleetName, FleetProfileRecord, History, Subject};
use crate::ledger::Ledger;
use crate::store::SeriesStore;

use super::metrics::{self, PeakShare, Sample};
use super::model::{
    definitions, share, Band, FleetReport, ProfileReport, RegionReport, Report, Totals,
    REPORT_SCHEMA,
};
use super::{RegionSelection, ReportError, ReportRequest};

const DAY: u64 = 86_400;
/// Fleet minutes are read this many at a time, so a long period shows progress.
const CHUNK_SECS: u64 = DAY;

/// The three readers of one forecaster database.
pub struct Database {
    history: History,
    store: SeriesStore,
    ledger: Ledger,
}

impl Database {
    /// Opens an existing database: a path that does not exist is an error, not a new file.
    pub fn open(path: &Path) -> Result<Self, ReportError> {
        let fail = |source: crate::Error| ReportError::Database {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_file() {
            let what = if path.exists() {
                "not a file"
            } else {
                "no such file"
            };
            return Err(ReportError::Database {
                path: path.to_path_buf(),
                source: crate::Error::Store {
                    what: what.into(),
                    source: None,
                },
            });
        }
        let history = History::open_existing(path).map_err(fail)?;
        let store = SeriesStore::open(path).map_err(fail)?;
        let ledger = Ledger::open(path).map_err(fail)?;
        Ok(Database {
            history,
            store,
            ledger,
        })
    }

    /// The regions the history has minutes of, sorted.
    pub fn regions(&self) -> Result<Vec<String>, ReportError> {
        let mut regions: Vec<String> = self
            .history
            .fleets()?
            .into_iter()
            .map(|f| f.region)
            .collect();
        regions.dedup();
        Ok(regions)
    }
}

/// The report `request` asks for. `progress(done, total)` is called as fleet minutes are read
/// (`total`: fleet-minutes of the whole report).
pub fn build(
    db: &Database,
    request: &ReportRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, ReportError> {
    super::time::check_period(request.from, request.to, "from", "to")?;
    let fleets = db.history.fleets()?;
    let known = db.regions()?;
    let mut report = Report {
        schema: REPORT_SCHEMA,
        requested_from: request.from,
        requested_to: request.to,
        definitions: definitions(),
        totals: Totals::default(),
        regions: Vec::new(),
        notice: None,
    };
    if known.is_empty() {
        report.notice = Some(
            "The database holds no capacity history: the live driver has not recorded a minute \
             in it yet, so there is nothing to report. (Is this a forecaster's database, and has \
             its live driver run?)"
                .into(),
        );
        return Ok(report);
    }
    let regions: Vec<String> = match &request.regions {
        RegionSelection::All => known,
        RegionSelection::One(region) if known.contains(region) => vec![region.clone()],
        RegionSelection::One(region) => {
            return Err(ReportError::UnknownRegion {
                region: region.clone(),
                known: known.join(", "),
            })
        }
    };
    let mut plans = Vec::new();
    for region in &regions {
        let span = db.history.span(region)?;
        let (first, last) = span.map_or((0, 0), |s| (s.first_minute, s.last_minute));
        let from = request.from.unwrap_or(first);
        let to = request.to.unwrap_or(last + 60).max(from);
        let region_fleets: Vec<&FleetName> =
            fleets.iter().filter(|f| &f.region == region).collect();
        plans.push((region, span, from, to, region_fleets));
    }
    let total: u64 = plans
        .iter()
        .map(|(_, _, from, to, fleets)| (to - from) / 60 * fleets.len() as u64)
        .sum();
    let mut done = 0;
    progress(done, total);
    for (region, span, from, to, region_fleets) in plans {
        let mut tick = |minutes: u64| {
            done += minutes;
            progress(done.min(total), total);
        };
        let mut region_report = RegionReport {
            region: region.clone(),
            from,
            to,
            recorded_first_minute: span.map(|s| s.first_minute),
            recorded_last_minute: span.map(|s| s.last_minute),
            totals: Totals::default(),
            fleets: Vec::new(),
            notice: None,
        };
        let inputs = RegionInputs::read(db, region, from, to)?;
        for fleet in region_fleets {
            let fleet_report = fleet_report(db, &inputs, &fleet.fleet, &mut tick)?;
            region_report.totals.add(&fleet_report.totals());
            region_report.fleets.push(fleet_report);
        }
        if region_report.totals.fleet_minutes == 0 {
            region_report.notice = Some(format!(
                "No minute of region `{region}` was recorded from {} to {} (recorded: {}).",
                super::time::clock_text(from),
                super::time::clock_text(to),
                match span {
                    Some(s) => format!(
                        "{} to {}",
                        super::time::clock_text(s.first_minute),
                        super::time::clock_text(s.last_minute + 60)
                    ),
                    None => "nothing".into(),
                }
            ));
        }
        report.totals.add(&region_report.totals);
        report.regions.push(region_report);
    }
    if report.totals.fleet_minutes == 0 {
        report.notice = Some("No minute was recorded in the period asked for.".into());
    }
    Ok(report)
}

/// What a region's fleets share: its profiles' stored requests (from a day before the period,
/// for seasonal-naive) and which minutes sketches covered.
struct RegionInputs {
    region: String,
    from: u64,
    to: u64,
    /// profile → minute → requests.
    requests: HashMap<String, BTreeMap<u64, u64>>,
    covered: BTreeSet<u64>,
}

impl RegionInputs {
    fn read(db: &Database, region: &str, from: u64, to: u64) -> Result<Self, ReportError> {
        let earliest = from.saturating_sub(DAY);
        let mut requests: HashMap<String, BTreeMap<u64, u64>> = HashMap::new();
        for row in db.store.region_minutes(region, earliest, to)? {
            *requests
                .entry(row.profile)
                .or_default()
                .entry(row.minute)
                .or_default() += row.requests;
        }
        let covered = db
            .store
            .covered_minutes(region, earliest, to)?
            .into_iter()
            .collect();
        Ok(RegionInputs {
            region: region.to_string(),
            from,
            to,
            requests,
            covered,
        })
    }

    /// A profile's stored requests in a minute: `None` when no sketch covered it.
    fn profile_minute(&self, profile: &str, minute: u64) -> Option<u64> {
        self.covered.contains(&minute).then(|| {
            self.requests
                .get(profile)
                .and_then(|m| m.get(&minute))
                .copied()
                .unwrap_or(0)
        })
    }

    /// A profile's stored requests in the period.
    fn profile_requests(&self, profile: &str) -> u64 {
        self.requests
            .get(profile)
            .map(|m| m.range(self.from..self.to).map(|(_, n)| n).sum())
            .unwrap_or(0)
    }
}

fn fleet_report(
    db: &Database,
    inputs: &RegionInputs,
    fleet: &str,
    tick: &mut dyn FnMut(u64),
) -> Result<FleetReport, ReportError> {
    let (region, from, to) = (inputs.region.as_str(), inputs.from, inputs.to);
    let mut minutes = Vec::new();
    let mut start = from;
    while start < to {
        let end = to.min(start + CHUNK_SECS);
        minutes.extend(db.history.fleet_minutes(region, fleet, start, end)?);
        tick((end - start) / 60);
        start = end;
    }
    let recorded_profiles = db.history.fleet_profiles(region, fleet)?;
    // (profile, revenue weight); a fleet without recorded profiles serves every profile of
    // the region, with weights the store does not know.
    let profiles: Vec<(String, Option<f64>)> = if recorded_profiles.is_empty() {
        let mut names: Vec<String> = inputs.requests.keys().cloned().collect();
        names.sort();
        names.into_iter().map(|p| (p, None)).collect()
    } else {
        recorded_profiles
            .into_iter()
            .map(|p: FleetProfileRecord| (p.profile, Some(p.revenue_weight)))
            .collect()
    };
    let fleet_day_before = |minute: u64| -> Option<f64> {
        let before = minute.checked_sub(DAY)?;
        inputs.covered.contains(&before).then(|| {
            profiles
                .iter()
                .filter_map(|(p, _)| inputs.profile_minute(p, before))
                .sum::<u64>() as f64
        })
    };
    let figures = metrics::fleet_figures(&minutes, |m| inputs.covered.contains(&m));
    let accuracy = metrics::accuracy(minutes.iter().filter_map(|m| {
        Some(Sample {
            demand: m.demand? as f64,
            forecast: m.forecast.as_ref().map(|f| Band {
                point: f.point,
                lower: f.lower,
                upper: f.upper,
            }),
            day_before: fleet_day_before(m.minute),
        })
    }));
    let handed: BTreeSet<u64> = minutes
        .iter()
        .filter(|m| m.demand.is_some())
        .map(|m| m.minute)
        .collect();
    let peak_minute = figures.demand.peak_minute;
    let peak_total: u64 = peak_minute
        .map(|at| {
            profiles
                .iter()
                .filter_map(|(p, _)| inputs.profile_minute(p, at))
                .sum()
        })
        .unwrap_or(0);
    let profile_total: u64 = profiles
        .iter()
        .map(|(p, _)| inputs.profile_requests(p))
        .sum();
    let mut profile_reports = Vec::new();
    for (profile, revenue_weight) in &profiles {
        let forecasts = db
            .history
            .forecasts(region, Subject::Profile(profile), from, to)?;
        let samples = forecasts
            .iter()
            .filter(|(m, _)| handed.contains(m))
            .filter_map(|(m, f)| {
                Some(Sample {
                    demand: inputs.profile_minute(profile, *m)? as f64,
                    forecast: Some(Band {
                        point: f.point,
                        lower: f.lower,
                        upper: f.upper,
                    }),
                    day_before: m
                        .checked_sub(DAY)
                        .and_then(|before| inputs.profile_minute(profile, before))
                        .map(|n| n as f64),
                })
            });
        let requests = inputs.profile_requests(profile);
        let peak_requests = peak_minute
            .and_then(|at| inputs.profile_minute(profile, at))
            .unwrap_or(0);
        profile_reports.push(ProfileReport {
            profile: profile.clone(),
            revenue_weight: *revenue_weight,
            requests,
            share_of_requests: share(requests as f64, profile_total as f64),
            peak_requests,
            share_of_peak: share(peak_requests as f64, peak_total as f64),
            revenue_weighted_peak: revenue_weight.map(|w| w * peak_requests as f64),
            accuracy: metrics::accuracy(samples),
        });
    }
    let peak = peak_minute.map(|at| {
        let shares: Vec<PeakShare<'_>> = profile_reports
            .iter()
            .map(|p| PeakShare {
                profile: &p.profile,
                requests: p.peak_requests,
                revenue_weight: p.revenue_weight,
            })
            .collect();
        metrics::peak_drivers(at, figures.demand.peak_requests, &shares)
    });
    profile_reports.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.profile.cmp(&b.profile)));
    let decisions = db.ledger.decisions_between(
        region,
        fleet,
        from.saturating_mul(1000),
        to.saturating_mul(1000),
    )?;
    let outlook = db.history.outlook(region, fleet)?;
    let lead_minutes = minutes
        .iter()
        .find_map(|m| m.forecast.as_ref().map(|f| f.horizon_minutes));
    let notice = match (figures.minutes.recorded, figures.minutes.with_demand) {
        (0, _) => Some("No minute of this fleet was recorded in the period.".to_string()),
        (1, _) => Some("Only one minute was recorded in the period: too short to chart.".into()),
        (_, 0) => Some(
            "No minute's demand was handed to the planner in the period (all absent or pending)."
                .into(),
        ),
        _ => None,
    };
    Ok(FleetReport {
        fleet: fleet.to_string(),
        lead_minutes,
        minutes: figures.minutes,
        demand: figures.demand,
        slo: figures.slo,
        cost: figures.cost,
        accuracy,
        profiles: profile_reports,
        peak,
        decisions,
        outlook,
        series: figures.series,
        notice,
    })
}

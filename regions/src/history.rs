//! The capacity history, beside the series in the forecaster's SQLite file: what the live
//! driver ran each minute (instances by state, what the plan wanted, the capacity and cost it
//! used), the demand it handed to the brain, the forecast it had made of that minute at the
//! fleet's lead time, each fleet's profiles, and the latest outlook of the coming day. Reports
//! and the dashboard read it; nothing here decides anything.
//!
//! Invariants: a fleet minute exists only for minutes the driver ran (its capacity is recorded
//! at the minute's start), so a minute's demand is only ever written beside the capacity that
//! served it; a forecast of a minute is recorded once, at the lead time (a restarted driver
//! does not overwrite it); writes of one driver step are one transaction; nothing here reads
//! the clock (callers pass node time).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_minutes (
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    minute INTEGER NOT NULL,
    demand INTEGER,
    ready INTEGER NOT NULL,
    warming INTEGER NOT NULL,
    draining INTEGER NOT NULL,
    planned INTEGER NOT NULL,
    rps_per_instance REAL NOT NULL,
    cost_per_instance_hour REAL NOT NULL,
    PRIMARY KEY (region, fleet, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forecasts (
    region TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    minute INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    horizon_minutes INTEGER NOT NULL,
    point REAL NOT NULL,
    lower REAL NOT NULL,
    upper REAL NOT NULL,
    slo_upper REAL NOT NULL,
    model TEXT NOT NULL,
    PRIMARY KEY (region, kind, subject, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fleet_profiles (
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    profile TEXT NOT NULL,
    revenue_weight REAL NOT NULL,
    PRIMARY KEY (region, fleet, profile)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outlooks (
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    points TEXT NOT NULL,
    PRIMARY KEY (region, fleet)
) WITHOUT ROWID;
";

/// One minute of one fleet as the live driver ran it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetMinute {
    pub region: String,
    pub fleet: String,
    /// Unix seconds of the minute's start (node time).
    pub minute: u64,
    /// Requests of the fleet's profiles in the minute as handed to the brain (late requests
    /// added); `None` when no sketch covered the minute or it has not been handed over yet.
    pub demand: Option<u64>,
    /// Instances at the minute's start, by state (the minute's ready capacity is `ready`).
    pub ready: u32,
    pub warming: u32,
    pub draining: u32,
    /// Instances the plan wanted serving at the minute's start.
    pub planned: u32,
    /// Requests/s one instance serves, as the plan used it at that minute (configured or
    /// learned).
    pub rps_per_instance: f64,
    /// The fleet's configured cost of one instance-hour at that minute.
    pub cost_per_instance_hour: f64,
    /// The forecast of this minute made `horizon_minutes` (the fleet's lead time) before it.
    pub forecast: Option<ForecastRecord>,
}

/// The capacity side of a fleet minute, recorded at the minute's start.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetCapacity {
    pub region: String,
    pub fleet: String,
    pub minute: u64,
    pub ready: u32,
    pub warming: u32,
    pub draining: u32,
    pub planned: u32,
    pub rps_per_instance: f64,
    pub cost_per_instance_hour: f64,
}

/// A forecast of one minute as it was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastRecord {
    /// Unix seconds (node time) when it was made.
    pub issued_at: u64,
    pub horizon_minutes: i64,
    /// Requests in the minute: the point forecast, the interval's bounds, and the bound the
    /// plan covers.
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
    pub slo_upper: f64,
    pub model: String,
}

/// What a forecast is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A fleet's total.
    Fleet(&'a str),
    /// One profile of the region.
    Profile(&'a str),
}

impl Subject<'_> {
    fn columns(&self) -> (&'static str, &str) {
        match self {
            Subject::Fleet(name) => ("fleet", name),
            Subject::Profile(name) => ("profile", name),
        }
    }
}

/// A profile routed to a fleet, with its revenue weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetProfileRecord {
    pub profile: String,
    pub revenue_weight: f64,
}

/// A fleet the history has minutes of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FleetName {
    pub region: String,
    pub fleet: String,
}

/// First and last recorded minute (unix seconds of their starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub first_minute: u64,
    pub last_minute: u64,
}

/// What the plan expects of one coming minute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlookPoint {
    /// Unix seconds of the minute's start.
    pub minute: u64,
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
    pub slo_upper: f64,
    /// Instances the planner's sizing gives this minute: enough for `slo_upper` at the fleet's
    /// capacity per instance, not below the baseline tier, not above `max_instances`.
    pub instances: u32,
}

/// What the plan expects of a fleet's coming day (the latest one made).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outlook {
    pub region: String,
    pub fleet: String,
    /// Unix seconds (node time) when it was made.
    pub issued_at: u64,
    /// Minute by minute for the next hour, then one point an hour to 24 h.
    pub points: Vec<OutlookPoint>,
}

/// Everything one driver step records, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct HistoryBatch {
    pub capacity: Vec<FleetCapacity>,
    /// `(region, fleet, minute, demand)`: the demand handed to the brain (`None`: absent).
    pub demand: Vec<FleetDemand>,
    /// Requests that arrived after their minute was handed over.
    pub late: Vec<FleetDemand>,
    pub forecasts: Vec<SubjectForecast>,
    pub outlooks: Vec<Outlook>,
}

impl HistoryBatch {
    pub fn is_empty(&self) -> bool {
        self.capacity.is_empty()
            && self.demand.is_empty()
            && self.late.is_empty()
            && self.forecasts.is_empty()
            && self.outlooks.is_empty()
    }
}

/// A fleet's requests in one minute.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetDemand {
    pub region: String,
    pub fleet: String,
    pub minute: u64,
    pub requests: Option<u64>,
}

/// A forecast of one minute of a fleet (`profile: None`) or of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectForecast {
    pub region: String,
    pub fleet: Option<String>,
    pub profile: Option<String>,
    pub minute: u64,
    pub forecast: ForecastRecord,
}

pub struct History {
    conn: Connection,
}

impl History {
    /// Opens the history tables in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| history_error(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// Opens an existing database without creating anything (reports read a copy an operator
    /// points them at: a wrong path must be an error, not a new empty file).
    pub fn open_existing(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| history_error(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// An in-memory history (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| history_error("open in memory", e))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| history_error("set busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| history_error("enable WAL", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| history_error("create the history tables", e))?;
        Ok(History { conn })
    }

    /// Records a fleet's profiles (replacing what was recorded of it before).
    pub fn record_fleet_profiles(
        &mut self,
        region: &str,
        fleet: &str,
        profiles: &[FleetProfileRecord],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| history_error("begin", e))?;
        tx.execute(
            "DELETE FROM fleet_profiles WHERE region = ?1 AND fleet = ?2",
            params![region, fleet],
        )
        .map_err(|e| history_error("forget a fleet's profiles", e))?;
        for p in profiles {
            tx.execute(
                "INSERT INTO fleet_profiles (region, fleet, profile, revenue_weight) VALUES (?1, ?2, ?3, ?4)",
                params![region, fleet, p.profile, p.revenue_weight],
            )
            .map_err(|e| history_error("record a fleet's profile", e))?;
        }
        tx.commit().map_err(|e| history_error("commit", e))
    }

    /// Writes one step's records in one transaction.
    pub fn record(&mut self, batch: &HistoryBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| history_error("begin", e))?;
        for c in &batch.capacity {
            tx.prepare_cached(
                "INSERT INTO fleet_minutes (region, fleet, minute, demand, ready, warming, draining,
                    planned, rps_per_instance, cost_per_instance_hour)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (region, fleet, minute) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    c.region,
                    c.fleet,
                    c.minute as i64,
                    c.ready,
                    c.warming,
                    c.draining,
                    c.planned,
                    c.rps_per_instance,
                    c.cost_per_instance_hour
                ])
            })
            .map_err(|e| history_error("record a minute's capacity", e))?;
        }
        for d in &batch.demand {
            tx.prepare_cached(
                "UPDATE fleet_minutes SET demand = ?4 WHERE region = ?1 AND fleet = ?2 AND minute = ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    d.region,
                    d.fleet,
                    d.minute as i64,
                    d.requests.map(|r| r as i64)
                ])
            })
            .map_err(|e| history_error("record a minute's demand", e))?;
        }
        for d in &batch.late {
            tx.prepare_cached(
                "UPDATE fleet_minutes SET demand = COALESCE(demand, 0) + ?4
                 WHERE region = ?1 AND fleet = ?2 AND minute = ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    d.region,
                    d.fleet,
                    d.minute as i64,
                    d.requests.unwrap_or(0) as i64
                ])
            })
            .map_err(|e| history_error("add late requests", e))?;
        }
        for f in &batch.forecasts {
            let (kind, subject) = match (&f.fleet, &f.profile) {
                (_, Some(profile)) => ("profile", profile.as_str()),
                (Some(fleet), None) => ("fleet", fleet.as_str()),
                (None, None) => continue,
            };
            let r = &f.forecast;
            tx.prepare_cached(
                "INSERT INTO forecasts (region, kind, subject, minute, issued_at, horizon_minutes,
                    point, lower, upper, slo_upper, model)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (region, kind, subject, minute) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    f.region,
                    kind,
                    subject,
                    f.minute as i64,
                    r.issued_at as i64,
                    r.horizon_minutes,
                    r.point,
                    r.lower,
                    r.upper,
                    r.slo_upper,
                    r.model
                ])
            })
            .map_err(|e| history_error("record a forecast", e))?;
        }
        for o in &batch.outlooks {
            let points = serde_json::to_string(&o.points).map_err(|e| Error::Store {
                what: format!("history: encode the outlook of {}: {e}", o.fleet),
                source: None,
            })?;
            tx.prepare_cached(
                "INSERT INTO outlooks (region, fleet, issued_at, points) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (region, fleet) DO UPDATE SET issued_at = ?3, points = ?4",
            )
            .and_then(|mut s| s.execute(params![o.region, o.fleet, o.issued_at as i64, points]))
            .map_err(|e| history_error("record an outlook", e))?;
        }
        tx.commit().map_err(|e| history_error("commit", e))
    }

    /// Forgets minutes (and their forecasts) that started before `cutoff` (unix seconds): the
    /// series they were made from is pruned at the same retention. Returns the minutes removed.
    pub fn prune(&mut self, cutoff: u64) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| history_error("begin prune", e))?;
        let removed = tx
            .execute(
                "DELETE FROM fleet_minutes WHERE minute < ?1",
                params![clamp(cutoff)],
            )
            .map_err(|e| history_error("prune fleet minutes", e))?;
        tx.execute(
            "DELETE FROM forecasts WHERE minute < ?1",
            params![clamp(cutoff)],
        )
        .map_err(|e| history_error("prune forecasts", e))?;
        tx.commit().map_err(|e| history_error("commit prune", e))?;
        Ok(removed)
    }

    /// Fleets with any recorded minute, sorted.
    pub fn fleets(&self) -> Result<Vec<FleetName>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT region, fleet FROM fleet_minutes ORDER BY region, fleet",
            )
            .map_err(|e| history_error("prepare fleets query", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(FleetName {
                    region: row.get(0)?,
                    fleet: row.get(1)?,
                })
            })
            .map_err(|e| history_error("run fleets query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| history_error("read fleet row", e))
    }

    /// A fleet's profiles as last recorded, by name.
    pub fn fleet_profiles(&self, region: &str, fleet: &str) -> Result<Vec<FleetProfileRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT profile, revenue_weight FROM fleet_profiles
                 WHERE region = ?1 AND fleet = ?2 ORDER BY profile",
            )
            .map_err(|e| history_error("prepare fleet profiles query", e))?;
        let rows = statement
            .query_map(params![region, fleet], |row| {
                Ok(FleetProfileRecord {
                    profile: row.get(0)?,
                    revenue_weight: row.get(1)?,
                })
            })
            .map_err(|e| history_error("run fleet profiles query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| history_error("read fleet profile row", e))
    }

    /// A fleet's minutes in `[from, to)` (unix seconds), ascending, each with the forecast
    /// recorded for it.
    pub fn fleet_minutes(
        &self,
        region: &str,
        fleet: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<FleetMinute>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT m.minute, m.demand, m.ready, m.warming, m.draining, m.planned,
                        m.rps_per_instance, m.cost_per_instance_hour,
                        f.issued_at, f.horizon_minutes, f.point, f.lower, f.upper, f.slo_upper, f.model
                 FROM fleet_minutes m
                 LEFT JOIN forecasts f ON f.region = m.region AND f.kind = 'fleet'
                      AND f.subject = m.fleet AND f.minute = m.minute
                 WHERE m.region = ?1 AND m.fleet = ?2 AND m.minute >= ?3 AND m.minute < ?4
                 ORDER BY m.minute",
            )
            .map_err(|e| history_error("prepare fleet minutes query", e))?;
        let rows = statement
            .query_map(params![region, fleet, clamp(from), clamp(to)], |row| {
                Ok(FleetMinute {
                    region: region.to_string(),
                    fleet: fleet.to_string(),
                    minute: row.get::<_, i64>(0)? as u64,
                    demand: row.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                    ready: row.get(2)?,
                    warming: row.get(3)?,
                    draining: row.get(4)?,
                    planned: row.get(5)?,
                    rps_per_instance: row.get(6)?,
                    cost_per_instance_hour: row.get(7)?,
                    forecast: forecast_columns(row, 8)?,
                })
            })
            .map_err(|e| history_error("run fleet minutes query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| history_error("read fleet minute row", e))
    }

    /// The forecasts recorded for a fleet's total (`Subject::Fleet`) or a profile's minutes in
    /// `[from, to)`, by minute.
    pub fn forecasts(
        &self,
        region: &str,
        subject: Subject<'_>,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, ForecastRecord)>> {
        let (kind, name) = subject.columns();
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT minute, issued_at, horizon_minutes, point, lower, upper, slo_upper, model
                 FROM forecasts WHERE region = ?1 AND kind = ?2 AND subject = ?3
                      AND minute >= ?4 AND minute < ?5 ORDER BY minute",
            )
            .map_err(|e| history_error("prepare forecasts query", e))?;
        let rows = statement
            .query_map(params![region, kind, name, clamp(from), clamp(to)], |row| {
                let minute = row.get::<_, i64>(0)? as u64;
                let forecast = forecast_columns(row, 1)?.ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        1,
                        "issued_at".into(),
                        rusqlite::types::Type::Null,
                    )
                })?;
                Ok((minute, forecast))
            })
            .map_err(|e| history_error("run forecasts query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| history_error("read forecast row", e))
    }

    /// The latest outlook of a fleet.
    pub fn outlook(&self, region: &str, fleet: &str) -> Result<Option<Outlook>> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT issued_at, points FROM outlooks WHERE region = ?1 AND fleet = ?2",
                params![region, fleet],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| history_error("read an outlook", e))?;
        let Some((issued_at, points)) = row else {
            return Ok(None);
        };
        let points = serde_json::from_str(&points).map_err(|e| Error::Store {
            what: format!("history: the stored outlook of {region}/{fleet} is not readable: {e}"),
            source: None,
        })?;
        Ok(Some(Outlook {
            region: region.to_string(),
            fleet: fleet.to_string(),
            issued_at: issued_at as u64,
            points,
        }))
    }

    /// First and last recorded minute of a region.
    pub fn span(&self, region: &str) -> Result<Option<Span>> {
        self.conn
            .query_row(
                "SELECT MIN(minute), MAX(minute) FROM fleet_minutes WHERE region = ?1",
                params![region],
                |row| {
                    let first: Option<i64> = row.get(0)?;
                    let last: Option<i64> = row.get(1)?;
                    Ok(first.zip(last).map(|(f, l)| Span {
                        first_minute: f as u64,
                        last_minute: l as u64,
                    }))
                },
            )
            .map_err(|e| history_error("read a region's span", e))
    }
}

/// Unix seconds as SQLite's integer (saturating: a far-future bound means "to the end").
fn clamp(seconds: u64) -> i64 {
    seconds.min(i64::MAX as u64) as i64
}

fn forecast_columns(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<Option<ForecastRecord>> {
    let Some(issued_at) = row.get::<_, Option<i64>>(first)? else {
        return Ok(None);
    };
    Ok(Some(ForecastRecord {
        issued_at: issued_at as u64,
        horizon_minutes: row.get(first + 1)?,
        point: row.get(first + 2)?,
        lower: row.get(first + 3)?,
        upper: row.get(first + 4)?,
        slo_upper: row.get(first + 5)?,
        model: row.get(first + 6)?,
    }))
}

fn history_error(what: impl Into<String>, source: rusqlite::Error) -> Error {
    Error::Store {
        what: format!("history: {}", what.into()),
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(minute: u64, ready: u32) -> FleetCapacity {
        FleetCapacity {
            region: "eu".into(),
            fleet: "web".into(),
            minute,
            ready,
            warming: 1,
            draining: 0,
            planned: ready + 1,
            rps_per_instance: 10.0,
            cost_per_instance_hour: 0.5,
        }
    }

    fn demand(minute: u64, requests: Option<u64>) -> FleetDemand {
        FleetDemand {
            region: "eu".into(),
            fleet: "web".into(),
            minute,
            requests,
        }
    }

    fn forecast(minute: u64, point: f64) -> SubjectForecast {
        SubjectForecast {
            region: "eu".into(),
            fleet: Some("web".into()),
            profile: None,
            minute,
            forecast: ForecastRecord {
                issued_at: minute - 120,
                horizon_minutes: 2,
                point,
                lower: point - 10.0,
                upper: point + 10.0,
                slo_upper: point + 15.0,
                model: "mstl".into(),
            },
        }
    }

    #[test]
    fn a_minute_gathers_capacity_demand_late_requests_and_its_forecast() {
        let mut history = History::in_memory().unwrap();
        history
            .record(&HistoryBatch {
                capacity: vec![capacity(600, 2), capacity(660, 3)],
                forecasts: vec![forecast(600, 100.0)],
                ..HistoryBatch::default()
            })
            .unwrap();
        history
            .record(&HistoryBatch {
                demand: vec![
                    demand(600, Some(90)),
                    demand(660, None),
                    demand(720, Some(5)),
                ],
                // A second forecast of the same minute (a restarted driver) is not kept.
                forecasts: vec![forecast(600, 999.0)],
                // A capacity row recorded again keeps the first one.
                capacity: vec![capacity(600, 7)],
                ..HistoryBatch::default()
            })
            .unwrap();
        history
            .record(&HistoryBatch {
                late: vec![demand(600, Some(4)), demand(660, Some(3))],
                ..HistoryBatch::default()
            })
            .unwrap();
        let minutes = history.fleet_minutes("eu", "web", 0, u64::MAX).unwrap();
        assert_eq!(
            minutes.len(),
            2,
            "no row for a minute the driver did not run"
        );
        assert_eq!(minutes[0].demand, Some(94));
        assert_eq!(minutes[0].ready, 2);
        assert_eq!(minutes[0].forecast.as_ref().map(|f| f.point), Some(100.0));
        assert_eq!(
            minutes[1].demand,
            Some(3),
            "late requests make an absent minute present"
        );
        assert!(minutes[1].forecast.is_none());
        assert_eq!(
            history.span("eu").unwrap(),
            Some(Span {
                first_minute: 600,
                last_minute: 660
            })
        );
        assert_eq!(history.span("us").unwrap(), None);
        let mut pruned = History::in_memory().unwrap();
        pruned
            .record(&HistoryBatch {
                capacity: vec![capacity(600, 2), capacity(660, 3)],
                forecasts: vec![forecast(600, 1.0), forecast(660, 1.0)],
                ..HistoryBatch::default()
            })
            .unwrap();
        assert_eq!(pruned.prune(660).unwrap(), 1);
        assert_eq!(
            pruned
                .fleet_minutes("eu", "web", 0, u64::MAX)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            pruned
                .forecasts("eu", Subject::Fleet("web"), 0, u64::MAX)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            history.fleets().unwrap(),
            vec![FleetName {
                region: "eu".into(),
                fleet: "web".into()
            }]
        );
        assert_eq!(
            history
                .forecasts("eu", Subject::Fleet("web"), 0, 700)
                .unwrap()
                .len(),
            1
        );
        assert!(history
            .forecasts("eu", Subject::Profile("web"), 0, 700)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn outlooks_and_fleet_profiles_are_replaced() {
        let mut history = History::in_memory().unwrap();
        for issued_at in [100, 200] {
            history
                .record(&HistoryBatch {
                    outlooks: vec![Outlook {
                        region: "eu".into(),
                        fleet: "web".into(),
                        issued_at,
                        points: vec![OutlookPoint {
                            minute: issued_at + 60,
                            point: 1.0,
                            lower: 0.0,
                            upper: 2.0,
                            slo_upper: 3.0,
                            instances: 1,
                        }],
                    }],
                    ..HistoryBatch::default()
                })
                .unwrap();
        }
        let outlook = history.outlook("eu", "web").unwrap().unwrap();
        assert_eq!(outlook.issued_at, 200);
        assert_eq!(outlook.points[0].minute, 260);
        assert!(history.outlook("eu", "api").unwrap().is_none());
        for names in [&["a", "b"][..], &["b"][..]] {
            let records: Vec<_> = names
                .iter()
                .map(|n| FleetProfileRecord {
                    profile: n.to_string(),
                    revenue_weight: 2.0,
                })
                .collect();
            history
                .record_fleet_profiles("eu", "web", &records)
                .unwrap();
        }
        assert_eq!(history.fleet_profiles("eu", "web").unwrap().len(), 1);
    }

    #[test]
    fn open_existing_refuses_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(History::open_existing(&dir.path().join("nope.db")).is_err());
        History::open(&dir.path().join("yes.db")).unwrap();
        History::open_existing(&dir.path().join("yes.db")).unwrap();
    }
}

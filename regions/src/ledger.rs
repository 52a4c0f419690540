//! The forecaster's ledger, beside the series in the same SQLite file: the instances each
//! provisioner runs (so a restarted forecaster adopts them instead of starting over or losing
//! them), the last plan version per region (so versions keep rising across restarts and proxies
//! never ignore a new plan as stale), and the log of plan decisions with their reasons.
//!
//! Invariants: every write is one statement (atomic); nothing here reads the clock (callers pass
//! node time); the tables are created on first open and never dropped.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    pid INTEGER NOT NULL,
    phase TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    ready_since_ms INTEGER,
    PRIMARY KEY (region, fleet, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plan_versions (
    region TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    at_ms INTEGER NOT NULL,
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_fleet ON decisions (region, fleet, at_ms);
";

/// One instance a provisioner started, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceRecord {
    pub region: String,
    pub fleet: String,
    pub name: String,
    pub address: String,
    pub pid: u32,
    /// `warming`, `ready` or `draining`.
    pub phase: String,
    pub since_ms: u64,
    pub ready_since_ms: Option<u64>,
}

/// A plan decision as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at_ms: u64,
    pub region: String,
    pub fleet: String,
    pub action: String,
    pub reason: String,
}

pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens the ledger tables in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| ledger_error(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// An in-memory ledger (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| ledger_error("open in memory", e))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| ledger_error("set busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| ledger_error("enable WAL", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| ledger_error("create the ledger tables", e))?;
        Ok(Ledger { conn })
    }

    /// Records (or updates) an instance.
    pub fn put_instance(&self, instance: &InstanceRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO instances (region, fleet, name, address, pid, phase, since_ms, ready_since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (region, fleet, name) DO UPDATE SET address = ?4, pid = ?5, phase = ?6,
                    since_ms = ?7, ready_since_ms = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    instance.region,
                    instance.fleet,
                    instance.name,
                    instance.address,
                    i64::from(instance.pid),
                    instance.phase,
                    instance.since_ms as i64,
                    instance.ready_since_ms.map(|v| v as i64),
                ])
            })
            .map(|_| ())
            .map_err(|e| ledger_error(format!("record instance {}", instance.name), e))
    }

    /// Forgets an instance (it has stopped).
    pub fn remove_instance(&self, region: &str, fleet: &str, name: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM instances WHERE region = ?1 AND fleet = ?2 AND name = ?3",
                params![region, fleet, name],
            )
            .map(|_| ())
            .map_err(|e| ledger_error(format!("forget instance {name}"), e))
    }

    /// The instances recorded for a fleet.
    pub fn instances(&self, region: &str, fleet: &str) -> Result<Vec<InstanceRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT region, fleet, name, address, pid, phase, since_ms, ready_since_ms
                 FROM instances WHERE region = ?1 AND fleet = ?2 ORDER BY name",
            )
            .map_err(|e| ledger_error("prepare instances query", e))?;
        let rows = statement
            .query_map(params![region, fleet], |row| {
                Ok(InstanceRecord {
                    region: row.get(0)?,
                    fleet: row.get(1)?,
                    name: row.get(2)?,
                    address: row.get(3)?,
                    pid: row.get::<_, i64>(4)? as u32,
                    phase: row.get(5)?,
                    since_ms: row.get::<_, i64>(6)? as u64,
                    ready_since_ms: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                })
            })
            .map_err(|e| ledger_error("run instances query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ledger_error("read instance row", e))
    }

    /// The next plan version of `region`: above every version handed out before, and at least
    /// `at_least`.
    pub fn next_plan_version(&self, region: &str, at_least: u64) -> Result<u64> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT version FROM plan_versions WHERE region = ?1",
                params![region],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| ledger_error("read plan version", e))?;
        let next = (last.unwrap_or(0) as u64 + 1).max(at_least);
        self.conn
            .execute(
                "INSERT INTO plan_versions (region, version) VALUES (?1, ?2)
                 ON CONFLICT (region) DO UPDATE SET version = ?2",
                params![region, next as i64],
            )
            .map_err(|e| ledger_error("record plan version", e))?;
        Ok(next)
    }

    /// Logs a decision.
    pub fn log_decision(&self, decision: &DecisionRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO decisions (at_ms, region, fleet, action, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    decision.at_ms as i64,
                    decision.region,
                    decision.fleet,
                    decision.action,
                    decision.reason
                ])
            })
            .map(|_| ())
            .map_err(|e| ledger_error("log decision", e))
    }

    /// The latest `limit` decisions of a fleet, newest first.
    pub fn decisions(
        &self,
        region: &str,
        fleet: &str,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT at_ms, region, fleet, action, reason FROM decisions
                 WHERE region = ?1 AND fleet = ?2 ORDER BY at_ms DESC, rowid DESC LIMIT ?3",
            )
            .map_err(|e| ledger_error("prepare decisions query", e))?;
        let rows = statement
            .query_map(params![region, fleet, limit as i64], decision_row)
            .map_err(|e| ledger_error("run decisions query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ledger_error("read decision row", e))
    }
}

impl Ledger {
    /// A fleet's decisions made in `[from_ms, to_ms)`, oldest first.
    pub fn decisions_between(
        &self,
        region: &str,
        fleet: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<DecisionRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT at_ms, region, fleet, action, reason FROM decisions
                 WHERE region = ?1 AND fleet = ?2 AND at_ms >= ?3 AND at_ms < ?4
                 ORDER BY at_ms, rowid",
            )
            .map_err(|e| ledger_error("prepare decisions range query", e))?;
        let rows = statement
            .query_map(
                params![region, fleet, from_ms as i64, to_ms as i64],
                decision_row,
            )
            .map_err(|e| ledger_error("run decisions range query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ledger_error("read decision row", e))
    }
}

/// A `decisions` row (`at_ms, region, fleet, action, reason`).
fn decision_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DecisionRecord> {
    Ok(DecisionRecord {
        at_ms: row.get::<_, i64>(0)? as u64,
        region: row.get(1)?,
        fleet: row.get(2)?,
        action: row.get(3)?,
        reason: row.get(4)?,
    })
}

fn ledger_error(what: impl Into<String>, source: rusqlite::Error) -> Error {
    Error::Store {
        what: format!("ledger: {}", what.into()),
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, phase: &str) -> InstanceRecord {
        InstanceRecord {
            region: "eu".into(),
            fleet: "web".into(),
            name: name.into(),
            address: "127.0.0.1:4000".into(),
            pid: 42,
            phase: phase.into(),
            since_ms: 1_000,
            ready_since_ms: None,
        }
    }

    #[test]
    fn instances_are_recorded_updated_and_forgotten() {
        let ledger = Ledger::in_memory().expect("ledger");
        ledger.put_instance(&instance("web-1", "warming")).unwrap();
        let mut ready = instance("web-1", "ready");
        ready.ready_since_ms = Some(2_000);
        ledger.put_instance(&ready).unwrap();
        ledger.put_instance(&instance("web-2", "warming")).unwrap();
        assert_eq!(
            ledger.instances("eu", "web").unwrap(),
            vec![ready, instance("web-2", "warming")]
        );
        ledger.remove_instance("eu", "web", "web-2").unwrap();
        assert_eq!(ledger.instances("eu", "web").unwrap().len(), 1);
        assert!(ledger.instances("eu", "api").unwrap().is_empty());
    }

    #[test]
    fn plan_versions_only_rise() {
        let ledger = Ledger::in_memory().expect("ledger");
        assert_eq!(ledger.next_plan_version("eu", 0).unwrap(), 1);
        assert_eq!(ledger.next_plan_version("eu", 0).unwrap(), 2);
        assert_eq!(ledger.next_plan_version("eu", 100).unwrap(), 100);
        assert_eq!(ledger.next_plan_version("eu", 50).unwrap(), 101);
        assert_eq!(ledger.next_plan_version("us", 0).unwrap(), 1);
    }

    #[test]
    fn decisions_come_back_newest_first() {
        let ledger = Ledger::in_memory().expect("ledger");
        for (at, action) in [(1, "scale_up"), (3, "drain"), (2, "remove")] {
            ledger
                .log_decision(&DecisionRecord {
                    at_ms: at,
                    region: "eu".into(),
                    fleet: "web".into(),
                    action: action.into(),
                    reason: format!("because {at}"),
                })
                .unwrap();
        }
        let last = ledger.decisions("eu", "web", 2).unwrap();
        assert_eq!(
            last.iter().map(|d| d.action.as_str()).collect::<Vec<_>>(),
            ["drain", "remove"]
        );
        let between = ledger.decisions_between("eu", "web", 1, 3).unwrap();
        assert_eq!(
            between
                .iter()
                .map(|d| d.action.as_str())
                .collect::<Vec<_>>(),
            ["scale_up", "remove"]
        );
    }
}

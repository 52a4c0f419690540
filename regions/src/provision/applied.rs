//! The last target each remote provisioner carried out, kept beside the ledger in the
//! forecaster's SQLite file. A restarted forecaster starts from it: the fleet's instances are
//! what was last asked for (so the brain starts there and the cold window keeps them), and the
//! same capacity is not asked for again under a new plan version.
//!
//! Invariants: one row per (region, fleet), replaced by every write (one statement, atomic);
//! nothing here reads the clock (callers pass node time); the table is created on first open.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS provisioner_applied (
    region TEXT NOT NULL,
    fleet TEXT NOT NULL,
    kind TEXT NOT NULL,
    plan_version INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    capacity TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (region, fleet)
) WITHOUT ROWID;
";

/// What a remote provisioner last carried out for a fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedRecord {
    /// The provisioner kind that carried it out (`exec`, `webhook`, `kubernetes`).
    pub kind: String,
    pub plan_version: u64,
    pub instances: u32,
    /// The target's capacity as the provisioner compares targets (its capacity key).
    pub capacity: String,
    /// Node time, unix ms.
    pub at_ms: u64,
}

/// The `provisioner_applied` table.
pub struct AppliedStore {
    conn: Connection,
}

impl AppliedStore {
    /// Opens the table in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| applied_error(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// An in-memory table (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| applied_error("open in memory", e))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| applied_error("set busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| applied_error("enable WAL", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| applied_error("create the table", e))?;
        Ok(AppliedStore { conn })
    }

    /// The fleet's last carried-out target, if any.
    pub fn get(&self, region: &str, fleet: &str) -> Result<Option<AppliedRecord>> {
        self.conn
            .query_row(
                "SELECT kind, plan_version, instances, capacity, at_ms FROM provisioner_applied
                 WHERE region = ?1 AND fleet = ?2",
                params![region, fleet],
                |row| {
                    Ok(AppliedRecord {
                        kind: row.get(0)?,
                        plan_version: row.get::<_, i64>(1)?.max(0) as u64,
                        instances: row.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
                        capacity: row.get(3)?,
                        at_ms: row.get::<_, i64>(4)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(|e| applied_error("read", e))
    }

    /// Records what was carried out for the fleet (replacing the previous record).
    pub fn put(&self, region: &str, fleet: &str, record: &AppliedRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO provisioner_applied
                 (region, fleet, kind, plan_version, instances, capacity, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    region,
                    fleet,
                    record.kind,
                    record.plan_version as i64,
                    i64::from(record.instances),
                    record.capacity,
                    record.at_ms as i64,
                ],
            )
            .map(|_| ())
            .map_err(|e| applied_error("write", e))
    }
}

fn applied_error(what: impl Into<String>, source: rusqlite::Error) -> Error {
    Error::Store {
        what: format!("provisioner targets: {}", what.into()),
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_record_per_fleet_survives_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let store = AppliedStore::open(&path).expect("open");
        assert_eq!(store.get("eu", "web").unwrap(), None);
        let first = AppliedRecord {
            kind: "webhook".into(),
            plan_version: 3,
            instances: 4,
            capacity: "{\"instances\":4}".into(),
            at_ms: 1_000,
        };
        store.put("eu", "web", &first).unwrap();
        let second = AppliedRecord {
            plan_version: 5,
            instances: 2,
            ..first.clone()
        };
        store.put("eu", "web", &second).unwrap();
        drop(store);
        let reopened = AppliedStore::open(&path).expect("reopen");
        assert_eq!(reopened.get("eu", "web").unwrap(), Some(second));
        assert_eq!(reopened.get("eu", "api").unwrap(), None);
    }
}

//! The personas' tables in the forecaster's SQLite file: every version of every persona ever
//! written, and per name the highest version given and whether the persona is live.
//!
//! * Versions start at 1 and rise by one at each create or update of a name, also across a
//!   deletion and re-creation: `persona_names.last_version` is never lowered and its row is
//!   never deleted, so a version number is never given twice to one name.
//! * A deletion marks the name not live: the persona leaves [`PersonaStore::list`] and
//!   [`PersonaStore::get`] without a version, while each of its versions stays readable with
//!   `get(name, Some(n))` (answered with `deleted_at`) until the name is created again.
//! * Every write is one `BEGIN IMMEDIATE` transaction (it reads before it writes; taking the
//!   write lock first lets the busy timeout wait for the file's other writers).
//! * The schema is created by numbered migrations recorded in `persona_schema` (this module's
//!   own, so other tables' versions are not touched); each adds tables or columns only, runs in
//!   one transaction, and a database of a newer schema is refused rather than guessed at.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::input::Persona;
use super::PersonaError;

/// Migrations in order; `persona_schema.version` holds how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS persona_names (
        name TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL,
        live INTEGER NOT NULL CHECK (live IN (0, 1)),
        deleted_at_ms INTEGER
    );
    CREATE TABLE IF NOT EXISTS persona_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        document TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );"];

/// One version of a persona as stored, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredPersona {
    #[serde(flatten)]
    pub persona: Persona,
    /// 1 for a name's first creation, one more at every later create or update of it.
    pub version: u64,
    /// Node time this version was written, unix ms.
    pub created_at: u64,
    /// Node time the persona was deleted, unix ms, when it is deleted now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

/// The personas of the forecaster's database.
pub struct PersonaStore {
    conn: Connection,
}

fn db_error(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> PersonaError {
    let what = what.into();
    move |source| PersonaError::Store { what, source }
}

/// What `persona_names` says of a name.
struct NameRow {
    last_version: u64,
    live: bool,
}

impl PersonaStore {
    /// Opens the personas' tables in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self, PersonaError> {
        let conn = Connection::open(path).map_err(db_error(format!("open {}", path.display())))?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Self, PersonaError> {
        let conn = Connection::open_in_memory().map_err(db_error("open in memory"))?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Self, PersonaError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_error("set the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error("enable WAL"))?;
        // One transaction for the whole check-and-migrate, so two processes opening the same
        // file at once cannot both run a migration.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error("begin the schema migration"))?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS persona_schema (
                only INTEGER PRIMARY KEY CHECK (only = 0),
                version INTEGER NOT NULL
            );",
        )
        .map_err(db_error("create persona_schema"))?;
        let current: i64 = tx
            .query_row(
                "SELECT version FROM persona_schema WHERE only = 0",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error("read the schema version"))?
            .unwrap_or(0);
        let known = MIGRATIONS.len();
        let current = usize::try_from(current).unwrap_or(usize::MAX);
        if current > known {
            return Err(PersonaError::Unreadable {
                what: format!("the database has persona schema {current}; this build knows schemas up to {known}"),
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
            tx.execute_batch(migration)
                .map_err(db_error(format!("schema migration {}", index + 1)))?;
        }
        if current < known {
            tx.execute(
                "INSERT INTO persona_schema (only, version) VALUES (0, ?1)
                 ON CONFLICT (only) DO UPDATE SET version = excluded.version",
                params![known as i64],
            )
            .map_err(db_error("record the schema version"))?;
        }
        tx.commit()
            .map_err(db_error("commit the schema migration"))?;
        Ok(PersonaStore { conn })
    }

    /// Stores `persona` as a new persona at node time `now_ms`: version 1 for a new name, the
    /// next after the highest the name ever had when it was deleted before.
    pub fn create(
        &mut self,
        persona: &Persona,
        now_ms: u64,
    ) -> Result<StoredPersona, PersonaError> {
        self.write(persona, now_ms, |name, row| match row {
            Some(row) if row.live => Err(PersonaError::Conflict {
                name: name.to_string(),
                version: row.last_version,
            }),
            Some(row) => Ok(row.last_version + 1),
            None => Ok(1),
        })
    }

    /// Stores `persona` as the next version of the live persona of its name.
    pub fn update(
        &mut self,
        persona: &Persona,
        now_ms: u64,
    ) -> Result<StoredPersona, PersonaError> {
        self.write(persona, now_ms, |name, row| match row {
            Some(row) if row.live => Ok(row.last_version + 1),
            Some(row) => Err(PersonaError::NotFound {
                name: name.to_string(),
                deleted: Some(row.last_version),
            }),
            None => Err(PersonaError::NotFound {
                name: name.to_string(),
                deleted: None,
            }),
        })
    }

    fn write(
        &mut self,
        persona: &Persona,
        now_ms: u64,
        version_of: impl FnOnce(&str, Option<NameRow>) -> Result<u64, PersonaError>,
    ) -> Result<StoredPersona, PersonaError> {
        let name = persona.name.as_str();
        let document = serde_json::to_string(persona).map_err(|e| PersonaError::Unreadable {
            what: format!("persona `{name}` cannot be encoded: {e}"),
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error("begin a transaction"))?;
        let row = name_row(&tx, name)?;
        let version = version_of(name, row)?;
        tx.execute(
            "INSERT INTO persona_names (name, last_version, live, deleted_at_ms)
             VALUES (?1, ?2, 1, NULL)
             ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version, live = 1,
                 deleted_at_ms = NULL",
            params![name, version as i64],
        )
        .map_err(db_error(format!("record persona `{name}`")))?;
        tx.execute(
            "INSERT INTO persona_versions (name, version, document, created_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![name, version as i64, document, now_ms as i64],
        )
        .map_err(db_error(format!(
            "store version {version} of persona `{name}`"
        )))?;
        tx.commit()
            .map_err(db_error(format!("commit persona `{name}`")))?;
        Ok(StoredPersona {
            persona: persona.clone(),
            version,
            created_at: now_ms,
            deleted_at: None,
        })
    }

    /// The live persona `name` (its latest version), or its version `version` (also of a deleted
    /// persona, then with `deleted_at`).
    pub fn get(&self, name: &str, version: Option<u64>) -> Result<StoredPersona, PersonaError> {
        let found = self
            .conn
            .query_row(
                "SELECT n.last_version, n.live, n.deleted_at_ms, v.version, v.document, v.created_at_ms
                 FROM persona_names n
                 LEFT JOIN persona_versions v
                     ON v.name = n.name AND v.version = COALESCE(?2, n.last_version)
                 WHERE n.name = ?1",
                params![name, version.map(|v| v as i64)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)? as u64,
                        row.get::<_, bool>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error(format!("read persona `{name}`")))?;
        let Some((last_version, live, deleted_at, found, document, created_at)) = found else {
            return Err(match version {
                Some(version) => PersonaError::VersionNotFound {
                    name: name.to_string(),
                    version,
                    latest: None,
                },
                None => PersonaError::NotFound {
                    name: name.to_string(),
                    deleted: None,
                },
            });
        };
        let version = match version {
            None if !live => {
                return Err(PersonaError::NotFound {
                    name: name.to_string(),
                    deleted: Some(last_version),
                })
            }
            None => last_version,
            Some(v) => v,
        };
        match (found, document, created_at) {
            (Some(_), Some(document), Some(created_at)) => Ok(StoredPersona {
                persona: stored_persona(name, version, &document)?,
                version,
                created_at: created_at as u64,
                deleted_at: if live {
                    None
                } else {
                    deleted_at.map(|ms| ms as u64)
                },
            }),
            // Versions rows are never deleted: every version up to the last one exists.
            _ if (1..=last_version).contains(&version) => Err(PersonaError::Unreadable {
                what: format!("persona `{name}` has no row for its version {version}"),
            }),
            _ => Err(PersonaError::VersionNotFound {
                name: name.to_string(),
                version,
                latest: Some(last_version),
            }),
        }
    }

    /// The latest version of every live persona, by name.
    pub fn list(&self) -> Result<Vec<StoredPersona>, PersonaError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT n.name, v.version, v.document, v.created_at_ms
                 FROM persona_names n
                 JOIN persona_versions v ON v.name = n.name AND v.version = n.last_version
                 WHERE n.live = 1
                 ORDER BY n.name",
            )
            .map_err(db_error("prepare the personas query"))?;
        let rows = statement
            .query_map([], read_listed)
            .map_err(db_error("run the personas query"))?;
        let mut personas = Vec::new();
        for row in rows {
            let (name, version, document, created_at) =
                row.map_err(db_error("read a persona row"))?;
            personas.push(StoredPersona {
                persona: stored_persona(&name, version, &document)?,
                version,
                created_at,
                deleted_at: None,
            });
        }
        Ok(personas)
    }

    /// The live personas (latest versions) by name, as [`super::map_profiles`] takes them.
    pub fn current(&self) -> Result<Vec<Persona>, PersonaError> {
        Ok(self.list()?.into_iter().map(|p| p.persona).collect())
    }

    /// Deletes the live persona `name` at node time `now_ms`; returns its latest version as it
    /// was, with `deleted_at`. Its versions stay readable by number.
    pub fn delete(&mut self, name: &str, now_ms: u64) -> Result<StoredPersona, PersonaError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error("begin a transaction"))?;
        let row = name_row(&tx, name)?;
        let last_version = match row {
            Some(row) if row.live => row.last_version,
            other => {
                return Err(PersonaError::NotFound {
                    name: name.to_string(),
                    deleted: other.map(|r| r.last_version),
                })
            }
        };
        let (document, created_at) = tx
            .query_row(
                "SELECT document, created_at_ms FROM persona_versions WHERE name = ?1 AND version = ?2",
                params![name, last_version as i64],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(db_error(format!("read persona `{name}`")))?
            .ok_or_else(|| PersonaError::Unreadable {
                what: format!("persona `{name}` has no row for its version {last_version}"),
            })?;
        let persona = stored_persona(name, last_version, &document)?;
        tx.execute(
            "UPDATE persona_names SET live = 0, deleted_at_ms = ?2 WHERE name = ?1",
            params![name, now_ms as i64],
        )
        .map_err(db_error(format!("delete persona `{name}`")))?;
        tx.commit()
            .map_err(db_error(format!("commit the deletion of `{name}`")))?;
        Ok(StoredPersona {
            persona,
            version: last_version,
            created_at,
            deleted_at: Some(now_ms),
        })
    }
}

fn name_row(conn: &Connection, name: &str) -> Result<Option<NameRow>, PersonaError> {
    conn.query_row(
        "SELECT last_version, live FROM persona_names WHERE name = ?1",
        params![name],
        |row| {
            Ok(NameRow {
                last_version: row.get::<_, i64>(0)? as u64,
                live: row.get(1)?,
            })
        },
    )
    .optional()
    .map_err(db_error(format!("look up persona `{name}`")))
}

fn read_listed(row: &Row<'_>) -> rusqlite::Result<(String, u64, String, u64)> {
    Ok((
        row.get(0)?,
        row.get::<_, i64>(1)? as u64,
        row.get(2)?,
        row.get::<_, i64>(3)? as u64,
    ))
}

fn stored_persona(name: &str, version: u64, document: &str) -> Result<Persona, PersonaError> {
    Persona::from_stored(document.as_bytes(), name).map_err(|e| PersonaError::Unreadable {
        what: format!("version {version} of persona `{name}` cannot be read by this build: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personas::input::{Access, Known, Resources, Traffic};

    fn persona(name: &str, priority: u8) -> Persona {
        Persona {
            name: name.into(),
            description: None,
            resources: Resources {
                cpu_share: 0.01,
                memory_mb: 32.0,
                network_mbps: 0.1,
                io_ops: 1.0,
            },
            traffic: Traffic {
                peak_hours_utc: vec![9, 10],
                regions: vec!["eu".into()],
                access: vec![Access::Api, Access::Interactive],
            },
            tags: vec!["web".into()],
            revenue_weight: 1.5,
            priority,
            fleet: Some("web".into()),
            match_profiles: vec!["interactive-*".into()],
        }
    }

    #[test]
    fn versions_rise_and_old_ones_stay_readable() {
        let mut store = PersonaStore::in_memory().expect("store");
        let first = store.create(&persona("shoppers", 10), 100).unwrap();
        assert_eq!(
            (first.version, first.created_at, first.deleted_at),
            (1, 100, None)
        );
        let second = store.update(&persona("shoppers", 20), 200).unwrap();
        let third = store.update(&persona("shoppers", 30), 300).unwrap();
        assert_eq!((second.version, third.version), (2, 3));
        assert_eq!(store.get("shoppers", None).unwrap(), third);
        assert_eq!(store.get("shoppers", Some(1)).unwrap(), first);
        assert_eq!(store.get("shoppers", Some(2)).unwrap().persona.priority, 20);
        assert!(matches!(
            store.get("shoppers", Some(4)),
            Err(PersonaError::VersionNotFound {
                version: 4,
                latest: Some(3),
                ..
            })
        ));
        assert!(matches!(
            store.get("shoppers", Some(0)),
            Err(PersonaError::VersionNotFound { version: 0, .. })
        ));
        store.create(&persona("batch", 5), 400).unwrap();
        let names: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|p| (p.persona.name, p.version))
            .collect();
        assert_eq!(
            names,
            vec![("batch".to_string(), 1), ("shoppers".to_string(), 3)]
        );
        assert_eq!(store.current().unwrap()[1], third.persona);
    }

    #[test]
    fn a_persona_with_only_the_required_fields_reads_back() {
        let mut store = PersonaStore::in_memory().expect("store");
        let mut bare = persona("bare", 1);
        bare.fleet = None;
        bare.match_profiles.clear();
        bare.tags.clear();
        bare.traffic.peak_hours_utc.clear();
        bare.traffic.regions.clear();
        let stored = store.create(&bare, 1).unwrap();
        assert_eq!(store.get("bare", None).unwrap(), stored);
        assert_eq!(store.list().unwrap(), vec![stored]);
    }

    #[test]
    fn taken_names_conflict_and_unknown_ones_are_not_found() {
        let mut store = PersonaStore::in_memory().expect("store");
        store.create(&persona("shoppers", 10), 1).unwrap();
        assert!(matches!(
            store.create(&persona("shoppers", 11), 2),
            Err(PersonaError::Conflict { name, version: 1 }) if name == "shoppers"
        ));
        assert!(matches!(
            store.get("nobody", None),
            Err(PersonaError::NotFound { deleted: None, .. })
        ));
        assert!(matches!(
            store.get("nobody", Some(1)),
            Err(PersonaError::VersionNotFound { latest: None, .. })
        ));
        assert!(matches!(
            store.update(&persona("nobody", 1), 3),
            Err(PersonaError::NotFound { deleted: None, .. })
        ));
        assert!(matches!(
            store.delete("nobody", 4),
            Err(PersonaError::NotFound { deleted: None, .. })
        ));
        // The conflict changed nothing.
        assert_eq!(store.get("shoppers", None).unwrap().version, 1);
    }

    #[test]
    fn deletion_hides_the_persona_and_recreation_continues_its_versions() {
        let mut store = PersonaStore::in_memory().expect("store");
        store.create(&persona("shoppers", 10), 1).unwrap();
        let latest = store.update(&persona("shoppers", 20), 2).unwrap();
        let deleted = store.delete("shoppers", 3).unwrap();
        assert_eq!(deleted.persona, latest.persona);
        assert_eq!(
            (deleted.version, deleted.created_at, deleted.deleted_at),
            (2, 2, Some(3))
        );
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.get("shoppers", None),
            Err(PersonaError::NotFound {
                deleted: Some(2),
                ..
            })
        ));
        assert!(matches!(
            store.update(&persona("shoppers", 30), 4),
            Err(PersonaError::NotFound {
                deleted: Some(2),
                ..
            })
        ));
        assert!(matches!(
            store.delete("shoppers", 4),
            Err(PersonaError::NotFound {
                deleted: Some(2),
                ..
            })
        ));
        // Its versions stay readable, marked deleted.
        let old = store.get("shoppers", Some(1)).unwrap();
        assert_eq!((old.persona.priority, old.deleted_at), (10, Some(3)));

        let again = store.create(&persona("shoppers", 40), 5).unwrap();
        assert_eq!(again.version, 3, "never reuses a version number");
        assert_eq!(store.get("shoppers", None).unwrap(), again);
        assert_eq!(store.get("shoppers", Some(1)).unwrap().deleted_at, None);
        assert_eq!(
            store.update(&persona("shoppers", 50), 6).unwrap().version,
            4
        );
    }

    #[test]
    fn personas_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let (kept, old) = {
            let mut store = PersonaStore::open(&path).expect("open");
            let old = store.create(&persona("shoppers", 10), 1).unwrap();
            let kept = store.update(&persona("shoppers", 20), 2).unwrap();
            store.create(&persona("gone", 1), 3).unwrap();
            store.delete("gone", 4).unwrap();
            (kept, old)
        };
        let mut store = PersonaStore::open(&path).expect("reopen");
        assert_eq!(store.list().unwrap(), vec![kept]);
        assert_eq!(store.get("shoppers", Some(1)).unwrap(), old);
        assert_eq!(store.create(&persona("gone", 2), 5).unwrap().version, 2);
        assert_eq!(
            store.update(&persona("shoppers", 30), 6).unwrap().version,
            3
        );
    }

    #[test]
    fn the_migration_leaves_other_tables_alone_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (7);
                 CREATE TABLE scheduled_events (id TEXT);
                 INSERT INTO scheduled_events VALUES ('ev-1');",
            )
            .expect("an existing database");
        }
        PersonaStore::open(&path).expect("migrate");
        PersonaStore::open(&path).expect("open again: nothing left to migrate");
        let conn = Connection::open(&path).expect("open");
        let other: (i64, String) = conn
            .query_row(
                "SELECT (SELECT version FROM schema_version), (SELECT id FROM scheduled_events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("other tables");
        assert_eq!(other, (7, "ev-1".to_string()));
        let schema: i64 = conn
            .query_row("SELECT version FROM persona_schema", [], |r| r.get(0))
            .expect("schema row");
        assert_eq!(schema, MIGRATIONS.len() as i64);
        conn.execute("UPDATE persona_schema SET version = 99", [])
            .expect("newer schema");
        drop(conn);
        match PersonaStore::open(&path) {
            Err(e @ PersonaError::Unreadable { .. }) => {
                assert!(e.to_string().contains("schema 99"), "{e}")
            }
            Err(other) => panic!("expected a schema error, got {other:?}"),
            Ok(_) => panic!("expected a schema error"),
        }
    }

    #[test]
    fn a_row_this_build_cannot_read_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let mut store = PersonaStore::open(&path).expect("open");
        store.create(&persona("shoppers", 10), 1).unwrap();
        Connection::open(&path)
            .expect("open")
            .execute(
                "UPDATE persona_versions SET document = '{\"name\":\"shoppers\",\"mood\":1}'",
                [],
            )
            .expect("break the row");
        for result in [
            store.get("shoppers", None).map(|_| ()),
            store.list().map(|_| ()),
        ] {
            match result {
                Err(e @ PersonaError::Unreadable { .. }) => {
                    assert!(e.to_string().contains("mood"), "{e}")
                }
                other => panic!("expected an unreadable row, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_stored_document_serializes_flat_with_its_bookkeeping() {
        let mut store = PersonaStore::in_memory().expect("store");
        let stored = store.create(&persona("shoppers", 10), 42).unwrap();
        let value = serde_json::to_value(&stored).expect("json");
        assert_eq!(value["name"], "shoppers");
        assert_eq!(value["version"], 1);
        assert_eq!(value["created_at"], 42);
        assert_eq!(value["resources"]["memory_mb"], 32.0);
        assert!(value.get("deleted_at").is_none());
        // Without the bookkeeping it is a valid document again.
        let mut body = value.as_object().expect("object").clone();
        body.remove("version");
        body.remove("created_at");
        let known = Known {
            regions: vec!["eu".into()],
            fleets: vec!["web".into()],
        };
        let back = Persona::from_json(
            serde_json::to_string(&body).expect("json").as_bytes(),
            None,
            &known,
        )
        .expect("round trip");
        assert_eq!(back, stored.persona);
    }
}

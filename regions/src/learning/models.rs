//! The learned models table, in the forecaster's database file (the series store's): every
//! model built, with its version, build time (node seconds), the builder's [`LearnedModel`] (the
//! next build's `previous`, for stable IDs and names) and the [`ProfileModel`] published.
//!
//! Invariants: versions strictly increase across restarts (a new version is the highest stored
//! plus one, taken in the `BEGIN IMMEDIATE` transaction that stores it, and the newest row is
//! never pruned); a stored row decodes to the same models it was saved from (JSON with exact
//! float round trips); the published model stored carries its row's version.

use std::path::Path;

use prescale_gossip::model::ProfileModel;
use prescale_profiler::LearnedModel;
use rusqlite::{params, Connection, OptionalExtension};

use super::error::{database, LearningError};

/// Models kept; older rows are deleted when a new one is stored.
pub const MODELS_KEPT: u64 = 50;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS learned_models (
    version INTEGER PRIMARY KEY,
    built_at INTEGER NOT NULL,
    learned TEXT NOT NULL,
    published TEXT NOT NULL
);";

/// One stored model.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredModel {
    pub version: u64,
    /// Node time of the build, unix seconds.
    pub built_at: u64,
    pub learned: LearnedModel,
    pub published: ProfileModel,
}

/// The learned models table on its own connection.
pub struct ModelStore {
    conn: Connection,
}

impl ModelStore {
    /// Opens the table in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self, LearningError> {
        let conn =
            Connection::open(path).map_err(|e| database(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// An in-memory table (tests).
    pub fn in_memory() -> Result<Self, LearningError> {
        let conn = Connection::open_in_memory().map_err(|e| database("open in memory", e))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self, LearningError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| database("set busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| database("enable WAL", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| database("create the learned models table", e))?;
        Ok(ModelStore { conn })
    }

    /// The newest stored model.
    pub fn latest(&self) -> Result<Option<StoredModel>, LearningError> {
        let row = self
            .conn
            .query_row(
                "SELECT version, built_at, learned, published FROM learned_models
                 ORDER BY version DESC LIMIT 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| database("read the latest model", e))?;
        let Some((version, built_at, learned, published)) = row else {
            return Ok(None);
        };
        let version = version as u64;
        let decode = |what, source| LearningError::Decode {
            version,
            what,
            source,
        };
        Ok(Some(StoredModel {
            version,
            built_at: built_at as u64,
            learned: serde_json::from_str(&learned).map_err(|e| decode("learned model", e))?,
            published: serde_json::from_str(&published)
                .map_err(|e| decode("published model", e))?,
        }))
    }

    /// Stores `learned` as the next version: `publish(version)` makes the published model
    /// (nothing is stored when it fails). Prunes all but the newest [`MODELS_KEPT`].
    pub fn save(
        &mut self,
        built_at: u64,
        learned: &LearnedModel,
        publish: impl FnOnce(u64) -> Result<ProfileModel, LearningError>,
    ) -> Result<StoredModel, LearningError> {
        let learned_json =
            serde_json::to_string(learned).map_err(|source| LearningError::Encode {
                what: "learned model",
                source,
            })?;
        // Immediate: this transaction reads the highest version before it writes, and other
        // connections to the file (the sketch writer, the live driver) commit in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| database("begin a transaction", e))?;
        let highest: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM learned_models",
                [],
                |row| row.get(0),
            )
            .map_err(|e| database("read the highest version", e))?;
        let version = highest as u64 + 1;
        let published = publish(version)?;
        let published_json =
            serde_json::to_string(&published).map_err(|source| LearningError::Encode {
                what: "published model",
                source,
            })?;
        tx.execute(
            "INSERT INTO learned_models (version, built_at, learned, published)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                version as i64,
                built_at as i64,
                learned_json,
                published_json
            ],
        )
        .map_err(|e| database(format!("store model version {version}"), e))?;
        tx.execute(
            "DELETE FROM learned_models WHERE version <= ?1",
            params![version.saturating_sub(MODELS_KEPT) as i64],
        )
        .map_err(|e| database("prune old models", e))?;
        tx.commit()
            .map_err(|e| database(format!("commit model version {version}"), e))?;
        Ok(StoredModel {
            version,
            built_at,
            learned: learned.clone(),
            published,
        })
    }

    /// Stored versions, oldest first.
    pub fn versions(&self) -> Result<Vec<u64>, LearningError> {
        let mut statement = self
            .conn
            .prepare("SELECT version FROM learned_models ORDER BY version")
            .map_err(|e| database("list versions", e))?;
        let rows = statement
            .query_map([], |row| row.get::<_, i64>(0))
            .map_err(|e| database("list versions", e))?;
        rows.map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()
            .map_err(|e| database("list versions", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::convert::{no_settings, tests::learned, to_profile_model};

    fn save(store: &mut ModelStore, learned: &LearnedModel, built_at: u64) -> StoredModel {
        store
            .save(built_at, learned, |version| {
                to_profile_model(learned, version, built_at, no_settings(learned))
            })
            .expect("save")
    }

    #[test]
    fn round_trip_and_versions_rise_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        let mut model = learned(&["api-writers", "browsers"]);
        // Values that a lossy float encoding would change.
        model.mean[0] = 0.1 + 0.2;
        model.profiles[0].center_raw[3] = 1.0 / 3.0;
        {
            let mut store = ModelStore::open(&path).expect("open");
            assert_eq!(store.latest().expect("latest"), None);
            let first = save(&mut store, &model, 100);
            assert_eq!(first.version, 1);
            assert_eq!(first.published.version, 1);
            let second = save(&mut store, &model, 200);
            assert_eq!(second.version, 2);
        }
        let mut store = ModelStore::open(&path).expect("reopen");
        let latest = store.latest().expect("latest").expect("a model");
        assert_eq!(latest.version, 2);
        assert_eq!(latest.built_at, 200);
        assert_eq!(latest.learned, model);
        assert_eq!(latest.published.version, 2);
        assert_eq!(
            latest.published,
            to_profile_model(&model, 2, 200, no_settings(&model)).expect("valid")
        );
        let third = save(&mut store, &model, 300);
        assert_eq!(third.version, 3);
        assert_eq!(store.versions().expect("versions"), vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_conversion_stores_nothing() {
        let mut store = ModelStore::in_memory().expect("open");
        let model = learned(&["a"]);
        let failed = store.save(1, &model, |_| {
            Err(LearningError::SettingsCount {
                given: 0,
                profiles: 1,
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.latest().expect("latest"), None);
        assert_eq!(save(&mut store, &model, 2).version, 1);
    }

    #[test]
    fn old_models_are_pruned_but_versions_keep_rising() {
        let mut store = ModelStore::in_memory().expect("open");
        let model = learned(&["a"]);
        for t in 0..MODELS_KEPT + 5 {
            save(&mut store, &model, t);
        }
        let versions = store.versions().expect("versions");
        assert_eq!(versions.len() as u64, MODELS_KEPT);
        assert_eq!(versions.last().copied(), Some(MODELS_KEPT + 5));
        assert_eq!(save(&mut store, &model, 99).version, MODELS_KEPT + 6);
    }

    #[test]
    fn an_unreadable_row_is_an_error_naming_its_version() {
        let mut store = ModelStore::in_memory().expect("open");
        save(&mut store, &learned(&["a"]), 1);
        store
            .conn
            .execute(
                "UPDATE learned_models SET learned = '{' WHERE version = 1",
                [],
            )
            .expect("corrupt");
        let err = store.latest().expect_err("corrupt row");
        assert!(err.to_string().contains("learned model version 1"), "{err}");
    }
}

//! The forecaster's series store: sketches from proxy nodes merged into per-(region, origin,
//! profile, fleet) series at one-minute resolution, in one SQLite file (WAL, versioned schema,
//! retention).
//!
//! Invariants:
//! - a sketch is applied at most once: `(node, sequence)` is recorded in the same transaction
//!   as its counts, so a crash either keeps both or neither, and a resent sketch is skipped;
//! - counts add, latency histograms merge (HdrHistogram), unique-user HyperLogLogs merge;
//! - nothing here reads the wall clock: callers pass `now` (retention, last-seen).

use std::collections::BTreeMap;
use std::path::Path;

use prescale_gossip::{EntryStats, HyperLogLog, LatencyHistogram, Sketch};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::error::{Error, Result};

/// Schema migrations, applied in order; `schema_version` holds how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: received sketches (dedup), nodes, minute series.
    "CREATE TABLE received (
        node TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        interval_start_ms INTEGER NOT NULL,
        PRIMARY KEY (node, sequence)
     ) WITHOUT ROWID;
     CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        last_sequence INTEGER NOT NULL,
        spooled INTEGER NOT NULL,
        dropped INTEGER NOT NULL,
        sketches INTEGER NOT NULL
     );
     CREATE TABLE series (
        region TEXT NOT NULL,
        origin TEXT NOT NULL,
        profile TEXT NOT NULL,
        fleet TEXT NOT NULL,
        minute INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        latency BLOB NOT NULL,
        users BLOB NOT NULL,
        PRIMARY KEY (region, profile, fleet, origin, minute)
     ) WITHOUT ROWID;
     CREATE INDEX series_by_minute ON series (minute);",
];

/// One minute of one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Unix seconds of the minute's start.
    pub minute: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Distinct users (HyperLogLog estimate).
    pub users: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Which series to read; `None` matches all.
#[derive(Clone, Debug, Default)]
pub struct SeriesQuery {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub fleet: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<u64>,
    /// Unix seconds, exclusive.
    pub to: Option<u64>,
}

/// A node as the store last heard from it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRecord {
    pub node: String,
    pub region: String,
    pub last_seen_ms: u64,
    pub last_sequence: u64,
    /// The node's spool backlog as of its last sketch.
    pub spooled: u64,
    /// Sketches the node dropped from a full spool.
    pub dropped: u64,
    pub sketches: u64,
}

/// What happened to one sketch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    Stored,
    /// Already stored earlier: nothing changed.
    Duplicate,
}

pub struct SeriesStore {
    conn: Connection,
}

impl SeriesStore {
    /// Opens (creating if needed) the store at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| store_error(format!("open {}", path.display()), e))?;
        Self::init(conn, &path.display().to_string())
    }

    /// An in-memory store (tests, replay).
    pub fn in_memory() -> Result<Self> {
        let conn =
            Connection::open_in_memory().map_err(|e| store_error("open in-memory store", e))?;
        Self::init(conn, "in-memory store")
    }

    fn init(conn: Connection, name: &str) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| store_error(format!("{name}: enable WAL"), e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| store_error(format!("{name}: set synchronous"), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| store_error(format!("{name}: set busy timeout"), e))?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
            .map_err(|e| store_error(format!("{name}: create schema_version"), e))?;
        let current: Option<i64> = conn
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .optional()
            .map_err(|e| store_error(format!("{name}: read schema version"), e))?;
        let current = current.unwrap_or(0);
        if current as usize > MIGRATIONS.len() {
            return Err(Error::Store {
                what: format!(
                    "{name}: schema version {current} is newer than this build knows ({})",
                    MIGRATIONS.len()
                ),
                source: None,
            });
        }
        let mut store = SeriesStore { conn };
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = store
                .conn
                .transaction()
                .map_err(|e| store_error("begin migration", e))?;
            tx.execute_batch(migration)
                .map_err(|e| store_error(format!("{name}: migration {}", index + 1), e))?;
            tx.execute("DELETE FROM schema_version", [])
                .map_err(|e| store_error("update schema version", e))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![(index + 1) as i64],
            )
            .map_err(|e| store_error("update schema version", e))?;
            tx.commit()
                .map_err(|e| store_error(format!("{name}: commit migration {}", index + 1), e))?;
        }
        Ok(store)
    }

    /// The highest sequence stored for `node`.
    pub fn last_sequence(&self, node: &str) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT MAX(sequence) FROM received WHERE node = ?1",
                params![node],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|s| s as u64))
            .map_err(|e| store_error(format!("read last sequence of {node}"), e))
    }

    /// Applies a batch of sketches in one transaction (all or nothing). `now_ms` is the arrival
    /// time recorded as the nodes' last-seen.
    pub fn ingest(&mut self, sketches: &[Sketch], now_ms: u64) -> Result<Vec<Ingested>> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| store_error("begin ingest", e))?;
        let mut outcomes = Vec::with_capacity(sketches.len());
        // Entries of the batch are merged in memory first, so each series row is read and
        // written once per batch however many sketches touch it.
        let mut rows: BTreeMap<RowKey, RowAcc> = BTreeMap::new();
        for sketch in sketches {
            outcomes.push(record_sketch(&tx, sketch, now_ms, &mut rows)?);
        }
        write_rows(&tx, rows)?;
        tx.commit().map_err(|e| store_error("commit ingest", e))?;
        Ok(outcomes)
    }

    /// Minute points of the series matching `query`, summed over what the query leaves open
    /// (e.g. all fleets), keyed by `region/profile/fleet` with `*` for open dimensions.
    pub fn series(&self, query: &SeriesQuery) -> Result<BTreeMap<String, Vec<SeriesPoint>>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT region, profile, fleet, minute, requests, errors, bytes_in, bytes_out, latency, users
                 FROM series
                 WHERE (?1 IS NULL OR region = ?1) AND (?2 IS NULL OR profile = ?2) AND (?3 IS NULL OR fleet = ?3)
                   AND (?4 IS NULL OR minute >= ?4) AND (?5 IS NULL OR minute < ?5)
                 ORDER BY minute",
            )
            .map_err(|e| store_error("prepare series query", e))?;
        let rows = statement
            .query_map(
                params![
                    query.region,
                    query.profile,
                    query.fleet,
                    query.from.map(|v| v as i64),
                    query.to.map(|v| v as i64)
                ],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        [
                            row.get::<_, i64>(4)?,
                            row.get::<_, i64>(5)?,
                            row.get::<_, i64>(6)?,
                            row.get::<_, i64>(7)?,
                        ],
                        row.get::<_, Vec<u8>>(8)?,
                        row.get::<_, Vec<u8>>(9)?,
                    ))
                },
            )
            .map_err(|e| store_error("run series query", e))?;
        struct Acc {
            counts: [u64; 4],
            latency: LatencyHistogram,
            users: Option<HyperLogLog>,
        }
        let mut grouped: BTreeMap<String, BTreeMap<u64, Acc>> = BTreeMap::new();
        for row in rows {
            let (region, profile, fleet, minute, counts, latency, users) =
                row.map_err(|e| store_error("read series row", e))?;
            let name = format!(
                "{}/{}/{}",
                if query.region.is_some() {
                    region.as_str()
                } else {
                    "*"
                },
                if query.profile.is_some() {
                    profile.as_str()
                } else {
                    "*"
                },
                if query.fleet.is_some() {
                    fleet.as_str()
                } else {
                    "*"
                },
            );
            let latency = LatencyHistogram::from_bytes(latency)
                .map_err(|e| sketch_error("stored latency histogram", e))?;
            let users: HyperLogLog = decode_hll(&users)?;
            let acc = grouped
                .entry(name)
                .or_default()
                .entry(minute as u64)
                .or_insert_with(|| Acc {
                    counts: [0; 4],
                    latency: LatencyHistogram::empty(),
                    users: None,
                });
            for (total, value) in acc.counts.iter_mut().zip(counts) {
                *total = total.saturating_add(value as u64);
            }
            acc.latency
                .merge(&latency)
                .map_err(|e| sketch_error("merge latency histograms", e))?;
            match &mut acc.users {
                Some(total) => total
                    .merge(&users)
                    .map_err(|e| sketch_error("merge user counts", e))?,
                None => acc.users = Some(users),
            }
        }
        let mut out = BTreeMap::new();
        for (name, minutes) in grouped {
            let mut points = Vec::with_capacity(minutes.len());
            for (minute, acc) in minutes {
                let histogram = acc
                    .latency
                    .to_histogram()
                    .map_err(|e| sketch_error("decode latency histogram", e))?;
                let quantile = |q: f64| {
                    (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0)
                };
                points.push(SeriesPoint {
                    minute,
                    requests: acc.counts[0],
                    errors: acc.counts[1],
                    bytes_in: acc.counts[2],
                    bytes_out: acc.counts[3],
                    users: acc.users.map(|u| u.estimate()).unwrap_or(0.0),
                    latency_p50_ms: quantile(0.5),
                    latency_p99_ms: quantile(0.99),
                });
            }
            out.insert(name, points);
        }
        Ok(out)
    }

    /// Requests per profile of `region` in minutes `[from, to)` (unix seconds), most first.
    pub fn totals_by_profile(
        &self,
        region: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64)>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT profile, SUM(requests) FROM series WHERE region = ?1 AND minute >= ?2 AND minute < ?3
                 GROUP BY profile ORDER BY SUM(requests) DESC, profile",
            )
            .map_err(|e| store_error("prepare totals query", e))?;
        let rows = statement
            .query_map(params![region, from as i64, to as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| store_error("run totals query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| store_error("read totals row", e))
    }

    /// Every node that has sent a sketch.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT node, region, last_seen_ms, last_sequence, spooled, dropped, sketches FROM nodes ORDER BY node",
            )
            .map_err(|e| store_error("prepare nodes query", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(NodeRecord {
                    node: row.get(0)?,
                    region: row.get(1)?,
                    last_seen_ms: row.get::<_, i64>(2)? as u64,
                    last_sequence: row.get::<_, i64>(3)? as u64,
                    spooled: row.get::<_, i64>(4)? as u64,
                    dropped: row.get::<_, i64>(5)? as u64,
                    sketches: row.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| store_error("run nodes query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| store_error("read node row", e))
    }

    /// Deletes series minutes and dedup records older than `now - retention_secs`. Returns the
    /// number of series rows removed.
    pub fn prune(&mut self, now_secs: u64, retention_secs: u64) -> Result<usize> {
        let cutoff = now_secs.saturating_sub(retention_secs) as i64;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| store_error("begin prune", e))?;
        let removed = tx
            .execute("DELETE FROM series WHERE minute < ?1", params![cutoff])
            .map_err(|e| store_error("prune series", e))?;
        // Keep each node's latest record so dedup still knows where it stands.
        tx.execute(
            "DELETE FROM received WHERE interval_start_ms < ?1 * 1000
               AND sequence < (SELECT MAX(r.sequence) FROM received r WHERE r.node = received.node)",
            params![cutoff],
        )
        .map_err(|e| store_error("prune dedup records", e))?;
        tx.commit().map_err(|e| store_error("commit prune", e))?;
        Ok(removed)
    }
}

/// A series row: (region, origin, profile, fleet, minute).
type RowKey = (String, String, String, String, i64);

/// A series row's additions from one batch, histograms kept decoded while they accumulate.
struct RowAcc {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency: hdrhistogram::Histogram<u64>,
    users: HyperLogLog,
}

impl RowAcc {
    fn from_stats(stats: &EntryStats) -> Result<Self> {
        Ok(RowAcc {
            requests: stats.requests,
            errors: stats.errors,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            latency: stats
                .latency
                .to_histogram()
                .map_err(|e| sketch_error("sketch latency histogram", e))?,
            users: stats.users.clone(),
        })
    }

    fn add(&mut self, stats: &EntryStats) -> Result<()> {
        let latency = stats
            .latency
            .to_histogram()
            .map_err(|e| sketch_error("sketch latency histogram", e))?;
        self.latency.add(&latency).map_err(|e| Error::Store {
            what: format!("merge latency histograms: {e:?}"),
            source: None,
        })?;
        self.users
            .merge(&stats.users)
            .map_err(|e| sketch_error("merge user counts", e))?;
        self.requests = self.requests.saturating_add(stats.requests);
        self.errors = self.errors.saturating_add(stats.errors);
        self.bytes_in = self.bytes_in.saturating_add(stats.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(stats.bytes_out);
        Ok(())
    }
}

/// Records the sketch as received (dedup) and its node; when new, merges its entries into `rows`.
fn record_sketch(
    tx: &Transaction<'_>,
    sketch: &Sketch,
    now_ms: u64,
    rows: &mut BTreeMap<RowKey, RowAcc>,
) -> Result<Ingested> {
    let inserted = tx
        .execute(
            "INSERT OR IGNORE INTO received (node, sequence, interval_start_ms) VALUES (?1, ?2, ?3)",
            params![sketch.node, sketch.sequence as i64, sketch.interval_start_ms as i64],
        )
        .map_err(|e| store_error("record sketch", e))?;
    tx.execute(
        "INSERT INTO nodes (node, region, last_seen_ms, last_sequence, spooled, dropped, sketches)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
         ON CONFLICT (node) DO UPDATE SET region = ?2, last_seen_ms = ?3,
            last_sequence = MAX(last_sequence, ?4), spooled = ?5, dropped = ?6, sketches = sketches + ?7",
        params![
            sketch.node,
            sketch.region,
            now_ms as i64,
            sketch.sequence as i64,
            i64::from(sketch.sender.spooled),
            sketch.sender.dropped as i64,
            i64::from(inserted > 0)
        ],
    )
    .map_err(|e| store_error("update node", e))?;
    if inserted == 0 {
        return Ok(Ingested::Duplicate);
    }
    let minute = (sketch.interval_start_ms / 60_000 * 60) as i64;
    for entry in &sketch.entries {
        let key = &entry.key;
        let row = (
            sketch.region.clone(),
            key.origin_region.clone(),
            key.profile.clone(),
            key.fleet.clone(),
            minute,
        );
        match rows.get_mut(&row) {
            Some(total) => total.add(&entry.stats)?,
            None => {
                rows.insert(row, RowAcc::from_stats(&entry.stats)?);
            }
        }
    }
    Ok(Ingested::Stored)
}

/// Adds the batch's merged entries to their series rows.
fn write_rows(tx: &Transaction<'_>, rows: BTreeMap<RowKey, RowAcc>) -> Result<()> {
    for ((region, origin, profile, fleet, minute), mut stats) in rows {
        let existing: Option<(Vec<u8>, Vec<u8>)> = tx
            .query_row(
                "SELECT latency, users FROM series WHERE region = ?1 AND profile = ?2 AND fleet = ?3 AND origin = ?4 AND minute = ?5",
                params![region, profile, fleet, origin, minute],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| store_error("read series row", e))?;
        let (latency, users) = match existing {
            Some((latency, users)) => {
                let stored = LatencyHistogram::from_bytes(latency)
                    .and_then(|h| h.to_histogram())
                    .map_err(|e| sketch_error("stored latency histogram", e))?;
                stats.latency.add(&stored).map_err(|e| Error::Store {
                    what: format!("merge latency histograms: {e:?}"),
                    source: None,
                })?;
                let mut merged = decode_hll(&users)?;
                merged
                    .merge(&stats.users)
                    .map_err(|e| sketch_error("merge user counts", e))?;
                (stats.latency, merged)
            }
            None => (stats.latency, stats.users),
        };
        let latency = LatencyHistogram::from_histogram(&latency)
            .map_err(|e| sketch_error("encode latency histogram", e))?;
        let users = postcard::to_allocvec(&users).map_err(|e| Error::Store {
            what: format!("encode user count: {e}"),
            source: None,
        })?;
        tx.execute(
            "INSERT INTO series (region, origin, profile, fleet, minute, requests, errors, bytes_in, bytes_out, latency, users)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (region, profile, fleet, origin, minute) DO UPDATE SET
                requests = requests + ?6, errors = errors + ?7, bytes_in = bytes_in + ?8, bytes_out = bytes_out + ?9,
                latency = ?10, users = ?11",
            params![
                region,
                origin,
                profile,
                fleet,
                minute,
                stats.requests as i64,
                stats.errors as i64,
                stats.bytes_in as i64,
                stats.bytes_out as i64,
                latency.as_bytes(),
                users
            ],
        )
        .map_err(|e| store_error("write series row", e))?;
    }
    Ok(())
}

fn decode_hll(bytes: &[u8]) -> Result<HyperLogLog> {
    postcard::from_bytes(bytes).map_err(|e| Error::Store {
        what: format!("stored user count is corrupt: {e}"),
        source: None,
    })
}

fn store_error(what: impl Into<String>, source: rusqlite::Error) -> Error {
    Error::Store {
        what: what.into(),
        source: Some(source),
    }
}

fn sketch_error(what: &str, source: prescale_gossip::Error) -> Error {
    Error::Store {
        what: format!("{what}: {source}"),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prescale_gossip::EntryKey;

    fn sketch(
        node: &str,
        sequence: u64,
        start_ms: u64,
        profile: &str,
        requests: u64,
        users: &[u64],
    ) -> Sketch {
        let mut s = Sketch::new(node, "eu", start_ms, start_ms + 10_000);
        s.sequence = sequence;
        let stats = s.entry(EntryKey {
            profile: profile.into(),
            origin_region: "eu".into(),
            fleet: "web".into(),
        });
        stats.requests = requests;
        stats.errors = requests / 10;
        let mut h =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for i in 0..requests {
            h.record(1_000 + i).expect("record");
        }
        stats.set_latency(&h).expect("latency");
        for u in users {
            stats.users.insert(*u);
        }
        s
    }

    #[test]
    fn sketches_merge_into_minutes_once() {
        let mut store = SeriesStore::in_memory().expect("store");
        let minute = 1_700_000_040_000; // a minute boundary
        let a = sketch("n1", 1, minute, "batch", 100, &[1, 2, 3]);
        let b = sketch("n1", 2, minute + 10_000, "batch", 50, &[3, 4]);
        let c = sketch("n2", 1, minute + 20_000, "batch", 25, &[5]);
        assert_eq!(
            store.ingest(&[a.clone(), b], 1).expect("ingest"),
            vec![Ingested::Stored, Ingested::Stored]
        );
        assert_eq!(
            store.ingest(&[a, c], 2).expect("ingest"),
            vec![Ingested::Duplicate, Ingested::Stored]
        );
        let series = store
            .series(&SeriesQuery {
                profile: Some("batch".into()),
                ..Default::default()
            })
            .expect("series");
        let points = &series["*/batch/*"];
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].minute, minute / 1000);
        assert_eq!(points[0].requests, 175);
        assert_eq!(points[0].errors, 10 + 5 + 2);
        assert!((points[0].users - 5.0).abs() < 0.5, "{}", points[0].users);
        assert!(points[0].latency_p99_ms.is_some());
        assert_eq!(store.last_sequence("n1").expect("seq"), Some(2));
        assert_eq!(store.last_sequence("n3").expect("seq"), None);
        let nodes = store.nodes().expect("nodes");
        assert_eq!(
            nodes
                .iter()
                .map(|n| (n.node.as_str(), n.sketches))
                .collect::<Vec<_>>(),
            [("n1", 2), ("n2", 1)]
        );
    }

    #[test]
    fn data_survives_reopening_and_old_minutes_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        {
            let mut store = SeriesStore::open(&path).expect("open");
            store
                .ingest(
                    &[
                        sketch("n1", 7, 60_000, "web", 3, &[1]),
                        sketch("n1", 8, 3_600_000, "web", 4, &[1]),
                    ],
                    1,
                )
                .expect("ingest");
        }
        let mut store = SeriesStore::open(&path).expect("reopen");
        assert_eq!(store.last_sequence("n1").expect("seq"), Some(8));
        assert_eq!(
            store
                .ingest(&[sketch("n1", 8, 3_600_000, "web", 4, &[1])], 2)
                .expect("ingest"),
            vec![Ingested::Duplicate]
        );
        let total = |store: &SeriesStore| -> u64 {
            store
                .series(&SeriesQuery::default())
                .expect("series")
                .values()
                .flatten()
                .map(|p| p.requests)
                .sum()
        };
        assert_eq!(total(&store), 7);
        assert_eq!(store.prune(3_600 + 60, 120).expect("prune"), 1);
        assert_eq!(total(&store), 4);
        assert_eq!(
            store.last_sequence("n1").expect("seq"),
            Some(8),
            "dedup state outlives pruning"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        drop(SeriesStore::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("raw");
        conn.execute("UPDATE schema_version SET version = 99", [])
            .expect("bump");
        drop(conn);
        let err = SeriesStore::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}

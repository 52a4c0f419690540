//! The forecaster's series store: sketches from proxy nodes merged into per-(region, origin,
//! profile, fleet) series at one-minute resolution, in one SQLite file (WAL, versioned schema,
//! retention).
//!
//! Invariants:
//! - a sketch is applied at most once: each node's highest stored sequence (its high-water
//!   mark, `nodes.last_sequence`) advances in the same transaction as the counts, so a crash
//!   either keeps both or neither, and a resent sketch (sequence at or below the mark) is
//!   skipped. A mark suffices because a proxy delivers its sketches in sequence order, one at a
//!   time, and a new spool starts above every sequence it sent before; it needs no pruning, so
//!   pruning never holds the writer up for long (series rows go in small transactions);
//!   a batch posted to the ingest route ([`SeriesStore::ingest_batch`]) is applied whole in one
//!   transaction with its idempotency key, under sequences that continue its node's;
//! - a sketch that would poison a row is refused ([`Error::Refused`]), never half-applied: counts
//!   whose sum exceeds [`MAX_COUNT`] (SQLite integers are signed 64-bit), unique-user counts at
//!   another precision than the row's;
//! - counts add, latency histograms merge exactly (counter by counter, and a minute is stored at
//!   its own precision, never re-bucketed to the wire's size budget), unique-user HyperLogLogs
//!   merge (register-wise max);
//! - nothing here reads the wall clock: callers pass `now` (retention, last-seen).
//!
//! Durability: WAL with `synchronous = FULL` (`SYNCHRONOUS`): a batch's commit is on disk
//! before its sketches are acknowledged, so an acknowledged sketch survives a crash of the
//! forecaster, of the OS, or a power loss (the proxies drop a sketch from their spool only then).
//! It costs one fsync per batch (a few ms; batches of up to 512 sketches keep that small);
//! `NORMAL` would be ~20 % faster but could lose acknowledged sketches on an OS crash.
//!
//! Speed: a batch is merged in memory first (one accumulator per series row and per node), so
//! each row is read and written once per batch; histograms are summed from their encoded form
//! ([`HistogramSum`]) without inflating again those the receiver already validated; statements
//! are prepared once per connection.

use std::collections::BTreeMap;
use std::path::Path;

use prescale_gossip::histogram::{HistogramCodec, HistogramSum};
use prescale_gossip::hll::HllCodec;
use prescale_gossip::{EntryStats, HyperLogLog, LatencyHistogram, Sketch};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::admission::{Refused, MAX_COUNT};
use crate::error::{Error, Result};

/// SQLite's `synchronous` setting; see the module docs for what an acknowledged sketch survives.
const SYNCHRONOUS: &str = "FULL";

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
    // 2: how far each node has reported (the end of its latest interval), for the live
    // driver's "is this minute complete" check.
    // Coverage: how many sketches (empty ones included) each minute of a region got, so a
    // quiet minute (covered, no requests) is told from a missing one (not covered).
    "ALTER TABLE nodes ADD COLUMN reported_through_ms INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE coverage (
        region TEXT NOT NULL,
        minute INTEGER NOT NULL,
        sketches INTEGER NOT NULL,
        PRIMARY KEY (region, minute)
     ) WITHOUT ROWID;",
    // 3: the idempotency keys of batches posted to the forecaster's ingest route, each with a
    // hash of its body and its counts, written in the transaction of the batch's sketches.
    "CREATE TABLE ingest_keys (
        key TEXT PRIMARY KEY,
        body_hash INTEGER NOT NULL,
        events INTEGER NOT NULL,
        minutes INTEGER NOT NULL,
        users INTEGER NOT NULL,
        committed_ms INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 4: dedup by each node's high-water mark (`nodes.last_sequence`) instead of a record per
    // sketch, which had to be pruned under the writer's lock.
    "UPDATE nodes SET last_sequence = MAX(last_sequence,
        COALESCE((SELECT MAX(r.sequence) FROM received r WHERE r.node = nodes.node), last_sequence));
     DROP TABLE received;",
];

/// Series rows deleted per pruning transaction: small enough that the writer waits only briefly.
const PRUNE_CHUNK: usize = 2_000;

/// Node names of the batches a forecaster's ingest route stores start with this. A `/` is not
/// valid in a DNS name, so no proxy's certificate (whose name must be its sketches' node) can
/// have one, and ingested sequences never mix with a proxy's.
pub const INGEST_NODE_PREFIX: &str = "ingest/";

/// The node name under which the forecaster `forecaster_node` stores posted batches.
pub fn ingest_node_name(forecaster_node: &str) -> String {
    format!("{INGEST_NODE_PREFIX}{forecaster_node}")
}

/// Whether `node` is an ingest node: it reports only when someone posts a batch, so the live
/// driver never waits for it.
pub fn is_ingest_node(node: &str) -> bool {
    node.starts_with(INGEST_NODE_PREFIX)
}

/// What a posted batch held, kept with its idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    pub events: u64,
    /// Sketches (one per minute the events fall in).
    pub minutes: u64,
    /// Distinct users.
    pub users: u64,
}

/// A posted batch's `Idempotency-Key` and a hash of its body (a key resent with another body is
/// told apart from a retry).
#[derive(Clone, Copy, Debug)]
pub struct BatchKey<'a> {
    pub key: &'a str,
    pub body_hash: u64,
}

/// An idempotency key committed earlier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommittedKey {
    pub body_hash: u64,
    pub counts: BatchCounts,
    /// Node time (unix ms) of the commit.
    pub committed_ms: u64,
}

/// What [`SeriesStore::ingest_batch`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchIngested {
    /// Committed under the node's sequences `first_sequence..=last_sequence`.
    Stored {
        first_sequence: u64,
        last_sequence: u64,
    },
    /// The key was committed before (by an earlier or a concurrent post): nothing was written.
    Duplicate(CommittedKey),
}

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
    /// The end (unix ms) of the latest interval the node has reported; 0 before migration 2.
    pub reported_through_ms: u64,
}

/// Requests of one (profile, fleet) of a region in one minute, summed over origin regions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MinuteRequests {
    pub profile: String,
    pub fleet: String,
    /// Unix seconds of the minute's start.
    pub minute: u64,
    pub requests: u64,
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
    /// Decoding/encoding state reused across the histograms and HyperLogLogs of every batch.
    histograms: HistogramCodec,
    users: HllCodec,
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
        conn.pragma_update(None, "synchronous", SYNCHRONOUS)
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
        let mut store = SeriesStore {
            conn,
            histograms: HistogramCodec::new(),
            users: HllCodec::new(),
        };
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = store
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
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
        high_water_mark(&self.conn, node)
    }

    /// Applies a batch of sketches in one transaction (all or nothing). `now_ms` is the arrival
    /// time recorded as the nodes' last-seen.
    pub fn ingest(&mut self, sketches: &[Sketch], now_ms: u64) -> Result<Vec<Ingested>> {
        let SeriesStore {
            conn,
            histograms,
            users,
        } = self;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| store_error("begin ingest", e))?;
        let outcomes = apply_sketches(&tx, sketches, now_ms, histograms, users)?;
        tx.commit().map_err(|e| store_error("commit ingest", e))?;
        Ok(outcomes)
    }

    /// The batch committed earlier under idempotency key `key`, if any.
    pub fn committed_key(&self, key: &str) -> Result<Option<CommittedKey>> {
        read_key(&self.conn, key)
    }

    /// Stores a batch posted to the ingest route: `sketches` (all of one node, one per minute)
    /// are given the node's next sequences (after the highest it has stored, so dedup stays right
    /// across restarts) and are applied as [`SeriesStore::ingest`] applies sketches; `key`, when
    /// given, is recorded with `counts` in the same transaction, so a batch is counted once
    /// whatever is resent. A key already recorded writes nothing and answers
    /// [`BatchIngested::Duplicate`]. `wall_ms` is the nodes' last-seen time (as for proxies),
    /// `node_ms` the key's commit time (node time, as retention is).
    pub fn ingest_batch(
        &mut self,
        sketches: &mut [Sketch],
        key: Option<BatchKey<'_>>,
        counts: BatchCounts,
        wall_ms: u64,
        node_ms: u64,
    ) -> Result<BatchIngested> {
        let Some(node) = sketches.first().map(|s| s.node.clone()) else {
            return Err(Error::Store {
                what: "an ingest batch needs at least one sketch".to_string(),
                source: None,
            });
        };
        if let Some(other) = sketches.iter().find(|s| s.node != node) {
            return Err(Error::Store {
                what: format!(
                    "an ingest batch is of one node: `{node}` and `{}` given",
                    other.node
                ),
                source: None,
            });
        }
        let SeriesStore {
            conn,
            histograms,
            users,
        } = self;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| store_error("begin ingest batch", e))?;
        if let Some(key) = &key {
            if let Some(committed) = read_key(&tx, key.key)? {
                return Ok(BatchIngested::Duplicate(committed));
            }
        }
        let last = high_water_mark(&tx, &node)?;
        let first_sequence = last.map_or(0, |s| s + 1);
        for (sketch, sequence) in sketches.iter_mut().zip(first_sequence..) {
            sketch.sequence = sequence;
        }
        let last_sequence = first_sequence + sketches.len() as u64 - 1;
        apply_sketches(&tx, sketches, wall_ms, histograms, users)?;
        if let Some(key) = key {
            tx.execute(
                "INSERT INTO ingest_keys (key, body_hash, events, minutes, users, committed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.key,
                    key.body_hash as i64,
                    counts.events as i64,
                    counts.minutes as i64,
                    counts.users as i64,
                    node_ms as i64
                ],
            )
            .map_err(|e| store_error("record the idempotency key", e))?;
        }
        tx.commit()
            .map_err(|e| store_error("commit ingest batch", e))?;
        Ok(BatchIngested::Stored {
            first_sequence,
            last_sequence,
        })
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

    /// Requests per (profile, fleet, minute) of `region` in minutes `[from, to)` (unix
    /// seconds), ordered by minute.
    pub fn region_minutes(&self, region: &str, from: u64, to: u64) -> Result<Vec<MinuteRequests>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT profile, fleet, minute, SUM(requests) FROM series
                 WHERE region = ?1 AND minute >= ?2 AND minute < ?3
                 GROUP BY minute, profile, fleet ORDER BY minute, profile, fleet",
            )
            .map_err(|e| store_error("prepare region minutes query", e))?;
        let rows = statement
            .query_map(params![region, from as i64, to as i64], |row| {
                Ok(MinuteRequests {
                    profile: row.get(0)?,
                    fleet: row.get(1)?,
                    minute: row.get::<_, i64>(2)? as u64,
                    requests: row.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(|e| store_error("run region minutes query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| store_error("read region minutes row", e))
    }

    /// Requests and the merged latency histogram (microseconds) a fleet of `region` served in
    /// the minute starting at `minute` (unix seconds); `None` when it served nothing.
    pub fn fleet_minute_latency(
        &self,
        region: &str,
        fleet: &str,
        minute: u64,
    ) -> Result<Option<(u64, hdrhistogram::Histogram<u64>)>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT requests, latency FROM series WHERE region = ?1 AND fleet = ?2 AND minute = ?3",
            )
            .map_err(|e| store_error("prepare fleet latency query", e))?;
        let rows = statement
            .query_map(params![region, fleet, minute as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| store_error("run fleet latency query", e))?;
        let mut requests = 0u64;
        let mut total = LatencyHistogram::empty();
        for row in rows {
            let (n, latency) = row.map_err(|e| store_error("read fleet latency row", e))?;
            requests = requests.saturating_add(n);
            let latency = LatencyHistogram::from_bytes(latency)
                .map_err(|e| sketch_error("stored latency histogram", e))?;
            total
                .merge(&latency)
                .map_err(|e| sketch_error("merge latency histograms", e))?;
        }
        if requests == 0 {
            return Ok(None);
        }
        let histogram = total
            .to_histogram()
            .map_err(|e| sketch_error("decode latency histogram", e))?;
        Ok(Some((requests, histogram)))
    }

    /// The minutes (unix seconds of their start) of `region` in `[from, to)` that at least one
    /// sketch covered, ascending.
    pub fn covered_minutes(&self, region: &str, from: u64, to: u64) -> Result<Vec<u64>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT minute FROM coverage WHERE region = ?1 AND minute >= ?2 AND minute < ?3 ORDER BY minute",
            )
            .map_err(|e| store_error("prepare coverage query", e))?;
        let rows = statement
            .query_map(params![region, from as i64, to as i64], |row| {
                Ok(row.get::<_, i64>(0)? as u64)
            })
            .map_err(|e| store_error("run coverage query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| store_error("read coverage row", e))
    }

    /// Seeds past demand of one (region, profile, fleet) series: each point becomes a stored,
    /// covered minute (no latency or user data). Minutes that already hold data are left alone,
    /// so seeding twice, or over live data, changes nothing. Returns the minutes written.
    pub fn seed_history(
        &mut self,
        region: &str,
        profile: &str,
        fleet: &str,
        points: &[(u64, u64)],
    ) -> Result<usize> {
        let empty_latency = LatencyHistogram::empty();
        let empty_users = self
            .users
            .encode(&HyperLogLog::default())
            .map_err(|e| sketch_error("encode an empty user count", e))?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| store_error("begin history seeding", e))?;
        let mut written = 0;
        {
            let mut row = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO series (region, origin, profile, fleet, minute, requests, errors, bytes_in, bytes_out, latency, users)
                     VALUES (?1, ?1, ?2, ?3, ?4, ?5, 0, 0, 0, ?6, ?7)",
                )
                .map_err(|e| store_error("prepare the history insert", e))?;
            let mut covered = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO coverage (region, minute, sketches) VALUES (?1, ?2, 1)",
                )
                .map_err(|e| store_error("prepare the history coverage", e))?;
            for &(minute, requests) in points {
                let minute = (minute / 60 * 60) as i64;
                let inserted = covered
                    .execute(params![region, minute])
                    .map_err(|e| store_error("seed coverage", e))?;
                if inserted > 0 {
                    row.execute(params![
                        region,
                        profile,
                        fleet,
                        minute,
                        requests as i64,
                        empty_latency.as_bytes(),
                        empty_users
                    ])
                    .map_err(|e| store_error("seed a history minute", e))?;
                    written += 1;
                }
            }
        }
        tx.commit()
            .map_err(|e| store_error("commit history seeding", e))?;
        Ok(written)
    }

    /// Every node that has sent a sketch.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT node, region, last_seen_ms, last_sequence, spooled, dropped, sketches, reported_through_ms FROM nodes ORDER BY node",
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
                    reported_through_ms: row.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(|e| store_error("run nodes query", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| store_error("read node row", e))
    }

    /// Deletes series minutes, dedup records and ingest idempotency keys older than
    /// `now - retention_secs`. Returns the number of series rows removed.
    pub fn prune(&mut self, now_secs: u64, retention_secs: u64) -> Result<usize> {
        let cutoff = now_secs.saturating_sub(retention_secs) as i64;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| store_error("begin prune", e))?;
        tx.execute(
            "DELETE FROM ingest_keys WHERE committed_ms < ?1 * 1000",
            params![cutoff],
        )
        .map_err(|e| store_error("prune idempotency keys", e))?;
        tx.commit().map_err(|e| store_error("commit prune", e))?;
        // Series rows in small transactions, so the writer is never held up for long.
        let mut removed = 0;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| store_error("begin prune", e))?;
            let chunk = tx
                .execute(
                    "DELETE FROM series WHERE (region, profile, fleet, origin, minute) IN
                       (SELECT region, profile, fleet, origin, minute FROM series WHERE minute < ?1 LIMIT ?2)",
                    params![cutoff, PRUNE_CHUNK as i64],
                )
                .map_err(|e| store_error("prune series", e))?;
            tx.commit().map_err(|e| store_error("commit prune", e))?;
            removed += chunk;
            if chunk < PRUNE_CHUNK {
                return Ok(removed);
            }
        }
    }
}

/// Records and merges `sketches` inside `tx` (the body of [`SeriesStore::ingest`] and
/// [`SeriesStore::ingest_batch`]).
fn apply_sketches(
    tx: &Transaction<'_>,
    sketches: &[Sketch],
    now_ms: u64,
    histograms: &mut HistogramCodec,
    users: &mut HllCodec,
) -> Result<Vec<Ingested>> {
    let mut outcomes = Vec::with_capacity(sketches.len());
    // The batch is merged in memory first, so each series row and each node record is read
    // and written once per batch however many sketches touch it.
    let mut rows: BTreeMap<RowKey<'_>, RowAcc> = BTreeMap::new();
    let mut nodes: BTreeMap<&str, NodeUpdate<'_>> = BTreeMap::new();
    // Each node's high-water mark, read once per batch and advanced by its new sketches.
    let mut marks: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    {
        for sketch in sketches {
            let mark = match marks.get_mut(sketch.node.as_str()) {
                Some(mark) => mark,
                None => marks
                    .entry(&sketch.node)
                    .or_insert(high_water_mark(tx, &sketch.node)?),
            };
            let inserted = mark.is_none_or(|last| sketch.sequence > last);
            if inserted {
                *mark = Some(sketch.sequence);
            }
            match nodes.get_mut(sketch.node.as_str()) {
                Some(node) => node.add(sketch, inserted),
                None => {
                    nodes.insert(&sketch.node, NodeUpdate::new(sketch, inserted));
                }
            }
            if inserted {
                merge_sketch(sketch, &mut rows, histograms)?;
                outcomes.push(Ingested::Stored);
            } else {
                outcomes.push(Ingested::Duplicate);
            }
        }
    }
    write_nodes(tx, &nodes, now_ms)?;
    write_coverage(tx, sketches, &outcomes)?;
    write_rows(tx, rows, histograms, users)?;
    Ok(outcomes)
}

/// A series row: (region, origin, profile, fleet, minute), borrowed from the batch.
type RowKey<'a> = (&'a str, &'a str, &'a str, &'a str, i64);

/// A series row's additions from one batch: counts, the latency histogram decoded once and
/// accumulating every entry's counts, the union of the users.
struct RowAcc {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency: HistogramSum,
    users: HyperLogLog,
}

impl RowAcc {
    fn new(stats: &EntryStats, histograms: &mut HistogramCodec) -> Result<Self, AddError> {
        Counts::ZERO.plus(&Counts::of(stats))?;
        let mut latency = HistogramSum::new();
        latency
            .add(&stats.latency, histograms)
            .map_err(AddError::Sketch)?;
        Ok(RowAcc {
            requests: stats.requests,
            errors: stats.errors,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            latency,
            users: stats.users.clone(),
        })
    }

    fn add(&mut self, stats: &EntryStats, histograms: &mut HistogramCodec) -> Result<(), AddError> {
        let counts = self.counts().plus(&Counts::of(stats))?;
        if self.users.precision() != stats.users.precision() {
            return Err(AddError::Refused(precision_refusal(
                self.users.precision(),
                stats.users.precision(),
            )));
        }
        // Fallible parts first; each leaves its accumulator unchanged on error.
        self.latency
            .add(&stats.latency, histograms)
            .map_err(AddError::Sketch)?;
        self.users.merge(&stats.users).map_err(AddError::Sketch)?;
        self.set_counts(counts);
        Ok(())
    }

    fn counts(&self) -> Counts {
        Counts {
            requests: self.requests,
            errors: self.errors,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    fn set_counts(&mut self, counts: Counts) {
        self.requests = counts.requests;
        self.errors = counts.errors;
        self.bytes_in = counts.bytes_in;
        self.bytes_out = counts.bytes_out;
    }
}

/// The four counts of a series row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    const ZERO: Counts = Counts {
        requests: 0,
        errors: 0,
        bytes_in: 0,
        bytes_out: 0,
    };

    fn of(stats: &EntryStats) -> Self {
        Counts {
            requests: stats.requests,
            errors: stats.errors,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
        }
    }

    /// The sum, or a refusal if any count would exceed what the store holds.
    fn plus(self, other: &Counts) -> Result<Counts, Refused> {
        let add = |what: &str, a: u64, b: u64| {
            a.checked_add(b)
                .filter(|sum| *sum <= MAX_COUNT)
                .ok_or_else(|| Refused {
                    reason: prescale_gossip::Refusal::CountOverflow,
                    detail: format!(
                        "{what}: {a} + {b} exceeds the store's largest count {MAX_COUNT}"
                    ),
                })
        };
        Ok(Counts {
            requests: add("requests", self.requests, other.requests)?,
            errors: add("errors", self.errors, other.errors)?,
            bytes_in: add("bytes_in", self.bytes_in, other.bytes_in)?,
            bytes_out: add("bytes_out", self.bytes_out, other.bytes_out)?,
        })
    }
}

fn precision_refusal(row: u8, sketch: u8) -> Refused {
    Refused {
        reason: prescale_gossip::Refusal::UserCountPrecision,
        detail: format!(
            "users counted at HyperLogLog precision {sketch}, the series row's are at {row}"
        ),
    }
}

/// Why an entry could not be added to a row.
enum AddError {
    Refused(Refused),
    Sketch(prescale_gossip::Error),
}

impl From<Refused> for AddError {
    fn from(r: Refused) -> Self {
        AddError::Refused(r)
    }
}

/// Merges the entries of a newly recorded sketch into the batch's `rows`.
fn merge_sketch<'a>(
    sketch: &'a Sketch,
    rows: &mut BTreeMap<RowKey<'a>, RowAcc>,
    histograms: &mut HistogramCodec,
) -> Result<()> {
    let minute = (sketch.interval_start_ms / 60_000 * 60) as i64;
    for entry in &sketch.entries {
        let key = &entry.key;
        let row = (
            sketch.region.as_str(),
            key.origin_region.as_str(),
            key.profile.as_str(),
            key.fleet.as_str(),
            minute,
        );
        let merged = match rows.get_mut(&row) {
            Some(total) => total.add(&entry.stats, histograms),
            None => RowAcc::new(&entry.stats, histograms).map(|acc| {
                rows.insert(row, acc);
            }),
        };
        let entry_name = || {
            format!(
                "{} entry {}/{}/{}",
                sketch_name(sketch),
                key.profile,
                key.origin_region,
                key.fleet
            )
        };
        merged.map_err(|e| match e {
            AddError::Refused(r) => Error::Refused(Refused {
                reason: r.reason,
                detail: format!("{}: {}", entry_name(), r.detail),
            }),
            AddError::Sketch(e) => Error::Store {
                what: format!("{}: {e}", entry_name()),
                source: None,
            },
        })?;
    }
    Ok(())
}

/// What a batch tells about one node: its last sketch's region and sender state, its highest
/// sequence, how many of its sketches were new.
struct NodeUpdate<'a> {
    region: &'a str,
    last_sequence: u64,
    spooled: u32,
    dropped: u64,
    stored: u64,
    reported_through_ms: u64,
}

impl<'a> NodeUpdate<'a> {
    fn new(sketch: &'a Sketch, inserted: bool) -> Self {
        NodeUpdate {
            region: &sketch.region,
            last_sequence: sketch.sequence,
            spooled: sketch.sender.spooled,
            dropped: sketch.sender.dropped,
            stored: u64::from(inserted),
            reported_through_ms: sketch.interval_end_ms,
        }
    }

    /// A later sketch of the same node in the batch (duplicates included, as they are news of
    /// the node's spool too).
    fn add(&mut self, sketch: &'a Sketch, inserted: bool) {
        self.region = &sketch.region;
        self.last_sequence = self.last_sequence.max(sketch.sequence);
        self.spooled = sketch.sender.spooled;
        self.dropped = sketch.sender.dropped;
        self.stored += u64::from(inserted);
        self.reported_through_ms = self.reported_through_ms.max(sketch.interval_end_ms);
    }
}

fn write_nodes(
    tx: &Transaction<'_>,
    nodes: &BTreeMap<&str, NodeUpdate<'_>>,
    now_ms: u64,
) -> Result<()> {
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO nodes (node, region, last_seen_ms, last_sequence, spooled, dropped, sketches, reported_through_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (node) DO UPDATE SET region = ?2, last_seen_ms = ?3,
                last_sequence = MAX(last_sequence, ?4), spooled = ?5, dropped = ?6, sketches = sketches + ?7,
                reported_through_ms = MAX(reported_through_ms, ?8)",
        )
        .map_err(|e| store_error("prepare the node update", e))?;
    for (node, update) in nodes {
        upsert
            .execute(params![
                node,
                update.region,
                now_ms as i64,
                update.last_sequence as i64,
                i64::from(update.spooled),
                update.dropped as i64,
                update.stored as i64,
                update.reported_through_ms as i64
            ])
            .map_err(|e| store_error(format!("update node {node}"), e))?;
    }
    Ok(())
}

/// Counts each newly stored sketch towards its minute's coverage.
fn write_coverage(tx: &Transaction<'_>, sketches: &[Sketch], outcomes: &[Ingested]) -> Result<()> {
    let mut minutes: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    for (sketch, outcome) in sketches.iter().zip(outcomes) {
        if *outcome == Ingested::Stored {
            let minute = (sketch.interval_start_ms / 60_000 * 60) as i64;
            *minutes.entry((sketch.region.as_str(), minute)).or_default() += 1;
        }
    }
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO coverage (region, minute, sketches) VALUES (?1, ?2, ?3)
             ON CONFLICT (region, minute) DO UPDATE SET sketches = sketches + ?3",
        )
        .map_err(|e| store_error("prepare the coverage update", e))?;
    for ((region, minute), count) in minutes {
        upsert
            .execute(params![region, minute, count])
            .map_err(|e| store_error(format!("update coverage of {region} at {minute}"), e))?;
    }
    Ok(())
}

/// Adds the batch's merged entries to their series rows: stored histograms and HyperLogLogs are
/// merged into the batch's, and the result is written back exactly (no re-bucketing).
fn write_rows(
    tx: &Transaction<'_>,
    rows: BTreeMap<RowKey<'_>, RowAcc>,
    histograms: &mut HistogramCodec,
    users: &mut HllCodec,
) -> Result<()> {
    let mut read = tx
        .prepare_cached(
            "SELECT requests, errors, bytes_in, bytes_out, latency, users FROM series WHERE region = ?1 AND profile = ?2 AND fleet = ?3 AND origin = ?4 AND minute = ?5",
        )
        .map_err(|e| store_error("prepare the series read", e))?;
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO series (region, origin, profile, fleet, minute, requests, errors, bytes_in, bytes_out, latency, users)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (region, profile, fleet, origin, minute) DO UPDATE SET
                requests = ?6, errors = ?7, bytes_in = ?8, bytes_out = ?9, latency = ?10, users = ?11",
        )
        .map_err(|e| store_error("prepare the series write", e))?;
    for ((region, origin, profile, fleet, minute), mut acc) in rows {
        let row = || format!("series row {region}/{origin}/{profile}/{fleet} at minute {minute}");
        let existing: Option<(Counts, Vec<u8>, Vec<u8>)> = read
            .query_row(params![region, profile, fleet, origin, minute], |r| {
                let count = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok((
                    Counts {
                        requests: count(0)?,
                        errors: count(1)?,
                        bytes_in: count(2)?,
                        bytes_out: count(3)?,
                    },
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()
            .map_err(|e| store_error(format!("read {}", row()), e))?;
        if let Some((stored, latency, stored_users)) = existing {
            let counts = stored.plus(&acc.counts()).map_err(|r| Refused {
                reason: r.reason,
                detail: format!("{}: {}", row(), r.detail),
            })?;
            acc.set_counts(counts);
            acc.latency
                .add_bytes(&latency, histograms)
                .map_err(|e| sketch_error(&format!("stored latency histogram of {}", row()), e))?;
            match users.merge_encoded(&mut acc.users, &stored_users) {
                Ok(()) => {}
                // A merge fails only on precisions that differ (the row was written under
                // another configuration): refuse the sketch rather than fail every later one.
                Err(prescale_gossip::Error::Merge(detail)) => {
                    return Err(Error::Refused(Refused {
                        reason: prescale_gossip::Refusal::UserCountPrecision,
                        detail: format!("{}: {detail}", row()),
                    }))
                }
                Err(e) => return Err(sketch_error(&format!("stored user count of {}", row()), e)),
            }
        }
        let latency = acc
            .latency
            .to_histogram()
            .and_then(|total| match histograms.encode_exact(&total) {
                Ok(latency) => Ok(latency),
                // Only a histogram past the decoding limits (more than ~55k counters) gets
                // here: keep it readable, at the wire's precision.
                Err(_) => LatencyHistogram::from_histogram(&total),
            })
            .map_err(|e| sketch_error(&format!("encode latency histogram of {}", row()), e))?;
        let encoded_users = users
            .encode(&acc.users)
            .map_err(|e| sketch_error(&format!("encode user count of {}", row()), e))?;
        upsert
            .execute(params![
                region,
                origin,
                profile,
                fleet,
                minute,
                acc.requests as i64,
                acc.errors as i64,
                acc.bytes_in as i64,
                acc.bytes_out as i64,
                latency.as_bytes(),
                encoded_users
            ])
            .map_err(|e| store_error(format!("write {}", row()), e))?;
    }
    Ok(())
}

/// The highest sequence stored for `node` (its dedup high-water mark).
fn high_water_mark(conn: &Connection, node: &str) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT last_sequence FROM nodes WHERE node = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![node], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map(|v| v.map(|s| s as u64))
        .map_err(|e| store_error(format!("read last sequence of {node}"), e))
}

fn read_key(conn: &Connection, key: &str) -> Result<Option<CommittedKey>> {
    conn.query_row(
        "SELECT body_hash, events, minutes, users, committed_ms FROM ingest_keys WHERE key = ?1",
        params![key],
        |row| {
            Ok(CommittedKey {
                body_hash: row.get::<_, i64>(0)? as u64,
                counts: BatchCounts {
                    events: row.get::<_, i64>(1)? as u64,
                    minutes: row.get::<_, i64>(2)? as u64,
                    users: row.get::<_, i64>(3)? as u64,
                },
                committed_ms: row.get::<_, i64>(4)? as u64,
            })
        },
    )
    .optional()
    .map_err(|e| store_error("read an idempotency key", e))
}

fn sketch_name(sketch: &Sketch) -> String {
    format!("sketch {}#{}", sketch.node, sketch.sequence)
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
    use hdrhistogram::Histogram;
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
    fn a_store_of_schema_3_keeps_its_dedup_marks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL);")
                .expect("schema_version");
            for migration in &MIGRATIONS[..3] {
                conn.execute_batch(migration).expect("migrate");
            }
            conn.execute_batch(
                "INSERT INTO schema_version VALUES (3);
                 INSERT INTO received VALUES ('n1', 7, 0), ('n1', 9, 0), ('n2', 4, 0);
                 INSERT INTO nodes (node, region, last_seen_ms, last_sequence, spooled, dropped, sketches)
                   VALUES ('n1', 'eu', 0, 8, 0, 0, 2), ('n2', 'eu', 0, 4, 0, 0, 1);",
            )
            .expect("rows");
        }
        let mut store = SeriesStore::open(&path).expect("migrated");
        assert_eq!(store.last_sequence("n1").expect("n1"), Some(9));
        assert_eq!(store.last_sequence("n2").expect("n2"), Some(4));
        assert_eq!(store.last_sequence("n3").expect("n3"), None);
        let again = sketch("n1", 9, 60_000, "web", 5, &[1]);
        let next = sketch("n1", 10, 60_000, "web", 5, &[1]);
        assert_eq!(
            store.ingest(&[again, next], 1).expect("ingest"),
            [Ingested::Duplicate, Ingested::Stored]
        );
        assert_eq!(store.last_sequence("n1").expect("n1"), Some(10));
    }

    #[test]
    fn pruning_goes_in_chunks_and_keeps_the_marks() {
        let mut store = SeriesStore::in_memory().expect("store");
        let rows = PRUNE_CHUNK + 500;
        let sketches: Vec<Sketch> = (0..rows as u64)
            .map(|i| sketch("n1", i + 1, i * 60_000, "web", 1, &[]))
            .collect();
        for batch in sketches.chunks(MAX_TEST_BATCH) {
            store.ingest(batch, 1).expect("ingest");
        }
        let now_secs = rows as u64 * 60;
        assert_eq!(store.prune(now_secs, 60).expect("prune"), rows - 1);
        assert_eq!(requests_of(&store), [1]);
        // Pruned minutes' sketches are still known as stored.
        let resent = sketch("n1", 3, 120_000, "web", 1, &[]);
        assert_eq!(
            store.ingest(&[resent], 2).expect("ingest"),
            [Ingested::Duplicate]
        );
    }

    const MAX_TEST_BATCH: usize = 500;

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

    /// A sketch with one entry whose latencies spread wide (its wire form may fall back to 1
    /// significant figure) and whose users are `users`.
    fn wide_sketch(
        node: &str,
        sequence: u64,
        start_ms: u64,
        seed: u64,
        users: std::ops::Range<u64>,
    ) -> Sketch {
        let mut s = sketch(node, sequence, start_ms, "batch", 0, &[]);
        let stats = &mut s.entries[0].stats;
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("bounds");
        let mut x = seed;
        for _ in 0..3_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 100 µs .. ~6 s, log-uniform.
            let micros = 100.0 * (2f64).powf((x >> 40) as f64 / (1u64 << 24) as f64 * 16.0);
            h.record(micros as u64).expect("record");
        }
        // Same precision on the wire as in the sum below, whatever the budget.
        stats.latency = HistogramCodec::new().encode_exact(&h).expect("encode");
        stats.requests = 3_000;
        stats.errors = seed % 7;
        for u in users {
            stats.users.insert(u);
        }
        s
    }

    fn stored_row(store: &SeriesStore) -> (u64, Histogram<u64>, HyperLogLog) {
        let (requests, latency, users): (i64, Vec<u8>, Vec<u8>) = store
            .conn
            .query_row("SELECT requests, latency, users FROM series", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("one row");
        let latency = LatencyHistogram::from_bytes(latency)
            .and_then(|h| h.to_histogram())
            .expect("stored histogram");
        (
            requests as u64,
            latency,
            decode_hll(&users).expect("stored users"),
        )
    }

    fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    #[test]
    fn histograms_and_users_merge_exactly_across_batches() {
        let limits = prescale_gossip::Limits::default();
        let minute = 1_700_000_040_000;
        let sketches: Vec<Sketch> = (0..12u64)
            .map(|i| {
                wide_sketch(
                    &format!("n{}", i % 3),
                    i / 3,
                    minute + (i % 6) * 10_000,
                    i + 1,
                    i * 50..i * 50 + 400,
                )
            })
            .collect();
        // Half arrive as the receiver hands them over (decoded and validated), half as built.
        let arrived: Vec<Sketch> = sketches
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i % 2 == 0 {
                    return s.clone();
                }
                let frame =
                    prescale_gossip::encode(&prescale_gossip::Message::Sketch(s.clone()), &limits)
                        .expect("encode");
                match prescale_gossip::decode(&frame, &limits).expect("decode") {
                    prescale_gossip::Message::Sketch(s) => s,
                    other => panic!("not a sketch: {other:?}"),
                }
            })
            .collect();
        let mut store = SeriesStore::in_memory().expect("store");
        // Three batches; the second resends one sketch of the first.
        store.ingest(&arrived[..5], 1).expect("first batch");
        let resent = [arrived[4].clone(), arrived[5].clone(), arrived[6].clone()];
        assert_eq!(
            store.ingest(&resent, 2).expect("second batch"),
            [Ingested::Duplicate, Ingested::Stored, Ingested::Stored]
        );
        store.ingest(&arrived[7..], 3).expect("third batch");

        let mut expected = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).expect("bounds");
        let mut users = HyperLogLog::default();
        for s in &sketches {
            expected
                .add(s.entries[0].stats.latency.to_histogram().expect("decode"))
                .expect("add");
            users.merge(&s.entries[0].stats.users).expect("merge");
        }
        let (requests, latency, stored_users) = stored_row(&store);
        assert_eq!(requests, 12 * 3_000);
        assert_eq!(latency.sigfig(), 2, "no re-bucketing of the stored minute");
        assert_eq!(buckets(&latency), buckets(&expected));
        assert_eq!(stored_users, users);
    }

    #[test]
    fn nodes_keep_the_last_sender_state_of_a_batch() {
        let mut store = SeriesStore::in_memory().expect("store");
        let mut batch = Vec::new();
        for (sequence, spooled, dropped) in [(2, 9, 9), (4, 3, 1), (5, 1, 2)] {
            let mut s = sketch("n1", sequence, 60_000 * sequence, "web", 1, &[1]);
            s.sender.spooled = spooled;
            s.sender.dropped = dropped;
            batch.push(s);
        }
        batch.push(batch[1].clone());
        let outcomes = store.ingest(&batch, 77).expect("ingest");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Ingested::Stored).count(),
            3
        );
        let nodes = store.nodes().expect("nodes");
        assert_eq!(
            nodes,
            [NodeRecord {
                node: "n1".into(),
                region: "eu".into(),
                last_seen_ms: 77,
                last_sequence: 5,
                // The duplicate came last: its state is the newest news of the node.
                spooled: 3,
                dropped: 1,
                sketches: 3,
                // The latest interval end of any of its sketches.
                reported_through_ms: 60_000 * 5 + 10_000,
            }]
        );
    }

    #[test]
    fn a_failing_batch_leaves_nothing_behind() {
        let mut store = SeriesStore::in_memory().expect("store");
        let good = sketch("n1", 1, 60_000, "web", 10, &[1, 2]);
        let mut bad = sketch("n2", 1, 60_000, "web", 10, &[3]);
        // A histogram that never went through validation: garbage bytes.
        bad.entries[0].stats.latency =
            postcard::from_bytes(&postcard::to_stdvec(&vec![0xffu8; 16]).expect("encode"))
                .expect("bytes");
        let err = store
            .ingest(&[good.clone(), bad], 1)
            .expect_err("corrupt histogram");
        assert!(err.to_string().contains("sketch n2#1"), "{err}");
        assert_eq!(store.last_sequence("n1").expect("seq"), None);
        assert!(store.nodes().expect("nodes").is_empty());
        assert!(store
            .series(&SeriesQuery::default())
            .expect("series")
            .is_empty());
        // The good sketch alone goes in once.
        assert_eq!(
            store.ingest(&[good], 2).expect("ingest"),
            [Ingested::Stored]
        );
        assert_eq!(store.last_sequence("n1").expect("seq"), Some(1));
    }

    fn requests_of(store: &SeriesStore) -> Vec<u64> {
        store
            .series(&SeriesQuery::default())
            .expect("series")
            .values()
            .flatten()
            .map(|p| p.requests)
            .collect()
    }

    /// A sketch claiming `requests` (its histogram records only a few).
    fn claiming(node: &str, sequence: u64, start_ms: u64, requests: u64) -> Sketch {
        let mut s = sketch(node, sequence, start_ms, "web", 3, &[sequence]);
        s.entries[0].stats.requests = requests;
        s
    }

    #[test]
    fn counts_that_would_overflow_a_row_are_refused_and_the_row_kept() {
        let mut store = SeriesStore::in_memory().expect("store");
        let big = MAX_COUNT - 5;
        let first = claiming("n1", 1, 60_000, big);
        assert_eq!(
            store.ingest(&[first], 1).expect("ingest"),
            [Ingested::Stored]
        );
        // Against the stored row.
        let over = claiming("n1", 2, 60_000, 10);
        match store.ingest(std::slice::from_ref(&over), 2) {
            Err(Error::Refused(r)) => {
                assert_eq!(r.reason, prescale_gossip::Refusal::CountOverflow);
                assert!(r.detail.contains("requests"), "{r}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(requests_of(&store), [big]);
        assert_eq!(store.last_sequence("n1").expect("seq"), Some(1));
        // Within one batch, before anything is stored.
        let mut fresh = SeriesStore::in_memory().expect("store");
        let a = claiming("n1", 1, 120_000, big);
        let b = claiming("n2", 1, 120_000, big);
        assert!(matches!(
            fresh.ingest(&[a.clone(), b], 3),
            Err(Error::Refused(_))
        ));
        assert!(requests_of(&fresh).is_empty());
        assert_eq!(fresh.ingest(&[a], 4).expect("alone"), [Ingested::Stored]);
        // What fits is still added.
        let fits = claiming("n1", 3, 60_000, 5);
        assert_eq!(
            store.ingest(&[fits], 5).expect("ingest"),
            [Ingested::Stored]
        );
        assert_eq!(requests_of(&store), [MAX_COUNT]);
    }

    #[test]
    fn a_row_at_another_precision_refuses_the_sketch_instead_of_failing_for_ever() {
        let mut store = SeriesStore::in_memory().expect("store");
        let mut coarse = sketch("n1", 1, 60_000, "web", 10, &[]);
        coarse.entries[0].stats.users = HyperLogLog::new(12).expect("precision");
        coarse.entries[0].stats.users.insert(7);
        assert_eq!(
            store.ingest(&[coarse], 1).expect("ingest"),
            [Ingested::Stored]
        );
        let usual = sketch("n1", 2, 60_000, "web", 10, &[1]);
        match store.ingest(&[usual], 2) {
            Err(Error::Refused(r)) => {
                assert_eq!(r.reason, prescale_gossip::Refusal::UserCountPrecision)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(requests_of(&store), [10]);
        // Another minute's row takes it.
        let next_minute = sketch("n1", 2, 120_000, "web", 10, &[1]);
        assert_eq!(
            store.ingest(&[next_minute], 3).expect("ingest"),
            [Ingested::Stored]
        );
    }

    #[test]
    fn an_ingest_batch_continues_its_node_sequences_and_counts_once_per_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("series.db");
        let minute = 1_700_000_040_000;
        let node = ingest_node_name("forecaster-eu");
        assert!(is_ingest_node(&node) && !is_ingest_node("edge-fra-1"));
        let counts = BatchCounts {
            events: 30,
            minutes: 2,
            users: 2,
        };
        let batch = || {
            vec![
                sketch(&node, 0, minute, "batch", 20, &[1, 2]),
                sketch(&node, 0, minute + 60_000, "batch", 10, &[1]),
            ]
        };
        let key = BatchKey {
            key: "k-1",
            body_hash: u64::MAX - 1,
        };
        {
            let mut store = SeriesStore::open(&path).expect("open");
            let mut first = batch();
            let stored = store
                .ingest_batch(&mut first, Some(key), counts, 1, 2)
                .expect("batch");
            assert_eq!(first.iter().map(|s| s.sequence).collect::<Vec<_>>(), [0, 1]);
            assert_eq!(
                stored,
                BatchIngested::Stored {
                    first_sequence: 0,
                    last_sequence: 1
                }
            );
            // The same key again: nothing written, the first commit reported.
            let again = store
                .ingest_batch(&mut batch(), Some(key), counts, 3, 4)
                .expect("batch");
            let committed = CommittedKey {
                body_hash: u64::MAX - 1,
                counts,
                committed_ms: 2,
            };
            assert_eq!(again, BatchIngested::Duplicate(committed.clone()));
            assert_eq!(store.committed_key("k-1").expect("key"), Some(committed));
            assert_eq!(store.committed_key("k-2").expect("key"), None);
        }
        // After a restart the sequences go on; without a key the batch is new data.
        let mut store = SeriesStore::open(&path).expect("reopen");
        assert_eq!(
            store
                .ingest_batch(&mut batch(), None, counts, 5, 6)
                .expect("batch"),
            BatchIngested::Stored {
                first_sequence: 2,
                last_sequence: 3
            }
        );
        let series = store.series(&SeriesQuery::default()).expect("series");
        let requests: Vec<u64> = series["*/*/*"].iter().map(|p| p.requests).collect();
        assert_eq!(requests, [40, 20]);
        let mut mixed = vec![
            sketch(&node, 0, minute, "batch", 1, &[1]),
            sketch("edge-1", 0, minute, "batch", 1, &[1]),
        ];
        assert!(store.ingest_batch(&mut mixed, None, counts, 7, 8).is_err());
        assert!(store.ingest_batch(&mut [], None, counts, 7, 8).is_err());
        // Keys go with the retention.
        store.prune(1_000, 500).expect("prune");
        assert_eq!(store.committed_key("k-1").expect("key"), None);
    }
}

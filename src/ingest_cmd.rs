//! `POST /api/v1/ingest` on the forecaster: NDJSON events of services that are not behind the
//! proxy. `prescale_proxy::ingest` checks the batch whole and turns it into one sketch per
//! minute (users hashed, placed, profiled and routed as proxied requests are); the series store
//! commits the sketches, under the reserved node `ingest/<node.id>`, in one transaction with the
//! batch's `Idempotency-Key`. The answer comes after the commit.
//!
//! Invariants: a batch is counted once or not at all — a bad line, an oversized body, a failed
//! commit store nothing (and, but for a failed commit, leave the ingest's feature table as it
//! was); a key committed before answers `duplicate` and counts nothing again (posts are taken one
//! at a time, from the key check to the commit, so a retry racing its original is one too); no
//! raw user id is logged or answered.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use http::{header, Method, StatusCode};
use prescale_config::Config;
use prescale_gossip::model::ProfileModel;
use prescale_gossip::NodeClock;
use prescale_proxy::admin::{self, AdminRequest, AdminResponse, BodyLimit, Handler, MetricsSource};
use prescale_proxy::ingest::{Ingest, IngestSettings, Rejected};
use prescale_proxy::profiles::{ModelSwap, ModelSwapError};
use prescale_regions::ingest::SampleObserver;
use prescale_regions::store::{
    ingest_node_name, BatchCounts, BatchIngested, BatchKey, CommittedKey, SeriesStore,
};

use crate::exit::CliError;

/// The route.
pub const ROUTE: &str = "/api/v1/ingest";
/// Longest `Idempotency-Key`, bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The forecaster's ingest: the parser and profiler, and its own writer connection to the
/// series store (SQLite serialises it with the sketch writer's).
pub struct IngestService {
    ingest: Arc<Ingest>,
    store: Mutex<SeriesStore>,
    clock: NodeClock,
    /// Told about every stored sketch, as the sketch sink tells it (profile learning's samples).
    observer: Option<Arc<dyn SampleObserver>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    events: AtomicU64,
}

/// Builds the ingest of the forecaster whose series live in `database`; `observer` sees each
/// stored sketch after its commit, as the sketch sink's observer does.
pub fn start(
    config: &Config,
    database: &Path,
    retention_days: u64,
    clock: NodeClock,
    observer: Option<Arc<dyn SampleObserver>>,
) -> Result<Arc<IngestService>, CliError> {
    let settings = IngestSettings {
        node: ingest_node_name(&config.node.id),
        retention_secs: retention_days.saturating_mul(86_400),
    };
    let ingest = Ingest::new(config, clock, settings).map_err(|e| CliError::input(anyhow!(e)))?;
    let store = SeriesStore::open(database)
        .map_err(|e| CliError::input(anyhow!("forecaster.database: {e}")))?;
    tracing::info!(node = %ingest.node(), route = ROUTE, "ingest ready");
    Ok(Arc::new(IngestService {
        ingest: Arc::new(ingest),
        store: Mutex::new(store),
        clock,
        observer,
        counters: Counters::default(),
    }))
}

impl IngestService {
    /// Installs a profile model (the forecaster's learned one) for assigning ingested users.
    pub fn install_model(&self, model: ProfileModel) -> Result<ModelSwap, ModelSwapError> {
        self.ingest.install_model(model)
    }

    /// The admin listener reads up to `ingest.max_body_bytes` for this route only.
    pub fn body_limit(&self) -> BodyLimit {
        BodyLimit {
            method: Method::POST,
            path: ROUTE,
            max_bytes: self.ingest.limits().max_body_bytes,
        }
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let service = Arc::clone(self);
        Arc::new(move |request: &AdminRequest| {
            (request.path == ROUTE).then(|| service.handle(request))
        })
    }

    pub fn metrics(self: &Arc<Self>) -> MetricsSource {
        let service = Arc::clone(self);
        Arc::new(move |out: &mut String| {
            let c = &service.counters;
            out.push_str("# HELP prescale_ingest_batches_total Batches posted to /api/v1/ingest by outcome: stored, duplicate (idempotency key seen), rejected (bad input, nothing stored), failed (store error, nothing stored).\n# TYPE prescale_ingest_batches_total counter\n");
            for (outcome, counter) in [
                ("stored", &c.stored),
                ("duplicate", &c.duplicate),
                ("rejected", &c.rejected),
                ("failed", &c.failed),
            ] {
                let _ = writeln!(
                    out,
                    "prescale_ingest_batches_total{{outcome=\"{outcome}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
            admin::write_metric(
                out,
                "prescale_ingest_events_total",
                "counter",
                "Events stored from posted batches.",
                c.events.load(Ordering::Relaxed),
            );
            let (users, capacity) = service.ingest.users_tracked();
            admin::write_metric(
                out,
                "prescale_ingest_user_table_entries",
                "gauge",
                "Users resident in the ingest's per-user feature table.",
                users,
            );
            admin::write_metric(
                out,
                "prescale_ingest_user_table_capacity",
                "gauge",
                "Most users the ingest's table holds (ingest.user_table_mib).",
                capacity,
            );
        })
    }

    fn handle(&self, request: &AdminRequest) -> AdminResponse {
        let response = self.answer(request);
        let counter = match response.status() {
            StatusCode::OK => None,
            status if status.is_server_error() => Some(&self.counters.failed),
            _ => Some(&self.counters.rejected),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        response
    }

    fn answer(&self, request: &AdminRequest) -> AdminResponse {
        if request.method != Method::POST {
            let mut response = admin::json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{ROUTE} takes POST (NDJSON events), not {}", request.method),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
            return response;
        }
        if let Err(message) = content_type(&request.headers) {
            return admin::json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message);
        }
        let limits = self.ingest.limits();
        if request.body.len() > limits.max_body_bytes {
            return admin::json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body larger than ingest.max_body_bytes = {} bytes; split the batch",
                    limits.max_body_bytes
                ),
            );
        }
        let key = match idempotency_key(&request.headers) {
            Ok(key) => key,
            Err(message) => return admin::json_error(StatusCode::BAD_REQUEST, &message),
        };
        let body_hash = prescale_proxy::ingest::body_hash(&request.body);
        // Held until the commit: batches go one at a time, so a retry racing its original finds
        // the key committed here, before it touches the feature table.
        let mut store = self.store();
        if let Some(key) = key {
            match store.committed_key(key) {
                Ok(Some(committed)) => return self.duplicate(key, body_hash, &committed),
                Ok(None) => {}
                Err(e) => return self.store_failed(&e.to_string()),
            }
        }
        let events = match self.ingest.parse(&request.body) {
            Ok(events) => events,
            Err(rejected) => return rejection(&rejected),
        };
        if events.is_empty() {
            return admin::json(&serde_json::json!({
                "duplicate": false,
                "events": 0,
                "minutes": 0,
                "users": 0,
            }));
        }
        let batch = match self.ingest.build(events) {
            Ok(batch) => batch,
            Err(e) => return self.store_failed(&e.to_string()),
        };
        let summary = batch.summary;
        let counts = BatchCounts {
            events: summary.events as u64,
            minutes: summary.minutes as u64,
            users: summary.users as u64,
        };
        let mut sketches = batch.sketches;
        let stored = store.ingest_batch(
            &mut sketches,
            key.map(|key| BatchKey { key, body_hash }),
            counts,
            wall_ms(),
            self.clock.now_ms(),
        );
        drop(store);
        match stored {
            Ok(BatchIngested::Stored {
                first_sequence,
                last_sequence,
            }) => {
                if let Some(observer) = &self.observer {
                    for sketch in &sketches {
                        observer.observe(sketch);
                    }
                }
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .events
                    .fetch_add(counts.events, Ordering::Relaxed);
                tracing::debug!(
                    events = counts.events,
                    minutes = counts.minutes,
                    first_sequence,
                    last_sequence,
                    "ingested batch stored"
                );
                admin::json(&serde_json::json!({
                    "duplicate": false,
                    "events": counts.events,
                    "minutes": counts.minutes,
                    "users": counts.users,
                    "node": self.ingest.node(),
                    "first_sequence": first_sequence,
                    "last_sequence": last_sequence,
                }))
            }
            // Another post with the same key committed first.
            Ok(BatchIngested::Duplicate(committed)) => match key {
                Some(key) => self.duplicate(key, body_hash, &committed),
                None => {
                    self.store_failed("the store reported a duplicate of a batch without a key")
                }
            },
            Err(e) => self.store_failed(&e.to_string()),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, SeriesStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn duplicate(&self, key: &str, body_hash: u64, committed: &CommittedKey) -> AdminResponse {
        if committed.body_hash != body_hash {
            return admin::json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!(
                    "Idempotency-Key `{key}` was committed at {} (node time, unix ms) with another body; a new batch needs a new key",
                    committed.committed_ms
                ),
            );
        }
        self.counters.duplicate.fetch_add(1, Ordering::Relaxed);
        admin::json(&serde_json::json!({
            "duplicate": true,
            "events": committed.counts.events,
            "minutes": committed.counts.minutes,
            "users": committed.counts.users,
            "committed_at_ms": committed.committed_ms,
        }))
    }

    fn store_failed(&self, message: &str) -> AdminResponse {
        tracing::warn!(error = %message, "ingest batch not stored");
        admin::json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("nothing was stored ({message}); send the batch again"),
        )
    }
}

/// NDJSON, JSON or nothing said.
fn content_type(headers: &http::HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/x-ndjson" | "application/json") => Ok(()),
        _ => Err(format!(
            "Content-Type `{}` is not accepted: send application/x-ndjson (one JSON event per line), application/json, or none",
            String::from_utf8_lossy(value.as_bytes())
        )),
    }
}

fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<&str>, String> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("Idempotency-Key is given more than once".into());
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .ok_or("Idempotency-Key must be 1 to 128 bytes of visible ASCII")?;
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "Idempotency-Key is {} bytes, at most {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(Some(key))
}

fn rejection(rejected: &Rejected) -> AdminResponse {
    let body = match rejected {
        Rejected::TooManyEvents { max, line } => serde_json::json!({
            "error": rejected.to_string(),
            "max_events": max,
            "line": line,
        }),
        Rejected::BadLines {
            errors,
            bad,
            events,
        } => serde_json::json!({
            "error": rejected.to_string(),
            "bad_lines": errors,
            "bad": bad,
            "more_bad_lines": bad - errors.len(),
            "events": events,
        }),
    };
    admin::json_with_status(StatusCode::BAD_REQUEST, &body)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

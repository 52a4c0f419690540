//! Scheduled events (a launch, a sale, a batch window) as operators create them through the
//! admin API, kept in the forecaster's SQLite file beside the series and the ledger, so the live
//! driver applies them to its brain at every start and after every change.
//!
//! * [`EventInput::from_json`] checks an API body field by field; every error names the field
//!   (`tag`, `end`, `scope.region`, `effect.factor`, …) and unknown fields are rejected by name.
//! * [`EventStore`] creates (with a server-made `ev-<n>` id or a valid client id), reads, lists
//!   (by start), replaces (the version rises by one) and deletes events.
//!
//! Invariants: every write is one statement or one transaction (atomic); nothing here reads the
//! clock (callers pass node time); the tables are created on first open and never dropped.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::brain::{EventEffect, EventScope, ScheduledEvent, UnixSeconds};
use crate::error::{Error, Result};

/// The longest event accepted: 31 days.
pub const MAX_EVENT_SECONDS: i64 = 31 * 86_400;
/// The largest multiplier accepted.
pub const MAX_FACTOR: f64 = 1000.0;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scheduled_events (
    id TEXT NOT NULL UNIQUE,
    tag TEXT NOT NULL,
    start_s INTEGER NOT NULL,
    end_s INTEGER NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_region TEXT,
    scope_profile TEXT,
    effect_kind TEXT NOT NULL,
    factor REAL,
    version INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduled_events_by_start ON scheduled_events (start_s);
CREATE TABLE IF NOT EXISTS scheduled_event_ids (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    last INTEGER NOT NULL
);
";

const COLUMNS: &str = "id, tag, start_s, end_s, scope_kind, scope_region, scope_profile, effect_kind, factor, version, created_at_ms, updated_at_ms";

/// A checked event as the API hands it in: everything but the bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub struct EventInput {
    /// The client's id, if it chose one (create only; an update takes the id of its path).
    pub id: Option<String>,
    pub tag: String,
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    pub scope: EventScope,
    pub effect: EventEffect,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredEvent {
    pub id: String,
    pub tag: String,
    /// Unix seconds (node time).
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    pub scope: EventScope,
    pub effect: EventEffect,
    /// 1 when created, one more at every update.
    pub version: u64,
    /// Node time of the creation and of the last update, unix ms.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl StoredEvent {
    /// The event as the brain takes it.
    pub fn to_brain(&self) -> ScheduledEvent {
        ScheduledEvent {
            id: self.id.clone(),
            tag: self.tag.clone(),
            scope: self.scope.clone(),
            start: self.start,
            end: self.end,
            effect: self.effect.clone(),
        }
    }

    /// Whether the event concerns series of `region`.
    pub fn touches_region(&self, region: &str) -> bool {
        match &self.scope {
            EventScope::All | EventScope::Profile { .. } => true,
            EventScope::Region { region: r } | EventScope::RegionProfile { region: r, .. } => {
                r == region
            }
        }
    }
}

fn input_error(field: Option<&str>, message: impl Into<String>) -> Error {
    Error::EventInput {
        field: field.map(str::to_string),
        message: message.into(),
    }
}

/// Whether `name` is 1 to 64 ASCII letters, digits, `-` or `_` (tags and ids).
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn reject_unknown(map: &Map<String, Value>, prefix: &str, allowed: &[&str]) -> Result<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(input_error(
            Some(&format!("{prefix}{unknown}")),
            format!("unknown field (expected {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn name_field(map: &Map<String, Value>, field: &str, what: &str) -> Result<String> {
    match map.get(field) {
        None => Err(input_error(Some(field), "required")),
        Some(Value::String(s)) if is_event_name(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(input_error(
            Some(field),
            format!("`{s}` is not a valid {what}; expected 1 to 64 letters, digits, '-' or '_'"),
        )),
        Some(other) => Err(input_error(
            Some(field),
            format!("must be a string, got {}", kind_of(other)),
        )),
    }
}

fn string_field<'a>(map: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str> {
    match map.get(key) {
        None => Err(input_error(Some(field), "required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(input_error(
            Some(field),
            format!("must be a string, got {}", kind_of(other)),
        )),
    }
}

fn seconds_field(map: &Map<String, Value>, field: &str) -> Result<UnixSeconds> {
    match map.get(field) {
        None => Err(input_error(Some(field), "required (unix seconds)")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(v),
            _ => Err(input_error(
                Some(field),
                format!("must be unix seconds (a whole number, not negative), got {n}"),
            )),
        },
        Some(other) => Err(input_error(
            Some(field),
            format!("must be unix seconds (a number), got {}", kind_of(other)),
        )),
    }
}

fn object_field<'a>(
    map: &'a Map<String, Value>,
    field: &str,
    example: &str,
) -> Result<&'a Map<String, Value>> {
    match map.get(field) {
        None => Err(input_error(
            Some(field),
            format!("required, e.g. {example}"),
        )),
        Some(Value::Object(inner)) => Ok(inner),
        Some(other) => Err(input_error(
            Some(field),
            format!("must be an object like {example}, got {}", kind_of(other)),
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_scope(map: &Map<String, Value>, regions: &[String]) -> Result<EventScope> {
    let scope = object_field(map, "scope", r#"{"kind":"region","region":"eu"}"#)?;
    let kind = string_field(scope, "kind", "scope.kind")?;
    let allowed: &[&str] = match kind {
        "all" => &["kind"],
        "region" => &["kind", "region"],
        "profile" => &["kind", "profile"],
        "region_profile" => &["kind", "region", "profile"],
        other => {
            return Err(input_error(
                Some("scope.kind"),
                format!("unknown kind `{other}` (expected all, region, profile or region_profile)"),
            ))
        }
    };
    reject_unknown(scope, "scope.", allowed)?;
    let region = || -> Result<String> {
        let region = string_field(scope, "region", "scope.region")?;
        if regions.iter().any(|r| r == region) {
            Ok(region.to_string())
        } else {
            Err(input_error(
                Some("scope.region"),
                format!(
                    "unknown region `{region}` (known: {})",
                    if regions.is_empty() {
                        "none".to_string()
                    } else {
                        regions.join(", ")
                    }
                ),
            ))
        }
    };
    let profile = || -> Result<String> {
        let profile = string_field(scope, "profile", "scope.profile")?;
        if prescale_config::is_name(profile) {
            Ok(profile.to_string())
        } else {
            Err(input_error(
                Some("scope.profile"),
                format!("`{profile}` is not a valid profile name; expected 1 to 64 of a-z, 0-9, '-', '_', starting with a letter or digit"),
            ))
        }
    };
    Ok(match kind {
        "all" => EventScope::All,
        "region" => EventScope::Region { region: region()? },
        "profile" => EventScope::Profile {
            profile: profile()?,
        },
        _ => EventScope::RegionProfile {
            region: region()?,
            profile: profile()?,
        },
    })
}

fn parse_effect(map: &Map<String, Value>) -> Result<EventEffect> {
    let effect = object_field(map, "effect", r#"{"kind":"multiplier","factor":2.5}"#)?;
    let kind = string_field(effect, "kind", "effect.kind")?;
    match kind {
        "multiplier" => {
            reject_unknown(effect, "effect.", &["kind", "factor"])?;
            let factor = match effect.get("factor") {
                None => {
                    return Err(input_error(
                        Some("effect.factor"),
                        "required for kind multiplier",
                    ))
                }
                Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                Some(other) => {
                    return Err(input_error(
                        Some("effect.factor"),
                        format!("must be a number, got {}", kind_of(other)),
                    ))
                }
            };
            if !(factor.is_finite() && factor > 0.0 && factor <= MAX_FACTOR) {
                return Err(input_error(
                    Some("effect.factor"),
                    format!("must be finite, above 0 and at most {MAX_FACTOR}, got {factor}"),
                ));
            }
            Ok(EventEffect::Multiplier { factor })
        }
        "learn_from_tag" => {
            reject_unknown(effect, "effect.", &["kind"])?;
            Ok(EventEffect::LearnFromTag)
        }
        other => Err(input_error(
            Some("effect.kind"),
            format!("unknown kind `{other}` (expected multiplier or learn_from_tag)"),
        )),
    }
}

impl EventInput {
    /// Checks an API body: `{"id"?, "tag", "start", "end", "scope", "effect"}`; a scope's region
    /// must be one of `regions`.
    pub fn from_json(body: &[u8], regions: &[String]) -> Result<EventInput> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| input_error(None, format!("the body is not JSON: {e}")))?;
        Self::from_value(&value, regions)
    }

    /// Checks one event already parsed as JSON, as [`EventInput::from_json`] does.
    pub fn from_value(value: &Value, regions: &[String]) -> Result<EventInput> {
        let Value::Object(map) = value else {
            return Err(input_error(
                None,
                format!(
                    "the body must be a JSON object with tag, start, end, scope and effect, got {}",
                    kind_of(value)
                ),
            ));
        };
        reject_unknown(map, "", &["id", "tag", "start", "end", "scope", "effect"])?;
        let id = match map.get("id") {
            None | Some(Value::Null) => None,
            Some(_) => Some(name_field(map, "id", "id")?),
        };
        let tag = name_field(map, "tag", "tag")?;
        let start = seconds_field(map, "start")?;
        let end = seconds_field(map, "end")?;
        if end <= start {
            return Err(input_error(
                Some("end"),
                format!("must be after start (start {start}, end {end})"),
            ));
        }
        if end - start > MAX_EVENT_SECONDS {
            return Err(input_error(
                Some("end"),
                format!(
                    "the event would last {} s; at most 31 days ({MAX_EVENT_SECONDS} s)",
                    end - start
                ),
            ));
        }
        let scope = parse_scope(map, regions)?;
        let effect = parse_effect(map)?;
        Ok(EventInput {
            id,
            tag,
            start,
            end,
            scope,
            effect,
        })
    }
}

/// The scheduled events table of the forecaster's database.
pub struct EventStore {
    conn: Connection,
}

impl EventStore {
    /// Opens the events tables in the database at `path` (created if needed).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| events_error(format!("open {}", path.display()), e))?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|e| events_error("open in memory", e))?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| events_error("set busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| events_error("enable WAL", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| events_error("create the events tables", e))?;
        Ok(EventStore { conn })
    }

    /// Stores a new event at node time `now_ms`: with the client's id (an error if it is taken)
    /// or the next free `ev-<n>`.
    pub fn create(&mut self, input: &EventInput, now_ms: u64) -> Result<StoredEvent> {
        if let Some(id) = &input.id {
            if !is_event_name(id) {
                return Err(input_error(
                    Some("id"),
                    format!(
                        "`{id}` is not a valid id; expected 1 to 64 letters, digits, '-' or '_'"
                    ),
                ));
            }
        }
        // Immediate: a transaction that reads before it writes, begun deferred, fails at once
        // (SQLITE_BUSY) when another connection to the file (the sketch writer, the driver's
        // history) commits in between; taking the write lock first lets the busy timeout wait.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| events_error("begin a transaction", e))?;
        let exists = |id: &str| -> Result<bool> {
            tx.query_row(
                "SELECT 1 FROM scheduled_events WHERE id = ?1",
                params![id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(|e| events_error(format!("look up event {id}"), e))
        };
        let id = match &input.id {
            Some(id) => {
                if exists(id)? {
                    return Err(Error::EventConflict { id: id.clone() });
                }
                id.clone()
            }
            None => loop {
                let n: i64 = tx
                    .query_row(
                        "INSERT INTO scheduled_event_ids (only, last) VALUES (0, 1)
                         ON CONFLICT (only) DO UPDATE SET last = last + 1 RETURNING last",
                        [],
                        |row| row.get(0),
                    )
                    .map_err(|e| events_error("take an event id", e))?;
                let id = format!("ev-{n}");
                if !exists(&id)? {
                    break id;
                }
            },
        };
        let event = StoredEvent {
            id,
            tag: input.tag.clone(),
            start: input.start,
            end: input.end,
            scope: input.scope.clone(),
            effect: input.effect.clone(),
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        let (scope_kind, region, profile) = scope_columns(&event.scope);
        let (effect_kind, factor) = effect_columns(&event.effect);
        tx.execute(
            &format!("INSERT INTO scheduled_events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                event.id,
                event.tag,
                event.start,
                event.end,
                scope_kind,
                region,
                profile,
                effect_kind,
                factor,
                event.version as i64,
                event.created_at_ms as i64,
                event.updated_at_ms as i64,
            ],
        )
        .map_err(|e| events_error(format!("store event {}", event.id), e))?;
        tx.commit()
            .map_err(|e| events_error(format!("commit event {}", event.id), e))?;
        Ok(event)
    }

    /// The event `id`.
    pub fn get(&self, id: &str) -> Result<StoredEvent> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM scheduled_events WHERE id = ?1"),
                params![id],
                read_row,
            )
            .optional()
            .map_err(|e| events_error(format!("read event {id}"), e))?
            .ok_or_else(|| Error::EventNotFound { id: id.to_string() })?
    }

    /// Every event, by start (then in the order they were created).
    pub fn list(&self) -> Result<Vec<StoredEvent>> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM scheduled_events ORDER BY start_s, rowid"
            ))
            .map_err(|e| events_error("prepare the events query", e))?;
        let rows = statement
            .query_map([], read_row)
            .map_err(|e| events_error("run the events query", e))?;
        let mut events = Vec::new();
        for row in rows {
            events.push(row.map_err(|e| events_error("read an event row", e))??);
        }
        Ok(events)
    }

    /// Replaces event `id` (tag, times, scope, effect) at node time `now_ms`; its version rises by
    /// one. An id in `input` must be `id`.
    pub fn update(&mut self, id: &str, input: &EventInput, now_ms: u64) -> Result<StoredEvent> {
        if let Some(other) = input.id.as_deref().filter(|other| *other != id) {
            return Err(input_error(
                Some("id"),
                format!("`{other}` does not match the event `{id}` being updated"),
            ));
        }
        let (scope_kind, region, profile) = scope_columns(&input.scope);
        let (effect_kind, factor) = effect_columns(&input.effect);
        let changed = self
            .conn
            .execute(
                "UPDATE scheduled_events SET tag = ?2, start_s = ?3, end_s = ?4, scope_kind = ?5,
                    scope_region = ?6, scope_profile = ?7, effect_kind = ?8, factor = ?9,
                    version = version + 1, updated_at_ms = ?10
                 WHERE id = ?1",
                params![
                    id,
                    input.tag,
                    input.start,
                    input.end,
                    scope_kind,
                    region,
                    profile,
                    effect_kind,
                    factor,
                    now_ms as i64,
                ],
            )
            .map_err(|e| events_error(format!("update event {id}"), e))?;
        if changed == 0 {
            return Err(Error::EventNotFound { id: id.to_string() });
        }
        self.get(id)
    }

    /// Deletes event `id`; returns it as it was.
    pub fn delete(&mut self, id: &str) -> Result<StoredEvent> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| events_error("begin a transaction", e))?;
        let event = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM scheduled_events WHERE id = ?1"),
                params![id],
                read_row,
            )
            .optional()
            .map_err(|e| events_error(format!("read event {id}"), e))?
            .ok_or_else(|| Error::EventNotFound { id: id.to_string() })??;
        tx.execute("DELETE FROM scheduled_events WHERE id = ?1", params![id])
            .map_err(|e| events_error(format!("delete event {id}"), e))?;
        tx.commit()
            .map_err(|e| events_error(format!("commit the deletion of {id}"), e))?;
        Ok(event)
    }
}

fn scope_columns(scope: &EventScope) -> (&'static str, Option<&str>, Option<&str>) {
    match scope {
        EventScope::All => ("all", None, None),
        EventScope::Region { region } => ("region", Some(region), None),
        EventScope::Profile { profile } => ("profile", None, Some(profile)),
        EventScope::RegionProfile { region, profile } => {
            ("region_profile", Some(region), Some(profile))
        }
    }
}

fn effect_columns(effect: &EventEffect) -> (&'static str, Option<f64>) {
    match effect {
        EventEffect::Multiplier { factor } => ("multiplier", Some(*factor)),
        EventEffect::LearnFromTag => ("learn_from_tag", None),
    }
}

/// A row as an event; the inner error is a row this build cannot read.
fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredEvent>> {
    let id: String = row.get(0)?;
    let scope_kind: String = row.get(4)?;
    let region: Option<String> = row.get(5)?;
    let profile: Option<String> = row.get(6)?;
    let effect_kind: String = row.get(7)?;
    let factor: Option<f64> = row.get(8)?;
    let unreadable = |what: &str| Error::Store {
        what: format!("events: event {id} has {what} this build cannot read"),
        source: None,
    };
    let scope = match (scope_kind.as_str(), region, profile) {
        ("all", _, _) => EventScope::All,
        ("region", Some(region), _) => EventScope::Region { region },
        ("profile", _, Some(profile)) => EventScope::Profile { profile },
        ("region_profile", Some(region), Some(profile)) => {
            EventScope::RegionProfile { region, profile }
        }
        _ => return Ok(Err(unreadable(&format!("scope `{scope_kind}`")))),
    };
    let effect = match (effect_kind.as_str(), factor) {
        ("multiplier", Some(factor)) => EventEffect::Multiplier { factor },
        ("learn_from_tag", _) => EventEffect::LearnFromTag,
        _ => return Ok(Err(unreadable(&format!("effect `{effect_kind}`")))),
    };
    Ok(Ok(StoredEvent {
        id,
        tag: row.get(1)?,
        start: row.get(2)?,
        end: row.get(3)?,
        scope,
        effect,
        version: row.get::<_, i64>(9)? as u64,
        created_at_ms: row.get::<_, i64>(10)? as u64,
        updated_at_ms: row.get::<_, i64>(11)? as u64,
    }))
}

fn events_error(what: impl Into<String>, source: rusqlite::Error) -> Error {
    Error::Store {
        what: format!("events: {}", what.into()),
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["eu".to_string(), "us".to_string()]
    }

    fn input(tag: &str, start: i64, factor: f64) -> EventInput {
        EventInput {
            id: None,
            tag: tag.into(),
            start,
            end: start + 3600,
            scope: EventScope::Region {
                region: "eu".into(),
            },
            effect: EventEffect::Multiplier { factor },
        }
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "tag": "spring-sale",
            "start": 1_700_000_000,
            "end": 1_700_007_200,
            "scope": {"kind": "region", "region": "eu"},
            "effect": {"kind": "multiplier", "factor": 3.0},
        })
    }

    /// The error of `body` (which must be rejected): its field and its text.
    fn rejected(body: &serde_json::Value) -> (Option<String>, String) {
        rejected_bytes(body.to_string().as_bytes())
    }

    fn rejected_bytes(body: &[u8]) -> (Option<String>, String) {
        match EventInput::from_json(body, &regions()) {
            Err(e @ Error::EventInput { .. }) => {
                let text = e.to_string();
                let Error::EventInput { field, .. } = e else {
                    unreachable!()
                };
                (field, text)
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    fn with(
        mut body: serde_json::Value,
        path: &[&str],
        value: serde_json::Value,
    ) -> serde_json::Value {
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    }

    fn without(mut body: serde_json::Value, key: &str) -> serde_json::Value {
        body.as_object_mut().expect("object").remove(key);
        body
    }

    #[test]
    fn create_get_list_update_delete_round_trip() {
        let mut store = EventStore::in_memory().expect("store");
        let late = store.create(&input("launch", 5_000, 3.0), 10).unwrap();
        let early = store.create(&input("sale", 1_000, 2.0), 20).unwrap();
        assert_eq!(late.id, "ev-1");
        assert_eq!(early.id, "ev-2");
        assert_eq!(
            (late.version, late.created_at_ms, late.updated_at_ms),
            (1, 10, 10)
        );
        assert_eq!(store.get("ev-1").unwrap(), late);
        // Listed by start.
        assert_eq!(store.list().unwrap(), vec![early.clone(), late.clone()]);

        let mut changed = input("launch", 6_000, 4.0);
        changed.scope = EventScope::RegionProfile {
            region: "us".into(),
            profile: "checkout".into(),
        };
        let updated = store.update("ev-1", &changed, 30).unwrap();
        assert_eq!(updated.version, 2);
        assert_eq!((updated.created_at_ms, updated.updated_at_ms), (10, 30));
        assert_eq!(updated.start, 6_000);
        assert_eq!(updated.scope, changed.scope);
        assert_eq!(updated.effect, EventEffect::Multiplier { factor: 4.0 });
        let again = store.update("ev-1", &changed, 40).unwrap();
        assert_eq!(again.version, 3);
        assert_eq!(store.get("ev-1").unwrap(), again);

        let deleted = store.delete("ev-2").unwrap();
        assert_eq!(deleted, early);
        assert_eq!(store.list().unwrap(), vec![again]);
        // Ids are not reused after a deletion.
        let next = store.create(&input("sale", 1_000, 2.0), 50).unwrap();
        assert_eq!(next.id, "ev-3");
    }

    #[test]
    fn every_scope_and_effect_survives_the_table() {
        let mut store = EventStore::in_memory().expect("store");
        let scopes = [
            EventScope::All,
            EventScope::Region {
                region: "eu".into(),
            },
            EventScope::Profile {
                profile: "batch".into(),
            },
            EventScope::RegionProfile {
                region: "us".into(),
                profile: "interactive".into(),
            },
        ];
        for (i, scope) in scopes.into_iter().enumerate() {
            let mut event = input("t", i as i64 * 10, 1.5);
            event.scope = scope.clone();
            if i % 2 == 1 {
                event.effect = EventEffect::LearnFromTag;
            }
            let stored = store.create(&event, 1).unwrap();
            let read = store.get(&stored.id).unwrap();
            assert_eq!(read.scope, scope);
            assert_eq!(read.effect, event.effect);
            assert_eq!(read.to_brain().id, stored.id);
        }
    }

    #[test]
    fn unknown_ids_are_not_found_and_taken_ids_conflict() {
        let mut store = EventStore::in_memory().expect("store");
        assert!(matches!(store.get("nope"), Err(Error::EventNotFound { id }) if id == "nope"));
        assert!(matches!(
            store.update("nope", &input("x", 0, 2.0), 1),
            Err(Error::EventNotFound { .. })
        ));
        assert!(matches!(
            store.delete("nope"),
            Err(Error::EventNotFound { .. })
        ));

        let mut named = input("x", 0, 2.0);
        named.id = Some("black-friday".into());
        let stored = store.create(&named, 1).unwrap();
        assert_eq!(stored.id, "black-friday");
        assert!(matches!(
            store.create(&named, 2),
            Err(Error::EventConflict { id }) if id == "black-friday"
        ));
        // A client id that looks like a generated one is skipped by the generator.
        named.id = Some("ev-1".into());
        store.create(&named, 3).unwrap();
        assert_eq!(store.create(&input("x", 0, 2.0), 4).unwrap().id, "ev-2");
        // An update may repeat its own id, not name another.
        named.id = Some("black-friday".into());
        assert_eq!(store.update("black-friday", &named, 5).unwrap().version, 2);
        let (field, _) = match store.update("ev-1", &named, 6) {
            Err(Error::EventInput { field, message }) => (field, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(field.as_deref(), Some("id"));
        named.id = Some("not valid!".into());
        assert!(matches!(
            store.create(&named, 7),
            Err(Error::EventInput { .. })
        ));
    }

    #[test]
    fn events_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("series.db");
        let created = {
            let mut store = EventStore::open(&path).expect("open");
            store.create(&input("launch", 100, 3.0), 1).unwrap()
        };
        let mut store = EventStore::open(&path).expect("reopen");
        assert_eq!(store.list().unwrap(), vec![created]);
        assert_eq!(store.create(&input("x", 0, 2.0), 2).unwrap().id, "ev-2");
    }

    #[test]
    fn valid_bodies_parse() {
        let parsed = EventInput::from_json(valid().to_string().as_bytes(), &regions()).unwrap();
        assert_eq!(parsed, {
            let mut i = input("spring-sale", 1_700_000_000, 3.0);
            i.end = 1_700_007_200;
            i
        });
        for (scope, expected) in [
            (serde_json::json!({"kind": "all"}), EventScope::All),
            (
                serde_json::json!({"kind": "profile", "profile": "batch"}),
                EventScope::Profile {
                    profile: "batch".into(),
                },
            ),
            (
                serde_json::json!({"kind": "region_profile", "region": "us", "profile": "batch"}),
                EventScope::RegionProfile {
                    region: "us".into(),
                    profile: "batch".into(),
                },
            ),
        ] {
            let body = with(valid(), &["scope"], scope);
            let parsed = EventInput::from_json(body.to_string().as_bytes(), &regions()).unwrap();
            assert_eq!(parsed.scope, expected);
        }
        let body = with(
            with(
                valid(),
                &["effect"],
                serde_json::json!({"kind": "learn_from_tag"}),
            ),
            &["id"],
            serde_json::json!("Launch_2"),
        );
        let parsed = EventInput::from_json(body.to_string().as_bytes(), &regions()).unwrap();
        assert_eq!(parsed.effect, EventEffect::LearnFromTag);
        assert_eq!(parsed.id.as_deref(), Some("Launch_2"));
        // Exactly 31 days and a factor of 1000 are allowed.
        let body = with(
            with(
                valid(),
                &["end"],
                serde_json::json!(1_700_000_000 + MAX_EVENT_SECONDS),
            ),
            &["effect", "factor"],
            serde_json::json!(1000),
        );
        EventInput::from_json(body.to_string().as_bytes(), &regions()).unwrap();
    }

    #[test]
    fn every_validation_error_names_its_field() {
        use serde_json::json;
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (without(valid(), "tag"), "tag"),
            (with(valid(), &["tag"], json!("")), "tag"),
            (with(valid(), &["tag"], json!("has space")), "tag"),
            (with(valid(), &["tag"], json!("x".repeat(65))), "tag"),
            (with(valid(), &["tag"], json!(7)), "tag"),
            (with(valid(), &["id"], json!("a/b")), "id"),
            (with(valid(), &["id"], json!(3)), "id"),
            (without(valid(), "start"), "start"),
            (with(valid(), &["start"], json!("soon")), "start"),
            (with(valid(), &["start"], json!(1.5)), "start"),
            (with(valid(), &["start"], json!(-60)), "start"),
            (without(valid(), "end"), "end"),
            (with(valid(), &["end"], json!(1_699_999_000)), "end"),
            (with(valid(), &["end"], json!(1_700_000_000)), "end"),
            (
                with(valid(), &["end"], json!(1_700_000_001 + MAX_EVENT_SECONDS)),
                "end",
            ),
            (without(valid(), "scope"), "scope"),
            (with(valid(), &["scope"], json!("eu")), "scope"),
            (
                with(valid(), &["scope"], json!({"region": "eu"})),
                "scope.kind",
            ),
            (
                with(valid(), &["scope", "kind"], json!("planet")),
                "scope.kind",
            ),
            (with(valid(), &["scope", "kind"], json!(1)), "scope.kind"),
            (
                with(valid(), &["scope", "region"], json!("mars")),
                "scope.region",
            ),
            (
                with(valid(), &["scope", "region"], json!(null)),
                "scope.region",
            ),
            (
                with(valid(), &["scope"], json!({"kind": "region"})),
                "scope.region",
            ),
            (
                with(
                    valid(),
                    &["scope"],
                    json!({"kind": "profile", "profile": "Bad Name"}),
                ),
                "scope.profile",
            ),
            (
                with(
                    valid(),
                    &["scope"],
                    json!({"kind": "region_profile", "region": "eu"}),
                ),
                "scope.profile",
            ),
            (
                with(valid(), &["scope", "color"], json!("red")),
                "scope.color",
            ),
            (
                with(valid(), &["scope"], json!({"kind": "all", "region": "eu"})),
                "scope.region",
            ),
            (without(valid(), "effect"), "effect"),
            (with(valid(), &["effect"], json!(3)), "effect"),
            (
                with(valid(), &["effect", "kind"], json!("double")),
                "effect.kind",
            ),
            (
                with(valid(), &["effect"], json!({"factor": 2})),
                "effect.kind",
            ),
            (
                with(valid(), &["effect", "factor"], json!(0)),
                "effect.factor",
            ),
            (
                with(valid(), &["effect", "factor"], json!(-2)),
                "effect.factor",
            ),
            (
                with(valid(), &["effect", "factor"], json!(1000.5)),
                "effect.factor",
            ),
            (
                with(valid(), &["effect", "factor"], json!("3")),
                "effect.factor",
            ),
            (
                with(valid(), &["effect"], json!({"kind": "multiplier"})),
                "effect.factor",
            ),
            (
                with(
                    valid(),
                    &["effect"],
                    json!({"kind": "learn_from_tag", "factor": 2}),
                ),
                "effect.factor",
            ),
            (
                with(valid(), &["effect", "extra"], json!(true)),
                "effect.extra",
            ),
            (with(valid(), &["color"], json!("red")), "color"),
            (with(valid(), &["version"], json!(2)), "version"),
        ];
        for (body, field) in cases {
            let (got, text) = rejected(&body);
            assert_eq!(got.as_deref(), Some(field), "{body}: {text}");
            assert!(text.starts_with(&format!("{field}: ")), "{body}: {text}");
        }
        let (field, text) = rejected(&with(valid(), &["scope", "region"], json!("mars")));
        assert_eq!(field.as_deref(), Some("scope.region"));
        assert!(text.contains("mars") && text.contains("eu, us"), "{text}");
        let (_, text) = rejected(&with(valid(), &["color"], json!("red")));
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn a_body_that_is_not_a_json_object_says_so() {
        for body in [&b"tag=x"[..], b"", b"{\"tag\": ", b"\xff\xfe"] {
            let (field, text) = rejected_bytes(body);
            assert_eq!(field, None);
            assert!(text.contains("not JSON"), "{text}");
        }
        let (field, text) = rejected_bytes(b"[1, 2]");
        assert_eq!(field, None);
        assert!(text.contains("JSON object"), "{text}");
    }
}

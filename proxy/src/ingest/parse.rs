//! The NDJSON batch of `POST /api/v1/ingest`: one JSON object per line, checked whole before
//! anything is counted.
//!
//! Owns: splitting the body into lines (`\n` or `\r\n`; blank lines ignored; numbered from 1),
//! the line, event-count and field limits, the field rules, timestamps (unix seconds or RFC 3339)
//! and the error of every bad line.
//!
//! Invariants:
//! - pure: parsing changes no state, so a rejected batch leaves everything as it was;
//! - a user id is hashed here (by the proxy's identity rules) and never kept, logged or put in an
//!   error: an [`Event`] carries only its [`UserKey`], and no message quotes a user id;
//! - every bad line is found (not only the first) and reported with its number; at most
//!   [`MAX_REPORTED_LINES`] are listed, the rest counted;
//! - a batch with more events than the limit is refused as a whole, without parsing past it.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::identity::{IdentityError, IdentityResolver, UserKey};

/// Most bad lines listed in a rejection (the rest are counted).
pub const MAX_REPORTED_LINES: usize = 100;
/// Longest `user_id`, bytes (`identity.max_len` may lower it).
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest `event_type`, bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 64;
/// How far ahead of the forecaster's clock a timestamp may be, seconds (clocks drift; a minute
/// still open takes it as any other).
pub const MAX_FUTURE_SECS: u64 = 300;

/// The fields of an event line, in the order the README lists them.
pub const FIELDS: [&str; 9] = [
    "user_id",
    "timestamp",
    "event_type",
    "region",
    "client_ip",
    "fleet",
    "resource_consumption",
    "status",
    "latency_ms",
];

const RESOURCE_FIELDS: [&str; 4] = ["cpu_ms", "memory_mb", "network_bytes", "io_ops"];

/// Where an event's user was: a configured region, or an address for the GeoIP lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Region(String),
    ClientIp(IpAddr),
}

/// One accepted event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Line number in the body (from 1).
    pub line: usize,
    pub user: UserKey,
    /// Unix seconds, node time.
    pub timestamp: u64,
    /// `/<event_type>`: the request path assignment rules and path classes see.
    pub path: String,
    pub origin: Origin,
    /// The fleet the event names, if it names one (else the profile's route decides).
    pub fleet: Option<String>,
    /// `resource_consumption.network_bytes` (rounded down), counted as request bytes.
    pub bytes_in: u64,
    pub status: u16,
    pub latency_ms: Option<f64>,
}

/// What a batch is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ParseContext<'a> {
    pub identity: &'a IdentityResolver,
    /// Every configured region.
    pub regions: &'a [String],
    /// The fleets of the forecaster's region.
    pub fleets: &'a [String],
    /// The forecaster's region (for messages).
    pub region: &'a str,
    /// The node clock now, unix seconds.
    pub now_secs: u64,
    /// How long the series keep minutes, seconds: older timestamps are refused.
    pub retention_secs: u64,
    pub max_line_bytes: usize,
    pub max_events: usize,
}

/// One bad line: its number (from 1) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Why a batch was refused; nothing of it was counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// More events than `ingest.max_events`; `line` is the first event past the limit.
    #[error("more than ingest.max_events = {max} events in one batch (line {line} is event {}); split the batch", max + 1)]
    TooManyEvents { max: usize, line: usize },
    /// Some lines are bad: the first [`MAX_REPORTED_LINES`] of them, and how many there are.
    #[error("{bad} of {events} event lines are bad; nothing was stored")]
    BadLines {
        errors: Vec<LineError>,
        bad: usize,
        events: usize,
    },
}

/// An event line as JSON gives it: every field a raw value, checked by [`check_event`] (so that
/// each message is ours and none quotes a user id).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an event object")]
struct RawEvent {
    user_id: Option<Value>,
    timestamp: Option<Value>,
    event_type: Option<Value>,
    region: Option<Value>,
    client_ip: Option<Value>,
    fleet: Option<Value>,
    resource_consumption: Option<Value>,
    status: Option<Value>,
    latency_ms: Option<Value>,
}

/// Parses and checks a whole body; the events in body order, or every bad line.
pub fn parse_batch(body: &[u8], context: &ParseContext<'_>) -> Result<Vec<Event>, Rejected> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut bad = 0;
    let mut seen = 0;
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        seen += 1;
        if seen > context.max_events {
            return Err(Rejected::TooManyEvents {
                max: context.max_events,
                line: number,
            });
        }
        match parse_line(number, line, context) {
            Ok(event) => events.push(event),
            Err(message) => {
                bad += 1;
                if errors.len() < MAX_REPORTED_LINES {
                    errors.push(LineError {
                        line: number,
                        message,
                    });
                }
            }
        }
    }
    if bad > 0 {
        return Err(Rejected::BadLines {
            errors,
            bad,
            events: seen,
        });
    }
    Ok(events)
}

fn parse_line(number: usize, line: &[u8], context: &ParseContext<'_>) -> Result<Event, String> {
    if line.len() > context.max_line_bytes {
        return Err(format!(
            "the line is {} bytes, longer than ingest.max_line_bytes = {}",
            line.len(),
            context.max_line_bytes
        ));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "the line is not valid UTF-8 (at byte {})",
            e.valid_up_to() + 1
        )
    })?;
    let raw: RawEvent = serde_json::from_str(text).map_err(json_message)?;
    check_event(number, raw, context)
}

/// A JSON error without serde's "at line 1", which is always line 1 of the line.
fn json_message(error: serde_json::Error) -> String {
    let text = error.to_string();
    let bare = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(message, _)| message);
    format!("not a JSON event: {bare} (column {})", error.column())
}

fn check_event(line: usize, raw: RawEvent, context: &ParseContext<'_>) -> Result<Event, String> {
    let mut problems: Vec<String> = Vec::new();
    let user = match raw.user_id {
        None => {
            problems.push("user_id is required".into());
            None
        }
        Some(value) => match user_key(&value, context.identity) {
            Ok(user) => Some(user),
            Err(problem) => {
                problems.push(problem);
                None
            }
        },
    };
    let timestamp = match raw.timestamp {
        None => {
            problems.push("timestamp is required".into());
            None
        }
        Some(value) => collect(&mut problems, timestamp(&value, context)),
    };
    let path = match raw.event_type {
        None => {
            problems.push("event_type is required".into());
            None
        }
        Some(value) => collect(&mut problems, event_path(&value)),
    };
    let origin = collect(
        &mut problems,
        origin(raw.region.as_ref(), raw.client_ip.as_ref(), context),
    );
    let fleet = match raw.fleet {
        None => Some(None),
        Some(value) => collect(&mut problems, fleet(&value, context)).map(Some),
    };
    let bytes_in = match raw.resource_consumption {
        None => Some(0),
        Some(value) => collect(&mut problems, network_bytes(&value)),
    };
    let status = match raw.status {
        None => Some(200),
        Some(value) => collect(&mut problems, status(&value)),
    };
    let latency_ms = match raw.latency_ms {
        None => Some(None),
        Some(value) => collect(&mut problems, non_negative("latency_ms", &value)).map(Some),
    };
    match (
        user, timestamp, path, origin, fleet, bytes_in, status, latency_ms,
    ) {
        (
            Some(user),
            Some(timestamp),
            Some(path),
            Some(origin),
            Some(fleet),
            Some(bytes_in),
            Some(status),
            Some(latency_ms),
        ) if problems.is_empty() => Ok(Event {
            line,
            user,
            timestamp,
            path,
            origin,
            fleet,
            bytes_in,
            status,
            latency_ms,
        }),
        _ => Err(problems.join("; ")),
    }
}

fn collect<T>(problems: &mut Vec<String>, result: Result<T, String>) -> Option<T> {
    result.map_err(|problem| problems.push(problem)).ok()
}

fn user_key(value: &Value, identity: &IdentityResolver) -> Result<UserKey, String> {
    let Value::String(id) = value else {
        return Err(format!("user_id must be a string, not {}", kind(value)));
    };
    if id.is_empty() {
        return Err("user_id is empty".into());
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(format!(
            "user_id is {} bytes, at most {MAX_USER_ID_BYTES}",
            id.len()
        ));
    }
    identity.reported_key(id.as_bytes()).map_err(|e| match e {
        IdentityError::TooLong { max_len, .. } => format!(
            "user_id is {} bytes, longer than identity.max_len = {max_len}",
            id.len()
        ),
        IdentityError::Malformed { reason, .. } | IdentityError::Unauthorized { reason, .. } => {
            format!("user_id is not a usable identity: {reason}")
        }
    })
}

fn timestamp(value: &Value, context: &ParseContext<'_>) -> Result<u64, String> {
    let secs = match value {
        Value::Number(n) => {
            let secs = n.as_f64().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(|| {
                format!("timestamp {n} is not unix seconds: expected a number ≥ 0")
            })?;
            // Saturates for absurd values, which the window below refuses.
            secs.floor() as u64
        }
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "timestamp \"{text}\": give unix seconds as a JSON number ({text}), not a string"
            ))
        }
        Value::String(text) => parse_rfc3339(text).ok_or_else(|| {
            format!(
                "timestamp \"{}\" is not RFC 3339 (e.g. 2026-03-01T10:00:00Z or 2026-03-01T11:00:00+01:00)",
                shorten(text)
            )
        })?,
        other => {
            return Err(format!(
                "timestamp must be unix seconds (a number) or an RFC 3339 string, not {}",
                kind(other)
            ))
        }
    };
    let oldest = context.now_secs.saturating_sub(context.retention_secs);
    if secs < oldest {
        return Err(format!(
            "timestamp {} is older than the series keep (forecaster.retention_days: nothing before {})",
            rfc3339(secs),
            rfc3339(oldest)
        ));
    }
    if secs > context.now_secs + MAX_FUTURE_SECS {
        return Err(format!(
            "timestamp {} is {} s ahead of the forecaster's clock ({}); at most {MAX_FUTURE_SECS} s ahead is accepted (timestamps are node time)",
            rfc3339(secs),
            secs - context.now_secs,
            rfc3339(context.now_secs)
        ));
    }
    Ok(secs)
}

fn event_path(value: &Value) -> Result<String, String> {
    let Value::String(name) = value else {
        return Err(format!("event_type must be a string, not {}", kind(value)));
    };
    if name.is_empty() || name.len() > MAX_EVENT_TYPE_BYTES {
        return Err(format!(
            "event_type is {} bytes; expected 1 to {MAX_EVENT_TYPE_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("event_type contains control characters".into());
    }
    Ok(format!("/{name}"))
}

fn origin(
    region: Option<&Value>,
    client_ip: Option<&Value>,
    context: &ParseContext<'_>,
) -> Result<Origin, String> {
    match (region, client_ip) {
        (Some(_), Some(_)) => Err("give region or client_ip, not both".into()),
        (None, None) => Err("one of region or client_ip is required".into()),
        (Some(Value::String(name)), None) => {
            if context.regions.iter().any(|r| r == name) {
                Ok(Origin::Region(name.clone()))
            } else {
                Err(format!(
                    "region \"{}\" is not a configured region (configured: {})",
                    shorten(name),
                    context.regions.join(", ")
                ))
            }
        }
        (Some(other), None) => Err(format!("region must be a string, not {}", kind(other))),
        (None, Some(Value::String(text))) => text
            .parse::<IpAddr>()
            .map(Origin::ClientIp)
            .map_err(|_| "client_ip is not an IPv4 or IPv6 address".to_string()),
        (None, Some(other)) => Err(format!("client_ip must be a string, not {}", kind(other))),
    }
}

fn fleet(value: &Value, context: &ParseContext<'_>) -> Result<String, String> {
    let Value::String(name) = value else {
        return Err(format!("fleet must be a string, not {}", kind(value)));
    };
    if context.fleets.iter().any(|f| f == name) {
        Ok(name.clone())
    } else {
        Err(format!(
            "fleet \"{}\" is not a fleet of region `{}` (its fleets: {})",
            shorten(name),
            context.region,
            context.fleets.join(", ")
        ))
    }
}

/// Checks `resource_consumption` and keeps its `network_bytes` (what the series can hold).
fn network_bytes(value: &Value) -> Result<u64, String> {
    let Value::Object(fields) = value else {
        return Err(format!(
            "resource_consumption must be an object, not {}",
            kind(value)
        ));
    };
    let mut problems = Vec::new();
    let mut bytes = 0;
    for (name, value) in fields {
        if !RESOURCE_FIELDS.contains(&name.as_str()) {
            problems.push(format!(
                "resource_consumption: unknown field `{}` (known: {})",
                shorten(name),
                RESOURCE_FIELDS.join(", ")
            ));
            continue;
        }
        match non_negative(&format!("resource_consumption.{name}"), value) {
            Ok(amount) if name == "network_bytes" => bytes = amount.floor() as u64,
            Ok(_) => {}
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(bytes)
    } else {
        Err(problems.join("; "))
    }
}

fn status(value: &Value) -> Result<u16, String> {
    value
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .map(|s| s as u16)
        .ok_or_else(|| {
            format!(
                "status must be an integer from 100 to 599, got {}",
                shown(value)
            )
        })
}

fn non_negative(name: &str, value: &Value) -> Result<f64, String> {
    value
        .as_f64()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{name} must be a finite number ≥ 0, got {}", shown(value)))
}

/// A value for a message: numbers as they are, anything else by its kind (no user text).
fn shown(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most 64 characters of a name quoted in a message.
fn shorten(text: &str) -> String {
    const KEEP: usize = 64;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Unix seconds of an RFC 3339 date-time (`T`, `t` or a space between date and time; `Z` or a
/// `±hh:mm` offset; fractions of a second dropped, a leap second read as :59).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let separators = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let offset = rest.get(1..)?.as_bytes();
            if offset.len() != 5 || offset[2] != b':' {
                return None;
            }
            let digits = |range: std::ops::Range<usize>| -> Option<i64> {
                let part = std::str::from_utf8(&offset[range]).ok()?;
                part.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| part.parse().ok())?
            };
            let (h, m) = (digits(0..2)?, digits(3..5)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset;
    u64::try_from(secs).ok()
}

/// `YYYY-MM-DDThh:mm:ssZ` of unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of days since 1970-01-01 (the inverse of [`days_from_civil`]).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;

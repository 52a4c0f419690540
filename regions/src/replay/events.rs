//! `prescale replay --events FILE`: scheduled events (launches, matches, campaigns) given to the
//! predictive policy's brain, as the live forecaster gives it those of `/api/v1/events`, and the
//! scores of each policy inside each event's window.
//!
//! The file is a JSON array of events in the form `POST /api/v1/events` takes
//! (`{"id"?, "tag", "start", "end", "scope", "effect"}`), checked by the same code. A replay has
//! one series, so every scope must be `{"kind":"all"}`. An event that does not overlap the trace
//! is refused: it is almost always a mistake (milliseconds for seconds, another year).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::brain::{EventScope, ScheduledEvent};
use crate::error::{Error, Result};
use crate::events::EventInput;
use crate::trace::Trace;

/// The largest events file read: a million events are far more than any replay needs.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A policy's score inside one event's window (the trace minutes the event covers).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventWindowScore {
    pub id: String,
    pub tag: String,
    pub minutes: usize,
    pub slo_violation_minutes: usize,
    pub unserved_fraction: f64,
    /// Instances ready, summed over the window's minutes (booting ones not included).
    pub ready_instance_minutes: f64,
}

/// Read and check the events file at `path` for a replay of `trace`.
pub fn read_events_file(path: &Path, trace: &Trace) -> Result<Vec<ScheduledEvent>> {
    let io = |source| Error::EventsFileIo {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(file_error(
            path,
            format!("{size} bytes; at most {MAX_FILE_BYTES} are read"),
        ));
    }
    let text = std::fs::read(path).map_err(io)?;
    parse_events(&text, path, trace)
}

/// Check the events in `text` (the file at `path`) for a replay of `trace`.
pub fn parse_events(text: &[u8], path: &Path, trace: &Trace) -> Result<Vec<ScheduledEvent>> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| file_error(path, format!("not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(file_error(
            path,
            "expected a JSON array of events, each as POST /api/v1/events takes it".into(),
        ));
    };
    let trace_start = trace.start;
    let trace_end = trace.start + 60 * trace.len() as i64;
    let mut events: Vec<ScheduledEvent> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let number = index + 1;
        let at = |message: String| file_error(path, format!("event {number}: {message}"));
        let input = EventInput::from_value(item, &[]).map_err(|e| at(e.to_string()))?;
        if input.scope != EventScope::All {
            return Err(at(
                r#"scope: a replay has one series; the scope must be {"kind":"all"}"#.into(),
            ));
        }
        if input.end <= trace_start || input.start >= trace_end {
            // Unix seconds pass 10^11 in the year 5138; such values are milliseconds.
            let hint = if input.start >= 100_000_000_000 {
                "; these look like milliseconds, start and end are unix seconds"
            } else {
                ""
            };
            return Err(at(format!(
                "{}..{} does not overlap the trace ({trace_start}..{trace_end}, unix seconds){hint}",
                input.start, input.end
            )));
        }
        let id = input.id.unwrap_or_else(|| format!("ev-{number}"));
        if let Some(twin) = events.iter().position(|e| e.id == id) {
            return Err(at(format!(
                "id `{id}` is also the id of event {}",
                twin + 1
            )));
        }
        events.push(ScheduledEvent {
            id,
            tag: input.tag,
            scope: input.scope,
            start: input.start,
            end: input.end,
            effect: input.effect,
        });
    }
    Ok(events)
}

/// Each event's window score for a run that had `ready` instances per minute.
pub fn window_scores(
    events: &[ScheduledEvent],
    trace: &Trace,
    demand: &[f64],
    ready: &[usize],
    capacity_rps: f64,
) -> Vec<EventWindowScore> {
    events
        .iter()
        .map(|event| {
            // Trace minutes the event covers; the file's check keeps them inside the trace.
            let minute_of = |t: i64| {
                ((t.div_euclid(60) - trace.start.div_euclid(60)).max(0) as usize).min(trace.len())
            };
            let (first, last) = (minute_of(event.start), minute_of(event.end));
            let (mut violations, mut unserved, mut total, mut instances) = (0, 0.0, 0.0, 0.0);
            for m in first..last {
                let capacity = ready[m] as f64 * capacity_rps;
                if demand[m] > capacity + 1e-9 {
                    violations += 1;
                }
                unserved += (demand[m] - capacity).max(0.0);
                total += demand[m];
                instances += ready[m] as f64;
            }
            EventWindowScore {
                id: event.id.clone(),
                tag: event.tag.clone(),
                minutes: last - first,
                slo_violation_minutes: violations,
                unserved_fraction: if total > 0.0 { unserved / total } else { 0.0 },
                ready_instance_minutes: instances,
            }
        })
        .collect()
}

fn file_error(path: &Path, message: String) -> Error {
    Error::EventsFile {
        path: PathBuf::from(path),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace {
        Trace::from_minutes(1_700_000_040, vec![60.0; 120])
    }

    fn parse(text: &str) -> Result<Vec<ScheduledEvent>> {
        parse_events(text.as_bytes(), Path::new("events.json"), &trace())
    }

    #[test]
    fn events_in_the_api_form_are_read_with_ids() {
        let events = parse(
            r#"[{"tag":"launch","start":1700000400,"end":1700001600,"scope":{"kind":"all"},
                 "effect":{"kind":"multiplier","factor":3}},
                {"id":"cup-final","tag":"match","start":1700003000,"end":1700009000,
                 "scope":{"kind":"all"},"effect":{"kind":"learn_from_tag"}}]"#,
        )
        .expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "ev-1");
        assert_eq!(events[1].id, "cup-final");
    }

    #[test]
    fn every_mistake_names_the_event_and_the_field() {
        let event = |fields: &str| {
            format!(
                r#"[{{"tag":"a","start":1700000400,"end":1700001600,"scope":{{"kind":"all"}},"effect":{{"kind":"multiplier","factor":2}}}}, {fields}]"#
            )
        };
        for (text, expected) in [
            ("{}".to_string(), "expected a JSON array"),
            ("[1,".to_string(), "not JSON"),
            (
                event(
                    r#"{"tag":"b","start":1700000400,"end":1700001600,"scope":{"kind":"all"},"effect":{"kind":"multiplier","factor":0}}"#,
                ),
                "event 2: effect.factor",
            ),
            (
                event(
                    r#"{"tag":"b","start":1700000400,"end":1700001600,"scope":{"kind":"region","region":"eu"},"effect":{"kind":"learn_from_tag"}}"#,
                ),
                "event 2: scope",
            ),
            (
                event(
                    r#"{"tag":"b","start":1700000400000,"end":1700001600000,"scope":{"kind":"all"},"effect":{"kind":"learn_from_tag"}}"#,
                ),
                "look like milliseconds",
            ),
            (
                event(
                    r#"{"tag":"b","start":1600000000,"end":1600001600,"scope":{"kind":"all"},"effect":{"kind":"learn_from_tag"}}"#,
                ),
                "does not overlap the trace",
            ),
            (
                event(
                    r#"{"id":"ev-1","tag":"b","start":1700000400,"end":1700001600,"scope":{"kind":"all"},"effect":{"kind":"learn_from_tag"}}"#,
                ),
                "also the id of event 1",
            ),
            (
                event(
                    r#"{"tag":"b","start":1700000400,"end":1700001600,"scope":{"kind":"all"},"effect":{"kind":"learn_from_tag"},"factor":2}"#,
                ),
                "event 2: factor",
            ),
        ] {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("events.json"), "{err}");
        }
    }

    #[test]
    fn window_scores_count_only_the_events_minutes() {
        let trace = trace();
        let events = parse(
            r#"[{"tag":"t","start":1700000400,"end":1700001600,"scope":{"kind":"all"},
                 "effect":{"kind":"multiplier","factor":2}}]"#,
        )
        .expect("valid");
        let mut demand = vec![1.0; 120];
        demand[10] = 5.0; // inside: minutes 6..26 of the trace
        demand[100] = 5.0; // outside
        let ready = vec![2; 120];
        let scores = window_scores(&events, &trace, &demand, &ready, 1.0);
        assert_eq!(scores[0].minutes, 20);
        assert_eq!(scores[0].slo_violation_minutes, 1);
        assert_eq!(scores[0].ready_instance_minutes, 40.0);
    }
}

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use proptest::prelude::*;

use super::*;
use crate::ingest::testing::{config, ingest, NOW};
use crate::ingest::Ingest;

fn ok(ingest: &Ingest, body: &str) -> Vec<Event> {
    ingest
        .parse_at(body.as_bytes(), NOW)
        .unwrap_or_else(|e| panic!("rejected: {e:?}"))
}

fn bad_lines(ingest: &Ingest, body: &[u8]) -> Vec<LineError> {
    match ingest.parse_at(body, NOW) {
        Err(Rejected::BadLines { errors, .. }) => errors,
        other => panic!("expected bad lines, got {other:?}"),
    }
}

/// The one problem of a one-line body.
fn problem(ingest: &Ingest, line: &str) -> String {
    let errors = bad_lines(ingest, line.as_bytes());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 1);
    errors[0].message.clone()
}

const GOOD: &str =
    r#"{"user_id":"alice","timestamp":1767261600,"event_type":"checkout","region":"eu"}"#;

#[test]
fn a_minimal_event_gets_the_defaults() {
    let ingest = ingest(&config(""));
    let events = ok(&ingest, GOOD);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.line, 1);
    assert_eq!(e.timestamp, NOW);
    assert_eq!(e.path, "/checkout");
    assert_eq!(e.origin, Origin::Region("eu".into()));
    assert_eq!((e.fleet.as_deref(), e.bytes_in, e.status), (None, 0, 200));
    assert_eq!(e.latency_ms, None);
}

#[test]
fn every_field_is_read() {
    let ingest = ingest(&config(""));
    let line = r#"{"user_id":"bob","timestamp":"2026-01-01T11:00:30+01:00","event_type":"api/report","client_ip":"175.16.199.1","fleet":"batch","resource_consumption":{"cpu_ms":12.5,"memory_mb":256,"network_bytes":4096.9,"io_ops":3},"status":503,"latency_ms":42.5}"#;
    let e = &ok(&ingest, line)[0];
    assert_eq!(e.timestamp, NOW + 30);
    assert_eq!(e.path, "/api/report");
    assert_eq!(
        e.origin,
        Origin::ClientIp("175.16.199.1".parse().expect("ip"))
    );
    assert_eq!(e.fleet.as_deref(), Some("batch"));
    assert_eq!(
        (e.bytes_in, e.status, e.latency_ms),
        (4096, 503, Some(42.5))
    );
}

#[test]
fn a_user_id_hashes_as_the_same_id_in_the_proxy_s_identity_header() {
    let ingest = ingest(&config(""));
    let e = &ok(&ingest, GOOD)[0];
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", "alice".parse().expect("header"));
    let proxied = ingest
        .identity
        .resolve(&headers, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .expect("identity");
    assert_eq!(e.user, proxied);
    let other = &ok(&ingest, &GOOD.replace("alice", "alicf"))[0];
    assert_ne!(other.user, e.user);
}

#[test]
fn blank_lines_and_crlf_are_accepted_and_lines_keep_their_numbers() {
    let ingest = ingest(&config(""));
    let body = format!("\n{GOOD}\r\n  \t\r\n\r\n{GOOD}\n\n");
    let events = ok(&ingest, &body);
    assert_eq!(events.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 5]);
    let body = format!("{GOOD}\r\n\r\n{{\"user_id\":\"x\"}}\r\n{GOOD}");
    let errors = bad_lines(&ingest, body.as_bytes());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 3);
    // An empty body holds no events.
    assert!(ok(&ingest, "").is_empty());
    assert!(ok(&ingest, "\r\n\n").is_empty());
}

#[test]
fn every_field_s_errors_are_named() {
    let ingest = ingest(&config(""));
    let with = |field: &str, value: &str| {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(GOOD).expect("good");
        object.insert(field.into(), serde_json::from_str(value).expect("value"));
        serde_json::Value::Object(object).to_string()
    };
    let without = |field: &str| {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(GOOD).expect("good");
        object.remove(field);
        serde_json::Value::Object(object).to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (without("user_id"), "user_id is required"),
        (
            with("user_id", "42"),
            "user_id must be a string, not a number",
        ),
        (with("user_id", r#""""#), "user_id is empty"),
        (
            with("user_id", &format!("\"{}\"", "u".repeat(257))),
            "at most 256",
        ),
        (with("user_id", r#""two words""#), "visible ASCII"),
        (without("timestamp"), "timestamp is required"),
        (with("timestamp", "-5"), "expected a number ≥ 0"),
        (with("timestamp", "true"), "not a boolean"),
        (with("timestamp", r#""1767261600""#), "as a JSON number"),
        (with("timestamp", r#""yesterday""#), "not RFC 3339"),
        (
            with("timestamp", r#""2026-02-30T00:00:00Z""#),
            "not RFC 3339",
        ),
        (with("timestamp", "1000"), "older than the series keep"),
        (with("timestamp", "1767262000"), "400 s ahead"),
        (without("event_type"), "event_type is required"),
        (with("event_type", r#""""#), "expected 1 to 64"),
        (
            with("event_type", &format!("\"{}\"", "e".repeat(65))),
            "expected 1 to 64",
        ),
        (with("event_type", r#""a\nb""#), "control characters"),
        (with("event_type", "[]"), "not an array"),
        (without("region"), "one of region or client_ip is required"),
        (with("client_ip", r#""10.0.0.1""#), "not both"),
        (
            with("region", r#""mars""#),
            "region \"mars\" is not a configured region (configured: eu, asia)",
        ),
        (with("region", "7"), "region must be a string"),
        (
            with("fleet", r#""web-asia""#),
            "not a fleet of region `eu` (its fleets: web, batch)",
        ),
        (with("fleet", "{}"), "fleet must be a string"),
        (with("status", "99"), "from 100 to 599, got 99"),
        (with("status", "600"), "got 600"),
        (with("status", "200.5"), "got 200.5"),
        (with("status", r#""200""#), "got a string"),
        (
            with("latency_ms", "-1"),
            "latency_ms must be a finite number ≥ 0, got -1",
        ),
        (with("latency_ms", r#""fast""#), "got a string"),
        (with("resource_consumption", "[]"), "must be an object"),
        (
            with("resource_consumption", r#"{"cpu_ms":-1}"#),
            "resource_consumption.cpu_ms must be a finite number ≥ 0",
        ),
        (
            with("resource_consumption", r#"{"memory_mb":"lots"}"#),
            "resource_consumption.memory_mb",
        ),
        (
            with("resource_consumption", r#"{"gpu_ms":1}"#),
            "unknown field `gpu_ms`",
        ),
        (with("surprise", "1"), "unknown field `surprise`"),
    ];
    for (line, expected) in cases {
        let message = problem(&ingest, &line);
        assert!(
            message.contains(expected),
            "{line}\n→ {message}\nwanted: {expected}"
        );
    }
    // The address alone places the user.
    let by_ip = with("client_ip", r#""not-an-ip""#).replace(r#","region":"eu""#, "");
    assert!(problem(&ingest, &by_ip).contains("client_ip is not an IPv4 or IPv6 address"));
}

#[test]
fn a_line_names_all_its_problems_and_never_the_user_id() {
    let ingest = ingest(&config(""));
    let line =
        r#"{"user_id":"secret user","timestamp":"soon","event_type":"","region":"eu","status":0}"#;
    let message = problem(&ingest, line);
    for part in ["user_id", "timestamp", "event_type", "status"] {
        assert!(message.contains(part), "{message}");
    }
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn json_errors_point_at_the_column() {
    let ingest = ingest(&config(""));
    let message = problem(&ingest, r#"{"user_id":"a", oops}"#);
    assert!(message.starts_with("not a JSON event:"), "{message}");
    assert!(message.contains("column 17"), "{message}");
    assert!(!message.contains("line 1"), "{message}");
    assert!(problem(&ingest, "[1,2]").contains("an event object"));
    assert!(problem(&ingest, &format!("{GOOD} trailing")).contains("trailing"));
    let duplicate = GOOD.replace(r#""region":"eu""#, r#""region":"eu","region":"eu""#);
    assert!(problem(&ingest, &duplicate).contains("duplicate field `region`"));
}

#[test]
fn invalid_utf8_and_oversized_lines_are_bad_lines() {
    let ingest = ingest(&config(""));
    let mut body = format!("{GOOD}\n").into_bytes();
    body.extend_from_slice(b"{\"user_id\":\"\xff\xfe\"}\n");
    body.extend_from_slice(format!("{GOOD}\n").as_bytes());
    body.extend_from_slice(format!("{{\"user_id\":\"{}\"}}\n", "x".repeat(2000)).as_bytes());
    let errors = bad_lines(&ingest, &body);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].line, 2);
    assert!(
        errors[0].message.contains("not valid UTF-8 (at byte 13)"),
        "{}",
        errors[0].message
    );
    assert_eq!(errors[1].line, 4);
    assert!(
        errors[1]
            .message
            .contains("longer than ingest.max_line_bytes = 1024"),
        "{}",
        errors[1].message
    );
    // The limit counts the line without its line break.
    let exact = format!("{GOOD}{}", " ".repeat(1024 - GOOD.len()));
    assert_eq!(ok(&ingest, &format!("{exact}\r\n")).len(), 1);
    assert_eq!(
        bad_lines(&ingest, format!("{exact} \n").as_bytes()).len(),
        1
    );
}

#[test]
fn too_many_events_refuse_the_batch_at_the_first_one_past_the_limit() {
    let ingest = ingest(&config(""));
    let fifty = format!("{GOOD}\n\n").repeat(50);
    assert_eq!(ok(&ingest, &fifty).len(), 50);
    let body = format!("{fifty}{GOOD}\n");
    assert_eq!(
        ingest.parse_at(body.as_bytes(), NOW),
        Err(Rejected::TooManyEvents { max: 50, line: 101 })
    );
}

#[test]
fn every_bad_line_is_counted_and_the_first_hundred_listed() {
    let ingest = ingest(&config(""));
    let context = ParseContext {
        identity: &ingest.identity,
        regions: &ingest.regions,
        fleets: &ingest.fleets,
        region: &ingest.region,
        now_secs: NOW,
        retention_secs: 86_400,
        max_line_bytes: 1024,
        max_events: 1000,
    };
    let body = format!("{GOOD}\n{}", "{}\n".repeat(150));
    match parse_batch(body.as_bytes(), &context) {
        Err(Rejected::BadLines {
            errors,
            bad,
            events,
        }) => {
            assert_eq!((errors.len(), bad, events), (MAX_REPORTED_LINES, 150, 151));
            assert_eq!(errors[0].line, 2);
            assert_eq!(errors[99].line, 101);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timestamps_are_unix_seconds_or_rfc3339() {
    let ingest = ingest(&config(""));
    for (given, expected) in [
        ("1767261600", NOW),
        ("1767261659.999", NOW + 59),
        (r#""2026-01-01T10:00:00Z""#, NOW),
        (r#""2026-01-01t10:00:00.75z""#, NOW),
        (r#""2026-01-01 12:30:00+02:30""#, NOW),
        (r#""2026-01-01T04:00:00-06:00""#, NOW),
    ] {
        let line = GOOD.replace("1767261600", given);
        assert_eq!(ok(&ingest, &line)[0].timestamp, expected, "{given}");
    }
    // The window: the retention behind, MAX_FUTURE_SECS ahead.
    let oldest = NOW - 30 * 86_400;
    assert_eq!(
        ok(&ingest, &GOOD.replace("1767261600", &oldest.to_string()))[0].timestamp,
        oldest
    );
    let message = problem(
        &ingest,
        &GOOD.replace("1767261600", &(oldest - 1).to_string()),
    );
    assert!(
        message.contains("nothing before 2025-12-02T10:00:00Z"),
        "{message}"
    );
    let newest = NOW + MAX_FUTURE_SECS;
    assert_eq!(
        ok(&ingest, &GOOD.replace("1767261600", &newest.to_string())).len(),
        1
    );
    let message = problem(
        &ingest,
        &GOOD.replace("1767261600", &(newest + 1).to_string()),
    );
    assert!(message.contains("301 s ahead"), "{message}");
    assert!(problem(&ingest, &GOOD.replace("1767261600", "1e300")).contains("ahead"));
}

#[test]
fn rfc3339_rejects_malformed_text() {
    for text in [
        "2026-01-01T10:00:00",
        "2026-01-01T10:00:00+0100",
        "2026-01-01T24:00:00Z",
        "2026-13-01T10:00:00Z",
        "2025-02-29T10:00:00Z",
        "2026-01-01T10:00:00.Z",
        "2026-01-01T10:00:00Zjunk",
        "2026-01-01T10:00:00+01:60",
        "1969-12-31T23:59:59Z",
        "２026-01-01T10:00:00Z",
    ] {
        assert_eq!(parse_rfc3339(text), None, "{text}");
    }
    assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    assert_eq!(parse_rfc3339("2026-01-01T09:59:60Z"), Some(NOW - 1));
}

proptest! {
    #[test]
    fn rfc3339_round_trips(secs in 0u64..8_000_000_000) {
        prop_assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
    }
}

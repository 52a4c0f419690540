//! `POST /api/v1/ingest` end to end, on `prescale up` at 60× (a node minute per real second)
//! with a static backend and an in-process forecaster whose lateness bound is long (600 node
//! seconds) and whose silence bound is an hour, so a live driver that waited for the ingest node
//! would visibly hold minutes back.
//!
//! 1. A batch counts once in `GET /api/v1/series`, its rule-matching user in the rule's
//!    profile; resent with its Idempotency-Key it is a duplicate (and with another body under
//!    that key, 422); a batch with a malformed line, a huge line and an unknown field is 400
//!    naming each line and stores nothing, and the fixed batch then goes through under the same
//!    key; limits and methods answer 413, 415, 405, 400; a body over the admin listener's 1 MiB
//!    default is taken on this route only.
//! 2. Events of the current minute do not hold the live driver back (minutes keep being handed
//!    over as the proxy reports), and events of a minute already handed over reach the brain as
//!    late requests.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SPEEDUP: f64 = 60.0;

struct Up {
    _backend: Proc,
    _up: Proc,
    admin: SocketAddr,
}

fn start_up(dir: &Path) -> Up {
    let (backend, backend_addr) = start_backend("ingest-e2e", None, &[]);
    let certs = dir.join("certs");
    write_certs(&certs, &["up-1"]);
    let config = up_config(
        dir,
        &format!(
            r#"
[[fleets]]
name = "web"
region = "local"
backends = ["{backend_addr}"]

[assignment]
new_user_min_requests = 1
rules = [{{ path_prefix = "/export", profile = "exports" }}]

[mesh]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[forecaster]
listen = "127.0.0.1:0"
database = "{database}"
lateness_secs = 600
silent_after_secs = 3600
"#,
            ca = certs.join("ca.pem").display(),
            cert = certs.join("up-1.pem").display(),
            key = certs.join("up-1.key.pem").display(),
            database = dir.join("series.db").display(),
        ),
    );
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.join("up.log");
    let args = up_args(&dir.join("state"), proxy, admin, Some(&config), None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let up = start_with_stdout("up", &args, &dir.join("up.out"), &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    Up {
        _backend: backend,
        _up: up,
        admin,
    }
}

/// The current node minute (unix seconds of its start).
fn node_minute() -> u64 {
    node_now_ms(SPEEDUP) / 1000 / 60 * 60
}

fn event(user: &str, at: u64, event_type: &str) -> String {
    json!({"user_id": user, "timestamp": at, "event_type": event_type, "region": "local"})
        .to_string()
}

fn post(admin: SocketAddr, body: &[u8], headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/x-ndjson")];
    all.extend_from_slice(headers);
    request(admin, "POST", "/api/v1/ingest", &all, body)
}

/// Requests of `profile` stored for the minute `minute`.
fn stored(admin: SocketAddr, profile: &str, minute: u64) -> u64 {
    let series = get(
        admin,
        &format!(
            "/api/v1/series?profile={profile}&from={minute}&to={}",
            minute + 60
        ),
        &[],
    )
    .json();
    series["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["minute"] == minute)
        .map(|p| p["requests"].as_u64().unwrap_or(0))
        .sum()
}

/// A POST announcing `announced` body bytes that sends only `sent` (just past a limit) and then
/// reads the answer: the server has read everything sent, so its close after answering resets
/// nothing and the answer arrives whole.
fn oversized(admin: SocketAddr, path: &str, announced: usize, sent: usize) -> HttpResponse {
    use std::io::{BufReader, Write};
    let mut stream = std::net::TcpStream::connect(admin).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {announced}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&vec![b' '; sent]).expect("body");
    read_http1_response(&mut BufReader::new(stream), false).expect("response")
}

fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&get(admin, "/metrics", &[]).text(), name, labels)
}

#[test]
fn a_batch_counts_once_in_its_profiles_and_a_bad_batch_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = start_up(dir.path());
    let admin = up.admin;

    // Ten node minutes back: a minute the live driver has long handed over.
    let m0 = node_minute() - 600;
    let mut lines: Vec<String> = (0..20)
        .map(|i| event(&format!("user-{}", i % 5), m0 + i, "home"))
        .collect();
    for i in 0..3 {
        lines.push(event("exporter", m0 + 30 + i, "export/csv"));
    }
    // Blank lines and CRLF are fine.
    let body = format!("{}\r\n\r\n", lines.join("\r\n"));
    let first = post(admin, body.as_bytes(), &[("Idempotency-Key", "batch-1")]);
    assert_eq!(first.status, 200, "{}", first.text());
    let answer = first.json();
    assert_eq!(answer["duplicate"], false);
    assert_eq!(
        (&answer["events"], &answer["minutes"], &answer["users"]),
        (&json!(23), &json!(1), &json!(6)),
        "{answer}"
    );
    assert_eq!(answer["node"], "ingest/up-1");
    // Counted exactly once, the rule's user in the rule's profile.
    assert_eq!(stored(admin, "default", m0), 20);
    assert_eq!(stored(admin, "exports", m0), 3);

    // The same batch under the same key: a duplicate, counted nothing again.
    let again = post(admin, body.as_bytes(), &[("Idempotency-Key", "batch-1")]);
    assert_eq!(again.status, 200, "{}", again.text());
    let answer = again.json();
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(answer["events"], 23);
    assert_eq!(stored(admin, "default", m0), 20);
    assert_eq!(stored(admin, "exports", m0), 3);
    // Another body under a used key is refused, not taken for a retry.
    let reused = post(
        admin,
        event("user-0", m0 + 1, "home").as_bytes(),
        &[("Idempotency-Key", "batch-1")],
    );
    assert_eq!(reused.status, 422, "{}", reused.text());
    assert!(reused.text().contains("another body"), "{}", reused.text());
    assert_eq!(stored(admin, "default", m0), 20);

    // A batch with a malformed line, a huge line and an unknown field: 400, every bad line named,
    // nothing stored — not even its good lines.
    let m1 = m0 + 60;
    let good = |i: u64| event(&format!("fixer-{i}"), m1 + i, "home");
    let huge = event(&"x".repeat(70 * 1024), m1, "home");
    let unknown = json!({"user_id": "fixer-9", "timestamp": m1, "event_type": "home", "region": "local", "colour": "red"}).to_string();
    let bad_body = [
        good(1),
        "{\"user_id\": \"fixer-2\", \"timestamp\":".to_string(),
        good(3),
        huge,
        good(5),
        unknown,
    ]
    .join("\n");
    let bad = post(
        admin,
        bad_body.as_bytes(),
        &[("Idempotency-Key", "batch-2")],
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let answer = bad.json();
    let listed: Vec<(u64, String)> = answer["bad_lines"]
        .as_array()
        .expect("bad_lines")
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().expect("line"),
                l["message"].as_str().expect("message").to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [2, 4, 6],
        "{answer}"
    );
    assert!(listed[0].1.contains("not a JSON event"), "{}", listed[0].1);
    assert!(
        listed[1].1.contains("ingest.max_line_bytes = 65536"),
        "{}",
        listed[1].1
    );
    assert!(
        listed[2].1.contains("unknown field `colour`"),
        "{}",
        listed[2].1
    );
    assert_eq!(
        (&answer["bad"], &answer["more_bad_lines"]),
        (&json!(3), &json!(0))
    );
    assert!(!bad.text().contains("xxxxxxxx"), "a user id was echoed");
    assert_eq!(stored(admin, "default", m1), 0);
    // Fixed and resent under the same key: it was never used, so the batch goes through.
    let fixed: Vec<String> = (1..=6).map(good).collect();
    let resent = post(
        admin,
        fixed.join("\n").as_bytes(),
        &[("Idempotency-Key", "batch-2")],
    );
    assert_eq!(resent.status, 200, "{}", resent.text());
    assert_eq!(resent.json()["duplicate"], false);
    assert_eq!(stored(admin, "default", m1), 6);

    // Limits and methods.
    let get_ingest = get(admin, "/api/v1/ingest", &[]);
    assert_eq!(get_ingest.status, 405, "{}", get_ingest.text());
    assert_eq!(get_ingest.header("allow"), Some("POST"));
    let text = request(
        admin,
        "POST",
        "/api/v1/ingest",
        &[("Content-Type", "text/plain")],
        good(1).as_bytes(),
    );
    assert_eq!(text.status, 415, "{}", text.text());
    let long_key = "k".repeat(129);
    let keyed = post(admin, good(1).as_bytes(), &[("Idempotency-Key", &long_key)]);
    assert_eq!(keyed.status, 400, "{}", keyed.text());
    assert!(keyed.text().contains("at most 128"), "{}", keyed.text());
    // No Content-Type at all is fine.
    let bare = request(admin, "POST", "/api/v1/ingest", &[], good(7).as_bytes());
    assert_eq!(bare.status, 200, "{}", bare.text());
    // A 2 MiB batch is over the admin default (1 MiB) but within ingest.max_body_bytes; the
    // larger limit is this route's alone.
    let m2 = m1 + 60;
    let line = event("bulk-user", m2, "home");
    let count = 2 * 1024 * 1024 / (line.len() + 1) + 1;
    let bulk = format!("{line}\n").repeat(count);
    assert!(bulk.len() > 2 * 1024 * 1024);
    let taken = post(admin, bulk.as_bytes(), &[]);
    assert_eq!(taken.status, 200, "{}", taken.text());
    assert_eq!(taken.json()["events"], count as u64);
    assert_eq!(stored(admin, "default", m2), count as u64);
    let elsewhere = oversized(admin, "/api/v1/events", 2 * 1024 * 1024, 1024 * 1024 + 1);
    assert_eq!(elsewhere.status, 413, "{}", elsewhere.text());
    assert!(
        elsewhere.text().contains("larger than 1048576 bytes"),
        "{}",
        elsewhere.text()
    );
    let limit = 8 * 1024 * 1024;
    let refused = oversized(admin, "/api/v1/ingest", limit + 100, limit + 1);
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert!(
        refused.text().contains("larger than 8388608 bytes"),
        "{}",
        refused.text()
    );
    assert_eq!(stored(admin, "default", m2), count as u64);

    // The ingest node is listed with the proxies, and the outcomes are counted.
    let nodes = get(admin, "/api/v1/nodes", &[]).json();
    assert!(
        nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["node"] == "ingest/up-1"),
        "{nodes}"
    );
    let outcome = |o: &str| metric(admin, "prescale_ingest_batches_total", &[("outcome", o)]);
    assert_eq!(outcome("stored"), 4.0);
    assert_eq!(outcome("duplicate"), 1.0);
    assert!(outcome("rejected") >= 5.0, "{}", outcome("rejected"));
    assert_eq!(
        metric(admin, "prescale_ingest_events_total", &[]),
        (23 + 6 + 1 + count) as f64
    );
}

#[test]
fn the_live_driver_does_not_wait_for_the_ingest_node_and_late_events_are_corrected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = start_up(dir.path());
    let admin = up.admin;
    let observed = || metric(admin, "prescale_live_minutes_observed_total", &[]);
    wait_until(
        "the live driver handing minutes over",
        Duration::from_secs(30),
        || observed() >= 2.0,
    );

    // Events of the current minute: the ingest node has then reported through its end, and
    // stays "live" for the hour of silent_after_secs. Were it waited for, every later minute
    // would wait for the 600 s lateness bound (10 real seconds).
    let now = node_minute();
    let current: Vec<String> = (0..4).map(|i| event("now-user", now + i, "home")).collect();
    let posted = post(admin, current.join("\n").as_bytes(), &[]);
    assert_eq!(posted.status, 200, "{}", posted.text());
    let before = observed();
    wait_until(
        "five more minutes handed over within 8 real seconds (the lateness bound is 10)",
        Duration::from_secs(8),
        || observed() >= before + 5.0,
    );

    // Events of a minute handed over already: late requests, corrected into the brain.
    let late_before = metric(admin, "prescale_live_late_requests_total", &[]);
    // The minute after the events above: handed over during the wait (corrections cover the
    // minutes the driver handed since its start), and holding only these events.
    let past = now + 60;
    assert!(past + 120 <= node_minute(), "the minute must be well past");
    let late: Vec<String> = (0..7)
        .map(|i| event("late-user", past + i, "home"))
        .collect();
    let posted = post(admin, late.join("\n").as_bytes(), &[]);
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(stored(admin, "default", past), 7);
    wait_until(
        "the late events handed to the brain",
        Duration::from_secs(10),
        || metric(admin, "prescale_live_late_requests_total", &[]) >= late_before + 7.0,
    );
    let _: Value = get(admin, "/api/v1/plan", &[]).json();
}

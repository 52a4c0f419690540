use std::path::{Path, PathBuf};

use super::*;
use crate::geo::RegionId;
use crate::meters::MeterFleet;
use crate::profiles::ProfileIdx;

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("prescale-access-log-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn names() -> LogNames {
    let profiles = Arc::new(ProfileRegistry::with_builtins());
    LogNames {
        profiles,
        regions: vec!["eu".into(), "us".into()],
        fleets: vec!["web".into()],
    }
}

fn config(path: &Path, format: AccessLogFormat) -> AccessLogConfig {
    AccessLogConfig {
        path: path.to_path_buf(),
        format,
        buffer_lines: 16,
    }
}

fn entry(target: &str, status: u16) -> Box<AccessEntry> {
    Box::new(AccessEntry {
        ended: SystemTime::UNIX_EPOCH,
        client: Some("192.0.2.7".parse().expect("ip")),
        request: Some(Box::new(RequestLine {
            method: "GET".into(),
            target: target.as_bytes().into(),
            protocol: "HTTP/1.1",
            referer: None,
            user_agent: Some(b"curl/8 \"x\"".as_slice().into()),
        })),
        status,
        body_bytes_sent: 12,
        request_id: Some(RequestId::from_trusted(b"abc-1").expect("id")),
        meter: Some(MeterKey {
            profile: ProfileIdx::DEFAULT,
            region: RegionId(1),
            fleet: MeterFleet(0),
        }),
        backend: Some("127.0.0.1:9001".parse().expect("addr")),
        upstream_time: Some(Duration::from_millis(3)),
        request_time: Duration::from_millis(4),
    })
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("log file")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn combined_lines_carry_the_request_and_prescales_fields() {
    let dir = scratch("combined");
    let path = dir.join("access.log");
    let log = AccessLog::start(&config(&path, AccessLogFormat::Combined), names()).expect("start");
    log.log(entry("/a?b=1", 200));
    let mut no_response = entry("/gone", 0);
    no_response.backend = None;
    no_response.upstream_time = None;
    no_response.meter = None;
    log.log(no_response);
    log.close(Duration::from_secs(5));
    assert_eq!(
        lines(&path),
        [
            "192.0.2.7 - - [01/Jan/1970:00:00:00 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \
             \"curl/8 \\x22x\\x22\" request_id=abc-1 profile=default region=us fleet=web \
             backend=127.0.0.1:9001 upstream_time=0.003 request_time=0.004",
            "192.0.2.7 - - [01/Jan/1970:00:00:00 +0000] \"GET /gone HTTP/1.1\" 499 12 \"-\" \
             \"curl/8 \\x22x\\x22\" request_id=abc-1 profile=- region=- fleet=- backend=- \
             upstream_time=- request_time=0.004",
        ]
    );
    let mut metrics = String::new();
    log.write_metrics(&mut metrics);
    assert!(
        metrics.contains("prescale_access_log_lines_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn json_lines_are_objects_with_nulls_for_what_is_missing() {
    let dir = scratch("json");
    let path = dir.join("access.json");
    let log = AccessLog::start(&config(&path, AccessLogFormat::Json), names()).expect("start");
    let mut unparsed = entry("/", 431);
    unparsed.request = None;
    log.log(entry("/x", 201));
    log.log(unparsed);
    log.close(Duration::from_secs(5));
    let got: Vec<serde_json::Value> = lines(&path)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(got[0]["time"], "1970-01-01T00:00:00.000Z");
    assert_eq!(got[0]["status"], 201);
    assert_eq!(got[0]["target"], "/x");
    assert_eq!(got[0]["user_agent"], "curl/8 \"x\"");
    assert_eq!(got[0]["request_id"], "abc-1");
    assert_eq!(got[0]["fleet"], "web");
    assert_eq!(got[0]["upstream_time"], 0.003);
    assert!(got[1]["method"].is_null() && got[1]["target"].is_null());
    assert_eq!(got[1]["status"], 431);
}

#[test]
fn a_reopen_moves_later_lines_to_the_new_file() {
    let dir = scratch("reopen");
    let path = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let log = AccessLog::start(&config(&path, AccessLogFormat::Combined), names()).expect("start");
    log.log(entry("/before", 200));
    // Wait until the line is written, as logrotate renames a file in use.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "line never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::rename(&path, &rotated).expect("rotate");
    log.reopen();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "never reopened");
        std::thread::sleep(Duration::from_millis(5));
    }
    log.log(entry("/after", 200));
    log.close(Duration::from_secs(5));
    assert_eq!(lines(&rotated).len(), 1);
    assert!(lines(&rotated)[0].contains("/before"));
    assert_eq!(lines(&path).len(), 1);
    assert!(lines(&path)[0].contains("/after"));
    let mut metrics = String::new();
    log.write_metrics(&mut metrics);
    assert!(
        metrics.contains("prescale_access_log_reopens_total{result=\"ok\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn lines_that_cannot_be_queued_are_counted_not_waited_for() {
    let dir = scratch("dropped");
    let path = dir.join("access.log");
    let log = AccessLog::start(&config(&path, AccessLogFormat::Combined), names()).expect("start");
    log.close(Duration::from_secs(5));
    // The writer is gone: the queue takes 16 lines and no more, and nothing waits.
    for _ in 0..20 {
        log.log(entry("/late", 200));
    }
    let mut metrics = String::new();
    log.write_metrics(&mut metrics);
    assert!(
        metrics.contains("prescale_access_log_dropped_total{reason=\"queue_full\"} 20\n"),
        "{metrics}"
    );
}

#[test]
fn an_unopenable_path_is_a_startup_error_naming_it() {
    let dir = scratch("unopenable");
    let path = dir.join("missing-dir").join("access.log");
    let e = AccessLog::start(&config(&path, AccessLogFormat::Combined), names())
        .expect_err("no such directory");
    assert!(e.to_string().contains("missing-dir"), "{e}");
}

//! End-to-end tests of `prescale replay`: the real binary on real and synthetic traces, its JSON
//! output, its agreement with the independent reference of the reactive and oracle policies, and
//! exit status 2 with a message naming the line on bad traces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prescale_regions::report::time::civil_time;

fn traces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces")
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prescale"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run prescale replay")
}

/// `prescale replay --trace TRACE --capacity-rps C --cold-start S EXTRA...`.
fn replay_trace(trace: &Path, capacity_rps: &str, cold_start: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--trace",
        trace.to_str().expect("utf-8 path"),
        "--capacity-rps",
        capacity_rps,
        "--cold-start",
        cold_start,
    ];
    args.extend_from_slice(extra);
    replay(&args)
}

fn json_scores(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "status {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is a JSON array")
}

fn policy<'a>(scores: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    scores
        .iter()
        .find(|s| s["policy"] == name)
        .unwrap_or_else(|| panic!("no {name} in {scores:?}"))
}

fn write_trace(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write trace");
    path
}

fn within(actual: f64, expected: f64, share: f64) -> bool {
    (actual - expected).abs() <= share * expected.abs().max(1.0)
}

/// Reactive and oracle on the Azure one-day sample (all functions summed) agree with the
/// independent reference (`replay_reference.py TRACE 10 120`: reactive 25 violation minutes,
/// 37,638.75 instance-minutes; oracle 23,839 instance-minutes).
#[test]
fn azure_summed_matches_the_reference_and_prints_every_field() {
    let trace = traces().join("azure-functions-2019-1day-summed.per-minute.csv");
    let out = replay_trace(&trace, "10", "120", &["--json"]);
    let scores = json_scores(&out);
    assert_eq!(scores.len(), 3);
    for s in &scores {
        for field in [
            "policy",
            "slo_violation_minutes",
            "unserved_fraction",
            "instance_minutes",
            "cost_vs_oracle",
            "forecast_mase",
        ] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
    }
    let reactive = policy(&scores, "reactive");
    assert!(
        within(
            reactive["slo_violation_minutes"].as_f64().unwrap_or(-1.0),
            25.0,
            0.05
        ),
        "{reactive}"
    );
    assert!(
        within(
            reactive["instance_minutes"].as_f64().unwrap_or(-1.0),
            37_638.75,
            0.02
        ),
        "{reactive}"
    );
    assert!(reactive["forecast_mase"].is_null());
    let oracle = policy(&scores, "oracle");
    assert_eq!(oracle["slo_violation_minutes"], 0);
    assert!(
        within(
            oracle["instance_minutes"].as_f64().unwrap_or(-1.0),
            23_839.0,
            0.001
        ),
        "{oracle}"
    );
    assert!(within(
        oracle["cost_vs_oracle"].as_f64().unwrap_or(-1.0),
        1.0,
        1e-9
    ));
}

/// On NASA July 1995 (`replay_reference.py TRACE 1 120`: reactive 189 violation minutes,
/// 76,534.75 instance-minutes; oracle 57,533), reactive and oracle only, which is quick.
#[test]
fn nasa_reactive_and_oracle_match_the_reference() {
    let trace = traces().join("nasa-1995-07.per-minute.csv");
    for (name, violations, cost) in [("reactive", 189.0, 76_534.75), ("oracle", 0.0, 57_533.0)] {
        let out = replay_trace(&trace, "1", "120", &["--policy", name, "--json"]);
        let scores = json_scores(&out);
        assert_eq!(scores.len(), 1);
        let s = policy(&scores, name);
        assert!(
            within(
                s["slo_violation_minutes"].as_f64().unwrap_or(-1.0),
                violations,
                0.05
            ),
            "{s}"
        );
        assert!(
            within(s["instance_minutes"].as_f64().unwrap_or(-1.0), cost, 0.02),
            "{s}"
        );
    }
}

#[test]
fn a_synthetic_step_has_known_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = String::from("timestamp,requests\n");
    for m in 0..600 {
        text.push_str(&format!(
            "{},{}\n",
            1_700_000_000 + m * 60,
            if m < 300 { 300 } else { 1200 }
        ));
    }
    let trace = write_trace(dir.path(), "step.csv", &text);
    let out = replay_trace(&trace, "1", "180", &["--json"]);
    let scores = json_scores(&out);
    let reactive = policy(&scores, "reactive")["slo_violation_minutes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (3..=5).contains(&reactive),
        "reactive violated {reactive} minutes"
    );
    // Oracle: 5 instances for 600 minutes, 15 more for the last 300, each with a 3-minute boot.
    let oracle = policy(&scores, "oracle")["instance_minutes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(within(oracle, 5.0 * 603.0 + 15.0 * 303.0, 1e-9), "{oracle}");
    assert!(
        policy(&scores, "predictive")["forecast_mase"].is_null(),
        "one day has no yesterday to compare with"
    );
}

#[test]
fn the_human_table_and_a_plot_are_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = traces().join("azure-functions-2019-1day-summed.per-minute.csv");
    let plot = dir.path().join("replay.svg");
    let out = replay_trace(
        &trace,
        "10",
        "120",
        &["--plot", plot.to_str().expect("utf-8 path")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["predictive", "reactive", "oracle", "violation"] {
        assert!(stdout.contains(name), "{stdout}");
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("reactive ready capacity"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    let png = dir.path().join("replay.png");
    let png_arg = png.to_str().expect("utf-8 path");
    let out = replay_trace(
        &trace,
        "10",
        "120",
        &["--policy", "oracle", "--plot", png_arg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("png written");
    assert_eq!(&bytes[..4], b"\x89PNG");
}

#[test]
fn bad_traces_exit_2_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("empty.csv", "", "line 1"),
        ("header-only.csv", "timestamp,requests\n", "line 2"),
        (
            "malformed.csv",
            "timestamp,requests\n0,5\n60,five\n",
            "line 3",
        ),
        (
            "unsorted.csv",
            "timestamp,requests\n0,5\n120,5\n60,5\n",
            "line 4",
        ),
        ("wrong-header.csv", "time,count\n0,5\n", "line 1"),
    ];
    for (name, text, line) in cases {
        let trace = write_trace(dir.path(), name, text);
        let out = replay_trace(&trace, "1", "60", &["--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(line) && stderr.contains(name),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}: no scores on bad input");
    }
    let missing = dir.path().join("missing.csv");
    let out = replay_trace(&missing, "1", "60", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.csv"));
    let ok = write_trace(dir.path(), "ok.csv", "timestamp,requests\n0,5\n");
    let out = replay_trace(&ok, "0", "60", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capacity-rps"));
}

/// `--config` takes the predictive policy's `[forecast]` and `[planner]` settings from a file:
/// a bigger baseline costs more; a bad value or a misspelt table exits 2 naming it and its line.
#[test]
fn the_predictive_policy_takes_its_settings_from_a_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = String::from("timestamp,requests\n");
    for m in 0..240 {
        text.push_str(&format!("{},{}\n", 1_700_000_000 + m * 60, 120));
    }
    let trace = write_trace(dir.path(), "flat.csv", &text);
    let run = |extra: &[&str]| {
        let mut args = vec!["--policy", "predictive", "--json"];
        args.extend_from_slice(extra);
        replay_trace(&trace, "1", "60", &args)
    };
    let cost = |out: &Output| {
        policy(&json_scores(out), "predictive")["instance_minutes"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let plain = cost(&run(&[]));
    let settings = write_trace(
        dir.path(),
        "brain.toml",
        "[planner]\nbaseline_instances = 10\n\n[forecast]\ninterval_coverage = 0.8\n",
    );
    let big = cost(&run(&["--config", settings.to_str().expect("utf-8 path")]));
    // 2 req/s needs 2 or 3 instances; a baseline of 10 runs 10 for (nearly) all 240 minutes.
    assert!(plain < 5.0 * 240.0, "{plain}");
    assert!(big >= 10.0 * 235.0, "baseline ignored: {big} vs {plain}");

    for (name, body, expected) in [
        (
            "bad-value.toml",
            "[planner]\n\nslo_target = 1.5\n",
            "line 3: `planner.slo_target`",
        ),
        ("misspelt-table.toml", "[planer]\nmargin = 0.1\n", "planer"),
        ("misspelt-key.toml", "[planner]\nmargrin = 0.1\n", "margrin"),
    ] {
        let path = write_trace(dir.path(), name, body);
        let out = run(&["--config", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

/// Month names of the access log's `[DD/Mon/YYYY:HH:MM:SS ±HHMM]`.
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `[DD/Mon/YYYY:HH:MM:SS ±HHMM]` of unix seconds `secs`, written in a zone `offset_minutes`
/// east of UTC.
fn log_time(secs: i64, offset_minutes: i64) -> String {
    let local = civil_time(u64::try_from(secs + offset_minutes * 60).expect("after 1970"));
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        local.day,
        MONTHS[(local.month - 1) as usize],
        local.year,
        local.hour,
        local.minute,
        local.second,
        offset_minutes.abs() / 60,
        offset_minutes.abs() % 60
    )
}

/// `--access-log` replays an nginx log as the trace of its per-minute counts: a gzipped
/// combined-format day (zones east and west of UTC, lines out of order, a few broken lines)
/// scores exactly as the same counts given as a CSV trace, and the broken lines are reported by
/// number; a file in another format exits 2 naming its first line.
#[test]
fn an_access_log_replays_as_its_per_minute_counts() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let start = 1_700_006_400; // a minute boundary
    let minutes = 1440;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut counts = Vec::with_capacity(minutes);
    let mut lines = Vec::new();
    for m in 0..minutes {
        let daily = (std::f64::consts::TAU * m as f64 / 1440.0).sin().max(0.0);
        let surge = if (900..960).contains(&m) { 60.0 } else { 0.0 };
        let count = (4.0 + 30.0 * daily + surge + (next() % 5) as f64) as usize;
        counts.push(count);
        for _ in 0..count {
            let secs = start + 60 * m as i64 + (next() % 60) as i64;
            let offset = [0, 120, -420, 330][(next() % 4) as usize];
            lines.push(format!(
                "203.0.113.{} - - [{}] \"GET /item/{} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0 (X11)\"",
                next() % 255,
                log_time(secs, offset),
                next() % 1000,
                next() % 5000
            ));
        }
    }
    // Logged when each request ended: neighbours swap places.
    for i in (1..lines.len()).step_by(7) {
        lines.swap(i - 1, i);
    }
    let bad_at = [10, 5_000, 20_000];
    for (k, &at) in bad_at.iter().enumerate() {
        lines.insert(at - 1, format!("broken line {k}"));
    }
    let log = dir.path().join("access.log.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for line in &lines {
        writeln!(gz, "{line}").expect("gzip");
    }
    std::fs::write(&log, gz.finish().expect("gzip")).expect("write log");
    let mut csv = String::from("timestamp,requests\n");
    for (m, count) in counts.iter().enumerate() {
        csv.push_str(&format!("{},{count}\n", start + 60 * m as i64));
    }
    let trace = write_trace(dir.path(), "same.csv", &csv);

    let settings = ["--capacity-rps", "0.5", "--cold-start", "120", "--json"];
    let mut from_log = vec!["--access-log", log.to_str().expect("utf-8 path")];
    from_log.extend_from_slice(&settings);
    let out = replay(&from_log);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let log_scores = json_scores(&out);
    let csv_scores = json_scores(&replay_trace(&trace, "0.5", "120", &["--json"]));
    assert_eq!(log_scores, csv_scores, "stderr: {stderr}");
    let total: usize = counts.iter().sum();
    assert!(
        stderr.contains(&format!("{total} requests over {minutes} minutes")),
        "{stderr}"
    );
    assert!(stderr.contains("3 line(s) skipped"), "{stderr}");
    for at in bad_at {
        assert!(stderr.contains(&format!("line {at}: ")), "{stderr}");
    }

    let not_a_log = write_trace(dir.path(), "trace.csv", "timestamp,requests\n0,5\n");
    let out = replay(&[
        "--access-log",
        not_a_log.to_str().expect("utf-8 path"),
        "--capacity-rps",
        "1",
        "--cold-start",
        "60",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("trace.csv") && stderr.contains("line 1") && stderr.contains("combined"),
        "{stderr}"
    );
    let out = replay(&[
        "--access-log",
        not_a_log.to_str().expect("utf-8 path"),
        "--trace",
        trace.to_str().expect("utf-8 path"),
        "--capacity-rps",
        "1",
        "--cold-start",
        "60",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = replay(&["--capacity-rps", "1", "--cold-start", "60"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trace"));
}

/// `--empty-history` starts the reactive and predictive fleets at one instance and scores each
/// policy's first day alone: a trace that needs four instances at once violates at its start
/// only from one instance, the first-day scores are those of the first day replayed alone, and
/// without the flag the JSON carries no `first_day`.
#[test]
fn empty_history_starts_from_one_instance_and_scores_the_first_day() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = 1_700_006_400;
    let mut csv = String::from("timestamp,requests\n");
    let mut first_day = String::from("timestamp,requests\n");
    for m in 0..2 * 1440 {
        // 40 req/s at the start, a daily surge to 90 req/s, 10 req/s otherwise.
        let rps = match m % 1440 {
            0..=29 => 40,
            600..=779 => 90,
            _ => 10,
        };
        let row = format!("{},{}\n", start + 60 * m, rps * 60 + (m * 7919) % 60);
        csv.push_str(&row);
        if m < 1440 {
            first_day.push_str(&row);
        }
    }
    let trace = write_trace(dir.path(), "two-days.csv", &csv);
    let day = write_trace(dir.path(), "first-day.csv", &first_day);

    let warm = json_scores(&replay_trace(&trace, "10", "120", &["--json"]));
    assert!(
        warm.iter().all(|s| s.get("first_day").is_none()),
        "{warm:?}"
    );
    let empty = json_scores(&replay_trace(
        &trace,
        "10",
        "120",
        &["--json", "--empty-history"],
    ));
    let day_alone = json_scores(&replay_trace(
        &day,
        "10",
        "120",
        &["--json", "--empty-history"],
    ));
    for name in ["predictive", "reactive", "oracle"] {
        let first = &policy(&empty, name)["first_day"];
        let alone = policy(&day_alone, name);
        assert_eq!(first["minutes"], 1440, "{name}: {first}");
        for key in [
            "slo_violation_minutes",
            "unserved_fraction",
            "instance_minutes",
            "cost_vs_oracle",
        ] {
            assert_eq!(first[key], alone[key], "{name} {key}");
        }
    }
    let violations = |scores: &[serde_json::Value], name: &str| {
        policy(scores, name)["slo_violation_minutes"]
            .as_u64()
            .expect("count")
    };
    // Five instances are needed in minute 0 and booting takes two minutes: from one instance,
    // both policies miss at least minute 0.
    for name in ["predictive", "reactive"] {
        let (from_one, sized) = (violations(&empty, name), violations(&warm, name));
        assert!(from_one > sized, "{name}: {from_one} vs {sized}");
    }
    assert_eq!(
        policy(&empty, "oracle")["instance_minutes"],
        policy(&warm, "oracle")["instance_minutes"]
    );

    let table = replay_trace(&trace, "10", "120", &["--empty-history"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains("first day alone (1440 minutes), from one instance and no history"),
        "{text}"
    );
}

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

/// Two days of a daily surge (5 req/s, ramping over 10 minutes at 10:00 to 60 req/s for 3
/// hours) with a seeded, overdispersed noise of up to ±20 %.
fn daily_surge_csv(days: usize) -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut csv = String::from("timestamp,requests\n");
    for m in 0..days * 1440 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let noise = ((state >> 33) % 41) as f64 / 100.0 - 0.2;
        let of_day = m % 1440;
        let rps = match of_day {
            600..=609 => 5.0 + 55.0 * (of_day - 600) as f64 / 10.0,
            610..=789 => 60.0,
            _ => 5.0,
        };
        let requests = (rps * 60.0 * (1.0 + noise)).round();
        csv.push_str(&format!("{},{requests}\n", 1_699_920_000 + 60 * m));
    }
    csv
}

/// `--sweep` replays the predictive policy at each `slo_target` (keeping the other settings of
/// `--config`) and HPA at each target utilization: its points are exactly the single runs with
/// that setting, each HPA verdict names the cheapest predictive point that dominates it (or
/// none, when none does), the table ends with the count, and the frontier plot is written.
#[test]
fn a_sweep_is_the_frontier_of_single_runs_and_names_what_dominates_hpa() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = write_trace(dir.path(), "surge.csv", &daily_surge_csv(2));
    let config = write_trace(
        dir.path(),
        "brain.toml",
        "[planner]\nscale_down_band = 0.25\n",
    );
    let config_arg = config.to_str().expect("utf-8 path");
    let plot = dir.path().join("frontier.svg");
    let out = replay_trace(
        &trace,
        "10",
        "120",
        &[
            "--sweep",
            "--json",
            "--config",
            config_arg,
            "--plot",
            plot.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sweep: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON object");
    let points = sweep["points"].as_array().expect("points");
    let point = |policy: &str, value: f64| {
        points
            .iter()
            .find(|p| p["policy"] == policy && p["value"].as_f64() == Some(value))
            .unwrap_or_else(|| panic!("no {policy} {value} in {points:?}"))
    };
    assert_eq!(points.len(), 14, "{points:?}");
    assert_eq!(sweep["minutes"], 2880);

    let single = |extra: &[&str], name: &str| {
        let mut args = vec!["--json"];
        if !extra.contains(&"--config") {
            args.extend_from_slice(&["--config", config_arg]);
        }
        args.extend_from_slice(extra);
        policy(
            &json_scores(&replay_trace(&trace, "10", "120", &args)),
            name,
        )
        .clone()
    };
    let slo_98 = write_trace(
        dir.path(),
        "slo-98.toml",
        "[planner]\nscale_down_band = 0.25\nslo_target = 0.98\n",
    );
    let checks = [
        (
            single(&["--policy", "predictive"], "predictive"),
            point("predictive", 0.99),
        ),
        (
            single(
                &[
                    "--policy",
                    "predictive",
                    "--config",
                    slo_98.to_str().expect("utf-8 path"),
                ],
                "predictive",
            ),
            point("predictive", 0.98),
        ),
        (
            single(&["--policy", "reactive"], "reactive"),
            point("reactive", 0.7),
        ),
        (
            single(
                &["--policy", "reactive", "--target-utilization", "0.5"],
                "reactive",
            ),
            point("reactive", 0.5),
        ),
    ];
    for (alone, swept) in &checks {
        for key in [
            "slo_violation_minutes",
            "unserved_fraction",
            "instance_minutes",
            "cost_vs_oracle",
        ] {
            assert_eq!(alone[key], swept[key], "{key}: {alone} vs {swept}");
        }
    }

    let violations = |p: &serde_json::Value| p["slo_violation_minutes"].as_u64().expect("count");
    let cost = |p: &serde_json::Value| p["instance_minutes"].as_f64().expect("cost");
    let dominates = |a: &serde_json::Value, b: &serde_json::Value| {
        violations(a) <= violations(b)
            && cost(a) <= cost(b)
            && (violations(a) < violations(b) || cost(a) < cost(b))
    };
    let verdicts = sweep["hpa"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 5);
    let mut dominated = 0;
    for verdict in verdicts {
        let hpa = point(
            "reactive",
            verdict["target_utilization"].as_f64().expect("u"),
        );
        let cheapest = points
            .iter()
            .filter(|p| p["policy"] == "predictive" && dominates(p, hpa))
            .min_by(|a, b| cost(a).total_cmp(&cost(b)));
        match cheapest {
            Some(p) => {
                dominated += 1;
                assert_eq!(verdict["dominated_by_slo_target"], p["value"], "{verdict}");
            }
            None => assert!(verdict["dominated_by_slo_target"].is_null(), "{verdict}"),
        }
    }
    assert_eq!(sweep["predictive_dominates_hpa"], dominated == 5);
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("predictive (slo_target)"),
        "{}",
        &svg[..svg.len().min(200)]
    );

    let table = replay_trace(&trace, "10", "120", &["--sweep", "--config", config_arg]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains(&format!(
            "the predictive frontier dominates HPA's at {dominated} of 5 targets"
        )),
        "{text}"
    );
    assert!(text.contains("HPA target utilization 0.9"), "{text}");

    let conflict = replay_trace(&trace, "10", "120", &["--sweep", "--policy", "reactive"]);
    assert_eq!(conflict.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&conflict.stderr).contains("--policy"),
        "{}",
        String::from_utf8_lossy(&conflict.stderr)
    );
}

/// Three days at about 10 req/s with three 2-hour campaigns at 4x at irregular times, and the
/// campaigns as the events file `events_name` with `effect`.
fn campaigns(dir: &Path, events_name: &str, effect: &str) -> (PathBuf, PathBuf) {
    let start = 1_699_920_000;
    let windows = [(1700, 1820), (2390, 2510), (3700, 3820)];
    let mut csv = String::from("timestamp,requests\n");
    for m in 0..3 * 1440 {
        let base = 600 + (m * 7919) % 61;
        let factor = if windows.iter().any(|&(a, b)| (a..b).contains(&m)) {
            4
        } else {
            1
        };
        csv.push_str(&format!("{},{}\n", start + 60 * m, base * factor));
    }
    let events: Vec<String> = windows
        .iter()
        .map(|&(a, b)| {
            format!(
                r#"{{"tag":"campaign","start":{},"end":{},"scope":{{"kind":"all"}},"effect":{effect}}}"#,
                start + 60 * a,
                start + 60 * b
            )
        })
        .collect();
    (
        write_trace(dir, "campaigns.csv", &csv),
        write_trace(dir, events_name, &format!("[{}]", events.join(","))),
    )
}

/// `--events` tells the predictive policy of scheduled campaigns: with their factor it has its
/// capacity ready when each starts (no violation minute inside them, where it has some without
/// the file) and costs less than without it, since a campaign it was told of does not widen its
/// bounds; with `learn_from_tag`, the campaigns after the first use what the first did. Each
/// policy is scored inside each event, and a bad file is refused naming the event and field.
#[test]
fn scheduled_events_are_provisioned_ahead_and_scored_inside_their_windows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (trace, exact) = campaigns(
        dir.path(),
        "exact.json",
        r#"{"kind":"multiplier","factor":4}"#,
    );
    let (_, learn) = campaigns(dir.path(), "learn.json", r#"{"kind":"learn_from_tag"}"#);
    let run = |events: Option<&Path>| {
        let mut args = vec!["--json"];
        if let Some(path) = events {
            args.extend_from_slice(&["--events", path.to_str().expect("utf-8 path")]);
        }
        json_scores(&replay_trace(&trace, "10", "120", &args))
    };
    let count = |v: &serde_json::Value, key: &str| v[key].as_f64().expect("number");
    let without = run(None);
    let told = run(Some(&exact));
    let learned = run(Some(&learn));
    assert!(policy(&without, "predictive").get("events").is_none());
    let windows = |scores: &[serde_json::Value], name: &str| {
        policy(scores, name)["events"]
            .as_array()
            .expect("events scored")
            .clone()
    };
    let told_windows = windows(&told, "predictive");
    assert_eq!(told_windows.len(), 3);
    for w in &told_windows {
        assert_eq!(w["minutes"], 120, "{w}");
        assert_eq!(w["slo_violation_minutes"], 0, "{w}");
    }
    assert!(
        count(policy(&without, "predictive"), "slo_violation_minutes") > 0.0,
        "{without:?}"
    );
    assert!(
        count(policy(&told, "predictive"), "instance_minutes")
            < count(policy(&without, "predictive"), "instance_minutes"),
        "{told:?} vs {without:?}"
    );
    // The reactive and oracle policies are not told of events.
    for name in ["reactive", "oracle"] {
        assert_eq!(
            policy(&told, name)["instance_minutes"],
            policy(&without, name)["instance_minutes"]
        );
    }
    let learned_windows = windows(&learned, "predictive");
    for w in &learned_windows[1..] {
        assert_eq!(w["slo_violation_minutes"], 0, "{learned_windows:?}");
    }

    let table = replay_trace(
        &trace,
        "10",
        "120",
        &["--events", exact.to_str().expect("utf-8 path")],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(text.contains("inside each scheduled event"), "{text}");
    assert!(text.contains("ev-3"), "{text}");

    let bad = write_trace(
        dir.path(),
        "bad-events.json",
        r#"[{"tag":"campaign","start":1700020000,"end":1700030000,"scope":{"kind":"all"},"effect":{"kind":"multiplier","factor":-1}}]"#,
    );
    let out = replay_trace(
        &trace,
        "10",
        "120",
        &["--events", bad.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad-events.json") && stderr.contains("event 1: effect.factor"),
        "{stderr}"
    );
}

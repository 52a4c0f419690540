//! `prescale report` end to end: a real `prescale up` (two provisioned fleets, a day of seeded
//! history, real load through the proxy) runs about two node-hours at 180×; its database then
//! gives a report whose numbers are checked against the stored history and series read
//! independently, whose HTML has one self-contained chart per fleet, and whose `--admin`
//! answer from the running node matches `--database` for the same period. Also: an empty
//! database, and bad flags (exit status 2).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prescale_regions::history::History;
use prescale_regions::ledger::Ledger;
use prescale_regions::store::SeriesStore;

const SPEEDUP: f64 = 180.0;
/// Real seconds of load: at 180× about two node-hours.
const LOAD_SECS: u64 = 40;

fn config(dir: &Path, marker: &str) -> PathBuf {
    let fleet = |name: &str, capacity_rps: f64, cost: f64| {
        format!(
            r#"
[[fleets]]
name = "{name}"
region = "local"
capacity_rps = {capacity_rps}
cold_start_secs = 60
cost_per_instance_hour = {cost}
max_instances = 4
health_check = {{ interval_ms = 200, timeout_ms = 300 }}

[fleets.provisioner]
kind = "process"
command = ["prescale", "backend", "--listen", "{{host}}:{{port}}", "--name", "{marker}-{{instance}}", "--threads", "1", "--grace-secs", "2"]
"#
        )
    };
    let path = dir.join("up.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "up-1"
region = "local"

[identity]
secret = "report-e2e-secret-0123456789"

[[regions]]
name = "local"
default_fleet = "web"

[[routes]]
profile = "batch"
fleet = "batch"

[[profiles]]
name = "interactive"
revenue_weight = 3.0

[[profiles]]
name = "batch"
revenue_weight = 0.5

[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/batch", profile = "batch" }}, {{ path_prefix = "/api", profile = "interactive" }}]

[planner]
baseline_instances = 1
{}{}"#,
            fleet("web", 0.1, 0.25),
            fleet("batch", 0.05, 0.1)
        ),
    )
    .expect("write config");
    path
}

/// A day and an hour of the default profile's demand, ending at node now.
fn history(dir: &Path) -> PathBuf {
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let mut text = String::from("timestamp,requests\n");
    for m in (1..=1500u64).rev() {
        let t = now - m * 60;
        text.push_str(&format!("{t},{}\n", 2 + (t / 60) % 3));
    }
    let path = dir.join("history.csv");
    std::fs::write(&path, text).expect("write history");
    path
}

fn report(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("report")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run prescale report")
}

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "report failed: {stderr}");
    stderr
}

/// Exit status 2 with `needle` in the message.
fn refused(args: &[&str], needle: &str) {
    let out = report(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read report")).expect("JSON")
}

/// What the report must say of one fleet, computed from the database without the report code.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    minutes: u64,
    requests: u64,
    violation_minutes: u64,
    absent_or_pending: u64,
    instance_minutes: u64,
    cost: f64,
    profiles: BTreeMap<String, u64>,
}

fn expected(db: &Path, region: &str, fleet: &str, from: u64, to: u64) -> Expected {
    let history = History::open_existing(db).expect("history");
    let store = SeriesStore::open(db).expect("store");
    let profiles: Vec<String> = history
        .fleet_profiles(region, fleet)
        .expect("profiles")
        .into_iter()
        .map(|p| p.profile)
        .collect();
    assert!(!profiles.is_empty(), "{fleet} has recorded profiles");
    let mut by_minute: BTreeMap<u64, u64> = BTreeMap::new();
    let mut e = Expected::default();
    for p in &profiles {
        e.profiles.insert(p.clone(), 0);
    }
    for row in store.region_minutes(region, from, to).expect("minutes") {
        if let Some(total) = e.profiles.get_mut(&row.profile) {
            *total += row.requests;
            *by_minute.entry(row.minute).or_default() += row.requests;
        }
    }
    for m in history
        .fleet_minutes(region, fleet, from, to)
        .expect("fleet minutes")
    {
        e.minutes += 1;
        let instances = u64::from(m.ready + m.warming + m.draining);
        e.instance_minutes += instances;
        e.cost += instances as f64 * m.cost_per_instance_hour / 60.0;
        match m.demand {
            Some(d) => {
                // The demand handed over is what the store holds for the fleet's profiles.
                assert_eq!(
                    d,
                    by_minute.get(&m.minute).copied().unwrap_or(0),
                    "{fleet} minute {}",
                    m.minute
                );
                e.requests += d;
                if d as f64 > f64::from(m.ready) * m.rps_per_instance * 60.0 {
                    e.violation_minutes += 1;
                }
            }
            None => e.absent_or_pending += 1,
        }
    }
    e
}

fn actual(report: &serde_json::Value, region: &str, fleet: &str) -> Expected {
    let region = report["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["region"] == region)
        .unwrap_or_else(|| panic!("region {region} in {report}"));
    let f = region["fleets"]
        .as_array()
        .expect("fleets")
        .iter()
        .find(|f| f["fleet"] == fleet)
        .unwrap_or_else(|| panic!("fleet {fleet}"));
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("number: {v}"));
    Expected {
        minutes: n(&f["minutes"]["recorded"]),
        requests: n(&f["demand"]["requests"]),
        violation_minutes: n(&f["slo"]["violation_minutes"]),
        absent_or_pending: n(&f["minutes"]["absent"]) + n(&f["minutes"]["pending"]),
        instance_minutes: n(&f["cost"]["instance_minutes"]),
        cost: f["cost"]["money"].as_f64().expect("money"),
        profiles: f["profiles"]
            .as_array()
            .expect("profiles")
            .iter()
            .map(|p| {
                (
                    p["profile"].as_str().expect("name").to_string(),
                    n(&p["requests"]),
                )
            })
            .collect(),
    }
}

/// The figures that do not move once their minutes are handed over (the outlook is the
/// latest one and the recorded span grows while the node runs).
fn settled(report: &serde_json::Value) -> serde_json::Value {
    let mut report = report.clone();
    for region in report["regions"].as_array_mut().expect("regions") {
        region["recorded_last_minute"] = serde_json::Value::Null;
        for fleet in region["fleets"].as_array_mut().expect("fleets") {
            fleet["outlook"] = serde_json::Value::Null;
        }
    }
    report
}

/// Where two JSON values differ (paths, at most 10).
fn differences(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let null = Value::Null;
                let (l, r) = (x.get(key).unwrap_or(&null), y.get(key).unwrap_or(&null));
                out.extend(differences(&format!("{path}.{key}"), l, r));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                out.extend(differences(&format!("{path}[{i}]"), l, r));
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
    out.truncate(10);
    out
}

#[test]
fn a_report_of_a_real_run_matches_the_stored_series() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("report-e2e-{}", std::process::id());
    let reaper = BackendReaper::by_marker(&marker);
    let config = config(dir.path(), &marker);
    let history = history(dir.path());
    let state = dir.path().join("state");
    let db = state.join("series.db");
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.path().join("up.log");
    let args = [
        "up".to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--speedup".into(),
        SPEEDUP.to_string(),
        "--proxy-listen".into(),
        proxy.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
        "--config".into(),
        config.display().to_string(),
        "--history".into(),
        history.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut up = start("up", &args, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);

    // Interactive traffic on `web` (10 requests a node-minute at 180×, against 6 per instance),
    // batch on `batch` (2 a node-minute, 3 per instance).
    let load = |path: &str, rps: &str| {
        Command::new(bin())
            .args([
                "load",
                "--target",
                &format!("http://{proxy}{path}"),
                "--rps",
                rps,
                "--users",
                "20",
                "--duration",
                &format!("{LOAD_SECS}s"),
                "--json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run load")
    };
    let mut loads = [load("/api/items", "30"), load("/batch/export", "6")];
    for l in &mut loads {
        let status = l.wait().expect("load");
        assert!(status.success(), "load failed");
    }

    // While the node runs: --admin and --database agree on a period whose minutes are all
    // handed over.
    let plan = get(admin, "/api/v1/plan", &[]).json();
    let node_now = plan["at_ms"].as_u64().expect("at_ms") / 1000 / 60 * 60;
    let span = History::open_existing(&db)
        .expect("history")
        .span("local")
        .expect("span")
        .expect("recorded minutes");
    let (from, to) = (span.first_minute, node_now - 5 * 60);
    assert!(
        to > from + 3600,
        "over an hour of node time recorded: {span:?} to {node_now}"
    );
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let via_admin = dir.path().join("admin.json");
    let admin_url = format!("http://{admin}");
    succeeded(&report(&[
        "--all",
        "--admin",
        &admin_url,
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--format",
        "json",
        "--out",
        via_admin.to_str().expect("utf-8"),
    ]));
    let via_db = dir.path().join("db.json");
    succeeded(&report(&[
        "--all",
        "--database",
        db.to_str().expect("utf-8"),
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--out",
        via_db.to_str().expect("utf-8"),
    ]));
    let (via_admin, via_db) = (read_json(&via_admin), read_json(&via_db));
    let differences = differences("", &settled(&via_admin), &settled(&via_db));
    assert!(
        differences.is_empty(),
        "--admin and --database differ: {differences:?}"
    );
    // Asking the same forecaster twice names a region twice.
    refused(
        &[
            "--all", "--admin", &admin_url, "--admin", &admin_url, "--out", "-", "--format", "json",
        ],
        "give each region once",
    );
    refused(
        &[
            "--region", "mars", "--admin", &admin_url, "--out", "-", "--format", "json",
        ],
        "mars",
    );

    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
    drop(reaper);

    // The whole recorded span, from the database alone.
    let out = dir.path().join("report.json");
    let db_arg = db.to_str().expect("utf-8");
    succeeded(&report(&[
        "--all",
        "--database",
        db_arg,
        "--out",
        out.to_str().expect("utf-8"),
    ]));
    let json = read_json(&out);
    let span = History::open_existing(&db)
        .expect("history")
        .span("local")
        .expect("span")
        .expect("recorded minutes");
    let (from, to) = (span.first_minute, span.last_minute + 60);
    assert_eq!(json["regions"][0]["from"].as_u64(), Some(from));
    assert_eq!(json["regions"][0]["to"].as_u64(), Some(to));
    let mut total_requests = 0;
    for fleet in ["web", "batch"] {
        let want = expected(&db, "local", fleet, from, to);
        let got = actual(&json, "local", fleet);
        assert!(want.requests > 0 && want.minutes > 60, "{fleet}: {want:?}");
        assert_eq!(got.minutes, want.minutes, "{fleet}");
        assert_eq!(got.requests, want.requests, "{fleet}");
        assert_eq!(got.violation_minutes, want.violation_minutes, "{fleet}");
        assert_eq!(got.absent_or_pending, want.absent_or_pending, "{fleet}");
        assert_eq!(got.instance_minutes, want.instance_minutes, "{fleet}");
        assert!(
            (got.cost - want.cost).abs() <= 1e-9 * want.cost.max(1.0),
            "{fleet}: {} vs {}",
            got.cost,
            want.cost
        );
        assert_eq!(got.profiles, want.profiles, "{fleet}");
        total_requests += want.requests;
        eprintln!("{fleet}: {want:?}");
    }
    assert_eq!(json["totals"]["requests"].as_u64(), Some(total_requests));
    // The decisions of the period are the ledger's.
    let ledger = Ledger::open(&db).expect("ledger");
    for fleet in ["web", "batch"] {
        let logged = ledger
            .decisions_between("local", fleet, from * 1000, to * 1000)
            .expect("decisions");
        let shown = json["regions"][0]["fleets"]
            .as_array()
            .expect("fleets")
            .iter()
            .find(|f| f["fleet"] == fleet)
            .map(|f| f["decisions"].as_array().map_or(0, Vec::len));
        assert_eq!(shown, Some(logged.len()), "{fleet}");
    }
    // A day of history stands behind every live minute: the web fleet has a MASE.
    let web = json["regions"][0]["fleets"]
        .as_array()
        .expect("fleets")
        .iter()
        .find(|f| f["fleet"] == "web")
        .expect("web");
    assert!(
        web["accuracy"]["mase"].as_f64().is_some(),
        "{}",
        web["accuracy"]
    );
    assert!(web["accuracy"]["interval_coverage"].as_f64().is_some());

    // HTML: one self-contained chart per fleet, with its series.
    let html_path = dir.path().join("report.html");
    succeeded(&report(&[
        "--all",
        "--database",
        db_arg,
        "--out",
        html_path.to_str().expect("utf-8"),
    ]));
    let html = std::fs::read_to_string(&html_path).expect("html");
    assert_eq!(html.matches("<svg").count(), 2, "one chart per fleet");
    for fleet in ["web", "batch"] {
        let at = html
            .find(&format!(
                "<figure class=\"chart\" data-region=\"local\" data-fleet=\"{fleet}\""
            ))
            .unwrap_or_else(|| panic!("chart of {fleet}"));
        let figure = &html[at..at + html[at..].find("</figure>").expect("figure end")];
        for series in [
            "demand",
            "forecast (",
            "forecast interval",
            "ready capacity",
        ] {
            assert!(figure.contains(series), "{fleet}'s chart has no {series}");
        }
        assert!(
            figure.contains("<polyline") || figure.contains("<path"),
            "{fleet}'s lines"
        );
    }
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "<script",
        "<link",
        "url(http",
    ] {
        assert!(
            !html.contains(external),
            "the HTML loads something: {external}"
        );
    }
    assert!(
        html.contains("SLO violation minute</dt>"),
        "definitions are stated"
    );

    // Markdown: the same figures.
    let md_path = dir.path().join("report.md");
    succeeded(&report(&[
        "--all",
        "--database",
        db_arg,
        "--out",
        md_path.to_str().expect("utf-8"),
    ]));
    let md = std::fs::read_to_string(&md_path).expect("md");
    let web_want = expected(&db, "local", "web", from, to);
    assert!(
        md.contains(&format!("| local | web | {} |", group(web_want.minutes))),
        "{md}"
    );
    assert!(md.contains(&group(web_want.requests)), "{md}");

    // Bad input: exit status 2, naming what is wrong.
    refused(
        &[
            "--all",
            "--database",
            db_arg,
            "--from",
            "200",
            "--to",
            "100",
            "--out",
            "-",
            "--format",
            "json",
        ],
        "--from",
    );
    refused(
        &[
            "--all",
            "--database",
            db_arg,
            "--from",
            "yesterday",
            "--out",
            "-",
            "--format",
            "json",
        ],
        "yesterday",
    );
    refused(
        &[
            "--region",
            "mars",
            "--database",
            db_arg,
            "--out",
            "-",
            "--format",
            "json",
        ],
        "mars",
    );
    let missing = dir.path().join("missing.db");
    refused(
        &[
            "--all",
            "--database",
            missing.to_str().expect("utf-8"),
            "--out",
            "-",
            "--format",
            "json",
        ],
        "missing.db",
    );
    assert!(!missing.exists(), "a report creates no database");
    refused(
        &["--all", "--database", db_arg, "--out", "report"],
        "--format",
    );
    refused(
        &["--database", db_arg, "--out", "-", "--format", "json"],
        "--region",
    );
    let (_backend, backend_addr) = start_backend("not-a-forecaster", None, &[]);
    refused(
        &[
            "--all",
            "--admin",
            &format!("http://{backend_addr}"),
            "--out",
            "-",
            "--format",
            "json",
        ],
        "not a prescale forecaster",
    );
    refused(
        &[
            "--all",
            "--admin",
            "https://127.0.0.1:9",
            "--out",
            "-",
            "--format",
            "json",
        ],
        "https",
    );
    eprintln!("report e2e took {:?}", started.elapsed());
}

/// `12,345`: integers as the report prints them.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn a_report_on_an_empty_database_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("empty.db");
    SeriesStore::open(&db).expect("create an empty store");
    for (name, format) in [
        ("empty.html", "html"),
        ("empty.md", "md"),
        ("empty.json", "json"),
    ] {
        let out = dir.path().join(name);
        let result = report(&[
            "--all",
            "--database",
            db.to_str().expect("utf-8"),
            "--format",
            format,
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        let stderr = succeeded(&result);
        assert!(stderr.contains("no capacity history"), "{stderr}");
        let text = std::fs::read_to_string(&out).expect("report written");
        assert!(text.contains("no capacity history"), "{format}: {text}");
        assert!(!text.contains("<svg"));
    }
    let json = read_json(&dir.path().join("empty.json"));
    assert_eq!(json["regions"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["totals"]["requests"].as_u64(), Some(0));
}

//! Scheduled events through the admin API, end to end, on the node clock at 60× (a minute per
//! second): `prescale up` seeded with three days of flat demand and driven by a load at the same
//! rate; an event created with `POST /api/v1/events` (a multiplier over the next two node-hours
//! for the whole region) shows in the fleet's forecast within a step or two, an update changes
//! it, a deletion takes it back, bad input is refused naming the field, and an event survives a
//! restart of `up` on the same state directory (it is in the forecaster's SQLite file).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SPEEDUP: f64 = 60.0;
/// Requests per node minute of the history, and of the load (at 60×: per real second).
const RATE: u64 = 120;

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Up {
    proc: Proc,
    log: PathBuf,
}

fn start_up(
    cwd: &Path,
    state: &Path,
    history: Option<&Path>,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
) -> Up {
    let args = up_args(state, proxy, admin, None, history);
    let child = Command::new(bin())
        .args(&args)
        .current_dir(cwd)
        .env("PRESCALE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn prescale up");
    let up = Up {
        proc: Proc {
            child,
            name: "up".into(),
        },
        log,
    };
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &up.log);
    up
}

/// The fleet total's forecast 30 minutes and 24 hours ahead, requests per minute.
fn points(admin: SocketAddr) -> Option<(f64, f64)> {
    let forecast = get(admin, "/api/v1/forecast", &[]).json();
    let points = forecast["fleets"][0]["points"].as_array()?.clone();
    let at = |horizon: u64| {
        points
            .iter()
            .find(|p| p["horizon_minutes"] == horizon)
            .and_then(|p| p["point"].as_f64())
    };
    Some((at(30)?, at(1440)?))
}

/// Waits until the 30-minute point holds still (within 5 % over two seconds) near `rate`.
fn settled(admin: SocketAddr, up: &Up, rate: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut recent: Vec<f64> = Vec::new();
    loop {
        if let Some((point, _)) = points(admin) {
            recent.push(point);
            let last = &recent[recent.len().saturating_sub(5)..];
            let (lo, hi) = last
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            if last.len() == 5 && hi <= lo * 1.05 && (lo - rate).abs() < 0.25 * rate {
                return point;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&up.log).unwrap_or_default();
            panic!("the forecast did not settle near {rate}: {recent:?}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls the forecast until `ok` holds for its 30-minute and 24-hour points; returns the
/// 30-minute point. Panics naming `what`, with the points seen and the log.
fn wait_for(
    admin: SocketAddr,
    up: &Up,
    what: &str,
    timeout: Duration,
    ok: impl Fn(f64, f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        if let Some((point, day)) = points(admin) {
            if ok(point, day) {
                return point;
            }
            seen.push((point.round(), day.round()));
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&up.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}; (30-minute, 24-hour) points seen: {seen:?}; log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn send(admin: SocketAddr, method: &str, path: &str, body: &serde_json::Value) -> HttpResponse {
    request(
        admin,
        method,
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn event_body(tag: &str, start: u64, end: u64, factor: f64) -> serde_json::Value {
    json!({
        "tag": tag,
        "start": start,
        "end": end,
        "scope": {"kind": "region", "region": "local"},
        "effect": {"kind": "multiplier", "factor": factor},
    })
}

fn plan_events(admin: SocketAddr) -> Vec<serde_json::Value> {
    let plan = get(admin, "/api/v1/plan", &[]).json();
    plan["events"].as_array().cloned().unwrap_or_default()
}

fn listed(admin: SocketAddr) -> Vec<serde_json::Value> {
    let r = get(admin, "/api/v1/events", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"]
        .as_array()
        .cloned()
        .expect("events array")
}

#[test]
fn scheduled_events_through_the_admin_api_drive_the_forecast_and_survive_a_restart() {
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let run = run.canonicalize().expect("canonical run dir");
    let state = dir.path().join("state");
    let reaper = BackendReaper::by_cwd(&run);

    // Three days of flat demand, in node time, ending before node now.
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let history = dir.path().join("history.csv");
    let mut text = String::from("timestamp,requests\n");
    for m in (1..=3 * 1440u64).rev() {
        text.push_str(&format!("{},{RATE}\n", now - m * 60));
    }
    std::fs::write(&history, text).expect("write history");

    let (proxy, admin) = (loopback(), loopback());
    let mut up = start_up(
        &run,
        &state,
        Some(&history),
        proxy,
        admin,
        dir.path().join("up.log"),
    );
    // The same demand goes on: RATE requests a node minute.
    let _load = Killed(
        Command::new(bin())
            .args([
                "load",
                "--target",
                &format!("http://{proxy}/"),
                "--rps",
                &RATE.to_string(),
                "--users",
                "50",
                "--duration",
                "150s",
                "--progress",
                "600s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run load"),
    );

    // Before any event: the forecast settles at the flat rate (once the minutes between the
    // end of the history and the load's first requests have left the recent window).
    let before = settled(admin, &up, RATE as f64);
    assert!(listed(admin).is_empty());
    assert!(plan_events(admin).is_empty());

    // Create: three times the demand for the whole region over the next two node-hours.
    let node_now = node_now_ms(SPEEDUP) / 1000;
    let (start, end) = (node_now - 60, node_now + 7200);
    let created = send(
        admin,
        "POST",
        "/api/v1/events",
        &event_body("launch", start, end, 3.0),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let event = created.json();
    let id = event["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("ev-"), "{event}");
    assert_eq!(event["version"], 1, "{event}");
    assert_eq!(event["tag"], "launch");
    assert_eq!(event["start"], start);
    assert_eq!(event["end"], end);
    assert_eq!(event["scope"], json!({"kind": "region", "region": "local"}));
    assert_eq!(
        event["effect"],
        json!({"kind": "multiplier", "factor": 3.0})
    );
    let created_at = event["created_at_ms"].as_u64().expect("created_at_ms");
    assert!(
        created_at.abs_diff(node_now * 1000) < 120_000,
        "created_at_ms {created_at} is node time (now {node_now} s)"
    );
    assert_eq!(event["updated_at_ms"], created_at);
    let fetched = get(admin, &format!("/api/v1/events/{id}"), &[]);
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.json(), event);
    assert_eq!(listed(admin), vec![event.clone()]);

    let tripled = wait_for(
        admin,
        &up,
        "the forecast to triple",
        Duration::from_secs(10),
        |p, _| (p / before - 3.0).abs() < 0.3,
    );
    let shown = plan_events(admin);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["id"], id.as_str());
    assert_eq!(shown[0]["active"], true);
    assert_eq!(shown[0]["multiplier"], 3.0);

    // Update: twice the demand.
    let updated = send(
        admin,
        "PUT",
        &format!("/api/v1/events/{id}"),
        &event_body("launch", start, end, 2.0),
    );
    assert_eq!(updated.status, 200, "{}", updated.text());
    let updated = updated.json();
    assert_eq!(updated["version"], 2, "{updated}");
    assert_eq!(updated["created_at_ms"], created_at);
    assert!(updated["updated_at_ms"].as_u64().expect("updated_at_ms") >= created_at);
    assert_eq!(updated["effect"]["factor"], 2.0);
    let doubled = wait_for(
        admin,
        &up,
        "the forecast to double",
        Duration::from_secs(10),
        |p, _| (p / before - 2.0).abs() < 0.25,
    );

    // Bad input: 400 naming the field, nothing stored or changed.
    let valid = event_body("launch", start, end, 3.0);
    let with = |path: &[&str], value: serde_json::Value| {
        let mut body = valid.clone();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    };
    let cases = [
        (with(&["end"], json!(start - 60)), "end"),
        (with(&["effect", "factor"], json!(0)), "effect.factor"),
        (with(&["scope", "kind"], json!("planet")), "scope.kind"),
        (with(&["colour"], json!("red")), "colour"),
        (with(&["scope", "region"], json!("mars")), "scope.region"),
        (with(&["tag"], json!("no spaces")), "tag"),
    ];
    for (body, field) in &cases {
        for (method, path) in [
            ("POST", "/api/v1/events".to_string()),
            ("PUT", format!("/api/v1/events/{id}")),
        ] {
            let r = send(admin, method, &path, body);
            assert_eq!(r.status, 400, "{method} {body}: {}", r.text());
            let error = r.json()["error"].as_str().expect("error").to_string();
            assert!(
                error.starts_with(&format!("{field}: ")),
                "{method} {body}: the error names `{field}`: {error}"
            );
        }
    }
    let r = request(
        admin,
        "POST",
        "/api/v1/events",
        &[("content-type", "application/json")],
        b"tag=launch&factor=3",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .expect("error")
            .contains("not JSON"),
        "{}",
        r.text()
    );
    // Unknown ids, taken ids, other methods.
    assert_eq!(get(admin, "/api/v1/events/ev-999", &[]).status, 404);
    let r = send(admin, "PUT", "/api/v1/events/ev-999", &valid);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .expect("error")
        .contains("ev-999"));
    assert_eq!(
        request(admin, "DELETE", "/api/v1/events/ev-999", &[], b"").status,
        404
    );
    let mut taken = valid.clone();
    taken["id"] = json!(id.as_str());
    assert_eq!(send(admin, "POST", "/api/v1/events", &taken).status, 409);
    let r = request(admin, "PATCH", "/api/v1/events", &[], b"");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = request(admin, "POST", &format!("/api/v1/events/{id}"), &[], b"{}");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    let unchanged = listed(admin);
    assert_eq!(unchanged, vec![updated.clone()]);

    // Delete: the forecast goes back.
    let deleted = request(admin, "DELETE", &format!("/api/v1/events/{id}"), &[], b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json(), updated);
    assert_eq!(get(admin, &format!("/api/v1/events/{id}"), &[]).status, 404);
    assert!(listed(admin).is_empty());
    let back = wait_for(
        admin,
        &up,
        "the forecast to go back",
        Duration::from_secs(10),
        |p, _| (p / before - 1.0).abs() < 0.2,
    );
    assert!(plan_events(admin).is_empty());

    // Another one, with its own id, then a restart on the same state directory.
    let mut sale = event_body("sale", start, end, 4.0);
    sale["id"] = json!("sale-1");
    let r = send(admin, "POST", "/api/v1/events", &sale);
    assert_eq!(r.status, 201, "{}", r.text());
    let sale_stored = r.json();
    assert_eq!(sale_stored["id"], "sale-1");
    wait_for(
        admin,
        &up,
        "the forecast to quadruple",
        Duration::from_secs(10),
        |p, _| (p / before - 4.0).abs() < 0.4,
    );

    up.proc.signal("TERM");
    let status = up.proc.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
    let mut again = start_up(
        &run,
        &state,
        None,
        proxy,
        admin,
        dir.path().join("up-again.log"),
    );
    assert_eq!(listed(admin), vec![sale_stored]);
    // The 24-hour point, after the event, is the reference without it. The level it carries
    // moves while the event runs: a fleet's total learns each minute of a running event
    // divided by its factor, and this load does not follow the event, so the longer the
    // restart takes (the rebuild replays days of minutes, many node minutes at 60x) the closer
    // the level comes to `before / 4`. It never leaves that range.
    let after_restart = wait_for(
        admin,
        &again,
        "the restarted forecaster to apply the stored event",
        Duration::from_secs(15),
        |p, day| (p / day - 4.0).abs() < 0.5 && day > 0.2 * before && day < 1.2 * before,
    );
    let shown = plan_events(admin);
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["id"], "sale-1");
    assert_eq!(shown[0]["multiplier"], 4.0);
    let metrics = get(admin, "/metrics", &[]).text();
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_scheduled_events",
            &[("state", "active")]
        ),
        1.0
    );
    assert!(metric_sum(&metrics, "prescale_live_event_syncs_total", &[]) >= 1.0);

    again.proc.signal("TERM");
    assert!(again.proc.wait_exit(Duration::from_secs(30)).success());
    drop(reaper);
    eprintln!(
        "30-minute points: before {before:.0}, ×3 {tripled:.0}, ×2 {doubled:.0}, back {back:.0}, \
         after the restart ×4 {after_restart:.0}; {:?}",
        began.elapsed()
    );
}

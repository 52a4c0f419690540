//! Live pre-provisioning end to end, on the node clock at 60× (a minute per second): the
//! forecaster's live driver runs the brain on the stored series, the `process` provisioner starts
//! and stops real `prescale backend` processes, and the plans reach real proxies over QUIC.
//!
//! * `up` seeded with three days of a daily ramp gets backends ready before the ramp comes
//!   again, carries the whole load, and scales in afterwards without failing a request;
//! * a region of two proxies and a separate forecaster: an unforecast surge gets capacity from
//!   the reactive guard within a cold start, a killed backend is replaced, the proxies keep
//!   serving while the forecaster is killed, and the restarted forecaster adopts the running
//!   instances instead of shrinking the fleet.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SPEEDUP: f64 = 60.0;

/// A running `prescale up --config ... --speedup 60`, its addresses and output files.
struct Up {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    out: PathBuf,
}

fn start_up(dir: &Path, config: &Path, history: Option<&Path>) -> Up {
    let (proxy, admin) = (loopback(), loopback());
    let (out, log) = (dir.join("up.out"), dir.join("up.log"));
    let state = dir.join("state");
    let args = up_args(&state, proxy, admin, Some(config), history);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = start_with_stdout("up", &args, &out, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    Up {
        proc,
        proxy,
        admin,
        out,
    }
}

fn plan(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/api/v1/plan", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn fleet_view(admin: SocketAddr) -> serde_json::Value {
    plan(admin)["fleets"][0].clone()
}

/// Instances of 2 req/s needed for `requests` in a minute.
fn needed(requests: u64) -> usize {
    (requests as f64 / 60.0 / 2.0 - 1e-9).ceil().max(0.0) as usize
}

#[test]
fn backends_are_ready_before_a_forecast_daily_ramp_and_scale_in_fails_no_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("live-up-{}", std::process::id());
    let reaper = BackendReaper::by_marker(&marker);
    let config = up_config(
        dir.path(),
        &format!(
            "{}\n[planner]\nbaseline_instances = 1\n",
            provisioned_fleet(&marker, 2.0, 120)
        ),
    );

    // Three days of history whose ramp comes again 20 node-minutes from now.
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let ramp = (now / 60 + 20) % 1440;
    let history = dir.path().join("history.csv");
    write_trace(&history, now - 3 * 86_400, 3 * 1440, ramp);

    let mut up = start_up(dir.path(), &config, Some(&history));
    let (proxy, admin, out) = (up.proxy, up.admin, up.out.clone());
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(printed.contains("4320 minutes"), "{printed}");

    // The load replays the same pattern from the node's current minute for 34 minutes: the
    // ramp, the hold, and the fall back that scales the fleet in.
    let node_now = plan(admin)["at_ms"].as_u64().expect("at_ms") / 1000 / 60 * 60;
    let ramp_at_ms = {
        let minutes_to_ramp = (ramp + 1440 - (node_now / 60) % 1440) % 1440;
        (node_now + minutes_to_ramp * 60) * 1000
    };
    assert!(
        ramp_at_ms > node_now_ms(SPEEDUP) + 5_000,
        "the ramp must still be ahead of the node clock"
    );
    let load_trace = dir.path().join("load.csv");
    write_trace(
        &load_trace,
        node_now,
        34 + (ramp_at_ms / 1000 - node_now) / 60,
        ramp,
    );
    let mut load = Command::new(bin())
        .args([
            "load",
            "--target",
            &format!("http://{proxy}/"),
            "--trace",
            load_trace.to_str().expect("utf-8"),
            "--speedup",
            "60",
            "--users",
            "40",
            "--duration",
            "120s",
            "--progress",
            "60s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run load");

    // While it runs: when each backend became ready (node time), as the plan records it.
    let mut ready_since: std::collections::BTreeMap<String, u64> = Default::default();
    let mut max_ready = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    while load.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the load did not finish");
        let fleet = fleet_view(admin);
        let backends = fleet["backends"].as_array().cloned().unwrap_or_default();
        let ready = backends
            .iter()
            .filter(|b| b["phase"] == "ready")
            .inspect(|b| {
                let address = b["address"].as_str().expect("address").to_string();
                let since = b["since_ms"].as_u64().expect("since");
                ready_since.entry(address).or_insert(since);
            })
            .count();
        max_ready = max_ready.max(ready);
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = load.wait_with_output().expect("load output");
    assert!(output.status.success(), "load failed");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("load summary JSON");

    // Every request of the load got a 200: through the ramp and through the scale-in.
    let sent = summary["requests_sent"].as_u64().expect("sent");
    assert!(sent > 5_000, "{summary}");
    assert_eq!(summary["status"]["2xx"].as_u64(), Some(sent), "{summary}");
    assert_eq!(summary["status"]["errors"].as_u64(), Some(0), "{summary}");
    let metrics = get(admin, "/metrics", &[]).text();
    assert_eq!(
        metric_sum(&metrics, "prescale_requests_total", &[("status", "2xx")]),
        sent as f64
    );

    // Every minute of the ramp had the instances its demand needs ready before it began.
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    for k in 0..4u64 {
        let minute_ms = ramp_at_ms + k * 60_000;
        let need = needed(daily(minute_ms / 1000, ramp));
        let ready_before = ready_since.values().filter(|&&t| t <= minute_ms).count();
        assert!(
            ready_before >= need,
            "ramp minute {k}: {ready_before} instances ready before it, {need} needed; \
             ready since {ready_since:?}; plan lines:\n{printed}"
        );
    }
    let ahead_ms = ready_since
        .values()
        .filter(|&&t| t <= ramp_at_ms + 3 * 60_000)
        .map(|&t| ramp_at_ms as i64 - t as i64)
        .min()
        .unwrap_or(0);
    eprintln!(
        "ramp at {ramp_at_ms} (node ms); ready since {ready_since:?}; the last instance the \
         ramp needed was ready {ahead_ms} node-ms before the ramp began"
    );
    assert!(
        max_ready >= 4,
        "the hold needs 4 instances: {ready_since:?}"
    );

    // Afterwards the fleet drained back: a drain decision, and fewer instances than at peak.
    let decisions = fleet_view(admin)["decisions"]
        .as_array()
        .expect("decisions")
        .clone();
    assert!(
        decisions
            .iter()
            .any(|d| d["action"].as_str().unwrap_or("").starts_with("drain")),
        "no scale-in after the ramp: {printed}"
    );
    let instances = &fleet_view(admin)["instances"];
    assert!(
        instances["ready"].as_u64().unwrap_or(99) < 4,
        "still at peak size: {instances}"
    );
    assert!(printed.contains("plan local/web: scale_up 1→"), "{printed}");
    assert!(printed.contains("plan local/web: drain"), "{printed}");
    // Every instance is in exactly one tier set, the oldest in the baseline.
    let fleet = fleet_view(admin);
    let sets = fleet["tier_sets"].as_array().cloned().unwrap_or_default();
    assert_eq!(sets[0]["tier"], "baseline", "{fleet}");
    let in_sets: usize = sets
        .iter()
        .map(|s| s["instances"].as_array().map_or(0, |i| i.len()))
        .sum();
    assert_eq!(
        in_sets,
        fleet["backends"].as_array().map_or(0, |b| b.len()),
        "{fleet}"
    );

    up.proc.proc_signal_and_wait();
    // `up` stops what it started.
    wait_until("up's backends to stop", Duration::from_secs(20), || {
        reaper.pids().is_empty()
    });
}

trait StopGracefully {
    fn proc_signal_and_wait(&mut self);
}

impl StopGracefully for Proc {
    fn proc_signal_and_wait(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

struct Region {
    dir: PathBuf,
    marker: String,
    quic: SocketAddr,
    forecaster_admin: SocketAddr,
    /// More `[forecaster]` keys.
    forecaster_keys: String,
}

impl Region {
    fn new(dir: &Path, name: &str, forecaster_keys: &str) -> Self {
        Region {
            dir: dir.to_path_buf(),
            marker: format!("{name}-{}", std::process::id()),
            quic: format!("127.0.0.1:{}", udp_port()).parse().expect("addr"),
            forecaster_admin: loopback(),
            forecaster_keys: forecaster_keys.to_string(),
        }
    }

    fn common(&self, node: &str) -> String {
        let certs = self.dir.join("certs");
        format!(
            r#"
[node]
id = "{node}"
region = "local"

[identity]
secret = "live-e2e-secret-0123456789"

[[regions]]
name = "local"

[planner]
baseline_instances = 2

[mesh]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{fleet}"#,
            ca = certs.join("ca.pem").display(),
            cert = certs.join(format!("{node}.pem")).display(),
            key = certs.join(format!("{node}.key.pem")).display(),
            fleet = provisioned_fleet(&self.marker, 2.0, 60),
        )
    }

    fn start_forecaster(&self, log: &str) -> Proc {
        let config = self.dir.join("fc-1.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"{}\"\n[forecaster]\nlisten = \"{}\"\ndatabase = \"{}\"\n{}\n{}",
                self.forecaster_admin,
                self.quic,
                self.dir.join("fc.db").display(),
                self.forecaster_keys,
                self.common("fc-1")
            ),
        )
        .expect("write forecaster config");
        let log = self.dir.join(log);
        let proc = start(
            "forecaster",
            &[
                "forecaster",
                "--config",
                config.to_str().expect("utf8"),
                "--speedup",
                "60",
            ],
            &log,
        );
        wait_for_status(
            self.forecaster_admin,
            "/readyz",
            200,
            Duration::from_secs(30),
            &log,
        );
        proc
    }

    fn start_proxy(&self, node: &str) -> (Proc, SocketAddr, SocketAddr) {
        let (proxy, admin) = (loopback(), loopback());
        let config = self.dir.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"{proxy}\"\n[admin]\nlisten = \"{admin}\"\n[export]\nforecaster = \"{}\"\nforecaster_name = \"fc-1\"\nspool_dir = \"{}\"\n{}",
                self.quic,
                self.dir.join(format!("{node}-spool")).display(),
                self.common(node)
            ),
        )
        .expect("write proxy config");
        let log = self.dir.join(format!("{node}.log"));
        let proc = start(
            node,
            &[
                "proxy",
                "--config",
                config.to_str().expect("utf8"),
                "--speedup",
                "60",
            ],
            &log,
        );
        // Ready once the forecaster's plan gave it a ready backend.
        wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
        (proc, proxy, admin)
    }
}

fn provisioner(admin: SocketAddr) -> serde_json::Value {
    fleet_view(admin)["provisioner"].clone()
}

fn ready_backends(fleet: &serde_json::Value) -> Vec<String> {
    fleet["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|b| b["phase"] == "ready")
        .map(|b| b["address"].as_str().expect("address").to_string())
        .collect()
}

/// Node time now, from the forecaster's last step.
fn node_ms(admin: SocketAddr) -> u64 {
    plan(admin)["at_ms"].as_u64().expect("at_ms")
}

fn proxy_plan_version(admin: SocketAddr) -> u64 {
    get(admin, "/api/v1/fleets", &[]).json()["plan_version"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_region_keeps_serving_through_surges_killed_backends_and_a_killed_forecaster() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certs(&dir.path().join("certs"), &["fc-1", "px-1", "px-2"]);
    let region = Region::new(dir.path(), "live-region", "");
    let reaper = BackendReaper::by_marker(&region.marker);
    let fc_admin = region.forecaster_admin;
    // Three quiet days in the store (30 requests a minute), so the forecast is confident and
    // the surge is a surprise the model did not see coming.
    {
        let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
        let points: Vec<(u64, u64)> = (1..=3 * 1440u64).map(|m| (now - m * 60, 30)).collect();
        let mut store = prescale_regions::store::SeriesStore::open(&dir.path().join("fc.db"))
            .expect("open the store");
        store
            .seed_history("local", "default", "web", &points)
            .expect("seed");
    }
    let mut forecaster = region.start_forecaster("fc-1.log");
    let (mut px1, proxy1, admin1) = region.start_proxy("px-1");
    let (mut px2, proxy2, admin2) = region.start_proxy("px-2");
    wait_until("the baseline of 2 ready", Duration::from_secs(30), || {
        ready_backends(&fleet_view(fc_admin)).len() == 2
    });

    // An unforecast surge: 400 requests a node-minute need 4 instances of 2 req/s. The reactive
    // guard gets them ready within the minute it is seen in plus one cold start (60
    // node-seconds), with a minute of slack for the planning tick.
    let surge_at = node_ms(fc_admin);
    let surge = Command::new(bin())
        .args([
            "load",
            "--target",
            &format!("http://{proxy1}/"),
            "--rps",
            "400",
            "--users",
            "40",
            "--duration",
            "8s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run load");
    let mut capacity_at = None;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let fleet = fleet_view(fc_admin);
        if ready_backends(&fleet).len() >= 4 {
            capacity_at = fleet["at_ms"].as_u64().or(Some(node_ms(fc_admin)));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let capacity_at = capacity_at.unwrap_or_else(|| {
        panic!(
            "the surge never got 4 ready instances: {}",
            fleet_view(fc_admin)
        )
    });
    let took_ms = capacity_at.saturating_sub(surge_at);
    eprintln!("surge: 4 instances ready {took_ms} node-ms after it began");
    assert!(
        took_ms <= 180_000,
        "capacity took {took_ms} node-ms: {}",
        fleet_view(fc_admin)
    );
    let surge = surge.wait_with_output().expect("load output");
    let summary: serde_json::Value = serde_json::from_slice(&surge.stdout).expect("summary");
    let sent = summary["requests_sent"].as_u64().expect("sent");
    assert_eq!(summary["status"]["2xx"].as_u64(), Some(sent), "{summary}");
    let reasons: Vec<String> = fleet_view(fc_admin)["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("reactive guard")),
        "{reasons:?}"
    );
    // The SLO tail's feedback loop has scored the minutes it has seen, against the 1 % target.
    let view = fleet_view(fc_admin);
    let tail = &view["tail"];
    assert!(tail["minutes"].as_u64().unwrap_or(0) > 0, "{view}");
    let target = tail["target_miss_share"].as_f64().unwrap_or(0.0);
    assert!((target - 0.01).abs() < 1e-9, "{view}");
    let scale = tail["scale"].as_f64().unwrap_or(0.0);
    assert!((0.1..=4.0).contains(&scale), "{view}");

    // Back to the baseline; then one of its backends is killed behind the forecaster's back:
    // it is replaced, and the proxies route to the replacement.
    wait_until(
        "the fleet back at its baseline",
        Duration::from_secs(40),
        || {
            let f = fleet_view(fc_admin);
            f["planned"] == 2 && f["instances"]["draining"] == 0 && ready_backends(&f).len() == 2
        },
    );
    let before = ready_backends(&fleet_view(fc_admin));
    let victim = reaper.pid_of(&before[0]).expect("the victim's pid");
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    wait_until("a replacement", Duration::from_secs(20), || {
        let f = fleet_view(fc_admin);
        let ready = ready_backends(&f);
        f["provisioner"]["unexpected_exits_total"] == 1
            && ready.len() == 2
            && !ready.contains(&before[0])
    });
    let replaced = ready_backends(&fleet_view(fc_admin));
    wait_until(
        "the proxies to route to the replacement",
        Duration::from_secs(10),
        || {
            [admin1, admin2].iter().all(|&admin| {
                let fleets = get(admin, "/api/v1/fleets", &[]).json();
                let on_proxy: Vec<String> = fleets["fleets"][0]["backends"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter(|b| b["state"] == "ready")
                    .map(|b| b["address"].as_str().unwrap_or("").to_string())
                    .collect();
                replaced.iter().all(|a| on_proxy.contains(a))
            })
        },
    );

    // The forecaster dies: the proxies keep the last plan and its backends and serve on.
    let version_before = proxy_plan_version(admin2);
    forecaster.signal("KILL");
    forecaster.wait_exit(Duration::from_secs(10));
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        for proxy in [proxy1, proxy2] {
            let r = get(proxy, "/api/items", &[("x-user-id", "steady")]);
            assert_eq!(r.status, 200, "{}", r.text());
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served > 50);

    // Restarted on the same store, it adopts the instances that kept serving: nothing new is
    // started, nothing is drained, and its plans (newer versions) are applied by the proxies.
    let mut forecaster = region.start_forecaster("fc-1-again.log");
    wait_until(
        "the restarted forecaster's plan on the proxies",
        Duration::from_secs(20),
        || proxy_plan_version(admin2) > version_before,
    );
    let adopted = provisioner(fc_admin);
    assert_eq!(adopted["adopted_total"], 2, "{adopted}");
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let f = fleet_view(fc_admin);
        assert_eq!(f["provisioner"]["started_total"], 0, "{f}");
        assert_eq!(f["provisioner"]["stopped_total"], 0, "{f}");
        assert!(f["planned"].as_u64().unwrap_or(0) >= 2, "{f}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ready_backends(&fleet_view(fc_admin)), replaced);

    // Forecast-only: a backend killed now is not replaced; switched back, it is.
    let r = request(
        fc_admin,
        "POST",
        "/api/v1/mode",
        &[("content-type", "application/json")],
        b"{\"forecast_only\": true}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bad = request(fc_admin, "POST", "/api/v1/mode", &[], b"{\"forecast\": 1}");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("forecast_only"), "{}", bad.text());
    let victim = reaper.pid_of(&replaced[0]).expect("pid");
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    wait_until("the kill to be noticed", Duration::from_secs(10), || {
        fleet_view(fc_admin)["provisioner"]["unexpected_exits_total"] == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let f = fleet_view(fc_admin);
    assert_eq!(ready_backends(&f).len(), 1, "{f}");
    assert_eq!(f["provisioner"]["started_total"], 0, "{f}");
    assert_eq!(plan(fc_admin)["forecast_only"], true);
    let r = request(
        fc_admin,
        "POST",
        "/api/v1/mode",
        &[],
        b"{\"forecast_only\": false}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        "the replacement after forecast-only",
        Duration::from_secs(20),
        || ready_backends(&fleet_view(fc_admin)).len() == 2,
    );

    for proc in [&mut px1, &mut px2, &mut forecaster] {
        proc.proc_signal_and_wait();
    }
    drop(reaper);
}

#[test]
fn under_a_cap_the_low_revenue_profile_is_shed_and_the_high_revenue_one_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("live-cap-{}", std::process::id());
    let reaper = BackendReaper::by_marker(&marker);
    let config = up_config(
        dir.path(),
        &format!(
            r#"
[[profiles]]
name = "interactive"
revenue_weight = 3.0

[[profiles]]
name = "batch"
revenue_weight = 0.5

[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/batch", profile = "batch" }}, {{ path_prefix = "/api", profile = "interactive" }}]
{}
[planner]
baseline_instances = 1
"#,
            provisioned_fleet(&marker, 2.0, 60).replace(
                "[fleets.provisioner]",
                "max_instances = 1\n[fleets.provisioner]"
            )
        ),
    );
    let mut up = start_up(dir.path(), &config, None);
    let (proxy, admin) = (up.proxy, up.admin);

    // Interactive 1 req/s and batch 4 req/s of node time need 3 instances of 2 req/s; the cap
    // allows 1. At 60×, a real request per second is one a node-minute.
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
                "25s",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run load")
    };
    let interactive = load("/api/items", "60");
    let batch = load("/batch/export", "240");
    let summary = |child: std::process::Child| -> serde_json::Value {
        let out = child.wait_with_output().expect("load output");
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("summary")
    };
    let interactive = summary(interactive);
    let batch = summary(batch);

    // The plan names batch to shed first and grants interactive what its forecast asks for.
    let fleet = fleet_view(admin);
    assert_eq!(fleet["shed_order"][0], "batch", "{fleet}");
    let planned_grants = fleet["grants"].as_array().cloned().unwrap_or_default();
    let granted = |profile: &str| {
        planned_grants
            .iter()
            .find(|g| g["profile"] == profile)
            .and_then(|g| g["requests_per_minute"].as_f64())
            .unwrap_or(0.0)
    };
    assert!(
        granted("interactive") > granted("batch"),
        "interactive is served first: {fleet}"
    );
    let fleets = get(admin, "/api/v1/fleets", &[]).json();
    let grants = fleets["fleets"][0]["grants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        grants.iter().any(|g| g["profile"] == "interactive"),
        "no grants on the proxy: {fleets}"
    );
    let metrics = get(admin, "/metrics", &[]).text();
    let batch_shed = metric_sum(
        &metrics,
        "prescale_grant_shed_total",
        &[("profile", "batch")],
    );
    let interactive_shed = metric_sum(
        &metrics,
        "prescale_grant_shed_total",
        &[("profile", "interactive")],
    );
    eprintln!(
        "interactive {}; batch {}; shed batch {batch_shed}, interactive {interactive_shed}",
        interactive["status"], batch["status"]
    );
    // Every interactive request was served; a good part of batch's was shed with a 503.
    let sent = interactive["requests_sent"].as_u64().expect("sent");
    assert_eq!(
        interactive["status"]["2xx"].as_u64(),
        Some(sent),
        "{interactive}"
    );
    assert_eq!(interactive_shed, 0.0);
    let batch_sent = batch["requests_sent"].as_u64().expect("sent") as f64;
    let batch_5xx = batch["status"]["5xx"].as_u64().expect("5xx") as f64;
    assert!(batch_5xx > 0.2 * batch_sent, "{batch}");
    assert_eq!(batch_5xx, batch_shed, "{batch}");
    // Never more than the cap.
    assert!(fleet["planned"].as_u64().unwrap_or(99) <= 1, "{fleet}");
    let r = get(proxy, "/batch/export", &[("x-user-id", "late")]);
    if r.status == 503 {
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    up.proc.proc_signal_and_wait();
    drop(reaper);
}

#[test]
fn a_forecaster_configured_forecast_only_plans_but_starts_nothing_until_switched() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_certs(&dir.path().join("certs"), &["fc-1"]);
    let region = Region::new(dir.path(), "live-forecast-only", "forecast_only = true");
    let reaper = BackendReaper::by_marker(&region.marker);
    let fc_admin = region.forecaster_admin;
    let mut forecaster = region.start_forecaster("fc-1.log");
    // It plans the baseline of 2 (no proxy has reported yet) but starts nothing.
    wait_until("the baseline decision", Duration::from_secs(20), || {
        fleet_view(fc_admin)["decisions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["action"] == "scale_up 0→2"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let view = plan(fc_admin);
    assert_eq!(view["forecast_only"], true, "{view}");
    assert_eq!(
        view["fleets"][0]["provisioner"]["started_total"], 0,
        "{view}"
    );
    assert!(reaper.pids().is_empty());
    let metrics = get(fc_admin, "/metrics", &[]).text();
    assert_eq!(metric_sum(&metrics, "prescale_forecast_only", &[]), 1.0);
    // Switched to provisioning, it starts the planned instances.
    let r = request(
        fc_admin,
        "POST",
        "/api/v1/mode",
        &[],
        b"{\"forecast_only\": false}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until("the baseline ready", Duration::from_secs(20), || {
        ready_backends(&fleet_view(fc_admin)).len() == 2
    });
    forecaster.proc_signal_and_wait();
    drop(reaper);
}

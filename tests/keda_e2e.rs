//! KEDA's external scaler end to end: a tonic client (the scaler crate's generated client)
//! speaks KEDA's `externalscaler.proto` to a running `prescale up` on the node clock at 60×.
//!
//! * `up`, seeded with three days of a daily ramp and driven by the same pattern, answers
//!   `GetMetrics` with a value that rises before the observed demand does; `GetMetricSpec`'s
//!   target is the fleet's `capacity_rps`; bad metadata is InvalidArgument naming the key, an
//!   unknown fleet NotFound; forecast-only mode answers FailedPrecondition; requests are
//!   counted in `/metrics`; an open stream ends when `up` stops;
//! * config errors of the scaler's keys exit 2 naming the key.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prescale_keda::proto::external_scaler_client::ExternalScalerClient;
use prescale_keda::proto::{GetMetricsRequest, ScaledObjectRef};
use tonic::transport::Channel;
use tonic::Code;

const SPEEDUP: f64 = 60.0;
/// Requests/s above which the metric has risen: the ramp's first minute above the daily 30
/// requests a minute (0.5 req/s) is 180 (3 req/s).
const RISEN_RPS: f64 = 2.0;

fn scaled_object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "web".into(),
        namespace: "shop".into(),
        scaler_metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn web() -> ScaledObjectRef {
    scaled_object(&[
        ("scalerAddress", "prescale-forecaster:7500"),
        ("region", "local"),
        ("fleet", "web"),
    ])
}

/// The scaler's address from `up`'s banner line `  keda       ADDR  → …`.
fn keda_address(out: &std::path::Path) -> SocketAddr {
    let mut found = None;
    wait_until(
        "up's banner to name the KEDA scaler",
        Duration::from_secs(30),
        || {
            let printed = std::fs::read_to_string(out).unwrap_or_default();
            found = printed
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("keda "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse().ok());
            found.is_some()
        },
    );
    found.expect("KEDA address")
}

async fn get_metrics(
    client: &mut ExternalScalerClient<Channel>,
    object: ScaledObjectRef,
) -> Result<f64, tonic::Status> {
    let response = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(object),
            metric_name: "prescale-local-web".into(),
        })
        .await?
        .into_inner();
    assert_eq!(response.metric_values.len(), 1, "{response:?}");
    assert_eq!(response.metric_values[0].metric_name, "prescale-local-web");
    Ok(response.metric_values[0].metric_value_float)
}

/// Requests of fleet `web` per observed minute (unix seconds) from `from`, as the forecaster
/// stored them.
fn observed_minutes(admin: SocketAddr, from: u64) -> Vec<(u64, u64)> {
    let r = get(
        admin,
        &format!("/api/v1/series?region=local&fleet=web&from={from}"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut minutes: Vec<(u64, u64)> = r.json()["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p["minute"].as_u64()?, p["requests"].as_u64()?)))
        .collect();
    minutes.sort();
    // Summed over profiles.
    let mut summed: Vec<(u64, u64)> = Vec::new();
    for (minute, requests) in minutes {
        match summed.last_mut() {
            Some((m, r)) if *m == minute => *r += requests,
            _ => summed.push((minute, requests)),
        }
    }
    summed
}

#[test]
fn keda_sees_the_metric_rise_before_a_seeded_daily_ramp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("keda-up-{}", std::process::id());
    let reaper = BackendReaper::by_marker(&marker);
    let config = up_config(
        dir.path(),
        &format!(
            "{}\n[planner]\nbaseline_instances = 1\n",
            provisioned_fleet(&marker, 2.0, 120)
        ),
    );
    // Three days of history whose ramp comes again 25 node-minutes from now.
    let now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let ramp = (now / 60 + 25) % 1440;
    let history = dir.path().join("history.csv");
    write_trace(&history, now - 3 * 86_400, 3 * 1440, ramp);

    let (proxy, admin) = (loopback(), loopback());
    let (out, log) = (dir.path().join("up.out"), dir.path().join("up.log"));
    let args = up_args(
        &dir.path().join("state"),
        proxy,
        admin,
        Some(&config),
        Some(&history),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut up = start_with_stdout("up", &args, &out, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    let keda = keda_address(&out);
    assert!(keda.ip().is_loopback(), "{keda}");

    let node_now = node_now_ms(SPEEDUP) / 1000 / 60 * 60;
    let ramp_at_ms = {
        let minutes_to_ramp = (ramp + 1440 - (node_now / 60) % 1440) % 1440;
        (node_now + minutes_to_ramp * 60) * 1000
    };
    assert!(
        ramp_at_ms > node_now_ms(SPEEDUP) + 5 * 60_000,
        "the ramp must still be well ahead of the node clock"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime
        .block_on(ExternalScalerClient::connect(format!("http://{keda}")))
        .expect("connect to the scaler");

    // The metric and its target: the capacity of one instance, `capacity_rps`.
    let spec = runtime
        .block_on(client.get_metric_spec(web()))
        .expect("GetMetricSpec")
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1, "{spec:?}");
    assert_eq!(spec.metric_specs[0].metric_name, "prescale-local-web");
    assert_eq!(spec.metric_specs[0].target_size_float, 2.0);
    assert_eq!(spec.metric_specs[0].target_size, 2);

    // Bad metadata names the key; an unknown fleet or region is NotFound.
    for (pairs, key) in [
        (&[("region", "local")][..], "scalerMetadata.fleet"),
        (&[("fleet", "web")][..], "scalerMetadata.region"),
        (
            &[("region", "local"), ("fleet", "web"), ("zone", "a")][..],
            "scalerMetadata.zone",
        ),
    ] {
        let status = runtime
            .block_on(client.get_metric_spec(scaled_object(pairs)))
            .expect_err("bad metadata");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(key), "{status:?}");
    }
    let status = runtime
        .block_on(client.is_active(scaled_object(&[("region", "local"), ("fleet", "api")])))
        .expect_err("unknown fleet");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("`api`"), "{status:?}");
    let status = runtime
        .block_on(client.get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(scaled_object(&[("region", "eu"), ("fleet", "web")])),
            metric_name: "prescale-eu-web".into(),
        }))
        .expect_err("unknown region");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("`eu`"), "{status:?}");

    // Active: the plan's baseline is one instance. The stream says so at once.
    let mut active = None;
    wait_until("IsActive to answer", Duration::from_secs(30), || {
        active = runtime
            .block_on(client.is_active(web()))
            .ok()
            .map(|r| r.into_inner().result);
        active.is_some()
    });
    assert_eq!(active, Some(true));
    let mut stream = runtime
        .block_on(client.stream_is_active(web()))
        .expect("StreamIsActive")
        .into_inner();
    let first = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), stream.message()).await })
        .expect("a first message")
        .expect("stream");
    assert_eq!(first.map(|m| m.result), Some(true));

    // The load replays the pattern from the node's current minute through the ramp's hold.
    let load_trace = dir.path().join("load.csv");
    write_trace(
        &load_trace,
        node_now,
        (ramp_at_ms / 1000 - node_now) / 60 + 6,
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
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run load");

    // GetMetrics as KEDA polls it, with the node time of each answer.
    let mut samples: Vec<(u64, Result<f64, Code>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while load.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the load did not finish");
        let value = runtime.block_on(get_metrics(&mut client, web()));
        samples.push((node_now_ms(SPEEDUP), value.map_err(|s| s.code())));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(load.wait().expect("load").success(), "load failed");

    // The observed demand rose with the ramp's second minute (180 requests after 30 a minute).
    let observed = observed_minutes(admin, node_now);
    let demand_rise_ms = observed
        .iter()
        .find(|(_, requests)| *requests >= 100)
        .map(|(minute, _)| minute * 1000)
        .unwrap_or_else(|| panic!("the observed demand never rose: {observed:?}"));
    // Before the forecast saw the ramp coming (its lead is 2 minutes), the metric was the
    // daily level, below the risen mark.
    let quiet: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t + 150_000 < ramp_at_ms)
        .filter_map(|(_, v)| v.ok())
        .collect();
    assert!(!quiet.is_empty(), "no answer before the ramp: {samples:?}");
    assert!(
        quiet.iter().all(|&v| v < RISEN_RPS),
        "the metric was high before the ramp: {quiet:?}"
    );
    let rise_ms = samples
        .iter()
        .find(|(_, v)| v.is_ok_and(|v| v >= RISEN_RPS))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("the metric never rose: {samples:?}"));
    eprintln!(
        "ramp minute at {ramp_at_ms} (node ms); metric ≥ {RISEN_RPS} req/s at {rise_ms}; \
         observed demand rose in the minute starting {demand_rise_ms}: {} node-s ahead",
        (demand_rise_ms as i64 - rise_ms as i64) / 1000
    );
    assert!(
        rise_ms < demand_rise_ms,
        "the metric rose at {rise_ms}, not before the observed demand ({demand_rise_ms}); \
         observed {observed:?}"
    );
    let peak = samples
        .iter()
        .filter_map(|(_, v)| v.ok())
        .fold(0.0, f64::max);
    assert!(
        peak >= 8.0 * 0.9,
        "the hold's 480 a minute is 8 req/s: peak {peak}"
    );

    // Forecast-only: the plan is not acted on, so KEDA is told so and keeps its replicas.
    let r = request(
        admin,
        "POST",
        "/api/v1/mode",
        &[("Content-Type", "application/json")],
        br#"{"forecast_only": true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        "GetMetrics to refuse in forecast-only mode",
        Duration::from_secs(30),
        || {
            runtime
                .block_on(get_metrics(&mut client, web()))
                .is_err_and(|s| s.code() == Code::FailedPrecondition)
        },
    );
    let status = runtime
        .block_on(client.is_active(web()))
        .expect_err("forecast-only");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("forecast-only"), "{status:?}");

    // Every request is counted by method and outcome.
    let metrics = get(admin, "/metrics", &[]).text();
    let count = |method: &str, outcome: &str| {
        metric_sum(
            &metrics,
            "prescale_keda_requests_total",
            &[("method", method), ("outcome", outcome)],
        )
    };
    let answered = samples.iter().filter(|(_, v)| v.is_ok()).count() as f64;
    assert!(count("GetMetrics", "ok") >= answered, "{metrics}");
    assert_eq!(count("GetMetricSpec", "invalid_argument"), 3.0, "{metrics}");
    assert_eq!(count("GetMetrics", "not_found"), 1.0, "{metrics}");
    assert!(count("IsActive", "failed_precondition") >= 1.0, "{metrics}");
    assert_eq!(count("StreamIsActive", "ok"), 1.0, "{metrics}");
    // And shown with the plan.
    let plan: serde_json::Value =
        serde_json::from_str(&get(admin, "/api/v1/plan", &[]).text()).expect("plan JSON");
    let keda = &plan["keda"];
    assert_eq!(keda["tls"], false, "{keda}");
    let shown = |method: &str, outcome: &str| {
        keda["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["method"] == method && r["outcome"] == outcome)
            .and_then(|r| r["count"].as_f64())
            .unwrap_or(0.0)
    };
    assert_eq!(shown("GetMetrics", "not_found"), 1.0, "{keda}");
    assert_eq!(shown("GetMetricSpec", "invalid_argument"), 3.0, "{keda}");

    // `up` stops with the stream still open: the stream ends and `up` exits.
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
    let ended = runtime.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => break true,
                Err(_) => break false,
            }
        }
    });
    assert!(ended, "the stream outlived `up`");
    wait_until("up's backends to stop", Duration::from_secs(20), || {
        reaper.pids().is_empty()
    });
}

#[test]
fn scaler_config_errors_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = self_signed_cert(dir.path(), "scaler");
    let base = format!(
        "[node]\nid = \"f-1\"\nregion = \"local\"\n\n[identity]\nsecret = \"keda-e2e-secret-0123456789\"\n\n[[regions]]\nname = \"local\"\n\n[[fleets]]\nname = \"web\"\nregion = \"local\"\nbackends = [\"127.0.0.1:9\"]\n\n[mesh]\nca = \"ca.pem\"\ncert = \"f.pem\"\nkey = \"f.key.pem\"\n\n[forecaster]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n",
        dir.path().join("series.db").display()
    );
    let check = |extra: &str| {
        let path = dir.path().join("f.toml");
        let listen = if extra.contains("keda_listen") {
            ""
        } else {
            "keda_listen = \"127.0.0.1:0\"\n"
        };
        std::fs::write(&path, format!("{base}{listen}{extra}")).expect("write config");
        Command::new(bin())
            .args(["check-config", path.to_str().expect("utf-8")])
            .output()
            .expect("run check-config")
    };
    let out = check(&format!(
        "keda_tls_cert = \"{}\"\n",
        cert.cert_path.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forecaster.keda_tls_key"), "{stderr}");

    let out = check(&format!(
        "keda_tls_cert = \"{}\"\nkeda_tls_key = \"{}\"\n",
        cert.key_path.display(),
        cert.cert_path.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forecaster.keda_tls_cert"), "{stderr}");

    let out = check("keda_listen = \"7500\"\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forecaster.keda_listen"), "{stderr}");

    let out = check(&format!(
        "keda_tls_cert = \"{}\"\nkeda_tls_key = \"{}\"\n",
        cert.cert_path.display(),
        cert.key_path.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn up_on_a_taken_keda_address_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("keda-taken-{}", std::process::id());
    let reaper = BackendReaper::by_marker(&marker);
    let config = up_config(dir.path(), &provisioned_fleet(&marker, 2.0, 60));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let mut args = up_args(
        &dir.path().join("state"),
        loopback(),
        loopback(),
        Some(&config),
        None,
    );
    args.extend(["--keda".to_string(), taken_addr.to_string()]);
    let (out, log) = (dir.path().join("up.out"), dir.path().join("up.log"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut up = start_with_stdout("up", &args, &out, &log);
    let status = up.wait_exit(Duration::from_secs(60));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "forecaster.keda_listen: cannot listen on {taken_addr}"
        )),
        "{stderr}"
    );
    drop(taken);
    wait_until("up's backends to stop", Duration::from_secs(20), || {
        reaper.pids().is_empty()
    });
}

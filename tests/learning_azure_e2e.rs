//! Profiles learned from real traffic: `prescale load --azure --scale` replays 150 functions of
//! the Azure Functions sample (each function one user, `X-User-Id` = its hash) through a real
//! `prescale up` at 720× (a day in two minutes of wall time); the forecaster samples the users from
//! the proxy's sketches and builds a model; the day is replayed again, now assigned by that model;
//! each function's profile, read through `GET /api/v1/users/lookup`, is compared with a labelling
//! derived from its own series (`common::azure`: rare, bursty, periodic, steady).
//!
//! The bar: the same that the in-process test (`learning_azure_offline.rs`) sets for the same data
//! and defaults, loosened by the run-to-run differences of real sampling: better than one cluster
//! by 0.05 in purity, and an ARI above 0.05 (chance is 0).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::azure::{adjusted_rand_index, label, majority_share, purity, read_functions};
use common::*;

const FIXTURE: &str = "tests/data/traces/azure-functions-2019-1day-150fn.per-minute.csv";
const SPEEDUP: &str = "720";

fn replay_day(proxy: SocketAddr, dir: &std::path::Path, pass: &str) {
    let out = dir.join(format!("load-{pass}.json"));
    let status = Command::new(bin())
        .args([
            "load",
            "--target",
            &format!("http://{proxy}/"),
            "--azure",
            repo_path(FIXTURE).to_str().expect("utf-8 path"),
            "--speedup",
            SPEEDUP,
            "--scale",
            "0.01",
            "--duration",
            "180s",
            "--seed",
            "7",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("load output"))
        .stderr(Stdio::null())
        .status()
        .expect("run prescale load");
    assert!(status.success(), "prescale load failed: {status}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("read load output")).expect("json");
    eprintln!("load {pass}: {summary}");
}

fn model_status(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/api/v1/profiles/model", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn profiles_learned_from_azure_traffic_separate_the_functions_behaviors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backend_proc, backend) = start_backend("azure-learn", None, &[]);
    let certs = dir.path().join("certs");
    write_certs(&certs, &["up-1"]);
    let certs = certs.display();
    let spool = dir.path().join("state").join("spool");
    let spool = spool.display();
    let config = up_config(
        dir.path(),
        &format!(
            r#"
[[fleets]]
name = "web"
region = "local"
backends = ["{backend}"]
health_check = {{ interval_ms = 200, timeout_ms = 300 }}

[mesh]
ca = "{certs}/ca.pem"
cert = "{certs}/up-1.pem"
key = "{certs}/up-1.key.pem"

[export]
forecaster = "127.0.0.1:0"
forecaster_name = "up-1"
spool_dir = "{spool}"

[learning]
min_users = 100
rebuild_interval_secs = 2592000
"#
        ),
    );
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.path().join("up.log");
    let state = dir.path().join("state");
    let _up = start(
        "up",
        &[
            "up",
            "--state-dir",
            state.to_str().expect("utf-8 path"),
            "--speedup",
            SPEEDUP,
            "--proxy-listen",
            &proxy.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--config",
            config.to_str().expect("utf-8 path"),
        ],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), &log);

    // The first day teaches the forecaster.
    replay_day(proxy, dir.path(), "learn");
    // The last sketches of the day reach the sample table within a few export intervals.
    std::thread::sleep(Duration::from_secs(2));
    let rebuilt = request(admin, "POST", "/api/v1/profiles/rebuild", &[], b"");
    assert_eq!(rebuilt.status, 200, "{}", rebuilt.text());
    let status = model_status(admin);
    let version = status["model_version"].as_u64().expect("a model");
    wait_until(
        "the proxy installs the model",
        Duration::from_secs(20),
        || {
            let r = get(admin, "/api/v1/profiles", &[]);
            r.status == 200 && r.json()["model"]["version"].as_u64() == Some(version)
        },
    );

    // The second day is assigned by the model.
    replay_day(proxy, dir.path(), "assign");
    let functions = read_functions(&repo_path(FIXTURE));
    let labels: Vec<&str> = functions.iter().map(|f| label(&f.per_minute)).collect();
    let clusters: Vec<String> = functions
        .iter()
        .map(|f| {
            let r = get(admin, &format!("/api/v1/users/lookup?id=fn-{}", f.id), &[]);
            assert_eq!(r.status, 200, "lookup: {}", r.text());
            r.json()["profile"]
                .as_str()
                .expect("profile name")
                .to_string()
        })
        .collect();
    let purity = purity(&labels, &clusters);
    let ari = adjusted_rand_index(&labels, &clusters);
    let baseline = majority_share(&labels);
    let mut cross = std::collections::BTreeMap::new();
    for (l, c) in labels.iter().zip(&clusters) {
        *cross.entry((c.clone(), *l)).or_insert(0usize) += 1;
    }
    let table: String = cross
        .iter()
        .map(|((c, l), n)| format!("  {c:<28} {l:<9} {n}\n"))
        .collect();
    eprintln!(
        "model: {}\npurity {purity:.3} (one cluster {baseline:.3}), ARI {ari:.3}\n{table}",
        model_status(admin)
    );
    assert!(
        purity >= baseline + 0.05 && ari >= 0.05,
        "purity {purity:.3} (one cluster {baseline:.3}), ARI {ari:.3}\n{table}"
    );
}

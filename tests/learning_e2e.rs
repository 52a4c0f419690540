//! Learned profiles end to end, on `prescale up` with one-second sketches and a small
//! `[learning]` section: two groups of users that behave clearly differently (automation writing to an API; browsers
//! loading static assets) are sampled from the proxy's sketches, the forecaster builds a model on
//! `POST /api/v1/profiles/rebuild`, the proxy installs it over QUIC (its `/api/v1/profiles`
//! shows the version), a rebuild on the same traffic keeps every profile's id and name, a persona
//! created for one profile reaches the proxy at once (the model republished as a new version), a
//! rebuild after some users drifted moves those users and keeps the others' profiles, and a
//! restart on the same state republishes the stored model and keeps versions rising and ids.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Users per behavior group.
const USERS: usize = 32;
/// Sampled users the forecaster needs for its first model (of the 64 sent).
const MIN_USERS: usize = 32;
/// Sampled users waited for before a rebuild. The proxy samples at most 8 users per entry and
/// sketch, one per slot of a hash of the user (salted afresh each interval), so of about six
/// users in a one-second sketch some collide and go unsampled in that interval: about 70% of
/// the users are sampled in a phase while one entry holds them all.
const SAMPLED: u64 = 40;
/// Requests a user sends per traffic phase: 5 to 16, by user (the first two count as the `new`
/// profile), so that request rates spread within each group as real users' do, and a drifted user's
/// requests (see [`DRIFTED`]) stay within that spread.
fn requests_of(user: usize) -> usize {
    5 + user * 7 % 12
}

/// The automation users that start browsing (those with the fewest requests: 5).
const DRIFTED: [usize; 6] = [0, 12, 24, 36, 48, 60];
/// Browser requests each drifted user sends: with its 5 automation requests, three quarters of
/// its requests are a browser's and its rate is within the population's.
const DRIFT_REQUESTS: usize = 15;

struct Up {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

/// `prescale up` at real speed: at 60× a node hour is a real minute, and the time-of-day
/// features (the busiest hour's share, the quarter-of-day shares) would change between the two
/// traffic phases, making them different behaviors; sketches every second keep it quick.
fn start_up(dir: &Path, config: &Path, log: &str) -> Up {
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.join(log);
    let state = dir.join("state");
    let args = [
        "up",
        "--state-dir",
        state.to_str().expect("utf-8 path"),
        "--proxy-listen",
        &proxy.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--config",
        config.to_str().expect("utf-8 path"),
    ];
    let proc = start("up", &args, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), &log);
    Up {
        proc,
        proxy,
        admin,
        log,
    }
}

/// Both groups' users one after the other (automation, browser, automation, ...), each sending
/// its requests 25 ms apart: about six users a second, fewer than a sketch entry's 8 sample
/// slots. Sizes vary by user within each group
/// (the automation's bodies, the browsers' paths and so the echoed responses), as real users' do.
fn send_traffic(proxy: SocketAddr) {
    for user in 0..2 * USERS {
        for round in 0..requests_of(user) {
            let response = if user % 2 == 0 {
                let id = format!("bot-{user}");
                let body = format!("{{\"items\":\"{}\"}}", "x".repeat(500 + user * 97 % 3_000));
                request(
                    proxy,
                    "POST",
                    "/api/v1/orders",
                    &[
                        ("x-user-id", id.as_str()),
                        ("user-agent", "python-requests/2.31.0"),
                        ("content-type", "application/json"),
                    ],
                    body.as_bytes(),
                )
            } else {
                browse(proxy, &format!("browser-{user}"), user, round)
            };
            assert_eq!(response.status, 200, "{}", response.text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One browser request of user `id` (an asset with a query whose length varies by `user`).
fn browse(proxy: SocketAddr, id: &str, user: usize, round: usize) -> HttpResponse {
    let asset = ["/static/app.js", "/static/site.css", "/img/logo.png"][round % 3];
    let path = format!("{asset}?v={}", "0".repeat(user * 37 % 400));
    get(
        proxy,
        &path,
        &[
            ("x-user-id", id),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
            ),
        ],
    )
}

/// The [`DRIFTED`] automation users browse: [`DRIFT_REQUESTS`] browser requests each, then one
/// more each a second and a half apart, so that every one of them is alone in some sketch
/// interval and its latest sample is its drifted behavior.
fn send_drift(proxy: SocketAddr) {
    for &user in &DRIFTED {
        let id = format!("bot-{user}");
        for round in 0..DRIFT_REQUESTS {
            let response = browse(proxy, &id, user, round);
            assert_eq!(response.status, 200, "{}", response.text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    for &user in &DRIFTED {
        let response = browse(proxy, &format!("bot-{user}"), user, DRIFT_REQUESTS);
        assert_eq!(response.status, 200, "{}", response.text());
        std::thread::sleep(Duration::from_millis(1_500));
    }
}

/// Every user of the traffic by the profile the proxy's installed model answers for its features
/// now (`GET /api/v1/users/lookup`'s `model.answer`): the profile its next request is assigned
/// (no rules match these users, and all are past the new-user threshold). The lookup's `profile`
/// is the one of the user's last request, made under whatever model was in force then.
fn assignments(admin: SocketAddr) -> Vec<(String, String)> {
    (0..2 * USERS)
        .map(|user| {
            let id = if user % 2 == 0 {
                format!("bot-{user}")
            } else {
                format!("browser-{user}")
            };
            let r = get(admin, &format!("/api/v1/users/lookup?id={id}"), &[]);
            assert_eq!(r.status, 200, "lookup {id}: {}", r.text());
            let answer = r.json();
            let profile = answer["model"]["answer"]
                .as_str()
                .unwrap_or_else(|| panic!("a model's answer for {id}: {answer}"))
                .to_string();
            (id, profile)
        })
        .collect()
}

/// The name of the model's profile whose centroid is (`automated`) or is not automation.
fn profile_by_automation(model: &serde_json::Value, automated: bool) -> String {
    let profiles = model["profiles"].as_array().expect("profiles");
    let found = profiles
        .iter()
        .find(|p| (p["centroid"]["automation_share"].as_f64().expect("share") > 0.5) == automated);
    found.expect("such a profile")["name"]
        .as_str()
        .expect("name")
        .to_string()
}

fn model_status(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/api/v1/profiles/model", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until [`SAMPLED`] users are sampled and the count has held for two sketch intervals
/// (the last sketches are in), a model is in force and no build runs.
fn wait_for_samples(admin: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut held: Option<(u64, std::time::Instant)> = None;
    loop {
        let status = model_status(admin);
        let sampled = status["sampled_users"].as_u64().unwrap_or(0);
        let since = match held {
            Some((count, since)) if count == sampled => since,
            _ => std::time::Instant::now(),
        };
        held = Some((sampled, since));
        if sampled >= SAMPLED
            && since.elapsed() >= Duration::from_secs(2)
            && status["model_version"].as_u64().is_some()
            && status["building"] == false
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the users to be sampled: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rebuild(admin: SocketAddr) -> serde_json::Value {
    let r = request(admin, "POST", "/api/v1/profiles/rebuild", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// (id, name) of every profile of a model view.
fn identities(model: &serde_json::Value) -> BTreeSet<(u64, String)> {
    model["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().expect("id"),
                p["name"].as_str().expect("name").to_string(),
            )
        })
        .collect()
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !["new", "default", "anomalous"].contains(&name)
}

/// Waits until the proxy's own view (`/api/v1/profiles`) has model `version` installed.
fn wait_for_proxy_model(up: &Up, version: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy_model_version(up.admin) != Some(version) {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(&up.log).unwrap_or_default();
            panic!("timed out waiting for {what} (version {version}); log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn proxy_model_version(admin: SocketAddr) -> Option<u64> {
    let r = get(admin, "/api/v1/profiles", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model_version"].as_u64()
}

#[test]
fn profiles_are_learned_published_and_kept_across_rebuilds_and_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backend_proc, backend) = start_backend("learn", None, &[]);
    let spool = dir.path().join("state").join("spool");
    let spool = spool.display();
    let certs = dir.path().join("certs");
    write_certs(&certs, &["up-1"]);
    let certs = certs.display();
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
interval_secs = 1
spool_dir = "{spool}"

[learning]
min_users = {MIN_USERS}
rebuild_interval_secs = 86400
# Two behaviors, two profiles. Left to choose (k_min..k_max by silhouette), the builder splits
# these synthetic groups further along the few discrete values their rates and sizes take, and
# which split wins moves with the subset of users sampled; ids are only comparable when the
# profiles are.
k = 2
"#
        ),
    );
    let mut up = start_up(dir.path(), &config, "up.log");

    let status = model_status(up.admin);
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["model_version"], serde_json::Value::Null, "{status}");
    let wrong = get(up.admin, "/api/v1/profiles/rebuild", &[]);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));

    send_traffic(up.proxy);
    wait_for_samples(up.admin);
    // The first model came by itself once `min_users` were sampled.
    let status = model_status(up.admin);
    assert!(status["model_version"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["last_build"]["trigger"], "initial", "{status}");

    let first = rebuild(up.admin);
    let v1 = first["version"].as_u64().expect("version");
    let model = &first["model"];
    let ids = identities(model);
    assert!(ids.len() >= 2, "two behaviors, one profile: {first}");
    for (_, name) in &ids {
        assert!(valid_name(name), "profile name `{name}`");
    }
    // The groups are told apart: one profile is mostly automation, another mostly not.
    let automation: Vec<f64> = model["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .map(|p| p["centroid"]["automation_share"].as_f64().expect("share"))
        .collect();
    assert!(
        automation.iter().any(|&a| a > 0.5) && automation.iter().any(|&a| a < 0.5),
        "automation share per profile {automation:?}"
    );
    wait_for_proxy_model(&up, v1, "the proxy to install the model");

    let second = rebuild(up.admin);
    let v2 = second["version"].as_u64().expect("version");
    assert!(v2 > v1, "{v2} after {v1}");
    assert_eq!(identities(&second["model"]), ids, "{second}");
    wait_for_proxy_model(&up, v2, "the proxy to install the rebuilt model");

    // A persona for the automation profile: its answer comes once the model in force is out
    // again, as the next version with the same profiles and the persona's settings.
    let automated = profile_by_automation(&second["model"], true);
    let browsing = profile_by_automation(&second["model"], false);
    let persona = serde_json::json!({
        "name": "order-bots",
        "resources": {"cpu_share": 0.05, "memory_mb": 32, "network_mbps": 1, "io_ops": 4},
        "traffic": {"peak_hours_utc": [], "regions": [], "access": ["api", "write", "automation"]},
        "tags": ["integration"],
        "revenue_weight": 4,
        "priority": 220,
        "match_profiles": [automated.as_str()]
    });
    let created = request(
        up.admin,
        "POST",
        "/api/v1/personas",
        &[("content-type", "application/json")],
        persona.to_string().as_bytes(),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let status = model_status(up.admin);
    let republished = status["model_version"].as_u64().expect("version");
    assert_eq!(republished, v2 + 1, "{status}");
    assert_eq!(status["last_republish"]["of_version"], v2, "{status}");
    assert_eq!(identities(&status["model"]), ids, "{status}");
    let bots = status["model"]["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .find(|p| p["name"] == automated.as_str())
        .expect("the automation profile")
        .clone();
    assert_eq!(bots["settings"]["persona"], "order-bots", "{bots}");
    wait_for_proxy_model(
        &up,
        republished,
        "the proxy to install the republished model",
    );
    let report = get(up.admin, "/api/v1/profiles", &[]).json();
    let at_proxy = report["model"]["profiles"]
        .as_array()
        .expect("the proxy's learned profiles")
        .iter()
        .find(|p| p["name"] == automated.as_str())
        .expect("the automation profile at the proxy")
        .clone();
    assert_eq!(at_proxy["persona"]["persona"], "order-bots", "{at_proxy}");
    assert_eq!(at_proxy["routing"]["priority"], 220, "{at_proxy}");
    assert_eq!(
        at_proxy["routing"]["settings_source"], "persona",
        "{at_proxy}"
    );

    // Drift: some automation users start browsing. After a rebuild they are in the browsing
    // profile; every other user keeps the profile it had.
    let before = assignments(up.admin);
    for (id, profile) in &before {
        if let Some(user) = DRIFTED.iter().find(|&&u| *id == format!("bot-{u}")) {
            assert_eq!(*profile, automated, "user {user} before drifting");
        }
    }
    send_drift(up.proxy);
    std::thread::sleep(Duration::from_secs(2));
    wait_for_samples(up.admin);
    let drifted = rebuild(up.admin);
    let v_drift = drifted["version"].as_u64().expect("version");
    assert_eq!(identities(&drifted["model"]), ids, "{drifted}");
    wait_for_proxy_model(
        &up,
        v_drift,
        "the proxy to install the model built after the drift",
    );
    let after = assignments(up.admin);
    for ((id, was), (_, now)) in before.iter().zip(&after) {
        let expected = if DRIFTED.iter().any(|u| *id == format!("bot-{u}")) {
            &browsing
        } else {
            was
        };
        assert_eq!(now, expected, "user {id}: was {was}; all now: {after:?}");
    }
    // Re-assignment is lazy: the next request of a drifted user is in the browsing profile.
    std::thread::sleep(Duration::from_millis(1_100));
    for &user in &DRIFTED {
        let id = format!("bot-{user}");
        let response = browse(up.proxy, &id, user, 0);
        assert_eq!(response.status, 200, "{}", response.text());
        let looked_up = get(up.admin, &format!("/api/v1/users/lookup?id={id}"), &[]).json();
        assert_eq!(looked_up["profile"], browsing.as_str(), "{looked_up}");
        assert_eq!(looked_up["by_model"], true, "{looked_up}");
    }
    let v2 = v_drift;
    let metrics = get(up.admin, "/metrics", &[]).text();
    assert_eq!(
        metric_sum(&metrics, "prescale_learning_model_version", &[]),
        v2 as f64
    );
    assert!(
        metric_sum(
            &metrics,
            "prescale_learning_builds_total",
            &[("outcome", "built")]
        ) >= 3.0
    );
    assert_eq!(
        metric_sum(&metrics, "prescale_learning_profiles", &[]),
        ids.len() as f64
    );

    up.proc.signal("TERM");
    let exit = up.proc.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "up exited with {exit}");

    // Restart on the same state: the stored model is in force again, here and at the proxy.
    let up = start_up(dir.path(), &config, "up2.log");
    let status = model_status(up.admin);
    assert_eq!(status["model_version"].as_u64(), Some(v2), "{status}");
    assert_eq!(identities(&status["model"]), ids);
    wait_for_proxy_model(&up, v2, "the proxy to get the stored model");
    send_traffic(up.proxy);
    wait_for_samples(up.admin);
    let third = rebuild(up.admin);
    let v3 = third["version"].as_u64().expect("version");
    assert!(v3 > v2, "{v3} after {v2}");
    assert_eq!(identities(&third["model"]), ids, "{third}");
}

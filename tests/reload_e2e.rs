//! Reloading the config of a running `prescale proxy`: SIGHUP during a load moves a fleet to
//! other backends with every response of the load a success, on the client connections it
//! already had; `POST /api/v1/reload` applies new routes and assignment rules, and a client
//! request rate limit that a second reload takes off again, and a fleet's shorter read timeout
//! (504 for a slow answer), and a fleet's upstream protocol (HTTP/2, then HTTP/1.1 again);
//! invalid files,
//! configs that change keys needing a restart, and an invalid file on SIGHUP are refused, naming
//! the problem, and the running config stays.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The proxy's config: fleet `web` on `web`, fleet `api` on `api`, and `extra` at the end.
fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    web: SocketAddr,
    api: SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
[node]
id = "reload-1"
region = "eu"

[proxy]
listen = "{proxy}"
threads = 2

[admin]
listen = "{admin}"

[identity]
secret = "reload-secret-0123456789"

[[regions]]
name = "eu"
default_fleet = "web"

[[fleets]]
name = "web"
region = "eu"
backends = ["{web}"]
health_check = {{ interval_ms = 200, timeout_ms = 200 }}

[[fleets]]
name = "api"
region = "eu"
backends = ["{api}"]
health_check = {{ interval_ms = 200, timeout_ms = 200 }}

[assignment]
new_user_min_requests = 0
{extra}
"#
    )
}

/// The backend (its `--name`) that answered `GET path`.
fn served_by(proxy: SocketAddr, path: &str) -> String {
    let response = get(proxy, path, &[("x-user-id", "checker")]);
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("x-backend").unwrap_or("-").to_string()
}

fn reload(admin: SocketAddr) -> HttpResponse {
    request(admin, "POST", "/api/v1/reload", &[], b"")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[test]
fn reloads_change_routing_under_load_without_a_failed_request_and_bad_configs_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_a, a) = start_backend("a", None, &[]);
    let (_b, b) = start_backend("b", None, &[]);
    let (_c, c) = start_backend("c", None, &[]);
    let (proxy, admin) = (loopback(), loopback());
    let file = dir.path().join("prescale.toml");
    write(&file, &config(proxy, admin, a, c, ""));
    let log = dir.path().join("proxy.log");
    let mut node = start(
        "proxy",
        &["proxy", "--config", file.to_str().expect("utf-8 path")],
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), &log);
    assert_eq!(served_by(proxy, "/"), "a");
    let mut kept = KeepAliveClient::connect(proxy);
    let before = kept.send(
        b"GET / HTTP/1.1\r\nHost: reload\r\nX-User-Id: kept\r\n\r\n",
        false,
    );
    assert_eq!(before.header("x-backend"), Some("a"));

    // A load over keep-alive connections, while SIGHUP moves `web` from a to b.
    let summary_path = dir.path().join("load.json");
    let mut load = Command::new(bin())
        .args([
            "load",
            "--target",
            &format!("http://{proxy}/"),
            "--rps",
            "300",
            "--users",
            "20",
            "--duration",
            "6s",
            "--progress",
            "60s",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&summary_path).expect("summary file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run load");
    std::thread::sleep(Duration::from_millis(1500));
    write(&file, &config(proxy, admin, b, c, ""));
    node.signal("HUP");
    wait_until("SIGHUP to move `web` to b", Duration::from_secs(10), || {
        served_by(proxy, "/") == "b"
    });
    // The connection opened before the reload carries on, now to b.
    let after = kept.send(
        b"GET / HTTP/1.1\r\nHost: reload\r\nX-User-Id: kept\r\n\r\n",
        false,
    );
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-backend"), Some("b"));

    // The admin call: a rule puts /reports in profile `reports`, a route sends it to `api`.
    let routed = config(
        proxy,
        admin,
        b,
        c,
        r#"rules = [{ path_prefix = "/reports", profile = "reports" }]

[[routes]]
profile = "reports"
fleet = "api"
"#,
    );
    write(&file, &routed);
    let applied = reload(admin);
    assert_eq!(applied.status, 200, "{}", applied.text());
    let changed: Vec<String> = applied.json()["changed"]
        .as_array()
        .expect("changed")
        .iter()
        .map(|v| v.as_str().expect("text").to_string())
        .collect();
    assert_eq!(changed, vec!["assignment", "routes"], "{}", applied.text());
    assert_eq!(served_by(proxy, "/reports/daily"), "c");
    assert_eq!(served_by(proxy, "/"), "b");

    let status = load.wait().expect("load exits");
    assert!(status.success(), "load exited with {status}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).expect("summary"))
            .expect("summary JSON");
    let finished = summary["requests_finished"].as_u64().expect("finished");
    assert!(finished > 1000, "{summary}");
    assert_eq!(
        summary["status"]["2xx"].as_u64(),
        Some(finished),
        "{summary}"
    );
    assert_eq!(summary["status"]["errors"].as_u64(), Some(0), "{summary}");

    // Limits: a request rate on, then off again (the admin listener is not limited).
    write(
        &file,
        &routed.replace(
            "threads = 2",
            "threads = 2\nclient_limits = { requests_per_sec = 0.5, burst = 0 }",
        ),
    );
    let limited = reload(admin);
    assert_eq!(limited.status, 200, "{}", limited.text());
    assert_eq!(
        limited.json()["changed"],
        serde_json::json!(["proxy.client_limits"])
    );
    assert_eq!(get(proxy, "/", &[]).status, 200);
    let refused = get(proxy, "/", &[]);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    write(&file, &routed);
    assert_eq!(reload(admin).status, 200);
    assert_eq!(get(proxy, "/", &[]).status, 200);

    // A fleet's read timeout, shortened: a slow answer from its backend becomes 504.
    let slow = "/reports/daily?sleep_ms=600";
    let user = [("x-user-id", "slow")];
    assert_eq!(get(proxy, slow, &user).status, 200);
    write(
        &file,
        &routed.replace(
            &format!("backends = [\"{c}\"]"),
            &format!("backends = [\"{c}\"]\ntimeouts = {{ read_ms = 150 }}"),
        ),
    );
    let shortened = reload(admin);
    assert_eq!(shortened.status, 200, "{}", shortened.text());
    assert_eq!(
        shortened.json()["changed"],
        serde_json::json!(["fleets[api].timeouts"])
    );
    let timed_out = get(proxy, slow, &user);
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_eq!(served_by(proxy, "/reports/daily"), "c");
    write(&file, &routed);
    assert_eq!(reload(admin).status, 200);
    assert_eq!(get(proxy, slow, &user).status, 200);

    // A fleet's upstream protocol: its backend is spoken to over HTTP/2 (h2c), then HTTP/1.1
    // again, the backend answering throughout.
    let version = || get(proxy, "/reports/daily", &user).json()["version"].clone();
    assert_eq!(version(), "HTTP/1.1");
    write(
        &file,
        &routed.replace(
            &format!("backends = [\"{c}\"]"),
            &format!("backends = [\"{c}\"]\nupstream = {{ protocol = \"http2\" }}"),
        ),
    );
    let spoken = reload(admin);
    assert_eq!(spoken.status, 200, "{}", spoken.text());
    assert_eq!(
        spoken.json()["changed"],
        serde_json::json!(["fleets[api].upstream"])
    );
    assert_eq!(version(), "HTTP/2");
    write(&file, &routed);
    assert_eq!(reload(admin).status, 200);
    assert_eq!(version(), "HTTP/1.1");

    // Refused, each naming why; routing stays as the last reload left it.
    let unchanged = |what: &str| {
        assert_eq!(served_by(proxy, "/reports/daily"), "c", "after {what}");
        assert_eq!(served_by(proxy, "/"), "b", "after {what}");
    };
    write(
        &file,
        &routed.replace("fleet = \"api\"", "fleet = \"nowhere\""),
    );
    let invalid = reload(admin);
    assert_eq!(invalid.status, 400, "{}", invalid.text());
    assert_eq!(invalid.json()["result"], "refused");
    assert!(
        invalid.json()["error"]
            .as_str()
            .expect("error")
            .contains("nowhere"),
        "{}",
        invalid.text()
    );
    unchanged("a route to an unknown fleet");

    write(&file, &routed.replace("threads = 2", "threads = 3"));
    let restart = reload(admin);
    assert_eq!(restart.status, 409, "{}", restart.text());
    assert_eq!(
        restart.json()["restart_needed"],
        serde_json::json!(["proxy.threads"]),
        "{}",
        restart.text()
    );
    unchanged("a change needing a restart");

    write(&file, "this is [not toml");
    let broken = reload(admin);
    assert_eq!(broken.status, 400, "{}", broken.text());
    unchanged("a file that is not TOML");

    write(
        &file,
        &routed.replace("fleet = \"api\"", "fleet = \"nowhere\""),
    );
    node.signal("HUP");
    wait_until(
        "SIGHUP's refusal in the log",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("config reload refused")
        },
    );
    unchanged("an invalid file on SIGHUP");

    let wrong_method = get(admin, "/api/v1/reload", &[]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));

    let metrics = get(admin, "/metrics", &[]).text();
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_config_reloads_total",
            &[("result", "applied")]
        ),
        8.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_config_reloads_total",
            &[("result", "refused")]
        ),
        4.0
    );
    assert!(
        metric_sum(
            &metrics,
            "prescale_config_last_reload_timestamp_seconds",
            &[]
        ) > 0.0
    );

    // Still serving, and it stops cleanly.
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(30)).success());
}

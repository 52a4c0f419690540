//! `prescale up`, the README's first command, end to end: with no config its forecaster's
//! process provisioner starts the embedded default's two demo backends, it serves through them,
//! its in-process forecaster stores what was served, SIGTERM stops it and its backends, and a
//! restart on the same state goes on from the stored series.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{free_port, get, metric_sum, start, wait_for_status, wait_until, Proc};

struct Up {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
}

fn start_up(state: &Path, log: &Path) -> Up {
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proc = start(
        "up",
        &[
            "up",
            "--proxy-listen",
            &proxy.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ],
        log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), log);
    Up { proc, proxy, admin }
}

/// Requests the forecaster stored, over every series and minute.
fn stored(admin: SocketAddr) -> u64 {
    let r = get(admin, "/api/v1/series", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["series"]
        .as_array()
        .expect("series")
        .iter()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .map(|p| p["requests"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn up_serves_records_and_stops_cleanly_with_no_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let log = dir.path().join("up.log");
    let mut up = start_up(&state, &log);

    // The demo backends its provisioner started: the baseline of two, both ready.
    wait_until("two ready demo backends", Duration::from_secs(30), || {
        let fleets = get(up.admin, "/api/v1/fleets", &[]).json();
        fleets["fleets"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["state"] == "ready"))
    });
    let fleets = get(up.admin, "/api/v1/fleets", &[]).json();
    let backends: Vec<SocketAddr> = fleets["fleets"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            b["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("addr")
        })
        .collect();
    assert_eq!(backends.len(), 2, "{fleets}");

    for i in 0..30 {
        let user = format!("user-{}", i % 3);
        let r = get(up.proxy, "/api/items", &[("x-user-id", &user)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let metrics = get(up.admin, "/metrics", &[]).text();
    assert_eq!(metric_sum(&metrics, "prescale_requests_total", &[]), 30.0);
    // Each backend got its share (round robin over both).
    let fleets = get(up.admin, "/api/v1/fleets", &[]).json();
    for backend in fleets["fleets"][0]["backends"]
        .as_array()
        .expect("backends")
    {
        assert_eq!(backend["requests"].as_u64(), Some(15), "{fleets}");
    }
    // The in-process forecaster stores exactly what was served (one sketch every 10 s).
    wait_until(
        "the served requests in /api/v1/series",
        Duration::from_secs(45),
        || stored(up.admin) == 30,
    );

    up.proc.signal("TERM");
    let status = up.proc.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
    // Its demo backends went with it.
    wait_until("the demo backends to stop", Duration::from_secs(15), || {
        backends
            .iter()
            .all(|b| TcpStream::connect_timeout(b, Duration::from_millis(200)).is_err())
    });

    // Started again on the same state, the series go on from what was stored.
    let log = dir.path().join("up-again.log");
    let mut again = start_up(&state, &log);
    assert_eq!(stored(again.admin), 30);
    wait_until(
        "the ready demo backends again",
        Duration::from_secs(30),
        || {
            let fleets = get(again.admin, "/api/v1/fleets", &[]).json();
            fleets["fleets"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["state"] == "ready"))
        },
    );
    for _ in 0..5 {
        assert_eq!(
            get(again.proxy, "/", &[("x-user-id", "user-9")]).status,
            200
        );
    }
    wait_until(
        "the new requests in /api/v1/series",
        Duration::from_secs(45),
        || stored(again.admin) == 35,
    );
    again.proc.signal("TERM");
    assert!(again.proc.wait_exit(Duration::from_secs(30)).success());
}

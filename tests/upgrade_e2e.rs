//! A binary upgrade of a running `prescale proxy`: a second node on the same config is refused
//! while the first runs (it holds the instance lock); SIGQUIT with no new process waiting changes
//! nothing; a process started with `--upgrade` takes the listener over on SIGQUIT while requests
//! keep arriving on new connections, and every one of them is answered 200, a slow request the
//! old process had taken included; the old process exits cleanly and the new one then starts its
//! admin listener on the same port and counts the requests it served.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn config(proxy: SocketAddr, admin: SocketAddr, backend: SocketAddr, socket: &Path) -> String {
    format!(
        r#"
[node]
id = "upgrade-1"
region = "eu"

[proxy]
listen = "{proxy}"
threads = 2
shutdown_grace_secs = 10
upgrade_socket = "{}"

[admin]
listen = "{admin}"

[identity]
secret = "upgrade-secret-0123456789"

[[regions]]
name = "eu"
default_fleet = "web"

[[fleets]]
name = "web"
region = "eu"
backends = ["{backend}"]
health_check = {{ interval_ms = 200, timeout_ms = 200 }}
"#,
        socket.display()
    )
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn sigquit_hands_the_listener_to_the_upgraded_process_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_backend, backend) = start_backend("b", None, &[]);
    let (proxy, admin) = (loopback(), loopback());
    let socket = dir.path().join("upgrade.sock");
    let file = dir.path().join("prescale.toml");
    std::fs::write(&file, config(proxy, admin, backend, &socket)).expect("write config");
    let file = file.to_str().expect("utf-8 path");

    let old_log = dir.path().join("old.log");
    let mut old = start("old proxy", &["proxy", "--config", file], &old_log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), &old_log);

    // A second node on the same listener's state is refused before it binds anything.
    let twin_log = dir.path().join("twin.log");
    let mut twin = start("twin proxy", &["proxy", "--config", file], &twin_log);
    let status = twin.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a second node started: {status}");
    let said = log_text(&twin_log);
    assert!(
        said.contains("upgrade.sock.lock") && said.contains("--upgrade"),
        "{said}"
    );

    // SIGQUIT with nobody waiting for the listener: logged, and the node serves on.
    old.signal("QUIT");
    wait_until(
        "the old node to say that nobody waits",
        Duration::from_secs(15),
        || log_text(&old_log).contains("no process waits for the listener"),
    );
    assert!(old.child.try_wait().expect("try_wait").is_none());
    assert_eq!(get(proxy, "/", &[]).status, 200);

    // Requests on new connections all along the hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("user-{}", n % 50);
                let outcome = try_request(proxy, "GET", "/", &[("x-user-id", &user)], b"")
                    .map(|r| r.status)
                    .map_err(|e| e.to_string());
                outcomes.push(outcome);
                std::thread::sleep(Duration::from_millis(5));
            }
            outcomes
        })
    };
    // A slow request the old process takes just before the hand-over.
    let slow = std::thread::spawn(move || {
        try_request(proxy, "GET", "/?sleep_ms=7000", &[], b"").map(|r| r.status)
    });
    std::thread::sleep(Duration::from_millis(300));

    let new_log = dir.path().join("new.log");
    let mut new = start(
        "new proxy",
        &["proxy", "--config", file, "--upgrade"],
        &new_log,
    );
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "the old process exited with {status}");
    let old_said = log_text(&old_log);
    assert!(old_said.contains("handing the listener over"), "{old_said}");
    assert_eq!(
        slow.join()
            .expect("slow request thread")
            .expect("slow request"),
        200
    );

    // The new process now starts its admin listener on the same port.
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30), &new_log);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.join().expect("load thread");
    let failed: Vec<_> = outcomes.iter().filter(|o| **o != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nold:\n{old_said}\nnew:\n{}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)],
        log_text(&new_log)
    );
    assert!(outcomes.len() > 100, "only {} requests", outcomes.len());

    let metrics = get(admin, "/metrics", &[]).text();
    let served = metric_sum(&metrics, "prescale_requests_total", &[]);
    assert!(
        served > 0.0,
        "the new process counted no request:\n{metrics}"
    );
    assert_eq!(get(proxy, "/", &[]).status, 200);

    new.signal("TERM");
    let status = new.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the new process exited with {status}");
}

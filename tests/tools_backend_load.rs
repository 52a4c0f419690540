//! End-to-end tests of the demo tools through the real binary on loopback ports chosen at run
//! time: `prescale backend` (echo, health, injected failures, h2c, graceful SIGTERM) and
//! `prescale load` (uniform, trace and Azure modes against a real backend, bad inputs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_prescale");

/// A `prescale backend` child process, killed when dropped.
struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start(extra_args: &[&str]) -> Backend {
        let mut child = Command::new(BIN)
            .args(["backend", "--listen", "127.0.0.1:0", "--threads", "2"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prescale backend");
        let stdout = child.stdout.take().expect("backend stdout");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("backend announces its port");
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected announcement {line:?}"));
        Backend { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn user_tally(&self) -> Value {
        let (status, body) = http_get(self.port, "/_backend/users", &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("tally is JSON")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns the status and the body.
fn http_get(port: u16, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to backend");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set timeout");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "data", "load", name]
        .iter()
        .collect();
    path.to_string_lossy().into_owned()
}

fn prescale(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run prescale")
}

/// Runs `prescale load ... --json` and returns its summary.
fn load_json(args: &[&str]) -> Value {
    let output = prescale(&[&["load", "--json", "--progress", "1s"][..], args].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "load failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary not JSON ({e}): {stdout}"))
}

fn assert_bad_input(args: &[&str], expected_in_message: &str) {
    let output = prescale(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected_in_message),
        "{args:?}: `{expected_in_message}` not in {stderr}"
    );
}

fn count(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {value}"))
}

#[test]
fn backend_echoes_method_path_and_forwarding_headers() {
    let backend = Backend::start(&["--name", "blue-1"]);
    let headers = [
        ("X-User-Id", "alice"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
    ];
    let (status, body) = http_get(backend.port, "/orders/42?view=full", &headers);
    assert_eq!(status, 200);
    let echo: Value = serde_json::from_str(&body).expect("echo is JSON");
    assert_eq!(echo["backend"], "blue-1");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/orders/42");
    assert_eq!(echo["query"], "view=full");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["headers"]["x-user-id"], "alice");
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.7");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    let (_, body) = http_get(backend.port, "/", &[]);
    let echo: Value = serde_json::from_str(&body).expect("echo is JSON");
    assert_eq!(echo["headers"]["x-user-id"], Value::Null);
}

#[test]
fn backend_names_itself_by_address_and_fixed_body_is_tiny() {
    let backend = Backend::start(&["--fixed-body"]);
    let (status, body) = http_get(backend.port, "/anything", &[("X-User-Id", "bob")]);
    assert_eq!(status, 200);
    let fixed: Value = serde_json::from_str(&body).expect("fixed body is JSON");
    assert_eq!(fixed["backend"], format!("127.0.0.1:{}", backend.port));
    assert_eq!(fixed.as_object().map(|o| o.len()), Some(1));
}

#[test]
fn healthz_is_never_delayed_or_failed() {
    let backend = Backend::start(&["--fail-rate", "1", "--latency-ms", "5000"]);
    let started = Instant::now();
    let (status, body) = http_get(backend.port, "/healthz", &[]);
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "healthz waited for --latency-ms"
    );
    let (status, body) = http_get(backend.port, "/?sleep_ms=1", &[]);
    assert_eq!(status, 500);
    assert!(body.contains("injected failure"), "{body}");
}

#[test]
fn latency_delays_responses_unless_sleep_ms_overrides_it() {
    let backend = Backend::start(&["--latency-ms", "300"]);
    let started = Instant::now();
    let (status, _) = http_get(backend.port, "/", &[]);
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let (status, _) = http_get(backend.port, "/?sleep_ms=600", &[]);
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(600));
    let (status, body) = http_get(backend.port, "/?sleep_ms=later", &[]);
    assert_eq!(status, 400, "{body}");
}

#[test]
fn fail_rate_fails_about_that_fraction() {
    let backend = Backend::start(&["--fail-rate", "0.5"]);
    let summary = load_json(&[
        "--target",
        &backend.url("/"),
        "--rps",
        "200",
        "--duration",
        "1s",
    ]);
    let sent = count(&summary, "/requests_sent");
    let failed = count(&summary, "/status/5xx");
    assert_eq!(sent, 200);
    assert_eq!(count(&summary, "/status/2xx") + failed, sent, "{summary}");
    assert!(
        (40..=160).contains(&failed),
        "{failed} of {sent} failed at --fail-rate 0.5"
    );
}

#[test]
fn backend_speaks_h2c_with_prior_knowledge() {
    let backend = Backend::start(&[]);
    let (status, version, body) = common::h2c_get(
        format!("127.0.0.1:{}", backend.port).parse().expect("addr"),
        "/h2",
        "carol",
    );
    assert_eq!(status, 200);
    assert_eq!(version, http::Version::HTTP_2);
    let echo: Value = serde_json::from_slice(&body).expect("echo is JSON");
    assert_eq!(echo["version"], "HTTP/2");
    assert_eq!(echo["path"], "/h2");
    assert_eq!(echo["headers"]["x-user-id"], "carol");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_and_exits_zero() {
    let mut backend = Backend::start(&[]);
    let port = backend.port;
    let slow = thread::spawn(move || http_get(port, "/slow?sleep_ms=3000", &[]));
    thread::sleep(Duration::from_millis(800));
    let pid = backend.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());

    // The listener closes promptly while the slow request is still running.
    let poll_until = Instant::now() + Duration::from_secs(2);
    let mut refused = false;
    while Instant::now() < poll_until && !refused {
        refused = TcpStream::connect(("127.0.0.1", port)).is_err();
        thread::sleep(Duration::from_millis(50));
    }

    let (status, body) = slow.join().expect("slow request thread");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sleep_ms=3000"), "{body}");
    let exit = backend.child.wait().expect("backend exits");
    assert!(exit.success(), "backend exit status {exit:?}");
    assert!(refused, "the backend kept accepting after SIGTERM");
}

#[test]
fn load_sends_the_target_rate_from_many_users() {
    let backend = Backend::start(&["--record-users"]);
    let summary = load_json(&[
        "--target",
        &backend.url("/api"),
        "--rps",
        "100",
        "--users",
        "20",
        "--duration",
        "2s",
    ]);
    let sent = count(&summary, "/requests_sent");
    assert_eq!(count(&summary, "/requests_scheduled"), 200, "{summary}");
    assert!((150..=200).contains(&sent), "{summary}");
    assert_eq!(count(&summary, "/status/2xx"), sent, "{summary}");
    let achieved = summary["achieved_rps"].as_f64().expect("achieved_rps");
    assert!((50.0..=150.0).contains(&achieved), "{summary}");
    for key in ["p50", "p95", "p99", "max"] {
        assert!(
            summary["latency_ms"][key]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{summary}"
        );
    }

    let tally = backend.user_tally();
    assert_eq!(count(&tally, "/requests"), sent, "{tally}");
    let users = tally["users"].as_object().expect("users");
    assert!((10..=20).contains(&users.len()), "{tally}");
    assert!(
        users.keys().all(|user| user.starts_with("user-")),
        "{tally}"
    );
    assert_eq!(count(&summary, "/distinct_users"), users.len() as u64);
}

#[test]
fn load_prints_progress_and_a_readable_summary() {
    let backend = Backend::start(&["--fixed-body"]);
    let url = backend.url("/");
    let output = prescale(&[
        "load",
        "--target",
        &url,
        "--rps",
        "50",
        "--duration",
        "1500ms",
        "--progress",
        "500ms",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("req/s achieved"), "{stdout}");
    assert!(stdout.contains("p99"), "{stdout}");
    assert!(stderr.contains("load:"), "no progress line in {stderr}");
}

#[test]
fn load_replays_a_trace_at_speed() {
    let backend = Backend::start(&["--record-users"]);
    // Steps of 60 s at 120x: 0.5 s each; 20 + 40 + (missing step) + 20 requests in 2 s.
    let summary = load_json(&[
        "--target",
        &backend.url("/"),
        "--trace",
        &fixture("trace-small.csv"),
        "--speedup",
        "120",
        "--users",
        "10",
    ]);
    assert_eq!(count(&summary, "/requests_scheduled"), 80, "{summary}");
    assert_eq!(count(&summary, "/requests_sent"), 80, "{summary}");
    assert_eq!(count(&summary, "/status/2xx"), 80, "{summary}");
    let tally = backend.user_tally();
    assert_eq!(count(&tally, "/requests"), 80, "{tally}");
    assert!(
        tally["users"]
            .as_object()
            .is_some_and(|users| users.len() <= 10),
        "{tally}"
    );

    // --duration cuts the replay short: only the first two steps fit in one second.
    let summary = load_json(&[
        "--target",
        &backend.url("/"),
        "--trace",
        &fixture("trace-small.csv"),
        "--speedup",
        "120",
        "--duration",
        "1s",
    ]);
    assert_eq!(count(&summary, "/requests_scheduled"), 60, "{summary}");
}

#[test]
fn load_replays_azure_functions_as_users() {
    let backend = Backend::start(&["--record-users"]);
    // Three minutes at 120x: 1.5 s.
    let summary = load_json(&[
        "--target",
        &backend.url("/fn"),
        "--azure",
        &fixture("azure-small.csv"),
        "--speedup",
        "120",
    ]);
    assert_eq!(count(&summary, "/requests_sent"), 16, "{summary}");
    assert_eq!(count(&summary, "/distinct_users"), 3, "{summary}");
    let tally = backend.user_tally();
    assert_eq!(count(&tally, "/users/fn-f00d0001"), 8, "{tally}");
    assert_eq!(count(&tally, "/users/fn-f00d0002"), 5, "{tally}");
    assert_eq!(count(&tally, "/users/fn-f00d0003"), 3, "{tally}");
}

#[test]
fn load_counts_connection_failures_as_errors() {
    // Bound but not listening, for the whole test: every connection is refused, and no other
    // test's listener can be given this port meanwhile.
    let refusing =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    refusing
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = refusing
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    let target = format!("http://127.0.0.1:{port}/");
    let summary = load_json(&["--target", &target, "--rps", "20", "--duration", "1s"]);
    let sent = count(&summary, "/requests_sent");
    assert!(sent > 0);
    assert_eq!(count(&summary, "/status/errors"), sent, "{summary}");
    assert!(summary["first_error"].is_string(), "{summary}");
}

#[test]
fn bad_backend_arguments_exit_2_naming_the_flag() {
    assert_bad_input(&["backend", "--listen", "nowhere"], "--listen");
    assert_bad_input(
        &["backend", "--listen", "127.0.0.1:0", "--fail-rate", "1.5"],
        "--fail-rate",
    );
    assert_bad_input(
        &["backend", "--listen", "127.0.0.1:0", "--fail-rate", "-0.1"],
        "--fail-rate",
    );
    assert_bad_input(
        &[
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            "999999",
        ],
        "--latency-ms",
    );
    assert_bad_input(
        &["backend", "--listen", "127.0.0.1:0", "--threads", "0"],
        "--threads",
    );
    assert_bad_input(
        &["backend", "--listen", "127.0.0.1:0", "--threads", "100000"],
        "--threads",
    );
}

#[test]
fn bad_load_inputs_exit_2_with_a_clear_message() {
    let target = ["--target", "http://127.0.0.1:9/"];
    let load = |rest: &[&str]| -> Vec<String> {
        ["load"]
            .iter()
            .chain(&target)
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    };
    let check = |rest: &[&str], expected: &str| {
        let args = load(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_bad_input(&args, expected);
    };
    check(
        &["--trace", &fixture("no-such-trace.csv")],
        "no-such-trace.csv",
    );
    check(
        &["--trace", &fixture("trace-malformed.csv")],
        "trace-malformed.csv, line 3",
    );
    check(
        &["--trace", &fixture("trace-unsorted.csv")],
        "trace-unsorted.csv, line 4",
    );
    check(
        &["--azure", &fixture("azure-malformed.csv")],
        "azure-malformed.csv, line 3",
    );
    check(
        &["--azure", &fixture("azure-small.csv"), "--users", "5"],
        "--users",
    );
    check(
        &["--rps", "10", "--trace", &fixture("trace-small.csv")],
        "--trace",
    );
    check(&["--rps", "10", "--speedup", "60"], "--speedup");
    check(&["--rps", "0"], "--rps");
    check(&["--rps", "-5"], "--rps");
    check(&["--rps", "10", "--duration", "0s"], "--duration");
    check(&["--rps", "10", "--duration", "soon"], "--duration");
    check(&["--rps", "10", "--concurrency", "0"], "--concurrency");
    check(&[], "--rps");
    assert_bad_input(
        &["load", "--target", "https://127.0.0.1:9/", "--rps", "1"],
        "--target",
    );
}

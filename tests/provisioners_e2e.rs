//! The remote provisioners end to end, each under a real `prescale up --config … --speedup 60`
//! whose proxy routes to the fleet's configured backend (a real `prescale backend`):
//!
//! * `exec`: a script that records its calls (arguments and stdin) and reports the counts, and
//!   one that fails — its stderr in `/api/v1/plan`, retried, counted in the metrics, never
//!   lowering the plan, and not called at all in forecast-only mode;
//! * `webhook`: a receiver in this test that fails twice, then recovers: every request signed
//!   (HMAC-SHA256), each plan version applied exactly once, a restarted forecaster starting from
//!   what was carried out, nothing sent in forecast-only mode;
//! * `kubernetes`: a fake API server in this test speaking the Deployment and its scale
//!   subresource (no cluster can run here): replicas patched, ready replicas read back, scale-in
//!   one replica per step, each step after the last one settled.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// A running `prescale up`.
struct Up {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Up {
    fn plan(&self) -> serde_json::Value {
        let r = get(self.admin, "/api/v1/plan", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn fleet(&self, name: &str) -> serde_json::Value {
        let plan = self.plan();
        plan["fleets"]
            .as_array()
            .and_then(|fleets| fleets.iter().find(|f| f["fleet"] == name).cloned())
            .unwrap_or_else(|| panic!("no fleet {name} in {plan}"))
    }

    fn metrics(&self) -> String {
        get(self.admin, "/metrics", &[]).text()
    }

    fn set_forecast_only(&self, on: bool) {
        let body = format!("{{\"forecast_only\": {on}}}");
        let r = request(self.admin, "POST", "/api/v1/mode", &[], body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Waits for `done` on the plan view, naming `what` (and showing the last view and the
    /// log) when it does not come.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let plan = self.plan();
            if done(&plan) {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("timed out waiting for {what}; plan:\n{plan:#}\nlog:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(mut self) {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "up exited with {status}");
    }
}

/// Starts `prescale up --config CONFIG --speedup 60` with its state in `state` and `env` set.
fn start_up(dir: &Path, state: &Path, config: &Path, env: &[(&str, &str)]) -> Up {
    let (proxy, admin) = (loopback(), loopback());
    let log = dir.join(format!("up-{}.log", admin.port()));
    let args = up_args(state, proxy, admin, Some(config), None);
    let child = Command::new(bin())
        .args(&args)
        .envs(env.iter().copied())
        .env("PRESCALE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("up-{}.out", admin.port()))).expect("out"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn prescale up");
    let proc = Proc {
        child,
        name: "up".to_string(),
    };
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(60), &log);
    Up {
        proc,
        proxy,
        admin,
        log,
    }
}

/// A config in `dir` (its own subdirectory `name`) for `up-1` in region `local` with `rest`.
fn config(dir: &Path, name: &str, rest: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("config dir");
    up_config(&sub, rest)
}

fn get_u64(value: &serde_json::Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(|v| v.as_u64()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// exec

/// A script that records each call (its arguments one per line, its stdin) in `dir` and prints
/// the instances it was asked for as ready.
const RECORDING_SCRIPT: &str = r#"dir=$1; shift
n=$(ls "$dir" | grep -c '\.args$')
printf '%s\n' "$@" > "$dir/call-$n.args.tmp"
cat > "$dir/call-$n.json"
mv "$dir/call-$n.args.tmp" "$dir/call-$n.args"
while [ $# -gt 0 ]; do
  if [ "$1" = "--instances" ]; then echo "{\"ready\": $2}"; fi
  shift
done
"#;

/// The calls the recording script wrote: arguments and the stdin document, in order.
fn recorded_calls(dir: &Path) -> Vec<(Vec<String>, serde_json::Value)> {
    let mut calls = Vec::new();
    for n in 0.. {
        let Ok(args) = std::fs::read_to_string(dir.join(format!("call-{n}.args"))) else {
            break;
        };
        let stdin = std::fs::read_to_string(dir.join(format!("call-{n}.json"))).expect("stdin");
        let document = serde_json::from_str(&stdin)
            .unwrap_or_else(|e| panic!("call {n}: stdin is not JSON ({e}): {stdin:?}"));
        calls.push((args.lines().map(str::to_string).collect(), document));
    }
    calls
}

fn argument(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[test]
fn exec_runs_the_command_with_the_counts_and_a_failing_one_is_retried_counted_and_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let calls_dir = dir.path().join("calls");
    std::fs::create_dir_all(&calls_dir).expect("calls dir");
    let record = dir.path().join("record.sh");
    std::fs::write(&record, RECORDING_SCRIPT).expect("script");
    let fail = dir.path().join("fail.sh");
    std::fs::write(
        &fail,
        "echo 'pool api: no capacity left in zone b' >&2\nexit 1\n",
    )
    .expect("script");
    let (_web_backend, web_addr) = start_backend("exec-web", None, &[]);
    let (_api_backend, api_addr) = start_backend("exec-api", None, &[]);
    let config = config(
        dir.path(),
        "exec",
        &format!(
            r#"default_fleet = "web"

[[fleets]]
name = "web"
region = "local"
backends = ["{web_addr}"]
[fleets.provisioner]
kind = "exec"
command = ["/bin/sh", "{record}", "{calls}"]

[[fleets]]
name = "api"
region = "local"
backends = ["{api_addr}"]
[fleets.provisioner]
kind = "exec"
command = ["/bin/sh", "{fail}"]

[planner]
baseline_instances = 2
"#,
            record = record.display(),
            calls = calls_dir.display(),
            fail = fail.display(),
        ),
    );
    let up = start_up(dir.path(), &dir.path().join("state"), &config, &[]);

    // The recording command ran for the plan's two instances and reported them ready.
    up.wait_for("web's exec call", |plan| {
        let web = plan["fleets"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["fleet"] == "web"))
            .cloned()
            .unwrap_or_default();
        get_u64(&web, "/provisioner/remote/applied/instances") == 2
            && get_u64(&web, "/instances/ready") == 2
    });
    let web = up.fleet("web");
    assert_eq!(web["provisioner"]["kind"], "exec", "{web}");
    assert_eq!(web["provisioner"]["remote"]["counts"], "reported", "{web}");
    assert!(
        web["backends"].as_array().is_some_and(|b| b.is_empty()),
        "{web}"
    );
    let calls = recorded_calls(&calls_dir);
    assert!(!calls.is_empty());
    let (args, document) = &calls[0];
    let version: u64 = argument(args, "--plan-version")
        .and_then(|v| v.parse().ok())
        .expect("a plan version");
    assert!(version >= 1);
    assert_eq!(
        args[..8],
        [
            "--region",
            "local",
            "--fleet",
            "web",
            "--instances",
            "2",
            "--baseline",
            "2"
        ],
        "{args:?}"
    );
    for name in [
        "--predictive",
        "--burst",
        "--guard",
        "--warm-pool",
        "--total",
    ] {
        assert!(
            argument(args, name).is_some_and(|v| v.parse::<u32>().is_ok()),
            "{name}: {args:?}"
        );
    }
    assert_eq!(document["region"], "local");
    assert_eq!(document["fleet"], "web");
    assert_eq!(document["instances"], 2);
    assert_eq!(document["plan_version"], version);
    assert_eq!(document["tiers"]["baseline"], 2);
    assert!(
        document["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{document}"
    );
    // Called again only for another capacity: no two calls in a row ask for the same.
    for pair in calls.windows(2) {
        let capacity = |d: &serde_json::Value| (d["instances"].clone(), d["tiers"].clone());
        assert_ne!(capacity(&pair[0].1), capacity(&pair[1].1), "{calls:?}");
    }

    // The failing command: retried, counted, its stderr shown; the plan still wants two.
    up.wait_for("api's failures", |plan| {
        let api = plan["fleets"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["fleet"] == "api"))
            .cloned()
            .unwrap_or_default();
        get_u64(&api, "/provisioner/start_failures_total") >= 2
    });
    let api = up.fleet("api");
    let provisioner = &api["provisioner"];
    let message = provisioner["last_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("pool api: no capacity left in zone b"),
        "{api}"
    );
    assert!(message.contains("exit status: 1"), "{api}");
    assert!(get_u64(provisioner, "/remote/calls/error") >= 2, "{api}");
    assert_eq!(
        get_u64(provisioner, "/remote/pending/instances"),
        2,
        "{api}"
    );
    assert_eq!(api["planned"], 2, "a failure never lowers the plan: {api}");
    assert_eq!(provisioner["desired"], 2, "{api}");
    assert!(provisioner["remote"]["applied"].is_null(), "{api}");
    let metrics = up.metrics();
    let api_errors = metric_sum(
        &metrics,
        "prescale_provisioner_calls_total",
        &[("fleet", "api"), ("call", "apply"), ("outcome", "error")],
    );
    assert!(api_errors >= 2.0, "{metrics}");
    assert!(
        metric_sum(
            &metrics,
            "prescale_provisioner_start_failures_total",
            &[("fleet", "api"), ("provisioner", "exec")]
        ) >= 2.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_provisioner_pending",
            &[("fleet", "api")]
        ),
        1.0
    );
    assert!(
        metric_sum(
            &metrics,
            "prescale_provisioner_calls_total",
            &[("fleet", "web"), ("call", "apply"), ("outcome", "ok")]
        ) >= 1.0
    );

    // The proxies route to the fleet's configured backend.
    let served = get(up.proxy, "/hello", &[("X-User-Id", "alice")]);
    assert_eq!(served.status, 200, "{}", served.text());

    // Forecast-only: the retry that is due does not happen. (The driver takes the switch at its
    // next step; a call already under way then may still end.)
    up.set_forecast_only(true);
    up.wait_for("forecast-only mode", |plan| plan["forecast_only"] == true);
    std::thread::sleep(Duration::from_secs(1));
    let api = up.fleet("api");
    let failures = get_u64(&api, "/provisioner/start_failures_total");
    let retry_at = get_u64(&api, "/provisioner/retry_at_ms");
    let view_ms = get_u64(&up.plan(), "/at_ms");
    // Past the retry that was due (node time), with a few real seconds to spare.
    let due = retry_at.max(view_ms) + 3 * 60_000;
    up.wait_for("node time past the due retry", |plan| {
        plan["forecast_only"] == true && get_u64(plan, "/at_ms") > due
    });
    let api = up.fleet("api");
    assert_eq!(
        get_u64(&api, "/provisioner/start_failures_total"),
        failures,
        "nothing is called in forecast-only mode: {api}"
    );
    let web_calls = recorded_calls(&calls_dir).len();
    up.set_forecast_only(false);
    up.wait_for("the retries to resume", |plan| {
        plan["fleets"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["fleet"] == "api"))
            .is_some_and(|api| get_u64(api, "/provisioner/start_failures_total") > failures)
    });
    assert_eq!(
        recorded_calls(&calls_dir).len(),
        web_calls,
        "web's target did not change"
    );
    up.stop();
}

// ---------------------------------------------------------------------------------------------
// webhook

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    key: String,
    version: u64,
    signature: String,
    body: Vec<u8>,
    /// The answer's status.
    status: u16,
}

/// A webhook receiver: fails the first `fail_first` requests with 503, then applies each
/// Idempotency-Key at most once (a repeat is answered 200 without applying it again) and answers
/// the counts it now runs.
#[derive(Default)]
struct Receiver {
    fail_first: usize,
    requests: Vec<Received>,
    /// Effective changes: (plan version, instances).
    applied: Vec<(u64, u64)>,
    running: u64,
}

fn serve_receiver(receiver: Arc<Mutex<Receiver>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let receiver = Arc::clone(&receiver);
            std::thread::spawn(move || {
                serve_connection(stream, |method, path, headers, body| {
                    if (method, path) != ("POST", "/v1/desired") {
                        return (404, "{}".to_string());
                    }
                    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
                    let mut r = receiver.lock().unwrap();
                    let document: serde_json::Value =
                        serde_json::from_slice(body).unwrap_or_default();
                    let mut received = Received {
                        key: header("idempotency-key"),
                        version: header("x-prescale-plan-version").parse().unwrap_or(0),
                        signature: header("x-prescale-signature"),
                        body: body.to_vec(),
                        status: 503,
                    };
                    if r.requests.len() < r.fail_first {
                        r.requests.push(received);
                        return (503, r#"{"error":"scaler restarting"}"#.to_string());
                    }
                    received.status = 200;
                    let seen = r
                        .requests
                        .iter()
                        .any(|q| q.status == 200 && q.key == received.key);
                    r.requests.push(received);
                    if !seen {
                        let instances = document["instances"].as_u64().unwrap_or(0);
                        let version = document["plan_version"].as_u64().unwrap_or(0);
                        r.applied.push((version, instances));
                        r.running = instances;
                    }
                    (200, format!("{{\"ready\": {}}}", r.running))
                })
            });
        }
    });
    addr
}

/// Serves HTTP/1.1 requests on one connection (keep-alive) with `handle(method, path,
/// lower-case headers, body) -> (status, JSON body)`.
fn serve_connection(
    stream: TcpStream,
    mut handle: impl FnMut(&str, &str, &BTreeMap<String, String>, &[u8]) -> (u16, String),
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = handle(&method, &path, &headers, &body);
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            _ => "Service Unavailable",
        };
        let written = write!(
            reader.get_mut(),
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if written.is_err() {
            return;
        }
    }
}

fn signature_is_valid(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or(())
        })
        .collect::<Result<Vec<u8>, ()>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, body, &tag).is_ok()
}

const HOOK_KEY: &str = "e2e-webhook-key-0123456789";

/// What prescale keeps whatever the receiver does: every request signed with the key, one body
/// per plan version (the Idempotency-Key, the version header and the body agree), and a version
/// never sent again once the receiver took it — so a receiver that applies one change per plan
/// version applies each change exactly once.
fn check_requests(requests: &[Received]) {
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
    for q in requests {
        assert!(
            signature_is_valid(HOOK_KEY.as_bytes(), &q.body, &q.signature),
            "{q:?}"
        );
        assert!(!signature_is_valid(b"another key", &q.body, &q.signature));
        let document: serde_json::Value = serde_json::from_slice(&q.body).expect("json body");
        let version = document["plan_version"].as_u64().expect("plan_version");
        assert_eq!(q.version, version, "{q:?}");
        assert_eq!(q.key, format!("local/web/{version}"), "{q:?}");
        if let Some(first) = bodies.insert(&q.key, &q.body) {
            assert_eq!(first, &q.body[..], "a retry sends the same body: {q:?}");
        }
        if q.status == 200 {
            *taken.entry(&q.key).or_default() += 1;
        }
    }
    assert!(
        taken.values().all(|&n| n == 1),
        "a plan version taken is not sent again: {taken:?}"
    );
}

fn webhook_config(
    dir: &Path,
    name: &str,
    hook: SocketAddr,
    backend: SocketAddr,
    baseline: u32,
    forecast_only: bool,
    state: &Path,
) -> PathBuf {
    config(
        dir,
        name,
        &format!(
            r#"
[[fleets]]
name = "web"
region = "local"
backends = ["{backend}"]
[fleets.provisioner]
kind = "webhook"
url = "http://{hook}/v1/desired"
secret_env = "PRESCALE_E2E_HOOK_KEY"
timeout_secs = 5

[forecaster]
listen = "127.0.0.1:0"
database = "{database}"
forecast_only = {forecast_only}

[mesh]
ca = "{certs}/ca.pem"
cert = "{certs}/up-1.pem"
key = "{certs}/up-1.key.pem"

[planner]
baseline_instances = {baseline}
"#,
            database = state.join("series.db").display(),
            certs = state.join("certs").display(),
        ),
    )
}

#[test]
fn webhook_survives_a_failing_receiver_with_one_signed_change_per_plan_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let receiver = Arc::new(Mutex::new(Receiver {
        fail_first: 2,
        ..Receiver::default()
    }));
    let hook = serve_receiver(Arc::clone(&receiver));
    let (_backend, backend) = start_backend("hook-web", None, &[]);
    let env = [("PRESCALE_E2E_HOOK_KEY", HOOK_KEY)];
    // The configs carry their own [forecaster] (for forecast_only), which needs the mesh's
    // certificates.
    std::fs::create_dir_all(&state).expect("state dir");
    write_certs(&state.join("certs"), &["up-1"]);

    let first = webhook_config(dir.path(), "first", hook, backend, 2, false, &state);
    let up = start_up(dir.path(), &state, &first, &env);
    up.wait_for("the first change carried out", |plan| {
        get_u64(plan, "/fleets/0/provisioner/remote/applied/instances") == 2
    });
    let (v1, requests) = {
        let r = receiver.lock().unwrap();
        let last = *r.applied.last().expect("a change");
        assert_eq!(last.1, 2, "{:?}", r.applied);
        (last.0, r.requests.clone())
    };
    // Two failures, then everything taken at the first try; one body per plan version.
    let statuses: Vec<u16> = requests.iter().map(|q| q.status).collect();
    assert_eq!(statuses[..2], [503, 503], "{requests:?}");
    assert!(statuses[2..].iter().all(|&s| s == 200), "{requests:?}");
    check_requests(&requests);
    let taken = requests
        .iter()
        .rev()
        .find(|q| q.status == 200)
        .expect("taken");
    let document: serde_json::Value = serde_json::from_slice(&taken.body).expect("json");
    assert_eq!(document["instances"], 2);
    assert_eq!(document["plan_version"], v1);
    assert_eq!(document["region"], "local");
    assert_eq!(document["tiers"]["baseline"], 2);
    assert_eq!(document["tiers"]["total"], 2);
    assert!(
        document["warm_pools"].is_array() && document["reasons"].is_array(),
        "{document}"
    );
    let web = up.fleet("web");
    let provisioner = &web["provisioner"];
    assert_eq!(get_u64(provisioner, "/remote/calls/error"), 2, "{web}");
    assert_eq!(
        get_u64(provisioner, "/remote/calls/ok"),
        statuses.len() as u64 - 2,
        "{web}"
    );
    assert_eq!(
        get_u64(provisioner, "/remote/applied/plan_version"),
        v1,
        "{web}"
    );
    assert_eq!(provisioner["remote"]["counts"], "reported", "{web}");
    assert_eq!(
        get_u64(&web, "/instances/ready"),
        2,
        "the receiver's answer: {web}"
    );
    assert!(
        provisioner["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("503") && m.contains("scaler restarting")),
        "{web}"
    );
    let shown = format!("{web}");
    assert!(!shown.contains(HOOK_KEY), "the key never shows: {shown}");
    assert!(!up.metrics().contains(HOOK_KEY));
    up.stop();
    let sent_by_the_first_run = receiver.lock().unwrap().requests.len();

    // Restarted in forecast-only mode with a baseline of 3: it starts from the two instances it
    // carried out, plans three, and asks for nothing.
    let second = webhook_config(dir.path(), "second", hook, backend, 3, true, &state);
    let up = start_up(dir.path(), &state, &second, &env);
    up.wait_for("the plan for three", |plan| {
        plan["forecast_only"] == true && get_u64(plan, "/fleets/0/planned") == 3
    });
    let web = up.fleet("web");
    assert_eq!(
        get_u64(&web, "/instances/ready"),
        2,
        "it starts where it was: {web}"
    );
    assert_eq!(web["provisioner"]["remote"]["counts"], "assumed", "{web}");
    let settled_at = get_u64(&up.plan(), "/at_ms");
    up.wait_for("a few node minutes in forecast-only mode", |plan| {
        get_u64(plan, "/at_ms") > settled_at + 3 * 60_000
    });
    assert_eq!(
        receiver.lock().unwrap().requests.len(),
        sent_by_the_first_run,
        "nothing sent in forecast-only mode"
    );
    up.set_forecast_only(false);
    up.wait_for("the second change carried out", |plan| {
        get_u64(plan, "/fleets/0/provisioner/remote/applied/instances") == 3
    });
    let r = receiver.lock().unwrap();
    let (v2, _) = *r
        .applied
        .iter()
        .find(|(_, instances)| *instances == 3)
        .unwrap_or_else(|| panic!("no change to three: {:?}", r.applied));
    assert!(v2 > v1, "versions rise across restarts: {v1} then {v2}");
    let for_v2: Vec<u16> = r
        .requests
        .iter()
        .filter(|q| q.key == format!("local/web/{v2}"))
        .map(|q| q.status)
        .collect();
    assert_eq!(for_v2, [200], "the recovered receiver took it at once");
    // Exactly one effective change per plan version, every request validly signed.
    check_requests(&r.requests);
    drop(r);
    up.stop();
}

// ---------------------------------------------------------------------------------------------
// kubernetes

/// A fake API server for Deployment `shop/web`: `GET` of the deployment and `PATCH` of its
/// scale subresource. After a change the status (replicas, ready replicas, observed
/// generation) catches up with the spec 300 ms later, as a controller would.
struct FakeCluster {
    spec: i64,
    status: i64,
    generation: i64,
    observed: i64,
    changed: Instant,
    /// Each PATCH: the replicas asked for and `status.replicas` when it came.
    patches: Vec<(i64, i64)>,
    /// Requests this fake does not know.
    unknown: Vec<String>,
}

impl FakeCluster {
    fn catch_up(&mut self) {
        if self.changed.elapsed() >= Duration::from_millis(300) {
            self.status = self.spec;
            self.observed = self.generation;
        }
    }
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

fn serve_cluster(cluster: Arc<Mutex<FakeCluster>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake API server");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let cluster = Arc::clone(&cluster);
            std::thread::spawn(move || {
                serve_connection(stream, |method, path, headers, body| {
                    let mut c = cluster.lock().unwrap();
                    c.catch_up();
                    match (method, path) {
                        ("GET", DEPLOYMENT) => (
                            200,
                            serde_json::json!({
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "metadata": { "name": "web", "namespace": "shop", "generation": c.generation },
                                "spec": { "replicas": c.spec },
                                "status": {
                                    "observedGeneration": c.observed,
                                    "replicas": c.status,
                                    "readyReplicas": c.status.min(c.spec),
                                }
                            })
                            .to_string(),
                        ),
                        ("PATCH", p) if p == format!("{DEPLOYMENT}/scale") => {
                            let kind = headers.get("content-type").cloned().unwrap_or_default();
                            let patch: serde_json::Value =
                                serde_json::from_slice(body).unwrap_or_default();
                            let Some(replicas) = patch["spec"]["replicas"].as_i64() else {
                                c.unknown.push(format!("PATCH without spec.replicas: {patch}"));
                                return (404, "{}".into());
                            };
                            if kind != "application/merge-patch+json" {
                                c.unknown.push(format!("PATCH as {kind}"));
                            }
                            let status = c.status;
                            c.patches.push((replicas, status));
                            c.spec = replicas;
                            c.generation += 1;
                            c.changed = Instant::now();
                            (
                                200,
                                serde_json::json!({
                                    "apiVersion": "autoscaling/v1",
                                    "kind": "Scale",
                                    "metadata": { "name": "web", "namespace": "shop" },
                                    "spec": { "replicas": c.spec },
                                    "status": { "replicas": c.status }
                                })
                                .to_string(),
                            )
                        }
                        _ => {
                            c.unknown.push(format!("{method} {path}"));
                            (404, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#.into())
                        }
                    }
                })
            });
        }
    });
    addr
}

fn kubeconfig(dir: &Path, api: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: prescale\ncurrent-context: fake\nusers:\n- name: prescale\n  user:\n    token: e2e-token\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

fn kubernetes_config(
    dir: &Path,
    name: &str,
    kubeconfig: &Path,
    backend: SocketAddr,
    baseline: u32,
) -> PathBuf {
    config(
        dir,
        name,
        &format!(
            r#"
[[fleets]]
name = "web"
region = "local"
backends = ["{backend}"]
cold_start_secs = 60
[fleets.provisioner]
kind = "kubernetes"
namespace = "shop"
deployment = "web"
kubeconfig = "{kubeconfig}"
scale_in_step = 1
timeout_secs = 5

[planner]
baseline_instances = {baseline}
stabilization_minutes = 1
"#,
            kubeconfig = kubeconfig.display(),
        ),
    )
}

#[test]
fn kubernetes_sets_replicas_reads_ready_ones_back_and_scales_in_by_settled_steps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let cluster = Arc::new(Mutex::new(FakeCluster {
        spec: 0,
        status: 0,
        generation: 1,
        observed: 1,
        changed: Instant::now(),
        patches: Vec::new(),
        unknown: Vec::new(),
    }));
    let api = serve_cluster(Arc::clone(&cluster));
    let kubeconfig = kubeconfig(dir.path(), api);
    let (_backend, backend) = start_backend("k8s-web", None, &[]);

    // Out: from no replicas to the baseline of three in one change; ready ones read back.
    let out = kubernetes_config(dir.path(), "out", &kubeconfig, backend, 3);
    let up = start_up(dir.path(), &state, &out, &[]);
    up.wait_for("three ready replicas", |plan| {
        get_u64(plan, "/fleets/0/instances/ready") == 3
            && get_u64(plan, "/fleets/0/provisioner/remote/applied/instances") == 3
    });
    assert_eq!(cluster.lock().unwrap().patches, [(3, 0)]);
    let web = up.fleet("web");
    assert_eq!(web["provisioner"]["kind"], "kubernetes", "{web}");
    assert_eq!(web["provisioner"]["remote"]["counts"], "reported", "{web}");
    assert!(get_u64(&web, "/provisioner/remote/reads/ok") >= 1, "{web}");
    let metrics = up.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_fleet_ready_instances",
            &[("fleet", "web")]
        ),
        3.0
    );
    assert!(
        metric_sum(
            &metrics,
            "prescale_provisioner_calls_total",
            &[
                ("provisioner", "kubernetes"),
                ("call", "read"),
                ("outcome", "ok")
            ]
        ) >= 1.0
    );
    up.stop();

    // In: restarted with a baseline of one, it holds the three it found through the cold
    // window, then goes down one replica per step, each step once the last one settled.
    let inward = kubernetes_config(dir.path(), "in", &kubeconfig, backend, 1);
    let up = start_up(dir.path(), &state, &inward, &[]);
    up.wait_for("one ready replica", |plan| {
        get_u64(plan, "/fleets/0/instances/ready") == 1
            && get_u64(plan, "/fleets/0/provisioner/remote/applied/instances") == 1
    });
    let c = cluster.lock().unwrap();
    assert_eq!(
        c.patches,
        [(3, 0), (2, 3), (1, 2)],
        "each scale-in step came after the last one settled"
    );
    assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    drop(c);
    let web = up.fleet("web");
    assert!(
        web["provisioner"]["remote"]["last_note"]
            .as_str()
            .is_some_and(|n| n.contains("replicas 2 → 1")),
        "{web}"
    );
    up.stop();
}

//! End-to-end tests of the data plane through the real binary: routing by identity, region and
//! profile; metrics and profiles in the admin API; passive ejection and recovery; graceful
//! shutdown; hostile requests; HTTP/2; HTTPS (HTTP/1.1 and h2 by ALPN).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

struct Node {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn metrics(&self) -> String {
        get(self.admin, "/metrics", &[]).text()
    }

    /// Metrics once `ready` holds: requests are counted in the logging phase, just after their
    /// response went out, so a scrape right after a response may not include it yet.
    fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = self.metrics();
            if ready(&metrics) || Instant::now() > deadline {
                return metrics;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Two fleets in region `eu` (web, batch), GeoIP test database, loopback trusted for XFF.
fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    web: &[SocketAddr],
    batch: &[SocketAddr],
    extra: &str,
) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let geo = repo_path("tests/data/geoip/GeoIP2-Country-Test.mmdb");
    format!(
        r#"
[node]
id = "e2e-1"
region = "eu"

[proxy]
listen = "{proxy}"
threads = 2
shutdown_grace_secs = 20

[admin]
listen = "{admin}"

[identity]
secret = "e2e-secret-0123456789"

[network]
trusted_proxies = ["127.0.0.0/8"]

[geo]
database = "{geo}"

[[regions]]
name = "eu"
countries = ["GB", "DE", "FR"]
default_fleet = "web"

[[regions]]
name = "us"
countries = ["US"]

[[fleets]]
name = "web"
region = "eu"
backends = [{web}]
health_check = {{ interval_ms = 200, timeout_ms = 200 }}
eject_after_failures = 1
eject_secs = 1
timeouts = {{ connect_ms = 300, read_ms = 10000 }}

[[fleets]]
name = "batch"
region = "eu"
backends = [{batch}]
health_check = {{ interval_ms = 200, timeout_ms = 200 }}

[[fleets]]
name = "web"
region = "us"
backends = ["127.0.0.1:9"]

[[routes]]
profile = "batch"
fleet = "batch"
region = "eu"

[[profiles]]
name = "batch"
revenue_weight = 0.5
priority = 10

[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/batch", profile = "batch" }}, {{ path_prefix = "/api", profile = "interactive" }}]
{extra}
"#,
        geo = geo.display(),
        web = list(web),
        batch = list(batch),
    )
}

/// `config_text` with loopback no longer a trusted proxy and `proxy_line` added to `[proxy]`.
fn untrusted_config(config_text: &str, proxy_line: &str) -> String {
    config_text
        .replace(
            "trusted_proxies = [\"127.0.0.0/8\"]",
            "trusted_proxies = []",
        )
        .replace(
            "shutdown_grace_secs = 20",
            &format!("shutdown_grace_secs = 20\n{proxy_line}"),
        )
}

fn start_node(config_text: &str) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("prescale.toml");
    std::fs::write(&path, config_text).expect("write config");
    let parsed: toml_addrs::Addrs = toml_addrs::parse(config_text);
    let log = dir.path().join("node.log");
    let proc = start(
        "proxy",
        &["proxy", "--config", path.to_str().expect("utf8 path")],
        &log,
    );
    wait_for_status(parsed.admin, "/healthz", 200, Duration::from_secs(20), &log);
    wait_for_status(parsed.admin, "/readyz", 200, Duration::from_secs(20), &log);
    wait_for_listener(parsed.proxy, Duration::from_secs(20), &log);
    Node {
        proc,
        proxy: parsed.proxy,
        admin: parsed.admin,
        log,
        _dir: dir,
    }
}

/// Just enough TOML reading to find the listeners back in a test config.
mod toml_addrs {
    use std::net::SocketAddr;
    pub struct Addrs {
        pub proxy: SocketAddr,
        pub admin: SocketAddr,
    }
    pub fn parse(text: &str) -> Addrs {
        let mut listens = text
            .lines()
            .filter_map(|l| l.strip_prefix("listen = \""))
            .map(|l| {
                l.trim_end_matches('"')
                    .parse::<SocketAddr>()
                    .expect("listen address")
            });
        let proxy = listens.next().expect("proxy listen");
        let admin = listens.next().expect("admin listen");
        Addrs { proxy, admin }
    }
}

fn addrs() -> (SocketAddr, SocketAddr) {
    (
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
    )
}

#[test]
fn requests_land_in_the_right_fleets_and_counters() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));

    // alice browses the API from Germany, bob runs batch jobs from the US, carol has no id.
    let germany = "2a02:d180::1";
    let us = "214.78.120.1";
    for _ in 0..5 {
        let r = get(
            node.proxy,
            "/api/items",
            &[("X-User-Id", "alice"), ("X-Forwarded-For", germany)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["backend"], "web-1", "{body}");
        // The backend sees the client address chain and the protocol.
        let xff = body["headers"]["x-forwarded-for"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            xff.starts_with(germany) && xff.ends_with("127.0.0.1"),
            "x-forwarded-for was {xff:?}"
        );
        assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    }
    for _ in 0..3 {
        let r = get(
            node.proxy,
            "/batch/export",
            &[("X-User-Id", "bob"), ("X-Forwarded-For", us)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["backend"], "batch-1");
    }
    for _ in 0..2 {
        let r = get(node.proxy, "/index.html", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "web-1");
    }

    let metrics = node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[]) >= 10.0);
    let count = |labels: &[(&str, &str)]| metric_sum(&metrics, "prescale_requests_total", labels);
    assert_eq!(
        count(&[
            ("profile", "interactive"),
            ("region", "eu"),
            ("fleet", "web")
        ]),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        count(&[("profile", "batch"), ("region", "us"), ("fleet", "batch")]),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        count(&[("profile", "default"), ("region", "eu"), ("fleet", "web")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(count(&[("status", "2xx")]), 10.0, "{metrics}");
    assert!(
        metric_sum(
            &metrics,
            "prescale_request_duration_seconds_count",
            &[("profile", "batch")]
        ) == 3.0,
        "{metrics}"
    );
    assert!(metrics.contains("prescale_profile_users{"), "{metrics}");

    let profiles = get(node.admin, "/api/v1/profiles", &[]).json();
    let list = profiles["profiles"].as_array().expect("profiles array");
    let batch_profile = list
        .iter()
        .find(|p| p["name"] == "batch")
        .expect("batch profile listed");
    assert_eq!(batch_profile["users"], 1, "{batch_profile}");
    assert!(
        batch_profile["latency_ms"]["p99"].as_f64().is_some(),
        "{batch_profile}"
    );
    let interactive = list
        .iter()
        .find(|p| p["name"] == "interactive")
        .expect("interactive listed");
    assert_eq!(interactive["requests"], 5, "{interactive}");

    let fleets = get(node.admin, "/api/v1/fleets", &[]).json();
    let names: Vec<&str> = fleets["fleets"]
        .as_array()
        .expect("fleets")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "batch"], "{fleets}");
    assert_eq!(
        fleets["fleets"][0]["backends"][0]["healthy"], true,
        "{fleets}"
    );
}

#[test]
fn dead_backend_gives_502_then_is_ejected_and_recovers() {
    let (web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    assert_eq!(get(node.proxy, "/", &[("X-User-Id", "u1")]).status, 200);

    drop(web_proc); // SIGKILL
    let first = get(node.proxy, "/", &[("X-User-Id", "u1")]);
    assert_eq!(first.status, 502, "{}", first.text());
    // Ejected (passively, and soon by the active check too): a fast 503 with Retry-After.
    let second = get(node.proxy, "/", &[("X-User-Id", "u1")]);
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(second.header("retry-after").is_some(), "{second:?}");

    let (_web_again, _) = start_backend("web-1-again", Some(web.port()), &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(node.proxy, "/", &[("X-User-Id", "u1")]);
        if r.status == 200 {
            assert_eq!(r.json()["backend"], "web-1-again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend did not come back: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = node
        .metrics_when(|m| metric_sum(m, "prescale_requests_total", &[("status", "5xx")]) >= 2.0);
    assert!(
        metric_sum(&metrics, "prescale_requests_total", &[("status", "5xx")]) >= 2.0,
        "{metrics}"
    );
}

#[test]
fn idempotent_requests_retry_on_another_backend() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[dead, web], &[batch], ""));
    for i in 0..6 {
        let r = get(node.proxy, "/", &[("X-User-Id", &format!("user-{i}"))]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["backend"], "web-1");
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let mut node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let target = node.proxy;
    let slow =
        std::thread::spawn(move || get(target, "/slow?sleep_ms=1500", &[("X-User-Id", "patient")]));
    std::thread::sleep(Duration::from_millis(400));
    node.proc.signal("TERM");
    let response = slow.join().expect("slow request thread");
    assert_eq!(response.status, 200, "{}", response.text());
    let status = node.proc.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        std::fs::read_to_string(&node.log).unwrap_or_default()
    );
    // And it no longer accepts connections.
    assert!(try_request(target, "GET", "/", &[], b"").is_err());
}

#[test]
fn hostile_requests_get_4xx_and_the_proxy_stays_up() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));

    let long_id = "x".repeat(300);
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("identity longer than max_len", vec![("X-User-Id", long_id)]),
        ("empty identity", vec![("X-User-Id", String::new())]),
        (
            "malformed forwarded-for",
            vec![("X-Forwarded-For", "not-an-ip".to_string())],
        ),
        ("huge header block", vec![("X-Padding", "p".repeat(20_000))]),
        (
            "empty bearer token",
            vec![("Authorization", "Bearer ".to_string())],
        ),
    ];
    for (what, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match try_request(node.proxy, "GET", "/", &headers, b"") {
            Ok(r) => assert!(
                (400..500).contains(&r.status),
                "{what}: status {} {}",
                r.status,
                r.text()
            ),
            Err(e) => panic!("{what}: connection failed: {e}"),
        }
    }
    // Garbage that is not HTTP at all.
    for raw in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
    ] {
        if let Ok(r) = raw_request(node.proxy, raw) {
            assert!((400..500).contains(&r.status), "raw {raw:?}: {}", r.status);
        }
    }
    // Still serving, and the rejections are counted.
    assert_eq!(get(node.proxy, "/", &[("X-User-Id", "fine")]).status, 200);
    let metrics = node.metrics();
    assert!(
        metric_sum(&metrics, "prescale_rejected_requests_total", &[]) >= 5.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_rejected_requests_total",
            &[("status", "431")]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(get(node.admin, "/healthz", &[]).status, 200);
}

/// One request written as given (`host` lines included), on both request paths: `GET` takes the
/// direct one, `POST` with a chunked body pingora's general one.
fn raw_on(proxy: SocketAddr, method: &str, target: &str, fields: &[&str]) -> HttpResponse {
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    for field in fields {
        head.push_str(field);
        head.push_str("\r\n");
    }
    let body = if method == "POST" {
        "2\r\n{}\r\n0\r\n\r\n"
    } else {
        ""
    };
    if method == "POST" {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    raw_request(proxy, head.as_bytes()).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

#[test]
fn request_heads_are_checked_normalised_and_stripped_alike_on_both_paths() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let host = format!("Host: {proxy}");
    for method in ["GET", "POST"] {
        // Host, RFC 9112 §3.2: exactly one, no userinfo, agreeing with an absolute target.
        let refused: [(&str, Vec<&str>, &str); 5] = [
            ("/", vec![], "needs a Host"),
            (
                "/",
                vec!["Host: a.example", "Host: b.example"],
                "more than one Host",
            ),
            ("/", vec!["Host: user@a.example"], "userinfo"),
            ("/", vec!["Host: a b"], "not a host"),
            ("/a%zz", vec![host.as_str()], "percent-escape"),
        ];
        for (target, fields, why) in &refused {
            let r = raw_on(node.proxy, method, target, fields);
            assert_eq!(r.status, 400, "{method} {target} {fields:?}: {}", r.text());
            // pingora refuses some of these itself on the general path, with a bare 400.
            assert!(
                r.text().contains(why) || (method == "POST" && r.text().is_empty()),
                "{method} {fields:?}: {}",
                r.text()
            );
        }
        if method == "POST" {
            // Absolute form goes to the general path; its authority must be the Host.
            let target = format!("http://{proxy}/api/x");
            let r = raw_on(node.proxy, method, &target, &["Host: other.example"]);
            assert_eq!(r.status, 400, "{}", r.text());
            let r = raw_on(node.proxy, method, &target, &[host.as_str()]);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Routing sees the normalised path, and the backend gets it: `/api/..` is not `/api`.
        let cases = [
            ("/api/../batch/export?job=1", "batch-1", "/batch/export"),
            ("/api/%2e%2e/batch/export", "batch-1", "/batch/export"),
            ("/%61pi/./items", "web-1", "/api/items"),
        ];
        for (target, backend, path) in cases {
            let r = raw_on(
                node.proxy,
                method,
                target,
                &[host.as_str(), "X-User-Id: dora"],
            );
            assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
            let echo = r.json();
            assert_eq!(echo["backend"], backend, "{method} {target}: {echo}");
            assert_eq!(echo["path"], path, "{method} {target}: {echo}");
        }
        let echo = raw_on(
            node.proxy,
            method,
            "/api/../batch/export?job=1",
            &[host.as_str()],
        )
        .json();
        assert_eq!(echo["query"], "job=1", "{echo}");
        // Loopback is a trusted peer here: its forwarding fields pass; names with underscores
        // never do (underscores_in_headers is off by default).
        let echo = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[
                host.as_str(),
                "X-Forwarded-For: 203.0.113.1",
                "X-Forwarded-Host: shop.example",
                "X-Real-IP: 198.51.100.9",
                "X_User_Id: mallory",
            ],
        )
        .json();
        assert_eq!(
            echo["headers"]["x-forwarded-for"], "203.0.113.1, 127.0.0.1",
            "{method} {echo}"
        );
        assert_eq!(
            echo["headers"]["x-forwarded-host"], "shop.example",
            "{echo}"
        );
        assert_eq!(echo["headers"]["x-real-ip"], "198.51.100.9", "{echo}");
        assert_eq!(
            echo["headers"]["x_user_id"],
            serde_json::Value::Null,
            "{echo}"
        );
    }
    drop(node);

    // Loopback untrusted, underscores allowed: a client's forwarding fields are dropped and
    // its own address is the whole X-Forwarded-For.
    let (proxy, admin) = addrs();
    let text = untrusted_config(
        &config(proxy, admin, &[web], &[batch], ""),
        "underscores_in_headers = true",
    );
    let node = start_node(&text);
    let host = format!("Host: {proxy}");
    for method in ["GET", "POST"] {
        let echo = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[
                host.as_str(),
                "X-Forwarded-For: 203.0.113.1",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Host: shop.example",
                "X-Forwarded-Port: 443",
                "X-Real-IP: 198.51.100.9",
                "Forwarded: for=198.51.100.9;proto=https",
                "X_Custom: kept",
            ],
        )
        .json();
        let headers = &echo["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{method} {echo}");
        assert_eq!(headers["x-forwarded-proto"], "http", "{method} {echo}");
        for dropped in [
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "forwarded",
        ] {
            assert_eq!(
                headers[dropped],
                serde_json::Value::Null,
                "{method} {dropped}: {echo}"
            );
        }
        assert_eq!(headers["x_custom"], "kept", "{method} {echo}");
    }
}

#[test]
fn one_client_cannot_churn_the_user_table_with_fresh_ids() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        "secret = \"e2e-secret-0123456789\"",
        "secret = \"e2e-secret-0123456789\"\nnew_users_per_client_per_sec = 5",
    );
    let node = start_node(&text);
    // Loopback is trusted, so X-Forwarded-For names the client: one churns ids, one is real.
    let churner = "203.0.113.50";
    let mut client = KeepAliveClient::connect(node.proxy);
    let started = std::time::Instant::now();
    const FRESH: usize = 200;
    for i in 0..FRESH {
        let raw = format!(
            "GET /api/items HTTP/1.1\r\nHost: {proxy}\r\nX-User-Id: fresh-{i}\r\nX-Forwarded-For: {churner}\r\n\r\n"
        );
        let r = client.send(raw.as_bytes(), false);
        assert_eq!(r.status, 200, "every request is served: {}", r.text());
    }
    let seconds = started.elapsed().as_secs() + 1;
    let r = get(
        node.proxy,
        "/api/items",
        &[
            ("X-User-Id", "real-user"),
            ("X-Forwarded-For", "198.51.100.20"),
        ],
    );
    assert_eq!(r.status, 200);

    let metrics =
        node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[]) >= (FRESH + 1) as f64);
    let resident = metric_sum(&metrics, "prescale_user_table_entries", &[]);
    let limited = metric_sum(&metrics, "prescale_new_users_limited_total", &[]);
    // At most 5 new users in each second the churn spanned, plus the churner's address and the
    // real user.
    let admitted_most = (5 * (seconds + 1) + 2) as f64;
    assert!(
        resident <= admitted_most,
        "{resident} resident after {seconds} s: {metrics}"
    );
    assert!(
        limited >= FRESH as f64 - admitted_most,
        "{limited} limited: {metrics}"
    );
    let lookup = |id: &str| get(node.admin, &format!("/api/v1/users/lookup?id={id}"), &[]);
    assert_eq!(
        lookup("real-user").status,
        200,
        "another client's new user is taken"
    );
    let refused = (0..FRESH)
        .filter(|i| lookup(&format!("fresh-{i}")).status == 404)
        .count();
    assert!(
        refused as f64 >= limited.min(FRESH as f64) - 5.0,
        "{refused} of the churned ids not resident, {limited} limited"
    );
    // Every request was counted, limited ones under the client's address.
    let requests = metric_sum(&metrics, "prescale_requests_total", &[]);
    assert!(requests >= (FRESH + 1) as f64, "{requests}: {metrics}");
}

/// What [`raw_backend`] saw of the proxy's connections.
#[derive(Default)]
struct RawBackendCounts {
    /// Writes of `/big` that failed: the proxy let the connection go.
    big_closed: std::sync::atomic::AtomicUsize,
    /// Requests that arrived on a connection after its `/both-framings` response: the proxy
    /// reused a connection whose framing it cannot trust.
    reused_after_both_framings: std::sync::atomic::AtomicUsize,
    /// Requests for `/vanish`, whose connection closes without a response.
    vanished: std::sync::atomic::AtomicUsize,
}

/// A backend on a raw socket, one thread per connection, answering by path: `/big` a 1 GiB body
/// written as fast as the proxy takes it, `/status-600`, `/both-framings`, `/bad-chunk` malformed
/// responses, `/vanish` none at all (the connection closes), anything else `ok`. Request bodies
/// (Content-Length) are read and dropped. After
/// `/both-framings` the connection stays open, to see whether the proxy sends on it again.
fn raw_backend(counts: std::sync::Arc<RawBackendCounts>) -> SocketAddr {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counts = std::sync::Arc::clone(&counts);
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                let mut sent_both_framings = false;
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                    let chunked = head.contains("transfer-encoding: chunked");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    // A chunked body is taken to end at its first empty chunk (the tests send
                    // one small chunk).
                    let body_end = |pending: &[u8]| {
                        if chunked {
                            pending[end + 4..]
                                .windows(5)
                                .position(|w| w == b"0\r\n\r\n")
                                .map(|at| end + 4 + at + 5)
                        } else {
                            (pending.len() >= end + 4 + length).then_some(end + 4 + length)
                        }
                    };
                    let consumed = loop {
                        if let Some(at) = body_end(&pending) {
                            break at;
                        }
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    pending.drain(..consumed);
                    if sent_both_framings {
                        counts
                            .reused_after_both_framings
                            .fetch_add(1, Ordering::SeqCst);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let response: &[u8] = match path.as_str() {
                        "/big" => {
                            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
                            let chunk = vec![b'x'; 64 * 1024];
                            if conn.write_all(head).is_err() {
                                return;
                            }
                            for _ in 0..(1 << 14) {
                                if conn.write_all(&chunk).is_err() {
                                    counts.big_closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            return;
                        }
                        "/status-600" => b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nno",
                        "/both-framings" => {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"
                        }
                        "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nno",
                        "/vanish" => {
                            counts.vanished.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    // A malformed response ends its connection, but for the one the proxy
                    // must end itself.
                    sent_both_framings |= path == "/both-framings";
                    let keep = matches!(path.as_str(), "/" | "/ok" | "/both-framings");
                    if conn.write_all(response).is_err() || !keep {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_client_that_stops_reading_is_let_go_within_the_send_timeout() {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let counts = std::sync::Arc::new(RawBackendCounts::default());
    let backend = raw_backend(std::sync::Arc::clone(&counts));
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[backend], &[batch], "").replace(
        "shutdown_grace_secs = 20",
        "shutdown_grace_secs = 20\nsend_timeout_secs = 1",
    );
    let node = start_node(&text);
    for (round, method) in ["GET", "POST"].into_iter().enumerate() {
        // Sends its request and never reads: the proxy's writes to it stall.
        let mut stalled = std::net::TcpStream::connect(node.proxy).expect("connect");
        let body = if method == "POST" {
            "Content-Length: 2\r\n\r\n{}"
        } else {
            "\r\n"
        };
        write!(
            stalled,
            "{method} /big HTTP/1.1\r\nHost: shop\r\nX-User-Id: slow-reader\r\n{body}"
        )
        .expect("send");
        // Others are served meanwhile.
        for _ in 0..5 {
            let r = get(node.proxy, "/ok", &[("X-User-Id", "reader")]);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        wait_until(
            &format!("{method}: the backend connection of the stalled client to close"),
            Duration::from_secs(15),
            || counts.big_closed.load(Ordering::SeqCst) > round,
        );
        let metrics = node.metrics_when(|m| {
            metric_sum(m, "prescale_backend_in_flight", &[("fleet", "web")]) == 0.0
        });
        assert_eq!(
            metric_sum(&metrics, "prescale_backend_in_flight", &[("fleet", "web")]),
            0.0,
            "{method}: the stalled request's slot is freed: {metrics}"
        );
        drop(stalled);
    }
}

/// A client that stops sending its request body is answered 408 within the body timeout, and
/// when the backend's read timeout (it waits for the body) runs out first, that is the client's
/// stall too: 408, never counted against the backend (slow uploads must not eject backends).
#[test]
fn a_request_body_that_stalls_is_the_clients_timeout_not_the_backends() {
    use std::io::{Read, Write};
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    // A body of up to 64 KiB is read whole by the direct path before any backend is involved
    // (nginx's request buffering): only the body timeout can end it. A longer one is streamed by
    // the general path, whose backend read times out first, and that is still the client's 408.
    let cases = [
        ("body_timeout_secs = 1", "read_ms = 10000", 100),
        ("body_timeout_secs = 1", "read_ms = 10000", 100_000),
        ("body_timeout_secs = 60", "read_ms = 1000", 100_000),
    ];
    for (body_timeout, read_timeout, declared) in cases {
        let (proxy, admin) = addrs();
        let text = config(proxy, admin, &[web], &[batch], "")
            .replace(
                "shutdown_grace_secs = 20",
                &format!("shutdown_grace_secs = 20\n{body_timeout}"),
            )
            .replace("read_ms = 10000", read_timeout);
        let node = start_node(&text);
        let failures = || {
            metric_sum(
                &node.metrics(),
                "prescale_backend_failures_total",
                &[("fleet", "web")],
            )
        };
        let before = failures();
        // Declares a body, sends 10 bytes of it, then nothing.
        let mut stalled = std::net::TcpStream::connect(node.proxy).expect("connect");
        stalled
            .write_all(
                format!(
                    "POST /ok HTTP/1.1\r\nHost: shop\r\nX-User-Id: slow-writer\r\n\
                     Content-Length: {declared}\r\n\r\n0123456789"
                )
                .as_bytes(),
            )
            .expect("send");
        for _ in 0..5 {
            let r = get(node.proxy, "/ok", &[("X-User-Id", "writer")]);
            assert_eq!(r.status, 200, "{body_timeout}: {}", r.text());
        }
        stalled
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut answer = Vec::new();
        let read = stalled.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            read.is_ok() && text.starts_with("HTTP/1.1 408"),
            "{body_timeout}, {read_timeout}: {read:?} {text}"
        );
        let metrics = node.metrics_when(|m| {
            metric_sum(m, "prescale_backend_in_flight", &[("fleet", "web")]) == 0.0
        });
        assert_eq!(
            metric_sum(&metrics, "prescale_backend_in_flight", &[("fleet", "web")]),
            0.0,
            "{body_timeout}: the stalled upload's slot is freed: {metrics}"
        );
        assert_eq!(
            failures(),
            before,
            "{body_timeout}, {read_timeout}: not the backend's failure"
        );
        // Not ejected: the backend serves the next request at once.
        assert_eq!(
            get(node.proxy, "/ok", &[("X-User-Id", "writer")]).status,
            200
        );
    }
}

#[test]
fn malformed_backend_responses_are_502_and_the_backends_failures() {
    let counts = std::sync::Arc::new(RawBackendCounts::default());
    let backend = raw_backend(std::sync::Arc::clone(&counts));
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[backend], &[batch], "")
        .replace("eject_after_failures = 1", "eject_after_failures = 100");
    let node = start_node(&text);
    let failures = || {
        metric_sum(
            &node.metrics(),
            "prescale_backend_failures_total",
            &[("fleet", "web")],
        )
    };
    // Both paths find each of them before anything reaches the client.
    let cases = [
        ("GET", "/status-600"),
        ("GET", "/both-framings"),
        ("GET", "/bad-chunk"),
        ("POST", "/status-600"),
        ("POST", "/both-framings"),
        ("POST", "/bad-chunk"),
    ];
    for (method, path) in cases {
        let before = failures();
        let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
        let r = request(node.proxy, method, path, &[("X-User-Id", "erin")], body);
        assert_eq!(r.status, 502, "{method} {path}: {}", r.text());
        assert_eq!(
            failures(),
            before + 1.0,
            "{method} {path}: counted once against the backend"
        );
        // The backend is still served to, on both paths: one failure does not eject it here.
        assert_eq!(get(node.proxy, "/ok", &[("X-User-Id", "erin")]).status, 200);
        let r = request(node.proxy, "POST", "/ok", &[("X-User-Id", "erin")], b"{}");
        assert_eq!(
            r.status,
            200,
            "{method} {path}, then POST /ok: {}",
            r.text()
        );
    }
    assert_eq!(
        counts
            .reused_after_both_framings
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a connection that sent both framings is never used again"
    );
}

#[test]
fn http2_cleartext_is_proxied() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "")
        .replace("threads = 2\n", "threads = 2\nh2c = true\n");
    let node = start_node(&text);
    let (status, _, body) = h2c_get(node.proxy, "/api/h2", "h2-user");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["path"], "/api/h2", "{json}");
}

#[test]
fn admin_without_a_token_refuses_foreign_host_names() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let port = node.admin.port();
    let ask = |host: &str| {
        let raw =
            format!("GET /api/v1/fleets HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        raw_request(node.admin, raw.as_bytes()).expect("admin answers")
    };
    for host in [format!("localhost:{port}"), format!("{}", node.admin)] {
        assert_eq!(ask(&host).status, 200, "Host {host}");
    }
    let rebound = ask(&format!("attacker.example:{port}"));
    assert_eq!(rebound.status, 421, "{}", rebound.text());
    assert!(
        rebound.text().contains("attacker.example"),
        "{}",
        rebound.text()
    );
    let no_host = raw_request(node.admin, b"GET /healthz HTTP/1.0\r\n\r\n").expect("answers");
    assert_eq!(no_host.status, 200);
}

#[test]
fn admin_token_is_required_when_configured() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        &format!("[admin]\nlisten = \"{admin}\"\n"),
        &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"admin-token-0123456789\"\n"),
    );
    assert!(text.contains("admin-token"), "token inserted");
    let node = start_node(&text);
    assert_eq!(get(node.admin, "/api/v1/profiles", &[]).status, 401);
    assert_eq!(
        get(
            node.admin,
            "/metrics",
            &[("Authorization", "Bearer wrong-token-0123456789")]
        )
        .status,
        401
    );
    assert_eq!(
        get(
            node.admin,
            "/api/v1/profiles",
            &[("Authorization", "Bearer admin-token-0123456789")]
        )
        .status,
        200
    );
    // With a token, the token is the guard: a proxied name reaches the auth check.
    let named = raw_request(
        node.admin,
        b"GET /api/v1/profiles HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .expect("admin answers");
    assert_eq!(named.status, 401);
}

#[test]
fn the_admin_listener_is_not_held_by_slow_or_many_clients() {
    use std::io::{Read, Write};
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        &format!("[admin]\nlisten = \"{admin}\"\n"),
        &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"admin-token-0123456789\"\n"),
    );
    let node = start_node(&text);
    // Without the token, a request announcing a large body is answered before it is sent.
    let mut conn = std::net::TcpStream::connect(node.admin).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(
        b"POST /api/v1/personas HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    .expect("send head");
    let mut answer = vec![0u8; 1024];
    let n = conn.read(&mut answer).expect("an answer before the body");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(conn);

    // A client that begins a head and stops is closed after the head timeout.
    let mut slow = std::net::TcpStream::connect(node.admin).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .expect("send part");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "closed after {waited:?}: {}",
        String::from_utf8_lossy(&rest)
    );

    // Connections beyond the cap are closed at once; the held ones do not stop the others
    // once they go.
    let held: Vec<std::net::TcpStream> = (0..256)
        .map(|_| std::net::TcpStream::connect(node.admin).expect("connect"))
        .collect();
    wait_until("the cap to bind", Duration::from_secs(10), || {
        try_request(node.admin, "GET", "/healthz", &[], b"").is_err()
    });
    drop(held);
    wait_until(
        "the listener to answer again",
        Duration::from_secs(10),
        || try_request(node.admin, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200),
    );
}

#[test]
fn consistent_hashing_keeps_each_user_on_one_backend() {
    let (_a_proc, a) = start_backend("web-a", None, &[]);
    let (_b_proc, b) = start_backend("web-b", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[a, b], &[batch], "").replacen(
        "backends = [",
        "load_balancing = \"consistent_hash\"\nbackends = [",
        1,
    );
    let node = start_node(&text);
    let mut seen = std::collections::HashSet::new();
    for user in 0..20 {
        let id = format!("sticky-{user}");
        let first = get(node.proxy, "/", &[("X-User-Id", &id)]).json()["backend"]
            .as_str()
            .map(str::to_string);
        for _ in 0..3 {
            let again = get(node.proxy, "/", &[("X-User-Id", &id)]).json()["backend"]
                .as_str()
                .map(str::to_string);
            assert_eq!(again, first, "user {id} moved between backends");
        }
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        2,
        "20 users should spread over both backends: {seen:?}"
    );
}

#[test]
fn a_saturated_fleet_sheds_low_priority_profiles_first() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = format!(
        r#"
[proxy]
listen = "{proxy}"
[admin]
listen = "{admin}"
[identity]
secret = "shed-secret-0123456789"
[[regions]]
name = "eu"
[[fleets]]
name = "web"
region = "eu"
backends = ["{web}"]
max_in_flight_per_backend = 4
[[profiles]]
name = "batch"
priority = 10
[[profiles]]
name = "interactive"
priority = 250
[assignment]
new_user_min_requests = 0
rules = [{{ path_prefix = "/batch", profile = "batch" }}, {{ path_prefix = "/api", profile = "interactive" }}]
"#
    );
    let node = start_node(&text);
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let target = node.proxy;
            std::thread::spawn(move || {
                get(
                    target,
                    "/api/slow?sleep_ms=2500",
                    &[("X-User-Id", &format!("slow-{i}"))],
                )
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(
        &node.metrics(),
        "prescale_backend_in_flight",
        &[("fleet", "web")],
    ) < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "slow requests never got in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let shed = get(node.proxy, "/batch/job", &[("X-User-Id", "batch-user")]);
    assert_eq!(shed.status, 503, "{}", shed.text());
    assert_eq!(shed.header("retry-after"), Some("1"));
    let kept = get(node.proxy, "/api/fast", &[("X-User-Id", "vip")]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    for handle in slow {
        assert_eq!(handle.join().expect("slow request").status, 200);
    }
    let batch_shed = |m: &str| {
        metric_sum(
            m,
            "prescale_requests_total",
            &[("profile", "batch"), ("status", "5xx")],
        )
    };
    let metrics = node.metrics_when(|m| batch_shed(m) >= 1.0);
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_requests_total",
            &[("profile", "batch"), ("status", "5xx")]
        ),
        1.0,
        "{metrics}"
    );
}

#[test]
fn a_backend_slower_than_the_read_timeout_gives_504() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text =
        config(proxy, admin, &[web], &[batch], "").replace("read_ms = 10000", "read_ms = 300");
    let node = start_node(&text);
    let started = Instant::now();
    let r = get(
        node.proxy,
        "/slow?sleep_ms=3000",
        &[("X-User-Id", "impatient")],
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout did not cut the request short"
    );
    // The request is counted in the logging phase, just after the response went out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(
        &node.metrics(),
        "prescale_request_errors_total",
        &[("fleet", "web")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the timed-out request was not counted as an error: {}",
            node.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test config with the proxy listener on TLS using `cert`.
fn tls_config(
    proxy: SocketAddr,
    admin: SocketAddr,
    web: SocketAddr,
    batch: SocketAddr,
    cert: &TestCert,
) -> String {
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        "threads = 2\n",
        &format!(
            "threads = 2\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.cert_path.display(),
            cert.key_path.display()
        ),
    );
    assert!(text.contains("tls = {"), "tls inserted");
    text
}

#[test]
fn tls_listener_proxies_http1_and_h2_with_forwarded_proto_https() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = self_signed_cert(certs.path(), "proxy");
    let node = start_node(&tls_config(proxy, admin, web, batch, &cert));
    let trusted = std::slice::from_ref(&cert.der);
    let http1_only = tls_client(trusted, &[b"http/1.1"]);
    let h2_first = tls_client(trusted, &[b"h2", b"http/1.1"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // HTTP/1.1 over TLS: routed like cleartext, and the backend learns the request was https
    // (a client's own X-Forwarded-Proto is overwritten).
    let germany = "2a02:d180::1";
    let us = "214.78.120.1";
    runtime.block_on(async {
        for _ in 0..3 {
            let r = https1_get(
                node.proxy,
                http1_only.clone(),
                "/api/items",
                &[
                    ("x-user-id", "alice"),
                    ("x-forwarded-for", germany),
                    ("x-forwarded-proto", "http"),
                ],
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.version, http::Version::HTTP_11);
            let body = r.json();
            assert_eq!(body["backend"], "web-1", "{body}");
            assert_eq!(body["path"], "/api/items", "{body}");
            assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
            assert_eq!(
                body["headers"]["x-forwarded-for"],
                format!("{germany}, 127.0.0.1"),
                "{body}"
            );
        }
        for _ in 0..2 {
            let r = https1_get(
                node.proxy,
                http1_only.clone(),
                "/batch/export",
                &[("x-user-id", "bob"), ("x-forwarded-for", us)],
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            let body = r.json();
            assert_eq!(body["backend"], "batch-1", "{body}");
            assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
            assert_eq!(
                body["headers"]["x-forwarded-for"],
                format!("{us}, 127.0.0.1"),
                "{body}"
            );
        }
    });

    // HTTP/2 negotiated by ALPN: several slow requests at once on one connection, answered
    // together (one after the other would take streams × delay).
    const STREAMS: usize = 8;
    const DELAY_MS: u64 = 400;
    runtime.block_on(async {
        let stream = tls_connect(node.proxy, h2_first.clone())
            .await
            .expect("TLS handshake");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let started = Instant::now();
        let requests: Vec<_> = (0..STREAMS)
            .map(|i| {
                let mut sender = sender.clone();
                let request = https_request(
                    node.proxy,
                    &format!("/api/h2/{i}?sleep_ms={DELAY_MS}"),
                    &[("x-user-id", "h2-user")],
                );
                tokio::spawn(async move { read_response(sender.send_request(request)).await })
            })
            .collect();
        for (i, request) in requests.into_iter().enumerate() {
            let r = request.await.expect("request task");
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.version, http::Version::HTTP_2, "{r:?}");
            let body = r.json();
            assert_eq!(body["path"], format!("/api/h2/{i}"), "{body}");
            assert_eq!(body["backend"], "web-1", "{body}");
            assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
            assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1", "{body}");
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(DELAY_MS * STREAMS as u64 / 2),
            "{STREAMS} streams of {DELAY_MS} ms took {elapsed:?}: not concurrent"
        );
    });

    // 3 + 8 interactive requests in eu on web, 2 batch requests from the us.
    let metrics = node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[]) >= 13.0);
    let count = |labels: &[(&str, &str)]| metric_sum(&metrics, "prescale_requests_total", labels);
    assert_eq!(
        count(&[
            ("profile", "interactive"),
            ("region", "eu"),
            ("fleet", "web")
        ]),
        (3 + STREAMS) as f64,
        "{metrics}"
    );
    assert_eq!(
        count(&[("profile", "batch"), ("region", "us"), ("fleet", "batch")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        count(&[("status", "2xx")]),
        (5 + STREAMS) as f64,
        "{metrics}"
    );
    assert_eq!(count(&[]), (5 + STREAMS) as f64, "{metrics}");
}

#[test]
fn tls_listener_survives_clients_that_fail_the_handshake() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = self_signed_cert(certs.path(), "proxy");
    // A client that trusts some other certificate only.
    let other = self_signed_cert(certs.path(), "other");
    let mut node = start_node(&tls_config(proxy, admin, web, batch, &cert));
    let trusting = tls_client(std::slice::from_ref(&cert.der), &[b"h2", b"http/1.1"]);
    let stranger = tls_client(std::slice::from_ref(&other.der), &[b"h2", b"http/1.1"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let h2_get = |client: std::sync::Arc<rustls::ClientConfig>, path: &'static str| async move {
        let stream = tls_connect(node.proxy, client)
            .await
            .expect("TLS handshake");
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        read_response(sender.send_request(https_request(
            node.proxy,
            path,
            &[("x-user-id", "carol")],
        )))
        .await
    };
    runtime.block_on(async {
        let before = h2_get(trusting.clone(), "/api/before").await;
        assert_eq!(before.status, 200, "{before:?}");

        for _ in 0..3 {
            let err = tls_connect(node.proxy, stranger.clone())
                .await
                .expect_err("a client that does not trust the certificate must fail");
            assert!(
                err.to_string().contains("invalid peer certificate"),
                "handshake failed for another reason: {err}"
            );
        }
        // Cleartext HTTP on the TLS port gets no HTTP answer.
        if let Ok(r) = try_request(node.proxy, "GET", "/", &[("X-User-Id", "carol")], b"") {
            assert!(r.status >= 400, "cleartext request on the TLS port: {r:?}");
        }

        let after = h2_get(trusting.clone(), "/api/after").await;
        assert_eq!(after.status, 200, "{after:?}");
        assert_eq!(after.version, http::Version::HTTP_2);
        assert_eq!(after.json()["path"], "/api/after");
    });

    assert!(
        node.proc.child.try_wait().expect("try_wait").is_none(),
        "the proxy exited"
    );
    let metrics = node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[]) >= 2.0);
    assert_eq!(
        metric_sum(&metrics, "prescale_requests_total", &[("status", "2xx")]),
        2.0,
        "{metrics}"
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the proxy panicked:\n{log}");
}

/// Plain keep-alive GET/HEAD requests (the direct path) and requests with bodies or
/// connection-nominated headers (pingora's general path) on one client connection: each reaches
/// the backend with the hop-by-hop headers removed, and each is counted.
#[test]
fn keep_alive_clients_get_clean_requests_through_both_paths() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let mut client = KeepAliveClient::connect(node.proxy);

    let plain = "GET /api/items?page=2 HTTP/1.1\r\nHost: shop\r\nX-User-Id: dora\r\n\
        Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        Proxy-Authorization: Basic c2VjcmV0\r\n\r\n";
    let r = client.send(plain.as_bytes(), false);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["backend"], "web-1", "{body}");
    assert_eq!(body["query"], "page=2", "{body}");
    for hop_by_hop in ["connection", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            body["headers"][hop_by_hop].is_null(),
            "{hop_by_hop} reached the backend: {body}"
        );
    }
    assert_eq!(body["headers"]["host"], "shop", "{body}");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1", "{body}");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http", "{body}");

    // HEAD: the backend's header, no body; the requests after it show the connection in step.
    let r = client.send(
        b"HEAD /api/items HTTP/1.1\r\nHost: shop\r\nX-User-Id: dora\r\n\r\n",
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("web-1"), "{:?}", r.headers);

    // A body: the general path, on the same connection.
    let r = client.send(
        b"POST /api/orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: dora\r\n\
          Content-Length: 11\r\n\r\nhello world",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["method"], "POST", "{body}");
    assert_eq!(body["body_bytes"], 11, "{body}");

    // A header named in `Connection` is hop-by-hop too (the general path strips it).
    let r = client.send(
        b"GET /api/items HTTP/1.1\r\nHost: shop\r\nX-User-Id: dora\r\n\
          Connection: keep-alive, x-session-secret\r\nX-Session-Secret: 42\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(body["headers"]["x-session-secret"].is_null(), "{body}");

    let r = client.send(
        b"GET /api/items HTTP/1.1\r\nHost: shop\r\nX-User-Id: dora\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let metrics =
        node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[("fleet", "web")]) >= 5.0);
    assert_eq!(
        metric_sum(&metrics, "prescale_requests_total", &[("fleet", "web")]),
        5.0,
        "{metrics}"
    );
}

/// A backend that closes every connection right after its response, while saying nothing of it
/// (as backends with short keep-alive timeouts do): no request fails and the backend is never
/// ejected, though idle connections keep going stale. Its streamed (chunked) 1 MiB answer
/// arrives whole.
#[test]
fn a_backend_that_drops_idle_connections_costs_no_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = listener.local_addr().expect("addr");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&served);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let big = request.starts_with(b"GET /big ");
                if big {
                    let mut response =
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                    for i in 0..256u32 {
                        let chunk = vec![b'a' + (i % 26) as u8; 4096];
                        response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        response.extend_from_slice(&chunk);
                        response.extend_from_slice(b"\r\n");
                    }
                    response.extend_from_slice(b"0\r\n\r\n");
                    let _ = conn.write_all(&response);
                } else {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                }
                // Closed without `Connection: close`.
            });
        }
    });
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[backend], &[batch], ""));

    let mut client = KeepAliveClient::connect(node.proxy);
    for i in 0..40 {
        let r = client.send(
            format!("GET /item/{i} HTTP/1.1\r\nHost: shop\r\nX-User-Id: eve\r\n\r\n").as_bytes(),
            false,
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.body, b"ok", "request {i}");
        if i % 3 == 0 {
            // Sometimes the close has been seen by the time the next request comes, sometimes not.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let r = client.send(
        b"GET /big HTTP/1.1\r\nHost: shop\r\nX-User-Id: eve\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 256 * 4096);
    assert!(r.body[..4096].iter().all(|&b| b == b'a'));
    assert!(r.body[255 * 4096..]
        .iter()
        .all(|&b| b == b'a' + (255 % 26) as u8));

    let metrics = node
        .metrics_when(|m| metric_sum(m, "prescale_requests_total", &[("fleet", "web")]) >= 41.0);
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_requests_total",
            &[("fleet", "web"), ("status", "2xx")]
        ),
        41.0,
        "{metrics}"
    );
    let fleets = get(node.admin, "/api/v1/fleets", &[]).json();
    let address = backend.to_string();
    let status = fleets["fleets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|fleet| fleet["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"] == address.as_str())
        .unwrap_or_else(|| panic!("{address} not in {fleets}"));
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["ejected"], false, "{status}");
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) >= 41,
        "the backend served fewer requests than were answered"
    );
}

/// A backend written by hand, answering by path: chunked with extensions and trailers, chunked
/// with the body sent well after the head, a 103 before the final response, a fixed length, and
/// a body that ends when it closes. Through one
/// client connection: a request head split across two writes, two pipelined requests, a request
/// for the general path in between, and a response delimited by close. Every response arrives
/// whole and in order, hop-by-hop fields of the backend never reach the client, and the direct
/// path reuses one upstream connection for all its keep-alive responses.
#[test]
fn every_response_framing_keeps_client_and_backend_in_step() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = listener.local_addr().expect("addr");
    // Connections that carried a request of the test's user (health checks carry none).
    let user_connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&user_connections);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                let mut counted = false;
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                    pending.drain(..end + 4);
                    if !counted && head.contains("x-user-id: frank") {
                        counted = true;
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let response: &[u8] = match path.as_str() {
                        "/chunked" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                            Connection: keep-alive, x-hop\r\nKeep-Alive: timeout=30\r\n\
                            X-Hop: secret\r\nX-Kept: yes\r\n\r\n\
                            5\r\nhello\r\n6;note=\"x\"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                        }
                        "/hints" => {
                            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints"
                        }
                        "/close" => {
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"
                        }
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlength",
                    };
                    if path == "/slow-chunked" {
                        // The head alone, then the body a moment later.
                        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                        if conn.write_all(head).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                        if conn.write_all(b"4\r\nlate\r\n0\r\n\r\n").is_err() {
                            return;
                        }
                        continue;
                    }
                    if conn.write_all(response).is_err() || path == "/close" {
                        return;
                    }
                }
            });
        }
    });
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[backend], &[batch], ""));
    let request = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: shop\r\nX-User-Id: frank\r\n\r\n").into_bytes()
    };

    let mut client = KeepAliveClient::connect(node.proxy);
    // A head in two parts.
    let head = request("/chunked");
    client.write(&head[..20]);
    std::thread::sleep(Duration::from_millis(100));
    let r = client.send(&head[20..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("x-kept"), Some("yes"), "{:?}", r.headers);
    for hop_by_hop in ["x-hop", "keep-alive", "connection"] {
        assert_eq!(r.header(hop_by_hop), None, "{hop_by_hop}: {:?}", r.headers);
    }

    // Two requests in one write; the 103 is not passed on.
    let mut both = request("/length");
    both.extend_from_slice(&request("/hints"));
    client.write(&both);
    let first = client.receive(false);
    let second = client.receive(false);
    assert_eq!((first.status, first.text().as_str()), (200, "length"));
    assert_eq!((second.status, second.text().as_str()), (200, "hints"));

    // The general path in between (a `Connection` naming a field sends a request there), then
    // the direct path again.
    let r = client.send(
        b"POST /length HTTP/1.1\r\nHost: shop\r\nX-User-Id: frank\r\nConnection: x-note\r\nX-Note: 1\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.text().as_str()), (200, "length"));
    // Chunked on the general path: its head waits for the first chunk, and the upstream
    // connection is kept for the next request all the same.
    let r = client.send(
        b"POST /chunked HTTP/1.1\r\nHost: shop\r\nX-User-Id: frank\r\nConnection: x-note\r\nX-Note: 1\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("x-hop"), None, "{:?}", r.headers);
    let r = client.send(
        b"POST /slow-chunked HTTP/1.1\r\nHost: shop\r\nX-User-Id: frank\r\nConnection: x-note\r\nX-Note: 1\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.text().as_str()), (200, "late"));
    let r = client.send(&request("/length"), false);
    assert_eq!((r.status, r.text().as_str()), (200, "length"));
    // The direct path's upstream connection, and the general path's own.
    assert_eq!(user_connections.load(Ordering::SeqCst), 2);

    // A body that ends with the backend's close: the client's connection ends after it too.
    let r = client.send(&request("/close"), false);
    assert_eq!((r.status, r.text().as_str()), (200, "until close"));
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);

    let metrics =
        node.metrics_when(|m| metric_sum(m, "prescale_requests_total", &[("fleet", "web")]) >= 8.0);
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_requests_total",
            &[("fleet", "web"), ("status", "2xx")]
        ),
        8.0,
        "{metrics}"
    );
}

/// `proxy.keepalive_timeout_secs`: an idle keep-alive connection is closed after it, and so is a
/// client that has begun a request head and trickles the rest byte by byte; a request that
/// arrives in time on a connection idle for less is served.
#[test]
fn idle_and_trickling_clients_are_closed_after_the_keepalive_timeout() {
    use std::io::{Read, Write};

    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "")
        .replace("threads = 2\n", "threads = 2\nkeepalive_timeout_secs = 2\n");
    let node = start_node(&text);
    let request = b"GET /api/items HTTP/1.1\r\nHost: shop\r\nX-User-Id: gina\r\n\r\n";

    // Served after 1 s of idleness; closed after 2 s more (a read sees the end, not a timeout).
    let mut client = KeepAliveClient::connect(node.proxy);
    assert_eq!(client.send(request, false).status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(client.send(request, false).status, 200);
    let idle_since = Instant::now();
    let mut stream = client.into_stream();
    let mut byte = [0u8; 1];
    assert_eq!(stream.read(&mut byte).expect("closed, not timed out"), 0);
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(6),
        "closed after {idle:?}"
    );

    // A head begun and trickled: closed within the timeout of its first byte although bytes
    // keep coming.
    let mut slow = std::net::TcpStream::connect(node.proxy).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let started = Instant::now();
    let mut closed_after = None;
    for byte in request.iter().take(request.len() - 4).cycle().take(200) {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        // The write may still succeed into the socket buffer: the close shows as the end.
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        started.elapsed()
    });
    assert!(
        closed_after < Duration::from_secs(6),
        "a trickling head was kept open for {closed_after:?}"
    );
}

/// Every request gets an `X-Request-Id` (32 hex digits, new per request) that the backend
/// receives and the client gets back, on both paths; a trusted peer's own ID is kept, an
/// untrusted client's replaced; `Via` names the proxy's pseudonym on the request and on the
/// response, after the client's own `Via`; `proxy.request_id = false` and `proxy.via = ""` turn
/// them off, and a pseudonym that is not a token is refused at start.
#[test]
fn request_ids_and_via_reach_the_backend_and_come_back() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let host = format!("Host: {proxy}");
    let mut seen = std::collections::HashSet::new();
    for method in ["GET", "POST"] {
        for _ in 0..2 {
            let r = raw_on(node.proxy, method, "/api/items", &[host.as_str()]);
            assert_eq!(r.status, 200, "{method}: {}", r.text());
            let echo = r.json();
            let id = r.header("x-request-id").expect("X-Request-Id").to_string();
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{method}: {id}"
            );
            assert_eq!(echo["headers"]["x-request-id"], id.as_str(), "{method}");
            assert_eq!(echo["headers"]["via"], "1.1 prescale", "{method}: {echo}");
            assert_eq!(r.header("via"), Some("1.1 prescale"), "{method}");
            assert!(seen.insert(id), "{method}: an ID given twice");
        }
        // Loopback is a trusted peer here: its ID is kept; its Via comes first.
        let r = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[host.as_str(), "X-Request-Id: edge-42", "Via: 1.0 edge-lb"],
        );
        let echo = r.json();
        assert_eq!(echo["headers"]["x-request-id"], "edge-42", "{method}");
        assert_eq!(r.header("x-request-id"), Some("edge-42"), "{method}");
        assert_eq!(
            echo["headers"]["via"], "1.0 edge-lb, 1.1 prescale",
            "{method}: {echo}"
        );
        // Two IDs, or one that is not visible ASCII: a new one.
        let r = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[host.as_str(), "X-Request-Id: a", "X-Request-Id: b"],
        );
        let id = r.header("x-request-id").expect("X-Request-Id");
        assert_eq!(id.len(), 32, "{method}: {id}");
        assert_eq!(r.json()["headers"]["x-request-id"], id, "{method}");
    }
    drop(node);

    // An untrusted client's ID is replaced; another pseudonym.
    let (proxy, admin) = addrs();
    let text = untrusted_config(
        &config(proxy, admin, &[web], &[batch], ""),
        "via = \"edge-7\"",
    );
    let node = start_node(&text);
    let host = format!("Host: {proxy}");
    for method in ["GET", "POST"] {
        let r = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[host.as_str(), "X-Request-Id: forged"],
        );
        let echo = r.json();
        let id = r.header("x-request-id").expect("X-Request-Id");
        assert_eq!(id.len(), 32, "{method}: {id}");
        assert_eq!(echo["headers"]["x-request-id"], id, "{method}");
        assert_eq!(echo["headers"]["via"], "1.1 edge-7", "{method}: {echo}");
        assert_eq!(r.header("via"), Some("1.1 edge-7"), "{method}");
    }
    drop(node);

    // Both off: the client's field passes as any other, and nothing is added.
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        "shutdown_grace_secs = 20",
        "shutdown_grace_secs = 20\nrequest_id = false\nvia = \"\"",
    );
    let node = start_node(&text);
    let host = format!("Host: {proxy}");
    for method in ["GET", "POST"] {
        let r = raw_on(node.proxy, method, "/api/items", &[host.as_str()]);
        let echo = r.json();
        assert_eq!(r.header("x-request-id"), None, "{method}");
        assert_eq!(r.header("via"), None, "{method}");
        assert_eq!(echo["headers"]["x-request-id"], serde_json::Value::Null);
        assert_eq!(echo["headers"]["via"], serde_json::Value::Null);
        let r = raw_on(
            node.proxy,
            method,
            "/api/items",
            &[host.as_str(), "X-Request-Id: client-1"],
        );
        assert_eq!(r.json()["headers"]["x-request-id"], "client-1", "{method}");
    }
    drop(node);

    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web], &[batch], "").replace(
        "shutdown_grace_secs = 20",
        "shutdown_grace_secs = 20\nvia = \"two words\"",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("prescale.toml");
    std::fs::write(&path, text).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["check-config", path.to_str().expect("utf8 path")])
        .output()
        .expect("run prescale check-config");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("proxy.via"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One combined access-log line, split as a log reader splits it.
#[derive(Debug)]
struct CombinedLine {
    client: String,
    request: String,
    status: u16,
    referer: String,
    user_agent: String,
    fields: std::collections::HashMap<String, String>,
}

fn parse_combined(line: &str) -> CombinedLine {
    let bad = format!("not a combined line: {line}");
    let (client, rest) = line.split_once(" - - [").expect(&bad);
    let (_time, rest) = rest.split_once("] \"").expect(&bad);
    let (request, rest) = rest.split_once("\" ").expect(&bad);
    let mut words = rest.splitn(3, ' ');
    let status = words.next().and_then(|s| s.parse().ok()).expect(&bad);
    let _bytes: u64 = words.next().and_then(|s| s.parse().ok()).expect(&bad);
    let rest = words.next().expect(&bad);
    let rest = rest.strip_prefix('"').expect(&bad);
    let (referer, rest) = rest.split_once("\" \"").expect(&bad);
    let (user_agent, rest) = rest.split_once("\" ").expect(&bad);
    let fields = rest
        .split(' ')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect(&bad);
            (k.to_string(), v.to_string())
        })
        .collect();
    CombinedLine {
        client: client.to_string(),
        request: request.to_string(),
        status,
        referer: referer.to_string(),
        user_agent: user_agent.to_string(),
        fields,
    }
}

fn lines_when(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn access_log_lines_match_the_requests_and_follow_a_rotation() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let (proxy, admin) = addrs();
    let extra = format!(
        "[proxy.access_log]\npath = {:?}\n",
        path.display().to_string()
    );
    let node = start_node(&config(proxy, admin, &[web], &[batch], &extra));
    let host = format!("Host: {proxy}");
    let agent = "User-Agent: e2e-agent/1 \"quoted\"";
    let referer = "Referer: http://ref.example/page";

    // (what was sent, the response, the fleet and backend it must name)
    let mut sent = Vec::new();
    for (method, target, fleet) in [
        ("GET", "/api/items?x=1", Some(("web", web))),
        ("POST", "/api/items", Some(("web", web))),
        ("GET", "/batch/job", Some(("batch", batch))),
    ] {
        let r = raw_on(node.proxy, method, target, &[host.as_str(), agent, referer]);
        assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
        sent.push((method, target, r, fleet));
    }
    // The proxy's own answers (no Host: 400) carry a request ID too, on both paths.
    for method in ["GET", "POST"] {
        let r = raw_on(node.proxy, method, "/api/items", &[agent]);
        assert_eq!(r.status, 400, "{method}: {}", r.text());
        sent.push((method, "/api/items", r, None));
    }

    let lines = lines_when(&path, sent.len());
    assert_eq!(lines.len(), sent.len(), "{lines:#?}");
    let logged: Vec<CombinedLine> = lines.iter().map(|l| parse_combined(l)).collect();
    for (method, target, response, fleet) in &sent {
        let id = response
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{method} {target} {}: no X-Request-Id", response.status));
        let line = logged
            .iter()
            .find(|l| l.fields["request_id"] == id)
            .unwrap_or_else(|| panic!("no line with request_id={id}: {lines:#?}"));
        assert_eq!(
            line.request,
            format!("{method} {target} HTTP/1.1"),
            "{line:?}"
        );
        assert_eq!(line.status, response.status, "{line:?}");
        assert_eq!(line.client, "127.0.0.1", "{line:?}");
        assert_eq!(line.user_agent, "e2e-agent/1 \\x22quoted\\x22", "{line:?}");
        assert!(
            line.fields["request_time"].parse::<f64>().is_ok(),
            "{line:?}"
        );
        match fleet {
            Some((fleet, backend)) => {
                assert_eq!(line.referer, "http://ref.example/page", "{line:?}");
                assert_eq!(line.fields["fleet"], *fleet, "{line:?}");
                assert_eq!(line.fields["backend"], backend.to_string(), "{line:?}");
                let profile = if *fleet == "batch" {
                    "batch"
                } else {
                    "interactive"
                };
                assert_eq!(line.fields["profile"], profile, "{line:?}");
                assert_ne!(line.fields["region"], "-", "{line:?}");
                assert!(
                    line.fields["upstream_time"].parse::<f64>().is_ok(),
                    "{line:?}"
                );
            }
            None => {
                assert_eq!(line.fields["backend"], "-", "{line:?}");
                assert_eq!(line.fields["upstream_time"], "-", "{line:?}");
            }
        }
    }

    // logrotate: move the file, send SIGUSR1; later lines go to a new file at the path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    node.proc.signal("USR1");
    node.metrics_when(|m| {
        metric_sum(m, "prescale_access_log_reopens_total", &[("result", "ok")]) == 1.0
    });
    let r = raw_on(node.proxy, "GET", "/api/after-rotation", &[host.as_str()]);
    assert_eq!(r.status, 200);
    let after = lines_when(&path, 1);
    assert_eq!(after.len(), 1, "{after:#?}");
    assert!(after[0].contains("/api/after-rotation"), "{after:#?}");
    assert_eq!(lines_when(&rotated, sent.len()).len(), sent.len());
    let metrics = node.metrics();
    assert_eq!(
        metric_sum(&metrics, "prescale_access_log_lines_total", &[]),
        (sent.len() + 1) as f64
    );
    assert_eq!(
        metric_sum(&metrics, "prescale_access_log_dropped_total", &[]),
        0.0
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("access log reopened"), "{log}");
}

#[test]
fn json_access_log_to_stdout_is_written_whole_before_a_graceful_exit() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = addrs();
    let text = config(
        proxy,
        admin,
        &[web],
        &[batch],
        "[proxy.access_log]\npath = \"-\"\nformat = \"json\"\n",
    );
    let config_path = dir.path().join("prescale.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let (out, log) = (dir.path().join("stdout"), dir.path().join("node.log"));
    let mut node = start_with_stdout(
        "proxy",
        &["proxy", "--config", config_path.to_str().expect("utf8")],
        &out,
        &log,
    );
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(20), &log);
    wait_for_listener(proxy, Duration::from_secs(20), &log);
    let host = format!("Host: {proxy}");
    let mut ids = Vec::new();
    for i in 0..20 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = raw_on(proxy, method, &format!("/api/n{i}"), &[host.as_str()]);
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").expect("id").to_string());
    }
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    let stdout = std::fs::read_to_string(&out).expect("stdout");
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(objects.len(), ids.len(), "{stdout}");
    for (i, (object, id)) in objects.iter().zip(&ids).enumerate() {
        assert_eq!(object["request_id"], id.as_str(), "{object}");
        assert_eq!(object["target"], format!("/api/n{i}"), "{object}");
        assert_eq!(object["status"], 200, "{object}");
        assert_eq!(object["fleet"], "web", "{object}");
        assert_eq!(object["backend"], web.to_string(), "{object}");
        assert_eq!(object["protocol"], "HTTP/1.1", "{object}");
        assert!(object["upstream_time"].as_f64().is_some(), "{object}");
        assert!(
            object["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{object}"
        );
    }
}

fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[test]
fn request_bodies_reach_the_backend_intact_whatever_their_size_and_method() {
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let node = start_node(&config(proxy, admin, &[web], &[batch], ""));
    let mut client = KeepAliveClient::connect(node.proxy);
    // Up to 64 KiB the direct path reads the body whole; beyond it the general path streams it.
    let cases = [
        ("POST", 0),
        ("POST", 1),
        ("POST", 1024),
        ("PUT", 65_536),
        ("PATCH", 65_537),
        ("DELETE", 10),
        ("OPTIONS", 3),
        ("POST", 300_000),
    ];
    for (method, len) in cases {
        let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let head = format!(
            "{method} /api/body HTTP/1.1\r\nHost: shop\r\nX-User-Id: uploader\r\n\
             Content-Length: {len}\r\n\r\n"
        );
        // The head, then the body in two writes a moment apart: a body arrives in pieces.
        client.write(head.as_bytes());
        let (first, rest) = body.split_at(len / 2);
        client.write(first);
        std::thread::sleep(Duration::from_millis(20));
        client.write(rest);
        let r = client.receive(false);
        assert_eq!(r.status, 200, "{method} {len}: {}", r.text());
        let echo = r.json();
        assert_eq!(echo["method"], method, "{echo}");
        assert_eq!(echo["body_bytes"], len as u64, "{method} {len}: {echo}");
        assert_eq!(echo["body_fnv1a"], fnv1a(&body), "{method} {len}: {echo}");
        assert_eq!(echo["headers"]["content-length"], len.to_string(), "{echo}");
    }
    // Pipelined: two requests with bodies in one write, answered in order on one connection.
    let mut both = Vec::new();
    for body in ["first body", "second, longer body"] {
        both.extend_from_slice(
            format!(
                "POST /api/pipelined HTTP/1.1\r\nHost: shop\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    client.write(&both);
    for body in ["first body", "second, longer body"] {
        let echo = client.receive(false).json();
        assert_eq!(echo["body_fnv1a"], fnv1a(body.as_bytes()), "{echo}");
    }
    let metrics = node.metrics_when(|m| {
        metric_sum(m, "prescale_requests_total", &[("fleet", "web")]) >= (cases.len() + 2) as f64
    });
    assert_eq!(
        metric_sum(&metrics, "prescale_requests_total", &[("fleet", "web")]),
        (cases.len() + 2) as f64,
        "{metrics}"
    );
}

#[test]
fn a_request_that_may_have_reached_a_backend_is_resent_only_when_idempotent() {
    let counts = [
        std::sync::Arc::new(RawBackendCounts::default()),
        std::sync::Arc::new(RawBackendCounts::default()),
    ];
    let backends = [
        raw_backend(std::sync::Arc::clone(&counts[0])),
        raw_backend(std::sync::Arc::clone(&counts[1])),
    ];
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    // Not ejected after a failure, so every request finds both backends.
    let text = config(proxy, admin, &backends, &[batch], "").replace(
        "eject_after_failures = 1\n",
        "eject_after_failures = 1000\n",
    );
    let node = start_node(&text);
    let vanished = || {
        counts
            .iter()
            .map(|c| c.vanished.load(std::sync::atomic::Ordering::SeqCst))
            .sum::<usize>()
    };
    let host = format!("Host: {proxy}");
    // (method, body framing: direct path for a length, general for chunked, attempts expected)
    let cases = [
        ("POST", "Content-Length: 2", 1),
        ("POST", "Transfer-Encoding: chunked", 1),
        ("PATCH", "Content-Length: 2", 1),
        ("PUT", "Content-Length: 2", 2),
        ("GET", "Content-Length: 0", 2),
        ("DELETE", "Content-Length: 2", 2),
    ];
    for (method, framing, attempts) in cases {
        let before = vanished();
        let body = match framing {
            "Content-Length: 0" => "",
            "Transfer-Encoding: chunked" => "2\r\n{}\r\n0\r\n\r\n",
            _ => "{}",
        };
        let raw = format!(
            "{method} /vanish HTTP/1.1\r\n{host}\r\nConnection: close\r\n{framing}\r\n\r\n{body}"
        );
        let r = raw_request(node.proxy, raw.as_bytes()).expect("response");
        assert_eq!(r.status, 502, "{method} ({framing}): {}", r.text());
        assert!(r.header("x-request-id").is_some(), "{method}");
        assert_eq!(
            vanished() - before,
            attempts,
            "{method} ({framing}): times the backends got it"
        );
    }
}

#[test]
fn client_limits_refuse_beyond_their_rate_and_connections_and_connections_end_after_keepalive_requests(
) {
    use std::io::Read;
    let (_web_proc, web) = start_backend("web-1", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    // One request per 2 s with a burst of 4: five at once, then none for a while.
    let text = config(
        proxy,
        admin,
        &[web],
        &[batch],
        "[proxy.client_limits]\nconnections = 2\nrequests_per_sec = 0.5\nburst = 4\n",
    )
    .replace(
        "shutdown_grace_secs = 20",
        "shutdown_grace_secs = 20\nkeepalive_requests = 3",
    );
    let node = start_node(&text);
    let host = format!("Host: {proxy}");

    // The rate is per client address: loopback is a trusted proxy, so X-Forwarded-For names
    // the client; each phase below is a client of its own.
    let client = |ip: &str| format!("X-Forwarded-For: {ip}");
    let limited = client("192.0.2.50");
    for method in ["GET", "POST", "GET", "POST", "GET"] {
        let r = raw_on(
            node.proxy,
            method,
            "/api/x",
            &[host.as_str(), limited.as_str()],
        );
        assert_eq!(r.status, 200, "{method} within the burst: {}", r.text());
    }
    for method in ["GET", "POST"] {
        let r = raw_on(
            node.proxy,
            method,
            "/api/x",
            &[host.as_str(), limited.as_str()],
        );
        assert_eq!(r.status, 429, "{method} beyond the burst: {}", r.text());
        assert!(r
            .header("retry-after")
            .is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s >= 1)));
        assert!(r.header("x-request-id").is_some(), "{method}");
    }
    let other = client("192.0.2.51");
    let r = raw_on(
        node.proxy,
        "GET",
        "/api/x",
        &[host.as_str(), other.as_str()],
    );
    assert_eq!(r.status, 200, "another client has its own allowance");
    let metrics = node.metrics();
    assert_eq!(
        metric_sum(
            &metrics,
            "prescale_client_limited_total",
            &[("limit", "requests")]
        ),
        2.0,
        "{metrics}"
    );

    // keepalive_requests: the third request on a connection is its last, on either path.
    let patient = client("192.0.2.60");
    let mut keep = KeepAliveClient::connect(node.proxy);
    let get = format!("GET /api/k HTTP/1.1\r\n{host}\r\n{patient}\r\n\r\n");
    let post = format!(
        "POST /api/k HTTP/1.1\r\n{host}\r\n{patient}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    for (i, raw) in [&get, &post, &get].into_iter().enumerate() {
        let r = keep.send(raw.as_bytes(), false);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let closing = r
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        assert_eq!(closing, i == 2, "request {i}: {:?}", r.headers);
    }
    let mut stream = keep.into_stream();
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).ok(),
        Some(0),
        "closed after the third"
    );

    // Two connections per peer address: a third is answered and closed.
    let first = client("192.0.2.70");
    let request = format!("GET /api/c HTTP/1.1\r\n{host}\r\n{first}\r\n\r\n");
    let mut a = KeepAliveClient::connect(node.proxy);
    let mut b = KeepAliveClient::connect(node.proxy);
    assert_eq!(a.send(request.as_bytes(), false).status, 200);
    assert_eq!(b.send(request.as_bytes(), false).status, 200);
    let second = client("192.0.2.71");
    let r = raw_on(
        node.proxy,
        "GET",
        "/api/c",
        &[host.as_str(), second.as_str()],
    );
    assert_eq!(r.status, 429, "a third connection: {}", r.text());
    assert!(r.text().contains("too many connections"), "{}", r.text());
    drop(a);
    // Once one closes there is room again.
    wait_until("a connection slot frees", Duration::from_secs(5), || {
        raw_on(
            node.proxy,
            "GET",
            "/api/c",
            &[host.as_str(), second.as_str()],
        )
        .status
            == 200
    });
    assert_eq!(b.send(request.as_bytes(), false).status, 200);
    let metrics = node.metrics();
    assert!(
        metric_sum(
            &metrics,
            "prescale_client_limited_total",
            &[("limit", "connections")]
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn a_backend_at_its_connection_cap_is_passed_over_and_a_full_fleet_answers_503() {
    let (_web1_proc, web1) = start_backend("web-1", None, &[]);
    let (_web2_proc, web2) = start_backend("web-2", None, &[]);
    let (_batch_proc, batch) = start_backend("batch-1", None, &[]);
    let (proxy, admin) = addrs();
    let text = config(proxy, admin, &[web1, web2], &[batch], "").replacen(
        "eject_after_failures = 1\n",
        "eject_after_failures = 1\nmax_connections_per_backend = 1\n",
        1,
    );
    let node = start_node(&text);
    let slow = |user: &'static str| {
        std::thread::spawn(move || get(proxy, "/api/slow?sleep_ms=1500", &[("X-User-Id", user)]))
    };
    // Two slow requests take both backends' one connection each...
    let first = slow("patient-1");
    std::thread::sleep(Duration::from_millis(200));
    let second = slow("patient-2");
    std::thread::sleep(Duration::from_millis(200));
    // ...so the next request finds no room: 503 at once, not a wait.
    let started = Instant::now();
    let r = get(node.proxy, "/api/now", &[("X-User-Id", "impatient")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(
        r.text().contains("max_connections_per_backend"),
        "{}",
        r.text()
    );
    let (a, b) = (first.join().expect("first"), second.join().expect("second"));
    assert_eq!((a.status, b.status), (200, 200));
    // Each went to a backend of its own: the one at its cap was passed over.
    assert_ne!(a.json()["backend"], b.json()["backend"]);
    assert_eq!(
        get(node.proxy, "/api/now", &[("X-User-Id", "impatient")]).status,
        200
    );
}

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, FEATURE_DIM};

use super::REASONS_LISTED;
use crate::admin::{AdminRequest, AdminRoutes};
use crate::dataplane::DataPlane;
use crate::meters::Observation;

const TOKEN: &str = "lookup-test-admin-token-0123456789";
/// A raw id that must never come back in an answer.
const RAW_ID: &str = "alice-7f3a91@example.org";

fn plane(profiling: bool) -> Arc<DataPlane> {
    let config = prescale_config::parse_str(
        &format!(
            r#"
            [admin]
            token = "{TOKEN}"
            [identity]
            secret = "lookup-test-secret-0123456789abcdef"
            max_len = 64
            [profiling]
            enabled = {profiling}
            user_table_mib = 1
            [[regions]]
            name = "eu"
            countries = ["GB"]
            default_fleet = "web"
            [[fleets]]
            name = "web"
            region = "eu"
            backends = ["127.0.0.1:1"]
            "#
        ),
        "test",
    )
    .expect("valid test config");
    Arc::new(DataPlane::new(&config).expect("data plane"))
}

/// `n` requests of the user `id` (sent as `X-User-Id`, as a client would); the user's key as
/// the request path computed it.
fn send(plane: &DataPlane, id: &str, n: usize) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-user-id",
        HeaderValue::from_str(id).expect("header value"),
    );
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    let mut user = 0;
    for _ in 0..n {
        let admitted = plane
            .admit(
                &Method::GET,
                "/api/v1/items",
                &headers,
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
            .expect("admitted");
        plane.record(
            admitted.user,
            admitted.meter,
            Observation {
                status: 200,
                upstream_failed: false,
                latency: Duration::from_millis(2),
                bytes_in: 0,
                bytes_out: 2_000,
            },
        );
        user = admitted.user;
    }
    user
}

fn model(version: u64, anomaly_distance: Option<f32>) -> ProfileModel {
    let centroid = |id: u32, name: &str, automation: f32| {
        let mut center = vec![0.0; FEATURE_DIM];
        center[14] = automation; // automation_share
        center[10] = automation; // api_share
        Centroid {
            id: ProfileId(id),
            name: name.to_string(),
            center,
            settings: None,
        }
    };
    ProfileModel {
        format: ProfileModel::FORMAT,
        version,
        built_at: 1_700_000_000,
        mean: vec![0.0; FEATURE_DIM],
        scale: vec![1.0; FEATURE_DIM],
        centroids: vec![
            centroid(10, "browsers", 0.0),
            centroid(11, "scripts", 1.0),
            centroid(12, "halfway", 0.5),
            centroid(13, "far-out", 9.0),
        ],
        anomaly_distance,
    }
}

/// The admin listener of `plane`, serving on a loopback port until the runtime is dropped.
struct Listener {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

fn listen(plane: &Arc<DataPlane>) -> Listener {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let routes = Arc::new(AdminRoutes {
        handlers: plane.admin_handlers(),
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    runtime.spawn(crate::admin::serve(listener, routes, watch));
    Listener {
        addr,
        _runtime: runtime,
        _shutdown: shutdown,
    }
}

struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// One HTTP/1.1 GET over a fresh connection.
fn get(listener: &Listener, target: &str, token: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(listener.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Answer {
        status,
        body: body.to_string(),
    }
}

fn lookup_of(listener: &Listener, id: &str) -> Answer {
    get(
        listener,
        &format!("/api/v1/users/lookup?id={id}"),
        Some(TOKEN),
    )
}

#[test]
fn a_resident_user_is_explained_through_the_admin_listener() {
    let plane = plane(true);
    let listener = listen(&plane);
    let key = send(&plane, RAW_ID, 5);

    // Admin only: the token guards the route.
    assert_eq!(
        get(
            &listener,
            &format!("/api/v1/users/lookup?id={RAW_ID}"),
            None
        )
        .status,
        401
    );
    assert_eq!(
        get(
            &listener,
            &format!("/api/v1/users/lookup?id={RAW_ID}"),
            Some("wrong-token")
        )
        .status,
        401
    );

    // No model yet: the rules' answer, no model view.
    let answer = lookup_of(&listener, RAW_ID);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        !answer.body.contains(RAW_ID),
        "the raw id came back: {}",
        answer.body
    );
    let report = answer.json();
    assert_eq!(report["user"], format!("{key:016x}"), "{report}");
    assert_eq!(report["resident"], true);
    assert_eq!(report["requests"], 5);
    assert_eq!(report["profile"], "default");
    assert_eq!(report["by_model"], false);
    assert!(report["last_seen"].as_u64().expect("last seen") > 1_700_000_000);
    assert!(report["model"].is_null(), "{report}");
    let features = report["features"].as_object().expect("features by name");
    assert_eq!(features.len(), FEATURE_DIM);
    assert_eq!(features["automation_share"], 1.0, "{report}");
    assert_eq!(features["api_share"], 1.0, "{report}");
    // Percent-encoded, the same id is the same user.
    let encoded = lookup_of(&listener, &RAW_ID.replace('@', "%40"));
    assert_eq!(encoded.json()["user"], report["user"]);

    // With a model: the model chose `scripts`; the nearest three, nearest first; why.
    plane
        .install_model(model(3, Some(100.0)))
        .expect("model installed");
    std::thread::sleep(Duration::from_millis(1100)); // a new second: no reused answer
    send(&plane, RAW_ID, 1);
    let answer = lookup_of(&listener, RAW_ID);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        !answer.body.contains(RAW_ID),
        "the raw id came back: {}",
        answer.body
    );
    let report = answer.json();
    assert_eq!(report["profile"], "scripts", "{report}");
    assert_eq!(report["by_model"], true, "{report}");
    let view = &report["model"];
    assert_eq!(view["version"], 3);
    assert_eq!(view["anomaly_distance"], 100.0);
    assert_eq!(view["answer"], "scripts", "{report}");
    let nearest: Vec<&str> = view["nearest"]
        .as_array()
        .expect("nearest")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(nearest, ["scripts", "halfway", "browsers"], "{report}");
    let distances: Vec<f64> = view["nearest"]
        .as_array()
        .expect("nearest")
        .iter()
        .map(|n| n["distance"].as_f64().expect("distance"))
        .collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{report}");
    assert_eq!(view["nearest"][0]["id"], 11);
    let why = &view["why"];
    assert_eq!(why["centroid"], "scripts");
    assert!((why["distance"].as_f64().expect("distance") - distances[0]).abs() < 1e-4);
    let reasons = why["features"].as_array().expect("features");
    assert_eq!(reasons.len(), REASONS_LISTED, "{report}");
    let contributions: Vec<f64> = reasons
        .iter()
        .map(|r| r["contribution"].as_f64().expect("contribution"))
        .collect();
    assert!(contributions.windows(2).all(|w| w[0] >= w[1]), "{report}");
    // The largest term is the user's largest feature away from the centroid's 0: the response
    // bytes (ln(1 + ~EWMA of 2000 bytes)).
    assert_eq!(reasons[0]["feature"], "response_bytes_log", "{report}");
    assert_eq!(reasons[0]["centroid_value"], 0.0, "{report}");
    let share: f64 = reasons
        .iter()
        .map(|r| r["share"].as_f64().expect("share"))
        .sum();
    assert!(share > 0.0 && share <= 1.0 + 1e-6, "{report}");

    // A threshold closer than the user's nearest centroid: `anomalous`, still the model's.
    plane
        .install_model(model(4, Some(0.01)))
        .expect("model installed");
    std::thread::sleep(Duration::from_millis(1100));
    send(&plane, RAW_ID, 1);
    let report = lookup_of(&listener, RAW_ID).json();
    assert_eq!(report["profile"], "anomalous", "{report}");
    assert_eq!(report["by_model"], true, "{report}");
    assert_eq!(report["model"]["answer"], "anomalous", "{report}");
    assert_eq!(report["model"]["why"]["centroid"], "scripts", "{report}");
}

#[test]
fn bad_and_unknown_ids_are_errors_that_do_not_echo_the_id() {
    let plane = plane(true);
    let listener = listen(&plane);
    send(&plane, RAW_ID, 2);
    for (target, status, says) in [
        ("/api/v1/users/lookup".to_string(), 400, "missing"),
        ("/api/v1/users/lookup?other=1".to_string(), 400, "missing"),
        ("/api/v1/users/lookup?id=".to_string(), 400, "empty"),
        (
            format!("/api/v1/users/lookup?id={}", "x".repeat(65)),
            400,
            "longer than 64 bytes",
        ),
        (
            "/api/v1/users/lookup?id=has%20space".to_string(),
            400,
            "not a usable user id",
        ),
        (
            "/api/v1/users/lookup?id=bob-never-seen".to_string(),
            404,
            "not resident",
        ),
    ] {
        let answer = get(&listener, &target, Some(TOKEN));
        assert_eq!(answer.status, status, "{target}: {}", answer.body);
        let message = answer.json()["error"]
            .as_str()
            .expect("an error message")
            .to_string();
        assert!(message.contains(says), "{target}: {message}");
        for raw in ["bob-never-seen", "has space", "xxxxxxxxxx"] {
            assert!(
                !message.contains(raw),
                "{target}: the id came back: {message}"
            );
        }
    }
    // The 404 names the user by its key.
    let unknown = lookup_of(&listener, "bob-never-seen").json();
    let message = unknown["error"].as_str().expect("message");
    assert!(
        message
            .split_whitespace()
            .nth(1)
            .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit())),
        "{message}"
    );
}

#[test]
fn without_profiling_there_is_nothing_to_look_up() {
    let plane = plane(false);
    let routes = AdminRoutes {
        handlers: plane.admin_handlers(),
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header"),
    );
    let response = routes.respond(&AdminRequest {
        method: Method::GET,
        path: "/api/v1/users/lookup".into(),
        query: Some(format!("id={RAW_ID}")),
        headers,
        body: bytes::Bytes::new(),
    });
    assert_eq!(response.status(), 409);
}

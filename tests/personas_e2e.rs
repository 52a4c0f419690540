//! Operator personas through the admin API of a real `prescale up` (its in-process forecaster
//! owns them): create, read, list, update (new versions, old ones readable), delete (versions
//! still readable by number), conflicts and unknown names; every bad input refused with a
//! message naming what is wrong; versions surviving a restart of `up` on the same state
//! directory, and never reused after a deletion.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A single-node config with fleets `web` and `batch` in region `local`, static backends that
/// nothing serves (no process is started; personas do not need them).
fn config(dir: &Path) -> std::path::PathBuf {
    up_config(
        dir,
        r#"default_fleet = "web"

[[fleets]]
name = "web"
region = "local"
backends = ["127.0.0.1:9"]

[[fleets]]
name = "batch"
region = "local"
backends = ["127.0.0.1:9"]
"#,
    )
}

fn start_up(dir: &Path, admin: SocketAddr, log: &str) -> Proc {
    let args = up_args(
        &dir.join("state"),
        loopback(),
        admin,
        Some(&config(dir)),
        None,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.join(log);
    let up = start("up", &args, &log);
    wait_for_status(
        admin,
        "/api/v1/personas",
        200,
        Duration::from_secs(60),
        &log,
    );
    up
}

fn stop(mut up: Proc) {
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status}");
}

fn send(admin: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    request(
        admin,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    )
}

fn send_json(admin: SocketAddr, method: &str, path: &str, body: &Value) -> HttpResponse {
    send(admin, method, path, body.to_string().as_bytes())
}

/// The documented example, in this config's region and fleet (numbers written as the answers
/// write them back, so that documents compare equal).
fn batch_exports() -> Value {
    json!({
        "name": "batch-exports",
        "description": "nightly export jobs",
        "resources": {"cpu_share": 0.02, "memory_mb": 64.0, "network_mbps": 0.5, "io_ops": 3.0},
        "traffic": {
            "peak_hours_utc": [1, 2, 3],
            "regions": ["local"],
            "access": ["api", "write", "automation"]
        },
        "tags": ["batch"],
        "revenue_weight": 0.2,
        "priority": 20,
        "fleet": "batch",
        "match_profiles": ["scheduled-*"]
    })
}

fn shoppers() -> Value {
    json!({
        "name": "shoppers",
        "resources": {"cpu_share": 0.005, "memory_mb": 8, "network_mbps": 2, "io_ops": 0.5},
        "traffic": {"peak_hours_utc": [], "regions": [], "access": ["static", "mobile", "interactive"]},
        "tags": [],
        "revenue_weight": 3,
        "priority": 200
    })
}

/// `(status, body)` of a request expected to answer JSON.
fn answer(r: &HttpResponse) -> (u16, Value) {
    (r.status, r.json())
}

fn listed(admin: SocketAddr) -> Vec<(String, u64)> {
    let r = get(admin, "/api/v1/personas", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["personas"]
        .as_array()
        .expect("personas array")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["version"].as_u64().expect("version"),
            )
        })
        .collect()
}

/// The error message of a rejected request, checking its status.
fn refused(r: &HttpResponse, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {}", r.text()))
        .to_string()
}

#[test]
fn personas_crud_with_versions_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = loopback();
    let up = start_up(dir.path(), admin, "up.log");
    assert_eq!(listed(admin), vec![]);

    // Create.
    let r = send_json(admin, "POST", "/api/v1/personas", &batch_exports());
    let (status, created) = answer(&r);
    assert_eq!(status, 201, "{created}");
    assert_eq!(r.header("location"), Some("/api/v1/personas/batch-exports"));
    assert_eq!(created["version"], 1);
    assert!(created["created_at"].as_u64().expect("created_at") > 1_600_000_000_000);
    for key in [
        "name",
        "description",
        "resources",
        "traffic",
        "tags",
        "revenue_weight",
        "priority",
        "fleet",
        "match_profiles",
    ] {
        assert_eq!(created[key], batch_exports()[key], "{key}");
    }
    let message = refused(
        &send_json(admin, "POST", "/api/v1/personas", &batch_exports()),
        409,
    );
    assert!(message.contains("exists already"), "{message}");
    let (status, read) = answer(&get(admin, "/api/v1/personas/batch-exports", &[]));
    assert_eq!((status, &read), (200, &created));

    // Update: a new version, the body's name left out.
    let mut changed = batch_exports();
    changed.as_object_mut().expect("object").remove("name");
    changed["priority"] = json!(30);
    let (status, updated) = answer(&send_json(
        admin,
        "PUT",
        "/api/v1/personas/batch-exports",
        &changed,
    ));
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["version"].as_u64(), updated["priority"].as_u64()),
        (Some(2), Some(30))
    );
    let message = refused(
        &send_json(admin, "PUT", "/api/v1/personas/batch-exports", &shoppers()),
        400,
    );
    assert!(message.starts_with("name: "), "{message}");
    let (_, first) = answer(&get(admin, "/api/v1/personas/batch-exports?version=1", &[]));
    assert_eq!(first, created);
    let (_, latest) = answer(&get(admin, "/api/v1/personas/batch-exports", &[]));
    assert_eq!(latest, updated);
    let message = refused(
        &get(admin, "/api/v1/personas/batch-exports?version=3", &[]),
        404,
    );
    assert!(message.contains("versions 1 to 2"), "{message}");

    // A second persona, then its deletion.
    let (status, _) = answer(&send_json(admin, "POST", "/api/v1/personas", &shoppers()));
    assert_eq!(status, 201);
    assert_eq!(
        listed(admin),
        vec![("batch-exports".into(), 2), ("shoppers".into(), 1)]
    );
    let (status, deleted) = answer(&request(
        admin,
        "DELETE",
        "/api/v1/personas/shoppers",
        &[],
        b"",
    ));
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        (deleted["name"].as_str(), deleted["version"].as_u64()),
        (Some("shoppers"), Some(1))
    );
    assert!(deleted["deleted_at"].as_u64().is_some(), "{deleted}");
    assert_eq!(listed(admin), vec![("batch-exports".into(), 2)]);
    let message = refused(&get(admin, "/api/v1/personas/shoppers", &[]), 404);
    assert!(message.contains("deleted"), "{message}");
    let (status, old) = answer(&get(admin, "/api/v1/personas/shoppers?version=1", &[]));
    assert_eq!((status, &old["deleted_at"]), (200, &deleted["deleted_at"]));
    refused(
        &request(admin, "DELETE", "/api/v1/personas/shoppers", &[], b""),
        404,
    );
    refused(
        &send_json(admin, "PUT", "/api/v1/personas/shoppers", &shoppers()),
        404,
    );
    refused(&get(admin, "/api/v1/personas/nobody", &[]), 404);
    refused(&get(admin, "/api/v1/personas/nobody?version=1", &[]), 404);

    // Other methods.
    let r = request(admin, "PATCH", "/api/v1/personas/batch-exports", &[], b"{}");
    refused(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    let r = request(admin, "DELETE", "/api/v1/personas", &[], b"");
    refused(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));

    // A restart on the same state: everything is still there, and versions go on.
    stop(up);
    let up = start_up(dir.path(), admin, "up-again.log");
    assert_eq!(listed(admin), vec![("batch-exports".into(), 2)]);
    let (_, first_again) = answer(&get(admin, "/api/v1/personas/batch-exports?version=1", &[]));
    assert_eq!(first_again, created);
    let (_, old_again) = answer(&get(admin, "/api/v1/personas/shoppers?version=1", &[]));
    assert_eq!(old_again, old);
    let (status, recreated) = answer(&send_json(admin, "POST", "/api/v1/personas", &shoppers()));
    assert_eq!(status, 201, "{recreated}");
    assert_eq!(recreated["version"], 2, "a version number is never reused");
    assert!(recreated.get("deleted_at").is_none(), "{recreated}");
    let (_, third) = answer(&send_json(
        admin,
        "PUT",
        "/api/v1/personas/batch-exports",
        &batch_exports(),
    ));
    assert_eq!(third["version"], 3);
    assert_eq!(
        listed(admin),
        vec![("batch-exports".into(), 3), ("shoppers".into(), 2)]
    );
    stop(up);
}

#[test]
fn bad_persona_input_is_refused_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = loopback();
    let up = start_up(dir.path(), admin, "up.log");

    let with = |path: &[&str], value: Value| {
        let mut body = batch_exports();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (with(&["color"], json!("red")), "color: ", "unknown field"),
        (
            with(&["resources", "disk_gb"], json!(1)),
            "resources.disk_gb: ",
            "unknown field",
        ),
        (
            with(&["traffic", "weekend"], json!(true)),
            "traffic.weekend: ",
            "unknown field",
        ),
        (with(&["version"], json!(4)), "version: ", "unknown field"),
        (
            with(&["priority"], json!("high")),
            "priority: ",
            "invalid type",
        ),
        (with(&["tags"], json!("batch")), "tags: ", "invalid type"),
        (
            with(&["resources", "cpu_share"], json!("0.1")),
            "resources.cpu_share: ",
            "invalid type",
        ),
        (
            with(&["resources"], json!([0.1, 64, 0.5, 3])),
            "resources: ",
            "must be an object",
        ),
        (with(&["priority"], json!(256)), "priority: ", "0 to 255"),
        (
            with(&["revenue_weight"], json!(-1)),
            "revenue_weight: ",
            "from 0 to",
        ),
        (
            with(&["resources", "memory_mb"], json!(-64)),
            "resources.memory_mb: ",
            ">= 0",
        ),
        (
            with(&["traffic", "peak_hours_utc"], json!([1, 24])),
            "traffic.peak_hours_utc[1]: ",
            "0 to 23",
        ),
        (
            with(&["traffic", "peak_hours_utc"], json!([2, 2])),
            "traffic.peak_hours_utc[1]: ",
            "twice",
        ),
        (
            with(&["traffic", "access"], json!(["api", "telepathy"])),
            "traffic.access[1]: ",
            "telepathy",
        ),
        (
            with(&["traffic", "regions"], json!(["mars"])),
            "traffic.regions[0]: ",
            "known: local",
        ),
        (
            with(&["fleet"], json!("gpu")),
            "fleet: ",
            "known: batch, web",
        ),
        (
            with(&["name"], json!("no spaces")),
            "name: ",
            "not a valid persona name",
        ),
        (
            with(&["description"], json!("d".repeat(1025))),
            "description: ",
            "at most 1024",
        ),
        (
            with(&["match_profiles"], json!(["ok-*", "a/b"])),
            "match_profiles[1]: ",
            "not a valid pattern",
        ),
        (json!([1, 2]), "", "must be a JSON object"),
    ];
    for (body, field, says) in cases {
        let message = refused(&send_json(admin, "POST", "/api/v1/personas", &body), 400);
        assert!(
            message.starts_with(field) && message.contains(says),
            "{body}: {message}"
        );
    }
    let message = refused(
        &send(admin, "POST", "/api/v1/personas", b"{\"name\": "),
        400,
    );
    assert!(message.contains("not a JSON persona document"), "{message}");
    let message = refused(&send(admin, "POST", "/api/v1/personas", b""), 400);
    assert!(message.contains("not a JSON persona document"), "{message}");

    // Oversized: a valid document padded past the persona limit (within the listener's 1 MiB).
    let mut big = batch_exports().to_string().into_bytes();
    big.resize(100 * 1024, b' ');
    let message = refused(&send(admin, "POST", "/api/v1/personas", &big), 413);
    assert!(message.contains("at most 65536"), "{message}");

    // Bad paths and query parameters.
    let (status, _) = answer(&send_json(
        admin,
        "POST",
        "/api/v1/personas",
        &batch_exports(),
    ));
    assert_eq!(status, 201);
    for (path, says) in [
        ("/api/v1/personas/batch-exports?version=abc", "version: "),
        ("/api/v1/personas/batch-exports?version=0", "version: "),
        ("/api/v1/personas/batch-exports?version=-1", "version: "),
        ("/api/v1/personas/batch-exports?version=", "version: "),
        (
            "/api/v1/personas/batch-exports?version=1&version=1",
            "more than once",
        ),
        (
            "/api/v1/personas/batch-exports?colour=blue",
            "unknown query parameter `colour`",
        ),
        (
            "/api/v1/personas?version=1",
            "unknown query parameter `version`",
        ),
        ("/api/v1/personas/bad%20name", "not a valid persona name"),
        ("/api/v1/personas/", "not a valid persona name"),
    ] {
        let message = refused(&get(admin, path, &[]), 400);
        assert!(message.contains(says), "{path}: {message}");
    }
    let message = refused(
        &send_json(
            admin,
            "PUT",
            "/api/v1/personas/batch-exports?version=1",
            &batch_exports(),
        ),
        400,
    );
    assert!(message.contains("unknown query parameter"), "{message}");
    // A PUT of bad input changes nothing.
    let message = refused(
        &send_json(
            admin,
            "PUT",
            "/api/v1/personas/batch-exports",
            &with(&["priority"], json!(-5)),
        ),
        400,
    );
    assert!(message.starts_with("priority: "), "{message}");
    assert_eq!(listed(admin), vec![("batch-exports".into(), 1)]);
    stop(up);
}

use std::net::{IpAddr, Ipv4Addr};

use http::Method;

use super::*;

const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
[identity]
secret = "reload-test-secret-0123456789"
[profiling]
enabled = false
[[regions]]
name = "eu"
countries = ["GB"]
default_fleet = "web"
[[fleets]]
name = "web"
region = "eu"
backends = ["127.0.0.1:1"]
[[fleets]]
name = "batch"
region = "eu"
backends = ["127.0.0.1:2"]
[assignment]
new_user_min_requests = 0
"#;

fn parse(text: &str) -> Config {
    prescale_config::parse_str(text, "test").expect("valid test config")
}

fn with(extra: &str) -> Config {
    parse(&format!("{BASE}\n{extra}"))
}

/// The fleet a request to `path` from `user` goes to.
fn fleet_of(plane: &DataPlane, path: &str, user: &'static str) -> String {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user-id", http::HeaderValue::from_static(user));
    let admitted = plane
        .admit(
            &Method::GET,
            path,
            &headers,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .expect("admitted");
    plane.fleets.get(admitted.fleet).name.clone()
}

#[test]
fn reloadable_keys_are_no_restart_keys() {
    let running = parse(BASE);
    let next = parse(
        &(BASE
            .replace("127.0.0.1:1\"", "127.0.0.1:3\", \"127.0.0.1:4\"")
            .replace("new_user_min_requests = 0", "new_user_min_requests = 2")
            .replace("reload-test-secret-0123456789", "another-secret-0123456789")
            .replace(
                "backends = [\"127.0.0.1:2\"]",
                "backends = [\"127.0.0.1:2\"]\nretries = 5\nmax_connections_per_backend = 9",
            )
            + r#"
[[routes]]
profile = "reports"
fleet = "batch"
[[profiles]]
name = "reports"
priority = 10
"#),
    );
    assert_eq!(restart_keys(&running, &next), Vec::<String>::new());
    assert_eq!(restart_keys(&running, &running), Vec::<String>::new());
}

#[test]
fn other_keys_are_named_as_needing_a_restart() {
    let running = parse(BASE);
    let next = parse(&BASE.replace("127.0.0.1:8080", "127.0.0.1:8081").replace(
        "backends = [\"127.0.0.1:2\"]",
        "backends = [\"127.0.0.1:2\"]\nretries = 3\ntimeouts = { connect_ms = 300 }\nupstream = { protocol = \"http2\" }\ncapacity_rps = 11",
    ));
    assert_eq!(
        restart_keys(&running, &next),
        vec!["fleets[batch@eu].capacity_rps", "proxy.listen"]
    );
    let added = with("[[fleets]]\nname = \"gpu\"\nregion = \"eu\"\nbackends = [\"127.0.0.1:5\"]");
    assert_eq!(
        restart_keys(&running, &added),
        vec!["fleets (added, removed or reordered)"]
    );
    let mut limited = parse(BASE);
    limited.proxy.client_limits.requests_per_sec = 5.0;
    limited.identity.new_users_per_client_per_sec = 7;
    assert_eq!(restart_keys(&running, &limited), Vec::<String>::new());
    limited.proxy.h2c = !limited.proxy.h2c;
    assert_eq!(restart_keys(&running, &limited), vec!["proxy.h2c"]);
}

#[test]
fn a_reload_changes_routes_rules_and_backends_and_a_refused_one_changes_nothing() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    assert_eq!(fleet_of(&plane, "/reports/1", "u1"), "web");

    let mut next = with(
        r#"
[[routes]]
profile = "reports"
fleet = "batch"
"#,
    );
    next.assignment = parse(&BASE.replace(
        "new_user_min_requests = 0",
        "new_user_min_requests = 0\nrules = [{ path_prefix = \"/reports\", profile = \"reports\" }]",
    ))
    .assignment;
    next.fleets[0].backends = vec!["127.0.0.1:3".into(), "127.0.0.1:4".into()];
    let outcome = plane.reload(&next).expect("applied");
    assert_eq!(
        outcome.changed,
        vec!["assignment", "routes", "fleets[web].backends: +2 -1 =0"]
    );
    assert_eq!(fleet_of(&plane, "/reports/1", "u1"), "batch");
    assert_eq!(fleet_of(&plane, "/other", "u1"), "web");
    let web = plane.fleets.get(plane.fleets.index_of("web").expect("web"));
    let addrs: Vec<String> = web
        .backends()
        .backends()
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(addrs, vec!["127.0.0.1:3", "127.0.0.1:4"]);

    // Back to the first list: compared with the running config, not the one started with.
    let outcome = plane.reload(&parse(BASE)).expect("applied");
    assert!(
        outcome
            .changed
            .contains(&"fleets[web].backends: +1 -2 =0".to_string()),
        "{outcome:?}"
    );
    assert_eq!(fleet_of(&plane, "/reports/1", "u1"), "web");

    // Refused whole: a key needing a restart next to a reloadable one.
    let mut refused = next.clone();
    refused.proxy.listen = "127.0.0.1:9999".parse().expect("addr");
    match plane.reload(&refused) {
        Err(ReloadError::NeedsRestart { keys }) => assert_eq!(keys, vec!["proxy.listen"]),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(fleet_of(&plane, "/reports/1", "u1"), "web");
    assert_eq!(plane.reloads.applied.load(Ordering::Relaxed), 2);
    assert_eq!(plane.reloads.refused.load(Ordering::Relaxed), 1);
    assert_eq!(plane.config().proxy.listen, parse(BASE).proxy.listen);
}

#[test]
fn an_identity_source_that_cannot_be_built_refuses_the_reload() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    let mut next = parse(BASE);
    next.identity.sources = vec![prescale_config::IdentitySource::Header {
        name: "bad header".into(),
    }];
    next.fleets[0].backends = vec!["127.0.0.1:3".into()];
    let error = plane.reload(&next).expect_err("refused");
    assert!(error.to_string().contains("identity.sources[0]"), "{error}");
    let web = plane.fleets.get(plane.fleets.index_of("web").expect("web"));
    assert_eq!(web.backends().backends()[0].addr.to_string(), "127.0.0.1:1");
    assert_eq!(plane.reloads.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn a_reload_sets_and_lifts_client_limits() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    let admit = || {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user-id", http::HeaderValue::from_static("u"));
        plane.admit(
            &Method::GET,
            "/",
            &headers,
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        )
    };
    assert!((0..5).all(|_| admit().is_ok()));
    let mut limited = parse(BASE);
    limited.proxy.client_limits.requests_per_sec = 0.1;
    limited.proxy.client_limits.status = 503;
    let outcome = plane.reload(&limited).expect("applied");
    assert_eq!(outcome.changed, vec!["proxy.client_limits"]);
    assert!(admit().is_ok());
    let refused = admit().expect_err("over the rate");
    assert_eq!(refused.status, 503);
    assert!(refused.retry_after_secs.is_some());
    plane.reload(&parse(BASE)).expect("applied");
    assert!((0..5).all(|_| admit().is_ok()));
}

#[test]
fn a_reload_changes_a_fleets_retries_and_caps() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    let batch = plane
        .fleets
        .get(plane.fleets.index_of("batch").expect("batch"));
    let before = batch.retries();
    let next = parse(&BASE.replace(
        "backends = [\"127.0.0.1:2\"]",
        "backends = [\"127.0.0.1:2\"]\nretries = 7\nmax_in_flight_per_backend = 4",
    ));
    assert_ne!(before, 7);
    let outcome = plane.reload(&next).expect("applied");
    assert_eq!(outcome.changed, vec!["fleets[batch] limits"]);
    assert_eq!(batch.retries(), 7);
    assert_eq!(batch.max_in_flight_per_backend(), 4);
}

#[test]
fn a_reload_rebuilds_a_fleets_backends_with_new_timeouts_keeping_their_state() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    let batch = plane
        .fleets
        .get(plane.fleets.index_of("batch").expect("batch"));
    let old = Arc::clone(&batch.backends().backends()[0]);
    let guard = Arc::clone(&old).begin();
    assert_eq!(old.in_flight.load(Ordering::Relaxed), 1);
    let next = parse(&BASE.replace(
        "backends = [\"127.0.0.1:2\"]",
        "backends = [\"127.0.0.1:2\"]\ntimeouts = { read_ms = 1234 }\nload_balancing = \"consistent_hash\"\nhealth_check = { path = \"/ready\" }",
    ));
    let outcome = plane.reload(&next).expect("applied");
    assert_eq!(
        outcome.changed,
        vec![
            "fleets[batch].health_check",
            "fleets[batch].timeouts",
            "fleets[batch].load_balancing"
        ]
    );
    let new = Arc::clone(&batch.backends().backends()[0]);
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(new.id(), old.id(), "the same backend to the tried set");
    assert_eq!(new.addr, old.addr);
    assert!(new.is_ready() && new.is_healthy());
    assert_eq!(
        new.peer.options.read_timeout,
        Some(std::time::Duration::from_millis(1234))
    );
    assert_eq!(
        new.in_flight.load(Ordering::Relaxed),
        1,
        "shared in-flight count"
    );
    assert_eq!(new.requests.load(Ordering::Relaxed), 1);
    drop(guard);
    assert_eq!(new.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(batch.status().load_balancing, "consistent_hash");
    assert_eq!(batch.config().health_check.path, "/ready");
    assert_eq!(batch.available(), 1);

    // Nothing differs: nothing is rebuilt.
    assert_eq!(
        plane.reload(&next).expect("applied").changed,
        Vec::<String>::new()
    );
    assert!(Arc::ptr_eq(&new, &batch.backends().backends()[0]));
}

#[test]
fn a_reload_changes_how_a_fleets_backends_are_spoken_to() {
    let plane = DataPlane::new(&parse(BASE)).expect("data plane");
    let batch = plane
        .fleets
        .get(plane.fleets.index_of("batch").expect("batch"));
    let old = Arc::clone(&batch.backends().backends()[0]);
    assert!(!batch.general_path_only());
    let h2c = parse(&BASE.replace(
        "backends = [\"127.0.0.1:2\"]",
        "backends = [\"127.0.0.1:2\"]\nupstream = { protocol = \"http2\" }",
    ));
    let outcome = plane.reload(&h2c).expect("applied");
    assert_eq!(outcome.changed, vec!["fleets[batch].upstream"]);
    assert!(
        batch.general_path_only(),
        "HTTP/2 backends take the general path"
    );
    let new = Arc::clone(&batch.backends().backends()[0]);
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(new.id(), old.id());
    assert!(new.is_ready());
    assert_eq!(new.peer.options.alpn, pingora::protocols::tls::ALPN::H2);

    // Back to HTTP/1.1: the direct path again.
    assert_eq!(
        plane.reload(&parse(BASE)).expect("applied").changed,
        vec!["fleets[batch].upstream"]
    );
    assert!(!batch.general_path_only());
    assert_eq!(
        batch.backends().backends()[0].peer.options.alpn,
        pingora::protocols::tls::ALPN::H1
    );
}

use prescale_gossip::model::{Centroid, ProfileId, ProfileSettings, FEATURE_DIM};
use prescale_gossip::{NodeShare, ProfileGrant};

use super::*;

fn plane() -> DataPlane {
    let config = prescale_config::parse_str(
        r#"
        [identity]
        secret = "dataplane-test-secret-0123456789"
        [profiling]
        user_table_mib = 1
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
        [[fleets]]
        name = "gpu"
        region = "eu"
        backends = ["127.0.0.1:3"]
        [[routes]]
        profile = "pinned"
        fleet = "batch"
        [[profiles]]
        name = "valued"
        revenue_weight = 5.0
        priority = 250
        "#,
        "test",
    )
    .expect("valid test config");
    DataPlane::new(&config).expect("data plane")
}

fn persona(name: &str, fleet: Option<&str>, priority: u8, revenue: u64) -> ProfileSettings {
    ProfileSettings {
        persona: name.to_string(),
        revenue_weight_milli: revenue,
        priority,
        fleet: fleet.map(str::to_string),
    }
}

fn centroid(id: u32, name: &str, settings: Option<ProfileSettings>) -> Centroid {
    let mut center = vec![0.0; FEATURE_DIM];
    center[0] = id as f32;
    Centroid {
        id: ProfileId(id),
        name: name.to_string(),
        center,
        settings,
    }
}

fn model(version: u64) -> ProfileModel {
    ProfileModel {
        format: ProfileModel::FORMAT,
        version,
        built_at: 1_700_000_000,
        mean: vec![1.0; FEATURE_DIM],
        scale: vec![2.0; FEATURE_DIM],
        centroids: vec![
            // A route names it: its fleet is the route's, its priority the persona's.
            centroid(1, "pinned", Some(persona("jobs", Some("gpu"), 10, 9_000))),
            // `[[profiles]]` names it: the persona's fleet, the config's priority and revenue.
            centroid(2, "valued", Some(persona("vip", Some("gpu"), 7, 9_000))),
            // The persona's fleet is not in this region: the default fleet.
            centroid(
                3,
                "wanderer",
                Some(persona("roaming", Some("nowhere"), 42, 100)),
            ),
            centroid(4, "plain", None),
        ],
        anomaly_distance: Some(3.0),
    }
}

#[test]
fn learned_profiles_take_config_then_persona_then_default_settings() {
    let plane = plane();
    assert_eq!(
        plane.install_model(model(1)),
        Ok(ModelSwap::Installed { version: 1 })
    );
    let registry = plane.assigner.registry();
    let routing = plane.routing.load();
    let fleet = |name: &str| plane.fleets.index_of(name).expect("fleet");
    let row = |name: &str| routing[usize::from(registry.index_of(name).expect(name).0)];
    let expect = |name: &str,
                  fleet: FleetIdx,
                  fleet_source,
                  priority,
                  revenue_weight_milli,
                  settings_source| {
        assert_eq!(
            row(name),
            ProfileRouting {
                fleet,
                fleet_source,
                priority,
                revenue_weight_milli,
                settings_source,
            },
            "{name}"
        );
    };
    use SettingSource::*;
    expect("pinned", fleet("batch"), Route, 10, 9_000, Persona);
    expect("valued", fleet("gpu"), Persona, 250, 5_000, Config);
    expect("wanderer", fleet("web"), Default, 42, 100, Persona);
    expect("plain", fleet("web"), Default, 100, 1_000, Default);
    expect("anomalous", fleet("web"), Default, 100, 1_000, Default);
    expect("default", fleet("web"), Default, 100, 1_000, Default);
    // The request path's tables say the same.
    for name in ["pinned", "valued", "wanderer", "plain", "anomalous"] {
        let index = usize::from(registry.index_of(name).expect(name).0);
        assert_eq!(plane.routes.load()[index], row(name).fleet, "{name}");
        assert_eq!(plane.priorities.load()[index], row(name).priority, "{name}");
    }
    // The fallback is reported (install logs it once per model).
    let fallbacks = plane.rebuild_routes().expect("routes");
    assert_eq!(
        fallbacks,
        vec![FleetFallback {
            profile: "wanderer".into(),
            persona: "roaming".into(),
            fleet: "nowhere".into(),
        }]
    );

    // A model without the settings goes back to the defaults; indexes stay.
    let mut next = model(2);
    for c in &mut next.centroids {
        c.settings = None;
    }
    plane.install_model(next).expect("installed");
    let routing = plane.routing.load();
    let row = |name: &str| routing[usize::from(registry.index_of(name).expect(name).0)];
    assert_eq!(row("valued").fleet, fleet("web"));
    assert_eq!(row("valued").priority, 250);
    assert_eq!(row("pinned").fleet, fleet("batch"));
    assert_eq!(row("pinned").priority, 100);
    assert_eq!(row("wanderer").settings_source, SettingSource::Default);
}

#[test]
fn requests_of_a_learned_profile_go_to_its_persona_fleet() {
    let plane = plane();
    plane.install_model(model(1)).expect("installed");
    // Most of a fresh user's features are 0, scaled (0 - 1) / 2 = -0.5 against centers of 0:
    // a quarter each, and its nearest centroid, `pinned`, is well beyond 3: `anomalous`.
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user-id", http::HeaderValue::from_static("someone"));
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut last = None;
    for _ in 0..5 {
        last = Some(
            plane
                .admit(&Method::GET, "/", &headers, peer)
                .expect("admitted"),
        );
    }
    let admitted = last.expect("admitted");
    let anomalous = plane
        .assigner
        .registry()
        .index_of("anomalous")
        .expect("registered");
    assert_eq!(admitted.meter.profile, anomalous);
    assert_eq!(admitted.fleet, plane.fleets.index_of("web").expect("web"));

    // With a wide anomaly distance the same user is `pinned`'s: routed to `batch`.
    let mut wide = model(2);
    wide.anomaly_distance = Some(100.0);
    plane.install_model(wide).expect("installed");
    // A new second: the model's answer from earlier in the second is not reused.
    std::thread::sleep(Duration::from_millis(1100));
    let admitted = plane
        .admit(&Method::GET, "/", &headers, peer)
        .expect("admitted");
    assert_eq!(
        plane.assigner.name(admitted.meter.profile).as_ref(),
        "pinned"
    );
    assert_eq!(
        admitted.fleet,
        plane.fleets.index_of("batch").expect("batch")
    );
}

#[test]
fn profiles_without_a_grant_borrow_by_their_resolved_revenue() {
    let plane = plane();
    plane.install_model(model(1)).expect("installed");
    // `plain` holds the only grant, at the default revenue 1000 and no tokens to spare beyond
    // its burst; profiles without a grant borrow from it only when their revenue is higher.
    let table = plane
        .grant_table(&[ProfileGrant {
            profile: "plain".into(),
            revenue_weight_milli: 1_000,
            requests_per_minute: 60_000,
            shares: vec![NodeShare {
                node: plane.node_id.clone(),
                requests_per_minute: 60_000,
            }],
        }])
        .expect("a table");
    let index = |name: &str| plane.assigner.registry().index_of(name).expect(name);
    // Persona revenue 9000 (`pinned`), config revenue 5000 (`valued`): above 1000, borrow.
    assert_eq!(table.admit(index("pinned")), GrantDecision::Borrowed);
    assert_eq!(table.admit(index("valued")), GrantDecision::Borrowed);
    // Persona revenue 100 (`wanderer`): below, shed.
    assert_eq!(table.admit(index("wanderer")), GrantDecision::Shed);
}

#[test]
fn the_profiles_report_shows_the_model_and_where_settings_came_from() {
    let plane = plane();
    let before = serde_json::to_value(plane.profiles_report()).expect("json");
    assert!(before["model"].is_null(), "{before}");
    assert_eq!(before["profiles"][1]["routing"]["fleet"], "web", "{before}");
    plane.install_model(model(7)).expect("installed");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user-id", http::HeaderValue::from_static("someone"));
    for _ in 0..4 {
        let admitted = plane
            .admit(
                &Method::GET,
                "/",
                &headers,
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
            .expect("admitted");
        plane.record(
            admitted.user,
            admitted.meter,
            crate::meters::Observation {
                status: 200,
                upstream_failed: false,
                latency: Duration::from_millis(3),
                bytes_in: 0,
                bytes_out: 10,
            },
        );
    }
    let report = serde_json::to_value(plane.profiles_report()).expect("json");
    let model = &report["model"];
    assert_eq!(model["version"], 7, "{report}");
    assert_eq!(model["built_at"], 1_700_000_000u64, "{report}");
    assert_eq!(model["anomaly_distance"], 3.0, "{report}");
    let learned = model["profiles"].as_array().expect("learned profiles");
    assert_eq!(learned.len(), 4, "{report}");
    let valued = &learned[1];
    assert_eq!(valued["id"], 2);
    assert_eq!(valued["name"], "valued");
    assert_eq!(valued["population"], 0);
    // center × scale + mean: dimension 0 is 2 × 2 + 1, the others 0 × 2 + 1.
    assert_eq!(valued["centroid"]["rate_per_min_log"], 5.0, "{valued}");
    assert_eq!(valued["centroid"]["session_gap_log"], 1.0, "{valued}");
    let keys: Vec<&String> = valued["centroid"]
        .as_object()
        .expect("an object")
        .keys()
        .collect();
    assert_eq!(keys.len(), FEATURE_DIM);
    assert_eq!(valued["persona"]["persona"], "vip", "{valued}");
    assert_eq!(valued["routing"]["fleet"], "gpu", "{valued}");
    assert_eq!(valued["routing"]["fleet_source"], "persona", "{valued}");
    assert_eq!(valued["routing"]["priority"], 250, "{valued}");
    assert_eq!(valued["routing"]["settings_source"], "config", "{valued}");
    assert_eq!(learned[0]["routing"]["fleet_source"], "route", "{report}");
    assert!(learned[3]["persona"].is_null(), "{report}");
    // The user (4 requests, past the new-user threshold of 3) is anomalous, with its requests.
    let anomalous = &model["anomalous"];
    assert_eq!(anomalous["population"], 1, "{report}");
    assert_eq!(anomalous["routing"]["fleet"], "web", "{report}");
    assert_eq!(anomalous["routing"]["fleet_source"], "default", "{report}");
    let listed = report["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .find(|p| p["name"] == "anomalous")
        .expect("anomalous listed")
        .clone();
    assert_eq!(listed["users"], 1, "{listed}");
    assert_eq!(listed["requests"], 2, "{listed}");
    assert!(listed["latency_ms"]["p50"].as_f64().is_some(), "{listed}");
}

use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, ProfileSettings, FEATURE_DIM};

use super::*;
use crate::ingest::testing::{config, ingest, NOW};

fn event(user: &str, at: u64, event_type: &str) -> String {
    format!(r#"{{"user_id":"{user}","timestamp":{at},"event_type":"{event_type}","region":"eu"}}"#)
}

fn build(ingest: &Ingest, lines: &[String]) -> Batch {
    let events = ingest
        .parse_at(lines.join("\n").as_bytes(), NOW + 600)
        .unwrap_or_else(|e| panic!("{e:?}"));
    ingest.build(events).unwrap_or_else(|e| panic!("{e}"))
}

fn entry<'a>(sketch: &'a Sketch, profile: &str) -> &'a EntryStats {
    &sketch
        .entries
        .iter()
        .find(|e| e.key.profile == profile)
        .unwrap_or_else(|| panic!("no `{profile}` entry in {:?}", sketch.entries))
        .stats
}

#[test]
fn events_become_one_sketch_per_minute_with_their_counts_and_users() {
    let ingest = ingest(&config("[assignment]\nnew_user_min_requests = 1"));
    let mut lines = Vec::new();
    // Minute NOW: 3 users, 5 events; minute NOW + 60: 1 user, 2 events, out of order.
    for (user, offset) in [("a", 1), ("b", 2), ("a", 3), ("c", 59), ("b", 30)] {
        lines.push(event(user, NOW + offset, "view"));
    }
    lines.push(event("a", NOW + 119, "view"));
    lines.insert(0, event("a", NOW + 60, "view"));
    let batch = build(&ingest, &lines);
    assert_eq!(
        batch.summary,
        BatchSummary {
            events: 7,
            minutes: 2,
            users: 3
        }
    );
    let [first, second] = &batch.sketches[..] else {
        panic!("{:?}", batch.sketches)
    };
    assert_eq!(
        (first.interval_start_ms, first.interval_end_ms),
        (NOW * 1000, NOW * 1000 + 60_000)
    );
    assert_eq!(second.interval_start_ms, (NOW + 60) * 1000);
    assert_eq!(
        (first.node.as_str(), first.region.as_str()),
        ("ingest/fc-1", "eu")
    );
    let stats = entry(first, "default");
    assert_eq!(first.entries[0].key.fleet, "web");
    assert_eq!(first.entries[0].key.origin_region, "eu");
    assert_eq!((stats.requests, stats.errors, stats.bytes_in), (5, 0, 0));
    assert!((stats.users.estimate() - 3.0).abs() < 0.5);
    // Every user of the minute is offered to the sample, with features.
    assert_eq!(stats.sample.items().len(), 3);
    assert_eq!(entry(second, "default").requests, 2);
    assert!(first.validate(16).is_ok() && second.validate(16).is_ok());
}

#[test]
fn new_users_rules_and_routes_profile_as_the_proxy_does() {
    let ingest = ingest(&config(
        r#"[assignment]
        new_user_min_requests = 2
        rules = [{ path_prefix = "/export", profile = "exports" }]"#,
    ));
    let lines = vec![
        // A user's first event is `new`, as on the proxy; the rule wins after that.
        event("u1", NOW + 1, "export/csv"),
        event("u1", NOW + 2, "export/csv"),
        event("u1", NOW + 3, "export/pdf"),
        event("u2", NOW + 4, "home"),
        event("u2", NOW + 5, "home"),
    ];
    let batch = build(&ingest, &lines);
    let sketch = &batch.sketches[0];
    assert_eq!(entry(sketch, "new").requests, 2);
    assert_eq!(entry(sketch, "exports").requests, 2);
    assert_eq!(entry(sketch, "default").requests, 1);
    // `exports` has a route to the batch fleet; the others go to the region's default.
    let fleet_of = |profile: &str| {
        sketch
            .entries
            .iter()
            .find(|e| e.key.profile == profile)
            .map(|e| e.key.fleet.clone())
    };
    assert_eq!(fleet_of("exports").as_deref(), Some("batch"));
    assert_eq!(fleet_of("default").as_deref(), Some("web"));
}

#[test]
fn status_bytes_latency_origin_and_fleet_are_counted() {
    let ingest = ingest(&config("[assignment]\nnew_user_min_requests = 1"));
    let lines = vec![
        r#"{"user_id":"a","timestamp":1767261601,"event_type":"x","region":"eu","status":500,"latency_ms":10,"resource_consumption":{"network_bytes":100}}"#.to_string(),
        r#"{"user_id":"a","timestamp":1767261602,"event_type":"x","region":"eu","status":404,"latency_ms":30,"resource_consumption":{"network_bytes":50}}"#.to_string(),
        r#"{"user_id":"b","timestamp":1767261603,"event_type":"x","client_ip":"175.16.199.1","fleet":"batch"}"#.to_string(),
        r#"{"user_id":"c","timestamp":1767261604,"event_type":"x","client_ip":"10.1.2.3","latency_ms":120000}"#.to_string(),
    ];
    let batch = build(&ingest, &lines);
    let sketch = &batch.sketches[0];
    let find = |origin: &str, fleet: &str| {
        &sketch
            .entries
            .iter()
            .find(|e| e.key.origin_region == origin && e.key.fleet == fleet)
            .unwrap_or_else(|| panic!("{origin}/{fleet}: {:?}", sketch.entries))
            .stats
    };
    let eu = find("eu", "web");
    // The unplaceable address falls back to the fallback region, like the proxy's lookup.
    assert_eq!(
        (eu.requests, eu.errors, eu.bytes_in, eu.bytes_out),
        (3, 1, 150, 0)
    );
    let latency = eu.latency.to_histogram().expect("histogram");
    assert_eq!(latency.len(), 3);
    assert!(
        (9_900..=10_100).contains(&latency.min()),
        "{}",
        latency.min()
    );
    // Beyond the meters' 60 s range: clamped to it.
    assert!(latency.max() <= HISTOGRAM_MAX_MICROS + HISTOGRAM_MAX_MICROS / 100);
    let asia = find("asia", "batch");
    assert_eq!((asia.requests, asia.errors), (1, 0));
    assert!(asia.latency.to_histogram().expect("histogram").is_empty());
}

#[test]
fn features_follow_event_time_and_a_model_assigns_like_a_proxy_s() {
    let ingest = ingest(&config("[assignment]\nnew_user_min_requests = 1"));
    // Before a model: default.
    let before = build(&ingest, &[event("m", NOW + 1, "api/x")]);
    assert_eq!(before.sketches[0].entries[0].key.profile, "default");
    // A one-centroid model: every user is nearest to it; its settings send it to `batch`.
    let model = ProfileModel {
        format: ProfileModel::FORMAT,
        version: 7,
        built_at: NOW,
        mean: vec![0.0; FEATURE_DIM],
        scale: vec![1.0; FEATURE_DIM],
        centroids: vec![Centroid {
            id: ProfileId(1),
            name: "api-heavy".into(),
            center: vec![0.0; FEATURE_DIM],
            settings: Some(ProfileSettings {
                persona: "integrations".into(),
                revenue_weight_milli: 1000,
                priority: 100,
                fleet: Some("batch".into()),
            }),
        }],
        anomaly_distance: None,
    };
    ingest.install_model(model).expect("install");
    assert_eq!(ingest.model_version(), Some(7));
    let after = build(&ingest, &[event("m", NOW + 61, "api/x")]);
    let key = &after.sketches[0].entries[0].key;
    assert_eq!(
        (key.profile.as_str(), key.fleet.as_str()),
        ("api-heavy", "batch")
    );
    // The sample carries the user's features: all its events were API calls.
    let sampled = after.sketches[0].entries[0].stats.sample.items()[0].features;
    let api_share = prescale_gossip::model::FEATURE_NAMES
        .iter()
        .position(|n| *n == "api_share")
        .expect("api_share");
    assert_eq!(sampled.0[api_share], 1.0);
    assert_eq!(ingest.users_tracked().0, 1);
}

#[test]
fn without_profiling_rules_alone_assign_and_no_sample_is_taken() {
    let ingest = ingest(&config(
        r#"[assignment]
        rules = [{ path_prefix = "/export", profile = "exports" }]
        [profiling]
        enabled = false"#,
    ));
    let batch = build(&ingest, &[event("x", NOW + 1, "export")]);
    let stats = entry(&batch.sketches[0], "exports");
    assert_eq!(stats.requests, 1);
    assert!(stats.sample.items().is_empty());
    assert!((stats.users.estimate() - 1.0).abs() < 0.5);
    assert_eq!(ingest.users_tracked(), (0, 0));
}

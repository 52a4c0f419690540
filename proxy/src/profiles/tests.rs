use http::HeaderValue;
use prescale_config::{AssignmentRule, HeaderMatch};
use prescale_gossip::model::{Centroid, ProfileId, ANOMALOUS_PROFILE};
use proptest::prelude::*;

use super::*;

fn model(version: u64, centers: &[(&str, [f32; FEATURE_DIM])]) -> ProfileModel {
    ProfileModel {
        format: ProfileModel::FORMAT,
        version,
        built_at: 1_700_000_000,
        mean: vec![0.0; FEATURE_DIM],
        scale: vec![1.0; FEATURE_DIM],
        centroids: centers
            .iter()
            .enumerate()
            .map(|(i, (name, center))| Centroid {
                id: ProfileId(i as u32),
                name: name.to_string(),
                center: center.to_vec(),
                settings: None,
            })
            .collect(),
        anomaly_distance: None,
    }
}

fn at(dim: usize, value: f32) -> [f32; FEATURE_DIM] {
    let mut v = [0.0; FEATURE_DIM];
    v[dim] = value;
    v
}

fn rule(profile: &str) -> AssignmentRule {
    AssignmentRule {
        profile: profile.to_string(),
        path_prefix: None,
        method: None,
        header: None,
    }
}

fn assigner(rules: Vec<AssignmentRule>) -> ProfileAssigner {
    let config = AssignmentConfig {
        rules,
        default_profile: "default".to_string(),
        new_user_min_requests: 3,
    };
    ProfileAssigner::new(&config, Arc::new(ProfileRegistry::with_builtins())).unwrap()
}

fn facts<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        headers,
    }
}

#[test]
fn registry_is_append_only_and_bounded() {
    let registry = ProfileRegistry::with_builtins();
    assert_eq!(registry.index_of("new"), Some(ProfileIdx::NEW));
    assert_eq!(registry.index_of("default"), Some(ProfileIdx::DEFAULT));
    let batch = registry.register("batch").unwrap();
    assert_eq!(batch, ProfileIdx(2));
    assert_eq!(registry.register("batch").unwrap(), batch);
    assert_eq!(registry.name(batch).as_deref(), Some("batch"));
    assert_eq!(registry.name(ProfileIdx(999)), None);
    for i in registry.len()..MAX_PROFILES {
        registry.register(&format!("p{i}")).unwrap();
    }
    assert_eq!(registry.len(), MAX_PROFILES);
    assert!(registry.register("one-too-many").is_err());
    assert_eq!(registry.index_of("batch"), Some(batch));
}

#[test]
fn registry_from_config_knows_configured_names() {
    let mut config = prescale_config::embedded_default().unwrap();
    config.routes.push(prescale_config::RouteConfig {
        profile: "routed".into(),
        fleet: "web".into(),
        region: None,
    });
    let registry = ProfileRegistry::from_config(&config).unwrap();
    for name in ["new", "default", "interactive", "batch", "routed"] {
        assert!(registry.index_of(name).is_some(), "{name}");
    }
}

#[test]
fn new_users_then_rules_then_default() {
    let assigner = assigner(vec![
        AssignmentRule {
            path_prefix: Some("/batch".into()),
            ..rule("batch")
        },
        AssignmentRule {
            method: Some("post".into()),
            ..rule("writer")
        },
        AssignmentRule {
            header: Some(HeaderMatch {
                name: "x-client".into(),
                value: Some("mobile".into()),
            }),
            ..rule("mobile")
        },
        AssignmentRule {
            header: Some(HeaderMatch {
                name: "x-internal".into(),
                value: None,
            }),
            ..rule("internal")
        },
    ]);
    let registry = assigner.registry().clone();
    let none = HeaderMap::new();
    let get = Method::GET;
    let no_features = || panic!("features are not needed without a model");
    assert_eq!(
        assigner.assign(1, no_features, &facts(&get, "/batch/x", &none)),
        ProfileIdx::NEW
    );
    assert_eq!(
        assigner.assign(3, no_features, &facts(&get, "/batch/x", &none)),
        registry.index_of("batch").unwrap()
    );
    assert_eq!(
        assigner.assign(3, no_features, &facts(&Method::POST, "/x", &none)),
        registry.index_of("writer").unwrap()
    );
    let mut mobile = HeaderMap::new();
    mobile.insert("x-client", HeaderValue::from_static("mobile"));
    assert_eq!(
        assigner.assign(3, no_features, &facts(&get, "/", &mobile)),
        registry.index_of("mobile").unwrap()
    );
    mobile.insert("x-client", HeaderValue::from_static("desktop"));
    assert_eq!(
        assigner.assign(3, no_features, &facts(&get, "/", &mobile)),
        ProfileIdx::DEFAULT
    );
    mobile.insert("x-internal", HeaderValue::from_static("1"));
    assert_eq!(
        assigner.assign(3, no_features, &facts(&get, "/", &mobile)),
        registry.index_of("internal").unwrap()
    );
    assert_eq!(
        assigner.assign(3, no_features, &facts(&get, "/other", &none)),
        ProfileIdx::DEFAULT
    );
    assert_eq!(&*assigner.name(ProfileIdx::NEW), "new");
    // Without per-user history (profiling off): rules, else default; never `new`.
    assert_eq!(
        assigner.assign_by_rules(&facts(&get, "/batch/x", &none)),
        registry.index_of("batch").unwrap()
    );
    assert_eq!(
        assigner.assign_by_rules(&facts(&get, "/x", &none)),
        ProfileIdx::DEFAULT
    );
}

#[test]
fn model_assigns_nearest_centroid_and_rules_win() {
    let assigner = assigner(vec![AssignmentRule {
        path_prefix: Some("/batch".into()),
        ..rule("batch")
    }]);
    let swap = assigner
        .install_model(model(
            5,
            &[("interactive", at(0, 1.0)), ("bulk", at(0, 5.0))],
        ))
        .unwrap();
    assert_eq!(swap, ModelSwap::Installed { version: 5 });
    let registry = assigner.registry().clone();
    let none = HeaderMap::new();
    let get = Method::GET;
    let near = |x: f32| move || FeatureVector(at(0, x));
    assert_eq!(
        assigner.assign(10, near(1.2), &facts(&get, "/", &none)),
        registry.index_of("interactive").unwrap()
    );
    assert_eq!(
        assigner.assign(10, near(4.0), &facts(&get, "/", &none)),
        registry.index_of("bulk").unwrap()
    );
    // Operator rules win over the model; new users stay new.
    assert_eq!(
        assigner.assign(10, near(4.0), &facts(&get, "/batch", &none)),
        registry.index_of("batch").unwrap()
    );
    assert_eq!(
        assigner.assign(1, near(4.0), &facts(&get, "/", &none)),
        ProfileIdx::NEW
    );
    assert_eq!(assigner.model_version(), Some(5));

    // An answer of the model from earlier in the second is taken as is (no features computed);
    // rules and the new-user threshold still come first.
    let bulk = registry.index_of("bulk").unwrap();
    let not_computed = || -> FeatureVector { panic!("features computed for a reused answer") };
    assert_eq!(
        assigner.assign_reusing(10, Some(bulk), not_computed, &facts(&get, "/", &none)),
        Assignment {
            profile: bulk,
            by_model: true
        }
    );
    assert_eq!(
        assigner
            .assign_reusing(10, Some(bulk), not_computed, &facts(&get, "/batch", &none))
            .profile,
        registry.index_of("batch").unwrap()
    );
    assert_eq!(
        assigner
            .assign_reusing(1, Some(bulk), not_computed, &facts(&get, "/", &none))
            .profile,
        ProfileIdx::NEW
    );
    assert!(
        assigner
            .assign_reusing(10, None, near(1.2), &facts(&get, "/", &none))
            .by_model
    );
}

#[test]
fn model_scaling_is_applied() {
    let assigner = assigner(vec![]);
    let mut m = model(1, &[("a", at(0, 0.0)), ("b", at(0, 1.0))]);
    // Raw 10 is (10 - 8) / 4 = 0.5 + ε in scaled space: nearer to b at 1.0 when raw is 10.2.
    m.mean[0] = 8.0;
    m.scale[0] = 4.0;
    assigner.install_model(m).unwrap();
    let b = assigner.registry().index_of("b").unwrap();
    let a = assigner.registry().index_of("a").unwrap();
    let none = HeaderMap::new();
    assert_eq!(
        assigner.assign(
            10,
            || FeatureVector(at(0, 10.2)),
            &facts(&Method::GET, "/", &none)
        ),
        b
    );
    assert_eq!(
        assigner.assign(
            10,
            || FeatureVector(at(0, 9.8)),
            &facts(&Method::GET, "/", &none)
        ),
        a
    );
}

#[test]
fn invalid_and_older_models_are_rejected() {
    let assigner = assigner(vec![]);
    let mut invalid = model(3, &[("a", at(0, 0.0))]);
    invalid.scale[2] = 0.0;
    assert!(matches!(
        assigner.install_model(invalid),
        Err(ModelSwapError::Invalid(_))
    ));
    assert!(matches!(
        assigner.install_model(model(3, &[])),
        Err(ModelSwapError::Invalid(ModelError::Empty))
    ));
    assert_eq!(assigner.model_version(), None);
    assigner
        .install_model(model(3, &[("a", at(0, 0.0))]))
        .unwrap();
    assert_eq!(
        assigner.install_model(model(2, &[("b", at(0, 0.0))])),
        Err(ModelSwapError::Older {
            offered: 2,
            installed: 3
        })
    );
    assert_eq!(
        assigner
            .install_model(model(3, &[("a", at(0, 0.0))]))
            .unwrap(),
        ModelSwap::AlreadyInstalled { version: 3 }
    );
    assert_eq!(
        assigner
            .install_model(model(4, &[("c", at(0, 0.0))]))
            .unwrap(),
        ModelSwap::Installed { version: 4 }
    );
    assert_eq!(assigner.model().unwrap().model.centroids[0].name, "c");
    // Old names keep their index (append-only).
    assert!(assigner.registry().index_of("a").is_some());
}

#[test]
fn bad_rules_are_errors() {
    let config = AssignmentConfig {
        rules: vec![AssignmentRule {
            method: Some("BAD METHOD".into()),
            ..rule("x")
        }],
        default_profile: "default".into(),
        new_user_min_requests: 1,
    };
    let err = ProfileAssigner::new(&config, Arc::new(ProfileRegistry::with_builtins()))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("assignment.rules[0].method"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn nearest_centroid_is_the_true_argmin(
        centers in proptest::collection::vec(proptest::collection::vec(-5.0f32..5.0, FEATURE_DIM), 1..12),
        point in proptest::collection::vec(-10.0f32..10.0, FEATURE_DIM),
        scale in proptest::collection::vec(0.1f32..10.0, FEATURE_DIM),
        mean in proptest::collection::vec(-3.0f32..3.0, FEATURE_DIM),
    ) {
        let assigner = assigner(vec![]);
        let named: Vec<(String, [f32; FEATURE_DIM])> =
            centers.iter().enumerate().map(|(i, c)| (format!("c{i}"), to_array(c))).collect();
        let refs: Vec<(&str, [f32; FEATURE_DIM])> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let mut m = model(1, &refs);
        m.scale = scale.clone();
        m.mean = mean.clone();
        assigner.install_model(m).unwrap();
        let compiled = assigner.model().unwrap();
        let features = FeatureVector(to_array(&point));
        let got = compiled.nearest_centroid(&features).unwrap().centroid;
        let distance = |c: &[f32; FEATURE_DIM]| -> f64 {
            (0..FEATURE_DIM).map(|i| {
                let scaled = (f64::from(point[i]) - f64::from(mean[i])) / f64::from(scale[i]);
                (scaled - f64::from(c[i])).powi(2)
            }).sum()
        };
        let best = named.iter().map(|(_, c)| distance(c)).fold(f64::INFINITY, f64::min);
        // f32 arithmetic: the chosen centroid is the argmin up to rounding.
        prop_assert!(distance(&named[got].1) <= best * (1.0 + 1e-4) + 1e-4);
        // And exactly the one a centroid-at-a-time f32 loop picks (same sums, same order).
        let mut one_at_a_time: Option<(usize, f32)> = None;
        for (index, (_, center)) in named.iter().enumerate() {
            let mut d2 = 0f32;
            for i in 0..FEATURE_DIM {
                let scaled = (point[i] - mean[i]) * (1.0 / scale[i]);
                let d = scaled - center[i];
                d2 += d * d;
            }
            if one_at_a_time.is_none_or(|(_, best)| d2 < best) {
                one_at_a_time = Some((index, d2));
            }
        }
        prop_assert_eq!(Some(got), one_at_a_time.map(|(index, _)| index));
    }
}

#[test]
fn users_beyond_the_anomaly_distance_are_anomalous() {
    let assigner = assigner(vec![AssignmentRule {
        path_prefix: Some("/batch".into()),
        ..rule("batch")
    }]);
    let mut m = model(1, &[("near", at(0, 0.0)), ("far", at(0, 10.0))]);
    m.anomaly_distance = Some(4.0);
    assigner.install_model(m).unwrap();
    let registry = assigner.registry().clone();
    let anomalous = registry
        .index_of(ANOMALOUS_PROFILE)
        .expect("registered at install");
    let compiled = assigner.model().unwrap();
    assert_eq!(compiled.anomalous_profile(), Some(anomalous));
    let none = HeaderMap::new();
    let get = Method::GET;
    let at_x = |x: f32| move || FeatureVector(at(0, x));
    // Squared distance 4 to `near` is not beyond 4; 4.41 is.
    assert_eq!(
        assigner.assign(10, at_x(2.0), &facts(&get, "/", &none)),
        registry.index_of("near").unwrap()
    );
    let beyond = assigner.assign_reusing(10, None, at_x(-2.1), &facts(&get, "/", &none));
    assert_eq!(
        beyond,
        Assignment {
            profile: anomalous,
            by_model: true
        }
    );
    let nearest = compiled
        .nearest_centroid(&FeatureVector(at(0, -2.1)))
        .unwrap();
    assert_eq!(nearest.centroid, 0);
    assert!((nearest.distance - 4.41).abs() < 1e-5, "{nearest:?}");
    // Between the two centroids, 5 from each: anomalous too.
    assert_eq!(
        assigner.assign(10, at_x(5.0), &facts(&get, "/", &none)),
        anomalous
    );
    // Rules and the new-user threshold still come first.
    assert_eq!(
        assigner.assign(10, at_x(5.0), &facts(&get, "/batch", &none)),
        registry.index_of("batch").unwrap()
    );
    assert_eq!(
        assigner.assign(1, at_x(5.0), &facts(&get, "/", &none)),
        ProfileIdx::NEW
    );
    // A later model keeps the index; one without a distance never answers `anomalous`.
    let mut next = model(2, &[("near", at(0, 0.0))]);
    next.anomaly_distance = Some(1.0);
    assigner.install_model(next).unwrap();
    assert_eq!(registry.index_of(ANOMALOUS_PROFILE), Some(anomalous));
    assert_eq!(
        assigner.model().unwrap().anomalous_profile(),
        Some(anomalous)
    );
    assigner
        .install_model(model(3, &[("near", at(0, 0.0))]))
        .unwrap();
    assert_eq!(assigner.model().unwrap().anomalous_profile(), None);
    assert_eq!(
        assigner.assign(10, at_x(1000.0), &facts(&get, "/", &none)),
        registry.index_of("near").unwrap()
    );
}

#[test]
fn a_model_without_anomaly_distance_registers_no_anomalous_profile() {
    let assigner = assigner(vec![]);
    assigner
        .install_model(model(1, &[("a", at(0, 0.0)), ("b", at(0, 1.0))]))
        .unwrap();
    assert_eq!(assigner.registry().index_of(ANOMALOUS_PROFILE), None);
    assert_eq!(assigner.model().unwrap().anomalous_profile(), None);
}

proptest! {
    /// Assignment by the model equals a brute-force reference: every centroid one at a time in
    /// f32 (the same sums in the same order as the blocked loop), the first strictly smallest
    /// distance, and `anomalous` when that distance is greater than the anomaly distance; with
    /// no anomaly distance, always the nearest centroid.
    #[test]
    fn assignment_equals_brute_force_with_the_anomalous_rule(
        centers in proptest::collection::vec(proptest::collection::vec(-3.0f32..3.0, FEATURE_DIM), 1..40),
        point in proptest::collection::vec(-6.0f32..6.0, FEATURE_DIM),
        scale in proptest::collection::vec(0.2f32..5.0, FEATURE_DIM),
        mean in proptest::collection::vec(-2.0f32..2.0, FEATURE_DIM),
        anomaly_distance in proptest::option::of(0.5f32..200.0),
    ) {
        let assigner = assigner(vec![]);
        let named: Vec<(String, [f32; FEATURE_DIM])> =
            centers.iter().enumerate().map(|(i, c)| (format!("c{i}"), to_array(c))).collect();
        let refs: Vec<(&str, [f32; FEATURE_DIM])> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let mut m = model(1, &refs);
        m.scale = scale.clone();
        m.mean = mean.clone();
        m.anomaly_distance = anomaly_distance;
        assigner.install_model(m).unwrap();
        let compiled = assigner.model().unwrap();
        let registry = assigner.registry();
        let features = FeatureVector(to_array(&point));

        let mut reference: Option<(usize, f32)> = None;
        for (index, (_, center)) in named.iter().enumerate() {
            let mut d2 = 0f32;
            for i in 0..FEATURE_DIM {
                let scaled = (point[i] - mean[i]) * (1.0 / scale[i]);
                let d = scaled - center[i];
                d2 += d * d;
            }
            if reference.is_none_or(|(_, best)| d2 < best) {
                reference = Some((index, d2));
            }
        }
        let (index, distance) = reference.unwrap();
        let expected = match anomaly_distance {
            Some(limit) if distance > limit => registry.index_of(ANOMALOUS_PROFILE).unwrap(),
            _ => registry.index_of(&named[index].0).unwrap(),
        };
        let nearest = compiled.nearest_centroid(&features).unwrap();
        prop_assert_eq!(nearest, Nearest { centroid: index, distance });
        prop_assert_eq!(compiled.nearest_profile(&features), Some(expected));
        let none = HeaderMap::new();
        let assignment = assigner.assign_reusing(10, None, || features, &facts(&Method::GET, "/", &none));
        prop_assert_eq!(assignment, Assignment { profile: expected, by_model: true });
        prop_assert_eq!(registry.index_of(ANOMALOUS_PROFILE).is_some(), anomaly_distance.is_some());
        // The admin view's distances agree with the request path's (up to summation order).
        let all = compiled.distances(&features);
        prop_assert!((all[index] - distance).abs() <= 1e-4 * (1.0 + distance));
    }
}

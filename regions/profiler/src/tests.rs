//! Behavior of `build` on synthetic data: the right k, purity, stable ids and names across
//! rebuilds, splits, merges, anomalies, degenerate input, bad input, and invariants for any input.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::naming::{valid_profile_name, RESERVED_PROFILES};
use crate::*;

const NAMES: [&str; 16] = [
    "rate_per_min_log",
    "request_bytes_log",
    "response_bytes_log",
    "error_share",
    "night_share",
    "morning_share",
    "afternoon_share",
    "evening_share",
    "weekend_share",
    "hour_peak_share",
    "api_share",
    "static_share",
    "write_share",
    "mobile_share",
    "automation_share",
    "session_gap_log",
];
const DIM: usize = 16;
/// Per-dimension standard deviation of a blob: its RMS radius in 16 dims is 4 × 0.5 = 2.
const SIGMA: f64 = 0.5;

struct Gen(Xoshiro256PlusPlus);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(Xoshiro256PlusPlus::seed_from_u64(seed))
    }
    fn unit(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Box–Muller.
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn center(&mut self) -> Vec<f64> {
        (0..DIM).map(|_| 10.0 * self.unit()).collect()
    }
}

/// `count[i]` points around `centers[i]`, interleaved so no group sits in one block; the labels.
fn blobs(centers: &[Vec<f64>], count: &[usize], seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut g = Gen::new(seed);
    let mut left = count.to_vec();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    while left.iter().any(|&n| n > 0) {
        for (i, c) in centers.iter().enumerate().take(count.len()) {
            if left[i] == 0 {
                continue;
            }
            left[i] -= 1;
            labels.push(i);
            features.extend(c.iter().map(|&x| (x + SIGMA * g.normal()) as f32));
        }
    }
    (features, labels)
}

fn four_centers() -> Vec<Vec<f64>> {
    let mut g = Gen::new(99);
    (0..4).map(|_| g.center()).collect()
}

/// Defaults with a narrower k range: debug-build k-means over many k is slow, and these tests
/// are about identities, not the choice among 12.
fn quick() -> BuildParams {
    BuildParams {
        k: KChoice::Range { min: 2, max: 7 },
        ..BuildParams::default()
    }
}

fn samples(features: &[f32]) -> Samples<'_> {
    Samples { dim: DIM, features }
}

fn learn(features: &[f32], previous: Option<&LearnedModel>, params: &BuildParams) -> LearnedModel {
    match build(samples(features), &NAMES, previous, params) {
        Ok(m) => m,
        Err(e) => panic!("build failed: {e}"),
    }
}

/// Share of samples whose profile's majority label is their own label.
fn purity(model: &LearnedModel, features: &[f32], labels: &[usize]) -> f64 {
    let mut table: HashMap<(usize, usize), usize> = HashMap::new();
    for (row, &l) in features.chunks_exact(DIM).zip(labels) {
        if let Some(p) = model.nearest(row).profile {
            *table.entry((p, l)).or_default() += 1;
        }
    }
    let mut best: HashMap<usize, usize> = HashMap::new();
    for (&(p, _), &n) in &table {
        let b = best.entry(p).or_default();
        *b = (*b).max(n);
    }
    best.values().sum::<usize>() as f64 / labels.len() as f64
}

/// The profile most of `label`'s samples go to.
fn profile_of(model: &LearnedModel, features: &[f32], labels: &[usize], label: usize) -> usize {
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for (row, &l) in features.chunks_exact(DIM).zip(labels) {
        if l == label {
            if let Some(p) = model.nearest(row).profile {
                *counts.entry(p).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(p, n)| (n, std::cmp::Reverse(p)))
        .map(|(p, _)| p)
        .unwrap_or(usize::MAX)
}

fn ids_and_names(model: &LearnedModel) -> Vec<(u32, String)> {
    model
        .profiles
        .iter()
        .map(|p| (p.id, p.name.clone()))
        .collect()
}

/// Every invariant a returned model promises.
fn check_invariants(
    model: &LearnedModel,
    previous: Option<&LearnedModel>,
    users: usize,
    dim: usize,
) {
    assert_eq!(model.mean.len(), dim);
    assert_eq!(model.scale.len(), dim);
    assert!(
        model.scale.iter().all(|s| s.is_finite() && *s > 0.0),
        "{:?}",
        model.scale
    );
    assert!(model.mean.iter().all(|m| m.is_finite()));
    assert!(model.anomaly_distance.is_finite() && model.anomaly_distance > 0.0);
    assert!(!model.profiles.is_empty() && model.profiles.len() <= MAX_K);
    assert_eq!(model.users, users);
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for p in &model.profiles {
        assert!(ids.insert(p.id), "duplicate id {}", p.id);
        assert!(names.insert(p.name.clone()), "duplicate name {}", p.name);
        assert!(valid_profile_name(&p.name), "{}", p.name);
        assert!(!RESERVED_PROFILES.contains(&p.name.as_str()), "{}", p.name);
        assert!(p.id < model.next_id);
        assert_eq!(p.center.len(), dim);
        assert_eq!(p.center_raw.len(), dim);
        assert!(p.center.iter().chain(&p.center_raw).all(|v| v.is_finite()));
        match (&p.origin, previous) {
            (Origin::Kept { previous: old }, Some(prev)) => {
                assert_eq!(*old, p.id);
                let was = prev
                    .profiles
                    .iter()
                    .find(|q| q.id == p.id)
                    .expect("kept id existed");
                assert_eq!(was.name, p.name);
            }
            (Origin::Kept { .. }, None) => panic!("kept without a previous model"),
            (_, Some(prev)) => assert!(
                p.id >= prev.next_id,
                "fresh id {} below {}",
                p.id,
                prev.next_id
            ),
            (_, None) => {}
        }
    }
    if let Some(prev) = previous {
        assert!(model.next_id >= prev.next_id);
    }
    let population: usize = model.profiles.iter().map(|p| p.population).sum();
    assert_eq!(population + model.anomalous_users, users);
    assert!(model.profiles.windows(2).all(|w| w[0].id < w[1].id));
}

#[test]
fn four_blobs_give_k4_and_pure_profiles() {
    let centers = four_centers();
    let (features, labels) = blobs(&centers, &[400, 400, 400, 400], 1);
    let model = learn(&features, None, &BuildParams::default());
    check_invariants(&model, None, 1600, DIM);
    assert_eq!(model.profiles.len(), 4, "k_scores {:?}", model.k_scores);
    let best = model
        .k_scores
        .iter()
        .max_by(|a, b| a.silhouette.total_cmp(&b.silhouette))
        .map(|s| s.k);
    assert_eq!(best, Some(4));
    assert_eq!(model.k_scores.len(), 11);
    let p = purity(&model, &features, &labels);
    assert!(p >= 0.95, "purity {p}");
    // Clean Gaussian clusters flag next to nothing.
    assert!(
        model.anomalous_users <= 1600 / 200,
        "{} anomalous",
        model.anomalous_users
    );
    assert!(model.profiles.iter().all(|p| p.origin == Origin::New));
    assert!(model.profiles.iter().all(|p| !p.reasons.is_empty()));
    assert_eq!(model.next_id, 5);
}

#[test]
fn same_input_gives_the_identical_model() {
    let (features, _) = blobs(&four_centers(), &[300, 300, 300, 300], 2);
    let params = quick();
    let a = learn(&features, None, &params);
    let b = learn(&features, None, &params);
    assert_eq!(a, b);
    let a2 = learn(&features, Some(&a), &params);
    let b2 = learn(&features, Some(&b), &params);
    assert_eq!(a2, b2);
}

#[test]
fn rebuild_on_the_same_data_keeps_ids_and_names() {
    let (features, _) = blobs(&four_centers(), &[300, 300, 300, 300], 3);
    let params = quick();
    let first = learn(&features, None, &params);
    let second = learn(&features, Some(&first), &params);
    check_invariants(&second, Some(&first), 1200, DIM);
    assert_eq!(ids_and_names(&first), ids_and_names(&second));
    assert!(second
        .profiles
        .iter()
        .all(|p| p.origin == Origin::Kept { previous: p.id }));
    assert_eq!(second.next_id, first.next_id);
}

#[test]
fn rebuild_on_a_resample_keeps_ids_and_names() {
    let centers = four_centers();
    let (first_data, _) = blobs(&centers, &[300, 350, 400, 450], 4);
    let (second_data, _) = blobs(&centers, &[320, 330, 420, 430], 5);
    let first = learn(&first_data, None, &quick());
    let params = BuildParams {
        seed: 17,
        ..quick()
    };
    let second = learn(&second_data, Some(&first), &params);
    check_invariants(&second, Some(&first), second_data.len() / DIM, DIM);
    assert_eq!(ids_and_names(&first), ids_and_names(&second));
}

#[test]
fn a_cluster_moved_far_away_leaves_the_others_their_ids() {
    let mut centers = four_centers();
    let (before, labels) = blobs(&centers, &[300, 300, 300, 300], 6);
    let first = learn(&before, None, &quick());
    let old_ids: Vec<u32> = (0..4)
        .map(|l| first.profiles[profile_of(&first, &before, &labels, l)].id)
        .collect();
    for x in centers[3].iter_mut().take(3) {
        *x += 40.0;
    }
    let (after, labels) = blobs(&centers, &[300, 300, 300, 300], 7);
    let second = learn(&after, Some(&first), &quick());
    check_invariants(&second, Some(&first), 1200, DIM);
    assert_eq!(second.profiles.len(), 4);
    for (l, &old_id) in old_ids.iter().enumerate().take(3) {
        let p = &second.profiles[profile_of(&second, &after, &labels, l)];
        assert_eq!(p.id, old_id, "blob {l}");
        assert_eq!(p.origin, Origin::Kept { previous: old_id });
    }
    let moved = &second.profiles[profile_of(&second, &after, &labels, 3)];
    assert!(moved.id >= first.next_id, "{moved:?}");
    assert_eq!(moved.origin, Origin::New);
}

/// Three far blobs and, at `c`, either one blob or two at `c ± 6` along the first dimension.
fn with_pair(split: bool, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut centers = four_centers();
    if split {
        let mut other = centers[3].clone();
        centers[3][0] -= 6.0;
        other[0] += 6.0;
        centers.push(other);
        blobs(&centers, &[300, 300, 300, 150, 150], seed)
    } else {
        blobs(&centers, &[300, 300, 300, 300], seed)
    }
}

#[test]
fn a_cluster_split_in_two_is_kept_once_and_split_once() {
    let (before, labels) = with_pair(false, 8);
    let first = learn(&before, None, &quick());
    assert_eq!(first.profiles.len(), 4);
    let parent = first.profiles[profile_of(&first, &before, &labels, 3)].id;
    let (after, labels) = with_pair(true, 9);
    let second = learn(&after, Some(&first), &quick());
    check_invariants(&second, Some(&first), after.len() / DIM, DIM);
    assert_eq!(second.profiles.len(), 5, "{:?}", second.k_scores);
    let halves = [
        &second.profiles[profile_of(&second, &after, &labels, 3)],
        &second.profiles[profile_of(&second, &after, &labels, 4)],
    ];
    assert_ne!(halves[0].id, halves[1].id);
    let mut origins: Vec<&Origin> = halves.iter().map(|p| &p.origin).collect();
    origins.sort_by_key(|o| matches!(o, Origin::Split { .. }));
    assert_eq!(origins[0], &Origin::Kept { previous: parent });
    assert_eq!(origins[1], &Origin::Split { from: parent });
    let others = second
        .profiles
        .iter()
        .filter(|p| matches!(p.origin, Origin::Kept { .. }))
        .count();
    assert_eq!(others, 4);
}

#[test]
fn two_clusters_merged_into_one_are_merged() {
    let (before, labels) = with_pair(true, 10);
    let first = learn(&before, None, &quick());
    assert_eq!(first.profiles.len(), 5, "{:?}", first.k_scores);
    let mut parents = vec![
        first.profiles[profile_of(&first, &before, &labels, 3)].id,
        first.profiles[profile_of(&first, &before, &labels, 4)].id,
    ];
    parents.sort_unstable();
    let (after, labels) = with_pair(false, 11);
    let second = learn(&after, Some(&first), &quick());
    check_invariants(&second, Some(&first), after.len() / DIM, DIM);
    assert_eq!(second.profiles.len(), 4);
    let merged = &second.profiles[profile_of(&second, &after, &labels, 3)];
    assert_eq!(merged.origin, Origin::Merged { from: parents });
    assert!(merged.id >= first.next_id);
    let kept = second
        .profiles
        .iter()
        .filter(|p| matches!(p.origin, Origin::Kept { .. }))
        .count();
    assert_eq!(kept, 3);
}

#[test]
fn a_small_far_group_is_anomalous_and_no_profile() {
    let mut centers = four_centers();
    centers.push(vec![60.0; DIM]);
    // 8 of 1608 users (0.5%, below 1 - anomaly_quantile) far from every cluster.
    let (features, labels) = blobs(&centers, &[400, 400, 400, 400, 8], 12);
    let model = learn(&features, None, &quick());
    check_invariants(&model, None, 1608, DIM);
    assert_eq!(model.profiles.len(), 4, "{:?}", model.k_scores);
    for (row, &l) in features.chunks_exact(DIM).zip(&labels) {
        if l == 4 {
            assert_eq!(model.nearest(row).profile, None);
        }
    }
    assert!(
        model.anomalous_users >= 8 && model.anomalous_users <= 8 + 1600 / 200,
        "{} anomalous",
        model.anomalous_users
    );
    let p = purity(&model, &features, &labels);
    assert!(p >= 0.95, "purity {p}");
}

#[test]
fn a_fifth_group_above_the_minimum_share_is_its_own_profile() {
    let mut centers = four_centers();
    centers.push(Gen::new(98).center());
    let (features, _) = blobs(&centers, &[400, 400, 400, 400, 100], 13);
    let model = learn(&features, None, &quick());
    check_invariants(&model, None, 1700, DIM);
    assert_eq!(model.profiles.len(), 5);
    assert!(model.anomalous_users <= 1700 / 200);
}

#[test]
fn flat_dimensions_get_scale_one_and_name_nothing() {
    let (mut features, labels) = blobs(&four_centers(), &[200, 200, 200, 200], 14);
    for row in features.chunks_exact_mut(DIM) {
        row[3] = 0.0;
        row[7] = 0.25;
    }
    let model = learn(&features, None, &quick());
    check_invariants(&model, None, 800, DIM);
    assert_eq!(model.scale[3], 1.0);
    assert_eq!(model.scale[7], 1.0);
    assert_eq!(model.mean[7], 0.25);
    assert!(model
        .profiles
        .iter()
        .flat_map(|p| &p.reasons)
        .all(|r| r.feature != NAMES[3] && r.feature != NAMES[7]));
    assert!(purity(&model, &features, &labels) >= 0.95);
}

#[test]
fn identical_users_make_one_plain_profile() {
    let features: Vec<f32> = (0..100).flat_map(|_| [0.5f32; DIM]).collect();
    let model = learn(&features, None, &quick());
    check_invariants(&model, None, 100, DIM);
    assert_eq!(model.profiles.len(), 1);
    assert_eq!(model.profiles[0].name, "typical");
    assert_eq!(model.profiles[0].population, 100);
    assert_eq!(model.anomaly_distance, MIN_ANOMALY_DISTANCE);
    let again = learn(&features, Some(&model), &quick());
    assert_eq!(ids_and_names(&again), ids_and_names(&model));
}

#[test]
fn fixed_k_fits_only_that_k() {
    let (features, _) = blobs(&four_centers(), &[200, 200, 200, 200], 15);
    for k in [1, 2, 6] {
        let params = BuildParams {
            k: KChoice::Fixed(k),
            ..quick()
        };
        let model = learn(&features, None, &params);
        check_invariants(&model, None, 800, DIM);
        assert_eq!(model.k_scores.len(), 1);
        assert_eq!(model.k_scores[0].k, k);
        assert!(model.profiles.len() <= k);
    }
}

#[test]
fn subsampling_bounds_the_fit_and_still_assigns_everyone() {
    let (features, labels) = blobs(&four_centers(), &[500, 500, 500, 500], 16);
    let params = BuildParams {
        max_fit_points: 300,
        score_points: 100,
        ..quick()
    };
    let model = learn(&features, None, &params);
    check_invariants(&model, None, 2000, DIM);
    assert_eq!(model.fit_points, 300);
    assert_eq!(model.profiles.len(), 4);
    assert!(purity(&model, &features, &labels) >= 0.95);
}

#[test]
fn nearest_refuses_what_does_not_fit() {
    let (features, _) = blobs(&four_centers(), &[100, 100], 17);
    let params = BuildParams {
        min_users: 10,
        ..quick()
    };
    let model = learn(&features, None, &params);
    let none = Nearest {
        profile: None,
        distance: f32::INFINITY,
    };
    assert_eq!(model.nearest(&[0.0; 3]), none);
    assert_eq!(model.nearest(&[f32::NAN; DIM]), none);
    assert!(model.nearest(&features[..DIM]).profile.is_some());
    assert_eq!(model.nearest(&[f32::MAX; DIM]).profile, None);
}

#[test]
fn model_round_trips_through_json() {
    let (features, _) = blobs(&four_centers(), &[200, 200, 200, 200], 18);
    let model = learn(&features, None, &quick());
    let json = serde_json::to_string(&model).expect("serialise");
    assert!(json.contains(r#""origin":{"kind":"new"}"#), "{json}");
    let back: LearnedModel = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, model);
    let merged: Origin = serde_json::from_str(r#"{"kind":"merged","from":[1,2]}"#).expect("origin");
    assert_eq!(merged, Origin::Merged { from: vec![1, 2] });
}

fn err(
    features: &[f32],
    dim: usize,
    names: &[&str],
    previous: Option<&LearnedModel>,
    params: &BuildParams,
) -> BuildError {
    match build(Samples { dim, features }, names, previous, params) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn bad_input_is_refused_with_what_is_wrong() {
    let (features, _) = blobs(&four_centers(), &[100, 100], 19);
    let p = BuildParams::default();
    let mut nan = features.clone();
    nan[37] = f32::NAN;
    assert!(matches!(
        err(&nan, DIM, &NAMES, None, &p),
        BuildError::NonFinite { index: 37 }
    ));
    let mut inf = features.clone();
    inf[5] = f32::NEG_INFINITY;
    assert!(matches!(
        err(&inf, DIM, &NAMES, None, &p),
        BuildError::NonFinite { index: 5 }
    ));
    assert!(matches!(
        err(&features[..DIM * 10 + 3], DIM, &NAMES, None, &p),
        BuildError::RaggedSamples { len, dim: 16 } if len == DIM * 10 + 3
    ));
    assert!(matches!(
        err(&features, DIM, &NAMES[..15], None, &p),
        BuildError::WrongDimension {
            what: "feature_names",
            expected: 16,
            found: 15
        }
    ));
    assert!(matches!(
        err(&features, 0, &[], None, &p),
        BuildError::BadParams(_)
    ));
    assert!(matches!(
        err(&features[..DIM * 49], DIM, &NAMES, None, &p),
        BuildError::TooFewUsers { found: 49, min: 50 }
    ));
    let bad_params = [
        BuildParams {
            k: KChoice::Fixed(0),
            ..p.clone()
        },
        BuildParams {
            k: KChoice::Fixed(65),
            ..p.clone()
        },
        BuildParams {
            k: KChoice::Fixed(201),
            min_users: 1,
            max_fit_points: 300,
            ..p.clone()
        },
        BuildParams {
            k: KChoice::Range { min: 1, max: 4 },
            ..p.clone()
        },
        BuildParams {
            k: KChoice::Range { min: 5, max: 4 },
            ..p.clone()
        },
        BuildParams {
            k: KChoice::Range { min: 2, max: 65 },
            ..p.clone()
        },
        BuildParams {
            min_users: 0,
            ..p.clone()
        },
        BuildParams {
            max_fit_points: 11,
            ..p.clone()
        },
        BuildParams {
            max_fit_points: MAX_FIT_POINTS + 1,
            ..p.clone()
        },
        BuildParams {
            score_points: 1,
            ..p.clone()
        },
        BuildParams {
            score_points: MAX_SCORE_POINTS + 1,
            ..p.clone()
        },
        BuildParams {
            anomaly_quantile: 0.4,
            ..p.clone()
        },
        BuildParams {
            anomaly_quantile: 1.5,
            ..p.clone()
        },
        BuildParams {
            anomaly_quantile: f64::NAN,
            ..p.clone()
        },
    ];
    for params in &bad_params {
        let e = err(&features, DIM, &NAMES, None, params);
        assert!(matches!(e, BuildError::BadParams(_)), "{params:?}: {e}");
        assert!(params.validate().is_err() || matches!(params.k, KChoice::Fixed(201)));
    }
    assert!(p.validate().is_ok());
}

#[test]
fn a_bad_previous_model_is_refused() {
    let (features, _) = blobs(&four_centers(), &[100, 100], 20);
    let p = quick();
    let good = learn(&features, None, &p);
    let mut short = good.clone();
    short.profiles[0].center_raw.pop();
    assert!(matches!(
        err(&features, DIM, &NAMES, Some(&short), &p),
        BuildError::WrongDimension {
            expected: 16,
            found: 15,
            ..
        }
    ));
    let mut twice = good.clone();
    twice.profiles.push(twice.profiles[0].clone());
    assert!(matches!(
        err(&features, DIM, &NAMES, Some(&twice), &p),
        BuildError::BadPrevious(_)
    ));
    let mut reserved = good.clone();
    reserved.profiles[0].name = "anomalous".into();
    assert!(matches!(
        err(&features, DIM, &NAMES, Some(&reserved), &p),
        BuildError::BadPrevious(_)
    ));
    let mut stale = good.clone();
    stale.next_id = 1;
    assert!(matches!(
        err(&features, DIM, &NAMES, Some(&stale), &p),
        BuildError::BadPrevious(_)
    ));
    let mut nan = good;
    nan.profiles[0].center_raw[2] = f32::NAN;
    assert!(matches!(
        err(&features, DIM, &NAMES, Some(&nan), &p),
        BuildError::BadPrevious(_)
    ));
}

/// Feature values drawn from a few groups with some duplicates and extremes.
fn arb_input() -> impl Strategy<Value = (usize, Vec<f32>)> {
    (1usize..=5, 2usize..=60).prop_flat_map(|(dim, users)| {
        let value = prop_oneof![
            4 => -1.0f32..1.0,
            2 => Just(0.0f32),
            1 => Just(1.0f32),
            1 => -1.0e30f32..1.0e30,
            1 => prop::num::f32::NORMAL,
        ];
        (Just(dim), prop::collection::vec(value, dim * users))
    })
}

fn arb_params() -> impl Strategy<Value = BuildParams> {
    (
        prop_oneof![
            (1usize..=4).prop_map(KChoice::Fixed),
            (2usize..=3, 0usize..=4).prop_map(|(min, extra)| KChoice::Range {
                min,
                max: min + extra
            }),
        ],
        10usize..=100,
        2usize..=50,
        0.5f64..=1.0,
        any::<u64>(),
    )
        .prop_map(
            |(k, max_fit_points, score_points, anomaly_quantile, seed)| BuildParams {
                k,
                min_users: 1,
                max_fit_points,
                score_points,
                anomaly_quantile,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn build_never_panics_and_keeps_its_invariants(
        (dim, features) in arb_input(),
        params in arb_params(),
        (dim2_users, seed2) in (2usize..=60, any::<u64>()),
    ) {
        let names: Vec<String> = (0..dim).map(|d| NAMES[d].to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let users = features.len() / dim;
        let first = build(Samples { dim, features: &features }, &names, None, &params);
        let first = match first {
            Ok(m) => m,
            // A k above the users is a parameter error, never a panic.
            Err(BuildError::BadParams(_)) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        check_invariants(&first, None, users, dim);
        // A rebuild on other data with the first as previous keeps the identity invariants.
        let mut g = Gen::new(seed2);
        let other: Vec<f32> = (0..dim * dim2_users).map(|_| (2.0 * g.unit() - 1.0) as f32).collect();
        match build(Samples { dim, features: &other }, &names, Some(&first), &params) {
            Ok(second) => check_invariants(&second, Some(&first), dim2_users, dim),
            Err(BuildError::BadParams(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        }
    }
}

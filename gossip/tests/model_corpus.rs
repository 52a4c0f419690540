//! Replays the `model` fuzz target's seed corpus (`fuzz/corpus/model/`) through the same check
//! ([`fuzz_checks::model`]): each seed is a postcard-encoded profile model; `valid-*` ones must
//! validate and survive a model-update frame, `invalid-*` ones be refused as malformed or
//! invalid. `write_seed_corpus` (ignored) regenerates the seeds:
//! `cargo test -p prescale-gossip --test model_corpus -- --ignored`.

use std::path::PathBuf;

use prescale_gossip::fuzz_checks::{self, Outcome};
use prescale_gossip::model::{Centroid, ProfileId, ProfileModel, ProfileSettings, FEATURE_DIM};
use prescale_gossip::Error;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/model")
}

fn model() -> ProfileModel {
    ProfileModel {
        format: ProfileModel::FORMAT,
        version: 7,
        built_at: 1_700_000_000,
        mean: vec![0.5; FEATURE_DIM],
        scale: vec![2.0; FEATURE_DIM],
        centroids: vec![
            Centroid {
                id: ProfileId(1),
                name: "interactive".into(),
                center: vec![0.1; FEATURE_DIM],
                settings: None,
            },
            Centroid {
                id: ProfileId(2),
                name: "batch".into(),
                center: vec![0.9; FEATURE_DIM],
                settings: Some(ProfileSettings {
                    persona: "batch-jobs".into(),
                    revenue_weight_milli: 250,
                    priority: 20,
                    fleet: Some("batch".into()),
                }),
            },
        ],
        anomaly_distance: Some(42.0),
    }
}

fn encoded(edit: impl FnOnce(&mut ProfileModel)) -> Vec<u8> {
    let mut m = model();
    edit(&mut m);
    postcard::to_stdvec(&m).unwrap()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let valid = encoded(|_| {});
    let mut trailing = valid.clone();
    trailing.push(0);
    vec![
        ("valid-two-profiles", valid.clone()),
        (
            "valid-no-anomaly-distance",
            encoded(|m| m.anomaly_distance = None),
        ),
        (
            "valid-most-centroids",
            encoded(|m| {
                m.centroids = (0..ProfileModel::MAX_CENTROIDS as u32)
                    .map(|i| Centroid {
                        id: ProfileId(i),
                        name: format!("p{i}"),
                        center: vec![i as f32; FEATURE_DIM],
                        settings: None,
                    })
                    .collect()
            }),
        ),
        ("invalid-empty", Vec::new()),
        ("invalid-truncated", valid[..valid.len() / 2].to_vec()),
        ("invalid-trailing-byte", trailing),
        ("invalid-format", encoded(|m| m.format = 99)),
        (
            "invalid-dimension",
            encoded(|m| m.mean.pop().map(drop).unwrap_or(())),
        ),
        ("invalid-zero-scale", encoded(|m| m.scale[3] = 0.0)),
        (
            "invalid-nan-center",
            encoded(|m| m.centroids[0].center[0] = f32::NAN),
        ),
        ("invalid-no-centroids", encoded(|m| m.centroids.clear())),
        (
            "invalid-too-many-centroids",
            encoded(|m| {
                let c = m.centroids[0].clone();
                m.centroids = (0..=ProfileModel::MAX_CENTROIDS as u32)
                    .map(|i| Centroid {
                        id: ProfileId(i),
                        name: format!("p{i}"),
                        ..c.clone()
                    })
                    .collect()
            }),
        ),
        (
            "invalid-duplicate-id",
            encoded(|m| m.centroids[1].id = ProfileId(1)),
        ),
        (
            "invalid-duplicate-name",
            encoded(|m| m.centroids[1].name = "interactive".into()),
        ),
        (
            "invalid-reserved-name",
            encoded(|m| m.centroids[0].name = "default".into()),
        ),
        (
            "invalid-negative-anomaly-distance",
            encoded(|m| m.anomaly_distance = Some(-1.0)),
        ),
        (
            "invalid-bad-persona",
            encoded(|m| {
                if let Some(s) = m.centroids[1].settings.as_mut() {
                    s.persona = "no spaces".into();
                }
            }),
        ),
    ]
}

/// The fuzz target's check, with its rejections required to be of the decoder's own type.
fn checked(data: &[u8]) -> Outcome {
    let outcome = fuzz_checks::model(data);
    if let Outcome::Rejected(e) = &outcome {
        assert!(
            matches!(e, Error::Malformed { .. } | Error::Invalid { .. }),
            "{e:?}"
        );
    }
    outcome
}

#[test]
fn corpus_replays_through_the_fuzz_check() {
    let tally = fuzz_checks::replay_corpus(&corpus_dir(), checked);
    assert!(
        tally.valid >= 3 && tally.invalid >= 12,
        "corpus too small: {tally:?}"
    );
}

#[test]
fn seeds_behave_as_named() {
    fuzz_checks::check_seeds(&seeds(), checked);
}

#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seed_corpus() {
    fuzz_checks::write_corpus(&corpus_dir(), &seeds());
}

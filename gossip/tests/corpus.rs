//! Replays the fuzz seed corpus (`fuzz/corpus/decode/`) through the frame decoder's fuzz check
//! ([`fuzz_checks::frame`], the one the `decode` target runs) as a normal test.
//!
//! Files named `valid-*` must decode (and re-encode to the same message), `invalid-*` must be
//! rejected with a decode error; any other file (e.g. one a fuzzer added) just must not panic.
//! `write_seed_corpus` (ignored) regenerates the seeds:
//! `cargo test -p prescale-gossip --test corpus -- --ignored`.

use std::path::PathBuf;

use prescale_gossip::codec::{encode, Limits, HEADER_LEN};
use prescale_gossip::fuzz_checks;
use prescale_gossip::messages::{
    Ack, AckOutcome, BackendPhase, FleetPlan, Message, ModelUpdate, NodeShare, PlanUpdate,
    PlannedBackend, ProfileGrant, TierTarget,
};
use prescale_gossip::model::{
    Centroid, FeatureVector, ProfileId, ProfileModel, ProfileSettings, FEATURE_DIM,
};
use prescale_gossip::{EntryKey, Sketch};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

#[test]
fn corpus_replays_without_panic() {
    let tally = fuzz_checks::replay_corpus(&corpus_dir(), fuzz_checks::frame);
    assert!(
        tally.valid >= 4 && tally.invalid >= 6,
        "corpus too small: {tally:?}"
    );
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let limits = Limits::default();
    let mut s = Sketch::new("proxy-eu-1", "eu", 1_700_000_000_000, 1_700_000_010_000);
    s.sequence = 17;
    s.sender.spooled = 2;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..1000u64 {
        h.record(200 + i * 37).unwrap();
    }
    for (p, fleet) in [(1, "web"), (2, "api")] {
        let e = s.entry(EntryKey {
            profile: format!("profile-{}", p),
            origin_region: "us".into(),
            fleet: fleet.into(),
        });
        e.requests = 1000;
        e.errors = 4;
        e.bytes_in = 12_345;
        e.bytes_out = 987_654;
        e.set_latency(&h).unwrap();
        for u in 0..400u64 {
            e.observe_user(u * 7, FeatureVector([0.5; FEATURE_DIM]));
        }
    }
    let sketch = encode(&Message::Sketch(s.clone()), &limits).unwrap();
    let empty = encode(&Message::Sketch(Sketch::new("n", "r", 0, 0)), &limits).unwrap();
    let ack = encode(
        &Message::Ack(Ack {
            node: "proxy-eu-1".into(),
            sequence: 17,
            outcome: AckOutcome::Stored,
        }),
        &limits,
    )
    .unwrap();
    let model = encode(
        &Message::ModelUpdate(ModelUpdate {
            region: "eu".into(),
            model: ProfileModel {
                format: ProfileModel::FORMAT,
                version: 3,
                built_at: 1_700_000_000,
                mean: vec![0.0; FEATURE_DIM],
                scale: vec![1.0; FEATURE_DIM],
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
            },
        }),
        &limits,
    )
    .unwrap();
    let plan = encode(
        &Message::PlanUpdate(PlanUpdate {
            region: "eu".into(),
            version: 5,
            issued_at_ms: 1_700_000_000_000,
            fleets: vec![FleetPlan {
                fleet: "web".into(),
                tiers: vec![TierTarget {
                    tier: "baseline".into(),
                    instances: 3,
                }],
                shed_order: vec!["batch".into()],
                reasons: vec!["morning ramp".into()],
                backends: Some(vec![
                    PlannedBackend {
                        address: "127.0.0.1:4001".into(),
                        phase: BackendPhase::Ready,
                        since_ms: 1_700_000_000_000,
                    },
                    PlannedBackend {
                        address: "[::1]:4002".into(),
                        phase: BackendPhase::Warming,
                        since_ms: 1_700_000_001_000,
                    },
                ]),
                grants: vec![ProfileGrant {
                    profile: "interactive".into(),
                    revenue_weight_milli: 3_000,
                    requests_per_minute: 12_000,
                    shares: vec![NodeShare {
                        node: "proxy-eu-1".into(),
                        requests_per_minute: 12_000,
                    }],
                }],
            }],
        }),
        &limits,
    )
    .unwrap();

    let mut bad_version = ack.clone();
    bad_version[4] = 9;
    let mut oversized = ack[..HEADER_LEN].to_vec();
    oversized[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut trailing = ack.clone();
    trailing.push(0);
    let mut wrong_kind = sketch.clone();
    wrong_kind[6] = 2;
    let mut flipped = sketch.clone();
    let mid = sketch.len() / 2;
    flipped[mid] ^= 0xff;
    vec![
        ("valid-sketch", sketch.clone()),
        ("valid-empty-sketch", empty),
        ("valid-ack", ack.clone()),
        ("valid-model", model),
        ("valid-plan", plan),
        ("invalid-empty", vec![]),
        ("invalid-magic", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("invalid-version", bad_version),
        ("invalid-oversized", oversized),
        ("invalid-truncated", sketch[..sketch.len() - 3].to_vec()),
        ("invalid-trailing", trailing),
        ("invalid-kind", wrong_kind),
        ("invalid-header-only", ack[..HEADER_LEN].to_vec()),
        ("mutated-sketch", flipped),
    ]
}

#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seed_corpus() {
    fuzz_checks::write_corpus(&corpus_dir(), &seeds());
}

#[test]
fn seeds_behave_as_named() {
    // The generator itself is checked too, so a change to the format that breaks a seed shows
    // up here even before the corpus is regenerated.
    fuzz_checks::check_seeds(&seeds(), fuzz_checks::frame);
}

//! Replays the `sample` fuzz target's seed corpus (`fuzz/corpus/sample/`) through the same check
//! ([`fuzz_checks::sample`]): each seed is a pair of postcard-encoded user samples
//! ([`fuzz_checks::join_pair`]); `valid-*` pairs must decode and merge into the bottom-k of their
//! union, `invalid-*` ones be refused as malformed or invalid. `write_seed_corpus` (ignored)
//! regenerates the seeds: `cargo test -p prescale-gossip --test sample_corpus -- --ignored`.

use std::path::PathBuf;

use prescale_gossip::fuzz_checks::{self, join_pair, Outcome};
use prescale_gossip::model::{FeatureVector, FEATURE_DIM};
use prescale_gossip::{Error, UserSample};
use serde::Serialize;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sample")
}

/// The sample's wire form, spelled out so seeds can break its invariants.
#[derive(Serialize)]
struct Wire {
    capacity: u16,
    offered: u64,
    items: Vec<WireUser>,
}

#[derive(Serialize, Clone, Copy)]
struct WireUser {
    user: [u8; 8],
    features: [f32; FEATURE_DIM],
}

fn offered(capacity: u16, users: impl IntoIterator<Item = u64>) -> UserSample {
    let mut s = UserSample::new(capacity).unwrap();
    for user in users {
        s.offer(user, FeatureVector([user as f32 / 7.0; FEATURE_DIM]));
    }
    s
}

fn bytes(s: &UserSample) -> Vec<u8> {
    postcard::to_stdvec(s).unwrap()
}

/// `s` with its items in wire form, edited.
fn edited(s: &UserSample, edit: impl FnOnce(&mut Wire)) -> Vec<u8> {
    let mut w = Wire {
        capacity: s.capacity(),
        offered: s.offered(),
        items: s
            .items()
            .iter()
            .map(|i| WireUser {
                user: i.user.to_le_bytes(),
                features: i.features.0,
            })
            .collect(),
    };
    edit(&mut w);
    postcard::to_stdvec(&w).unwrap()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let a = offered(8, 0..40);
    let b = offered(8, 20..90);
    let small = offered(3, 100..110);
    let full = bytes(&a);
    vec![
        ("valid-overlapping", join_pair(&full, &bytes(&b))),
        ("valid-same", join_pair(&full, &full)),
        (
            "valid-smaller-capacity-first",
            join_pair(&bytes(&small), &full),
        ),
        (
            "valid-larger-capacity-first",
            join_pair(&full, &bytes(&small)),
        ),
        (
            "valid-empty-and-full",
            join_pair(&bytes(&UserSample::new(8).unwrap()), &full),
        ),
        (
            "valid-large-capacity",
            join_pair(
                &bytes(&offered(512, 0..2_000)),
                &bytes(&offered(512, 1_000..1_500)),
            ),
        ),
        ("invalid-no-input", Vec::new()),
        ("invalid-first-empty", join_pair(&[], &full)),
        (
            "invalid-truncated",
            join_pair(&full, &full[..full.len() - 5]),
        ),
        (
            "invalid-capacity-too-large",
            join_pair(
                &edited(&a, |w| w.capacity = UserSample::MAX_CAPACITY + 1),
                &full,
            ),
        ),
        (
            "invalid-more-items-than-capacity",
            join_pair(&full, &edited(&a, |w| w.capacity = 2)),
        ),
        (
            "invalid-more-items-than-offers",
            join_pair(&edited(&a, |w| w.offered = 3), &full),
        ),
        (
            "invalid-out-of-order",
            join_pair(&full, &edited(&a, |w| w.items.reverse())),
        ),
        (
            "invalid-repeated-user",
            join_pair(
                &edited(&a, |w| {
                    let first = w.items[0];
                    w.items.insert(1, first);
                }),
                &full,
            ),
        ),
        (
            "invalid-nan-feature",
            join_pair(&full, &edited(&a, |w| w.items[2].features[5] = f32::NAN)),
        ),
        (
            "invalid-infinite-feature",
            join_pair(
                &edited(&a, |w| w.items[0].features[0] = f32::INFINITY),
                &full,
            ),
        ),
    ]
}

/// The fuzz target's check, with its rejections required to be of the decoder's own type.
fn checked(data: &[u8]) -> Outcome {
    let outcome = fuzz_checks::sample(data);
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
        tally.valid >= 5 && tally.invalid >= 9,
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

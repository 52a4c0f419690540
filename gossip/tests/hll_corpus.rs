//! Replays the `hll` fuzz target's seed corpus (`fuzz/corpus/hll/`) through the same check
//! ([`fuzz_checks::hll`]): each seed is a pair of postcard-encoded HyperLogLogs
//! ([`fuzz_checks::join_pair`]); `valid-*` pairs must decode and merge lawfully, `invalid-*` ones
//! be rejected with a decode error. `write_seed_corpus` (ignored) regenerates the seeds:
//! `cargo test -p prescale-gossip --test hll_corpus -- --ignored`.

use std::path::PathBuf;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use prescale_gossip::fuzz_checks::{self, join_pair, Outcome};
use prescale_gossip::HyperLogLog;
use serde::Serialize;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/hll")
}

/// The sketch's wire form, spelled out so seeds can break its invariants.
#[derive(Serialize)]
enum Wire {
    Sparse { precision: u8, deltas: Vec<u32> },
    Dense { precision: u8, zlib: Vec<u8> },
}

fn wire(w: &Wire) -> Vec<u8> {
    postcard::to_stdvec(w).unwrap()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::best());
    std::io::Write::write_all(&mut enc, bytes).unwrap();
    enc.finish().unwrap()
}

fn filled(n: u64, precision: u8, salt: u64) -> Vec<u8> {
    let mut h = HyperLogLog::new(precision).unwrap();
    for i in 0..n {
        h.insert(i.wrapping_mul(0x9e37_79b9) ^ salt);
    }
    postcard::to_stdvec(&h).unwrap()
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sparse = filled(40, 10, 1);
    let other_sparse = filled(90, 10, 2);
    let dense = filled(5_000, 10, 3);
    let dense_p4 = |register: u8| {
        wire(&Wire::Dense {
            precision: 4,
            zlib: zlib(&[register; 16]),
        })
    };
    let sparse_p4 = |deltas: Vec<u32>| {
        wire(&Wire::Sparse {
            precision: 4,
            deltas,
        })
    };
    // Index 3 rank 2, index 5 rank 7 (entries are `index << 6 | rank`, delta-encoded).
    let two_entries = sparse_p4(vec![(3 << 6) | 2, ((5 << 6) | 7) - ((3 << 6) | 2)]);
    vec![
        ("valid-sparse-pair", join_pair(&sparse, &other_sparse)),
        ("valid-sparse-and-dense", join_pair(&sparse, &dense)),
        ("valid-dense-and-sparse", join_pair(&dense, &sparse)),
        ("valid-dense-pair", join_pair(&dense, &filled(3_000, 10, 4))),
        (
            "valid-empty-pair",
            join_pair(&filled(0, 10, 0), &filled(0, 10, 0)),
        ),
        (
            "valid-smallest-precision",
            join_pair(&two_entries, &dense_p4(3)),
        ),
        (
            "valid-largest-precision",
            join_pair(&filled(30, 14, 5), &filled(200, 14, 6)),
        ),
        // Every register at the highest rank: the estimate is infinite, and merging keeps it.
        ("valid-saturated", join_pair(&dense_p4(61), &two_entries)),
        (
            "valid-precisions-differ",
            join_pair(&sparse, &filled(40, 12, 1)),
        ),
        ("invalid-no-input", Vec::new()),
        ("invalid-first-empty", join_pair(&[], &sparse)),
        (
            "invalid-precision-too-high",
            join_pair(
                &wire(&Wire::Sparse {
                    precision: 30,
                    deltas: vec![],
                }),
                &sparse,
            ),
        ),
        (
            "invalid-precision-too-low",
            join_pair(
                &sparse,
                &wire(&Wire::Dense {
                    precision: 3,
                    zlib: zlib(&[0; 8]),
                }),
            ),
        ),
        ("invalid-rank-too-high", join_pair(&sparse, &dense_p4(62))),
        (
            "invalid-too-few-registers",
            join_pair(
                &wire(&Wire::Dense {
                    precision: 4,
                    zlib: zlib(&[1; 15]),
                }),
                &sparse,
            ),
        ),
        (
            "invalid-too-many-registers",
            join_pair(
                &wire(&Wire::Dense {
                    precision: 4,
                    zlib: zlib(&[1; 17]),
                }),
                &sparse,
            ),
        ),
        (
            "invalid-not-zlib",
            join_pair(
                &wire(&Wire::Dense {
                    precision: 4,
                    zlib: vec![0x78, 0x9c, 0xff],
                }),
                &sparse,
            ),
        ),
        (
            "invalid-sparse-zero-rank",
            join_pair(&sparse_p4(vec![2 << 6]), &sparse),
        ),
        (
            "invalid-sparse-repeated-index",
            join_pair(&sparse_p4(vec![(2 << 6) | 1, 1]), &sparse),
        ),
        (
            "invalid-sparse-index-past-registers",
            join_pair(&sparse, &sparse_p4(vec![(16 << 6) | 1])),
        ),
        (
            "invalid-sparse-overflow",
            join_pair(&sparse_p4(vec![(2 << 6) | 1, u32::MAX]), &sparse),
        ),
        ("invalid-unknown-variant", join_pair(&[2, 10, 0], &sparse)),
        (
            "invalid-truncated",
            join_pair(&sparse, &dense[..dense.len() - 4]),
        ),
    ]
}

/// The fuzz target's check, with its rejections required to be of the decoder's own type.
fn checked(data: &[u8]) -> Outcome {
    let outcome = fuzz_checks::hll(data);
    if let Outcome::Rejected(e) = &outcome {
        assert!(e.is_decode_error(), "{e:?}");
    }
    outcome
}

#[test]
fn corpus_replays_through_the_fuzz_check() {
    let tally = fuzz_checks::replay_corpus(&corpus_dir(), checked);
    assert!(
        tally.valid >= 8 && tally.invalid >= 12,
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

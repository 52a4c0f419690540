//! Replays the `histogram` fuzz target's seed corpus (`fuzz/corpus/histogram/`) through the same
//! check ([`fuzz_checks::histogram`]): each seed is a pair of HdrHistogram V2 compressed
//! encodings ([`fuzz_checks::join_pair`]); `valid-*` pairs must decode and sum exactly,
//! `invalid-*` ones be rejected with a histogram error. `write_seed_corpus` (ignored)
//! regenerates the seeds: `cargo test -p prescale-gossip --test histogram_corpus -- --ignored`.

use std::path::PathBuf;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};
use hdrhistogram::Histogram;
use prescale_gossip::fuzz_checks::{self, join_pair, Outcome};
use prescale_gossip::histogram::HistogramCodec;
use prescale_gossip::{Error, LatencyHistogram};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/histogram")
}

fn recorded(low: u64, high: u64, sigfig: u8, values: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(low, high, sigfig).unwrap();
    for &(v, n) in values {
        h.record_n(v, n).unwrap();
    }
    h
}

/// Latencies spread like a service's: many around a millisecond, a tail to a second.
fn latencies(n: u64, sigfig: u8) -> Histogram<u64> {
    let values: Vec<(u64, u64)> = (0..n)
        .map(|i| (200 + (i * i * 37) % 1_000_000, 1))
        .collect();
    recorded(1, 60_000_000, sigfig, &values)
}

/// The V2 compressed form of uncompressed V2 bytes, as hdrhistogram frames it.
fn deflated(plain: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::best());
    std::io::Write::write_all(&mut enc, plain).unwrap();
    let z = enc.finish().unwrap();
    let mut out = 0x1c84_9314u32.to_be_bytes().to_vec();
    out.extend_from_slice(&(z.len() as u32).to_be_bytes());
    out.extend_from_slice(&z);
    out
}

fn plain(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new().serialize(h, &mut out).unwrap();
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let wire = |h: &Histogram<u64>| {
        LatencyHistogram::from_histogram(h)
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let exact = |h: &Histogram<u64>| {
        HistogramCodec::new()
            .encode_exact(h)
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let a = wire(&latencies(300, 2));
    let b = wire(&latencies(120, 2));
    let coarse = exact(&latencies(200, 1));
    let other_unit = exact(&recorded(1_000, 1 << 40, 2, &[(5_000, 3), (1 << 39, 2)]));
    let huge = exact(&recorded(
        1,
        u64::MAX,
        2,
        &[(u64::MAX, 2), (1 << 62, 1), (7, 9)],
    ));
    let big_counts = exact(&recorded(1, 1000, 2, &[(10, i64::MAX as u64), (20, 5)]));

    let mut too_fine = Vec::new();
    V2DeflateSerializer::new()
        .serialize(&latencies(50, 4), &mut too_fine)
        .unwrap();
    let mut bad_cookie = a.clone();
    bad_cookie[3] ^= 0x01;
    let mut bad_length = a.clone();
    bad_length[7] = bad_length[7].wrapping_add(1);
    let mut not_zlib = 0x1c84_9314u32.to_be_bytes().to_vec();
    not_zlib.extend_from_slice(&16u32.to_be_bytes());
    not_zlib.extend_from_slice(b"not a zlib strm!");
    // Declares a small payload, inflates far past the decoder's limit.
    let mut bomb = plain(&latencies(10, 2));
    bomb.resize(300 * 1024, 0);
    let bomb = deflated(&bomb);
    // A run of a million zero counters, then a count: past the counts array of the range.
    let mut past_end = plain(&recorded(1, 2, 0, &[(1, 1)]));
    let mut zigzag = 2 * 1_000_000 - 1u64;
    while zigzag >= 0x80 {
        past_end.push(zigzag as u8 | 0x80);
        zigzag >>= 7;
    }
    past_end.extend_from_slice(&[zigzag as u8, 2]);
    let payload = (past_end.len() - 40) as u32;
    past_end[4..8].copy_from_slice(&payload.to_be_bytes());
    let past_end = deflated(&past_end);
    let mut flipped = a.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;

    vec![
        ("valid-same-layout", join_pair(&a, &b)),
        ("valid-finer-then-coarser", join_pair(&a, &coarse)),
        ("valid-coarser-then-finer", join_pair(&coarse, &a)),
        ("valid-other-unit", join_pair(&a, &other_unit)),
        ("valid-up-to-u64-max", join_pair(&huge, &a)),
        (
            "valid-counts-near-i64-max",
            join_pair(&big_counts, &big_counts),
        ),
        (
            "valid-empty-histograms",
            join_pair(
                LatencyHistogram::empty().as_bytes(),
                LatencyHistogram::empty().as_bytes(),
            ),
        ),
        ("invalid-no-input", Vec::new()),
        ("invalid-first-empty", join_pair(&[], &a)),
        ("invalid-second-truncated", join_pair(&a, &b[..b.len() - 3])),
        ("invalid-cookie", join_pair(&bad_cookie, &b)),
        ("invalid-declared-length", join_pair(&a, &bad_length)),
        ("invalid-not-zlib", join_pair(&a, &not_zlib)),
        ("invalid-four-sigfig", join_pair(&too_fine, &a)),
        ("invalid-zip-bomb", join_pair(&a, &bomb)),
        ("invalid-count-past-the-range", join_pair(&a, &past_end)),
        ("mutated-first", join_pair(&flipped, &b)),
    ]
}

/// The fuzz target's check, with its rejections required to be of the decoder's own type.
fn checked(data: &[u8]) -> Outcome {
    let outcome = fuzz_checks::histogram(data);
    if let Outcome::Rejected(e) = &outcome {
        assert!(matches!(e, Error::Histogram(_)), "{e:?}");
    }
    outcome
}

#[test]
fn corpus_replays_through_the_fuzz_check() {
    let tally = fuzz_checks::replay_corpus(&corpus_dir(), checked);
    assert!(
        tally.valid >= 6 && tally.invalid >= 9,
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

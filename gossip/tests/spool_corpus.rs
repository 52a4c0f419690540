//! Replays the `spool` fuzz target's seed corpus (`fuzz/corpus/spool/`) through the same check
//! ([`fuzz_checks::spool`]): each seed describes a spool directory as a crash or a careless
//! operator may leave it (the format is on [`fuzz_checks::spool`]); it is opened, drained and
//! reopened. `valid-*` seeds open clean, `recovered-*` ones open after removing damaged files,
//! `invalid-*` ones are refused. `write_seed_corpus` (ignored) regenerates the seeds:
//! `cargo test -p prescale-gossip --test spool_corpus -- --ignored`.

use std::path::PathBuf;

use prescale_gossip::fuzz_checks::{self, NAME_CHARS};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/spool")
}

/// Operations byte: take `take` oldest sketches, discarding (not removing) them if `discard`,
/// then append one if `append`.
fn ops(take: u8, discard: bool, append: bool) -> u8 {
    (take & 7) | u8::from(discard) << 3 | u8::from(append) << 4
}

fn sketch(seq: u64, frame: &[u8]) -> Vec<u8> {
    let mut payload = seq.to_le_bytes().to_vec();
    payload.extend_from_slice(frame);
    file(0, &payload)
}

fn file(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, u8::try_from(payload.len()).unwrap()];
    out.extend_from_slice(payload);
    out
}

/// An empty file named `stem` (over [`NAME_CHARS`]) and the suffix `suffix` indexes.
fn named(stem: &str, suffix: u8) -> Vec<u8> {
    let payload: Vec<u8> = stem
        .bytes()
        .map(|c| NAME_CHARS.iter().position(|&n| n == c).unwrap() as u8)
        .collect();
    file(3 | suffix << 2, &payload)
}

fn dir(capacity: u8, operations: u8, files: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![capacity, operations];
    for f in files {
        out.extend_from_slice(f);
    }
    out
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let three = [sketch(10, b"a"), sketch(11, b"bb"), sketch(12, b"ccc")];
    vec![
        ("valid-new", dir(4, ops(0, false, true), &[])),
        ("valid-three-drained", dir(4, ops(3, false, true), &three)),
        ("valid-over-capacity", dir(2, ops(1, false, false), &three)),
        (
            "valid-stored-next-sequence",
            dir(
                4,
                ops(1, false, true),
                &[sketch(10, b"a"), file(2, &500u64.to_le_bytes())],
            ),
        ),
        (
            "valid-next-sequence-behind-the-sketches",
            dir(
                4,
                ops(0, false, true),
                &[sketch(10, b"a"), file(2, &3u64.to_le_bytes())],
            ),
        ),
        (
            "valid-leftover-temporary",
            dir(
                4,
                ops(1, false, false),
                &[
                    sketch(10, b"a"),
                    named("00000000000000000011", 3),
                    named("a", 1),
                ],
            ),
        ),
        ("valid-discarded", dir(4, ops(2, true, true), &three)),
        (
            "valid-last-sequence",
            dir(4, ops(0, false, true), &[sketch(u64::MAX - 1, b"z")]),
        ),
        (
            "valid-other-files-kept",
            dir(4, ops(0, false, false), &[named("mesh", 2)]),
        ),
        (
            "recovered-short-name",
            dir(4, ops(0, false, true), &[named("5", 0), sketch(7, b"a")]),
        ),
        (
            "recovered-signed-name",
            dir(4, ops(0, false, false), &[named("+0000000000000000005", 0)]),
        ),
        (
            "recovered-sequence-u64-max",
            dir(4, ops(0, false, true), &[sketch(u64::MAX, b"z")]),
        ),
        (
            "recovered-not-a-number",
            dir(4, ops(0, false, false), &[named("ace", 0)]),
        ),
        (
            "recovered-garbage-next-sequence",
            dir(4, ops(0, false, true), &[file(1, b"zz\xff")]),
        ),
        (
            "recovered-zero-next-sequence",
            dir(4, ops(0, false, true), &[file(1, b"0\n")]),
        ),
        (
            "recovered-long-next-sequence",
            dir(4, ops(0, false, true), &[file(1, &[b'7'; 200])]),
        ),
        ("invalid-capacity-zero", dir(0, ops(0, false, true), &three)),
        ("invalid-no-input", Vec::new()),
    ]
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn corpus_replays_through_the_fuzz_check() {
    let scratch = scratch();
    let tally = fuzz_checks::replay_corpus(&corpus_dir(), |data| {
        fuzz_checks::spool(data, scratch.path())
    });
    assert!(
        tally.valid >= 8 && tally.recovered >= 6 && tally.invalid >= 2,
        "corpus too small: {tally:?}"
    );
}

#[test]
fn seeds_behave_as_named() {
    let scratch = scratch();
    fuzz_checks::check_seeds(&seeds(), |bytes| fuzz_checks::spool(bytes, scratch.path()));
}

#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seed_corpus() {
    fuzz_checks::write_corpus(&corpus_dir(), &seeds());
}

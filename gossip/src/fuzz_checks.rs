//! The properties the fuzz targets (`fuzz/fuzz_targets/`) check, in one place: each target hands
//! the fuzzer's input to one function here, and the corpus replay tests (`tests/*corpus.rs`) hand
//! it every committed seed, so a target and its replay cannot drift apart.
//!
//! A function panics when a property breaks (that is what a fuzzer detects) and otherwise says
//! what it made of the input ([`Outcome`]). Seed names say what to expect ([`expect_named`]):
//! `valid-*` accepted, `invalid-*` rejected, `recovered-*` opened after discarding damaged files;
//! any other name (a fuzzer's find) only must not panic.
//!
//! Inputs made of two values (a histogram pair, a sketch pair, a sample pair) are framed by
//! [`split_pair`]. Support for fuzzing and tests only, not an API.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::codec::{self, Limits};
use crate::error::Error;
use crate::histogram::{HistogramCodec, HistogramSum, LatencyHistogram};
use crate::hll::{HllCodec, HyperLogLog};
use crate::messages::{Message, ModelUpdate};
use crate::model::ProfileModel;
use crate::sample::UserSample;
use crate::spool::Spool;

/// What a check made of its input.
#[derive(Debug)]
pub enum Outcome {
    /// Decoded (or opened) and every property held.
    Accepted,
    /// The spool opened after removing this many damaged files.
    Recovered { discarded: u64 },
    /// Refused with this error (of the kind the check expects for bad input).
    Rejected(Error),
}

/// Panic unless `outcome` is what the seed's name promises (see the module docs).
pub fn expect_named(name: &str, outcome: &Outcome) {
    if name.starts_with("valid-") {
        assert!(
            matches!(outcome, Outcome::Accepted),
            "{name} is not accepted: {outcome:?}"
        );
    } else if name.starts_with("invalid-") {
        assert!(
            matches!(outcome, Outcome::Rejected(_)),
            "{name} is not rejected: {outcome:?}"
        );
    } else if name.starts_with("recovered-") {
        assert!(
            matches!(outcome, Outcome::Recovered { .. }),
            "{name} is not recovered: {outcome:?}"
        );
    }
}

/// Seeds of a corpus directory by kind of name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub valid: usize,
    pub invalid: usize,
    pub recovered: usize,
    pub other: usize,
}

/// Run `check` on every file of the corpus directory `dir` and [`expect_named`] its outcome. A
/// panic names the file it came from.
pub fn replay_corpus(dir: &Path, mut check: impl FnMut(&[u8]) -> Outcome) -> Tally {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    let mut tally = Tally::default();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{}: {message}", path.display())
            });
        expect_named(&name, &outcome);
        let count = match name.split('-').next() {
            Some("valid") => &mut tally.valid,
            Some("invalid") => &mut tally.invalid,
            Some("recovered") => &mut tally.recovered,
            _ => &mut tally.other,
        };
        *count += 1;
    }
    tally
}

/// Checks that every seed's outcome is what its name says ([`expect_named`]); the replay tests
/// check the generator too, so a format change that breaks a seed shows before the corpus is
/// regenerated.
pub fn check_seeds(seeds: &[(&str, Vec<u8>)], mut check: impl FnMut(&[u8]) -> Outcome) {
    for (name, bytes) in seeds {
        expect_named(name, &check(bytes));
    }
}

/// Writes `seeds` into the corpus directory `dir` (each test's ignored `write_seed_corpus`).
pub fn write_corpus(dir: &Path, seeds: &[(&str, Vec<u8>)]) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (name, bytes) in seeds {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Two values in one input: a little-endian `u16` length, that many bytes (fewer if the input
/// ends first), and the rest. The inverse of [`join_pair`].
pub fn split_pair(data: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = match data {
        [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
        _ => (0, &[][..]),
    };
    rest.split_at(len.min(rest.len()))
}

/// The input [`split_pair`] splits into `first` and `second`.
pub fn join_pair(first: &[u8], second: &[u8]) -> Vec<u8> {
    let len = u16::try_from(first.len()).expect("first value under 64 KiB");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}

/// The frame decoder: decoding never panics and fails only with a decode error; whatever
/// decodes re-encodes to a frame that decodes to the same message.
pub fn frame(data: &[u8]) -> Outcome {
    let limits = Limits::default();
    match codec::decode(data, &limits) {
        Ok(msg) => {
            let again = codec::encode(&msg, &limits).expect("a decoded message re-encodes");
            let back = codec::decode(&again, &limits).expect("a re-encoded message decodes");
            assert_eq!(back, msg, "re-encoding changed the message");
            Outcome::Accepted
        }
        Err(e) => {
            assert!(e.is_decode_error(), "not a decode error: {e:?}");
            Outcome::Rejected(e)
        }
    }
}

/// A histogram's recorded counts and the layout they were decoded into.
#[derive(Debug, PartialEq, Eq)]
struct Exact {
    low: u64,
    high: u64,
    sigfig: u8,
    counts: Vec<(u64, u64)>,
    len: u64,
    max: u64,
}

fn exact(h: &Histogram<u64>) -> Exact {
    Exact {
        low: h.low(),
        high: h.high(),
        sigfig: h.sigfig(),
        counts: h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
        len: h.len(),
        max: h.max(),
    }
}

/// Two histogram encodings (framed by [`split_pair`]). Each on its own: never a panic;
/// [`LatencyHistogram::from_bytes`] (validation) and [`HistogramCodec::decode_bytes`] accept
/// exactly the same bytes, decode them alike (also from the sketch's wire form, and with the
/// codec's state reused), fail with [`Error::Histogram`], and an exact re-encoding keeps every
/// count. Both valid: their [`HistogramSum`] (from bytes and from validated histograms) is what
/// `Histogram::add` of the decoded pair gives, as `histogram.rs` documents, and
/// [`LatencyHistogram::merge`] keeps the total count. Second invalid: adding it leaves the sum
/// as it was.
pub fn histogram(data: &[u8]) -> Outcome {
    let (a, b) = split_pair(data);
    let mut codec = HistogramCodec::new();
    let first = decode_histogram(&mut codec, a);
    let second = decode_histogram(&mut codec, b);
    match (first, second) {
        (Ok((la, ha)), Ok((lb, hb))) => {
            // Decoding the second input must not have disturbed what the codec gives for the first.
            let again = codec.decode_bytes(a).expect("decodes a second time");
            assert_eq!(exact(&again), exact(&ha), "the codec's state leaked");
            check_histogram_sum(&mut codec, (a, &la, &ha), (b, &lb, &hb));
            Outcome::Accepted
        }
        (Ok((_, ha)), Err(e)) => {
            let mut sum = HistogramSum::new();
            sum.add_bytes(a, &mut codec)
                .expect("a valid histogram adds");
            let err = sum
                .add_bytes(b, &mut codec)
                .expect_err("an invalid histogram does not add");
            assert!(matches!(err, Error::Histogram(_)), "{err:?}");
            let total = sum.to_histogram().expect("the sum converts");
            assert_eq!(
                sum_view(&total),
                sum_view(&ha),
                "a failed add changed the sum"
            );
            Outcome::Rejected(e)
        }
        (Err(e), _) => Outcome::Rejected(e),
    }
}

fn decode_histogram(
    codec: &mut HistogramCodec,
    bytes: &[u8],
) -> Result<(LatencyHistogram, Histogram<u64>), Error> {
    let decoded = codec.decode_bytes(bytes);
    let checked = LatencyHistogram::from_bytes(bytes.to_vec());
    match (checked, decoded) {
        (Ok(h), Ok(decoded)) => {
            let want = exact(&decoded);
            h.validate().expect("validates a second time");
            assert_eq!(exact(&h.to_histogram().expect("to_histogram")), want);
            assert_eq!(exact(&codec.decode(&h).expect("decode")), want);
            // Inside a sketch the histogram is its bare bytes; read back it is not yet
            // validated, and decodes alike.
            let wire = postcard::to_stdvec(&h).expect("wire form");
            let back: LatencyHistogram = postcard::from_bytes(&wire).expect("wire form reads");
            assert_eq!(back, h);
            assert_eq!(
                exact(&back.to_histogram().expect("wire form decodes")),
                want
            );
            match codec.encode_exact(&decoded) {
                Ok(re) => assert_eq!(
                    exact(&codec.decode(&re).expect("an exact encoding decodes")),
                    want,
                    "the exact encoding lost counts"
                ),
                Err(e) => assert!(matches!(e, Error::Histogram(_)), "{e:?}"),
            }
            Ok((h, decoded))
        }
        (Err(e), Err(_)) => {
            assert!(matches!(e, Error::Histogram(_)), "{e:?}");
            Err(e)
        }
        (Ok(_), Err(e)) => panic!("validates but does not decode: {e}"),
        (Err(e), Ok(_)) => panic!("decodes but does not validate: {e}"),
    }
}

/// What a sum must agree on with `Histogram::add`: the lowest value and precision of the first
/// addend, the counts, and the total.
fn sum_view(h: &Histogram<u64>) -> (u64, u8, Vec<(u64, u64)>, u64) {
    let e = exact(h);
    (e.low, e.sigfig, e.counts, e.len)
}

fn check_histogram_sum(
    codec: &mut HistogramCodec,
    (a, la, ha): (&[u8], &LatencyHistogram, &Histogram<u64>),
    (b, lb, hb): (&[u8], &LatencyHistogram, &Histogram<u64>),
) {
    let mut expected = ha.clone();
    expected
        .add(hb)
        .expect("Histogram::add of decoded histograms");
    let mut by_bytes = HistogramSum::new();
    by_bytes.add_bytes(a, codec).expect("adds the first");
    by_bytes.add_bytes(b, codec).expect("adds the second");
    let mut by_value = HistogramSum::new();
    by_value.add(la, codec).expect("adds the first, validated");
    by_value.add(lb, codec).expect("adds the second, validated");
    for sum in [&by_bytes, &by_value] {
        let total = sum.to_histogram().expect("the sum converts");
        assert_eq!(
            sum_view(&total),
            sum_view(&expected),
            "sum differs from add"
        );
        // At u64::MAX `add` reports a largest value one higher than the counter's.
        assert!(
            total.max() == expected.max() || expected.max() == u64::MAX,
            "largest value {} vs {}",
            total.max(),
            expected.max()
        );
        assert_eq!(sum.len(), expected.len());
    }
    let mut merged = la.clone();
    match merged.merge(lb) {
        Ok(()) => {
            let merged = merged.to_histogram().expect("a merged histogram decodes");
            assert_eq!(merged.len(), expected.len(), "merging lost counts");
        }
        Err(e) => assert!(matches!(e, Error::Histogram(_) | Error::Merge(_)), "{e:?}"),
    }
}

/// Two postcard-encoded [`HyperLogLog`]s (framed by [`split_pair`]). Each: never a panic;
/// decoding and [`HllCodec::merge_encoded`] accept the same bytes, the latter failing with a
/// decode error and leaving its target unchanged; re-encoding round-trips. Both valid: merging
/// is commutative and idempotent, `merge_encoded` merges alike, the merge's estimate is at least
/// each input's (within float tolerance), and different precisions refuse to merge.
pub fn hll(data: &[u8]) -> Outcome {
    let (a, b) = split_pair(data);
    let mut codec = HllCodec::new();
    let first = decode_hll(&mut codec, a);
    let second = decode_hll(&mut codec, b);
    match (first, second) {
        (Ok(x), Ok(y)) => {
            check_hll_merge(&mut codec, &x, &y, b);
            Outcome::Accepted
        }
        (Ok(x), Err(e)) => {
            let mut into = x.clone();
            assert!(codec.merge_encoded(&mut into, b).is_err());
            assert_eq!(into, x, "a failed merge changed the sketch");
            Outcome::Rejected(e)
        }
        (Err(e), _) => Outcome::Rejected(e),
    }
}

fn decode_hll(codec: &mut HllCodec, bytes: &[u8]) -> Result<HyperLogLog, Error> {
    match postcard::from_bytes::<HyperLogLog>(bytes) {
        Ok(h) => {
            let mut empty = HyperLogLog::new(h.precision()).expect("a decoded precision");
            codec
                .merge_encoded(&mut empty, bytes)
                .expect("what decodes also merges");
            assert_eq!(empty, h, "merging into an empty sketch changed it");
            let again = codec.encode(&h).expect("re-encodes");
            assert_eq!(again, postcard::to_stdvec(&h).expect("postcard encodes"));
            let back: HyperLogLog = postcard::from_bytes(&again).expect("re-encoding decodes");
            assert_eq!(back, h, "re-encoding changed the sketch");
            assert_eq!(codec.encode(&back).expect("re-encodes"), again);
            let estimate = h.estimate();
            assert!(estimate >= 0.0, "estimate {estimate}");
            Ok(h)
        }
        Err(_) => {
            let mut into = HyperLogLog::default();
            let e = codec
                .merge_encoded(&mut into, bytes)
                .expect_err("what does not decode does not merge");
            assert!(e.is_decode_error(), "{e:?}");
            assert_eq!(
                into,
                HyperLogLog::default(),
                "a failed merge changed the sketch"
            );
            Err(e)
        }
    }
}

fn check_hll_merge(codec: &mut HllCodec, x: &HyperLogLog, y: &HyperLogLog, y_bytes: &[u8]) {
    let (mut xy, mut yx, mut via_bytes) = (x.clone(), y.clone(), x.clone());
    let results = (
        xy.merge(y),
        yx.merge(x),
        codec.merge_encoded(&mut via_bytes, y_bytes),
    );
    if x.precision() != y.precision() {
        assert!(matches!(results.0, Err(Error::Merge(_))), "{:?}", results.0);
        assert!(matches!(results.1, Err(Error::Merge(_))), "{:?}", results.1);
        assert!(matches!(results.2, Err(Error::Merge(_))), "{:?}", results.2);
        assert_eq!(
            (&xy, &yx, &via_bytes),
            (x, y, x),
            "a failed merge changed a sketch"
        );
        return;
    }
    for r in [results.0, results.1, results.2] {
        r.expect("same precision merges");
    }
    assert_eq!(xy, yx, "merge is not commutative");
    assert_eq!(via_bytes, xy, "merge_encoded differs from merge");
    let mut twice = xy.clone();
    twice.merge(y).expect("merges again");
    assert_eq!(twice, xy, "merge is not idempotent");
    let mut self_merged = x.clone();
    self_merged.merge(x).expect("merges with itself");
    assert_eq!(&self_merged, x, "merging a sketch with itself changed it");
    let merged = xy.estimate();
    for input in [x.estimate(), y.estimate()] {
        assert!(
            merged == input || merged >= input - 1e-9 * input.max(1.0),
            "merge estimates {merged}, an input {input}"
        );
    }
    let bytes = codec.encode(&xy).expect("a merge encodes");
    let back: HyperLogLog = postcard::from_bytes(&bytes).expect("a merge decodes");
    assert_eq!(back, xy);
}

/// Decode a whole postcard value as the frame codec does: trailing bytes are refused.
fn decode_exactly<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| Error::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Two postcard-encoded [`UserSample`]s (framed by [`split_pair`]), which the frame decoder
/// reaches only inside a sketch. Each: never a panic, the decoded invariants hold, re-encoding
/// round-trips. Both valid: the merge keeps the first's capacity, adds the offers, is a sample
/// the decoder accepts, holds only users of the inputs (the first's features for users in
/// both), keeps a priority-order prefix of each input, and is as full as the union allows; with
/// equal capacities both merge orders keep the same users.
pub fn sample(data: &[u8]) -> Outcome {
    let (a, b) = split_pair(data);
    match (decode_sample(a), decode_sample(b)) {
        (Ok(x), Ok(y)) => {
            check_sample_merge(&x, &y);
            Outcome::Accepted
        }
        (Err(e), _) | (_, Err(e)) => Outcome::Rejected(e),
    }
}

fn decode_sample(bytes: &[u8]) -> Result<UserSample, Error> {
    let s: UserSample = decode_exactly("user sample", bytes)?;
    assert!(s.capacity() <= UserSample::MAX_CAPACITY);
    assert!(s.items().len() <= usize::from(s.capacity()));
    assert!(s.items().len() as u64 <= s.offered());
    assert!(s
        .items()
        .iter()
        .all(|i| i.features.0.iter().all(|f| f.is_finite())));
    let again = postcard::to_stdvec(&s).expect("re-encodes");
    let back: UserSample = decode_exactly("user sample", &again).expect("re-encoding decodes");
    assert_eq!(back, s, "re-encoding changed the sample");
    Ok(s)
}

fn users(s: &UserSample) -> Vec<u64> {
    s.items().iter().map(|i| i.user).collect()
}

fn check_sample_merge(x: &UserSample, y: &UserSample) {
    let mut m = x.clone();
    m.merge(y);
    assert_eq!(m.capacity(), x.capacity());
    assert_eq!(m.offered(), x.offered().saturating_add(y.offered()));
    let bytes = postcard::to_stdvec(&m).expect("a merge encodes");
    let back: UserSample = decode_exactly("user sample", &bytes).expect("a merge decodes");
    assert_eq!(back, m);
    for item in m.items() {
        match x.items().iter().find(|i| i.user == item.user) {
            Some(ours) => assert_eq!(ours, item, "the first sample's features were replaced"),
            None => assert!(
                y.items().contains(item),
                "user {} came from nowhere",
                item.user
            ),
        }
    }
    let kept: HashSet<u64> = users(&m).into_iter().collect();
    for input in [x, y] {
        let prefix = input
            .items()
            .iter()
            .take_while(|i| kept.contains(&i.user))
            .count();
        assert!(
            input.items()[prefix..]
                .iter()
                .all(|i| !kept.contains(&i.user)),
            "kept a user while dropping one of higher priority"
        );
    }
    let union: HashSet<u64> = users(x).into_iter().chain(users(y)).collect();
    assert_eq!(
        m.items().len(),
        union.len().min(usize::from(x.capacity())),
        "dropped a user while there was room"
    );
    if x.capacity() == y.capacity() {
        let mut n = y.clone();
        n.merge(x);
        assert_eq!(users(&n), users(&m), "merge orders keep different users");
    }
}

/// A postcard-encoded [`ProfileModel`], which the frame decoder reaches only inside a model
/// update: never a panic; parse errors are [`Error::Malformed`], broken invariants
/// [`Error::Invalid`] (as the codec reports them); a model that validates round-trips through
/// postcard and through a model-update frame.
pub fn model(data: &[u8]) -> Outcome {
    let model: ProfileModel = match decode_exactly("profile model", data) {
        Ok(model) => model,
        Err(e) => return Outcome::Rejected(e),
    };
    if let Err(e) = model.validate() {
        return Outcome::Rejected(Error::Invalid {
            what: "model",
            detail: e.to_string(),
        });
    }
    let again = postcard::to_stdvec(&model).expect("re-encodes");
    let back: ProfileModel = decode_exactly("profile model", &again).expect("re-encoding decodes");
    assert_eq!(back, model, "re-encoding changed the model");
    let limits = Limits::default();
    let update = Message::ModelUpdate(ModelUpdate {
        region: "fuzz".into(),
        model,
    });
    let frame = codec::encode(&update, &limits).expect("a valid model's update encodes");
    let decoded = codec::decode(&frame, &limits).expect("a valid model's update decodes");
    assert_eq!(decoded, update, "the frame changed the model");
    Outcome::Accepted
}

/// Characters of the file names a spool input may make up beyond the ones the spool writes:
/// digits, signs and the letters of `.sketch`, `.tmp` and `next-sequence`.
pub const NAME_CHARS: &[u8] = b"0123456789+-._acehkmnpqstu";
pub const SUFFIXES: [&str; 4] = [".sketch", ".tmp", "", ".sketch.tmp"];

/// A spool directory made from the input, opened, drained and reopened. The input: byte 0 the
/// capacity (mod 8; 0 is refused), byte 1 the operations (bits 0-2: how many oldest sketches to
/// take, bit 3: discard rather than remove them, bit 4: append one afterwards), then files, each
/// `tag, len, payload[len]`; by `tag % 4`: 0 a sketch `{seq:020}.sketch`, the sequence from the
/// payload's first 8 bytes (little-endian), the rest its frame; 1 `next-sequence` holding the
/// payload; 2 `next-sequence` holding the decimal of a `u64` from the payload's first 8 bytes;
/// 3 an empty file named by the payload over [`NAME_CHARS`], suffix [`SUFFIXES`]`[tag >> 2 & 3]`.
///
/// Checked: never a panic; open fails only for capacity 0, with [`Error::Argument`]; it keeps
/// the newest `capacity` of the well-named sketches, counting the rest as dropped, and removes
/// leftover temporary files; the next sequence is above every sequence found and at least the
/// stored `next-sequence` (or, without one, the time in microseconds before opening); `oldest`
/// returns sketches in order with the bytes written; an append takes the next sequence; after
/// reopening the sequences are the same, the next sequence has not gone back, nothing is
/// corrupt any more and only the spool's own sketch files are left.
///
/// Works in `scratch/spool` (the caller provides `scratch`), removed before and after.
pub fn spool(data: &[u8], scratch: &Path) -> Outcome {
    let dir = scratch.join("spool");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating the scratch spool directory");
    let outcome = check_spool(data, &dir);
    let _ = fs::remove_dir_all(&dir);
    outcome
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

fn canonical_name(seq: u64) -> String {
    format!("{seq:020}.sketch")
}

/// The sequence of a file the spool itself writes: `{seq:020}.sketch`, never `u64::MAX` (no
/// append assigns it, since nothing could follow it).
fn spooled_sequence(name: &str) -> Option<u64> {
    let seq = name.strip_suffix(".sketch")?.parse::<u64>().ok()?;
    (seq < u64::MAX && canonical_name(seq) == name).then_some(seq)
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn check_spool(data: &[u8], dir: &Path) -> Outcome {
    let (capacity, ops, mut rest) = match data {
        [c, o, rest @ ..] => (usize::from(c % 8), *o, rest),
        _ => (0, 0, &[][..]),
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let [tag, len, tail @ ..] = rest {
        let (payload, tail) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = tail;
        let (name, content) = match tag % 4 {
            0 => (
                canonical_name(le_u64(payload)),
                payload.get(8..).unwrap_or_default().to_vec(),
            ),
            1 => ("next-sequence".to_string(), payload.to_vec()),
            2 => (
                "next-sequence".to_string(),
                le_u64(payload).to_string().into_bytes(),
            ),
            _ => {
                let stem: String = payload
                    .iter()
                    .take(200)
                    .map(|b| char::from(NAME_CHARS[usize::from(*b) % NAME_CHARS.len()]))
                    .collect();
                let name = stem + SUFFIXES[usize::from(tag >> 2 & 3)];
                if name.is_empty() || name == "." || name == ".." {
                    continue;
                }
                (name, Vec::new())
            }
        };
        files.insert(name, content);
    }
    for (name, content) in &files {
        fs::write(dir.join(name), content).expect("writing a spool file");
    }
    let found: BTreeSet<u64> = files.keys().filter_map(|n| spooled_sequence(n)).collect();
    let stored_next = files.get("next-sequence").and_then(|bytes| {
        if bytes.len() as u64 > crate::spool::MAX_NEXT_SEQUENCE_LEN {
            return None;
        }
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
    });

    let before_open = micros_now();
    let mut spool = match Spool::open(dir, capacity) {
        Ok(spool) => spool,
        Err(e) => {
            assert!(
                capacity == 0 && matches!(e, Error::Argument(_)),
                "open failed: {e:?}"
            );
            return Outcome::Rejected(e);
        }
    };
    assert!(capacity > 0, "opened with capacity 0");
    let kept: Vec<u64> = found.iter().rev().take(capacity).rev().copied().collect();
    assert_eq!(
        spool.sequences(),
        kept,
        "not the newest well-named sketches"
    );
    assert_eq!(spool.dropped(), (found.len() - kept.len()) as u64);
    let next = spool.next_sequence();
    if let Some(&last) = found.last() {
        assert!(next > last, "next sequence {next}, {last} spooled");
    }
    match stored_next {
        Some(stored) => assert!(next >= stored, "next sequence {next}, stored {stored}"),
        None => assert!(next >= before_open, "a new epoch starts at {next}"),
    }
    for entry in fs::read_dir(dir).expect("listing the spool") {
        let name = entry.expect("spool entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".tmp"),
            "{name:?} left behind"
        );
    }

    let mut discarded = 0;
    for _ in 0..ops & 7 {
        let Some((seq, frame)) = spool.oldest().expect("oldest") else {
            assert!(spool.is_empty());
            break;
        };
        assert_eq!(spool.sequences().first(), Some(&seq), "not the oldest");
        assert_eq!(Some(&frame), files.get(&canonical_name(seq)), "other bytes");
        if ops & 8 != 0 {
            spool.discard(seq).expect("discard");
            discarded += 1;
        } else {
            spool.remove(seq).expect("remove");
        }
        assert!(!spool.sequences().contains(&seq));
        assert!(
            !dir.join(canonical_name(seq)).exists(),
            "{seq} still on disk"
        );
    }
    let damaged = spool.corrupt() - discarded;
    if ops & 16 != 0 {
        let next = spool.next_sequence();
        match spool.append(|seq| Ok(seq.to_le_bytes().to_vec())) {
            Ok(seq) => {
                assert_eq!(seq, next);
                assert!(found.last().is_none_or(|&last| seq > last));
                assert_eq!(spool.sequences().last(), Some(&seq));
            }
            Err(e) => assert!(
                next == u64::MAX && matches!(e, Error::Argument(_)),
                "append failed: {e:?}"
            ),
        }
    }

    let (sequences, next) = (spool.sequences(), spool.next_sequence());
    drop(spool);
    let reopened = Spool::open(dir, capacity).expect("reopening");
    assert_eq!(
        reopened.sequences(),
        sequences,
        "reopening changed the sketches"
    );
    assert!(
        reopened.next_sequence() >= next,
        "next sequence went back from {next} to {} on reopening",
        reopened.next_sequence()
    );
    assert_eq!(reopened.corrupt(), 0, "damage found again on reopening");
    assert_eq!(reopened.dropped(), 0);
    for entry in fs::read_dir(dir).expect("listing the spool") {
        let name = entry.expect("spool entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sketch") {
            assert!(
                spooled_sequence(&name).is_some_and(|seq| sequences.contains(&seq)),
                "{name} left in the spool"
            );
        }
    }
    if damaged == 0 {
        Outcome::Accepted
    } else {
        Outcome::Recovered { discarded: damaged }
    }
}

//! Fuzz HyperLogLog decoding and merging: two postcard-encoded sketches per input, each decoded
//! and re-encoded (never a panic), a valid pair merged commutatively without lowering an
//! estimate (`prescale_gossip::fuzz_checks::hll`, which `tests/hll_corpus.rs` replays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

fuzz_target!(|data: &[u8]| {
    fuzz_checks::hll(data);
});

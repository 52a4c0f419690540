//! Fuzz user-sample decoding and merging: two postcard-encoded samples per input, each decoded
//! and re-encoded (never a panic), a valid pair merged into the bottom-k of their union
//! (`prescale_gossip::fuzz_checks::sample`, which `tests/sample_corpus.rs` replays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

fuzz_target!(|data: &[u8]| {
    fuzz_checks::sample(data);
});

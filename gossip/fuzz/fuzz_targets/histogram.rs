//! Fuzz the latency histogram decoders and their sum: two encodings per input, each validated
//! and decoded (never a panic, both decoders agree), and a valid pair summed exactly as
//! `Histogram::add` adds (`prescale_gossip::fuzz_checks::histogram`, which
//! `tests/histogram_corpus.rs` replays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

fuzz_target!(|data: &[u8]| {
    fuzz_checks::histogram(data);
});

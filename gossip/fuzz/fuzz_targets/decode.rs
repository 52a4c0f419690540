//! Fuzz the frame decoder: arbitrary bytes must never panic, fail only with a decode error, and
//! anything that decodes must re-encode to bytes that decode to the same message
//! (`prescale_gossip::fuzz_checks::frame`, which `tests/corpus.rs` replays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

fuzz_target!(|data: &[u8]| {
    fuzz_checks::frame(data);
});

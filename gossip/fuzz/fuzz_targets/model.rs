//! Fuzz profile-model decoding and validation: a postcard-encoded model never panics, and one
//! that validates survives a model-update frame unchanged (`prescale_gossip::fuzz_checks::model`,
//! which `tests/model_corpus.rs` replays).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::fuzz_checks;

fuzz_target!(|data: &[u8]| {
    fuzz_checks::model(data);
});

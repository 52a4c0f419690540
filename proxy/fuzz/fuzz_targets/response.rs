//! Fuzz the front door's reading of a backend's response: arbitrary bytes, read as a response to
//! GET or HEAD and split into reads at arbitrary points, must never panic; whatever is accepted
//! is accepted whatever the split (the same head and body for every split).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_proxy::read_backend_response;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let head_only = control & 1 == 1;
    let cuts = [usize::from(control >> 1), stream.len() / 3, stream.len() / 2];
    let whole = read_backend_response(stream, head_only, &[]);
    let split = read_backend_response(stream, head_only, &cuts);
    assert_eq!(whole, split, "the reads' boundaries changed the outcome");
});

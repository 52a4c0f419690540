//! Fuzz the frame decoder: arbitrary bytes must never panic, and anything that decodes must
//! re-encode to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::codec::{decode, encode, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(msg) = decode(data, &limits) {
        let again = encode(&msg, &limits).expect("a decoded message re-encodes");
        assert_eq!(decode(&again, &limits).expect("re-encoded message decodes"), msg);
    }
});

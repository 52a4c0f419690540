//! Fuzz what a member does with a peer's datagram before foca sees it (sender identity against
//! the certificate, screening of updates about other members, region totals) and the region
//! totals decoder: arbitrary bytes must never panic, and a packet rewritten by the screening
//! must pass a second screening unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prescale_gossip::membership::screen_untrusted;

fuzz_target!(|data: &[u8]| {
    let verdict = screen_untrusted(data);
    if let Ok(report) = verdict.datagram {
        assert!(report.rewrite_is_final, "{report:?}");
    }
});

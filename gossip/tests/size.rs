//! The size budget: one profile entry stays within 2 KiB on the wire at 100k requests, even when
//! every request is a different user (the HyperLogLog at its densest).

use prescale_gossip::codec::{encode, Limits};
use prescale_gossip::messages::Message;
use prescale_gossip::model::{FeatureVector, FEATURE_DIM};
use prescale_gossip::{EntryKey, Sketch};
use rand::{Rng, SeedableRng};

/// A profile entry of `requests` requests from `users` distinct users with log-normal latency.
fn entry_sketch(requests: u64, users: u64, entries: u32) -> Sketch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut s = Sketch::new("proxy-eu-1", "eu", 1_700_000_000_000, 1_700_000_010_000);
    s.sequence = 123_456;
    for p in 0..entries {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let key = EntryKey {
            profile: format!("profile-{}", p),
            origin_region: "eu-west".into(),
            fleet: "web".into(),
        };
        let e = s.entry(key);
        for i in 0..requests {
            // ln(latency µs) ~ N(ln 20 ms, 0.8)
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            h.record(((20_000f64).ln() + 0.8 * z).exp().clamp(1.0, 60_000_000.0) as u64)
                .unwrap();
            let user = (i % users).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(p);
            e.observe_user(user, FeatureVector([i as f32 * 1e-3; FEATURE_DIM]));
        }
        e.requests = requests;
        e.errors = requests / 100;
        e.bytes_in = requests * 300;
        e.bytes_out = requests * 20_000;
        e.set_latency(&h).unwrap();
    }
    s
}

#[test]
fn profile_entry_within_2_kib_at_100k_requests() {
    let limits = Limits::default();
    let base = encode(&Message::Sketch(entry_sketch(0, 1, 0)), &limits)
        .unwrap()
        .len();
    for users in [100u64, 10_000, 100_000] {
        let s = entry_sketch(100_000, users, 1);
        let per_entry = encode(&Message::Sketch(s.clone()), &limits).unwrap().len() - base;
        let e = &s.entries[0].stats;
        eprintln!(
            "{users} users: {per_entry} B per entry (histogram {} B, HLL {} B, {} sampled users)",
            e.latency.as_bytes().len(),
            e.users.encoded_len(),
            e.sample.items().len()
        );
        assert!(
            per_entry <= 2048,
            "{users} users: {per_entry} bytes per entry"
        );
    }
}

//! Sketch size per profile entry at 100k requests (printed), and encode/decode time of sketches
//! of 1 and 20 such entries.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use prescale_gossip::codec::{decode, encode, Limits};
use prescale_gossip::messages::Message;
use prescale_gossip::model::{FeatureVector, FEATURE_DIM};
use prescale_gossip::{EntryKey, Sketch};
use rand::{Rng, SeedableRng};

/// `entries` profile entries, each of `requests` requests from `users` distinct users with
/// log-normal latency (median 20 ms).
fn sketch(requests: u64, users: u64, entries: u32) -> Sketch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut s = Sketch::new("proxy-eu-1", "eu", 1_700_000_000_000, 1_700_000_010_000);
    s.sequence = 123_456;
    for p in 0..entries {
        let mut h =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let e = s.entry(EntryKey {
            profile: format!("profile-{}", p),
            origin_region: "eu-west".into(),
            fleet: "web".into(),
        });
        for i in 0..requests {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let _ = h.record(((20_000f64).ln() + 0.8 * z).exp().clamp(1.0, 60_000_000.0) as u64);
            let user = (i % users).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(p);
            e.observe_user(user, FeatureVector([i as f32 * 1e-3; FEATURE_DIM]));
        }
        e.requests = requests;
        e.errors = requests / 100;
        e.bytes_in = requests * 300;
        e.bytes_out = requests * 20_000;
        e.set_latency(&h).expect("histogram");
    }
    s
}

fn bytes(s: &Sketch) -> Vec<u8> {
    encode(&Message::Sketch(s.clone()), &Limits::default()).expect("encode")
}

fn report_sizes() {
    let base = bytes(&sketch(0, 1, 0)).len();
    for users in [1_000u64, 100_000] {
        let s = sketch(100_000, users, 1);
        let e = &s.entries[0].stats;
        let per_entry = bytes(&s).len() - base;
        println!(
            "sketch size: {per_entry} bytes per profile entry at 100k requests, {users} users \
             (latency histogram {} B, HLL {} B, sample of {} users {} B); empty sketch {base} B",
            e.latency.as_bytes().len(),
            e.users.encoded_len(),
            e.sample.items().len(),
            postcard::to_stdvec(&e.sample).map(|v| v.len()).unwrap_or(0),
        );
    }
}

fn bench(c: &mut Criterion) {
    report_sizes();
    let limits = Limits::default();
    for entries in [1u32, 20] {
        let s = sketch(100_000, 100_000, entries);
        let msg = Message::Sketch(s);
        let frame = encode(&msg, &limits).expect("encode");
        println!("{entries}-entry sketch: {} bytes", frame.len());
        c.bench_function(&format!("encode/{entries}-entries"), |b| {
            b.iter_batched(
                || msg.clone(),
                |m| encode(&m, &limits),
                BatchSize::SmallInput,
            )
        });
        c.bench_function(&format!("decode/{entries}-entries"), |b| {
            b.iter(|| decode(&frame, &limits))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

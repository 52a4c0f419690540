//! Forecaster ingest rate: sketches merged and persisted per second into a SQLite file, in
//! batches (as the live writer thread commits them). Prints sketches/s at the end.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use prescale_gossip::{EntryKey, Sketch};
use prescale_regions::store::SeriesStore;

const NODES: u64 = 50;
const PROFILES: [&str; 4] = ["interactive", "batch", "scheduled", "new"];

fn sketches(sequence_base: u64, count: u64) -> Vec<Sketch> {
    let mut histogram =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for i in 0..200u64 {
        histogram.record(500 + i * 97).expect("record");
    }
    (0..count)
        .map(|i| {
            let node = i % NODES;
            let sequence = sequence_base + i / NODES;
            let start_ms = 1_700_000_000_000 + sequence * 10_000;
            let mut s = Sketch::new(format!("proxy-{node}"), "eu", start_ms, start_ms + 10_000);
            s.sequence = sequence;
            for profile in PROFILES {
                let stats = s.entry(EntryKey {
                    profile: profile.into(),
                    origin_region: "eu".into(),
                    fleet: "web".into(),
                });
                stats.requests = 1000;
                stats.errors = 3;
                stats.bytes_out = 1_000_000;
                stats.set_latency(&histogram).expect("latency");
                for u in 0..50 {
                    stats.users.insert(node * 1_000_000 + u);
                }
            }
            s
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SeriesStore::open(&dir.path().join("bench.db")).expect("open");
    let batch = 512u64;
    let mut next = 0u64;
    let mut total = 0u64;
    let mut ingest_time = std::time::Duration::ZERO;
    c.bench_function(
        "ingest 512 sketches (4 entries each) in one transaction",
        |b| {
            b.iter_batched(
                || {
                    let prepared = sketches(next, batch);
                    next += batch / NODES + 1;
                    prepared
                },
                |prepared| {
                    let started = Instant::now();
                    store.ingest(&prepared, 0).expect("ingest");
                    ingest_time += started.elapsed();
                    total += batch;
                },
                criterion::BatchSize::LargeInput,
            )
        },
    );
    let rate = total as f64 / ingest_time.as_secs_f64();
    println!("ingest rate: {rate:.0} sketches/s merged and committed ({total} sketches)");
}

criterion_group!(benches, ingest);
criterion_main!(benches);

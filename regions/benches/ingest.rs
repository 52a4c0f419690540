//! Forecaster ingest rate: sketches merged and persisted into a SQLite file, in batches of
//! [`BATCH`] sketches per transaction (as the live writer thread commits them). Criterion's
//! `thrpt` line is the figure, in sketches per second (elements/s); a summary line follows.
//!
//! The sketches look like the proxy exporter's: each node sends one per 10-second interval with
//! an entry per (profile, origin region) its clients produced, each profile routed to its fleet;
//! latencies are log-normal around a per-profile median, recorded at 3 significant figures and
//! put on the wire at 2 (or 1 when wide, as `LatencyHistogram::from_histogram` decides); users
//! are drawn from a per-node population (HyperLogLog sparse or dense depending on the entry's
//! size) with a bottom-8 sample of feature vectors.
//!
//! Two cases: `received`, the production path — sketches through the wire codec, decoded and
//! validated as the receiver hands them to the sink (validation inflates every histogram, on the
//! receiver's threads, and the store merges from that); `built locally` — histograms not
//! inflated yet, so the writer inflates each one itself. The summary also gives sketches per
//! CPU-second of the writer thread, steadier than wall time on a busy machine, and the rate at
//! which one thread decodes and validates sketches as the receiver does.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prescale_gossip::model::{FeatureVector, FEATURE_DIM};
use prescale_gossip::{decode, encode, EntryKey, Limits, Message, Sketch};
use prescale_regions::store::{SeriesQuery, SeriesStore};

/// Proxy nodes sending sketches.
const NODES: u64 = 50;
/// Sketches per transaction (the writer's `MAX_BATCH`).
const BATCH: u64 = 512;
/// Distinct sketch contents built up front and cycled through (with fresh node, sequence and
/// interval), so building sketches stays out of the measured loop and out of the bench's time.
const POOL: usize = 400;

/// (profile, fleet, median latency µs, log-normal sigma, requests per interval from the node's
/// own region, distinct users that profile has per node).
const PROFILES: [(&str, &str, f64, f64, u64, u64); 4] = [
    ("interactive", "web", 25_000.0, 0.7, 2_000, 20_000),
    ("batch", "batch", 400_000.0, 1.0, 300, 400),
    ("scheduled", "batch", 150_000.0, 0.5, 120, 60),
    ("new", "web", 60_000.0, 0.9, 500, 50_000),
];
/// Origin regions of the clients and their share of a profile's requests.
const ORIGINS: [(&str, f64); 2] = [("eu", 1.0), ("us", 0.15)];

/// A small deterministic generator (no dependency on a RNG crate for a bench).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }

    fn unit(&mut self) -> f64 {
        (self.next() as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// One sketch's contents; node, sequence and interval are set when it is used.
fn sketch_contents(rng: &mut Rng, node: u64) -> Sketch {
    let mut sketch = Sketch::new(format!("proxy-{node}"), "eu", 0, 0);
    for (profile, fleet, median, sigma, requests, population) in PROFILES {
        for (origin, share) in ORIGINS {
            let mean = requests as f64 * share;
            let requests = (mean * (0.8 + 0.4 * rng.unit())) as u64;
            if requests == 0 {
                continue;
            }
            let stats = sketch.entry(EntryKey {
                profile: profile.into(),
                origin_region: origin.into(),
                fleet: fleet.into(),
            });
            stats.requests = requests;
            stats.errors = requests / 200 + u64::from(rng.unit() < 0.3);
            stats.bytes_in = requests * (300 + rng.next() % 200);
            stats.bytes_out = requests * (5_000 + rng.next() % 20_000);
            let mut histogram =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            for _ in 0..requests {
                let micros = (median * (sigma * rng.normal()).exp()).clamp(1.0, 60_000_000.0);
                histogram.record(micros as u64).expect("record");
            }
            stats.set_latency(&histogram).expect("latency");
            // Each user makes a few requests; users come from the node's population.
            let population = (population as f64 * share).max(1.0) as u64;
            for _ in 0..(requests / 3).max(1) {
                let user = (node << 40) | (rng.next() % population);
                let mut features = [0f32; FEATURE_DIM];
                for f in &mut features {
                    *f = rng.unit() as f32;
                }
                stats.observe_user(user, FeatureVector(features));
            }
        }
    }
    sketch
}

/// Time this thread has spent on a CPU, when the kernel tells (Linux); wall time on a busy
/// machine also counts the time other processes had the CPU.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Hands out batches of the next sketches, contents cycled from a pool.
struct Feed {
    sent: u64,
    requests: u64,
}

impl Feed {
    fn batch(&mut self, pool: &[Sketch]) -> Vec<Sketch> {
        (0..BATCH)
            .map(|_| {
                // Node `i % NODES` sends its next interval: 10 s apart, so a batch spans about
                // ten intervals of fifty nodes (two or three minutes).
                let i = self.sent;
                self.sent += 1;
                let (node, sequence) = (i % NODES, i / NODES);
                let mut s = pool[(i as usize * 7 + sequence as usize) % pool.len()].clone();
                s.node = format!("proxy-{node}");
                s.sequence = sequence;
                s.interval_start_ms = 1_700_000_000_000 + sequence * 10_000;
                s.interval_end_ms = s.interval_start_ms + 10_000;
                s.sender.spooled = 1;
                self.requests += s.total_requests();
                s
            })
            .collect()
    }
}

#[derive(Default)]
struct Tally {
    sketches: u64,
    wall: Duration,
    cpu: Duration,
}

fn ingest(c: &mut Criterion) {
    let mut rng = Rng(42);
    let built: Vec<Sketch> = (0..POOL)
        .map(|i| sketch_contents(&mut rng, i as u64 % NODES))
        .collect();
    // What the forecaster's writer gets: sketches through the wire codec, decoded and validated
    // by the receiver (which inflates every histogram to check it, on its own threads).
    let limits = Limits::default();
    let frames: Vec<Vec<u8>> = built
        .iter()
        .map(|s| encode(&Message::Sketch(s.clone()), &limits).expect("encode"))
        .collect();
    let decode_all = || -> Vec<Sketch> {
        frames
            .iter()
            .map(|frame| match decode(frame, &limits).expect("decode") {
                Message::Sketch(s) => s,
                other => panic!("not a sketch: {other:?}"),
            })
            .collect()
    };
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    const DECODE_ROUNDS: usize = 5;
    for _ in 1..DECODE_ROUNDS {
        std::hint::black_box(decode_all());
    }
    let received = decode_all();
    let decoded = (DECODE_ROUNDS * POOL) as f64;
    let decode_rate = decoded / wall.elapsed().as_secs_f64();
    let decode_cpu_rate = match (cpu, thread_cpu_time()) {
        (Some(before), Some(after)) => decoded / after.saturating_sub(before).as_secs_f64(),
        _ => f64::NAN,
    };

    let all_entries = built.iter().map(|s| s.entries.len()).sum::<usize>();
    let entries = all_entries as f64 / POOL as f64;
    let dense = built
        .iter()
        .flat_map(|s| &s.entries)
        .filter(|e| !e.stats.users.is_sparse())
        .count();
    let latency_bytes = built
        .iter()
        .flat_map(|s| &s.entries)
        .map(|e| e.stats.latency.as_bytes().len())
        .sum::<usize>();
    let frame_bytes = frames.iter().map(Vec::len).sum::<usize>();
    println!(
        "sketches: {entries:.1} entries each, {} bytes on the wire; histograms {} bytes on average; \
         {dense} of {all_entries} HyperLogLogs dense; receiver decode and validation: \
         {decode_rate:.0} sketches/s, {decode_cpu_rate:.0} per CPU-second",
        frame_bytes / POOL,
        latency_bytes / all_entries
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = SeriesStore::open(&dir.path().join("bench.db")).expect("open");
    let mut feed = Feed {
        sent: 0,
        requests: 0,
    };
    let mut tallies = [Tally::default(), Tally::default()];
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH));
    for ((pool, name), tally) in [
        (&received, "received"),
        (&built, "built locally (histograms not inflated yet)"),
    ]
    .into_iter()
    .zip(&mut tallies)
    {
        group.bench_function(
            format!("{BATCH} sketches, {entries:.0} entries each, per transaction: {name}"),
            |b| {
                b.iter_batched(
                    || feed.batch(pool),
                    |batch| {
                        let (wall, cpu) = (Instant::now(), thread_cpu_time());
                        let outcomes = store.ingest(&batch, 0).expect("ingest");
                        tally.wall += wall.elapsed();
                        if let (Some(before), Some(after)) = (cpu, thread_cpu_time()) {
                            tally.cpu += after.saturating_sub(before);
                        }
                        tally.sketches += outcomes.len() as u64;
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();

    // Nothing lost: every request of every sketch is in the series.
    let in_store: u64 = store
        .series(&SeriesQuery::default())
        .expect("series")
        .values()
        .flatten()
        .map(|p| p.requests)
        .sum();
    assert_eq!(in_store, feed.requests, "requests in the store");
    for (tally, name) in tallies.iter().zip(["received", "built locally"]) {
        let per = |d: Duration| tally.sketches as f64 / d.as_secs_f64();
        println!(
            "ingest ({name}): {:.0} sketches/s ({:.0} entries/s) merged and committed; \
             {:.0} sketches per CPU-second; {} sketches",
            per(tally.wall),
            per(tally.wall) * entries,
            per(tally.cpu),
            tally.sketches
        );
    }
}

criterion_group!(benches, ingest);
criterion_main!(benches);

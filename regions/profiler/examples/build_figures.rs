//! Wall time and peak heap of `build` at 100k and 1M synthetic samples (8 Gaussian clusters in
//! 16 dimensions), with the default parameters:
//!
//! `cargo run --release -p prescale-profiler --example build_figures [USERS...]`
//!
//! Peak heap is counted by a global allocator that tracks live bytes; the input itself (users ×
//! 16 × 4 bytes) is allocated before the measurement starts and is not part of the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use prescale_profiler::{build, BuildParams, Samples};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const DIM: usize = 16;
const CLUSTERS: usize = 8;

/// SplitMix64: a tiny seeded generator, enough for synthetic data.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![100_000, 1_000_000]
        } else {
            args
        }
    };
    let names = prescale_profiler::naming::WORDS.map(|(name, _, _)| name);
    let mut g = Mix(42);
    let centers: Vec<Vec<f64>> = (0..CLUSTERS)
        .map(|_| (0..DIM).map(|_| 10.0 * g.unit()).collect())
        .collect();
    for users in sizes {
        let mut features = Vec::with_capacity(users * DIM);
        for u in 0..users {
            let c = &centers[u % CLUSTERS];
            features.extend(c.iter().map(|&x| (x + 0.5 * g.normal()) as f32));
        }
        let params = BuildParams::default();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let start = Instant::now();
        let model = match build(
            Samples {
                dim: DIM,
                features: &features,
            },
            &names,
            None,
            &params,
        ) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("build failed: {e}");
                std::process::exit(1);
            }
        };
        let wall = start.elapsed();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "users {users}: {:.2} s, peak heap {:.1} MiB beyond the {:.1} MiB input; \
             {} profiles, fit on {}, {} anomalous, k tried {:?}",
            wall.as_secs_f64(),
            peak as f64 / (1024.0 * 1024.0),
            (users * DIM * 4) as f64 / (1024.0 * 1024.0),
            model.profiles.len(),
            model.fit_points,
            model.anomalous_users,
            model.k_scores.iter().map(|s| s.k).collect::<Vec<_>>(),
        );
    }
}

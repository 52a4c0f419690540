//! The live driver's step at 1,000 fleets with ingest running beside it: the figure the
//! forecaster's planning tick costs a region of that size.
//!
//! Setup: 1,000 static fleets, one profile each, with two days of history in the brain (fed as
//! the replay bench feeds it). A writer thread commits sketches from 10 proxies (100 profiles
//! each, one sketch per 10 s of node time) into the same SQLite file the driver reads, as the
//! forecaster's writer does, without pause. Each measured step hands over one complete minute
//! (1,000 series), polls the brain (1,000 fleets planned) and publishes the plan; node time is
//! simulated, a minute per step; the step also records the capacity history (every fleet's
//! minute, lead-time forecast and outlook) in the same file. Prints the median and the slowest
//! step, and the writer's rate.
//!
//! Run: `cargo bench -p prescale-regions --bench live`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prescale_config::brain::{ForecastConfig, PlannerConfig};
use prescale_gossip::{EntryKey, Sketch};
use prescale_regions::brain::{Brain, FleetKey, FleetProfile, FleetSpec};
use prescale_regions::history::History;
use prescale_regions::ledger::Ledger;
use prescale_regions::live::{CompletenessRule, LiveDriver, LiveFleet, LiveSettings};
use prescale_regions::planner::CapacityModel;
use prescale_regions::store::SeriesStore;

const FLEETS: usize = 1000;
const NODES: usize = 10;
const HISTORY_MINUTES: i64 = 2 * 1440;
const MEASURED_MINUTES: i64 = 30;

fn demand(series: usize, minute: i64) -> f64 {
    let phase = (minute % 1440) as f64 / 1440.0 * std::f64::consts::TAU + series as f64;
    (200.0 + 150.0 * phase.sin()).max(1.0)
}

fn spec(s: usize) -> FleetSpec {
    FleetSpec {
        key: FleetKey {
            region: "bench".into(),
            fleet: format!("f{s}"),
        },
        profiles: vec![FleetProfile {
            name: format!("p{s}"),
            revenue_weight: 1.0,
        }],
        capacity: CapacityModel {
            rps_per_instance: 0.5,
            cold_start_seconds: 120.0,
            cost_per_instance_hour: 1.0,
        },
        max_instances: None,
        budget_per_hour: None,
        initial_instances: 5,
        learn_capacity: None,
        warm_sub_pools: Vec::new(),
        instance_resources: None,
    }
}

/// One node's sketch of `[start_ms, start_ms + 10 s)`: its 100 profiles.
fn sketch(node: usize, sequence: u64, start_ms: u64) -> Sketch {
    let mut s = Sketch::new(format!("n{node}"), "bench", start_ms, start_ms + 10_000);
    s.sequence = sequence;
    let minute = (start_ms / 60_000) as i64;
    for p in (node * FLEETS / NODES)..((node + 1) * FLEETS / NODES) {
        let stats = s.entry(EntryKey {
            profile: format!("p{p}"),
            origin_region: "bench".into(),
            fleet: format!("f{p}"),
        });
        stats.requests = (demand(p, minute) / 6.0) as u64;
    }
    s
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("series.db");
    let start_minute: i64 = 29_000_000; // a minute boundary, unix minutes
    let now_minute = start_minute + HISTORY_MINUTES;

    let between_refits = ForecastConfig {
        refit_interval_minutes: 1_000_000,
        ..ForecastConfig::default()
    };
    let mut brain = Brain::new(between_refits, PlannerConfig::default());
    let mut fleets = Vec::with_capacity(FLEETS);
    for s in 0..FLEETS {
        brain.add_fleet(spec(s));
        for m in start_minute..now_minute {
            brain.observe(m * 60 + 60, "bench", &format!("p{s}"), m * 60, demand(s, m));
        }
        fleets.push(LiveFleet {
            spec: spec(s),
            provisioner: None,
            static_backends: 5,
        });
    }
    brain.poll(now_minute * 60);
    let store = SeriesStore::open(&db).expect("store");
    let ledger = Ledger::open(&db).expect("ledger");
    let settings = LiveSettings {
        region: "bench".into(),
        rule: CompletenessRule {
            lateness_ms: 30_000,
            silent_after_ms: 60_000,
        },
        // The brain comes warmed: nothing to rebuild from the store.
        history_minutes: 0,
        forecast_only: false,
        cold_minutes: 0,
    };
    let mut driver = LiveDriver::new(settings, brain, store, ledger, fleets, Box::new(|_| Ok(())));
    // The capacity history is recorded as a running forecaster records it.
    driver.use_history(History::open(&db).expect("history"));

    // The writer: sketches for each minute ahead of the driver, without pause.
    let written_through = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sketches_written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, written_through, stop, count) = (
            db.clone(),
            Arc::clone(&written_through),
            Arc::clone(&stop),
            Arc::clone(&sketches_written),
        );
        std::thread::spawn(move || {
            let mut store = SeriesStore::open(&db).expect("writer store");
            let mut sequence = 0;
            let mut minute = now_minute;
            while !stop.load(Ordering::Relaxed) {
                for tenth in 0..6u64 {
                    sequence += 1;
                    let batch: Vec<Sketch> = (0..NODES)
                        .map(|n| sketch(n, sequence, (minute as u64 * 60 + tenth * 10) * 1000))
                        .collect();
                    store.ingest(&batch, 0).expect("ingest");
                    count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                written_through.store((minute as u64 + 1) * 60_000, Ordering::Release);
                minute += 1;
            }
        })
    };

    let began = Instant::now();
    let mut steps = Vec::new();
    // The first step (brain takes over; nothing to hand over yet) is not counted.
    driver.step(now_minute as u64 * 60_000);
    for k in 0..MEASURED_MINUTES {
        let minute_end = (now_minute + k + 1) as u64 * 60_000;
        while written_through.load(Ordering::Acquire) < minute_end {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        // Just after the minute ended and every proxy reported past it.
        driver.step(minute_end + 1_000);
        steps.push(t.elapsed());
    }
    let elapsed = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    steps.sort();
    let median = steps[steps.len() / 2];
    let slowest = steps[steps.len() - 1];
    let view = driver.shared().view();
    assert_eq!(view.fleets.len(), FLEETS);
    println!(
        "live step, {FLEETS} fleets, ingest beside it: median {:.1} ms, slowest {:.1} ms over {} minutes; writer {:.0} sketches/s of {} entries",
        median.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        steps.len(),
        sketches_written.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        FLEETS / NODES
    );
}

//! Benchmarks of the brain: forecast + plan per series per tick (one series, and 1,000 series),
//! one seasonal refit, and a replay of a month of per-minute data (NASA July 1995).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use prescale_config::brain::{ForecastConfig, PlannerConfig};
use prescale_regions::brain::{Brain, FleetKey, FleetProfile, FleetSpec};
use prescale_regions::forecast::SeriesForecaster;
use prescale_regions::planner::CapacityModel;
use prescale_regions::replay::{self, Policy, ReplaySettings};
use prescale_regions::trace::Trace;

fn diurnal(series: usize, minute: i64) -> f64 {
    let phase = (minute % 1440) as f64 / 1440.0 * std::f64::consts::TAU + series as f64;
    let wobble = ((minute * 7919 + series as i64 * 104_729) % 97) as f64 / 97.0;
    (200.0 + 150.0 * phase.sin()) * (0.9 + 0.2 * wobble)
}

fn brain_with(series: usize, forecast: ForecastConfig, history_minutes: i64) -> Brain {
    let mut brain = Brain::new(forecast, PlannerConfig::default());
    for s in 0..series {
        let profile = format!("p{s}");
        brain.add_fleet(FleetSpec {
            key: FleetKey {
                region: "bench".into(),
                fleet: format!("f{s}"),
            },
            profiles: vec![FleetProfile {
                name: profile.clone(),
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
        });
        for m in 0..history_minutes {
            brain.observe(m * 60 + 60, "bench", &profile, m * 60, diurnal(s, m));
        }
    }
    brain.poll(history_minutes * 60);
    brain
}

fn tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("forecast_and_plan_per_tick");
    group.sample_size(20);
    // One series with three days of history; seasonal refits (every 6 h) are amortized in.
    let history = 3 * 1440;
    let mut brain = brain_with(1, ForecastConfig::default(), history);
    let mut minute = history;
    group.bench_function("one_series_refits_amortized", |b| {
        b.iter(|| {
            brain.observe(
                minute * 60 + 60,
                "bench",
                "p0",
                minute * 60,
                diurnal(0, minute),
            );
            minute += 1;
            black_box(brain.poll(minute * 60));
        })
    });
    // 1,000 series between refits (the refit cost is measured on its own below).
    let between_refits = ForecastConfig {
        refit_interval_minutes: 1_000_000,
        ..ForecastConfig::default()
    };
    let mut brain = brain_with(1000, between_refits, 2 * 1440 + 60);
    let mut minute = 2 * 1440 + 60;
    group.bench_function("1000_series_between_refits", |b| {
        b.iter(|| {
            for s in 0..1000 {
                brain.observe(
                    minute * 60 + 60,
                    "bench",
                    &format!("p{s}"),
                    minute * 60,
                    diurnal(s, minute),
                );
            }
            minute += 1;
            black_box(brain.poll(minute * 60));
        })
    });
    group.finish();
}

fn refit(c: &mut Criterion) {
    let mut group = c.benchmark_group("seasonal_refit");
    group.sample_size(10);
    group.bench_function("one_series_week_of_minutes", |b| {
        b.iter_batched(
            || {
                let mut f = SeriesForecaster::new(&ForecastConfig::default(), 0.999);
                for m in 0..7 * 1440 {
                    f.observe(m, diurnal(0, m));
                }
                f
            },
            |mut f| {
                f.update(7 * 1440);
                black_box(f.refits())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn replay_month(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/traces/nasa-1995-07.per-minute.csv");
    let Ok(trace) = Trace::from_path(&path) else {
        return;
    };
    let settings = ReplaySettings {
        capacity_rps: 1.0,
        cold_start_seconds: 120.0,
        ..ReplaySettings::default()
    };
    let mut group = c.benchmark_group("replay_month_per_minute");
    group.sample_size(10);
    group.bench_function("nasa_july_all_policies", |b| {
        b.iter(|| {
            black_box(replay::replay(&trace, &Policy::ALL, &settings, |_| {}).map(|o| o.scores))
        })
    });
    group.finish();
}

criterion_group!(benches, tick, refit, replay_month);
criterion_main!(benches);

//! Forecast quality on real traffic (NASA KSC web server, July 1995): calibrated 90 % intervals
//! cover within ±5 points of 90 %, and the 30-minute-ahead forecast beats "same minute
//! yesterday" (MASE below 1).

use std::path::Path;

use prescale_config::brain::ForecastConfig;
use prescale_regions::forecast::SeriesForecaster;
use prescale_regions::trace::Trace;

fn nasa() -> Trace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/traces/nasa-1995-07.per-minute.csv");
    Trace::from_path(&path).expect("the NASA trace is in tests/data/traces")
}

#[test]
fn calibrated_intervals_cover_as_configured_on_nasa_july() {
    let trace = nasa();
    let config = ForecastConfig::default();
    let target = config.interval_coverage;
    let mut forecaster = SeriesForecaster::new(&config, 0.99);
    let base = trace.start.div_euclid(60);
    let warm_up = 3 * 1440;
    // (hits, total) for the 5- and 30-minute horizons.
    let mut tally = [(0usize, 0usize); 2];
    let mut pending: Vec<(usize, usize, f64, f64)> = Vec::new();
    let (mut model_error, mut naive_error) = (0.0, 0.0);
    for m in 0..trace.len() {
        let now = base + m as i64;
        forecaster.update(now);
        if let Some(origin) = forecaster.origin(now) {
            for (slot, horizon) in [(0, 5usize), (1, 30)] {
                let target_minute = m + horizon - 1;
                if m >= warm_up && target_minute < trace.len() {
                    let f = forecaster.forecast(origin, base + target_minute as i64);
                    pending.push((target_minute, slot, f.lower, f.upper));
                    if slot == 1
                        && target_minute >= 1440
                        && trace.present[target_minute]
                        && trace.present[target_minute - 1440]
                    {
                        model_error += (trace.requests[target_minute] - f.point).abs();
                        naive_error += (trace.requests[target_minute]
                            - trace.requests[target_minute - 1440])
                            .abs();
                    }
                }
            }
        }
        pending.retain(|&(t, slot, lower, upper)| {
            if t != m {
                return true;
            }
            if trace.present[m] {
                let v = trace.requests[m];
                tally[slot].1 += 1;
                if v >= lower && v <= upper {
                    tally[slot].0 += 1;
                }
            }
            false
        });
        if trace.present[m] {
            forecaster.observe(now, trace.requests[m]);
        }
    }
    for (slot, horizon) in [(0, 5), (1, 30)] {
        let (hits, total) = tally[slot];
        let coverage = hits as f64 / total as f64;
        eprintln!("{horizon}-minute interval coverage {coverage:.3} over {total} minutes (target {target})");
        assert!(total > 20_000, "{total} scored minutes");
        assert!(
            (coverage - target).abs() <= 0.05,
            "{horizon}-minute coverage {coverage:.3} vs target {target}"
        );
    }
    let mase = model_error / naive_error;
    eprintln!("30-minute MASE {mase:.3}");
    assert!(
        mase < 1.0,
        "MASE {mase:.3}: the forecast must beat same-minute-yesterday"
    );
}

//! Replay a trace with the library alone (no proxy build needed), for exploring planner settings:
//!
//! `cargo run --release -p prescale-regions --example replay -- TRACE CAPACITY_RPS COLD_START_S
//! [SLO_TARGET [SCALE_DOWN_THRESHOLD [STABILIZATION_MINUTES]]]`
//!
//! Prints one JSON score per policy, like `prescale replay --json`. With
//! `REPLAY_DEBUG_DECISIONS=FROM-TO` (minutes from the trace start) the predictive policy's
//! decisions in that range are printed to stderr with their tiers and reasons.

use std::path::Path;
use std::process::ExitCode;

use prescale_regions::replay::{self, Policy, ReplaySettings};
use prescale_regions::trace::Trace;

const USAGE: &str = "usage: replay TRACE CAPACITY_RPS COLD_START_SECONDS [SLO_TARGET [SCALE_DOWN_THRESHOLD [STABILIZATION_MINUTES]]]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [trace, capacity, cold_start, ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (Ok(capacity_rps), Ok(cold_start_seconds)) = (capacity.parse(), cold_start.parse()) else {
        eprintln!("error: CAPACITY_RPS and COLD_START_SECONDS must be numbers\n{USAGE}");
        return ExitCode::from(2);
    };
    let trace = match Trace::from_path(Path::new(trace)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = ReplaySettings {
        capacity_rps,
        cold_start_seconds,
        ..ReplaySettings::default()
    };
    if let Some(v) = args.get(3).and_then(|s| s.parse().ok()) {
        settings.planner.slo_target = v;
    }
    if let Some(v) = args.get(4).and_then(|s| s.parse().ok()) {
        settings.planner.scale_down_threshold = v;
    }
    if let Some(v) = args.get(5).and_then(|s| s.parse().ok()) {
        settings.planner.stabilization_minutes = v;
    }
    let outcome = match replay::replay(&trace, &Policy::ALL, &settings, |_| {}) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((from, to)) = std::env::var("REPLAY_DEBUG_DECISIONS")
        .ok()
        .and_then(|range| {
            let (a, b) = range.split_once('-')?;
            Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?))
        })
    {
        for run in &outcome.runs {
            for d in &run.decisions {
                let minute = (d.at - trace.start) / 60;
                if (from..to).contains(&minute) {
                    eprintln!("{minute} {:?} {}", d.tiers, d.reason);
                }
            }
        }
    }
    for score in &outcome.scores {
        match serde_json::to_string(score) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
